//! Bounds-checked little-endian reads from a byte slice.
//!
//! Every read takes an offset (and a length) that came from a file and
//! returns `None` when the bytes are not all there, so a truncated or
//! hostile file becomes an error at the call site, never a panic. Offsets
//! are `u64` because that is what ELF64 fields hold; the conversion to
//! `usize` and every addition are checked here, once.

/// The `len` bytes at `off`, if all of them are inside `data`.
pub(crate) fn slice(data: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let len = usize::try_from(len).ok()?;
    let end = start.checked_add(len)?;
    data.get(start..end)
}

pub(crate) use ulp_abi::le::{u16_at, u32_at, u64_at, u8_at};

/// The NUL-terminated string starting at `off` (without the NUL), if the
/// NUL is inside `data`.
pub(crate) fn cstr_at(data: &[u8], off: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let rest = data.get(start..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    rest.get(..len)
}

/// Writes `value` at `off` in `data`; `None` when it does not fit.
pub(crate) fn put(data: &mut [u8], off: u64, value: &[u8]) -> Option<()> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(value.len())?;
    data.get_mut(start..end)?.copy_from_slice(value);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_outside_the_slice_are_none() {
        let d = [1u8, 2, 3, 4, 0, 5];
        assert_eq!(u32_at(&d, 0), Some(0x0403_0201));
        assert_eq!(u32_at(&d, 3), None);
        assert_eq!(u64_at(&d, u64::MAX), None);
        assert_eq!(slice(&d, u64::MAX, 2), None);
        assert_eq!(slice(&d, 2, u64::MAX), None);
        assert_eq!(cstr_at(&d, 0), Some(&d[..4]));
        assert_eq!(cstr_at(&d, 5), None);
        assert_eq!(cstr_at(&d, 6), None);
        assert_eq!(u8_at(&d, 5), Some(5));
        assert_eq!(u16_at(&d, 5), None);
    }
}

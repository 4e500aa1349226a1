//! Little-endian numbers read at an offset of a byte slice, checked: an
//! offset or length past the end is `None`, never a panic. Every ELF
//! reader of the project (files, process memory, the runtime's own) reads
//! through these.

/// `N` bytes at `off`.
pub fn array<const N: usize>(data: &[u8], off: impl TryInto<usize>) -> Option<[u8; N]> {
    let start: usize = off.try_into().ok()?;
    data.get(start..start.checked_add(N)?)?.try_into().ok()
}

pub fn u8_at(data: &[u8], off: impl TryInto<usize>) -> Option<u8> {
    array::<1>(data, off).map(|a| a[0])
}

pub fn u16_at(data: &[u8], off: impl TryInto<usize>) -> Option<u16> {
    array(data, off).map(u16::from_le_bytes)
}

pub fn u32_at(data: &[u8], off: impl TryInto<usize>) -> Option<u32> {
    array(data, off).map(u32::from_le_bytes)
}

pub fn u64_at(data: &[u8], off: impl TryInto<usize>) -> Option<u64> {
    array(data, off).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_and_refuses_past_the_end() {
        let d = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&d, 0), Some(0x0201));
        assert_eq!(u32_at(&d, 5usize), Some(0x0908_0706));
        assert_eq!(u64_at(&d, 1u64), Some(0x0908_0706_0504_0302));
        assert_eq!(u64_at(&d, 2), None);
        assert_eq!(u8_at(&d, u64::MAX), None);
        assert_eq!(u16_at(&d, usize::MAX), None);
    }
}

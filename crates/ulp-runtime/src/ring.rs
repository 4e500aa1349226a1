//! The message log: one line per event in the ring of the shared block.
//!
//! Lines are formatted into a fixed buffer on the stack (no allocation, so
//! the panic hook can log too), cut to [`LINE_MAX`] bytes, with any newline
//! inside a message turned into a space so that one event is one line.
//! Every line but the first (`libpulp loaded...`) starts with a UTC timestamp
//! `[YYYY-MM-DD HH:MM:SS] ulp: ` (`ulp_abi::time`, the date `ulp patches`
//! prints too).

#[allow(unused_imports)]
use crate::prelude::*;

use core::fmt::{self, Write as _};

use ulp_abi::time::civil;

use crate::interface;

/// Longest line kept (the newline included).
pub const LINE_MAX: usize = 1024;

/// A line being formatted: bytes past the capacity are dropped.
pub struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl LineBuf {
    pub const fn new() -> LineBuf {
        LineBuf {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the line with a newline (replacing the last byte when full).
    fn finish(&mut self) {
        if self.len == LINE_MAX {
            self.len -= 1;
        }
        self.buf[self.len] = b'\n';
        self.len += 1;
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == LINE_MAX {
                break;
            }
            self.buf[self.len] = if b == b'\n' || b == b'\r' { b' ' } else { b };
            self.len += 1;
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch, from `clock_gettime(CLOCK_REALTIME)`.
/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let ts = crate::sys::clock(libc::CLOCK_MONOTONIC);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn now() -> i64 {
    crate::sys::clock(libc::CLOCK_REALTIME).tv_sec
}

/// The first line, untimed: libpulp's `libpulp loaded...` word for word,
/// then which ulp this is. Made at compile time, so that the start runs
/// no formatting code.
pub const LOADED_LINE: &str = {
    const BYTES: ([u8; 96], usize) = loaded_line();
    match core::str::from_utf8(BYTES.0.split_at(BYTES.1).0) {
        Ok(s) => s,
        Err(_) => panic!("the loaded line is ASCII"),
    }
};

/// `libpulp loaded... (ulp VERSION, protocol N)\n` and its length.
const fn loaded_line() -> ([u8; 96], usize) {
    const fn put(out: &mut [u8; 96], mut len: usize, s: &[u8]) -> usize {
        let mut i = 0;
        while i < s.len() {
            out[len] = s[i];
            len += 1;
            i += 1;
        }
        len
    }
    let mut out = [0u8; 96];
    let mut len = put(&mut out, 0, b"libpulp loaded... (ulp ");
    len = put(&mut out, len, env!("CARGO_PKG_VERSION").as_bytes());
    len = put(&mut out, len, b", protocol ");
    let mut digits = [0u8; 10];
    let (mut n, mut d) = (ulp_abi::PROTOCOL_VERSION, digits.len());
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    len = put(&mut out, len, digits.split_at(d).1);
    len = put(&mut out, len, b")\n");
    (out, len)
}

/// Appends `[YYYY-MM-DD HH:MM:SS] ulp: MESSAGE`.
pub fn log(args: fmt::Arguments<'_>) {
    let mut line = LineBuf::new();
    let _ = write!(line, "[{}] ulp: ", civil(now()));
    let _ = line.write_fmt(args);
    line.finish();
    interface::ring_append(line.as_bytes());
}

/// Lowercase hexadecimal of a byte string, for ids in messages.
pub use ulp_abi::hex::Hex;

/// Bytes as `xx xx xx`, for code bytes in messages.
pub struct SpacedHex<'a>(pub &'a [u8]);

impl fmt::Display for SpacedHex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A byte string shown as text (invalid UTF-8 replaced), without allocating.
pub struct Text<'a>(pub &'a [u8]);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        loop {
            match core::str::from_utf8(rest) {
                Ok(s) => return f.write_str(s),
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // SAFETY: `from_utf8` checked these bytes.
                    f.write_str(unsafe { core::str::from_utf8_unchecked(valid) })?;
                    f.write_str("\u{fffd}")?;
                    let skip = e.error_len().unwrap_or(after.len());
                    rest = &after[skip..];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_and_single() {
        let mut b = LineBuf::new();
        write!(b, "a\nb").unwrap();
        b.finish();
        assert_eq!(b.as_bytes(), b"a b\n");
        let mut b = LineBuf::new();
        for _ in 0..LINE_MAX {
            b.write_str("xy").unwrap();
        }
        b.finish();
        assert_eq!(b.as_bytes().len(), LINE_MAX);
        assert_eq!(b.as_bytes()[LINE_MAX - 1], b'\n');
    }

    #[test]
    fn hex_forms() {
        let mut b = LineBuf::new();
        write!(
            b,
            "{} {} {}",
            Hex(&[0, 0xab]),
            SpacedHex(&[0x90, 0x66]),
            Text(b"a\xffb")
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(b.as_bytes()).unwrap(),
            "00ab 90 66 a\u{fffd}b"
        );
    }
}

//! Addresses in another process's address space, as a type: a number that
//! means nothing in ours, to read, write or call through ulp-process only.

use std::fmt;
use std::ops::{Add, Sub};

/// An address in the target process (not in this one). `Display` and
/// `Debug` print the bare decimal number and `{:x}`/`{:#x}` the hex, as
/// the `u64` it replaces did. The `#[repr(C)]` structs of `ulp-abi` keep
/// `u64`: convert with [`RemoteAddr::new`] and [`RemoteAddr::get`].
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteAddr(u64);

impl RemoteAddr {
    /// The address 0.
    pub const NULL: RemoteAddr = RemoteAddr(0);

    /// The address with this value.
    pub const fn new(raw: u64) -> RemoteAddr {
        RemoteAddr(raw)
    }

    /// The value, as the kernel and the wire format take it.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether this is address 0.
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// The address `n` bytes further (panics on overflow in debug builds,
    /// as `+` on the `u64` did).
    pub const fn offset(self, n: u64) -> RemoteAddr {
        RemoteAddr(self.0 + n)
    }

    /// The address `n` bytes further, or `None` past the end of the space.
    pub const fn checked_add(self, n: u64) -> Option<RemoteAddr> {
        match self.0.checked_add(n) {
            Some(a) => Some(RemoteAddr(a)),
            None => None,
        }
    }

    /// The address `n` bytes further, wrapping around.
    pub const fn wrapping_add(self, n: u64) -> RemoteAddr {
        RemoteAddr(self.0.wrapping_add(n))
    }

    /// How many bytes `self` lies past `base` (`self - base`).
    pub const fn distance_from(self, base: RemoteAddr) -> u64 {
        self.0 - base.0
    }
}

impl Add<u64> for RemoteAddr {
    type Output = RemoteAddr;
    fn add(self, n: u64) -> RemoteAddr {
        self.offset(n)
    }
}

impl Sub<u64> for RemoteAddr {
    type Output = RemoteAddr;
    fn sub(self, n: u64) -> RemoteAddr {
        RemoteAddr(self.0 - n)
    }
}

impl Sub<RemoteAddr> for RemoteAddr {
    type Output = u64;
    fn sub(self, base: RemoteAddr) -> u64 {
        self.distance_from(base)
    }
}

impl From<u64> for RemoteAddr {
    fn from(raw: u64) -> RemoteAddr {
        RemoteAddr(raw)
    }
}

impl From<RemoteAddr> for u64 {
    fn from(a: RemoteAddr) -> u64 {
        a.0
    }
}

impl fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::LowerHex for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::UpperHex for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::UpperHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_the_number() {
        let a = RemoteAddr::new(0x7f00_1000);
        assert_eq!(
            format!("{a:#x} {a:x} {a} {a:?} {a:#018x}"),
            format!("{0:#x} {0:x} {0} {0:?} {0:#018x}", 0x7f00_1000u64)
        );
        assert_eq!(a + 0x10, RemoteAddr::new(0x7f00_1010));
        assert_eq!((a + 0x10) - a, 0x10);
        assert_eq!(RemoteAddr::new(u64::MAX).checked_add(1), None);
    }
}

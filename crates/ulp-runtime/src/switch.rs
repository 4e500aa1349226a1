//! Switching several functions at once: the *guarded slot* each function
//! goes through while one flag byte moves all of them from where they went
//! before (`from`) to where they go after (`to`).
//!
//! A slot lives in a near page (`rewrite::alloc`: read and execute only,
//! mapped by this runtime next to the library, written only by the tool):
//!
//! ```text
//! slot + 0   80 3d <disp32> 00   cmpb $0, flag(%rip)
//! slot + 7   75 <rel8>           jne  to-jump
//! slot + 9   jump to `from`      e9 <rel32>, or ff 25 00000000 <abs64>
//!            jump to `to`        likewise
//! ```
//!
//! `from` and `to` are whatever the function runs: its own code after the
//! entry jump, a trampoline, a patch's new function, a far stub. The flag
//! is one byte of a near page too (0 until the switch). The plan that uses
//! slots is `plan::switch_plan`; ARCHITECTURE.md, "Switching several
//! functions at once", tells the whole story. Slots and flags are never
//! reused nor freed: a thread may still be inside a retired slot, and it
//! then finds the bytes and the flag as they were when the slot was made
//! live (the flag stays 1), so it goes where the switch sent it.

#[allow(unused_imports)]
use crate::prelude::*;

use ulp_x86::{jmp_abs, jmp_rel32};

/// Room allocated for one slot: the longest form is 7 + 2 + 14 + 14 bytes.
pub const SLOT_LEN: u64 = 48;
/// Room allocated for one flag (it holds one byte; alone in its word).
pub const FLAG_LEN: u64 = 8;

/// A jump at `at` to `to`: `jmp rel32` when within reach, else the
/// absolute form.
fn jump(at: u64, to: u64) -> Vec<u8> {
    match jmp_rel32(at, to) {
        Some(j) => j.to_vec(),
        None => jmp_abs(to).to_vec(),
    }
}

/// The guarded slot at `at` reading the byte at `flag`: to `from` while
/// it is 0, to `to` once it is not. `None` when the flag is out of reach
/// of the `cmpb`'s 32-bit displacement.
pub fn slot_code(at: u64, flag: u64, from: u64, to: u64) -> Option<Vec<u8>> {
    let disp = i32::try_from(i128::from(flag) - (i128::from(at) + 7)).ok()?;
    let mut b = vec![0x80, 0x3d];
    b.extend_from_slice(&disp.to_le_bytes());
    b.push(0);
    let old = jump(at + 9, from);
    b.extend_from_slice(&[0x75, old.len() as u8]);
    let to_at = at + 9 + old.len() as u64;
    b.extend_from_slice(&old);
    b.extend_from_slice(&jump(to_at, to));
    debug_assert!(b.len() as u64 <= SLOT_LEN);
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(b: &[u8], at: usize, base: u64) -> u64 {
        let r = i32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        base.wrapping_add(r as i64 as u64)
    }

    #[test]
    fn near_targets_take_two_rel32_jumps() {
        let at = 0x7f00_0000_1000u64;
        let (flag, from, to) = (at + 0x800, at - 0x10_0000, at + 0x20_0000);
        let b = slot_code(at, flag, from, to).unwrap();
        assert_eq!(b.len(), 19);
        assert_eq!(b[..2], [0x80, 0x3d]);
        assert_eq!(rel(&b, 2, at + 7), flag);
        assert_eq!(b[6..9], [0x00, 0x75, 5]);
        assert_eq!(b[9], 0xe9);
        assert_eq!(rel(&b, 10, at + 14), from);
        assert_eq!(b[14], 0xe9);
        assert_eq!(rel(&b, 15, at + 19), to);
    }

    #[test]
    fn far_targets_take_absolute_jumps() {
        let at = 0x7f00_0000_1000u64;
        let far = 0x5555_0000_0000u64;
        let b = slot_code(at, at + 0x800, far, far + 0x40).unwrap();
        assert_eq!(b.len(), 37);
        assert_eq!(b[7..9], [0x75, 14]);
        assert_eq!(b[9..15], [0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(b[15..23], far.to_le_bytes());
        assert_eq!(b[23..29], [0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(b[29..37], (far + 0x40).to_le_bytes());
        assert!(b.len() as u64 <= SLOT_LEN);
        // A flag out of the cmpb's reach: no slot.
        assert_eq!(slot_code(at, at + (1 << 32), far, far), None);
    }
}

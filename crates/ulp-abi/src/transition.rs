//! Per-thread transitions: a change of code that each thread takes on its
//! own, once none of the replaced functions' old code is on its stack
//! (ARCHITECTURE.md, "Per-thread consistency").
//!
//! Every thread has 16 bytes of the runtime's initial-exec TLS: a *mark*
//! (4 bytes at `mark_off` from the thread pointer), the id of the
//! transition that armed its trampoline (4 bytes after it, written by the
//! tool only) and a *return address* (8 bytes at `ret_off`). A thread whose mark equals the transition's id
//! is old. Each replaced function goes through a guarded slot
//! ([`slot_code`]) that sends an old thread to the old code and any other
//! thread to the new code, once the transition's flag is set. The tool
//! marks every thread old before it sets the flag; a thread created later
//! has a zero mark and starts new. The tool then switches each thread
//! whose stack holds no replaced frame (mark 0), and for the others
//! swaps the return address of the outermost replaced frame for the
//! [`trampoline_code`], which clears the mark when that frame returns
//! and jumps to the saved return address.
//!
//! The records below travel in the plan (`Interface::res_writes`) as
//! writes of length 0.

use alloc::vec;
use alloc::vec::Vec;

use crate::{write_kind, Write};

/// Room for one guarded slot of a per-thread plan: the longest form is
/// 7 + 2 + 12 + 2 + 14 + 14 bytes.
pub const SLOT_LEN: u64 = 64;
/// Room for the thread trampoline.
pub const TRAMPOLINE_LEN: u64 = 24;
/// Bytes of TLS a thread's mark and return address take.
pub const TLS_LEN: usize = 16;

/// The plan's transition: its id (what an old thread's mark holds), where
/// each thread's mark and return address are (offsets from the thread
/// pointer, `%fs:0`), the trampoline and the flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionRecord {
    pub id: u32,
    pub mark_off: i32,
    pub ret_off: i32,
    pub trampoline: u64,
    pub flag: u64,
}

impl TransitionRecord {
    pub fn to_write(&self) -> Write {
        let mut w = Write::ZERO;
        w.addr = self.trampoline;
        w.kind = write_kind::TRANSITION;
        w.old[0..4].copy_from_slice(&self.id.to_le_bytes());
        w.old[4..8].copy_from_slice(&self.mark_off.to_le_bytes());
        w.old[8..12].copy_from_slice(&self.ret_off.to_le_bytes());
        w.new[0..8].copy_from_slice(&self.flag.to_le_bytes());
        w
    }

    pub fn from_write(w: &Write) -> Option<TransitionRecord> {
        (w.kind == write_kind::TRANSITION && w.len == 0).then(|| TransitionRecord {
            id: u32::from_le_bytes(w.old[0..4].try_into().unwrap()),
            mark_off: i32::from_le_bytes(w.old[4..8].try_into().unwrap()),
            ret_off: i32::from_le_bytes(w.old[8..12].try_into().unwrap()),
            trampoline: w.addr,
            flag: u64::from_le_bytes(w.new[0..8].try_into().unwrap()),
        })
    }
}

/// One function of a per-thread plan: its entry, where a call went before
/// the change (`from`: the old code) and its guarded slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OldCode {
    pub entry: u64,
    pub from: u64,
    pub slot: u64,
}

impl OldCode {
    pub fn to_write(&self) -> Write {
        let mut w = Write::ZERO;
        w.addr = self.entry;
        w.kind = write_kind::OLD_CODE;
        w.old[0..8].copy_from_slice(&self.from.to_le_bytes());
        w.new[0..8].copy_from_slice(&self.slot.to_le_bytes());
        w
    }

    pub fn from_write(w: &Write) -> Option<OldCode> {
        (w.kind == write_kind::OLD_CODE && w.len == 0).then(|| OldCode {
            entry: w.addr,
            from: u64::from_le_bytes(w.old[0..8].try_into().unwrap()),
            slot: u64::from_le_bytes(w.new[0..8].try_into().unwrap()),
        })
    }
}

/// A jump at `at` to `to`: `jmp rel32` when within reach, else
/// `jmp *0(%rip)` and the address.
pub fn jump(at: u64, to: u64) -> ([u8; 14], usize) {
    let mut b = [0u8; 14];
    let rel = i128::from(to) - (i128::from(at) + 5);
    if let Ok(rel) = i32::try_from(rel) {
        b[0] = 0xe9;
        b[1..5].copy_from_slice(&rel.to_le_bytes());
        (b, 5)
    } else {
        b[0..6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
        b[6..14].copy_from_slice(&to.to_le_bytes());
        (b, 14)
    }
}

/// The guarded slot of a per-thread plan at `at`:
///
/// ```text
/// 80 3d <disp32> 00          cmpb $0, flag(%rip)
/// 74 <rel8>                  je   from-jump        (flag not set: all old)
/// 64 81 3c 25 <off32> <id>   cmpl $id, %fs:mark
/// 74 <rel8>                  je   from-jump        (an old thread)
/// jump to `to`
/// jump to `from`
/// ```
///
/// No register is touched (the flags are, as a call may). `None` when
/// the flag is out of the `cmpb`'s reach.
pub fn slot_code(
    at: u64,
    flag: u64,
    id: u32,
    mark_off: i32,
    from: u64,
    to: u64,
) -> Option<Vec<u8>> {
    let disp = i32::try_from(i128::from(flag) - (i128::from(at) + 7)).ok()?;
    let (to_jump, to_len) = jump(at + 23, to);
    let (from_jump, from_len) = jump(at + 23 + to_len as u64, from);
    let mut b = vec![0x80, 0x3d];
    b.extend_from_slice(&disp.to_le_bytes());
    b.push(0);
    // je from-jump: from at+9 to at+23+to_len.
    b.extend_from_slice(&[0x74, (14 + to_len) as u8]);
    b.extend_from_slice(&[0x64, 0x81, 0x3c, 0x25]);
    b.extend_from_slice(&mark_off.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&[0x74, to_len as u8]);
    b.extend_from_slice(&to_jump[..to_len]);
    b.extend_from_slice(&from_jump[..from_len]);
    debug_assert!(b.len() as u64 <= SLOT_LEN);
    Some(b)
}

/// The thread trampoline: an old thread's outermost replaced frame returns
/// here; it clears the thread's mark (the thread is new from now on) and
/// jumps to the return address the tool saved for it. Neither the
/// registers nor the flags change.
///
/// ```text
/// 64 c7 04 25 <mark32> 00 00 00 00   movl $0, %fs:mark
/// 64 ff 24 25 <ret32>                jmp  *%fs:ret
/// ```
pub fn trampoline_code(mark_off: i32, ret_off: i32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&[0x64, 0xc7, 0x04, 0x25]);
    b[4..8].copy_from_slice(&mark_off.to_le_bytes());
    b[12..16].copy_from_slice(&[0x64, 0xff, 0x24, 0x25]);
    b[16..20].copy_from_slice(&ret_off.to_le_bytes());
    b
}

/// Threads one entry of [`Pending`] can name.
pub const PENDING_MAX: usize = 256;
/// Bytes of a function name in a [`PendingThread`] (NUL-padded, cut).
pub const NAME_LEN: usize = 48;

/// A thread a transition waits for: it still has a replaced frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingThread {
    pub tid: u64,
    /// Its thread pointer: its mark is at `fs_base + mark_off`.
    pub fs_base: u64,
    /// The outermost replaced function on its stack.
    pub name: [u8; NAME_LEN],
}

impl PendingThread {
    pub const ZERO: PendingThread = PendingThread {
        tid: 0,
        fs_base: 0,
        name: [0; NAME_LEN],
    };
    pub const SIZE: usize = 64;

    pub fn name(&self) -> &[u8] {
        let n = self.name.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
        &self.name[..n]
    }
}

/// The transition a process is in, as the tool last left it: `id` 0 when
/// none. `count` may exceed [`PENDING_MAX`]: the first threads are named.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: u64,
    pub mark_off: i64,
    pub count: u64,
    pub threads: [PendingThread; PENDING_MAX],
}

impl Pending {
    pub const ZERO: Pending = Pending {
        id: 0,
        mark_off: 0,
        count: 0,
        threads: [PendingThread::ZERO; PENDING_MAX],
    };
    /// Bytes of the header before `threads`.
    pub const HEAD: usize = 24;
    pub const SIZE: usize = Pending::HEAD + PENDING_MAX * PendingThread::SIZE;

    /// The table as it lies in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Pending::SIZE);
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.mark_off.to_le_bytes());
        b.extend_from_slice(&self.count.to_le_bytes());
        for t in &self.threads {
            b.extend_from_slice(&t.tid.to_le_bytes());
            b.extend_from_slice(&t.fs_base.to_le_bytes());
            b.extend_from_slice(&t.name);
        }
        b
    }

    pub fn from_bytes(raw: &[u8]) -> Option<Pending> {
        let u = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(raw.get(at..at + 8)?.try_into().ok()?))
        };
        let mut p = Pending::ZERO;
        p.id = u(0)?;
        p.mark_off = u(8)? as i64;
        p.count = u(16)?;
        for (i, t) in p.threads.iter_mut().enumerate() {
            let at = Pending::HEAD + i * PendingThread::SIZE;
            t.tid = u(at)?;
            t.fs_base = u(at + 8)?;
            t.name
                .copy_from_slice(raw.get(at + 16..at + 16 + NAME_LEN)?);
        }
        Some(p)
    }
}

const _: () = {
    assert!(core::mem::size_of::<PendingThread>() == PendingThread::SIZE);
    assert!(core::mem::size_of::<Pending>() == Pending::SIZE);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let t = TransitionRecord {
            id: 7,
            mark_off: -48,
            ret_off: -40,
            trampoline: 0x7f00_0000_1000,
            flag: 0x7f00_0000_2000,
        };
        assert_eq!(TransitionRecord::from_write(&t.to_write()), Some(t));
        let o = OldCode {
            entry: 1,
            from: 2,
            slot: 3,
        };
        assert_eq!(OldCode::from_write(&o.to_write()), Some(o));
        assert_eq!(OldCode::from_write(&t.to_write()), None);
    }

    #[test]
    fn slot_branches_land_on_the_jumps() {
        let at = 0x7f00_0000_1000u64;
        let (flag, from, to) = (at + 0x800, at - 0x10_0000, at + 0x20_0000);
        let b = slot_code(at, flag, 9, -16, from, to).unwrap();
        assert_eq!(b.len(), 33);
        // je at +7 (2 bytes) lands on the from-jump at +28.
        assert_eq!(b[7], 0x74);
        assert_eq!(9 + b[8] as usize, 28);
        assert_eq!(b[21], 0x74);
        assert_eq!(23 + b[22] as usize, 28);
        assert_eq!(b[23], 0xe9);
        assert_eq!(b[28], 0xe9);
        let rel = |o: usize| i32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as i64;
        assert_eq!((at as i64 + 28 + rel(24)) as u64, to);
        assert_eq!((at as i64 + 33 + rel(29)) as u64, from);
        assert_eq!(i32::from_le_bytes(b[13..17].try_into().unwrap()), -16);
        assert_eq!(u32::from_le_bytes(b[17..21].try_into().unwrap()), 9);
        let far = slot_code(at, flag, 9, -16, 0x1000, 0x2000).unwrap();
        assert_eq!(far.len(), 51);
        assert!(far.len() as u64 <= SLOT_LEN);
    }

    #[test]
    fn pending_round_trips() {
        let mut p = Pending::ZERO;
        p.id = 3;
        p.mark_off = -64;
        p.count = 1;
        p.threads[0].tid = 4711;
        p.threads[0].name[..3].copy_from_slice(b"fna");
        let b = p.to_bytes();
        assert_eq!(b.len(), Pending::SIZE);
        let q = Pending::from_bytes(&b).unwrap();
        assert_eq!(q, p);
        assert_eq!(q.threads[0].name(), b"fna");
    }
}

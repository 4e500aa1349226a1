//! Per-thread transitions (`ulp_abi::transition`): each thread's 16 bytes
//! of initial-exec TLS (its mark and its saved return address) and the
//! one thread trampoline of the process.
//!
//! The block is declared in assembly (stable Rust has no `#[thread_local]`
//! without std): `__ulp_thread` in `.tbss`, reached through its GOT entry
//! (`R_X86_64_TPOFF64`), so the loader gives it a fixed offset from the
//! thread pointer in every thread, including threads that existed when a
//! `--load-runtime` loaded this library (glibc initialises a new static
//! TLS block in each of them). The runtime never reads or writes the block
//! itself: the guarded slots and the trampoline do, and the tool.

#[allow(unused_imports)]
use crate::prelude::*;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ulp_abi::transition::{trampoline_code, TransitionRecord, TLS_LEN, TRAMPOLINE_LEN};
use ulp_abi::Write;

use crate::rewrite;

core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 4",
    ".hidden __ulp_thread",
    ".type __ulp_thread, @tls_object",
    ".size __ulp_thread, 16",
    "__ulp_thread:",
    ".zero 16",
    ".popsection",
);

const _: () = assert!(TLS_LEN == 16);

/// The block's offset from the thread pointer (the same in every thread).
fn block_offset() -> i64 {
    let off: i64;
    // SAFETY: reads this library's own GOT entry for its TLS block.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr [rip + __ulp_thread@GOTTPOFF]",
            out(reg) off,
            options(nostack, readonly, pure, preserves_flags)
        );
    }
    off
}

/// The id the next transition takes (an old thread's mark holds it; 0 is
/// never one, as a new thread's mark is 0).
static NEXT_ID: AtomicU32 = AtomicU32::new(1);
/// The trampoline, once made (0 before).
static TRAMPOLINE: AtomicU64 = AtomicU64::new(0);

/// A new transition's record, with the CODE writes that make the
/// trampoline (re-sent each time: words already in place change
/// nothing). The flag is the caller's. `None` when the block is out of a
/// 32-bit displacement's reach or no near page can be had.
pub(crate) fn new_transition(near: u64, flag: u64) -> Option<(TransitionRecord, Vec<Write>)> {
    let off = block_offset();
    let mark_off = i32::try_from(off).ok()?;
    let ret_off = i32::try_from(off + 8).ok()?;
    let mut tramp = TRAMPOLINE.load(Ordering::Relaxed);
    if tramp == 0 {
        tramp = rewrite::alloc(TRAMPOLINE_LEN, near)?;
        TRAMPOLINE.store(tramp, Ordering::Relaxed);
    }
    let code = trampoline_code(mark_off, ret_off);
    let mut padded = [0xccu8; 24];
    padded[..code.len()].copy_from_slice(&code);
    let writes = rewrite::code_writes(tramp, &padded);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).max(1);
    Some((
        TransitionRecord {
            id,
            mark_off,
            ret_off,
            trampoline: tramp,
            flag,
        },
        writes,
    ))
}

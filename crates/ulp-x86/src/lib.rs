//! Redirecting functions that have no patchable padding: an x86-64
//! instruction length decoder, the analysis that decides whether a
//! function's first bytes may be overwritten with a `jmp`, and the
//! trampoline that runs the overwritten instructions elsewhere.
//!
//! Live patches redirect an old function to its new version. Code built
//! with `-fpatchable-function-entry` has NOPs to put the jump in; stock
//! libraries (glibc, zlib, libcrypto) do not, so the jump has to overwrite
//! the function's first instructions. This crate does the x86 part of that,
//! on bytes and addresses only (no process access, no I/O):
//!
//! 1. [`decode`] / [`decode_all`]: instruction lengths, relative branch
//!    targets and RIP-relative operands ([`Insn`], [`Kind`], [`RipRef`]).
//!    Legacy, REX, VEX and EVEX encodings, the one-byte, `0f`, `0f 38`
//!    and `0f 3a` maps, x87. Undefined opcodes are a [`DecodeError`], not
//!    a guess (the limits of that check are in `decode.rs`).
//! 2. [`analyze_entry`]: given a function's bytes and the redirect's length
//!    ([`JMP_REL32_LEN`] or [`JMP_ABS_LEN`]), an [`EntryPlan`] (which
//!    instructions are displaced, where execution resumes) or a
//!    [`Refusal`] with a [`RefusalReason`] and a message.
//! 3. [`relocate`]: the trampoline for a plan at a given address (the
//!    displaced instructions re-encoded, then a jump back);
//!    [`trampoline_len_bound`] to reserve its space first.
//! 4. [`jmp_rel32`], [`jmp_abs`]: the redirect's bytes.
//! 5. [`Method`] and [`method_of`]: a function's redirect method (its
//!    padding or an entry rewrite) and the policy that picks it, shared by
//!    the runtime and the tool.
//!
//! The order of the writes into a running process (trampoline first,
//! redirect last) and stopping its threads so none executes, or returns
//! into, the bytes being replaced belong to the caller. What the analysis
//! cannot see (jump tables, branches from other functions, return
//! addresses on thread stacks) is listed in the documentation of
//! [`analyze_entry`]'s module, `entry.rs`; the decoder's limits (3DNow!,
//! XOP, AVX-512 FP16, 16-bit branches) in `decode.rs` and `opcode.rs`.
//!
//! No input makes this crate panic: every read is bounds-checked and every
//! address computation wraps.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod decode;
mod entry;
mod method;
mod opcode;
mod reloc;

pub use decode::{
    decode, decode_all, starts_with_endbr64, DecodeError, DecodeErrorKind, Insn, Insns, Kind,
    LoopOp, RipRef, ENDBR64, MAX_INSN_LEN,
};
pub use entry::{
    analyze_entry, branches_into, rewrite_plan, EntryPlan, Refusal, RefusalReason, JMP_ABS_LEN,
    JMP_REL32_LEN,
};
pub use method::{method_of, Method};
pub use reloc::{jmp_abs, jmp_rel32, relocate, trampoline_len_bound, RelocError, RelocErrorKind};

#[cfg(test)]
mod tests;

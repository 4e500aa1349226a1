//! Trampolines and redirects: the bytes written into the target process.
//!
//! [`relocate`] turns an [`EntryPlan`] into a trampoline for a given
//! address: the displaced instructions, re-encoded so that they do the same
//! thing from there, then a jump back to [`EntryPlan::resume`]. Calling the
//! trampoline is calling the old function. [`jmp_rel32`] and [`jmp_abs`]
//! encode the redirect itself.
//!
//! Re-encoding rules, per displaced instruction:
//!
//! * RIP-relative operand: same bytes, the disp32 recomputed for the new
//!   address (refused if the data is out of ±2 GiB of the trampoline);
//! * `jmp rel8/rel32`: `jmp rel32`, or the 14-byte absolute jump when out of
//!   reach;
//! * `jcc rel8/rel32`: `jcc rel32`, or the inverted `jcc` over an absolute
//!   jump when out of reach;
//! * `call rel32`: `call rel32`, or `call *2(%rip); jmp +8; .quad target`
//!   when out of reach (the return address then is in the trampoline, which
//!   continues where the original call would have returned);
//! * `xbegin rel32`: `xbegin rel32` (refused when out of reach: the abort
//!   path cannot go through an extra jump without changing `%rax`);
//! * everything else: copied. Legacy prefixes of relative branches (`bnd`,
//!   branch hints) are dropped.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::decode::{Insn, Kind, ENDBR64};
use crate::entry::{EntryPlan, JMP_ABS_LEN, JMP_REL32_LEN};

/// Why a trampoline could not be built at the requested address.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocErrorKind {
    /// A displaced instruction refers to an address more than 2 GiB away
    /// from the trampoline and has no longer form.
    OutOfReach,
    /// A displaced instruction cannot run from another address at all.
    Unrelocatable,
}

/// A displaced instruction that cannot be moved to the trampoline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelocError {
    kind: RelocErrorKind,
    insn: u64,
    message: String,
}

impl RelocError {
    pub fn kind(&self) -> RelocErrorKind {
        self.kind
    }

    /// Original address of the instruction that could not be moved.
    pub fn insn_addr(&self) -> u64 {
        self.insn
    }
}

impl fmt::Display for RelocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl core::error::Error for RelocError {}

/// The displacement from `next` (the address after a rel32 field's
/// instruction) to `target`, if within ±2 GiB.
fn rel32(next: u64, target: u64) -> Option<i32> {
    i32::try_from(target.wrapping_sub(next) as i64).ok()
}

/// `jmp rel32` at `from` to `to`, or `None` when `to` is out of reach.
pub fn jmp_rel32(from: u64, to: u64) -> Option<[u8; JMP_REL32_LEN]> {
    let rel = rel32(from.wrapping_add(JMP_REL32_LEN as u64), to)?.to_le_bytes();
    Some([0xe9, rel[0], rel[1], rel[2], rel[3]])
}

/// `jmp *0(%rip)` followed by the address `to`: a jump to any address,
/// from any address, that changes no register.
pub fn jmp_abs(to: u64) -> [u8; JMP_ABS_LEN] {
    let mut b = [0u8; JMP_ABS_LEN];
    b[..6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    b[6..].copy_from_slice(&to.to_le_bytes());
    b
}

/// An upper bound of the length of the trampoline [`relocate`] builds for
/// `plan`, whatever its address: for reserving space first.
pub fn trampoline_len_bound(plan: &EntryPlan) -> usize {
    let endbr = if plan.keeps_endbr64() {
        ENDBR64.len()
    } else {
        0
    };
    let body: usize = plan.displaced().iter().map(relocated_len_bound).sum();
    endbr + body + JMP_ABS_LEN
}

fn relocated_len_bound(insn: &Insn) -> usize {
    match insn.kind() {
        Kind::Jmp { .. } => JMP_ABS_LEN,
        Kind::Jcc { .. } => 2 + JMP_ABS_LEN,
        Kind::Call { .. } => CALL_ABS_LEN,
        Kind::Xbegin { .. } => 6,
        _ => insn.len(),
    }
}

/// Length of `call *2(%rip); jmp +8; .quad target`.
const CALL_ABS_LEN: usize = 16;

/// Builds the trampoline for `plan` at address `tramp`: starts with
/// `endbr64` if the function does (so it is a valid indirect branch target
/// too), then the displaced instructions re-encoded for their new address,
/// then a jump to [`EntryPlan::resume`] (rel32 if in reach, else the
/// absolute form). The result is at most [`trampoline_len_bound`] bytes.
pub fn relocate(plan: &EntryPlan, tramp: u64) -> Result<Vec<u8>, RelocError> {
    let mut out = Vec::with_capacity(trampoline_len_bound(plan));
    if plan.keeps_endbr64() {
        out.extend_from_slice(&ENDBR64);
    }
    for insn in plan.displaced() {
        let here = tramp.wrapping_add(out.len() as u64);
        relocate_one(insn, here, &mut out, plan.function())?;
    }
    let here = tramp.wrapping_add(out.len() as u64);
    push_jmp(&mut out, here, plan.resume());
    Ok(out)
}

fn push_jmp(out: &mut Vec<u8>, here: u64, target: u64) {
    match jmp_rel32(here, target) {
        Some(b) => out.extend_from_slice(&b),
        None => out.extend_from_slice(&jmp_abs(target)),
    }
}

fn relocate_one(insn: &Insn, here: u64, out: &mut Vec<u8>, func: u64) -> Result<(), RelocError> {
    let error = |kind, why: String| {
        RelocError {
        kind,
        insn: insn.addr(),
        message: format!(
            "the instruction at {:#x} in the function at {func:#x} cannot be moved to a trampoline at {here:#x}: {why}",
            insn.addr()
        ),
    }
    };
    match insn.kind() {
        Kind::Jmp { target } => push_jmp(out, here, target),
        Kind::Jcc { cond, target } => match rel32(here.wrapping_add(6), target) {
            Some(rel) => {
                out.extend_from_slice(&[0x0f, 0x80 | cond]);
                out.extend_from_slice(&rel.to_le_bytes());
            }
            None => {
                // The opposite condition skips the absolute jump.
                out.extend_from_slice(&[0x70 | (cond ^ 1), JMP_ABS_LEN as u8]);
                out.extend_from_slice(&jmp_abs(target));
            }
        },
        Kind::Call { target } => match rel32(here.wrapping_add(5), target) {
            Some(rel) => {
                out.push(0xe8);
                out.extend_from_slice(&rel.to_le_bytes());
            }
            None => {
                // call *2(%rip) (the address after jmp +8); returns to the
                // jmp, which skips the address.
                out.extend_from_slice(&[0xff, 0x15, 2, 0, 0, 0, 0xeb, 8]);
                out.extend_from_slice(&target.to_le_bytes());
            }
        },
        Kind::Xbegin { target } => match rel32(here.wrapping_add(6), target) {
            Some(rel) => {
                out.extend_from_slice(&[0xc7, 0xf8]);
                out.extend_from_slice(&rel.to_le_bytes());
            }
            None => {
                return Err(error(
                    RelocErrorKind::OutOfReach,
                    format!("its abort target {target:#x} is more than 2 GiB away"),
                ))
            }
        },
        Kind::Loop { .. } => {
            return Err(error(
                RelocErrorKind::Unrelocatable,
                "loop and jrcxz have only a rel8 form".to_string(),
            ))
        }
        _ => {
            let start = out.len();
            out.extend_from_slice(insn.bytes());
            if let Some(rip) = insn.rip_ref() {
                if rip.addr32 {
                    return Err(error(
                        RelocErrorKind::Unrelocatable,
                        "it uses a 32-bit RIP-relative address".to_string(),
                    ));
                }
                let next = here.wrapping_add(insn.len() as u64);
                let Some(disp) = rel32(next, rip.target) else {
                    return Err(error(
                        RelocErrorKind::OutOfReach,
                        format!(
                            "the address it refers to, {:#x}, is more than 2 GiB away",
                            rip.target
                        ),
                    ));
                };
                let at = start + usize::from(rip.disp_offset);
                if let Some(field) = out.get_mut(at..at + 4) {
                    field.copy_from_slice(&disp.to_le_bytes());
                }
            }
        }
    }
    Ok(())
}

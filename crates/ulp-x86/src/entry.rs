//! Entry analysis: may the first bytes of a function be overwritten with a
//! redirect (a `jmp` to the new function), and which instructions does that
//! displace?
//!
//! [`analyze_entry`] decodes the instructions that the redirect covers (the
//! *displaced prefix*) and then the whole function linearly, and refuses
//! ([`Refusal`], with a [`RefusalReason`]) when overwriting would break the
//! old code: a branch that lands strictly inside the overwritten bytes (it
//! would land in the middle of the `jmp`), a prefix that ends the function
//! before the redirect's length (the bytes after a `ret` may belong to
//! something else), or a displaced instruction that cannot be moved to a
//! trampoline (`loop`/`jrcxz`, `disp32(%eip)`).
//!
//! A function that starts with `endbr64` keeps it: the redirect is written
//! after it, so indirect calls still land on an `endbr64` under CET.
//!
//! What the analysis cannot see, and callers must know:
//!
//! * Computed jumps: a jump table (`jmp *%rax`, `notrack jmp *%rax`) whose
//!   entries point into the overwritten bytes is not detected, because the
//!   table is data, not code. [`EntryPlan::indirect_jumps`] counts the
//!   indirect jumps the function makes (tail calls through the GOT
//!   included) so callers can be stricter.
//! * Branches from other functions into this one (gcc's `foo.cold` parts,
//!   hand-written assembly with several entry points): only the function's
//!   own bytes are scanned. Run the analysis's check on siblings with
//!   [`branches_into`].
//! * A branch to the start itself is accepted: after the rewrite it enters
//!   the new function, like a tail call of the function to itself (which is
//!   what such a branch is at machine level: at offset 0 only the argument
//!   and callee-saved registers can be live).
//! * Threads: while the bytes are replaced, and after, no thread may be
//!   stopped at, or have a return address at, an instruction boundary
//!   strictly inside `(start, resume)` (the addresses of
//!   `displaced()[1..]`). A displaced `call` that is not the last displaced
//!   instruction leaves such a return address on the stack for as long as
//!   its callee runs. Checking the threads is the caller's job.
//! * A displaced `call` ([`EntryPlan::displaces_call`]) returns into the
//!   trampoline, which has no unwind information: a callee that unwinds
//!   through it (C++ exceptions, thread cancellation) or walks the stack
//!   sees an unknown frame. Callers that cannot accept this refuse such
//!   plans.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::decode::{
    decode, decode_all, starts_with_endbr64, DecodeError, DecodeErrorKind, Insn, Kind, ENDBR64,
};

/// Length of `jmp rel32`, the redirect used when the new code is within
/// ±2 GiB.
pub const JMP_REL32_LEN: usize = 5;

/// Length of `jmp *0(%rip)` followed by the 8-byte target, the redirect
/// that reaches any address.
pub const JMP_ABS_LEN: usize = 14;

/// The result of a successful analysis: where the redirect goes and which
/// instructions it displaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPlan {
    func: u64,
    start: u64,
    need: usize,
    displaced: Vec<Insn>,
    keeps_endbr64: bool,
    indirect_jumps: usize,
}

impl EntryPlan {
    /// Address of the function.
    pub fn function(&self) -> u64 {
        self.func
    }

    /// Address of the first byte the redirect overwrites: the function's
    /// address, or the address after its `endbr64`.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Number of bytes the redirect needs (as asked).
    pub fn need(&self) -> usize {
        self.need
    }

    /// Number of bytes the displaced instructions cover (at least
    /// [`EntryPlan::need`]; the bytes between the two are to be filled with
    /// `int3` or NOPs, they are never executed once the redirect is there).
    pub fn covered(&self) -> usize {
        self.displaced.iter().map(Insn::len).sum()
    }

    /// Address where the trampoline resumes the old function: the first
    /// instruction after the displaced ones.
    pub fn resume(&self) -> u64 {
        self.start.wrapping_add(self.covered() as u64)
    }

    /// The displaced instructions, at their original addresses.
    pub fn displaced(&self) -> &[Insn] {
        &self.displaced
    }

    /// Whether the function starts with `endbr64`, left in place before
    /// the redirect.
    pub fn keeps_endbr64(&self) -> bool {
        self.keeps_endbr64
    }

    /// Whether a `call` is among the displaced instructions (see the
    /// module documentation for what that means for unwinding).
    pub fn displaces_call(&self) -> bool {
        self.displaced
            .iter()
            .any(|i| matches!(i.kind(), Kind::Call { .. } | Kind::CallIndirect))
    }

    /// Number of indirect jumps in the function (jump tables or tail calls
    /// through a pointer), whose targets the analysis cannot check.
    pub fn indirect_jumps(&self) -> usize {
        self.indirect_jumps
    }
}

/// Why a function's entry cannot be overwritten.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The function is shorter than the redirect.
    TooShort,
    /// An instruction of the function branches to (or takes the address
    /// of) a byte strictly inside the overwritten range.
    BranchIntoRange,
    /// A `ret`, `jmp`, trap or indirect jump in the displaced prefix ends
    /// the function's straight-line code before the redirect's length.
    EndsInRange,
    /// A displaced instruction cannot run from another address
    /// (`loop`/`jrcxz`, a 32-bit RIP-relative address).
    Unrelocatable,
    /// A `call` would be displaced: while its callee runs, a return
    /// address points into the trampoline (see the module documentation);
    /// [`rewrite_plan`] refuses it.
    DisplacesCall,
    /// Some bytes of the function could not be decoded. If the displaced
    /// prefix decoded and nothing wrong was found before the undecodable
    /// bytes, [`Refusal::partial_plan`] has the plan for callers that accept
    /// the risk.
    Undecodable,
}

/// A refused entry rewrite: the reason, a message naming the address and
/// the instruction, and for [`RefusalReason::Undecodable`] maybe a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    reason: RefusalReason,
    message: String,
    partial: Option<Box<EntryPlan>>,
    decode_error: Option<DecodeError>,
}

impl Refusal {
    fn new(reason: RefusalReason, message: String) -> Refusal {
        Refusal {
            reason,
            message,
            partial: None,
            decode_error: None,
        }
    }

    pub fn reason(&self) -> RefusalReason {
        self.reason
    }

    /// For [`RefusalReason::Undecodable`]: the plan the analysis would have
    /// returned, if the undecodable bytes are after the displaced prefix and
    /// the decoded part of the function is fine. Using it bets that the
    /// undecoded bytes (data, or instructions this decoder does not know)
    /// hold no branch into the overwritten range.
    pub fn partial_plan(&self) -> Option<&EntryPlan> {
        self.partial.as_deref()
    }

    /// For [`RefusalReason::Undecodable`]: the decoder's error.
    pub fn decode_error(&self) -> Option<&DecodeError> {
        self.decode_error.as_ref()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl core::error::Error for Refusal {}

/// The plan ulp uses for a function without patchable padding: a 5-byte
/// `jmp rel32` after the function's `endbr64` (if any), over instructions
/// that all decode, none of them a `call` ([`RefusalReason::DisplacesCall`]:
/// a return address into the trampoline would outlive a revert's checks),
/// with no branch of the function into the overwritten bytes. The runtime
/// (deciding on the bytes in memory) and `ulp livepatchable` (on the file)
/// both ask this function, so they agree.
pub fn rewrite_plan(code: &[u8], func: u64) -> Result<EntryPlan, Refusal> {
    let plan = analyze_entry(code, func, JMP_REL32_LEN)?;
    if let Some(call) = plan
        .displaced()
        .iter()
        .find(|i| matches!(i.kind(), Kind::Call { .. } | Kind::CallIndirect))
    {
        return Err(Refusal::new(
            RefusalReason::DisplacesCall,
            format!(
                "the function at {func:#x} has {} at {:#x} (+{:#x}), inside the {JMP_REL32_LEN} bytes the redirect overwrites",
                describe(call),
                call.addr(),
                call.addr().wrapping_sub(func),
            ),
        ));
    }
    Ok(plan)
}

/// Decides whether the first `need` bytes of the function `code` (its
/// bytes, as long as its ELF symbol size says), at address `func`, can be
/// replaced by a redirect of `need` bytes ([`JMP_REL32_LEN`] or
/// [`JMP_ABS_LEN`]). A leading `endbr64` is kept: the redirect then starts
/// 4 bytes in.
pub fn analyze_entry(code: &[u8], func: u64, need: usize) -> Result<EntryPlan, Refusal> {
    let skip = if starts_with_endbr64(code) {
        ENDBR64.len()
    } else {
        0
    };
    let start = func.wrapping_add(skip as u64);
    let available = code.len().saturating_sub(skip);
    if available < need {
        return Err(Refusal::new(
            RefusalReason::TooShort,
            format!(
                "the function at {func:#x} is {} bytes long{}: the redirect needs {need}",
                code.len(),
                if skip > 0 { " (endbr64 included)" } else { "" },
            ),
        ));
    }

    // The displaced prefix.
    let mut displaced = Vec::new();
    let mut covered = 0;
    while covered < need {
        let at = skip + covered;
        // `at` < `skip + need` <= `code.len()`: never empty.
        let rest = code.get(at..).unwrap_or_default();
        let insn = match decode(rest, func.wrapping_add(at as u64)) {
            Ok(insn) => insn,
            Err(e) if e.kind() == DecodeErrorKind::Truncated => {
                return Err(Refusal::new(
                    RefusalReason::TooShort,
                    format!(
                        "the function at {func:#x} is {} bytes long and its instructions covering the {need} bytes of the redirect do not end inside it",
                        code.len()
                    ),
                ));
            }
            Err(e) => {
                let message = format!(
                    "the function at {func:#x} cannot be decoded in the {need} bytes the redirect overwrites: {e}"
                );
                let mut refusal = Refusal::new(RefusalReason::Undecodable, message);
                refusal.decode_error = Some(e);
                return Err(refusal);
            }
        };
        covered += insn.len();
        check_relocatable(&insn, func)?;
        if !insn.falls_through() && covered < need {
            return Err(Refusal::new(
                RefusalReason::EndsInRange,
                format!(
                    "the function at {func:#x} has {} at {:#x} (+{:#x}), inside the {need} bytes the redirect overwrites: the bytes after it may not belong to this code path",
                    describe(&insn),
                    insn.addr(),
                    insn.addr().wrapping_sub(func),
                ),
            ));
        }
        displaced.push(insn);
    }

    let plan = EntryPlan {
        func,
        start,
        need,
        displaced,
        keeps_endbr64: skip > 0,
        indirect_jumps: 0,
    };
    scan(code, func, plan)
}

/// The relocation checks that do not depend on the trampoline's address.
fn check_relocatable(insn: &Insn, func: u64) -> Result<(), Refusal> {
    let why = if let Kind::Loop { .. } = insn.kind() {
        Some("has no rel32 form to reach the original target from a trampoline")
    } else if insn.rip_ref().is_some_and(|r| r.addr32) {
        Some("uses a 32-bit RIP-relative address")
    } else {
        None
    };
    match why {
        Some(why) => Err(Refusal::new(
            RefusalReason::Unrelocatable,
            format!(
                "the function at {func:#x} starts with an instruction that cannot be moved: {} at {:#x} {why}",
                describe(insn),
                insn.addr(),
            ),
        )),
        None => Ok(()),
    }
}

/// Decodes the whole function and refuses when something in it points
/// strictly inside the overwritten range.
fn scan(code: &[u8], func: u64, mut plan: EntryPlan) -> Result<EntryPlan, Refusal> {
    let range = (plan.start, plan.resume());
    for insn in decode_all(code, func) {
        let insn = match insn {
            Ok(insn) => insn,
            Err(e) => {
                let message = format!(
                    "the function at {func:#x} cannot be decoded completely, so branches into its first bytes cannot be ruled out: {e}"
                );
                let mut refusal = Refusal::new(RefusalReason::Undecodable, message);
                refusal.decode_error = Some(e);
                refusal.partial = Some(Box::new(plan));
                return Err(refusal);
            }
        };
        if insn.kind() == Kind::JmpIndirect {
            plan.indirect_jumps += 1;
        }
        if let Some(t) = pointer_into(&insn, range) {
            let (verb, what) = match insn.branch_target() {
                Some(_) => ("branches to", describe(&insn)),
                None => ("refers to", "the instruction".to_string()),
            };
            return Err(Refusal::new(
                RefusalReason::BranchIntoRange,
                format!(
                    "{what} at {:#x} (+{:#x}) {verb} {t:#x} (+{:#x}), inside the {} bytes the redirect overwrites at the start of the function at {func:#x}",
                    insn.addr(),
                    insn.addr().wrapping_sub(func),
                    t.wrapping_sub(func),
                    plan.covered(),
                ),
            ));
        }
    }
    Ok(plan)
}

/// The branch target or RIP-relative address of `insn`, if strictly
/// inside `(start, end)`.
fn pointer_into(insn: &Insn, (start, end): (u64, u64)) -> Option<u64> {
    [insn.branch_target(), insn.rip_ref().map(|r| r.target)]
        .into_iter()
        .flatten()
        .find(|&t| t > start && t < end)
}

/// The addresses of the instructions in `code` (at address `addr`) that
/// branch to, or take the address of, a byte strictly inside
/// `(plan.start(), plan.resume())`: for checking the other pieces of a
/// function (e.g. its `.cold` part) against a plan.
pub fn branches_into(code: &[u8], addr: u64, plan: &EntryPlan) -> Result<Vec<u64>, DecodeError> {
    let range = (plan.start(), plan.resume());
    let mut found = Vec::new();
    for insn in decode_all(code, addr) {
        let insn = insn?;
        if pointer_into(&insn, range).is_some() {
            found.push(insn.addr());
        }
    }
    Ok(found)
}

/// A short description of an instruction for messages: its kind and bytes.
fn describe(insn: &Insn) -> String {
    let name = match insn.kind() {
        Kind::Jmp { .. } => "a jmp",
        Kind::Jcc { .. } => "a conditional jump",
        Kind::Call { .. } => "a call",
        Kind::Loop { .. } => "a loop/jrcxz",
        Kind::Xbegin { .. } => "an xbegin",
        Kind::Ret => "a return",
        Kind::JmpIndirect => "an indirect jmp",
        Kind::CallIndirect => "an indirect call",
        Kind::Trap => "a trap (int3/ud2/hlt)",
        Kind::Syscall => "a system call",
        _ => "an instruction",
    };
    let bytes: Vec<String> = insn.bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{name} ({})", bytes.join(" "))
}

#[cfg(test)]
mod rewrite_plan_tests {
    use super::*;

    #[test]
    fn ulp_policy() {
        // endbr64; push %rbp; mov %rsp,%rbp; xor %eax,%eax; pop %rbp; ret
        let ok = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x31, 0xc0, 0x5d, 0xc3,
        ];
        let plan = rewrite_plan(&ok, 0x1000).unwrap();
        assert_eq!(plan.start(), 0x1004);
        assert!(plan.covered() >= JMP_REL32_LEN);
        // endbr64; call rel32; ret: the call would be displaced.
        let call = [0xf3, 0x0f, 0x1e, 0xfa, 0xe8, 0, 0, 0, 0, 0x90, 0x90, 0xc3];
        let r = rewrite_plan(&call, 0x1000).unwrap_err();
        assert_eq!(r.reason(), RefusalReason::DisplacesCall);
        assert!(r.to_string().contains("0x1004"), "{r}");
        // Too short: ret.
        assert_eq!(
            rewrite_plan(&[0xc3], 0x1000).unwrap_err().reason(),
            RefusalReason::TooShort
        );
    }
}

#[cfg(test)]
mod tls_call {
    use crate::Kind;

    #[test]
    fn rex_w_overrides_the_operand_size_prefix() {
        // data16 data16 rex.W call rel32: the general-dynamic TLS call.
        let i = crate::decode(&[0x66, 0x66, 0x48, 0xe8, 1, 2, 3, 4, 0xc3], 0x1000).unwrap();
        assert_eq!(i.len(), 8);
        assert!(matches!(i.kind(), Kind::Call { .. }));
        assert_eq!(i.branch_target(), Some(0x1008 + 0x0403_0201));
        // Without REX.W it stays refused (16-bit on AMD).
        assert!(crate::decode(&[0x66, 0xe8, 1, 2, 3, 4], 0x1000).is_err());
    }
}

//! Write planning: the writes that take each function from what its code
//! holds now to what the registry says. When two functions or more
//! change, they switch at once through guarded slots and one flag
//! ([`switch_plan`], the slot code in `switch.rs`); otherwise, or when no
//! switch can be made, each on its own write ([`plain_plan`]).

#[allow(unused_imports)]
use crate::prelude::*;

use ulp_abi::{entry_jump, parse_stub, stub_bytes, write_kind, Write};
use ulp_abi::{ENTRY_NOP, MAX_WRITES, STUB_LEN};

use crate::registry::Registry;
use crate::rewrite::{self, Rewritten};
use crate::ring;
use crate::site::read_mem;
use crate::switch;
use crate::thread;

use core::sync::atomic::{AtomicBool, Ordering};
use ulp_abi::transition::{self, OldCode};

/// Whether the current call plans a per-thread transition (the tool's
/// request flag); stored patches applied by the runtime itself never do
/// (no other thread runs then).
static PER_THREAD: AtomicBool = AtomicBool::new(false);

/// Sets [`PER_THREAD`] for the call being made.
pub(crate) fn per_thread(on: bool) {
    PER_THREAD.store(on, Ordering::Relaxed);
}

/// The write of `new` over `old` at `addr`.
pub(crate) fn make_write(addr: u64, kind: u32, old: &[u8], new: &[u8]) -> Write {
    Write::new(addr, kind, old, new)
}

/// How one function is redirected, with the bytes it holds now.
enum Held {
    /// Through its padding: the stub's 14 bytes and the 2 at the patch
    /// point.
    Padded {
        stub: u64,
        pad: [u8; STUB_LEN],
        jump: [u8; 2],
    },
    /// By an entry rewrite: its covered bytes.
    Rewrite { r: Rewritten, now: [u8; 16] },
}

/// One function whose redirection an operation changes.
struct Move {
    /// The function's entry (its symbol's address).
    entry: u64,
    patch_point: u64,
    held: Held,
    /// Where a call to it goes now (`None`: bytes that are not ours).
    from: Option<u64>,
    /// The new function it must go to; `None`: its own code.
    to: Option<u64>,
}

impl Move {
    /// Where its own code continues: after the entry NOP, or the
    /// trampoline.
    fn own(&self) -> u64 {
        match &self.held {
            Held::Padded { .. } => self.patch_point + 2,
            Held::Rewrite { r, .. } => r.tramp,
        }
    }

    fn to_addr(&self) -> u64 {
        self.to.unwrap_or_else(|| self.own())
    }
}

/// What `entry` holds now and where the registry says it must go; `None`
/// when nothing changes.
///
/// # Safety
/// The site's stub and patch point (or rewritten bytes) must be mapped.
unsafe fn move_of(reg: &Registry, entry: u64, patch_point: u64) -> Option<Move> {
    let to = reg
        .patches
        .iter()
        .rev()
        .find_map(|p| p.unit_at(entry))
        .map(|u| u.new_addr);
    if let Some(r) = rewrite::lookup(entry) {
        let mut now = [0u8; 16];
        now[..r.covered].copy_from_slice(&read_mem(r.start, r.covered));
        let from = rewrite::current_target(&r, &now);
        let held = Held::Rewrite { r, now };
        let m = Move {
            entry,
            patch_point: r.start,
            held,
            from,
            to,
        };
        return (from != Some(m.to_addr())).then_some(m);
    }
    let stub = entry - STUB_LEN as u64;
    let mut pad = [0u8; STUB_LEN];
    pad.copy_from_slice(&read_mem(stub, STUB_LEN));
    let mut jump = [0u8; 2];
    jump.copy_from_slice(&read_mem(patch_point, 2));
    let live = entry_jump(stub, patch_point) == Some(jump);
    let from = if live {
        parse_stub(stub, &pad).map(|s| s.target())
    } else {
        Some(patch_point + 2)
    };
    let m = Move {
        entry,
        patch_point,
        held: Held::Padded { stub, pad, jump },
        from,
        to,
    };
    (from != Some(m.to_addr())).then_some(m)
}

/// The writes that take each site from the bytes it holds now to what the
/// registry says: the function jumps to the newest applied patch of it,
/// or runs its own code when there is none (a padded entry back to the
/// 2-byte NOP, its stub bytes left unreachable; a rewritten entry back to
/// the library's bytes). When two functions or more change, they switch
/// at once ([`switch_plan`]); otherwise, or when no switch can be made,
/// the plain plan ([`plain_plan`]). Sites are `(entry, patch point)`;
/// duplicates are merged.
///
/// # Safety
/// Every site's stub and patch point (or rewritten bytes) must be mapped
/// code.
pub(crate) unsafe fn plan_writes(reg: &Registry, sites: &mut Vec<(u64, u64)>) -> Vec<Write> {
    sites.sort_unstable();
    sites.dedup_by_key(|s| s.0);
    let moves: Vec<Move> = sites
        .iter()
        .filter_map(|&(entry, patch_point)| move_of(reg, entry, patch_point))
        .collect();
    if PER_THREAD.load(Ordering::Relaxed) && !moves.is_empty() {
        if let Some(writes) = switch_plan(&moves, true) {
            return writes;
        }
        ring::log(format_args!(
            "{} functions switch every thread at once: no per-thread transition could be made \
             (no near page, or too many writes)",
            moves.len()
        ));
    }
    if moves.len() >= 2 {
        if let Some(writes) = switch_plan(&moves, false) {
            return writes;
        }
        ring::log(format_args!(
            "{} functions change one by one: no switch could be made (no near page, or too \
             many writes)",
            moves.len()
        ));
    }
    plain_plan(&moves)
}

/// Each function switched on its own write, every stub (and trampoline,
/// far stub) before any entry: a tool killed in the middle leaves each
/// function whole, some switched and others not.
fn plain_plan(moves: &[Move]) -> Vec<Write> {
    let mut first = Vec::new();
    let mut last = Vec::new();
    for m in moves {
        match (&m.held, m.to) {
            (Held::Rewrite { r, now }, Some(new_addr)) => {
                match rewrite::redirect_parts(r, new_addr) {
                    Ok((code, bytes)) => {
                        first.extend(code);
                        last.push(make_write(
                            r.start,
                            write_kind::REWRITE,
                            &now[..r.covered],
                            &bytes[..r.covered],
                        ));
                    }
                    // Only a far stub can fail, and the apply checked (and
                    // made) it: keep what the entry holds.
                    Err(why) => ring::log(format_args!("function at 0x{:x}: {why}", r.entry)),
                }
            }
            (Held::Rewrite { r, now }, None) => last.push(make_write(
                r.start,
                write_kind::REWRITE,
                &now[..r.covered],
                &r.original[..r.covered],
            )),
            (&Held::Padded { stub, pad, jump }, Some(new_addr)) => {
                let want = stub_bytes(stub, new_addr);
                if pad != want {
                    first.push(make_write(stub, write_kind::STUB, &pad, &want));
                }
                // The stub is 14 bytes before the entry and the patch point
                // at most 4 after it: the short jump always reaches.
                if let Some(to_stub) = entry_jump(stub, m.patch_point) {
                    if jump != to_stub {
                        last.push(make_write(
                            m.patch_point,
                            write_kind::ENTRY,
                            &jump,
                            &to_stub,
                        ));
                    }
                }
            }
            (&Held::Padded { jump, .. }, None) => {
                last.push(make_write(
                    m.patch_point,
                    write_kind::ENTRY,
                    &jump,
                    &ENTRY_NOP,
                ));
            }
        }
    }
    first.extend(last);
    first
}

/// The plan that switches every function of `moves` with one byte write:
///
/// 1. CODE: a guarded slot per function ([`switch::slot_code`]: to where
///    it goes now while the flag is 0, to where it must go once it is
///    not), in near pages, with the trampolines and far stubs the slots
///    and the final jumps lead to. Nothing reaches them yet.
/// 2. Each function pointed at its slot, one write each: a padded one's
///    stub re-pointed in place (STUB, one write), and when its entry is
///    the NOP, the entry jump after it (ENTRY); a rewritten one's entry
///    made `jmp rel32 slot` (REWRITE). The flag is 0: each still runs
///    what it ran.
/// 3. FLAG: the flag byte set to 1: every function switches at once.
/// 4. Each function pointed straight at its target, one write each: the
///    stub re-pointed (or the entry NOP again), the rewritten entry's
///    jump (or its original bytes). The call is back to two jumps.
///
/// `None` when a function holds bytes that are not ours, when no near
/// page can be mapped, the flag is out of a slot's reach, or the writes
/// would not fit in one result. The flag and the slots are never freed or
/// reused: a thread may still be inside a slot after the switch, and then
/// goes where the switch sent it.
fn switch_plan(moves: &[Move], per_thread: bool) -> Option<Vec<Write>> {
    let near = moves.first()?.patch_point;
    let flag = rewrite::alloc(switch::FLAG_LEN, near)?;
    let mut code = Vec::new();
    let mut records = Vec::new();
    let transition = if per_thread {
        let (t, tramp) = thread::new_transition(near, flag)?;
        code.extend(tramp);
        records.push(t.to_write());
        Some(t)
    } else {
        None
    };
    let mut point = Vec::new();
    let mut straight = Vec::new();
    for m in moves {
        let from = m.from?;
        let to = m.to_addr();
        let (slot, bytes) = match transition {
            Some(t) => {
                let slot = rewrite::alloc(transition::SLOT_LEN, m.patch_point)?;
                records.push(
                    OldCode {
                        entry: m.entry,
                        from,
                        slot,
                    }
                    .to_write(),
                );
                let b = transition::slot_code(slot, flag, t.id, t.mark_off, from, to)?;
                (slot, b)
            }
            None => {
                let slot = rewrite::alloc(switch::SLOT_LEN, m.patch_point)?;
                (slot, switch::slot_code(slot, flag, from, to)?)
            }
        };
        let mut padded = vec![0xcc; (bytes.len() + 7) & !7];
        padded[..bytes.len()].copy_from_slice(&bytes);
        match &m.held {
            Held::Rewrite { r, now } => {
                let (extra, last) = match m.to {
                    Some(new_addr) => rewrite::redirect_parts(r, new_addr).ok()?,
                    None => (rewrite::tramp_writes(r), r.original),
                };
                code.extend(extra);
                code.extend(rewrite::code_writes(slot, &padded));
                let via = rewrite::jump_bytes(r, slot)?;
                let n = r.covered;
                point.push(make_write(
                    r.start,
                    write_kind::REWRITE,
                    &now[..n],
                    &via[..n],
                ));
                straight.push(make_write(
                    r.start,
                    write_kind::REWRITE,
                    &via[..n],
                    &last[..n],
                ));
            }
            &Held::Padded { stub, pad, jump } => {
                code.extend(rewrite::code_writes(slot, &padded));
                let via = stub_bytes(stub, slot);
                point.push(make_write(stub, write_kind::STUB, &pad, &via));
                let to_stub = entry_jump(stub, m.patch_point)?;
                if jump != to_stub {
                    point.push(make_write(
                        m.patch_point,
                        write_kind::ENTRY,
                        &jump,
                        &to_stub,
                    ));
                }
                straight.push(match m.to {
                    Some(new_addr) => {
                        make_write(stub, write_kind::STUB, &via, &stub_bytes(stub, new_addr))
                    }
                    None => make_write(m.patch_point, write_kind::ENTRY, &to_stub, &ENTRY_NOP),
                });
            }
        }
    }
    let mut writes = code;
    writes.extend(point);
    writes.extend(records);
    // SAFETY: a byte of a near page we mapped (readable), 0 since.
    let now = unsafe { read_mem(flag, 1) };
    writes.push(make_write(flag, write_kind::FLAG, &now, &[1]));
    writes.extend(straight);
    (writes.len() <= MAX_WRITES).then_some(writes)
}

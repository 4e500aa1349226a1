//! Redirecting functions that have no patchable padding (stock libc, zlib,
//! libcrypto): the function's first instructions are replaced by a
//! `jmp rel32` (after its `endbr64`, if any) to the new function.
//!
//! * [`prepare`] decides, on the bytes in memory, with the same policy as
//!   `ulp livepatchable` (`ulp_x86::rewrite_plan`): the function is found
//!   in the target's dynamic symbol table (its size bounds the decoding),
//!   an IFUNC resolver is refused with the reason, and so is any entry the
//!   policy refuses (too short, a branch into the overwritten bytes, a
//!   displaced call, undecodable bytes).
//! * The displaced instructions are relocated into a *trampoline* in a
//!   page this runtime maps next to the library (read and execute only,
//!   within ±2 GiB; the tool writes its bytes through ptrace, nothing here
//!   writes code): the trampoline runs the old function, unpatched. A live
//!   patch reaches it through a pointer variable `__ulp_orig_<function>`
//!   of its own, which the apply fills in.
//! * A new function out of `jmp rel32` reach from the entry gets a far
//!   stub (`jmp *0(%rip)` and the address) in that page, and the entry
//!   jumps there.
//!
//! Every entry ever rewritten is remembered ([`Rewritten`]) with its
//! original bytes and its trampoline, for good: revert writes the original
//! bytes back, a later patch reuses the trampoline (a thread may still be
//! in it). Trampoline and far-stub bytes are handed to the tool again with
//! each apply that uses them, in 8-byte aligned pieces (one ptrace word
//! each): pieces already in place are skipped, so a write cut short by a
//! killed tool is completed, never trusted.

#[allow(unused_imports)]
use crate::prelude::*;

use core::cell::UnsafeCell;

use ulp_abi::{write_kind, Write};
use ulp_x86::{jmp_abs, jmp_rel32, relocate, rewrite_plan, trampoline_len_bound, JMP_REL32_LEN};

use crate::objects::{LoadedObject, PF_X, STT_GNU_IFUNC};

/// `int3`, filling the bytes between the `jmp` and the end of the last
/// displaced instruction (never executed).
const INT3: u8 = 0xcc;
/// Room per trampoline slot in a near page (a bound for any plan, checked).
const SLOT: u64 = 64;
/// Size of one near page mapping.
const NEAR_MAP: u64 = 64 * 1024;
/// How far a `jmp rel32` reaches, with a margin.
const REACH: u64 = (1 << 31) - NEAR_MAP;

/// An entry that has been rewritten at least once.
#[derive(Clone, Copy, Debug)]
pub struct Rewritten {
    /// The function (its symbol).
    pub entry: u64,
    /// The first overwritten byte (after `endbr64`).
    pub start: u64,
    /// How many bytes the displaced instructions cover (5 to 16).
    pub covered: usize,
    /// Those bytes as the library has them.
    pub original: [u8; 16],
    /// The trampoline that runs the old function.
    pub tramp: u64,
    /// Its bytes' length.
    pub tramp_len: usize,
    pub tramp_code: [u8; SLOT as usize],
}

/// A near page: `base`, and how much of it is handed out.
#[derive(Clone, Copy, Debug)]
struct Near {
    base: u64,
    used: u64,
}

struct State {
    rewritten: Vec<Rewritten>,
    pages: Vec<Near>,
    /// Far stubs made so far: (new function, stub address).
    stubs: Vec<(u64, u64)>,
}

struct Global(UnsafeCell<State>);

// SAFETY: touched only from `__ulp_entry`, one call at a time (BUSY), like
// the registry.
unsafe impl Sync for Global {}

static STATE: Global = Global(UnsafeCell::new(State {
    rewritten: Vec::new(),
    pages: Vec::new(),
    stubs: Vec::new(),
}));

fn state() -> &'static mut State {
    // SAFETY: see `Global`: one call at a time holds BUSY.
    unsafe { &mut *STATE.0.get() }
}

/// The rewrite record of `entry`, if it was ever rewritten.
pub fn lookup(entry: u64) -> Option<Rewritten> {
    state().rewritten.iter().find(|r| r.entry == entry).copied()
}

/// Whether `bytes` (at `start`) are a redirect this module wrote: a
/// `jmp rel32` then `int3` filler.
fn is_redirect(bytes: &[u8], covered: usize) -> bool {
    bytes.len() >= covered
        && bytes[0] == 0xe9
        && bytes[JMP_REL32_LEN..covered].iter().all(|&b| b == INT3)
}

/// Decides whether `entry` (the function `name` of `target`) can be
/// rewritten and prepares its record (trampoline included), without
/// changing anything: the record is kept by [`keep`] once the apply
/// cannot fail any more.
/// A refusal is a sentence about the function ("it ..."), for the
/// caller to prefix with its name.
///
/// `symbol`: the function's size and ELF symbol type, from the dynamic
/// symbol table in memory or, for a static function, the size the tool
/// read in the library file (`None`: unknown, refused).
pub fn prepare(
    target: &LoadedObject,
    entry: u64,
    symbol: Option<(u64, u8)>,
) -> Result<Rewritten, String> {
    if let Some(r) = lookup(entry) {
        return Ok(r);
    }
    let Some((size, kind)) = symbol else {
        return Err(
            "it has no patchable padding, and its size is unknown (neither the dynamic symbol \
             table nor the library file's symbols list it), so its entry cannot be rewritten \
             safely"
                .to_string(),
        );
    };
    if kind == STT_GNU_IFUNC {
        return Err("it is an IFUNC resolver".to_string());
    }
    if !target.contains(entry, size, PF_X) {
        return Err(format!(
            "its {size} bytes at 0x{entry:x} are not inside the code of the library"
        ));
    }
    // SAFETY: the whole function lies in an executable segment (checked).
    let code = unsafe { core::slice::from_raw_parts(entry as *const u8, size as usize) };
    let plan = rewrite_plan(code, entry).map_err(|r| {
        format!("it has no patchable padding, and its entry cannot be rewritten: {r}")
    })?;
    let covered = plan.covered();
    if covered > 16 {
        return Err(format!(
            "the instructions its entry rewrite would displace cover {covered} bytes (at most 16 \
             are supported)"
        ));
    }
    let start = plan.start();
    let mut original = [0u8; 16];
    let at = (start - entry) as usize;
    original[..covered].copy_from_slice(&code[at..at + covered]);
    if is_redirect(&original, covered) {
        return Err(
            "it already starts with a jump this runtime did not write (another tool's hook?)"
                .to_string(),
        );
    }
    if trampoline_len_bound(&plan) > SLOT as usize {
        return Err(format!("its trampoline would not fit in {SLOT} bytes"));
    }
    let tramp = alloc(SLOT, start).ok_or_else(|| {
        "no page for its trampoline could be mapped within 2 GiB of it".to_string()
    })?;
    let bytes =
        relocate(&plan, tramp).map_err(|e| format!("its trampoline cannot be built: {e}"))?;
    let mut tramp_code = [INT3; SLOT as usize];
    tramp_code[..bytes.len()].copy_from_slice(&bytes);
    Ok(Rewritten {
        entry,
        start,
        covered,
        original,
        tramp,
        tramp_len: bytes.len(),
        tramp_code,
    })
}

/// Remembers a prepared record for good (the apply succeeded).
pub fn keep(r: &Rewritten) {
    let st = state();
    if !st.rewritten.iter().any(|k| k.entry == r.entry) {
        st.rewritten.push(*r);
    }
}

/// The writes that make `r`'s entry jump to `new_fn`: the trampoline's
/// pieces (again, skipped by the tool when in place), a far stub when
/// `new_fn` is out of reach, then the entry itself.
pub fn redirect(r: &Rewritten, new_fn: u64) -> Result<Vec<Write>, String> {
    let (mut writes, new) = redirect_parts(r, new_fn)?;
    writes.push(entry_write(r, &new));
    Ok(writes)
}

/// [`redirect`] in parts: the CODE writes (trampoline, far stub) that
/// must be in place first, and the entry's bytes that jump to `new_fn`.
pub fn redirect_parts(r: &Rewritten, new_fn: u64) -> Result<(Vec<Write>, [u8; 16]), String> {
    let mut writes = tramp_writes(r);
    let target = match jmp_rel32(r.start, new_fn) {
        Some(_) => new_fn,
        None => {
            let known = state()
                .stubs
                .iter()
                .find(|&&(f, at)| f == new_fn && jmp_rel32(r.start, at).is_some())
                .map(|&(_, at)| at);
            let stub = match known {
                Some(at) => at,
                None => {
                    let at = alloc(16, r.start).ok_or(
                        "no page for a far stub could be mapped within 2 GiB of the function",
                    )?;
                    state().stubs.push((new_fn, at));
                    at
                }
            };
            let mut b = [INT3; 16];
            b[..14].copy_from_slice(&jmp_abs(new_fn));
            writes.extend(code_writes(stub, &b));
            stub
        }
    };
    let new = jump_bytes(r, target).ok_or("the stub is out of reach")?;
    Ok((writes, new))
}

/// The CODE writes of `r`'s trampoline (skipped by the tool when in place).
pub fn tramp_writes(r: &Rewritten) -> Vec<Write> {
    code_writes(r.tramp, &r.tramp_code[..round8(r.tramp_len)])
}

/// The entry bytes of `r` that jump to `target` (`jmp rel32` and `int3`
/// filler), when it is within reach.
pub fn jump_bytes(r: &Rewritten, target: u64) -> Option<[u8; 16]> {
    let jmp = jmp_rel32(r.start, target)?;
    let mut new = [INT3; 16];
    new[..JMP_REL32_LEN].copy_from_slice(&jmp);
    Some(new)
}

/// Where `r`'s entry sends a call when it holds `now` (its covered bytes):
/// the trampoline (the library's own instructions), or the target of our
/// `jmp rel32`; `None` for anything else.
pub fn current_target(r: &Rewritten, now: &[u8]) -> Option<u64> {
    if now.get(..r.covered)? == &r.original[..r.covered] {
        return Some(r.tramp);
    }
    if !is_redirect(now, r.covered) {
        return None;
    }
    let rel = i32::from_le_bytes(now.get(1..5)?.try_into().ok()?);
    Some((r.start + JMP_REL32_LEN as u64).wrapping_add(rel as i64 as u64))
}

/// The write that puts `r`'s original bytes back.
pub fn restore(r: &Rewritten) -> Write {
    entry_write(r, &r.original)
}

/// The REWRITE record from what the entry holds now to `new`.
fn entry_write(r: &Rewritten, new: &[u8; 16]) -> Write {
    // SAFETY: `start..start + covered` is inside the library's code
    // (checked by `prepare` when the record was made; code is never
    // unmapped while the library is loaded, and callers check that it is).
    let now = unsafe { core::slice::from_raw_parts(r.start as *const u8, r.covered) };
    Write::new(r.start, write_kind::REWRITE, now, &new[..r.covered])
}

fn round8(n: usize) -> usize {
    (n + 7) & !7
}

/// CODE writes of `bytes` at `addr` (8-byte aligned), one word each; the
/// old bytes are what the page holds now.
pub fn code_writes(addr: u64, bytes: &[u8]) -> Vec<Write> {
    bytes
        .chunks(8)
        .enumerate()
        .map(|(i, piece)| {
            let at = addr + 8 * i as u64;
            // SAFETY: inside a near page this module mapped (readable).
            let now = unsafe { core::slice::from_raw_parts(at as *const u8, piece.len()) };
            Write::new(at, write_kind::CODE, now, piece)
        })
        .collect()
}

/// `len` bytes (8-aligned) of a near page within reach of `near`: from a
/// page mapped before, or from a new one mapped next to it. Never freed:
/// trampolines, far stubs and the guarded slots and flags of
/// `switch.rs` all come from here.
pub fn alloc(len: u64, near: u64) -> Option<u64> {
    let st = state();
    let len = (len + 15) & !15;
    let reach = |base: u64| base.abs_diff(near) < REACH && (base + NEAR_MAP).abs_diff(near) < REACH;
    if let Some(p) = st
        .pages
        .iter_mut()
        .find(|p| reach(p.base) && p.used + len <= NEAR_MAP)
    {
        let at = p.base + p.used;
        p.used += len;
        return Some(at);
    }
    let base = map_near(near, &reach)?;
    st.pages.push(Near { base, used: len });
    Some(base)
}

/// Maps a read-and-execute anonymous page range within reach of `near`:
/// tries addresses below it, then above, each exactly
/// (`MAP_FIXED_NOREPLACE`: nothing mapped is ever replaced).
fn map_near(near: u64, reach: &dyn Fn(u64) -> bool) -> Option<u64> {
    const STEP: u64 = 16 << 20;
    let around = near & !(NEAR_MAP - 1);
    let candidates = (1..=96u64)
        .map(|k| around.wrapping_sub(k * STEP))
        .chain((1..=96u64).map(|k| around.wrapping_add(k * STEP)));
    for hint in candidates {
        if !(0x10000..0x7fff_0000_0000).contains(&hint) || !reach(hint) {
            continue;
        }
        // A new anonymous mapping at an address nothing occupies
        // (MAP_FIXED_NOREPLACE fails instead of replacing a mapping).
        let Some(got) = crate::sys::mmap_anonymous(
            hint,
            NEAR_MAP as usize,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
        ) else {
            continue;
        };
        if got == hint {
            return Some(got);
        }
        // An old kernel that treats the flag as a hint only.
        // SAFETY: the mapping just made, unmapped once.
        unsafe { crate::sys::munmap(got, NEAR_MAP as usize) };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for a function's first bytes (readable, in this binary).
    static CODE: [u8; 32] = [0x90; 32];
    /// The module's state is one call's at a time (BUSY in the runtime):
    /// so are these tests.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn record() -> Rewritten {
        let start = CODE.as_ptr() as u64;
        let mut original = [0u8; 16];
        original[..5].copy_from_slice(&CODE[..5]);
        Rewritten {
            entry: start,
            start,
            covered: 5,
            original,
            tramp: alloc(SLOT, start).expect("a near page next to the test binary"),
            tramp_len: 5,
            tramp_code: [INT3; SLOT as usize],
        }
    }

    fn bytes_of(writes: &[Write]) -> Vec<(u64, Vec<u8>)> {
        writes
            .iter()
            .map(|w| (w.addr, w.new[..w.len as usize].to_vec()))
            .collect()
    }

    #[test]
    fn a_near_new_function_is_jumped_to_directly() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let r = record();
        let new_fn = r.start + 0x1000;
        let w = redirect(&r, new_fn).unwrap();
        let entry = w.last().unwrap();
        assert_eq!(entry.kind, write_kind::REWRITE);
        assert_eq!(entry.addr, r.start);
        assert_eq!(entry.new[..5], jmp_rel32(r.start, new_fn).unwrap());
        // Before it: the trampoline's words only (no far stub).
        assert!(w[..w.len() - 1]
            .iter()
            .all(|c| c.kind == write_kind::CODE && c.addr >= r.tramp && c.addr < r.tramp + SLOT));
        assert_eq!(restore(&r).new[..5], CODE[..5]);
    }

    #[test]
    fn a_far_new_function_goes_through_a_stub_next_to_the_library() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let r = record();
        // Out of rel32 reach from the function.
        let new_fn = r.start.wrapping_add(3 << 30);
        assert!(jmp_rel32(r.start, new_fn).is_none());
        let w = redirect(&r, new_fn).unwrap();
        let entry = w.last().unwrap();
        let stub_words: Vec<(u64, Vec<u8>)> = bytes_of(&w[..w.len() - 1])
            .into_iter()
            .filter(|(a, _)| *a < r.tramp || *a >= r.tramp + SLOT)
            .collect();
        assert_eq!(stub_words.len(), 2, "a 16-byte stub in two words");
        let stub = stub_words[0].0;
        let mut b = stub_words[0].1.clone();
        b.extend(&stub_words[1].1);
        assert_eq!(b[..14], jmp_abs(new_fn), "jmp *0(%rip) to the new function");
        assert_eq!(entry.new[..5], jmp_rel32(r.start, stub).unwrap());
        // A second redirect to the same function reuses that stub.
        let again = redirect(&r, new_fn).unwrap();
        assert_eq!(again.last().unwrap().new, entry.new);
    }
}

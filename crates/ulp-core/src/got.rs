//! GOT slots of patched functions (`ulp trigger --redirect-got`).
//!
//! A call from another object to a patched function goes through that
//! object's PLT and GOT slot to the old entry, whose redirect (an entry
//! jump and a stub, or a rewritten entry) then leads to the new function:
//! one jump more than before the patch. With `--redirect-got`, each GOT
//! slot (R_X86_64_JUMP_SLOT or R_X86_64_GLOB_DAT against the function's
//! name, in any loaded object) that holds the old entry is pointed at the
//! new function itself, so such a call costs what it did before the patch.
//! The entry redirect stays: calls from inside the library, function
//! pointers and lazily bound slots (still at their PLT stub: they resolve
//! later, to the old entry) go through it.
//!
//! Safe against a tool killed at any moment (ARCHITECTURE.md, "GOT
//! slots"), with one bit of state in the target: the runtime's
//! `Interface::got_moved`, set before the first slot of the process moves
//! and never cleared, so that while it is 0 a revert need not look for
//! moved slots. In the stop window of the code writes,
//!
//! 1. before any code write, every slot of a function whose entry is about
//!    to change and that holds where the entry leads now (a slot an earlier
//!    `--redirect-got` moved) is put back to the old entry, whatever the
//!    option says: from then on every call through a slot goes through the
//!    entry, which always leads to one whole version of the code (the code
//!    writes are made so that a kill leaves them so);
//! 2. the code writes (`writes.rs`);
//! 3. with the option, every slot that holds the old entry, of a function
//!    whose entry now leads elsewhere, is pointed there (the flag set
//!    first).
//!
//! A kill during 1 leaves slots at the entry or at where it leads while the
//! code has not changed yet: both reach the current code, and the next
//! trigger (which completes the runtime's pending writes) does step 1 again
//! before going on. A kill during 3 leaves slots at the entry or at the new
//! function: both reach the new code. No slot ever holds the address of a
//! function a reverted patch left, so a revert (any: --revert,
//! --revert-all, a replace) needs no record of which slots were moved:
//! it finds them by their value. Each slot is one aligned word, written
//! with one PTRACE_POKEDATA (which also writes a read-only, RELRO, page).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use ulp_abi::elf::{self, ET_DYN, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, SHT_DYNSYM, SHT_RELA};
use ulp_abi::le::{u16_at, u32_at, u64_at};
use ulp_x86::ENDBR64;

use ulp_abi::{stub_target, write_kind, Write, STUB_LEN};
use ulp_process::{Mapping, Pid, RemoteAddr, Stopped};

use crate::objects::{objects_from_maps, MappedObject};

/// The entry jump to the stub before it (`jmp .-14`).
const ENTRY_JUMP: [u8; 2] = [0xeb, 0xf0];

/// The GOT slots of one function whose entry a plan changes.
#[derive(Debug)]
pub(crate) struct Function {
    /// Where the plan changes it: the entry NOP's place (the stub is the
    /// 14 bytes before it) or the first rewritten byte.
    point: u64,
    /// The function's address, as the loader binds it.
    entry: u64,
    /// The slots (addresses) bound to it by name, in every loaded object.
    slots: Vec<u64>,
}

/// The slots of the functions a plan changes ([`find`]).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    functions: Vec<Function>,
}

impl Slots {
    /// No slot of any function (nothing to put back or move).
    pub(crate) fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }
}

/// What was done to the slots in one stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Slots pointed at a new function.
    pub redirected: usize,
    /// Slots put back to an old entry.
    pub restored: usize,
}

/// The places where `writes` change a function's entry.
fn points(writes: &[Write]) -> Vec<u64> {
    let mut out: Vec<u64> = writes
        .iter()
        .filter_map(|w| match w.kind {
            write_kind::ENTRY | write_kind::REWRITE => Some(w.addr),
            write_kind::STUB => Some(w.addr + STUB_LEN as u64),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Where the code at `point` (a function's patch point) leads, from
/// `read` (which reads process memory): through the entry jump and its
/// stub, or a rewritten entry's `jmp rel32`, and through one far stub
/// (`jmp *0(%rip)`) after that. `None` when the function is not redirected.
fn destination(point: u64, read: &mut dyn FnMut(u64, &mut [u8]) -> bool) -> Option<u64> {
    let mut head = [0u8; 5];
    if !read(point, &mut head) {
        return None;
    }
    let target = if head[..2] == ENTRY_JUMP {
        let stub = point.checked_sub(STUB_LEN as u64)?;
        let mut b = [0u8; STUB_LEN];
        if !read(stub, &mut b) {
            return None;
        }
        stub_target(stub, &b)?
    } else if head[0] == 0xe9 {
        let rel = i32::from_le_bytes(head[1..5].try_into().ok()?);
        point.wrapping_add(5).wrapping_add(rel as i64 as u64)
    } else {
        return None;
    };
    // A far stub a rewritten entry jumps to.
    let mut b = [0u8; STUB_LEN];
    if read(target, &mut b) {
        if let Some(ulp_abi::Stub::Absolute { target: far }) = ulp_abi::parse_stub(target, &b) {
            return Some(far);
        }
    }
    Some(target)
}

/// One loaded object's dynamic symbol table and relocation sections, as
/// its file holds them (only those: a few tens of kB even for the C
/// library), shared by the processes that map the same file.
#[derive(Debug, Default)]
struct FileInfo {
    /// `.dynsym`'s raw entries and the string table they name.
    dynsym: Vec<u8>,
    dynstr: Vec<u8>,
    /// The raw `Elf64_Rela` entries of every RELA section that refers to
    /// `.dynsym` (`.rela.dyn`, `.rela.plt`).
    rela: Vec<u8>,
    /// Whether the file is a shared object (ET_DYN: its bias is where it is
    /// mapped; a non-PIE executable's is 0).
    shared: bool,
    /// [`FileInfo::slots_of`]'s answers so far: a fleet asks the same
    /// question of the same file in every process.
    slots: Mutex<HashMap<Vec<Vec<u8>>, Vec<u64>>>,
}

const SYM_SIZE: usize = elf::SYM_SIZE as usize;
const RELA_SIZE: usize = elf::RELA_SIZE as usize;

impl FileInfo {
    /// Reads the ELF header, the section headers, `.dynsym`, its string
    /// table and the RELA sections linked to it from `path`.
    fn read(path: &std::path::Path) -> Option<FileInfo> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path).ok()?;
        let read = |off: u64, len: u64| -> Option<Vec<u8>> {
            // No section of a sane library is anywhere near this.
            if len > 256 << 20 {
                return None;
            }
            let mut b = vec![0u8; len as usize];
            f.read_exact_at(&mut b, off).ok()?;
            Some(b)
        };
        let eh = read(0, 64)?;
        if eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
            return None;
        }
        let shoff = u64_at(&eh, 0x28)?;
        let shentsize = u64::from(u16_at(&eh, 0x3a)?);
        let shnum = u64::from(u16_at(&eh, 0x3c)?);
        if shentsize < 64 || shnum == 0 {
            return None;
        }
        let sh = read(shoff, shentsize * shnum)?;
        // (type, link, offset, size) of section `i`.
        let header = |i: u64| -> Option<(u32, u32, u64, u64)> {
            let at = (i * shentsize) as usize;
            Some((
                u32_at(&sh, at + 4)?,
                u32_at(&sh, at + 0x28)?,
                u64_at(&sh, at + 0x18)?,
                u64_at(&sh, at + 0x20)?,
            ))
        };
        let dynsym = (0..shnum).find(|&i| header(i).is_some_and(|h| h.0 == SHT_DYNSYM))?;
        let (_, strndx, off, size) = header(dynsym)?;
        let (_, _, str_off, str_size) = header(u64::from(strndx))?;
        let mut rela = Vec::new();
        for i in 0..shnum {
            if let Some((SHT_RELA, link, off, size)) = header(i) {
                if u64::from(link) == dynsym {
                    rela.extend(read(off, size)?);
                }
            }
        }
        Some(FileInfo {
            dynsym: read(off, size)?,
            dynstr: read(str_off, str_size)?,
            rela,
            shared: u16_at(&eh, 0x10)? == ET_DYN,
            slots: Mutex::default(),
        })
    }

    /// The name of symbol entry `raw` (its bytes in `.dynstr`).
    fn name<'a>(&'a self, raw: &[u8]) -> &'a [u8] {
        let at = u32_at(raw, 0).unwrap_or(0) as usize;
        let s = self.dynstr.get(at..).unwrap_or_default();
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// The names of the defined functions (STT_FUNC, STT_GNU_IFUNC) at
    /// file address `value`.
    fn functions_at(&self, value: u64) -> Vec<Vec<u8>> {
        self.dynsym
            .chunks_exact(SYM_SIZE)
            .filter(|raw| {
                let defined = u16_at(raw, 6).is_some_and(|shndx| shndx != 0);
                defined && matches!(raw[4] & 0xf, 2 | 10) && u64_at(raw, 8) == Some(value)
            })
            .map(|raw| self.name(raw).to_vec())
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// The file addresses of the GOT slots (JUMP_SLOT and GLOB_DAT
    /// relocations) against a symbol named one of `names` (remembered).
    fn slots_of(&self, names: &[Vec<u8>]) -> Vec<u64> {
        if let Some(found) = self.slots.lock().ok().and_then(|m| m.get(names).cloned()) {
            return found;
        }
        let found = self.scan_slots(names);
        if let Ok(mut m) = self.slots.lock() {
            m.insert(names.to_vec(), found.clone());
        }
        found
    }

    fn scan_slots(&self, names: &[Vec<u8>]) -> Vec<u64> {
        self.rela
            .chunks_exact(RELA_SIZE)
            .filter_map(|raw| {
                let (offset, info) = (u64_at(raw, 0)?, u64_at(raw, 8)?);
                let (r_type, sym) = ((info & 0xffff_ffff) as u32, (info >> 32) as usize);
                if !matches!(r_type, R_X86_64_JUMP_SLOT | R_X86_64_GLOB_DAT) || sym == 0 {
                    return None;
                }
                let entry = self.dynsym.get(sym * SYM_SIZE..(sym + 1) * SYM_SIZE)?;
                let name = self.name(entry);
                names.iter().any(|n| n[..] == *name).then_some(offset)
            })
            .collect()
    }
}

/// [`FileInfo::read`] of `obj` (through `/proc/PID/root` first, as
/// [`MappedObject::open`]), once per file (device, inode and path) in one
/// ulp run.
fn file_info(pid: Pid, obj: &MappedObject) -> Option<Arc<FileInfo>> {
    type Cache = Mutex<HashMap<(ulp_process::MapsField, u64, String), Option<Arc<FileInfo>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (obj.dev, obj.inode, obj.path.clone());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return found;
    }
    let path = obj.path.strip_suffix(" (deleted)").unwrap_or(&obj.path);
    let info = FileInfo::read(&ulp_process::in_root(pid, path))
        .or_else(|| FileInfo::read(std::path::Path::new(path)))
        .map(Arc::new);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, info.clone());
    }
    info
}

/// The GOT slots of the functions `writes` change, in every object `pid`
/// maps (read from its maps now, with every thread running): only when a
/// slot may need a change, i.e. `redirect` is asked for, or one of those
/// functions is redirected now and `moved()` says a tool may have moved
/// slots of this process (`Interface::got_moved`, set before any slot
/// moves: while it is 0, every slot still holds what the loader bound).
/// Slots are only candidates: [`before_writes`] and [`after_writes`]
/// check each one's value before writing it.
pub(crate) fn find(
    pid: Pid,
    writes: &[Write],
    redirect: bool,
    moved: impl FnOnce() -> bool,
) -> Slots {
    let points = points(writes);
    if points.is_empty() {
        return Slots::default();
    }
    let mut read =
        |addr: u64, buf: &mut [u8]| ulp_process::read_mem(pid, RemoteAddr::new(addr), buf).is_ok();
    if !redirect && (points.iter().all(|&p| destination(p, &mut read).is_none()) || !moved()) {
        return Slots::default();
    }
    let Ok(maps) = ulp_process::maps(pid) else {
        return Slots::default();
    };
    slots_in(pid, &maps, &points)
}

/// [`find`] in `maps`.
fn slots_in(pid: Pid, maps: &[Mapping], points: &[u64]) -> Slots {
    let objects: Vec<(MappedObject, Arc<FileInfo>)> = objects_from_maps(maps)
        .into_iter()
        .filter_map(|o| {
            let info = file_info(pid, &o)?;
            Some((o, info))
        })
        .collect();
    let bias = |o: &MappedObject, info: &FileInfo| if info.shared { o.bias } else { 0 };
    let mut functions = Vec::new();
    for &point in points {
        // The object whose file the point is in.
        let Some(m) = maps
            .iter()
            .find(|m| m.contains(RemoteAddr::new(point)) && m.inode != 0)
        else {
            continue;
        };
        let Some((obj, info)) = objects
            .iter()
            .find(|(o, _)| Some(o.path.as_str()) == m.path.as_deref())
        else {
            continue;
        };
        let b = bias(obj, info);
        // The function starts at the point, or at an `endbr64` before it.
        let (entry, names) = match info.functions_at(point.wrapping_sub(b)) {
            names if !names.is_empty() => (point, names),
            _ => {
                let mut e = [0u8; 4];
                let before = point.wrapping_sub(4);
                let endbr = ulp_process::read_mem(pid, RemoteAddr::new(before), &mut e).is_ok()
                    && e == ENDBR64;
                match info.functions_at(before.wrapping_sub(b)) {
                    names if endbr && !names.is_empty() => (before, names),
                    _ => continue,
                }
            }
        };
        let mut slots: Vec<u64> = objects
            .iter()
            .flat_map(|(o, i)| {
                let b = bias(o, i);
                i.slots_of(&names)
                    .into_iter()
                    .map(move |off| b.wrapping_add(off))
            })
            .collect();
        slots.sort_unstable();
        slots.dedup();
        if !slots.is_empty() {
            functions.push(Function {
                point,
                entry,
                slots,
            });
        }
    }
    Slots { functions }
}

/// The memory steps 1 and 3 read, with every thread stopped: the bytes
/// around every function's patch point and every slot, in one read of the
/// process (a handful of PTRACE_PEEKDATA each otherwise, inside the pause
/// the threads feel); anything else, or everything when that read fails,
/// read on its own.
struct Snapshot<'a> {
    stopped: &'a Stopped,
    pieces: Vec<(u64, usize)>,
    bytes: Vec<u8>,
}

impl<'a> Snapshot<'a> {
    fn take(stopped: &'a Stopped, slots: &Slots) -> Snapshot<'a> {
        let mut pieces = Vec::new();
        for f in &slots.functions {
            // The stub before the point and the entry's first 5 bytes.
            if let Some(stub) = f.point.checked_sub(STUB_LEN as u64) {
                pieces.push((stub, STUB_LEN + 5));
            }
            pieces.extend(f.slots.iter().map(|&s| (s, 8)));
        }
        match ulp_process::read_pieces(stopped.pid(), &pieces) {
            Ok(bytes) => Snapshot {
                stopped,
                pieces,
                bytes,
            },
            Err(_) => Snapshot {
                stopped,
                pieces: Vec::new(),
                bytes: Vec::new(),
            },
        }
    }

    /// Fills `buf` from `addr`: from the snapshot when it holds the range,
    /// else from the process (one read, or peeks where reading is refused).
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let mut at = 0;
        for &(start, len) in &self.pieces {
            if start <= addr && addr.saturating_add(buf.len() as u64) <= start + len as u64 {
                let off = at + (addr - start) as usize;
                buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
                return true;
            }
            at += len;
        }
        let pid = self.stopped.pid();
        ulp_process::read_mem(pid, RemoteAddr::new(addr), buf).is_ok()
            || self.stopped.peek(RemoteAddr::new(addr), buf).is_ok()
    }

    fn slot_value(&self, slot: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(slot, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// Which slots one step moves, decided on one [`Snapshot`]: for each
/// function whose entry leads elsewhere (`dest`), the slots that hold
/// `dest` go back to the entry (`back`, step 1), or those that hold the
/// entry go to `dest` (step 3). Pairs of (slot, new value).
fn slot_moves(stopped: &Stopped, slots: &Slots, back: bool) -> Vec<(u64, u64)> {
    let seen = Snapshot::take(stopped, slots);
    let mut moves = Vec::new();
    for f in &slots.functions {
        let Some(dest) = destination(f.point, &mut |a, b| seen.read(a, b)) else {
            continue;
        };
        if dest == f.entry {
            continue;
        }
        let (from, to) = if back {
            (dest, f.entry)
        } else {
            (f.entry, dest)
        };
        moves.extend(
            f.slots
                .iter()
                .filter(|&&slot| seen.slot_value(slot) == Some(from))
                .map(|&slot| (slot, to)),
        );
    }
    moves
}

/// Step 1, with every thread stopped, before any code write: every slot
/// that holds where its function's entry leads now goes back to the entry.
pub(crate) fn before_writes(
    stopped: &mut Stopped,
    slots: &Slots,
) -> Result<usize, ulp_process::Error> {
    if slots.functions.is_empty() {
        return Ok(0);
    }
    let back = slot_moves(stopped, slots, true);
    for &(slot, entry) in &back {
        stopped.poke(RemoteAddr::new(slot), &entry.to_le_bytes())?;
    }
    Ok(back.len())
}

/// Step 3, with every thread stopped, after the code writes: every slot
/// that holds its function's entry goes where the entry now leads.
///
/// A slot that cannot be written stays at the entry (which leads to the
/// same code): the count says how many were moved.
pub(crate) fn after_writes(stopped: &mut Stopped, slots: &Slots) -> usize {
    if slots.functions.is_empty() {
        return 0;
    }
    slot_moves(stopped, slots, false)
        .iter()
        .filter(|&&(slot, to)| {
            stopped
                .poke(RemoteAddr::new(slot), &to.to_le_bytes())
                .is_ok()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(at: u64, bytes: &[u8]) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
        move |a, buf| {
            let Some(off) = a.checked_sub(at).map(|o| o as usize) else {
                return false;
            };
            match bytes.get(off..off + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn destinations_through_stub_rewrite_and_far_stub() {
        let base = 0x1000u64;
        // A padded function at 0x100e: stub to 0x5000, entry jump.
        let mut m = vec![0x90u8; 64];
        m[..STUB_LEN].copy_from_slice(&ulp_abi::direct_stub(base, 0x5000).unwrap());
        m[14..16].copy_from_slice(&ENTRY_JUMP);
        assert_eq!(destination(base + 14, &mut mem(base, &m)), Some(0x5000));
        // Unpatched: the entry NOP.
        m[14..16].copy_from_slice(&[0x66, 0x90]);
        assert_eq!(destination(base + 14, &mut mem(base, &m)), None);
        // A rewritten entry to a far stub at base + 32.
        let mut r = vec![0xccu8; 64];
        r[0] = 0xe9;
        r[1..5].copy_from_slice(&(32i32 - 5).to_le_bytes());
        r[32..32 + STUB_LEN].copy_from_slice(&ulp_abi::absolute_stub(0x7777_0000_0000));
        assert_eq!(
            destination(base, &mut mem(base, &r)),
            Some(0x7777_0000_0000)
        );
        // Straight to its target.
        r[1..5].copy_from_slice(&(0x100i32).to_le_bytes());
        assert_eq!(destination(base, &mut mem(base, &r)), Some(base + 0x105));
    }

    #[test]
    fn points_of_a_plan() {
        let w = |addr, kind| Write::new(addr, kind, &[0; 2], &[1; 2]);
        let plan = [
            w(0x1000, write_kind::STUB),
            w(0x100e, write_kind::ENTRY),
            w(0x9000, write_kind::FLAG),
            w(0x2004, write_kind::REWRITE),
            w(0x8000, write_kind::CODE),
        ];
        assert_eq!(points(&plan), vec![0x100e, 0x2004]);
    }
}

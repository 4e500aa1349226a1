//! Per-thread transitions, the tool's half (ARCHITECTURE.md, "Per-thread
//! consistency"; the runtime's half is `ulp-runtime/src/thread.rs` and
//! the slot and trampoline code in `ulp_abi::transition`).
//!
//! A plan with a [`TransitionRecord`] is made in three parts:
//!
//! 1. every thread stopped: the code up to the FLAG, then every thread
//!    marked old ([`mark_all`]), then the FLAG. The journal stays set.
//! 2. [`settle`]: each old thread stopped alone and unwound. No frame of
//!    a replaced function's old code on its stack: it is made new. Else
//!    the return address of its outermost such frame is swapped for the
//!    runtime's thread trampoline, which makes it new when that frame
//!    returns, whether ulp still runs or not. Then wait (bounded) for the
//!    marks to clear.
//! 3. once no thread is old: every thread stopped again, the rest of the
//!    plan (each function pointed straight at its new code), the journal
//!    cleared. A transition that is still pending when the wait ends
//!    stays so (the dispatch keeps every thread whole) until a later
//!    trigger completes it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use ulp_abi::transition::{OldCode, Pending, PendingThread, TransitionRecord, NAME_LEN, SLOT_LEN};
use ulp_abi::transition::{PENDING_MAX, TRAMPOLINE_LEN};
use ulp_abi::{write_kind, Write};
use ulp_process::unwind::{FrameKind, StartRegs, Unwinder};
use ulp_process::{Mapping, Pid, RemoteAddr, Stopped, Tid};

use crate::objects::{objects_from_maps, MappedObject};
use crate::runtime::Runtime;
use crate::trigger::{Consistency, Options};
use crate::writes::Faults;

/// The transition a plan makes.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) rec: TransitionRecord,
    pub(crate) funcs: Vec<OldCode>,
}

/// The transition of `writes`, when it is a per-thread plan.
pub(crate) fn plan_of(writes: &[Write]) -> Option<Plan> {
    let rec = writes.iter().find_map(TransitionRecord::from_write)?;
    let funcs = writes.iter().filter_map(OldCode::from_write).collect();
    writes
        .iter()
        .any(|w| w.kind == write_kind::FLAG && w.addr == rec.flag)
        .then_some(Plan { rec, funcs })
}

fn at(base: u64, off: i32) -> RemoteAddr {
    RemoteAddr::new(base.wrapping_add(off as i64 as u64))
}

/// Whether the plan's flag is set in `pid` (read from outside): the
/// transition has begun.
pub(crate) fn flag_set(pid: Pid, plan: &Plan) -> bool {
    let mut b = [0u8; 1];
    ulp_process::read_mem(pid, RemoteAddr::new(plan.rec.flag), &mut b).is_ok() && b[0] != 0
}

/// Marks every stopped thread old for `rec` (all threads of the process
/// are stopped). Err: a thread without a thread pointer, or a failed
/// write.
pub(crate) fn mark_all(stopped: &mut Stopped, rec: &TransitionRecord) -> Result<(), String> {
    for tid in stopped.tids() {
        let fs = stopped.regs(tid).map_err(|e| e.to_string())?.fs_base();
        // The C library's thread control block starts with two pointers
        // to itself (`tcb` at 0, `self` at 16): anything else is not a
        // thread whose TLS the runtime's block is part of.
        let mut tcb = [0u8; 24];
        let ours = fs != 0
            && stopped.peek(RemoteAddr::new(fs), &mut tcb).is_ok()
            && u64::from_le_bytes(tcb[0..8].try_into().unwrap()) == fs
            && u64::from_le_bytes(tcb[16..24].try_into().unwrap()) == fs;
        if !ours {
            return Err(format!(
                "thread {tid} has no C library thread pointer (TLS at {fs:#x}): a per-thread \
                 transition cannot mark it; nothing was changed (--consistency=none switches \
                 every thread at once)"
            ));
        }
        stopped
            .poke(at(fs, rec.mark_off), &rec.id.to_le_bytes())
            .map_err(|e| format!("marking thread {tid}: {e}"))?;
    }
    Ok(())
}

/// Whether a stopped thread is still old.
pub(crate) fn is_old(stopped: &Stopped, tid: Tid, rec: &TransitionRecord) -> Result<bool, String> {
    let fs = stopped.regs(tid).map_err(|e| e.to_string())?.fs_base();
    if fs == 0 {
        return Ok(false);
    }
    let mut b = [0u8; 4];
    stopped
        .peek(at(fs, rec.mark_off), &mut b)
        .map_err(|e| e.to_string())?;
    Ok(u32::from_le_bytes(b) == rec.id)
}

/// What the transition came to within the wait.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transitioned {
    /// Threads still old, with the outermost replaced function on each
    /// one's stack (the first [`PENDING_MAX`]).
    pub pending: Vec<(Tid, String)>,
    /// How many threads are still old.
    pub pending_count: usize,
    /// Threads checked (stopped alone and unwound).
    pub checked: usize,
    /// Threads whose return address was swapped for the trampoline.
    pub armed: usize,
    /// How long each check held its thread, the longest.
    pub pause_max: Duration,
    /// The median of those holds.
    pub pause_median: Duration,
}

impl Transitioned {
    pub fn complete(&self) -> bool {
        self.pending_count == 0
    }

    /// `2 threads: 4711 in fna, 4712 in hello_loop`.
    pub fn describe(&self) -> String {
        let list: Vec<String> = self
            .pending
            .iter()
            .map(|(t, f)| format!("{t} in {f}"))
            .collect();
        let more = self.pending_count.saturating_sub(self.pending.len());
        let tail = if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        };
        format!("{} threads: {}{tail}", self.pending_count, list.join(", "))
    }
}

/// An address range of old code, named after the function it belongs to.
#[derive(Clone, Debug)]
struct Range {
    start: u64,
    end: u64,
    name: String,
}

/// Each file's functions (file addresses, sorted), by device and inode,
/// read once per tool run.
type FileFunctions = Arc<Vec<(u64, u64, String)>>;
static FUNCS: LazyLock<Mutex<HashMap<(String, u64), FileFunctions>>> =
    LazyLock::new(Default::default);

/// `f` at load bias `bias`.
fn rebase(f: &[(u64, u64, String)], bias: u64) -> Vec<(u64, u64, String)> {
    f.iter()
        .map(|(s, e, n)| (s + bias, e + bias, n.clone()))
        .collect()
}

/// Names code addresses by the function symbols of the mapped objects.
struct Symbols {
    pid: Pid,
    maps: Vec<Mapping>,
    objects: Vec<MappedObject>,
    /// Per object path: (start, end, name), sorted by start.
    funcs: HashMap<String, Vec<(u64, u64, String)>>,
}

impl Symbols {
    fn new(pid: Pid) -> Result<Symbols, String> {
        let maps = ulp_process::maps(pid).map_err(|e| e.to_string())?;
        let objects = objects_from_maps(&maps);
        Ok(Symbols {
            pid,
            maps,
            objects,
            funcs: HashMap::new(),
        })
    }

    fn mapping(&self, addr: u64) -> Option<&Mapping> {
        self.maps.iter().find(|m| m.contains(RemoteAddr::new(addr)))
    }

    fn object(&self, addr: u64) -> Option<MappedObject> {
        let m = self.mapping(addr)?;
        m.path.as_ref()?;
        self.objects
            .iter()
            .find(|o| o.dev == m.dev && o.inode == m.inode && m.inode != 0)
            .cloned()
    }

    /// The function containing `addr`: its range and name.
    fn function(&mut self, addr: u64) -> Option<(u64, u64, String)> {
        let obj = self.object(addr)?;
        let pid = self.pid;
        let key = (obj.dev.clone(), obj.inode);
        let list = self.funcs.entry(obj.path.clone()).or_insert_with(|| {
            // Read once per tool run (a fleet maps the same files).
            if let Some(f) = FUNCS.lock().ok().and_then(|c| c.get(&key).cloned()) {
                return rebase(&f, obj.bias);
            }
            let names = [".symtab", ".strtab", ".dynsym", ".dynstr"];
            let Ok(elf) = obj.open_sections(pid, &names) else {
                return Vec::new();
            };
            let bias = crate::objects::bias_for(&obj, &elf);
            let mut v: Vec<(u64, u64, String)> = elf
                .function_symbols()
                .into_iter()
                .map(|s| (s.value, s.value + s.size, s.name))
                .collect();
            v.sort_by_key(|f| f.0);
            let v = Arc::new(v);
            // Only a file whose symbols are relative to its load bias (a
            // shared object, a PIE) is kept: an executable's are absolute.
            if bias == obj.bias {
                if let Ok(mut c) = FUNCS.lock() {
                    c.insert(key, v.clone());
                }
            }
            rebase(&v, bias)
        });
        list.iter()
            .filter(|f| f.0 <= addr && addr < f.1)
            .min_by_key(|f| f.1 - f.0)
            .cloned()
    }

    /// The executable mappings of the object containing `addr`.
    fn object_code(&self, addr: u64) -> Vec<(u64, u64)> {
        let Some(m) = self.mapping(addr) else {
            return Vec::new();
        };
        if m.inode == 0 {
            return Vec::new();
        }
        self.maps
            .iter()
            .filter(|x| x.dev == m.dev && x.inode == m.inode && x.is_executable())
            .map(|x| (x.start.get(), x.end.get()))
            .collect()
    }
}

/// The old code of the plan's functions, under `model`: each function's
/// own code, what a call went to before (an older patch's function, a
/// trampoline), its guarded slot; for the library model, all the code of
/// the objects those are in.
fn old_code(plan: &Plan, model: Consistency, syms: &mut Symbols) -> Vec<Range> {
    let mut out = Vec::new();
    for f in &plan.funcs {
        let name = syms
            .function(f.entry)
            .map(|x| x.2)
            .unwrap_or_else(|| format!("{:#x}", f.entry));
        let mut add = |start: u64, end: u64| {
            out.push(Range {
                start,
                end,
                name: name.clone(),
            })
        };
        if let Some((s, e, _)) = syms.function(f.entry) {
            add(s, e);
        } else {
            // No symbol: at least its first bytes.
            add(f.entry, f.entry + 16);
        }
        match syms.function(f.from) {
            Some((s, e, _)) => add(s, e),
            // A trampoline (or far stub) in a near page.
            None => add(f.from, f.from + 64),
        }
        add(f.slot, f.slot + SLOT_LEN);
        if model == Consistency::Library {
            for (s, e) in syms
                .object_code(f.entry)
                .into_iter()
                .chain(syms.object_code(f.from))
            {
                add(s, e);
            }
        }
    }
    out
}

/// One thread as a check left it.
enum Check {
    /// New (its mark cleared), exited, or never old.
    New,
    /// Its outermost replaced frame returns through the trampoline.
    Armed(String),
    /// Could not be decided now (unwind incomplete, inside a near page):
    /// checked again later.
    Unsure(String),
}

/// Stops thread `tid` alone, unwinds it and makes it new or arms its
/// trampoline; returns what it did, its thread pointer (0: unknown) and
/// how long the thread was held, from its stop to its release.
fn check_thread(
    pid: Pid,
    tid: Tid,
    rec: &TransitionRecord,
    ranges: &[Range],
    unwinder: &mut Unwinder,
    deadline: Instant,
) -> (Check, u64, Duration) {
    let Ok(mut stopped) = Stopped::seize_threads(pid, &[tid], deadline) else {
        // Gone (or not seizable now: checked again later if it exists).
        let c = if thread_exists(pid, tid) {
            Check::Unsure(String::new())
        } else {
            Check::New
        };
        return (c, 0, Duration::ZERO);
    };
    // Held from its stop (the wait for a running thread to reach it is
    // not a pause of that thread).
    let start = Instant::now();
    let fs = stopped.regs(tid).map(|r| r.fs_base()).unwrap_or(0);
    let c = check_stopped(&mut stopped, tid, rec, ranges, unwinder);
    let _ = stopped.release();
    (c, fs, start.elapsed())
}

fn check_stopped(
    stopped: &mut Stopped,
    tid: Tid,
    rec: &TransitionRecord,
    ranges: &[Range],
    unwinder: &mut Unwinder,
) -> Check {
    let Ok(regs) = stopped.regs(tid) else {
        return Check::Unsure(String::new());
    };
    let fs = regs.fs_base();
    match is_old(stopped, tid, rec) {
        Ok(true) => {}
        Ok(false) => return Check::New,
        Err(_) => return Check::Unsure(String::new()),
    }
    let tramp = rec.trampoline;
    let in_tramp = |a: u64| (tramp..tramp + TRAMPOLINE_LEN).contains(&a);
    let stack = unwinder.unwind(StartRegs {
        ip: regs.rip(),
        sp: regs.rsp(),
        bp: regs.rbp(),
    });
    let find = |f: &ulp_process::unwind::Frame| {
        let a = f.lookup_addr();
        ranges.iter().find(|r| r.start <= a && a < r.end)
    };
    let outermost = stack
        .frames
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, f)| find(f).map(|r| (i, r.name.clone())));
    // Already armed by an earlier check (of an interrupted ulp): it
    // switches by itself.
    if stack.frames.iter().any(|f| in_tramp(f.addr)) {
        return Check::Armed(outermost.map(|o| o.1).unwrap_or_default());
    }
    if !stack.complete {
        let name = outermost.map(|o| o.1).unwrap_or_default();
        return Check::Unsure(name);
    }
    let Some((k, name)) = outermost else {
        return match stopped.poke(at(fs, rec.mark_off), &0u32.to_le_bytes()) {
            Ok(()) => Check::New,
            Err(_) => Check::Unsure(String::new()),
        };
    };
    // The return address out of the outermost replaced frame.
    let Some(ret) = stack.frames.get(k + 1) else {
        return Check::Unsure(name);
    };
    let (FrameKind::Return, Some(slot)) = (ret.kind, ret.slot) else {
        return Check::Unsure(name);
    };
    let saved = stopped.poke(at(fs, rec.ret_off), &ret.addr.to_le_bytes());
    let swapped = saved.and_then(|()| stopped.poke(RemoteAddr::new(slot), &tramp.to_le_bytes()));
    match swapped {
        Ok(()) => Check::Armed(name),
        Err(_) => Check::Unsure(name),
    }
}

fn thread_exists(pid: Pid, tid: Tid) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// Whether old thread `tid` (thread pointer `fs`) is still old, read from
/// outside (nothing stopped).
fn still_old(pid: Pid, tid: Tid, fs: u64, rec: &TransitionRecord) -> bool {
    let mut b = [0u8; 4];
    thread_exists(pid, tid)
        && ulp_process::read_mem(pid, at(fs, rec.mark_off), &mut b).is_ok()
        && u32::from_le_bytes(b) == rec.id
}

/// Part 2 of a transition (see the module's text): checks every thread of
/// the process, then waits until `wait_until` for the old ones to become
/// new. `deadline` bounds each stop.
pub(crate) fn settle(
    rt: &Runtime,
    plan: &Plan,
    opts: &Options,
    wait_until: Instant,
    deadline: Instant,
    faults: &Faults,
) -> Result<Transitioned, String> {
    let model = opts.consistency;
    let pid = rt.pid;
    let rec = &plan.rec;
    let mut syms = Symbols::new(pid)?;
    let ranges = old_code(plan, model, &mut syms);
    let mut unwinder = Unwinder::new(pid).map_err(|e| e.to_string())?;
    // Read every file's unwind information before any thread is held.
    unwinder.load_all();
    let tids = ulp_process::threads(pid).map_err(|e| e.to_string())?;
    let mut pauses = Vec::with_capacity(tids.len());
    // Threads still old: (tid, thread pointer, function, armed).
    let mut old: Vec<(Tid, u64, String, bool)> = Vec::new();
    let mut out = Transitioned::default();
    let mut check = |tid: Tid, pauses: &mut Vec<Duration>| {
        let (c, fs, held) = check_thread(pid, tid, rec, &ranges, &mut unwinder, deadline);
        pauses.push(held);
        (c, fs)
    };
    for &tid in &tids {
        match check(tid, &mut pauses) {
            (Check::New, _) => {}
            (Check::Armed(f), fs) => old.push((tid, fs, f, true)),
            (Check::Unsure(f), fs) => old.push((tid, fs, f, false)),
        }
    }
    out.checked = pauses.len();
    out.armed = old.iter().filter(|o| o.3).count();
    write_pending(rt, rec, &old)?;
    faults.in_transition();
    let mut nap = Duration::from_micros(200);
    let mut last_recheck = Instant::now();
    while !old.is_empty() && Instant::now() < wait_until {
        std::thread::sleep(nap.min(wait_until.saturating_duration_since(Instant::now())));
        nap = (nap * 2).min(Duration::from_millis(5));
        let recheck = last_recheck.elapsed() >= Duration::from_millis(5);
        if recheck {
            last_recheck = Instant::now();
        }
        let mut left = Vec::with_capacity(old.len());
        for (tid, fs, f, armed) in old.drain(..) {
            if fs != 0 && !still_old(pid, tid, fs, rec) {
                continue;
            }
            if !armed && recheck {
                match check(tid, &mut pauses) {
                    (Check::New, _) => continue,
                    (Check::Armed(g), fs2) => {
                        left.push((tid, fs2.max(fs), g, true));
                        continue;
                    }
                    (Check::Unsure(g), fs2) => {
                        let g = if g.is_empty() { f } else { g };
                        left.push((tid, fs2.max(fs), g, false));
                        continue;
                    }
                }
            }
            left.push((tid, fs, f, armed));
        }
        old = left;
    }
    out.pending_count = old.len();
    out.pending = old
        .iter()
        .take(PENDING_MAX)
        .map(|(t, _, f, _)| (*t, if f.is_empty() { "?".into() } else { f.clone() }))
        .collect();
    pauses.sort();
    out.pause_max = pauses.last().copied().unwrap_or_default();
    out.pause_median = pauses.get(pauses.len() / 2).copied().unwrap_or_default();
    write_pending(rt, rec, &old)?;
    Ok(out)
}

/// Records the threads still old for `ulp patches` (none: no transition).
fn write_pending(
    rt: &Runtime,
    rec: &TransitionRecord,
    old: &[(Tid, u64, String, bool)],
) -> Result<(), String> {
    let mut table = Pending::ZERO;
    if !old.is_empty() {
        table.id = u64::from(rec.id);
        table.mark_off = i64::from(rec.mark_off);
        table.count = old.len() as u64;
        for (slot, (tid, fs, f, _)) in table.threads.iter_mut().zip(old) {
            *slot = PendingThread::ZERO;
            slot.tid = tid.get() as u64;
            slot.fs_base = *fs;
            let n = f.len().min(NAME_LEN - 1);
            slot.name[..n].copy_from_slice(&f.as_bytes()[..n]);
        }
    }
    rt.set_pending(&table).map_err(|e| e.to_string())
}

/// The threads of `pid` a transition recorded as pending that are still
/// old, read from outside: (tid, function), and how many.
pub fn pending_now(rt: &Runtime) -> Option<(Vec<(Tid, String)>, usize)> {
    let p = rt.pending().ok()?;
    if p.id == 0 || p.count == 0 {
        return None;
    }
    let rec = TransitionRecord {
        id: p.id as u32,
        mark_off: p.mark_off as i32,
        ret_off: 0,
        trampoline: 0,
        flag: 0,
    };
    let listed = (p.count as usize).min(PENDING_MAX);
    let mut left = Vec::new();
    for t in &p.threads[..listed] {
        let tid = Tid::new(t.tid as i32);
        if t.fs_base == 0 || still_old(rt.pid, tid, t.fs_base, &rec) {
            left.push((tid, String::from_utf8_lossy(t.name()).into_owned()));
        }
    }
    let unlisted = p.count as usize - listed;
    let count = left.len() + unlisted;
    (count > 0).then_some((left, count))
}

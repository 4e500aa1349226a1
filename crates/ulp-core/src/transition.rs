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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ulp_abi::transition::PENDING_MAX;
use ulp_abi::transition::{OldCode, Pending, PendingThread, TransitionRecord, NAME_LEN, SLOT_LEN};
use ulp_abi::{write_kind, Write};
use ulp_process::unwind::{FrameKind, StartRegs, Unwinder};
use ulp_process::{Mapping, PerFile, Pid, RemoteAddr, Stopped, Tid};

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

/// Whether the process runs with shadow stacks (x86 CET user shadow
/// stacks, `x86_Thread_features: shstk` in /proc/PID/status): a return
/// through the thread trampoline would not match its shadow stack and
/// fault.
///
/// A kernel built without user shadow stacks has no such line in any
/// process's status: then no process can run with them, and the target's
/// status (an expensive file for the kernel to make, read once per process
/// of a fleet) is not read. Whether the kernel has them is asked once per
/// ulp run, with `arch_prctl(ARCH_SHSTK_STATUS)` on ulp itself: the
/// kernel answers it exactly when it is built with user shadow stacks
/// (the same configuration that prints the status line), and says EINVAL
/// otherwise, as kernels older than 6.6 do for an unknown code. One system
/// call, where ulp's own status cost 13 µs on the VM measured.
pub(crate) fn shadow_stack(pid: Pid) -> bool {
    static KERNEL_HAS_THEM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let possible = *KERNEL_HAS_THEM.get_or_init(kernel_has_shadow_stacks);
    possible
        && ulp_process::read_text(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix(THREAD_FEATURES)
                    .is_some_and(|v| v.split_whitespace().any(|w| w == "shstk"))
            })
        })
}

/// Whether this kernel has user shadow stacks ([`shadow_stack`]): any
/// answer of `arch_prctl(ARCH_SHSTK_STATUS)` but "no such code" (an error
/// of another kind too) says they may be there.
fn kernel_has_shadow_stacks() -> bool {
    const ARCH_SHSTK_STATUS: libc::c_long = 0x5005;
    let mut features: u64 = 0;
    // SAFETY: arch_prctl with this code writes one unsigned long at the
    // address given, which is `features`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_SHSTK_STATUS,
            &mut features as *mut u64,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
}

/// The status line of a kernel with x86 user shadow stacks.
const THREAD_FEATURES: &str = "x86_Thread_features:";

/// Whether the plan's flag is set in `pid` (read from outside): the
/// transition has begun.
pub(crate) fn flag_set(pid: Pid, plan: &Plan) -> bool {
    let mut b = [0u8; 1];
    ulp_process::read_mem(pid, RemoteAddr::new(plan.rec.flag), &mut b).is_ok() && b[0] != 0
}

/// Each stopped thread's thread pointer.
fn thread_pointers(stopped: &Stopped) -> Result<Vec<(Tid, u64)>, String> {
    stopped
        .tids()
        .into_iter()
        .map(|tid| Ok((tid, stopped.regs(tid).map_err(|e| e.to_string())?.fs_base())))
        .collect()
}

/// Threads whose C library thread control block was checked, by thread
/// pointer: the ones a first wave of a stop holds are checked before the
/// running threads are interrupted ([`ThreadBlocks::check`]), so that
/// [`mark_all`] reads only the others inside the pause. A stopped
/// thread's pointer and its block do not change.
#[derive(Debug, Default)]
pub(crate) struct ThreadBlocks {
    good: HashSet<(Tid, u64)>,
}

impl ThreadBlocks {
    /// Checks the blocks of `tids` (stopped threads of `stopped`) with one
    /// read; remembers those that are the C library's. A thread whose
    /// registers or block cannot be read is left for [`mark_all`].
    pub(crate) fn check(&mut self, stopped: &Stopped, tids: &[Tid]) {
        let threads: Vec<(Tid, u64)> = tids
            .iter()
            .filter_map(|&t| Some((t, stopped.regs(t).ok()?.fs_base())))
            .filter(|t| t.1 != 0 && !self.good.contains(t))
            .collect();
        if let Some(ours) = c_library_blocks(stopped.pid(), &threads) {
            self.good
                .extend(threads.iter().zip(ours).filter(|t| t.1).map(|t| *t.0));
        }
    }
}

/// For each of `threads` (thread, thread pointer), whether its thread
/// pointer leads to a C library thread control block (one read of them
/// all); `None` when that read fails.
fn c_library_blocks(pid: Pid, threads: &[(Tid, u64)]) -> Option<Vec<bool>> {
    // A null thread pointer has no block to read.
    let bases: Vec<u64> = threads.iter().map(|t| t.1).filter(|&b| b != 0).collect();
    let blocks = if bases.is_empty() {
        Vec::new()
    } else {
        ulp_process::read_scattered(pid, &bases, 24).ok()?
    };
    // The C library's thread control block starts with two pointers to
    // itself (`tcb` at 0, `self` at 16): anything else is not a thread
    // whose TLS the runtime's block is part of.
    let mut read = blocks.chunks_exact(24);
    Some(
        threads
            .iter()
            .map(|&(_, fs)| {
                fs != 0
                    && read.next().is_some_and(|b| {
                        let w = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
                        w(0) == fs && w(16) == fs
                    })
            })
            .collect(),
    )
}

/// Marks every stopped thread old for `rec` (all threads of the process
/// are stopped), with one read of every thread control block not
/// `checked` yet and one write of every mark. Err: a thread without a C
/// library thread pointer (nothing is written then), or a failed write.
pub(crate) fn mark_all(
    stopped: &mut Stopped,
    rec: &TransitionRecord,
    checked: &ThreadBlocks,
) -> Result<(), String> {
    let pid = stopped.pid();
    let threads = thread_pointers(stopped)?;
    let unchecked: Vec<(Tid, u64)> = threads
        .iter()
        .copied()
        .filter(|t| !checked.good.contains(t))
        .collect();
    let ours = c_library_blocks(pid, &unchecked);
    for (i, (tid, fs)) in unchecked.iter().enumerate() {
        if !ours.as_ref().is_some_and(|o| o[i]) {
            return Err(format!(
                "thread {tid} has no C library thread pointer (TLS at {fs:#x}): a per-thread \
                 transition cannot mark it; nothing was changed (--consistency=none switches \
                 every thread at once)"
            ));
        }
    }
    let marks: Vec<u64> = threads
        .iter()
        .map(|&(_, fs)| at(fs, rec.mark_off).get())
        .collect();
    let ids: Vec<u8> = marks.iter().flat_map(|_| rec.id.to_le_bytes()).collect();
    ulp_process::write_scattered(pid, &marks, &ids, 4)
        .map_err(|e| format!("marking the threads: {e}"))
}

/// The stopped threads that are still old (one read of every mark).
pub(crate) fn old_threads(stopped: &Stopped, rec: &TransitionRecord) -> Result<Vec<Tid>, String> {
    let threads: Vec<(Tid, u64)> = thread_pointers(stopped)?
        .into_iter()
        .filter(|t| t.1 != 0)
        .collect();
    let marks: Vec<u64> = threads
        .iter()
        .map(|t| at(t.1, rec.mark_off).get())
        .collect();
    let now = ulp_process::read_scattered(stopped.pid(), &marks, 4).map_err(|e| e.to_string())?;
    Ok(threads
        .iter()
        .enumerate()
        .filter(|(i, _)| u32::from_le_bytes(now[i * 4..i * 4 + 4].try_into().unwrap()) == rec.id)
        .map(|(_, t)| t.0)
        .collect())
}

/// Whether the mark of the thread whose thread pointer is `fs` holds `id`
/// (the thread is old in that transition); `mark_off` is where marks are.
fn marked(pid: Pid, fs: u64, mark_off: i32, id: u32) -> Result<bool, String> {
    let mut b = [0u8; 4];
    ulp_process::read_mem(pid, at(fs, mark_off), &mut b).map_err(|e| e.to_string())?;
    Ok(u32::from_le_bytes(b) == id)
}

/// Whether a stopped thread is still old.
pub(crate) fn is_old(stopped: &Stopped, tid: Tid, rec: &TransitionRecord) -> Result<bool, String> {
    let fs = stopped.regs(tid).map_err(|e| e.to_string())?.fs_base();
    if fs == 0 {
        return Ok(false);
    }
    marked(stopped.pid(), fs, rec.mark_off, rec.id)
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
        describe_pending(&self.pending, self.pending_count)
    }
}

/// `2 threads: 4711 in fna, 4712 in hello_loop` for `count` threads still
/// old, of which `named` are listed (`..., and N more` for the others).
pub fn describe_pending(named: &[(Tid, String)], count: usize) -> String {
    let list: Vec<String> = named.iter().map(|(t, f)| format!("{t} in {f}")).collect();
    let more = count.saturating_sub(named.len());
    let tail = if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    };
    format!("{count} threads: {}{tail}", list.join(", "))
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
static FUNCS: PerFile<FileFunctions> = PerFile::new();

/// The sections [`functions_of`] reads.
pub(crate) const FUNCTION_SECTIONS: [&str; 4] = [".symtab", ".strtab", ".dynsym", ".dynstr"];

/// The functions of `elf`, the file `obj` maps (file addresses, sorted),
/// and the load bias they take; kept for the run when they are relative
/// to the load bias (a shared object, a PIE: an executable's are
/// absolute). Whoever reads the file first (the pre-check's unit sizes,
/// or the transition) saves the other its read.
pub(crate) fn functions_of(obj: &MappedObject, elf: &ulp_elf::ElfFile) -> (FileFunctions, u64) {
    let bias = crate::objects::bias_for(obj, elf);
    let mut v: Vec<(u64, u64, String)> = elf
        .function_symbols()
        .into_iter()
        .map(|s| (s.value, s.value + s.size, s.name))
        .collect();
    v.sort_by_key(|f| f.0);
    let v = Arc::new(v);
    if bias == obj.bias {
        FUNCS.put(obj.dev, obj.inode, v.clone());
    }
    (v, bias)
}

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
    fn with_maps(pid: Pid, maps: Vec<Mapping>) -> Symbols {
        let objects = objects_from_maps(&maps);
        Symbols {
            pid,
            maps,
            objects,
            funcs: HashMap::new(),
        }
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
        let list = self.funcs.entry(obj.path.clone()).or_insert_with(|| {
            // Read once per tool run (a fleet maps the same files).
            if let Some(f) = FUNCS.get(obj.dev, obj.inode) {
                return rebase(&f, obj.bias);
            }
            let Ok(elf) = obj.open_sections(pid, &FUNCTION_SECTIONS) else {
                return Vec::new();
            };
            let (v, bias) = functions_of(&obj, &elf);
            rebase(&v, bias)
        });
        list.iter()
            .filter(|f| f.0 <= addr && addr < f.1)
            .min_by_key(|f| f.1 - f.0)
            .cloned()
    }

    /// The parts the compiler split off function `name` of the object
    /// containing `addr` (`name.cold`, `name.part.0`, ...).
    fn parts_of(&mut self, addr: u64, name: &str) -> Vec<(u64, u64)> {
        if self.function(addr).is_none() {
            return Vec::new();
        }
        let Some(obj) = self.object(addr) else {
            return Vec::new();
        };
        let prefix = format!("{name}.");
        self.funcs
            .get(&obj.path)
            .map(|list| {
                list.iter()
                    .filter(|f| f.2.starts_with(&prefix))
                    .map(|f| (f.0, f.1))
                    .collect()
            })
            .unwrap_or_default()
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
        let own = syms.function(f.entry);
        let name = own
            .as_ref()
            .map(|x| x.2.clone())
            .unwrap_or_else(|| format!("{:#x}", f.entry));
        let mut add = |start: u64, end: u64| {
            out.push(Range {
                start,
                end,
                name: name.clone(),
            })
        };
        // The function itself, and the parts the compiler split off it
        // (`f.cold`); without a symbol (a stripped library's static
        // function), all of its object's code.
        match &own {
            Some((s, e, n)) => {
                add(*s, *e);
                for (cs, ce) in syms.parts_of(f.entry, n) {
                    add(cs, ce);
                }
            }
            None => {
                for (s, e) in syms.object_code(f.entry) {
                    add(s, e);
                }
            }
        }
        // Where a call went before: a function (an older patch's), or a
        // trampoline or far stub in a near page, and the function a far
        // stub leads to.
        let mut froms = vec![f.from];
        if let Some(target) = far_stub_target(syms.pid, f.from) {
            froms.push(target);
        }
        for from in froms {
            match syms.function(from) {
                Some((s, e, n)) => {
                    add(s, e);
                    for (cs, ce) in syms.parts_of(from, &n) {
                        add(cs, ce);
                    }
                }
                None if syms.object(from).is_some() => {
                    for (s, e) in syms.object_code(from) {
                        add(s, e);
                    }
                }
                None => add(from, from + 64),
            }
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

/// Where the far stub at `at` (`jmp *0(%rip)` and an address) leads.
fn far_stub_target(pid: Pid, at: u64) -> Option<u64> {
    let mut b = [0u8; 14];
    ulp_process::read_mem(pid, RemoteAddr::new(at), &mut b).ok()?;
    (b[..6] == [0xff, 0x25, 0, 0, 0, 0]).then(|| u64::from_le_bytes(b[6..14].try_into().unwrap()))
}

/// One thread as a check left it.
#[derive(PartialEq, Eq)]
enum Check {
    /// New (its mark cleared), exited, or never old.
    New,
    /// Its outermost replaced frame returns through the trampoline.
    Armed(String),
    /// Could not be decided now (unwind incomplete, inside a near page):
    /// checked again later.
    Unsure(String),
    /// Did not stop within the bound (not running: it waits for a CPU, or
    /// sleeps uninterruptibly).
    Slow,
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
    bound: Duration,
) -> (Check, u64, Duration) {
    // A thread that does not stop within `bound` is not running: checked
    // later, with others (`settle`).
    let soon = deadline.min(Instant::now() + bound);
    let Ok(mut stopped) = Stopped::seize_threads(pid, &[tid], soon) else {
        let c = if thread_exists(pid, tid) {
            Check::Slow
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

/// The outermost frame of `stack` in old code: its index and function.
fn outermost_replaced(
    stack: &ulp_process::unwind::Stack,
    ranges: &[Range],
) -> Option<(usize, String)> {
    stack.frames.iter().enumerate().rev().find_map(|(i, f)| {
        let a = f.lookup_addr();
        ranges
            .iter()
            .find(|r| r.start <= a && a < r.end)
            .map(|r| (i, r.name.clone()))
    })
}

/// Whether `stack` may decide anything: whole, every frame of it in code
/// whose unwind information was read (a frame in anonymous code, a slot,
/// a trampoline, a stub, JIT code, was unwound by a frame-pointer guess,
/// which code that keeps no frame pointer makes wrong).
fn decides(stack: &ulp_process::unwind::Stack, unwinder: &mut Unwinder) -> bool {
    stack.complete
        && stack
            .frames
            .iter()
            .all(|f| unwinder.covered(f.lookup_addr()))
}

/// What the checks of one transition need: the old code and an unwinder of
/// the process, made before any thread is stopped.
pub(crate) struct Checker {
    ranges: Vec<Range>,
    unwinder: Unwinder,
}

/// What a [`Checker`] needs before the plan is known: the process's
/// symbols and unwind information, read before the runtime's call, while
/// no thread is held (for a process of one thread, held from that call to
/// the end of its writes).
pub(crate) struct Prepared {
    syms: Symbols,
    unwinder: Unwinder,
}

impl Prepared {
    /// From maps of `pid` read a moment ago; the functions of the objects
    /// mapped at each of `objects` (addresses: the libraries the change is
    /// about) read now too. An object the call maps later (the container)
    /// is not known to it: see [`Prepared::checker`].
    pub(crate) fn new(pid: Pid, maps: Vec<Mapping>, objects: &[u64]) -> Prepared {
        let mut syms = Symbols::with_maps(pid, maps);
        for &a in objects {
            syms.function(a);
        }
        let mut unwinder = Unwinder::with_maps(pid, &syms.maps);
        // The unwind information the thread's stack needs, read now, before
        // the thread is held. For the first process of a tool run (one
        // `ulp trigger -p PID`), only the files its stack runs through, when
        // it waits in the kernel as a thread usually does. Every file's for
        // the others: read once per tool run (a fleet maps the same files),
        // they then find them all read and read nothing.
        static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
        let first = FIRST.swap(false, std::sync::atomic::Ordering::Relaxed);
        let enough =
            unwinder.load_known() || (first && unwinder.load_for_blocked(pid.main_thread()));
        if !enough {
            unwinder.load_all();
        }
        Prepared { syms, unwinder }
    }

    /// The checker of `plan`. Its unwinder knows the code mapped before
    /// the call only: enough to decide on a thread stopped since before
    /// the call (it has run no code the call mapped), not for a thread
    /// that ran since ([`Checker::new`] then).
    pub(crate) fn checker(mut self, plan: &Plan, model: Consistency) -> Checker {
        let ranges = old_code(plan, model, &mut self.syms);
        Checker {
            ranges,
            unwinder: self.unwinder,
        }
    }
}

impl Checker {
    pub(crate) fn new(pid: Pid, plan: &Plan, model: Consistency) -> Result<Checker, String> {
        let maps = ulp_process::maps(pid).map_err(|e| e.to_string())?;
        Ok(Prepared::new(pid, maps, &[]).checker(plan, model))
    }

    /// Whether stopped thread `tid` has provably no old code on its stack.
    pub(crate) fn clean(&mut self, stopped: &Stopped, tid: Tid) -> bool {
        let Ok(regs) = stopped.regs(tid) else {
            return false;
        };
        let stack = self.unwinder.unwind(StartRegs {
            ip: regs.rip(),
            sp: regs.rsp(),
            bp: regs.rbp(),
        });
        decides(&stack, &mut self.unwinder) && outermost_replaced(&stack, &self.ranges).is_none()
    }
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
    let stack = unwinder.unwind(StartRegs {
        ip: regs.rip(),
        sp: regs.rsp(),
        bp: regs.rbp(),
    });
    let outermost = outermost_replaced(&stack, ranges);
    let name = || outermost.as_ref().map(|o| o.1.clone()).unwrap_or_default();
    // Armed by an earlier check of this transition (an interrupted ulp's,
    // or this run's first pass): its outermost replaced frame returns to
    // the trampoline, and the thread switches by itself.
    let armed_here = stack
        .frames
        .iter()
        .any(|f| f.kind == FrameKind::Return && f.addr == tramp);
    if armed_here {
        return Check::Armed(name());
    }
    // Armed in this transition but the trampoline is not on this stack:
    // the thread runs on another stack now (a coroutine's), or the unwind
    // stopped short. Neither switched nor armed again (that would lose the
    // saved return address).
    let mut armed_id = [0u8; 4];
    if stopped
        .peek(at(fs, rec.mark_off + 4), &mut armed_id)
        .is_err()
        || u32::from_le_bytes(armed_id) == rec.id
    {
        return Check::Unsure(name());
    }
    // Only a whole stack, every frame of it in code whose unwind
    // information was read, decides anything: a frame in anonymous code (a
    // slot, a trampoline, a stub, JIT code) was unwound by a frame-pointer
    // guess, which code that keeps no frame pointer makes wrong.
    if !decides(&stack, unwinder) {
        return Check::Unsure(name());
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
    // The saved return address first (a kill then leaves the stack as it
    // was), then the swap, then this transition's id beside the mark.
    let armed = stopped
        .poke(at(fs, rec.ret_off), &ret.addr.to_le_bytes())
        .and_then(|()| stopped.poke(RemoteAddr::new(slot), &tramp.to_le_bytes()))
        .and_then(|()| stopped.poke(at(fs, rec.mark_off + 4), &rec.id.to_le_bytes()));
    match armed {
        Ok(()) => Check::Armed(name),
        Err(_) => Check::Unsure(name),
    }
}

/// Whether thread `tid` still runs: not gone, not a zombie, not on its
/// way out (an exiting process's threads are never waited for).
fn thread_exists(pid: Pid, tid: Tid) -> bool {
    !ulp_process::thread_ended(pid, tid)
}

/// Whether old thread `tid` (thread pointer `fs`) is still old, read from
/// outside (nothing stopped).
fn still_old(pid: Pid, tid: Tid, fs: u64, mark_off: i32, id: u32) -> bool {
    thread_exists(pid, tid) && marked(pid, fs, mark_off, id) == Ok(true)
}

/// Part 2 of a transition (see the module's text): checks every thread of
/// the process, then waits until `wait_until` for the old ones to become
/// new. `deadline` bounds each stop.
pub(crate) fn settle(
    rt: &Runtime,
    plan: &Plan,
    checker: Option<Checker>,
    opts: &Options,
    wait_until: Instant,
    deadline: Instant,
    faults: &Faults,
) -> Result<Transitioned, String> {
    let model = opts.consistency;
    let pid = rt.pid;
    let rec = &plan.rec;
    let Checker {
        ranges,
        mut unwinder,
    } = match checker {
        Some(c) => c,
        None => Checker::new(pid, plan, model)?,
    };
    let tids = ulp_process::threads(pid).map_err(|e| e.to_string())?;
    let mut pauses = Vec::with_capacity(tids.len());
    // Threads still old: (tid, thread pointer, function, armed).
    let mut old: Vec<(Tid, u64, String, bool)> = Vec::new();
    let mut out = Transitioned::default();
    let check = |tid: Tid, pauses: &mut Vec<Duration>, bound: Duration, u: &mut Unwinder| {
        let (c, fs, held) = check_thread(pid, tid, rec, &ranges, u, deadline, bound);
        if c != Check::Slow {
            pauses.push(held);
        }
        (c, fs)
    };
    // A thread asleep in the kernel stops at once, and is checked alone.
    // One that runs or waits for a CPU stops when it gets one, which on a
    // busy machine can take long for a thread of low priority: those are
    // stopped together (up to 128), so that their waits overlap and each
    // one's stop frees a CPU for the next (a stop that does not land in
    // time would leave the thread traced by this tool until it exits).
    // The threads that run now (runnable, not SCHED_IDLE) make a group of
    // their own: none of them is held while the others' stops come in and
    // their stacks are unwound.
    let (mut running, mut slow) = (Vec::new(), Vec::new());
    for &tid in &tids {
        if !matches!(ulp_process::thread_state(pid, tid), Some('S' | 'T' | 't')) {
            if ulp_process::thread_runs(pid, tid) {
                running.push(tid);
            } else {
                slow.push(tid);
            }
            continue;
        }
        match check(tid, &mut pauses, Duration::from_secs(2), &mut unwinder) {
            (Check::New, _) => {}
            (Check::Armed(f), fs) => old.push((tid, fs, f, true)),
            (Check::Unsure(f), fs) => old.push((tid, fs, f, false)),
            (Check::Slow, _) => old.push((tid, 0, String::new(), false)),
        }
    }
    for group in running.chunks(128).chain(slow.chunks(128)) {
        let soon = deadline.min(Instant::now() + Duration::from_secs(2));
        let Ok(mut stopped) = Stopped::seize_threads(pid, group, soon) else {
            old.extend(
                group
                    .iter()
                    .filter(|&&t| thread_exists(pid, t))
                    .map(|&t| (t, 0, String::new(), false)),
            );
            continue;
        };
        let start = Instant::now();
        for tid in stopped.tids() {
            let fs = stopped.regs(tid).map(|r| r.fs_base()).unwrap_or(0);
            match check_stopped(&mut stopped, tid, rec, &ranges, &mut unwinder) {
                Check::New => {}
                Check::Armed(f) => old.push((tid, fs, f, true)),
                Check::Unsure(f) => old.push((tid, fs, f, false)),
                Check::Slow => old.push((tid, fs, String::new(), false)),
            }
        }
        let held = stopped.tids().len();
        let _ = stopped.release();
        pauses.extend(std::iter::repeat_n(start.elapsed(), held));
    }
    out.checked = pauses.len();
    out.armed = old.iter().filter(|o| o.3).count();
    // The table was emptied in the first stop: written only when some
    // thread is pending (a write to a running process races its exit).
    if !old.is_empty() {
        write_pending(rt, rec, &old)?;
    }
    let pending_first = !old.is_empty();
    faults.in_transition();
    let mut nap = Duration::from_micros(200);
    // Threads that could not be decided are stopped again, less and less
    // often (each stop may cut a wait of theirs short with EINTR).
    let mut recheck_every = Duration::from_millis(5);
    let mut last_recheck = Instant::now();
    while !old.is_empty() && Instant::now() < wait_until {
        // A process on its way out is not waited for (nor written to: a
        // write racing its exit could leave this tool tearing its memory
        // down).
        if !ulp_process::process_alive(pid) {
            return Ok(out);
        }
        std::thread::sleep(nap.min(wait_until.saturating_duration_since(Instant::now())));
        nap = (nap * 2).min(Duration::from_millis(5));
        let recheck = last_recheck.elapsed() >= recheck_every;
        if recheck {
            last_recheck = Instant::now();
            recheck_every = (recheck_every * 2).min(Duration::from_millis(200));
        }
        let mut left = Vec::with_capacity(old.len());
        for (tid, fs, f, armed) in old.drain(..) {
            if fs != 0 && !still_old(pid, tid, fs, rec.mark_off, rec.id) {
                continue;
            }
            if !armed && recheck {
                match check(tid, &mut pauses, Duration::from_secs(2), &mut unwinder) {
                    (Check::New, _) => continue,
                    (Check::Slow, _) => {
                        left.push((tid, fs, f, false));
                        continue;
                    }
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
    if pending_first {
        write_pending(rt, rec, &old)?;
    }
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
    let used = Pending::HEAD + old.len().min(PENDING_MAX) * PendingThread::SIZE;
    rt.set_pending(&table.to_bytes()[..used])
        .map_err(|e| e.to_string())
}

/// The threads of `pid` a transition recorded as pending that are still
/// old, read from outside: (tid, function), and how many.
pub fn pending_now(rt: &Runtime) -> Option<(Vec<(Tid, String)>, usize)> {
    let p = rt.pending().ok()?;
    if p.id == 0 || p.count == 0 {
        return None;
    }
    let listed = (p.count as usize).min(PENDING_MAX);
    let mut left = Vec::new();
    for t in &p.threads[..listed] {
        let tid = Tid::new(t.tid as i32);
        if t.fs_base == 0 || still_old(rt.pid, tid, t.fs_base, p.mark_off as i32, p.id as u32) {
            left.push((tid, String::from_utf8_lossy(t.name()).into_owned()));
        }
    }
    let unlisted = p.count as usize - listed;
    let count = left.len() + unlisted;
    (count > 0).then_some((left, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_answer_on_shadow_stacks_matches_its_status_line() {
        // The kernel prints the status line exactly when it is built with
        // user shadow stacks, and answers ARCH_SHSTK_STATUS then too.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().any(|l| l.starts_with(THREAD_FEATURES));
        assert_eq!(kernel_has_shadow_stacks(), line, "{status}");
        // And a process of this test's own is judged by its line.
        let me = Pid::this();
        let on = status
            .lines()
            .any(|l| l.starts_with(THREAD_FEATURES) && l.contains("shstk"));
        assert_eq!(shadow_stack(me), on);
    }
}

//! Applying and reverting live patches in one process.
//!
//! The flow (ARCHITECTURE.md, "How a trigger flows"):
//!
//! 1. Pre-check from outside, nothing stopped: the runtime is loaded, the
//!    target object is mapped and its build-id matches. Otherwise SKIPPED.
//! 2. Stop one thread and run the runtime's entry point on it. The runtime
//!    loads the container, resolves functions and references, updates its
//!    registry and answers with the byte writes to make. The process's other
//!    threads keep running meanwhile, so a lock they hold is released and
//!    the call cannot deadlock on them.
//! 3. Stop every thread, check that none is executing bytes about to change
//!    and that the bytes are still what the runtime saw, make the writes
//!    in the runtime's order (every stub before the entry jump that leads
//!    to it; several functions switched by one flag byte: ARCHITECTURE.md,
//!    "Switching several functions at once"),
//!    resume everything.
//!    The write engine that does this is [`crate::writes`].
//! 4. If the writes cannot be made (a thread is always in the way, an
//!    error), ask the runtime to undo its registry change: the process keeps
//!    its old code and a registry that says so.
//!
//! Four operations use this flow: [`apply`], [`revert`], [`revert_all`]
//! (every patch of one library) and [`replace`] (every patch of one library
//! swapped for a new one, as one set of writes made in one stop, so no
//! thread ever runs with neither the old nor the new code). Each has a
//! `*_report` form that also returns what happened in detail ([`Detail`]).
//!
//! Chrooted or containerised targets ([`Options::root`], `-R PREFIX`): the
//! tool reads each file where it is, and the runtime, which opens it from
//! inside the target, is given `PREFIX` + the file's real path (where this
//! host's root appears in the target's view), as libpulp does.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ulp_abi::errors;
use ulp_abi::{code, offset, op, ApplyRequest, ReplaceRequest, Write, REQUEST_MAX};
use ulp_container::container::Container;
use ulp_container::format::Metadata;
use ulp_elf::ElfFile;
use ulp_process::{Incarnation, Mapping, Pid, ReturnPath, SeizeOptions, Stopped};

use crate::caller;
use crate::objects::{chroot_of, named_objects, named_objects_in, objects_from_maps, MappedObject};
use crate::reason::Reason;
use crate::runtime::{Runtime, RuntimeError};
use crate::writes::{
    check_rewrites_against_files, complete_pending_writes, make_plan, Faults, Held, Unwritten,
};

/// How to run one trigger.
#[derive(Clone, Debug)]
pub struct Options {
    /// Upper bound for the whole operation in one process.
    pub timeout: Duration,
    /// How many more times to try when every thread cannot be caught
    /// outside the bytes to change.
    pub retries: u32,
    /// `-R PREFIX`: the runtime is given PREFIX + the real path of a file
    /// (a string concatenation, unchecked: PREFIX is a path in the
    /// target's view, where this host's root appears for a chrooted or
    /// containerised process, e.g. `/proc/1/root` or a bind mount).
    pub root: Option<PathBuf>,
    /// Suspend the target's seccomp filters while it is attached
    /// (PTRACE_O_SUSPEND_SECCOMP; needs CAP_SYS_ADMIN).
    pub suspend_seccomp: bool,
    /// `--redirect-got`: after the code writes, point the GOT slots that
    /// hold a patched function's old entry at its new function (`got.rs`).
    pub redirect_got: bool,
    /// `--consistency`: how threads move to the new code.
    pub consistency: Consistency,
    /// How long to wait for a per-thread transition to complete (the
    /// trigger then reports the threads still old).
    pub transition_wait: Duration,
}

/// When a thread moves to the new code of a change (ARCHITECTURE.md,
/// "Per-thread consistency").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Once no replaced function's old code is on its stack.
    #[default]
    Function,
    /// Once no code of the target library (or of its patches) is on its
    /// stack.
    Library,
    /// Every thread at once (libpulp's behaviour).
    None,
}

impl Consistency {
    pub fn parse(s: &str) -> Option<Consistency> {
        match s {
            "function" => Some(Consistency::Function),
            "library" => Some(Consistency::Library),
            "none" => Some(Consistency::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Consistency::Function => "function",
            Consistency::Library => "library",
            Consistency::None => "none",
        }
    }

    /// The request flags that ask the runtime for this model.
    pub(crate) fn req_flags(self) -> u64 {
        match self {
            Consistency::None => 0,
            _ => ulp_abi::req_flag::PER_THREAD,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            retries: 3,
            root: None,
            suspend_seccomp: false,
            redirect_got: false,
            consistency: Consistency::default(),
            transition_wait: Duration::from_secs(2),
        }
    }
}

impl Options {
    pub(crate) fn seize(&self) -> SeizeOptions {
        SeizeOptions {
            suspend_seccomp: self.suspend_seccomp,
            ..SeizeOptions::default()
        }
    }
}

/// What happened in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Reverted,
    /// The patch is applied already: nothing changed (a skip).
    AlreadyApplied,
    /// Nothing changed, for a reason that is not a failure.
    Skipped(Reason),
    /// The runtime is not loaded: nothing changed (a warning, not an error).
    NoRuntime,
    Failed(Reason),
}

/// The reason `ulp trigger` prints for an already applied patch.
pub const ALREADY_APPLIED: &str = errors::EAPPLIED.phrase;

impl Outcome {
    /// Whether the process changed.
    pub fn is_change(&self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Reverted)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied => f.write_str("applied"),
            Outcome::Reverted => f.write_str("reverted"),
            Outcome::AlreadyApplied => write!(f, "skipped: {ALREADY_APPLIED}"),
            Outcome::Skipped(r) => write!(f, "skipped: {r}"),
            Outcome::NoRuntime => {
                f.write_str("the live-patching runtime is not loaded in the target process")
            }
            Outcome::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

/// Details of one operation in one process, for `-v` and `--json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detail {
    /// The runtime's path in the process.
    pub runtime: Option<String>,
    /// The runtime's own words about the operation (its message log line).
    pub message: Option<String>,
    /// Code writes made (0 when nothing was written).
    pub writes: usize,
    /// Threads stopped for the writes.
    pub threads: usize,
    /// How long those threads were stopped (seize to release).
    pub stopped: Option<Duration>,
    /// Attempts at the writes (more than one when a thread was in the way).
    pub attempts: u32,
    /// GOT slots pointed at a new function (`--redirect-got`), and put
    /// back to an old entry (crate::got).
    pub got: crate::got::Moved,
    /// Where the time of the operation went ([`Phases`]).
    pub phases: Phases,
    /// The per-thread transition of the change, when it had one.
    pub transition: Option<crate::transition::Transitioned>,
    /// Why the transition's last writes wait for the next trigger (every
    /// thread runs the new code already).
    pub unfinished: Option<String>,
    /// A per-thread transition was asked for, but the runtime could make
    /// none (no page within reach of the library for the slots, or too
    /// many writes): every thread switched at once, each function whole.
    pub switched_at_once: bool,
}

/// Where the time of one operation in one process went, phase by phase
/// (a few clock reads; printed by `ulp trigger -v` and `--json`). A phase
/// that did not happen is zero. `total` is from the runtime look-up (or
/// the operation's start, for a later operation in the same process) to
/// the end; the phases need not add up to it exactly (the gaps are
/// bookkeeping between them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    /// Reading the maps and finding the runtime in them (the process's
    /// first operation only).
    pub find: Duration,
    /// The pre-check from outside and building the request (objects,
    /// build-ids, sizes), pending writes of a killed tool completed.
    pub check: Duration,
    /// Stopping the thread that runs the runtime's call.
    pub caller_stop: Duration,
    /// The runtime's call (loading the container, resolving, planning),
    /// reading its answer, releasing its thread.
    pub call: Duration,
    /// Finding the GOT slots of the functions the writes change, before
    /// stopping every thread (only when one may need a change: `got.rs`).
    pub got: Duration,
    /// Stopping every thread for the writes (the last attempt).
    pub stop_all: Duration,
    /// Checking the threads and bytes, making the writes, clearing the
    /// runtime's journal (the last attempt).
    pub writes: Duration,
    /// Releasing every thread after the writes.
    pub resume: Duration,
    /// A per-thread transition: reading the old code's symbols and the
    /// unwind tables (before any stop), checking each thread on its own
    /// and waiting for the old ones.
    pub transition: Duration,
    /// A transition's last part: every thread stopped again, the
    /// functions pointed straight at the new code.
    pub finish: Duration,
    /// The whole operation.
    pub total: Duration,
}

impl Phases {
    /// The phases as (name, duration), in order.
    pub fn named(&self) -> [(&'static str, Duration); 11] {
        [
            ("find", self.find),
            ("check", self.check),
            ("caller_stop", self.caller_stop),
            ("call", self.call),
            ("got", self.got),
            ("stop_all", self.stop_all),
            ("writes", self.writes),
            ("resume", self.resume),
            ("transition", self.transition),
            ("finish", self.finish),
            ("total", self.total),
        ]
    }
}

/// An outcome and its details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    pub detail: Detail,
}

impl Report {
    fn bare(outcome: Outcome) -> Report {
        Report {
            outcome,
            detail: Detail::default(),
        }
    }
}

/// Apply `container` to process `pid`.
pub fn apply(pid: Pid, container: &Container, opts: &Options) -> Outcome {
    apply_report(pid, container, opts).outcome
}

/// Revert `container` in process `pid`.
pub fn revert(pid: Pid, container: &Container, opts: &Options) -> Outcome {
    revert_report(pid, container, opts).outcome
}

/// Revert every patch of `lib` (a basename, or a path as the process sees
/// it) in process `pid`.
pub fn revert_all(pid: Pid, lib: &str, opts: &Options) -> Outcome {
    revert_all_report(pid, lib, opts).outcome
}

/// Replace every patch of `lib` in process `pid` by `container`.
pub fn replace(pid: Pid, lib: &str, container: &Container, opts: &Options) -> Outcome {
    replace_report(pid, lib, container, opts).outcome
}

/// A process as a trigger first sees it: which process it is (told
/// apart from a later one with its pid), its runtime, and the maps that
/// were read to find it. Every operation of one run in that process
/// starts from it, so the runtime is found once per process.
#[derive(Debug)]
pub struct Target {
    pub life: Incarnation,
    /// The runtime, or the outcome every operation in the process has.
    pub runtime: Result<Runtime, Outcome>,
    /// The maps the runtime was found in, for the first operation's
    /// pre-check; a later operation reads them again (the one before it
    /// may have loaded a container, and a process may `dlopen` at any
    /// time).
    maps: Option<Vec<Mapping>>,
    /// How long finding the runtime took, for the first operation's
    /// [`Phases::find`] (taken by it).
    found_in: Option<Duration>,
}

impl Target {
    /// Looks at `pid`: takes its incarnation first (so that an exit from
    /// then on is told from a wrong pid), then finds its runtime.
    pub fn find(pid: Pid) -> Target {
        let life = Incarnation::of(pid);
        let start = Instant::now();
        let (found, maps) = Runtime::find_started(pid);
        Target {
            life,
            runtime: found.map_err(runtime_outcome),
            maps,
            found_in: Some(start.elapsed()),
        }
    }

    /// This target, whose runtime look-up took `took` (for
    /// [`Phases::find`]).
    pub fn found_in(mut self, took: Duration) -> Target {
        self.found_in = Some(took);
        self
    }

    /// A process whose maps (`maps`, when they could be read) were just
    /// read to find its runtime (`found`). `life` is its incarnation, taken
    /// after that, not before: a caller looking at every process reads the
    /// stat only for the processes it acts on ([`Incarnation::of_seen`],
    /// or [`Incarnation::of_seen_named`] for its name from the same read).
    pub fn seen_as(
        life: Incarnation,
        found: Result<Runtime, RuntimeError>,
        maps: Option<Vec<Mapping>>,
    ) -> Target {
        Target {
            life,
            runtime: found.map_err(runtime_outcome),
            maps,
            found_in: None,
        }
    }

    /// A process whose runtime `rt` was just loaded (or found) by
    /// `--load-runtime`.
    pub fn loaded(rt: Runtime) -> Target {
        Target {
            life: Incarnation::of_seen(rt.pid),
            runtime: Ok(rt),
            maps: None,
            found_in: None,
        }
    }

    pub fn pid(&self) -> Pid {
        self.life.pid
    }

    /// The runtime, or the outcome that stands for the operation.
    fn runtime(&self) -> Result<Runtime, Outcome> {
        self.runtime
            .clone()
            .map_err(|o| unless_exited(&self.life, o))
    }

    /// The clock of one operation: its start, and the runtime look-up's
    /// time for the first one.
    fn clock(&mut self) -> Clock {
        let find = self.found_in.take().unwrap_or_default();
        Clock {
            start: Instant::now() - find,
            find,
        }
    }

    /// The objects of the process for one operation, read at most once.
    fn objects(&mut self) -> Objects {
        Objects::new(self.pid(), self.maps.take())
    }
}

/// When one operation started, for its [`Phases`].
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    find: Duration,
}

/// The objects a process maps ([`named_objects`]), read at most once in
/// one operation's pre-check, from the maps its runtime was found in when
/// they are fresh.
struct Objects {
    pid: Pid,
    maps: Option<Vec<Mapping>>,
    read: Option<Result<Vec<MappedObject>, Outcome>>,
    /// The same objects named by their paths only ([`Objects::by_path`]).
    by_path: Option<Vec<MappedObject>>,
}

impl Objects {
    /// The objects of `pid`, to be read from `maps` when given, else from
    /// its /proc maps.
    fn new(pid: Pid, maps: Option<Vec<Mapping>>) -> Objects {
        Objects {
            pid,
            maps,
            read: None,
            by_path: None,
        }
    }

    /// Load addresses of the objects named `lib` (a patch's target library),
    /// among the objects read so far: the loader's names when
    /// [`Objects::get`] read them, else the paths. (What it gives is read
    /// ahead of the stop; a copy it misses is read when needed.)
    fn bases_of(&mut self, lib: &str) -> Vec<u64> {
        let pid = self.pid;
        let objects = match (&self.read, &self.by_path) {
            (Some(Ok(named)), _) => named.as_slice(),
            (None, Some(by_path)) => by_path.as_slice(),
            _ => match self.get() {
                Ok(named) => named,
                Err(_) => return Vec::new(),
            },
        };
        objects
            .iter()
            .filter(|o| o.is_library(pid, lib))
            .map(|o| o.bias)
            .collect()
    }

    /// The objects named by their mapped paths, not by the loader's list:
    /// from the maps alone (read now when not given), which it keeps for
    /// [`Objects::get`]. A library is told by its SONAME among them
    /// without the walk through the loader's list in the process's memory
    /// (a dozen reads; see [`target_state_in`]).
    fn by_path(&mut self) -> Result<&[MappedObject], Outcome> {
        if self.by_path.is_none() {
            if self.maps.is_none() {
                let maps = ulp_process::maps(self.pid).map_err(|e| {
                    Outcome::Failed(Reason::new(errors::ETARGETHOOK, e.to_string()))
                })?;
                self.maps = Some(maps);
            }
            self.by_path = self.maps.as_deref().map(objects_from_maps);
        }
        Ok(self.by_path.as_deref().unwrap_or_default())
    }

    fn get(&mut self) -> Result<&[MappedObject], Outcome> {
        let (pid, maps) = (self.pid, &self.maps);
        self.read
            .get_or_insert_with(|| {
                match maps {
                    Some(maps) => named_objects_in(pid, maps),
                    None => named_objects(pid),
                }
                .map_err(|e| Outcome::Failed(Reason::new(errors::ETARGETHOOK, e.to_string())))
            })
            .as_deref()
            .map_err(Clone::clone)
    }
}

/// [`apply`] with details.
pub fn apply_report(pid: Pid, container: &Container, opts: &Options) -> Report {
    apply_in(&mut Target::find(pid), container, opts)
}

/// [`apply_report`] in a process already looked at.
pub fn apply_in(target: &mut Target, container: &Container, opts: &Options) -> Report {
    let clock = target.clock();
    let deadline = Instant::now() + opts.timeout;
    let life = target.life;
    let rt = match target.runtime() {
        Ok(rt) => rt,
        Err(o) => return Report::bare(o),
    };
    let mut objects = target.objects();
    let matched = match precheck(&rt, &mut objects, container, opts) {
        Ok(m) => m,
        Err(o) => return Report::bare(unless_exited(&life, o)),
    };
    let buf = match apply_request(&rt, &mut objects, matched, container, opts, None) {
        Ok(b) => b,
        Err(o) => return with_runtime(&rt, o),
    };
    let about = objects.bases_of(&container.metadata.target_name);
    run(
        &rt,
        &life,
        op::APPLY,
        &buf,
        deadline,
        opts,
        clock,
        Outcome::Applied,
        Seen::new(&mut objects, about),
    )
}

/// [`revert`] with details.
pub fn revert_report(pid: Pid, container: &Container, opts: &Options) -> Report {
    revert_in(&mut Target::find(pid), container, opts)
}

/// [`revert_report`] in a process already looked at.
pub fn revert_in(target: &mut Target, container: &Container, opts: &Options) -> Report {
    let clock = target.clock();
    let deadline = Instant::now() + opts.timeout;
    let life = target.life;
    let rt = match target.runtime() {
        Ok(rt) => rt,
        Err(o) => return Report::bare(o),
    };
    let mut objects = target.objects();
    // A patch that is not applied is an error only where it could be: in
    // a process that does not load its target build it is a skip (so a
    // revert in every process fails only where something is wrong).
    // Applied means for the build this process has: the same patch id may
    // be applied here from a container made for this build (see
    // `is_applied`), and must not be reverted in its name.
    let applied = applied_in(&rt, &mut objects, container, opts).unwrap_or(false);
    if !applied {
        if let Err(o) = precheck(&rt, &mut objects, container, opts) {
            return with_runtime(&rt, unless_exited(&life, o));
        }
    }
    // The library, and the container whose functions the threads leave.
    let mut about = objects.bases_of(&container.metadata.target_name);
    if let Ok(path) = path_in_target(container, opts) {
        about.extend(objects.bases_of(&path));
    }
    run(
        &rt,
        &life,
        op::REVERT,
        &container.metadata.patch_id,
        deadline,
        opts,
        clock,
        Outcome::Reverted,
        Seen::new(&mut objects, about),
    )
}

/// [`revert_all`] with details. A process that does not have `lib` loaded,
/// or no patch of it applied, is skipped without being stopped.
pub fn revert_all_report(pid: Pid, lib: &str, opts: &Options) -> Report {
    revert_all_in(&mut Target::find(pid), lib, opts)
}

/// [`revert_all_report`] in a process already looked at.
pub fn revert_all_in(target: &mut Target, lib: &str, opts: &Options) -> Report {
    let clock = target.clock();
    let deadline = Instant::now() + opts.timeout;
    let (pid, life) = (target.pid(), target.life);
    let rt = match target.runtime() {
        Ok(rt) => rt,
        Err(o) => return Report::bare(o),
    };
    if lib.is_empty() {
        return with_runtime(&rt, Outcome::Failed(Reason::unknown("empty library name")));
    }
    // From outside first, nothing stopped: is a patch of that library in
    // the registry (named as the runtime names it: the loader's name, its
    // basename or its SONAME)? If not, as libpulp: "No patches installed"
    // when the library is loaded, "Target library not loaded" when it is
    // not; both are skips.
    let mut seen = target.objects();
    let objects = match seen.get() {
        Ok(objects) => objects,
        Err(failed) => return with_runtime(&rt, unless_exited(&life, failed)),
    };
    let loaded: Vec<&MappedObject> = objects.iter().filter(|o| o.is_library(pid, lib)).collect();
    let patched = match rt.patches() {
        Ok(applied) => applied.iter().any(|a| {
            loaded.iter().any(|o| o.is_path(pid, &a.target_path))
                || ulp_abi::names::names_object(lib.as_bytes(), a.target_path.as_bytes(), || None)
        }),
        // The runtime will tell.
        Err(_) => true,
    };
    if !patched {
        let why = if loaded.is_empty() {
            Reason::new(
                errors::ENOTARGETLIB,
                format!("library '{lib}' is not loaded"),
            )
        } else {
            Reason::bare(errors::ENOPATCH)
        };
        return with_runtime(&rt, Outcome::Skipped(why));
    }
    let about = loaded.iter().map(|o| o.bias).collect();
    run(
        &rt,
        &life,
        op::REVERT_ALL,
        lib.as_bytes(),
        deadline,
        opts,
        clock,
        Outcome::Reverted,
        Seen::new(&mut seen, about),
    )
}

/// [`replace`] with details: pre-checked like an apply (a process where
/// the new patch does not apply is skipped, and keeps its old patches).
pub fn replace_report(pid: Pid, lib: &str, container: &Container, opts: &Options) -> Report {
    replace_in(&mut Target::find(pid), lib, container, opts)
}

/// [`replace_report`] in a process already looked at.
pub fn replace_in(target: &mut Target, lib: &str, container: &Container, opts: &Options) -> Report {
    let clock = target.clock();
    let deadline = Instant::now() + opts.timeout;
    let life = target.life;
    let rt = match target.runtime() {
        Ok(rt) => rt,
        Err(o) => return Report::bare(o),
    };
    let mut objects = target.objects();
    let matched = match precheck(&rt, &mut objects, container, opts) {
        Ok(m) => m,
        Err(o) => return Report::bare(unless_exited(&life, o)),
    };
    if lib.is_empty() {
        return with_runtime(&rt, Outcome::Failed(Reason::unknown("empty library name")));
    }
    let buf = match apply_request(&rt, &mut objects, matched, container, opts, Some(lib)) {
        Ok(b) => b,
        Err(o) => return with_runtime(&rt, o),
    };
    let about = objects.bases_of(&container.metadata.target_name);
    run(
        &rt,
        &life,
        op::REPLACE,
        &buf,
        deadline,
        opts,
        clock,
        Outcome::Applied,
        Seen::new(&mut objects, about),
    )
}

fn with_runtime(rt: &Runtime, outcome: Outcome) -> Report {
    Report {
        outcome,
        detail: Detail {
            runtime: Some(rt.path.clone()),
            ..Detail::default()
        },
    }
}

/// What a runtime that cannot be used means for every operation.
fn runtime_outcome(e: RuntimeError) -> Outcome {
    match e {
        RuntimeError::NotLoaded => Outcome::NoRuntime,
        e => Outcome::Failed(Reason::new(e.error(), e.to_string())),
    }
}

/// The path the runtime must `dlopen`, as the target process sees it.
fn path_in_target(container: &Container, opts: &Options) -> Result<String, crate::Error> {
    // The runtime dlopens this path from inside the target, whose current
    // directory is not ours, and dlopen searches the library path for a
    // name without a slash: hand it the absolute, resolved path.
    let real = container
        .real_path()
        .map_err(|e| crate::Error::refused(e).context(format!("'{}'", container.path.display())))?;
    Ok(with_prefix(opts, &real.to_string_lossy()))
}

/// `-R PREFIX`: PREFIX + `path`, as they are (libpulp's concatenation).
pub fn with_prefix(opts: &Options, path: &str) -> String {
    match &opts.root {
        Some(prefix) => format!("{}{path}", prefix.to_string_lossy()),
        None => path.to_string(),
    }
}

/// The APPLY request (or REPLACE, with `replace_lib`) for `container`.
fn apply_request(
    rt: &Runtime,
    objects: &mut Objects,
    matched: Option<MappedObject>,
    container: &Container,
    opts: &Options,
    replace_lib: Option<&str>,
) -> Result<Vec<u8>, Outcome> {
    let pid = rt.pid;
    let path = path_in_target(container, opts)
        .map_err(|e| Outcome::Failed(Reason::new(errors::EDLOPEN, e.to_string())))?;
    if opts.root.is_none() {
        if let Some(root) = chroot_of(pid) {
            // Our path means nothing in there.
            return Err(Outcome::Failed(Reason::new(
                errors::EDLOPEN,
                format!(
                    "process {pid} runs chrooted at '{}': the runtime cannot open '{path}' there; \
                 make this host's root visible inside it (a bind mount, or /proc/1/root) and \
                 name that place with -R PREFIX: the runtime is then given PREFIX{path}",
                    root.display()
                ),
            )));
        }
    }
    let ulp = container.metadata.encode();
    let comments = container.comments.clone().unwrap_or_default();
    let sizes = unit_sizes(pid, objects, matched, &container.metadata);
    let apply = ApplyRequest {
        container_path: path.as_bytes(),
        ulp: &ulp,
        comments: &comments,
        sizes: &sizes,
    };
    let (len, encoded) = match replace_lib {
        None => {
            let mut buf = vec![0u8; apply.encoded_len()];
            let ok = buf.len() <= REQUEST_MAX && apply.encode(&mut buf).is_some();
            (buf.len(), ok.then_some(buf))
        }
        Some(lib) => {
            let req = ReplaceRequest {
                library: lib.as_bytes(),
                apply,
            };
            let mut buf = vec![0u8; req.encoded_len()];
            let ok = buf.len() <= REQUEST_MAX && req.encode(&mut buf).is_some();
            (buf.len(), ok.then_some(buf))
        }
    };
    encoded.ok_or_else(|| {
        Outcome::Failed(Reason::new(errors::EINVALIDULP, format!(
            "the patch metadata is too large for the runtime's request area ({len} > {REQUEST_MAX} bytes)"
        )))
    })
}

/// Opens a mapped object as [`MappedObject::open`] does (through
/// `/proc/PID/root`, then as is).
fn open_object(obj: &MappedObject, pid: Pid, _opts: &Options) -> Result<ElfFile, ulp_elf::Error> {
    obj.open(pid)
}

/// Step 1: everything that can be known without stopping the process
/// (its runtime is found already). Returns the target object when its
/// build-id was read from memory (see [`TargetState::Loaded`]).
fn precheck(
    rt: &Runtime,
    objects: &mut Objects,
    container: &Container,
    opts: &Options,
) -> Result<Option<MappedObject>, Outcome> {
    match target_state_in(rt.pid, objects, &container.metadata, opts)? {
        TargetState::Loaded(matched) => Ok(matched),
        TargetState::NotLoaded(why) | TargetState::OtherBuild(why) => Err(Outcome::Skipped(why)),
    }
}

/// Why `container` cannot apply in `pid`, seen from outside (its target
/// library is not loaded, or is another build); `None` when it can.
pub fn target_mismatch(pid: Pid, container: &Container, opts: &Options) -> Option<Reason> {
    let mut objects = Objects::new(pid, None);
    match target_state_in(pid, &mut objects, &container.metadata, opts) {
        Ok(TargetState::Loaded(_)) => None,
        Ok(TargetState::NotLoaded(why) | TargetState::OtherBuild(why)) => Some(why),
        Err(Outcome::Skipped(r) | Outcome::Failed(r)) => Some(r),
        Err(o) => Some(Reason::unknown(o.to_string())),
    }
}

/// [`target_state`] among `objects`. Usually the target is found by its
/// SONAME among the objects as the maps name them ([`Objects::by_path`]):
/// the rule's SONAME branch holds whatever the loader calls the object
/// (`names_object` is "basename of the loader's name, or SONAME"), so
/// that match is the rule's answer. A file name is not: the loader may
/// know the file by another name, and the runtime goes by the loader's.
/// The loader's names are read when the SONAME does not find the target
/// build (another name, another build, not loaded), or when the patch
/// names a whole path, which only the loader's name can match.
fn target_state_in(
    pid: Pid,
    objects: &mut Objects,
    md: &Metadata,
    opts: &Options,
) -> Result<TargetState, Outcome> {
    let lib = &md.target_name;
    if !lib.contains('/') {
        let found = target_state_by(pid, objects.by_path()?, md, opts, |o| {
            o.soname_in_memory(pid).as_deref() == Some(lib.as_str())
        });
        if matches!(found, TargetState::Loaded(_)) {
            return Ok(found);
        }
    }
    Ok(target_state(pid, objects.get()?, md, opts))
}

/// A patch's target in a process, as seen from outside.
enum TargetState {
    /// An object with the target's name and build-id is loaded; it is
    /// given when its build-id was read from its memory (not its file).
    Loaded(Option<MappedObject>),
    /// No object has the target's name (the reason to print).
    NotLoaded(Reason),
    /// Objects with that name are loaded, none of the patch's build.
    OtherBuild(Reason),
}

/// Finds the target of `md` among the objects `pid` maps. The build-id is
/// that of the copy in the process's memory: the file at the mapped path
/// may be another build by now (a package upgrade renames a new file over
/// the old one, which the running process keeps, shown ` (deleted)` in its
/// maps). The file is read only when the memory cannot be. The runtime
/// checks the loaded copy again before changing anything.
fn target_state(pid: Pid, objects: &[MappedObject], md: &Metadata, opts: &Options) -> TargetState {
    target_state_by(pid, objects, md, opts, |o| {
        o.is_library(pid, &md.target_name)
    })
}

/// [`target_state`] among the objects `names` says are the target.
fn target_state_by(
    pid: Pid,
    objects: &[MappedObject],
    md: &Metadata,
    opts: &Options,
    names: impl Fn(&MappedObject) -> bool,
) -> TargetState {
    let mut other = None;
    for obj in objects.iter().filter(|o| names(o)) {
        let in_memory = obj.build_id_in_memory(pid);
        let from_memory = in_memory.is_some();
        let have = in_memory
            .or_else(|| open_object(obj, pid, opts).ok()?.build_id())
            .unwrap_or_default();
        if have == md.build_id {
            return TargetState::Loaded(from_memory.then(|| obj.clone()));
        }
        other.get_or_insert((obj.name.clone(), have));
    }
    match other {
        None => TargetState::NotLoaded(Reason::new(
            errors::ENOTARGETLIB,
            format!("library '{}' is not loaded", md.target_name),
        )),
        Some((path, have)) => TargetState::OtherBuild(Reason::new(
            errors::EBUILDID,
            format!(
                "build id mismatch: '{path}' has {}, the patch is for {}",
                hex(&have),
                hex(&md.build_id)
            ),
        )),
    }
}

/// The size of each unit's old function, from the symbol tables of the
/// target file the process loaded (`.symtab` included, which the runtime
/// cannot see in memory), as the request's `sizes`: 0 where unknown.
/// Read once per (build, patch) in one ulp run: the build-id names the
/// file's contents, so a fleet of processes costs one read of the file.
///
/// `matched` is the target object the pre-check found by its build-id in
/// memory, if it did; else it is looked for among `objects`.
fn unit_sizes(
    pid: Pid,
    objects: &mut Objects,
    matched: Option<MappedObject>,
    md: &Metadata,
) -> Vec<u8> {
    type Cache = std::sync::Mutex<std::collections::HashMap<(Vec<u8>, [u8; 32]), Vec<u8>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (md.build_id.clone(), md.patch_id);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(sizes) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return sizes;
    }
    let Some(obj) = matched.or_else(|| {
        objects
            .get()
            .ok()?
            .iter()
            .filter(|o| o.is_library(pid, &md.target_name))
            .find(|o| o.build_id_in_memory(pid).as_deref() == Some(&md.build_id[..]))
            .cloned()
    }) else {
        return vec![0; 8 * md.units.len()];
    };
    // Only from the very build the patch is for: the file now at that
    // path may be another one (an upgrade renamed a new build over it).
    // Only the sections it needs (a library can be megabytes), and its
    // functions are kept for the transition's look-ups.
    let mut sections = crate::transition::FUNCTION_SECTIONS.to_vec();
    sections.push(".note.gnu.build-id");
    let functions = obj
        .open_sections(pid, &sections)
        .ok()
        .filter(|f| f.build_id().as_deref() == Some(&md.build_id[..]))
        .map(|f| crate::transition::functions_of(&obj, &f).0)
        .unwrap_or_default();
    let sizes: Vec<u8> = md
        .units
        .iter()
        .flat_map(|u| {
            functions
                .iter()
                .filter(|f| f.0 == u.old_faddr)
                .map(|f| f.1 - f.0)
                .max()
                .unwrap_or(0)
                .to_le_bytes()
        })
        .collect();
    if let Ok(mut c) = cache.lock() {
        c.insert(key, sizes.clone());
    }
    sizes
}

/// Whether `container` is applied in the process of `rt`: its patch id is
/// in the registry, for the build of the target the process has. The patch
/// id does not say which build a patch is for (it is made of the
/// container's own build-id and the .dsc's digest), so the same fix packed
/// for two builds of a library has one id; in a process with the other
/// build, that id belongs to the other container. When the target is no
/// longer loaded at all, the registry's word stands.
pub fn is_applied(
    rt: &Runtime,
    container: &Container,
    opts: &Options,
) -> Result<bool, crate::Error> {
    let mut objects = Objects::new(rt.pid, None);
    applied_in(rt, &mut objects, container, opts)
}

/// [`is_applied`] with the process's objects read at most once.
fn applied_in(
    rt: &Runtime,
    objects: &mut Objects,
    container: &Container,
    opts: &Options,
) -> Result<bool, crate::Error> {
    let md = &container.metadata;
    let patches = rt.patches()?;
    if !patches.iter().any(|p| p.patch_id == md.patch_id) {
        return Ok(false);
    }
    match target_state_in(rt.pid, objects, md, opts) {
        Ok(TargetState::OtherBuild(_)) => Ok(false),
        Ok(_) => Ok(true),
        Err(o) => Err(crate::Error::refused(o.to_string())),
    }
}

/// The detail of the reason a process is SKIPPED for when it exited
/// before its code writes were made.
pub const EXITED: &str = "process exited";

/// How long a failure waits for a process that may be exiting to finish
/// before it counts as a failure: the first sign of an exit is often a
/// request that fails while the process's last threads still die.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// SKIPPED: the process exited before its code writes were made. libpulp
/// skips that case too (its ESRCH); its error table has no number for it,
/// and the nearest is "Error attaching to process".
fn exited() -> Outcome {
    Outcome::Skipped(Reason::new(errors::ETARGETHOOK, EXITED))
}

/// `outcome`, for a step that looked at or touched the process, unless the
/// process has exited meanwhile: then nothing is left to change, and it is
/// SKIPPED ([`EXITED`]), not a failure. A failure is looked at again (with
/// [`EXIT_GRACE`]), and so are a runtime or a library found missing: from
/// /proc, that is how a zombie looks. Anything else stands.
pub(crate) fn unless_exited(life: &Incarnation, outcome: Outcome) -> Outcome {
    let gone = match &outcome {
        Outcome::Failed(_) => life.exited_within(EXIT_GRACE),
        Outcome::NoRuntime => life.exited(),
        Outcome::Skipped(r) if r.error == errors::ENOTARGETLIB => life.exited(),
        _ => false,
    };
    if gone {
        exited()
    } else {
        outcome
    }
}

/// What the pre-check saw of the process, for the steps after it: its maps
/// (when read in this operation) and where the libraries the change is
/// about are loaded.
struct Seen {
    maps: Option<Vec<Mapping>>,
    about: Vec<u64>,
}

impl Seen {
    /// Takes the maps `objects` were read from (read first whatever
    /// `about` needs of them).
    fn new(objects: &mut Objects, about: Vec<u64>) -> Seen {
        Seen {
            maps: objects.maps.take(),
            about,
        }
    }
}

/// Steps 2 to 4 for one operation.
#[allow(clippy::too_many_arguments)]
fn run(
    rt: &Runtime,
    life: &Incarnation,
    opcode: u32,
    req: &[u8],
    deadline: Instant,
    opts: &Options,
    clock: Clock,
    done: Outcome,
    seen: Seen,
) -> Report {
    let mut report = with_runtime(rt, done);
    report.detail.phases.find = clock.find;
    let mut report = run_timed(rt, life, opcode, req, deadline, opts, clock, report, seen);
    report.detail.phases.total = clock.start.elapsed();
    report
}

/// [`run`], its phases timed from `clock`.
#[allow(clippy::too_many_arguments)]
fn run_timed(
    rt: &Runtime,
    life: &Incarnation,
    opcode: u32,
    req: &[u8],
    deadline: Instant,
    opts: &Options,
    clock: Clock,
    mut report: Report,
    seen: Seen,
) -> Report {
    let mut faults = Faults::default();
    // An earlier ulp killed after the runtime's record but before the end
    // of its writes left them pending: make them first, so that the code
    // matches the registry this call starts from.
    if let Err(e) = complete_pending_writes(rt, deadline, opts, &mut faults) {
        report.outcome = unless_exited(
            life,
            Outcome::Failed(Reason::new(errors::EINSNQ, e.to_string())),
        );
        return report;
    }
    if opts.consistency != Consistency::None
        && opcode != op::UNDO
        && crate::transition::shadow_stack(rt.pid)
    {
        report.outcome = Outcome::Failed(Reason::new(
            errors::ETARGETHOOK,
            "the process runs with shadow stacks (CET): a per-thread transition would make a \
             thread return where its shadow stack does not expect; nothing was changed \
             (--consistency=none switches every thread at once)"
                .to_string(),
        ));
        return report;
    }
    // What a transition's checks need, read while nothing is held: the
    // thread of a process that has one is held from the call to the end of
    // its writes (one stop, not two).
    // The thread count of the stat the process was first seen by (a hint:
    // the call checks that its thread is still the only one).
    let single = opcode != op::UNDO
        && match life.threads_then() {
            Some(n) => n == 1,
            None => ulp_process::threads(rt.pid).is_ok_and(|t| t.len() == 1),
        };
    let prepared = match (&seen.maps, opts.consistency) {
        (Some(maps), c) if c != Consistency::None && single => Some(
            crate::transition::Prepared::new(rt.pid, maps.clone(), &seen.about),
        ),
        _ => None,
    };
    let detail = &mut report.detail;
    detail.phases.check = clock.start.elapsed().saturating_sub(clock.find);
    let called = call(
        rt,
        life,
        opcode,
        req,
        deadline,
        opts,
        &mut detail.phases,
        seen.maps.as_deref(),
        single,
    );
    let (rc, msg, writes, held) = match called {
        Ok(r) => r,
        Err(e) => {
            // Exited during the call (before any write): a skip, whatever
            // the runtime recorded in a process that is no more.
            report.outcome = unless_exited(
                life,
                Outcome::Failed(Reason::new(errors::ETARGETHOOK, e.to_string())),
            );
            return report;
        }
    };
    if !msg.is_empty() {
        detail.message = Some(msg.clone());
    }
    let release = |held: Option<Stopped>| {
        if let Some(s) = held {
            let _ = s.release();
        }
    };
    if let Some(o) = refusal(opcode, rc, msg) {
        release(held);
        report.outcome = o;
        return report;
    }
    if writes.is_empty() {
        release(held);
        return report;
    }
    detail.switched_at_once = opts.consistency != Consistency::None
        && writes.iter().any(|w| w.len > 0)
        && crate::transition::plan_of(&writes).is_none();
    faults.before_writes();
    // An entry about to be rewritten must hold what its library file has:
    // anything else is someone else's change (a hook), not ours to cover.
    let last_err = match check_rewrites_against_files(rt.pid, &writes)
        .map_err(|why| (0, Unwritten::Nothing(why.to_string())))
        .and_then(|()| {
            let held = Held {
                stopped: held,
                prepared,
            };
            make_plan(rt, &writes, deadline, opts, &mut faults, held)
        }) {
        Ok(plan) => {
            let made = plan.made;
            detail.transition = plan.transition;
            detail.unfinished = plan.unfinished;
            detail.phases.transition = plan.settle_time;
            detail.phases.finish = plan.finish_time;
            detail.phases.stop_all = made.seize;
            detail.phases.writes = made.write;
            detail.phases.resume = made.release;
            detail.got = made.got;
            detail.phases.got = made.got_find;
            detail.attempts = made.attempts;
            detail.writes = writes.iter().filter(|w| w.len > 0).count();
            detail.threads = made.threads;
            detail.stopped = Some(made.stopped);
            return report;
        }
        Err((attempts, Unwritten::Bookkeeping(why))) => {
            // Every write is made: the process runs the new code and its
            // registry says so. Exiting from now on is its own business.
            detail.attempts = attempts;
            detail.writes = writes.iter().filter(|w| w.len > 0).count();
            if !life.exited_within(EXIT_GRACE) {
                report.outcome = Outcome::Failed(Reason::new(
                    errors::ETARGETHOOK,
                    format!(
                        "the code writes were made and the registry records them (the change \
                         is in place), but {why}"
                    ),
                ));
            }
            return report;
        }
        Err((attempts, Unwritten::Nothing(why))) => {
            detail.attempts = attempts;
            why
        }
    };
    // Exited before its writes were made: nothing to take back.
    if life.exited_within(EXIT_GRACE) {
        report.outcome = exited();
        return report;
    }
    // The registry says the operation happened but the code does not: take
    // the registry back so both agree on the old state.
    let undo = match call(
        rt,
        life,
        op::UNDO,
        &[],
        deadline + Duration::from_secs(5),
        opts,
        &mut Phases::default(),
        None,
        false,
    ) {
        Ok((code::OK, _, _, _)) => String::new(),
        Ok((rc, msg, _, _)) => {
            format!(" (and undoing the runtime's record failed: code {rc}: {msg})")
        }
        Err(e) => format!(" (and undoing the runtime's record failed: {e})"),
    };
    report.outcome = unless_exited(
        life,
        Outcome::Failed(Reason::new(
            errors::ETARGETHOOK,
            format!("{last_err}{undo}"),
        )),
    );
    report
}

/// What a non-OK result code of `opcode` means for the user; `None` for OK.
/// A code that is one of libpulp's errors (`code::error`: a container
/// dlopen refused, a function not found or not patchable, bad metadata)
/// fails with that error and the runtime's detail.
fn refusal(opcode: u32, rc: i32, msg: String) -> Option<Outcome> {
    if let Some(error) = code::error(rc) {
        return Some(Outcome::Failed(Reason::new(error, msg)));
    }
    Some(match rc {
        code::OK => return None,
        code::ALREADY_APPLIED => Outcome::AlreadyApplied,
        code::TARGET_NOT_LOADED => Outcome::Skipped(Reason::new(errors::ENOTARGETLIB, msg)),
        code::BUILD_ID_MISMATCH => Outcome::Skipped(Reason::new(errors::EBUILDID, msg)),
        code::DISABLED => Outcome::Skipped(Reason::new(errors::EUSRBLOCKED, msg)),
        // Nothing of that library to revert in this process: a skip.
        code::NOT_APPLIED if opcode == op::REVERT_ALL => {
            Outcome::Skipped(Reason::new(errors::ENOPATCH, msg))
        }
        code::NOT_APPLIED => Outcome::Failed(Reason::new(errors::ENOTAPPLIED, msg)),
        code::BAD_REQUEST => Outcome::Failed(Reason::new(errors::EINVALIDULP, msg)),
        // The runtime's dlopen of the container failed (it has no code of
        // its own for it; its message says so).
        _ if msg.is_empty() => {
            Outcome::Failed(Reason::unknown(format!("runtime returned code {rc}")))
        }
        _ => Outcome::Failed(Reason::unknown(msg)),
    })
}

/// What [`call`] returns: the result code, the runtime's message, the
/// writes it asks for, and the process's one thread still stopped when it
/// has one and the runtime asked for writes (their stop is then this one).
type Called = (i32, String, Vec<Write>, Option<Stopped>);

/// Runs the entry point with `opcode` on one stopped thread (`maps`: the
/// process's maps as the pre-check read them, if it did). `single`: the
/// process had one thread a moment ago; that thread stays held when the
/// runtime asks for writes (a thread created since is seized with the
/// rest when the writes are made).
#[allow(clippy::too_many_arguments)]
fn call(
    rt: &Runtime,
    life: &Incarnation,
    opcode: u32,
    req: &[u8],
    deadline: Instant,
    opts: &Options,
    phases: &mut Phases,
    maps: Option<&[Mapping]>,
    single: bool,
) -> Result<Called, crate::Error> {
    // A thread that is not inside the allocator or the loader (see
    // caller.rs); when every thread is, wait a little for one to leave.
    let start = Instant::now();
    let (mut stopped, tid) =
        caller::find_caller(life, deadline, opts.seize(), opts.retries, maps, single)?;
    phases.caller_stop = start.elapsed();
    let start = Instant::now();
    rt.write_request(opcode, req, opts.consistency.req_flags())?;
    // The call returns to the thread's code by itself, through the
    // runtime's resume routine, even if this tool dies meanwhile.
    let path = return_path(rt)?;
    let ret = stopped
        .caller(tid)
        .call_returning(rt.entry, &[], &path, deadline)?;
    let result = rt.read_result();
    // The only thread of the process stays stopped for the writes.
    let only = single && matches!(&result, Ok((_, w)) if !w.is_empty()) && stopped.tids() == [tid];
    let held = if only {
        Some(stopped)
    } else {
        stopped.release()?;
        None
    };
    phases.call = start.elapsed();
    let (msg, writes) = result?;
    Ok((ret as i32, msg, writes, held))
}

// The frame's layout is shared by the tool (ulp-process) and the runtime's
// resume routine (ulp-abi).
const _: () = {
    use ulp_abi::frame as rt;
    use ulp_process::frame as tool;
    assert!(rt::UC_STACK as u64 == tool::UC_STACK);
    assert!(rt::UC_SIGMASK as u64 == tool::UC_SIGMASK);
    assert!(rt::COOKIE as u64 == tool::COOKIE);
    assert!(rt::DONE_PTR as u64 == tool::DONE_PTR);
    assert!(rt::WAIT_US as u64 == tool::WAIT_US);
    assert!(rt::NOTICE_SIGNAL == tool::NOTICE_SIGNAL);
    assert!(rt::NOTICE_FLAG == tool::NOTICE_FLAG);
};

/// The runtime's resume routine and done word, from its interface block
/// (as read when the runtime was found, else read now).
pub(crate) fn return_path(rt: &Runtime) -> Result<ReturnPath, ulp_process::Error> {
    let (routine, routine_end) = match rt.resume {
        (0, _) => {
            let mut b = [0u8; 16];
            ulp_process::read_mem(rt.pid, rt.interface + offset::RESUME as u64, &mut b)?;
            (
                u64::from_le_bytes(b[..8].try_into().unwrap()),
                u64::from_le_bytes(b[8..].try_into().unwrap()),
            )
        }
        known => known,
    };
    if routine == 0 || routine_end <= routine {
        return Err(ulp_process::Error::Invalid {
            pid: rt.pid,
            what: "the runtime did not publish its resume routine".into(),
        });
    }
    Ok(ReturnPath {
        routine,
        routine_end,
        done: (rt.interface + offset::CALL_DONE as u64).get(),
    })
}

pub use ulp_abi::hex::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_operation() {
        assert_eq!(refusal(op::APPLY, code::OK, String::new()), None);
        assert_eq!(
            refusal(op::APPLY, code::ALREADY_APPLIED, "x".into()),
            Some(Outcome::AlreadyApplied)
        );
        assert_eq!(
            refusal(op::REVERT, code::NOT_APPLIED, "not applied".into()),
            Some(Outcome::Failed(Reason::new(
                errors::ENOTAPPLIED,
                "not applied"
            )))
        );
        assert_eq!(
            refusal(op::REVERT_ALL, code::NOT_APPLIED, "none".into()),
            Some(Outcome::Skipped(Reason::new(errors::ENOPATCH, "none")))
        );
        assert_eq!(
            refusal(op::REPLACE, code::FAILED, String::new()),
            Some(Outcome::Failed(Reason::unknown("runtime returned code 6")))
        );
        let why = "/p.so: undefined symbol: x";
        assert_eq!(
            refusal(op::APPLY, code::of_error(errors::EDLOPEN), why.into()),
            Some(Outcome::Failed(Reason::new(errors::EDLOPEN, why)))
        );
        assert_eq!(
            refusal(op::REPLACE, code::of_error(errors::ENONEWFUNC), "f".into()),
            Some(Outcome::Failed(Reason::new(errors::ENONEWFUNC, "f")))
        );
    }
}

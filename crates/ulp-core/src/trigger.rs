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
use std::thread;
use std::time::{Duration, Instant};

use ulp_abi::errors;
use ulp_abi::{code, offset, op, write_kind, ApplyRequest, ReplaceRequest, Write, REQUEST_MAX};
use ulp_container::container::Container;
use ulp_container::format::Metadata;
use ulp_elf::ElfFile;
use ulp_process::{Incarnation, Pid, ReturnPath, SeizeOptions, Stopped};

use crate::caller;
use crate::objects::{chroot_of, named_objects, MappedObject};
use crate::reason::Reason;
use crate::runtime::{Runtime, RuntimeError};

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            retries: 3,
            root: None,
            suspend_seccomp: false,
        }
    }
}

impl Options {
    pub(crate) fn seize(&self) -> SeizeOptions {
        SeizeOptions {
            suspend_seccomp: self.suspend_seccomp,
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

/// [`apply`] with details.
pub fn apply_report(pid: Pid, container: &Container, opts: &Options) -> Report {
    let deadline = Instant::now() + opts.timeout;
    let life = Incarnation::of(pid);
    let rt = match precheck(pid, container, opts) {
        Ok(rt) => rt,
        Err(o) => return Report::bare(unless_exited(&life, o)),
    };
    let buf = match apply_request(pid, container, opts, None) {
        Ok(b) => b,
        Err(o) => return with_runtime(&rt, o),
    };
    run(
        &rt,
        &life,
        op::APPLY,
        &buf,
        deadline,
        opts,
        Outcome::Applied,
    )
}

/// [`revert`] with details.
pub fn revert_report(pid: Pid, container: &Container, opts: &Options) -> Report {
    let deadline = Instant::now() + opts.timeout;
    let life = Incarnation::of(pid);
    let rt = match find_runtime(pid) {
        Ok(rt) => rt,
        Err(o) => return Report::bare(unless_exited(&life, o)),
    };
    // A patch that is not applied is an error only where it could be: in
    // a process that does not load its target build it is a skip (so a
    // revert in every process fails only where something is wrong).
    // Applied means for the build this process has: the same patch id may
    // be applied here from a container made for this build (see
    // `is_applied`), and must not be reverted in its name.
    let applied = is_applied(&rt, container, opts).unwrap_or(false);
    if !applied {
        if let Err(o) = precheck(pid, container, opts) {
            return with_runtime(&rt, unless_exited(&life, o));
        }
    }
    run(
        &rt,
        &life,
        op::REVERT,
        &container.metadata.patch_id,
        deadline,
        opts,
        Outcome::Reverted,
    )
}

/// [`revert_all`] with details. A process that does not have `lib` loaded,
/// or no patch of it applied, is skipped without being stopped.
pub fn revert_all_report(pid: Pid, lib: &str, opts: &Options) -> Report {
    let deadline = Instant::now() + opts.timeout;
    let life = Incarnation::of(pid);
    let rt = match find_runtime(pid) {
        Ok(rt) => rt,
        Err(o) => return Report::bare(unless_exited(&life, o)),
    };
    if lib.is_empty() {
        return with_runtime(&rt, Outcome::Failed(Reason::unknown("empty library name")));
    }
    // From outside first, nothing stopped: is a patch of that library in
    // the registry (named as the runtime names it: the loader's name, its
    // basename or its SONAME)? If not, as libpulp: "No patches installed"
    // when the library is loaded, "Target library not loaded" when it is
    // not; both are skips.
    let objects = match named_objects(pid) {
        Ok(objects) => objects,
        Err(e) => {
            let failed = Outcome::Failed(Reason::new(errors::ETARGETHOOK, e.to_string()));
            return with_runtime(&rt, unless_exited(&life, failed));
        }
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
    run(
        &rt,
        &life,
        op::REVERT_ALL,
        lib.as_bytes(),
        deadline,
        opts,
        Outcome::Reverted,
    )
}

/// [`replace`] with details: pre-checked like an apply (a process where
/// the new patch does not apply is skipped, and keeps its old patches).
pub fn replace_report(pid: Pid, lib: &str, container: &Container, opts: &Options) -> Report {
    let deadline = Instant::now() + opts.timeout;
    let life = Incarnation::of(pid);
    let rt = match precheck(pid, container, opts) {
        Ok(rt) => rt,
        Err(o) => return Report::bare(unless_exited(&life, o)),
    };
    if lib.is_empty() {
        return with_runtime(&rt, Outcome::Failed(Reason::unknown("empty library name")));
    }
    let buf = match apply_request(pid, container, opts, Some(lib)) {
        Ok(b) => b,
        Err(o) => return with_runtime(&rt, o),
    };
    run(
        &rt,
        &life,
        op::REPLACE,
        &buf,
        deadline,
        opts,
        Outcome::Applied,
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

fn find_runtime(pid: Pid) -> Result<Runtime, Outcome> {
    match Runtime::find(pid) {
        Ok(rt) => Ok(rt),
        Err(RuntimeError::NotLoaded) => Err(Outcome::NoRuntime),
        Err(e) => Err(Outcome::Failed(Reason::new(
            errors::ENOLIBPULP,
            e.to_string(),
        ))),
    }
}

/// The path the runtime must `dlopen`, as the target process sees it.
fn path_in_target(container: &Container, opts: &Options) -> Result<String, String> {
    // The runtime dlopens this path from inside the target, whose current
    // directory is not ours, and dlopen searches the library path for a
    // name without a slash: hand it the absolute, resolved path.
    let real = std::fs::canonicalize(&container.path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| format!("'{}': {e}", container.path.display()))?;
    Ok(with_prefix(opts, &real))
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
    pid: Pid,
    container: &Container,
    opts: &Options,
    replace_lib: Option<&str>,
) -> Result<Vec<u8>, Outcome> {
    let path = path_in_target(container, opts)
        .map_err(|e| Outcome::Failed(Reason::new(errors::EDLOPEN, e)))?;
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
    let sizes = unit_sizes(pid, &container.metadata, opts);
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

/// Step 1: everything that can be known without stopping the process.
fn precheck(pid: Pid, container: &Container, opts: &Options) -> Result<Runtime, Outcome> {
    let rt = find_runtime(pid)?;
    match target_state(pid, &container.metadata, opts)? {
        TargetState::Loaded => Ok(rt),
        TargetState::NotLoaded(why) | TargetState::OtherBuild(why) => Err(Outcome::Skipped(why)),
    }
}

/// Why `container` cannot apply in `pid`, seen from outside (its target
/// library is not loaded, or is another build); `None` when it can.
pub fn target_mismatch(pid: Pid, container: &Container, opts: &Options) -> Option<Reason> {
    match target_state(pid, &container.metadata, opts) {
        Ok(TargetState::Loaded) => None,
        Ok(TargetState::NotLoaded(why) | TargetState::OtherBuild(why)) => Some(why),
        Err(Outcome::Skipped(r) | Outcome::Failed(r)) => Some(r),
        Err(o) => Some(Reason::unknown(o.to_string())),
    }
}

/// A patch's target in a process, as seen from outside.
enum TargetState {
    /// An object with the target's name and build-id is loaded.
    Loaded,
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
fn target_state(pid: Pid, md: &Metadata, opts: &Options) -> Result<TargetState, Outcome> {
    let objects = named_objects(pid)
        .map_err(|e| Outcome::Failed(Reason::new(errors::ETARGETHOOK, e.to_string())))?;
    let mut other = None;
    for obj in objects
        .iter()
        .filter(|o| o.is_library(pid, &md.target_name))
    {
        let have = obj
            .build_id_in_memory(pid)
            .or_else(|| open_object(obj, pid, opts).ok()?.build_id())
            .unwrap_or_default();
        if have == md.build_id {
            return Ok(TargetState::Loaded);
        }
        other.get_or_insert((obj.name.clone(), have));
    }
    Ok(match other {
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
    })
}

/// The size of each unit's old function, from the symbol tables of the
/// target file the process loaded (`.symtab` included, which the runtime
/// cannot see in memory), as the request's `sizes`: 0 where unknown.
/// Read once per (build, patch) in one ulp run: the build-id names the
/// file's contents, so a fleet of processes costs one read of the file.
fn unit_sizes(pid: Pid, md: &Metadata, opts: &Options) -> Vec<u8> {
    type Cache = std::sync::Mutex<std::collections::HashMap<(Vec<u8>, [u8; 32]), Vec<u8>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (md.build_id.clone(), md.patch_id);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(sizes) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return sizes;
    }
    let Some(obj) = named_objects(pid).ok().and_then(|objects| {
        objects
            .into_iter()
            .filter(|o| o.is_library(pid, &md.target_name))
            .find(|o| o.build_id_in_memory(pid).as_deref() == Some(&md.build_id[..]))
    }) else {
        return vec![0; 8 * md.units.len()];
    };
    // Only from the very build the patch is for: the file now at that
    // path may be another one (an upgrade renamed a new build over it).
    let functions = open_object(&obj, pid, opts)
        .ok()
        .filter(|f| f.build_id().as_deref() == Some(&md.build_id[..]))
        .map(|f| f.function_symbols())
        .unwrap_or_default();
    let sizes: Vec<u8> = md
        .units
        .iter()
        .flat_map(|u| {
            functions
                .iter()
                .filter(|s| s.value == u.old_faddr)
                .map(|s| s.size)
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
pub fn is_applied(rt: &Runtime, container: &Container, opts: &Options) -> Result<bool, String> {
    let md = &container.metadata;
    let patches = rt.patches().map_err(|e| e.to_string())?;
    if !patches.iter().any(|p| p.patch_id == md.patch_id) {
        return Ok(false);
    }
    match target_state(rt.pid, md, opts) {
        Ok(TargetState::OtherBuild(_)) => Ok(false),
        Ok(_) => Ok(true),
        Err(o) => Err(o.to_string()),
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

/// Steps 2 to 4 for one operation.
fn run(
    rt: &Runtime,
    life: &Incarnation,
    opcode: u32,
    req: &[u8],
    deadline: Instant,
    opts: &Options,
    done: Outcome,
) -> Report {
    let mut report = with_runtime(rt, done);
    let mut faults = Faults::default();
    // An earlier ulp killed after the runtime's record but before the end
    // of its writes left them pending: make them first, so that the code
    // matches the registry this call starts from.
    if let Err(e) = complete_pending_writes(rt, deadline, opts, &mut faults) {
        report.outcome = unless_exited(life, Outcome::Failed(Reason::new(errors::EINSNQ, e)));
        return report;
    }
    let detail = &mut report.detail;
    let (rc, msg, writes) = match call(rt, opcode, req, deadline, opts) {
        Ok(r) => r,
        Err(e) => {
            // Exited during the call (before any write): a skip, whatever
            // the runtime recorded in a process that is no more.
            report.outcome =
                unless_exited(life, Outcome::Failed(Reason::new(errors::ETARGETHOOK, e)));
            return report;
        }
    };
    if !msg.is_empty() {
        detail.message = Some(msg.clone());
    }
    if let Some(o) = refusal(opcode, rc, msg) {
        report.outcome = o;
        return report;
    }
    if writes.is_empty() {
        return report;
    }
    faults.before_writes();
    // An entry about to be rewritten must hold what its library file has:
    // anything else is someone else's change (a hook), not ours to cover.
    let last_err = match check_rewrites_against_files(rt.pid, &writes)
        .map_err(|why| (0, Unwritten::Nothing(why)))
        .and_then(|()| write_with_retries(rt, &writes, deadline, opts, &mut faults))
    {
        Ok(made) => {
            detail.attempts = made.attempts;
            detail.writes = writes.len();
            detail.threads = made.threads;
            detail.stopped = Some(made.stopped);
            return report;
        }
        Err((attempts, Unwritten::Bookkeeping(why))) => {
            // Every write is made: the process runs the new code and its
            // registry says so. Exiting from now on is its own business.
            detail.attempts = attempts;
            detail.writes = writes.len();
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
    let undo = match call(rt, op::UNDO, &[], deadline + Duration::from_secs(5), opts) {
        Ok((code::OK, _, _)) => String::new(),
        Ok((rc, msg, _)) => format!(" (and undoing the runtime's record failed: code {rc}: {msg})"),
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

/// Why the writes of a plan are not all made, or what failed after.
enum Unwritten {
    /// None is left made (put back after a failure, or never begun).
    Nothing(String),
    /// Every one is made; releasing the threads or clearing the runtime's
    /// journal failed.
    Bookkeeping(String),
}

/// The writes of a plan, made.
struct Made {
    attempts: u32,
    /// Threads stopped for them, and for how long.
    threads: usize,
    stopped: Duration,
}

/// Makes `writes` with every thread stopped, retrying while a thread is in
/// the way; then clears the runtime's write journal. Err: (attempts, why).
fn write_with_retries(
    rt: &Runtime,
    writes: &[Write],
    deadline: Instant,
    opts: &Options,
    faults: &mut Faults,
) -> Result<Made, (u32, Unwritten)> {
    let mut last_err = String::new();
    let mut attempts = 0;
    for attempt in 0..=opts.retries {
        if attempt > 0 {
            // Let the thread that was in the way move on.
            thread::sleep(Duration::from_millis(1 << attempt.min(6)));
        }
        attempts = attempt + 1;
        if let Some(why) = faults.simulated_busy(rt.pid, attempts) {
            last_err = why;
            continue;
        }
        match write_all(rt.pid, writes, deadline, opts, faults) {
            Ok((threads, stopped)) => {
                // Every write is made: nothing is pending any more.
                if let Err(e) = rt.clear_pending_writes() {
                    let why = format!("clearing the runtime's write journal failed: {e}");
                    return Err((attempts, Unwritten::Bookkeeping(why)));
                }
                return Ok(Made {
                    attempts,
                    threads,
                    stopped,
                });
            }
            Err(WriteError::Busy(why)) => last_err = why,
            Err(WriteError::Fatal(why)) => return Err((attempts, Unwritten::Nothing(why))),
            Err(WriteError::Released(why)) => return Err((attempts, Unwritten::Bookkeeping(why))),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err((attempts, Unwritten::Nothing(last_err)))
}

/// Checks every REWRITE write that replaces a function's own first bytes
/// (not a jump of ours) against the library file the process mapped: the
/// copy in memory must hold exactly the file's bytes.
fn check_rewrites_against_files(pid: Pid, writes: &[Write]) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let firsts: Vec<&Write> = writes
        .iter()
        .filter(|w| w.kind == write_kind::REWRITE && w.old[0] != 0xe9)
        .collect();
    if firsts.is_empty() {
        return Ok(());
    }
    let maps = ulp_process::maps(pid).map_err(|e| e.to_string())?;
    for w in firsts {
        let len = w.len as usize;
        let Some(m) = maps.iter().find(|m| m.contains(w.addr) && m.inode != 0) else {
            return Err(format!(
                "the code at {:#x} to be rewritten is not in a mapped file",
                w.addr
            ));
        };
        let path = m.path.clone().unwrap_or_default();
        let path = path.strip_suffix(" (deleted)").unwrap_or(&path).to_string();
        // The very file mapped (even if replaced on disk since), else the path.
        let candidates = [
            format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end),
            format!("/proc/{pid}/root{path}"),
            path.clone(),
        ];
        let offset = m.offset + (w.addr - m.start);
        let mut on_disk = vec![0u8; len];
        let read = candidates.iter().any(|c| {
            std::fs::File::open(c)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(offset))?;
                    f.read_exact(&mut on_disk)
                })
                .is_ok()
        });
        if !read {
            return Err(format!(
                "cannot read '{path}' to check the code at {:#x} before rewriting it",
                w.addr
            ));
        }
        if on_disk[..] != w.old[..len] {
            return Err(format!(
                "the function code at {:#x} in '{path}' differs from the file ({} in memory, {} in \
                 the file): another tool's hook? nothing was changed",
                w.addr,
                hex(&w.old[..len]),
                hex(&on_disk)
            ));
        }
    }
    Ok(())
}

/// If the runtime's write journal says an earlier tool did not finish its
/// writes, finish them (writes already made are skipped).
fn complete_pending_writes(
    rt: &Runtime,
    deadline: Instant,
    opts: &Options,
    faults: &mut Faults,
) -> Result<(), String> {
    if !rt.writes_pending().map_err(|e| e.to_string())? {
        return Ok(());
    }
    let (_, writes) = rt.read_result().map_err(|e| e.to_string())?;
    write_with_retries(rt, &writes, deadline, opts, faults)
        .map(|_| ())
        .map_err(|(_, why)| {
            let why = match why {
                Unwritten::Nothing(why) | Unwritten::Bookkeeping(why) => why,
            };
            format!("completing the writes an interrupted ulp left pending: {why}")
        })
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

/// Runs the entry point with `opcode` on one stopped thread; returns the
/// result code, the runtime's message and the writes it asks for.
fn call(
    rt: &Runtime,
    opcode: u32,
    req: &[u8],
    deadline: Instant,
    opts: &Options,
) -> Result<(i32, String, Vec<Write>), String> {
    // A thread that is not inside the allocator or the loader (see
    // caller.rs); when every thread is, wait a little for one to leave.
    let (mut stopped, tid) = caller::find_caller(rt.pid, deadline, opts.seize(), opts.retries)?;
    rt.write_request(opcode, req).map_err(|e| e.to_string())?;
    // The call returns to the thread's code by itself, through the
    // runtime's resume routine, even if this tool dies meanwhile.
    let path = return_path(rt).map_err(|e| e.to_string())?;
    let ret = stopped
        .caller(tid)
        .call_returning(rt.entry, &[], &path, deadline)
        .map_err(|e| e.to_string())?;
    let result = rt.read_result();
    stopped.release().map_err(|e| e.to_string())?;
    let (msg, writes) = result.map_err(|e| e.to_string())?;
    Ok((ret as i32, msg, writes))
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
};

/// The runtime's resume routine and done word, from its interface block.
pub(crate) fn return_path(rt: &Runtime) -> Result<ReturnPath, ulp_process::Error> {
    let mut b = [0u8; 16];
    ulp_process::read_mem(rt.pid, rt.interface + offset::RESUME as u64, &mut b)?;
    let routine = u64::from_le_bytes(b[..8].try_into().unwrap());
    let routine_end = u64::from_le_bytes(b[8..].try_into().unwrap());
    if routine == 0 || routine_end <= routine {
        return Err(ulp_process::Error::Invalid {
            pid: rt.pid,
            what: "the runtime did not publish its resume routine".into(),
        });
    }
    Ok(ReturnPath {
        routine,
        routine_end,
        done: rt.interface + offset::CALL_DONE as u64,
    })
}

enum WriteError {
    /// A thread is executing bytes to change: try again later.
    Busy(String),
    /// Nothing is written (what was is put back).
    Fatal(String),
    /// Every write is made; releasing the threads failed.
    Released(String),
}

/// Step 3: with every thread stopped, check and make the writes. Returns
/// how many threads were stopped and for how long.
fn write_all(
    pid: Pid,
    writes: &[Write],
    deadline: Instant,
    opts: &Options,
    faults: &mut Faults,
) -> Result<(usize, Duration), WriteError> {
    let fatal = |e: ulp_process::Error| WriteError::Fatal(e.to_string());
    let start = Instant::now();
    let mut stopped = Stopped::seize_all_with(pid, deadline, opts.seize()).map_err(fatal)?;
    // Where the plan stands: at its start, or where a killed earlier tool
    // left it (its journal), possibly in the middle of a write of several
    // words. Anything else means someone else changed the code.
    let mut now = Vec::with_capacity(writes.len());
    for w in writes {
        let mut b = [0u8; 16];
        stopped
            .peek(w.addr, &mut b[..w.len as usize])
            .map_err(fatal)?;
        now.push(b);
    }
    let todo = resume_plan(writes, &now).map_err(|i| {
        WriteError::Fatal(format!(
            "code at {:#x} in process {pid} changed since the runtime checked it (another tool?); nothing was written",
            writes[i].addr
        ))
    })?;
    // No thread inside bytes still to change (writes already made change
    // nothing: after a killed ulp, threads run through what it wrote).
    let tids = stopped.tids();
    for &tid in &tids {
        let rip = stopped.regs(tid).map_err(fatal)?.rip();
        if let Some(w) = todo
            .iter()
            .find(|w| busy_range(w).is_some_and(|(start, end)| start < rip && rip < end))
        {
            return Err(WriteError::Busy(format!(
                "process {pid} is busy: thread {tid} is executing bytes at {:#x} that the patch changes; retry later or with a higher -r",
                w.addr
            )));
        }
    }
    // In the runtime's order: every stub before the entry jump that leads
    // to it (a thread that takes a new jump finds a complete stub), and for
    // a change of several functions, slots, each function pointed at its
    // slot, the flag, each function pointed at its target. All threads are
    // stopped, so the order matters only if we die in the middle; then
    // every function runs one whole version, and with a flag every
    // function of the change the same one.
    let mut done: Vec<Write> = Vec::new();
    for w in &todo {
        let new = &w.new[..w.len as usize];
        if let Err(e) = make_write(&mut stopped, w.addr, w.kind, new, faults) {
            // Put back what was written so the process runs one version:
            // backwards, each write whole, so a kill here is as harmless.
            for d in done.iter().rev() {
                let old = &d.old[..d.len as usize];
                let _ = make_write(&mut stopped, d.addr, d.kind, old, faults);
            }
            return Err(fatal(e));
        }
        done.push(*w);
    }
    faults.kill_point();
    stopped.release().map_err(|e| {
        WriteError::Released(format!(
            "releasing the threads after the writes failed: {e}"
        ))
    })?;
    Ok((tids.len(), start.elapsed()))
}

/// Makes one write of kind `kind`: a stub or a rewritten entry with one
/// write of /proc/PID/mem, so that a tool killed at any moment leaves
/// either the old bytes or the new ones (a live stub is re-pointed in
/// place); anything else one aligned word at a time.
fn make_write(
    stopped: &mut Stopped,
    addr: u64,
    kind: u32,
    data: &[u8],
    faults: &mut Faults,
) -> Result<(), ulp_process::Error> {
    match kind {
        write_kind::STUB | write_kind::REWRITE => write_at_once(stopped, addr, data, faults),
        _ => poke_words(stopped, addr, data, faults),
    }
}

/// Pokes `data` at `addr` one aligned word at a time (each one
/// PTRACE_POKEDATA), passing the test kill point before each.
fn poke_words(
    stopped: &mut Stopped,
    addr: u64,
    data: &[u8],
    faults: &mut Faults,
) -> Result<(), ulp_process::Error> {
    let mut off = 0usize;
    while off < data.len() {
        let a = addr + off as u64;
        let n = (8 - (a & 7) as usize).min(data.len() - off);
        faults.kill_point();
        stopped.poke(a, &data[off..off + n])?;
        faults.poked();
        off += n;
    }
    Ok(())
}

/// [`poke_words`] for a write that must never be seen half made: one
/// write of /proc/PID/mem (counted as one word by the kill hook).
fn write_at_once(
    stopped: &mut Stopped,
    addr: u64,
    data: &[u8],
    faults: &mut Faults,
) -> Result<(), ulp_process::Error> {
    faults.kill_point();
    stopped.write_code_at_once(addr, data)?;
    faults.poked();
    Ok(())
}

/// Fault injection for the tests, for one operation in one process: only
/// with the feature `fault-injection`, which the tests turn on and no
/// release build has (there every hook does nothing, and the `ULP_TEST_*`
/// variables are never read).
///
/// * `ULP_TEST_KILL_BEFORE_WRITES`: the tool SIGKILLs itself between the
///   runtime's record and the writes (tests/faults.rs).
/// * `ULP_TEST_KILL_AFTER_WRITES=N`: it SIGKILLs itself once this
///   operation has poked N code words, before the next one (or before
///   releasing the threads after the last one), with every thread still
///   stopped (tests/faults.rs).
/// * `ULP_TEST_BUSY_ATTEMPTS=N`: the first N write attempts find a thread
///   in the way (tests/trigger.rs).
#[derive(Default)]
struct Faults {
    /// Code words this operation poked so far (each `-j` worker counts
    /// its own operations).
    #[cfg(feature = "fault-injection")]
    pokes: u64,
}

impl Faults {
    #[cfg(feature = "fault-injection")]
    fn var(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    #[cfg(feature = "fault-injection")]
    fn die() {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }

    /// Between the runtime's record and the writes.
    fn before_writes(&self) {
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("ULP_TEST_KILL_BEFORE_WRITES").is_some() {
            Self::die();
        }
    }

    /// Before each code word, and before releasing the threads.
    fn kill_point(&self) {
        #[cfg(feature = "fault-injection")]
        if Self::var("ULP_TEST_KILL_AFTER_WRITES") == Some(self.pokes) {
            Self::die();
        }
    }

    /// After each code word.
    fn poked(&mut self) {
        #[cfg(feature = "fault-injection")]
        {
            self.pokes += 1;
        }
    }

    /// Why write attempt `attempt` (from 1) finds a thread in the way, when
    /// it is simulated to.
    fn simulated_busy(&self, pid: Pid, attempt: u32) -> Option<String> {
        #[cfg(feature = "fault-injection")]
        if Self::var("ULP_TEST_BUSY_ATTEMPTS").is_some_and(|n| u64::from(attempt) <= n) {
            return Some(format!(
                "process {pid} is busy: a thread is executing bytes that the patch changes \
                 (simulated: ULP_TEST_BUSY_ATTEMPTS); retry later or with a higher -r"
            ));
        }
        let _ = (pid, attempt);
        None
    }
}

/// The writes of `writes` (a plan, in order) still to make, given `now`,
/// what memory holds at each write's bytes: the plan is resumed at the
/// first write from which the memory is the plan's state, except for
/// bytes of that write already made (a write of several words a killed
/// tool left half made, each byte old or new). That write's `old` becomes
/// what memory holds (what a rollback puts back); writes that change
/// nothing are dropped. Err: the index of a write whose bytes match no
/// state of the plan.
fn resume_plan(writes: &[Write], now: &[[u8; 16]]) -> Result<Vec<Write>, usize> {
    use std::collections::HashMap;
    fn bytes(w: &Write) -> impl Iterator<Item = (u64, usize)> {
        let addr = w.addr;
        (0..u64::from(w.len)).map(move |i| (addr + i, i as usize))
    }
    // The plan's state before write j (`cur`, starting from each byte's
    // first `old`) and what memory holds.
    let mut cur: HashMap<u64, u8> = HashMap::new();
    let mut mem: HashMap<u64, u8> = HashMap::new();
    for (w, n) in writes.iter().zip(now) {
        for (a, i) in bytes(w) {
            cur.entry(a).or_insert(w.old[i]);
            mem.entry(a).or_insert(n[i]);
        }
    }
    let mut differ = cur.iter().filter(|(a, v)| mem[*a] != **v).count();
    for (j, w) in writes.iter().enumerate() {
        if bytes(w).any(|(a, i)| cur[&a] != w.old[i]) {
            // The plan contradicts itself: trust none of it.
            return Err(j);
        }
        let inside = bytes(w).filter(|&(a, _)| mem[&a] != cur[&a]).count();
        let half_made = bytes(w).all(|(a, i)| mem[&a] == cur[&a] || mem[&a] == w.new[i]);
        if differ == inside && half_made {
            let mut first = *w;
            for (a, i) in bytes(w) {
                first.old[i] = mem[&a];
            }
            let todo = std::iter::once(first)
                .chain(writes[j + 1..].iter().copied())
                .filter(|w| w.old[..w.len as usize] != w.new[..w.len as usize])
                .collect();
            return Ok(todo);
        }
        for (a, i) in bytes(w) {
            differ -= usize::from(mem[&a] != cur[&a]);
            cur.insert(a, w.new[i]);
            differ += usize::from(mem[&a] != cur[&a]);
        }
    }
    if differ == 0 {
        return Ok(Vec::new());
    }
    // Name the first write with a byte that no state of the plan has.
    let mut known: HashMap<u64, Vec<u8>> = HashMap::new();
    for w in writes {
        for (a, i) in bytes(w) {
            known.entry(a).or_default().extend([w.old[i], w.new[i]]);
        }
    }
    Err(writes
        .iter()
        .position(|w| bytes(w).any(|(a, _)| !known[&a].contains(&mem[&a])))
        .unwrap_or(0))
}

/// The bytes no thread's instruction pointer may be strictly inside while
/// `w` is made: the bytes it changes, none for the flag (data). A slot
/// a switch retires (its function pointed straight at its target) is
/// not written: a thread inside it finishes it as it is.
fn busy_range(w: &Write) -> Option<(u64, u64)> {
    match w.kind {
        write_kind::FLAG => None,
        _ => Some((w.addr, w.addr + u64::from(w.len))),
    }
}

pub use ulp_abi::hex::hex;

#[cfg(test)]
mod tests {
    use super::*;

    fn w(addr: u64, kind: u32, old: &[u8], new: &[u8]) -> Write {
        Write::new(addr, kind, old, new)
    }

    /// A switch of one function (stub at 0x1000, its guarded slot at
    /// 0x8000, the flag at 0x9000), in the runtime's order: the slot, the
    /// stub and entry to it, the flag, the stub straight to the new
    /// function.
    fn activation() -> Vec<Write> {
        let stub = 0x1000;
        let slot: Vec<u8> = (1..=16).collect();
        let via = ulp_abi::direct_stub(stub, 0x8000).unwrap();
        let d = ulp_abi::direct_stub(stub, 0x5000).unwrap();
        vec![
            w(0x8000, write_kind::CODE, &[0; 8], &slot[..8]),
            w(0x8008, write_kind::CODE, &[0; 8], &slot[8..]),
            w(stub, write_kind::STUB, &[0x90; 14], &via),
            w(stub + 14, write_kind::ENTRY, &[0x66, 0x90], &[0xeb, 0xf0]),
            w(0x9000, write_kind::FLAG, &[0], &[1]),
            w(stub, write_kind::STUB, &via, &d),
        ]
    }

    /// What memory holds at each write's bytes once `made` bytes of the
    /// plan's writes are made, in order (a write cut short by a kill).
    fn memory(plan: &[Write], made: usize) -> Vec<[u8; 16]> {
        let mut mem = std::collections::HashMap::new();
        for w in plan.iter().rev() {
            for i in 0..w.len as usize {
                mem.insert(w.addr + i as u64, w.old[i]);
            }
        }
        let mut left = made;
        for w in plan {
            for i in 0..w.len as usize {
                if left == 0 {
                    break;
                }
                mem.insert(w.addr + i as u64, w.new[i]);
                left -= 1;
            }
        }
        plan.iter()
            .map(|w| {
                let mut b = [0u8; 16];
                for (i, x) in b.iter_mut().enumerate().take(w.len as usize) {
                    *x = mem[&(w.addr + i as u64)];
                }
                b
            })
            .collect()
    }

    #[test]
    fn a_plan_resumes_where_a_killed_tool_left_it() {
        let plan = activation();
        let total: usize = plan.iter().map(|w| w.len as usize).sum();
        assert_eq!(resume_plan(&plan, &memory(&plan, 0)).unwrap(), plan);
        // After whole writes: the rest of the plan.
        let mut made = 0;
        for k in 0..plan.len() {
            let todo = resume_plan(&plan, &memory(&plan, made)).unwrap();
            assert_eq!(todo, plan[k..], "after {k} writes");
            made += plan[k].len as usize;
        }
        assert_eq!(made, total);
        assert_eq!(resume_plan(&plan, &memory(&plan, total)).unwrap(), []);
        // Part of the stub made (as a tool older than the one-write stubs
        // could leave it): finished from there, and a rollback would put
        // back the half-made bytes.
        let mem = memory(&plan, 16 + 3);
        let todo = resume_plan(&plan, &mem).unwrap();
        assert_eq!(todo.len(), plan.len() - 2);
        assert_eq!(todo[0].new, plan[2].new);
        assert_eq!(todo[0].old[..14], mem[2][..14]);
        assert_eq!(todo[1..], plan[3..]);
        // Bytes no state of the plan has: someone else's code.
        let mut odd = memory(&plan, 0);
        odd[3][0] = 0xcc;
        assert_eq!(resume_plan(&plan, &odd), Err(3));
        let mut odd = memory(&plan, total);
        odd[4][0] = 7;
        assert!(resume_plan(&plan, &odd).is_err());
        // A write that changes nothing is dropped.
        let same = vec![w(0x2000, write_kind::STUB, &[1, 2], &[1, 2])];
        assert_eq!(resume_plan(&same, &memory(&same, 0)).unwrap(), []);
    }

    #[test]
    fn writes_are_busy_over_their_bytes_and_the_flag_never() {
        let plan = activation();
        assert_eq!(busy_range(&plan[0]), Some((0x8000, 0x8008)));
        assert_eq!(busy_range(&plan[2]), Some((0x1000, 0x100e)));
        assert_eq!(busy_range(&plan[3]), Some((0x100e, 0x1010)));
        assert_eq!(busy_range(&plan[4]), None);
        assert_eq!(busy_range(&plan[5]), Some((0x1000, 0x100e)));
    }

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

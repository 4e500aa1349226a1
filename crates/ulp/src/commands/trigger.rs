//! `ulp trigger`: apply or revert live patches in running processes.

use clap::ValueHint;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use ulp_abi::errors;
use ulp_core::fleet::{self, Line, NotSelected, Operation, ProcessResult, Status, Trace};
use ulp_core::trigger::{self, Outcome, ALREADY_APPLIED};
use ulp_core::Pid;

use ulp_core::store::{self, Store, Stored};

use super::{print_json, runtime_to_load, LoadRuntime};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "apply (or revert) live-patch containers (without -p: in every process that has the runtime loaded)",
    override_usage = "\
ulp trigger [-p PID|NAME] [--revert] [-r N] [--timeout S] [-R PREFIX]
                   [--consistency=MODEL] [--disable-seccomp] [--redirect-got] [--force]
                   [--persist [--store DIR]] FILE|'GLOB'...
       ulp trigger [-p PID|NAME] --load-runtime [--runtime=PATH] FILE|'GLOB'...
       ulp trigger [-p PID|NAME] --revert-all=LIB|target [FILE|'GLOB'...]",
    before_help = "\
Apply the live-patch containers FILE... to running processes; with
--revert, remove them instead. The processes must run with libpulp.so.0
preloaded, unless --load-runtime loads it into them first.

Which processes: -p PID; -p NAME, a shell pattern (quote it: -p 'demo_*')
matched against the process name (/proc/PID/comm, cut at 15 characters by
the kernel) and the executable's file name; without -p, every process that
has the runtime loaded (others are not targets at all).

Which files: each FILE, in the order given. A quoted glob ('*.so',
'/usr/lib/pulp/*/*.so') is expanded by ulp itself, in byte order of the
resulting paths (as with LC_ALL=C: 'B.so' before 'a.so', 'a10.so' before
'a2.so'); a leading '.' of a file name is matched only explicitly. A glob
that matches no file is an error (exit status 1); the other files go on.

A patch applies only to a process that has loaded the exact build of the
library it was made for (same file name and build id); anything else is
SKIPPED and left untouched. A patch applies all or nothing.

--revert-all=LIB removes every patch of library LIB (its file name, or the
path the process loaded it from) and reports `reverted all patches from
'LIB'`. With FILE..., each FILE instead replaces the patches of LIB: the old
patches go and the new one comes in one set of writes, made while the
process is stopped once, so no thread ever runs with neither; if FILE does
not apply there, the old patches stay. The word `target` stands for each
FILE's own target library (--revert-all=target needs FILE).

--load-runtime loads the runtime into processes that were started without
it, then applies FILE... as usual: into the process -p names, or without -p
into every process that has loaded a library build one of the FILEs is for
(a process without such a library is left alone). One thread that is not
inside the allocator or the dynamic loader calls the C library's dlopen
while the other threads keep running; it returns to its own code by itself
even if ulp is killed meanwhile, and the runtime is then loaded whole or
not at all. A process whose environment sets LIBPULP_DISABLE_ON_* to match
it is SKIPPED, not loaded into. The runtime is --runtime=PATH, by default
libpulp.so.0 in ../lib or ../lib/<multiarch> (the Debian package's place:
../lib/x86_64-linux-gnu) next to the ulp executable, or next to it; as
root, one that another user could change is refused unless --force. It stays
loaded: later triggers and `ulp patches` find the process like any other.
With --revert or --revert-all it loads nothing: a process that has the
runtime is reverted as usual, one without it is SKIPPED (`No patches
installed`: nothing is applied there).

-R PREFIX is for chrooted or containerised processes: ulp reads FILE (and
GLOB) where it is, and hands the runtime PREFIX + the real path of FILE,
unchanged and unchecked (libpulp's rule): PREFIX is where this host's root
appears in the process's view (a bind mount, or /proc/1/root when the
process has a /proc). Without -R, a chrooted process gets an ERROR that
names -R.

--redirect-got also points the GOT slots (JUMP_SLOT, GLOB_DAT, in every
loaded object) that hold a patched function's address at the new
function, in the same stop as the code writes, so a call from another
object through the PLT costs what it did before the patch; calls inside the
library, function pointers taken before and slots not bound yet keep going
through the old entry's redirect. Every revert puts such slots back first,
with or without the option. Off by default: a pointer read from a moved
slot is the new function's address, unequal to one taken before, and the
slots are found by reading every loaded object's relocations.

--consistency=MODEL says when each thread takes the new code of a change.
function (the default): a thread switches on its own, at a moment when no
function the change replaces is on its stack, so no thread ever runs the
old version of one replaced function and the new version of another; a
thread inside one (blocked in it, say) keeps the old code until it returns
from it, then switches by itself, with or without ulp. library: a thread
switches only once no code of the target library is on its stack (for
patches whose functions depend on the library's other code). none: every
thread at once, as libpulp does. The trigger waits up to --timeout (2
seconds when not given) for every thread to switch, then prints SUCCESS,
followed by `(transition pending: N threads: TID in FUNCTION, ...)` when
some have not yet; `ulp patches` shows them until they have.

--disable-seccomp suspends the processes' seccomp filters while ulp is
attached (PTRACE_O_SUSPEND_SECCOMP), for targets whose filter forbids what
loading a patch needs (opening the file, mapping it). The kernel allows it
only when ulp has CAP_SYS_ADMIN and runs without seccomp itself. Without
CAP_SYS_ADMIN ulp refuses at once, before touching any process (exit 1, as
libpulp); under a seccomp filter of its own, each process gets an ERROR
saying so.

As root, ulp refuses to load a FILE that another user could change (it
would run that user's code as root): FILE, a directory on its path or a
symbolic link followed is owned by someone other than root, or FILE or such
a directory is writable by group or others (a sticky directory such as /tmp
is fine: others cannot replace root's entries in it). The ERROR names the
path and the fix (`chown root`, `chmod go-w`); --force loads it anyway.
Reverting loads nothing and is not checked.

--persist also records each FILE in the patch store (--store DIR, else the
directory $ULP_STORE names, else /var/lib/ulp/patches, created 0755 on first
record): a copy of the container and its metadata, written atomically, so
the record survives FILE being deleted. It is recorded whatever each
process's outcome, also when no running process has its target yet (`ulp:
Recorded in DIR: FILE` after the summary line); a FILE that fails its checks
(unreadable, no container, refused as below) is not recorded, with an
error. --revert --persist removes FILE's record; --revert-all=LIB --persist
removes every record whose target is LIB (with FILE..., the records of LIB
are replaced by FILE's). As root, a store that another user could change (it
or a directory above it not root's, or writable by group or others) is
refused before any process is touched, whatever --force says. `ulp patches
--stored` lists the records. (Applying them when a process starts comes
later.)

Several processes are patched in parallel (-j), each stopped only for its
own patch; on a terminal a progress bar shows on stderr meanwhile.

Output: one line per process, indented as libpulp's (with several FILEs,
the name line alone, then one line per FILE under it, where a skip also
names its FILE: SKIPPED FILE: REASON), then a summary line, also with -q:
    NAME (pid: PID): SUCCESS FILE | SKIPPED REASON | ERROR FILE: REASON
  ulp: Processes patched: N, Skipped: N, Failed: N.
A REASON begins with libpulp's phrase for the error (`Failure in dlopen`,
`Build ID mismatch`, `Target library not loaded`, ...), then ulp's detail.
A process counts once: failed if any of its patches failed, else patched if
any changed it, else skipped. An already applied patch is SKIPPED (`Patch
already applied`); reverting one that is not applied is an ERROR (`Patch
not applied`). A process that -p names but that has no runtime gets, on
stderr, libpulp's `[TIME] ulp: error gathering target process information:
Libpulp not found in target process` and a hint; nothing changes (exit 0).",
    after_help = "\
Exit status: 0 when nothing failed (skips are not failures); on failure
libpulp's error numbers of the failed results, or-ed together and masked
to 8 bits (a dlopen failure, 287, exits 31; `No metadata in .so` 13;
`Patch not applied` 16; `Error attaching to process` 2), or 1 when that
leaves 0 or only an argument failed (a glob without match, no such pid)
or, with --persist, the store (refused, a FILE not recorded or a record not
removed); 38 for -u; 64 on a usage error.",
    mut_arg("quiet", |a| a.help("print only ERROR lines and the summary line")),
    mut_arg("verbose", |a| a.help("also print, under each result, the runtime's path, its message, the number of code writes and how long the threads were stopped; and on stderr libpulp's trace lines for a skip (build id mismatch, target library not loaded)")),
    mut_arg("json", |a| a.help("print one JSON document instead (see README)"))
)]
pub struct Args {
    /// the target process(es) (default: all with the runtime, and with --load-runtime all with the target library)
    #[arg(short, long, value_name = "PID|NAME")]
    pub process: Option<String>,
    #[command(flatten)]
    pub load: LoadRuntime,
    /// revert the patches instead of applying them
    #[arg(long)]
    pub revert: bool,
    /// revert every patch of LIB (or replace them by FILE)
    #[arg(long, value_name = "LIB", value_hint = ValueHint::AnyPath)]
    pub revert_all: Option<String>,
    /// work on N processes at once (default: the number of CPUs; more finishes a fleet sooner but holds each process longer, see README); output stays in pid order
    #[arg(short, long, value_name = "N", value_hint = ValueHint::Other)]
    pub jobs: Option<String>,
    /// retry a busy process N more times (default 3)
    #[arg(short, long, value_name = "N", value_hint = ValueHint::Other)]
    pub retries: Option<String>,
    /// give up on a process after S seconds (default 30)
    #[arg(long, value_name = "S", value_hint = ValueHint::Other)]
    pub timeout: Option<String>,
    /// the runtime opens PREFIX + realpath(FILE)
    #[arg(short = 'R', long, value_name = "PREFIX", value_hint = ValueHint::AnyPath)]
    pub root: Option<String>,
    /// suspend seccomp while attached (needs CAP_SYS_ADMIN)
    #[arg(long)]
    pub disable_seccomp: bool,
    /// also point the GOT slots (of every loaded object) that hold a patched function's address at the new function, so a call through the PLT costs what it did before the patch; reverts put them back (off by default: a function pointer read from a moved slot is then the new function's address, unequal to one taken before the patch, and each trigger reads every loaded object's relocations; see README)
    #[arg(long)]
    pub redirect_got: bool,
    /// when each thread takes the new code: function (default: once no replaced function is on its stack), library (once no code of the target library is), none (every thread at once, as libpulp)
    #[arg(long, value_name = "MODEL", value_hint = ValueHint::Other)]
    pub consistency: Option<String>,
    /// as root, load FILEs that other users could change
    #[arg(long)]
    pub force: bool,
    /// also record each FILE in the patch store, to stay (with --revert: remove its record; with --revert-all=LIB: remove LIB's records)
    #[arg(long)]
    pub persist: bool,
    /// the patch store (default: $ULP_STORE, else /var/lib/ulp/patches); with --persist
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub store: Option<String>,
    /// accepted, and refused as libpulp does (exit 38)
    #[arg(short, long, value_name = "USER", value_hint = ValueHint::Username)]
    pub user: Option<String>,
    #[arg(value_name = "FILE|'GLOB'", value_hint = ValueHint::FilePath, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

/// libpulp's exit status for `trigger -u` (ENOSYS).
const EXIT_NO_USER_WILDCARD: u8 = 38;
/// libpulp's exit status (EPERM) for --disable-seccomp without
/// CAP_SYS_ADMIN.
const EXIT_NO_SYS_ADMIN: u8 = 1;
/// CAP_SYS_ADMIN, which PTRACE_O_SUSPEND_SECCOMP needs.
const CAP_SYS_ADMIN: u32 = 21;

pub fn run(p: &Args) -> Result<u8, UsageError> {
    if p.user.as_deref().is_some() {
        // Accepted, and refused as libpulp does.
        if !p.common.quiet {
            super::log_stderr("error: user wildcard is currently unsupported in trigger");
        }
        return Ok(EXIT_NO_USER_WILDCARD);
    }
    if p.disable_seccomp && !ulp_process::has_capability(CAP_SYS_ADMIN) {
        // Refused before any process is touched, with libpulp's words.
        if !p.common.quiet {
            super::log_stderr(
                "error: disabling seccomp requires CAP_SYS_ADMIN, but user does not provide it.\n\
                 suggestion: run ulp as root.",
            );
        }
        if p.common.json {
            print_json(&json!({ "error": "disabling seccomp requires CAP_SYS_ADMIN" }));
        }
        return Ok(EXIT_NO_SYS_ADMIN);
    }
    let mut opts = trigger::Options::default();
    if let Some(r) = p.retries.as_deref() {
        opts.retries = r
            .parse()
            .map_err(|_| UsageError(format!("-r needs a number, got '{r}'")))?;
    }
    if let Some(t) = p.timeout.as_deref() {
        opts.timeout = super::timeout_seconds(t)?;
        // The wait for a transition is bounded by the same S.
        opts.transition_wait = opts.timeout;
    }
    if let Some(c) = p.consistency.as_deref() {
        opts.consistency = trigger::Consistency::parse(c).ok_or_else(|| {
            UsageError(format!(
                "--consistency takes function, library or none, got '{c}'"
            ))
        })?;
    }
    // -R PREFIX is a path in the target's view: not checked here (libpulp
    // does not either).
    if let Some(r) = p.root.as_deref() {
        opts.root = Some(PathBuf::from(r));
    }
    opts.suspend_seccomp = p.disable_seccomp;
    opts.redirect_got = p.redirect_got;
    let store = match (p.persist, p.store.as_deref()) {
        (_, Some("")) => return Err(UsageError("--store needs a directory".into())),
        (false, Some(_)) => {
            return Err(UsageError(
                "--store goes with --persist (it names the patch store to record in)".into(),
            ))
        }
        (false, None) => None,
        (true, dir) => Some(Store::new(store::resolve(dir))),
    };
    let jobs = match p.jobs.as_deref() {
        // One per CPU, looked up only if there are several processes.
        None => 0,
        Some(j) => j.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
            UsageError(format!(
                "-j needs a number of processes at once (1 or more), got '{j}'"
            ))
        })?,
    };
    let quiet = p.common.quiet;
    let verbose = p.common.verbose && !quiet;
    let as_json = p.common.json;

    let operation = match (p.revert_all.as_deref(), p.revert) {
        (Some(_), true) => {
            return Err(UsageError(
                "--revert-all and --revert do not go together (--revert-all=LIB alone reverts)"
                    .into(),
            ))
        }
        (Some(""), _) => return Err(UsageError("--revert-all needs a library name".into())),
        (Some("target"), _) if p.operands.is_empty() => {
            return Err(UsageError(
                "--revert-all=target needs FILE (its target is the library)".into(),
            ))
        }
        (Some(lib), _) if p.operands.is_empty() => Operation::RevertAll(lib.to_string()),
        (Some("target"), _) => Operation::Replace(None),
        (Some(lib), _) => Operation::Replace(Some(lib.to_string())),
        (None, _) if p.operands.is_empty() => {
            return Err(UsageError("'trigger' needs at least one FILE".into()))
        }
        (None, true) => Operation::Revert,
        (None, false) => Operation::Apply,
    };

    // Expand globs and read every container once, before touching any
    // process.
    // For --json: about arguments (no pid) or processes (README).
    let mut errors: Vec<Value> = Vec::new();
    let mut warnings: Vec<Value> = Vec::new();
    let read = fleet::read_files(&p.operands, &operation, p.force);
    for operand in &read.unmatched {
        let msg = format!("no file matches '{operand}'");
        eprintln!("ulp: {msg}");
        errors.push(json!({ "error": msg }));
    }
    let files = read.files;

    // --persist: the store is checked before any process is touched.
    if let Some(store) = &store {
        if let Err(e) = store.check_trust() {
            eprintln!("ulp: {e}");
            if as_json {
                print_json(&json!({ "error": e.to_string() }));
            }
            return Ok(1);
        }
    }

    // --load-runtime: the runtime file, checked once before any process.
    // With --revert or --revert-all it loads nothing (a process without the
    // runtime has nothing applied), so that scripts can pass the same flags
    // both ways.
    let load_runtime = match runtime_to_load(&p.load, p.force)? {
        Some(Err(e)) => {
            eprintln!("ulp: {e}");
            if as_json {
                print_json(&json!({ "error": e }));
            }
            return Ok(1);
        }
        Some(Ok(file)) => Some(file),
        None => None,
    };

    let selection = match p.process.as_deref() {
        Some(spec) => {
            let (selection, why) = fleet::Selection::named(spec);
            match why {
                // Not a process to report on: the argument is wrong.
                Some(NotSelected::NoSuchProcess(pid)) => {
                    let msg = format!("no process {pid} exists");
                    eprintln!("ulp: {msg}");
                    errors.push(json!({ "pid": pid.get(), "error": msg }));
                }
                Some(NotSelected::NoMatch) => {
                    let msg = ulp_core::select::NoProcess {
                        spec: Some(spec),
                        user: None,
                    }
                    .to_string();
                    eprintln!("ulp: {msg}");
                    warnings.push(json!({ "warning": msg }));
                }
                None => {}
            }
            selection
        }
        None => fleet::Selection::every(),
    };
    let run = fleet::Run {
        operation: &operation,
        files: &files,
        options: &opts,
        jobs,
        load_runtime: load_runtime.as_deref(),
        trace: verbose,
    };

    let (mut patched, mut skipped, mut failed) = (0u32, 0u32, 0u32);
    // The libpulp error numbers of every failed result, or-ed (exit_status).
    let mut failure_bits: u16 = 0;
    let mut json_procs: Vec<Value> = Vec::new();
    let mut progress = Progress::new(run.targets(&selection).len(), as_json);
    fleet::run(&selection, &run, |r| {
        progress.step();
        let (Some(status), Some(lines)) = (r.status(), &r.lines) else {
            progress.draw();
            return;
        };
        if !r.trace.is_empty() {
            progress.clear();
            for t in &r.trace {
                super::log_stderr(&trace_message(&r, t));
            }
        }
        for l in lines.iter().filter(|l| l.report.detail.switched_at_once) {
            // Asked for a per-thread transition, got the switch of every
            // thread at once: not a failure (each function stays whole),
            // but not what was asked.
            let w = format!(
                "{}: every thread switched at once: the runtime could not plan a per-thread \
                 transition (see `ulp messages -p {}`)",
                l.label, r.pid
            );
            progress.clear();
            if !quiet {
                eprintln!("ulp: warning: {} (pid: {}): {w}", r.name, r.pid);
            }
            warnings.push(json!({ "pid": r.pid.get(), "name": r.name, "warning": w }));
        }
        if r.no_runtime {
            // libpulp's words for a process without the runtime, then
            // ulp's hint (the run still exits 0: nothing changed).
            progress.clear();
            if !quiet {
                super::log_stderr(&format!(
                    "error gathering target process information: {}",
                    errors::ENOLIBPULP.phrase
                ));
                eprintln!(
                    "ulp: hint: {} (pid: {}) was started without libpulp.so.0: start it \
                     with LD_PRELOAD=.../libpulp.so.0 or load it now with --load-runtime",
                    r.name, r.pid
                );
            }
            let w = Outcome::NoRuntime.to_string();
            warnings.push(json!({ "pid": r.pid.get(), "name": r.name, "warning": w }));
        }
        for l in lines {
            if let Outcome::Failed(r) = &l.report.outcome {
                failure_bits |= r.error.number;
            }
        }
        match status {
            Status::Failed => failed += 1,
            Status::Patched => patched += 1,
            Status::Skipped => skipped += 1,
        }
        if as_json {
            json_procs.push(json!({
                "pid": r.pid.get(),
                "name": r.name,
                "status": status_name(status),
                "results": lines.iter().map(line_json).collect::<Vec<_>>(),
            }));
        } else {
            progress.clear();
            print_process(r.pid, &r.name, lines, quiet, verbose, p.redirect_got);
        }
        progress.draw();
    });
    progress.clear();

    let persisted = store
        .as_ref()
        .map(|store| persist(store, &operation, &files, &mut errors, &mut warnings));

    if as_json {
        let library = match &operation {
            Operation::RevertAll(l) | Operation::Replace(Some(l)) => json!(l),
            Operation::Replace(None) => json!("target"),
            _ => Value::Null,
        };
        print_json(&json!({
            "operation": operation_name(&operation),
            "library": library,
            "files": files.iter().map(|f| f.shown.clone()).collect::<Vec<_>>(),
            "processes": json_procs,
            "warnings": warnings,
            "errors": errors,
            "summary": {"patched": patched, "skipped": skipped, "failed": failed},
            "stored": persisted.as_ref().map(Persisted::to_json),
        }));
    } else {
        println!("ulp: Processes patched: {patched}, Skipped: {skipped}, Failed: {failed}.");
        if let Some(p) = &persisted {
            p.print();
        }
    }
    Ok(exit_status(failure_bits, !errors.is_empty()))
}

/// What `--persist` did to the store.
struct Persisted {
    dir: String,
    /// FILE as shown, and its record.
    recorded: Vec<(String, Stored)>,
    /// The records removed (FILE as shown for --revert, else the record's
    /// original path), and each record.
    removed: Vec<(String, Stored)>,
    /// FILEs (--revert) that had no record.
    not_found: Vec<String>,
}

impl Persisted {
    fn print(&self) {
        for (f, _) in &self.recorded {
            println!("ulp: Recorded in {}: {f}", self.dir);
        }
        for (f, _) in &self.removed {
            println!("ulp: Removed from {}: {f}", self.dir);
        }
    }

    fn to_json(&self) -> Value {
        let one = |(f, s): &(String, Stored)| {
            json!({
                "file": f,
                "path": s.container_path(),
                "record": s.dir,
                "patch_id": s.record.patch_id,
                "target": s.record.target,
                "build_id": s.record.build_id,
            })
        };
        json!({
            "store": self.dir,
            "recorded": self.recorded.iter().map(one).collect::<Vec<_>>(),
            "removed": self.removed.iter().map(one).collect::<Vec<_>>(),
            "not_found": self.not_found,
        })
    }
}

/// `--persist`: records the FILEs applied, removes the records of what was
/// reverted. A failure is an error of the run (stderr, `errors`).
fn persist(
    store: &Store,
    operation: &Operation,
    files: &[fleet::File],
    errors: &mut Vec<Value>,
    warnings: &mut Vec<Value>,
) -> Persisted {
    let dir = store.dir.display().to_string();
    let mut out = Persisted {
        dir: dir.clone(),
        recorded: Vec::new(),
        removed: Vec::new(),
        not_found: Vec::new(),
    };
    let mut fail = |file: Option<&str>, msg: String| {
        eprintln!("ulp: {msg}");
        match file {
            Some(f) => errors.push(json!({ "file": f, "error": msg })),
            None => errors.push(json!({ "error": msg })),
        }
    };
    // The records of LIB, removed (--revert-all).
    let remove_lib =
        |lib: &str, out: &mut Persisted, fail: &mut dyn FnMut(Option<&str>, String)| {
            let listing = match store.list() {
                Ok(l) => l,
                Err(e) => return fail(None, format!("records of '{lib}' not removed: {e}")),
            };
            for s in listing
                .records
                .into_iter()
                .filter(|s| s.record.targets(lib))
            {
                match store.remove(&s.record.patch_id) {
                    Ok(Some(_)) => out.removed.push((s.record.original_path.clone(), s)),
                    Ok(None) => {}
                    Err(e) => fail(
                        None,
                        format!("record '{}' not removed: {e}", s.dir.display()),
                    ),
                }
            }
        };
    match operation {
        Operation::RevertAll(lib) => {
            remove_lib(lib, &mut out, &mut fail);
            return out;
        }
        Operation::Replace(lib) => {
            // The records of each library replaced go first, once: the
            // FILEs recorded below are its records then.
            let mut libs: Vec<&str> = Vec::new();
            for f in files {
                if let Ok(c) = &f.container {
                    let l = lib.as_deref().unwrap_or(&c.metadata.target_name);
                    if !libs.contains(&l) {
                        libs.push(l);
                    }
                }
            }
            for l in libs {
                remove_lib(l, &mut out, &mut fail);
            }
        }
        _ => {}
    }
    for f in files {
        let c = match &f.container {
            Ok(c) => c,
            Err(r) => {
                let what = if *operation == Operation::Revert {
                    "its record not removed"
                } else {
                    "not recorded"
                };
                fail(Some(&f.shown), format!("{} {what} in {dir}: {r}", f.shown));
                continue;
            }
        };
        match operation {
            Operation::Revert => match store.remove(&ulp_abi::hex::hex(&c.metadata.patch_id)) {
                Ok(Some(d)) => out.removed.push((
                    f.shown.clone(),
                    Stored {
                        record: store::Record::of(c, std::path::Path::new(&f.shown)),
                        dir: d,
                    },
                )),
                Ok(None) => {
                    let msg = format!("{} has no record in {dir}: nothing removed", f.shown);
                    eprintln!("ulp: {msg}");
                    warnings.push(json!({ "file": f.shown, "warning": msg }));
                    out.not_found.push(f.shown.clone());
                }
                Err(e) => fail(
                    Some(&f.shown),
                    format!("{}: record not removed: {e}", f.shown),
                ),
            },
            _ => match store.record(c, std::path::Path::new(&f.shown)) {
                Ok(s) => out.recorded.push((f.shown.clone(), s)),
                Err(e) => fail(Some(&f.shown), format!("{} not recorded: {e}", f.shown)),
            },
        }
    }
    out
}

/// The operation's name in `--json`.
fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Apply => "apply",
        Operation::Revert => "revert",
        Operation::RevertAll(_) => "revert_all",
        Operation::Replace(_) => "replace",
    }
}

/// A process's status in `--json`.
fn status_name(status: Status) -> &'static str {
    match status {
        Status::Patched => "patched",
        Status::Skipped => "skipped",
        Status::Failed => "failed",
    }
}

/// The exit status of a run, as libpulp's: the numbers of the errors that
/// failed a process, or-ed together and masked to 8 bits (one dlopen
/// failure exits 31). A run that failed never exits 0: when the mask leaves
/// nothing (`Unknown error` is 256), or only an argument failed (a glob
/// that matches no file), it exits 1.
fn exit_status(failure_bits: u16, argument_error: bool) -> u8 {
    match (failure_bits & 0xff) as u8 {
        0 if failure_bits != 0 || argument_error => 1,
        code => code,
    }
}

/// `-v`: a trace message libpulp's tool prints about a patch that is not
/// for this process: for a build-id skip
/// `pid = N, name = NAME: livepatch buildid mismatch for LIB (LOADED)`, then
/// `    expected buildid: ID` and an empty line (libpulp's message ends in
/// two newlines); for a library that is not loaded
/// `pid = N, name = NAME: target library (LIB) not loaded.`
fn trace_message(r: &ProcessResult, t: &Trace) -> String {
    let (pid, name) = (r.pid, &r.name);
    match t {
        Trace::BuildIdMismatch {
            library,
            loaded,
            expected,
        } => format!(
            "pid = {pid}, name = {name}: livepatch buildid mismatch for {library} ({})\n    \
             expected buildid: {}\n",
            super::hex(loaded),
            super::hex(expected)
        ),
        Trace::NotLoaded { library } => {
            format!("pid = {pid}, name = {name}: target library ({library}) not loaded.")
        }
    }
}

/// A progress bar on stderr, only when stderr is a terminal and there is
/// more than one process; plain output (pipes, files, --json) never gets it.
struct Progress {
    total: usize,
    done: usize,
    on: bool,
}

impl Progress {
    fn new(total: usize, json: bool) -> Progress {
        use std::io::IsTerminal;
        let on = total > 1 && !json && std::io::stderr().is_terminal();
        Progress { total, done: 0, on }
    }

    fn step(&mut self) {
        self.done += 1;
    }

    fn draw(&self) {
        if !self.on || self.done >= self.total {
            return;
        }
        const WIDTH: usize = 30;
        let filled = WIDTH * self.done / self.total.max(1);
        eprint!(
            "\r[{}{}] {}/{} processes",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.done,
            self.total
        );
    }

    /// Erases the bar, so a result line can be printed.
    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

/// One process's result lines, indented as libpulp's are: `  NAME (pid:
/// PID): RESULT` for one result; with several, the name line alone and
/// each result under it (`    RESULT`).
fn print_process(
    pid: Pid,
    name: &str,
    lines: &[Line],
    quiet: bool,
    verbose: bool,
    redirect_got: bool,
) {
    let head = format!("  {name} (pid: {pid}): ");
    let several = lines.len() > 1;
    if lines.iter().all(|l| l.report.outcome == Outcome::NoRuntime) {
        // The message on stderr said it all.
        return;
    }
    let mut out = String::new();
    if several && !quiet {
        let _ = writeln!(out, "  {name} (pid: {pid}):");
    }
    for l in lines {
        // Under the name line, a skip names its file too, as libpulp's
        // `    SKIPPED FILE: PHRASE`; alone, it does not (`SKIPPED PHRASE`).
        let skipped = |reason: &dyn std::fmt::Display| {
            if several {
                format!("SKIPPED {}: {reason}", l.label)
            } else {
                format!("SKIPPED {reason}")
            }
        };
        let text = match &l.report.outcome {
            Outcome::Applied | Outcome::Reverted => match &l.report.detail.transition {
                Some(t) if !t.complete() => {
                    format!("SUCCESS {} (transition pending: {})", l.label, t.describe())
                }
                _ => format!("SUCCESS {}", l.label),
            },
            Outcome::AlreadyApplied => skipped(&ALREADY_APPLIED),
            Outcome::Skipped(r) => skipped(r),
            Outcome::NoRuntime => skipped(&Outcome::NoRuntime),
            Outcome::Failed(r) => format!("ERROR {}: {r}", l.label),
        };
        let is_error = matches!(l.report.outcome, Outcome::Failed(_));
        if quiet && !is_error {
            continue;
        }
        let (prefix, indent) = if several && !quiet {
            ("    ", "      ")
        } else {
            (head.as_str(), "    ")
        };
        let _ = writeln!(out, "{prefix}{text}");
        if verbose {
            let d = &l.report.detail;
            if let Some(rt) = &d.runtime {
                let _ = writeln!(out, "{indent}runtime: {rt}");
            }
            if let Some(m) = &d.message {
                let _ = writeln!(out, "{indent}runtime says: {m}");
            }
            if let Some(t) = d.stopped {
                let _ = writeln!(
                    out,
                    "{indent}code writes: {}, threads stopped: {} for {:.3} ms, attempts: {}",
                    d.writes,
                    d.threads,
                    t.as_secs_f64() * 1000.0,
                    d.attempts
                );
            } else if l.report.outcome.is_change() {
                let _ = writeln!(out, "{indent}code writes: 0 (no thread stopped)");
            }
            if d.got != Default::default() || (redirect_got && d.stopped.is_some()) {
                let _ = writeln!(
                    out,
                    "{indent}GOT slots: {} pointed at new functions, {} put back to old entries",
                    d.got.redirected, d.got.restored
                );
            }
            if let Some(t) = &d.transition {
                let _ = writeln!(
                    out,
                    "{indent}transition: {} threads checked one at a time (each held {:.3} ms median, {:.3} ms at most), {} switching on return, {}",
                    t.checked,
                    t.pause_median.as_secs_f64() * 1000.0,
                    t.pause_max.as_secs_f64() * 1000.0,
                    t.armed,
                    if t.complete() { "complete".to_string() } else { format!("pending: {}", t.describe()) }
                );
            }
            if let Some(u) = &d.unfinished {
                let _ = writeln!(out, "{indent}note: {u} (every thread runs the new code; the next trigger finishes the writes)");
            }
            if d.phases.total > Duration::ZERO {
                let phases: Vec<String> = d
                    .phases
                    .named()
                    .iter()
                    .map(|(name, t)| format!("{name} {:.3}", t.as_secs_f64() * 1000.0))
                    .collect();
                let _ = writeln!(out, "{indent}phases (ms): {}", phases.join(", "));
            }
        }
    }
    print!("{out}");
}

fn line_json(l: &Line) -> Value {
    let (status, reason) = match &l.report.outcome {
        Outcome::Applied => ("applied", None),
        Outcome::Reverted => ("reverted", None),
        Outcome::AlreadyApplied => ("already_applied", Some(ALREADY_APPLIED.to_string())),
        Outcome::Skipped(r) => ("not_applicable", Some(r.to_string())),
        Outcome::NoRuntime => ("not_applicable", Some(Outcome::NoRuntime.to_string())),
        Outcome::Failed(r) => ("failed", Some(r.to_string())),
    };
    // libpulp's error behind a skip or failure: its number and phrase.
    let error = match &l.report.outcome {
        Outcome::AlreadyApplied => Some(errors::EAPPLIED),
        Outcome::NoRuntime => Some(errors::ENOLIBPULP),
        Outcome::Skipped(r) | Outcome::Failed(r) => Some(r.error),
        Outcome::Applied | Outcome::Reverted => None,
    }
    .map(|e| json!({ "number": e.number, "phrase": e.phrase }));
    let d = &l.report.detail;
    json!({
        "patch": l.patch,
        "library": l.library,
        "status": status,
        "reason": reason,
        "error": error,
        "runtime": d.runtime,
        "message": d.message,
        "writes": d.writes,
        "threads_stopped": d.threads,
        "stopped_us": d.stopped.map(|t| t.as_micros() as u64),
        "attempts": d.attempts,
        "got_slots": d.got.redirected,
        "got_slots_restored": d.got.restored,
        "phases_us": phases_json(&d.phases),
        "transition": d.transition.as_ref().map(|t| json!({
            "complete": t.complete(),
            "pending": t.pending.iter().map(|(tid, f)| json!({ "tid": tid.get(), "in": f })).collect::<Vec<_>>(),
            "pending_count": t.pending_count,
            "threads_checked": t.checked,
            "threads_armed": t.armed,
            "pause_median_us": t.pause_median.as_micros() as u64,
            "pause_max_us": t.pause_max.as_micros() as u64,
        })),
        "unfinished": d.unfinished,
    })
}

/// The phases of one result ([`trigger::Phases`]), in microseconds.
fn phases_json(p: &trigger::Phases) -> Value {
    let map: serde_json::Map<String, Value> = p
        .named()
        .iter()
        .map(|(name, t)| (name.to_string(), json!(t.as_micros() as u64)))
        .collect();
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_libpulps_or_of_numbers_masked() {
        assert_eq!(exit_status(0, false), 0);
        assert_eq!(exit_status(errors::EDLOPEN.number, false), 31);
        // Patch not applied | No metadata in .so: 0x110 | 0x10d.
        let both = errors::ENOTAPPLIED.number | errors::ENOMETA.number;
        assert_eq!(exit_status(both, false), 0x1d);
        // Unknown error (256) masks to 0: a failure never exits 0.
        assert_eq!(exit_status(errors::EUNKNOWN.number, false), 1);
        assert_eq!(exit_status(0, true), 1);
        assert_eq!(exit_status(errors::EBUILDID.number, true), 1);
    }
}

//! One trigger over many processes: what `ulp trigger` runs, and what a
//! daemon or an automation module would call.
//!
//! [`run`] takes the selected processes ([`Selection`]: the ones `-p`
//! names, or every process), the [`Operation`], the files (each container
//! read once, or why not: [`read_files`]) and the options, and hands each
//! process's [`ProcessResult`] to a callback in pid order, as soon as it and
//! every one before it are done.
//!
//! The thread rule (ARCHITECTURE.md, "How a trigger flows"): processes are
//! handled by `jobs` worker threads, and everything done to one process,
//! from the first look to the last release, happens on the one worker that
//! took it: only the thread that seized a tracee may issue ptrace requests
//! for it. The callback runs on the calling thread.
//!
//! Nothing here prints: the results are data, and the `ulp` command words
//! them (lines, JSON, progress, summary).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use ulp_abi::errors;
use ulp_container::container::{self, Container};

use crate::reason::Reason;
use crate::runtime::{Runtime, RuntimeError};
use crate::select::process_name;
use crate::trigger::{self, Outcome, Report};
use crate::{inject, objects, select, trust, Pid};

/// What a run does in each process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Revert,
    /// `--revert-all=LIB` without files: every patch of LIB goes.
    RevertAll(String),
    /// `--revert-all=LIB FILE...`: the patches of LIB replaced by each FILE
    /// (`None`: `target`, each file's own target library).
    Replace(Option<String>),
}

/// One FILE after glob expansion: the name shown and the container read.
#[derive(Debug)]
pub struct File {
    pub shown: String,
    /// Or why it cannot be used: unreadable, no metadata, refused.
    pub container: Result<Container, Reason>,
}

/// The FILE operands of a run, read.
#[derive(Debug, Default)]
pub struct Files {
    /// Every file, in operand order (a glob's matches in byte order).
    pub files: Vec<File>,
    /// The globs that matched no file, in operand order.
    pub unmatched: Vec<String>,
}

/// Expands globs and reads every container once, before any process is
/// touched. Each file is read where it is, also with `-R`. As root, unless
/// `force`, a file another user could change is refused ([`trust`]); a
/// revert loads nothing and is not checked.
pub fn read_files(operands: &[String], operation: &Operation, force: bool) -> Files {
    let check_trust = !force && !matches!(operation, Operation::Revert) && trust::running_as_root();
    let mut out = Files::default();
    for operand in operands {
        let names = if select::is_glob(operand) {
            let found = select::expand_glob(operand, None);
            if found.is_empty() {
                out.unmatched.push(operand.clone());
            }
            found
        } else {
            vec![operand.clone()]
        };
        for shown in names {
            let path = PathBuf::from(&shown);
            // A refusal has no libpulp error of its own (libpulp does not
            // check); a file without readable metadata is libpulp's
            // `No metadata in .so`. A missing file has nobody to distrust:
            // reading it says so.
            let exists = std::fs::symlink_metadata(&path).is_ok();
            let trusted = if check_trust && exists {
                trust::check(&path).map_err(|e| Reason::unknown(e.to_string()))
            } else {
                Ok(())
            };
            let container = trusted.and_then(|()| {
                container::read(&path).map_err(|e| Reason::new(errors::ENOMETA, e.to_string()))
            });
            out.files.push(File { shown, container });
        }
    }
    out
}

/// The processes a run looks at, ascending.
#[derive(Clone, Debug)]
pub struct Selection {
    pids: Vec<Pid>,
    /// Named by `-p`: a process without the runtime is reported, not
    /// passed over.
    explicit: bool,
}

/// Why `-p` selected nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotSelected {
    /// `-p PID` names no process (an argument error).
    NoSuchProcess(Pid),
    /// `-p PATTERN` matches no process (a warning).
    NoMatch,
}

impl Selection {
    /// Every process but this one. Which of them have the runtime is told
    /// by the workers (from their maps, nothing attached), in parallel
    /// with the patching.
    pub fn every() -> Selection {
        let me = Pid::this();
        let mut pids: Vec<Pid> = ulp_process::all_pids()
            .into_iter()
            .filter(|&p| p != me)
            .collect();
        pids.sort_unstable();
        Selection {
            pids,
            explicit: false,
        }
    }

    /// The processes `-p PID|PATTERN` names ([`select::resolve`]); the
    /// selection is empty, and the error says why, when none.
    pub fn named(spec: &str) -> (Selection, Option<NotSelected>) {
        let mut pids = select::resolve(spec);
        let mut why = None;
        if let (Ok(pid), [_]) = (spec.parse::<Pid>(), pids.as_slice()) {
            if !ulp_process::exists(pid) {
                pids.clear();
                why = Some(NotSelected::NoSuchProcess(pid));
            }
        }
        if pids.is_empty() && why.is_none() {
            why = Some(NotSelected::NoMatch);
        }
        let selection = Selection {
            pids,
            explicit: true,
        };
        (selection, why)
    }
}

/// How to run: everything but the processes.
#[derive(Clone, Debug)]
pub struct Run<'a> {
    pub operation: &'a Operation,
    pub files: &'a [File],
    pub options: &'a trigger::Options,
    /// At most this many processes at once; 0: one per CPU
    /// ([`default_jobs`], looked up only when there are several processes
    /// to handle: reading the CPU count and quota costs tens of µs).
    pub jobs: usize,
    /// `--load-runtime`: the runtime file to load into a process without
    /// it (already checked: `inject::check_runtime_file`).
    pub load_runtime: Option<&'a Path>,
    /// Gather [`Trace`]s (libpulp's `-v` messages about skips).
    pub trace: bool,
}

/// One result of a process: one FILE, or the one `--revert-all=LIB`.
#[derive(Clone, Debug)]
pub struct Line {
    /// The FILE shown, or `reverted all patches from 'LIB'`.
    pub label: String,
    pub patch: Option<String>,
    pub library: Option<String>,
    pub report: Report,
}

/// How a process counts in a run's summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Some result changed it, none failed.
    Patched,
    /// Nothing changed, nothing failed.
    Skipped,
    /// Some result failed.
    Failed,
}

/// What libpulp's tool traces about a patch that is not for a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trace {
    /// The process has the library, another build of it.
    BuildIdMismatch {
        library: String,
        /// The build id loaded (empty when it cannot be read).
        loaded: Vec<u8>,
        expected: Vec<u8>,
    },
    /// The process has not loaded the library.
    NotLoaded { library: String },
}

/// What one process gave.
#[derive(Clone, Debug)]
pub struct ProcessResult {
    pub pid: Pid,
    pub name: String,
    /// `None` when the process is not a target at all (no runtime, and
    /// no `-p` named it): nothing to report but that it was looked at.
    pub lines: Option<Vec<Line>>,
    /// `-p` named it and it has no runtime (libpulp's warning).
    pub no_runtime: bool,
    /// With [`Run::trace`]: libpulp's trace messages about this process.
    pub trace: Vec<Trace>,
}

impl ProcessResult {
    /// A process counts once: failed if any line failed, else patched if
    /// any changed it, else skipped. `None` for a process that is not a
    /// target.
    pub fn status(&self) -> Option<Status> {
        let lines = self.lines.as_ref()?;
        Some(
            if lines
                .iter()
                .any(|l| matches!(l.report.outcome, Outcome::Failed(_)))
            {
                Status::Failed
            } else if lines.iter().any(|l| l.report.outcome.is_change()) {
                Status::Patched
            } else {
                Status::Skipped
            },
        )
    }

    fn not_a_target(pid: Pid) -> ProcessResult {
        ProcessResult {
            pid,
            name: String::new(),
            lines: None,
            no_runtime: false,
            trace: Vec::new(),
        }
    }
}

/// One worker thread per CPU.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Run<'_> {
    /// The processes of `selection` this run looks at: none when there is
    /// nothing to do (no file, and not `--revert-all=LIB`).
    pub fn targets<'s>(&self, selection: &'s Selection) -> &'s [Pid] {
        let nothing_to_do =
            self.files.is_empty() && !matches!(self.operation, Operation::RevertAll(_));
        if nothing_to_do {
            &[]
        } else {
            &selection.pids
        }
    }
}

/// Runs `run` over the processes of `selection` ([`Run::targets`]) with at
/// most `run.jobs` at once, and hands each result to `emit` on this thread
/// in pid order, as soon as it and every one before it are done.
pub fn run(selection: &Selection, run: &Run, emit: impl FnMut(ProcessResult)) {
    let explicit = selection.explicit;
    let targets = run.targets(selection);
    let jobs = match run.jobs {
        0 if targets.len() > 1 => default_jobs(),
        0 => 1,
        n => n,
    };
    for_each_process(
        targets,
        jobs,
        |pid| {
            let mut r = examine(pid, explicit, run);
            if run.trace && !matches!(run.operation, Operation::RevertAll(_)) {
                r.trace = traces(&r, run.files);
            }
            r
        },
        emit,
    );
}

/// Runs `work` on every pid with at most `jobs` worker threads, and hands
/// each result to `emit` on this thread in the order of `pids`, as soon as
/// it and all before it are done. A pid is worked on by one worker from
/// start to end (the ptrace rule).
fn for_each_process<R: Send>(
    pids: &[Pid],
    jobs: usize,
    work: impl Fn(Pid) -> R + Sync,
    mut emit: impl FnMut(R),
) {
    if jobs.min(pids.len()) <= 1 {
        // One worker: this thread, in order (no thread to start for the
        // common `-p PID`; the ptrace rule holds, one thread per pid).
        for &pid in pids {
            emit(work(pid));
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, R)>();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(pids.len()) {
            let tx = tx.clone();
            let (next, work) = (&next, &work);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&pid) = pids.get(i) else { break };
                if tx.send((i, work(pid))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut waiting = BTreeMap::new();
        let mut due = 0;
        for (i, r) in rx {
            waiting.insert(i, r);
            while let Some(r) = waiting.remove(&due) {
                emit(r);
                due += 1;
            }
        }
    });
}

/// Everything done with one process, on the worker thread that handles
/// it (the ptrace rule: one thread speaks to a tracee).
fn examine(pid: Pid, explicit: bool, run: &Run) -> ProcessResult {
    let (operation, files, opts) = (run.operation, run.files, run.options);
    // The maps are read once here: they tell whether the process is a
    // target at all, and serve its first operation's pre-check. Its stat
    // is read only once it is known to be one (`Target::seen_as`).
    let looked = std::time::Instant::now();
    let (found, maps) = Runtime::find_started(pid);
    let find_time = looked.elapsed();
    if let (Some(file), Err(RuntimeError::NotLoaded)) = (run.load_runtime, &found) {
        if matches!(operation, Operation::Revert | Operation::RevertAll(_)) {
            // Nothing is applied where the runtime never was.
            if !explicit {
                return ProcessResult::not_a_target(pid);
            }
            let why = Reason::new(
                errors::ENOPATCH,
                "the process has no live-patching runtime, so nothing is applied",
            );
            return ProcessResult {
                pid,
                name: process_name(pid),
                lines: Some(lines_with(operation, files, |_| {
                    Outcome::Skipped(why.clone())
                })),
                no_runtime: false,
                trace: Vec::new(),
            };
        }
        return examine_loading(pid, explicit, run, file);
    }
    if !explicit
        && matches!(
            found,
            Err(RuntimeError::NotLoaded | RuntimeError::Process(_))
        )
    {
        // Without -p, a process without the runtime (or whose maps we may
        // not read, so that we cannot tell) is not a target at all.
        return ProcessResult::not_a_target(pid);
    }
    // Its name and its incarnation from one read of its stat.
    let (life, name) = ulp_process::Incarnation::of_seen_named(pid);
    let name = name.unwrap_or_else(|| process_name(pid));
    let (lines, no_runtime) = match found {
        Err(RuntimeError::NotLoaded) => {
            (lines_with(operation, files, |_| Outcome::NoRuntime), true)
        }
        // Anything else (gone, incompatible) is reported per patch.
        found => {
            let mut target = trigger::Target::seen_as(life, found, maps).found_in(find_time);
            (process_one(&mut target, operation, files, opts), false)
        }
    };
    ProcessResult {
        pid,
        name,
        lines: Some(lines),
        no_runtime,
        trace: Vec::new(),
    }
}

/// [`examine`] with `--load-runtime` for a process without the runtime: it
/// is a target when one of the patches is for a library build it has
/// loaded; then the runtime is loaded and the patches applied as usual.
fn examine_loading(pid: Pid, explicit: bool, run: &Run, runtime: &Path) -> ProcessResult {
    let (operation, files, opts) = (run.operation, run.files, run.options);
    let why_not: Vec<Option<Reason>> = files
        .iter()
        .map(|f| match &f.container {
            Ok(c) => trigger::target_mismatch(pid, c, opts),
            Err(e) => Some(e.clone()),
        })
        .collect();
    let wanted = why_not.iter().any(Option::is_none);
    if !wanted && !explicit {
        return ProcessResult::not_a_target(pid);
    }
    let name = process_name(pid);
    let lines = if !wanted {
        // Nothing to load the runtime for.
        lines_with(operation, files, |i| match &files[i].container {
            Err(e) => Outcome::Failed(e.clone()),
            Ok(_) => Outcome::Skipped(
                why_not[i]
                    .clone()
                    .unwrap_or_else(|| Reason::bare(errors::EUNKNOWN)),
            ),
        })
    } else {
        match inject::ensure_runtime(pid, runtime, opts) {
            Ok(rt) => process_one(&mut trigger::Target::loaded(rt), operation, files, opts),
            Err(outcome) => lines_with(operation, files, |_| outcome.clone()),
        }
    };
    ProcessResult {
        pid,
        name,
        lines: Some(lines),
        no_runtime: false,
        trace: Vec::new(),
    }
}

/// One line per operation of the run, each with the outcome `outcome(i)`
/// (`i`: the FILE's index), for a process where nothing was attempted.
fn lines_with(
    operation: &Operation,
    files: &[File],
    outcome: impl Fn(usize) -> Outcome,
) -> Vec<Line> {
    labels(operation, files)
        .into_iter()
        .enumerate()
        .map(|(i, (label, patch, library))| Line {
            label,
            patch,
            library,
            report: Report {
                outcome: outcome(i),
                detail: Default::default(),
            },
        })
        .collect()
}

/// The result labels of one process: (label, patch file, library).
fn labels(operation: &Operation, files: &[File]) -> Vec<(String, Option<String>, Option<String>)> {
    match operation {
        Operation::RevertAll(lib) => vec![(
            format!("reverted all patches from '{lib}'"),
            None,
            Some(lib.clone()),
        )],
        _ => files
            .iter()
            .map(|f| {
                let library = match (operation, &f.container) {
                    (Operation::Replace(Some(l)), _) => Some(l.clone()),
                    (Operation::Replace(None), Ok(c)) => Some(c.metadata.target_name.clone()),
                    _ => None,
                };
                (f.shown.clone(), Some(f.shown.clone()), library)
            })
            .collect(),
    }
}

/// Every operation of the run in one process, in FILE order.
fn process_one(
    target: &mut trigger::Target,
    operation: &Operation,
    files: &[File],
    opts: &trigger::Options,
) -> Vec<Line> {
    let labels = labels(operation, files);
    if let Operation::RevertAll(lib) = operation {
        let (label, patch, library) = labels.into_iter().next().unwrap_or_default();
        return vec![Line {
            label,
            patch,
            library,
            report: trigger::revert_all_in(target, lib, opts),
        }];
    }
    files
        .iter()
        .zip(labels)
        .map(|(f, (label, patch, library))| {
            let report = match (&f.container, operation) {
                (Err(e), _) => Report {
                    outcome: Outcome::Failed(e.clone()),
                    detail: Default::default(),
                },
                (Ok(c), Operation::Revert) => trigger::revert_in(target, c, opts),
                (Ok(c), Operation::Replace(_)) => {
                    let lib = library.as_deref().unwrap_or(&c.metadata.target_name);
                    trigger::replace_in(target, lib, c, opts)
                }
                (Ok(c), _) => trigger::apply_in(target, c, opts),
            };
            Line {
                label,
                patch,
                library,
                report,
            }
        })
        .collect()
}

/// The trace libpulp's tool gives about the patches that are not for this
/// process: a build-id skip (with the build id loaded), a library that is
/// not loaded.
fn traces(r: &ProcessResult, files: &[File]) -> Vec<Trace> {
    let Some(lines) = &r.lines else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (line, file) in lines.iter().zip(files) {
        let (Outcome::Skipped(why), Ok(c)) = (&line.report.outcome, &file.container) else {
            continue;
        };
        let md = &c.metadata;
        let library = md.target_name.clone();
        if why.error == errors::EBUILDID {
            out.push(Trace::BuildIdMismatch {
                loaded: loaded_build_id(r.pid, &library).unwrap_or_default(),
                library,
                expected: md.build_id.clone(),
            });
        } else if why.error == errors::ENOTARGETLIB {
            out.push(Trace::NotLoaded { library });
        }
    }
    out
}

/// The build id of the object `lib` names (as a patch names its target:
/// file name, SONAME or path) that `pid` has loaded, read from its memory
/// or its file.
fn loaded_build_id(pid: Pid, lib: &str) -> Option<Vec<u8>> {
    let objects = objects::named_objects(pid).ok()?;
    let obj = objects.iter().find(|o| o.is_library(pid, lib))?;
    obj.build_id_in_memory(pid)
        .or_else(|| obj.open(pid).ok()?.build_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::Detail;

    #[test]
    fn results_come_in_pid_order_whatever_finishes_first() {
        let pids: Vec<Pid> = (1..=20).map(Pid::new).collect();
        let mut seen = Vec::new();
        // Later pids finish first.
        for_each_process(
            &pids,
            4,
            |pid| {
                std::thread::sleep(std::time::Duration::from_millis((21 - pid.get()) as u64));
                pid
            },
            |pid| seen.push(pid),
        );
        assert_eq!(seen, pids);
    }

    #[test]
    fn a_process_counts_once() {
        let line = |outcome| Line {
            label: "p.so".into(),
            patch: None,
            library: None,
            report: Report {
                outcome,
                detail: Detail::default(),
            },
        };
        let result = |lines: Option<Vec<Line>>| ProcessResult {
            pid: Pid::new(1),
            name: "x".into(),
            lines,
            no_runtime: false,
            trace: Vec::new(),
        };
        let failed = Outcome::Failed(Reason::bare(errors::EUNKNOWN));
        assert_eq!(result(None).status(), None);
        assert_eq!(
            result(Some(vec![line(Outcome::Applied), line(failed)])).status(),
            Some(Status::Failed)
        );
        assert_eq!(
            result(Some(vec![
                line(Outcome::AlreadyApplied),
                line(Outcome::Reverted)
            ]))
            .status(),
            Some(Status::Patched)
        );
        assert_eq!(
            result(Some(vec![line(Outcome::NoRuntime)])).status(),
            Some(Status::Skipped)
        );
    }
}

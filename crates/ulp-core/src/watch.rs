//! `ulp watch`: applies the patch store's records to processes as they
//! start (issue 18, "patches that stay").
//!
//! The kernel tells of each program started (`execve`) through the
//! process-events connector ([`source`]), or, when that cannot be had, a
//! scan of the process list every few milliseconds finds new processes.
//! Each new process is then looked at from /proc only (its maps, and the
//! build ids of the files it maps, read from the files): a process that
//! maps no library build a record is for is never stopped, traced or
//! slowed. It is looked at again every few milliseconds while its dynamic
//! loader maps its libraries, and given up once they are mapped (libc
//! mapped, and a short grace after) or after [`Config::per_process`].
//!
//! A process that maps a recorded target goes to one of a few worker
//! threads, which loads the runtime into it if it has none and applies
//! the records, as `ulp trigger --load-runtime -p PID CONTAINER...` does
//! ([`inject::ensure_runtime`], [`trigger::apply_in`]). While its threads
//! are still in the loader or the C library the process is busy
//! (the caller rule, `caller.rs`); it is tried again with a short backoff until
//! [`Config::per_process`] has passed, then given up with the reason.
//!
//! The store is read again whenever its directory changes (and every few
//! seconds regardless). As root the store must pass the trust check; a
//! corrupt record is reported and never applied.
//!
//! Nothing here prints: what happens is handed to the caller as
//! [`Event`]s.

pub mod source;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ulp_container::container::{self, Container};
use ulp_process::Pid;

use crate::objects::objects_from_maps;
use crate::store::{Store, Stored};
use crate::trigger::{self, Outcome};
use crate::{inject, select};

pub use source::Source;

/// How a watch runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub store: Store,
    /// The runtime loaded into processes that have none.
    pub runtime: PathBuf,
    /// Scan the process list instead of the kernel's events.
    pub poll: bool,
    /// How often the process list is scanned (with `poll`).
    pub poll_interval: Duration,
    /// How long one process is looked at (from when it is seen), and how
    /// long a worker tries it while it is busy (from when it takes it).
    pub per_process: Duration,
    /// Worker threads that patch processes.
    pub jobs: usize,
    /// Only processes whose name or executable's file name matches this
    /// shell pattern (`-p NAME`, as for `ulp trigger`); others are
    /// only read, to tell.
    pub only: Option<String>,
}

impl Config {
    pub fn new(store: Store, runtime: PathBuf) -> Config {
        Config {
            store,
            runtime,
            poll: false,
            poll_interval: Duration::from_millis(10),
            per_process: Duration::from_secs(2),
            jobs: 4,
            only: None,
        }
    }
}

/// What a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Watching: the store and the event source (and, when the connector
    /// could not be had, why).
    Started {
        store: PathBuf,
        source: &'static str,
        fallback: Option<String>,
    },
    /// The store was read: its usable records (target, container file).
    StoreRead { records: Vec<(String, String)> },
    /// The store cannot be used (as root: not trusted; unreadable): no
    /// record is applied until it is fixed.
    StoreRefused { reason: String },
    /// A record of the store that is never used, and why.
    RecordRefused { path: PathBuf, reason: String },
    /// Events were lost (the kernel's buffer overflowed); every process
    /// is looked at instead.
    EventsLost,
    /// A record applied to a process.
    Patched {
        pid: Pid,
        name: String,
        target: String,
        file: String,
    },
    /// A record already applied there (the runtime applied it itself).
    AlreadyApplied {
        pid: Pid,
        name: String,
        target: String,
        file: String,
    },
    /// A record not applied to a process that maps its target, and why.
    Refused {
        pid: Pid,
        name: String,
        target: String,
        file: String,
        reason: String,
    },
    /// A process that maps a recorded target exited before it was done.
    Exited { pid: Pid, name: String },
}

/// One usable record, its container read.
#[derive(Debug)]
struct Entry {
    stored: Stored,
    /// The container, or why it cannot be used.
    container: Result<Container, String>,
    /// The container file as read: (inode, mtime ns, size).
    stamp: (u64, i64, u64),
}

impl Entry {
    fn file(&self) -> String {
        self.stored.record.container.clone()
    }
}

/// The store as last read.
struct Records {
    store: Store,
    /// The store directory's (inode, mtime ns, ctime ns) when read (a
    /// record added or removed changes its mtime, a chmod its ctime),
    /// `None` when it did not exist.
    stamp: Option<(u64, i64, i64)>,
    read_at: Instant,
    entries: Vec<Arc<Entry>>,
    /// Build id (lowercase hex) -> entries.
    by_build: HashMap<String, Vec<Arc<Entry>>>,
    /// What was reported last, so a refusal is reported once.
    reported: Option<Vec<String>>,
}

/// How often the store is read even when its directory has not changed
/// (a record's files changed in place).
const STORE_REREAD: Duration = Duration::from_secs(2);
/// How often the store directory's mtime is looked at.
const STORE_CHECK: Duration = Duration::from_millis(100);

impl Records {
    fn new(store: Store) -> Records {
        Records {
            store,
            stamp: None,
            read_at: Instant::now(),
            entries: Vec::new(),
            by_build: HashMap::new(),
            reported: None,
        }
    }

    fn dir_stamp(&self) -> Option<(u64, i64, i64)> {
        let m = std::fs::metadata(&self.store.dir).ok()?;
        Some((
            m.ino(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ))
    }

    /// Reads the store again when it changed (or `force`).
    fn refresh(&mut self, force: bool, emit: &(dyn Fn(Event) + Sync)) {
        let stamp = self.dir_stamp();
        let due = self.read_at.elapsed() >= STORE_REREAD;
        if !force && !due && stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        self.read_at = Instant::now();
        let mut events = Vec::new();
        let listing = match self.store.list() {
            Ok(l) => l,
            Err(e) => {
                self.entries.clear();
                self.by_build.clear();
                self.report(
                    vec![Event::StoreRefused {
                        reason: format!("{e}; no record is applied until this is fixed"),
                    }],
                    emit,
                );
                return;
            }
        };
        for c in listing.corrupt {
            events.push(Event::RecordRefused {
                path: c.path,
                reason: c.reason,
            });
        }
        let old: HashMap<PathBuf, Arc<Entry>> = self
            .entries
            .drain(..)
            .map(|e| (e.stored.dir.clone(), e))
            .collect();
        let mut entries = Vec::new();
        for stored in listing.records {
            let path = stored.container_path();
            let stamp = std::fs::metadata(&path)
                .map(|m| {
                    (
                        m.ino(),
                        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                        m.size(),
                    )
                })
                .unwrap_or_default();
            if let Some(e) = old.get(&stored.dir) {
                if e.stamp == stamp && e.stored.record == stored.record {
                    if let Err(reason) = &e.container {
                        events.push(Event::RecordRefused {
                            path: stored.dir.clone(),
                            reason: reason.clone(),
                        });
                    }
                    entries.push(e.clone());
                    continue;
                }
            }
            let container = read_container(&stored, &path);
            if let Err(reason) = &container {
                events.push(Event::RecordRefused {
                    path: stored.dir.clone(),
                    reason: reason.clone(),
                });
            }
            entries.push(Arc::new(Entry {
                stored,
                container,
                stamp,
            }));
        }
        self.by_build.clear();
        for e in &entries {
            self.by_build
                .entry(e.stored.record.build_id.to_ascii_lowercase())
                .or_default()
                .push(e.clone());
        }
        events.push(Event::StoreRead {
            records: entries
                .iter()
                .filter(|e| e.container.is_ok())
                .map(|e| (e.stored.record.target.clone(), e.file()))
                .collect(),
        });
        self.entries = entries;
        self.report(events, emit);
    }

    /// Emits `events` unless they are what was reported last.
    fn report(&mut self, events: Vec<Event>, emit: &(dyn Fn(Event) + Sync)) {
        let key: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        if self.reported.as_ref() == Some(&key) {
            return;
        }
        self.reported = Some(key);
        for e in events {
            emit(e);
        }
    }
}

/// A record's container, read and checked against its record.
fn read_container(stored: &Stored, path: &Path) -> Result<Container, String> {
    let c = container::read(path).map_err(|e| {
        format!(
            "its container copy '{}' cannot be used ({e}); remove the record (ulp trigger \
             --revert --persist) and record the container again",
            path.display()
        )
    })?;
    let r = &stored.record;
    let build = ulp_abi::hex::hex(&c.metadata.build_id);
    let patch = ulp_abi::hex::hex(&c.metadata.patch_id);
    if !build.eq_ignore_ascii_case(&r.build_id)
        || !patch.eq_ignore_ascii_case(&r.patch_id)
        || c.metadata.target_name != r.target
    {
        return Err(format!(
            "its container copy '{}' is not the container its record describes (target {} \
             build id {build} patch id {patch}, recorded {} {} {}): record it again",
            path.display(),
            c.metadata.target_name,
            r.target,
            r.build_id,
            r.patch_id
        ));
    }
    Ok(c)
}

/// A new process being looked at.
struct Pending {
    pid: Pid,
    seen: Instant,
    /// The executable last seen (a process seen between fork and exec
    /// still runs its parent's program).
    exe: Option<PathBuf>,
    /// When its C library was first seen mapped.
    libc_at: Option<Instant>,
}

/// How long a process is looked at after its C library is mapped: the
/// loader maps every library a program needs before any of the program's
/// code runs, the C library usually last.
const AFTER_LIBC: Duration = Duration::from_millis(50);
/// How often a process being looked at is looked at again.
const RECHECK: Duration = Duration::from_millis(2);

/// What a look at a new process found.
enum Look {
    /// Not yet known: look again.
    Again,
    /// Not a target (or gone): forget it.
    Done,
    /// It maps these recorded targets.
    Target(Vec<Arc<Entry>>),
}

/// Build ids of mapped files, by (device, inode, path): each file is read
/// once.
type BuildIds = HashMap<(ulp_process::MapsField, u64, String), Option<String>>;

/// The build id kept for `key`, or the one `read` finds (lower-case hex;
/// `Ok(None)`: the file has none), kept from then on. A file that could not
/// be read is not kept as one without a build id: the read can fail for a
/// moment (the process seen exits before its file is opened through its
/// root, a container's file is not at that path outside it), and a kept
/// `None` would pass over every later process that maps the file.
fn build_id_of<K: std::hash::Hash + Eq, E>(
    ids: &mut HashMap<K, Option<String>>,
    key: K,
    read: impl FnOnce() -> Result<Option<String>, E>,
) -> Option<String> {
    if let Some(id) = ids.get(&key) {
        return id.clone();
    }
    let id = read().ok()?;
    ids.insert(key, id.clone());
    id
}

fn look(p: &mut Pending, records: &Records, ids: &mut BuildIds, config: &Config) -> Look {
    let exe = ulp_process::exe(p.pid);
    if exe != p.exe {
        // A new program: its libraries are yet to be mapped.
        p.exe = exe;
        p.libc_at = None;
    }
    let Ok(maps) = ulp_process::maps(p.pid) else {
        return Look::Done; // gone, or not ours to read
    };
    let wanted = config.only.as_deref().is_none_or(|pattern| {
        ulp_process::comm(p.pid).is_ok_and(|c| select::glob_match(pattern, &c))
            || p.exe.as_ref().is_some_and(|e| {
                e.file_name()
                    .is_some_and(|n| select::glob_match(pattern, &n.to_string_lossy()))
            })
    });
    let objects = objects_from_maps(&maps);
    let mut found: Vec<Arc<Entry>> = Vec::new();
    let mut has_loader = false;
    for o in &objects {
        let base = o.basename();
        if ulp_process::is_loader_name(base) {
            has_loader = true;
        }
        if base.starts_with("libc.so") && p.libc_at.is_none() {
            p.libc_at = Some(Instant::now());
        }
        if records.by_build.is_empty() || !wanted {
            continue;
        }
        let key = (o.dev, o.inode, o.path.clone());
        let id = build_id_of(ids, key, || {
            o.open_sections(p.pid, &[".note.gnu.build-id"]).map(|f| {
                f.build_id()
                    .map(|b| ulp_abi::hex::hex(&b).to_ascii_lowercase())
            })
        });
        if let Some(entries) = id.as_ref().and_then(|id| records.by_build.get(id)) {
            for e in entries {
                if !found.iter().any(|f| Arc::ptr_eq(f, e)) {
                    found.push(e.clone());
                }
            }
        }
    }
    let timed_out = p.seen.elapsed() >= config.per_process;
    if !found.is_empty() {
        // The runtime is loaded through the C library's dlopen: a target
        // mapped before the C library (the loader maps in breadth-first
        // order) waits for it. A program without the loader gets its
        // refusal at once.
        if p.libc_at.is_some() || !has_loader || timed_out {
            return Look::Target(found);
        }
        return Look::Again;
    }
    let settled = match p.libc_at {
        Some(at) => at.elapsed() >= AFTER_LIBC,
        // A program without the dynamic loader maps nothing more.
        None => !has_loader && !objects.is_empty(),
    };
    if settled || timed_out {
        Look::Done
    } else {
        Look::Again
    }
}

/// A process for a worker.
struct Job {
    pid: Pid,
    entries: Vec<Arc<Entry>>,
}

/// The workers' queue.
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

/// Watches until `stop` is set, then finishes the processes in hand and
/// returns. `emit` is called from several threads.
pub fn run(config: &Config, stop: &AtomicBool, emit: &(dyn Fn(Event) + Sync)) {
    let (mut source, fallback) = if config.poll {
        (Source::poll(config.poll_interval), None)
    } else {
        match Source::netlink() {
            Ok(s) => (s, None),
            Err(e) => (
                Source::poll(config.poll_interval),
                Some(format!(
                    "the kernel's process events are not available ({e})"
                )),
            ),
        }
    };
    emit(Event::Started {
        store: config.store.dir.clone(),
        source: source.name(),
        fallback,
    });
    let mut records = Records::new(config.store.clone());
    records.refresh(true, emit);
    let queue = Queue {
        jobs: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
    };
    // Processes in a worker's hands or queued: not looked at again.
    let busy: Mutex<HashSet<Pid>> = Mutex::new(HashSet::new());
    let me = Pid::this();
    std::thread::scope(|scope| {
        for _ in 0..config.jobs.max(1) {
            let (queue, busy) = (&queue, &busy);
            scope.spawn(move || worker(config, queue, busy, stop, emit));
        }
        let mut pending: Vec<Pending> = Vec::new();
        let mut ids = BuildIds::new();
        let mut checked = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let wait = if pending.is_empty() {
                Duration::from_millis(100)
            } else {
                RECHECK
            };
            let new = match source.next(wait) {
                Ok(new) => new,
                Err(source::Lost) => {
                    // Which processes started is not known: every one is
                    // looked at (from /proc; most are settled at once).
                    emit(Event::EventsLost);
                    ulp_process::all_pids()
                }
            };
            for pid in new {
                if pid == me {
                    continue;
                }
                // A second exec: its maps are new.
                pending.retain(|p| p.pid != pid);
                pending.push(Pending {
                    pid,
                    seen: Instant::now(),
                    exe: None,
                    libc_at: None,
                });
            }
            if checked.elapsed() >= STORE_CHECK {
                checked = Instant::now();
                records.refresh(false, emit);
                if ids.len() > 4096 {
                    ids.clear();
                }
            }
            pending.retain_mut(|p| {
                if busy.lock().is_ok_and(|b| b.contains(&p.pid)) {
                    return false;
                }
                match look(p, &records, &mut ids, config) {
                    Look::Again => true,
                    Look::Done => false,
                    Look::Target(entries) => {
                        if let Ok(mut b) = busy.lock() {
                            b.insert(p.pid);
                        }
                        if let Ok(mut q) = queue.jobs.lock() {
                            q.push_back(Job {
                                pid: p.pid,
                                entries,
                            });
                        }
                        queue.ready.notify_one();
                        false
                    }
                }
            });
        }
        queue.ready.notify_all();
    });
}

fn worker(
    config: &Config,
    queue: &Queue,
    busy: &Mutex<HashSet<Pid>>,
    stop: &AtomicBool,
    emit: &(dyn Fn(Event) + Sync),
) {
    loop {
        let mut waited = false;
        let job = {
            let Ok(mut q) = queue.jobs.lock() else { return };
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(j) = q.pop_front() {
                    break j;
                }
                waited = true;
                q = match queue.ready.wait_timeout(q, Duration::from_millis(100)) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
            }
        };
        if waited {
            // What was read of mapped files for earlier processes is not
            // kept from one burst of work to the next: this service runs
            // for months, and once a file is gone (an upgraded library) its
            // device and inode can name another file. Processes started
            // together share what was read. (The runtime's entry point and
            // the C library's rt_sigreturn, which the tool calls, are
            // checked in the process's memory besides.)
            ulp_process::forget_files();
        }
        let pid = job.pid;
        patch(config, job, emit);
        if let Ok(mut b) = busy.lock() {
            b.remove(&pid);
        }
    }
}

/// Whether a refusal is a busy process (a thread in the loader or the C
/// library, or executing bytes to change), which passes.
fn is_busy(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Failed(r) => r.detail.contains(" is busy"),
        _ => false,
    }
}

fn is_exit(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Skipped(r) if r.detail == trigger::EXITED)
}

/// Loads the runtime into `job.pid` if needed and applies its records,
/// retrying while it is busy, for at most `per_process` from now (the time
/// it waited in the queue is not held against it).
fn patch(config: &Config, job: Job, emit: &(dyn Fn(Event) + Sync)) {
    let pid = job.pid;
    let deadline = Instant::now() + config.per_process;
    let name = select::process_name(pid);
    let life = ulp_process::Incarnation::of(pid);
    let mut left: Vec<Arc<Entry>> = Vec::new();
    for e in job.entries {
        match &e.container {
            Ok(_) => left.push(e),
            Err(reason) => emit(Event::Refused {
                pid,
                name: name.clone(),
                target: e.stored.record.target.clone(),
                file: e.file(),
                reason: format!("the record is corrupt: {reason}"),
            }),
        }
    }
    let refuse_all = |left: &[Arc<Entry>], reason: &str| {
        for e in left {
            emit(Event::Refused {
                pid,
                name: name.clone(),
                target: e.stored.record.target.clone(),
                file: e.file(),
                reason: reason.to_string(),
            });
        }
    };
    let mut backoff = Duration::from_millis(2);
    let mut target: Option<trigger::Target> = None;
    while !left.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let opts = trigger::Options {
            timeout: remaining.max(Duration::from_millis(200)),
            retries: 0,
            ..Default::default()
        };
        if target.is_none() {
            match inject::ensure_runtime(pid, &config.runtime, &opts) {
                Ok(rt) => target = Some(trigger::Target::loaded(rt)),
                Err(o) if is_exit(&o) || life.exited() => {
                    emit(Event::Exited { pid, name });
                    return;
                }
                Err(o) if is_busy(&o) && Instant::now() + backoff < deadline => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                    continue;
                }
                Err(o) => {
                    refuse_all(&left, &why(&o, "the runtime was not loaded"));
                    return;
                }
            }
        }
        let Some(t) = target.as_mut() else { return };
        let mut again = Vec::new();
        for e in left {
            let Ok(c) = &e.container else { continue };
            let report = trigger::apply_in(t, c, &opts);
            let (target_name, file) = (e.stored.record.target.clone(), e.file());
            match report.outcome {
                Outcome::Applied => emit(Event::Patched {
                    pid,
                    name: name.clone(),
                    target: target_name,
                    file,
                }),
                Outcome::AlreadyApplied => emit(Event::AlreadyApplied {
                    pid,
                    name: name.clone(),
                    target: target_name,
                    file,
                }),
                o if is_exit(&o) || life.exited() => {
                    emit(Event::Exited { pid, name });
                    return;
                }
                o if is_busy(&o) && Instant::now() + backoff < deadline => again.push(e),
                o => emit(Event::Refused {
                    pid,
                    name: name.clone(),
                    target: target_name,
                    file,
                    reason: why(&o, "not applied"),
                }),
            }
        }
        left = again;
        if !left.is_empty() {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }
}

/// The reason of an outcome that is not a change.
fn why(o: &Outcome, default: &str) -> String {
    match o {
        Outcome::Failed(r) | Outcome::Skipped(r) => {
            if is_busy(o) {
                format!("{r} (gave up after the per-process time limit)")
            } else {
                r.to_string()
            }
        }
        Outcome::NoRuntime => o.to_string(),
        _ => default.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_could_not_be_read_is_read_again_at_the_next_look() {
        let mut ids: HashMap<&str, Option<String>> = HashMap::new();
        // Unreadable for a moment: nothing kept.
        assert_eq!(
            build_id_of(&mut ids, "lib", || Err::<Option<String>, ()>(())),
            None
        );
        assert!(ids.is_empty());
        // Read at the next look, and kept.
        let read = || Ok::<_, ()>(Some("ab12".to_string()));
        assert_eq!(build_id_of(&mut ids, "lib", read).as_deref(), Some("ab12"));
        let never = || -> Result<Option<String>, ()> { panic!("read again") };
        assert_eq!(build_id_of(&mut ids, "lib", never).as_deref(), Some("ab12"));
        // A file read that has no build id is kept as such.
        assert_eq!(build_id_of(&mut ids, "plain", || Ok::<_, ()>(None)), None);
        assert_eq!(build_id_of(&mut ids, "plain", never), None);
    }
}

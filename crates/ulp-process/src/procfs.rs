//! Looking at a process through /proc without stopping it: memory map,
//! threads, names, tracer and signal state. Nothing here uses ptrace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Tracer};
use crate::{Pid, RemoteAddr, Tid};

/// Whether a mapped file's name (its last path component) is glibc's
/// dynamic loader's (`ld-linux-x86-64.so.2`, or `ld64.so.*` elsewhere).
pub fn is_loader_name(name: &str) -> bool {
    name.starts_with("ld-linux") || name.starts_with("ld64.so")
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: RemoteAddr,
    pub end: RemoteAddr,
    /// Four characters, e.g. `r-xp`.
    pub perms: MapsField,
    pub offset: u64,
    /// `major:minor` as printed.
    pub dev: MapsField,
    pub inode: u64,
    /// The path as printed (may end with ` (deleted)`, or be `[heap]`,
    /// `[stack]`, `[vdso]` ...); `None` for anonymous mappings.
    pub path: Option<String>,
}

impl Mapping {
    pub fn contains(&self, addr: RemoteAddr) -> bool {
        self.start <= addr && addr < self.end
    }
    pub fn is_readable(&self) -> bool {
        self.perms.as_bytes().first() == Some(&b'r')
    }
    pub fn is_writable(&self) -> bool {
        self.perms.as_bytes().get(1) == Some(&b'w')
    }
    pub fn is_executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// A short field of a maps line (the permissions, the device), kept
/// inline: a process's maps are read for every change and every process
/// of a fleet, and two allocations per line were most of their parsing.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapsField {
    len: u8,
    bytes: [u8; MapsField::MAX],
}

impl MapsField {
    /// Longer than any field it holds: `rwxp`, and a device as the kernel
    /// prints it (`%02x:%02x` of a 12-bit major and a 20-bit minor).
    const MAX: usize = 15;

    /// `text`, if it is ASCII and at most [`MapsField::MAX`] bytes.
    pub fn new(text: &[u8]) -> Option<MapsField> {
        if text.len() > Self::MAX || !text.is_ascii() {
            return None;
        }
        let mut f = MapsField {
            len: text.len() as u8,
            bytes: [0; Self::MAX],
        };
        f.bytes[..text.len()].copy_from_slice(text);
        Some(f)
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::ops::Deref for MapsField {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for MapsField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for MapsField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MapsField {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MapsField {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for MapsField {
    /// For tests and fixed values; a field too long is cut.
    fn from(s: &str) -> MapsField {
        let b = s.as_bytes();
        MapsField::new(&b[..b.len().min(Self::MAX)]).unwrap_or_default()
    }
}

/// What a tool read of a file that processes map, kept for the run by the
/// file's device and inode as their maps give them: every process that
/// maps the file maps the same contents (a fleet maps the same
/// libraries), and a mapped file keeps its inode. A long-lived tool (`ulp
/// watch`) calls [`forget_files`] for each piece of work: once a file is
/// gone, its inode number can name another file.
pub struct PerFile<V>(std::sync::LazyLock<std::sync::Mutex<Kept<V>>>);

/// The values a [`PerFile`] keeps, and the generation they belong to.
struct Kept<V> {
    generation: u64,
    values: std::collections::HashMap<(MapsField, u64), V>,
}

impl<V> Default for Kept<V> {
    fn default() -> Kept<V> {
        Kept {
            generation: GENERATION.load(std::sync::atomic::Ordering::Relaxed),
            values: Default::default(),
        }
    }
}

impl<V> Kept<V> {
    /// The values of the current generation (the others dropped).
    fn current(&mut self) -> &mut std::collections::HashMap<(MapsField, u64), V> {
        let now = GENERATION.load(std::sync::atomic::Ordering::Relaxed);
        if self.generation != now {
            self.values.clear();
            self.generation = now;
        }
        &mut self.values
    }
}

/// The generation of what every [`PerFile`] keeps.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes every [`PerFile`] forget what it kept (a new generation).
pub fn forget_files() {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl<V: Clone> PerFile<V> {
    pub const fn new() -> PerFile<V> {
        PerFile(std::sync::LazyLock::new(Default::default))
    }

    pub fn get(&self, dev: MapsField, inode: u64) -> Option<V> {
        let mut c = self.0.lock().ok()?;
        c.current().get(&(dev, inode)).cloned()
    }

    pub fn put(&self, dev: MapsField, inode: u64, v: V) {
        if let Ok(mut c) = self.0.lock() {
            c.current().insert((dev, inode), v);
        }
    }
}

impl<V: Clone> Default for PerFile<V> {
    fn default() -> PerFile<V> {
        PerFile::new()
    }
}

fn proc_path(pid: Pid, leaf: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{leaf}"))
}

/// Maps a failure to read a /proc file: a missing file means the process is gone.
pub(crate) fn proc_error(pid: Pid, path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
        Error::Gone { pid, tid: None }
    } else {
        Error::Proc {
            pid,
            path: path.to_path_buf(),
            source: e,
        }
    }
}

pub(crate) fn read_proc(pid: Pid, leaf: &str) -> Result<Vec<u8>, Error> {
    let path = proc_path(pid, leaf);
    let raw = read_whole(&path);
    // Empty or refused (ESRCH) for a process whose leader has exited:
    // read through a thread that runs on (only then, so a kernel thread's
    // empty maps cost nothing more).
    if raw.as_ref().map_or(true, Vec::is_empty) && MEMORY_VIEWS.contains(&leaf) {
        if let Some(t) = stand_in(pid) {
            let path = proc_path(t, leaf);
            return read_whole(&path).map_err(|e| proc_error(pid, &path, e));
        }
    }
    raw.map_err(|e| proc_error(pid, &path, e))
}

/// The /proc files that show a process's memory: its leader's, which are
/// empty once the leader has exited.
const MEMORY_VIEWS: [&str; 3] = ["maps", "auxv", "environ"];

/// A live thread of `pid` through which to see its memory when its leader
/// (the main thread) has exited while other threads run on, as a program
/// whose `main` ends with `pthread_exit` does. The leader then stays a
/// zombie until the last thread exits, and it has no memory any more:
/// `/proc/PID/maps` and `/proc/PID/auxv` are empty and `process_vm_readv`
/// on the pid fails with ESRCH, while every other thread shares the
/// process's memory (`/proc/TID/...` and the calls on a tid see it).
/// `None` when the leader is alive, or no thread is.
pub fn stand_in(pid: Pid) -> Option<Pid> {
    if !thread_ended(pid, pid.main_thread()) {
        return None;
    }
    threads(pid)
        .ok()?
        .into_iter()
        .find(|&t| !thread_ended(pid, t))
        .map(|t| Pid::new(t.get()))
}

/// A /proc file read whole with few system calls: it reports size 0, so
/// `fs::read` would start from a 32-byte read and double, and every read
/// of a generated file makes the kernel generate it up to there again.
pub(crate) fn read_whole(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    // Plain reads: `read_to_end` would first ask the file's size (a
    // statx and an lseek, for a file that says 0).
    // Into the vector's spare capacity: no buffer to zero first (most of
    // these files are a few hundred bytes) and none to copy from.
    use std::os::fd::AsRawFd;
    let path = path.as_ref();
    let whole_at_once = path.starts_with("/proc")
        && path
            .file_name()
            .is_some_and(|n| WHOLE_AT_FIRST_READ.iter().any(|w| n == *w));
    let f = fs::File::open(path)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf.capacity());
        }
        let spare = buf.spare_capacity_mut();
        // SAFETY: the kernel writes at most `spare.len()` bytes into the
        // spare capacity, which `set_len` then takes as initialised.
        let n = unsafe { libc::read(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        match n {
            0 => return Ok(buf),
            n if n > 0 => {
                let asked = spare.len();
                // SAFETY: see above.
                unsafe { buf.set_len(buf.len() + n as usize) };
                if whole_at_once && (n as usize) < asked {
                    return Ok(buf);
                }
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Files of a process (or thread) directory in /proc that the kernel
/// makes whole at the first read (`single_open` and the like): a first
/// read that returns less than it asked for returned all of it, and the
/// read that would return 0 is saved (a fleet reads them for every
/// process on the host).
const WHOLE_AT_FIRST_READ: [&str; 5] = ["comm", "stat", "status", "auxv", "loginuid"];

/// [`read_whole`] as text (a /proc file that is not UTF-8 is an error).
pub fn read_text(path: impl AsRef<Path>) -> io::Result<String> {
    String::from_utf8(read_whole(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Parses one line of `/proc/PID/maps`. `None` if it is malformed.
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    parse_maps_bytes(line.as_bytes())
}

/// [`parse_maps_line`] on the bytes of a line (a path need not be UTF-8:
/// it is then taken lossily).
fn parse_maps_bytes(line: &[u8]) -> Option<Mapping> {
    fn field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let s = &rest[rest.iter().position(|&b| b != b' ').unwrap_or(rest.len())..];
        let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        *rest = &s[end..];
        Some(&s[..end])
    }
    fn hex(s: &[u8]) -> Option<u64> {
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        s.iter().try_fold(0u64, |v, &b| {
            let d = (b as char).to_digit(16)?;
            Some(v << 4 | d as u64)
        })
    }
    fn text(s: &[u8]) -> String {
        String::from_utf8(s.to_vec())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
    let mut rest = line;
    let range = field(&mut rest)?;
    let perms = field(&mut rest)?;
    let offset = field(&mut rest)?;
    let dev = field(&mut rest)?;
    let inode = field(&mut rest)?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
    if end < start || perms.len() != 4 || !dev.contains(&b':') {
        return None;
    }
    if inode.is_empty() || !inode.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let inode = std::str::from_utf8(inode).ok()?.parse().ok()?;
    // The path starts after the padding that follows the inode; it may
    // itself contain spaces.
    let path = &rest[rest.iter().position(|&b| b != b' ').unwrap_or(rest.len())..];
    Some(Mapping {
        start: RemoteAddr::new(start),
        end: RemoteAddr::new(end),
        perms: MapsField::new(perms)?,
        offset: hex(offset)?,
        dev: MapsField::new(dev)?,
        inode,
        path: (!path.is_empty()).then(|| text(path)),
    })
}

/// The memory map of `pid`, in address order.
pub fn maps(pid: Pid) -> Result<Vec<Mapping>, Error> {
    let raw = read_proc(pid, "maps")?;
    let mut out = Vec::with_capacity(raw.len() / 80 + 1);
    for l in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        out.push(parse_maps_bytes(l).ok_or_else(|| Error::Parse {
            pid,
            path: proc_path(pid, "maps"),
            line: String::from_utf8_lossy(l).into_owned(),
        })?);
    }
    Ok(out)
}

fn numeric_entries<T: std::str::FromStr + Ord>(dir: &Path) -> io::Result<Vec<T>> {
    let mut out: Vec<T> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The thread ids listed in `/proc/PID/task`, sorted.
pub fn threads(pid: Pid) -> Result<Vec<Tid>, Error> {
    let path = proc_path(pid, "task");
    let tids = numeric_entries(&path).map_err(|e| proc_error(pid, &path, e))?;
    if tids.is_empty() {
        return Err(Error::Gone { pid, tid: None });
    }
    Ok(tids)
}

/// `/proc/PID/comm` without its newline.
pub fn comm(pid: Pid) -> Result<String, Error> {
    let raw = read_proc(pid, "comm")?;
    Ok(String::from_utf8_lossy(&raw)
        .trim_end_matches('\n')
        .to_string())
}

/// The target of `/proc/PID/exe`, if readable.
pub fn exe(pid: Pid) -> Option<PathBuf> {
    linked(pid, "exe")
}

/// The target of the link `/proc/PID/LEAF` (`exe`, `root`), through a
/// thread that runs on when the process's leader has exited (its links
/// are gone then: [`stand_in`]).
pub(crate) fn linked(pid: Pid, leaf: &str) -> Option<PathBuf> {
    fs::read_link(proc_path(pid, leaf))
        .ok()
        .or_else(|| fs::read_link(proc_path(stand_in(pid)?, leaf)).ok())
}

/// Every pid in /proc, sorted.
pub fn all_pids() -> Vec<Pid> {
    numeric_entries(Path::new("/proc")).unwrap_or_default()
}

/// The scheduler state letter of a thread (`R`, `S`, `D`, `T`, `t`, `Z`,
/// `X` ...), from `/proc/PID/task/TID/stat`; `None` if the thread is gone.
pub fn thread_state(pid: Pid, tid: Tid) -> Option<char> {
    thread_sched(pid, tid).map(|s| s.0)
}

/// `SCHED_IDLE` from <sched.h>.
const SCHED_IDLE: u32 = 5;

/// Whether a thread is runnable (state `R`) with a scheduling policy that
/// competes for CPUs (not `SCHED_IDLE`, whose threads run only on CPUs
/// nothing else wants): a thread that runs, or soon will.
pub fn thread_runs(pid: Pid, tid: Tid) -> bool {
    thread_sched(pid, tid).is_some_and(|(state, policy)| state == 'R' && policy != SCHED_IDLE)
}

/// A stat file (`/proc/PID/stat`, `/proc/PID/task/TID/stat`) split at its
/// command: the command, and the fields after it from field 3 (the state)
/// on. The command may hold spaces and parentheses: it runs from the
/// first `(` to the last `)`.
pub(crate) fn split_stat(raw: &[u8]) -> Option<(&[u8], std::str::Split<'_, char>)> {
    let open = raw.iter().position(|&b| b == b'(')?;
    let close = raw.iter().rposition(|&b| b == b')')?;
    let command = raw.get(open + 1..close)?;
    let fields = std::str::from_utf8(raw.get(close + 2..)?).ok()?;
    Some((command, fields.split(' ')))
}

/// The state letter and scheduling policy (field 41) of a thread, from
/// `/proc/PID/task/TID/stat`; the policy is 0 (SCHED_OTHER) if missing.
fn thread_sched(pid: Pid, tid: Tid) -> Option<(char, u32)> {
    let raw = read_whole(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let (_, mut fields) = split_stat(&raw)?;
    let state = fields.next()?.chars().next()?;
    // The state is field 3: the policy is field 41.
    let policy = fields
        .nth(41 - 4)
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or(0);
    Some((state, policy))
}

/// `PF_EXITING` in a thread's flags (field 9 of its stat): set when the
/// thread enters the kernel's exit path, from which it never returns to
/// user space.
const PF_EXITING: u64 = 0x4;

/// True if the thread has ended: it no longer exists, is a zombie (exited,
/// not reaped), or is exiting (`PF_EXITING`: killed by another thread's
/// exit or a SIGKILL, it may still spend a while in the kernel tearing its
/// memory down, and a ptrace request then fails with ESRCH).
pub fn thread_ended(pid: Pid, tid: Tid) -> bool {
    let Ok(raw) = read_whole(format!("/proc/{pid}/task/{tid}/stat")) else {
        return true;
    };
    let Some((_, mut fields)) = split_stat(&raw) else {
        return false;
    };
    let state = fields.next().unwrap_or_default();
    // Then ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags: u64 = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// Where a thread that is blocked (in a system call, or otherwise off its
/// CPU) stands: its stack pointer and instruction pointer, from
/// `/proc/PID/task/TID/syscall` (`NR ARGS... SP PC`, or `-1 SP PC`),
/// read without stopping it. `None` while it runs (`running`), or when
/// the file cannot be read. What it gives holds only as long as the
/// thread stays blocked.
pub(crate) fn blocked_at(pid: Pid, tid: Tid) -> Option<(u64, u64)> {
    let raw = read_whole(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    parse_blocked_at(std::str::from_utf8(&raw).ok()?)
}

fn parse_blocked_at(text: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let hex = |w: &str| u64::from_str_radix(w.strip_prefix("0x")?, 16).ok();
    // The system call number (or -1) first, the stack and instruction
    // pointers last.
    let [nr, .., sp, pc] = words[..] else {
        return None;
    };
    nr.parse::<i64>().ok()?;
    Some((hex(sp)?, hex(pc)?))
}

fn status_field(pid: Pid, tid: Tid, name: &str) -> Option<String> {
    let text = read_text(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
}

/// The tracer of a thread (`TracerPid`), if any.
pub fn tracer_of(pid: Pid, tid: Tid) -> Option<Tracer> {
    let t: Tid = status_field(pid, tid, "TracerPid")?.parse().ok()?;
    if t.get() == 0 {
        return None;
    }
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let is_self = t.get() == me || Path::new(&format!("/proc/{me}/task/{t}")).exists();
    let comm = read_text(format!("/proc/{t}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string());
    Some(Tracer {
        tid: t,
        comm,
        is_self,
    })
}

/// True if a signal is pending for the thread (or its process) and not
/// blocked by the thread.
pub(crate) fn unblocked_signal_pending(pid: Pid, tid: Tid) -> bool {
    let hex = |name| status_field(pid, tid, name).and_then(|v| u64::from_str_radix(&v, 16).ok());
    match (hex("SigPnd"), hex("ShdPnd"), hex("SigBlk")) {
        (Some(p), Some(s), Some(b)) => (p | s) & !b != 0,
        // Cannot tell: assume a signal is pending (the conservative answer).
        _ => true,
    }
}

/// Why this process cannot use PTRACE_O_SUSPEND_SECCOMP, if it cannot:
/// the kernel wants CAP_SYS_ADMIN and a tracer not itself under seccomp.
pub(crate) fn self_cannot_suspend_seccomp() -> Option<String> {
    let status = read_text("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    const CAP_SYS_ADMIN: u32 = 21;
    let cap_eff = field("CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok());
    if cap_eff.is_some_and(|c| c & (1 << CAP_SYS_ADMIN) == 0) {
        return Some("ulp lacks CAP_SYS_ADMIN".into());
    }
    match field("Seccomp:") {
        Some(mode) if mode != "0" => Some(format!(
            "ulp itself runs under seccomp (Seccomp: {mode} in /proc/self/status)"
        )),
        _ => None,
    }
}

/// True while /proc/PID exists and a thread of it has not ended
/// ([`thread_ended`]): a leader that exited before its other threads is a
/// zombie while they run, threads that exited stay listed (as zombies)
/// until their tracer reaps them, and the last thread of an exiting
/// process may take a while to tear its memory down.
pub fn process_alive(pid: Pid) -> bool {
    if !thread_ended(pid, pid.main_thread()) {
        return true;
    }
    threads(pid)
        .map(|tids| tids.iter().any(|&t| !thread_ended(pid, t)))
        .unwrap_or(false)
}

/// Whether some thread of `pid` has ended or has a SIGKILL pending (what
/// an exit of the process, or a kill, sends every thread first).
fn dying(pid: Pid) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    let pending = |tid: Tid| {
        ["SigPnd", "ShdPnd"].iter().any(|name| {
            status_field(pid, tid, name)
                .and_then(|v| u64::from_str_radix(&v, 16).ok())
                .is_some_and(|set| set & SIGKILL_BIT != 0)
        })
    };
    threads(pid)
        .map(|tids| tids.iter().any(|&t| thread_ended(pid, t) || pending(t)))
        .unwrap_or(true)
}

/// The process's start time (field 22 of `/proc/PID/stat`, in clock ticks
/// since boot): the same pid with another start time is another process.
fn start_time(pid: Pid) -> Option<u64> {
    name_start_and_threads(pid).map(|s| s.1)
}

/// `/proc/PID/stat` kept open, so that the process's thread count is read
/// again with one system call (`pread`: the kernel makes the file anew at
/// offset 0). What [`crate::Stopped`] asks after stopping threads, inside
/// the pause they feel.
#[derive(Debug)]
pub(crate) struct StatFile(fs::File);

impl StatFile {
    pub(crate) fn open(pid: Pid) -> Option<StatFile> {
        fs::File::open(proc_path(pid, "stat")).ok().map(StatFile)
    }

    /// The process's thread count now (field 20): every thread of its
    /// group not yet reaped, zombies included.
    pub(crate) fn threads(&self) -> Option<u32> {
        use std::os::unix::fs::FileExt;
        // Fields 20 and 22 come within the first few hundred bytes (the
        // command is at most 64): no need for the rest of the line.
        let mut buf = [0u8; 1024];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        let (_, fields) = split_stat(&buf[..n])?;
        threads_and_start(fields).map(|t| t.0)
    }
}

/// The thread count (field 20) and the start time (field 22), from a
/// stat's fields from the state (field 3) on.
fn threads_and_start(mut fields: std::str::Split<'_, char>) -> Option<(u32, u64)> {
    let threads = fields.nth(17)?.parse().ok()?;
    let start = fields.nth(1)?.parse().ok()?;
    Some((threads, start))
}

/// The name (as `/proc/PID/comm` has it), start time (field 22) and
/// thread count (field 20) of `pid`, from one read of its stat.
fn name_start_and_threads(pid: Pid) -> Option<(String, u64, u32)> {
    let raw = read_whole(format!("/proc/{pid}/stat")).ok()?;
    let (name, fields) = split_stat(&raw)?;
    let (threads, start) = threads_and_start(fields)?;
    Some((String::from_utf8_lossy(name).into_owned(), start, threads))
}

/// A start time no process has (`u64::MAX` clock ticks since boot): the
/// start of a process seen alive whose stat was gone when read, so that
/// any later look tells it exited.
const GONE_BEFORE_SEEN: u64 = u64::MAX;

/// One process, told apart from a later one that gets the same pid: its
/// pid and start time. [`Incarnation::exited`] says whether it has ended,
/// which makes any failure to act on it moot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation {
    pub pid: Pid,
    /// `None` when /proc could not tell (the process was gone already).
    start: Option<u64>,
    /// How many threads it had when this was taken (0: unknown).
    threads: u32,
}

impl Incarnation {
    /// The process that has `pid` now; when there is none any more, the
    /// last one this tool saw with that pid (so a process that exits
    /// between two looks of the tool counts as exited, not as a pid that
    /// never was).
    pub fn of(pid: Pid) -> Incarnation {
        Incarnation::of_named(pid).0
    }

    /// [`Incarnation::of`], and the process's name (as `/proc/PID/comm`
    /// has it) from the same read of its stat: `None` when it could not be
    /// read.
    pub fn of_named(pid: Pid) -> (Incarnation, Option<String>) {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static SEEN: OnceLock<Mutex<HashMap<Pid, u64>>> = OnceLock::new();
        let seen = SEEN.get_or_init(Default::default);
        let stat = name_start_and_threads(pid);
        let (start, threads) = match stat.as_ref().map(|s| (s.1, s.2)) {
            Some((t, n)) => {
                if let Ok(mut m) = seen.lock() {
                    m.insert(pid, t);
                }
                (Some(t), n)
            }
            None => (seen.lock().ok().and_then(|m| m.get(&pid).copied()), 0),
        };
        let life = Incarnation {
            pid,
            start,
            threads,
        };
        (life, stat.map(|s| s.0))
    }

    /// How many threads the process had when this was taken; `None` when
    /// unknown. A hint only: threads come and go.
    pub fn threads_then(&self) -> Option<u32> {
        (self.threads > 0).then_some(self.threads)
    }

    /// [`Incarnation::of`] for a process this tool has just seen alive (it
    /// read its /proc files a moment ago, e.g. its maps): when its start
    /// time cannot be read any more, it has exited since, and counts as
    /// exited (not as a pid that never was). This lets a tool read a
    /// process's stat only once it knows it will act on it, not for every
    /// process it looks at.
    pub fn of_seen(pid: Pid) -> Incarnation {
        Incarnation::of_seen_named(pid).0
    }

    /// [`Incarnation::of_seen`] and the name, as [`Incarnation::of_named`].
    pub fn of_seen_named(pid: Pid) -> (Incarnation, Option<String>) {
        let (mut life, name) = Incarnation::of_named(pid);
        if life.start.is_none() {
            life.start = Some(GONE_BEFORE_SEEN);
        }
        (life, name)
    }

    /// Whether the process has exited: /proc has no such pid any more,
    /// the pid is another process's now, or no thread of it is alive
    /// (a zombie, exited threads not reaped yet). False for a process that
    /// did not exist when it was taken ([`Incarnation::of`]): a wrong pid
    /// is not an exit.
    pub fn exited(&self) -> bool {
        // Never seen (no such pid, or hidden from us): not known to have
        // exited, whatever the pid is now.
        let Some(then) = self.start else {
            return false;
        };
        match start_time(self.pid) {
            None => true,
            Some(now) if now != then => true,
            Some(_) => !process_alive(self.pid),
        }
    }

    /// [`Incarnation::exited`], waiting up to `grace` for a process that is
    /// exiting to finish: its threads die one by one (a failure of ours is
    /// often the first sign), and the last of them can take a moment. A
    /// process with no sign of an exit (no thread ended, none with a
    /// SIGKILL pending) is not waited for.
    pub fn exited_within(&self, grace: Duration) -> bool {
        let end = Instant::now() + grace;
        loop {
            if self.exited() {
                return true;
            }
            if Instant::now() >= end || !dying(self.pid) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_file_values_are_forgotten_with_a_new_generation() {
        static KEPT: PerFile<u32> = PerFile::new();
        let dev = MapsField::from("fe:00");
        KEPT.put(dev, 42, 7);
        assert_eq!(KEPT.get(dev, 42), Some(7));
        forget_files();
        assert_eq!(KEPT.get(dev, 42), None);
        KEPT.put(dev, 42, 8);
        assert_eq!(KEPT.get(dev, 42), Some(8));
    }

    #[test]
    fn maps_fields() {
        let f = MapsField::new(b"r-xp").unwrap();
        assert_eq!(f, "r-xp");
        assert_eq!(f.to_string(), "r-xp");
        assert_eq!(format!("{f:?}"), "\"r-xp\"");
        assert!(f.starts_with("r-"));
        assert!(MapsField::new(b"0123456789abcdef").is_none(), "16 bytes");
        assert!(MapsField::new("dé".as_bytes()).is_none(), "not ASCII");
        assert_eq!(MapsField::from("fd:01"), MapsField::new(b"fd:01").unwrap());
        // A line whose field cannot be one is not a maps line.
        assert!(parse_maps_line("1000-2000 r-xpr-xpr-xpr-xp 0 fd:01 1 /x").is_none());
    }

    #[test]
    fn proc_files_read_whole() {
        // Made whole at the first read: the same as the standard library
        // reads.
        for leaf in ["comm", "auxv", "loginuid"] {
            let path = format!("/proc/self/{leaf}");
            let ours = read_whole(&path).unwrap();
            assert_eq!(ours, fs::read(&path).unwrap(), "{path}");
            assert!(!ours.is_empty(), "{path}");
        }
        // A file made record by record, read to its end: every line of
        // this process's maps, the last one included.
        let maps = read_whole("/proc/self/maps").unwrap();
        assert!(maps.ends_with(b"\n"));
        let text = String::from_utf8_lossy(&maps);
        assert!(text.lines().all(|l| parse_maps_line(l).is_some()));
        assert!(text.contains("[stack]"), "{text}");
    }

    #[test]
    fn maps_lines() {
        let m = parse_maps_line(
            "7f0c2a000000-7f0c2a022000 r-xp 00001000 fd:01 1234567                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(m.start, RemoteAddr::new(0x7f0c2a000000));
        assert_eq!(m.end, RemoteAddr::new(0x7f0c2a022000));
        assert_eq!(m.perms, "r-xp");
        assert_eq!(m.offset, 0x1000);
        assert_eq!(m.dev, "fd:01");
        assert_eq!(m.inode, 1234567);
        assert_eq!(
            m.path.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert!(m.is_executable() && m.is_readable() && !m.is_writable());

        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.path, None);
        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, None);

        let spaced =
            parse_maps_line("1000-2000 r--p 00000000 08:02 42      /tmp/a dir/lib x.so (deleted)")
                .unwrap();
        assert_eq!(
            spaced.path.as_deref(),
            Some("/tmp/a dir/lib x.so (deleted)")
        );

        let stack =
            parse_maps_line("1000-2000 rw-p 00000000 00:00 0                          [stack]")
                .unwrap();
        assert_eq!(stack.path.as_deref(), Some("[stack]"));

        for bad in [
            "",
            "zzzz-2000 r--p 0 08:02 1 /x",
            "2000-1000 r--p 0 08:02 1 /x",
            "1000-2000 r--p",
            "1000 r--p 0 08:02 1",
            "1000-2000 r--p 0 0802 1 /x",
            "1000-2000 r--p 0 08:02 notanumber /x",
            "1000-2000 rw 0 08:02 1 /x",
        ] {
            assert_eq!(parse_maps_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn own_process() {
        // SAFETY: getpid has no preconditions.
        let me = Pid::new(unsafe { libc::getpid() });
        assert!(threads(me).unwrap().contains(&me.main_thread()));
        assert!(!comm(me).unwrap().is_empty());
        assert!(exe(me).is_some());
        assert!(all_pids().contains(&me));
        let m = maps(me).unwrap();
        let here = own_process as *const () as usize as u64;
        assert!(m
            .iter()
            .any(|m| m.contains(RemoteAddr::new(here)) && m.is_executable()));
        assert_eq!(
            thread_state(me, me.main_thread()).map(|c| c != 'Z'),
            Some(true)
        );
    }

    #[test]
    fn an_incarnation_ends_with_its_process() {
        let me = Incarnation::of(Pid::this());
        assert!(!me.exited());
        assert!(!thread_ended(me.pid, me.pid.main_thread()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let life = Incarnation::of(Pid::new(child.id() as i32));
        // Exited, not reaped yet: a zombie is no live process.
        let end = Instant::now() + Duration::from_secs(10);
        while thread_state(life.pid, life.pid.main_thread()) != Some('Z') {
            assert!(Instant::now() < end, "the child never exited");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(life.exited());
        child.wait().unwrap();
        assert!(life.exited());
        assert!(life.exited_within(Duration::ZERO));
        // A pid that never was is not an exit.
        assert!(!Incarnation::of(Pid::new(i32::MAX)).exited());
        // One seen alive a moment ago whose stat is gone now has exited.
        assert!(Incarnation::of_seen(Pid::new(i32::MAX)).exited());
        assert!(!Incarnation::of_seen(Pid::this()).exited());
    }

    #[test]
    fn the_kept_stat_file_counts_the_threads_listed() {
        let me = Pid::new(std::process::id() as i32);
        let stat = StatFile::open(me).expect("own stat");
        // Other tests' threads come and go: a count between two equal
        // listings is the listed one.
        let _parked = std::thread::spawn(std::thread::park);
        for _ in 0..100 {
            let before = threads(me).unwrap().len() as u32;
            let n = stat.threads().expect("thread count");
            if threads(me).unwrap().len() as u32 == before {
                assert!(n >= 2);
                assert_eq!(n, before);
                return;
            }
        }
        panic!("the threads never held still");
    }

    #[test]
    fn where_a_blocked_thread_stands() {
        let in_read = "0 0x3 0x7fb400578000 0x20000 0x7fb40060bb60 0xffffffff 0x0 0x7ffcda6c4d18 0x7fb4006f42ad\n";
        assert_eq!(
            parse_blocked_at(in_read),
            Some((0x7ffcda6c4d18, 0x7fb4006f42ad))
        );
        assert_eq!(
            parse_blocked_at("-1 0x7ffcda6c4d18 0x7fb4006f42ad\n"),
            Some((0x7ffcda6c4d18, 0x7fb4006f42ad))
        );
        assert_eq!(parse_blocked_at("running\n"), None);
        assert_eq!(parse_blocked_at(""), None);
    }

    #[test]
    fn this_blocked_thread_is_found_where_it_waits() {
        // A thread of this process asleep in a read of a pipe.
        let mut fds = [0; 2];
        // SAFETY: a valid array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let mut b = [0u8; 1];
            // SAFETY: a valid buffer of 1 byte and an open fd.
            unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        });
        let tid = Tid::new(rx.recv().unwrap());
        let me = Pid::new(std::process::id() as i32);
        let mut found = None;
        ulp_fixtures::wait_until("the reader blocked in read", || {
            found = (thread_state(me, tid) == Some('S'))
                .then(|| blocked_at(me, tid))
                .flatten();
            found.is_some()
        });
        let found = found.unwrap();
        // Its stack pointer is in its stack, its pc in this process's code.
        let maps = maps(me).unwrap();
        let holds = |a: u64, f: fn(&Mapping) -> bool| {
            maps.iter()
                .any(|m| m.contains(crate::RemoteAddr::new(a)) && f(m))
        };
        assert!(holds(found.0, |m| m.is_writable()), "{found:x?}");
        assert!(holds(found.1, |m| m.is_executable()), "{found:x?}");
        // SAFETY: the pipe's write end, open.
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        reader.join().unwrap();
        // SAFETY: both ends are open and no longer used.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}

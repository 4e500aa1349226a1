//! The one error type of this crate. Every variant names the process (and
//! the thread, when one is involved) and its `Display` says what to try next.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::{Pid, PtraceScope, RemoteAddr, Tid};

/// Who holds a thread we could not attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracer {
    /// The tracing thread (as `TracerPid` in `/proc/PID/status` shows it).
    pub tid: Tid,
    /// Its command name, if it could be read.
    pub comm: Option<String>,
    /// True when the tracer is a thread of the calling process.
    pub is_self: bool,
}

/// Something went wrong while looking at or controlling another process.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The process (or one of its threads) exited or never existed.
    Gone { pid: Pid, tid: Option<Tid> },
    /// `PTRACE_SEIZE` was refused (EPERM).
    AttachDenied {
        pid: Pid,
        tid: Tid,
        tracer: Option<Tracer>,
        /// Yama's setting, when the kernel has Yama.
        ptrace_scope: Option<PtraceScope>,
    },
    /// `PTRACE_SEIZE` with PTRACE_O_SUSPEND_SECCOMP was refused: `why` says
    /// what is missing (CAP_SYS_ADMIN, kernel support).
    SeccompSuspendDenied { pid: Pid, tid: Tid, why: String },
    /// A bounded wait ran out.
    Timeout {
        pid: Pid,
        tid: Option<Tid>,
        op: String,
    },
    /// A ptrace request failed for a reason not covered above.
    Ptrace {
        pid: Pid,
        tid: Tid,
        op: &'static str,
        errno: i32,
    },
    /// Reading or writing the target's memory failed.
    Memory {
        pid: Pid,
        addr: RemoteAddr,
        len: usize,
        write: bool,
        errno: i32,
    },
    /// A /proc file could not be read.
    Proc {
        pid: Pid,
        path: PathBuf,
        source: io::Error,
    },
    /// A /proc file had a line we could not parse.
    Parse {
        pid: Pid,
        path: PathBuf,
        line: String,
    },
    /// The function run by a remote call faulted; the thread's registers
    /// were restored and the fault was suppressed.
    CallFaulted {
        pid: Pid,
        tid: Tid,
        signal: i32,
        rip: u64,
        addr: u64,
    },
    /// The thread is not one this guard holds stopped.
    NotHeld {
        pid: Pid,
        tid: Tid,
        why: &'static str,
    },
    /// The caller asked for something this crate does not do.
    Invalid { pid: Pid, what: String },
}

impl Error {
    /// The process or the thread exited (or never existed).
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::Gone { .. })
    }

    /// A bounded wait ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// A timeout for a caller-described operation on `pid`.
    pub fn timeout(pid: Pid, op: impl Into<String>) -> Error {
        Error::Timeout {
            pid,
            tid: None,
            op: op.into(),
        }
    }

    /// The pid this error is about.
    pub fn pid(&self) -> Pid {
        match *self {
            Error::Gone { pid, .. }
            | Error::AttachDenied { pid, .. }
            | Error::SeccompSuspendDenied { pid, .. }
            | Error::Timeout { pid, .. }
            | Error::Ptrace { pid, .. }
            | Error::Memory { pid, .. }
            | Error::Proc { pid, .. }
            | Error::Parse { pid, .. }
            | Error::CallFaulted { pid, .. }
            | Error::NotHeld { pid, .. }
            | Error::Invalid { pid, .. } => pid,
        }
    }
}

pub(crate) fn errno_text(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

fn who(f: &mut fmt::Formatter<'_>, pid: Pid, tid: Option<Tid>) -> fmt::Result {
    match tid {
        Some(tid) if !tid.is_main_of(pid) => write!(f, "thread {tid} of process {pid}"),
        _ => write!(f, "process {pid}"),
    }
}

/// Why reading another process's /proc files was refused (they need
/// ptrace access): who owns the process, who we are, and what to do.
fn permission_hint(f: &mut fmt::Formatter<'_>, pid: Pid) -> fmt::Result {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match std::fs::metadata(format!("/proc/{pid}")).map(|m| m.uid()) {
        Ok(owner) if owner != me => write!(
            f,
            "; the process belongs to uid {owner} and ulp runs as uid {me}: only the \
             process's owner, or root with CAP_SYS_PTRACE, may patch it"
        ),
        _ => write!(
            f,
            "; reading it needs ptrace access: run as the process's owner (a process \
             that changed its credentials is not dumpable) or as root with CAP_SYS_PTRACE"
        ),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Gone { pid, tid } => match tid {
                Some(tid) if !tid.is_main_of(*pid) => {
                    write!(f, "thread {tid} of process {pid} exited")
                }
                _ => write!(f, "process {pid} exited (or does not exist); check the pid"),
            },
            Error::AttachDenied {
                pid,
                tid,
                tracer,
                ptrace_scope,
            } => {
                write!(f, "cannot attach to ")?;
                who(f, *pid, Some(*tid))?;
                write!(f, ": permission denied. ")?;
                match tracer {
                    Some(t) if t.is_self => write!(
                        f,
                        "It is already traced by this process (thread {}): release the other Stopped guard first",
                        t.tid
                    ),
                    Some(t) => write!(
                        f,
                        "It is already traced by pid {} ({}); a thread can have only one tracer: \
                         detach that debugger or tracer and retry",
                        t.tid,
                        t.comm.as_deref().unwrap_or("?")
                    ),
                    None => {
                        write!(
                            f,
                            "Run as the process's owner or as root with CAP_SYS_PTRACE \
                             (in a container: --cap-add=SYS_PTRACE)"
                        )?;
                        match ptrace_scope {
                            Some(s) => write!(
                                f,
                                "; /proc/sys/kernel/yama/ptrace_scope is {s} ({})",
                                PtraceScope::LEGEND
                            ),
                            None => Ok(()),
                        }
                    }
                }
            }
            Error::SeccompSuspendDenied { pid, tid, why } => {
                write!(f, "cannot suspend seccomp in ")?;
                who(f, *pid, Some(*tid))?;
                write!(
                    f,
                    ": {why}; PTRACE_O_SUSPEND_SECCOMP (--disable-seccomp) needs CAP_SYS_ADMIN \
                     and a tracer not itself under seccomp: run as root with CAP_SYS_ADMIN \
                     (in a container: --cap-add=SYS_ADMIN), or leave --disable-seccomp out"
                )
            }
            Error::Timeout { pid, tid, op } => {
                write!(f, "timed out {op} (")?;
                who(f, *pid, *tid)?;
                write!(
                    f,
                    "); the process may be blocked in the kernel (state D) or very busy: retry later"
                )
            }
            Error::Ptrace {
                pid,
                tid,
                op,
                errno,
            } => {
                write!(f, "ptrace {op} failed on ")?;
                who(f, *pid, Some(*tid))?;
                write!(f, ": {}", errno_text(*errno))
            }
            Error::Memory {
                pid,
                addr,
                len,
                write: false,
                errno,
            } => write!(
                f,
                "cannot read {len} bytes at {addr:#x} in process {pid}: {}; is the address mapped \
                 (see /proc/{pid}/maps)?",
                errno_text(*errno)
            ),
            Error::Memory {
                pid,
                addr,
                len,
                write: true,
                errno,
            } => write!(
                f,
                "cannot write {len} bytes at {addr:#x} in process {pid}: {}; write_mem needs a \
                 writable mapping (code pages must be written with Stopped::poke)",
                errno_text(*errno)
            ),
            Error::Proc { pid, path, source } => {
                write!(
                    f,
                    "cannot read {} for process {pid}: {source}",
                    path.display()
                )?;
                if source.kind() == io::ErrorKind::PermissionDenied {
                    permission_hint(f, *pid)?;
                }
                Ok(())
            }
            Error::Parse { pid, path, line } => {
                write!(
                    f,
                    "unexpected line in {} of process {pid}: {line:?}",
                    path.display()
                )
            }
            Error::CallFaulted {
                pid,
                tid,
                signal,
                rip,
                addr,
            } => {
                write!(f, "the remote call on ")?;
                who(f, *pid, Some(*tid))?;
                write!(
                    f,
                    " crashed with {} at rip {rip:#x} (fault address {addr:#x}); the thread's \
                     registers were restored and the signal suppressed, but the called function \
                     may have left partial effects",
                    signal_name(*signal)
                )
            }
            Error::NotHeld { pid, tid, why } => {
                who(f, *pid, Some(*tid))?;
                write!(f, " is not usable here: {why}")
            }
            Error::Invalid { pid, what } => write!(f, "invalid request for process {pid}: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Proc { source, .. } => Some(source),
            _ => None,
        }
    }
}

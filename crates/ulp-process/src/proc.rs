//! Who a process is and what it sees, read from /proc without stopping it:
//! whether its pid exists, its owner and credentials, its session's login
//! uid, its environment, its root (a chroot) and the paths through that
//! root, the file behind a mapping; and what this host lets a tracer do
//! (Yama's `ptrace_scope`, our own capabilities).
//!
//! Left out: the memory map, threads and liveness (`procfs.rs`), and
//! what any of it means for live patching (`ulp-core`). Every accessor
//! answers `None` (or an empty value) for what it cannot read, unless the
//! caller needs the error to say why.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::procfs::Mapping;
use crate::Pid;

/// Whether `/proc/PID` exists: a process (or a zombie) has that pid now.
pub fn exists(pid: Pid) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The uid that owns `/proc/PID` (the process's effective uid, as the
/// kernel's ptrace permission check sees it), `None` when it is gone.
pub fn owner_uid(pid: Pid) -> Option<u32> {
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// The login uid of `pid`'s session (`/proc/PID/loginuid`), `None` when
/// unreadable; 4294967295 is the kernel's "unset".
pub fn login_uid(pid: Pid) -> Option<u32> {
    crate::procfs::read_text(format!("/proc/{pid}/loginuid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `/proc/PID/environ`: `NAME=VALUE` entries, each ended by a NUL.
pub fn environ(pid: Pid) -> Result<Vec<u8>, crate::Error> {
    crate::procfs::read_proc(pid, "environ")
}

/// A process's ids, from the `Uid:`, `Gid:` and `Groups:` lines of
/// `/proc/PID/status` (real, effective, saved, filesystem for the first
/// two); each empty when unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub groups: Vec<u32>,
}

/// [`Credentials`] of `pid`.
pub fn credentials(pid: Pid) -> Credentials {
    let status = crate::procfs::read_text(format!("/proc/{pid}/status")).unwrap_or_default();
    let ids = |field: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Credentials {
        uids: ids("Uid"),
        gids: ids("Gid"),
        groups: ids("Groups"),
    }
}

/// Whether `pid` is a kernel thread (`PF_KTHREAD` in the flags of its
/// stat); false when unreadable.
pub fn is_kernel_thread(pid: Pid) -> bool {
    name_and_kind(pid).is_some_and(|(_, kernel)| kernel)
}

/// The name of `pid` (its `comm`, as `/proc/PID/comm` prints it) and
/// whether it is a kernel thread, from one read of its stat; `None` when
/// unreadable (gone). Choosing processes by name looks at every process
/// on the host: one file each instead of two.
pub fn name_and_kind(pid: Pid) -> Option<(String, bool)> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let raw = crate::procfs::read_whole(format!("/proc/{pid}/stat")).ok()?;
    let (command, mut fields) = crate::procfs::split_stat(&raw)?;
    // From the state (field 3) on: the flags are field 9.
    let flags = fields.nth(6)?.parse::<u64>().ok()?;
    Some((
        String::from_utf8_lossy(command).into_owned(),
        flags & PF_KTHREAD != 0,
    ))
}

/// The directory `pid` is chrooted at, as the target of `/proc/PID/root`
/// (`/` for a process that is not), `None` when unreadable.
pub fn root(pid: Pid) -> Option<PathBuf> {
    crate::procfs::linked(pid, "root")
}

/// The file `path` names for `pid` (an absolute path as the process sees
/// it), reached through its root: `/proc/PID/root` + `path`. It opens
/// what the process would open, in a chroot or another mount namespace.
pub fn in_root(pid: Pid, path: impl AsRef<Path>) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{}", path.as_ref().display()))
}

/// The very file `m` maps (`/proc/PID/map_files/START-END`), even when it
/// was renamed or deleted since; opening it needs CAP_SYS_ADMIN on older
/// kernels.
pub fn map_file(pid: Pid, m: &Mapping) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))
}

/// Yama's `kernel.yama.ptrace_scope`: which processes a tracer may
/// attach to, beyond the kernel's own rule (same user, or
/// CAP_SYS_PTRACE). Shown as its number; what each value allows is said
/// here only ([`PtraceScope::rule`], [`PtraceScope::LEGEND`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PtraceScope {
    /// 0: the kernel's own rule only.
    Classic,
    /// 1: only a process's ancestors (or whom it names with PR_SET_PTRACER).
    Ancestors,
    /// 2: only a tracer with CAP_SYS_PTRACE.
    Admin,
    /// 3: no process may be traced (until the next boot).
    Nobody,
}

impl PtraceScope {
    /// What the values allow, in one line (for a refused attach).
    pub const LEGEND: &'static str = "1 allows only ancestors, 2 only CAP_SYS_PTRACE, 3 nobody";

    /// Who may trace under this value, as a clause.
    pub fn rule(self) -> &'static str {
        match self {
            PtraceScope::Classic => "the same user or CAP_SYS_PTRACE may trace",
            PtraceScope::Ancestors => "only a process's ancestors may trace it",
            PtraceScope::Admin => "only CAP_SYS_PTRACE may trace",
            PtraceScope::Nobody => "no process may be traced",
        }
    }

    /// The setting's number, as written in the sysctl.
    pub fn value(self) -> u8 {
        match self {
            PtraceScope::Classic => 0,
            PtraceScope::Ancestors => 1,
            PtraceScope::Admin => 2,
            PtraceScope::Nobody => 3,
        }
    }

    /// The value in the sysctl's text (`"1\n"`), `None` for anything else.
    pub fn parse(text: &str) -> Option<PtraceScope> {
        match text.trim() {
            "0" => Some(PtraceScope::Classic),
            "1" => Some(PtraceScope::Ancestors),
            "2" => Some(PtraceScope::Admin),
            "3" => Some(PtraceScope::Nobody),
            _ => None,
        }
    }
}

impl std::fmt::Display for PtraceScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.value())
    }
}

/// This host's [`PtraceScope`] (`/proc/sys/kernel/yama/ptrace_scope`),
/// `None` when the kernel has no Yama.
pub fn ptrace_scope() -> Option<PtraceScope> {
    PtraceScope::parse(&fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok()?)
}

/// Whether this process has capability number `cap` (e.g. 19,
/// CAP_SYS_PTRACE) in its effective set; false when that cannot be read.
pub fn has_capability(cap: u32) -> bool {
    crate::procfs::read_text("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| cap < 64 && caps & (1 << cap) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tid;

    #[test]
    fn own_process() {
        let me = Pid::this();
        assert!(exists(me));
        assert!(!exists(Pid::new(i32::MAX)));
        // SAFETY: geteuid and getuid cannot fail.
        let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
        assert_eq!(owner_uid(me), Some(euid));
        assert_eq!(credentials(me).uids.first(), Some(&uid));
        assert!(!credentials(me).gids.is_empty());
        assert!(!is_kernel_thread(me));
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            name_and_kind(me),
            Some((comm.trim_end().to_string(), false))
        );
        assert_eq!(name_and_kind(Pid::new(i32::MAX)), None);
        // kthreadd, where this pid namespace shows it.
        if let Ok(c) = std::fs::read_to_string("/proc/2/comm") {
            if c.trim_end() == "kthreadd" {
                assert_eq!(name_and_kind(Pid::new(2)), Some(("kthreadd".into(), true)));
                assert!(is_kernel_thread(Pid::new(2)));
            }
        }
        assert!(root(me).is_some());
        assert_eq!(
            in_root(me, "/etc"),
            PathBuf::from(format!("/proc/{me}/root/etc"))
        );
        assert!(environ(me).is_ok());
        assert_eq!(credentials(Pid::new(i32::MAX)), Credentials::default());
    }

    #[test]
    fn ptrace_scopes() {
        for (text, scope) in [
            ("0\n", Some(PtraceScope::Classic)),
            ("1\n", Some(PtraceScope::Ancestors)),
            ("2", Some(PtraceScope::Admin)),
            (" 3 \n", Some(PtraceScope::Nobody)),
            ("4\n", None),
            ("", None),
            ("one", None),
        ] {
            assert_eq!(PtraceScope::parse(text), scope, "{text:?}");
            if let Some(s) = scope {
                assert_eq!(s.to_string(), text.trim());
            }
        }
    }

    #[test]
    fn a_refused_attach_names_the_scope() {
        let denied = crate::Error::AttachDenied {
            pid: Pid::new(7),
            tid: Tid::new(7),
            tracer: None,
            ptrace_scope: Some(PtraceScope::Ancestors),
        };
        assert!(denied.to_string().ends_with(
            "; /proc/sys/kernel/yama/ptrace_scope is 1 (1 allows only ancestors, 2 only \
             CAP_SYS_PTRACE, 3 nobody)"
        ));
    }
}

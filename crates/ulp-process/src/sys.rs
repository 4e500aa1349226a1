//! Thin wrappers over the raw ptrace requests and waitpid. Every unsafe
//! call of the crate's ptrace use lives here; callers get `Result<_, Errno>`
//! and turn errno values into `Error`s that name the process.

use std::io;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use crate::{Pid, Tid};

/// A raw errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Errno(pub i32);

fn last_errno() -> Errno {
    Errno(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// `NT_X86_XSTATE` from <elf.h>: the XSAVE area (x87, SSE, AVX, AVX-512 ...).
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_EVENT_STOP` from <sys/ptrace.h>.
pub(crate) const PTRACE_EVENT_STOP: i32 = 128;

fn request(req: libc::c_uint, tid: Tid, addr: usize, data: usize) -> Result<libc::c_long, Errno> {
    // SAFETY: the callers below pass `addr`/`data` as the request expects:
    // plain integers, or pointers to live buffers of the size the kernel
    // writes or reads for that request.
    let r = unsafe {
        libc::ptrace(
            req,
            tid.get(),
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

/// `PTRACE_O_SUSPEND_SECCOMP` from <linux/ptrace.h>.
pub(crate) const PTRACE_O_SUSPEND_SECCOMP: usize = 1 << 21;

/// PTRACE_SEIZE with `options` (0, or PTRACE_O_SUSPEND_SECCOMP); in
/// particular never PTRACE_O_EXITKILL, so a dying tool detaches instead of
/// killing the target.
pub(crate) fn seize_with(tid: Tid, options: usize) -> Result<(), Errno> {
    // Every report of the thread from now on wakes this thread's waits.
    block_reports();
    request(libc::PTRACE_SEIZE, tid, 0, options).map(drop)
}

pub(crate) fn interrupt(tid: Tid) -> Result<(), Errno> {
    request(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

pub(crate) fn cont(tid: Tid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// PTRACE_SYSCALL: resume, stopping at the next system call entry or exit.
pub(crate) fn cont_syscall(tid: Tid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_O_TRACESYSGOOD`: system call stops report SIGTRAP | 0x80.
pub(crate) const PTRACE_O_TRACESYSGOOD: usize = 1;

pub(crate) fn set_options(tid: Tid, options: usize) -> Result<(), Errno> {
    request(libc::PTRACE_SETOPTIONS, tid, 0, options).map(drop)
}

/// The thread's blocked-signal mask (PTRACE_GETSIGMASK).
pub(crate) fn get_sigmask(tid: Tid) -> Result<u64, Errno> {
    let mut mask = 0u64;
    request(
        libc::PTRACE_GETSIGMASK,
        tid,
        std::mem::size_of::<u64>(),
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

pub(crate) fn detach(tid: Tid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

pub(crate) fn get_regs(tid: Tid) -> Result<libc::user_regs_struct, Errno> {
    let mut regs = MaybeUninit::<libc::user_regs_struct>::uninit();
    request(libc::PTRACE_GETREGS, tid, 0, regs.as_mut_ptr() as usize)?;
    // SAFETY: PTRACE_GETREGS succeeded, so the kernel filled the whole struct.
    Ok(unsafe { regs.assume_init() })
}

pub(crate) fn set_regs(tid: Tid, regs: &libc::user_regs_struct) -> Result<(), Errno> {
    request(libc::PTRACE_SETREGS, tid, 0, regs as *const _ as usize).map(drop)
}

/// Reads the thread's XSAVE area. The size is whatever the kernel returns
/// (about 2.7 KiB with AVX-512, ~11 KiB with AMX); the buffer grows until
/// the kernel no longer fills it completely.
pub(crate) fn get_xstate(tid: Tid) -> Result<Vec<u8>, Errno> {
    let mut size = 16 * 1024;
    loop {
        let mut buf = vec![0u8; size];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        request(
            libc::PTRACE_GETREGSET,
            tid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut _ as usize,
        )?;
        if iov.iov_len < size || size >= 1 << 20 {
            buf.truncate(iov.iov_len);
            return Ok(buf);
        }
        size *= 2;
    }
}

/// Writes back an XSAVE area read by `get_xstate` (the kernel wants exactly
/// the size it returned).
pub(crate) fn set_xstate(tid: Tid, xstate: &[u8]) -> Result<(), Errno> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut libc::c_void,
        iov_len: xstate.len(),
    };
    request(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

pub(crate) fn get_siginfo(tid: Tid) -> Result<libc::siginfo_t, Errno> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    request(libc::PTRACE_GETSIGINFO, tid, 0, info.as_mut_ptr() as usize)?;
    // SAFETY: zero-initialised plain data, filled by the kernel on success.
    Ok(unsafe { info.assume_init() })
}

pub(crate) fn set_siginfo(tid: Tid, info: &libc::siginfo_t) -> Result<(), Errno> {
    request(libc::PTRACE_SETSIGINFO, tid, 0, info as *const _ as usize).map(drop)
}

/// One aligned word of the tracee's memory (forced access: works on
/// read-only and non-readable pages).
pub(crate) fn peek_word(tid: Tid, addr: u64) -> Result<u64, Errno> {
    // PEEKDATA returns the word itself, so -1 is ambiguous: clear errno first.
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: PEEKDATA takes an address in the tracee and no local pointer.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_PEEKDATA,
            tid.get(),
            addr as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if r == -1 {
        let e = last_errno();
        if e.0 != 0 {
            return Err(e);
        }
    }
    Ok(r as u64)
}

pub(crate) fn poke_word(tid: Tid, addr: u64, word: u64) -> Result<(), Errno> {
    request(libc::PTRACE_POKEDATA, tid, addr as usize, word as usize).map(drop)
}

/// Sends `info`'s signal to one thread again. User-queued signals
/// (`si_code < 0`, except tkill) keep their siginfo through
/// rt_tgsigqueueinfo; the kernel forbids forging the others, which are
/// re-raised with tgkill (the signal number is preserved, the sender is not).
pub(crate) fn reraise(pid: Pid, tid: Tid, info: &libc::siginfo_t) -> Result<(), Errno> {
    let sig = info.si_signo;
    let r = if info.si_code < 0 && info.si_code != libc::SI_TKILL {
        // SAFETY: `info` is a valid siginfo_t for the duration of the call.
        unsafe {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                pid.get(),
                tid.get(),
                sig,
                info as *const libc::siginfo_t,
            )
        }
    } else {
        // SAFETY: tgkill takes plain integers.
        unsafe { libc::syscall(libc::SYS_tgkill, pid.get(), tid.get(), sig) }
    };
    if r == -1 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

/// What `waitpid` reported for one traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// The thread exited with this status.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
    /// A PTRACE_EVENT_STOP: from PTRACE_INTERRUPT (`sig` = SIGTRAP) or a
    /// group-stop (`sig` = SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU).
    EventStop { sig: i32 },
    /// Another ptrace event (none are enabled; handled like an event stop).
    OtherEvent { sig: i32, event: i32 },
    /// Signal-delivery-stop: `sig` is about to be delivered; the tracer
    /// decides whether it is (by the signal passed when resuming).
    SignalStop { sig: i32 },
    /// A system call entry or exit stop (after PTRACE_SYSCALL, with
    /// PTRACE_O_TRACESYSGOOD).
    SyscallStop,
}

impl WaitStatus {
    fn decode(status: i32) -> WaitStatus {
        if libc::WIFEXITED(status) {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            WaitStatus::Killed(libc::WTERMSIG(status))
        } else {
            let sig = libc::WSTOPSIG(status);
            match status >> 16 {
                0 if sig == libc::SIGTRAP | 0x80 => WaitStatus::SyscallStop,
                0 => WaitStatus::SignalStop { sig },
                PTRACE_EVENT_STOP => WaitStatus::EventStop { sig },
                event => WaitStatus::OtherEvent { sig, event },
            }
        }
    }
}

/// Waits for the next report of one traced thread until `deadline`:
/// `Ok(None)` on timeout, `Err(ECHILD)` if the thread is not (or no longer)
/// ours to wait for.
///
/// Polls with WNOHANG and sleeps between polls until this process is sent
/// a SIGCHLD ([`sleep_until_report`]): no CPU is taken from the threads
/// that must run to reach their stop.
pub(crate) fn wait_thread(tid: Tid, deadline: Instant) -> Result<Option<WaitStatus>, Errno> {
    block_reports();
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(tid.get(), &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid.get() {
            return Ok(Some(WaitStatus::decode(status)));
        }
        if r == -1 {
            let e = last_errno();
            if e.0 != libc::EINTR {
                return Err(e);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        sleep_until_report(deadline - now);
    }
}

/// A thread (or child) of this OS thread's with a report to take, if any,
/// without taking it (`waitid` with `WNOWAIT`).
pub(crate) fn peek_report() -> Option<Tid> {
    // SAFETY: siginfo_t is plain data; waitid fills it or leaves si_pid 0.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; WNOHANG keeps the call from blocking.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED
                | libc::WSTOPPED
                | libc::WNOHANG
                | libc::WNOWAIT
                | libc::__WALL
                | libc::__WNOTHREAD,
        )
    };
    // SAFETY: si_pid is valid for the SIGCHLD siginfo waitid fills.
    let pid = unsafe { info.si_pid() };
    (r == 0 && pid > 0).then(|| Tid::new(pid))
}

/// The longest single sleep of [`sleep_until_report`]: a SIGCHLD taken by
/// another thread of this process (a fleet's worker waiting on its own
/// target, or a thread that does not block it) costs at most this much.
const REPORT_NAP: Duration = Duration::from_micros(200);

/// Sleeps until this process is sent a SIGCHLD, or `most` (at most
/// [`REPORT_NAP`]) has passed. The kernel sends the tracer a SIGCHLD for
/// every stop and exit of a thread it traces, so a loop that polls its
/// threads with WNOHANG and calls this between polls wakes up for each
/// report and otherwise leaves the CPUs to the threads it waits for (on
/// two CPUs, a spinning tracer is what kept a `SCHED_IDLE` thread from
/// ever reaching its stop). SIGCHLD stays blocked in this thread from the
/// first call on, so one sent between a poll and the sleep is pending and
/// ends the sleep at once: no report is missed. (Blocked, its default
/// action, to be ignored, does not drop it; the children that `Command`
/// starts get an empty signal mask.)
pub(crate) fn sleep_until_report(most: Duration) {
    block_reports();
    let set = chld_set();
    let d = most.min(REPORT_NAP);
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timeout; no siginfo wanted. EAGAIN (timeout)
    // and EINTR are both just the end of the sleep.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
}

/// Blocks SIGCHLD in this thread (once per thread), for
/// [`sleep_until_report`]. Called before a thread is interrupted or waited
/// for: a SIGCHLD sent while not blocked is dropped (its default action is
/// to be ignored), and the sleep after the next poll would not see it.
///
/// A program calls it at its start, before it starts threads (they
/// inherit the mask): no thread of it then takes a SIGCHLD that a thread
/// waiting for its tracees' reports needs (with SIGCHLD not blocked, the
/// kernel may give it to another thread, which drops it). The children
/// `std::process::Command` starts get an empty mask.
pub fn block_reports() {
    thread_local! {
        static BLOCKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    BLOCKED.with(|b| {
        if !b.get() {
            let set = chld_set();
            // SAFETY: a valid signal set; only this thread's mask changes.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
            precise_timers();
            b.set(true);
        }
    });
}

fn chld_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Sets this thread's timer slack to 1 ns (once per thread): the default
/// 50 µs slack would stretch every short sleep of the waiting loops, which
/// run while a target waits to be resumed.
fn precise_timers() {
    thread_local! {
        static PRECISE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    PRECISE.with(|p| {
        if !p.get() {
            // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only
            // changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
            p.set(true);
        }
    });
}

//! The stopped-threads guard: seizing, interrupting, remote calls, code
//! writes, and putting everything back.
//!
//! # Stops this module deals with
//!
//! A seized thread that we PTRACE_INTERRUPT reports one of:
//! * an event stop (`status >> 16 == PTRACE_EVENT_STOP`, signal SIGTRAP),
//!   the normal case;
//! * an event stop with a stop signal (SIGSTOP, SIGTSTP, ...): the thread
//!   is in a group-stop (the process was stopped by job control). We use it
//!   like any other stop; at detach the kernel puts it back into the
//!   group-stop, so a stopped process stays stopped;
//! * a signal-delivery-stop: a signal was being delivered when we
//!   arrived. We keep the thread in that stop (it is a full ptrace-stop),
//!   remember the signal and its siginfo, and deliver it at detach, so the
//!   program sees it once, with its original siginfo, after we are gone.
//! * an exit: the thread vanished meanwhile; it is dropped from the guard.
//!
//! # System call restart
//!
//! A thread interrupted inside a restartable system call (read, futex,
//! nanosleep...) stops with `orig_rax` = the call number and
//! `rax = -ERESTARTSYS` (or -ERESTARTNOINTR, -ERESTARTNOHAND,
//! -ERESTART_RESTARTBLOCK) and `rip` just after the `syscall` instruction.
//! When it resumes without a signal to handle, the kernel (in
//! `arch_do_signal_or_restart`) looks at exactly these registers: if
//! `orig_rax >= 0` and `rax` is one of those codes, it rewinds `rip` by 2
//! and reloads `rax` from `orig_rax`, so the call runs again (nanosleep
//! resumes from its saved absolute expiry, so no sleep is shortened).
//!
//! A remote call must not be caught by that rule, so it sets
//! `orig_rax = -1`. When the call has returned, writing the saved registers
//! back restores `orig_rax`/`rax`/`rip`, and the restart happens when the
//! thread finally resumes: the program never sees EINTR.
//!
//! A few calls (epoll_wait and relatives, see [`NON_RESTARTING`]) return
//! EINTR outright when the thread is interrupted, even with no signal. When
//! a thread stops on the way out of one of those with -EINTR, and no signal
//! is pending for it, we rewind it ourselves to re-execute the `syscall`
//! instruction (the arguments are still in their registers).

use std::collections::HashSet;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::frame::{self, ReturnPath};
use crate::procfs;
use crate::regs::Regs;
use crate::sys::{self, Errno, WaitStatus};
use crate::{Pid, Tid};

/// Bytes below `rsp` that leaf functions may use without moving `rsp`
/// (System V x86-64 ABI): a remote call's frame starts below them.
const RED_ZONE: u64 = 128;

/// How long `release`/`Drop` wait for a thread that is still running (a
/// remote call that timed out, or an interrupt that never landed) to stop.
const DETACH_GRACE: Duration = Duration::from_millis(100);

/// How long a held thread that was killed is waited for, to reap it at
/// once; after that it is reaped later ([`reap_later`]).
const REAP_GRACE: Duration = Duration::from_millis(5);

thread_local! {
    /// Threads this OS thread traced that were still exiting when let go.
    static UNREAPED: std::cell::RefCell<Vec<Tid>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Remembers an exiting thread this OS thread traces, to reap it once it
/// has exited: until its tracer reaps it, its process stays a zombie that
/// its parent cannot reap. The kernel releases any left when this OS
/// thread ends.
fn reap_later(tid: Tid) {
    UNREAPED.with(|u| u.borrow_mut().push(tid));
}

/// Reaps, without waiting, the threads [`reap_later`] holds that have
/// exited by now.
fn reap_exited() {
    UNREAPED.with(|u| {
        u.borrow_mut()
            .retain(|&tid| matches!(sys::wait_thread(tid, Instant::now()), Ok(None)))
    });
}

/// System calls that fail with EINTR (instead of restarting) when their
/// thread is interrupted by ptrace, even though no signal handler runs.
const NON_RESTARTING: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_io_getevents,
    // io_pgetevents (not in the libc crate's list).
    333,
];

/// `mov $15, %rax; syscall`: `rt_sigreturn`, as glibc's signal restorer
/// `__restore_rt` has it.
pub const SIGRETURN_CODE: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];

/// How a remote call gets back.
enum Return<'a> {
    /// To address 0: the thread faults there and the tool takes it back
    /// (a tool that dies meanwhile leaves it to crash). Tests only.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    Trap,
    /// Through a resume routine of the target (it returns by itself).
    Path(&'a ReturnPath),
    /// Through a bare `rt_sigreturn` at `at` ([`SIGRETURN_CODE`]), with
    /// `data` copied into the frame, its address the first argument.
    Sigreturn {
        at: u64,
        data: &'a [u8],
        then: &'a mut dyn FnMut() -> Option<ReturnPath>,
    },
}

/// The x86-64 `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

const EFLAGS_TF: u64 = 1 << 8;
const EFLAGS_DF: u64 = 1 << 10;

/// Where a held thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Seized but not (yet) stopped: the interrupt has not landed, or the
    /// thread is running a remote call.
    Running,
    /// Event stop (PTRACE_INTERRUPT or group-stop).
    Event,
    /// Signal-delivery-stop for this signal: resuming with a signal number
    /// delivers that signal instead.
    Signal(i32),
}

/// The thread's own state while a remote call runs on it.
struct Call {
    regs: libc::user_regs_struct,
    xstate: Vec<u8>,
    /// `rsp` at the call's entry (it holds the return address: 0, or the
    /// resume routine).
    sp: u64,
    /// The function called.
    func: u64,
    /// Set when the call returns by itself through a resume routine.
    ret: Option<SelfReturn>,
}

/// A call that returns through a [`ReturnPath`].
#[derive(Clone, Copy)]
struct SelfReturn {
    path: ReturnPath,
    /// The frame's ucontext: `rsp` in the resume routine.
    uc: u64,
    /// What the routine stores in the done word when this call returned.
    cookie: u64,
}

impl SelfReturn {
    /// Whether a thread with these registers is waiting in the resume
    /// routine of this call (not yet returned to its own code).
    fn holds(&self, r: &libc::user_regs_struct) -> bool {
        self.path.routine <= r.rip && r.rip < self.path.routine_end && r.rsp == self.uc
    }
}

/// A value no done word holds by chance: a per-process counter mixed with
/// the clock, never zero.
fn next_cookie() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let c = (t ^ (n << 40) ^ (u64::from(std::process::id()) << 20)).rotate_left(17);
    c | 1
}

/// Whether a call that returns by itself should get its registers back
/// from the tool now that it is stopped with `now`: waiting in the resume
/// routine, or not started yet. Elsewhere it is either inside the callee
/// (it finishes and returns by itself) or back in its own code already.
fn restore_on_detach(call: &Call, now: &libc::user_regs_struct) -> bool {
    match &call.ret {
        None => true,
        Some(ret) => ret.holds(now) || (now.rip == call.func && now.rsp == call.sp),
    }
}

struct Held {
    tid: Tid,
    stop: Stop,
    /// Signals that arrived while we held the thread, oldest first, to be
    /// delivered when it is detached.
    owed: Vec<libc::siginfo_t>,
    call: Option<Call>,
    /// The general registers as read when the thread stopped, while they
    /// are known to be unchanged (cleared by anything that changes them):
    /// saves a PTRACE_GETREGS per thread on the path that stops them all.
    regs: Option<libc::user_regs_struct>,
}

/// How threads are seized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeizeOptions {
    /// PTRACE_O_SUSPEND_SECCOMP: the threads' seccomp filters do not apply
    /// while they are traced (a remote call may then make system calls the
    /// filter forbids). The kernel allows it only to a tracer with
    /// CAP_SYS_ADMIN that is not itself under seccomp; otherwise seizing
    /// fails with [`Error::SeccompSuspendDenied`].
    pub suspend_seccomp: bool,
}

/// Guard over threads of one process that the calling OS thread has seized
/// and stopped. See the crate documentation for the rules.
///
/// Dropping it restores any thread left inside a remote call and detaches
/// every thread, ignoring errors; call [`Stopped::release`] to see them.
pub struct Stopped {
    pid: Pid,
    /// Sorted by tid.
    held: Vec<Held>,
    /// Threads that exited or became zombies while we attached: not retried.
    skipped: HashSet<Tid>,
    options: SeizeOptions,
    /// Only the seizing OS thread may issue ptrace requests: not Send.
    _not_send: PhantomData<*mut ()>,
}

fn is_fault(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
    )
}

impl Stopped {
    fn empty(pid: Pid, options: SeizeOptions) -> Stopped {
        reap_exited();
        Stopped {
            pid,
            held: Vec::new(),
            skipped: HashSet::new(),
            options,
            _not_send: PhantomData,
        }
    }

    /// Seizes and stops the given threads of `pid`. Threads that vanished
    /// meanwhile (or are not threads of `pid`) are skipped; it is an error if
    /// none is left or the process is gone.
    pub fn seize_threads(pid: Pid, tids: &[Tid], deadline: Instant) -> Result<Stopped, Error> {
        Stopped::seize_threads_with(pid, tids, deadline, SeizeOptions::default())
    }

    /// [`Stopped::seize_threads`] with `options`.
    pub fn seize_threads_with(
        pid: Pid,
        tids: &[Tid],
        deadline: Instant,
        options: SeizeOptions,
    ) -> Result<Stopped, Error> {
        if !procfs::process_alive(pid) {
            return Err(Error::Gone { pid, tid: None });
        }
        let mut s = Stopped::empty(pid, options);
        s.attach_batch(tids, deadline)?;
        if s.held.is_empty() {
            let tid = if procfs::process_alive(pid) {
                tids.first().copied()
            } else {
                None
            };
            return Err(Error::Gone { pid, tid });
        }
        Ok(s)
    }

    /// Seizes and stops every thread of `pid`, rescanning /proc/PID/task
    /// until a pass finds no thread it has not seen. A stopped thread cannot
    /// create threads, and a thread created by `clone` is listed before its
    /// creator returns to user space, so a quiet pass means all are held.
    pub fn seize_all(pid: Pid, deadline: Instant) -> Result<Stopped, Error> {
        Stopped::seize_all_with(pid, deadline, SeizeOptions::default())
    }

    /// [`Stopped::seize_all`] with `options` (also used by later
    /// [`Stopped::seize_rest`] calls on this guard).
    pub fn seize_all_with(
        pid: Pid,
        deadline: Instant,
        options: SeizeOptions,
    ) -> Result<Stopped, Error> {
        let mut s = Stopped::empty(pid, options);
        s.seize_rest(deadline)?;
        Ok(s)
    }

    /// Extends this guard to every thread of the process not yet held
    /// (same rescan rule as [`Stopped::seize_all`]).
    pub fn seize_rest(&mut self, deadline: Instant) -> Result<(), Error> {
        loop {
            let new: Vec<Tid> = procfs::threads(self.pid)?
                .into_iter()
                .filter(|t| !self.holds(*t) && !self.skipped.contains(t))
                .collect();
            if new.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    pid: self.pid,
                    tid: None,
                    op: "seizing all threads (new threads kept appearing)".into(),
                });
            }
            self.attach_batch(&new, deadline)?;
        }
        if self.held.is_empty() {
            return Err(Error::Gone {
                pid: self.pid,
                tid: None,
            });
        }
        Ok(())
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The threads held, sorted.
    pub fn tids(&self) -> Vec<Tid> {
        self.held.iter().map(|h| h.tid).collect()
    }

    /// The general registers of a held, stopped thread.
    pub fn regs(&self, tid: Tid) -> Result<Regs, Error> {
        let i = self.stopped_index(tid)?;
        if let Some(r) = self.held[i].regs {
            return Ok(Regs(r));
        }
        sys::get_regs(self.held[i].tid)
            .map(Regs)
            .map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))
    }

    /// `Some(system call number)` when the thread is stopped inside a system
    /// call (`orig_rax >= 0`), else `None`.
    pub fn syscall_of(&self, tid: Tid) -> Result<Option<i64>, Error> {
        let nr = self.regs(tid)?.orig_rax();
        Ok((nr >= 0).then_some(nr))
    }

    /// Signals that arrived for `tid` while it was held (delivered when it is
    /// detached), by number.
    pub fn owed_signals(&self, tid: Tid) -> Vec<i32> {
        self.held
            .iter()
            .find(|h| h.tid == tid)
            .map(|h| h.owed.iter().map(|i| i.si_signo).collect())
            .unwrap_or_default()
    }

    /// Runs `func(args...)` (at most 6 integer arguments, System V ABI) on
    /// thread `tid` and returns its `rax`.
    ///
    /// Saves all of the thread's registers first (general registers and the
    /// whole XSAVE area: x87, SSE, AVX, AVX-512), sets `orig_rax = -1` so an
    /// interrupted restartable system call is not rewound into the call,
    /// builds the frame below the 128-byte red zone with `rsp` 16-byte
    /// aligned at the call, and pushes return address 0: the return faults
    /// (SIGSEGV with `rip == 0`) and that fault is suppressed. Then every
    /// register is written back exactly, so an interrupted `read`,
    /// `nanosleep`, `futex`... restarts transparently when the thread
    /// resumes.
    ///
    /// A signal that stops the thread during the call is not delivered into
    /// it: it is remembered and delivered when the thread is detached, after
    /// its registers are restored. If the called function itself faults, the
    /// registers are restored and [`Error::CallFaulted`] is returned. If the
    /// thread dies, the error is [`Error::Gone`].
    ///
    /// On timeout ([`Error::is_timeout`]) the thread is STILL INSIDE the
    /// call, running with the target's locks possibly held: call
    /// [`Stopped::wait_call`] to keep waiting. If the guard is released
    /// instead, the call is abandoned where it is (the thread is stopped and
    /// its registers restored), which can leave the target's state half
    /// changed, e.g. a lock taken by the function never released.
    ///
    /// Test support (feature `fault-injection`): a tool that dies during
    /// such a call leaves the thread to crash, so ulp itself only uses
    /// [`Stopped::remote_call_returning`] and
    /// [`Stopped::remote_call_sigreturn`].
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn remote_call(
        &mut self,
        tid: Tid,
        func: u64,
        args: &[u64],
        deadline: Instant,
    ) -> Result<u64, Error> {
        self.start_call(tid, func, args, Return::Trap, deadline)
            .map(|(v, _)| v)
    }

    /// `Stopped::remote_call` (test support), but the call returns to the thread's own
    /// code by itself, through the resume routine of `path`, even if this
    /// tool dies at any moment (see [`ReturnPath`] and the `frame` module):
    /// an `rt_sigframe` with the thread's whole state (general registers
    /// with the system call restart rule applied, XSAVE area) is written
    /// below the red zone before the registers are changed, and the call
    /// returns into the routine, which reports completion in `path.done`,
    /// waits a little for the tool, then executes `rt_sigreturn`.
    ///
    /// While the tool is alive the result is the same as
    /// `Stopped::remote_call`: the tool polls the done word, stops the
    /// thread in the routine and writes every register back (XSAVE area
    /// first, then the general registers, so a restartable system call
    /// resumes transparently). If the tool was too slow and the thread had
    /// already returned by itself, it is left as it is. On timeout, releasing
    /// the guard no longer abandons the call: the thread finishes it and
    /// returns by itself.
    pub fn remote_call_returning(
        &mut self,
        tid: Tid,
        func: u64,
        args: &[u64],
        path: &ReturnPath,
        deadline: Instant,
    ) -> Result<u64, Error> {
        self.start_call(tid, func, args, Return::Path(path), deadline)
            .map(|(v, _)| v)
    }

    /// A remote call in a process that has no resume routine (yet): the
    /// runtime's loading. Calls `func(data, args...)`, `data` being the
    /// address of a copy of `data` on the thread's stack, and returns
    /// through `sigreturn`: the address of [`SIGRETURN_CODE`] in the target
    /// (glibc's `__restore_rt`, the restorer of its signal handlers). The
    /// frame written below the red zone holds the thread's whole state and
    /// its signal mask, and leaves its alternate signal stack alone, so a
    /// tool that dies at any moment leaves a thread that finishes the call
    /// and goes back to its own code by itself, as from a signal handler.
    ///
    /// While the tool lives, the thread runs under PTRACE_SYSCALL until it
    /// enters that `rt_sigreturn` with `rsp` at the frame. There `then` may
    /// name a resume routine that the call made available (the runtime just
    /// loaded): the thread is then sent into it instead, with the frame
    /// completed, and the call ends as [`Stopped::remote_call_returning`]
    /// does (registers written back by the tool, so an interrupted system
    /// call restarts exactly). Without one, the `rt_sigreturn` runs: the
    /// thread is back in its own code with the restart rule applied (see
    /// the `frame` module: a relative sleep restarts whole).
    ///
    /// The call's return value is lost (`rt_sigreturn` takes `rax`); the
    /// result is whether `then` gave a resume routine. The thread stays
    /// stopped after the call.
    #[allow(clippy::too_many_arguments)]
    pub fn remote_call_sigreturn(
        &mut self,
        tid: Tid,
        func: u64,
        data: &[u8],
        args: &[u64],
        sigreturn: u64,
        then: &mut dyn FnMut() -> Option<ReturnPath>,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut code = [0u8; SIGRETURN_CODE.len()];
        self.peek(sigreturn, &mut code)?;
        if code != SIGRETURN_CODE {
            return Err(Error::Invalid {
                pid: self.pid,
                what: format!(
                    "no rt_sigreturn sequence at {sigreturn:#x} (found {:02x?})",
                    code
                ),
            });
        }
        let ret = Return::Sigreturn {
            at: sigreturn,
            data,
            then,
        };
        self.start_call(tid, func, args, ret, deadline)
            .map(|(_, resumed)| resumed)
    }

    fn start_call(
        &mut self,
        tid: Tid,
        func: u64,
        args: &[u64],
        how: Return<'_>,
        deadline: Instant,
    ) -> Result<(u64, bool), Error> {
        let pid = self.pid;
        let with_data = matches!(how, Return::Sigreturn { .. });
        if args.len() + usize::from(with_data) > 6 {
            return Err(Error::Invalid {
                pid,
                what: format!("remote_call takes at most 6 arguments, got {}", args.len()),
            });
        }
        let i = self.stopped_index(tid)?;
        self.held[i].regs = None;
        let regs = sys::get_regs(tid).map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?;
        let xstate = sys::get_xstate(tid)
            .map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGSET(NT_X86_XSTATE)", e))?;

        // Frame: skip the red zone, align down to 16, push the return
        // address. At the callee's first instruction `rsp % 16 == 8`, as
        // after a `call` from aligned code. With a return path the frame
        // also holds the rt_sigframe, written before any register changes:
        // a tool that dies from here on leaves a thread that runs the call
        // and returns by itself.
        let mut data_addr = None;
        let (sp, ret) = match &how {
            Return::Trap => {
                let sp = (regs.rsp.wrapping_sub(RED_ZONE) & !0xf).wrapping_sub(8);
                sys::poke_word(tid, sp, 0).map_err(|e| self.mem_error(tid, sp, 8, true, e))?;
                (sp, None)
            }
            Return::Path(p) => {
                let cookie = next_cookie();
                let wait_us = frame::WAIT.as_micros() as u64;
                let f = frame::build(&regs, &xstate, p, cookie, wait_us);
                self.write_frame(tid, f.addr, &f.bytes)?;
                let ret = SelfReturn {
                    path: **p,
                    uc: f.uc,
                    cookie,
                };
                (f.addr, Some(ret))
            }
            Return::Sigreturn { at, data, .. } => {
                let sigmask = sys::get_sigmask(tid)
                    .map_err(|e| self.ptrace_error(tid, "PTRACE_GETSIGMASK", e))?;
                let path = ReturnPath {
                    routine: *at,
                    routine_end: at + SIGRETURN_CODE.len() as u64,
                    done: 0,
                };
                let extra = frame::Extra {
                    sigmask: Some(sigmask),
                    data,
                };
                let f = frame::build_with(&regs, &xstate, &path, 0, 0, &extra);
                self.write_frame(tid, f.addr, &f.bytes)?;
                data_addr = Some(f.data);
                let ret = SelfReturn {
                    path,
                    uc: f.uc,
                    cookie: 0,
                };
                (f.addr, Some(ret))
            }
        };

        let mut r = regs;
        r.rip = func;
        r.rsp = sp;
        // Not in a system call any more: the kernel must not apply its
        // restart rule (rewind rip by 2) to our call.
        r.orig_rax = u64::MAX;
        // For variadic callees: no vector registers used for arguments.
        r.rax = 0;
        for (slot, &arg) in [
            &mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.rcx, &mut r.r8, &mut r.r9,
        ]
        .into_iter()
        .zip(data_addr.iter().chain(args))
        {
            *slot = arg;
        }
        // The ABI wants DF clear at a call; never single-step our call.
        r.eflags &= !(EFLAGS_DF | EFLAGS_TF);
        sys::set_regs(tid, &r).map_err(|e| self.ptrace_error(tid, "PTRACE_SETREGS", e))?;
        self.held[i].call = Some(Call {
            regs,
            xstate,
            sp,
            func,
            ret,
        });

        // Resuming with signal 0 also suppresses the signal of a
        // signal-delivery-stop we are in (it is in `owed` if it is not ours).
        let resumed = if with_data {
            let options = if self.options.suspend_seccomp {
                sys::PTRACE_O_SUSPEND_SECCOMP
            } else {
                0
            };
            sys::set_options(tid, options | sys::PTRACE_O_TRACESYSGOOD)
                .and_then(|()| sys::cont_syscall(tid, 0))
        } else {
            sys::cont(tid, 0)
        };
        if let Err(e) = resumed {
            let err = self.ptrace_error(tid, "PTRACE_CONT", e);
            let _ = self.restore_call(i);
            return Err(err);
        }
        self.held[i].stop = Stop::Running;
        match how {
            Return::Sigreturn { at, then, .. } => {
                let uc = ret.map_or(0, |r| r.uc);
                self.finish_sigreturn(tid, at, uc, then, deadline)
                    .map(|resumed| (0, resumed))
            }
            _ => self.finish_call(tid, deadline).map(|v| (v, false)),
        }
    }

    /// [`Stopped::remote_call_sigreturn`] once the call runs: follows the
    /// thread from system call to system call until it enters the
    /// `rt_sigreturn` at `at` with `rsp == uc`, then sends it into the
    /// resume routine `then` names, or lets the `rt_sigreturn` run.
    fn finish_sigreturn(
        &mut self,
        tid: Tid,
        at: u64,
        uc: u64,
        then: &mut dyn FnMut() -> Option<ReturnPath>,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let end = at + SIGRETURN_CODE.len() as u64;
        // Fault injection for the tests (crates/ulp/tests/inject.rs): the
        // tool dies at the Nth system call stop of the call, the thread in
        // the middle of it. Not in a release build.
        #[cfg(feature = "fault-injection")]
        let mut kill_at: Option<u32> = std::env::var("ULP_TEST_KILL_AT_SYSCALL")
            .ok()
            .and_then(|v| v.parse().ok());
        // Stopped at the entry of our rt_sigreturn, then at its exit.
        let mut returning = false;
        loop {
            let (i, now) = match self.next_syscall_stop(tid, deadline)? {
                Some(x) => x,
                None => {
                    sys::cont_syscall(tid, 0)
                        .map_err(|e| self.ptrace_error(tid, "PTRACE_SYSCALL", e))?;
                    continue;
                }
            };
            #[cfg(feature = "fault-injection")]
            if let Some(n) = kill_at.as_mut() {
                if *n == 0 {
                    // SAFETY: kill(2) on our own pid has no memory-safety
                    // preconditions.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                }
                *n -= 1;
            }
            if returning {
                // The rt_sigreturn is done: the thread is in its own state.
                self.held[i].call = None;
                self.held[i].stop = Stop::Event;
                self.held[i].regs = None;
                return Ok(false);
            }
            let entering = now.orig_rax == libc::SYS_rt_sigreturn as u64
                && now.rax == (-libc::ENOSYS) as u64
                && now.rip == end
                && now.rsp == uc;
            if !entering {
                sys::cont_syscall(tid, 0)
                    .map_err(|e| self.ptrace_error(tid, "PTRACE_SYSCALL", e))?;
                continue;
            }
            self.held[i].stop = Stop::Event;
            let Some(path) = then() else {
                returning = true;
                sys::cont_syscall(tid, 0)
                    .map_err(|e| self.ptrace_error(tid, "PTRACE_SYSCALL", e))?;
                self.held[i].stop = Stop::Running;
                continue;
            };
            // Into the resume routine instead, as if the call had returned
            // there: complete the frame's scratch area, skip the system call.
            let cookie = next_cookie();
            let wait_us = frame::WAIT.as_micros() as u64;
            let mut scratch = [0u8; 24];
            scratch[..8].copy_from_slice(&cookie.to_le_bytes());
            scratch[8..16].copy_from_slice(&path.done.to_le_bytes());
            scratch[16..].copy_from_slice(&wait_us.to_le_bytes());
            self.write_frame(tid, uc + frame::COOKIE, &scratch)?;
            let mut r = now;
            r.orig_rax = u64::MAX;
            r.rip = path.routine;
            sys::set_regs(tid, &r).map_err(|e| self.ptrace_error(tid, "PTRACE_SETREGS", e))?;
            let ret = SelfReturn { path, uc, cookie };
            if let Some(c) = self.held[i].call.as_mut() {
                c.ret = Some(ret);
            }
            sys::cont(tid, 0).map_err(|e| self.ptrace_error(tid, "PTRACE_CONT", e))?;
            self.held[i].stop = Stop::Running;
            self.finish_returning(tid, ret, deadline)?;
            return Ok(true);
        }
    }

    /// Waits for the next system call stop of a thread resumed with
    /// PTRACE_SYSCALL inside a call: `Some((index, registers))` there,
    /// `None` after another stop that needs the thread resumed (a group-stop,
    /// a leftover interrupt, someone else's signal, kept for detach). A
    /// crash of the callee takes the thread back to its own state and is
    /// the error.
    fn next_syscall_stop(
        &mut self,
        tid: Tid,
        deadline: Instant,
    ) -> Result<Option<(usize, libc::user_regs_struct)>, Error> {
        let pid = self.pid;
        let (i, status) = self.next_call_stop(tid, deadline)?;
        match status {
            WaitStatus::Exited(_) | WaitStatus::Killed(_) => Err(self.lost(tid)),
            WaitStatus::EventStop { .. } | WaitStatus::OtherEvent { .. } => Ok(None),
            WaitStatus::SyscallStop => {
                let now =
                    sys::get_regs(tid).map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?;
                Ok(Some((i, now)))
            }
            WaitStatus::SignalStop { sig } => {
                let info = sys::get_siginfo(tid)
                    .map_err(|e| self.ptrace_error(tid, "PTRACE_GETSIGINFO", e))?;
                if is_fault(sig) && info.si_code > 0 {
                    let now = sys::get_regs(tid)
                        .map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?;
                    self.held[i].stop = Stop::Signal(sig);
                    self.restore_call(i)?;
                    return Err(call_faulted(pid, tid, sig, &info, now.rip));
                }
                self.held[i].owed.push(info);
                Ok(None)
            }
        }
    }

    /// Keeps waiting for a remote call on `tid` that timed out earlier.
    pub fn wait_call(&mut self, tid: Tid, deadline: Instant) -> Result<u64, Error> {
        match self.held.iter().find(|h| h.tid == tid) {
            Some(h) if h.call.is_some() && h.stop == Stop::Running => {
                self.finish_call(tid, deadline)
            }
            _ => Err(Error::NotHeld {
                pid: self.pid,
                tid,
                why: "no remote call is running on this thread",
            }),
        }
    }

    /// Writes a call frame into the thread's stack: process_vm_writev, or
    /// word by word with PTRACE_POKEDATA when that is refused.
    fn write_frame(&self, tid: Tid, addr: u64, bytes: &[u8]) -> Result<(), Error> {
        if crate::mem::write_mem(self.pid, addr, bytes).is_ok() {
            return Ok(());
        }
        for (k, w) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..w.len()].copy_from_slice(w);
            let a = addr + 8 * k as u64;
            sys::poke_word(tid, a, u64::from_le_bytes(word))
                .map_err(|e| self.mem_error(tid, a, bytes.len(), true, e))?;
        }
        Ok(())
    }

    /// The next stop of `tid`, running a remote call, and its index in the
    /// guard; a timeout says the thread is still inside the call.
    fn next_call_stop(
        &mut self,
        tid: Tid,
        deadline: Instant,
    ) -> Result<(usize, WaitStatus), Error> {
        let status =
            match sys::wait_thread(tid, deadline) {
                Ok(Some(s)) => s,
                Ok(None) => return Err(Error::Timeout {
                    pid: self.pid,
                    tid: Some(tid),
                    op: "waiting for a remote call to return (the thread is still inside the call)"
                        .into(),
                }),
                Err(_) => return Err(self.lost(tid)),
            };
        let i = self.index(tid).ok_or_else(|| self.lost(tid))?;
        Ok((i, status))
    }

    fn finish_call(&mut self, tid: Tid, deadline: Instant) -> Result<u64, Error> {
        let ret = self
            .index(tid)
            .and_then(|i| self.held[i].call.as_ref())
            .and_then(|c| c.ret);
        if let Some(ret) = ret {
            return self.finish_returning(tid, ret, deadline);
        }
        let pid = self.pid;
        loop {
            let (i, status) = self.next_call_stop(tid, deadline)?;
            match status {
                WaitStatus::Exited(_) | WaitStatus::Killed(_) => return Err(self.lost(tid)),
                // A leftover interrupt, or a group-stop that began during
                // the call: finish the call first (at detach the kernel puts
                // the thread back into the group-stop if it is still on).
                WaitStatus::EventStop { .. }
                | WaitStatus::OtherEvent { .. }
                | WaitStatus::SyscallStop => {
                    sys::cont(tid, 0).map_err(|e| self.ptrace_error(tid, "PTRACE_CONT", e))?;
                }
                WaitStatus::SignalStop { sig } => {
                    let info = sys::get_siginfo(tid)
                        .map_err(|e| self.ptrace_error(tid, "PTRACE_GETSIGINFO", e))?;
                    if sig == libc::SIGSEGV || (is_fault(sig) && info.si_code > 0) {
                        let now = sys::get_regs(tid)
                            .map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?;
                        let sp = self.held[i].call.as_ref().map_or(0, |c| c.sp);
                        let returned =
                            sig == libc::SIGSEGV && now.rip == 0 && now.rsp == sp.wrapping_add(8);
                        if returned || info.si_code > 0 {
                            // Our return (or a crash of the callee): the
                            // thread stays in this signal-delivery-stop and
                            // the signal is dropped at detach.
                            self.held[i].stop = Stop::Signal(sig);
                            self.restore_call(i)?;
                            if returned {
                                return Ok(now.rax);
                            }
                            return Err(call_faulted(pid, tid, sig, &info, now.rip));
                        }
                    }
                    // Someone else's signal: deliver it after the call, once
                    // the registers are back.
                    self.held[i].owed.push(info);
                    sys::cont(tid, 0).map_err(|e| self.ptrace_error(tid, "PTRACE_CONT", e))?;
                }
            }
        }
    }

    /// [`Stopped::finish_call`] for a call that returns by itself: polls the
    /// done word (and the thread's stops) until the call has returned into
    /// the resume routine, then stops the thread and takes it from there.
    fn finish_returning(
        &mut self,
        tid: Tid,
        ret: SelfReturn,
        deadline: Instant,
    ) -> Result<u64, Error> {
        let pid = self.pid;
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        let mut interrupted = false;
        loop {
            match sys::wait_thread(tid, Instant::now()) {
                Err(_) => return Err(self.lost(tid)),
                Ok(Some(status)) => {
                    if let Some(v) = self.returning_stop(tid, ret, status)? {
                        return Ok(v);
                    }
                    continue;
                }
                Ok(None) => {}
            }
            if !interrupted && self.call_result(ret)?.is_some() {
                // Returned: stop the thread (in the routine, normally).
                if let Err(e) = sys::interrupt(tid) {
                    return Err(self.ptrace_error(tid, "PTRACE_INTERRUPT", e));
                }
                interrupted = true;
            }
            let now = Instant::now();
            // Once interrupted, the stop comes in microseconds; give it a
            // little more than the deadline if need be.
            let limit = if interrupted {
                deadline.max(start + DETACH_GRACE)
            } else {
                deadline
            };
            if now >= limit {
                return Err(Error::Timeout {
                    pid,
                    tid: Some(tid),
                    op: "waiting for a remote call to return (the thread is still inside the call)"
                        .into(),
                });
            }
            if now - start < Duration::from_micros(200) {
                std::thread::yield_now();
            } else {
                sys::nap_for(nap.min(limit - now));
                nap = (nap * 2).min(Duration::from_micros(100));
            }
        }
    }

    /// The call's return value once the resume routine has reported it.
    fn call_result(&self, ret: SelfReturn) -> Result<Option<u64>, Error> {
        let mut b = [0u8; 16];
        crate::mem::read_mem(self.pid, ret.path.done, &mut b)?;
        let cookie = u64::from_le_bytes(b[..8].try_into().unwrap());
        Ok((cookie == ret.cookie).then(|| u64::from_le_bytes(b[8..].try_into().unwrap())))
    }

    /// One stop of a thread running a call that returns by itself. Returns
    /// the call's value when the call is over (the thread then stays
    /// stopped), `None` when the thread was resumed to go on.
    fn returning_stop(
        &mut self,
        tid: Tid,
        ret: SelfReturn,
        status: WaitStatus,
    ) -> Result<Option<u64>, Error> {
        let pid = self.pid;
        let i = self.index(tid).ok_or_else(|| self.lost(tid))?;
        let sig = match status {
            WaitStatus::Exited(_) | WaitStatus::Killed(_) => return Err(self.lost(tid)),
            WaitStatus::EventStop { .. }
            | WaitStatus::OtherEvent { .. }
            | WaitStatus::SyscallStop => None,
            WaitStatus::SignalStop { sig } => Some(sig),
        };
        if let Some(sig) = sig {
            let info = sys::get_siginfo(tid)
                .map_err(|e| self.ptrace_error(tid, "PTRACE_GETSIGINFO", e))?;
            if is_fault(sig) && info.si_code > 0 {
                // The callee crashed: take the thread back to its own state.
                let now =
                    sys::get_regs(tid).map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?;
                self.held[i].stop = Stop::Signal(sig);
                self.restore_call(i)?;
                return Err(call_faulted(pid, tid, sig, &info, now.rip));
            }
            // Someone else's signal: delivered at detach, once the thread
            // has its registers back.
            self.held[i].owed.push(info);
        }
        let Some(value) = self.call_result(ret)? else {
            // Still inside the call (a leftover interrupt, a group-stop
            // that began during the call, a signal): let it go on.
            sys::cont(tid, 0).map_err(|e| self.ptrace_error(tid, "PTRACE_CONT", e))?;
            return Ok(None);
        };
        self.held[i].stop = sig.map_or(Stop::Event, Stop::Signal);
        let now = sys::get_regs(tid).map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?;
        if ret.holds(&now) {
            self.restore_call(i)?;
        } else {
            // Too slow: the routine timed out and the thread returned to its
            // own code by rt_sigreturn, with its own state.
            self.held[i].call = None;
        }
        self.held[i].regs = None;
        Ok(Some(value))
    }

    /// Writes back the registers saved by `remote_call` (thread must be
    /// stopped). The XSAVE area first: a tool killed between the two writes
    /// leaves a thread whose general registers still point into the call
    /// (for a call that returns by itself, at its resume routine, whose
    /// rt_sigreturn restores everything again).
    fn restore_call(&mut self, i: usize) -> Result<(), Error> {
        let Some(h) = self.held.get(i) else {
            return Ok(());
        };
        let tid = h.tid;
        let Some(call) = &h.call else { return Ok(()) };
        sys::set_xstate(tid, &call.xstate).map_err(|e| {
            self.ptrace_error(tid, "PTRACE_SETREGSET(NT_X86_XSTATE) (restoring)", e)
        })?;
        sys::set_regs(tid, &call.regs)
            .map_err(|e| self.ptrace_error(tid, "PTRACE_SETREGS (restoring)", e))?;
        self.held[i].call = None;
        Ok(())
    }

    /// Reads code or data bytes with PTRACE_PEEKDATA (works on pages without
    /// read permission). Any stopped thread of the guard is used.
    pub fn peek(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let tid = self.any_stopped()?;
        let mut off = 0usize;
        while off < buf.len() {
            let a = self.offset_addr(addr, off, buf.len())?;
            let base = a & !7;
            let skip = (a - base) as usize;
            let n = (8 - skip).min(buf.len() - off);
            let word = sys::peek_word(tid, base)
                .map_err(|e| self.mem_error(tid, addr, buf.len(), false, e))?;
            buf[off..off + n].copy_from_slice(&word.to_le_bytes()[skip..skip + n]);
            off += n;
        }
        Ok(())
    }

    /// Writes code bytes with PTRACE_POKEDATA (aligned word
    /// read-modify-write), which works on read-only and W^X-locked pages
    /// where `write_mem` fails. Any stopped thread of the guard is used;
    /// threads not held by this guard keep running meanwhile.
    pub fn poke(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        let tid = self.any_stopped()?;
        let mut off = 0usize;
        while off < data.len() {
            let a = self.offset_addr(addr, off, data.len())?;
            let base = a & !7;
            let skip = (a - base) as usize;
            let n = (8 - skip).min(data.len() - off);
            let mut word = if n == 8 {
                [0u8; 8]
            } else {
                sys::peek_word(tid, base)
                    .map_err(|e| self.mem_error(tid, addr, data.len(), true, e))?
                    .to_le_bytes()
            };
            word[skip..skip + n].copy_from_slice(&data[off..off + n]);
            sys::poke_word(tid, base, u64::from_le_bytes(word))
                .map_err(|e| self.mem_error(tid, addr, data.len(), true, e))?;
            off += n;
        }
        Ok(())
    }

    /// Writes `data` at `addr` with one write of `/proc/PID/mem` (the
    /// kernel's forced access, like PTRACE_POKEDATA: works on read-only
    /// code): the bytes change in one system call, so a tool killed at any
    /// moment leaves them all old or all new. Falls back to
    /// [`Stopped::poke`] when `/proc/PID/mem` is refused and `data` lies
    /// within one aligned word (one poke is just as whole); otherwise the
    /// error.
    pub fn write_code_at_once(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let tid = self.any_stopped()?;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", self.pid))
            .and_then(|f| f.write_at(data, addr));
        match written {
            Ok(n) if n == data.len() => Ok(()),
            _ if (addr & 7) + data.len() as u64 <= 8 => self.poke(addr, data),
            Ok(_) => Err(self.mem_error(tid, addr, data.len(), true, Errno(libc::EIO))),
            Err(e) => Err(self.mem_error(
                tid,
                addr,
                data.len(),
                true,
                Errno(e.raw_os_error().unwrap_or(libc::EIO)),
            )),
        }
    }

    /// Detaches every thread (each after its registers are restored and with
    /// the signals it is owed re-delivered) and reports the first failure.
    pub fn release(mut self) -> Result<(), Error> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), Error> {
        // In the order the threads were stopped: each thread's pause then
        // lasts about as long as every other's, instead of the first one
        // stopped also being the last one released.
        let mut first = None;
        for h in std::mem::take(&mut self.held) {
            if let Err(e) = self.detach_one(h) {
                first.get_or_insert(e);
            }
        }
        reap_exited();
        first.map_or(Ok(()), Err)
    }

    fn detach_one(&mut self, mut h: Held) -> Result<(), Error> {
        let pid = self.pid;
        let tid = h.tid;
        if h.stop == Stop::Running {
            // A remote call that timed out, or an interrupt that never
            // landed: stop the thread before anything else.
            let _ = sys::interrupt(tid);
            let deadline = Instant::now() + DETACH_GRACE;
            match sys::wait_thread(tid, deadline) {
                Ok(None) if procfs::thread_ended(pid, tid) => {
                    reap_later(tid);
                    return Ok(());
                }
                Ok(None) => {
                    // Cannot detach a running tracee. It stays traced by
                    // this OS thread (and stops once the interrupt lands)
                    // until this OS thread exits.
                    return Err(Error::Timeout {
                        pid,
                        tid: Some(tid),
                        op: "stopping the thread to detach from it".into(),
                    });
                }
                Err(_) | Ok(Some(WaitStatus::Exited(_) | WaitStatus::Killed(_))) => return Ok(()),
                Ok(Some(
                    WaitStatus::EventStop { .. }
                    | WaitStatus::OtherEvent { .. }
                    | WaitStatus::SyscallStop,
                )) => {
                    h.stop = Stop::Event;
                }
                Ok(Some(WaitStatus::SignalStop { sig })) => {
                    h.stop = Stop::Signal(sig);
                    let ours = match (&h.call, sys::get_regs(tid)) {
                        (Some(c), Ok(r)) => {
                            c.ret.is_none()
                                && sig == libc::SIGSEGV
                                && r.rip == 0
                                && r.rsp == c.sp.wrapping_add(8)
                        }
                        _ => false,
                    };
                    let fault = h.call.is_some()
                        && is_fault(sig)
                        && sys::get_siginfo(tid)
                            .map(|i| i.si_code > 0)
                            .unwrap_or(false);
                    if fault {
                        // The callee crashed: whatever the kind of call, the
                        // thread must get its own state back.
                        if let Some(c) = h.call.as_mut() {
                            c.ret = None;
                        }
                    }
                    if !ours && !fault {
                        if let Ok(info) = sys::get_siginfo(tid) {
                            h.owed.push(info);
                        }
                    }
                }
            }
        }
        if let Some(call) = h.call.take() {
            // A call that returns by itself and is not waiting in its resume
            // routine is left to finish (or has returned already).
            let restore = match sys::get_regs(tid) {
                Ok(now) => restore_on_detach(&call, &now),
                Err(_) => true,
            };
            // Abandon the call: the thread gets its own state back.
            let restored = if restore {
                sys::set_xstate(tid, &call.xstate).and_then(|()| sys::set_regs(tid, &call.regs))
            } else {
                Ok(())
            };
            if let Err(e) = restored {
                if e.0 == libc::ESRCH && self.reap(tid) {
                    return Ok(());
                }
                let err = self.ptrace_error(tid, "restoring registers before detaching", e);
                if err.is_gone() {
                    return Ok(());
                }
                // Detaching now would resume the thread inside our call.
                // Leave it traced (stopped); the kernel detaches it when
                // this OS thread exits.
                return Err(err);
            }
        }
        // Deliver owed signals: the oldest through PTRACE_DETACH when the
        // thread is in a signal-delivery-stop (the kernel then delivers it
        // with the siginfo we set), the rest queued again.
        let mut sig = 0;
        let mut rest: &[libc::siginfo_t] = &h.owed;
        if let (Stop::Signal(_), Some(first)) = (h.stop, h.owed.first()) {
            if sys::set_siginfo(tid, first).is_ok() {
                sig = first.si_signo;
                rest = &h.owed[1..];
            }
        }
        let mut failure = None;
        for info in rest {
            if let Err(e) = sys::reraise(pid, tid, info) {
                let err = self.ptrace_error(tid, "re-raising a signal received while attached", e);
                if !err.is_gone() {
                    failure.get_or_insert(err);
                }
            }
        }
        match sys::detach(tid, sig) {
            Ok(()) => {}
            // Not in a stop: killed meanwhile (another thread's exit, a
            // SIGKILL), so it is exiting or a zombie only we may reap.
            Err(Errno(libc::ESRCH)) if self.reap(tid) => {}
            Err(e) => {
                let err = self.ptrace_error(tid, "PTRACE_DETACH", e);
                if !err.is_gone() {
                    failure.get_or_insert(err);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// For a held thread that a ptrace request found out of its stop
    /// (ESRCH): reaps it if it has exited, as its tracer must (or its
    /// process stays a zombie that its parent cannot reap), or leaves it to
    /// [`reap_later`] when it is still on its way out (tearing its memory
    /// down can take a while on a busy host). True when the thread has
    /// ended; false when it is still there (then it stays traced), after
    /// one more try to detach it if it stopped.
    fn reap(&self, tid: Tid) -> bool {
        match sys::wait_thread(tid, Instant::now() + REAP_GRACE) {
            Ok(Some(WaitStatus::Exited(_) | WaitStatus::Killed(_))) | Err(_) => true,
            Ok(Some(WaitStatus::SignalStop { sig })) => sys::detach(tid, sig).is_ok(),
            Ok(Some(_)) => sys::detach(tid, 0).is_ok(),
            Ok(None) if procfs::thread_ended(self.pid, tid) => {
                reap_later(tid);
                true
            }
            Ok(None) => false,
        }
    }

    // ---- attaching ----

    fn holds(&self, tid: Tid) -> bool {
        self.index(tid).is_some()
    }

    fn index(&self, tid: Tid) -> Option<usize> {
        self.held.binary_search_by_key(&tid, |h| h.tid).ok()
    }

    fn stopped_index(&self, tid: Tid) -> Result<usize, Error> {
        let pid = self.pid;
        match self.index(tid) {
            None => Err(Error::NotHeld {
                pid,
                tid,
                why: "this guard does not hold that thread",
            }),
            Some(i) if self.held[i].stop == Stop::Running => Err(Error::NotHeld {
                pid,
                tid,
                why: "the thread is running (a remote call timed out, or it never stopped)",
            }),
            Some(i) => Ok(i),
        }
    }

    fn any_stopped(&self) -> Result<Tid, Error> {
        self.held
            .iter()
            .find(|h| h.stop != Stop::Running)
            .map(|h| h.tid)
            .ok_or(Error::NotHeld {
                pid: self.pid,
                tid: self.pid,
                why: "no thread of this guard is stopped",
            })
    }

    fn offset_addr(&self, addr: u64, off: usize, len: usize) -> Result<u64, Error> {
        addr.checked_add(off as u64).ok_or_else(|| Error::Invalid {
            pid: self.pid,
            what: format!("range {addr:#x}+{len} wraps around the address space"),
        })
    }

    /// Seizes and interrupts all of `tids` first, then waits for each: the
    /// interrupts land in parallel.
    fn attach_batch(&mut self, tids: &[Tid], deadline: Instant) -> Result<(), Error> {
        let pid = self.pid;
        let mut seized = Vec::new();
        let mut pending = Vec::new();
        let mut failure = None;
        for &tid in tids {
            if self.holds(tid) || self.skipped.contains(&tid) {
                continue;
            }
            let flags = if self.options.suspend_seccomp {
                sys::PTRACE_O_SUSPEND_SECCOMP
            } else {
                0
            };
            match sys::seize_with(tid, flags) {
                Ok(()) => {}
                Err(Errno(libc::ESRCH)) => {
                    self.skipped.insert(tid);
                    continue;
                }
                // The kernel also refuses exiting threads with EPERM.
                Err(Errno(libc::EPERM)) if procfs::thread_ended(pid, tid) => {
                    self.skipped.insert(tid);
                    continue;
                }
                Err(Errno(libc::EPERM))
                    if self.options.suspend_seccomp
                        && procfs::self_cannot_suspend_seccomp().is_some() =>
                {
                    failure = Some(Error::SeccompSuspendDenied {
                        pid,
                        tid,
                        why: procfs::self_cannot_suspend_seccomp().unwrap_or_default(),
                    });
                    break;
                }
                Err(Errno(libc::EINVAL)) if self.options.suspend_seccomp => {
                    failure = Some(Error::SeccompSuspendDenied {
                        pid,
                        tid,
                        why: "the kernel does not support it (it needs CONFIG_CHECKPOINT_RESTORE \
                              and CONFIG_SECCOMP)"
                            .into(),
                    });
                    break;
                }
                Err(Errno(libc::EPERM)) => {
                    failure = Some(Error::AttachDenied {
                        pid,
                        tid,
                        tracer: procfs::tracer_of(pid, tid),
                        ptrace_scope: procfs::ptrace_scope(),
                    });
                    break;
                }
                Err(e) => {
                    failure = Some(self.ptrace_error(tid, "PTRACE_SEIZE", e));
                    break;
                }
            }
            // Seized: from now on the thread is in `held`, so that release
            // or Drop detaches it whatever happens next.
            let at = self.held.partition_point(|h| h.tid < tid);
            self.held.insert(
                at,
                Held {
                    tid,
                    stop: Stop::Running,
                    owed: Vec::new(),
                    call: None,
                    regs: None,
                },
            );
            seized.push(tid);
        }
        // Stop them all in one quick pass only now that all are seized: the
        // pause each thread feels starts at its interrupt, so the seizing
        // (the slower part) stays out of it.
        for tid in seized {
            match sys::interrupt(tid) {
                // ESRCH: the thread is exiting; the wait below reports it.
                Ok(()) | Err(Errno(libc::ESRCH)) => pending.push(tid),
                Err(e) => {
                    // Still held (Running): release or Drop stops and
                    // detaches it.
                    failure.get_or_insert(self.ptrace_error(tid, "PTRACE_INTERRUPT", e));
                }
            }
        }
        for tid in pending {
            if let Err(e) = self.wait_attach_stop(tid, deadline) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn wait_attach_stop(&mut self, tid: Tid, deadline: Instant) -> Result<(), Error> {
        let status = match sys::wait_thread(tid, deadline) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(Error::Timeout {
                    pid: self.pid,
                    tid: Some(tid),
                    op: "waiting for the thread to stop after PTRACE_INTERRUPT".into(),
                })
            }
            Err(_) => WaitStatus::Exited(0),
        };
        let Some(i) = self.index(tid) else {
            return Ok(());
        };
        match status {
            WaitStatus::Exited(_) | WaitStatus::Killed(_) => {
                self.held.remove(i);
                self.skipped.insert(tid);
            }
            WaitStatus::EventStop { sig } => {
                self.held[i].stop = Stop::Event;
                if sig == libc::SIGTRAP {
                    self.held[i].regs = self.rerun_non_restarting_syscall(tid);
                }
            }
            WaitStatus::OtherEvent { .. } | WaitStatus::SyscallStop => {
                self.held[i].stop = Stop::Event
            }
            WaitStatus::SignalStop { sig } => {
                // A signal was on its way in when we arrived: keep the
                // thread in this stop and deliver the signal at detach.
                let info = sys::get_siginfo(tid)
                    .map_err(|e| self.ptrace_error(tid, "PTRACE_GETSIGINFO", e))?;
                self.held[i].stop = Stop::Signal(sig);
                self.held[i].owed.push(info);
            }
        }
        Ok(())
    }

    /// If `tid` stopped on its way out of a system call that failed with
    /// EINTR only because we interrupted it (see [`NON_RESTARTING`]), point
    /// it back at its `syscall` instruction so the call runs again when the
    /// thread resumes. Best effort: on any doubt, leave the thread as is.
    ///
    /// Returns the thread's registers as they are now (for the cache), or
    /// `None` when they could not be read or set.
    fn rerun_non_restarting_syscall(&self, tid: Tid) -> Option<libc::user_regs_struct> {
        let mut r = sys::get_regs(tid).ok()?;
        let nr = r.orig_rax as i64;
        if r.rax as i64 != -(libc::EINTR as i64) || !NON_RESTARTING.contains(&nr) {
            return Some(r);
        }
        // A real signal is waiting: the program would see EINTR natively.
        if procfs::unblocked_signal_pending(self.pid, tid) {
            return Some(r);
        }
        let mut insn = [0u8; 2];
        let at = r.rip.checked_sub(2)?;
        if self.peek_with(tid, at, &mut insn).is_err() || insn != SYSCALL_INSN {
            return Some(r);
        }
        r.rip = at;
        r.rax = r.orig_rax;
        sys::set_regs(tid, &r).ok().map(|()| r)
    }

    fn peek_with(&self, tid: Tid, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        for (k, b) in buf.iter_mut().enumerate() {
            let a = addr + k as u64;
            let word = sys::peek_word(tid, a & !7)?;
            *b = word.to_le_bytes()[(a & 7) as usize];
        }
        Ok(())
    }

    // ---- errors ----

    /// A thread is gone from under us: drop it and say who is gone.
    fn lost(&mut self, tid: Tid) -> Error {
        if let Some(i) = self.index(tid) {
            self.held.remove(i);
        }
        let pid = self.pid;
        if procfs::process_alive(pid) {
            Error::Gone {
                pid,
                tid: Some(tid),
            }
        } else {
            Error::Gone { pid, tid: None }
        }
    }

    fn ptrace_error(&self, tid: Tid, op: &'static str, e: Errno) -> Error {
        let pid = self.pid;
        if e.0 == libc::ESRCH {
            if !procfs::process_alive(pid) {
                return Error::Gone { pid, tid: None };
            }
            if procfs::thread_ended(pid, tid) {
                return Error::Gone {
                    pid,
                    tid: Some(tid),
                };
            }
        }
        Error::Ptrace {
            pid,
            tid,
            op,
            errno: e.0,
        }
    }

    fn mem_error(&self, tid: Tid, addr: u64, len: usize, write: bool, e: Errno) -> Error {
        if e.0 == libc::ESRCH {
            return self.ptrace_error(
                tid,
                if write {
                    "PTRACE_POKEDATA"
                } else {
                    "PTRACE_PEEKDATA"
                },
                e,
            );
        }
        Error::Memory {
            pid: self.pid,
            addr,
            len,
            write,
            errno: e.0,
        }
    }
}

impl std::fmt::Debug for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let threads: Vec<String> = self
            .held
            .iter()
            .map(|h| {
                let call = if h.call.is_some() { " in-call" } else { "" };
                format!("{} {:?}{call}", h.tid, h.stop)
            })
            .collect();
        f.debug_struct("Stopped")
            .field("pid", &self.pid)
            .field("threads", &threads)
            .finish()
    }
}

impl Drop for Stopped {
    /// Best effort: restore and detach everything still held. Never panics;
    /// errors are dropped (use `release` to see them).
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

/// The error for a callee that crashed with the fault signal `sig`
/// (kernel-generated: `info.si_code > 0`, so `si_addr` is meaningful).
fn call_faulted(pid: Pid, tid: Tid, sig: i32, info: &libc::siginfo_t, rip: u64) -> Error {
    // SAFETY: si_addr is valid for kernel-generated fault signals, which is
    // what the callers checked (si_code > 0).
    let addr = unsafe { info.si_addr() } as u64;
    Error::CallFaulted {
        pid,
        tid,
        signal: sig,
        rip,
        addr,
    }
}

//! Remote calls on a held thread: the three flavours (returning to address
//! 0, tests only; returning by itself through the runtime's resume routine;
//! returning through glibc's `rt_sigreturn`, for loading the runtime), the
//! frames they write, following the call to its end, and restoring the
//! thread's registers. See the parent module for the system call restart
//! rule they keep.

use std::time::{Duration, Instant};

use super::{Stop, Stopped};
use crate::error::Error;
use crate::frame::{self, ReturnPath};
use crate::restart;
use crate::sys::{self, WaitStatus};
use crate::{Pid, RemoteAddr, Tid};

use super::detach::DETACH_GRACE;

/// How long after the done word announced the resume routine's notice
/// its stop may take before the thread is interrupted instead (the
/// routine makes three system calls in between).
const NOTICE_GRACE: Duration = Duration::from_millis(2);

/// Bytes below `rsp` that leaf functions may use without moving `rsp`
/// (System V x86-64 ABI): a remote call's frame starts below them.
const RED_ZONE: u64 = 128;

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

const EFLAGS_TF: u64 = 1 << 8;
const EFLAGS_DF: u64 = 1 << 10;

/// The thread's own state while a remote call runs on it.
pub(super) struct Call {
    pub(super) regs: libc::user_regs_struct,
    pub(super) xstate: Vec<u8>,
    /// `rsp` at the call's entry (it holds the return address: 0, or the
    /// resume routine).
    pub(super) sp: u64,
    /// The function called.
    pub(super) func: u64,
    /// Set when the call returns by itself through a resume routine.
    pub(super) ret: Option<SelfReturn>,
}

/// A call that returns through a [`ReturnPath`].
#[derive(Clone, Copy)]
pub(super) struct SelfReturn {
    path: ReturnPath,
    /// The frame's ucontext: `rsp` in the resume routine.
    uc: u64,
    /// What the routine stores in the done word when this call returned.
    pub(super) cookie: u64,
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
    // (This process's id, asked once: a system call each time otherwise.)
    static ME: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let me = *ME.get_or_init(std::process::id);
    let c = (t ^ (n << 40) ^ (u64::from(me) << 20)).rotate_left(17);
    // Bit 63 is the resume routine's (frame::NOTICE_FLAG).
    (c | 1) & !frame::NOTICE_FLAG
}

/// Whether a call that returns by itself should get its registers back
/// from the tool now that it is stopped with `now`: waiting in the resume
/// routine, or not started yet. Elsewhere it is either inside the callee
/// (it finishes and returns by itself) or back in its own code already.
pub(super) fn restore_on_detach(call: &Call, now: &libc::user_regs_struct) -> bool {
    match &call.ret {
        None => true,
        Some(ret) => ret.holds(now) || (now.rip == call.func && now.rsp == call.sp),
    }
}

pub(super) fn is_fault(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
    )
}

/// One thread of a [`Stopped`] guard, to run remote calls on
/// ([`Stopped::caller`]). It borrows the guard mutably: while a call is
/// set up, runs and is finished, nothing else uses the guard's threads.
/// The thread must be held by the guard and stopped (a timed-out call is
/// still running: [`Caller::wait`]).
pub struct Caller<'a> {
    stopped: &'a mut Stopped,
    tid: Tid,
}

impl Stopped {
    /// Thread `tid` of this guard, to run remote calls on.
    pub fn caller(&mut self, tid: Tid) -> Caller<'_> {
        Caller { stopped: self, tid }
    }
}

impl Caller<'_> {
    /// The thread the calls run on.
    pub fn tid(&self) -> Tid {
        self.tid
    }

    /// Runs `func(args...)` (at most 6 integer arguments, System V ABI) on
    /// the thread and returns its `rax`.
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
    /// [`Caller::wait`] to keep waiting. If the guard is released
    /// instead, the call is abandoned where it is (the thread is stopped and
    /// its registers restored), which can leave the target's state half
    /// changed, e.g. a lock taken by the function never released.
    ///
    /// Test support (feature `fault-injection`): a tool that dies during
    /// such a call leaves the thread to crash, so ulp itself only uses
    /// [`Caller::call_returning`] and [`Caller::call_sigreturn`].
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn call(
        &mut self,
        func: RemoteAddr,
        args: &[u64],
        deadline: Instant,
    ) -> Result<u64, Error> {
        self.stopped
            .start_call(self.tid, func.get(), args, Return::Trap, deadline)
            .map(|(v, _)| v)
    }

    /// `Caller::call` (test support), but the call returns to the thread's own
    /// code by itself, through the resume routine of `path`, even if this
    /// tool dies at any moment (see [`ReturnPath`] and the `frame` module):
    /// an `rt_sigframe` with the thread's whole state (general registers
    /// with the system call restart rule applied, XSAVE area) is written
    /// below the red zone before the registers are changed, and the call
    /// returns into the routine, which reports completion in `path.done`,
    /// waits a little for the tool, then executes `rt_sigreturn`.
    ///
    /// While the tool is alive the result is the same as
    /// `Caller::call`: the tool polls the done word, stops the
    /// thread in the routine and writes every register back (XSAVE area
    /// first, then the general registers, so a restartable system call
    /// resumes transparently). If the tool was too slow and the thread had
    /// already returned by itself, it is left as it is. On timeout, releasing
    /// the guard no longer abandons the call: the thread finishes it and
    /// returns by itself.
    pub fn call_returning(
        &mut self,
        func: RemoteAddr,
        args: &[u64],
        path: &ReturnPath,
        deadline: Instant,
    ) -> Result<u64, Error> {
        self.stopped
            .start_call(self.tid, func.get(), args, Return::Path(path), deadline)
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
    /// completed, and the call ends as [`Caller::call_returning`]
    /// does (registers written back by the tool, so an interrupted system
    /// call restarts exactly). Without one, the `rt_sigreturn` runs: the
    /// thread is back in its own code with the restart rule applied (see
    /// the `frame` module: a relative sleep restarts whole).
    ///
    /// The call's return value is lost (`rt_sigreturn` takes `rax`); the
    /// result is whether `then` gave a resume routine. The thread stays
    /// stopped after the call.
    pub fn call_sigreturn(
        &mut self,
        func: RemoteAddr,
        data: &[u8],
        args: &[u64],
        sigreturn: RemoteAddr,
        then: &mut dyn FnMut() -> Option<ReturnPath>,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut code = [0u8; SIGRETURN_CODE.len()];
        self.stopped.peek(sigreturn, &mut code)?;
        if code != SIGRETURN_CODE {
            return Err(Error::Invalid {
                pid: self.stopped.pid,
                what: format!(
                    "no rt_sigreturn sequence at {sigreturn:#x} (found {:02x?})",
                    code
                ),
            });
        }
        let ret = Return::Sigreturn {
            at: sigreturn.get(),
            data,
            then,
        };
        self.stopped
            .start_call(self.tid, func.get(), args, ret, deadline)
            .map(|(_, resumed)| resumed)
    }

    /// Keeps waiting for a remote call on the thread that timed out earlier.
    pub fn wait(&mut self, deadline: Instant) -> Result<u64, Error> {
        let (s, tid) = (&mut *self.stopped, self.tid);
        match s.held.iter().find(|h| h.tid == tid) {
            Some(h) if h.call.is_some() && h.stop == Stop::Running => s.finish_call(tid, deadline),
            _ => Err(Error::NotHeld {
                pid: s.pid,
                tid,
                why: "no remote call is running on this thread",
            }),
        }
    }
}

impl Stopped {
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
                what: format!(
                    "a remote call takes at most 6 arguments, got {}",
                    args.len()
                ),
            });
        }
        let i = self.stopped_index(tid)?;
        // The registers as the stop found them, when still known.
        let regs = match self.held[i].regs.take() {
            Some(r) => r,
            None => sys::get_regs(tid).map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?,
        };
        let xstate = sys::get_xstate(tid)
            .map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGSET(NT_X86_XSTATE)", e))?;

        // Frame: skip the red zone, align down to 16, push the return
        // address. At the callee's first instruction `rsp % 16 == 8`, as
        // after a `call` from aligned code. With a return path the frame
        // also holds the rt_sigframe, written before any register changes:
        // a tool that dies from here on leaves a thread that runs the call
        // and returns by itself.
        let mut data_addr = None;
        let frame_regs = match &how {
            Return::Trap => regs,
            Return::Path(_) | Return::Sigreturn { .. } => self.frame_regs(tid, &regs)?,
        };
        let (sp, ret) = match &how {
            Return::Trap => {
                let sp = (regs.rsp.wrapping_sub(RED_ZONE) & !0xf).wrapping_sub(8);
                sys::poke_word(tid, sp, 0).map_err(|e| self.mem_error(tid, sp, 8, true, e))?;
                (sp, None)
            }
            Return::Path(p) => {
                let cookie = next_cookie();
                let wait_us = frame::WAIT.as_micros() as u64;
                let f = frame::build(&frame_regs, &xstate, p, cookie, wait_us);
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
                let f = frame::build_with(&frame_regs, &xstate, &path, 0, 0, &extra);
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

    /// The registers a frame that returns by itself restores (through
    /// `rt_sigreturn`, which resets the restart block): a thread waiting in
    /// `restart_syscall` must re-issue the call that is restarted, so its
    /// number goes where the frame's restart rule finds it. A restarted call
    /// whose number the code does not tell cannot return by itself without
    /// failing with EINTR: the call is refused (the thread is left as it is).
    fn frame_regs(
        &self,
        tid: Tid,
        regs: &libc::user_regs_struct,
    ) -> Result<libc::user_regs_struct, Error> {
        if !restart::in_restarted_call(regs) || !frame::restarts(regs) {
            return Ok(*regs);
        }
        match self.restarted_call(tid, regs) {
            Some(nr) => Ok(libc::user_regs_struct {
                orig_rax: nr as u64,
                ..*regs
            }),
            None => Err(Error::Invalid {
                pid: self.pid,
                what: format!(
                    "thread {tid:?} waits in a system call restarted by the kernel \
                     (restart_syscall) whose original call its code does not tell; a call \
                     on it could end that wait with EINTR, so it is not used"
                ),
            }),
        }
    }

    /// [`Caller::call_sigreturn`] once the call runs: follows the
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

    /// Writes a call frame into the thread's stack: process_vm_writev, or
    /// word by word with PTRACE_POKEDATA when that is refused.
    fn write_frame(&self, tid: Tid, addr: u64, bytes: &[u8]) -> Result<(), Error> {
        if crate::mem::write_mem(self.pid, RemoteAddr::new(addr), bytes).is_ok() {
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

    /// [`Stopped::finish_call`] for a call that returns by itself: waits
    /// until the call has returned into the resume routine and the thread
    /// is stopped there, then takes it from there.
    ///
    /// The first 200 µs it looks at the done word (and the thread's stops)
    /// between yields, the fastest way to see a short call end on an idle
    /// machine; then it sleeps until a report of the thread, up to 100 µs
    /// at a time, and looks again. The resume routine stops the thread
    /// itself with its notice ([`frame::NOTICE_SIGNAL`]) when it can, and
    /// says so in the done word ([`frame::NOTICE_FLAG`]): its SIGCHLD ends
    /// the sleep. A thread without the notice is stopped with
    /// PTRACE_INTERRUPT once the done word says the call is over.
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
        // When the done word announced the notice.
        let mut announced: Option<Instant> = None;
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
            let now = Instant::now();
            if !interrupted {
                let late = announced.is_some_and(|t| now - t > NOTICE_GRACE);
                match self.call_result(ret)? {
                    Some((_, true)) if !late => {
                        announced.get_or_insert(now);
                    }
                    Some(_) => {
                        // Returned, and no notice comes (or it is overdue):
                        // stop the thread (in the routine, normally).
                        if let Err(e) = sys::interrupt(tid) {
                            return Err(self.ptrace_error(tid, "PTRACE_INTERRUPT", e));
                        }
                        interrupted = true;
                    }
                    None => {}
                }
            }
            // Once returned, the stop comes in microseconds; give it a
            // little more than the deadline if need be.
            let limit = if interrupted || announced.is_some() {
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
            if interrupted {
                // Its stop is reported with a SIGCHLD: asleep until then
                // (a nap here overslept the stop by tens of µs).
                sys::sleep_until_report(limit - now);
            } else if announced.is_some() {
                sys::sleep_until_report(NOTICE_GRACE.min(limit - now));
            } else if now - start < Duration::from_micros(200) {
                std::thread::yield_now();
            } else {
                sys::sleep_until_report(nap.min(limit - now));
                nap = (nap * 2).min(Duration::from_micros(100));
            }
        }
    }

    /// The call's return value once the resume routine has reported it,
    /// and whether the routine announced its notice.
    fn call_result(&self, ret: SelfReturn) -> Result<Option<(u64, bool)>, Error> {
        let mut b = [0u8; 16];
        crate::mem::read_mem(self.pid, RemoteAddr::new(ret.path.done), &mut b)?;
        let word = u64::from_le_bytes(b[..8].try_into().unwrap());
        let value = u64::from_le_bytes(b[8..].try_into().unwrap());
        Ok((word & !frame::NOTICE_FLAG == ret.cookie)
            .then_some((value, word & frame::NOTICE_FLAG != 0)))
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
        // The resume routine's notice: sent from inside the routine, where
        // the thread then stops.
        let mut notice = false;
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
            // has its registers back. The resume routine's notice is
            // dropped (the process would have ignored it).
            notice = is_notice(sig, &info, ret.cookie);
            if !notice {
                self.held[i].owed.push(info);
            } else {
                // Fault injection for the tests (crates/ulp/tests/faults.rs):
                // the tool dies with the thread in the notice's stop. Not
                // in a release build.
                #[cfg(feature = "fault-injection")]
                if std::env::var_os("ULP_TEST_KILL_AT_NOTICE").is_some() {
                    // SAFETY: kill(2) on our own pid has no memory-safety
                    // preconditions.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                }
            }
        }
        let Some((value, _)) = self.call_result(ret)? else {
            // Still inside the call (a leftover interrupt, a group-stop
            // that began during the call, a signal): let it go on.
            sys::cont(tid, 0).map_err(|e| self.ptrace_error(tid, "PTRACE_CONT", e))?;
            return Ok(None);
        };
        self.held[i].stop = sig.map_or(Stop::Event, Stop::Signal);
        // Stopped on the notice, the thread is in the routine: no need to
        // read its registers to know.
        let holds = notice || {
            let now =
                sys::get_regs(tid).map_err(|e| self.ptrace_error(tid, "PTRACE_GETREGS", e))?;
            ret.holds(&now)
        };
        if holds {
            // Its registers are then the saved ones (kept as known).
            self.restore_call(i)?;
        } else {
            // Too slow: the routine timed out and the thread returned to its
            // own code by rt_sigreturn, with its own state.
            self.held[i].call = None;
            self.held[i].regs = None;
        }
        Ok(Some(value))
    }

    /// Writes back the registers saved by a remote call (thread must be
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
        let regs = call.regs;
        self.held[i].regs = None;
        sys::set_regs(tid, &regs)
            .map_err(|e| self.ptrace_error(tid, "PTRACE_SETREGS (restoring)", e))?;
        self.held[i].call = None;
        // What the thread's registers are now: read back, they are the
        // same (they were read from it), so the next look needs no
        // PTRACE_GETREGS.
        self.held[i].regs = Some(regs);
        Ok(())
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

/// Whether a signal-delivery-stop of a thread returning from a call is the
/// resume routine's notice for the call of `cookie`:
/// [`frame::NOTICE_SIGNAL`], queued by the thread itself with `SI_QUEUE`
/// and the cookie as its value. Nothing else sends that cookie, so no
/// signal of the process's own is ever taken for it.
pub(crate) fn is_notice(sig: i32, info: &libc::siginfo_t, cookie: u64) -> bool {
    // SAFETY: `si_value` is valid for a signal queued with SI_QUEUE.
    sig == frame::NOTICE_SIGNAL
        && info.si_code == libc::SI_QUEUE
        && unsafe { info.si_value() }.sival_ptr as u64 == cookie
}

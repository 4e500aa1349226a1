//! Letting go: every held thread gets its registers back (a remote call
//! left running is stopped and abandoned, or left to return by itself),
//! the signals that arrived meanwhile are delivered again, and it is
//! detached; a thread that was killed meanwhile is reaped, as its tracer
//! must.

use std::time::{Duration, Instant};

use super::call::is_fault;
use super::call::restore_on_detach;
use super::{Held, Stop, Stopped};
use crate::error::Error;
use crate::procfs;
use crate::sys::{self, Errno, WaitStatus};
use crate::Tid;

/// How long `release`/`Drop` wait for a thread that is still running (a
/// remote call that timed out, or an interrupt that never landed) to stop.
pub(super) const DETACH_GRACE: Duration = Duration::from_millis(100);

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
pub(super) fn reap_exited() {
    UNREAPED.with(|u| {
        u.borrow_mut()
            .retain(|&tid| matches!(sys::wait_thread(tid, Instant::now()), Ok(None)))
    });
}

impl Stopped {
    /// Detaches every thread (each after its registers are restored and with
    /// the signals it is owed re-delivered) and reports the first failure.
    pub fn release(mut self) -> Result<(), Error> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), Error> {
        // The threads that were runnable when seized first (they were
        // stopped last, and are the ones that feel a pause: a detach wakes
        // its thread, which may take this OS thread's CPU for a while),
        // then the others, each group in the order it was stopped.
        let mut held = std::mem::take(&mut self.held);
        held.sort_by_key(|h| !h.runnable);
        let mut first = None;
        for h in held {
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
                            // The resume routine's notice is not the
                            // process's: dropped.
                            let notice = h
                                .call
                                .as_ref()
                                .and_then(|c| c.ret)
                                .is_some_and(|r| super::call::is_notice(sig, &info, r.cookie));
                            if !notice {
                                h.owed.push(info);
                            }
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
}

impl Drop for Stopped {
    /// Best effort: restore and detach everything still held. Never panics;
    /// errors are dropped (use `release` to see them).
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

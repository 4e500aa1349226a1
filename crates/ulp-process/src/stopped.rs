//! The stopped-threads guard: seizing and interrupting threads, and what
//! it knows about them. Its other jobs live in the submodules: remote
//! calls (`call`), code writes (`code`), putting everything back and
//! detaching (`detach`).
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
use std::time::Instant;

use crate::error::Error;
use crate::procfs;
use crate::regs::Regs;
use crate::restart;
use crate::sys::{self, Errno, WaitStatus};
use crate::{Pid, RemoteAddr, Tid};

mod call;
mod code;
mod detach;

use call::Call;
pub use call::{Caller, SIGRETURN_CODE};
use detach::reap_exited;

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

/// The x86-64 `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

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
    /// Runnable when it was seized (a thread of the second wave of
    /// `attach_batch`): released before the others.
    runnable: bool,
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
    /// The guard is for writing code: `/proc/PID/mem` is opened once the
    /// threads are seized, before any is stopped, so that the first write
    /// does not open it inside the pause.
    pub for_writes: bool,
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
    /// `/proc/PID/mem` opened for writing at the first code write, kept
    /// while the threads are held: one open per stop, not one per write.
    mem: Option<std::fs::File>,
    /// `/proc/PID/stat` kept open by [`Stopped::seize_rest`]: its thread
    /// count says in one read whether a rescan of the threads is needed.
    stat: Option<procfs::StatFile>,
    /// Only the seizing OS thread may issue ptrace requests: not Send.
    _not_send: PhantomData<*mut ()>,
}

/// The report `tid` has now, if any (one WNOHANG poll); a thread that is
/// no longer ours to wait for counts as exited.
fn poll_report(tid: Tid) -> Option<WaitStatus> {
    match sys::wait_thread(tid, Instant::now()) {
        Ok(s) => s,
        Err(_) => Some(WaitStatus::Exited(0)),
    }
}

impl Stopped {
    fn empty(pid: Pid, options: SeizeOptions) -> Stopped {
        reap_exited();
        Stopped {
            pid,
            held: Vec::new(),
            skipped: HashSet::new(),
            options,
            mem: None,
            stat: None,
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
        // (A process that is gone is told by the seizes' ESRCH and the
        // check below: no /proc read first.)
        let mut s = Stopped::empty(pid, options);
        s.attach_batch(tids, deadline, &mut |_, _| {})?;
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
        Stopped::seize_all_between(pid, deadline, options, &mut |_, _| {})
    }

    /// [`Stopped::seize_all_with`] that calls `between` once the threads
    /// that were not running have stopped and before the running ones are
    /// interrupted (with the threads stopped so far): work that needs
    /// threads stopped but not all of them is done there, outside the
    /// pause the running threads feel.
    pub fn seize_all_between(
        pid: Pid,
        deadline: Instant,
        options: SeizeOptions,
        between: &mut dyn FnMut(&Stopped, &[Tid]),
    ) -> Result<Stopped, Error> {
        let mut s = Stopped::empty(pid, options);
        s.seize_rest_between(deadline, between)?;
        Ok(s)
    }

    /// Extends this guard to every thread of the process not yet held
    /// (same rescan rule as [`Stopped::seize_all`]).
    ///
    /// Once threads are held, the process's thread count comes first: when
    /// it is the number held, every thread is (a held thread is stopped, so
    /// alive, and the count takes in any thread created before its
    /// creator's stop), and the listing is not made. That is one system
    /// call instead of five, inside the pause the running threads feel.
    /// Any other count (an unreaped zombie, a new thread) lists them.
    pub fn seize_rest(&mut self, deadline: Instant) -> Result<(), Error> {
        self.seize_rest_between(deadline, &mut |_, _| {})
    }

    /// [`Stopped::seize_rest`] with `between` called as in
    /// [`Stopped::seize_all_between`] (for each batch of new threads).
    pub fn seize_rest_between(
        &mut self,
        deadline: Instant,
        between: &mut dyn FnMut(&Stopped, &[Tid]),
    ) -> Result<(), Error> {
        if self.stat.is_none() {
            self.stat = procfs::StatFile::open(self.pid);
        }
        loop {
            if !self.held.is_empty()
                && self.stat.as_ref().and_then(|f| f.threads()) == Some(self.held.len() as u32)
            {
                break;
            }
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
            self.attach_batch(&new, deadline, between)?;
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
    /// call (`orig_rax >= 0`), else `None`. A call the kernel restarted
    /// through the restart block (`restart_syscall`) is named by the call it
    /// restarts when the instructions that issued it tell (see the `restart`
    /// module), else it stays `restart_syscall` (219).
    pub fn syscall_of(&self, tid: Tid) -> Result<Option<i64>, Error> {
        let regs = self.regs(tid)?;
        let nr = regs.orig_rax();
        if nr == restart::NR_RESTART_SYSCALL {
            return Ok(Some(self.restarted_call(tid, &regs.0).unwrap_or(nr)));
        }
        Ok((nr >= 0).then_some(nr))
    }

    /// For a thread in `restart_syscall`: the call it restarts, read off the
    /// code before its `rip`.
    pub(crate) fn restarted_call(&self, tid: Tid, regs: &libc::user_regs_struct) -> Option<i64> {
        let mut code = [0u8; restart::CODE_BEFORE];
        let at = regs.rip.checked_sub(restart::CODE_BEFORE as u64)?;
        self.peek_with(tid, at, &mut code).ok()?;
        restart::issued_call(&code)
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
                tid: self.pid.main_thread(),
                why: "no thread of this guard is stopped",
            })
    }

    /// Seizes all of `tids` first, then interrupts them and waits for their
    /// stops, in two waves when there are several: first the threads that
    /// do not run now (asleep, stopped, or runnable under SCHED_IDLE),
    /// then the runnable ones (state `R` in /proc). The pause a running
    /// thread feels lasts from its interrupt to its resume, and a sleeping
    /// thread (or a SCHED_IDLE one) needs a CPU to reach its stop: the
    /// running threads keep running while the others get there, and are
    /// released first ([`Held::runnable`]). A thread that wakes up
    /// meanwhile is just stopped in the first wave; either way every
    /// thread is stopped before this returns.
    ///
    /// `between` is called after the first wave has stopped, before the
    /// second is interrupted, with the threads of the first wave still
    /// held (when nothing failed).
    fn attach_batch(
        &mut self,
        tids: &[Tid],
        deadline: Instant,
        between: &mut dyn FnMut(&Stopped, &[Tid]),
    ) -> Result<(), Error> {
        let pid = self.pid;
        let fresh: Vec<Tid> = tids
            .iter()
            .copied()
            .filter(|t| !self.holds(*t) && !self.skipped.contains(t))
            .collect();
        // One thread (the usual single-threaded process, or a transition's
        // check) needs no order, nor the /proc reads.
        let runnable: HashSet<Tid> = if fresh.len() > 1 {
            fresh
                .iter()
                .copied()
                .filter(|&t| procfs::thread_runs(pid, t))
                .collect()
        } else {
            HashSet::new()
        };
        let mut seized = Vec::new();
        let mut failure = None;
        for tid in fresh {
            if self.holds(tid) {
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
                        ptrace_scope: crate::proc::ptrace_scope(),
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
                    runnable: runnable.contains(&tid),
                },
            );
            seized.push(tid);
        }
        if self.options.for_writes && self.mem.is_none() && !seized.is_empty() {
            // Ignored on failure: the first write opens it (and says why).
            let _ = self.mem_file();
        }
        // Stopped only now that all are seized: the pause each thread feels
        // starts at its interrupt, so the seizing (the slower part) stays
        // out of it.
        let (first, mut second): (Vec<Tid>, Vec<Tid>) =
            seized.into_iter().partition(|t| !runnable.contains(t));
        let mut pending = self.interrupt_all(&first, &mut failure);
        // The second wave is watched meanwhile: a seized thread reports its
        // exit, a signal-delivery-stop or a group-stop without being
        // interrupted, and in a process that is exiting, a first-wave
        // leader's exit is reported only once those exits are reaped.
        self.wait_stops(&mut pending, &mut second, deadline, &mut failure);
        if failure.is_none() {
            let quiet: Vec<Tid> = first.iter().copied().filter(|&t| self.holds(t)).collect();
            between(self, &quiet);
            let mut pending = self.interrupt_all(&second, &mut failure);
            // And the first wave is watched in turn: the second one ran
            // meanwhile, and a thread of it that exits the process kills the
            // stopped ones, whose exits are ours to reap before its own is
            // reported.
            let mut first: Vec<Tid> = first.into_iter().filter(|&t| self.holds(t)).collect();
            self.wait_stops(&mut pending, &mut first, deadline, &mut failure);
        }
        // A thread of the second wave not interrupted (the first failed)
        // is still held, running: release or Drop stops and detaches it.
        failure.map_or(Ok(()), Err)
    }

    /// Interrupts every thread of `tids` in one quick pass; returns those to
    /// wait for. The first error goes to `failure`.
    fn interrupt_all(&mut self, tids: &[Tid], failure: &mut Option<Error>) -> Vec<Tid> {
        let mut pending = Vec::with_capacity(tids.len());
        for &tid in tids {
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
        pending
    }

    /// Waits until every thread of `pending` has reported its stop (or
    /// exit), or the deadline; the first error goes to `failure`. Threads
    /// of `watched` (seized, not interrupted) that report something
    /// meanwhile are taken the same way and leave `watched`; they are not
    /// waited for.
    fn wait_stops(
        &mut self,
        pending: &mut Vec<Tid>,
        watched: &mut Vec<Tid>,
        deadline: Instant,
        failure: &mut Option<Error>,
    ) {
        // Wait for every thread at once, not one after the other: in a
        // process that is exiting, the leader's exit is reported only
        // once the other threads' exits are reaped, and those are ours to
        // reap (they are traced): waiting on the leader alone would wait
        // for the deadline.
        // The threads that stopped are watched too, until the others have:
        // one that a thread still running kills (by exiting the process)
        // exits, and that exit is ours to reap before the process's
        // leader's is reported.
        let mut stopped = Vec::new();
        let mut newly = Vec::new();
        while !pending.is_empty() {
            let mut progress = false;
            // One thread left to wait for (the running thread of a
            // process's second wave, usually): asked directly, one call
            // instead of two inside the pause it feels.
            if let [tid] = pending[..] {
                if let Some(status) = poll_report(tid) {
                    pending.clear();
                    self.take_report(tid, status, true, &mut stopped, failure);
                    break;
                }
            }
            // The kernel names a thread with a report (without taking the
            // report): one call per report, not one per thread per pass
            // (127 calls a pass with 128 threads). A report that is not
            // ours (a child of this thread, a thread another `Stopped`
            // holds) stays where it is, and ours are polled one by one.
            let mut by_name = true;
            while by_name && !pending.is_empty() {
                let Some(tid) = sys::peek_report() else { break };
                let lists = [&mut *pending, &mut *watched, &mut stopped];
                let Some((n, k)) = lists
                    .into_iter()
                    .enumerate()
                    .find_map(|(n, l)| Some((n, l.iter().position(|&t| t == tid)?)))
                else {
                    by_name = false;
                    break;
                };
                let Some(status) = poll_report(tid) else {
                    by_name = false;
                    break;
                };
                [&mut *pending, &mut *watched, &mut stopped][n].swap_remove(k);
                progress = true;
                self.take_report(tid, status, n == 0, &mut stopped, failure);
            }
            // With a report not ours in the way, ours are polled one by
            // one. Once every thread waited for has stopped, the others are
            // not polled: what they report is taken later (release, Drop).
            for (n, list) in [&mut *pending, &mut *watched, &mut stopped]
                .into_iter()
                .enumerate()
                .take(if by_name { 0 } else { 3 })
            {
                let mut k = 0;
                while k < list.len() {
                    let tid = list[k];
                    let Some(status) = poll_report(tid) else {
                        k += 1;
                        continue;
                    };
                    list.swap_remove(k);
                    progress = true;
                    self.take_report(tid, status, n == 0, &mut newly, failure);
                }
            }
            stopped.append(&mut newly);
            let now = Instant::now();
            if pending.is_empty() {
                break;
            }
            if now >= deadline {
                failure.get_or_insert(Error::Timeout {
                    pid: self.pid,
                    tid: pending.iter().min().copied(),
                    op: "waiting for the thread to stop after PTRACE_INTERRUPT".into(),
                });
                break;
            }
            // Polled again at once after progress (the reports come in a
            // burst), else after the next report: the threads to stop may
            // need this CPU to get there.
            if !progress {
                sys::sleep_until_report(deadline - now);
            }
        }
    }

    /// [`Stopped::take_attach_stop`] for a report [`Stopped::wait_stops`]
    /// took; a thread it `waited` for that is still held after it goes to
    /// `stopped`, to be watched.
    fn take_report(
        &mut self,
        tid: Tid,
        status: WaitStatus,
        waited: bool,
        stopped: &mut Vec<Tid>,
        failure: &mut Option<Error>,
    ) {
        if let Err(e) = self.take_attach_stop(tid, status) {
            failure.get_or_insert(e);
        }
        if waited && self.holds(tid) {
            stopped.push(tid);
        }
    }

    /// Records the stop (or exit) `status` that `tid` reported after its
    /// PTRACE_INTERRUPT.
    fn take_attach_stop(&mut self, tid: Tid, status: WaitStatus) -> Result<(), Error> {
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
            addr: RemoteAddr::new(addr),
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

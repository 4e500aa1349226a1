//! The write engine of a trigger: making the code-byte writes the runtime
//! answers with (ARCHITECTURE.md, "How a trigger flows", step 4).
//!
//! Stop every thread, check that none is strictly inside bytes still to
//! change and that the bytes are a state of the plan (its start, or where a
//! killed earlier ulp left it), make the writes in the runtime's order
//! (a stub or a rewritten entry with one write of `/proc/PID/mem`, the rest
//! one aligned word at a time), clear the runtime's write journal, resume
//! everything; retry while a thread is in the way. Also: completing the
//! writes an earlier ulp left pending, and the test hooks that kill the
//! tool between writes ([`Faults`]).
//!
//! What to write, and what a refusal means, is `trigger`'s business; this
//! module only makes writes.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use ulp_abi::{write_kind, Write};
use ulp_process::{Pid, RemoteAddr, Stopped, Tid};

use crate::runtime::Runtime;
use crate::transition::{self, Transitioned};
use crate::trigger::{hex, Options};
use crate::Error;

/// Why the writes of a plan are not all made, or what failed after.
pub(crate) enum Unwritten {
    /// None is left made (put back after a failure, or never begun).
    Nothing(String),
    /// Every one is made; releasing the threads or clearing the runtime's
    /// journal failed.
    Bookkeeping(String),
}

/// The writes of a plan, made.
pub(crate) struct Made {
    pub(crate) attempts: u32,
    /// Threads stopped for them, and for how long.
    pub(crate) threads: usize,
    pub(crate) stopped: Duration,
    /// The last attempt's phases: stopping every thread, the checks and
    /// writes (and clearing the journal), releasing the threads.
    pub(crate) seize: Duration,
    pub(crate) write: Duration,
    pub(crate) release: Duration,
    /// GOT slots moved in that stop (`got.rs`), and how long finding
    /// them took (before the stop).
    pub(crate) got: crate::got::Moved,
    pub(crate) got_find: Duration,
    /// A transition's plan made whole in this one stop: the process had
    /// one thread, and none of the old code was on its stack.
    pub(crate) completed: bool,
}

/// Which writes of a plan one stop makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// All of them (a plan without a transition).
    Whole,
    /// A transition's first part: up to its FLAG, every thread marked old
    /// just before it; the journal stays set.
    UpToFlag,
    /// A transition's last part, once no thread is old.
    AfterFlag,
}

/// A plan made, and its transition when it has one.
pub(crate) struct PlanMade {
    pub(crate) made: Made,
    pub(crate) transition: Option<Transitioned>,
    /// Why the transition's last part is not made although every thread
    /// is new (the next trigger makes it; every thread runs the new code).
    pub(crate) unfinished: Option<String>,
    /// How long the per-thread part and the last part took.
    pub(crate) settle_time: Duration,
    pub(crate) finish_time: Duration,
}

/// Threads of the process still held from the runtime's call (a process
/// of one thread: [`crate::trigger`]), and what a transition's checks need
/// of it read before that call.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) stopped: Option<Stopped>,
    pub(crate) prepared: Option<transition::Prepared>,
}

/// Makes a plan: [`write_with_retries`] for a plan without a transition;
/// for one with, its three parts (`transition.rs`). Once the transition's
/// flag is set the change is in place: nothing after it is a failure of
/// the operation (`PlanMade::unfinished`). The first stop uses the threads
/// `held` when there are.
pub(crate) fn make_plan(
    rt: &Runtime,
    writes: &[Write],
    deadline: Instant,
    opts: &Options,
    faults: &mut Faults,
    held: Held,
) -> Result<PlanMade, (u32, Unwritten)> {
    let Held { stopped, prepared } = held;
    let Some(plan) = transition::plan_of(writes) else {
        let made = write_with_retries(
            rt,
            writes,
            Part::Whole,
            deadline,
            opts,
            faults,
            None,
            stopped,
        )?;
        return Ok(PlanMade {
            made,
            transition: None,
            unfinished: None,
            settle_time: Duration::ZERO,
            finish_time: Duration::ZERO,
        });
    };
    // Made before any thread is stopped (reading symbols and unwind
    // tables); without it the first part simply never takes the short way.
    // A thread held since before the call has run none of the code the
    // call mapped: the checker prepared before the call decides on it.
    let preparing = Instant::now();
    let before_call = stopped.is_some();
    let mut checker = match prepared {
        Some(p) if before_call => Some(p.checker(&plan, opts.consistency)),
        _ => transition::Checker::new(rt.pid, &plan, opts.consistency).ok(),
    };
    let mut prepare_time = preparing.elapsed();
    let made = write_with_retries(
        rt,
        writes,
        Part::UpToFlag,
        deadline,
        opts,
        faults,
        checker.as_mut(),
        stopped,
    )?;
    if made.completed {
        return Ok(PlanMade {
            made,
            transition: Some(Transitioned {
                checked: 1,
                ..Transitioned::default()
            }),
            unfinished: None,
            settle_time: prepare_time,
            finish_time: Duration::ZERO,
        });
    }
    if before_call {
        // The threads have run since: the checks need the code mapped now.
        let preparing = Instant::now();
        checker = transition::Checker::new(rt.pid, &plan, opts.consistency).ok();
        prepare_time += preparing.elapsed();
    }
    let settling = Instant::now();
    // The wait leaves room before the deadline for the last part's stop.
    let reserve = (opts.timeout / 4).min(Duration::from_secs(1));
    let wait_until = (Instant::now() + opts.transition_wait)
        .min(deadline.checked_sub(reserve).unwrap_or(deadline));
    let settled = match transition::settle(rt, &plan, checker, opts, wait_until, deadline, faults) {
        Ok(s) => s,
        Err(why) => {
            return Ok(PlanMade {
                made,
                transition: None,
                unfinished: Some(format!("checking the threads failed: {why}")),
                settle_time: prepare_time + settling.elapsed(),
                finish_time: Duration::ZERO,
            })
        }
    };
    let settle_time = prepare_time + settling.elapsed();
    let finishing = Instant::now();
    let mut unfinished = None;
    if settled.complete() {
        if let Err((_, why)) = write_with_retries(
            rt,
            writes,
            Part::AfterFlag,
            deadline,
            opts,
            faults,
            None,
            None,
        ) {
            let (Unwritten::Nothing(why) | Unwritten::Bookkeeping(why)) = why;
            unfinished = Some(why);
        }
    }
    Ok(PlanMade {
        made,
        transition: Some(settled),
        unfinished,
        settle_time,
        finish_time: finishing.elapsed(),
    })
}

/// Makes `part` of `writes` with every thread stopped, retrying while a
/// thread is in the way, and clears the runtime's write journal before the
/// threads are released (unless more of the plan is left). The first
/// attempt starts from the threads `held`, if any. Err: (attempts, why).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_with_retries(
    rt: &Runtime,
    writes: &[Write],
    part: Part,
    deadline: Instant,
    opts: &Options,
    faults: &mut Faults,
    mut checker: Option<&mut transition::Checker>,
    mut held: Option<Stopped>,
) -> Result<Made, (u32, Unwritten)> {
    let mut last_err = String::new();
    let mut attempts = 0;
    for attempt in 0..=opts.retries {
        if attempt > 0 {
            // Let the thread that was in the way move on.
            thread::sleep(Duration::from_millis(1 << attempt.min(6)));
        }
        attempts = attempt + 1;
        if let Some(why) = faults.simulated_busy(rt.pid, attempts) {
            last_err = why;
            continue;
        }
        match write_all(
            rt,
            writes,
            part,
            deadline,
            opts,
            faults,
            checker.as_deref_mut(),
            held.take(),
        ) {
            Ok(made) => return Ok(Made { attempts, ..made }),
            Err(WriteError::Busy(why)) => last_err = why,
            Err(WriteError::Fatal(why)) => return Err((attempts, Unwritten::Nothing(why))),
            Err(WriteError::Released(why)) => return Err((attempts, Unwritten::Bookkeeping(why))),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err((attempts, Unwritten::Nothing(last_err)))
}

/// Checks every REWRITE write that replaces a function's own first bytes
/// (not a jump of ours) against the library file the process mapped: the
/// copy in memory must hold exactly the file's bytes.
pub(crate) fn check_rewrites_against_files(pid: Pid, writes: &[Write]) -> Result<(), Error> {
    use std::io::{Read, Seek, SeekFrom};
    let firsts: Vec<&Write> = writes
        .iter()
        .filter(|w| w.kind == write_kind::REWRITE && w.old[0] != 0xe9)
        .collect();
    if firsts.is_empty() {
        return Ok(());
    }
    let maps = ulp_process::maps(pid)?;
    for w in firsts {
        let len = w.len as usize;
        let Some(m) = maps
            .iter()
            .find(|m| m.contains(RemoteAddr::new(w.addr)) && m.inode != 0)
        else {
            return Err(Error::refused(format!(
                "the code at {:#x} to be rewritten is not in a mapped file",
                w.addr
            )));
        };
        let path = m.path.clone().unwrap_or_default();
        let path = path.strip_suffix(" (deleted)").unwrap_or(&path).to_string();
        // The very file mapped (even if replaced on disk since), else the path.
        let candidates = [
            ulp_process::map_file(pid, m),
            ulp_process::in_root(pid, &path),
            PathBuf::from(&path),
        ];
        let offset = m.offset + (RemoteAddr::new(w.addr) - m.start);
        let mut on_disk = vec![0u8; len];
        let read = candidates.iter().any(|c| {
            std::fs::File::open(c)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(offset))?;
                    f.read_exact(&mut on_disk)
                })
                .is_ok()
        });
        if !read {
            return Err(Error::refused(format!(
                "cannot read '{path}' to check the code at {:#x} before rewriting it",
                w.addr
            )));
        }
        if on_disk[..] != w.old[..len] {
            return Err(Error::refused(format!(
                "the function code at {:#x} in '{path}' differs from the file ({} in memory, {} in \
                 the file): another tool's hook? nothing was changed",
                w.addr,
                hex(&w.old[..len]),
                hex(&on_disk)
            )));
        }
    }
    Ok(())
}

/// If the runtime's write journal says an earlier tool did not finish its
/// writes, finish them (writes already made are skipped).
pub(crate) fn complete_pending_writes(
    rt: &Runtime,
    deadline: Instant,
    opts: &Options,
    faults: &mut Faults,
) -> Result<(), Error> {
    if !rt.writes_pending()? {
        return Ok(());
    }
    let (_, writes) = rt.read_result()?;
    let done =
        make_plan(rt, &writes, deadline, opts, faults, Held::default()).map_err(|(_, why)| {
            let (Unwritten::Nothing(why) | Unwritten::Bookkeeping(why)) = why;
            Error::refused(format!(
                "completing the writes an interrupted ulp left pending: {why}"
            ))
        })?;
    if let Some(t) = done.transition.filter(|t| !t.complete()) {
        return Err(Error::refused(format!(
            "an earlier change is still in its per-thread transition ({}): those threads take \
             the new code by themselves when they leave the replaced functions; nothing else was \
             changed, try again later",
            t.describe()
        )));
    }
    if let Some(why) = done.unfinished {
        return Err(Error::refused(format!(
            "completing an earlier change's transition: {why}"
        )));
    }
    Ok(())
}

enum WriteError {
    /// A thread is executing bytes to change: try again later.
    Busy(String),
    /// Nothing is written (what was is put back).
    Fatal(String),
    /// Every write is made; clearing the runtime's write journal or
    /// releasing the threads failed.
    Released(String),
}

/// Step 3: with every thread stopped, check and make the writes, then
/// clear the runtime's write journal. Returns how many threads were
/// stopped, for how long and in which phases (`attempts` is the caller's).
///
/// The journal is cleared while the threads are still stopped, not after
/// they are released: a process that sees the new code may exit at once,
/// and a write to its memory that races its exit can leave this tool
/// holding the last reference to its address space, so that the tool's
/// system call tears the whole address space down itself, which on a
/// busy host can block for tens of seconds (it waits for locks of files
/// that every process maps), unbounded by any deadline. A stopped process
/// does not exit under us.
#[allow(clippy::too_many_arguments)]
fn write_all(
    rt: &Runtime,
    writes: &[Write],
    part: Part,
    deadline: Instant,
    opts: &Options,
    faults: &mut Faults,
    checker: Option<&mut transition::Checker>,
    held: Option<Stopped>,
) -> Result<Made, WriteError> {
    let pid = rt.pid;
    let fatal = |e: ulp_process::Error| WriteError::Fatal(e.to_string());
    // The GOT slots of the functions the plan changes, found from outside
    // (only when one may need a change: got.rs).
    let looked = Instant::now();
    // A transition's last part moves no slot unless asked to: its first
    // part put back every slot moved before, and without
    // `--redirect-got` none was moved since.
    let slots = if part == Part::AfterFlag && !opts.redirect_got {
        crate::got::Slots::default()
    } else {
        crate::got::find(pid, writes, opts.redirect_got, || rt.got_moved())
    };
    let got_find = looked.elapsed();
    // A transition's part: up to its flag (every thread marked old just
    // before it), or what follows once no thread is old.
    let plan = transition::plan_of(writes);
    let start = Instant::now();
    // A transition's first part marks every thread old: the thread control
    // blocks of the threads stopped first are checked while the running
    // ones still run, outside the pause those feel.
    let mut blocks = transition::ThreadBlocks::default();
    let marks = part == Part::UpToFlag && plan.is_some();
    let mut between = |s: &Stopped, tids: &[Tid]| {
        if marks {
            blocks.check(s, tids);
        }
    };
    let mut stopped = match held {
        // Still stopped from the call; any thread created since is
        // stopped too.
        Some(mut s) => {
            s.seize_rest_between(deadline, &mut between)
                .map_err(fatal)?;
            s
        }
        None => {
            let options = ulp_process::SeizeOptions {
                for_writes: true,
                ..opts.seize()
            };
            Stopped::seize_all_between(pid, deadline, options, &mut between).map_err(fatal)?
        }
    };
    let seize = start.elapsed();
    // Where the plan stands: at its start, or where a killed earlier tool
    // left it (its journal), possibly in the middle of a write of several
    // words. Anything else means someone else changed the code.
    // (Every write's bytes in one read: the threads are stopped.)
    let pieces: Vec<(u64, usize)> = writes.iter().map(|w| (w.addr, w.len as usize)).collect();
    let bytes = ulp_process::read_pieces(pid, &pieces).map_err(fatal)?;
    let mut now = Vec::with_capacity(writes.len());
    let mut at = 0;
    for w in writes {
        let mut b = [0u8; 16];
        let n = w.len as usize;
        b[..n].copy_from_slice(&bytes[at..at + n]);
        at += n;
        now.push(b);
    }
    let todo = resume_plan(writes, &now).map_err(|i| {
        WriteError::Fatal(format!(
            "code at {:#x} in process {pid} changed since the runtime checked it (another tool?); nothing was written",
            writes[i].addr
        ))
    })?;
    let is_flag = |w: &Write| {
        plan.as_ref()
            .is_some_and(|p| w.kind == write_kind::FLAG && w.addr == p.rec.flag)
    };
    // A process of one thread with none of the old code on its stack (the
    // unwind decides it, as in a transition's check) takes the whole plan
    // in this stop: no thread can be old, so no mark is needed, and new
    // threads start new.
    let mut one_stop = false;
    let (todo, finish) = match (&plan, part) {
        (Some(_), Part::UpToFlag) => match todo.iter().position(is_flag) {
            Some(_)
                if stopped.tids().len() == 1
                    && checker.is_some_and(|c| c.clean(&stopped, stopped.tids()[0])) =>
            {
                one_stop = true;
                (todo, true)
            }
            Some(i) => (todo[..=i].to_vec(), false),
            // Set by an earlier ulp.
            None => (Vec::new(), false),
        },
        (Some(p), Part::AfterFlag) => {
            if todo.iter().any(is_flag) {
                return Err(WriteError::Fatal(format!(
                    "process {pid}: the transition's flag is not set; nothing was written"
                )));
            }
            if let Some(tid) = transition::old_threads(&stopped, &p.rec)
                .map_err(WriteError::Fatal)?
                .first()
            {
                return Err(WriteError::Fatal(format!(
                    "process {pid}: thread {tid} still runs the old code of the transition"
                )));
            }
            (todo, true)
        }
        _ => (todo, true),
    };
    // No thread inside bytes still to change (writes already made change
    // nothing: after a killed ulp, threads run through what it wrote).
    let tids = stopped.tids();
    for &tid in &tids {
        let rip = stopped.regs(tid).map_err(fatal)?.rip();
        if let Some(w) = todo
            .iter()
            .find(|w| busy_range(w).is_some_and(|(start, end)| start < rip && rip < end))
        {
            return Err(WriteError::Busy(format!(
                "process {pid} is busy: thread {tid} is executing bytes at {:#x} that the patch changes; retry later or with a higher -r",
                w.addr
            )));
        }
    }
    // In the runtime's order: every stub before the entry jump that leads
    // to it (a thread that takes a new jump finds a complete stub), and for
    // a change of several functions, slots, each function pointed at its
    // slot, the flag, each function pointed at its target. All threads are
    // stopped, so the order matters only if we die in the middle; then
    // every function runs one whole version, and with a flag every
    // function of the change the same one.
    // Before any code write, a GOT slot that leads past an entry about to
    // change goes back to that entry (got.rs: a kill then leaves every
    // path through the entry, which the code writes keep whole).
    let restored = crate::got::before_writes(&mut stopped, &slots).map_err(fatal)?;
    let mut done: Vec<Write> = Vec::new();
    let mut i = 0;
    while i < todo.len() {
        let w = &todo[i];
        let marked = match &plan {
            Some(p) if is_flag(w) && !one_stop => {
                // The pending table emptied while no thread runs (a write
                // to a running process races its exit).
                let empty = [0u8; ulp_abi::transition::Pending::HEAD];
                rt.set_pending(&empty)
                    .map_err(|e| e.to_string())
                    .and_then(|()| transition::mark_all(&mut stopped, &p.rec, &blocks))
            }
            _ => Ok(()),
        };
        // A run of adjacent CODE writes (the words of a guarded slot or a
        // trampoline, which nothing reaches before a later write leads to
        // it) is made with one write: none or all of it, whatever kills
        // the tool, and one system call in the pause instead of a poke per
        // word.
        let run = code_run(&todo[i..]);
        let group = &todo[i..i + run];
        let made = marked.and_then(|()| {
            let whole = (run > 1).then(|| {
                let bytes: Vec<u8> = group
                    .iter()
                    .flat_map(|c| c.new[..c.len as usize].iter().copied())
                    .collect();
                write_at_once(&mut stopped, w.addr, &bytes, faults)
            });
            match whole {
                Some(Ok(())) => Ok(()),
                // One write at a time: a single one, or a run that
                // /proc/PID/mem may not write (word by word as before;
                // nothing reaches those bytes yet either way).
                _ => group.iter().try_for_each(|c| {
                    make_write(
                        &mut stopped,
                        c.addr,
                        c.kind,
                        &c.new[..c.len as usize],
                        faults,
                    )
                }),
            }
            .map_err(|e| e.to_string())
        });
        if let Err(e) = made {
            // Put back what was written so the process runs one version:
            // backwards, each write whole, so a kill here is as harmless.
            for d in done.iter().rev() {
                let old = &d.old[..d.len as usize];
                let _ = make_write(&mut stopped, d.addr, d.kind, old, faults);
            }
            return Err(WriteError::Fatal(e));
        }
        done.extend_from_slice(group);
        i += run;
    }
    // `--redirect-got`: slots at an entry that now leads elsewhere go there,
    // once the runtime's header says slots may be moved (a slot must never
    // be moved before that: a later revert would not look for it).
    let redirected = if opts.redirect_got && !slots.is_empty() && rt.mark_got_moved().is_ok() {
        crate::got::after_writes(&mut stopped, &slots)
    } else {
        0
    };
    faults.kill_point();
    // Every write is made: nothing is pending any more (unless a
    // transition's last part is still to come).
    let cleared = if finish {
        rt.clear_pending_writes()
    } else {
        Ok(())
    };
    let written = start.elapsed();
    stopped.release().map_err(|e| {
        WriteError::Released(format!(
            "releasing the threads after the writes failed: {e}"
        ))
    })?;
    cleared.map_err(|e| {
        WriteError::Released(format!("clearing the runtime's write journal failed: {e}"))
    })?;
    let stopped = start.elapsed();
    Ok(Made {
        attempts: 0,
        threads: tids.len(),
        stopped,
        seize,
        write: written - seize,
        release: stopped - written,
        got: crate::got::Moved {
            redirected,
            restored,
        },
        got_find,
        completed: one_stop,
    })
}

/// How many writes at the head of `writes` are CODE writes that follow
/// each other in memory, within one page (one write of /proc/PID/mem
/// never stops half way through a page); 1 for any other write.
fn code_run(writes: &[Write]) -> usize {
    const PAGE: u64 = 4096;
    let Some(first) = writes.first() else {
        return 0;
    };
    if first.kind != write_kind::CODE {
        return 1;
    }
    let page = first.addr / PAGE;
    let mut end = first.addr + u64::from(first.len);
    let mut n = 1;
    for w in &writes[1..] {
        let last = w.addr + u64::from(w.len).max(1) - 1;
        if w.kind != write_kind::CODE || w.addr != end || last / PAGE != page {
            break;
        }
        end += u64::from(w.len);
        n += 1;
    }
    n
}

/// Makes one write of kind `kind`: a stub or a rewritten entry with one
/// write of /proc/PID/mem, so that a tool killed at any moment leaves
/// either the old bytes or the new ones (a live stub is re-pointed in
/// place); anything else one aligned word at a time.
fn make_write(
    stopped: &mut Stopped,
    addr: u64,
    kind: u32,
    data: &[u8],
    faults: &mut Faults,
) -> Result<(), ulp_process::Error> {
    match kind {
        write_kind::STUB | write_kind::REWRITE => write_at_once(stopped, addr, data, faults),
        _ => poke_words(stopped, addr, data, faults),
    }
}

/// Pokes `data` at `addr` one aligned word at a time (each one
/// PTRACE_POKEDATA), passing the test kill point before each.
fn poke_words(
    stopped: &mut Stopped,
    addr: u64,
    data: &[u8],
    faults: &mut Faults,
) -> Result<(), ulp_process::Error> {
    let mut off = 0usize;
    while off < data.len() {
        let a = addr + off as u64;
        let n = (8 - (a & 7) as usize).min(data.len() - off);
        faults.kill_point();
        stopped.poke(RemoteAddr::new(a), &data[off..off + n])?;
        faults.poked();
        off += n;
    }
    Ok(())
}

/// [`poke_words`] for a write that must never be seen half made: one
/// write of /proc/PID/mem (counted as one word by the kill hook).
fn write_at_once(
    stopped: &mut Stopped,
    addr: u64,
    data: &[u8],
    faults: &mut Faults,
) -> Result<(), ulp_process::Error> {
    faults.kill_point();
    stopped.write_code_at_once(RemoteAddr::new(addr), data)?;
    faults.poked();
    Ok(())
}

/// Fault injection for the tests, for one operation in one process: only
/// with the feature `fault-injection`, which the tests turn on and no
/// release build has (there every hook does nothing, and the `ULP_TEST_*`
/// variables are never read).
///
/// * `ULP_TEST_KILL_BEFORE_WRITES`: the tool SIGKILLs itself between the
///   runtime's record and the writes (tests/faults.rs).
/// * `ULP_TEST_KILL_AFTER_WRITES=N`: it SIGKILLs itself once this
///   operation has poked N code words (a stub, a rewritten entry or a run
///   of adjacent CODE writes counts as one), before the next one (or before
///   releasing the threads after the last one), with every thread still
///   stopped (tests/faults.rs).
/// * `ULP_TEST_BUSY_ATTEMPTS=N`: the first N write attempts find a thread
///   in the way (tests/trigger.rs).
/// * `ULP_TEST_KILL_IN_TRANSITION`: it SIGKILLs itself in a per-thread
///   transition, once every thread was checked (tests/consistency.rs).
#[derive(Default)]
pub(crate) struct Faults {
    /// Code words this operation poked so far (each `-j` worker counts
    /// its own operations).
    #[cfg(feature = "fault-injection")]
    pokes: u64,
}

impl Faults {
    #[cfg(feature = "fault-injection")]
    fn var(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    #[cfg(feature = "fault-injection")]
    fn die() {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }

    /// Between the runtime's record and the writes.
    pub(crate) fn before_writes(&self) {
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("ULP_TEST_KILL_BEFORE_WRITES").is_some() {
            Self::die();
        }
    }

    /// In a transition, once every thread was checked and before the wait
    /// (`ULP_TEST_KILL_IN_TRANSITION`: the tool SIGKILLs itself there, with
    /// old threads armed to switch on their own; tests/consistency.rs).
    pub(crate) fn in_transition(&self) {
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("ULP_TEST_KILL_IN_TRANSITION").is_some() {
            Self::die();
        }
    }

    /// Before each code word, and before releasing the threads.
    fn kill_point(&self) {
        #[cfg(feature = "fault-injection")]
        if Self::var("ULP_TEST_KILL_AFTER_WRITES") == Some(self.pokes) {
            Self::die();
        }
    }

    /// After each code word.
    fn poked(&mut self) {
        #[cfg(feature = "fault-injection")]
        {
            self.pokes += 1;
        }
    }

    /// Why write attempt `attempt` (from 1) finds a thread in the way, when
    /// it is simulated to.
    fn simulated_busy(&self, pid: Pid, attempt: u32) -> Option<String> {
        #[cfg(feature = "fault-injection")]
        if Self::var("ULP_TEST_BUSY_ATTEMPTS").is_some_and(|n| u64::from(attempt) <= n) {
            return Some(format!(
                "process {pid} is busy: a thread is executing bytes that the patch changes \
                 (simulated: ULP_TEST_BUSY_ATTEMPTS); retry later or with a higher -r"
            ));
        }
        let _ = (pid, attempt);
        None
    }
}

/// The writes of `writes` (a plan, in order) still to make, given `now`,
/// what memory holds at each write's bytes: the plan is resumed at the
/// first write from which the memory is the plan's state, except for
/// bytes of that write already made (a write of several words a killed
/// tool left half made, each byte old or new). That write's `old` becomes
/// what memory holds (what a rollback puts back); writes that change
/// nothing are dropped. Err: the index of a write whose bytes match no
/// state of the plan.
fn resume_plan(writes: &[Write], now: &[[u8; 16]]) -> Result<Vec<Write>, usize> {
    // Every byte the plan touches gets a place in flat tables, found once
    // (a plan has a few hundred bytes, and this runs in every stop that
    // writes, inside the pause: maps keyed by address cost tens of µs).
    let mut addrs: Vec<u64> = writes
        .iter()
        .flat_map(|w| (0..u64::from(w.len)).map(move |i| w.addr + i))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    // For write j, its bytes' places: `at[start[j]..start[j + 1]]`.
    let mut start = Vec::with_capacity(writes.len() + 1);
    let mut at = Vec::new();
    for w in writes {
        start.push(at.len());
        at.extend((0..u64::from(w.len)).map(|i| {
            addrs
                .binary_search(&(w.addr + i))
                .expect("every byte has a place")
        }));
    }
    start.push(at.len());
    let places = |j: usize| at[start[j]..start[j + 1]].iter().copied().enumerate();
    // The plan's state before write j (`cur`, starting from each byte's
    // first `old`) and what memory holds.
    let mut cur: Vec<Option<u8>> = vec![None; addrs.len()];
    let mut mem: Vec<Option<u8>> = vec![None; addrs.len()];
    for (j, (w, n)) in writes.iter().zip(now).enumerate() {
        for (i, p) in places(j) {
            cur[p].get_or_insert(w.old[i]);
            mem[p].get_or_insert(n[i]);
        }
    }
    let cur: &mut Vec<u8> = &mut cur.into_iter().map(|b| b.unwrap_or(0)).collect();
    let mem: Vec<u8> = mem.into_iter().map(|b| b.unwrap_or(0)).collect();
    let mut differ = cur.iter().zip(&mem).filter(|(c, m)| c != m).count();
    for (j, w) in writes.iter().enumerate() {
        if places(j).any(|(i, p)| cur[p] != w.old[i]) {
            // The plan contradicts itself: trust none of it.
            return Err(j);
        }
        let inside = places(j).filter(|&(_, p)| mem[p] != cur[p]).count();
        let half_made = places(j).all(|(i, p)| mem[p] == cur[p] || mem[p] == w.new[i]);
        if differ == inside && half_made {
            let mut first = *w;
            for (i, p) in places(j) {
                first.old[i] = mem[p];
            }
            let todo = std::iter::once(first)
                .chain(writes[j + 1..].iter().copied())
                .filter(|w| w.old[..w.len as usize] != w.new[..w.len as usize])
                .collect();
            return Ok(todo);
        }
        for (i, p) in places(j) {
            differ -= usize::from(mem[p] != cur[p]);
            cur[p] = w.new[i];
            differ += usize::from(mem[p] != cur[p]);
        }
    }
    if differ == 0 {
        return Ok(Vec::new());
    }
    // Name the first write with a byte that no state of the plan has.
    let mut known: Vec<Vec<u8>> = vec![Vec::new(); addrs.len()];
    for (j, w) in writes.iter().enumerate() {
        for (i, p) in places(j) {
            known[p].extend([w.old[i], w.new[i]]);
        }
    }
    Err((0..writes.len())
        .position(|j| places(j).any(|(_, p)| !known[p].contains(&mem[p])))
        .unwrap_or(0))
}

/// The bytes no thread's instruction pointer may be strictly inside while
/// `w` is made: the bytes it changes, none for the flag (data). A slot
/// a switch retires (its function pointed straight at its target) is
/// not written: a thread inside it finishes it as it is.
fn busy_range(w: &Write) -> Option<(u64, u64)> {
    match w.kind {
        write_kind::FLAG => None,
        _ => Some((w.addr, w.addr + u64::from(w.len))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(addr: u64, kind: u32, old: &[u8], new: &[u8]) -> Write {
        Write::new(addr, kind, old, new)
    }

    /// A switch of one function (stub at 0x1000, its guarded slot at
    /// 0x8000, the flag at 0x9000), in the runtime's order: the slot, the
    /// stub and entry to it, the flag, the stub straight to the new
    /// function.
    fn activation() -> Vec<Write> {
        let stub = 0x1000;
        let slot: Vec<u8> = (1..=16).collect();
        let via = ulp_abi::direct_stub(stub, 0x8000).unwrap();
        let d = ulp_abi::direct_stub(stub, 0x5000).unwrap();
        vec![
            w(0x8000, write_kind::CODE, &[0; 8], &slot[..8]),
            w(0x8008, write_kind::CODE, &[0; 8], &slot[8..]),
            w(stub, write_kind::STUB, &[0x90; 14], &via),
            w(stub + 14, write_kind::ENTRY, &[0x66, 0x90], &[0xeb, 0xf0]),
            w(0x9000, write_kind::FLAG, &[0], &[1]),
            w(stub, write_kind::STUB, &via, &d),
        ]
    }

    /// What memory holds at each write's bytes once `made` bytes of the
    /// plan's writes are made, in order (a write cut short by a kill).
    fn memory(plan: &[Write], made: usize) -> Vec<[u8; 16]> {
        let mut mem = std::collections::HashMap::new();
        for w in plan.iter().rev() {
            for i in 0..w.len as usize {
                mem.insert(w.addr + i as u64, w.old[i]);
            }
        }
        let mut left = made;
        for w in plan {
            for i in 0..w.len as usize {
                if left == 0 {
                    break;
                }
                mem.insert(w.addr + i as u64, w.new[i]);
                left -= 1;
            }
        }
        plan.iter()
            .map(|w| {
                let mut b = [0u8; 16];
                for (i, x) in b.iter_mut().enumerate().take(w.len as usize) {
                    *x = mem[&(w.addr + i as u64)];
                }
                b
            })
            .collect()
    }

    #[test]
    fn a_plan_resumes_where_a_killed_tool_left_it() {
        let plan = activation();
        let total: usize = plan.iter().map(|w| w.len as usize).sum();
        assert_eq!(resume_plan(&plan, &memory(&plan, 0)).unwrap(), plan);
        // After whole writes: the rest of the plan.
        let mut made = 0;
        for k in 0..plan.len() {
            let todo = resume_plan(&plan, &memory(&plan, made)).unwrap();
            assert_eq!(todo, plan[k..], "after {k} writes");
            made += plan[k].len as usize;
        }
        assert_eq!(made, total);
        assert_eq!(resume_plan(&plan, &memory(&plan, total)).unwrap(), []);
        // Part of the stub made (as a tool older than the one-write stubs
        // could leave it): finished from there, and a rollback would put
        // back the half-made bytes.
        let mem = memory(&plan, 16 + 3);
        let todo = resume_plan(&plan, &mem).unwrap();
        assert_eq!(todo.len(), plan.len() - 2);
        assert_eq!(todo[0].new, plan[2].new);
        assert_eq!(todo[0].old[..14], mem[2][..14]);
        assert_eq!(todo[1..], plan[3..]);
        // Bytes no state of the plan has: someone else's code.
        let mut odd = memory(&plan, 0);
        odd[3][0] = 0xcc;
        assert_eq!(resume_plan(&plan, &odd), Err(3));
        let mut odd = memory(&plan, total);
        odd[4][0] = 7;
        assert!(resume_plan(&plan, &odd).is_err());
        // A write that changes nothing is dropped.
        let same = vec![w(0x2000, write_kind::STUB, &[1, 2], &[1, 2])];
        assert_eq!(resume_plan(&same, &memory(&same, 0)).unwrap(), []);
    }

    #[test]
    fn writes_are_busy_over_their_bytes_and_the_flag_never() {
        let plan = activation();
        assert_eq!(busy_range(&plan[0]), Some((0x8000, 0x8008)));
        assert_eq!(busy_range(&plan[2]), Some((0x1000, 0x100e)));
        assert_eq!(busy_range(&plan[3]), Some((0x100e, 0x1010)));
        assert_eq!(busy_range(&plan[4]), None);
        assert_eq!(busy_range(&plan[5]), Some((0x1000, 0x100e)));
    }

    #[test]
    fn adjacent_code_writes_in_one_page_are_one_run() {
        let code = |a: u64| w(a, write_kind::CODE, &[0; 8], &[0x90; 8]);
        // A guarded slot's words, then the stub that leads to it.
        let mut plan: Vec<Write> = (0..5).map(|k| code(0x8000 + 8 * k)).collect();
        plan.push(w(0x1000, write_kind::STUB, &[0; 14], &[1; 14]));
        assert_eq!(code_run(&plan), 5);
        assert_eq!(code_run(&plan[5..]), 1);
        assert_eq!(code_run(&[]), 0);
        // A gap, or the next page, ends a run.
        let gap = [code(0x8000), code(0x8010)];
        assert_eq!(code_run(&gap), 1);
        let pages = [code(0x8ff0), code(0x8ff8), code(0x9000)];
        assert_eq!(code_run(&pages), 2);
        // The flag is never part of one.
        let flag = [code(0x8000), w(0x8008, write_kind::FLAG, &[0], &[1])];
        assert_eq!(code_run(&flag), 1);
    }
}

//! Choosing the thread that runs the runtime's entry point.
//!
//! The runtime's APPLY calls `dlopen` and `malloc`, which take the dynamic
//! loader's and the allocator's locks. The other threads keep running
//! during the call, so a lock one of *them* holds is released normally.
//! The one danger is the calling thread itself: stopped in the middle of
//! `malloc` or `dlopen`, it holds a lock that the call would then wait for
//! forever (or re-enter a structure half updated). So the caller must be a
//! thread that provably is not inside the C library's allocator or the
//! loader at the moment it is stopped:
//!
//! * blocked in a plain waiting system call (read, poll, nanosleep, accept,
//!   epoll_wait, ...) issued from anywhere but the dynamic loader (the
//!   loader reads files with `read`; the allocator never waits in these), or
//! * executing code outside the C library and the dynamic loader (the
//!   program's own code, another library's, the vDSO).
//!
//! A thread in `futex`, `mmap`, `brk` or stopped inside libc code is not
//! chosen. When no thread qualifies the process is busy: the caller tries
//! again a little later and reports it with the advice to retry.

use std::time::{Duration, Instant};

use ulp_process::{Incarnation, Mapping, Pid, SeizeOptions, Stopped, Tid};

use crate::error::Error;

/// System calls in which a thread waits for something outside the process
/// and that the allocator never makes (x86-64 numbers).
const WAITING_SYSCALLS: &[i64] = &[
    0,   // read
    1,   // write
    7,   // poll
    17,  // pread64
    18,  // pwrite64
    19,  // readv
    20,  // writev
    23,  // select
    34,  // pause
    35,  // nanosleep
    42,  // connect
    43,  // accept
    44,  // sendto
    45,  // recvfrom
    46,  // sendmsg
    47,  // recvmsg
    61,  // wait4
    70,  // msgrcv
    128, // rt_sigtimedwait
    130, // rt_sigsuspend
    208, // io_getevents
    230, // clock_nanosleep
    232, // epoll_wait
    247, // waitid
    270, // pselect6
    271, // ppoll
    281, // epoll_pwait
    288, // accept4
    299, // recvmmsg
    307, // sendmmsg
    441, // epoll_pwait2
];

/// Code ranges of the C library and of the dynamic loader in a process.
struct Forbidden {
    libc: Vec<(u64, u64)>,
    loader: Vec<(u64, u64)>,
}

impl Forbidden {
    fn of(maps: &[Mapping]) -> Forbidden {
        let mut f = Forbidden {
            libc: Vec::new(),
            loader: Vec::new(),
        };
        for m in maps.iter().filter(|m| m.is_executable()) {
            let Some(path) = m.path.as_deref() else {
                continue;
            };
            let base = path.rsplit('/').next().unwrap_or(path);
            if ulp_process::is_loader_name(base) {
                f.loader.push((m.start.get(), m.end.get()));
            } else if base.starts_with("libc.so")
                || base.starts_with("libc-")
                || base.starts_with("libpthread")
                || base.starts_with("libdl")
            {
                f.libc.push((m.start.get(), m.end.get()));
            }
        }
        f
    }

    fn in_loader(&self, rip: u64) -> bool {
        self.loader.iter().any(|&(s, e)| s <= rip && rip < e)
    }

    fn in_libc(&self, rip: u64) -> bool {
        self.libc.iter().any(|&(s, e)| s <= rip && rip < e)
    }
}

/// Why a stopped thread may or may not run the runtime's code.
fn verdict(f: &Forbidden, rip: u64, syscall: Option<i64>) -> Result<(), &'static str> {
    if f.in_loader(rip) {
        return Err("inside the dynamic loader");
    }
    if let Some(nr) = syscall {
        // `restart_syscall`: how `Stopped::syscall_of` names a restarted
        // wait whose original call it cannot tell.
        if nr == ulp_process::NR_RESTART_SYSCALL {
            // A wait the kernel restarted, whose original call is not known
            // (see `Stopped::syscall_of`): a call returning by itself would
            // end it with EINTR.
            return Err("in a restarted system call");
        }
        if WAITING_SYSCALLS.contains(&nr) {
            return Ok(());
        }
    }
    if f.in_libc(rip) {
        return Err("inside the C library");
    }
    Ok(())
}

/// Stops threads of `pid` one at a time, main thread first, until one is
/// safe to run the runtime's code on; returns it still stopped. `Err` says
/// why none was (busy, or an error of the process).
fn seize_caller(
    pid: Pid,
    deadline: Instant,
    options: SeizeOptions,
    forbidden: &Forbidden,
    only: Option<Tid>,
) -> Result<(Stopped, Tid), NoCaller> {
    let failed = |e: ulp_process::Error| NoCaller::Failed(e.into());
    let mut tids = match only {
        Some(t) => vec![t],
        None => ulp_process::threads(pid).map_err(failed)?,
    };
    // The main thread first: in most programs it waits for input.
    tids.sort_by_key(|&t| (!t.is_main_of(pid), t));
    let mut first_error = None;
    for tid in tids {
        let stopped = match Stopped::seize_threads_with(pid, &[tid], deadline, options) {
            Ok(s) => s,
            Err(e) if e.is_gone() && ulp_process::comm(pid).is_ok() => continue, // the thread exited
            Err(e) => {
                first_error.get_or_insert(Error::from(e));
                // Permission and seccomp refusals are the same for every thread.
                break;
            }
        };
        let Ok(regs) = stopped.regs(tid) else {
            continue;
        };
        let syscall = stopped.syscall_of(tid).ok().flatten();
        if verdict(forbidden, regs.rip(), syscall).is_ok() {
            return Ok((stopped, tid));
        }
        // Not this one: let it go (dropping releases it) and try the next.
        drop(stopped);
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(match first_error {
        Some(e) => NoCaller::Failed(e),
        None => NoCaller::Busy(Error::refused(format!(
            "process {pid} is busy: every thread is inside the C library or the dynamic loader, \
             where the runtime's code cannot safely run now; retry later or with a higher -r"
        ))),
    })
}

/// Why no caller was found.
enum NoCaller {
    /// Every thread was inside the C library or the loader when looked at.
    Busy(Error),
    /// The process cannot be stopped at all (gone, not permitted, ...).
    Failed(Error),
}

/// How long [`find_caller`] keeps looking for a caller, at least, before
/// it calls the process busy: a thread caught inside `printf` or `malloc`
/// leaves it within microseconds, and on a loaded machine a few tries
/// spread over a quarter of a second find one where an immediate
/// verdict would not.
const PATIENCE: Duration = Duration::from_millis(250);

/// [`seize_caller`], tried again while the process is busy: for
/// [`PATIENCE`] and at least `retries` more times (`-r`), within
/// `deadline`. Any other failure is returned at once, and so is a busy
/// process that has exited meanwhile: a process inside `exit` has every
/// thread in the C library, and waiting for it to leave there is waiting
/// for nothing (the caller tells the exit from a failure).
///
/// `life` is the process as the caller first saw it (its stat is not read
/// again here unless the process is busy).
///
/// `maps` are the process's maps as read a moment ago, if they were: the
/// C library and the loader never move once mapped, so they serve when
/// they show both (a process caught before its loader mapped the C
/// library has its maps read again).
///
/// `single`: the process had one thread a moment ago, so its main thread
/// is tried before its threads are listed (the listing is read only if
/// that thread is not a fit).
pub fn find_caller(
    life: &Incarnation,
    deadline: Instant,
    options: SeizeOptions,
    retries: u32,
    maps: Option<&[Mapping]>,
    single: bool,
) -> Result<(Stopped, Tid), Error> {
    let start = Instant::now();
    let pid = life.pid;
    let mut attempt: u32 = 0;
    let mut forbidden = maps
        .map(Forbidden::of)
        .filter(|f| !f.libc.is_empty() && !f.loader.is_empty());
    loop {
        let f = match forbidden.take() {
            Some(f) => f,
            None => Forbidden::of(&ulp_process::maps(pid)?),
        };
        let seized = if single && attempt == 0 {
            match seize_caller(pid, deadline, options, &f, Some(Tid::main_of(pid))) {
                Err(NoCaller::Busy(_)) => seize_caller(pid, deadline, options, &f, None),
                other => other,
            }
        } else {
            seize_caller(pid, deadline, options, &f, None)
        };
        // Only the first try uses maps given: a busy process is looked at
        // again whole.
        match seized {
            Ok(found) => return Ok(found),
            Err(NoCaller::Failed(e)) => return Err(e),
            Err(NoCaller::Busy(e)) => {
                let patient = start.elapsed() < PATIENCE || attempt < retries;
                if !patient || Instant::now() >= deadline || life.exited() {
                    return Err(e);
                }
                attempt += 1;
                std::thread::sleep(Duration::from_millis(1 << attempt.min(4)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden() -> Forbidden {
        Forbidden {
            libc: vec![(0x1000, 0x2000)],
            loader: vec![(0x5000, 0x6000)],
        }
    }

    #[test]
    fn verdicts() {
        let f = forbidden();
        // Application code, running or in any system call: fine.
        assert!(verdict(&f, 0x9000, None).is_ok());
        assert!(verdict(&f, 0x9000, Some(202)).is_ok());
        // libc waiting in read or epoll_wait: fine; in futex, mmap or
        // running: maybe inside malloc.
        assert!(verdict(&f, 0x1800, Some(0)).is_ok());
        assert!(verdict(&f, 0x1800, Some(232)).is_ok());
        assert_eq!(verdict(&f, 0x1800, Some(202)), Err("inside the C library"));
        assert_eq!(verdict(&f, 0x1800, Some(9)), Err("inside the C library"));
        assert_eq!(verdict(&f, 0x1800, None), Err("inside the C library"));
        // A restarted wait of unknown origin, wherever it is.
        assert_eq!(
            verdict(&f, 0x9000, Some(219)),
            Err("in a restarted system call")
        );
        // The loader, even in read (it reads libraries while holding its lock).
        assert_eq!(
            verdict(&f, 0x5800, Some(0)),
            Err("inside the dynamic loader")
        );
    }
}

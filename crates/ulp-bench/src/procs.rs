//! Every process the suite starts, and how it waits for them.
//!
//! * Each started process is recorded in a fixed table of pids. On SIGINT,
//!   SIGTERM or SIGHUP the handler kills every recorded pid before the
//!   suite dies; on a normal exit or an error, [`Proc`]'s `Drop` kills its
//!   process. Targets also get `PR_SET_PDEATHSIG`, so a suite killed with
//!   SIGKILL takes its targets with it.
//! * Every wait is bounded: lines are read with `poll`, command runs are
//!   waited for on a pidfd with a deadline.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long a target may take to answer one command.
pub const ANSWER: Duration = Duration::from_secs(20);

const SLOTS: usize = 16384;
#[allow(clippy::declare_interior_mutable_const)]
const FREE: AtomicI32 = AtomicI32::new(0);
/// The pids alive right now (0 = free slot); read by the signal handler.
static PIDS: [AtomicI32; SLOTS] = [FREE; SLOTS];

fn record(pid: i32) -> Result<usize, String> {
    for (i, s) in PIDS.iter().enumerate() {
        if s.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Ok(i);
        }
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Err(format!(
        "more than {SLOTS} processes at once: lower the --fleet counts"
    ))
}

fn forget(slot: usize) {
    PIDS[slot].store(0, Ordering::SeqCst);
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: atomics, kill, signal, raise.
    for s in PIDS.iter() {
        let pid = s.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // SAFETY: restoring the default action and re-raising ends the process
    // with the signal's own status.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs the handler that kills every started process on SIGINT,
/// SIGTERM and SIGHUP.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: on_signal only makes async-signal-safe calls.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Makes the child die with the suite, even if the suite is SIGKILLed.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

/// Waits until `fd` is readable or `timeout` passes; false on timeout.
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 && left.is_zero() {
            return false;
        }
        if n == 0 {
            continue;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// A target process talked to through its stdin and stdout; killed on
/// drop.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    buf: Vec<u8>,
    slot: usize,
    pub pid: i32,
}

impl Proc {
    /// Starts `cmd` and waits (bounded) for its first line, which must
    /// start with "ready".
    pub fn start(mut cmd: Command, stderr: bool) -> Result<Proc, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if stderr {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
        let pid = child.id() as i32;
        let slot = match record(pid) {
            Ok(s) => s,
            Err(e) => {
                let _ = child.wait();
                return Err(e);
            }
        };
        let mut p = Proc {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().expect("piped stdout"),
            child,
            buf: Vec::new(),
            slot,
            pid,
        };
        let first = p.line(ANSWER)?;
        if !first.starts_with("ready") {
            return Err(format!("pid {pid} printed {first:?} instead of ready"));
        }
        Ok(p)
    }

    /// The next line the process prints, waiting at most `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.stdout.as_raw_fd(), left) {
                return Err(format!(
                    "pid {} printed nothing within {timeout:?}",
                    self.pid
                ));
            }
            let mut chunk = [0u8; 4096];
            match self.stdout.read(&mut chunk) {
                Ok(0) => return Err(format!("pid {} exited", self.pid)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading from pid {}: {e}", self.pid)),
            }
        }
    }

    /// Sends one command line (in one write) and returns its answer.
    pub fn ask(&mut self, cmd: &str) -> Result<String, String> {
        let pid = self.pid;
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("writing to pid {pid}: {e}"))?;
        self.line(ANSWER)
    }

    /// Sends `cmd` and checks the answer is `want`.
    pub fn expect(&mut self, cmd: &str, want: &str) -> Result<(), String> {
        let got = self.ask(cmd)?;
        if got.trim() == want {
            Ok(())
        } else {
            Err(format!(
                "pid {}: '{cmd}' answered {got:?}, expected {want:?}",
                self.pid
            ))
        }
    }

    /// Sends SIGKILL without waiting (dropping waits).
    pub fn kill(&self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // unreaped child, so it cannot have been recycled.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        let _ = self.child.wait();
        forget(self.slot);
    }
}

/// Kills a whole set of processes: every SIGKILL first, then the waits.
pub fn kill_all(procs: Vec<Proc>) {
    for p in &procs {
        p.kill();
    }
    drop(procs);
}

/// What a finished command did.
pub struct Ran {
    pub code: i32,
    /// From just before the spawn to the moment its exit was seen.
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion, at most `timeout`, timing it end to end.
/// With `capture`, stdout and stderr go to files in that directory and are
/// returned (files, not pipes: a chatty command never blocks on a full
/// pipe); without, to /dev/null.
pub fn run(cmd: &mut Command, timeout: Duration, capture: Option<&Path>) -> Result<Ran, String> {
    let files = match capture {
        Some(dir) => {
            let o = dir.join("run.stdout");
            let e = dir.join("run.stderr");
            let fo = File::create(&o).map_err(|x| format!("{}: {x}", o.display()))?;
            let fe = File::create(&e).map_err(|x| format!("{}: {x}", e.display()))?;
            cmd.stdout(fo).stderr(fe);
            Some((o, e))
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            None
        }
    };
    cmd.stdin(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    let pid = child.id() as i32;
    let slot = record(pid)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    let status = if pidfd >= 0 {
        let done = wait_readable(pidfd, timeout);
        // SAFETY: closing the fd we just opened.
        unsafe { libc::close(pidfd) };
        if done {
            Some(child.wait())
        } else {
            None
        }
    } else {
        // No pidfd: poll the child (less precise end time).
        let deadline = t0 + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(Ok(s)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(50))
                }
                Ok(None) => break None,
                Err(e) => break Some(Err(e)),
            }
        }
    };
    let elapsed = t0.elapsed();
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            forget(slot);
            return Err(format!(
                "{:?} did not finish within {timeout:?} (killed)",
                cmd.get_program()
            ));
        }
    };
    forget(slot);
    let status = status.map_err(|e| format!("waiting for {:?}: {e}", cmd.get_program()))?;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = match &files {
        Some((o, e)) => (read(o), read(e)),
        None => (String::new(), String::new()),
    };
    Ok(Ran {
        code: status.code().unwrap_or(-1),
        elapsed,
        stdout,
        stderr,
    })
}

//! Test support shared by the workspace's tests.
//!
//! * [`fixtures_dir`]: the C fixtures compiled by this crate's build script
//!   (target library `libulpdemo.so.1`, installed as a distribution
//!   installs it: the file `libulpdemo.so.1.0.0` and the SONAME link
//!   `libulpdemo.so.1` the programs are linked against; its variant with
//!   another build-id, likewise,
//!   an unpadded build, `demo_prog`, the live patches `demo_livepatch*.so`).
//! * [`Target`]: a process started for a test, talked to through its
//!   stdin/stdout, waited for with a bounded "ready" line, killed on drop.
//! * [`wait_until`], [`wait_in_syscall`], [`wait_all_blocked`]: bounded
//!   waits for a state of a process (read from /proc), where a test would
//!   otherwise sleep and hope.
//! * [`interop_dir`]: the containers packed by libpulp itself.
//! * [`Rng`]: xorshift64*, for randomized tests that replay.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// How long any single wait for a target's answer may take.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("OUT_DIR"), "/fixtures"))
}

pub fn interop_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/libpulp-interop"
    ))
}

/// The workspace's target directory for the current profile (where cargo
/// put the `ulp` binary and `libpulp.so`), found from the test executable:
/// `<target>/<profile>/deps/<test>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "ulp-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `names` from `from` into `to`, keeping the file names and the
/// way they are installed: a symbolic link to a file of the same directory
/// (the SONAME link `libulpdemo.so.1 -> libulpdemo.so.1.0.0`) is copied as
/// that link, and the file it leads to with it.
pub fn copy_files(from: &Path, to: &Path, names: &[&str]) {
    for n in names {
        let src = from.join(n);
        let dst = to.join(n);
        let sibling = std::fs::read_link(&src)
            .ok()
            .filter(|t| t.components().count() == 1)
            .and_then(|t| t.to_str().map(str::to_string));
        if let Some(target) = sibling {
            copy_files(from, to, &[&target]);
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(&target, &dst).unwrap_or_else(|e| {
                panic!("linking {} -> {target}: {e}", dst.display());
            });
            continue;
        }
        std::fs::copy(&src, &dst)
            .unwrap_or_else(|e| panic!("copying {} into {}: {e}", src.display(), to.display()));
    }
}

/// The file the demo library is installed as; `libulpdemo.so.1` is its
/// SONAME link (see [`copy_files`]).
pub const DEMO_LIB_FILE: &str = "libulpdemo.so.1.0.0";

/// Starts `cmd`, retrying for a while on ETXTBSY: tests copy executables
/// into their own directories, and while one test writes such a copy,
/// another test's fork can inherit the open file and make exec of it fail
/// with "Text file busy" until that child has exec'd in turn.
pub fn spawn_retrying(cmd: &mut Command) -> Child {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(26) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("starting {cmd:?}: {e}"),
        }
    }
}

/// A running target process. Lines it prints arrive on a channel read by a
/// helper thread, so every wait is bounded. Dropping it kills the process.
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    ready: String,
    pub pid: i32,
    /// Every line read so far (the ready line first), for failure messages.
    pub seen: Vec<String>,
}

impl Target {
    /// Starts `cmd` with piped stdin/stdout and waits for a line starting
    /// with "ready".
    pub fn spawn(mut cmd: Command) -> Target {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_retrying(&mut cmd);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        let mut t = Target {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            ready: String::new(),
            pid,
            seen: Vec::new(),
        };
        let first = t.next_line();
        assert!(
            first.starts_with("ready"),
            "target printed {first:?} instead of ready"
        );
        t.ready = first;
        t
    }

    /// The line the target announced itself with (`ready ...`).
    pub fn ready_line(&self) -> &str {
        &self.ready
    }

    /// The words after `ready` on the ready line, read as hexadecimal
    /// numbers (with or without `0x`): addresses a C fixture announces.
    pub fn ready_hex(&self) -> Vec<u64> {
        self.ready
            .split_whitespace()
            .skip(1)
            .map(|w| {
                u64::from_str_radix(w.trim_start_matches("0x"), 16)
                    .unwrap_or_else(|e| panic!("{w:?} on {:?}: {e}", self.ready))
            })
            .collect()
    }

    /// The next line the target prints, or `None` after `timeout` (or once
    /// its stdout is closed).
    pub fn line(&mut self, timeout: Duration) -> Option<String> {
        let l = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// The next line the target prints (bounded by [`WAIT`]).
    pub fn next_line(&mut self) -> String {
        match self.line(WAIT) {
            Some(l) => l,
            None => panic!(
                "target {} printed nothing within {WAIT:?}; alive: {}; saw {:?}",
                self.pid,
                self.alive(),
                self.seen
            ),
        }
    }

    /// Skips lines until one starts with `prefix`; panics after `timeout`.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.line(left) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => panic!(
                    "target {}: no line starting with {prefix:?} within {timeout:?}; saw {:?}",
                    self.pid, self.seen
                ),
            }
        }
    }

    /// Writes `text` to the target's stdin as it is, in one write.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).expect("writing to target");
        stdin.flush().unwrap();
    }

    /// Sends one command line and returns the one line it answers.
    pub fn ask(&mut self, cmd: &str) -> String {
        // One write for the whole line: the target reads with read(), and a
        // line split across two writes could arrive as two commands.
        self.send(&format!("{cmd}\n"));
        self.next_line()
    }

    /// True while the process has not exited (it is never waited for while
    /// a tracer might hold it).
    pub fn alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Field 3 is the state; Z (zombie) and X (dead) mean exited.
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        matches!(state, Some(c) if c != 'Z' && c != 'X')
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- waiting for a state of a process, bounded ----

/// Polls `done` (every millisecond) until it holds; panics saying `what`
/// was not reached after [`WAIT`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The system call thread `tid` of `pid` is blocked in, from
/// `/proc/PID/task/TID/syscall`: `None` while it runs, when it is blocked
/// outside a system call, or when it is gone.
pub fn blocked_syscall(pid: i32, tid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    s.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|nr| *nr >= 0)
}

/// Waits (bounded) until thread `tid` of `pid` is blocked in system call
/// `nr`.
pub fn wait_in_syscall(pid: i32, tid: i32, nr: i64) {
    wait_until(
        &format!("thread {tid} of {pid} blocked in system call {nr}"),
        || blocked_syscall(pid, tid) == Some(nr),
    );
}

/// The thread ids of `pid` (none once it is gone).
pub fn task_ids(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until every thread of `pid` is blocked in a system
/// call at once: a multithreaded target whose threads all wait in the
/// kernel has them all there.
pub fn wait_all_blocked(pid: i32) {
    wait_until(&format!("every thread of {pid} blocked"), || {
        let tids = task_ids(pid);
        !tids.is_empty() && tids.iter().all(|&t| blocked_syscall(pid, t).is_some())
    });
}

/// xorshift64*: a deterministic pseudo-random sequence, so that a failure
/// can be replayed. `Rng(state)` starts from `state` as it is (not 0);
/// [`Rng::new`] mixes a seed first.
pub struct Rng(pub u64);

impl Rng {
    /// Starts from `seed`, mixed (and never 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// Fills `buf` with the low bytes of the next numbers.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

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
//! * [`interop_dir`]: the containers packed by libpulp itself.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

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
    pub pid: i32,
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
            pid,
        };
        let first = t.next_line();
        assert!(
            first.starts_with("ready"),
            "target printed {first:?} instead of ready"
        );
        t
    }

    /// The next line the target prints (bounded by [`WAIT`]).
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(l) => l,
            Err(e) => panic!(
                "target {} printed nothing within {WAIT:?} ({e}); alive: {}",
                self.pid,
                self.alive()
            ),
        }
    }

    /// Sends one command line and returns the one line it answers.
    pub fn ask(&mut self, cmd: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        // One write for the whole line: the target reads with read(), and a
        // line split across two writes could arrive as two commands.
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .expect("writing to target");
        stdin.flush().unwrap();
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

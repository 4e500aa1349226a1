//! Shared set-up of the end-to-end tests: a scratch directory holding a
//! prepared copy of the fixtures, the runtime as `libpulp.so.0`, and the
//! real `ulp` binary to run.

#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use ulp_fixtures::{
    copy_files, fixtures_dir, interop_dir, wait_all_blocked, wait_in_syscall, wait_until, Rng,
    Target, TempDir,
};

pub fn ulp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ulp")
}

/// The last line of `ulp trigger`'s report, as libpulp prints it.
pub fn summary(patched: u32, skipped: u32, failed: u32) -> String {
    format!("ulp: Processes patched: {patched}, Skipped: {skipped}, Failed: {failed}.\n")
}

/// The whole report of a trigger that changed one process: its SUCCESS
/// line (`what`: the live patch, or what was reverted) and the summary.
pub fn success_report(prog: &str, pid: &dyn std::fmt::Display, what: &str) -> String {
    format!(
        "  {prog} (pid: {pid}): SUCCESS {what}\n{}",
        summary(1, 0, 0)
    )
}

/// What `id FLAG` says about the user running the tests (`-u`, `-un`...).
pub fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("running id");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `ulp ARGS` in `dir`; returns status, stdout, stderr.
pub fn ulp(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(ulp_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running ulp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The runtime cargo built next to the `ulp` binary, copied into `dir`
/// under its installed name.
pub fn install_runtime(dir: &Path) -> PathBuf {
    let built = Path::new(ulp_bin()).with_file_name("libpulp.so");
    assert!(
        built.exists(),
        "{} is missing: build the workspace first (cargo build --workspace), as `make test` does",
        built.display()
    );
    let to = dir.join("libpulp.so.0");
    std::fs::copy(&built, &to).expect("copying the runtime");
    to
}

/// A scratch directory with the demo library (posted), program, runtime and
/// the live patch packed from `demo_livepatch.dsc`.
pub struct Demo {
    pub dir: TempDir,
    pub runtime: PathBuf,
}

pub const DEMO_DSC: &str = "\
! Demo fix for CVE-2026-0001 (bsc#42).
demo_livepatch.so
@libulpdemo.so.1
demo_answer:new_demo_answer
demo_word:new_demo_word
";

pub const DEMO2_DSC: &str = "\
demo_livepatch2.so
@libulpdemo.so.1
demo_answer:newer_demo_answer
";

impl Demo {
    pub fn new(tag: &str) -> Demo {
        let dir = TempDir::new(tag);
        copy_files(
            &fixtures_dir(),
            dir.path(),
            &[
                "libulpdemo.so.1",
                "demo_prog",
                "demo_livepatch.so",
                "demo_livepatch2.so",
            ],
        );
        let runtime = install_runtime(dir.path());
        let (code, out, err) = ulp(dir.path(), &["post", "libulpdemo.so.1"]);
        assert_eq!(code, 0, "post failed: {out}{err}");
        std::fs::write(dir.join("demo_livepatch.dsc"), DEMO_DSC).unwrap();
        std::fs::write(dir.join("demo_livepatch2.dsc"), DEMO2_DSC).unwrap();
        for dsc in ["demo_livepatch.dsc", "demo_livepatch2.dsc"] {
            let (code, out, err) = ulp(dir.path(), &["packer", dsc]);
            assert_eq!(code, 0, "packer {dsc} failed: {out}{err}");
        }
        Demo { dir, runtime }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Starts demo_prog with the runtime preloaded and `args`.
    pub fn start(&self, args: &[&str]) -> Target {
        let mut cmd = Command::new(self.dir.join("demo_prog"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("LD_PRELOAD", &self.runtime);
        Target::spawn(cmd)
    }

    /// Starts demo_prog with the runtime preloaded and extra environment.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Target {
        let mut cmd = Command::new(self.dir.join("demo_prog"));
        cmd.current_dir(self.dir.path())
            .env("LD_PRELOAD", &self.runtime);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Target::spawn(cmd)
    }

    /// Starts demo_prog with `args` and no runtime: a process started
    /// before live patching was set up.
    pub fn start_plain(&self, args: &[&str]) -> Target {
        let mut cmd = Command::new(self.dir.join("demo_prog"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("LD_PRELOAD");
        Target::spawn(cmd)
    }

    pub fn ulp(&self, args: &[&str]) -> (i32, String, String) {
        ulp(self.dir.path(), args)
    }

    /// `ulp trigger -p PID --load-runtime --runtime RUNTIME
    /// demo_livepatch.so`, with this demo's runtime.
    pub fn load_and_apply(&self, pid: &str) -> (i32, String, String) {
        self.load_and_apply_from(pid, &self.runtime.to_string_lossy())
    }

    /// [`Demo::load_and_apply`] with the runtime `runtime`.
    pub fn load_and_apply_from(&self, pid: &str, runtime: &str) -> (i32, String, String) {
        self.ulp(&[
            "trigger",
            "-p",
            pid,
            "--load-runtime",
            "--runtime",
            runtime,
            "demo_livepatch.so",
        ])
    }

    /// Runs `ulp ARGS` in the directory, which must exit 0; returns its
    /// stdout.
    #[track_caller]
    pub fn ulp_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ulp(args);
        assert_eq!(code, 0, "ulp {args:?}:\n{out}{err}");
        out
    }
}

// ---- the state of a target's threads, from /proc ----

pub fn status_field(pid: i32, tid: &str, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

pub fn tids(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any thread of `pid` is traced right now.
pub fn traced(pid: i32) -> bool {
    tids(pid)
        .iter()
        .any(|t| status_field(pid, t, "TracerPid:").is_some_and(|v| v != "0"))
}

/// Whether the main thread of `pid` is traced right now.
pub fn main_traced(pid: i32) -> bool {
    status_field(pid, &pid.to_string(), "TracerPid:").is_some_and(|v| v != "0")
}

/// Waits (bounded) until no thread of `pid` is traced or in a stop.
pub fn settled(pid: i32) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let bad: Vec<String> = tids(pid)
            .into_iter()
            .filter(|t| {
                let traced = status_field(pid, t, "TracerPid:").is_some_and(|v| v != "0");
                let state = status_field(pid, t, "State:").unwrap_or_default();
                traced || state.starts_with('t') || state.starts_with('T')
            })
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!("threads {bad:?} still traced or stopped"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A scratch directory holding libpulp's interop target `libgreet.so.0`,
/// the `extra` files of the interop folder, and its live patch still
/// unpacked, under the name `container`.
pub fn interop_unpacked(tag: &str, container: &str, extra: &[&str]) -> TempDir {
    let dir = TempDir::new(tag);
    copy_files(&interop_dir(), dir.path(), &["libgreet.so.0"]);
    copy_files(&interop_dir(), dir.path(), extra);
    std::fs::copy(
        interop_dir().join("greet_livepatch1.unpacked.so"),
        dir.join(container),
    )
    .expect("copying the unpacked interop container");
    dir
}

/// Runs `ulp ARGS` in `dir`, killing it (and failing) if it runs past
/// `limit`: a hung ulp is as much a failure as a hung target.
pub fn ulp_bounded(dir: &Path, args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut cmd = Command::new(ulp_bin());
    cmd.args(args).current_dir(dir);
    run_bounded(cmd, &format!("ulp {args:?}"), limit)
}

/// Runs `cmd` (stdin closed; `what` names it), killing it (and failing)
/// if it runs past `limit`; returns status, stdout, stderr.
pub fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, what, limit);
    (
        status.code().unwrap_or(-1),
        out_reader.join().unwrap(),
        err_reader.join().unwrap(),
    )
}

/// Waits for `child` (`what` names it) at most `limit`; past that, kills
/// and reaps it and fails.
pub fn wait_bounded(
    child: &mut std::process::Child,
    what: &str,
    limit: Duration,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("waiting for a child") {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A PID namespace with its own /proc, so that `ulp` without `-p` sees
/// only the processes a test started there (not other tests'). Its init
/// is a `sleep` held by `unshare --kill-child`: killing the holder on drop
/// kills the init, and with it every process of the namespace.
pub struct PidNs {
    holder: std::process::Child,
    /// The host pid of the namespace's init.
    init: u32,
}

impl PidNs {
    pub fn new() -> PidNs {
        let holder = Command::new("unshare")
            .args(["--fork", "--pid", "--mount-proc", "--kill-child=SIGKILL"])
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("running unshare (util-linux)");
        let children = format!("/proc/{0}/task/{0}/children", holder.id());
        let until = Instant::now() + ulp_fixtures::WAIT;
        let init = loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            let child: Option<u32> = text.split_whitespace().next().and_then(|p| p.parse().ok());
            // Ready once the child runs the sleep, inside.
            if let Some(pid) = child.filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            }) {
                break pid;
            }
            assert!(Instant::now() < until, "unshare did not start its child");
            std::thread::sleep(Duration::from_millis(10));
        };
        PidNs { holder, init }
    }

    /// `PROGRAM ARGS` to run inside the namespace, in `dir`.
    pub fn command(&self, dir: &Path, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.init.to_string())
            .args(["-p", "-m"])
            .arg(format!("--wd={}", dir.display()))
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }

    /// Starts `program` in the namespace with the runtime `runtime`
    /// preloaded; returns it and its pid in the namespace (the program
    /// answers `pid`).
    pub fn start(&self, dir: &Path, program: &Path, runtime: &Path) -> (Target, String) {
        let preload = format!("LD_PRELOAD={}", runtime.display());
        let program = program.to_string_lossy();
        let mut t = Target::spawn(self.command(dir, "env", &[&preload, &program]));
        let pid = t.ask("pid");
        (t, pid)
    }

    /// Starts `program` in the namespace without the runtime; returns it
    /// and its pid in the namespace.
    pub fn start_plain(&self, dir: &Path, program: &Path) -> (Target, String) {
        let program = program.to_string_lossy();
        let mut t = Target::spawn(self.command(dir, "env", &[&program]));
        let pid = t.ask("pid");
        (t, pid)
    }

    /// Runs `ulp ARGS` in the namespace, in `dir`.
    pub fn ulp(&self, dir: &Path, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(dir, ulp_bin(), args)
            .stdin(Stdio::null())
            .output()
            .expect("running ulp in the namespace");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `ulp ARGS` in the namespace, in `dir`, killing it (and
    /// failing) if it runs past `limit`.
    pub fn ulp_bounded(&self, dir: &Path, args: &[&str], limit: Duration) -> (i32, String, String) {
        let cmd = self.command(dir, ulp_bin(), args);
        run_bounded(cmd, &format!("ulp {args:?} in the namespace"), limit)
    }
}

impl Drop for PidNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

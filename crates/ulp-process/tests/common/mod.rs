//! Test support: build small C programs with gcc and run them as
//! [`ulp_fixtures::Target`]s (killed on drop). Programs announce readiness
//! with a `ready ...` line on stdout, the hex addresses the test needs
//! after it; every wait here is bounded.

#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub use ulp_fixtures::{wait_in_syscall, wait_until, Target, TempDir};

/// Compiles `src` into an executable in `dir`.
pub fn compile(dir: &TempDir, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let c = dir.path().join(format!("{name}.c"));
    let exe = dir.path().join(name);
    std::fs::write(&c, src).expect("write C source");
    let out = Command::new("gcc")
        .args(["-O2", "-g", "-Wall", "-o"])
        .arg(&exe)
        .arg(&c)
        .args(flags)
        .arg("-lpthread")
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc failed for {name}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A C program compiled from `src` (with gcc `flags`) into a fresh
/// directory named after `name`, started with `args`, its ready line
/// seen. Returns the directory (keep it while the program runs), the
/// program and the addresses on its ready line.
pub fn run_c(name: &str, src: &str, flags: &[&str], args: &[&str]) -> (TempDir, Target, Vec<u64>) {
    let dir = TempDir::new(name);
    let exe = compile(&dir, name, src, flags);
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let t = Target::spawn(cmd);
    let addrs = t.ready_hex();
    (dir, t, addrs)
}

pub fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == flag))
        })
        .unwrap_or(false)
}

pub fn deadline(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

//! Measure 6: `ulp watch`, exec to patched. With a watch running on a store
//! that holds the record of the bench live patch, a burst of plain
//! programs (no LD_PRELOAD) is started; each reads CLOCK_MONOTONIC at the
//! top of `main` and again when it first sees the patched `bench_fn`, and
//! prints both. The row is the median and p99 of the differences.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kit::{Kit, WATCH_NAME};
use crate::procs::{self, Proc};
use crate::report::{median, percentile, Row, Unit};
use crate::Config;

/// How many programs a burst starts.
const BURST: usize = 50;

/// A running `ulp watch`; stopped (SIGTERM, then SIGKILL) on drop.
struct Watch {
    child: Child,
    log: std::path::PathBuf,
}

impl Watch {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for a log line containing `text`.
    fn wait_for(&self, text: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "ulp watch did not log {text:?} within {timeout:?}: {}",
                    self.log().trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: a signal to our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    let store = kit.path("store");
    let s = store.to_string_lossy().into_owned();
    let rec = kit.ulp(&[
        "trigger",
        "--persist",
        "--store",
        &s,
        "-p",
        "ulpb-nobody",
        "bench_livepatch.so",
    ])?;
    if rec.code != 0 {
        return Err(format!("recording the live patch failed: {}", rec.both()));
    }
    let log = kit.path("watch.log");
    let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(&kit.ulp);
    cmd.current_dir(&kit.dir)
        .args(["watch", "--store", &s, "-p", WATCH_NAME])
        .arg(format!("--runtime={}", kit.runtime.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    procs::die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting ulp watch: {e}"))?;
    let watch = Watch { child, log };
    watch.wait_for("store: 1 record", Duration::from_secs(20))?;
    let source = if watch.log().contains("(netlink") {
        "netlink"
    } else {
        "polling"
    };

    let rounds = cfg.reps(3, 1);
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let mut burst = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            burst.push(Proc::start(kit.command(WATCH_NAME, false), true)?);
        }
        for p in &mut burst {
            let line = p.line(Duration::from_secs(20))?;
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(&"patched"), Some(a), Some(b)) = (f.first(), f.get(1), f.get(2)) else {
                return Err(format!(
                    "pid {} printed {line:?}; ulp watch logged: {}",
                    p.pid,
                    watch.log().trim()
                ));
            };
            let (a, b): (f64, f64) = (
                a.parse().map_err(|_| format!("bad line {line:?}"))?,
                b.parse().map_err(|_| format!("bad line {line:?}"))?,
            );
            samples.push((b - a) / 1e9);
        }
        procs::kill_all(burst);
    }
    drop(watch);
    let note = format!(
        "{rounds} burst(s) of {BURST} plain programs started at once under `ulp watch` ({source}); each times CLOCK_MONOTONIC from the top of main to its first call of the patched function"
    );
    rows.push(
        Row::new(
            format!("watch, exec to patched ({BURST} at once): median"),
            Unit::Secs,
            median(&samples),
        )
        .samples(&samples)
        .note(note),
    );
    rows.push(Row::new(
        format!("watch, exec to patched ({BURST} at once): p99"),
        Unit::Secs,
        percentile(&samples, 99.0),
    ));
    Ok(())
}

//! Live patching under load: a target with 8 threads calling the patched
//! functions in a tight loop and 8 threads doing malloc/free and
//! dlopen/dlclose (fixtures/stress_prog.c) goes through N apply and revert
//! cycles. Every call must return the old or the new result, every trigger
//! must succeed (a busy result is tolerated only when a retry succeeds),
//! and the target must neither crash nor hang: it answers after every
//! trigger and every one of its threads keeps making progress.
//!
//! N is `ULP_STRESS_CYCLES` (default 60, well under a minute). The long
//! run, for manual use:
//!
//!     ULP_STRESS_CYCLES=500 cargo test --release -p ulp --test stress -- --nocapture

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const DEFAULT_CYCLES: u32 = 60;
/// How many times one trigger may be busy before the run fails.
const BUSY_RETRIES: u32 = 5;
/// No single `ulp` run may take longer than this (its own --timeout is 20 s).
const ULP_DEADLINE: Duration = Duration::from_secs(60);
/// How often (in cycles) every thread of the target must have moved on.
const PROGRESS_EVERY: u32 = 10;

fn cycles() -> u32 {
    match std::env::var("ULP_STRESS_CYCLES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("ULP_STRESS_CYCLES must be a number, got {v:?}")),
        Err(_) => DEFAULT_CYCLES,
    }
}

/// What the run saw, for the final report.
#[derive(Default)]
struct Tally {
    triggers: u32,
    busy: u32,
    slowest: Duration,
}

/// One trigger that must succeed: exit 0 and a SUCCESS line. A busy
/// result (some thread in the way) is counted and retried; any other
/// failure, or busy more than [`BUSY_RETRIES`] times in a row, fails.
fn trigger(dir: &Path, pid: &str, revert: bool, what: &str, tally: &mut Tally) {
    let mut args = vec!["trigger", "-r", "10", "--timeout", "20", "-p", pid];
    if revert {
        args.push("--revert");
    }
    args.push("demo_livepatch.so");
    for attempt in 0..=BUSY_RETRIES {
        let start = Instant::now();
        let (code, out, err) = ulp_bounded(dir, &args, ULP_DEADLINE);
        tally.slowest = tally.slowest.max(start.elapsed());
        tally.triggers += 1;
        if code == 0 && out.contains(": SUCCESS demo_livepatch.so") {
            return;
        }
        let busy = code == 1 && out.contains("ERROR") && out.contains("busy");
        assert!(
            busy,
            "{what}: trigger failed (attempt {attempt}), and not because the process was busy:\n{out}{err}"
        );
        tally.busy += 1;
        eprintln!("{what}: busy, retrying: {}", out.trim());
    }
    panic!("{what}: still busy after {BUSY_RETRIES} retries");
}

/// `key=value` from a `stats` line.
fn stat(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn thread_counters(t: &mut Target) -> Vec<u64> {
    t.ask("threads")
        .split_whitespace()
        .map(|v| v.parse().expect("a counter"))
        .collect()
}

#[test]
fn apply_and_revert_under_load() {
    let n = cycles();
    let demo = Demo::new("stress");
    copy_files(
        &fixtures_dir(),
        demo.dir.path(),
        &["stress_prog", "stress_plugin.so"],
    );
    let mut cmd = Command::new(demo.dir.join("stress_prog"));
    cmd.args(["-c", "8", "-a", "8"])
        .current_dir(demo.dir.path())
        .env("LD_PRELOAD", &demo.runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    let dir = demo.dir.path();
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut last = thread_counters(&mut t);
    assert_eq!(last.len(), 16, "8 callers and 8 allocators");

    for i in 0..n {
        trigger(dir, &pid, false, &format!("cycle {i} apply"), &mut tally);
        assert!(t.alive(), "cycle {i}: the target died after apply");
        assert_eq!(t.ask("answer"), "2", "cycle {i}: after apply");
        assert_eq!(t.ask("word"), "new", "cycle {i}: after apply");
        trigger(dir, &pid, true, &format!("cycle {i} revert"), &mut tally);
        assert!(t.alive(), "cycle {i}: the target died after revert");
        assert_eq!(t.ask("answer"), "1", "cycle {i}: after revert");
        assert_eq!(t.ask("word"), "old", "cycle {i}: after revert");

        let stats = t.ask("stats");
        assert_eq!(
            stat(&stats, "bad"),
            0,
            "cycle {i}: a call returned neither the old nor the new result ({}); {stats}",
            t.ask("first_bad")
        );
        assert_eq!(
            stat(&stats, "dlfail"),
            0,
            "cycle {i}: dlopen failed; {stats}"
        );
        if (i + 1) % PROGRESS_EVERY == 0 || i + 1 == n {
            // Every thread moved on since the last check: none is stuck
            // (say, on a lock held by a thread ulp left stopped).
            let now = thread_counters(&mut t);
            let stuck: Vec<usize> = (0..now.len()).filter(|&k| now[k] <= last[k]).collect();
            assert!(
                stuck.is_empty(),
                "cycle {i}: threads {stuck:?} made no progress (0-7 call, 8-15 allocate): {last:?} -> {now:?}"
            );
            last = now;
            if std::env::var_os("ULP_STRESS_VERBOSE").is_some() {
                eprintln!("cycle {}/{n}: {stats}", i + 1);
            }
        }
    }

    let stats = t.ask("stats");
    let first_bad = t.ask("first_bad");
    assert!(t.alive(), "the target died");
    assert_eq!(stat(&stats, "bad"), 0, "anomalies: {first_bad}; {stats}");
    assert_eq!(first_bad, "none");
    assert_eq!(stat(&stats, "dlfail"), 0, "{stats}");
    assert!(stat(&stats, "calls") > 0, "{stats}");
    assert!(stat(&stats, "allocs") > 0, "{stats}");
    assert!(stat(&stats, "dlopens") > 0, "{stats}");
    if n > 0 {
        assert!(
            stat(&stats, "new") > 0,
            "the callers never saw the new result: {stats}"
        );
    }
    eprintln!(
        "stress: {n} apply/revert cycles in {:.1} s: {} triggers, {} busy (each retried with success), \
         slowest trigger {:.3} s; target: {stats}",
        started.elapsed().as_secs_f64(),
        tally.triggers,
        tally.busy,
        tally.slowest.as_secs_f64()
    );
}

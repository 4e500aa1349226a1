//! Processes that exit while a trigger runs, as on a busy host: thousands
//! of short-lived patchable processes (fixtures/exit_prog.c), each exiting
//! as soon as it sees the patched function, some exiting by themselves at
//! a random moment, kept coming in waves by fixtures/exit_fleet.c, while
//! `ulp trigger` without `-p` runs over them again and again.
//!
//! A process whose code writes were made is a SUCCESS even if it exits a
//! microsecond later; one that exits before is SKIPPED (`process
//! exited`); neither makes a run fail. Every run must exit 0 with
//! `Failed: 0` and no ERROR line, and every process must end by seeing
//! the patch or by its own choice, never by a crash.
//!
//! The runs use no `-p`, so they happen in a PID namespace of their own
//! (common's `PidNs`, as in trigger_options.rs), where ulp sees only this test's processes.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Processes started in all.
const TOTAL: u32 = 2000;
/// At most this many alive at once.
const ALIVE: u32 = 120;
/// The whole test, at most (it normally takes a fraction of this).
const LIMIT: Duration = Duration::from_secs(180);
/// One `ulp trigger` run, at most.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// `key=value` from a `status` line of the launcher.
fn stat(line: &str, key: &str) -> u32 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn processes_exiting_during_triggers_are_never_failures() {
    let demo = Demo::new("exits");
    copy_files(
        &fixtures_dir(),
        demo.dir.path(),
        &["exit_prog", "exit_fleet"],
    );
    let dir = demo.dir.path();
    // Right after a cold build (as in CI) the kernel may still be writing
    // gigabytes of build output back to disk, and this VM's kernel then
    // starves other work for seconds; write it back before timing
    // anything, so the bounds below measure ulp, not the writeback.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let ns = PidNs::new();
    let total = TOTAL.to_string();
    let alive = ALIVE.to_string();
    let prog = demo.path("exit_prog");
    let runtime = demo.runtime.to_string_lossy().into_owned();
    let mut fleet = Target::spawn(ns.command(
        dir,
        &demo.path("exit_fleet"),
        &[&total, &alive, &prog, &runtime],
    ));

    let start = Instant::now();
    let (mut runs, mut success, mut exited, mut skipped) = (0u32, 0u32, 0u32, 0u32);
    let status = loop {
        assert!(
            start.elapsed() < LIMIT,
            "not done within {LIMIT:?}: {}",
            fleet.ask("status")
        );
        let (code, out, err) = ns.ulp_bounded(
            dir,
            &["trigger", "--timeout", "20", "demo_livepatch.so"],
            RUN_LIMIT,
        );
        runs += 1;
        let ctx = format!("run {runs}:\n{out}{err}");
        assert_eq!(code, 0, "{ctx}");
        assert!(!out.contains("ERROR"), "{ctx}");
        let summary = out.lines().last().unwrap_or_default();
        assert!(
            summary.starts_with("ulp: Processes patched: ") && summary.ends_with(", Failed: 0."),
            "{ctx}"
        );
        for line in out.lines() {
            if line.contains(": SUCCESS demo_livepatch.so") {
                success += 1;
            } else if line.contains(": SKIPPED") && line.ends_with("process exited") {
                exited += 1;
            } else if line.contains(": SKIPPED") {
                skipped += 1;
            }
        }
        let status = fleet.ask("status");
        if stat(&status, "started") == TOTAL && stat(&status, "alive") == 0 {
            break status;
        }
    };
    eprintln!(
        "exits: {TOTAL} processes, {runs} runs in {:.1} s: {success} SUCCESS, {exited} SKIPPED \
         (exited), {skipped} SKIPPED (other); launcher: {status}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(stat(&status, "other"), 0, "a process crashed: {status}");
    assert_eq!(
        stat(&status, "never"),
        0,
        "a process never saw the patch: {status}"
    );
    assert_eq!(
        stat(&status, "patched") + stat(&status, "self"),
        TOTAL,
        "{status}"
    );
    assert!(stat(&status, "patched") > 0, "{status}");
    assert!(success > 0);
}

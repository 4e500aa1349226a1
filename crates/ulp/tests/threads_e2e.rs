//! End to end through the real `ulp` binary against fixtures/threads_prog.c:
//! threads that hold known values in their vector and general registers
//! while ulp patches and reverts (their registers must come back bit for
//! bit), and hundreds of threads, some created and exiting all the time.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Starts threads_prog (copied into the demo's directory) with the runtime
/// preloaded and `args`.
fn start_threads_prog(demo: &Demo, args: &[&str]) -> Target {
    copy_files(&fixtures_dir(), demo.dir.path(), &["threads_prog"]);
    let mut cmd = Command::new(demo.dir.join("threads_prog"));
    cmd.args(args)
        .current_dir(demo.dir.path())
        .env("LD_PRELOAD", &demo.runtime);
    Target::spawn(cmd)
}

/// Parses "k1=v1 k2=v2 ..." into the value of `key`.
fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Applies (or reverts) demo_livepatch.so; ulp must succeed.
fn trigger(demo: &Demo, pid: &str, revert: bool, cycle: usize) {
    let mut args = vec!["trigger", "-p", pid];
    if revert {
        args.push("--revert");
    }
    args.push("demo_livepatch.so");
    let started = Instant::now();
    let (code, out, err) = demo.ulp(&args);
    assert_eq!(
        code,
        0,
        "cycle {cycle}: ulp {args:?} failed after {:?}\nstdout: {out}\nstderr: {err}",
        started.elapsed()
    );
    assert!(
        out.contains("SUCCESS demo_livepatch.so"),
        "cycle {cycle}: {out}{err}"
    );
}

/// The system calls thread `tid` of `pid` has made that read or wrote
/// (/proc/PID/task/TID/io syscr + syscw).
fn io_syscalls(pid: i32, tid: i64) -> i64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/io"))
        .unwrap_or_else(|e| panic!("reading the io of thread {tid}: {e}"));
    io.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            matches!(k, "syscr" | "syscw").then(|| v.trim().parse::<i64>().ok())?
        })
        .sum()
}

/// Asks `perthread` until the rounds of both vector threads have passed
/// `past` (bounded).
fn wait_rounds_past(t: &mut Target, past: (i64, i64)) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = t.ask("perthread");
        let now = (field(&line, "t0"), field(&line, "t1"));
        if now.0 > past.0 && now.1 > past.1 {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "vector threads stopped advancing: {line} (before: {past:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vector_registers_survive_patching() {
    let demo = Demo::new("threads-vec");
    // -b: the main thread waits inside the C library (pthread_join), where
    // ulp will not run its call, so it falls to a vector thread (the next
    // thread ids), running application code in the middle of the asm loop.
    let mut t = start_threads_prog(&demo, &["-v", "-b"]);
    let pid = t.pid.to_string();
    let mode = t.ask("mode");
    assert!(mode == "avx" || mode == "sse", "{mode}");
    assert_eq!(t.ask("answer"), "1");
    let mut seen = wait_rounds_past(&mut t, (0, 0));
    let tids = t.ask("tids");
    let vec_tids = [field(&tids, "t0"), field(&tids, "t1")];
    // The vector threads themselves never read or write a file.
    let io_before: i64 = vec_tids.iter().map(|&tid| io_syscalls(t.pid, tid)).sum();
    let before = t.ask("stats");
    assert_eq!(
        field(&before, "corrupt"),
        0,
        "before any patching: {before}"
    );

    for cycle in 0..25 {
        trigger(&demo, &pid, false, cycle);
        assert_eq!(t.ask("answer"), "2", "cycle {cycle} applied");
        trigger(&demo, &pid, true, cycle);
        assert_eq!(t.ask("answer"), "1", "cycle {cycle} reverted");
        // Both threads keep running (and so keep checking) between cycles.
        seen = wait_rounds_past(&mut t, seen);
        let stats = t.ask("stats");
        assert_eq!(
            field(&stats, "corrupt"),
            0,
            "cycle {cycle} ({mode}): a register changed under ulp: {stats}"
        );
    }
    let after = t.ask("stats");
    assert!(
        field(&after, "rounds") > field(&before, "rounds"),
        "{before} -> {after}"
    );
    assert_eq!(field(&after, "corrupt"), 0, "{after}");
    assert!(t.alive());
    // ulp's calls into the runtime (which reads the patch file) did run on
    // the vector threads, so their registers really were borrowed.
    let io_after: i64 = vec_tids.iter().map(|&tid| io_syscalls(t.pid, tid)).sum();
    assert!(
        io_after > io_before,
        "ulp never ran its call on a vector thread (read/write system calls {io_before} -> {io_after})"
    );
}

#[test]
fn hundreds_of_threads_including_new_and_exiting_ones() {
    let demo = Demo::new("threads-many");
    let mut t = start_threads_prog(&demo, &["-p", "300", "-c", "2"]);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("answer"), "1");
    let threads: i64 = t.ask("threads").parse().expect("a thread count");
    assert!(threads >= 300, "{threads}");
    let mut created = field(&t.ask("churn"), "created");

    for cycle in 0..10 {
        trigger(&demo, &pid, false, cycle);
        assert_eq!(t.ask("answer"), "2", "cycle {cycle} applied");
        trigger(&demo, &pid, true, cycle);
        assert_eq!(t.ask("answer"), "1", "cycle {cycle} reverted");
        assert!(t.alive(), "cycle {cycle}: target died");
        // The churners keep creating threads across the cycles.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let churn = t.ask("churn");
            assert_eq!(field(&churn, "bad"), 0, "cycle {cycle}: {churn}");
            let now = field(&churn, "created");
            if now > created {
                created = now;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: no thread created since: {churn}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(t.alive());
    let threads: i64 = t.ask("threads").parse().expect("a thread count");
    assert!(threads >= 300, "threads at the end: {threads}");
}

/// Waits (bounded) until the main thread of `pid` is a zombie.
fn wait_leader_exited(pid: i32) {
    let leader = format!("/proc/{pid}/task/{pid}/stat");
    wait_until("the main thread exiting", || {
        let stat = std::fs::read_to_string(&leader).unwrap_or_default();
        stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next()) == Some('Z')
    });
}

#[test]
fn a_process_whose_main_thread_exited_gets_the_runtime_loaded() {
    // The same kind of process started without the runtime: loading it
    // (`--load-runtime`) checks the process's environment, executable and
    // root, all gone with its leader, then applies and reverts.
    let demo = Demo::new("threads-zombie-load");
    copy_files(&fixtures_dir(), demo.dir.path(), &["threads_prog"]);
    let mut cmd = Command::new(demo.dir.join("threads_prog"));
    cmd.args(["-p", "4", "-x"]).current_dir(demo.dir.path());
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    wait_leader_exited(t.pid);
    let (code, out, err) = demo.load_and_apply(&pid);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS demo_livepatch.so"), "{out}{err}");
    assert_eq!(t.ask("answer"), "2");
    trigger(&demo, &pid, true, 0);
    assert_eq!(t.ask("answer"), "1");
    if let Err(e) = settled(t.pid) {
        panic!("{e}");
    }
}

#[test]
fn a_process_whose_main_thread_exited_is_patched_and_reverted() {
    // The main thread leaves with pthread_exit: the leader stays a zombie,
    // listed among the tasks and counted in the thread count, and cannot
    // be seized. Every trigger must stop the live threads (8 in pause(),
    // the one serving commands) all the same, switch them, and leave the
    // process running and untraced.
    let demo = Demo::new("threads-zombie-leader");
    let mut t = start_threads_prog(&demo, &["-p", "8", "-x"]);
    let pid = t.pid.to_string();
    wait_leader_exited(t.pid);
    assert_eq!(t.ask("answer"), "1");
    for cycle in 0..3 {
        trigger(&demo, &pid, false, cycle);
        assert_eq!(t.ask("answer"), "2", "cycle {cycle} applied");
        trigger(&demo, &pid, true, cycle);
        assert_eq!(t.ask("answer"), "1", "cycle {cycle} reverted");
    }
    if let Err(e) = settled(t.pid) {
        panic!("{e}");
    }
    // Still answering (its stat says Z: that is the leader's state).
    let threads: i64 = t.ask("threads").parse().expect("a thread count");
    assert_eq!(threads, 10, "the zombie leader, 8 pausers and the server");
}

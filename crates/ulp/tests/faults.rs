//! A `ulp` killed at any moment of a trigger never harms the target: every
//! trigger below runs as a child `ulp` process that is SIGKILLed after a
//! random delay (or, deterministically, after N code writes), and after
//! each kill the target must be alive, answer with the old or the new code
//! (both functions of the patch the same), and show no trace in its
//! threads (no worker saw a bad result, no sleep was cut short or
//! interrupted, no read saw EINTR, no thread is left traced or stopped).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{main_traced, settled, status_field, traced, ulp_bin, wait_bounded, Demo, Rng};

fn trigger_cmd(demo: &Demo, pid: &str, revert: bool) -> Command {
    let mut cmd = Command::new(ulp_bin());
    cmd.arg("trigger").arg("-p").arg(pid);
    if revert {
        cmd.arg("--revert");
    }
    cmd.arg("demo_livepatch.so")
        .current_dir(demo.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// The runtime's message log, as `ulp messages` prints it.
fn messages(demo: &Demo, pid: &str) -> usize {
    demo.ulp(&["messages", "-p", pid]).1.lines().count()
}

#[test]
fn killing_ulp_at_any_moment_leaves_the_target_running() {
    let demo = Demo::new("faults");
    let mut t = demo.start(&["-t", "4", "-s"]);
    let pid = t.pid.to_string();

    // How long `ulp` holds threads of the target during one trigger: most
    // kills land at a random point of that window, counted from the moment
    // the main thread (the first one tried for the runtime call) is seized.
    let (mut before, mut windows, mut calls_t) = (Duration::ZERO, Vec::new(), Vec::new());
    for revert in [false, true, false, true, false, true] {
        let start = Instant::now();
        let mut child = trigger_cmd(&demo, &pid, revert).spawn().unwrap();
        let mut seen: Option<(Duration, Duration)> = None;
        let mut call_end = None;
        loop {
            if main_traced(t.pid) {
                let now = start.elapsed();
                seen = Some((seen.map_or(now, |s| s.0), now));
            } else if let (Some((a, _)), None) = (seen, call_end) {
                // The first release: the runtime call is over.
                call_end = Some(start.elapsed() - a);
            }
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "a plain trigger failed");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "trigger hangs");
        }
        if let Some((a, d)) = seen {
            before = before.max(a);
            windows.push(d - a);
            calls_t.extend(call_end);
        }
    }
    windows.sort();
    let window = windows.get(windows.len() / 2).copied().unwrap_or_default();
    let window_us = (window.as_micros() as u64 * 3 / 2).max(1000);
    calls_t.sort();
    let call = calls_t.get(calls_t.len() / 2).copied().unwrap_or_default();
    let call_us = (call.as_micros() as u64 * 3 / 2).max(500);
    let before_us = (before.as_micros() as u64).max(1000);
    eprintln!(
        "ulp seizes after up to {before:?}, calls the runtime for {call:?} and holds the target \
         for {window:?} (medians)"
    );

    // 60 in CI; ULP_FAULT_TRIGGERS=200 (or more) for the full run.
    let triggers: u64 = std::env::var("ULP_FAULT_TRIGGERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let (mut attached, mut calls, mut ran) = (0, 0, 0);
    for i in 0..triggers {
        let seed = 0x5eed_0000 + i;
        let mut rng = Rng::new(seed);
        // One kill in four at any time from the start, the others at a
        // random point after the seize: half of all within the runtime
        // call, a quarter anywhere up to the final release.
        let kind = rng.next() % 4;
        let blind = kind == 0;
        let span = match kind {
            0 => before_us,
            1 => window_us,
            _ => call_us,
        };
        let delay = Duration::from_micros(rng.next() % span);
        let revert = i % 2 == 1;
        let logged = messages(&demo, &pid);
        let mut child = trigger_cmd(&demo, &pid, revert).spawn().unwrap();
        if !blind {
            let end = Instant::now() + Duration::from_secs(5);
            while !main_traced(t.pid) && child.try_wait().unwrap().is_none() && Instant::now() < end
            {
                std::hint::spin_loop();
            }
        }
        // Not a readiness wait: the random moment ulp is killed at.
        std::thread::sleep(delay);
        let was_traced = traced(t.pid);
        // Traced but not stopped: the main thread is running the call.
        let in_call = main_traced(t.pid)
            && !status_field(t.pid, &pid, "State:").is_some_and(|s| s.starts_with('t'));
        let _ = child.kill();
        let _ = child.wait();
        let ctx = format!(
            "iteration {i} (seed {seed:#x}, kill after {delay:?}{}, revert {revert})",
            if blind { "" } else { " from the seize" }
        );
        if let Err(e) = settled(t.pid) {
            panic!("{ctx}: {e}");
        }
        assert!(t.alive(), "{ctx}: the target died");
        // Both functions of the patch old, or both new.
        let answer = t.ask("answer");
        let word = t.ask("word");
        assert!(
            (answer == "1" && word == "old") || (answer == "2" && word == "new"),
            "{ctx}: answer {answer:?}, word {word:?}"
        );
        let stats = t.ask("stats");
        assert!(stats.ends_with(" bad=0"), "{ctx}: {stats}");
        let sleeps = t.ask("sleeps");
        assert!(
            sleeps.contains(" short=0 ") && sleeps.ends_with(" eintr=0"),
            "{ctx}: {sleeps}"
        );
        attached += usize::from(was_traced);
        calls += usize::from(in_call);
        ran += usize::from(messages(&demo, &pid) > logged);
    }
    eprintln!(
        "{triggers} kills: {attached} while a thread was traced ({calls} of them with the main thread \
         inside the runtime call), {ran} after the runtime call had run"
    );

    // A kill between the runtime's record and the end of the code writes
    // leaves them in the runtime's write journal: the next trigger makes
    // them first, so one apply ends applied (newly, or "already applied"),
    // with the new code, whatever the last kill interrupted.
    // (With many retries: the workers may be running through stubs the
    // last kill left live, which the busy check steps around.)
    let (code, out, err) = demo.ulp(&["trigger", "-r", "50", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
    assert_eq!(demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]).0, 1);
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]).0, 0);
    assert!(t.ask("stats").ends_with(" bad=0"));
}

#[test]
fn a_tool_killed_before_its_writes_is_completed_by_the_next_trigger() {
    // ULP_TEST_KILL_BEFORE_WRITES makes ulp SIGKILL itself right after the
    // runtime recorded the operation and before any code byte is written:
    // the registry and the code disagree. The runtime's write journal lets
    // the next trigger finish those writes first.
    let demo = Demo::new("journal");
    let mut t = demo.start(&["-t", "2"]);
    let pid = t.pid.to_string();
    let killed = |args: &[&str]| killed_by(&demo, "ULP_TEST_KILL_BEFORE_WRITES", args);
    let check = || demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]).0;

    killed(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "1", "no byte was written");
    assert_eq!(check(), 1, "but the runtime recorded the patch");
    let (_, _, err) = demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]);
    assert!(
        err.contains("a killed ulp left code writes unfinished"),
        "{err}"
    );
    // `patches` says so, in text and in JSON.
    let (_, out, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(
        out.contains("  Interrupted: a killed ulp left code writes unfinished"),
        "{out}"
    );
    let (_, out, _) = demo.ulp(&["patches", "--json", "-p", &pid]);
    assert!(out.contains("\"writes_pending\": true"), "{out}");
    // The same apply again: the pending writes are made, and the patch is
    // reported as already applied, which it now truly is.
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SKIPPED Patch already applied"), "{out}");
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
    let (_, out, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(!out.contains("Interrupted"), "completed: {out}");

    killed(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "2", "no byte was written");
    assert_eq!(check(), 0, "but the runtime dropped the patch");
    // Any trigger touching the process completes them: here a check-only
    // revert of a patch that is not applied (an ERROR, as always).
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(code, 16, "Patch not applied (272): {out}");
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
    assert!(t.alive());
}

#[test]
fn a_tool_killed_at_the_resume_routines_notice_leaves_the_target_running() {
    // ULP_TEST_KILL_AT_NOTICE makes ulp SIGKILL itself at the stop of the
    // resume routine's notice (a SIGURG the thread queued to itself once
    // the runtime call was over): the thread is stopped in the routine,
    // with the call's registers. The kernel detaches it with the SIGURG,
    // which the process leaves to its default action (ignore); the routine
    // then returns to the thread's own code by itself, and the next
    // trigger completes the writes the runtime recorded.
    let demo = Demo::new("notice");
    let mut t = demo.start(&["-t", "2"]);
    let pid = t.pid.to_string();
    // Only the notice's stop kills it: the routine sent one.
    let killed = |args: &[&str]| killed_by(&demo, "ULP_TEST_KILL_AT_NOTICE", args);
    // The operation, the answer before and after, and the exit code of
    // the same operation again: the apply is then already applied (0),
    // the revert an error, the patch being gone (16), but both complete
    // the writes first.
    for (args, before, after, again) in [
        (
            vec!["trigger", "-p", &pid, "demo_livepatch.so"],
            "1",
            "2",
            0,
        ),
        (
            vec!["trigger", "-p", &pid, "--revert", "demo_livepatch.so"],
            "2",
            "1",
            16,
        ),
    ] {
        killed(&args);
        if let Err(e) = settled(t.pid) {
            panic!("{args:?}: {e}");
        }
        assert!(t.alive(), "{args:?}");
        assert_eq!(t.ask("answer"), before, "{args:?}: no byte was written");
        assert!(t.ask("stats").ends_with(" bad=0"), "{args:?}");
        // Nothing pending for the process: the SIGURG went the way of any
        // ignored signal.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        for field in ["SigPnd:", "ShdPnd:"] {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(line.ends_with("0000000000000000"), "{args:?}: {line}");
        }
        // The same operation again completes it (the runtime recorded it
        // and its writes are pending).
        let (code, out, err) = demo.ulp(&args[..]);
        assert_eq!(code, again, "{out}{err}");
        assert_eq!(t.ask("answer"), after, "{args:?}");
    }
}

#[test]
fn a_process_that_handles_sigurg_gets_no_notice_and_sees_no_signal() {
    // A process with its own SIGURG handler (as a Go program's runtime
    // has) must never see the resume routine's notice: the routine does
    // not send it there, and the tool stops the thread itself. The hook
    // that kills ulp at the notice's stop proves it: ulp lives.
    let demo = Demo::new("urghandler");
    let mut t = demo.start(&["-t", "2", "-u"]);
    let pid = t.pid.to_string();
    for (args, answer) in [
        (vec!["trigger", "-p", &pid, "demo_livepatch.so"], "2"),
        (
            vec!["trigger", "-p", &pid, "--revert", "demo_livepatch.so"],
            "1",
        ),
    ] {
        let out = std::process::Command::new(ulp_bin())
            .args(&args)
            .current_dir(demo.dir.path())
            .env("ULP_TEST_KILL_AT_NOTICE", "1")
            .output()
            .expect("running ulp");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(t.ask("answer"), answer, "{args:?}");
        assert_eq!(t.ask("urgs"), "0", "{args:?}: a SIGURG reached the process");
    }
    assert!(t.ask("stats").ends_with(" bad=0"));
}

/// Runs `ulp ARGS` in the demo's directory with the fault hook `hook`
/// set, and checks that the hook killed it (SIGKILL).
fn killed_by(demo: &Demo, hook: &str, args: &[&str]) {
    let out = std::process::Command::new(ulp_bin())
        .args(args)
        .current_dir(demo.dir.path())
        .env(hook, "1")
        .output()
        .expect("running ulp");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "ulp killed itself ({hook})");
}

/// What demo_prog answers to `answer` and `word`: the old code says
/// ("1", "old"), the new ("2", "new").
fn answer_and_word(t: &mut common::Target) -> (String, String) {
    (t.ask("answer"), t.ask("word"))
}

/// Runs `ulp ARGS` in the demo's directory with `env` set, waiting at most
/// 30 s (then it is killed and the test fails).
fn ulp_bounded(demo: &Demo, args: &[&str], env: &[(&str, String)]) -> std::process::ExitStatus {
    ulp_in(demo.dir.path(), args, "", env)
}

#[test]
fn a_tool_killed_between_any_two_code_writes_leaves_every_function_old_or_new() {
    // ULP_TEST_KILL_AFTER_WRITES=N makes ulp SIGKILL itself after N code
    // words poked (every thread stopped). For every N up to the last word
    // of a two-function patch (demo_answer and demo_word), applying and
    // reverting, each on a fresh target (so that the apply writes its
    // stubs over the padding NOPs): after the kill both functions run the
    // old code or both the new, no thread is left traced or stopped, and
    // the next trigger brings code and registry into agreement.
    use std::os::unix::process::ExitStatusExt;
    let demo = Demo::new("atomic");
    let old = ("1".to_string(), "old".to_string());
    let new = ("2".to_string(), "new".to_string());

    for reverting in [false, true] {
        let what = if reverting { "revert" } else { "apply" };
        let (before, after) = if reverting {
            (&new, &old)
        } else {
            (&old, &new)
        };
        let mut seen = Vec::new();
        let mut n = 0u32;
        loop {
            assert!(n <= 64, "{what}: ulp still killed after {n} words");
            let mut t = demo.start(&["-t", "2"]);
            let pid = t.pid.to_string();
            // Many retries, should a worker be in the way of the next
            // trigger (busy).
            let apply = ["trigger", "-r", "50", "-p", &pid, "demo_livepatch.so"];
            let revert = [
                "trigger",
                "-r",
                "50",
                "-p",
                &pid,
                "--revert",
                "demo_livepatch.so",
            ];
            let op: &[&str] = if reverting { &revert } else { &apply };
            if reverting {
                assert!(ulp_bounded(&demo, &apply, &[]).success());
            }
            assert_eq!(&answer_and_word(&mut t), before, "{what} {n}: start");
            let env = [("ULP_TEST_KILL_AFTER_WRITES", n.to_string())];
            let st = ulp_bounded(&demo, op, &env);
            if st.signal() != Some(9) {
                // Fewer than n words to write: the trigger ran to its end.
                assert!(st.success(), "{what}: plain trigger failed: {st:?}");
                assert_eq!(&answer_and_word(&mut t), after, "{what}: done");
                break;
            }
            let ctx = format!("{what} killed after {n} code words");
            if let Err(e) = settled(t.pid) {
                panic!("{ctx}: {e}");
            }
            assert!(t.alive(), "{ctx}: the target died");
            let now = answer_and_word(&mut t);
            seen.push(if now == old { "old" } else { "new" });
            assert!(
                now == old || now == new,
                "{ctx}: half a patch: answer {:?}, word {:?}",
                now.0,
                now.1
            );
            // The next trigger completes the journal first: the same apply
            // then finds the patch applied (and the code new); the same
            // revert finds it not applied (an error, with the code old).
            if reverting {
                assert!(!ulp_bounded(&demo, op, &[]).success(), "{ctx}");
                assert_eq!(answer_and_word(&mut t), old, "{ctx}: completed");
            } else {
                assert!(ulp_bounded(&demo, op, &[]).success(), "{ctx}");
                assert_eq!(answer_and_word(&mut t), new, "{ctx}: completed");
                assert!(ulp_bounded(&demo, &revert, &[]).success(), "{ctx}");
                assert_eq!(answer_and_word(&mut t), old, "{ctx}: reverted");
            }
            let listed = demo.ulp(&["patches", "-p", &pid]).1;
            assert!(!listed.contains("Interrupted"), "{ctx}: {listed}");
            let stats = t.ask("stats");
            assert!(stats.ends_with(" bad=0"), "{ctx}: {stats}");
            n += 1;
        }
        // Killed after 0 to n - 1 words: the last is after every word,
        // before the threads are released.
        eprintln!(
            "{what}: {} code words; killed after 0, 1, ... of them: {seen:?}",
            n - 1
        );
        assert!(n >= 3, "{what}: only {} code words", n - 1);
        assert!(
            seen.contains(&"old") && seen.contains(&"new"),
            "{what}: {seen:?}"
        );
    }
}

/// One plan of several functions killed after every code word: how to
/// start a fresh target, what to trigger before (each a `ulp` argument
/// list, `PID` standing for the target's pid), the trigger killed, and what
/// the target answers before and after.
struct KillEveryWord<'a> {
    what: &'a str,
    dir: &'a std::path::Path,
    start: &'a dyn Fn() -> common::Target,
    setup: &'a [&'a [&'a str]],
    op: &'a [&'a str],
    /// Whether running `op` again succeeds once the plan is complete (an
    /// apply or a replace: "already applied"; a revert: "not applied").
    rerun_succeeds: bool,
    questions: &'a [&'a str],
    old: &'a [&'a str],
    new: &'a [&'a str],
}

/// Runs `ulp ARGS` in `dir` with `PID` replaced, bounded like
/// [`ulp_bounded`].
fn ulp_in(
    dir: &std::path::Path,
    args: &[&str],
    pid: &str,
    env: &[(&str, String)],
) -> std::process::ExitStatus {
    let args: Vec<&str> = args
        .iter()
        .map(|&a| if a == "PID" { pid } else { a })
        .collect();
    let mut cmd = Command::new(ulp_bin());
    cmd.args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running ulp");
    wait_bounded(
        &mut child,
        &format!("ulp {args:?}"),
        Duration::from_secs(30),
    )
}

/// For every N until the trigger runs to its end: a fresh target, the
/// set-up triggers, then the trigger killed after N code words. After each
/// kill: no thread traced or stopped, every function of the plan answers
/// old or every one new, the next trigger completes the plan (the code
/// new, `ulp patches` without "Interrupted"), and the workers never saw a
/// bad result.
fn kill_after_every_word(s: &KillEveryWord<'_>) {
    use std::os::unix::process::ExitStatusExt;
    let ask = |t: &mut common::Target| -> Vec<String> {
        s.questions.iter().map(|q| t.ask(q)).collect::<Vec<_>>()
    };
    let (old, new): (Vec<String>, Vec<String>) = (
        s.old.iter().map(|x| x.to_string()).collect(),
        s.new.iter().map(|x| x.to_string()).collect(),
    );
    let mut seen = Vec::new();
    let mut n = 0u32;
    loop {
        assert!(n <= 128, "{}: ulp still killed after {n} words", s.what);
        let mut t = (s.start)();
        let pid = t.pid.to_string();
        for args in s.setup {
            assert!(
                ulp_in(s.dir, args, &pid, &[]).success(),
                "{}: set-up {args:?}",
                s.what
            );
        }
        assert_eq!(ask(&mut t), old, "{} {n}: start", s.what);
        let env = [("ULP_TEST_KILL_AFTER_WRITES", n.to_string())];
        let st = ulp_in(s.dir, s.op, &pid, &env);
        if st.signal() != Some(9) {
            assert!(st.success(), "{}: plain trigger failed: {st:?}", s.what);
            assert_eq!(ask(&mut t), new, "{}: done", s.what);
            break;
        }
        let ctx = format!("{} killed after {n} code words", s.what);
        if let Err(e) = settled(t.pid) {
            panic!("{ctx}: {e}");
        }
        assert!(t.alive(), "{ctx}: the target died");
        let now = ask(&mut t);
        assert!(
            now == old || now == new,
            "{ctx}: a mix of old and new: {now:?}"
        );
        seen.push(if now == old { "old" } else { "new" });
        let rerun = ulp_in(s.dir, s.op, &pid, &[]);
        assert_eq!(
            rerun.success(),
            s.rerun_succeeds,
            "{ctx}: next trigger {rerun:?}"
        );
        assert_eq!(ask(&mut t), new, "{ctx}: completed");
        let listed = common::ulp(s.dir, &["patches", "-p", &pid]).1;
        assert!(!listed.contains("Interrupted"), "{ctx}: {listed}");
        if s.questions.contains(&"answer") && s.dir.join("demo_prog").exists() {
            let stats = t.ask("stats");
            assert!(stats.ends_with(" bad=0"), "{ctx}: {stats}");
        }
        n += 1;
    }
    eprintln!(
        "{}: {} code words; killed after 0, 1, ... of them: {seen:?}",
        s.what,
        n.saturating_sub(1)
    );
    assert!(
        n >= 3,
        "{}: only {} code words",
        s.what,
        n.saturating_sub(1)
    );
    assert!(
        seen.contains(&"old") && seen.contains(&"new"),
        "{}: {seen:?}",
        s.what
    );
}

/// The demo with a fourth container that replaces both functions
/// (`newest_demo_answer` 4, `newest_demo_word` "newest").
fn demo_with_newest(tag: &str) -> Demo {
    let demo = Demo::new(tag);
    common::copy_files(
        &common::fixtures_dir(),
        demo.dir.path(),
        &["demo_livepatch4.so"],
    );
    std::fs::write(
        demo.dir.join("demo_livepatch4.dsc"),
        "demo_livepatch4.so\n@libulpdemo.so.1\n\
         demo_answer:newest_demo_answer\ndemo_word:newest_demo_word\n",
    )
    .unwrap();
    let (code, out, err) = demo.ulp(&["packer", "demo_livepatch4.dsc"]);
    assert_eq!(code, 0, "packer: {out}{err}");
    demo
}

#[test]
fn a_stacked_patch_of_two_functions_switches_at_once_when_killed_anywhere() {
    let demo = demo_with_newest("atomic-stacked");
    let start = || demo.start(&["-t", "2"]);
    let first: &[&str] = &["trigger", "-r", "50", "-p", "PID", "demo_livepatch.so"];
    let second: &[&str] = &["trigger", "-r", "50", "-p", "PID", "demo_livepatch4.so"];
    let revert_second: &[&str] = &[
        "trigger",
        "-r",
        "50",
        "-p",
        "PID",
        "--revert",
        "demo_livepatch4.so",
    ];
    kill_after_every_word(&KillEveryWord {
        what: "stacked apply",
        dir: demo.dir.path(),
        start: &start,
        setup: &[first],
        op: second,
        rerun_succeeds: true,
        questions: &["answer", "word"],
        old: &["2", "new"],
        new: &["4", "newest"],
    });
    kill_after_every_word(&KillEveryWord {
        what: "stacked revert",
        dir: demo.dir.path(),
        start: &start,
        setup: &[first, second],
        op: revert_second,
        rerun_succeeds: false,
        questions: &["answer", "word"],
        old: &["4", "newest"],
        new: &["2", "new"],
    });
}

#[test]
fn a_replace_switches_every_function_at_once_when_killed_anywhere() {
    let demo = demo_with_newest("atomic-replace");
    let start = || demo.start(&["-t", "2"]);
    kill_after_every_word(&KillEveryWord {
        what: "replace",
        dir: demo.dir.path(),
        start: &start,
        setup: &[&["trigger", "-p", "PID", "demo_livepatch.so"]],
        op: &[
            "trigger",
            "-r",
            "50",
            "-p",
            "PID",
            "--revert-all=libulpdemo.so.1",
            "demo_livepatch4.so",
        ],
        rerun_succeeds: true,
        questions: &["answer", "word"],
        old: &["2", "new"],
        new: &["4", "newest"],
    });
}

/// Apply, then revert, of a patch of unpadded_lib.so described by `dsc`
/// (`new_up` 99 and `new_up2` 100 for the two functions `questions`
/// ask), killed after every code word.
fn unpadded_apply_and_revert(tag: &str, dsc: &str, questions: &[&str], old: &[&str]) {
    let dir = common::TempDir::new(tag);
    common::copy_files(
        &common::fixtures_dir(),
        dir.path(),
        &["unpadded_lib.so", "unpadded_prog", "unpadded_patch.so"],
    );
    let runtime = common::install_runtime(dir.path());
    std::fs::write(dir.join("both.dsc"), dsc).unwrap();
    let (code, out, err) = common::ulp(dir.path(), &["packer", "both.dsc"]);
    assert_eq!(code, 0, "packer: {out}{err}");
    let start = || {
        let mut cmd = Command::new(dir.join("unpadded_prog"));
        cmd.current_dir(dir.path())
            .env("LD_PRELOAD", &runtime)
            .env("LD_LIBRARY_PATH", dir.path());
        common::Target::spawn(cmd)
    };
    let apply: &[&str] = &["trigger", "-r", "50", "-p", "PID", "unpadded_patch.so"];
    let (what_apply, what_revert) = (format!("{tag} apply"), format!("{tag} revert"));
    kill_after_every_word(&KillEveryWord {
        what: &what_apply,
        dir: dir.path(),
        start: &start,
        setup: &[],
        op: apply,
        rerun_succeeds: true,
        questions,
        old,
        new: &["99", "100"],
    });
    kill_after_every_word(&KillEveryWord {
        what: &what_revert,
        dir: dir.path(),
        start: &start,
        setup: &[apply],
        op: &[
            "trigger",
            "-r",
            "50",
            "-p",
            "PID",
            "--revert",
            "unpadded_patch.so",
        ],
        rerun_succeeds: false,
        questions,
        old: &["99", "100"],
        new: old,
    });
}

#[test]
fn a_patch_of_two_rewritten_functions_switches_at_once_when_killed_anywhere() {
    unpadded_apply_and_revert(
        "atomic-rewrite",
        "unpadded_patch.so\n@unpadded_lib.so\nup_answer:new_up\nup_answer2:new_up2\n",
        &["answer", "answer2"],
        &["42", "43"],
    );
}

/// One rewritten function and one padded, in one patch.
#[test]
fn a_patch_mixing_padded_and_rewritten_functions_switches_at_once_when_killed_anywhere() {
    unpadded_apply_and_revert(
        "atomic-mixed",
        "unpadded_patch.so\n@unpadded_lib.so\nup_answer:new_up\nup_padded:new_up2\n",
        &["answer", "padded"],
        &["42", "5"],
    );
}

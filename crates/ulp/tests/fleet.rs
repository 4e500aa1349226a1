//! Many processes in one run: `-j` works on several at once, and the
//! output stays exactly what a one-at-a-time run prints (pid order).

mod common;

use common::*;

/// Copies the demo program as `name` (so that `-p name` matches only this
/// test's processes) and returns a function starting one more of it with
/// the runtime preloaded.
fn named_starter<'a>(demo: &'a Demo, name: &str) -> impl Fn() -> Target + 'a {
    let exe = demo.dir.join(name);
    std::fs::copy(demo.dir.join("demo_prog"), &exe).unwrap();
    move || {
        let mut cmd = std::process::Command::new(&exe);
        cmd.current_dir(demo.dir.path())
            .env("LD_PRELOAD", &demo.runtime);
        Target::spawn(cmd)
    }
}

#[test]
fn parallel_runs_print_what_a_sequential_run_prints() {
    let demo = Demo::new("fleet");
    let start = named_starter(&demo, "fleet_prog");
    let mut targets: Vec<Target> = (0..12).map(|_| start()).collect();
    let mut pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();
    pids.sort();
    let expected = || {
        let mut s: String = pids
            .iter()
            .map(|p| format!("  fleet_prog (pid: {p}): SUCCESS demo_livepatch.so\n"))
            .collect();
        s.push_str("ulp: Processes patched: 12, Skipped: 0, Failed: 0.\n");
        s
    };

    for jobs in ["4", "1", "12"] {
        let (code, out, err) = demo.ulp(&[
            "trigger",
            "-j",
            jobs,
            "-p",
            "fleet_prog",
            "demo_livepatch.so",
        ]);
        assert_eq!(code, 0, "-j {jobs}: {out}{err}");
        assert_eq!(out, expected(), "-j {jobs}");
        assert_eq!(err, "", "no progress bar when stderr is not a terminal");
        for t in targets.iter_mut() {
            assert_eq!(t.ask("answer"), "2", "-j {jobs}: pid {}", t.pid);
        }
        let (code, out, err) = demo.ulp(&[
            "trigger",
            "-j",
            jobs,
            "-p",
            "fleet_prog",
            "--revert",
            "demo_livepatch.so",
        ]);
        assert_eq!(code, 0, "-j {jobs}: {out}{err}");
        assert_eq!(out, expected(), "-j {jobs}");
        for t in targets.iter_mut() {
            assert_eq!(t.ask("answer"), "1", "-j {jobs}: pid {}", t.pid);
        }
    }

    // Run twice: the second reports the patch as already applied.
    assert_eq!(
        demo.ulp(&[
            "trigger",
            "-j",
            "3",
            "-p",
            "fleet_prog",
            "demo_livepatch.so"
        ])
        .0,
        0
    );
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-j",
        "3",
        "-p",
        "fleet_prog",
        "demo_livepatch.so",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with("ulp: Processes patched: 0, Skipped: 12, Failed: 0.\n"),
        "{out}"
    );
    assert_eq!(
        out.matches("SKIPPED Patch already applied").count(),
        12,
        "{out}"
    );

    let (code, _, err) = demo.ulp(&[
        "trigger",
        "-j",
        "0",
        "-p",
        "fleet_prog",
        "demo_livepatch.so",
    ]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let demo = Demo::new("progress");
    let start = named_starter(&demo, "bar_prog");
    let mut targets: Vec<Target> = (0..6).map(|_| start()).collect();
    // `script` runs ulp on a pseudo-terminal and copies what it writes.
    let command = format!("{} trigger -j 1 -p bar_prog demo_livepatch.so", ulp_bin());
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(demo.dir.path())
        .output()
        .expect("running script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("] 1/6 processes"), "{text:?}");
    assert!(
        text.contains("\r\x1b[K"),
        "the bar is erased before each line: {text:?}"
    );
    assert!(
        text.contains("ulp: Processes patched: 6, Skipped: 0, Failed: 0."),
        "{text:?}"
    );
    assert!(
        !text.contains("] 6/6"),
        "the finished bar is not left behind: {text:?}"
    );
    for t in targets.iter_mut() {
        assert_eq!(t.ask("answer"), "2");
    }
}

#[test]
fn a_process_that_dies_mid_trigger_is_reported_alone() {
    // Six processes stay; a seventh of the same name is SIGKILLed at a
    // random moment while ulp works on all of them. Its line may say
    // anything from SUCCESS to an ERROR that it exited; the six others are
    // patched (and reverted) all the same, and ulp itself never fails for
    // another reason.
    let demo = Demo::new("dying");
    let start = named_starter(&demo, "mortal_prog");
    let mut stay: Vec<Target> = (0..6).map(|_| start()).collect();
    let mut seed: u64 = 0x0dd_ba11;
    let mut victim_outcomes = Vec::new();
    for round in 0..12 {
        let revert = round % 2 == 1;
        let victim = start();
        let victim_pid = victim.pid;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = std::time::Duration::from_micros(seed % 4000);
        let mut args = vec!["trigger", "-j", "2", "-p", "mortal_prog"];
        if revert {
            args.push("--revert");
        }
        args.push("demo_livepatch.so");
        let child = std::process::Command::new(ulp_bin())
            .args(&args)
            .current_dir(demo.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Not a readiness wait: the random moment of the run the victim dies at.
        std::thread::sleep(delay);
        drop(victim); // SIGKILL and reap
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ctx = format!("round {round} (victim {victim_pid}, delay {delay:?}):\n{stdout}");
        for t in &stay {
            let line = format!("  mortal_prog (pid: {}): SUCCESS demo_livepatch.so", t.pid);
            assert!(stdout.contains(&line), "{ctx}");
        }
        for line in stdout.lines().filter(|l| l.contains("ERROR")) {
            assert!(
                line.contains(&format!("(pid: {victim_pid})")),
                "only the victim may fail: {ctx}"
            );
        }
        victim_outcomes.push(
            stdout
                .lines()
                .find(|l| l.contains(&format!("(pid: {victim_pid})")))
                .map_or("not seen".to_string(), str::to_string),
        );
        let summary = stdout.lines().last().unwrap_or_default();
        assert!(summary.starts_with("ulp: Processes patched: "), "{ctx}");
        let patched: u32 = summary
            .trim_start_matches("ulp: Processes patched: ")
            .split(',')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(patched == 6 || patched == 7, "{ctx}");
        let want = if revert { "1" } else { "2" };
        for t in stay.iter_mut() {
            assert_eq!(t.ask("answer"), want, "{ctx}");
        }
    }
    eprintln!("victim outcomes: {victim_outcomes:?}");
}

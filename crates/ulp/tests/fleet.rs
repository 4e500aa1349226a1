//! Many processes in one run: `-j` works on several at once, and the
//! output stays exactly what a one-at-a-time run prints (pid order).

mod common;

use common::*;

#[test]
fn parallel_runs_print_what_a_sequential_run_prints() {
    let demo = Demo::new("fleet");
    // A name of its own, so that -p matches only this test's processes.
    std::fs::copy(demo.dir.join("demo_prog"), demo.dir.join("fleet_prog")).unwrap();
    let mut targets: Vec<Target> = (0..12)
        .map(|_| {
            let mut cmd = std::process::Command::new(demo.dir.join("fleet_prog"));
            cmd.current_dir(demo.dir.path())
                .env("LD_PRELOAD", &demo.runtime);
            Target::spawn(cmd)
        })
        .collect();
    let mut pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();
    pids.sort();
    let expected = || {
        let mut s: String = pids
            .iter()
            .map(|p| format!("fleet_prog (pid: {p}): SUCCESS demo_livepatch.so\n"))
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
    std::fs::copy(demo.dir.join("demo_prog"), demo.dir.join("bar_prog")).unwrap();
    let mut targets: Vec<Target> = (0..6)
        .map(|_| {
            let mut cmd = std::process::Command::new(demo.dir.join("bar_prog"));
            cmd.current_dir(demo.dir.path())
                .env("LD_PRELOAD", &demo.runtime);
            Target::spawn(cmd)
        })
        .collect();
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

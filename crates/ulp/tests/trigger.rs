//! End to end through the real `ulp` binary: a program with the runtime
//! preloaded is patched and reverted while it runs, never restarted.

mod common;

use common::*;

#[test]
fn apply_observe_revert_observe() {
    let demo = Demo::new("apply");
    let mut t = demo.start(&[]);
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
    let pid = t.pid.to_string();

    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, err.as_str()), (0, ""), "stdout: {out}");
    assert_eq!(out, success_report("demo_prog", &pid, "demo_livepatch.so"));
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
    assert_eq!(t.ask("pid"), pid, "same process throughout");

    let (code, out, _) = demo.ulp(&["patches", "-p", &pid]);
    assert_eq!(code, 0);
    let lib = demo.path("libulpdemo.so.1");
    assert!(
        out.starts_with(&format!(
            "PID: {pid}, name: demo_prog\n  Livepatching status: enabled\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "    in {lib}:\n      livepatch: demo_livepatch.so loaded on "
        )),
        "{out}"
    );
    assert!(
        out.contains("        bug labels: CVE-2026-0001, bsc#42\n"),
        "{out}"
    );

    let out = demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(out, success_report("demo_prog", &pid, "demo_livepatch.so"));
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");

    let out = demo.ulp_ok(&["patches", "-p", &pid]);
    assert!(
        !out.contains("livepatch:"),
        "reverted patch still listed: {out}"
    );

    let out = demo.ulp_ok(&["messages", "-p", &pid]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("libpulp loaded..."), "{out}");
    assert!(
        lines
            .iter()
            .skip(1)
            .all(|l| l.starts_with('[') && l.contains("] ulp: ")),
        "{out}"
    );
    assert!(lines.len() >= 3, "apply and revert are logged: {out}");
    assert!(t.alive());
}

#[test]
fn apply_twice_is_skipped_and_revert_of_unapplied_is_an_error() {
    let demo = Demo::new("twice");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let (code, _, _) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0);
    let out = demo.ulp_ok(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(
        out,
        format!(
            "  demo_prog (pid: {pid}): SKIPPED Patch already applied\n{}",
            summary(0, 1, 0)
        )
    );
    assert_eq!(t.ask("answer"), "2");
    let (code, _, _) = demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(code, 0);
    // libpulp's `Patch not applied` (272): exit 272 & 0xff.
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(code, 16);
    assert!(
        out.starts_with(&format!(
            "  demo_prog (pid: {pid}): ERROR demo_livepatch.so: Patch not applied"
        )),
        "{out}"
    );
    assert!(out.ends_with(&summary(0, 0, 1)), "{out}");
    assert_eq!(t.ask("answer"), "1");
}

#[test]
fn stacked_patches_revert_in_any_order() {
    let demo = Demo::new("stack");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let apply = |f: &str| assert_eq!(demo.ulp(&["trigger", "-p", &pid, f]).0, 0);
    let revert = |f: &str| assert_eq!(demo.ulp(&["trigger", "-p", &pid, "--revert", f]).0, 0);
    apply("demo_livepatch.so");
    apply("demo_livepatch2.so");
    assert_eq!(t.ask("answer"), "3");
    revert("demo_livepatch.so");
    assert_eq!(t.ask("answer"), "3", "the newest remaining patch stays");
    assert_eq!(
        t.ask("word"),
        "old",
        "the reverted patch's other function is restored"
    );
    revert("demo_livepatch2.so");
    assert_eq!(t.ask("answer"), "1");
    apply("demo_livepatch.so");
    apply("demo_livepatch2.so");
    revert("demo_livepatch2.so");
    assert_eq!(t.ask("answer"), "2", "back to the older patch");
    revert("demo_livepatch.so");
    assert_eq!(t.ask("answer"), "1");
}

#[test]
fn threads_busy_and_blocked_see_no_trace_of_patching() {
    // Four threads call the patched function in a tight loop, one sleeps in
    // nanosleep, the main thread is blocked in read().
    let demo = Demo::new("threads");
    let mut t = demo.start(&["-t", "4", "-s"]);
    let pid = t.pid.to_string();
    for i in 0..20 {
        let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
        assert_eq!(code, 0, "cycle {i}: {out}{err}");
        assert_eq!(t.ask("answer"), "2", "cycle {i}");
        demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
        assert_eq!(t.ask("answer"), "1", "cycle {i}");
    }
    let stats = t.ask("stats");
    assert!(
        stats.ends_with(" bad=0") && !stats.starts_with("calls=0 "),
        "{stats}"
    );
    let sleeps = t.ask("sleeps");
    assert!(
        sleeps.ends_with(" short=0 eintr=0") && !sleeps.starts_with("sleeps=0 "),
        "{sleeps}"
    );
    assert!(t.alive());
}

#[test]
fn bad_input_leaves_the_target_untouched() {
    let demo = Demo::new("bad");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    std::fs::write(demo.dir.join("notelf.so"), "this is not an ELF file\n").unwrap();
    // A container packed against another build of the library.
    let variant = demo.dir.join("variant");
    std::fs::create_dir(&variant).unwrap();
    copy_files(
        &fixtures_dir().join("variant"),
        &variant,
        &["libulpdemo.so.1"],
    );
    std::fs::copy(
        fixtures_dir().join("demo_livepatch.so"),
        demo.dir.join("unpacked.so"),
    )
    .unwrap();
    std::fs::copy(
        fixtures_dir().join("demo_livepatch.so"),
        demo.dir.join("mismatch.so"),
    )
    .unwrap();
    demo.ulp_ok(&[
        "packer",
        "-l",
        "mismatch.so",
        "-t",
        "variant/libulpdemo.so.1",
        "demo_livepatch.dsc",
    ]);

    // libpulp's `No metadata in .so` (269): exit 269 & 0xff.
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "notelf.so"]);
    assert_eq!(code, 13);
    assert!(
        out.starts_with(&format!(
            "  demo_prog (pid: {pid}): ERROR notelf.so: No metadata in .so: "
        )),
        "{out}"
    );
    assert!(out.contains("not an ELF"), "{out}");

    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "unpacked.so"]);
    assert_eq!(code, 13);
    assert!(
        out.contains("ERROR unpacked.so: ") && out.contains("no .ulp section"),
        "{out}"
    );

    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "mismatch.so"]);
    assert_eq!(code, 0, "a skip is not a failure: {out}");
    assert!(
        out.starts_with(&format!(
            "  demo_prog (pid: {pid}): SKIPPED Build ID mismatch"
        )),
        "{out}"
    );
    assert!(out.ends_with(&summary(0, 1, 0)), "{out}");

    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "missing.so"]);
    assert_eq!(code, 13);
    assert!(
        out.contains("ERROR missing.so: No metadata in .so: "),
        "{out}"
    );

    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
    let (_, out, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(!out.contains("livepatch:"), "{out}");
    assert!(t.alive());
}

#[test]
fn process_without_runtime_gets_a_warning_and_no_change() {
    let demo = Demo::new("noruntime");
    let mut cmd = std::process::Command::new(demo.dir.join("demo_prog"));
    cmd.current_dir(demo.dir.path());
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0);
    assert!(
        err.contains(
            "] ulp: error gathering target process information: Libpulp not found in target process\n"
        ),
        "{err}"
    );
    assert_eq!(out, summary(0, 1, 0));
    assert_eq!(t.ask("answer"), "1");
}

#[test]
fn libpulp_packed_container_applies_with_the_readme_transcript() {
    let dir = TempDir::new("interop");
    copy_files(
        &interop_dir(),
        dir.path(),
        &["greet_prog", "libgreet.so.0", "greet_livepatch1.so"],
    );
    let runtime = install_runtime(dir.path());
    let mut cmd = std::process::Command::new(dir.join("greet_prog"));
    cmd.current_dir(dir.path()).env("LD_PRELOAD", &runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("bob"), "hello, bob");
    assert_eq!(t.ask("answer"), "41");
    assert_eq!(t.ask("calls"), "1 1");
    let (code, out, err) = ulp(dir.path(), &["trigger", "-p", &pid, "greet_livepatch1.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        success_report("greet_prog", &pid, "greet_livepatch1.so")
    );
    assert_eq!(t.ask("bob"), "howdy, bob!");
    assert_eq!(t.ask("answer"), "42");
    assert_eq!(
        t.ask("calls"),
        "11 11",
        "static and TLS references reach the library's own counters"
    );
    let (code, out, err) = ulp(
        dir.path(),
        &["trigger", "-p", &pid, "--revert", "greet_livepatch1.so"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("bob"), "hello, bob");
    assert_eq!(t.ask("answer"), "41");
    assert_eq!(t.ask("calls"), "12 12");
}

#[test]
fn check_agrees_with_reality() {
    let demo = Demo::new("check");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let check = || demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]);
    let (code, out, _) = check();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!("demo_prog (pid: {pid}): demo_livepatch.so: not applied\n")
    );
    assert_eq!(demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]).0, 0);
    assert_eq!(t.ask("answer"), "2");
    let (code, out, _) = check();
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out,
        format!("demo_prog (pid: {pid}): demo_livepatch.so: applied\n")
    );
    // The command word may stand anywhere.
    assert_eq!(demo.ulp(&["-p", &pid, "check", "demo_livepatch.so"]).0, 1);
    assert_eq!(
        demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"])
            .0,
        0
    );
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(check().0, 0);
    let (code, _, err) = demo.ulp(&["check", "-p", &pid, "no-such.so"]);
    assert_eq!(code, 255, "{err}");
}

#[test]
fn reference_to_exported_data_reaches_the_copy_the_program_uses() {
    // demo_prog (a PIE) reads the library's exported `demo_counter`
    // directly, so it owns the live copy (R_X86_64_COPY) and the library
    // reaches it through its GOT. A reference must land on that copy, not
    // on the library's dead definition.
    let demo = Demo::new("copyreloc");
    std::fs::copy(
        fixtures_dir().join("demo_livepatch3.so"),
        demo.dir.join("demo_livepatch3.so"),
    )
    .unwrap();
    std::fs::write(
        demo.dir.join("demo_livepatch3.dsc"),
        "demo_livepatch3.so\n@libulpdemo.so.1\ndemo_bump:new_demo_bump\n#demo_counter:ulpr_demo_counter\n",
    )
    .unwrap();
    demo.ulp_ok(&["packer", "demo_livepatch3.dsc"]);
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("bump"), "1");
    assert_eq!(t.ask("counter"), "1");
    demo.ulp_ok(&["trigger", "-p", &pid, "demo_livepatch3.so"]);
    assert_eq!(
        t.ask("bump"),
        "101",
        "the patch continues from the live counter"
    );
    assert_eq!(
        t.ask("counter"),
        "101",
        "the program sees what the patch wrote"
    );
    demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch3.so"]);
    assert_eq!(t.ask("bump"), "102");
    assert_eq!(t.ask("counter"), "102");
}

#[test]
fn the_runtime_never_runs_on_a_thread_inside_malloc() {
    // The main thread spends its life in malloc/free holding the arena
    // lock; running the runtime (dlopen, malloc) on it would deadlock on
    // that very lock. ulp must pick the thread waiting in read() instead.
    let demo = Demo::new("malloc");
    let mut t = demo.start(&["-m"]);
    let pid = t.pid.to_string();
    for i in 0..30 {
        demo.ulp_ok(&[
            "trigger",
            "--timeout",
            "10",
            "-p",
            &pid,
            "demo_livepatch.so",
        ]);
        assert_eq!(t.ask("answer"), "2", "cycle {i}");
        demo.ulp_ok(&[
            "trigger",
            "--timeout",
            "10",
            "-p",
            &pid,
            "--revert",
            "demo_livepatch.so",
        ]);
        assert_eq!(t.ask("answer"), "1", "cycle {i}");
    }
    // The main thread still allocates: its counter moves. Two asks in a
    // row can see the same count when it was not scheduled in between (two
    // CPUs shared with other tests), so give it a moment.
    let first = t.ask("mallocs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let now = t.ask("mallocs");
        if now != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the main thread stopped allocating: {first} for 5 s"
        );
    }
    assert!(t.alive());
}

#[test]
fn a_w_x_locked_process_is_patched_without_changing_page_protections() {
    // Under PR_SET_MDWE no page may gain execute permission after being
    // writable (systemd's MemoryDenyWriteExecute= enforces the same): ulp
    // writes code through ptrace and never changes a page's protections.
    let demo = Demo::new("mdwe");
    copy_files(&fixtures_dir(), demo.dir.path(), &["mdwe_exec"]);
    let mut cmd = std::process::Command::new(demo.dir.join("mdwe_exec"));
    cmd.arg(demo.dir.join("demo_prog"))
        .current_dir(demo.dir.path())
        .env("LD_PRELOAD", &demo.runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("wx"), "denied", "the process is W^X locked");
    assert_eq!(t.ask("answer"), "1");
    demo.ulp_ok(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
    demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("wx"), "denied", "still locked");
}

#[test]
fn a_busy_process_is_retried_with_r_and_left_untouched_when_it_stays_busy() {
    // ULP_TEST_BUSY_ATTEMPTS makes the first N write attempts find a thread
    // in the way (a real one cannot be placed there on demand).
    let demo = Demo::new("busy");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let busy = |n: &str, args: &[&str]| {
        let out = std::process::Command::new(ulp_bin())
            .args(args)
            .current_dir(demo.dir.path())
            .env("ULP_TEST_BUSY_ATTEMPTS", n)
            .output()
            .expect("running ulp");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let check = || demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]).0;

    // Busy for longer than -r allows: an ERROR that says what to do, and
    // nothing stays: the runtime's record is undone, the code is old.
    let (code, out) = busy(
        "10",
        &["trigger", "-r", "2", "-p", &pid, "demo_livepatch.so"],
    );
    // libpulp's `Error attaching to process` (258): exit 258 & 0xff.
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("ERROR demo_livepatch.so: Error attaching to process: process ")
            && out.contains("is busy"),
        "{out}"
    );
    assert!(out.contains("higher -r"), "{out}");
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(check(), 0, "the runtime's record was undone");
    let (_, patches, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(
        !patches.contains("livepatch:") && !patches.contains("Interrupted"),
        "{patches}"
    );

    // Busy twice, -r 3: the third attempt goes in.
    let (code, out) = busy(
        "2",
        &["trigger", "-v", "-r", "3", "-p", &pid, "demo_livepatch.so"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("SUCCESS demo_livepatch.so") && out.contains("attempts: 3"),
        "{out}"
    );
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(check(), 1);

    // A revert that stays busy: the patch stays, recorded and in the code.
    let (code, out) = busy(
        "5",
        &[
            "trigger",
            "-r",
            "1",
            "-p",
            &pid,
            "--revert",
            "demo_livepatch.so",
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(check(), 1, "the revert's record was undone");
    assert_eq!(
        demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"])
            .0,
        0
    );
    assert_eq!(t.ask("answer"), "1");
}

//! `ulp trigger` options end to end, through the real binary against real
//! processes: process selection (`-p PID`, `-p NAME-PATTERN`, no `-p`),
//! globs, `--revert-all` (alone and replacing), `-r`, `--timeout`, `-R`,
//! `--disable-seccomp`, `-q`, `-v`, `--json`.
//!
//! Runs without `-p` and with name patterns would see the processes of
//! every other test running at the same time; they run inside a PID
//! namespace of their own ([`PidNs`]), where ulp and the targets see only each
//! other.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Copies demo_prog and the variant build of libulpdemo (another build-id)
/// into `DIR/variant`; returns the program's path.
fn variant_prog(demo: &Demo) -> std::path::PathBuf {
    let v = demo.dir.join("variant");
    std::fs::create_dir_all(&v).unwrap();
    copy_files(&fixtures_dir().join("variant"), &v, &["libulpdemo.so.1"]);
    copy_files(&fixtures_dir(), &v, &["demo_prog"]);
    v.join("demo_prog")
}

fn sorted_pids(pids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    v.sort_by_key(|p| p.parse::<u32>().unwrap());
    v
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn no_p_and_a_glob_patch_every_process_with_the_runtime_twice() {
    let demo = Demo::new("opt-all");
    let ns = PidNs::new();
    let dir = demo.dir.path();
    let prog = demo.dir.join("demo_prog");
    let (mut a, pid_a) = ns.start(dir, &prog, &demo.runtime);
    let (mut b, pid_b) = ns.start(dir, &prog, &demo.runtime);
    let (mut v, pid_v) = ns.start(dir, &variant_prog(&demo), &demo.runtime);
    // Not a target at all: no runtime.
    let (mut plain, _) = ns.start_plain(dir, &prog);

    let (code, out, err) = ns.ulp(dir, &["trigger", "*.so"]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let mut want = String::new();
    for pid in sorted_pids(&[&pid_a, &pid_b, &pid_v]) {
        want.push_str(&format!("  demo_prog (pid: {pid}):\n"));
        if pid == pid_v {
            for (k, file) in ["demo_livepatch.so", "demo_livepatch2.so"]
                .iter()
                .enumerate()
            {
                let line = out
                    .lines()
                    .skip_while(|l| *l != format!("  demo_prog (pid: {pid}):"))
                    .nth(1 + k)
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    line.starts_with(&format!("    SKIPPED {file}: Build ID mismatch: ")),
                    "{line}\n{out}"
                );
                want.push_str(&line);
                want.push('\n');
            }
        } else {
            want.push_str("    SUCCESS demo_livepatch.so\n    SUCCESS demo_livepatch2.so\n");
        }
    }
    want.push_str(&summary(2, 1, 0));
    assert_eq!(out, want);
    for t in [&mut a, &mut b] {
        assert_eq!(t.ask("answer"), "3");
        assert_eq!(t.ask("word"), "new");
    }
    assert_eq!(v.ask("answer"), "1");
    assert_eq!(plain.ask("answer"), "1");

    // Again: already applied is a skip, not a failure.
    let (code, out, _) = ns.ulp(dir, &["trigger", "*.so"]);
    assert_eq!(code, 0, "{out}");
    for pid in [&pid_a, &pid_b] {
        assert!(
            out.contains(&format!(
                "  demo_prog (pid: {pid}):\n    SKIPPED demo_livepatch.so: Patch already applied\n    \
                 SKIPPED demo_livepatch2.so: Patch already applied\n"
            )),
            "{out}"
        );
    }
    assert!(out.ends_with(&summary(0, 3, 0)), "{out}");
    assert!(!out.contains("ERROR"), "{out}");

    // The same as JSON.
    let (code, out, _) = ns.ulp(dir, &["trigger", "--json", "*.so"]);
    assert_eq!(code, 0);
    let doc = json(&out);
    assert_eq!(doc["operation"], "apply");
    assert_eq!(
        doc["files"],
        serde_json::json!(["demo_livepatch.so", "demo_livepatch2.so"])
    );
    assert_eq!(
        doc["summary"],
        serde_json::json!({"patched": 0, "skipped": 3, "failed": 0})
    );
    let procs = doc["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 3);
    for p in procs {
        assert_eq!(p["name"], "demo_prog");
        assert_eq!(p["status"], "skipped");
        let pid = p["pid"].to_string();
        for r in p["results"].as_array().unwrap() {
            if pid == pid_v {
                assert_eq!(r["status"], "not_applicable");
                assert!(r["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("Build ID mismatch: "));
            } else {
                assert_eq!(r["status"], "already_applied");
                assert_eq!(r["reason"], "Patch already applied");
                assert!(r["runtime"].as_str().unwrap().ends_with("/libpulp.so.0"));
            }
        }
    }

    // Reverting without -p, one file.
    // The variant process could not have it: a skip, not an error.
    let (code, out, _) = ns.ulp(dir, &["trigger", "--revert", "demo_livepatch2.so"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!(
        "  demo_prog (pid: {pid_a}): SUCCESS demo_livepatch2.so\n"
    )));
    assert!(out.contains(&format!(
        "  demo_prog (pid: {pid_v}): SKIPPED Build ID mismatch"
    )));
    assert!(out.ends_with(&summary(2, 1, 0)), "{out}");
    assert_eq!(a.ask("answer"), "2");
}

#[test]
fn name_patterns_match_comm_and_executable_name() {
    let demo = Demo::new("opt-name");
    let ns = PidNs::new();
    let dir = demo.dir.path();
    // comm is cut at 15 characters: "options_long_pr".
    let long = demo.dir.join("options_long_program");
    std::fs::copy(demo.dir.join("demo_prog"), &long).unwrap();
    let (mut d, pid_d) = ns.start(dir, &demo.dir.join("demo_prog"), &demo.runtime);
    let (mut l, pid_l) = ns.start(dir, &long, &demo.runtime);
    let (_plain, pid_p) = ns.start_plain(dir, &demo.dir.join("demo_prog"));

    // Pattern on comm and exe: both demo_prog, with and without runtime.
    let (code, out, err) = ns.ulp(dir, &["trigger", "-p", "demo_*", "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "  demo_prog (pid: {pid_d}): SUCCESS demo_livepatch.so\n{}",
            summary(1, 1, 0)
        )
    );
    assert!(
        err.contains(&format!(
            "] ulp: error gathering target process information: Libpulp not found in target \
             process\nulp: hint: demo_prog (pid: {pid_p}) was started without libpulp.so.0"
        )),
        "{err}"
    );
    assert_eq!(d.ask("answer"), "2");
    assert_eq!(l.ask("answer"), "1");

    // The full name matches the executable only (comm is cut).
    let (code, out, _) = ns.ulp(
        dir,
        &["trigger", "-p", "options_long_program", "demo_livepatch.so"],
    );
    assert_eq!(code, 0);
    assert_eq!(
        out,
        success_report("options_long_pr", &pid_l, "demo_livepatch.so")
    );
    assert_eq!(l.ask("answer"), "2");
    // ? and [...] work; a pattern never matches ulp itself.
    let (code, out, _) = ns.ulp(
        dir,
        &["trigger", "-p", "opt?ons_[kl]*", "-q", "demo_livepatch.so"],
    );
    assert_eq!((code, out), (0, summary(0, 1, 0)));
    let (code, out, err) = ns.ulp(
        dir,
        &["trigger", "-p", "*", "-q", "--revert", "demo_livepatch.so"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        summary(2, 2, 0),
        "demo_prog x2, options_long_pr, sleep"
    );
    assert_eq!(d.ask("answer"), "1");
    assert_eq!(l.ask("answer"), "1");

    // No match: a message, the summary, exit 0.
    let (code, out, err) = ns.ulp(
        dir,
        &["trigger", "-p", "nothing-like-it", "demo_livepatch.so"],
    );
    assert_eq!((code, out.as_str()), (0, summary(0, 0, 0).as_str()));
    assert!(
        err.contains("no process matches 'nothing-like-it'"),
        "{err}"
    );
}

#[test]
fn revert_all_and_replace_in_one_stop() {
    let demo = Demo::new("opt-revall");
    let mut t = demo.start(&["-t", "3"]);
    let pid = t.pid.to_string();
    let ok = |args: &[&str]| {
        let (code, out, err) = demo.ulp(args);
        assert_eq!(code, 0, "ulp {args:?}: {out}{err}");
        out
    };
    ok(&[
        "trigger",
        "-p",
        &pid,
        "demo_livepatch.so",
        "demo_livepatch2.so",
    ]);
    assert_eq!(t.ask("answer"), "3");

    let out = ok(&["trigger", "-p", &pid, "--revert-all=libulpdemo.so.1"]);
    assert_eq!(
        out,
        success_report(
            "demo_prog",
            &pid,
            "reverted all patches from 'libulpdemo.so.1'"
        )
    );
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
    let (_, patches, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(!patches.contains("livepatch:"), "{patches}");
    // Nothing left: a skip, not an error (libpulp's words); a library not
    // loaded likewise.
    let out = ok(&["trigger", "-p", &pid, "--revert-all", "libulpdemo.so.1"]);
    assert_eq!(
        out,
        format!(
            "  demo_prog (pid: {pid}): SKIPPED No patches installed\n{}",
            summary(0, 1, 0)
        )
    );
    let out = ok(&["trigger", "-p", &pid, "--revert-all=libnothing.so"]);
    assert!(
        out.contains("SKIPPED Target library not loaded: library 'libnothing.so' is not loaded"),
        "{out}"
    );

    // Replace: the old patch (two functions) goes, the new one (one
    // function) comes, in one stop: one set of code writes.
    ok(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(t.ask("word"), "new");
    // (--consistency=none: the switch of every thread at once, whose
    // writes are counted below; tests/consistency.rs has the default.)
    let out = ok(&[
        "trigger",
        "-v",
        "--consistency=none",
        "-p",
        &pid,
        "--revert-all=target",
        "demo_livepatch2.so",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("  demo_prog (pid: {pid}): SUCCESS demo_livepatch2.so"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("    runtime says: replaced the patches from 'libulpdemo.so.1' by '")
            && lines[2].ends_with("demo_livepatch2.so': 1 removed (demo_livepatch.so)"),
        "{out}"
    );
    // Both switched at once: a slot each (three words), both stubs
    // re-pointed at their slots, the flag, demo_answer's stub straight to
    // the new function, demo_word's entry restored.
    assert!(
        lines[3].starts_with("    code writes: 11, threads stopped: 4 for "),
        "{out}"
    );
    assert!(lines[4].starts_with("    phases (ms): find "), "{out}");
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(t.ask("answer"), "3");
    assert_eq!(t.ask("word"), "old");
    let (_, patches, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(
        patches.contains("livepatch: demo_livepatch2.so")
            && !patches.contains("livepatch: demo_livepatch.so"),
        "{patches}"
    );
    // And back, naming the library; twice: the second is a skip.
    ok(&[
        "trigger",
        "-p",
        &pid,
        "--revert-all=libulpdemo.so.1",
        "demo_livepatch.so",
    ]);
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
    let out = ok(&[
        "trigger",
        "-p",
        &pid,
        "--revert-all=target",
        "demo_livepatch.so",
    ]);
    assert_eq!(
        out,
        format!(
            "  demo_prog (pid: {pid}): SKIPPED Patch already applied\n{}",
            summary(0, 1, 0)
        )
    );
    // When the new patch is the newest already, the older ones still go.
    ok(&[
        "trigger",
        "-p",
        &pid,
        "--revert-all=target",
        "demo_livepatch2.so",
    ]);
    ok(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "2");
    let out = ok(&[
        "trigger",
        "-p",
        &pid,
        "--revert-all=target",
        "demo_livepatch.so",
    ]);
    assert!(out.contains("SUCCESS demo_livepatch.so"), "{out}");
    let (_, patches, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(
        !patches.contains("livepatch: demo_livepatch2.so"),
        "{patches}"
    );
    assert_eq!(t.ask("answer"), "2");
    // A replacement that does not apply changes nothing.
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "--revert-all=target", "missing.so"]);
    assert_eq!(code, 13, "No metadata in .so (269): {out}");
    assert_eq!(t.ask("answer"), "2");

    // The message log has one line per operation, no separate revert.
    let (_, log, _) = demo.ulp(&["messages", "-p", &pid]);
    assert_eq!(log.matches("replaced the patches from").count(), 3, "{log}");
    assert_eq!(
        log.matches("reverted the other patches from").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("reverted all patches from").count(), 1, "{log}");
    let stats = t.ask("stats");
    assert!(stats.ends_with(" bad=0"), "{stats}");

    // --json for revert-all (--consistency=none: the writes counted are
    // those of the switch of every thread at once).
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "--json",
        "--consistency=none",
        "-p",
        &pid,
        "--revert-all=libulpdemo.so.1",
    ]);
    assert_eq!(code, 0);
    let doc = json(&out);
    assert_eq!(doc["operation"], "revert_all");
    assert_eq!(doc["library"], "libulpdemo.so.1");
    let r = &doc["processes"][0]["results"][0];
    assert_eq!(r["status"], "reverted");
    assert_eq!(r["patch"], serde_json::Value::Null);
    assert_eq!(r["library"], "libulpdemo.so.1");
    // Both switched at once: a slot each (three words), the stubs to the
    // slots, the flag, both entries back to the NOP (the stubs stay,
    // unreachable).
    assert_eq!(r["writes"], 11);
    assert_eq!(t.ask("answer"), "1");
}

#[test]
fn usage_errors_of_trigger_options() {
    let dir = TempDir::new("opt-usage");
    for args in [
        &["trigger", "--revert-all=target"][..],
        &["trigger", "--revert-all="][..],
        &["trigger", "--revert", "--revert-all=libx.so", "a.so"][..],
        &["trigger", "-r", "many", "a.so"][..],
        &["trigger", "--timeout", "0", "a.so"][..],
        &["trigger"][..],
    ] {
        let (code, out, err) = ulp(dir.path(), args);
        assert_eq!(code, 64, "ulp {args:?}: {out}{err}");
        assert!(out.is_empty(), "{out}");
    }
    // A glob that matches nothing: an error, the others go on.
    let (code, out, err) = ulp(dir.path(), &["trigger", "-p", "2147483647", "*.none"]);
    assert_eq!(code, 1);
    assert!(err.contains("no file matches '*.none'"), "{err}");
    assert_eq!(out, summary(0, 0, 0));
    let (code, out, _) = ulp(
        dir.path(),
        &["trigger", "--json", "-p", "2147483647", "*.none"],
    );
    assert_eq!(code, 1);
    let doc = json(&out);
    assert_eq!(doc["errors"][0]["error"], "no file matches '*.none'");
    assert_eq!(doc["processes"], serde_json::json!([]));
    let (code, text, _) = ulp(dir.path(), &["trigger", "--help"]);
    assert_eq!(code, 0);
    assert!(text.contains("byte order"), "{text}");
}

#[test]
fn quiet_verbose_json_and_a_process_that_is_gone() {
    let demo = Demo::new("opt-qvj");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let (code, out, err) = demo.ulp(&["trigger", "-q", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, out, err), (0, summary(1, 0, 0), String::new()));
    assert_eq!(t.ask("answer"), "2");
    // -q keeps ERROR lines, in the one-line form.
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-q",
        "-p",
        &pid,
        "demo_livepatch.so",
        "missing.so",
    ]);
    assert_eq!(code, 13, "No metadata in .so (269): {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with(&format!(
        "  demo_prog (pid: {pid}): ERROR missing.so: No metadata in .so: "
    )));
    assert_eq!(format!("{}\n", lines[1]), summary(0, 0, 1));

    // -v: runtime, its message, writes and the stop.
    // (--consistency=none: the switch of every thread at once, whose
    // writes are counted below.)
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-v",
        "--consistency=none",
        "-p",
        &pid,
        "--revert",
        "demo_livepatch.so",
    ]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("  demo_prog (pid: {pid}): SUCCESS demo_livepatch.so")
    );
    assert_eq!(lines[1], format!("    runtime: {}", demo.runtime.display()));
    assert!(
        lines[2].starts_with("    runtime says: reverted patch '"),
        "{out}"
    );
    assert!(
        // Two functions reverted at once: a slot each (three words), the
        // two stubs pointed at them, the flag, the two entries.
        lines[3].starts_with("    code writes: 11, threads stopped: 1 for ")
            && lines[3].ends_with(" ms, attempts: 1"),
        "{out}"
    );
    // Several files under -v: indented deeper under the name line
    // (--consistency=none: the writes counted are those of the switch of
    // every thread at once).
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-v",
        "--consistency=none",
        "-p",
        &pid,
        "demo_livepatch.so",
        "demo_livepatch2.so",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("  demo_prog (pid: {pid}):"));
    assert_eq!(lines[1], "    SUCCESS demo_livepatch.so");
    assert_eq!(
        lines[2],
        format!("      runtime: {}", demo.runtime.display())
    );
    // Switched at once: a slot each (three words), two stubs and two
    // entries to the slots, the flag, two stubs straight to the new code.
    assert!(lines[4].starts_with("      code writes: 13, "), "{out}");
    // Where the time went, phase by phase.
    assert!(lines[5].starts_with("      phases (ms): find "), "{out}");
    assert!(lines[5].contains(", total "), "{out}");
    assert_eq!(lines[6], "    SUCCESS demo_livepatch2.so");

    // --json: one document, every kind of result.
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "--json",
        "-p",
        &pid,
        "demo_livepatch.so",
        "missing.so",
    ]);
    assert_eq!(code, 13);
    let doc = json(&out);
    let p = &doc["processes"][0];
    assert_eq!(p["pid"].to_string(), pid);
    assert_eq!(p["status"], "failed");
    assert_eq!(p["results"][0]["status"], "already_applied");
    assert_eq!(p["results"][1]["status"], "failed");
    assert_eq!(p["results"][1]["patch"], "missing.so");
    assert!(p["results"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("missing.so"));
    assert_eq!(
        doc["summary"],
        serde_json::json!({"patched": 0, "skipped": 0, "failed": 1})
    );
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "--json",
        "-p",
        &pid,
        "--revert-all=libulpdemo.so.1",
    ]);
    assert_eq!(code, 0);
    let r = &json(&out)["processes"][0]["results"][0];
    assert_eq!(r["status"], "reverted");
    assert!(r["stopped_us"].as_u64().is_some() && r["threads_stopped"] == 1);

    // A process without the runtime, as JSON.
    let mut cmd = Command::new(demo.dir.join("demo_prog"));
    cmd.current_dir(demo.dir.path());
    let plain = Target::spawn(cmd);
    let ppid = plain.pid.to_string();
    let (code, out, err) = demo.ulp(&["trigger", "--json", "-p", &ppid, "demo_livepatch.so"]);
    assert_eq!(code, 0);
    assert!(err.contains("Libpulp not found in target process"), "{err}");
    let doc = json(&out);
    assert_eq!(doc["warnings"][0]["pid"].to_string(), ppid);
    assert_eq!(
        doc["warnings"][0]["warning"],
        "the live-patching runtime is not loaded in the target process"
    );
    let p = &doc["processes"][0];
    assert_eq!(p["status"], "skipped");
    assert_eq!(p["results"][0]["status"], "not_applicable");
    assert_eq!(
        p["results"][0]["reason"],
        "the live-patching runtime is not loaded in the target process"
    );
    drop(plain);

    // A pid that does not exist: said so, no process line.
    let (code, out, err) = demo.ulp(&["trigger", "-p", "2147483647", "demo_livepatch.so"]);
    assert_eq!(code, 1);
    assert_eq!(err, "ulp: no process 2147483647 exists\n");
    assert_eq!(out, summary(0, 0, 0));
    assert_eq!(t.ask("answer"), "1");
}

/// The options_prog fixture, started with the runtime preloaded.
fn start_options_prog(demo: &Demo) -> Target {
    copy_files(&fixtures_dir(), demo.dir.path(), &["options_prog"]);
    let mut cmd = Command::new(demo.dir.join("options_prog"));
    cmd.current_dir(demo.dir.path())
        .env("LD_PRELOAD", &demo.runtime);
    Target::spawn(cmd)
}

#[test]
fn timeout_bounds_a_process_that_cannot_be_stopped_and_retries_are_counted() {
    let demo = Demo::new("opt-timeout");
    let mut t = start_options_prog(&demo);
    let pid = t.pid.to_string();
    // The main thread waits in vfork for 4 s, where ptrace cannot stop it.
    assert_eq!(t.ask("vfork 4"), "vforking");
    wait_in_syscall(t.pid, t.pid, libc::SYS_vfork);
    let started = Instant::now();
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "--timeout",
        "1",
        "-r",
        "0",
        "-p",
        &pid,
        "demo_livepatch.so",
    ]);
    let took = started.elapsed();
    // libpulp's `Error attaching to process` (258): exit 258 & 0xff.
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "  options_prog (pid: {pid}): ERROR demo_livepatch.so: Error attaching to process: \
             timed out"
        )),
        "{out}"
    );
    assert!(took < Duration::from_millis(2800), "took {took:?}");
    assert_eq!(t.next_line(), "vforked");
    // Unharmed, and patchable now; -r 5 is accepted.
    assert_eq!(t.ask("answer"), "1");
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-v",
        "-r",
        "5",
        "--timeout=10",
        "-p",
        &pid,
        "demo_livepatch.so",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(", attempts: 1\n"), "{out}");
    assert_eq!(t.ask("answer"), "2");
}

#[test]
fn disable_seccomp_lets_a_filtered_process_load_the_patch() {
    let demo = Demo::new("opt-seccomp");
    let mut t = start_options_prog(&demo);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("open"), "ok");
    assert_eq!(t.ask("seccomp"), "filtered");
    assert_eq!(t.ask("open"), "EPERM");

    // The runtime cannot open the container: a clean failure.
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 31, "Failure in dlopen (287): {out}");
    assert!(
        out.starts_with(&format!(
            "  options_prog (pid: {pid}): ERROR demo_livepatch.so: Failure in dlopen: "
        )),
        "{out}"
    );
    // dlerror's text: the path, then why.
    assert!(
        out.contains("/demo_livepatch.so: cannot open shared object file: Operation not permitted"),
        "{out}"
    );
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
    let (_, patches, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(!patches.contains("livepatch:"), "{patches}");

    // Without CAP_SYS_ADMIN, --disable-seccomp says what is missing.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", ulp_bin()])
        .args([
            "trigger",
            "--disable-seccomp",
            "-p",
            &pid,
            "demo_livepatch.so",
        ])
        .current_dir(demo.dir.path())
        .output()
        .expect("running setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Refused before any process is touched, as libpulp does (EPERM).
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "ulp: error: disabling seccomp requires CAP_SYS_ADMIN, but user does not provide it."
        ) && stderr.contains("suggestion: run ulp as root."),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(t.ask("answer"), "1");

    // As root, with the option: applied; the filter is back afterwards.
    let (code, out, err) = demo.ulp(&[
        "trigger",
        "--disable-seccomp",
        "-p",
        &pid,
        "demo_livepatch.so",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        success_report("options_prog", &pid, "demo_livepatch.so")
    );
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
    assert_eq!(t.ask("open"), "EPERM");
    // Reverting needs no file: works without the option.
    demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "1");
}

/// Copies `file` into `root` at the same absolute path.
fn copy_into_root(root: &Path, file: &Path) {
    let to = root.join(file.strip_prefix("/").unwrap());
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if !to.exists() {
        std::fs::copy(file, &to).unwrap_or_else(|e| panic!("copying {}: {e}", file.display()));
    }
}

/// The shared libraries `ldd` lists for `bin` (absolute paths).
fn ldd(bin: &Path) -> Vec<std::path::PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("running ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(std::path::PathBuf::from)
        })
        .collect()
}

#[test]
fn root_prefix_reaches_a_chrooted_process() {
    let demo = Demo::new("opt-root");
    let root = demo.dir.join("jail");
    std::fs::create_dir_all(root.join("patches")).unwrap();
    // Not at the top: $ORIGIN of /demo_prog would not find its library.
    std::fs::create_dir_all(root.join("app")).unwrap();
    for f in ["demo_prog", "libulpdemo.so.1", "libpulp.so.0"] {
        std::fs::copy(demo.dir.join(f), root.join("app").join(f)).unwrap();
    }
    // env sets LD_PRELOAD inside (set outside, it would also apply to the
    // chroot command, where the path does not exist).
    let env = Path::new("/usr/bin/env");
    copy_into_root(&root, env);
    for f in ["demo_livepatch.so", "demo_livepatch2.so"] {
        std::fs::copy(demo.dir.join(f), root.join("patches").join(f)).unwrap();
    }
    for bin in [demo.dir.join("demo_prog"), demo.runtime.clone(), env.into()] {
        for lib in ldd(&bin) {
            if !lib.starts_with(demo.dir.path()) {
                copy_into_root(&root, &lib);
            }
        }
    }
    let mut cmd = Command::new("chroot");
    cmd.arg(&root).args([
        "/usr/bin/env",
        "LD_PRELOAD=/app/libpulp.so.0",
        // No /proc in the jail: $ORIGIN cannot be found there.
        "LD_LIBRARY_PATH=/app",
        "/app/demo_prog",
    ]);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("answer"), "1");
    let jail = root.to_string_lossy().into_owned();

    // This host's root, as the chrooted process sees it: a copy of the
    // patches at /ulp-host + their real path (what a bind mount of / would
    // show). /ulp-host does not exist here: -R is not checked.
    let prefix = "/ulp-host";
    assert!(!Path::new(prefix).exists());
    let real = std::fs::canonicalize(demo.dir.path()).unwrap();
    let seen = root
        .join(prefix.trim_start_matches('/'))
        .join(real.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&seen).unwrap();
    for f in ["demo_livepatch.so", "demo_livepatch2.so"] {
        std::fs::copy(demo.dir.join(f), seen.join(f)).unwrap();
    }

    // Without -R: an error that names -R, and no change.
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 31, "Failure in dlopen (287): {out}");
    assert!(
        out.contains("ERROR demo_livepatch.so: Failure in dlopen: ")
            && out.contains(&format!("runs chrooted at '{jail}'"))
            && out.contains("-R PREFIX"),
        "{out}"
    );
    assert_eq!(t.ask("answer"), "1");

    // A PREFIX under which the process finds nothing: the runtime's dlopen
    // fails, and nothing changes.
    let (code, out, _) = demo.ulp(&["trigger", "-R", "/nowhere", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 31, "{out}");
    assert!(
        out.contains("ERROR demo_livepatch.so: Failure in dlopen: "),
        "{out}"
    );
    assert_eq!(t.ask("answer"), "1");

    // With -R: FILE is read here; the runtime opens PREFIX + realpath(FILE).
    let (code, out, err) = demo.ulp(&["trigger", "-R", prefix, "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, success_report("demo_prog", &pid, "demo_livepatch.so"));
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
    let (_, log, _) = demo.ulp(&["messages", "-p", &pid]);
    assert!(
        log.contains(&format!(
            "ulp: applied patch '{prefix}{}/demo_livepatch.so' to '/app/libulpdemo.so.1': 2 functions",
            real.display()
        )),
        "{log}"
    );
    // A library named by its path as the process sees it.
    let out = demo.ulp_ok(&["trigger", "-p", &pid, "--revert-all=/app/libulpdemo.so.1"]);
    assert!(
        out.contains("SUCCESS reverted all patches from '/app/libulpdemo.so.1'"),
        "{out}"
    );
    assert_eq!(t.ask("answer"), "1");
    demo.ulp_ok(&["trigger", "-R", prefix, "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "2");
    // A glob, expanded here, in byte order.
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-R",
        prefix,
        "-p",
        &pid,
        "--revert",
        "demo_livepatch*.so",
    ]);
    assert_eq!(code, 16, "demo_livepatch2.so is not applied (272): {out}");
    assert!(
        out.starts_with(&format!(
            "  demo_prog (pid: {pid}):\n    SUCCESS demo_livepatch.so\n    ERROR demo_livepatch2.so: Patch not applied"
        )),
        "{out}"
    );
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
}

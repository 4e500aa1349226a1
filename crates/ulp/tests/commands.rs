//! End-to-end tests of every command but `trigger`, through the real `ulp`
//! binary and, where a process is involved, real processes started with the
//! runtime preloaded: `patches`, `check`, `dump`, `packer`, `extract`,
//! `messages`, `livepatchable`, `post`, `set_patchable`, the
//! `LIBPULP_DISABLE_ON_*` opt-outs, the command line itself and `--json`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Parses the one JSON document a `--json` run prints.
fn doc(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{out}"))
}

/// `ulp ARGS --json` in `dir`: status and the parsed document.
fn ulp_json(dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = ulp(dir, &all);
    assert!(code != 64, "ulp {all:?}: usage error: {err}");
    (code, doc(&out))
}

fn section(path: &Path, name: &str) -> Vec<u8> {
    ulp_elf::ElfFile::open(path)
        .unwrap()
        .section(name)
        .unwrap_or_else(|| panic!("{}: no {name}", path.display()))
        .to_vec()
}

/// The `patches -p PID` block of one process, as text (without the list
/// of unpatched processes that may follow: it depends on what other
/// tests' processes have applied to the same library build).
fn patches_of(demo: &Demo, pid: &str) -> String {
    let (code, out, err) = demo.ulp(&["patches", "-p", pid]);
    assert_eq!(code, 0, "{out}{err}");
    match out.find("Unpatched processes") {
        Some(at) => out[..at].to_string(),
        None => out,
    }
}

// ---------------------------------------------------------------------
// The command line.

const COMMANDS: [&str; 11] = [
    "trigger",
    "patches",
    "messages",
    "check",
    "set_patchable",
    "post",
    "livepatchable",
    "packer",
    "dump",
    "extract",
    "watch",
];

#[test]
fn help_for_every_command_and_version() {
    let dir = TempDir::new("help-all");
    let (code, usage, _) = ulp(dir.path(), &["--help"]);
    assert_eq!(code, 0);
    for c in COMMANDS {
        assert!(usage.contains(&format!("  {c} ")), "--help lists {c}");
        for args in [[c, "--help"], ["-h", c]] {
            let (code, text, err) = ulp(dir.path(), &args);
            assert_eq!(code, 0, "{args:?}: {err}");
            assert!(text.starts_with(&format!("Usage: ulp {c}")), "{text}");
            assert!(text.contains("Exit status"), "{c} --help: {text}");
        }
    }
    let (code, out, _) = ulp(dir.path(), &["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("ulp {}\n", env!("CARGO_PKG_VERSION")));
    let (code, v) = ulp_json(dir.path(), &["-V"]);
    assert_eq!(code, 0);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["name"], "ulp");
}

#[test]
fn usage_errors_exit_64_for_every_command() {
    let dir = TempDir::new("usage-all");
    for args in [
        &["patches", "extra"][..],
        &["patches", "--revert"][..],
        &["patches", "-o", "x"][..],
        &["messages"][..],
        &["messages", "-p", "1", "extra"][..],
        &["check", "x.so"][..],
        &["check", "-p", "1"][..],
        &["check", "-p", "1", "a.so", "b.so"][..],
        &["dump", "--only-livepatched", "x.so"][..],
        &["packer"][..],
        &["packer", "-b", "x.dsc"][..],
        &["extract"][..],
        &["extract", "a", "b"][..],
        &["extract", "-o"][..],
        &["extract", "-l", "x", "lib.so"][..],
        &["livepatchable"][..],
        &["livepatchable", "--revert", "x"][..],
        &["post", "-t", "y", "x"][..],
        &["set_patchable", "-p", "1"][..],
        &["set_patchable", "-p", "1", "maybe"][..],
        &["set_patchable", "-p", "1", "enable", "disable"][..],
        &["--json", "frobnicate"][..],
        &["--bogus"][..],
    ] {
        let (code, out, err) = ulp(dir.path(), args);
        assert_eq!(code, 64, "ulp {args:?}: {out}{err}");
        assert!(out.is_empty(), "ulp {args:?}: stdout {out}");
        assert!(err.starts_with("ulp: "), "ulp {args:?}: {err}");
    }
}

// ---------------------------------------------------------------------
// patches, check, messages with real processes.

#[test]
fn patches_of_all_processes_by_pid_name_with_build_ids_and_only_livepatched() {
    let demo = Demo::new("patches-all");
    let mut patched = demo.start(&[]);
    let plain = demo.start(&[]);
    let (pp, pl) = (patched.pid.to_string(), plain.pid.to_string());
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pp, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(patched.ask("answer"), "2");
    let lib = demo.path("libulpdemo.so.1");

    // One process, by pid: the COMPAT layout.
    let text = patches_of(&demo, &pp);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(&*format!("PID: {pp}, name: demo_prog")));
    assert_eq!(lines.next(), Some("  Livepatching status: enabled"));
    assert_eq!(lines.next(), Some("  Livepatchable libraries:"));
    assert_eq!(lines.next(), Some(&*format!("    in {lib}:")));
    let l = lines.next().unwrap();
    assert!(
        l.starts_with("      livepatch: demo_livepatch.so loaded on 20"),
        "{l}"
    );
    assert_eq!(
        lines.next(),
        Some("        bug labels: CVE-2026-0001, bsc#42")
    );
    assert_eq!(lines.next(), None, "{text}");

    // Every process with the runtime: both of ours are listed.
    let (code, all, err) = demo.ulp(&["patches"]);
    assert_eq!(code, 0, "{err}");
    for pid in [&pp, &pl] {
        assert!(
            all.contains(&format!("PID: {pid}, name: demo_prog\n")),
            "{all}"
        );
    }
    // By name: the same two among possibly others of that name.
    let (code, named, err) = demo.ulp(&["patches", "-p", "demo_prog"]);
    assert_eq!(code, 0, "{err}");
    assert!(named.contains(&format!("PID: {pp},")) && named.contains(&format!("PID: {pl},")));

    // -b: each library with its build id (the one the patch records).
    let (_, build_id, _) = demo.ulp(&["dump", "-b", "demo_livepatch.so"]);
    let (code, with_ids, _) = demo.ulp(&["patches", "-b", "-p", &pl]);
    assert_eq!(code, 0);
    assert!(
        with_ids.contains(&format!("    in {lib} ({}):\n", build_id.trim())),
        "{with_ids}"
    );

    // --only-livepatched: the unpatched process is left out.
    let (code, only, _) = demo.ulp(&["patches", "--only-livepatched"]);
    assert_eq!(code, 0);
    assert!(only.contains(&format!("PID: {pp},")), "{only}");
    assert!(!only.contains(&format!("PID: {pl},")), "{only}");
    let (code, only, _) = demo.ulp(&["--only-livepatched", "-p", &pl, "patches"]);
    assert_eq!((code, only.as_str()), (0, ""));

    // --json: the same facts.
    let (code, v) = ulp_json(demo.dir.path(), &["patches", "-p", &pp]);
    assert_eq!(code, 0);
    let p = &v["processes"][0];
    assert_eq!(p["pid"], patched.pid);
    assert_eq!(p["name"], "demo_prog");
    assert_eq!(p["status"], "enabled");
    assert_eq!(p["state"], "enabled");
    let l = &p["libraries"][0];
    assert_eq!(l["path"], lib.as_str());
    assert_eq!(l["build_id"], build_id.trim());
    assert_eq!(l["livepatchable"], true);
    let a = &l["patches"][0];
    assert_eq!(a["container"], "demo_livepatch.so");
    assert_eq!(a["container_path"], demo.path("demo_livepatch.so").as_str());
    assert_eq!(
        a["bug_labels"],
        serde_json::json!(["CVE-2026-0001", "bsc#42"])
    );
    assert_eq!(a["patch_id"].as_str().unwrap().len(), 64);
    assert!(a["applied_at"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(v["errors"], serde_json::json!([]));
    let (_, v) = ulp_json(demo.dir.path(), &["patches", "--only-livepatched"]);
    let pids: Vec<i64> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    assert!(pids.contains(&(patched.pid as i64)) && !pids.contains(&(plain.pid as i64)));

    // -p naming nothing readable: exit 1.
    let (code, out, err) = demo.ulp(&["patches", "-p", "no-such-process-name"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no-such-process-name"), "{err}");
    let (code, v) = ulp_json(demo.dir.path(), &["patches", "-p", "no-such-process-name"]);
    assert_eq!(code, 1);
    assert!(v["errors"][0]["error"].is_string());
}

#[test]
fn patches_warns_about_a_process_without_the_runtime() {
    let demo = Demo::new("patches-nort");
    let mut cmd = Command::new(demo.dir.join("demo_prog"));
    cmd.current_dir(demo.dir.path());
    let t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    let (code, out, err) = demo.ulp(&["patches", "-p", &pid]);
    // No process block; at most the list of unpatched processes, when a
    // test running alongside has patched the same library build. libpulp's
    // words on stderr, exit 1.
    assert_eq!(code, 1, "{err}");
    assert!(
        out.is_empty() || out.starts_with("Unpatched processes"),
        "{out}"
    );
    assert_log_line(
        &err,
        "error gathering target process information: Libpulp not found in target process",
    );
    let (code, v) = ulp_json(demo.dir.path(), &["patches", "-p", &pid]);
    assert_eq!(code, 1);
    assert_eq!(v["processes"], serde_json::json!([]));
    assert_eq!(v["warnings"][0]["pid"], t.pid);
    // check: an error (255), as libpulp's.
    let (code, out, err) = demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, out.as_str()), (255, ""));
    assert_log_line(&err, "error gathering target process information.");
    let (code, v) = ulp_json(demo.dir.path(), &["check", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 255);
    assert_eq!(
        (&v["runtime"], &v["error"]),
        (
            &Value::Bool(false),
            &Value::from("Libpulp not found in target process")
        )
    );
    // set_patchable and messages need the runtime: exit 1.
    let (code, _, err) = demo.ulp(&["set_patchable", "-p", &pid, "disable"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not loaded"), "{err}");
    let (code, _, err) = demo.ulp(&["messages", "-p", &pid]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn check_exit_statuses_json_and_command_word_anywhere() {
    let demo = Demo::new("check-json");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let (code, out, _) = demo.ulp(&["-p", &pid, "check", "demo_livepatch.so"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!("demo_prog (pid: {pid}): demo_livepatch.so: not applied\n")
    );
    let (code, v) = ulp_json(demo.dir.path(), &["check", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0);
    assert_eq!(v["applied"], false);
    assert_eq!(v["runtime"], true);
    assert_eq!(v["pid"], t.pid);
    assert_eq!(v["file"], "demo_livepatch.so");

    assert_eq!(demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]).0, 0);
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(demo.ulp(&["demo_livepatch.so", "check", "-p", &pid]).0, 1);
    let (code, v) = ulp_json(demo.dir.path(), &["check", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, &v["applied"]), (1, &Value::Bool(true)));
    // The other patch is for the same library but not applied.
    assert_eq!(demo.ulp(&["check", "-p", &pid, "demo_livepatch2.so"]).0, 0);
    // -q: the status only.
    let (code, out, _) = demo.ulp(&["check", "-q", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, out.as_str()), (1, ""));

    // Errors: 255, with {"error"} under --json.
    let (code, out, err) = demo.ulp(&["check", "-p", &pid, "no-such.so"]);
    assert_eq!((code, out.as_str()), (255, ""));
    assert!(err.contains("no-such.so"), "{err}");
    let (code, v) = ulp_json(demo.dir.path(), &["check", "-p", &pid, "no-such.so"]);
    assert_eq!(code, 255);
    assert!(v["error"].as_str().unwrap().contains("no-such.so"));
    let (code, _, _) = demo.ulp(&["check", "-p", "no-such-process-name", "demo_livepatch.so"]);
    assert_eq!(code, 255);
}

#[test]
fn messages_show_the_runtime_log() {
    let demo = Demo::new("messages");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let (code, out, err) = demo.ulp(&["messages", "-p", &pid]);
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("libpulp loaded..."), "{out}");
    assert!(!out.contains('\0'));
    assert_eq!(demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]).0, 0);
    assert_eq!(t.ask("answer"), "2");
    let (code, out, _) = demo.ulp(&["messages", "-p", &pid]);
    assert_eq!(code, 0);
    let last = out.lines().last().unwrap();
    // [YYYY-MM-DD HH:MM:SS] ulp: ...
    assert!(
        last.len() > 27 && last.as_bytes()[0] == b'[' && &last[20..27] == "] ulp: ",
        "{out}"
    );
    assert!(last.contains("demo_livepatch.so"), "{out}");
    let (code, v) = ulp_json(demo.dir.path(), &["messages", "-p", &pid]);
    assert_eq!(code, 0);
    let logged: Vec<&str> = v["processes"][0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(logged, out.lines().collect::<Vec<_>>());
    assert_eq!(v["processes"][0]["pid"], t.pid);
    // By name.
    let (code, out, err) = demo.ulp(&["messages", "-p", "demo_prog"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("libpulp loaded..."));
    let (code, _, err) = demo.ulp(&["messages", "-p", "no-such-process-name"]);
    assert_eq!(code, 1, "{err}");
}

// ---------------------------------------------------------------------
// set_patchable and the opt-outs.

#[test]
fn set_patchable_switches_live_patching_off_and_on() {
    let demo = Demo::new("setpatch");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let status = |demo: &Demo| {
        patches_of(demo, &pid)
            .lines()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };

    // libpulp's line, on stderr; nothing on stdout.
    let (code, out, err) = demo.ulp(&["set_patchable", "-p", &pid, "disable"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_log_line(
        &err,
        &format!("Process demo_prog (pid: {pid}): livepatching is now disabled."),
    );
    assert_eq!(status(&demo), "  Livepatching status: disabled by user");
    let (code, out, err) = demo.ulp(&["set_patchable", "-p", &pid, "disable"]);
    assert_eq!((code, out.as_str()), (0, ""));
    assert_log_line(
        &err,
        &format!("Process demo_prog (pid: {pid}): livepatching is already disabled."),
    );

    // A disabled process refuses patches: SKIPPED, nothing changes.
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("  demo_prog (pid: {pid}): SKIPPED ")),
        "{out}"
    );
    assert!(out.contains("set_patchable"), "{out}");
    assert!(out.ends_with(&summary(0, 1, 0)), "{out}");
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]).0, 0);
    let (_, v) = ulp_json(demo.dir.path(), &["patches", "-p", &pid]);
    assert_eq!(v["processes"][0]["state"], "disabled_by_tool");
    assert_eq!(v["processes"][0]["status"], "disabled by user");

    // Enable (by name, from anywhere on the line), then patching works.
    let (code, v) = ulp_json(demo.dir.path(), &["enable", "-p", &pid, "set_patchable"]);
    assert_eq!(code, 0);
    assert_eq!(v["action"], "enable");
    let p = &v["processes"][0];
    assert_eq!(
        (&p["before"], &p["after"], &p["changed"]),
        (
            &Value::from("disabled_by_tool"),
            &Value::from("enabled"),
            &Value::Bool(true)
        )
    );
    assert_eq!(status(&demo), "  Livepatching status: enabled");
    let (code, out, err) = demo.ulp(&["set_patchable", "-p", &pid, "enable"]);
    assert_eq!((code, out.as_str()), (0, ""));
    assert_log_line(
        &err,
        &format!("Process demo_prog (pid: {pid}): livepatching is already enabled."),
    );
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS demo_livepatch.so"), "{out}");
    assert_eq!(t.ask("answer"), "2");
    // Disabling keeps what is applied.
    assert_eq!(
        demo.ulp(&["set_patchable", "-q", "-p", &pid, "disable"]),
        (0, String::new(), String::new())
    );
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]).0, 1);
    // No such process: exit 1.
    let (code, v) = ulp_json(
        demo.dir.path(),
        &["set_patchable", "-p", "no-such-process-name", "enable"],
    );
    assert_eq!(code, 1);
    assert!(v["errors"][0]["error"].is_string());
}

#[test]
fn opt_outs_disable_live_patching_when_they_match() {
    let demo = Demo::new("optout");
    let exe = demo.path("demo_prog");
    let (user, group) = (id("-un"), id("-gn"));
    let cases: [(&str, String, String); 3] = [
        (
            "LIBPULP_DISABLE_ON_PATH",
            "/nonexistent/*:*/demo_pro?".to_string(),
            "/usr/bin/*:/nonexistent/demo_prog".to_string(),
        ),
        (
            "LIBPULP_DISABLE_ON_USERS",
            format!("nobody-here,{user}"),
            format!("{user}x:x{user}"),
        ),
        (
            "LIBPULP_DISABLE_ON_GROUPS",
            format!("{}*", group.get(..1).unwrap_or("?")),
            "no-such-group-*".to_string(),
        ),
    ];
    assert!(Path::new(&exe).exists());
    for (var, matching, other) in cases {
        if user.is_empty() || group.is_empty() {
            eprintln!("no user or group name (id -un / id -gn): {var} not checked");
            if var != "LIBPULP_DISABLE_ON_PATH" {
                continue;
            }
        }
        // Matching: disabled by user, patches refused, enable refused.
        let mut t = demo.start_with_env(&[(var, &matching)]);
        let pid = t.pid.to_string();
        let text = patches_of(&demo, &pid);
        assert!(
            text.contains("\n  Livepatching status: disabled by user\n"),
            "{var}={matching}: {text}"
        );
        let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
        assert_eq!(code, 0, "{var}: {out}{err}");
        assert!(
            out.starts_with(&format!("  demo_prog (pid: {pid}): SKIPPED ")),
            "{var}: {out}"
        );
        assert!(out.contains("disabled by user"), "{var}: {out}");
        assert!(out.ends_with(&summary(0, 1, 0)), "{var}: {out}");
        assert_eq!(t.ask("answer"), "1", "{var}: nothing changed");
        let (code, _, err) = demo.ulp(&["set_patchable", "-p", &pid, "enable"]);
        assert_eq!(code, 1, "{var}: enable must not override the user");
        assert!(err.contains("disabled by user"), "{err}");
        assert!(patches_of(&demo, &pid).contains("disabled by user"));
        let (code, _, err) = demo.ulp(&["set_patchable", "-p", &pid, "disable"]);
        assert_eq!(code, 0);
        assert!(
            err.ends_with(&format!(
                "] ulp: Process demo_prog (pid: {pid}): livepatching is already disabled.\n"
            )),
            "{err}"
        );
        let (_, out, _) = demo.ulp(&["messages", "-p", &pid]);
        assert!(
            out.contains(": livepatching disabled by user request.\n"),
            "{var}: the log says why: {out}"
        );
        drop(t);

        // Not matching: enabled, patches apply.
        let mut t = demo.start_with_env(&[(var, &other)]);
        let pid = t.pid.to_string();
        let text = patches_of(&demo, &pid);
        assert!(
            text.contains("\n  Livepatching status: enabled\n"),
            "{var}={other}: {text}"
        );
        let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
        assert_eq!(code, 0, "{var}: {out}{err}");
        assert!(out.contains("SUCCESS"), "{var}: {out}");
        assert_eq!(t.ask("answer"), "2");
    }
}

// ---------------------------------------------------------------------
// Files: dump, packer, extract, livepatchable, post.

fn without_file(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("file");
    v
}

#[test]
fn dump_json_and_interop_both_ways() {
    let (code, v) = ulp_json(&interop_dir(), &["dump", "greet_livepatch1.so"]);
    assert_eq!(code, 0);
    assert_eq!(
        v["patch_id"],
        "dcd71a9f2b145cf6aa5392ca4ee7e89c8cb16625b42a7d0d35314980294fb8e7"
    );
    assert_eq!(v["build_id"], "0b12723e714c785b321e9af5c995dc14ca869484");
    assert_eq!(v["name"], "libgreet.so.0");
    assert_eq!(v["file"], "greet_livepatch1.so");
    let units: Vec<(String, String, u64)> = v["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["old_fname"].as_str().unwrap().into(),
                u["new_fname"].as_str().unwrap().into(),
                u["old_faddr"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        units,
        [
            ("greet_answer".into(), "new_greet_answer".into(), 0x118e),
            ("greet_word".into(), "new_greet_word".into(), 0x11ae),
            ("greet".into(), "new_greet".into(), 0x11ce),
        ]
    );
    let refs = v["references"].as_array().unwrap();
    assert_eq!(refs.len(), 2);
    let by_name = |n: &str| refs.iter().find(|r| r["patch_name"] == n).unwrap();
    let r = by_name("ulpr_greet_count");
    assert_eq!(
        (
            &r["target_name"],
            &r["target_offset"],
            &r["patch_offset"],
            &r["tls"]
        ),
        (
            &Value::from("greet_count"),
            &Value::from(0x404c),
            &Value::from(0x4040),
            &Value::Bool(false)
        )
    );
    let r = by_name("ulpr_greet_thread_count");
    assert_eq!(
        (&r["target_offset"], &r["patch_offset"], &r["tls"]),
        (&Value::from(0), &Value::from(0x4030), &Value::Bool(true))
    );
    assert_eq!(
        v["bug_labels"],
        serde_json::json!(["CVE-2099-0001", "bsc#1234567"])
    );
    assert_eq!(v["revert"]["patch_id"], v["patch_id"]);
    assert_eq!(v["revert"]["name"], "libgreet.so.0");
    assert!(v["comments"].as_str().unwrap().contains("CVE-2099-0001"));

    // --revert, text: the .ulp.rev header.
    let (code, out, _) = ulp(&interop_dir(), &["dump", "--revert", "greet_livepatch1.so"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "patch id: dcd71a9f2b145cf6aa5392ca4ee7e89c8cb16625\n\
         so filename: greet_livepatch1.so\n\n\
         * build id: 0b12723e714c785b321e9af5c995dc14ca869484\n\
         * name: libgreet.so.0\n"
    );
    let (code, out, _) = ulp(
        &interop_dir(),
        &["dump", "--revert", "-b", "greet_livepatch1.so"],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "0b12723e714c785b321e9af5c995dc14ca869484\n")
    );

    // Packed by ulp: the same fields as packed by libpulp.
    let dir = interop_unpacked(
        "interop-json",
        "greet_livepatch1.so",
        &["greet_livepatch1.dsc"],
    );
    let (code, packed) = ulp_json(dir.path(), &["packer", "greet_livepatch1.dsc"]);
    assert_eq!(code, 0, "{packed}");
    let (_, dumped) = ulp_json(dir.path(), &["dump", "greet_livepatch1.so"]);
    assert_eq!(
        packed, dumped,
        "packer --json prints what dump --json reads"
    );
    assert_eq!(without_file(dumped), without_file(v));

    // Errors: exit 1, {"error"}.
    let (code, v) = ulp_json(&interop_dir(), &["dump", "greet_livepatch1.unpacked.so"]);
    assert_eq!(code, 1);
    assert!(v["error"].as_str().unwrap().contains("no .ulp section"));
}

#[test]
fn libpulp_packed_container_applies_and_is_checked_with_ulp() {
    let dir = TempDir::new("interop-apply");
    copy_files(
        &interop_dir(),
        dir.path(),
        &["greet_prog", "libgreet.so.0", "greet_livepatch1.so"],
    );
    let runtime = install_runtime(dir.path());
    let mut cmd = Command::new(dir.join("greet_prog"));
    cmd.current_dir(dir.path()).env("LD_PRELOAD", &runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("answer"), "41");
    let (code, out, err) = ulp(dir.path(), &["trigger", "-p", &pid, "greet_livepatch1.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("answer"), "42");
    assert_eq!(
        ulp(dir.path(), &["check", "-p", &pid, "greet_livepatch1.so"]).0,
        1
    );
    let (_, out, _) = ulp(dir.path(), &["patches", "-p", &pid]);
    assert!(
        out.contains("        bug labels: CVE-2099-0001, bsc#1234567\n"),
        "{out}"
    );
}

/// The greet patch with its references given by explicit offsets (the
/// values libpulp's packer found by name), applied to a running process:
/// the references reach the library's counters.
#[test]
fn packer_references_by_explicit_offsets() {
    let dir = interop_unpacked("offsets", "greet_livepatch1.so", &["greet_prog"]);
    std::fs::write(
        dir.join("offsets.dsc"),
        "greet_livepatch1.so\n@libgreet.so.0\ngreet_answer:new_greet_answer\n\
         greet_word:new_greet_word\ngreet:new_greet\n\
         #greet_count:ulpr_greet_count:0x404c:0x4040\n\
         #%greet_thread_count:ulpr_greet_thread_count:0:4030\n",
    )
    .unwrap();
    let (code, v) = ulp_json(dir.path(), &["packer", "offsets.dsc"]);
    assert_eq!(code, 0, "{v}");
    let (_, libpulp) = ulp_json(&interop_dir(), &["dump", "greet_livepatch1.so"]);
    assert_eq!(v["references"], libpulp["references"]);
    assert_eq!(v["units"], libpulp["units"]);

    let runtime = install_runtime(dir.path());
    let mut cmd = Command::new(dir.join("greet_prog"));
    cmd.current_dir(dir.path()).env("LD_PRELOAD", &runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("bob"), "hello, bob");
    assert_eq!(t.ask("calls"), "1 1");
    let (code, out, err) = ulp(dir.path(), &["trigger", "-p", &pid, "greet_livepatch1.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("bob"), "howdy, bob!");
    assert_eq!(t.ask("calls"), "11 11");
}

/// A .dsc with mistakes: the first one is reported compiler-style, at the
/// start of a stderr line, and the container is not touched.
#[test]
fn packer_reports_the_first_dsc_mistake_and_writes_nothing() {
    let dir = interop_unpacked("dsc-mistakes", "p.so", &[]);
    let before = std::fs::read(dir.join("p.so")).unwrap();
    let head = "! bsc#1\np.so\n@libgreet.so.0\n";
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        // unknown function in the target
        ("greet_answer:new_greet_answer\n  nope:new_greet\n", "5:3", "function 'nope' not found in the target"),
        // unknown function in the container
        ("greet_answer:new_greet_answer\ngreet: missing_fn\n", "5:8", "function 'missing_fn' of the live patch"),
        // missing container file
        ("", "2:1", "cannot find the live patch 'gone.so'"),
        // missing target file
        ("", "3:2", "cannot find the target 'libgone.so'"),
        // a second target line
        ("greet_answer:new_greet_answer\n@libgreet.so.0\n", "5:1", "second target line"),
        // malformed references
        ("#greet_count\n", "4:1", "malformed reference with 1 field(s)"),
        ("#greet_count:ulpr_greet_count:0x40:zz\n", "4:36", "bad live patch offset (POFF) 'zz'"),
        // unknown variables
        ("#nope:ulpr_greet_count\n", "4:2", "variable 'nope' not found in the target"),
        ("#greet_count:nope\n", "4:14", "variable 'nope' not found in the live patch"),
        // the first problem wins: an unknown function before a syntax error,
        // and a reference before a unit
        ("nope:new_greet\n#bad\n", "4:1", "function 'nope' not found"),
        ("#nope:ulpr_greet_count\nnope2:new_greet\n", "4:2", "variable 'nope'"),
        ("greet:new_greet\n#bad\n", "5:1", "malformed reference"),
    ];
    for (i, &(body, at, message)) in cases.iter().enumerate() {
        let text = match message {
            m if m.contains("'gone.so'") => {
                "! bsc#1\ngone.so\n@libgreet.so.0\ngreet:new_greet\n".to_string()
            }
            m if m.contains("'libgone.so'") => {
                "! bsc#1\np.so\n@libgone.so\ngreet:new_greet\n".to_string()
            }
            _ => format!("{head}{body}"),
        };
        let name = format!("bad{i}.dsc");
        std::fs::write(dir.join(&name), &text).unwrap();
        let (code, out, err) = ulp(dir.path(), &["packer", &name]);
        assert_eq!((code, out.as_str()), (1, ""), "{text}");
        let want = format!("{name}:{at}: error: {message}");
        assert!(err.starts_with(&want), "{text}\nwant {want}\ngot  {err}");
        assert_eq!(err.lines().count(), 1, "one error: {err}");
        let (code, v) = ulp_json(dir.path(), &["packer", &name]);
        assert_eq!(code, 1);
        let (line, col) = at.split_once(':').unwrap();
        assert_eq!(v["location"]["file"], name.as_str());
        assert_eq!(v["location"]["line"].to_string(), line);
        assert_eq!(v["location"]["col"].to_string(), col);
        assert!(v["message"].as_str().unwrap().starts_with(message));
        assert!(v["error"].as_str().unwrap().starts_with(&want));
        assert_eq!(
            std::fs::read(dir.join("p.so")).unwrap(),
            before,
            "nothing written"
        );
    }
}

#[test]
fn extract_writes_a_description_the_packer_takes_as_target() {
    let demo = Demo::new("extract");
    let d = demo.dir.path();
    // -o -: the description on stdout.
    let (code, out, err) = demo.ulp(&["extract", "-o", "-", "libulpdemo.so.1"]);
    assert_eq!(code, 0, "{err}");
    let v = doc(&out);
    assert_eq!(v["format"], "ulp-extract");
    assert_eq!(v["version"], 1);
    assert_eq!(v["name"], "libulpdemo.so.1");
    assert_eq!(v["soname"], "libulpdemo.so.1");
    let (_, build_id, _) = demo.ulp(&["dump", "-b", "demo_livepatch.so"]);
    assert_eq!(v["build_id"], build_id.trim());
    let lib = ulp_elf::ElfFile::open(&d.join("libulpdemo.so.1")).unwrap();
    let syms = v["symbols"].as_array().unwrap();
    for name in ["demo_answer", "demo_word", "demo_call_count"] {
        let want = lib.symbol(name).unwrap();
        let s = syms.iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(s["offset"], want.value, "{name}");
        assert_eq!(s["size"], want.size, "{name}");
        assert_eq!(s["st_info"], want.st_info, "{name}");
        assert_eq!(s["st_other"], want.st_other, "{name}");
    }
    // Default output: LIB's file name + .json; -o FILE; --json summary.
    let (code, out, err) = demo.ulp(&["extract", "libulpdemo.so.1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("libulpdemo.so.1.json"), "{out}");
    assert_eq!(
        doc(&std::fs::read_to_string(d.join("libulpdemo.so.1.json")).unwrap()),
        v
    );
    let (code, s) = ulp_json(d, &["extract", "-o", "lib.json", "libulpdemo.so.1"]);
    assert_eq!(code, 0);
    assert_eq!(s["output"], "lib.json");
    assert_eq!(s["symbols"], syms.len());
    assert_eq!(s["build_id"], v["build_id"]);
    let (code, _, err) = demo.ulp(&["extract", "no-such.so"]);
    assert_eq!(code, 1);
    assert!(err.contains("no-such.so"), "{err}");

    // Packing against the description gives the very same sections as
    // against the library: with -t and with @FILE.json, in a directory
    // without the library.
    let reference = section(&d.join("demo_livepatch.so"), ".ulp");
    let away = TempDir::new("extract-away");
    copy_files(&fixtures_dir(), away.path(), &["demo_livepatch.so"]);
    std::fs::copy(d.join("lib.json"), away.join("libulpdemo.so.1.json")).unwrap();
    std::fs::write(away.join("demo_livepatch.dsc"), DEMO_DSC).unwrap();
    let (code, out, err) = ulp(
        away.path(),
        &["packer", "-t", "libulpdemo.so.1.json", "demo_livepatch.dsc"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(section(&away.join("demo_livepatch.so"), ".ulp"), reference);
    let json_dsc = DEMO_DSC.replace("@libulpdemo.so.1", "@libulpdemo.so.1.json");
    std::fs::write(away.join("j.dsc"), &json_dsc).unwrap();
    let (code, v) = ulp_json(away.path(), &["packer", "-l", "demo_livepatch.so", "j.dsc"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["name"], "libulpdemo.so.1");
    assert_eq!(v["build_id"], build_id.trim());
    // A function the description does not have: a compiler-style error.
    std::fs::write(
        away.join("bad.dsc"),
        format!("{json_dsc}nope:new_demo_answer\n"),
    )
    .unwrap();
    let (code, _, err) = ulp(away.path(), &["packer", "bad.dsc"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("bad.dsc:6:1: error: function 'nope' not found"),
        "{err}"
    );
    std::fs::write(away.join("broken.json"), "{\"name\": 3}").unwrap();
    let (code, _, err) = ulp(
        away.path(),
        &["packer", "-t", "broken.json", "demo_livepatch.dsc"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("broken.json") && err.contains("\"name\""),
        "{err}"
    );

    // And the container packed from the description applies.
    copy_files(d, away.path(), &["demo_prog", "libulpdemo.so.1"]);
    let mut cmd = Command::new(away.join("demo_prog"));
    cmd.current_dir(away.path())
        .env("LD_PRELOAD", &demo.runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    let (code, out, err) = ulp(away.path(), &["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("word"), "new");
}

#[test]
fn livepatchable_and_post_json() {
    let dir = TempDir::new("lp-json");
    copy_files(&fixtures_dir(), dir.path(), &["libulpdemo.so.1"]);
    copy_files(
        &fixtures_dir().join("variant"),
        dir.path(),
        &["libulpdemo-nopad.so.1"],
    );
    let (code, v) = ulp_json(dir.path(), &["livepatchable", "libulpdemo.so.1"]);
    assert_eq!(code, 0);
    // libpulp's three facts, and the per-method counts (livepatchable.rs).
    assert_eq!(
        (&v["file"], &v["livepatchable"], &v["reason"]),
        (
            &Value::from("libulpdemo.so.1"),
            &Value::Bool(true),
            &Value::Null
        )
    );
    assert_eq!(v["methods"]["padded"], 5, "{v}");
    let (code, v) = ulp_json(dir.path(), &["livepatchable", "libulpdemo-nopad.so.1"]);
    assert_eq!(code, 1);
    assert_eq!(v["livepatchable"], false);
    assert!(v["reason"].is_string());
    let (code, v) = ulp_json(dir.path(), &["livepatchable", "missing.so"]);
    assert_eq!((code, &v["livepatchable"]), (1, &Value::Bool(false)));

    let (code, v) = ulp_json(dir.path(), &["post", "libulpdemo.so.1"]);
    assert_eq!(code, 0);
    let merged = v["merged"].as_u64().unwrap();
    assert!(merged >= 4, "{v}");
    assert_eq!(v["already"], 0);
    let (code, v) = ulp_json(dir.path(), &["post", "libulpdemo.so.1"]);
    assert_eq!(code, 0);
    assert_eq!(
        (v["merged"].as_u64(), v["already"].as_u64()),
        (Some(0), Some(merged))
    );
    let (code, out, _) = ulp(dir.path(), &["post", "-q", "libulpdemo.so.1"]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, v) = ulp_json(dir.path(), &["post", "missing.so"]);
    assert_eq!(code, 1);
    assert!(v["error"].as_str().unwrap().contains("missing.so"));
}

/// `err` is exactly one line `[YYYY-MM-DD HH:MM:SS] ulp: MESSAGE`, as
/// libpulp's tool writes its messages.
fn assert_log_line(err: &str, message: &str) {
    let line = err.strip_suffix('\n').unwrap_or_else(|| panic!("{err:?}"));
    let (stamp, rest) = line.split_at(line.find("] ").map_or(0, |i| i + 1));
    assert_eq!(rest, format!(" ulp: {message}"), "{err}");
    let b = stamp.as_bytes();
    assert!(
        b.len() == 21
            && b[0] == b'['
            && b[20] == b']'
            && stamp[1..20].chars().enumerate().all(|(i, c)| match i {
                4 | 7 => c == '-',
                10 => c == ' ',
                13 | 16 => c == ':',
                _ => c.is_ascii_digit(),
            }),
        "{err}"
    );
}

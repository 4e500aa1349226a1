//! The words, streams and exit statuses of the `ulp` commands that a
//! libpulp user's scripts look for (COMPAT.md): reasons that begin with
//! libpulp's phrase, failure exits masked from libpulp's error numbers,
//! libpulp's indentation, its stderr messages (`[TIME] ulp: ...`), `-u`,
//! `-R PREFIX`, `-v` trace lines and `--load-runtime` with reverts. Every
//! case runs the real `ulp` against real processes.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `text` is exactly these messages, each one line
/// `[YYYY-MM-DD HH:MM:SS] ulp: MESSAGE` as libpulp's tool writes them
/// (a message may itself hold more lines).
fn assert_logged(text: &str, messages: &[&str]) {
    let mut rest = text;
    for m in messages {
        let (stamp, after) = rest.split_at(rest.len().min(22));
        assert!(is_stamp(stamp), "no timestamp before '{m}' in {text:?}");
        let want = format!("ulp: {m}\n");
        assert!(after.starts_with(&want), "'{m}' expected in {text:?}");
        rest = &after[want.len()..];
    }
    assert_eq!(rest, "", "more than expected in {text:?}");
}

/// `[YYYY-MM-DD HH:MM:SS] `
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 22
        && b[0] == b'['
        && b[20] == b']'
        && b[21] == b' '
        && s[1..20].char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == ' ',
            13 | 16 => c == ':',
            _ => c.is_ascii_digit(),
        })
}

/// demo_livepatch.so packed again as `other.so` for a library named
/// `libother.so.1` that no demo_prog loads.
fn pack_for_other_library(demo: &Demo) {
    std::fs::copy(
        demo.dir.join("libulpdemo.so.1"),
        demo.dir.join("libother.so.1"),
    )
    .unwrap();
    std::fs::copy(
        fixtures_dir().join("demo_livepatch.so"),
        demo.dir.join("other.so"),
    )
    .unwrap();
    let (code, out, err) = demo.ulp(&[
        "packer",
        "-l",
        "other.so",
        "-t",
        "libother.so.1",
        "demo_livepatch.dsc",
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

/// demo_prog with the variant build of libulpdemo (another build id), the
/// runtime preloaded.
fn start_variant(demo: &Demo) -> Target {
    let v = demo.dir.join("variant");
    std::fs::create_dir_all(&v).unwrap();
    copy_files(&fixtures_dir().join("variant"), &v, &["libulpdemo.so.1"]);
    copy_files(&fixtures_dir(), &v, &["demo_prog"]);
    let mut cmd = Command::new(v.join("demo_prog"));
    cmd.current_dir(&v).env("LD_PRELOAD", &demo.runtime);
    Target::spawn(cmd)
}

fn build_id_of(demo: &Demo, file: &str) -> String {
    let (code, out, err) = demo.ulp(&["dump", "-b", file]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// Item: results are `PHRASE: DETAIL`, lines are indented as libpulp's, and
/// a failed run exits with libpulp's error numbers or-ed and masked to 8
/// bits.
#[test]
fn reasons_indentation_and_exit_statuses_are_libpulps() {
    let demo = Demo::new("texts-exit");
    pack_for_other_library(&demo);
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let real = std::fs::canonicalize(demo.dir.path()).unwrap();

    // A dlopen failure (the runtime finds no file under that prefix): 31.
    let (code, out, _) = demo.ulp(&["trigger", "-R", "/nowhere", "-p", &pid, "demo_livepatch.so"]);
    let opened = format!("/nowhere{}/demo_livepatch.so", real.display());
    assert_eq!(
        (code, out),
        (
            31,
            format!(
                "  demo_prog (pid: {pid}): ERROR demo_livepatch.so: Failure in dlopen: {opened}: \
                 cannot open shared object file: No such file or directory\n{}",
                summary(0, 0, 1)
            )
        )
    );
    assert_eq!(t.ask("answer"), "1");

    // A patch for a library that is not loaded: skipped, exit 0.
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "other.so"]);
    assert_eq!(
        (code, out),
        (
            0,
            format!(
                "  demo_prog (pid: {pid}): SKIPPED Target library not loaded: library \
                 'libother.so.1' is not loaded\n{}",
                summary(0, 1, 0)
            )
        )
    );

    // Several patches: the name line alone, each result four spaces in.
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-p",
        &pid,
        "demo_livepatch.so",
        "demo_livepatch2.so",
    ]);
    assert_eq!(
        (code, out),
        (
            0,
            format!(
                "  demo_prog (pid: {pid}):\n    SUCCESS demo_livepatch.so\n    SUCCESS \
                 demo_livepatch2.so\n{}",
                summary(1, 0, 0)
            )
        )
    );
    assert_eq!(t.ask("answer"), "3");
    let (code, out, _) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(
        (code, out),
        (
            0,
            format!(
                "  demo_prog (pid: {pid}): SKIPPED Patch already applied\n{}",
                summary(0, 1, 0)
            )
        )
    );

    // Two failures of different errors: Patch not applied (272 = 0x110)
    // and No metadata in .so (269 = 0x10d) exit 0x10 | 0x0d = 29.
    let (code, _, _) = demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(code, 0);
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "-p",
        &pid,
        "--revert",
        "demo_livepatch.so",
        "missing.so",
    ]);
    assert_eq!(code, 29, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("  demo_prog (pid: {pid}):"), "{out}");
    assert!(
        lines[1].starts_with("    ERROR demo_livepatch.so: Patch not applied: "),
        "{out}"
    );
    assert!(
        lines[2].starts_with("    ERROR missing.so: No metadata in .so: "),
        "{out}"
    );
    assert_eq!(format!("{}\n", lines[3]), summary(0, 0, 1));
    assert_eq!(t.ask("answer"), "3", "demo_livepatch2.so stays");

    // --json: the libpulp error of each result, with its number.
    let (code, out, _) = demo.ulp(&[
        "trigger",
        "--json",
        "-p",
        &pid,
        "--revert",
        "demo_livepatch.so",
    ]);
    assert_eq!(code, 16);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["processes"][0]["results"][0]["error"],
        serde_json::json!({"number": 272, "phrase": "Patch not applied"})
    );
    let (_, out, _) = demo.ulp(&["trigger", "--json", "-p", &pid, "demo_livepatch2.so"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["processes"][0]["results"][0]["error"],
        serde_json::json!({"number": 275, "phrase": "Patch already applied"})
    );
    assert!(t.alive());
}

/// Item: a process without the runtime. trigger: libpulp's message on
/// stderr (not with -q), exit 0; patches: exit 1; check: exit 255.
#[test]
fn a_process_without_the_runtime_is_reported_in_libpulps_words() {
    let demo = Demo::new("texts-nort");
    let mut t = demo.start_plain(&[]);
    let pid = t.pid.to_string();
    let gathering =
        "error gathering target process information: Libpulp not found in target process";

    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, out.as_str()), (0, summary(0, 1, 0).as_str()));
    let (logged, hint) = err.split_at(err.find("\nulp: hint: ").map_or(0, |i| i + 1));
    assert_logged(logged, &[gathering]);
    assert_eq!(
        hint,
        format!(
            "ulp: hint: demo_prog (pid: {pid}) was started without libpulp.so.0: start it with \
             LD_PRELOAD=.../libpulp.so.0 or load it now with --load-runtime\n"
        )
    );
    let (code, out, err) = demo.ulp(&["trigger", "-q", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, out, err), (0, summary(0, 1, 0), String::new()));

    let (code, _, err) = demo.ulp(&["patches", "-p", &pid]);
    assert_eq!(code, 1);
    assert_logged(&err, &[gathering]);

    let (code, out, err) = demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, out.as_str()), (255, ""));
    assert_logged(&err, &["error gathering target process information."]);

    let (code, out, err) = demo.ulp(&["messages", "-p", &pid]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_logged(&err, &["error gathering target process information."]);
    assert_eq!(t.ask("answer"), "1");
}

/// Item: `-v` prints libpulp's trace lines for a build-id skip and for a
/// library that is not loaded, on stderr.
#[test]
fn verbose_trigger_traces_skips_as_libpulp() {
    let demo = Demo::new("texts-verbose");
    pack_for_other_library(&demo);
    let mut t = start_variant(&demo);
    let pid = t.pid.to_string();
    let expected = build_id_of(&demo, "demo_livepatch.so");
    let loaded = {
        let (code, out, err) = demo.ulp(&["extract", "-o", "-", "variant/libulpdemo.so.1"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["build_id"].as_str().unwrap().to_string()
    };
    assert_ne!(loaded, expected);

    let (code, out, err) =
        demo.ulp(&["trigger", "-v", "-p", &pid, "demo_livepatch.so", "other.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_logged(
        &err,
        &[
            &format!(
                "pid = {pid}, name = demo_prog: livepatch buildid mismatch for libulpdemo.so.1 \
                 ({loaded})\n    expected buildid: {expected}\n"
            ),
            &format!("pid = {pid}, name = demo_prog: target library (libother.so.1) not loaded."),
        ],
    );
    // Under the name line, each skip names its file, as libpulp's.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], format!("  demo_prog (pid: {pid}):"));
    assert!(
        lines[1].starts_with("    SKIPPED demo_livepatch.so: Build ID mismatch: "),
        "{out}"
    );
    assert_eq!(
        lines[2],
        "    SKIPPED other.so: Target library not loaded: library 'libother.so.1' is not loaded"
    );
    assert_eq!(format!("{}\n", lines[3]), summary(0, 1, 0));
    // Without -v: none of it.
    let (_, _, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(err, "");
    assert_eq!(t.ask("answer"), "1");
}

/// Item: `-u USER` selects by the owner in /proc/PID/loginuid for
/// `patches` and `set_patchable`; `trigger -u` is refused as in libpulp.
#[test]
fn user_selects_by_login_uid_and_trigger_refuses_it() {
    let demo = Demo::new("texts-user");
    // Owned by uid 1 (daemon): the login uid is set before the exec (root
    // may set it once for a process whose login uid is unset).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo 1 > /proc/self/loginuid && exec \"$0\"")
        .arg(demo.dir.join("demo_prog"))
        .current_dir(demo.dir.path())
        .env("LD_PRELOAD", &demo.runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/loginuid")).unwrap(),
        "1"
    );
    let daemon = ulp_core_user_name(1);

    for user in [daemon.as_str(), "1", "[d]*"] {
        let (code, out, err) = demo.ulp(&["patches", "-u", user, "-p", &pid]);
        assert_eq!(code, 0, "-u {user}: {err}");
        assert!(
            out.starts_with(&format!("PID: {pid}, name: demo_prog\n")),
            "-u {user}: {out}"
        );
    }
    // Every process of that owner: ours among them.
    let (code, out, _) = demo.ulp(&["patches", "--user", "1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("PID: {pid}, name: demo_prog\n")),
        "{out}"
    );
    // Another owner: not listed.
    let (code, out, err) = demo.ulp(&["patches", "-u", "root", "-p", &pid]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("ulp: no readable process matches '{pid}' owned by 'root'\n")
    );

    let (code, out, err) = demo.ulp(&["set_patchable", "-u", &daemon, "-p", &pid, "disable"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_logged(
        &err,
        &[&format!(
            "Process demo_prog (pid: {pid}): livepatching is now disabled."
        )],
    );
    let (_, out, _) = demo.ulp(&["patches", "-p", &pid]);
    assert_eq!(
        out.lines().nth(1),
        Some("  Livepatching status: disabled by user")
    );
    let (code, _, err) = demo.ulp(&["set_patchable", "-u", "root", "-p", &pid, "enable"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = demo.ulp(&["set_patchable", "-u", "1", "-p", &pid, "enable"]);
    assert_eq!(code, 0);
    assert_logged(
        &err,
        &[&format!(
            "Process demo_prog (pid: {pid}): livepatching is now enabled."
        )],
    );

    let (code, out, err) = demo.ulp(&["trigger", "-u", "1", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!((code, out.as_str()), (38, ""));
    assert_logged(
        &err,
        &["error: user wildcard is currently unsupported in trigger"],
    );
    let (code, _, err) = demo.ulp(&["trigger", "-q", "--user=x", "demo_livepatch.so"]);
    assert_eq!((code, err.as_str()), (38, ""));
    assert_eq!(t.ask("answer"), "1");
}

/// The name of `uid` in /etc/passwd, as the tool reads it.
fn ulp_core_user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
        })
        .expect("a user with uid 1")
}

/// Item: `--load-runtime` goes with `--revert` and `--revert-all`: a
/// process with the runtime is reverted, one without it is SKIPPED and
/// gets no runtime.
#[test]
fn load_runtime_is_accepted_with_reverts() {
    let demo = Demo::new("texts-loadrev");
    let mut with = demo.start(&[]);
    let mut plain = demo.start_plain(&[]);
    let (pw, pp) = (with.pid.to_string(), plain.pid.to_string());
    let (code, _, _) = demo.ulp(&["trigger", "-p", &pw, "demo_livepatch.so"]);
    assert_eq!(code, 0);
    assert_eq!(with.ask("answer"), "2");

    let (code, out, err) = demo.ulp(&[
        "trigger",
        "-p",
        &pw,
        "--load-runtime",
        "--revert-all=libulpdemo.so.1",
    ]);
    assert_eq!(
        (code, out, err),
        (
            0,
            format!(
                "  demo_prog (pid: {pw}): SUCCESS reverted all patches from \
                 'libulpdemo.so.1'\n{}",
                summary(1, 0, 0)
            ),
            String::new()
        )
    );
    assert_eq!(with.ask("answer"), "1");

    let skipped = format!(
        "  demo_prog (pid: {pp}): SKIPPED No patches installed: the process has no \
         live-patching runtime, so nothing is applied\n{}",
        summary(0, 1, 0)
    );
    let (code, out, err) = demo.ulp(&[
        "trigger",
        "-p",
        &pp,
        "--load-runtime",
        "--revert-all=libulpdemo.so.1",
    ]);
    assert_eq!((code, out, err), (0, skipped.clone(), String::new()));
    let (code, out, err) = demo.ulp(&[
        "trigger",
        "-p",
        &pp,
        "--load-runtime",
        "--revert",
        "demo_livepatch.so",
    ]);
    assert_eq!((code, out, err), (0, skipped, String::new()));
    let maps = std::fs::read_to_string(format!("/proc/{pp}/maps")).unwrap();
    assert!(!maps.contains("libpulp.so"), "no runtime was loaded");
    assert_eq!(plain.ask("answer"), "1");
}

/// Item: small ones: a pid that does not exist, and the packer as root
/// with a missing description.
#[test]
fn a_missing_pid_and_a_missing_description_are_named() {
    let dir = TempDir::new("texts-missing");
    let (code, out, err) = ulp(dir.path(), &["trigger", "-p", "999999", "x.so"]);
    assert_eq!(
        (code, out, err),
        (
            1,
            summary(0, 0, 0),
            "ulp: no process 999999 exists\n".to_string()
        )
    );
    let (code, out, err) = ulp(dir.path(), &["packer", "missing.dsc"]);
    assert_eq!(
        (code, out, err),
        (
            1,
            String::new(),
            "ulp: 'missing.dsc': cannot read the description: No such file or directory (os \
             error 2)\n"
                .to_string()
        )
    );
    assert!(!Path::new("/proc/999999").exists());
}

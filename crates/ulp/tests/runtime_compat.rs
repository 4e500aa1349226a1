//! The runtime's side of libpulp compatibility, end to end: the opt-out
//! variables (numeric ids, extended globs, libpulp's log lines), the first
//! line of `ulp messages`, and the libpulp error a refused patch carries
//! (a container dlopen refuses: `Failure in dlopen` with dlerror's text
//! and libpulp's log lines).

mod common;

use std::process::Command;

use common::*;
use ulp_abi::errors;
use ulp_core::reason::Reason;
use ulp_core::trigger::{self, Outcome};

/// `ulp messages -p PID`, each line without its `[YYYY-MM-DD HH:MM:SS] `.
fn messages(demo: &Demo, pid: i32) -> Vec<String> {
    let (code, out, err) = demo.ulp(&["messages", "-p", &pid.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .map(|l| match l.find("] ulp: ") {
            Some(at) if l.starts_with('[') => l[at + 2..].to_string(),
            _ => l.to_string(),
        })
        .collect()
}

fn container(demo: &Demo, name: &str) -> ulp_container::container::Container {
    ulp_container::container::read(&demo.dir.join(name)).expect("reading the container")
}

#[test]
fn opt_outs_by_numeric_id_and_extended_glob_log_libpulps_lines() {
    let demo = Demo::new("rt-optout");
    let (uid, gid) = (id("-u"), id("-g"));
    let (user, group) = (id("-un"), id("-gn"));
    let other_uid = (uid.parse::<u64>().unwrap() + 1).to_string();
    let other_gid = (gid.parse::<u64>().unwrap() + 1).to_string();
    let mut cases: Vec<(&str, String, String)> = vec![
        (
            "LIBPULP_DISABLE_ON_USERS",
            format!("no-such-user:{uid}"),
            format!("Matched uid {uid}"),
        ),
        (
            "LIBPULP_DISABLE_ON_GROUPS",
            format!("{other_gid}:{gid}"),
            format!("Matched gid {gid}"),
        ),
        (
            "LIBPULP_DISABLE_ON_PATH",
            "/nowhere/*:*/demo_+(pro)g".to_string(),
            "Matched path pattern */demo_+(pro)g".to_string(),
        ),
    ];
    if user.is_empty() || group.is_empty() {
        eprintln!("no user or group name (id -un / id -gn): name patterns not checked");
    } else {
        // `+(ro)ot` for root: one or more of the first two letters, then
        // the rest.
        let (head, tail) = user.split_at(user.chars().next().unwrap().len_utf8());
        let plus = format!("+({head}){tail}");
        cases.push((
            "LIBPULP_DISABLE_ON_USERS",
            format!("{other_uid}:{plus}"),
            format!("Matched user pattern {plus}"),
        ));
        let alt = format!("@(no-such-group|{group})");
        cases.push((
            "LIBPULP_DISABLE_ON_GROUPS",
            alt.clone(),
            format!("Matched group pattern {alt}"),
        ));
    }
    for (var, value, matched) in &cases {
        let mut t = demo.start_with_env(&[(var, value)]);
        let pid = t.pid.to_string();
        let (code, out, err) = demo.ulp(&["patches", "-p", &pid]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("\n  Livepatching status: disabled by user\n"),
            "{var}={value}: {out}"
        );
        let log = messages(&demo, t.pid);
        let want = format!("ulp: {matched}: livepatching disabled by user request.");
        assert_eq!(log.get(1), Some(&want), "{var}={value}: {log:#?}");

        // A trigger is refused with libpulp's error; nothing changes.
        let c = container(&demo, "demo_livepatch.so");
        match trigger::apply(ulp_core::Pid::new(t.pid), &c, &trigger::Options::default()) {
            Outcome::Skipped(r) => assert_eq!(r.error, errors::EUSRBLOCKED, "{r:?}"),
            other => panic!("{var}={value}: {other:?}"),
        }
        let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("SKIPPED"), "{var}={value}: {out}");
        assert_eq!(t.ask("answer"), "1", "{var}={value}");
    }

    // Numbers that are not this process's ids, and patterns that match
    // nothing: enabled.
    let env = [
        (
            "LIBPULP_DISABLE_ON_USERS",
            format!("{other_uid}:@(no-such-user|nobody-else)"),
        ),
        ("LIBPULP_DISABLE_ON_GROUPS", format!("{other_gid}:+(x)yz")),
        (
            "LIBPULP_DISABLE_ON_PATH",
            "/nowhere/!(demo_prog)".to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut t = demo.start_with_env(&env);
    let pid = t.pid.to_string();
    let (_, out, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(out.contains("\n  Livepatching status: enabled\n"), "{out}");
    assert!(!messages(&demo, t.pid).iter().any(|l| l.contains("Matched")));
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}");
    assert_eq!(t.ask("answer"), "2");
}

#[test]
fn the_first_message_is_libpulps_loaded_line() {
    let demo = Demo::new("rt-loaded");
    let t = demo.start(&[]);
    let log = messages(&demo, t.pid);
    assert_eq!(
        log[0],
        format!(
            "libpulp loaded... (ulp {}, protocol {})",
            env!("CARGO_PKG_VERSION"),
            ulp_abi::PROTOCOL_VERSION
        )
    );
    assert!(log[0].starts_with("libpulp loaded..."));
}

const UNDEF_DSC: &str = "\
demo_livepatch_undef.so
@libulpdemo.so.1
demo_answer:new_demo_answer
";

#[test]
fn a_container_dlopen_refuses_fails_with_failure_in_dlopen() {
    let demo = Demo::new("rt-dlopen");
    copy_files(
        &fixtures_dir(),
        demo.dir.path(),
        &["demo_livepatch_undef.so"],
    );
    std::fs::write(demo.dir.join("undef.dsc"), UNDEF_DSC).unwrap();
    let (code, out, err) = demo.ulp(&["packer", "undef.dsc"]);
    assert_eq!(code, 0, "{out}{err}");
    let path = std::fs::canonicalize(demo.dir.join("demo_livepatch_undef.so")).unwrap();
    let path = path.to_string_lossy().into_owned();
    let dlerror = format!("{path}: undefined symbol: ulp_fixture_nowhere_defined");

    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch_undef.so"]);
    assert_eq!(
        code, 31,
        "Failure in dlopen (287) masked to 8 bits: {out}{err}"
    );
    let line = format!(
        "  demo_prog (pid: {pid}): ERROR demo_livepatch_undef.so: Failure in dlopen: {dlerror}"
    );
    assert_eq!(out.lines().next(), Some(line.as_str()), "{out}");
    assert_eq!(t.ask("answer"), "1", "the old code runs");

    // libpulp's four lines, in a row, then ulp's own.
    let log = messages(&demo, t.pid);
    let at = log
        .iter()
        .position(|l| l == &format!("ulp: Patch path: {path}"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(
        log[at + 1..at + 4],
        [
            format!("ulp: Unable to load shared object {path}: {dlerror}."),
            "ulp: Unable to load patch dl handler.".to_string(),
            "ulp: Error in metadata load: Failure in dlopen.".to_string(),
        ],
        "{log:#?}"
    );
    assert_eq!(
        log[at + 4],
        format!("ulp: apply of '{path}' failed: Failure in dlopen: {dlerror}")
    );

    // The reason is libpulp's error with dlerror's text; it exits 31.
    let c = container(&demo, "demo_livepatch_undef.so");
    let outcome = trigger::apply(ulp_core::Pid::new(t.pid), &c, &trigger::Options::default());
    assert_eq!(
        outcome,
        Outcome::Failed(Reason::new(errors::EDLOPEN, dlerror.clone()))
    );
    if let Outcome::Failed(r) = outcome {
        assert_eq!(r.error.exit_code(), 31);
    }
    let (code, out, _) = demo.ulp(&["patches", "-p", &pid]);
    assert_eq!(code, 0);
    assert!(!out.contains("livepatch:"), "nothing recorded: {out}");
    // The same process still takes a good patch.
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("answer"), "2");
}

/// The tool applies the same rules from outside before it loads the
/// runtime (`trigger --load-runtime`): a numeric uid and an extended glob
/// opt a process out too, and nothing is loaded into it.
#[test]
fn load_runtime_honours_numeric_ids_and_extended_globs() {
    let demo = Demo::new("rt-inject-optout");
    let uid = id("-u");
    let cases = [
        ("LIBPULP_DISABLE_ON_USERS", format!("no-such-user:{uid}")),
        (
            "LIBPULP_DISABLE_ON_PATH",
            "*/@(demo_prog|other)".to_string(),
        ),
    ];
    for (var, value) in &cases {
        let mut cmd = Command::new(demo.dir.join("demo_prog"));
        cmd.current_dir(demo.dir.path())
            .env_remove("LD_PRELOAD")
            .env(var, value);
        let mut t = Target::spawn(cmd);
        let pid = t.pid.to_string();
        let (code, out, err) = demo.load_and_apply(&pid);
        assert_eq!(code, 0, "{var}={value}: {out}{err}");
        assert!(out.contains("SKIPPED"), "{var}={value}: {out}");
        assert!(out.contains(var), "{var}={value}: {out}");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(!maps.contains("/libpulp.so"), "{var}={value}: loaded");
        assert_eq!(t.ask("answer"), "1");
    }
}

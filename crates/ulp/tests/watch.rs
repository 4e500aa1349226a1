//! `ulp watch` (issue 18): the patch store's records applied to processes
//! as they start, without LD_PRELOAD. Real processes, real ptrace; every
//! test names its own store (`--store` under its temporary directory) and
//! stops its watch with SIGTERM, which must exit 0.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
/// A `-p` pattern that matches no process: nothing is patched.
const NOBODY: &str = "ulp-watch-nobody";

/// A running `ulp watch`, its stderr read line by line. Dropping it stops
/// it (SIGTERM, then SIGKILL after a bound).
struct Watch {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    /// `ulp watch -p PROG` (only this test's program).
    fn start(dir: &Path, store: &Path, runtime: &Path, prog: &str, extra: &[&str]) -> Watch {
        let mut cmd = Command::new(ulp_bin());
        cmd.arg("watch")
            .args(["-p", prog])
            .arg("--store")
            .arg(store)
            .arg(format!("--runtime={}", runtime.display()))
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting ulp watch");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `text`; panics after `timeout`.
    fn expect(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "ulp watch: no line with {text:?} within {timeout:?}; saw {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line so far (what has arrived is taken in).
    fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// The target's `patched` line (the program prints it once it sees the
    /// patch, or `unpatched` after its own limit and exits). When it does
    /// not come, the panic shows what the watch said meanwhile, which the
    /// target's lines alone do not tell.
    fn patched(&mut self, t: &mut Target) -> String {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match t.line(left) {
                Some(l) if l.starts_with("patched") => return l,
                Some(_) => {}
                None => panic!(
                    "target {}: not patched (saw {:?}); ulp watch said: {:#?}",
                    t.pid,
                    t.seen,
                    self.drain()
                ),
            }
        }
    }

    /// SIGTERM; the watch must exit 0 within a bound.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "ulp watch after SIGTERM: {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ulp watch did not exit after SIGTERM; saw {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The rest of its output (the pipe is closed now).
        for l in self.lines.iter() {
            self.seen.push(l);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo set-up with `watch_prog` and a store holding the record of
/// `demo_livepatch.so` (recorded with no process patched).
fn demo_with_record(tag: &str) -> (Demo, PathBuf) {
    let demo = Demo::new(tag);
    copy_prog(&demo, tag);
    let store = demo.dir.join("store");
    record(&demo, &store, "demo_livepatch.so");
    (demo, store)
}

/// `watch_prog` copied as `demo.dir/TAG` (every test watches only its
/// own program, `-p TAG`: a watch sees every process of the machine, and
/// must leave the other tests' alone).
fn copy_prog(demo: &Demo, tag: &str) {
    std::fs::copy(fixtures_dir().join("watch_prog"), demo.dir.join(tag)).unwrap();
}

fn record(demo: &Demo, store: &Path, file: &str) {
    let s = store.to_str().unwrap();
    let (code, out, err) = ulp_bounded(
        demo.dir.path(),
        &["trigger", "--persist", "--store", s, "-p", NOBODY, file],
        LIMIT,
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// Starts `prog` (watch_prog or a copy) without the runtime, with `args`.
fn start_plain(dir: &Path, prog: &Path, args: &[&str]) -> Target {
    let mut cmd = Command::new(prog);
    cmd.args(args).current_dir(dir).env_remove("LD_PRELOAD");
    Target::spawn(cmd)
}

/// The TracerPid of process `pid` (0: nobody traces it).
fn tracer(pid: i32) -> Option<i32> {
    status_field(pid, &pid.to_string(), "TracerPid").and_then(|v| v.trim().parse().ok())
}

#[test]
fn fifty_programs_started_at_once_are_all_patched() {
    let (demo, store) = demo_with_record("wburst");
    let dir = demo.dir.path();
    let mut w = Watch::start(dir, &store, &demo.runtime, "wburst", &[]);
    w.expect("watching ", LIMIT);
    w.expect("store: 1 record: libulpdemo.so.1: demo_livepatch.so", LIMIT);
    let prog = demo.dir.join("wburst");
    let mut targets: Vec<Target> = (0..50).map(|_| start_plain(dir, &prog, &[])).collect();
    for t in &mut targets {
        let l = w.patched(t);
        assert!(l.ends_with(" 2"), "{l}");
    }
    for t in &targets {
        w.expect(
            &format!(
                "ulp watch: patched {} (wburst): libulpdemo.so.1: demo_livepatch.so",
                t.pid
            ),
            LIMIT,
        );
    }
    let log = w.stop();
    assert!(
        !log.iter().any(|l| l.contains("refused")),
        "nothing refused: {log:#?}"
    );
    assert!(log[0].contains("(netlink process events)"), "{log:#?}");
}

#[test]
fn poll_fallback_patches_too() {
    let (demo, store) = demo_with_record("wpoll");
    let dir = demo.dir.path();
    let mut w = Watch::start(dir, &store, &demo.runtime, "wpoll", &["--poll"]);
    w.expect("(polling the process list)", LIMIT);
    w.expect("store: 1 record", LIMIT);
    let prog = demo.dir.join("wpoll");
    let mut targets: Vec<Target> = (0..5).map(|_| start_plain(dir, &prog, &[])).collect();
    for t in &mut targets {
        w.patched(t);
        w.expect(&format!("patched {} (wpoll)", t.pid), LIMIT);
    }
    w.stop();
}

#[test]
fn a_program_without_a_recorded_target_is_never_touched() {
    let (demo, store) = demo_with_record("wother");
    let dir = demo.dir.path();
    // watch_prog with another build of libulpdemo.so.1: the record is not
    // for it.
    let other = demo.dir.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(
        fixtures_dir().join("variant/libulpdemo.so.1"),
        other.join("libulpdemo.so.1"),
    )
    .unwrap();
    std::fs::copy(demo.dir.join("wother"), other.join("wother")).unwrap();
    let mut w = Watch::start(dir, &store, &demo.runtime, "wother", &[]);
    w.expect("store: 1 record", LIMIT);
    let mut t = start_plain(&other, &other.join("wother"), &["1500"]);
    // Never traced while it runs, and it runs to its end unpatched.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut looks = 0;
    let end = loop {
        assert_eq!(tracer(t.pid).unwrap_or(0), 0, "process {} traced", t.pid);
        looks += 1;
        if let Some(l) = t.line(Duration::from_millis(5)) {
            break l;
        }
        assert!(Instant::now() < deadline, "watch_prog did not finish");
    };
    assert_eq!(end, "unpatched 1");
    assert!(looks > 10);
    let log = w.stop();
    assert!(
        !log.iter().any(|l| l.contains(&t.pid.to_string())),
        "nothing logged about {}: {log:#?}",
        t.pid
    );
}

#[test]
fn corrupt_records_are_refused_and_programs_run_unpatched() {
    let (demo, store) = demo_with_record("wcorrupt");
    let dir = demo.dir.path();
    let id = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| !n.starts_with('.'))
        .unwrap();
    // The container copy overwritten with garbage (same owner and mode),
    // and a record whose metadata is garbage.
    std::fs::write(store.join(&id).join("demo_livepatch.so"), b"garbage").unwrap();
    std::fs::create_dir(store.join("garbage")).unwrap();
    std::fs::write(store.join("garbage/record.json"), b"\x00\xffgarbage").unwrap();
    let mut w = Watch::start(dir, &store, &demo.runtime, "wcorrupt", &[]);
    w.expect(
        &format!(
            "ulp watch: refused record {}/garbage: metadata is not valid JSON",
            store.display()
        ),
        LIMIT,
    );
    let l = w.expect(&format!("refused record {}/{id}: ", store.display()), LIMIT);
    assert!(
        l.contains("its container copy") && l.contains("cannot be used"),
        "{l}"
    );
    w.expect("store: no records", LIMIT);
    let mut t = start_plain(dir, &demo.dir.join("wcorrupt"), &["1000"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        assert_eq!(tracer(t.pid).unwrap_or(0), 0, "process {} traced", t.pid);
        if let Some(l) = t.line(Duration::from_millis(5)) {
            break l;
        }
        assert!(Instant::now() < deadline, "watch_prog did not finish");
    };
    assert_eq!(end, "unpatched 1");
    let l = w.expect(&format!("refused {} (wcorrupt): ", t.pid), LIMIT);
    assert!(
        l.contains("libulpdemo.so.1: demo_livepatch.so: the record is corrupt: its container copy"),
        "{l}"
    );
    let log = w.stop();
    assert!(!log.iter().any(|l| l.contains("patched ")), "{log:#?}");
}

#[test]
fn records_added_while_watching_take_effect() {
    let demo = Demo::new("wlater");
    copy_prog(&demo, "wlater");
    let dir = demo.dir.path();
    let store = demo.dir.join("store");
    let mut w = Watch::start(dir, &store, &demo.runtime, "wlater", &["--poll"]);
    w.expect("store: no records", LIMIT);
    let mut before = start_plain(dir, &demo.dir.join("wlater"), &["300"]);
    assert_eq!(before.expect("unpatched", LIMIT), "unpatched 1");
    record(&demo, &store, "demo_livepatch.so");
    w.expect("store: 1 record", LIMIT);
    let mut after = start_plain(dir, &demo.dir.join("wlater"), &[]);
    w.patched(&mut after);
    // Removing the record takes it out again.
    let (code, out, err) = ulp_bounded(
        dir,
        &[
            "trigger",
            "--revert",
            "--persist",
            "--store",
            store.to_str().unwrap(),
            "-p",
            NOBODY,
            "demo_livepatch.so",
        ],
        LIMIT,
    );
    assert_eq!(code, 0, "{out}{err}");
    w.expect("store: no records", LIMIT);
    let mut last = start_plain(dir, &demo.dir.join("wlater"), &["300"]);
    assert_eq!(last.expect("unpatched", LIMIT), "unpatched 1");
    let log = w.drain().to_vec();
    assert!(
        !log.iter().any(|l| l.contains(&before.pid.to_string())),
        "{log:#?}"
    );
    w.stop();
}

#[test]
fn json_logs_are_one_object_a_line() {
    let (demo, store) = demo_with_record("wjson");
    let dir = demo.dir.path();
    let mut w = Watch::start(dir, &store, &demo.runtime, "wjson", &["--json", "--poll"]);
    let first: serde_json::Value = serde_json::from_str(&w.expect("\"started\"", LIMIT)).unwrap();
    assert_eq!(first["source"], "polling the process list");
    assert_eq!(first["store"], store.to_str().unwrap());
    let mut t = start_plain(dir, &demo.dir.join("wjson"), &[]);
    w.patched(&mut t);
    let l = w.expect("\"patched\"", LIMIT);
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["pid"], t.pid);
    assert_eq!(v["target"], "libulpdemo.so.1");
    assert_eq!(v["file"], "demo_livepatch.so");
    for l in w.stop() {
        serde_json::from_str::<serde_json::Value>(&l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
}

#[test]
fn watch_refuses_a_bad_runtime_and_bad_options() {
    let dir = TempDir::new("watch-usage");
    let (code, _, err) = ulp(dir.path(), &["watch", "--timeout", "0"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--timeout needs a positive number"), "{err}");
    let (code, _, err) = ulp(dir.path(), &["watch", "extra"]);
    assert_eq!(code, 64, "{err}");
    std::fs::write(dir.join("fake.so"), b"not a runtime").unwrap();
    let fake = dir.join("fake.so");
    let (code, _, err) = ulp_bounded(
        dir.path(),
        &["watch", &format!("--runtime={}", fake.display())],
        LIMIT,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("ulp watch: "), "{err}");
}

#[test]
fn programs_that_exit_at_once_get_one_line_at_most() {
    let (demo, store) = demo_with_record("wexit");
    let dir = demo.dir.path();
    let mut w = Watch::start(dir, &store, &demo.runtime, "wexit", &[]);
    w.expect("store: 1 record", LIMIT);
    // Each exits right after its ready line (a limit of 0 ms).
    let mut targets: Vec<Target> = (0..20)
        .map(|_| start_plain(dir, &demo.dir.join("wexit"), &["0"]))
        .collect();
    for t in &mut targets {
        let l = t.expect("", LIMIT);
        assert!(l == "unpatched 1" || l.starts_with("patched "), "{l}");
    }
    // A bound for the watch to finish with them (its --timeout is 2 s):
    // each gets its line by then or never (most exit before they are
    // looked at).
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let log = w.drain();
        let done = targets.iter().all(|t| {
            log.iter()
                .any(|l| l.contains(&format!(" {} (wexit)", t.pid)))
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = w.stop();
    for t in &targets {
        let about: Vec<&String> = log
            .iter()
            .filter(|l| l.contains(&format!(" {} (", t.pid)))
            .collect();
        assert!(about.len() <= 1, "{about:#?}");
        assert!(about.iter().all(|l| !l.contains("refused")), "{about:#?}");
    }
}

#[test]
fn an_untrusted_store_is_refused_until_fixed() {
    if id("-u") != "0" {
        eprintln!("skipped: the store's trust rule applies as root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (demo, store) = demo_with_record("wtrust");
    let dir = demo.dir.path();
    let mode = |m: u32| {
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(0o777);
    let mut w = Watch::start(dir, &store, &demo.runtime, "wtrust", &[]);
    let l = w.expect("store refused: ", LIMIT);
    assert!(l.contains("is writable by its group and by others"), "{l}");
    assert!(
        l.contains("no record is applied until this is fixed"),
        "{l}"
    );
    let mut t = start_plain(dir, &demo.dir.join("wtrust"), &["500"]);
    assert_eq!(t.expect("unpatched", LIMIT), "unpatched 1");
    // Fixed: read again (within the watch's periodic re-read).
    mode(0o755);
    w.expect("store: 1 record", LIMIT);
    let mut t = start_plain(dir, &demo.dir.join("wtrust"), &[]);
    w.patched(&mut t);
    w.stop();
}

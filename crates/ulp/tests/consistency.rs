//! The per-thread consistency model of `ulp trigger`, end to end through
//! the real `ulp` binary against the fixtures of fixtures/consistency
//! (libraries libcons.so.1.2.3 and libloop.so.1.0.0, padded and posted;
//! their programs; live patches packed here with `ulp packer`).
//!
//! During a change (an apply, or a revert: `--revert` is a change too),
//! each thread is *old* (every replaced function runs its old version for
//! it) or *new* (every one its new version). A thread becomes new only
//! once no frame of a replaced function's old code is on its stack (with
//! `--consistency=library`: no frame of the target library's code); a
//! thread that has such a frame stays old until it returns out of it, and
//! then becomes new by itself. `--consistency=none` is the immediate switch
//! of every thread at once (what ulp did before the model). The trigger
//! waits up to `--timeout` for every thread to become new, prints its
//! usual SUCCESS line and, when threads are still old, on the same line
//! ` (transition pending: N threads: TID in FUNCTION, ...)`; `--json` gives
//! each result a `transition` object; `ulp patches` shows the same pending
//! line under the process while threads are old.
//!
//! The tests of the default model and of `library` fail against a ulp that
//! switches every thread at once; the `none` tests pass there, and show
//! what the model prevents (mixed results).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long any one `ulp` run may take.
const LIMIT: Duration = Duration::from_secs(60);

/// How long the tests wait for a state that must come (a transition that
/// must complete, threads that must make progress).
const SETTLE: Duration = Duration::from_secs(15);

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

const FG_DSC: &str = "cons_patch_fg.so\n@libcons.so.1\nf:new_f\ng:new_g\n";
const PAIR_DSC: &str =
    "cons_patch_pair.so\n@libcons.so.1\nprocess:new_process\nconsume:new_consume\n";
const LOOP_DSC: &str = "loop_patch.so\n@libloop.so.1\nvalue:new_value\n";

/// What the blocked thread of cons_block_prog prints (x * 10 + y): both
/// functions old; both new; old process (old layout) with new consume;
/// new process (new layout) with old consume.
const PAIR_OLD: &str = "result 34";
const PAIR_NEW: &str = "result 56";
const PAIR_MIXED_OLD_NEW: &str = "result 43";
const PAIR_MIXED_NEW_OLD: &str = "result 65";

fn consistency_fixtures() -> PathBuf {
    fixtures_dir().join("consistency")
}

/// A scratch directory with `files` of fixtures/consistency (and
/// `sys_files` of the top fixtures), the runtime, the libraries `post`
/// posted, and each `(name, text)` of `dscs` written and packed.
struct Setup {
    dir: TempDir,
    runtime: PathBuf,
}

impl Setup {
    fn new(
        tag: &str,
        files: &[&str],
        sys_files: &[&str],
        post: &[&str],
        dscs: &[(&str, &str)],
    ) -> Setup {
        let dir = TempDir::new(tag);
        copy_files(&consistency_fixtures(), dir.path(), files);
        copy_files(&fixtures_dir(), dir.path(), sys_files);
        let runtime = install_runtime(dir.path());
        for lib in post {
            let (code, out, err) = ulp_bounded(dir.path(), &["post", lib], LIMIT);
            assert_eq!(code, 0, "post {lib}: {out}{err}");
        }
        for (name, text) in dscs {
            std::fs::write(dir.join(name), text).unwrap();
            let (code, out, err) = ulp_bounded(dir.path(), &["packer", name], LIMIT);
            assert_eq!(code, 0, "packer {name}: {out}{err}");
        }
        Setup { dir, runtime }
    }

    /// Starts `prog` (copied in) with the runtime preloaded; waits for its
    /// ready line.
    fn start(&self, prog: &str) -> Target {
        self.start_with(prog, &[])
    }

    /// [`Setup::start`] with arguments.
    fn start_with(&self, prog: &str, args: &[&str]) -> Target {
        let mut cmd = Command::new(self.dir.join(prog));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("LD_PRELOAD", &self.runtime);
        Target::spawn(cmd)
    }

    /// `ulp ARGS` in the directory, bounded by [`LIMIT`]; it must exit 0.
    #[track_caller]
    fn ulp_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = ulp_bounded(self.dir.path(), args, LIMIT);
        assert_eq!(code, 0, "ulp {args:?}:\n{out}{err}");
        out
    }

    /// Runs `ulp trigger` (see [`trigger_args`]); it must exit 0. Returns
    /// its stdout.
    #[track_caller]
    fn trigger(&self, pid: i32, model: Option<&str>, extra: &[&str], file: &str) -> String {
        let args = trigger_args(pid, model, extra, file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = self.ulp_ok(&args);
        eprintln!("ulp {args:?} ({:?}): {out}", started.elapsed());
        out
    }

    /// `ulp patches -p PID`.
    fn patches(&self, pid: i32) -> String {
        self.ulp_ok(&["patches", "-p", &pid.to_string()])
    }

    /// Waits (bounded by [`SETTLE`]) until `ulp patches -p PID` shows no
    /// pending transition; fails with what it showed last.
    fn wait_transition_complete(&self, pid: i32, what: &str) {
        let end = Instant::now() + SETTLE;
        loop {
            let out = self.patches(pid);
            if !out.contains("transition pending") {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: the transition is still pending after {SETTLE:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The words of `ulp trigger -p PID [--consistency=MODEL] EXTRA... FILE`.
/// `model` None is the default model (no option).
fn trigger_args(pid: i32, model: Option<&str>, extra: &[&str], file: &str) -> Vec<String> {
    let mut args = vec!["trigger".to_string(), "-p".to_string(), pid.to_string()];
    if let Some(m) = model {
        args.push(format!("--consistency={m}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(file.to_string());
    args
}

/// The line of a trigger's output that reports on process `pid`; it must
/// say SUCCESS.
#[track_caller]
fn success_line(out: &str, pid: i32) -> String {
    let tag = format!("(pid: {pid}): SUCCESS ");
    out.lines()
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no SUCCESS line for {pid} in:\n{out}"))
        .to_string()
}

/// Asserts the trigger changed `pid` and left no thread old: SUCCESS, no
/// pending transition.
#[track_caller]
fn assert_complete(out: &str, pid: i32, what: &str) {
    let line = success_line(out, pid);
    assert!(
        !out.contains("transition pending"),
        "{what}: no thread should stay old:\n{out}"
    );
    assert!(line.trim_end().ends_with(".so"), "{what}: {line:?}");
}

/// Parses "k1=v1 k2=v2 ..." into the value of `key`.
fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The result object of the JSON report of a trigger for process `pid`
/// (its only result).
#[track_caller]
fn json_result(out: &str, pid: i32) -> Value {
    let doc: Value = serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("trigger --json: not JSON ({e}): {out}"));
    let procs = doc["processes"].as_array().expect("processes");
    let p = procs
        .iter()
        .find(|p| p["pid"].as_i64() == Some(pid as i64))
        .unwrap_or_else(|| panic!("no process {pid} in {doc:#}"));
    let results = p["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{doc:#}");
    assert!(
        results[0]["status"] == "applied" || results[0]["status"] == "reverted",
        "{doc:#}"
    );
    results[0].clone()
}

// ---- 1. under load: f and g, eight threads calling f ----

/// `cycles` apply/revert cycles of the f/g patch on cons_load_prog under
/// `model`; after each apply the main thread's f() gives 2002, after each
/// revert 1001. Returns the final stats line and in how many of the
/// triggers mixed results appeared.
fn load_cycles(tag: &str, model: Option<&str>, cycles: usize) -> (String, usize) {
    let s = Setup::new(
        tag,
        &["libcons.so.1", "cons_load_prog", "cons_patch_fg.so"],
        &[],
        &["libcons.so.1"],
        &[("cons_patch_fg.dsc", FG_DSC)],
    );
    let mut t = s.start("cons_load_prog");
    assert_eq!(t.ask("call"), "1001");
    assert_eq!(t.ask("reset"), "reset");
    let mut mixed_before = 0;
    let mut triggers_with_mixed = 0;
    for i in 0..cycles {
        for revert in [false, true] {
            let extra: &[&str] = if revert { &["--revert"] } else { &[] };
            let out = s.trigger(t.pid, model, extra, "cons_patch_fg.so");
            success_line(&out, t.pid);
            if model.is_none() {
                // The threads leave f at the end of every call: the
                // transition completes (by itself, if not within the
                // trigger's wait) before the next change.
                s.wait_transition_complete(t.pid, &format!("cycle {i} revert={revert}"));
            } else {
                assert_complete(&out, t.pid, &format!("cycle {i} revert={revert}"));
            }
            let want = if revert { "1001" } else { "2002" };
            assert_eq!(t.ask("call"), want, "cycle {i} revert={revert}");
            let stats = t.ask("stats");
            let mixed = field(&stats, "mixed");
            if mixed > mixed_before {
                triggers_with_mixed += 1;
            }
            mixed_before = mixed;
        }
    }
    let stats = t.ask("stats");
    assert!(t.alive());
    (stats, triggers_with_mixed)
}

/// Under `none`, threads inside f when the switch comes finish the call
/// with the other g: mixed results (1002, 2001). This is what the model is
/// for; it also shows that the fixture's window is wide enough.
#[test]
fn under_load_none_gives_mixed_results() {
    let (stats, triggers) = load_cycles("cons-load-none", Some("none"), 30);
    eprintln!("none: {stats}; mixed results after {triggers} of 60 triggers");
    assert!(
        field(&stats, "old") > 0 && field(&stats, "new") > 0,
        "{stats}"
    );
    assert_eq!(field(&stats, "other"), 0, "{stats}");
    assert!(field(&stats, "mixed") > 0, "{stats}");
}

/// Under the default model, no call ever mixes old and new f and g, across
/// 30 apply/revert cycles with eight threads calling f all the time.
#[test]
fn under_load_default_never_mixes() {
    let (stats, triggers) = load_cycles("cons-load-default", None, 30);
    eprintln!("default: {stats}; mixed results after {triggers} of 60 triggers");
    assert!(
        field(&stats, "old") > 0 && field(&stats, "new") > 0,
        "{stats}"
    );
    assert_eq!(field(&stats, "other"), 0, "{stats}");
    assert_eq!(field(&stats, "mixed"), 0, "{stats}");
}

// ---- 2. a thread blocked inside a replaced function ----

fn block_setup(tag: &str) -> (Setup, Target, i32) {
    block_setup_with(tag, &[])
}

/// [`block_setup`] with the program's arguments (`-s`: process() runs in a
/// signal handler on an alternate stack).
fn block_setup_with(tag: &str, args: &[&str]) -> (Setup, Target, i32) {
    let s = Setup::new(
        tag,
        &["libcons.so.1", "cons_block_prog", "cons_patch_pair.so"],
        &[],
        &["libcons.so.1"],
        &[("cons_patch_pair.dsc", PAIR_DSC)],
    );
    let t = s.start_with("cons_block_prog", args);
    let tid: i32 = t
        .ready_line()
        .strip_prefix("ready ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("ready line {:?}", t.ready_line()));
    (s, t, tid)
}

/// The thread's next "result N" line.
fn result(t: &mut Target) -> String {
    t.expect("result ", ulp_fixtures::WAIT)
}

/// Blocks the worker in process() again.
fn block(t: &mut Target, tid: i32) {
    assert_eq!(t.ask("block"), format!("blocked {tid}"));
}

/// A thread blocked in read() inside process() keeps the old process and
/// the old consume (old layout on both sides) until it returns, and only
/// then becomes new by itself; the trigger and `ulp patches` show it
/// pending meanwhile, while the main thread and a thread created during
/// the transition are new. Then the same for the revert, reported in JSON.
#[test]
fn blocked_in_a_replaced_function_stays_old_until_it_returns() {
    let (s, mut t, tid) = block_setup("cons-block-default");
    let pid = t.pid;
    let pending = format!("transition pending: 1 threads: {tid} in process");

    let out = s.trigger(pid, None, &["--timeout", "1"], "cons_patch_pair.so");
    let line = success_line(&out, pid);
    assert!(
        line.trim_end()
            .ends_with(&format!("SUCCESS cons_patch_pair.so ({pending})")),
        "apply: {line:?}"
    );
    let listed = s.patches(pid);
    assert!(listed.contains(&pending), "ulp patches:\n{listed}");
    // `ulp check` counts the patch as applied from the start of its
    // transition.
    let (code, out, err) = ulp_bounded(
        s.dir.path(),
        &["check", "-p", &pid.to_string(), "cons_patch_pair.so"],
        LIMIT,
    );
    assert_eq!(code, 1, "applied while pending: {out}{err}");
    // Meanwhile the main thread (no frame of process) is new, and so is a
    // thread created during the transition.
    assert_eq!(t.ask("main"), "main 56", "the main thread is new");
    assert_eq!(t.ask("fresh"), "fresh 56", "a thread created now is new");

    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_OLD, "the blocked call ends old");
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_NEW, "its next call is new");
    s.wait_transition_complete(pid, "apply, once the thread returned");

    // The revert: the thread blocks in new_process, and stays on the
    // patched side until it returns.
    block(&mut t, tid);
    let out = s.trigger(
        pid,
        None,
        &["--revert", "--timeout", "1", "--json"],
        "cons_patch_pair.so",
    );
    let r = json_result(&out, pid);
    let tr = &r["transition"];
    assert_eq!(tr["complete"], Value::Bool(false), "revert: {r:#}");
    let pending_json = tr["pending"].as_array().expect("transition.pending");
    assert_eq!(pending_json.len(), 1, "revert: {r:#}");
    assert_eq!(pending_json[0]["tid"].as_i64(), Some(tid as i64), "{r:#}");
    assert_eq!(pending_json[0]["in"], "process", "revert: {r:#}");
    let listed = s.patches(pid);
    assert!(listed.contains(&pending), "ulp patches:\n{listed}");
    assert_eq!(t.ask("main"), "main 34", "the main thread is reverted");
    assert_eq!(
        t.ask("fresh"),
        "fresh 34",
        "a thread created now is reverted"
    );

    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_NEW, "the blocked call ends patched");
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_OLD, "its next call is reverted");
    s.wait_transition_complete(pid, "revert, once the thread returned");
    assert!(t.alive());
}

/// A process of one thread, waiting inside a replaced function (its stack:
/// the C library's read, libcons's process, the program's main). Its one
/// stop (the runtime's call, the writes, the transition's check) finds the
/// old process on its stack, through the library's frame, and the thread
/// stays old until process returns; its next call is new. The same for
/// the revert. (The unwind information of the files its stack runs
/// through is read before that stop, from where /proc says the waiting
/// thread stands.)
#[test]
fn a_single_thread_blocked_in_a_replaced_function_stays_old_until_it_returns() {
    let s = Setup::new(
        "cons-one-block",
        &["libcons.so.1", "cons_one_prog", "cons_patch_pair.so"],
        &[],
        &["libcons.so.1"],
        &[("cons_patch_pair.dsc", PAIR_DSC)],
    );
    let mut t = s.start("cons_one_prog");
    let pid = t.pid;
    let pending = format!("transition pending: 1 threads: {pid} in process");
    for (extra, before, after) in [
        (&[][..], PAIR_OLD, PAIR_NEW),
        (&["--revert"][..], PAIR_NEW, PAIR_OLD),
    ] {
        // Its read of stdin (system call 0), inside process().
        wait_in_syscall(pid, pid, 0);
        let mut args = vec!["--timeout", "1"];
        args.extend_from_slice(extra);
        let out = s.trigger(pid, None, &args, "cons_patch_pair.so");
        let line = success_line(&out, pid);
        assert!(
            line.trim_end()
                .ends_with(&format!("SUCCESS cons_patch_pair.so ({pending})")),
            "{extra:?}: {line:?}"
        );
        // One byte: the waiting call returns with the code it started in.
        t.send("x");
        assert_eq!(result(&mut t), before, "{extra:?}: the waiting call");
        t.send("x");
        assert_eq!(result(&mut t), after, "{extra:?}: the next call");
        s.wait_transition_complete(pid, &format!("{extra:?}, once it returned"));
    }
    assert!(t.alive());
}

/// The same under `none`: the thread blocked in the old process comes back
/// into the new consume, which reads the old layout (43); after the revert,
/// the thread blocked in new_process comes back into the old consume (65).
#[test]
fn blocked_in_a_replaced_function_none_mixes() {
    let (s, mut t, tid) = block_setup("cons-block-none");
    let pid = t.pid;

    let out = s.trigger(pid, Some("none"), &["--timeout", "1"], "cons_patch_pair.so");
    assert_complete(&out, pid, "apply");
    assert_eq!(t.ask("main"), "main 56");
    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_MIXED_OLD_NEW);
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_NEW);

    block(&mut t, tid);
    let out = s.trigger(
        pid,
        Some("none"),
        &["--revert", "--timeout", "1"],
        "cons_patch_pair.so",
    );
    assert_complete(&out, pid, "revert");
    assert_eq!(t.ask("main"), "main 34");
    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_MIXED_NEW_OLD);
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_OLD);
    let listed = s.patches(pid);
    assert!(!listed.contains("transition pending"), "{listed}");
    assert!(t.alive());
}

/// The same thread blocked in process() called from a signal handler that
/// runs on an alternate stack (interrupting the thread's read of another
/// pipe): the check unwinds through the handler and its signal frame, the
/// thread stays old until process() returns into the handler, and then
/// switches by itself.
#[test]
fn blocked_in_a_replaced_function_inside_a_signal_handler_on_an_alternate_stack() {
    let (s, mut t, tid) = block_setup_with("cons-block-signal", &["-s"]);
    let pid = t.pid;
    let out = s.trigger(pid, None, &["--timeout", "1"], "cons_patch_pair.so");
    assert!(
        success_line(&out, pid).trim_end().ends_with(&format!(
            "(transition pending: 1 threads: {tid} in process)"
        )),
        "{out}"
    );
    assert_eq!(t.ask("main"), "main 56", "the main thread is new");
    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_OLD, "the handler's call ends old");
    s.wait_transition_complete(pid, "once process() returned into the handler");
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_NEW, "the next signal's call is new");
    // And back: blocked in the new process() inside the handler.
    block(&mut t, tid);
    let out = s.trigger(
        pid,
        None,
        &["--timeout", "1", "--revert"],
        "cons_patch_pair.so",
    );
    assert!(
        success_line(&out, pid).contains("transition pending: 1 threads"),
        "{out}"
    );
    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_NEW, "the handler's call ends patched");
    s.wait_transition_complete(pid, "revert");
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_OLD);
    assert!(t.alive());
}

/// A patch of 150 functions has too many writes for a per-thread
/// transition (each function needs a longer slot): the runtime switches
/// every thread at once instead, each function whole, and the trigger
/// says so (a warning, in text and in JSON) rather than claiming a
/// transition it did not make.
#[test]
fn a_patch_too_large_for_a_transition_switches_at_once_with_a_warning() {
    let mut dsc = String::from("many_patch.so\n@libmany.so.1\n");
    for n in 10..160 {
        dsc.push_str(&format!("many_{n}:new_many_{n}\n"));
    }
    let s = Setup::new(
        "cons-many",
        &["libmany.so.1", "many_prog", "many_patch.so"],
        &[],
        &["libmany.so.1"],
        &[("many_patch.dsc", &dsc)],
    );
    let mut t = s.start("many_prog");
    let pid = t.pid;
    let old: i32 = (10..160).sum();
    assert_eq!(t.ask("sum"), old.to_string());
    let args = trigger_args(pid, None, &[], "many_patch.so");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = ulp_bounded(s.dir.path(), &args, LIMIT);
    assert_eq!(code, 0, "{out}{err}");
    success_line(&out, pid);
    assert!(
        err.contains("every thread switched at once: the runtime could not plan a per-thread"),
        "{err}"
    );
    assert_eq!(t.ask("sum"), (old + 150 * 1000).to_string());
    let args = trigger_args(pid, None, &["--revert", "--json"], "many_patch.so");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = ulp_bounded(s.dir.path(), &args, LIMIT);
    assert_eq!(code, 0, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    let warned = doc["warnings"].as_array().is_some_and(|w| {
        w.iter().any(|w| {
            w["warning"]
                .as_str()
                .is_some_and(|t| t.contains("every thread switched at once"))
        })
    });
    assert!(warned, "{doc:#}");
    assert_eq!(
        doc["processes"][0]["results"][0]["transition"],
        Value::Null,
        "{doc:#}"
    );
    assert_eq!(t.ask("sum"), old.to_string());
    // The runtime's own words.
    let messages = s.ulp_ok(&["messages", "-p", &pid.to_string()]);
    assert!(
        messages.contains("no per-thread transition could be made"),
        "{messages}"
    );
    assert!(t.alive());
}

/// A process of one thread that is not inside a replaced function takes
/// the whole change in one stop (no second stop, no transition left), in
/// both directions.
#[test]
fn a_single_thread_outside_the_old_code_switches_in_one_stop() {
    let dsc = "many_patch.so\n@libmany.so.1\nmany_10:new_many_10\nmany_11:new_many_11\n";
    let s = Setup::new(
        "cons-one",
        &["libmany.so.1", "many_prog", "many_patch.so"],
        &[],
        &["libmany.so.1"],
        &[("many_patch.dsc", dsc)],
    );
    let mut t = s.start("many_prog");
    let pid = t.pid;
    let old: i32 = (10..160).sum();
    for (revert, want) in [(false, old + 2000), (true, old)] {
        let extra: &[&str] = if revert {
            &["--revert", "--json"]
        } else {
            &["--json"]
        };
        let out = s.trigger(pid, None, extra, "many_patch.so");
        let r = json_result(&out, pid);
        let tr = &r["transition"];
        assert_eq!(tr["complete"], Value::Bool(true), "{r:#}");
        assert_eq!(tr["threads_checked"], 1, "{r:#}");
        assert_eq!(r["threads_stopped"], 1, "{r:#}");
        assert_eq!(r["phases_us"]["finish"], 0, "one stop only: {r:#}");
        assert_eq!(t.ask("sum"), want.to_string());
        assert!(!s.patches(pid).contains("ransition"));
    }
    assert!(t.alive());
}

/// A change while an earlier one is still in its transition: refused with
/// the threads named (never a thread with mixed code), and accepted once
/// they have left; the blocked thread's own call stays whole throughout.
#[test]
fn a_change_while_a_transition_is_pending_waits_for_it() {
    let (s, mut t, tid) = block_setup("cons-block-again");
    let pid = t.pid;
    let out = s.trigger(pid, None, &["--timeout", "0.3"], "cons_patch_pair.so");
    assert!(
        success_line(&out, pid).contains(&format!("1 threads: {tid} in process")),
        "{out}"
    );
    // The revert is refused: the transition is still pending.
    let args = trigger_args(
        pid,
        None,
        &["--timeout", "0.3", "--revert"],
        "cons_patch_pair.so",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = ulp_bounded(s.dir.path(), &args, LIMIT);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains("still in its per-thread transition")
            && out.contains(&format!("{tid} in process")),
        "{out}{err}"
    );
    assert_eq!(t.ask("main"), "main 56", "still applied");
    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_OLD, "the blocked call ends old");
    // Now the revert goes through: it first finishes the apply's writes.
    let out = s.trigger(pid, None, &["--revert"], "cons_patch_pair.so");
    assert_complete(&out, pid, "revert");
    assert_eq!(t.ask("main"), "main 34");
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_OLD);
    assert!(t.alive());
}

/// A ulp killed in the middle of a transition (every thread checked, the
/// blocked one armed to switch on return): every thread runs a whole
/// version; the armed thread switches by itself when it returns, without
/// ulp; `ulp patches` tells the state; the next trigger finishes the
/// change's writes before its own.
#[test]
fn a_tool_killed_in_a_transition_leaves_threads_whole_and_switching() {
    let (s, mut t, tid) = block_setup("cons-block-kill");
    let pid = t.pid;
    let args = trigger_args(pid, None, &[], "cons_patch_pair.so");
    let out = Command::new(ulp_bin())
        .args(&args)
        .current_dir(s.dir.path())
        .env("ULP_TEST_KILL_IN_TRANSITION", "1")
        .output()
        .expect("running ulp");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "ulp killed itself");
    let listed = s.patches(pid);
    assert!(
        listed.contains(&format!("transition pending: 1 threads: {tid} in process")),
        "{listed}"
    );
    assert_eq!(t.ask("main"), "main 56", "the main thread is new");
    assert_eq!(t.ask("fresh"), "fresh 56", "so is a new thread");
    t.send("unblock\n");
    assert_eq!(result(&mut t), PAIR_OLD, "the blocked call ends whole, old");
    t.send("call\n");
    assert_eq!(
        result(&mut t),
        PAIR_NEW,
        "and the thread switched by itself"
    );
    let listed = s.patches(pid);
    assert!(
        !listed.contains("transition pending") && listed.contains("every thread runs the new code"),
        "{listed}"
    );
    // The next trigger completes the change, then makes its own.
    let out = s.trigger(pid, None, &["--revert"], "cons_patch_pair.so");
    assert_complete(&out, pid, "revert after the kill");
    let listed = s.patches(pid);
    assert!(
        !listed.contains("Transition") && !listed.contains("Interrupted"),
        "{listed}"
    );
    t.send("call\n");
    assert_eq!(result(&mut t), PAIR_OLD);
    assert_eq!(t.ask("main"), "main 34");
    assert!(t.alive());
}

// ---- 3. library level: a thread that never leaves the library ----

/// loop_prog's ready line: the looping thread's and the caller's ids.
fn loop_setup(tag: &str) -> (Setup, Target, i32) {
    let s = Setup::new(
        tag,
        &["libloop.so.1", "loop_prog", "loop_patch.so"],
        &[],
        &["libloop.so.1"],
        &[("loop_patch.dsc", LOOP_DSC)],
    );
    let t = s.start("loop_prog");
    let ready = t.ready_line().to_string();
    let spin = field(&ready, "spin") as i32;
    field(&ready, "caller");
    (s, t, spin)
}

/// Asks `stats` until `done(first, now)` holds (bounded); returns both.
fn stats_until(t: &mut Target, done: impl Fn(&str, &str) -> bool) -> (String, String) {
    let first = t.ask("stats");
    let end = Instant::now() + SETTLE;
    loop {
        let now = t.ask("stats");
        if done(&first, &now) {
            return (first, now);
        }
        assert!(
            Instant::now() < end,
            "no progress within {SETTLE:?}: {first} -> {now}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Both threads got at least 10000 more values.
fn both_progressed(a: &str, b: &str) -> bool {
    let total = |l: &str, w: &str| field(l, &format!("{w}_old")) + field(l, &format!("{w}_new"));
    total(b, "spin") >= total(a, "spin") + 10_000
        && total(b, "caller") >= total(a, "caller") + 10_000
}

/// `--consistency=library`: the thread looping inside libloop never has
/// a moment without a frame of the library, so it stays old (value() keeps
/// answering 1 for it) and the trigger reports it pending; the program's
/// own calls of value() get 2.
#[test]
fn library_level_keeps_a_thread_inside_the_library_old() {
    let (s, mut t, spin) = loop_setup("cons-loop-library");
    let pid = t.pid;
    let out = s.trigger(pid, Some("library"), &["--timeout", "1"], "loop_patch.so");
    let line = success_line(&out, pid);
    let pending = format!(" (transition pending: 1 threads: {spin} in ");
    assert!(
        line.contains(&pending) && line.trim_end().ends_with(')'),
        "the looping thread should be pending: {line:?}"
    );
    assert_eq!(t.ask("call"), "2");
    let (a, b) = stats_until(&mut t, both_progressed);
    assert_eq!(
        field(&b, "spin_new"),
        0,
        "the looping thread got 2: {a} -> {b}"
    );
    assert_eq!(field(&b, "spin_last"), 1, "{b}");
    assert_eq!(
        field(&b, "caller_old"),
        field(&a, "caller_old"),
        "the caller thread still got 1 after the trigger: {a} -> {b}"
    );
    assert_eq!(field(&b, "other"), 0, "{b}");
    let listed = s.patches(pid);
    assert!(
        listed.contains(&format!("transition pending: 1 threads: {spin} in ")),
        "ulp patches:\n{listed}"
    );
    assert!(t.alive());
}

/// The default (function) model: the looping thread is inside value() only
/// for an instant and leaves it at once, so both threads are new within
/// the trigger's wait, and both get 2.
#[test]
fn function_level_switches_a_thread_looping_in_the_library() {
    let (s, mut t, _spin) = loop_setup("cons-loop-function");
    let pid = t.pid;
    let out = s.trigger(pid, None, &[], "loop_patch.so");
    assert_complete(&out, pid, "apply");
    assert_eq!(t.ask("call"), "2");
    let (a, b) = stats_until(&mut t, both_progressed);
    assert_eq!(field(&b, "spin_old"), field(&a, "spin_old"), "{a} -> {b}");
    assert_eq!(
        field(&b, "caller_old"),
        field(&a, "caller_old"),
        "{a} -> {b}"
    );
    assert_eq!(field(&b, "spin_last"), 2, "{b}");
    assert_eq!(field(&b, "other"), 0, "{b}");
    let listed = s.patches(pid);
    assert!(!listed.contains("transition pending"), "{listed}");
}

/// `none`: the looping thread too gets 2 at once (what `library` holds
/// back).
#[test]
fn none_switches_a_thread_looping_in_the_library_at_once() {
    let (s, mut t, _spin) = loop_setup("cons-loop-none");
    let pid = t.pid;
    let out = s.trigger(pid, Some("none"), &[], "loop_patch.so");
    assert_complete(&out, pid, "apply");
    assert_eq!(t.ask("call"), "2");
    let (a, b) = stats_until(&mut t, both_progressed);
    assert_eq!(field(&b, "spin_old"), field(&a, "spin_old"), "{a} -> {b}");
    assert_eq!(field(&b, "spin_last"), 2, "{b}");
}

// ---- 4. the stock libc, threads blocked inside it ----

/// Threads blocked in read, poll and pthread_cond_wait inside the
/// system's libc have no frame of atoi: a patch of atoi (default model)
/// completes at once, in text and in JSON, applied and reverted.
#[test]
fn stock_libc_blocked_threads_do_not_hold_a_patch_of_atoi() {
    assert!(
        std::path::Path::new(LIBC).exists(),
        "{LIBC} is missing: this test patches the system's own libc"
    );
    let s = Setup::new(
        "cons-libc",
        &["libc_block_prog"],
        &["sys_patch_libc.so"],
        &[],
        &[(
            "libc.dsc",
            &format!("sys_patch_libc.so\n@{LIBC}\natoi:new_atoi\n"),
        )],
    );
    let mut t = s.start("libc_block_prog");
    let pid = t.pid;
    let tids = t.ask("tids");
    let tid = |k: &str| field(&tids, k) as i32;
    assert_eq!(t.ask("atoi"), "41");

    let blocked = |t: &Target| {
        wait_in_syscall(t.pid, tid("read"), 0);
        wait_in_syscall(t.pid, tid("cond"), 202);
        let poller = tid("poll");
        // poll, ppoll, or restart_syscall once a trigger has stopped it:
        // the kernel restarts an interrupted poll that way.
        wait_until("the poll thread blocked in poll", || {
            matches!(
                ulp_fixtures::blocked_syscall(pid, poller),
                Some(7 | 271 | 219)
            )
        });
        wait_all_blocked(pid);
    };

    for json in [false, true] {
        for (revert, want) in [(false, "1041"), (true, "41")] {
            blocked(&t);
            let mut extra = Vec::new();
            if revert {
                extra.push("--revert");
            }
            if json {
                extra.push("--json");
            }
            let what = format!("revert={revert} json={json}");
            let out = s.trigger(pid, None, &extra, "sys_patch_libc.so");
            if json {
                let r = json_result(&out, pid);
                assert_eq!(
                    r["transition"]["complete"],
                    Value::Bool(true),
                    "{what}: {r:#}"
                );
                let pending = &r["transition"]["pending"];
                assert!(
                    pending.is_null() || pending.as_array().is_some_and(|p| p.is_empty()),
                    "{what}: {r:#}"
                );
            } else {
                assert_complete(&out, pid, &what);
            }
            assert_eq!(t.ask("atoi"), want, "{what}");
        }
    }
    let listed = s.patches(pid);
    assert!(!listed.contains("transition pending"), "{listed}");
    assert!(t.alive());
}

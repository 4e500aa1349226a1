//! End to end through the real `ulp` binary: live patching a process must
//! be invisible to its threads blocked in system calls (no EINTR, no short
//! sleep or wait, no wake-up nobody sent, no lost or duplicated data) and
//! to signals (each one sent is delivered once, none is invented, and a
//! parent waiting for the process never sees it stop or continue).
//! The target is fixtures/syscall_prog.c; see its header for the commands.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ulp_fixtures::WAIT;

const CYCLES: usize = 20;

extern "C" {
    // `union sigval` is 8 bytes of INTEGER class: passed like a usize.
    fn sigqueue(pid: i32, sig: i32, value: usize) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// The demo patch set-up plus the syscall fixtures, copied into one dir.
fn setup(tag: &str) -> Demo {
    let demo = Demo::new(tag);
    copy_files(
        &fixtures_dir(),
        demo.dir.path(),
        &["syscall_prog", "parent_waiter"],
    );
    demo
}

fn start(demo: &Demo, program: &str, args: &[&str]) -> Target {
    let mut cmd = Command::new(demo.dir.join(program));
    cmd.args(args)
        .current_dir(demo.dir.path())
        .env("LD_PRELOAD", &demo.runtime);
    Target::spawn(cmd)
}

/// One apply and one revert of demo_livepatch.so on `pid`, each checked
/// through the target's answer; `between` runs while the patch is applied.
fn cycle(demo: &Demo, t: &mut Target, pid: i32, i: usize, between: impl FnOnce()) {
    let pid = pid.to_string();
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "apply {i}: {out}{err}");
    assert!(out.contains("SUCCESS"), "apply {i}: {out}{err}");
    assert_eq!(t.ask("answer"), "2", "cycle {i}");
    between();
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(code, 0, "revert {i}: {out}{err}");
    assert!(out.contains("SUCCESS"), "revert {i}: {out}{err}");
    assert_eq!(t.ask("answer"), "1", "cycle {i}");
}

/// Asks `cmd` until `done` holds for the answer (bounded by [`WAIT`]).
fn ask_until(t: &mut Target, cmd: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = t.ask(cmd);
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {answer:?} after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Per kind of blocking call: iters, wakes, eintr, early, bad.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    iters: i64,
    wakes: i64,
    eintr: i64,
    early: i64,
    bad: i64,
}

fn parse_stats(line: &str) -> Vec<(String, Counts)> {
    line.split(';')
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let f: Vec<&str> = entry.split(',').collect();
            assert_eq!(f.len(), 6, "stats entry {entry:?} in {line:?}");
            let n = |i: usize| f[i].parse::<i64>().unwrap();
            let c = Counts {
                iters: n(1),
                wakes: n(2),
                eintr: n(3),
                early: n(4),
                bad: n(5),
            };
            (f[0].to_string(), c)
        })
        .collect()
}

fn stats(t: &mut Target) -> Vec<(String, Counts)> {
    parse_stats(&t.ask("stats"))
}

fn count_of(stats: &[(String, Counts)], name: &str) -> Counts {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
        .1
}

/// The byte at offset `k` of the stream the reader thread checks.
fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|k| (k % 251) as u8).collect()
}

fn connect_with_id(port: u16, id: u32) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the target");
    c.write_all(&id.to_le_bytes()).unwrap();
}

/// A `/proc/PID/status` field of every thread of `pid`: (tid, value).
fn task_status_field(pid: i32, field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("listing tasks");
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // exited meanwhile
        };
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {status}"))
            .trim()
            .to_string();
        out.push((tid, value));
    }
    out
}

/// No signal pending on any thread or on the process, no thread traced or
/// stopped.
fn assert_clean(pid: i32) {
    for field in ["SigPnd", "ShdPnd"] {
        for (tid, v) in task_status_field(pid, field) {
            assert!(
                v.chars().all(|c| c == '0'),
                "thread {tid} of {pid}: {field} {v}"
            );
        }
    }
    for (tid, v) in task_status_field(pid, "TracerPid") {
        assert_eq!(v, "0", "thread {tid} of {pid} still traced");
    }
    for (tid, v) in task_status_field(pid, "State") {
        assert!(
            !v.starts_with('T') && !v.starts_with('t'),
            "thread {tid} of {pid} left stopped: {v}"
        );
    }
}

#[test]
fn blocked_system_calls_resume_transparently() {
    let demo = setup("syscalls");
    let fifo = demo.dir.join("data.fifo");
    let mut t = start(&demo, "syscall_prog", &["-f", fifo.to_str().unwrap()]);
    let pid = t.pid;
    let port: u16 = t.ask("port").parse().unwrap();
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("opening the FIFO");
    let mut sent = 0usize;
    let mut conns = 0u32;
    // Every thread has reached its blocking call.
    wait_all_blocked(pid);

    let mut rotated = Vec::new();
    for i in 0..CYCLES + 4 {
        cycle(&demo, &mut t, pid, i, || {
            writer.write_all(&pattern(sent, 500)).unwrap();
            sent += 500;
            connect_with_id(port, conns);
            conns += 1;
            // Not a readiness wait: triggers ~50 ms apart, so that sleeps
            // (50 ms) and timed waits (250 ms) both end between triggers
            // and span them.
            std::thread::sleep(Duration::from_millis(40));
        });
        // Everything sent has arrived before the next trigger, so that the
        // reader and the acceptor are blocked in their calls again...
        ask_until(&mut t, "bytes", "bytes read", |b| b == sent.to_string());
        ask_until(&mut t, "stats", "connections accepted", |s| {
            count_of(&parse_stats(s), "accept").iters == conns as i64
        });
        // ...and the next trigger runs the runtime's code on another kind
        // of blocked thread (ulp picks the lowest eligible tid).
        rotated.push(t.ask("rotate"));
    }
    assert!(
        rotated.iter().any(|k| k == "epoll_timed") && rotated.iter().any(|k| k == "cn_abs"),
        "every kind of thread was moved round: {rotated:?}"
    );

    // Data and connections after the cycles: each arrives exactly once.
    writer.write_all(&pattern(sent, 50_000)).unwrap();
    sent += 50_000;
    for _ in 0..40 {
        connect_with_id(port, conns);
        conns += 1;
    }
    assert_eq!(t.ask("wake"), "ok");
    ask_until(&mut t, "bytes", "bytes read", |b| b == sent.to_string());
    let waiters = [
        "poll_inf",
        "poll_long",
        "poll_timed",
        "epoll_inf",
        "epoll_timed",
        "futex_inf",
        "futex_timed",
    ];
    // Timed waits and sleeps kept running (each timeout or sleep counted
    // only when it lasted at least as long as asked).
    let line = ask_until(&mut t, "stats", "connections, wake-ups, progress", |s| {
        let st = parse_stats(s);
        count_of(&st, "accept").iters == conns as i64
            && waiters.iter().all(|w| count_of(&st, w).wakes == 1)
            && ["poll_timed", "epoll_timed", "futex_timed"]
                .iter()
                .all(|w| count_of(&st, w).iters >= 4)
            && ["nanosleep", "cn_rel", "cn_abs"]
                .iter()
                .all(|w| count_of(&st, w).iters >= 40)
    });
    let st = parse_stats(&line);
    for (name, c) in &st {
        assert_eq!(
            (c.eintr, c.early, c.bad),
            (0, 0, 0),
            "{name}: EINTR, early returns, anomalies: {line}"
        );
    }
    // Waiters without a timeout returned only for the one wake-up sent.
    for w in ["poll_inf", "poll_long", "epoll_inf", "futex_inf"] {
        assert_eq!(count_of(&st, w).iters, 0, "{w} timed out: {line}");
    }
    assert!(count_of(&st, "read").iters > 0);
    assert_eq!(t.ask("bytes"), sent.to_string());
    assert_eq!(t.ask("answer"), "1");
    assert_clean(pid);
    assert!(t.alive());
}

/// Sends SIGRTMIN with distinct values to `pid` until `stop`; returns how
/// many were queued.
fn send_signals(pid: i32, sig: i32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut sent = 0usize;
        while !stop.load(Ordering::Relaxed) && sent < 60_000 {
            // SAFETY: plain system call wrapper, no pointers.
            let r = unsafe { sigqueue(pid, sig, sent) };
            if r == 0 {
                sent += 1;
                // Not a readiness wait: paces the sender so that the
                // signals spread over the cycles.
                if sent.is_multiple_of(20) {
                    std::thread::sleep(Duration::from_micros(500));
                }
            } else {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(11), "sigqueue: {e}"); // EAGAIN: queue full
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    })
}

#[test]
fn queued_signals_arrive_exactly_once_and_none_is_invented() {
    let demo = setup("sigqueue");
    let mut t = start(&demo, "syscall_prog", &["-S"]);
    let pid = t.pid;
    let sig: i32 = t.ask("sigrt").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_signals(pid, sig, stop.clone());
    for i in 0..CYCLES {
        cycle(&demo, &mut t, pid, i, || {});
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("the sender thread");
    assert!(sent >= 200, "only {sent} signals sent during the cycles");
    let line = ask_until(&mut t, "sigs", "signals delivered", |s| {
        s.starts_with(&format!("rt={sent} "))
    });
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        &fields[1..4],
        &["other=0", "dup=0", "spurious=0"],
        "{sent} sent: {line}"
    );
    // Nothing more arrives later (not a readiness wait: the time a signal
    // nobody sent would have to show up; there is no event to wait for).
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(t.ask("sigs"), line);
    assert_clean(pid);
    assert_eq!(t.ask("answer"), "1");
}

/// Kills a process by pid on drop.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain system call wrapper.
        unsafe { kill(self.0, 9) };
    }
}

#[test]
fn a_waiting_parent_never_sees_its_child_stop_or_continue() {
    let demo = setup("parent");
    let events = demo.dir.join("events");
    let child_prog = demo.dir.join("syscall_prog");
    let fifo = demo.dir.join("data.fifo");
    let mut t = start(
        &demo,
        "parent_waiter",
        &[
            events.to_str().unwrap(),
            child_prog.to_str().unwrap(),
            "-f",
            fifo.to_str().unwrap(),
        ],
    );
    let child: i32 = t.ask("pid").parse().unwrap();
    let _guard = KillOnDrop(child);
    assert_ne!(child, t.pid);
    let read_events = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert_eq!(read_events(&events), "", "events before any trigger");
    for i in 0..CYCLES {
        cycle(&demo, &mut t, child, i, || {});
    }
    assert_eq!(t.ask("wake"), "ok");
    // Not a readiness wait: the time a late stop or continue notification
    // would have to arrive (there is no event to wait for).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        read_events(&events),
        "",
        "the parent saw its child change state during the cycles"
    );
    assert!(t.alive(), "the parent is still waiting");
    assert_clean(child);
    let st = stats(&mut t);
    for (name, c) in &st {
        assert_eq!((c.eintr, c.early, c.bad), (0, 0, 0), "{name}: {st:?}");
    }
    assert_eq!(t.ask("answer"), "1");
    // The parent reports the child's end, so it was watching all along.
    // SAFETY: plain system call wrapper.
    assert_eq!(unsafe { kill(child, 15) }, 0);
    let deadline = Instant::now() + WAIT;
    while read_events(&events).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(read_events(&events), "killed 15\n");
}

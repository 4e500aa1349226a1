//! What callers see when attaching cannot work.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{deadline, run_c, wait_in_syscall};
use ulp_process::{Pid, Stopped};

const PAUSE_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

#[test]
fn nonexistent_pid_is_gone() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = Pid::new(child.id() as i32);
    child.wait().unwrap();
    let err = Stopped::seize_all(pid, deadline(1000)).unwrap_err();
    assert!(err.is_gone(), "{err:?}");
    assert!(
        err.to_string().contains(&format!("process {pid} exited")),
        "{err}"
    );
    assert!(
        Stopped::seize_threads(pid, &[pid.main_thread()], deadline(1000))
            .unwrap_err()
            .is_gone()
    );
    assert!(ulp_process::maps(pid).unwrap_err().is_gone());
    assert!(ulp_process::threads(pid).unwrap_err().is_gone());
    assert!(
        ulp_process::read_mem(pid, ulp_process::RemoteAddr::new(0x1000), &mut [0u8; 8])
            .unwrap_err()
            .is_gone()
    );
    assert!(Stopped::seize_all(Pid::new(0x3fff_ffff), deadline(1000))
        .unwrap_err()
        .is_gone());
}

#[test]
fn already_traced_names_the_tracer() {
    let (_dir, t, _) = run_c("pause", PAUSE_C, &[], &[]);
    let pid = Pid::new(t.pid);

    // Another thread of this process holds it.
    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        // SAFETY: gettid has no preconditions.
        held_tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
        s.release().unwrap();
    });
    let holder_tid = held_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let err = Stopped::seize_all(pid, deadline(1000)).unwrap_err();
    assert!(!err.is_gone() && !err.is_timeout(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("already traced by this process"), "{msg}");
    assert!(msg.contains(&holder_tid.to_string()), "{msg}");
    done_tx.send(()).unwrap();
    holder.join().unwrap();

    // An outside tracer (strace), when installed.
    if let Ok(mut strace) = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-p", &pid.to_string()])
        .spawn()
    {
        let end = Instant::now() + Duration::from_secs(5);
        while ulp_process::tracer_of(pid, pid.main_thread()).is_none() {
            assert!(Instant::now() < end, "strace never attached");
            std::thread::sleep(Duration::from_millis(2));
        }
        let err = Stopped::seize_all(pid, deadline(1000)).unwrap_err();
        let _ = strace.kill();
        let _ = strace.wait();
        let msg = err.to_string();
        assert!(
            msg.contains("already traced by pid") && msg.contains("strace"),
            "{msg}"
        );
    }
    // And free again afterwards.
    let end = Instant::now() + Duration::from_secs(5);
    while ulp_process::tracer_of(pid, pid.main_thread()).is_some() {
        assert!(Instant::now() < end, "tracer never went away");
        std::thread::sleep(Duration::from_millis(2));
    }
    Stopped::seize_all(pid, deadline(2000))
        .unwrap()
        .release()
        .unwrap();
}

/// A thread waiting for its vfork child cannot be stopped until the child
/// execs or exits: seizing it must time out, not hang.
const VFORK_C: &str = r#"
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    printf("ready\n");
    fflush(stdout);
    pid_t c = vfork();
    /* The child lets go of the test's pipes: it outlives the test. */
    if (c == 0) { close(0); close(1); close(2); usleep(1500000); _exit(0); }
    waitpid(c, 0, 0);
    printf("after\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

#[test]
fn unstoppable_thread_times_out() {
    let (_dir, t, _) = run_c("vfork", VFORK_C, &[], &[]);
    let pid = Pid::new(t.pid);
    // The main thread waits for its child in vfork.
    wait_in_syscall(pid.get(), pid.get(), libc::SYS_vfork);
    let start = Instant::now();
    let err = Stopped::seize_all(pid, deadline(200)).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
}

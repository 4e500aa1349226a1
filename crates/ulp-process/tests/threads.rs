//! seize_all on a busy multithreaded process, and code writes through
//! peek/poke on read-only pages.

mod common;

use std::time::Duration;

use common::{deadline, run_c};
use ulp_process::{maps, thread_state, threads, Pid, RemoteAddr, Stopped};

const THREADS_C: &str = r#"
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((noipa)) int marker(void) { return 7; }

static void *idle(void *a) {
    for (;;) { struct timespec t = { 0, 1000000 }; nanosleep(&t, 0); }
    return a;
}
static void *spin(void *a) { volatile unsigned long x = 0; for (;;) x++; return a; }
static void *short_lived(void *a) { return a; }
static void *spawner(void *a) {
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, 0, short_lived, 0) == 0) pthread_join(t, 0);
    }
    return a;
}

int main(void) {
    pthread_t t;
    for (int i = 0; i < 24; i++) pthread_create(&t, 0, idle, 0);
    for (int i = 0; i < 3; i++) pthread_create(&t, 0, spin, 0);
    for (int i = 0; i < 4; i++) pthread_create(&t, 0, spawner, 0);
    printf("ready %lx\n", (unsigned long)(uintptr_t)&marker);
    fflush(stdout);
    char buf[64];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0) return 0;
        printf("pong %d\n", marker());
        fflush(stdout);
    }
}
"#;

#[test]
fn seize_all_catches_every_thread_and_poke_writes_code() {
    let (_dir, mut t, a) = run_c("threads", THREADS_C, &["-fcf-protection=none"], &[]);
    let (marker, pid) = (RemoteAddr::new(a[0]), Pid::new(t.pid));
    t.send("ping\n");
    assert_eq!(t.expect("pong", Duration::from_secs(5)), "pong 7");

    for round in 0..5 {
        let s = Stopped::seize_all(pid, deadline(5000)).unwrap();
        let held = s.tids();
        assert!(
            held.len() >= 32,
            "round {round}: only {} threads held",
            held.len()
        );
        for tid in threads(pid).unwrap() {
            let state = thread_state(pid, tid);
            assert!(
                held.contains(&tid) || matches!(state, None | Some('Z' | 'X')),
                "round {round}: thread {tid} (state {state:?}) is listed but not held"
            );
        }
        for &tid in &held {
            assert_eq!(
                thread_state(pid, tid),
                Some('t'),
                "thread {tid} is not in a tracing stop"
            );
            s.regs(tid).unwrap();
        }
        s.release().unwrap();
    }

    // Extending a guard from one thread to all of them.
    let mut s = Stopped::seize_threads(pid, &[pid.main_thread()], deadline(2000)).unwrap();
    assert_eq!(s.tids(), vec![pid.main_thread()]);
    s.seize_rest(deadline(5000)).unwrap();
    assert!(s.tids().len() >= 32);

    // The code page is read-only: process_vm_writev must fail, poke must work.
    let map = maps(pid)
        .unwrap()
        .into_iter()
        .find(|m| m.contains(marker))
        .unwrap();
    assert!(map.is_executable() && !map.is_writable(), "{map:?}");
    let mut orig = [0u8; 6];
    s.peek(marker, &mut orig).unwrap();
    assert_eq!(
        orig,
        [0xb8, 7, 0, 0, 0, 0xc3],
        "unexpected code for marker()"
    );
    let err = ulp_process::write_mem(pid, marker, &[0xb8, 9]).unwrap_err();
    assert!(err.to_string().contains("poke"), "{err}");

    s.poke(marker + 1, &[9]).unwrap();
    let mut now = [0u8; 6];
    s.peek(marker, &mut now).unwrap();
    assert_eq!(now, [0xb8, 9, 0, 0, 0, 0xc3]);
    assert_eq!(
        s.caller(pid.main_thread())
            .call(marker, &[], deadline(2000))
            .unwrap(),
        9
    );
    // Unaligned multi-word write and read across word boundaries.
    let mut wide = [0u8; 21];
    s.peek(marker - 7, &mut wide).unwrap();
    s.poke(marker - 7, &wide).unwrap();
    s.poke(marker, &orig).unwrap();
    s.peek(marker, &mut now).unwrap();
    assert_eq!(now, orig);
    assert_eq!(
        s.caller(pid.main_thread())
            .call(marker, &[], deadline(2000))
            .unwrap(),
        7
    );
    s.release().unwrap();

    // Still running normally.
    t.send("ping\n");
    assert_eq!(t.expect("pong", Duration::from_secs(5)), "pong 7");
    for tid in threads(pid).unwrap() {
        assert_ne!(
            thread_state(pid, tid),
            Some('t'),
            "thread {tid} left in a tracing stop"
        );
    }
}

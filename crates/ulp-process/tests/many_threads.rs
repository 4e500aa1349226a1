//! seize_all on a process with 128 busy threads: when it returns, every
//! thread of the process is in a tracing stop, round after round.

mod common;

use common::{deadline, run_c};
use ulp_process::{thread_state, threads, Pid, Stopped};

const MANY_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *spin(void *a) { volatile unsigned long x = 0; for (;;) x++; return a; }

int main(void) {
    pthread_t t;
    for (int i = 0; i < 128; i++) pthread_create(&t, 0, spin, 0);
    printf("ready 0\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"#;

#[test]
fn every_thread_of_a_128_thread_busy_process_is_stopped() {
    let (_dir, t, _) = run_c("many", MANY_C, &[], &[]);
    let pid = Pid::new(t.pid);
    for round in 0..20 {
        let s = Stopped::seize_all(pid, deadline(10_000)).unwrap();
        let held = s.tids();
        assert_eq!(held.len(), 129, "round {round}");
        for tid in threads(pid).unwrap() {
            assert_eq!(
                thread_state(pid, tid),
                Some('t'),
                "round {round}: thread {tid} is not in a tracing stop"
            );
        }
        s.release().unwrap();
    }
}

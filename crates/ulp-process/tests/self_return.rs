//! remote_call_returning: a call that gets back to the thread's own code by
//! itself through a resume routine and an rt_sigframe, whether the tracer
//! stays to collect it or vanishes in the middle (its OS thread exits
//! without releasing the guard, as when `ulp` is SIGKILLed).

mod common;

use std::time::{Duration, Instant};

use common::{cpu_has, deadline, run_c, wait_in_syscall, wait_until, Target, TempDir};
use ulp_fixtures::blocked_syscall;
use ulp_process::NR_RESTART_SYSCALL as RESTART_SYSCALL;
use ulp_process::{Pid, RemoteAddr, ReturnPath, Stopped};

/// Modes (argv[1]): "vector" runs a loop that checks known values in
/// vector, general registers and MXCSR on the main thread; "sleep" sleeps
/// 200 ms (or argv[2] ms) in a loop and reports each sleep (slept / SHORT / EINTR); "read"
/// echoes stdin lines (EINTR reported). `slow` changes registers, spins
/// 50 ms and returns 7. The resume routine follows ulp_process::frame.
const PROG_C: &str = r#"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int stop_flag;
volatile unsigned long counter;
uint64_t call_done[2] __attribute__((aligned(16)));
static uint64_t vals[16][4] __attribute__((aligned(64)));
static uint32_t mxcsr_want = 0x7f80;
static uint32_t mxcsr_now;

extern char resume_start[], resume_end[];
__asm__(
    ".text\n"
    "resume_start:\n"
    "mov 312(%rsp), %rdx\n"
    "mov %rax, 8(%rdx)\n"
    "mov 304(%rsp), %rcx\n"
    "mov %rcx, (%rdx)\n"
    "mov 320(%rsp), %rcx\n"
    "test %rcx, %rcx\n"
    "jz 2f\n"
    "1: pause\n"
    "sub $1, %rcx\n"
    "jnz 1b\n"
    "2:\n"
    "xor %edi, %edi\n"
    "lea 16(%rsp), %rsi\n"
    "mov $131, %eax\n"
    "syscall\n"
    "xor %edi, %edi\n"
    "xor %esi, %esi\n"
    "lea 296(%rsp), %rdx\n"
    "mov $8, %r10d\n"
    "mov $14, %eax\n"
    "syscall\n"
    "mov $15, %eax\n"
    "syscall\n"
    "ud2\n"
    "resume_end:\n");

#define S_(x) #x
#define S(x) S_(x)
#define LD(n) "vmovdqu " S(n) "*32(%%rbx), %%ymm" S(n) "\n\t"
#define CK(n) "vpxor " S(n) "*32(%%rbx), %%ymm" S(n) ", %%ymm0\n\t" \
              "vptest %%ymm0, %%ymm0\n\tjnz 9f\n\t"
#define ALL15(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)

__attribute__((noinline)) int check_loop(void) {
    int bad;
    __asm__ volatile(
        "ldmxcsr %[mxw]\n\t"
        ALL15(LD)
        "movabs $0x1111222233334444, %%r8\n\t"
        "movabs $0x5555666677778888, %%r9\n\t"
        "movabs $0x9999aaaabbbbcccc, %%r10\n\t"
        "movabs $0xddddeeeeffff0000, %%r11\n\t"
        "movabs $0x0123456789abcdef, %%rsi\n\t"
        "movabs $0xfedcba9876543210, %%rdi\n\t"
        "1:\n\t"
        "incq %[cnt]\n\t"
        "cmpl $0, %[stop]\n\t"
        "jne 8f\n\t"
        ALL15(CK)
        "movabs $0x1111222233334444, %%rax\n\tcmpq %%rax, %%r8\n\tjne 9f\n\t"
        "movabs $0x5555666677778888, %%rax\n\tcmpq %%rax, %%r9\n\tjne 9f\n\t"
        "movabs $0x9999aaaabbbbcccc, %%rax\n\tcmpq %%rax, %%r10\n\tjne 9f\n\t"
        "movabs $0xddddeeeeffff0000, %%rax\n\tcmpq %%rax, %%r11\n\tjne 9f\n\t"
        "movabs $0x0123456789abcdef, %%rax\n\tcmpq %%rax, %%rsi\n\tjne 9f\n\t"
        "movabs $0xfedcba9876543210, %%rax\n\tcmpq %%rax, %%rdi\n\tjne 9f\n\t"
        "stmxcsr %[mxn]\n\t"
        "movl %[mxn], %%eax\n\tcmpl %[mxw], %%eax\n\tjne 9f\n\t"
        "jmp 1b\n\t"
        "8:\n\tmovl $0, %[bad]\n\tjmp 7f\n\t"
        "9:\n\tmovl $1, %[bad]\n\t"
        "7:\n\t"
        : [bad] "=m"(bad), [cnt] "+m"(counter), [mxn] "=m"(mxcsr_now)
        : "b"(vals), [stop] "m"(stop_flag), [mxw] "m"(mxcsr_want)
        : "rax", "rsi", "rdi", "r8", "r9", "r10", "r11", "cc", "memory",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    return bad;
}

/* Changes registers the loop checks, waits 50 ms, returns 7. */
__attribute__((noinline)) long slow(void) {
    __asm__ volatile(
        "vpcmpeqd %%ymm1, %%ymm1, %%ymm1\n\t"
        "vpcmpeqd %%ymm8, %%ymm8, %%ymm8\n\t"
        "vpcmpeqd %%ymm15, %%ymm15, %%ymm15\n\t"
        "movq $-1, %%r8\n\tmovq $-1, %%r9\n\tmovq $-1, %%r10\n\tmovq $-1, %%r11\n\t"
        "movq $-1, %%rsi\n\tmovq $-1, %%rdi\n\t"
        "movl $0x1f80, -4(%%rsp)\n\tldmxcsr -4(%%rsp)\n\t"
        : : : "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "xmm1", "xmm8", "xmm15");
    /* Not nanosleep: its every call resets the thread's restart block,
       which the interrupted nanosleep of the "sleep" mode still needs. */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 50000000L);
    return 7;
}

int main(int argc, char **argv) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 4; j++)
            vals[i][j] = 0x0101010101010101ULL * (uint64_t)(i + 1) ^ ((uint64_t)j << 56);
    printf("ready %lx %lx %lx %lx %lx %lx\n", (unsigned long)(uintptr_t)&slow,
           (unsigned long)(uintptr_t)resume_start, (unsigned long)(uintptr_t)resume_end,
           (unsigned long)(uintptr_t)call_done, (unsigned long)(uintptr_t)&stop_flag,
           (unsigned long)(uintptr_t)&counter);
    fflush(stdout);
    if (!strcmp(argv[1], "vector")) {
        int bad = check_loop();
        printf(bad ? "CORRUPT %lu\n" : "INTACT %lu\n", counter);
    } else if (!strcmp(argv[1], "sleep")) {
        for (;;) {
            long want = argc > 2 ? atol(argv[2]) * 1000000L : 200000000L;
            struct timespec a, b, req = { want / 1000000000L, want % 1000000000L };
            clock_gettime(CLOCK_MONOTONIC, &a);
            int r = nanosleep(&req, NULL);
            int e = errno;
            clock_gettime(CLOCK_MONOTONIC, &b);
            long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
            if (r != 0) printf("EINTR %d\n", e);
            else if (ns < want) printf("SHORT %ld\n", ns);
            else printf("slept %ld\n", ns);
            fflush(stdout);
        }
    } else {
        char buf[256];
        for (;;) {
            ssize_t n = read(0, buf, sizeof buf - 1);
            if (n < 0) {
                printf(errno == EINTR ? "EINTR\n" : "ERROR %d\n", errno);
                fflush(stdout);
                continue;
            }
            if (n == 0) return 0;
            buf[n] = 0;
            printf("got %s", buf);
            fflush(stdout);
        }
    }
    fflush(stdout);
    return 0;
}
"#;

struct Prog {
    t: Target,
    slow: u64,
    path: ReturnPath,
    stop_flag: u64,
    counter: u64,
    _dir: TempDir,
}

fn start(mode: &str) -> Option<Prog> {
    start_with(&[mode])
}

fn start_with(args: &[&str]) -> Option<Prog> {
    if !cpu_has("avx2") {
        eprintln!("skipped: no AVX2");
        return None;
    }
    let (dir, t, a) = run_c("selfret", PROG_C, &["-mavx2"], args);
    Some(Prog {
        t,
        slow: a[0],
        path: ReturnPath {
            routine: a[1],
            routine_end: a[2],
            done: a[3],
        },
        stop_flag: a[4],
        counter: a[5],
        _dir: dir,
    })
}

impl Prog {
    fn pid(&self) -> Pid {
        Pid::new(self.t.pid)
    }

    fn counter(&self) -> u64 {
        let mut b = [0u8; 8];
        ulp_process::read_mem(self.pid(), RemoteAddr::new(self.counter), &mut b).unwrap();
        u64::from_le_bytes(b)
    }

    /// The check loop keeps counting (bounded wait): the main thread runs
    /// its own code.
    fn assert_running(&self, what: &str) {
        let before = self.counter();
        wait_until(&format!("check loop running ({what})"), || {
            self.counter() != before
        });
    }

    /// Waits (bounded) until no tracer holds the main thread: a tracer
    /// whose OS thread exited detaches as that thread finishes exiting,
    /// after `join` may have returned.
    fn wait_untraced(&self) {
        let pid = self.pid();
        wait_until("the main thread untraced", || {
            ulp_process::tracer_of(pid, pid.main_thread()).is_none()
        });
    }

    fn finish_vector(mut self) {
        ulp_process::write_mem(
            self.pid(),
            RemoteAddr::new(self.stop_flag),
            &1i32.to_le_bytes(),
        )
        .unwrap();
        let l = self.t.expect("", Duration::from_secs(5));
        assert!(l.starts_with("INTACT"), "target reported {l:?}");
    }

    /// Starts a call of `slow` on the main thread from a tracer OS thread
    /// that gives up after `after` and exits without releasing anything.
    fn vanishing_tracer(&self, after: Duration) {
        let (pid, slow, path) = (self.pid(), self.slow, self.path);
        std::thread::spawn(move || {
            let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
            let r = s.caller(pid.main_thread()).call_returning(
                RemoteAddr::new(slow),
                &[],
                &path,
                Instant::now() + after,
            );
            // The tracer dies here: no release, no Drop; the kernel detaches
            // the thread when this OS thread exits.
            std::mem::forget(s);
            r.map(|_| ()).map_err(|e| e.is_timeout())
        })
        .join()
        .unwrap()
        .expect_err("the call must still be running when the tracer vanishes");
    }
}

#[test]
fn collected_calls_restore_every_register() {
    let Some(p) = start("vector") else { return };
    let pid = p.pid();
    for round in 0..10 {
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        let v = s
            .caller(pid.main_thread())
            .call_returning(RemoteAddr::new(p.slow), &[], &p.path, deadline(5000))
            .unwrap();
        assert_eq!(v, 7, "round {round}");
        s.release().unwrap();
        p.assert_running(&format!("round {round}"));
    }
    p.finish_vector();
}

#[test]
fn vanished_tracer_leaves_registers_intact() {
    let Some(p) = start("vector") else { return };
    for round in 0..3 {
        p.vanishing_tracer(Duration::from_millis(10));
        // 50 ms in `slow`, 50 ms waiting in the routine, then rt_sigreturn
        // back to the check loop, untraced.
        p.wait_untraced();
        p.assert_running(&format!("round {round}"));
        assert!(ulp_process::comm(p.pid()).is_ok(), "target died");
    }
    p.finish_vector();
}

#[test]
fn slow_tracer_finds_the_call_returned() {
    let Some(p) = start("vector") else { return };
    let pid = p.pid();
    let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    let err = s
        .caller(pid.main_thread())
        .call_returning(RemoteAddr::new(p.slow), &[], &p.path, deadline(10))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // The thread returns by itself meanwhile: back in its check loop.
    p.assert_running("the call returned by itself");
    assert_eq!(s.caller(pid.main_thread()).wait(deadline(2000)).unwrap(), 7);
    s.release().unwrap();
    p.assert_running("after a slow collection");
    // Timed out and released: the call finishes and returns by itself.
    let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    assert!(s
        .caller(pid.main_thread())
        .call_returning(RemoteAddr::new(p.slow), &[], &p.path, deadline(10))
        .unwrap_err()
        .is_timeout());
    s.release().unwrap();
    p.assert_running("after a released call");
    p.finish_vector();
}

#[test]
fn vanished_tracer_restarts_sleep_and_read() {
    // nanosleep: -ERESTART_RESTARTBLOCK, restarted whole (never short).
    let Some(mut p) = start("sleep") else { return };
    p.t.expect("slept", Duration::from_secs(5));
    for round in 0..3u64 {
        // Not a readiness wait: it moves the call to another point of the
        // 200 ms sleep each round.
        std::thread::sleep(Duration::from_millis(40 * round + 20));
        p.vanishing_tracer(Duration::from_millis(10));
        p.wait_untraced();
    }
    for _ in 0..4 {
        let l = p.t.line(Duration::from_secs(5)).expect("sleeper stopped");
        assert!(
            l.starts_with("slept"),
            "sleeper reported {l:?}: {:?}",
            p.t.seen
        );
    }
    // read: -ERESTARTSYS, restarted without EINTR.
    let Some(mut p) = start("read") else { return };
    let pid = p.pid();
    for round in 0..3 {
        wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);
        p.vanishing_tracer(Duration::from_millis(10));
        // The call returns by itself and the read is restarted: blocked
        // in it again, untraced, before the line is sent.
        wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);
        p.wait_untraced();
        p.t.send(&format!("line {round}\n"));
        assert_eq!(
            p.t.expect("", Duration::from_secs(5)),
            format!("got line {round}")
        );
    }
    // And collected by a live tracer.
    for round in 0..3 {
        wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        assert_eq!(
            s.caller(pid.main_thread())
                .call_returning(RemoteAddr::new(p.slow), &[], &p.path, deadline(5000))
                .unwrap(),
            7
        );
        s.release().unwrap();
        p.t.send(&format!("again {round}\n"));
        assert_eq!(
            p.t.expect("", Duration::from_secs(5)),
            format!("got again {round}")
        );
    }
}

#[test]
fn restarted_sleep_returning_by_itself_sleeps_whole() {
    // A collected call leaves the sleep to the kernel's restart_syscall; a
    // thread caught there again by a call that then returns by itself
    // (its tracer gone) must re-issue the sleep: rt_sigreturn resets the
    // restart block, so restart_syscall itself would fail with EINTR.
    let Some(mut p) = start_with(&["sleep", "1000"]) else {
        return;
    };
    let pid = p.pid();
    let tid = pid.main_thread();
    let (slow, path) = (p.slow, p.path);
    let sleeping = || {
        wait_until("the sleeper back in its sleep", || {
            matches!(
                blocked_syscall(pid.get(), tid.get()),
                Some(libc::SYS_clock_nanosleep | RESTART_SYSCALL)
            )
        })
    };
    let mut restarted = false;
    for _ in 0..10 {
        sleeping();
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        let v = s
            .caller(tid)
            .call_returning(RemoteAddr::new(slow), &[], &path, deadline(5000));
        assert_eq!(v.unwrap(), 7);
        s.release().unwrap();
        // Straight away: the restarted sleep has most of a second to go.
        restarted = std::thread::spawn(move || {
            let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
            let restarted = s.regs(tid).unwrap().orig_rax() == RESTART_SYSCALL;
            if restarted {
                assert_eq!(s.syscall_of(tid).unwrap(), Some(libc::SYS_clock_nanosleep));
            }
            let r = s.caller(tid).call_returning(
                RemoteAddr::new(slow),
                &[],
                &path,
                Instant::now() + Duration::from_millis(10),
            );
            assert!(r.unwrap_err().is_timeout());
            // The tracer vanishes: the call returns by itself.
            std::mem::forget(s);
            restarted
        })
        .join()
        .unwrap();
        p.wait_untraced();
        if restarted {
            break;
        }
    }
    assert!(restarted, "the sleep was never caught in restart_syscall");
    sleeping();
    for _ in 0..2 {
        let l = p.t.line(Duration::from_secs(5)).expect("sleeper stopped");
        assert!(
            l.starts_with("slept"),
            "sleeper reported {l:?}: {:?}",
            p.t.seen
        );
    }
}

#[test]
fn collected_calls_keep_sleeps_whole() {
    // The thread is stopped in nanosleep (-ERESTART_RESTARTBLOCK): when the
    // tool collects the call and writes the registers back, the kernel's
    // restart must still be nanosleep's own (the resume routine must not
    // leave a restart of its own behind).
    let Some(mut p) = start("sleep") else { return };
    let pid = p.pid();
    p.t.expect("slept", Duration::from_secs(5));
    for round in 0..4u64 {
        // Not a readiness wait: it moves the call to another point of the
        // 200 ms sleep each round.
        std::thread::sleep(Duration::from_millis(30 * round + 20));
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        assert_eq!(
            s.caller(pid.main_thread())
                .call_returning(RemoteAddr::new(p.slow), &[], &p.path, deadline(5000))
                .unwrap(),
            7
        );
        s.release().unwrap();
    }
    for _ in 0..4 {
        let l = p.t.line(Duration::from_secs(5)).expect("sleeper stopped");
        assert!(
            l.starts_with("slept"),
            "sleeper reported {l:?}: {:?}",
            p.t.seen
        );
    }
}

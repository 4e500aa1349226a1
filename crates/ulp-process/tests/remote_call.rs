//! remote_call against real processes: return values, stack alignment,
//! transparent restart of interrupted system calls, register preservation,
//! signals that arrive during a call.

mod common;

use std::time::{Duration, Instant};

use common::{cpu_has, deadline, run_c, wait_in_syscall, wait_until};
use ulp_process::{Pid, RemoteAddr, Stopped};

const ECHO_C: &str = r#"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) long sum6(long a, long b, long c, long d, long e, long f) {
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
}

/* Returns rsp as it is at the function's first instruction. */
__attribute__((naked)) uintptr_t rsp_at_entry(void) {
    __asm__("mov %rsp, %rax\n\tret\n");
}

int main(void) {
    printf("ready %lx %lx %lx\n", (unsigned long)(uintptr_t)&getpid,
           (unsigned long)(uintptr_t)&sum6, (unsigned long)(uintptr_t)&rsp_at_entry);
    fflush(stdout);
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
"#;

#[test]
fn remote_call_returns_values_and_aligns_stack() {
    let (_dir, mut t, addrs) = run_c("echo", ECHO_C, &[], &[]);
    let (getpid, sum6, rsp_at_entry) = (addrs[0], addrs[1], addrs[2]);
    let pid = Pid::new(t.pid);
    wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);

    let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    assert_eq!(s.tids(), vec![pid.main_thread()]);
    // Blocked in read(0, ...) (system call 0).
    let before = s.regs(pid.main_thread()).unwrap();
    assert_eq!(
        s.caller(pid.main_thread())
            .call(RemoteAddr::new(getpid), &[], deadline(2000))
            .unwrap(),
        pid.get() as u64
    );
    assert_eq!(
        s.caller(pid.main_thread())
            .call(RemoteAddr::new(sum6), &[1, 2, 3, 4, 5, 6], deadline(2000))
            .unwrap(),
        91
    );
    assert_eq!(
        s.caller(pid.main_thread())
            .call(
                RemoteAddr::new(sum6),
                &[u64::MAX, 0, 0, 0, 0, 1],
                deadline(2000)
            )
            .unwrap(),
        5
    );
    let rsp = s
        .caller(pid.main_thread())
        .call(RemoteAddr::new(rsp_at_entry), &[], deadline(2000))
        .unwrap();
    assert_eq!(rsp % 16, 8, "rsp at entry {rsp:#x} is not call-aligned");
    assert!(
        rsp + 128 < before.rsp(),
        "the call's frame must be below the red zone"
    );
    let after = s.regs(pid.main_thread()).unwrap();
    assert_eq!(
        (after.rip(), after.rsp(), after.rax(), after.orig_rax()),
        (before.rip(), before.rsp(), before.rax(), before.orig_rax())
    );
    assert!(s
        .caller(pid.main_thread())
        .call(RemoteAddr::new(sum6), &[0; 7], deadline(2000))
        .is_err());
    s.release().unwrap();

    t.send("hello\n");
    assert_eq!(t.expect("", Duration::from_secs(5)), "got hello");
}

#[test]
fn blocked_read_restarts_without_eintr() {
    let (_dir, mut t, a) = run_c("echo", ECHO_C, &[], &[]);
    let (getpid, pid) = (a[0], Pid::new(t.pid));
    // Make sure it is blocked inside read() before we interrupt it.
    wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);
    for round in 0..5 {
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        assert_eq!(
            s.syscall_of(pid.main_thread()).unwrap(),
            Some(libc::SYS_read),
            "round {round}"
        );
        assert_eq!(
            s.caller(pid.main_thread())
                .call(RemoteAddr::new(getpid), &[], deadline(2000))
                .unwrap(),
            pid.get() as u64
        );
        s.release().unwrap();
        t.send(&format!("line {round}\n"));
        assert_eq!(
            t.expect("", Duration::from_secs(5)),
            format!("got line {round}")
        );
        wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);
    }
    // Plain seize and release, no call, must not disturb it either.
    let s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    drop(s);
    t.send("last\n");
    assert_eq!(t.expect("", Duration::from_secs(5)), "got last");
}

const EPOLL_C: &str = r#"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

int main(void) {
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = 0 };
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    printf("ready %lx\n", (unsigned long)(uintptr_t)&getpid);
    fflush(stdout);
    char buf[256];
    for (;;) {
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, -1);
        if (n < 0) {
            printf(errno == EINTR ? "EINTR\n" : "ERROR %d\n", errno);
            fflush(stdout);
            continue;
        }
        ssize_t r = read(0, buf, sizeof buf - 1);
        if (r <= 0) return 0;
        buf[r] = 0;
        printf("got %s", buf);
        fflush(stdout);
    }
}
"#;

#[test]
fn epoll_wait_is_rerun_not_eintr() {
    let (_dir, mut t, a) = run_c("epoll", EPOLL_C, &[], &[]);
    let (getpid, pid) = (a[0], Pid::new(t.pid));
    for round in 0..3 {
        wait_in_syscall(pid.get(), pid.get(), libc::SYS_epoll_wait);
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        assert_eq!(
            s.syscall_of(pid.main_thread()).unwrap(),
            Some(libc::SYS_epoll_wait)
        );
        if round > 0 {
            assert_eq!(
                s.caller(pid.main_thread())
                    .call(RemoteAddr::new(getpid), &[], deadline(2000))
                    .unwrap(),
                pid.get() as u64
            );
        }
        s.release().unwrap();
        t.send(&format!("e{round}\n"));
        assert_eq!(
            t.expect("", Duration::from_secs(5)),
            format!("got e{round}")
        );
    }
}

const SLEEPER_C: &str = r#"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    printf("ready %lx\n", (unsigned long)(uintptr_t)&getpid);
    fflush(stdout);
    for (;;) {
        struct timespec a, b, req = { 0, 200000000 };
        clock_gettime(CLOCK_MONOTONIC, &a);
        int r = nanosleep(&req, NULL);
        int e = errno;
        clock_gettime(CLOCK_MONOTONIC, &b);
        long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        if (r != 0) printf("EINTR %d\n", e);
        else if (ns < 200000000L) printf("SHORT %ld\n", ns);
        else printf("slept %ld\n", ns);
        fflush(stdout);
    }
}
"#;

#[test]
fn nanosleep_is_neither_shortened_nor_interrupted() {
    let (_dir, mut t, a) = run_c("sleeper", SLEEPER_C, &[], &[]);
    let (getpid, pid) = (a[0], Pid::new(t.pid));
    t.expect("slept", Duration::from_secs(5));
    // Several cycles at different points of the sleep.
    for round in 0..6u64 {
        // Not a readiness wait: it moves the call to another point of the
        // 200 ms sleep each round.
        std::thread::sleep(Duration::from_millis(35 * round + 10));
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        assert_eq!(
            s.caller(pid.main_thread())
                .call(RemoteAddr::new(getpid), &[], deadline(2000))
                .unwrap(),
            pid.get() as u64
        );
        s.release().unwrap();
    }
    // Every sleep that overlapped a cycle, and two more, must be whole.
    for _ in 0..4 {
        let l = t
            .line(Duration::from_secs(5))
            .expect("sleeper stopped reporting");
        assert!(
            l.starts_with("slept"),
            "sleeper reported {l:?}; all: {:?}",
            t.seen
        );
    }
}

/// Holds known values in vector, mask and general registers and MXCSR in a
/// loop that checks them; `clobber` changes all of them.
const VECTOR_C: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile int stop_flag;
volatile unsigned long counter;
static uint64_t vals[32][8] __attribute__((aligned(64)));
static uint32_t mxcsr_want = 0x7f80; /* round toward zero, all masked */
static uint32_t mxcsr_now;
static char big[1 << 16];

#define S_(x) #x
#define S(x) S_(x)
#ifdef WIDE
#define LD(n) "vmovdqu64 " S(n) "*64(%%rbx), %%zmm" S(n) "\n\t"
#define CK(n) "vpxorq " S(n) "*64(%%rbx), %%zmm" S(n) ", %%zmm0\n\t" \
              "vptestmq %%zmm0, %%zmm0, %%k1\n\tkortestb %%k1, %%k1\n\tjnz 9f\n\t"
#else
#define LD(n) "vmovdqu " S(n) "*64(%%rbx), %%ymm" S(n) "\n\t"
#define CK(n) "vpxor " S(n) "*64(%%rbx), %%ymm" S(n) ", %%ymm0\n\t" \
              "vptest %%ymm0, %%ymm0\n\tjnz 9f\n\t"
#endif
#define ALL15(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define ALL16(M) M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)

/* Returns 0 when asked to stop with every register intact, 1 on corruption. */
__attribute__((noinline)) int check_loop(void) {
    int bad;
    __asm__ volatile(
        "ldmxcsr %[mxw]\n\t"
        ALL15(LD)
#ifdef WIDE
        ALL16(LD)
        "movq $0x5a5a, %%rax\n\tkmovq %%rax, %%k2\n\t"
        "movq $0x25a5a5a5, %%rax\n\tkmovq %%rax, %%k7\n\t"
#endif
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
#ifdef WIDE
        ALL16(CK)
        "kmovq %%k2, %%rax\n\tcmpq $0x5a5a, %%rax\n\tjne 9f\n\t"
        "kmovq %%k7, %%rax\n\tcmpq $0x25a5a5a5, %%rax\n\tjne 9f\n\t"
#endif
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
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#ifdef WIDE
          , "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
          "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31",
          "k1", "k2", "k7"
#endif
    );
    return bad;
}

/* Changes every register the loop checks, through libc string functions
   and directly. */
__attribute__((noinline)) long clobber(void) {
    memset(big, 0x5a, sizeof big - 1);
    long n = (long)strlen(big);
    __asm__ volatile(
        "vpcmpeqd %%ymm1, %%ymm1, %%ymm1\n\t"
        "vpcmpeqd %%ymm8, %%ymm8, %%ymm8\n\t"
        "vpcmpeqd %%ymm15, %%ymm15, %%ymm15\n\t"
#ifdef WIDE
        "vpternlogd $0xff, %%zmm16, %%zmm16, %%zmm16\n\t"
        "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n\t"
        "vpternlogd $0xff, %%zmm5, %%zmm5, %%zmm5\n\t"
        "kxnorw %%k2, %%k2, %%k2\n\tkxnorw %%k7, %%k7, %%k7\n\t"
#endif
        "movq $-1, %%r8\n\tmovq $-1, %%r9\n\tmovq $-1, %%r10\n\tmovq $-1, %%r11\n\t"
        "movq $-1, %%rsi\n\tmovq $-1, %%rdi\n\t"
        "movl $0x1f80, -4(%%rsp)\n\tldmxcsr -4(%%rsp)\n\t"
        : : : "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "xmm1", "xmm8", "xmm15"
#ifdef WIDE
        , "xmm16", "xmm31", "xmm5", "k2", "k7"
#endif
    );
    return n;
}

int main(void) {
    for (int i = 0; i < 32; i++)
        for (int j = 0; j < 8; j++)
            vals[i][j] = 0x0101010101010101ULL * (uint64_t)(i + 1) ^ ((uint64_t)j << 56) ^ 0x8000000000000000ULL;
    printf("ready %lx %lx %lx\n", (unsigned long)(uintptr_t)&clobber,
           (unsigned long)(uintptr_t)&stop_flag, (unsigned long)(uintptr_t)&counter);
    fflush(stdout);
    int bad = check_loop();
    printf(bad ? "CORRUPT %lu\n" : "INTACT %lu\n", counter);
    fflush(stdout);
    return 0;
}
"#;

#[test]
fn vector_registers_survive_remote_calls() {
    let wide = cpu_has("avx512f");
    let flags: &[&str] = if wide {
        &["-mavx512f", "-DWIDE"]
    } else {
        &["-mavx2"]
    };
    let (_dir, mut t, a) = run_c("vector", VECTOR_C, flags, &[]);
    let (clobber, stop_flag, counter) = (a[0], a[1], a[2]);
    let pid = Pid::new(t.pid);
    let read_counter = || {
        let mut b = [0u8; 8];
        ulp_process::read_mem(pid, RemoteAddr::new(counter), &mut b).unwrap();
        u64::from_le_bytes(b)
    };
    for round in 0..50 {
        let before = read_counter();
        let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
        let n = s
            .caller(pid.main_thread())
            .call(RemoteAddr::new(clobber), &[], deadline(2000))
            .unwrap();
        assert_eq!(n, (1 << 16) - 1, "round {round}");
        s.release().unwrap();
        // The loop keeps running between rounds.
        let end = Instant::now() + Duration::from_secs(5);
        while read_counter() == before {
            assert!(
                Instant::now() < end,
                "check loop stopped running (round {round})"
            );
            std::thread::yield_now();
        }
    }
    ulp_process::write_mem(pid, RemoteAddr::new(stop_flag), &1i32.to_le_bytes()).unwrap();
    let l = t.expect("", Duration::from_secs(5));
    assert!(l.starts_with("INTACT"), "target reported {l:?}");
}

const SIGNAL_C: &str = r#"
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int in_slow;
volatile int got;
volatile int got_inside;
volatile int sender;

static void on_usr1(int sig, siginfo_t *si, void *ctx) {
    got++;
    if (in_slow) got_inside++;
    sender = si->si_pid;
}

/* Spins for about 300 ms of CPU time. */
__attribute__((noinline)) long slow(void) {
    in_slow = 1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 300000000L);
    in_slow = 0;
    return 7;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    printf("ready %lx %lx\n", (unsigned long)(uintptr_t)&slow, (unsigned long)(uintptr_t)&in_slow);
    fflush(stdout);
    char buf[64];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0) return 0;
        printf("got=%d inside=%d sender=%d\n", got, got_inside, sender);
        fflush(stdout);
    }
}
"#;

#[test]
fn signal_during_call_is_delivered_after_release() {
    let (_dir, mut t, a) = run_c("signal", SIGNAL_C, &[], &[]);
    let (slow, pid) = (a[0], Pid::new(t.pid));
    wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);
    let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    let in_slow = a[1];
    let killer = std::thread::spawn(move || {
        // Once the call is inside `slow`.
        wait_until("the call running slow()", || {
            let mut b = [0u8; 4];
            ulp_process::read_mem(pid, RemoteAddr::new(in_slow), &mut b).unwrap();
            b != [0; 4]
        });
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid.get(), libc::SIGUSR1) };
    });
    assert_eq!(
        s.caller(pid.main_thread())
            .call(RemoteAddr::new(slow), &[], deadline(5000))
            .unwrap(),
        7
    );
    killer.join().unwrap();
    assert_eq!(s.owed_signals(pid.main_thread()), vec![libc::SIGUSR1]);
    s.release().unwrap();
    t.send("x");
    let me = std::process::id();
    assert_eq!(
        t.expect("got=", Duration::from_secs(5)),
        format!("got=1 inside=0 sender={me}")
    );
}

#[test]
fn stopped_process_stays_stopped() {
    let (_dir, mut t, a) = run_c("echo", ECHO_C, &[], &[]);
    let (getpid, pid) = (a[0], Pid::new(t.pid));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(pid.get(), libc::SIGSTOP) };
    wait_until("the target stopped by SIGSTOP", || {
        ulp_process::thread_state(pid, pid.main_thread()) == Some('T')
    });
    let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    assert_eq!(
        s.caller(pid.main_thread())
            .call(RemoteAddr::new(getpid), &[], deadline(2000))
            .unwrap(),
        pid.get() as u64
    );
    s.release().unwrap();
    // Still stopped by job control: input is not consumed.
    t.send("while stopped\n");
    assert_eq!(t.line(Duration::from_millis(200)), None);
    assert_eq!(ulp_process::thread_state(pid, pid.main_thread()), Some('T'));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(pid.get(), libc::SIGCONT) };
    assert_eq!(t.expect("", Duration::from_secs(5)), "got while stopped");
}

#[test]
fn timed_out_call_can_be_awaited_or_abandoned() {
    let (_dir, mut t, a) = run_c("signal", SIGNAL_C, &[], &[]);
    let (slow, pid) = (a[0], Pid::new(t.pid));
    wait_in_syscall(pid.get(), pid.get(), libc::SYS_read);

    // Timeout, then keep waiting: the call completes normally.
    let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    let err = s
        .caller(pid.main_thread())
        .call(RemoteAddr::new(slow), &[], deadline(50))
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.to_string().contains("still inside the call"), "{err}");
    assert!(
        s.regs(pid.main_thread()).is_err(),
        "a running thread has no readable registers"
    );
    assert_eq!(s.caller(pid.main_thread()).wait(deadline(5000)).unwrap(), 7);
    s.release().unwrap();
    t.send("a");
    t.expect("got=0", Duration::from_secs(5));

    // Timeout, then release: the call is abandoned, the thread resumes its
    // own code (still blocked in read, no EINTR).
    let mut s = Stopped::seize_all(pid, deadline(2000)).unwrap();
    assert!(s
        .caller(pid.main_thread())
        .call(RemoteAddr::new(slow), &[], deadline(50))
        .unwrap_err()
        .is_timeout());
    s.release().unwrap();
    t.send("b");
    t.expect("got=0", Duration::from_secs(5));
    assert!(!t.seen.iter().any(|l| l.contains("EINTR")), "{:?}", t.seen);
}

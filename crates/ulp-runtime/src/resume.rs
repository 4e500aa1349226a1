//! The resume routine: the return address of every remote call the tool
//! makes, through which the call goes back to the thread's own code by
//! itself when the tool is gone.
//!
//! The tool writes an `rt_sigframe` with the thread's saved state on the
//! thread's stack (`ulp_process::frame` documents it) and starts the call
//! with this routine as its return address, so at the routine's first
//! instruction `rsp` points at the frame's ucontext. The routine:
//!
//! 1. stores the call's return value (`rax`) and then the call's cookie in
//!    the done word named by the frame (`Interface::call_done`): the tool
//!    now knows the call is over. The cookie has `frame::NOTICE_FLAG` set
//!    when step 2 follows;
//! 2. sends its own thread a SIGURG (`rt_tgsigqueueinfo`, `SI_QUEUE`, the
//!    call's cookie as its value), which stops it at once
//!    (signal-delivery-stop) and wakes the tool, asleep until a report of
//!    its tracee. Only when the thread does not block SIGURG and the
//!    process leaves it to its default action (ignore) or ignores it:
//!    then, with no tool tracing the thread any more, the kernel discards
//!    it as it would any SIGURG. The tool drops it (and only it, by its
//!    code and cookie). Otherwise (a Go program's handler, a thread that
//!    blocks it) the tool stops the thread itself once it sees the done
//!    word;
//! 3. waits there, asleep in `select` for as long as the frame says
//!    (about 50 ms), for the tool to stop the thread and write its
//!    registers back itself, the normal path. `select`, because an
//!    interrupted `select` restarts through -ERESTARTNOHAND: a timed
//!    futex, poll or nanosleep would replace the thread's restart block,
//!    that of the system call the thread was stopped in;
//! 4. if nobody did (the tool was killed, or is very slow), fills the
//!    frame's `uc_stack` and `uc_sigmask` with the thread's current ones
//!    (`rt_sigreturn` applies both) and executes `rt_sigreturn`, which
//!    restores every register from the frame: the thread continues where it
//!    was stopped, re-issuing an interrupted system call.
//!
//! No Rust code runs here and nothing is touched but the frame, the done
//! word and the red zone below `rsp` (scratch for the system calls): `rsp`
//! stays at the ucontext until `rt_sigreturn`.

#[allow(unused_imports)]
use crate::prelude::*;

use ulp_abi::frame;

core::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl __ulp_resume",
    ".hidden __ulp_resume",
    ".type __ulp_resume,@function",
    "__ulp_resume:",
    // The return value first, the cookie last (the tool reads the pair).
    "mov {done_ptr}(%rsp), %rdx",
    "mov %rax, 8(%rdx)",
    // Whether the notice (step 2) can be sent: r9 = NOTICE_FLAG then,
    // else 0. Scratch in the red zone below rsp.
    "xor %r9d, %r9d",
    // rt_sigprocmask(SIG_BLOCK, NULL, -24(%rsp), 8)
    "xor %edi, %edi",
    "xor %esi, %esi",
    "lea -24(%rsp), %rdx",
    "mov $8, %r10d",
    "mov $14, %eax",
    "syscall",
    "test %rax, %rax",
    "jnz 4f",
    "btq ${urg_bit}, -24(%rsp)",
    "jc 4f",
    // rt_sigaction(SIGURG, NULL, -64(%rsp), 8): the handler comes first.
    "mov ${urg}, %edi",
    "xor %esi, %esi",
    "lea -64(%rsp), %rdx",
    "mov $8, %r10d",
    "mov $13, %eax",
    "syscall",
    "test %rax, %rax",
    "jnz 4f",
    // SIG_DFL (0) or SIG_IGN (1) only.
    "cmpq $1, -64(%rsp)",
    "ja 4f",
    "mov $1, %r9d",
    "shl $63, %r9",
    "4:",
    "mov {cookie}(%rsp), %rcx",
    "or %r9, %rcx",
    "mov {done_ptr}(%rsp), %rdx",
    "mov %rcx, (%rdx)",
    "test %r9, %r9",
    "jz 3f",
    // rt_tgsigqueueinfo(getpid(), gettid(), SIGURG, -128(%rsp)), the
    // siginfo saying SI_QUEUE and carrying the call's cookie: the tool
    // knows its own notice from any other SIGURG by them.
    "mov $39, %eax",
    "syscall",
    "mov %rax, %r8",
    "mov $186, %eax",
    "syscall",
    "mov %rax, %rsi",
    "mov %r8, %rdi",
    "movl ${urg}, -128(%rsp)",
    "movl $0, -124(%rsp)",
    "movl ${si_queue}, -120(%rsp)",
    "movl $0, -116(%rsp)",
    "movl %edi, -112(%rsp)",
    "movl $0, -108(%rsp)",
    "mov {cookie}(%rsp), %rcx",
    "mov %rcx, -104(%rsp)",
    "mov ${urg}, %edx",
    "lea -128(%rsp), %r10",
    "mov $297, %eax",
    "syscall",
    "3:",
    // Wait for the tool, asleep: select(0, NULL, NULL, NULL, &timeout),
    // the timeout (µs, from the frame) built in the red zone below rsp.
    // select is interrupted with -ERESTARTNOHAND and never touches the
    // thread's restart block (a timed futex, poll or nanosleep would
    // replace that of the system call the thread was stopped in).
    "mov {wait_us}(%rsp), %rax",
    "test %rax, %rax",
    "jz 2f",
    "xor %edx, %edx",
    "mov $1000000, %ecx",
    "div %rcx",
    "mov %rax, -16(%rsp)",
    "mov %rdx, -8(%rsp)",
    "xor %edi, %edi",
    "xor %esi, %esi",
    "xor %edx, %edx",
    "xor %r10d, %r10d",
    "lea -16(%rsp), %r8",
    "mov $23, %eax",
    "syscall",
    "2:",
    // sigaltstack(NULL, &uc->uc_stack)
    "xor %edi, %edi",
    "lea {uc_stack}(%rsp), %rsi",
    "mov $131, %eax",
    "syscall",
    // rt_sigprocmask(SIG_BLOCK, NULL, &uc->uc_sigmask, 8)
    "xor %edi, %edi",
    "xor %esi, %esi",
    "lea {uc_sigmask}(%rsp), %rdx",
    "mov $8, %r10d",
    "mov $14, %eax",
    "syscall",
    // rt_sigreturn: frame = rsp - 8
    "mov $15, %eax",
    "syscall",
    "ud2",
    ".globl __ulp_resume_end",
    ".hidden __ulp_resume_end",
    "__ulp_resume_end:",
    ".size __ulp_resume, __ulp_resume_end - __ulp_resume",
    done_ptr = const frame::DONE_PTR,
    cookie = const frame::COOKIE,
    wait_us = const frame::WAIT_US,
    uc_stack = const frame::UC_STACK,
    uc_sigmask = const frame::UC_SIGMASK,
    urg = const frame::NOTICE_SIGNAL,
    urg_bit = const frame::NOTICE_SIGNAL - 1,
    si_queue = const -1i32,
    options(att_syntax)
);

extern "C" {
    fn __ulp_resume();
    fn __ulp_resume_end();
}

/// The routine's first byte and the byte after it.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub fn range() -> (u64, u64) {
    (
        __ulp_resume as *const () as usize as u64,
        __ulp_resume_end as *const () as usize as u64,
    )
}

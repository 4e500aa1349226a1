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
//!    the done word named by the frame (`Interface::call_done`): the tool,
//!    which polls that word, now knows the call is over;
//! 2. waits there, asleep in `select` for as long as the frame says
//!    (about 50 ms), for the tool to stop the thread and write its
//!    registers back itself, the normal path. `select`, because an
//!    interrupted `select` restarts through -ERESTARTNOHAND: a timed
//!    futex, poll or nanosleep would replace the thread's restart block,
//!    that of the system call the thread was stopped in;
//! 3. if nobody did (the tool was killed, or is very slow), fills the
//!    frame's `uc_stack` and `uc_sigmask` with the thread's current ones
//!    (`rt_sigreturn` applies both) and executes `rt_sigreturn`, which
//!    restores every register from the frame: the thread continues where it
//!    was stopped, re-issuing an interrupted system call.
//!
//! No Rust code runs here and nothing is touched but the frame and the done
//! word: `rsp` stays at the ucontext until `rt_sigreturn`.

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
    "mov {done_ptr}(%rsp), %rdx",
    "mov %rax, 8(%rdx)",
    "mov {cookie}(%rsp), %rcx",
    "mov %rcx, (%rdx)",
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

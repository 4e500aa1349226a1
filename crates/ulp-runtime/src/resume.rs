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
//! 2. waits there (spins: the frame says how many `pause` instructions,
//!    about 50 ms) for the tool to stop the thread and write its registers
//!    back itself, the normal path. Not a timed system call: the tool's
//!    interrupt would leave that call's restart block in place of the one
//!    of the system call the thread was stopped in;
//! 3. if nobody did (the tool was killed, or is very slow), fills the
//!    frame's `uc_stack` and `uc_sigmask` with the thread's current ones
//!    (`rt_sigreturn` applies both) and executes `rt_sigreturn`, which
//!    restores every register from the frame: the thread continues where it
//!    was stopped, re-issuing an interrupted system call.
//!
//! No Rust code runs here and nothing is touched but the frame and the done
//! word: `rsp` stays at the ucontext until `rt_sigreturn`.

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
    // Wait for the tool.
    "mov {spins}(%rsp), %rcx",
    "test %rcx, %rcx",
    "jz 2f",
    "1:",
    "pause",
    "sub $1, %rcx",
    "jnz 1b",
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
    spins = const frame::SPINS,
    uc_stack = const frame::UC_STACK,
    uc_sigmask = const frame::UC_SIGMASK,
    options(att_syntax)
);

extern "C" {
    fn __ulp_resume();
    fn __ulp_resume_end();
}

/// The routine's first byte and the byte after it.
pub fn range() -> (u64, u64) {
    (
        __ulp_resume as *const () as usize as u64,
        __ulp_resume_end as *const () as usize as u64,
    )
}

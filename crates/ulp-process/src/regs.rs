//! Register state of a stopped thread.

use std::fmt;

/// General registers of a stopped thread (a copy of the kernel's
/// `user_regs_struct`, as PTRACE_GETREGS returns it).
#[derive(Clone, Copy)]
pub struct Regs(pub(crate) libc::user_regs_struct);

impl Regs {
    pub fn rip(&self) -> u64 {
        self.0.rip
    }
    pub fn rsp(&self) -> u64 {
        self.0.rsp
    }
    pub fn rax(&self) -> u64 {
        self.0.rax
    }
    /// The system call number when the thread is stopped inside (or on the
    /// way out of) a system call, else -1.
    pub fn orig_rax(&self) -> i64 {
        self.0.orig_rax as i64
    }
    pub fn rdi(&self) -> u64 {
        self.0.rdi
    }
    pub fn rsi(&self) -> u64 {
        self.0.rsi
    }
    pub fn rdx(&self) -> u64 {
        self.0.rdx
    }
    pub fn rbp(&self) -> u64 {
        self.0.rbp
    }
    /// The thread pointer (TLS base).
    pub fn fs_base(&self) -> u64 {
        self.0.fs_base
    }
    /// The whole register block, for callers that need another field.
    pub fn raw(&self) -> &libc::user_regs_struct {
        &self.0
    }
}

impl fmt::Debug for Regs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Regs")
            .field("rip", &format_args!("{:#x}", self.0.rip))
            .field("rsp", &format_args!("{:#x}", self.0.rsp))
            .field("rax", &format_args!("{:#x}", self.0.rax))
            .field("orig_rax", &(self.0.orig_rax as i64))
            .field("fs_base", &format_args!("{:#x}", self.0.fs_base))
            .finish_non_exhaustive()
    }
}

//! System calls the kernel restarts through the thread's restart block.
//!
//! `nanosleep`, `clock_nanosleep`, `poll` and timed `futex` waits that are
//! interrupted (by a stop, ptrace included) return `-ERESTART_RESTARTBLOCK`
//! after saving what is left of the wait in the thread's restart block; the
//! kernel then resumes the thread with `restart_syscall`, which continues
//! from that block. Once restarted, a thread stopped again inside the wait
//! shows `orig_rax == restart_syscall`: the original call's number is gone
//! from the registers (its arguments are still there).
//!
//! `rt_sigreturn` resets the restart block ("any pending restarted system
//! call returns -EINTR"). A remote call that returns by itself through an
//! rt_sigframe (see the `frame` module) must therefore re-issue the
//! *original* call, never `restart_syscall`, which would fail with EINTR in
//! a program that never expects it. This module recovers the original
//! number from the instructions that issued the call: the C library's
//! wrappers load it into `eax` just before the `syscall` instruction.

/// `restart_syscall` on x86-64.
pub const NR_RESTART_SYSCALL: i64 = 219;

/// The system calls that leave a restart block (x86-64 numbers): poll,
/// nanosleep, futex (timed waits), clock_nanosleep.
const USES_RESTART_BLOCK: &[u32] = &[7, 35, 202, 230];

/// How many bytes before the thread's `rip` [`issued_call`] looks at.
pub(crate) const CODE_BEFORE: usize = 11;

/// The system call that the instructions ending at the thread's `rip`
/// issued, when they are one of the C library's two wrapper shapes:
/// `mov $nr, %eax; syscall`, or `mov $nr, %eax; xor $imm8, %sil; syscall`
/// (the futex wrappers, which flip the private flag last). Only calls that
/// use the restart block are recognised: anything else is `None`.
pub(crate) fn issued_call(code: &[u8; CODE_BEFORE]) -> Option<i64> {
    const SYSCALL: [u8; 2] = [0x0f, 0x05];
    const MOV_EAX: u8 = 0xb8;
    const XOR_SIL: [u8; 3] = [0x40, 0x80, 0xf6];
    let imm = |at: usize| u32::from_le_bytes(code[at..at + 4].try_into().unwrap());
    if code[9..] != SYSCALL {
        return None;
    }
    let nr = if code[4] == MOV_EAX {
        imm(5)
    } else if code[0] == MOV_EAX && code[5..8] == XOR_SIL {
        imm(1)
    } else {
        return None;
    };
    USES_RESTART_BLOCK.contains(&nr).then_some(i64::from(nr))
}

/// Whether a thread with these registers sits in `restart_syscall` (still
/// to be restarted or not).
pub(crate) fn in_restarted_call(regs: &libc::user_regs_struct) -> bool {
    regs.orig_rax as i64 == NR_RESTART_SYSCALL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> [u8; CODE_BEFORE] {
        let mut c = [0x90u8; CODE_BEFORE];
        c[CODE_BEFORE - bytes.len()..].copy_from_slice(bytes);
        c
    }

    #[test]
    fn wrapper_shapes() {
        // glibc's clock_nanosleep: mov $0xe6,%eax; syscall
        assert_eq!(
            issued_call(&code(&[0xb8, 0xe6, 0, 0, 0, 0x0f, 0x05])),
            Some(230)
        );
        // its futex waits: mov $0xca,%eax; xor $0x80,%sil; syscall
        assert_eq!(
            issued_call(&code(&[
                0xb8, 0xca, 0, 0, 0, 0x40, 0x80, 0xf6, 0x80, 0x0f, 0x05
            ])),
            Some(202)
        );
        // poll
        assert_eq!(issued_call(&code(&[0xb8, 7, 0, 0, 0, 0x0f, 0x05])), Some(7));
    }

    #[test]
    fn anything_else_is_unknown() {
        // read: no restart block.
        assert_eq!(issued_call(&code(&[0xb8, 0, 0, 0, 0, 0x0f, 0x05])), None);
        // mov %r8d,%eax; syscall: the number is not in the code.
        assert_eq!(issued_call(&code(&[0x44, 0x89, 0xc0, 0x0f, 0x05])), None);
        // not after a syscall instruction at all
        assert_eq!(issued_call(&code(&[0xb8, 0xe6, 0, 0, 0, 0x90, 0x90])), None);
    }
}

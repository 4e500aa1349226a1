//! The frame that lets a remote call return to the thread's own code by
//! itself, with no tracer: an x86-64 `rt_sigframe` holding the thread's
//! saved state, consumed by `rt_sigreturn` in a resume routine that lives in
//! the target.
//!
//! Layout, from low to high addresses (`uc` is 16-byte aligned, below the
//! 128-byte red zone of the interrupted code):
//!
//! ```text
//! uc - 8          return address of the call: the resume routine
//! uc              struct ucontext (304 bytes): uc_flags, uc_link,
//!                 uc_stack, uc_mcontext (struct sigcontext), uc_sigmask
//! uc + 304        scratch (the rt_sigframe's siginfo area, 128 bytes):
//!                   +0 cookie, +8 address of the 16-byte done word,
//!                   +16 how long (µs) to wait for the tool
//! fpstate         64-byte aligned copy of the NT_X86_XSTATE area with
//!                 FP_XSTATE_MAGIC1 software bytes, FP_XSTATE_MAGIC2 after
//!                 `xstate_size` bytes
//! ```
//!
//! The resume routine, entered by the callee's `ret` (so `rsp == uc`, which
//! is where `rt_sigreturn` looks for `frame + 8`), must: store `rax` at
//! `done + 8`, then the cookie at `done`; wait asleep (`select` with that
//! timeout, about [`WAIT`]) for the tool to stop it there; then fill
//! `uc_stack`
//! with `sigaltstack(NULL, uc + 16)` and `uc_sigmask` with
//! `rt_sigprocmask(SIG_BLOCK, NULL, uc + 296, 8)` (rt_sigreturn re-applies
//! both, so they must be the thread's current ones) and call
//! `rt_sigreturn`, keeping `rsp == uc` throughout.
//!
//! The wait must not be a system call that can be restarted through the
//! thread's restart block (a timed futex or sleep): the tool interrupts the
//! thread there, and such a call would replace the restart block of the
//! system call the thread was stopped in (nanosleep, poll...), which the
//! kernel then runs instead when the tool writes the registers back. A
//! spin in user mode leaves it alone.
//!
//! The general registers in the frame have the kernel's system call restart
//! rule applied already (rt_sigreturn sets `orig_rax = -1`, so the kernel
//! would not apply it any more): a thread stopped in a restartable call
//! re-issues it. -ERESTART_RESTARTBLOCK re-issues the original call too (the
//! sigreturn resets the restart block): a relative sleep restarts whole,
//! longer, never shorter. A thread already in `restart_syscall` re-issues
//! the call being restarted, whose number the caller puts in `orig_rax`
//! (see the `restart` module).

/// `sizeof(struct ucontext)` on x86-64 (kernel layout).
pub const UC_SIZE: u64 = 304;
/// Offset of `uc_stack` in the ucontext.
pub const UC_STACK: u64 = 16;
/// Offset of `uc_mcontext` (struct sigcontext) in the ucontext.
pub const UC_MCONTEXT: u64 = 40;
/// Offset of `uc_sigmask` in the ucontext.
pub const UC_SIGMASK: u64 = 296;
/// Offset, from `uc`, of the cookie word of the scratch area.
pub const COOKIE: u64 = UC_SIZE;
/// Offset, from `uc`, of the address of the done word.
pub const DONE_PTR: u64 = UC_SIZE + 8;
/// Offset, from `uc`, of how long (µs) the routine waits for the tool.
pub const WAIT_US: u64 = UC_SIZE + 16;
/// The signal the resume routine sends its own thread once the call is
/// over, when the thread does not block it and the process leaves it to
/// its default action (ignore) or ignores it: its signal-delivery-stop
/// wakes the tracer (no polling of the done word), which drops it.
pub const NOTICE_SIGNAL: i32 = libc::SIGURG;
/// Set by the resume routine in the done word's cookie when its notice
/// follows (cookies never have it).
pub const NOTICE_FLAG: u64 = 1 << 63;
/// About how long the resume routine waits for the tool.
pub const WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// The scratch area: the rt_sigframe's siginfo, which rt_sigreturn does
/// not read (but checks is addressable).
const SCRATCH_SIZE: u64 = 128;

const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of the software-reserved bytes in the FXSAVE area.
const SW_RESERVED: usize = 464;
/// Offset of XSTATE_BV in the XSAVE header.
const XSTATE_BV: usize = 512;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// A routine in the target through which remote calls return by
/// themselves (see the module documentation for what it must do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReturnPath {
    /// First byte of the routine (the return address of calls).
    pub routine: u64,
    /// The byte after its last instruction.
    pub routine_end: u64,
    /// A writable, 8-byte aligned 16-byte word of the target: the routine
    /// stores the call's return value in its second half, then the cookie
    /// in its first.
    pub done: u64,
}

/// A frame ready to be written at `addr`.
pub(crate) struct Frame {
    /// Lowest address: the return-address slot (`rsp` at the callee's entry).
    pub addr: u64,
    /// The ucontext (`addr + 8`).
    pub uc: u64,
    /// Where the copy of [`Extra::data`] is (0 without data).
    pub data: u64,
    pub bytes: Vec<u8>,
}

/// What a frame holds beyond the thread's state, for a call that returns
/// through a bare `rt_sigreturn` (no resume routine to fill the frame in).
#[derive(Default)]
pub(crate) struct Extra<'a> {
    /// The thread's signal mask, written into `uc_sigmask`, and an
    /// `uc_stack` that `rt_sigreturn` refuses (flags 3 are neither 0,
    /// SS_ONSTACK nor SS_DISABLE; the kernel ignores a refused alternate
    /// stack there), so the thread keeps its own alternate stack.
    pub sigmask: Option<u64>,
    /// Bytes copied above the frame (below the red zone), e.g. a string
    /// argument of the call.
    pub data: &'a [u8],
}

/// `uc_stack.ss_flags` that `rt_sigreturn` ignores (see [`Extra::sigmask`]).
const SS_FLAGS_REFUSED: u64 = 3;

fn put(buf: &mut [u8], at: u64, v: u64) {
    buf[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// Whether the kernel would restart the system call the thread is stopped
/// in (`orig_rax >= 0` and an -ERESTART* result).
pub(crate) fn restarts(regs: &libc::user_regs_struct) -> bool {
    regs.orig_rax as i64 >= 0
        && matches!(
            -(regs.rax as i64),
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
        )
}

/// The registers the thread resumes with when rt_sigreturn restores
/// `regs` (the restart rule applied, see the module documentation).
pub(crate) fn resumed_regs(regs: &libc::user_regs_struct) -> libc::user_regs_struct {
    let mut r = *regs;
    if restarts(regs) {
        r.rax = regs.orig_rax;
        r.rip = regs.rip.wrapping_sub(2);
    }
    r.orig_rax = u64::MAX;
    r
}

/// Builds the frame for a call on a thread whose state is `regs`/`xstate`.
/// `wait_us`: how long the routine waits (asleep) for the tool before
/// returning by itself.
pub(crate) fn build(
    regs: &libc::user_regs_struct,
    xstate: &[u8],
    path: &ReturnPath,
    cookie: u64,
    wait_us: u64,
) -> Frame {
    build_with(regs, xstate, path, cookie, wait_us, &Extra::default())
}

/// [`build`] with [`Extra`] contents.
pub(crate) fn build_with(
    regs: &libc::user_regs_struct,
    xstate: &[u8],
    path: &ReturnPath,
    cookie: u64,
    wait_us: u64,
    extra: &Extra<'_>,
) -> Frame {
    let below_red_zone = regs.rsp.wrapping_sub(128);
    let data = if extra.data.is_empty() {
        0
    } else {
        below_red_zone.wrapping_sub(extra.data.len() as u64) & !15
    };
    let top = if data == 0 { below_red_zone } else { data };
    // The XSAVE copy, and how much of it the kernel's sigreturn reads.
    let mut xs = xstate.to_vec();
    let mut xstate_size = xs.len();
    if xs.len() >= XSTATE_BV + 64 {
        let sw = &xs[SW_RESERVED..SW_RESERVED + 48];
        let magic1 = u32::from_le_bytes(sw[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(sw[16..20].try_into().unwrap()) as usize;
        if magic1 == FP_XSTATE_MAGIC1 && size >= XSTATE_BV + 64 && size <= xs.len() {
            xstate_size = size;
        } else {
            let bv = u64::from_le_bytes(xs[XSTATE_BV..XSTATE_BV + 8].try_into().unwrap());
            let len = xs.len();
            let sw = &mut xs[SW_RESERVED..SW_RESERVED + 48];
            sw.fill(0);
            sw[0..4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
            sw[4..8].copy_from_slice(&((len + 4) as u32).to_le_bytes());
            sw[8..16].copy_from_slice(&bv.to_le_bytes());
            sw[16..20].copy_from_slice(&(xstate_size as u32).to_le_bytes());
        }
    }
    let xs_len = (xstate_size.max(xs.len()) as u64 + 4 + 63) & !63;
    let fpstate = top.wrapping_sub(xs_len) & !63;
    let uc = fpstate.wrapping_sub(UC_SIZE + SCRATCH_SIZE) & !15;
    let addr = uc.wrapping_sub(8);
    let end = if data == 0 {
        fpstate + xs_len
    } else {
        data + extra.data.len() as u64
    };
    let mut b = vec![0u8; (end - addr) as usize];
    let at = |a: u64| a - addr;

    put(&mut b, 0, path.routine);
    let u = at(uc);
    put(
        &mut b,
        u,
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
    );
    // uc_stack: filled by the routine. uc_stack.ss_flags = SS_DISABLE until
    // then does not matter: the routine always overwrites it.
    let r = resumed_regs(regs);
    let mc = u + UC_MCONTEXT;
    for (k, v) in [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ]
    .into_iter()
    .enumerate()
    {
        put(&mut b, mc + 8 * k as u64, v);
    }
    // cs, gs, fs, ss (16 bits each).
    let seg = (r.cs & 0xffff) | (r.ss & 0xffff) << 48;
    put(&mut b, mc + 144, seg);
    put(&mut b, mc + 184, fpstate);
    // uc_stack and uc_sigmask: filled by the routine, or now.
    if let Some(mask) = extra.sigmask {
        put(&mut b, u + UC_STACK + 8, SS_FLAGS_REFUSED);
        put(&mut b, u + UC_SIGMASK, mask);
    }
    put(&mut b, u + COOKIE, cookie);
    put(&mut b, u + DONE_PTR, path.done);
    put(&mut b, u + WAIT_US, wait_us);
    let f = at(fpstate) as usize;
    b[f..f + xs.len()].copy_from_slice(&xs);
    b[f + xstate_size..f + xstate_size + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    if data != 0 {
        let d = at(data) as usize;
        b[d..d + extra.data.len()].copy_from_slice(extra.data);
    }
    Frame {
        addr,
        uc,
        data,
        bytes: b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> libc::user_regs_struct {
        // SAFETY: plain integers.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.rsp = 0x7fff_0000_1238;
        r.rip = 0x40_1002;
        r.cs = 0x33;
        r.ss = 0x2b;
        r
    }

    #[test]
    fn restart_rule() {
        let mut r = regs();
        r.orig_rax = 35;
        r.rax = (-516i64) as u64;
        let s = resumed_regs(&r);
        assert_eq!((s.rax, s.rip, s.orig_rax), (35, 0x40_1000, u64::MAX));
        r.rax = (-4i64) as u64; // EINTR stays
        assert_eq!(resumed_regs(&r).rip, 0x40_1002);
        r.orig_rax = u64::MAX;
        r.rax = (-512i64) as u64; // not in a system call
        assert_eq!(resumed_regs(&r).rax, (-512i64) as u64);
    }

    #[test]
    fn layout() {
        let mut xs = vec![0u8; 832];
        xs[SW_RESERVED..SW_RESERVED + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        xs[SW_RESERVED + 16..SW_RESERVED + 20].copy_from_slice(&832u32.to_le_bytes());
        let path = ReturnPath {
            routine: 0x1000,
            routine_end: 0x1100,
            done: 0x2000,
        };
        let f = build(&regs(), &xs, &path, 0xabcd, 12345);
        assert_eq!(f.uc % 16, 0);
        assert_eq!(f.addr + 8, f.uc);
        assert!(f.addr + f.bytes.len() as u64 <= regs().rsp - 128);
        let word =
            |a: u64| u64::from_le_bytes(f.bytes[a as usize..a as usize + 8].try_into().unwrap());
        assert_eq!(word(0), 0x1000);
        let fp = word(8 + UC_MCONTEXT + 184);
        assert_eq!(fp % 64, 0);
        let m2 = (fp - f.addr + 832) as usize;
        assert_eq!(
            u32::from_le_bytes(f.bytes[m2..m2 + 4].try_into().unwrap()),
            FP_XSTATE_MAGIC2
        );
        assert_eq!(word(8 + UC_MCONTEXT + 128), 0x40_1002);
        assert_eq!(word(8 + COOKIE), 0xabcd);
        assert_eq!(word(8 + DONE_PTR), 0x2000);
        assert_eq!(word(8 + WAIT_US), 12345);
    }

    #[test]
    fn bare_sigreturn_frame() {
        let xs = vec![0u8; 576];
        let path = ReturnPath {
            routine: 0x1000,
            routine_end: 0x1009,
            done: 0,
        };
        let data = b"/usr/lib/libpulp.so.0\0";
        let extra = Extra {
            sigmask: Some(0x8000_0001),
            data,
        };
        let f = build_with(&regs(), &xs, &path, 0, 0, &extra);
        let end = f.addr + f.bytes.len() as u64;
        assert!(end <= regs().rsp - 128, "the red zone is left alone");
        assert_eq!(f.data % 16, 0);
        assert_eq!(f.data + data.len() as u64, end);
        let off = (f.data - f.addr) as usize;
        assert_eq!(&f.bytes[off..off + data.len()], data);
        let word =
            |a: u64| u64::from_le_bytes(f.bytes[a as usize..a as usize + 8].try_into().unwrap());
        assert_eq!(word(8 + UC_SIGMASK), 0x8000_0001);
        assert_eq!(word(8 + UC_STACK + 8), SS_FLAGS_REFUSED);
        // The XSAVE copy lies below the data.
        let fp = word(8 + UC_MCONTEXT + 184);
        assert!(fp + 576 <= f.data);
    }
}

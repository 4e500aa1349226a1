//! What a panic does in the runtime: it never unwinds (the runtime is
//! `no_std`, built with `panic = "abort"`, and links no unwinder) and never
//! aborts the process. Every way into the runtime's Rust code (the tool's
//! call, the constructor, the `dlopen` hook, the `dl_iterate_phdr`
//! callback) goes through [`guarded`], which records where it was entered
//! (the callee-saved registers, the stack pointer and the return address:
//! [`Frame`]). The panic handler logs the message to the ring, switches
//! live patching off in the process for good (`state::DISABLED_BY_ERROR`:
//! whatever the interrupted operation was doing may be half done) and
//! jumps back to the innermost guard of its thread, which returns `None`.
//!
//! The frames between are abandoned: their destructors do not run (memory
//! they owned leaks) and no lock of theirs may be held. The runtime holds
//! no lock of its own across a guard but BUSY, which the guarded code's
//! callers release; the loader's lock that `dl_iterate_phdr` holds is
//! released because its callback is a guard of its own, so a panic there
//! returns to `dl_iterate_phdr` normally.
//!
//! A thread finds its innermost guard in a small table keyed by thread id
//! (the runtime has no thread-local storage). A thread that finds no free
//! entry runs the code unguarded; the table holds more entries than
//! threads can be inside the runtime at once in practice (one call holds
//! BUSY; only the `dlopen` hook runs outside it).

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

/// Where a guard was entered: rbx, rbp, r12..r15, the stack pointer the
/// guard's caller sees after the call, and its return address; then the
/// next outer guard of the same thread.
#[repr(C)]
pub(crate) struct Frame {
    regs: [u64; 8],
    prev: *mut Frame,
}

/// Saves the caller's registers in `frame`, then calls `f(arg)`; returns
/// 0 when `f` returns, 1 when a panic jumped back ([`resume_at`]).
#[unsafe(naked)]
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
unsafe extern "C" fn guarded_call(
    f: unsafe extern "C" fn(*mut c_void),
    arg: *mut c_void,
    frame: *mut Frame,
) -> u64 {
    core::arch::naked_asm!(
        "mov [rdx], rbx",
        "mov [rdx + 8], rbp",
        "mov [rdx + 16], r12",
        "mov [rdx + 24], r13",
        "mov [rdx + 32], r14",
        "mov [rdx + 40], r15",
        "lea rax, [rsp + 8]",
        "mov [rdx + 48], rax",
        "mov rax, [rsp]",
        "mov [rdx + 56], rax",
        // The stack 16-byte aligned again for the call.
        "push rbp",
        "mov rax, rdi",
        "mov rdi, rsi",
        "call rax",
        "pop rbp",
        "xor eax, eax",
        "ret",
    )
}

/// Returns from the [`guarded_call`] that filled `frame`, with 1.
#[unsafe(naked)]
unsafe extern "C" fn resume_at(frame: *const Frame) -> ! {
    core::arch::naked_asm!(
        "mov rbx, [rdi]",
        "mov rbp, [rdi + 8]",
        "mov r12, [rdi + 16]",
        "mov r13, [rdi + 24]",
        "mov r14, [rdi + 32]",
        "mov r15, [rdi + 40]",
        "mov rsp, [rdi + 48]",
        "mov eax, 1",
        "jmp qword ptr [rdi + 56]",
    )
}

struct Slot {
    tid: AtomicI32,
    top: AtomicPtr<Frame>,
}

const SLOTS: usize = 64;

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    tid: AtomicI32::new(0),
    top: AtomicPtr::new(core::ptr::null_mut()),
};

/// Each thread inside a guard: its id and its innermost frame.
static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
fn tid() -> i32 {
    crate::sys::gettid()
}

/// This thread's slot, taken if it has none.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
fn slot_of(tid: i32) -> Option<&'static Slot> {
    if let Some(s) = TABLE.iter().find(|s| s.tid.load(Ordering::Acquire) == tid) {
        return Some(s);
    }
    TABLE.iter().find(|s| {
        s.tid
            .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// The closure and its result, for the trampoline.
struct Call<F, R> {
    f: Option<F>,
    out: Option<R>,
}

#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
unsafe extern "C" fn trampoline<F: FnOnce() -> R, R>(arg: *mut c_void) {
    // SAFETY: `arg` is the `Call` that `guarded` passes, alive for the
    // whole call.
    let call = &mut *arg.cast::<Call<F, R>>();
    if let Some(f) = call.f.take() {
        call.out = Some(f());
    }
}

/// Whether `frame` belongs to a caller of the code running now: its saved
/// stack pointer lies above ours on this stack (stacks grow down), within
/// a stack's reach. A frame left by a thread that died inside a guard
/// (cancelled) whose id another thread now has is on another stack and
/// fails this.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
fn is_ancestor(frame: *const Frame) -> bool {
    let here = 0u8;
    let sp = core::ptr::addr_of!(here) as u64;
    // SAFETY: frames in the table were written by `guarded_call` before
    // being published, and are read here only for their stack pointer.
    let saved = unsafe { (*frame).regs[6] };
    saved > sp && saved - sp < 1 << 30
}

/// Runs `f`; `None` when it panicked (module comment).
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    let me = tid();
    let Some(slot) = slot_of(me) else {
        return Some(f());
    };
    let mut outer = slot.top.load(Ordering::Relaxed);
    if !outer.is_null() && !is_ancestor(outer) {
        outer = core::ptr::null_mut();
    }
    let frame = UnsafeCell::new(Frame {
        regs: [0; 8],
        prev: outer,
    });
    slot.top.store(frame.get(), Ordering::Release);
    let mut call = Call {
        f: Some(f),
        out: None,
    };
    // SAFETY: the trampoline matches the closure's type; `call` and
    // `frame` outlive the call.
    let rc = unsafe {
        guarded_call(
            trampoline_of(&call),
            (&mut call as *mut Call<_, R>).cast(),
            frame.get(),
        )
    };
    // SAFETY: our frame, innermost again (a panic returns to the
    // innermost guard, ours, after every inner one was left).
    let prev = unsafe { (*frame.get()).prev };
    slot.top.store(prev, Ordering::Release);
    if prev.is_null() {
        slot.tid.store(0, Ordering::Release);
    }
    if rc == 0 {
        call.out
    } else {
        None
    }
}

#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
fn trampoline_of<F: FnOnce() -> R, R>(_: &Call<F, R>) -> unsafe extern "C" fn(*mut c_void) {
    trampoline::<F, R>
}

/// The panic handler's way out: to this thread's innermost guard, if any.
pub(crate) fn leave() -> Option<core::convert::Infallible> {
    let me = tid();
    let slot = TABLE.iter().find(|s| s.tid.load(Ordering::Acquire) == me)?;
    let top = slot.top.load(Ordering::Acquire);
    if top.is_null() || !is_ancestor(top) {
        return None;
    }
    // SAFETY: the frame of a guard of this thread that has not returned.
    unsafe { resume_at(top) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_returns_what_its_code_returns_and_nests() {
        assert_eq!(guarded(|| 5), Some(5));
        assert_eq!(
            guarded(|| guarded(|| "in").map(|s| (s, 1))),
            Some(Some(("in", 1)))
        );
        // This thread's slot is free again (the test harness runs other
        // tests, which may hold theirs, on other threads).
        let me = tid();
        assert!(TABLE.iter().all(|s| s.tid.load(Ordering::Relaxed) != me));
    }

    #[test]
    fn leaving_returns_to_the_innermost_guard() {
        let mut after = false;
        let outer = guarded(|| {
            let inner: Option<u32> = guarded(|| {
                leave();
                unreachable!("leave returned inside a guard");
            });
            after = true;
            inner
        });
        assert_eq!(outer, Some(None));
        assert!(after);
        assert!(leave().is_none(), "no guard outside");
    }
}

//! The ulp runtime, built as `libpulp.so.0` and preloaded into processes
//! (`LD_PRELOAD`) so that the `ulp` tool can live-patch them.
//!
//! It exports three symbols. Two are described in `ulp_abi`: the block
//! `__ulp_interface` (request, result, registry of applied patches, message
//! ring) and the function `__ulp_entry`, which the tool runs on one thread
//! of the process while the other threads keep running. The call returns
//! through the resume routine (`resume.rs`, published in the block), which
//! brings the thread back to its own code by itself if the tool is gone. The runtime loads
//! containers, resolves their functions and references, keeps the registry
//! and answers with the code writes the tool then makes itself, with every
//! thread stopped. The third is `dlopen` (`dlopen.rs`), for the patch
//! store (`stored.rs`): when the store exists at start, the runtime applies
//! its records itself, before `main` and after each `dlopen`; those are
//! the only code writes the runtime makes.
//!
//! Rules for everything in this crate, since it runs inside other people's
//! processes:
//!
//! * No output: nothing is ever printed to stdout or stderr (the panic hook
//!   is replaced by one that logs to the ring). Messages go to the ring.
//! * No panic crosses the FFI boundary: `__ulp_entry`, the constructor and
//!   the `dl_iterate_phdr` callback each catch unwinding and turn it into a
//!   result code (the workspace builds with `panic = "unwind"` for this).
//! * No threads, no signal handlers, nothing on the host's hot paths. One
//!   libc function is interposed, `dlopen`, and while there is no patch
//!   store it is a jump to the C library's. The constructor only reads
//!   four environment variables (one pass over the `envp` it is given;
//!   the opt-outs look up names only when one is set), logs a line and
//!   looks for the patch store (one `stat`). What a start runs is kept in
//!   one page of code (`start`), and the runtime imports one function,
//!   `dlsym`: the loader's work for it is its relocations and one lookup.
//! * Allocation, `dlopen` and other locking libc calls happen only inside
//!   `__ulp_entry`, which the tool runs while every other thread keeps
//!   running, so a lock held by another thread is released in due course.
//!   Nothing here may run while other threads are frozen; if that ever
//!   changes, such code must not allocate nor touch TLS (the runtime's TLS
//!   is dynamic when preloaded and a first touch may allocate).
//! * One call at a time: `BUSY` refuses a concurrent call instead of
//!   sharing the registry.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::format;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use ulp_abi::{code, op, state};

pub mod container;
pub mod dlopen;
mod elf_file;
mod guard;
pub mod interface;
mod lazy;
#[cfg(not(test))]
mod mem;
pub mod objects;
pub mod optout;
pub mod patch;
pub mod plan;
pub mod registry;
pub mod resume;
pub mod rewrite;
pub mod ring;
pub mod site;
mod stored;
pub mod switch;
mod sys;
mod thread;

/// What `std`'s prelude would give every module (the runtime is `no_std`).
mod prelude {
    pub(crate) use alloc::format;
    pub(crate) use alloc::string::{String, ToString};
    pub(crate) use alloc::vec;
    pub(crate) use alloc::vec::Vec;
}

use interface::SharedInterface;

/// The block the tool reads and writes (see `ulp_abi::Interface`), first
/// in the zero-initialised data after the variables a start reads
/// (build.rs): what the constructor writes into it lies in the page the
/// loader has already written.
#[no_mangle]
#[cfg_attr(not(test), link_section = ".bss.ulp_interface")]
#[allow(non_upper_case_globals)]
pub static __ulp_interface: SharedInterface = SharedInterface::new();

/// Set while a call runs (or the runtime applies stored patches).
static BUSY: AtomicBool = AtomicBool::new(false);
/// The thread that holds BUSY (0: none): a `dlopen` made by that very
/// thread inside a call (a container's) does not wait for it.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// BUSY, held: released on drop.
struct Busy;

impl Busy {
    /// BUSY now, or `None` when another call holds it.
    #[cfg_attr(not(test), link_section = ".text.startup.ulp")]
    fn try_take() -> Option<Busy> {
        if BUSY.swap(true, Ordering::Acquire) {
            return None;
        }
        OWNER.store(sys::gettid(), Ordering::Relaxed);
        Some(Busy)
    }
}

impl Drop for Busy {
    #[cfg_attr(not(test), link_section = ".text.startup.ulp")]
    fn drop(&mut self) {
        OWNER.store(0, Ordering::Relaxed);
        BUSY.store(false, Ordering::Release);
    }
}

/// Performs `Interface::req_op` on the request and fills the result area;
/// returns the result code (also stored in `res_code`). The tool runs it
/// with the resume routine (`resume.rs`) as its return address.
#[no_mangle]
pub extern "C" fn __ulp_entry() -> i32 {
    let Some(_busy) = Busy::try_take() else {
        // Another call owns the result area: answer with the code only.
        return code::FAILED;
    };
    match guard::guarded(|| {
        lazy::prepare();
        dispatch()
    }) {
        Some(rc) => rc,
        None => {
            let msg = "internal error in the runtime (see its messages)";
            let _ = guard::guarded(|| interface::set_result(code::FAILED, msg, &[]));
            code::FAILED
        }
    }
}

/// After a successful `dlopen` while the patch store is armed
/// (`dlopen.rs`): applies the stored patches of what it loaded. Waits
/// (yielding, two seconds at most) for a call of another thread to end;
/// inside a call of this thread (its `dlopen` of a container) does
/// nothing.
pub(crate) fn after_dlopen() {
    let _ = guard::guarded(|| {
        let me = sys::gettid();
        if OWNER.load(Ordering::Relaxed) == me {
            return;
        }
        let start = ring::monotonic_ns();
        let busy = loop {
            if let Some(b) = Busy::try_take() {
                break b;
            }
            if ring::monotonic_ns().saturating_sub(start) > 2_000_000_000 {
                ring::log(format_args!(
                    "stored patches not checked after a dlopen: the runtime stayed busy"
                ));
                return;
            }
            sys::sched_yield();
        };
        lazy::prepare();
        // SAFETY: we hold BUSY.
        unsafe { registry::with_registry(|reg| stored::after_dlopen(reg)) };
        drop(busy);
    });
}

fn dispatch() -> i32 {
    let (operation, request) = interface::request();
    plan::per_thread(interface::req_flags() & ulp_abi::req_flag::PER_THREAD != 0);
    let Some(request) = request else {
        let msg = "request length exceeds the request area";
        ring::log(format_args!("call refused: {msg}"));
        interface::set_result(code::BAD_REQUEST, msg, &[]);
        return code::BAD_REQUEST;
    };
    // SAFETY: we hold BUSY.
    let result = unsafe {
        registry::with_registry(|reg| match operation {
            op::APPLY => patch::apply(reg, &request),
            op::REVERT => patch::revert(reg, &request),
            op::UNDO => patch::undo(reg),
            op::REVERT_ALL => patch::revert_all(reg, &request),
            op::REPLACE => patch::replace(reg, &request),
            #[cfg(debug_assertions)]
            op::TEST_PANIC => panic!("the test operation's panic"),
            other => {
                ring::log(format_args!("call refused: unknown operation {other}"));
                Err(patch::Failure {
                    code: code::BAD_REQUEST,
                    msg: format!("unknown operation {other}"),
                })
            }
        })
    };
    // The flag is this call's: the runtime's own writes of stored patches
    // (no other thread runs then) never plan a transition.
    plan::per_thread(false);
    match result {
        Ok(done) => {
            interface::set_result(code::OK, &done.msg, &done.writes);
            code::OK
        }
        Err(f) => {
            interface::set_result(f.code, &f.msg, &[]);
            f.code
        }
    }
}

/// Runs at load time (preload or dlopen): publishes the block with its
/// "loaded" line, then, only when an opt-out variable is set or a patch
/// store exists, checks the opt-outs and applies the store's records
/// (`stored.rs`). glibc passes `.init_array` functions `argc, argv, envp`;
/// the environment is read from `envp` (`sys::scan_env`).
///
/// What a process that has neither pays here is one pass over its
/// environment, one `stat`, and writes to one page the loader has already
/// written (`.bss.ulp_start`, build.rs): the guard's table is not touched
/// then, and every one of these steps is raw reads and writes that cannot
/// panic, outside the guard as they need no guard.
#[cfg_attr(test, allow(dead_code))]
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
extern "C" fn constructor(
    _argc: core::ffi::c_int,
    _argv: *const *const core::ffi::c_char,
    envp: *const *const core::ffi::c_char,
) {
    sys::scan_env(envp);
    interface::publish_header();
    // libpulp's first line, word for word, then which ulp this is.
    interface::ring_start(ring::LOADED_LINE.as_bytes());
    if !sys::env_any() {
        // The usual process: no variable, so the default store or none.
        let Some(dir) = stored::start_dir() else {
            return;
        };
        let _ = guard::guarded(|| start(Some(dir)));
        return;
    }
    let _ = guard::guarded(|| start(None));
}

/// The constructor's work once a variable is set or the store exists
/// (`dir`, else looked for here, after the opt-outs).
#[cfg_attr(test, allow(dead_code))]
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
#[inline(never)]
fn start(dir: Option<&'static core::ffi::CStr>) {
    if let Some(o) = optout::check() {
        interface::set_state(state::DISABLED_BY_USER);
        // libpulp's line: `Matched uid 1000: livepatching disabled
        // by user request.`
        ring::log(format_args!("{o}"));
    }
    let Some(dir) = dir.or_else(stored::start_dir) else {
        return;
    };
    if let Some(_busy) = Busy::try_take() {
        // SAFETY: we hold BUSY.
        unsafe { registry::with_registry(|reg| stored::at_start(reg, dir)) };
    }
}

/// A panic (module `guard`): logged, live patching off for good in this
/// process, and back to the innermost guard of the thread. Without one
/// (cannot happen: every entry is guarded) the process is aborted rather
/// than left running code in an unknown state.
#[cfg(not(test))]
#[panic_handler]
fn on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    ring::log(format_args!(
        "internal error: {}; live patching is off in this process from now on",
        info.message()
    ));
    interface::set_state(state::DISABLED_BY_ERROR);
    guard::leave();
    // SAFETY: no preconditions.
    unsafe { lazy::abort() };
    loop {}
}

/// The C library's allocator (`malloc`, and `posix_memalign` for
/// alignments above its 16 bytes).
#[cfg(not(test))]
mod allocator {
    use core::alloc::{GlobalAlloc, Layout};

    struct Malloc;

    // SAFETY: malloc/free/realloc/posix_memalign honour the layout's size
    // and (up to 16, or by posix_memalign) its alignment.
    unsafe impl GlobalAlloc for Malloc {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            if l.align() <= 16 {
                return crate::lazy::malloc(l.size()).cast();
            }
            let mut p = core::ptr::null_mut();
            if crate::lazy::posix_memalign(&mut p, l.align(), l.size()) != 0 {
                return core::ptr::null_mut();
            }
            p.cast()
        }

        unsafe fn dealloc(&self, p: *mut u8, _: Layout) {
            crate::lazy::free(p.cast());
        }

        unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
            if l.align() <= 16 {
                return crate::lazy::realloc(p.cast(), new_size).cast();
            }
            let n = self.alloc(Layout::from_size_align_unchecked(new_size, l.align()));
            if !n.is_null() {
                core::ptr::copy_nonoverlapping(p, n, l.size().min(new_size));
                self.dealloc(p, l);
            }
            n
        }
    }

    #[global_allocator]
    static MALLOC: Malloc = Malloc;
}

// Code of the core library, built to unwind, names the Rust personality
// routine in its unwind tables; nothing here ever unwinds (panics jump, see
// `guard`), so no frame of ours is ever given to it. Hidden, and answering
// "continue unwinding" to a foreign exception passing through (what a C
// frame does).
#[cfg(not(test))]
core::arch::global_asm!(
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality,@function",
    "rust_eh_personality:",
    "mov eax, 8",
    "ret",
    ".size rust_eh_personality, .-rust_eh_personality",
    // Named by the same code's cleanup paths, which only an unwinding
    // panic reaches: never here. Defined so that the runtime needs no
    // unwinder library (libgcc_s) in the process.
    ".globl _Unwind_Resume",
    ".hidden _Unwind_Resume",
    ".type _Unwind_Resume,@function",
    "_Unwind_Resume:",
    "ud2",
    ".size _Unwind_Resume, .-_Unwind_Resume",
);

/// The constructor's entry in `.init_array` (not in unit-test builds,
/// which keep the test harness's panic output).
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn(
    core::ffi::c_int,
    *const *const core::ffi::c_char,
    *const *const core::ffi::c_char,
) = constructor;

//! The ulp runtime, built as `libpulp.so.0` and preloaded into processes
//! (`LD_PRELOAD`) so that the `ulp` tool can live-patch them.
//!
//! It exports exactly two symbols, described in `ulp_abi`: the block
//! `__ulp_interface` (request, result, registry of applied patches, message
//! ring) and the function `__ulp_entry`, which the tool runs on one thread
//! of the process while the other threads keep running. The call returns
//! through the resume routine (`resume.rs`, published in the block), which
//! brings the thread back to its own code by itself if the tool is gone. The runtime loads
//! containers, resolves their functions and references, keeps the registry
//! and answers with the code writes the tool then makes itself, with every
//! thread stopped. It never writes code.
//!
//! Rules for everything in this crate, since it runs inside other people's
//! processes:
//!
//! * No output: nothing is ever printed to stdout or stderr (the panic hook
//!   is replaced by one that logs to the ring). Messages go to the ring.
//! * No panic crosses the FFI boundary: `__ulp_entry`, the constructor and
//!   the `dl_iterate_phdr` callback each catch unwinding and turn it into a
//!   result code (the workspace builds with `panic = "unwind"` for this).
//! * No threads, no signal handlers, no interposed libc functions: nothing
//!   on the host's hot paths. The constructor only reads three environment
//!   variables (and looks up names only when one is set) and logs a line.
//! * Allocation, `dlopen` and other locking libc calls happen only inside
//!   `__ulp_entry`, which the tool runs while every other thread keeps
//!   running, so a lock held by another thread is released in due course.
//!   Nothing here may run while other threads are frozen; if that ever
//!   changes, such code must not allocate nor touch TLS (the runtime's TLS
//!   is dynamic when preloaded and a first touch may allocate).
//! * One call at a time: `BUSY` refuses a concurrent call instead of
//!   sharing the registry.

use core::sync::atomic::{AtomicBool, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ulp_abi::{code, op, state};

pub mod container;
pub mod interface;
pub mod objects;
pub mod optout;
pub mod patch;
pub mod plan;
pub mod registry;
pub mod resume;
pub mod rewrite;
pub mod ring;
pub mod site;
pub mod switch;

use interface::SharedInterface;

/// The block the tool reads and writes (see `ulp_abi::Interface`).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static __ulp_interface: SharedInterface = SharedInterface::new();

/// Set while a call runs.
static BUSY: AtomicBool = AtomicBool::new(false);

/// Performs `Interface::req_op` on the request and fills the result area;
/// returns the result code (also stored in `res_code`). The tool runs it
/// with the resume routine (`resume.rs`) as its return address.
#[no_mangle]
pub extern "C" fn __ulp_entry() -> i32 {
    if BUSY.swap(true, Ordering::Acquire) {
        // Another call owns the result area: answer with the code only.
        return code::FAILED;
    }
    let rc = match catch_unwind(dispatch) {
        Ok(rc) => rc,
        Err(_) => {
            let msg = "internal error in the runtime (see its messages)";
            let _ = catch_unwind(|| interface::set_result(code::FAILED, msg, &[]));
            code::FAILED
        }
    };
    BUSY.store(false, Ordering::Release);
    rc
}

fn dispatch() -> i32 {
    let (operation, request) = interface::request();
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
            other => {
                ring::log(format_args!("call refused: unknown operation {other}"));
                Err(patch::Failure {
                    code: code::BAD_REQUEST,
                    msg: format!("unknown operation {other}"),
                })
            }
        })
    };
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

/// Runs at load time (preload or dlopen): logs the "loaded" line, replaces
/// the panic hook of this library's copy of std (so nothing is printed) and
/// checks the opt-outs.
#[cfg_attr(test, allow(dead_code))]
extern "C" fn constructor() {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        interface::publish_header();
        // libpulp's first line, word for word, then which ulp this is.
        ring::log_untimed(format_args!(
            "libpulp loaded... (ulp {}, protocol {})",
            env!("CARGO_PKG_VERSION"),
            ulp_abi::PROTOCOL_VERSION
        ));
        std::panic::set_hook(Box::new(|info| {
            ring::log(format_args!("internal error: {info}"));
        }));
        if let Some(o) = optout::check() {
            interface::set_state(state::DISABLED_BY_USER);
            // libpulp's line: `Matched uid 1000: livepatching disabled
            // by user request.`
            ring::log(format_args!("{o}"));
        }
    }));
}

/// The constructor's entry in `.init_array` (not in unit-test builds,
/// which keep the test harness's panic output).
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

//! Everything `ulp` does to another process, and the only crate of the
//! workspace that uses ptrace.
//!
//! * Looking without stopping: [`maps`], [`threads`], [`comm`], [`exe`],
//!   [`all_pids`] read /proc; [`link_map`] reads the dynamic loader's
//!   list of loaded objects from memory; [`read_mem`] and [`write_mem`] use
//!   `process_vm_readv`/`process_vm_writev` (writable data only);
//!   [`Incarnation`] tells whether a process has exited since (a zombie,
//!   every thread exiting, or its pid another process's now); who a
//!   process is and what it sees: [`exists`], [`owner_uid`],
//!   [`credentials`], [`login_uid`], [`environ`], [`root`], [`in_root`]
//!   (a path as the process sees it), [`map_file`]; and what this host
//!   lets a tracer do: [`ptrace_scope`], [`has_capability`]. No other
//!   crate of the workspace reads /proc.
//! * Stopping: [`Stopped`] is a guard over threads of one process that the
//!   calling OS thread has seized (PTRACE_SEIZE, never PTRACE_O_EXITKILL)
//!   and interrupted. While it lives you can read registers, run a function
//!   in the target on one of its threads ([`Stopped::caller`], then
//!   [`Caller::call_returning`], which saves and restores every register,
//!   xstate included, and keeps interrupted system calls restartable), and
//!   read or write code bytes ([`Stopped::peek`],
//!   [`Stopped::poke`], which work on read-only and W^X-locked pages).
//!   [`Stopped::release`] (or, as a safety net, `Drop`) puts back registers,
//!   re-delivers signals that arrived meanwhile, and detaches.
//! * Unwinding: [`Unwinder`] lists the frames of a stopped thread (from its
//!   [`Regs`], as [`StartRegs`]): each frame's code address and the stack
//!   slot its return address is stored in, through signal frames, with the
//!   objects' CFI read by framehop and frame pointers where there is none.
//!
//! Rules the caller must keep: only the OS thread that created a
//! [`Stopped`] may use it (it is not `Send`), and since the kernel detaches
//! a tracer's tracees when that OS thread exits, running the work on a
//! short-lived thread per process bounds how long anything can stay stuck.
//! Never call `std::process::Child::wait` on a traced child.
//!
//! Left out on purpose: what to call and why (`ulp-core`), ELF symbol lookup
//! (`ulp-elf`), any architecture but x86-64, 32-bit (compat) tracees, and
//! injecting code into processes that have not loaded the runtime.
//!
//! A remote call returns to the thread's own code by itself, whenever the
//! tool dies: through a resume routine in the target ([`ReturnPath`],
//! [`Caller::call_returning`]) or glibc's signal restorer
//! ([`Caller::call_sigreturn`]), by an `rt_sigframe` written on its
//! stack. `Caller::call`, which returns to address 0 and relies on
//! the tracer being alive to catch the fault, is test support: it exists
//! only with the feature `fault-injection`, with the test hooks
//! (`ULP_TEST_*`), which no release build has.

mod addr;
mod error;
pub mod frame;
mod ids;
mod linkmap;
mod mem;
mod proc;
mod procfs;
mod regs;
mod restart;
mod stopped;
mod sys;
pub mod unwind;

pub use addr::RemoteAddr;
pub use error::{Error, Tracer};
pub use frame::ReturnPath;
pub use ids::{Pid, Tid};
pub use linkmap::{link_map, LinkMapEntry};
pub use mem::{read_mem, read_pieces, read_scattered, write_mem, write_pieces, write_scattered};
pub use proc::{
    credentials, environ, exists, has_capability, in_root, is_kernel_thread, login_uid, map_file,
    name_and_kind, owner_uid, ptrace_scope, root, Credentials, PtraceScope,
};
pub use procfs::{
    all_pids, comm, exe, forget_files, is_loader_name, maps, parse_maps_line, process_alive,
    read_text, stand_in, thread_ended, thread_runs, thread_state, threads, tracer_of, Incarnation,
    Mapping, MapsField, PerFile,
};
pub use regs::Regs;
pub use restart::NR_RESTART_SYSCALL;
pub use stopped::{Caller, SeizeOptions, Stopped, SIGRETURN_CODE};
pub use sys::block_reports;
pub use unwind::{Frame, FrameKind, Stack, StartRegs, Unwinder};

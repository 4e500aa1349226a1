//! What the `ulp` command does, as a library: applying and reverting live
//! patches in running processes ([`trigger`]), and reading what a process's
//! runtime knows ([`runtime`]: state, applied patches, message log).
//!
//! This crate decides *what* to do; `ulp-process` is the only code that
//! touches another process, `ulp-container`/`ulp-elf` read files, and the
//! `ulp` binary only parses arguments and prints. Nothing here prints.

pub mod objects;
pub mod runtime;
pub mod trigger;

pub use ulp_process::{Pid, Tid};

//! What the `ulp` command does, as a library: applying and reverting live
//! patches in running processes ([`trigger`], its write engine `writes`
//! and the GOT slots of patched functions, [`got`],
//! and [`fleet`]: one trigger over many processes, in parallel), and
//! reading what a process's runtime knows ([`runtime`]: state, applied
//! patches, message log; [`live_patching`]: a process's live-patching
//! state, switched off and on), and choosing the processes and files a
//! command works on ([`select`]), and whether root may load a file another
//! user could change ([`trust`]), and the patch store of `--persist`
//! ([`store`]) and applying its records to processes as they start
//! ([`watch`]), and the redirect method of every
//! function of a file ([`redirect`]). A failure is an [`Error`] (what
//! failed below, or why ulp refuses); a process left unchanged says why
//! with a [`Reason`].
//!
//! This crate decides *what* to do; `ulp-process` is the only code that
//! touches another process, `ulp-container`/`ulp-elf` read files, and the
//! `ulp` binary only parses arguments and prints. Nothing here prints.

mod caller;
pub mod coverage;
pub mod error;
pub mod fleet;
pub mod got;
pub mod inject;
pub mod inventory;
pub mod live_patching;
pub mod objects;
pub mod reason;
pub mod redirect;
pub mod runtime;
pub mod select;
pub mod store;
pub mod transition;
pub mod trigger;
pub mod trust;
pub mod watch;
mod writes;

pub use error::Error;
pub use reason::Reason;
pub use ulp_process::{Pid, Tid};

//! Live-patch containers.
//!
//! A container is an ordinary shared object (the new functions) that carries
//! three non-loaded sections: `.ulp` (how to apply), `.ulp.rev` (how to
//! revert) and `.ulp.comments` (free text with bug labels). [`format`] encodes
//! and decodes those sections and is all the runtime uses; the rest sits
//! behind the default `pack` feature:
//!
//! - `dsc`: the description file parser;
//! - `md4`: the digest libpulp puts in patch ids;
//! - `pack`: `ulp packer`, writing the sections into the container ELF;
//! - `container`: reading a packed container back;
//! - `dump`: `ulp dump`'s text (and its JSON document);
//! - `extract`: `ulp extract`'s JSON description of a target library,
//!   which the packer also accepts as the target.

/// The section formats live in `ulp-abi` (no_std: the runtime reads them).
pub use ulp_abi::format;

#[cfg(feature = "pack")]
pub mod container;
#[cfg(feature = "pack")]
pub mod dsc;
#[cfg(feature = "pack")]
pub mod dump;
#[cfg(feature = "pack")]
pub mod extract;
#[cfg(feature = "pack")]
pub mod md4;
#[cfg(feature = "pack")]
pub mod pack;

#[cfg(all(test, feature = "pack"))]
mod tests;

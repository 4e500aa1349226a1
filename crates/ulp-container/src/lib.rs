//! Live-patch containers.
//!
//! A container is an ordinary shared object (the new functions) that carries
//! three non-loaded sections: `.ulp` (how to apply), `.ulp.rev` (how to
//! revert) and `.ulp.comments` (free text with bug labels). [`format`] encodes
//! and decodes those sections and is all the runtime uses; the rest (the
//! `.dsc` parser, the packer that writes sections into an ELF file, `dump`)
//! sits behind the default `pack` feature.

pub mod format;

//! Reading live-patch targets (x86-64 ELF64 little-endian files): symbols,
//! the GNU build-id, the SONAME, the patchable function entries; and the two
//! in-place rewrites the tool does to ELF files: [`post`] (merging the entry
//! NOPs) and [`replace_sections`] (adding the non-loaded `.ulp*` sections to a
//! container).
//!
//! Everything is parsed from the file's bytes with bounds-checked reads
//! (see `bytes.rs`): no input, however truncated or hostile, makes this
//! crate panic. Structural problems found at [`ElfFile::parse`] (bad header,
//! section or program header table outside the file) are errors; problems
//! inside one optional table found later (a symbol table with a bad string
//! table, a note with a bad length) make that table read as empty, because
//! callers only ever look for specific entries and report their absence.
//!
//! One job a file: `file.rs` reads the headers and tables, `symbols.rs`
//! the symbols, `notes.rs` the build-id (through the note parser shared
//! with the tool's memory reads and the runtime, `ulp_abi::elf`),
//! `patchable.rs` the patchable entries; `post.rs` and `write.rs` rewrite
//! a file, `replace.rs` puts the result in its place.
//!
//! Left out: 32-bit and big-endian files, other machines, relocatable
//! objects' relocations (targets are linked objects).

mod bytes;
mod error;
mod file;
mod notes;
mod patchable;
mod post;
mod replace;
mod symbols;
mod write;

pub use error::{Error, ErrorKind};
pub use file::ElfFile;
pub use post::{post, PostReport};
pub use symbols::{CodeUnavailable, Symbol};
pub use write::replace_sections;

/// Name of the section gcc's `-fpatchable-function-entry` fills.
pub const PATCHABLE_SECTION: &str = "__patchable_function_entries";

/// Number of one-byte NOPs gcc puts before a function's symbol with
/// `-fpatchable-function-entry=16,14`; the section lists `symbol - 14`.
pub const PADDING_BEFORE_ENTRY: u64 = 14;

#[cfg(test)]
mod tests;

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

// ELF constants used here (from the System V gABI and the x86-64 psABI).
pub(crate) const ET_DYN: u16 = 3;
pub(crate) const EM_X86_64: u16 = 62;
pub(crate) const SHT_SYMTAB: u32 = 2;
pub(crate) const SHT_RELA: u32 = 4;
pub(crate) const SHT_DYNAMIC: u32 = 6;
pub(crate) const SHT_NOTE: u32 = 7;
pub(crate) const SHT_NOBITS: u32 = 8;
pub(crate) const SHT_DYNSYM: u32 = 11;
pub(crate) const SHT_GNU_VERDEF: u32 = 0x6fff_fffd;
pub(crate) const SHT_GNU_VERSYM: u32 = 0x6fff_ffff;
pub(crate) const VERSYM_HIDDEN: u16 = 0x8000;
pub(crate) const VERDEF_SIZE: u64 = 20;
pub(crate) const VERDAUX_SIZE: u64 = 8;
pub(crate) const PT_LOAD: u32 = 1;
pub(crate) const PT_DYNAMIC: u32 = 2;
pub(crate) const PT_NOTE: u32 = 4;
pub(crate) const NT_GNU_BUILD_ID: u32 = 3;
pub(crate) const DT_NULL: u64 = 0;
pub(crate) const DT_STRTAB: u64 = 5;
pub(crate) const DT_STRSZ: u64 = 10;
pub(crate) const DT_SONAME: u64 = 14;
pub(crate) const R_X86_64_RELATIVE: u32 = 8;
pub(crate) const STT_OBJECT: u8 = 1;
pub(crate) const STT_FUNC: u8 = 2;
pub(crate) const STT_TLS: u8 = 6;
pub(crate) const STT_GNU_IFUNC: u8 = 10;
pub(crate) const SHN_UNDEF: u16 = 0;
pub(crate) const SHN_LORESERVE: u16 = 0xff00;
pub(crate) const SHF_EXECINSTR: u64 = 0x4;
pub(crate) const SHN_XINDEX: u16 = 0xffff;
pub(crate) const EHDR_SIZE: u64 = 64;
pub(crate) const SHDR_SIZE: u64 = 64;
pub(crate) const PHDR_SIZE: u64 = 56;
pub(crate) const SYM_SIZE: u64 = 24;
pub(crate) const RELA_SIZE: u64 = 24;

#[cfg(test)]
mod tests;

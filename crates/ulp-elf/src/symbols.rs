//! Symbols: the entries of `.symtab` and `.dynsym`, their versions
//! (`.gnu.version`, `.gnu.version_d`), and a function's bytes in the file.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::file::SectionHeader;
use crate::{bytes, ElfFile};
use ulp_abi::elf::{
    SHF_EXECINSTR, SHN_LORESERVE, SHN_UNDEF, SHT_DYNSYM, SHT_GNU_VERDEF, SHT_GNU_VERSYM,
};
use ulp_abi::elf::{
    SHT_NOBITS, SHT_SYMTAB, STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, STT_TLS, SYM_SIZE,
};
use ulp_abi::elf::{VERDAUX_SIZE, VERDEF_SIZE, VERSYM_HIDDEN};

/// A symbol table entry (from `.symtab` or `.dynsym`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub value: u64,
    pub size: u64,
    pub st_info: u8,
    pub st_other: u8,
    pub shndx: u16,
}

impl Symbol {
    /// `STT_*` (low 4 bits of `st_info`).
    pub fn kind(&self) -> u8 {
        self.st_info & 0xf
    }

    /// `STB_*` (high 4 bits of `st_info`).
    pub fn binding(&self) -> u8 {
        self.st_info >> 4
    }

    /// A function (`STT_FUNC`, or `STT_GNU_IFUNC`).
    pub fn is_function(&self) -> bool {
        matches!(self.kind(), STT_FUNC | STT_GNU_IFUNC)
    }

    /// An IFUNC resolver (`STT_GNU_IFUNC`): the dynamic loader calls it and
    /// binds the symbol to the implementation it returns.
    pub fn is_ifunc(&self) -> bool {
        self.kind() == STT_GNU_IFUNC
    }

    /// A thread-local variable; its value is the offset in the TLS block.
    pub fn is_tls(&self) -> bool {
        self.kind() == STT_TLS
    }

    /// A data object.
    pub fn is_object(&self) -> bool {
        self.kind() == STT_OBJECT
    }
}

/// Why a function's bytes cannot be read from the file
/// ([`ElfFile::function_code`]).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeUnavailable {
    /// The symbol belongs to no section (`SHN_ABS`, `SHN_COMMON`, an index
    /// beyond the section table).
    NoSection,
    /// Its section is not executable (no `SHF_EXECINSTR`).
    NotExecutable { section: String },
    /// Its section occupies no space in the file (`SHT_NOBITS`).
    NotInFile { section: String },
    /// `value .. value + size` is not inside its section, or the section's
    /// bytes lie outside the file.
    OutsideSection { section: String },
}

impl fmt::Display for CodeUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeUnavailable::NoSection => f.write_str("the symbol is in no section of the file"),
            CodeUnavailable::NotExecutable { section } => {
                write!(f, "it is in section '{section}', which is not executable")
            }
            CodeUnavailable::NotInFile { section } => write!(
                f,
                "it is in section '{section}', which has no bytes in the file (NOBITS)"
            ),
            CodeUnavailable::OutsideSection { section } => write!(
                f,
                "its address and size reach outside its section '{section}' (or the file)"
            ),
        }
    }
}

impl ElfFile {
    /// Defined symbols (section index not `SHN_UNDEF`, null entry skipped)
    /// of one symbol table section.
    fn table_symbols(&self, table: &SectionHeader) -> Vec<Symbol> {
        let mut out = Vec::new();
        if table.entsize != 0 && table.entsize != SYM_SIZE {
            return out;
        }
        let (Some(data), Some(strings)) = (
            self.section_data(table),
            self.sections
                .get(table.link as usize)
                .and_then(|s| self.section_data(s)),
        ) else {
            return out;
        };
        for i in 1..(data.len() as u64 / SYM_SIZE) {
            let Some(raw) = bytes::slice(data, i * SYM_SIZE, SYM_SIZE) else {
                break;
            };
            let shndx = bytes::u16_at(raw, 6).unwrap_or(SHN_UNDEF);
            if shndx == SHN_UNDEF {
                continue;
            }
            let Some(name) = bytes::u32_at(raw, 0).and_then(|o| bytes::cstr_at(strings, o.into()))
            else {
                continue;
            };
            out.push(Symbol {
                name: String::from_utf8_lossy(name).into_owned(),
                st_info: bytes::u8_at(raw, 4).unwrap_or(0),
                st_other: bytes::u8_at(raw, 5).unwrap_or(0),
                shndx,
                value: bytes::u64_at(raw, 8).unwrap_or(0),
                size: bytes::u64_at(raw, 16).unwrap_or(0),
            });
        }
        out
    }

    fn symbols_of_type(&self, sh_type: u32) -> impl Iterator<Item = Symbol> + '_ {
        self.sections
            .iter()
            .filter(move |s| s.sh_type == sh_type)
            .flat_map(|s| self.table_symbols(s))
    }

    /// Defined symbols of `.symtab`, then of `.dynsym`, without repeating a
    /// (name, value) pair.
    pub fn symbols(&self) -> Vec<Symbol> {
        let mut seen = HashSet::new();
        self.symbols_of_type(SHT_SYMTAB)
            .chain(self.symbols_of_type(SHT_DYNSYM))
            .filter(|s| seen.insert((s.name.clone(), s.value)))
            .collect()
    }

    /// The defined symbol `name`: the first `.symtab` entry, else the first
    /// `.dynsym` entry.
    pub fn symbol(&self, name: &str) -> Option<Symbol> {
        self.symbols_of_type(SHT_SYMTAB)
            .find(|s| s.name == name)
            .or_else(|| self.dynamic_symbol(name))
    }

    /// The defined symbol `name` of `.dynsym` only (what `dlsym` can find).
    pub fn dynamic_symbol(&self, name: &str) -> Option<Symbol> {
        self.symbols_of_type(SHT_DYNSYM).find(|s| s.name == name)
    }

    /// The defined functions (`STT_FUNC` and `STT_GNU_IFUNC`) with a nonzero
    /// size, from `.symtab` when the file has one (it is a superset of
    /// `.dynsym` and holds the static functions), else from `.dynsym`.
    /// In table order; aliases (several names at one address) are all kept.
    pub fn function_symbols(&self) -> Vec<Symbol> {
        let table = if self.sections.iter().any(|s| s.sh_type == SHT_SYMTAB) {
            SHT_SYMTAB
        } else {
            SHT_DYNSYM
        };
        self.symbols_of_type(table)
            .filter(|s| s.is_function() && s.size != 0)
            .collect()
    }

    /// The bytes of function `sym` as the file holds them (`sym.size`
    /// bytes at `sym.value`, read through the symbol's section), or why
    /// there are none: the section is not executable, has no file bytes,
    /// or does not contain the whole function.
    pub fn function_code(&self, sym: &Symbol) -> Result<&[u8], CodeUnavailable> {
        if sym.shndx >= SHN_LORESERVE {
            return Err(CodeUnavailable::NoSection);
        }
        let s = self
            .sections
            .get(usize::from(sym.shndx))
            .ok_or(CodeUnavailable::NoSection)?;
        let section = || s.name.clone();
        if s.flags & SHF_EXECINSTR == 0 {
            return Err(CodeUnavailable::NotExecutable { section: section() });
        }
        let data = self.section_data(s).ok_or_else(|| match s.sh_type {
            SHT_NOBITS => CodeUnavailable::NotInFile { section: section() },
            _ => CodeUnavailable::OutsideSection { section: section() },
        })?;
        sym.value
            .checked_sub(s.addr)
            .and_then(|off| bytes::slice(data, off, sym.size))
            .ok_or_else(|| CodeUnavailable::OutsideSection { section: section() })
    }

    /// The version of each versioned `.dynsym` symbol this file defines,
    /// keyed by (name, value): `@@VERSION` for the default version (what
    /// new links bind to), `@VERSION` for an older one kept for old
    /// binaries (glibc's `memcpy@GLIBC_2.2.5` next to
    /// `memcpy@@GLIBC_2.14`). Unversioned symbols are absent; a file
    /// without `.gnu.version` / `.gnu.version_d` gives an empty map.
    pub fn dynamic_symbol_versions(&self) -> HashMap<(String, u64), String> {
        let mut out = HashMap::new();
        let find = |t| self.sections.iter().find(|s| s.sh_type == t);
        let (Some(dynsym), Some(versym), Some(verdef)) =
            (find(SHT_DYNSYM), find(SHT_GNU_VERSYM), find(SHT_GNU_VERDEF))
        else {
            return out;
        };
        let (Some(syms), Some(vers), Some(defs), Some(names), Some(def_names)) = (
            self.section_data(dynsym),
            self.section_data(versym),
            self.section_data(verdef),
            self.sections
                .get(dynsym.link as usize)
                .and_then(|s| self.section_data(s)),
            self.sections
                .get(verdef.link as usize)
                .and_then(|s| self.section_data(s)),
        ) else {
            return out;
        };
        // Version index -> name, from the verdef chain (each entry's first
        // auxiliary entry names it). At most `info` entries, so a looping
        // chain ends.
        let mut version_names: HashMap<u16, String> = HashMap::new();
        let mut at = 0u64;
        for _ in 0..verdef.info.max(1) {
            let (Some(ndx), Some(aux), Some(next)) = (
                bytes::u16_at(defs, at + 4),
                bytes::u32_at(defs, at + 12),
                bytes::u32_at(defs, at + 16),
            ) else {
                break;
            };
            if let Some(name) = at
                .checked_add(u64::from(aux))
                .and_then(|a| bytes::slice(defs, a, VERDAUX_SIZE))
                .and_then(|a| bytes::u32_at(a, 0))
                .and_then(|o| bytes::cstr_at(def_names, o.into()))
            {
                version_names.insert(ndx, String::from_utf8_lossy(name).into_owned());
            }
            if u64::from(next) < VERDEF_SIZE {
                break;
            }
            at = at.saturating_add(u64::from(next));
        }
        for i in 1..(syms.len() as u64 / SYM_SIZE) {
            let (Some(raw), Some(v)) = (
                bytes::slice(syms, i * SYM_SIZE, SYM_SIZE),
                bytes::u16_at(vers, i * 2),
            ) else {
                break;
            };
            // Index 0 is a local symbol, 1 a global one without a version
            // (the verdef entry with index 1 names the file itself).
            let index = v & !VERSYM_HIDDEN;
            if index <= 1 || bytes::u16_at(raw, 6).unwrap_or(SHN_UNDEF) == SHN_UNDEF {
                continue;
            }
            let Some(version) = version_names.get(&index) else {
                continue;
            };
            let Some(name) = bytes::u32_at(raw, 0).and_then(|o| bytes::cstr_at(names, o.into()))
            else {
                continue;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let at = if v & VERSYM_HIDDEN != 0 { "@" } else { "@@" };
            let value = bytes::u64_at(raw, 8).unwrap_or(0);
            out.entry((name, value))
                .or_insert_with(|| format!("{at}{version}"));
        }
        out
    }
}

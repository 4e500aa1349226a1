//! The little the runtime reads from ELF files on disk, for the patches it
//! applies from the store by itself (`stored.rs`): a container's `.ulp`
//! sections and build-id, and the sizes of a library's functions in its
//! `.symtab` (what the tool otherwise sends with a request). Every offset
//! is checked: a hostile file is `None`, never a fault.

#[allow(unused_imports)]
use crate::prelude::*;

use ulp_abi::elf::{gnu_build_id, ELFCLASS64, ELFDATA2LSB, ELFMAG, SHDR_SIZE, SYM_SIZE};
use ulp_abi::elf::{SHT_NOBITS, SHT_NOTE, SHT_SYMTAB};
use ulp_abi::le::{u16_at, u32_at, u64_at};

/// One section header's fields the runtime uses.
#[derive(Clone, Copy)]
struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    align: u64,
}

pub(crate) struct ElfFile {
    data: Vec<u8>,
    sections: Vec<Section>,
    names: Section,
}

impl ElfFile {
    /// Parses `data` as a 64-bit little-endian ELF file with section
    /// headers.
    pub(crate) fn parse(data: Vec<u8>) -> Option<ElfFile> {
        if data.get(..4)? != ELFMAG || data[4] != ELFCLASS64 || data[5] != ELFDATA2LSB {
            return None;
        }
        let shoff = u64_at(&data, 0x28)?;
        let shentsize = u64::from(u16_at(&data, 0x3a)?);
        let shnum = u64::from(u16_at(&data, 0x3c)?);
        let shstrndx = u64::from(u16_at(&data, 0x3e)?);
        if shentsize < SHDR_SIZE || shnum == 0 || shstrndx >= shnum {
            return None;
        }
        let mut sections = Vec::with_capacity(shnum as usize);
        for i in 0..shnum {
            let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
            sections.push(Section {
                name: u32_at(&data, h)?,
                kind: u32_at(&data, h + 4)?,
                offset: u64_at(&data, h + 24)?,
                size: u64_at(&data, h + 32)?,
                align: u64_at(&data, h + 48)?,
            });
        }
        let names = sections[shstrndx as usize];
        Some(ElfFile {
            data,
            sections,
            names,
        })
    }

    fn bytes(&self, s: &Section) -> Option<&[u8]> {
        if s.kind == SHT_NOBITS {
            return Some(&[]);
        }
        let start = usize::try_from(s.offset).ok()?;
        let end = start.checked_add(usize::try_from(s.size).ok()?)?;
        self.data.get(start..end)
    }

    /// The NUL-terminated string at `at` of string table `table`.
    fn string<'a>(&'a self, table: &Section, at: u32) -> Option<&'a [u8]> {
        let t = self.bytes(table)?;
        let rest = t.get(at as usize..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    }

    /// The contents of the section named `name`.
    pub(crate) fn section(&self, name: &[u8]) -> Option<&[u8]> {
        let s = self
            .sections
            .iter()
            .find(|s| self.string(&self.names, s.name) == Some(name))?;
        self.bytes(s)
    }

    /// The GNU build-id, from the first note section that has one.
    pub(crate) fn build_id(&self) -> Option<&[u8]> {
        self.sections
            .iter()
            .filter(|s| s.kind == SHT_NOTE)
            .find_map(|s| gnu_build_id(self.bytes(s)?, s.align.max(4)))
    }

    /// The largest size `.symtab` gives a symbol whose value is `value`
    /// (aliases may differ), 0 when none does or there is no `.symtab`.
    pub(crate) fn size_at(&self, value: u64) -> u64 {
        let Some(symtab) = self.sections.iter().find(|s| s.kind == SHT_SYMTAB) else {
            return 0;
        };
        let Some(syms) = self.bytes(symtab) else {
            return 0;
        };
        let mut best = 0;
        let mut at = 0u64;
        while at + SYM_SIZE <= syms.len() as u64 {
            if u64_at(syms, at + 8) == Some(value) {
                best = best.max(u64_at(syms, at + 16).unwrap_or(0));
            }
            at += SYM_SIZE;
        }
        best
    }
}

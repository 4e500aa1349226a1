//! Adding and replacing non-loaded sections in an ELF file without any
//! external tool (the packer's `.ulp`, `.ulp.rev`, `.ulp.comments`).
//!
//! Nothing that is loaded moves: the ELF header keeps its place, and every
//! kept section and segment keeps its file offset, so the result loads
//! exactly as before. New section contents, a rebuilt section name table and
//! a new section header table are appended at the end of the file, and the
//! ELF header is pointed at them. Bytes that only the dropped sections, the
//! old name table or the old header table described are cut off when they
//! sit at the tail of the file (so re-packing does not grow the file); bytes
//! at the tail that nothing describes are kept.
//!
//! Dropping a section renumbers the ones after it: `sh_link`, `sh_info`
//! (for relocation sections and `SHF_INFO_LINK`) and `.symtab` section
//! indices are renumbered with it (`.symtab` is then rewritten at the end
//! too). A loaded `.dynsym`, a section group or an extended index table that
//! would need renumbering is refused rather than broken.

use std::collections::HashMap;
use std::path::Path;

use crate::file::SectionHeader;
use crate::replace::replace_file;
use crate::{bytes, ElfFile, Error, ErrorKind};
use ulp_abi::elf::SYM_SIZE;
use ulp_abi::elf::{EHDR_SIZE, PHDR_SIZE, SHDR_SIZE, SHF_INFO_LINK, SHN_LORESERVE, SHT_DYNSYM};
use ulp_abi::elf::{SHT_GROUP, SHT_PROGBITS, SHT_REL, SHT_RELA, SHT_SYMTAB, SHT_SYMTAB_SHNDX};

/// Rewrites `path` (atomically, mode preserved) so that it has no section
/// named in `drop` or in `add`, and then one non-loaded `SHT_PROGBITS`
/// section per `add` entry, with exactly those bytes, in that order, at the
/// end of the section header table.
pub fn replace_sections(path: &Path, drop: &[&str], add: &[(&str, &[u8])]) -> Result<(), Error> {
    let elf = ElfFile::open(path)?;
    let data = build(&elf, drop, add)?;
    replace_file(path, &data)
}

fn build(elf: &ElfFile, drop: &[&str], add: &[(&str, &[u8])]) -> Result<Vec<u8>, Error> {
    let path = elf.path();
    let old = elf.sections();
    if old.is_empty() {
        return Err(Error::new(
            path,
            ErrorKind::MissingSection,
            "no section header table: cannot add sections to it",
        ));
    }
    if elf.shstrndx == 0 {
        return Err(Error::new(
            path,
            ErrorKind::MissingSection,
            "no section name table (e_shstrndx is 0): cannot add sections to it",
        ));
    }
    let removed = |i: usize, s: &SectionHeader| {
        i != 0
            && i != elf.shstrndx
            && (drop.contains(&s.name.as_str()) || add.iter().any(|(n, _)| *n == s.name))
    };

    // Old index -> new index, for the kept sections.
    let mut map: Vec<Option<u32>> = Vec::with_capacity(old.len());
    let mut kept: Vec<SectionHeader> = Vec::new();
    for (i, s) in old.iter().enumerate() {
        if removed(i, s) {
            map.push(None);
        } else {
            map.push(u32::try_from(kept.len()).ok());
            kept.push(s.clone());
        }
    }
    let renumber = |idx: u32, what: &str| -> Result<u32, Error> {
        match map.get(idx as usize) {
            None => Ok(idx), // not a valid index before either: leave it
            Some(Some(n)) => Ok(*n),
            Some(None) => Err(Error::malformed(
                path,
                format!(
                    "{what} refers to section {idx} ('{}'), which is being replaced",
                    old.get(idx as usize).map_or("", |s| s.name.as_str())
                ),
            )),
        }
    };
    let shifted = map
        .iter()
        .enumerate()
        .any(|(i, m)| m.is_some_and(|n| n as usize != i));
    for s in kept.iter_mut() {
        let what = format!("section '{}'", s.name);
        if s.link != 0 {
            s.link = renumber(s.link, &what)?;
        }
        let info_is_index =
            s.flags & SHF_INFO_LINK != 0 || s.sh_type == SHT_REL || s.sh_type == SHT_RELA;
        if info_is_index && s.info != 0 {
            s.info = renumber(s.info, &what)?;
        }
        if shifted && (s.sh_type == SHT_GROUP || s.sh_type == SHT_SYMTAB_SHNDX) {
            return Err(Error::new(
                path,
                ErrorKind::Unsupported,
                format!(
                    "section '{}' would need renumbering: replace sections of a linked object only",
                    s.name
                ),
            ));
        }
    }

    // Symbol tables whose section indices change.
    let mut new_symtabs: Vec<(usize, Vec<u8>)> = Vec::new();
    if shifted {
        for (new_idx, s) in kept.iter().enumerate() {
            if s.sh_type != SHT_SYMTAB && s.sh_type != SHT_DYNSYM {
                continue;
            }
            let Some(mut syms) = elf.section_data(s).map(<[u8]>::to_vec) else {
                continue;
            };
            let mut changed = false;
            for i in 0..(syms.len() as u64 / SYM_SIZE) {
                let at = i * SYM_SIZE + 6;
                let shndx = bytes::u16_at(&syms, at).unwrap_or(0);
                if shndx == 0 || u64::from(shndx) >= u64::from(SHN_LORESERVE) {
                    continue;
                }
                let n = renumber(u32::from(shndx), &format!("a symbol of '{}'", s.name))?;
                if n != u32::from(shndx) {
                    let n = u16::try_from(n).unwrap_or(0);
                    bytes::put(&mut syms, at, &n.to_le_bytes());
                    changed = true;
                }
            }
            if changed {
                if s.sh_type == SHT_DYNSYM {
                    return Err(Error::new(
                        path,
                        ErrorKind::Unsupported,
                        format!(
                            "loaded symbol table '{}' refers to sections that would be renumbered",
                            s.name
                        ),
                    ));
                }
                new_symtabs.push((new_idx, syms));
            }
        }
    }

    // Where the kept contents end: cut what only the replaced parts used.
    let d = elf.data();
    let phdrs_end = elf
        .phnum
        .checked_mul(PHDR_SIZE)
        .and_then(|n| n.checked_add(elf.phoff))
        .unwrap_or(0);
    let segs_end = elf
        .segments
        .iter()
        .filter_map(|p| p.offset.checked_add(p.filesz))
        .max()
        .unwrap_or(0);
    let old_sht_end = (old.len() as u64)
        .checked_mul(SHDR_SIZE)
        .and_then(|n| n.checked_add(elf.shoff))
        .unwrap_or(0);
    let all_sections_end = old.iter().filter_map(|s| s.file_end()).max().unwrap_or(0);
    let known_end = EHDR_SIZE
        .max(phdrs_end)
        .max(segs_end)
        .max(old_sht_end)
        .max(all_sections_end);
    let base_len = if (d.len() as u64) > known_end {
        d.len() as u64
    } else {
        let rewritten =
            |i: usize| i == map_new(&map, elf.shstrndx) || new_symtabs.iter().any(|(n, _)| *n == i);
        let kept_end = kept
            .iter()
            .enumerate()
            .filter(|(i, _)| !rewritten(*i))
            .filter_map(|(_, s)| s.file_end())
            .max()
            .unwrap_or(0);
        EHDR_SIZE.max(phdrs_end).max(segs_end).max(kept_end)
    };
    let base_len = usize::try_from(base_len).unwrap_or(d.len()).min(d.len());
    let mut out = d[..base_len].to_vec();

    // New sections, appended.
    let mut headers = kept;
    for (name, contents) in add {
        headers.push(SectionHeader {
            name: (*name).to_string(),
            sh_name: 0,
            sh_type: SHT_PROGBITS,
            flags: 0,
            addr: 0,
            offset: out.len() as u64,
            size: contents.len() as u64,
            link: 0,
            info: 0,
            addralign: 1,
            entsize: 0,
        });
        out.extend_from_slice(contents);
    }

    // Rewritten symbol tables.
    for (idx, syms) in new_symtabs {
        pad_to(&mut out, 8);
        if let Some(h) = headers.get_mut(idx) {
            h.offset = out.len() as u64;
        }
        out.extend_from_slice(&syms);
    }

    // The section name table, rebuilt with every name.
    let mut names: Vec<u8> = vec![0];
    let mut name_at: HashMap<String, u32> = HashMap::new();
    for h in headers.iter_mut() {
        if h.name.is_empty() {
            h.sh_name = 0;
            continue;
        }
        let off = match name_at.get(&h.name) {
            Some(&o) => o,
            None => {
                let o = u32::try_from(names.len()).map_err(|_| {
                    Error::malformed(path, "section names do not fit a 32-bit string table")
                })?;
                names.extend_from_slice(h.name.as_bytes());
                names.push(0);
                name_at.insert(h.name.clone(), o);
                o
            }
        };
        h.sh_name = off;
    }
    let shstrndx = map_new(&map, elf.shstrndx);
    if let Some(h) = headers.get_mut(shstrndx) {
        h.offset = out.len() as u64;
        h.size = names.len() as u64;
    }
    out.extend_from_slice(&names);

    // The section header table.
    pad_to(&mut out, 8);
    let shoff = out.len() as u64;
    let count = headers.len() as u64;
    let extended_count = count >= u64::from(SHN_LORESERVE);
    let extended_strndx = shstrndx as u64 >= u64::from(SHN_LORESERVE);
    if let Some(h) = headers.first_mut() {
        h.size = if extended_count { count } else { 0 };
        h.link = if extended_strndx {
            u32::try_from(shstrndx).unwrap_or(0)
        } else {
            0
        };
    }
    for h in &headers {
        out.extend_from_slice(&h.encode());
    }
    let e_shnum: u16 = if extended_count {
        0
    } else {
        u16::try_from(count).unwrap_or(0)
    };
    let e_shstrndx: u16 = if extended_strndx {
        0xffff
    } else {
        u16::try_from(shstrndx).unwrap_or(0)
    };
    bytes::put(&mut out, 40, &shoff.to_le_bytes());
    bytes::put(&mut out, 58, &(SHDR_SIZE as u16).to_le_bytes());
    bytes::put(&mut out, 60, &e_shnum.to_le_bytes());
    bytes::put(&mut out, 62, &e_shstrndx.to_le_bytes())
        .ok_or_else(|| Error::malformed(path, "truncated ELF header"))?;
    Ok(out)
}

/// The new index of kept section `old` (the name table is always kept).
fn map_new(map: &[Option<u32>], old: usize) -> usize {
    map.get(old)
        .copied()
        .flatten()
        .map_or(usize::MAX, |n| n as usize)
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    out.resize(out.len().next_multiple_of(align), 0);
}

#[cfg(test)]
pub(crate) fn build_for_test(elf: &ElfFile) -> Result<Vec<u8>, Error> {
    build(elf, &[".ulp.rev"], &[(".ulp", b"x")])
}

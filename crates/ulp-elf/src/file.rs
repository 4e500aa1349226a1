//! The ELF reader: the file header, the section and program header
//! tables (checked once, at [`ElfFile::parse`]), section contents, address
//! translation and the dynamic table's `DT_SONAME`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{bytes, Error, ErrorKind};
use ulp_abi::elf::{
    DT_NULL, DT_SONAME, DT_STRSZ, DT_STRTAB, EHDR_SIZE, EM_X86_64, ET_DYN, PHDR_SIZE,
};
use ulp_abi::elf::{ELFCLASS32, ELFCLASS64, ELFDATA2LSB, ELFMAG};
use ulp_abi::elf::{PF_X, PT_DYNAMIC, PT_LOAD, SHDR_SIZE, SHN_XINDEX, SHT_DYNAMIC, SHT_NOBITS};

/// A section header, as read from the file (names resolved).
#[derive(Clone, Debug)]
pub(crate) struct SectionHeader {
    pub name: String,
    pub sh_name: u32,
    pub sh_type: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
    pub info: u32,
    pub addralign: u64,
    pub entsize: u64,
}

impl SectionHeader {
    fn parse(raw: &[u8]) -> Option<SectionHeader> {
        Some(SectionHeader {
            name: String::new(),
            sh_name: bytes::u32_at(raw, 0)?,
            sh_type: bytes::u32_at(raw, 4)?,
            flags: bytes::u64_at(raw, 8)?,
            addr: bytes::u64_at(raw, 16)?,
            offset: bytes::u64_at(raw, 24)?,
            size: bytes::u64_at(raw, 32)?,
            link: bytes::u32_at(raw, 40)?,
            info: bytes::u32_at(raw, 44)?,
            addralign: bytes::u64_at(raw, 48)?,
            entsize: bytes::u64_at(raw, 56)?,
        })
    }

    pub(crate) fn encode(&self) -> [u8; SHDR_SIZE as usize] {
        let mut out = [0u8; SHDR_SIZE as usize];
        let fields: [(usize, &[u8]); 10] = [
            (0, &self.sh_name.to_le_bytes()),
            (4, &self.sh_type.to_le_bytes()),
            (8, &self.flags.to_le_bytes()),
            (16, &self.addr.to_le_bytes()),
            (24, &self.offset.to_le_bytes()),
            (32, &self.size.to_le_bytes()),
            (40, &self.link.to_le_bytes()),
            (44, &self.info.to_le_bytes()),
            (48, &self.addralign.to_le_bytes()),
            (56, &self.entsize.to_le_bytes()),
        ];
        for (at, b) in fields {
            out[at..at + b.len()].copy_from_slice(b);
        }
        out
    }

    /// End offset of the section's bytes in the file (`None` for NOBITS or
    /// an overflowing size).
    pub(crate) fn file_end(&self) -> Option<u64> {
        if self.sh_type == SHT_NOBITS {
            return None;
        }
        self.offset.checked_add(self.size)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ProgramHeader {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub align: u64,
}

/// A parsed ELF file. Owns the bytes; the headers are read once by
/// [`ElfFile::parse`], everything else on demand.
pub struct ElfFile {
    pub(crate) path: PathBuf,
    pub(crate) data: Vec<u8>,
    pub(crate) e_type: u16,
    pub(crate) phoff: u64,
    pub(crate) phnum: u64,
    pub(crate) shoff: u64,
    pub(crate) shstrndx: usize,
    pub(crate) sections: Vec<SectionHeader>,
    pub(crate) segments: Vec<ProgramHeader>,
}

impl fmt::Debug for ElfFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfFile")
            .field("path", &self.path)
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl ElfFile {
    /// Reads only what a lookup in the sections `names` needs: the ELF
    /// header, the program and section headers, the section-name table and
    /// those sections; everything else of the file reads as zeros. For a
    /// quick symbol lookup (`.dynsym`, `.dynstr`) in a large library, where
    /// reading it all would cost more than the rest of the work.
    pub fn open_sections(path: &Path, names: &[&str]) -> Result<ElfFile, Error> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(path, "cannot stat", e))?
            .len();
        let size = usize::try_from(len).map_err(|_| Error::malformed(path, "file too large"))?;
        let mut data = vec![0u8; size];
        let read = |data: &mut [u8], off: u64, n: u64| -> Result<(), Error> {
            let (Ok(start), Ok(n)) = (usize::try_from(off), usize::try_from(n)) else {
                return Err(Error::malformed(path, "section outside the file"));
            };
            let end = start
                .checked_add(n)
                .filter(|&e| e <= data.len())
                .ok_or_else(|| Error::malformed(path, "section outside the file"))?;
            file.read_exact_at(&mut data[start..end], off)
                .map_err(|e| Error::io(path, "cannot read", e))
        };
        let head = len.min(4096);
        read(&mut data, 0, head)?;
        let bad = || Error::malformed(path, "bad ELF header");
        let shoff = bytes::u64_at(&data, 0x28).ok_or_else(bad)?;
        let shentsize = u64::from(bytes::u16_at(&data, 0x3a).ok_or_else(bad)?);
        let shnum = u64::from(bytes::u16_at(&data, 0x3c).ok_or_else(bad)?);
        let shstrndx = u64::from(bytes::u16_at(&data, 0x3e).ok_or_else(bad)?);
        if shentsize < 64 || shnum == 0 {
            // Nothing sparse to do: let the full parser say what is wrong.
            return ElfFile::open(path);
        }
        read(&mut data, shoff, shentsize * shnum)?;
        // sh_name, sh_offset and sh_size of section `i`, when its header
        // is in `d` up to sh_link.
        let header = |d: &[u8], i: u64| -> Option<(u32, u64, u64)> {
            let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
            let raw = bytes::slice(d, at, 0x2c)?;
            Some((
                bytes::u32_at(raw, 0)?,
                bytes::u64_at(raw, 0x18)?,
                bytes::u64_at(raw, 0x20)?,
            ))
        };
        let (_, str_off, str_size) = header(&data, shstrndx).ok_or_else(bad)?;
        read(&mut data, str_off, str_size)?;
        for i in 0..shnum {
            let Some((name_off, off, size)) = header(&data, i) else {
                continue;
            };
            let start =
                usize::try_from(str_off.saturating_add(u64::from(name_off))).unwrap_or(usize::MAX);
            let name = data
                .get(start..)
                .and_then(|d| d.split(|&b| b == 0).next())
                .unwrap_or_default();
            if names.iter().any(|n| n.as_bytes() == name) {
                read(&mut data, off, size)?;
            }
        }
        ElfFile::parse(path, data)
    }

    /// Reads and parses `path`.
    pub fn open(path: &Path) -> Result<ElfFile, Error> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
        ElfFile::parse(path, data)
    }

    /// Parses `data`, the contents of `path` (used in messages only).
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<ElfFile, Error> {
        let d = &data[..];
        if d.get(..4) != Some(ELFMAG) {
            return Err(Error::new(path, ErrorKind::NotElf, "not an ELF file"));
        }
        match d.get(4) {
            Some(&ELFCLASS64) => {}
            Some(&ELFCLASS32) => {
                return Err(Error::new(
                    path,
                    ErrorKind::Unsupported,
                    "32-bit ELF file: only x86-64 (ELF64) files are supported",
                ))
            }
            _ => {
                return Err(Error::malformed(
                    path,
                    "bad ELF class byte (truncated file?)",
                ))
            }
        }
        if d.get(5) != Some(&ELFDATA2LSB) {
            return Err(Error::new(
                path,
                ErrorKind::Unsupported,
                "not a little-endian ELF file: only x86-64 files are supported",
            ));
        }
        if (d.len() as u64) < EHDR_SIZE {
            return Err(Error::malformed(
                path,
                format!("truncated ELF header ({} bytes)", d.len()),
            ));
        }
        let hdr = |off, what: &str| {
            bytes::u64_at(d, off).ok_or_else(|| {
                Error::malformed(path, format!("cannot read ELF header field {what}"))
            })
        };
        let hdr16 = |off| bytes::u16_at(d, off).unwrap_or(0);
        let e_type = hdr16(16);
        let machine = hdr16(18);
        if machine != EM_X86_64 {
            return Err(Error::new(
                path,
                ErrorKind::Unsupported,
                format!(
                    "ELF machine {machine} is not x86-64 (62): only x86-64 files are supported"
                ),
            ));
        }
        let phoff = hdr(32, "e_phoff")?;
        let shoff = hdr(40, "e_shoff")?;
        let phentsize = u64::from(hdr16(54));
        let phnum = u64::from(hdr16(56));
        let shentsize = u64::from(hdr16(58));
        let e_shnum = hdr16(60);
        let e_shstrndx = hdr16(62);

        let mut segments = Vec::new();
        if phnum > 0 {
            if phentsize < PHDR_SIZE {
                return Err(Error::malformed(
                    path,
                    format!("e_phentsize {phentsize} is smaller than an ELF64 program header"),
                ));
            }
            for i in 0..phnum {
                let raw = phentsize
                    .checked_mul(i)
                    .and_then(|o| o.checked_add(phoff))
                    .and_then(|o| bytes::slice(d, o, PHDR_SIZE))
                    .ok_or_else(|| {
                        Error::malformed(
                            path,
                            "program header table lies outside the file (truncated?)",
                        )
                    })?;
                segments.push(ProgramHeader {
                    p_type: bytes::u32_at(raw, 0).unwrap_or(0),
                    flags: bytes::u32_at(raw, 4).unwrap_or(0),
                    offset: bytes::u64_at(raw, 8).unwrap_or(0),
                    vaddr: bytes::u64_at(raw, 16).unwrap_or(0),
                    filesz: bytes::u64_at(raw, 32).unwrap_or(0),
                    align: bytes::u64_at(raw, 48).unwrap_or(0),
                });
            }
        }

        let mut sections = Vec::new();
        let mut shstrndx = 0usize;
        if shoff != 0 {
            if shentsize < SHDR_SIZE {
                return Err(Error::malformed(
                    path,
                    format!("e_shentsize {shentsize} is smaller than an ELF64 section header"),
                ));
            }
            let outside = || {
                Error::malformed(
                    path,
                    "section header table lies outside the file (truncated?)",
                )
            };
            let read_shdr = |i: u64| {
                shentsize
                    .checked_mul(i)
                    .and_then(|o| o.checked_add(shoff))
                    .and_then(|o| bytes::slice(d, o, SHDR_SIZE))
                    .and_then(SectionHeader::parse)
            };
            let first = read_shdr(0).ok_or_else(outside)?;
            // Extended numbering: counts that do not fit the header live in
            // section 0.
            let shnum = if e_shnum == 0 {
                first.size
            } else {
                u64::from(e_shnum)
            };
            let table_len = shnum.checked_mul(shentsize).ok_or_else(outside)?;
            if bytes::slice(d, shoff, table_len).is_none() {
                return Err(outside());
            }
            for i in 0..shnum {
                sections.push(read_shdr(i).ok_or_else(outside)?);
            }
            shstrndx = if e_shstrndx == SHN_XINDEX {
                first.link as usize
            } else {
                usize::from(e_shstrndx)
            };
            if shstrndx != 0 {
                let strtab = sections.get(shstrndx).ok_or_else(|| {
                    Error::malformed(path, format!("e_shstrndx {shstrndx} is not a section"))
                })?;
                let names = bytes::slice(d, strtab.offset, strtab.size).ok_or_else(|| {
                    Error::malformed(
                        path,
                        "section name table lies outside the file (truncated?)",
                    )
                })?;
                for (i, s) in sections.iter_mut().enumerate() {
                    let name = bytes::cstr_at(names, u64::from(s.sh_name)).ok_or_else(|| {
                        Error::malformed(path, format!("section {i}: bad name offset"))
                    })?;
                    s.name = String::from_utf8_lossy(name).into_owned();
                }
            }
        }

        Ok(ElfFile {
            path: path.to_path_buf(),
            data,
            e_type,
            phoff,
            phnum,
            shoff,
            shstrndx,
            sections,
            segments,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// `ET_DYN`: a shared object or a position-independent executable.
    pub fn is_shared_object(&self) -> bool {
        self.e_type == ET_DYN
    }

    pub(crate) fn sections(&self) -> &[SectionHeader] {
        &self.sections
    }

    pub(crate) fn section_data(&self, s: &SectionHeader) -> Option<&[u8]> {
        if s.sh_type == SHT_NOBITS {
            return None;
        }
        bytes::slice(&self.data, s.offset, s.size)
    }

    /// Contents of the first section called `name`; `None` when there is no
    /// such section, it occupies no file space (NOBITS), or it lies outside
    /// the file.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        let s = self.sections.iter().find(|s| s.name == name)?;
        self.section_data(s)
    }

    /// The file offset of virtual address `vaddr`, through the `PT_LOAD`
    /// segment holding it (file-backed part only).
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .find_map(|p| {
                let delta = vaddr.checked_sub(p.vaddr)?;
                if delta < p.filesz {
                    p.offset.checked_add(delta)
                } else {
                    None
                }
            })
    }

    /// The file bytes of each executable `PT_LOAD` segment, with their
    /// offset in the file: what the loader maps as code, whatever the
    /// process that maps it is doing now. A segment reaching past the end
    /// of the file is cut at it.
    pub fn executable_segments(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.segments
            .iter()
            .filter(|p| p.p_type == PT_LOAD && p.flags & PF_X != 0)
            .filter_map(|p| {
                let start = usize::try_from(p.offset).ok()?;
                let end = usize::try_from(p.offset.checked_add(p.filesz)?)
                    .ok()?
                    .min(self.data.len());
                Some((p.offset, self.data.get(start..end)?))
            })
    }

    /// `DT_SONAME`, from the `.dynamic` section or, without section headers,
    /// from the `PT_DYNAMIC` segment.
    pub fn soname(&self) -> Option<String> {
        if let Some(dynsec) = self.sections.iter().find(|s| s.sh_type == SHT_DYNAMIC) {
            let strtab = self.sections.get(dynsec.link as usize)?;
            let strings = self.section_data(strtab)?;
            let off = dynamic_entries(self.section_data(dynsec)?)
                .find(|&(tag, _)| tag == DT_SONAME)?
                .1;
            let name = bytes::cstr_at(strings, off)?;
            return Some(String::from_utf8_lossy(name).into_owned());
        }
        let seg = self.segments.iter().find(|p| p.p_type == PT_DYNAMIC)?;
        let entries: Vec<(u64, u64)> =
            dynamic_entries(bytes::slice(&self.data, seg.offset, seg.filesz)?).collect();
        let tag = |t| entries.iter().find(|&&(tag, _)| tag == t).map(|&(_, v)| v);
        let strtab = self.vaddr_to_offset(tag(DT_STRTAB)?)?;
        let strings = bytes::slice(&self.data, strtab, tag(DT_STRSZ)?)?;
        let name = bytes::cstr_at(strings, tag(DT_SONAME)?)?;
        Some(String::from_utf8_lossy(name).into_owned())
    }
}

/// `(d_tag, d_val)` pairs of a dynamic table, up to `DT_NULL`.
fn dynamic_entries(data: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    (0..data.len() as u64 / 16)
        .map_while(move |i| {
            Some((
                bytes::u64_at(data, i * 16)?,
                bytes::u64_at(data, i * 16 + 8)?,
            ))
        })
        .take_while(|&(tag, _)| tag != DT_NULL)
}

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
mod post;
mod write;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use post::{post, PostReport};
pub use write::replace_sections;

/// Name of the section gcc's `-fpatchable-function-entry` fills.
pub const PATCHABLE_SECTION: &str = "__patchable_function_entries";

/// Number of one-byte NOPs gcc puts before a function's symbol with
/// `-fpatchable-function-entry=16,14`; the section lists `symbol - 14`.
pub const PADDING_BEFORE_ENTRY: u64 = 14;

// ELF constants used here (from the System V gABI and the x86-64 psABI).
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_DYNAMIC: u32 = 6;
const SHT_NOTE: u32 = 7;
const SHT_NOBITS: u32 = 8;
const SHT_DYNSYM: u32 = 11;
const SHT_GNU_VERDEF: u32 = 0x6fff_fffd;
const SHT_GNU_VERSYM: u32 = 0x6fff_ffff;
const VERSYM_HIDDEN: u16 = 0x8000;
const VERDEF_SIZE: u64 = 20;
const VERDAUX_SIZE: u64 = 8;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;
const DT_NULL: u64 = 0;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const R_X86_64_RELATIVE: u32 = 8;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const STT_TLS: u8 = 6;
const STT_GNU_IFUNC: u8 = 10;
const SHN_UNDEF: u16 = 0;
const SHN_LORESERVE: u16 = 0xff00;
const SHF_EXECINSTR: u64 = 0x4;
const SHN_XINDEX: u16 = 0xffff;
const EHDR_SIZE: u64 = 64;
const SHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SYM_SIZE: u64 = 24;
const RELA_SIZE: u64 = 24;

/// What went wrong, for callers that act on the kind of failure.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read or written.
    Io,
    /// The file is not an ELF file at all.
    NotElf,
    /// An ELF file, but not x86-64 ELF64 little-endian.
    Unsupported,
    /// An ELF file whose headers or tables are inconsistent or truncated.
    Malformed,
    /// A section the operation needs is not there.
    MissingSection,
}

/// An error about one file. Displays as `'PATH': MESSAGE`.
#[derive(Debug)]
pub struct Error {
    path: PathBuf,
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    fn new(path: &Path, kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            path: path.to_path_buf(),
            kind,
            message: message.into(),
            source: None,
        }
    }

    fn io(path: &Path, what: &str, err: io::Error) -> Error {
        Error {
            path: path.to_path_buf(),
            kind: ErrorKind::Io,
            message: format!("{what}: {err}"),
            source: Some(err),
        }
    }

    fn malformed(path: &Path, message: impl Into<String>) -> Error {
        Error::new(path, ErrorKind::Malformed, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The message without the path (for callers that name the file
    /// themselves, e.g. "file 'X' is not livepatchable: MESSAGE").
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}': {}", self.path.display(), self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

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
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub align: u64,
}

/// A parsed ELF file. Owns the bytes; the headers are read once by
/// [`ElfFile::parse`], everything else on demand.
pub struct ElfFile {
    path: PathBuf,
    data: Vec<u8>,
    e_type: u16,
    phoff: u64,
    phnum: u64,
    shoff: u64,
    shstrndx: usize,
    sections: Vec<SectionHeader>,
    segments: Vec<ProgramHeader>,
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
        let u16_at = |d: &[u8], o: usize| d.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |d: &[u8], o: usize| {
            d.get(o..o + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        let u64_at = |d: &[u8], o: usize| {
            d.get(o..o + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        let bad = || Error::malformed(path, "bad ELF header");
        let shoff = u64_at(&data, 0x28).ok_or_else(bad)?;
        let shentsize = u64::from(u16_at(&data, 0x3a).ok_or_else(bad)?);
        let shnum = u64::from(u16_at(&data, 0x3c).ok_or_else(bad)?);
        let shstrndx = u64::from(u16_at(&data, 0x3e).ok_or_else(bad)?);
        if shentsize < 64 || shnum == 0 {
            // Nothing sparse to do: let the full parser say what is wrong.
            return ElfFile::open(path);
        }
        read(&mut data, shoff, shentsize * shnum)?;
        let header = |d: &[u8], i: u64| -> Option<(u32, u64, u64, u32)> {
            let at = usize::try_from(shoff.checked_add(i.checked_mul(shentsize)?)?).ok()?;
            Some((
                u32_at(d, at)?,
                u64_at(d, at + 0x18)?,
                u64_at(d, at + 0x20)?,
                u32_at(d, at + 0x28)?,
            ))
        };
        let (_, str_off, str_size, _) = header(&data, shstrndx).ok_or_else(bad)?;
        read(&mut data, str_off, str_size)?;
        for i in 0..shnum {
            let Some((name_off, off, size, _)) = header(&data, i) else {
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
        if d.get(..4) != Some(b"\x7fELF") {
            return Err(Error::new(path, ErrorKind::NotElf, "not an ELF file"));
        }
        match d.get(4) {
            Some(2) => {}
            Some(1) => {
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
        if d.get(5) != Some(&1) {
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

    /// The `NT_GNU_BUILD_ID` note's descriptor, looked up in `PT_NOTE`
    /// segments first and then in `SHT_NOTE` sections.
    pub fn build_id(&self) -> Option<Vec<u8>> {
        let from_segments = self
            .segments
            .iter()
            .filter(|p| p.p_type == PT_NOTE)
            .find_map(|p| {
                let data = bytes::slice(&self.data, p.offset, p.filesz)?;
                find_note(data, p.align, b"GNU", NT_GNU_BUILD_ID)
            });
        from_segments
            .or_else(|| {
                self.sections
                    .iter()
                    .filter(|s| s.sh_type == SHT_NOTE)
                    .find_map(|s| {
                        find_note(self.section_data(s)?, s.addralign, b"GNU", NT_GNU_BUILD_ID)
                    })
            })
            .map(<[u8]>::to_vec)
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

    /// `R_X86_64_RELATIVE` relocations of every `SHT_RELA` section:
    /// place -> addend.
    fn relative_relocations(&self) -> HashMap<u64, u64> {
        let mut out = HashMap::new();
        for s in self.sections.iter().filter(|s| s.sh_type == SHT_RELA) {
            let Some(data) = self.section_data(s) else {
                continue;
            };
            for i in 0..(data.len() as u64 / RELA_SIZE) {
                let at = i * RELA_SIZE;
                let (Some(place), Some(info), Some(addend)) = (
                    bytes::u64_at(data, at),
                    bytes::u64_at(data, at + 8),
                    bytes::u64_at(data, at + 16),
                ) else {
                    break;
                };
                if info & 0xffff_ffff == u64::from(R_X86_64_RELATIVE) {
                    out.insert(place, addend);
                }
            }
        }
        out
    }

    /// The addresses `__patchable_function_entries` lists: for each function
    /// built with `-fpatchable-function-entry=16,14`, the start of its NOP
    /// padding, which is its symbol value minus [`PADDING_BEFORE_ENTRY`]
    /// (in the interop `libgreet.so.0`, `greet_answer` is at 0x118e and the
    /// section lists 0x1180).
    ///
    /// Each 8-byte slot is read through its `R_X86_64_RELATIVE` relocation
    /// when there is one (shared objects and PIEs: the addend is the address,
    /// whatever the slot holds), else as the absolute address it holds
    /// (non-PIE executables, or RELR-packed relocations whose addend is in
    /// place). Slots that end up 0 are dropped. Sorted, deduplicated.
    pub fn patchable_entries(&self) -> Result<Vec<u64>, Error> {
        let secs: Vec<&SectionHeader> = self
            .sections
            .iter()
            .filter(|s| s.name == PATCHABLE_SECTION)
            .collect();
        if secs.is_empty() {
            return Err(Error::new(
                &self.path,
                ErrorKind::MissingSection,
                format!(
                    "no {PATCHABLE_SECTION} section (build with -fpatchable-function-entry=16,14)"
                ),
            ));
        }
        let relocs = self.relative_relocations();
        let mut out = Vec::new();
        for s in secs {
            let data = self.section_data(s).ok_or_else(|| {
                Error::malformed(
                    &self.path,
                    format!("{PATCHABLE_SECTION} section has no contents in the file"),
                )
            })?;
            if data.len() % 8 != 0 {
                return Err(Error::malformed(
                    &self.path,
                    format!(
                        "{PATCHABLE_SECTION} section size {} is not a multiple of 8",
                        data.len()
                    ),
                ));
            }
            for i in 0..(data.len() as u64 / 8) {
                let word = bytes::u64_at(data, i * 8).unwrap_or(0);
                let place = s.addr.wrapping_add(i * 8);
                let addr = relocs.get(&place).copied().unwrap_or(word);
                if addr != 0 {
                    out.push(addr);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// `Ok` when the file lists patchable function entries; otherwise the
    /// reason, suitable after "file 'X' is not livepatchable: ".
    pub fn livepatchable(&self) -> Result<(), String> {
        match self.patchable_entries() {
            Err(e) => Err(e.message().to_string()),
            Ok(v) if v.is_empty() => Err(format!(
                "{PATCHABLE_SECTION} lists no function (build with -fpatchable-function-entry=16,14)"
            )),
            Ok(_) => Ok(()),
        }
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

/// The descriptor of the first note called `name` with type `ty` in a note
/// area. Notes are padded to 4 bytes, or to 8 when the area is 8-aligned
/// (`.note.gnu.property`).
fn find_note<'a>(data: &'a [u8], align: u64, name: &[u8], ty: u32) -> Option<&'a [u8]> {
    let pad = if align == 8 { 8u64 } else { 4 };
    let round = |n: u64| n.checked_add(pad - 1).map(|n| n & !(pad - 1));
    let mut at = 0u64;
    while at < data.len() as u64 {
        let namesz = u64::from(bytes::u32_at(data, at)?);
        let descsz = u64::from(bytes::u32_at(data, at + 4)?);
        let nty = bytes::u32_at(data, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(round(namesz)?)?;
        let nname = bytes::slice(data, name_at, namesz)?;
        let desc = bytes::slice(data, desc_at, descsz)?;
        let nname = nname.strip_suffix(b"\0").unwrap_or(nname);
        if nty == ty && nname == name {
            return Some(desc);
        }
        at = desc_at.checked_add(round(descsz)?)?;
    }
    None
}

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new file: write a temporary file in the same directory, give it the
/// original's owner and permissions, fsync it, rename it over the
/// original, fsync the directory. A symbolic link (the SONAME link a
/// distribution installs, `libfoo.so.1 -> libfoo.so.1.2.3`) stays a link:
/// the file it leads to is the one replaced.
pub(crate) fn replace_file(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let path = &std::fs::canonicalize(path).map_err(|e| Error::io(path, "cannot resolve", e))?;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot stat", e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{base}.ulp-tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        let mine = f.metadata()?;
        if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        }
        // After the owner: a change of owner clears set-id bits.
        f.set_permissions(meta.permissions())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; failure here does not undo it.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            path,
            &format!(
                "cannot replace the file (temporary file '{}' in the same directory)",
                tmp.display()
            ),
            e,
        )
    })
}

#[cfg(test)]
mod tests;

//! The target's executable mappings, and the unwind sections of the objects
//! they map, read the first time an address in them is unwound.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use framehop::ExplicitModuleSectionInfo;

use crate::{Mapping, Pid, RemoteAddr};

/// An object's whole image: a file mapped read-only into this process
/// (only the pages framehop touches are ever read: the section header
/// table, the `.eh_frame_hdr` search and the entries found), or bytes
/// read from the target's memory (the vDSO).
enum Image {
    Mapped { ptr: *const u8, len: usize },
    Owned(Vec<u8>),
}

// SAFETY: a private read-only mapping owned by this value; nothing writes
// it and it is unmapped only on drop.
unsafe impl Send for Image {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for Image {}

impl Image {
    /// Maps `file` whole, read-only.
    fn map(file: &File) -> Result<Image, String> {
        use std::os::fd::AsRawFd;
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        if len == 0 {
            return Err("empty file".into());
        }
        // SAFETY: a new private read-only mapping of an open file; the
        // kernel picks the address. A file truncated while mapped would
        // fault on access: ours are the target's mapped objects, which a
        // package manager replaces by renaming, never truncates.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Image::Mapped {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping lives as long as `self`.
            Image::Mapped { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
            Image::Owned(v) => v,
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Image::Mapped { ptr, len } = *self {
            // SAFETY: our own mapping, unmapped once.
            unsafe { libc::munmap(ptr as *mut libc::c_void, len) };
        }
    }
}

/// Section bytes as framehop holds them: a range of an object's image.
#[derive(Clone)]
pub(super) struct Bytes {
    image: Arc<Image>,
    start: usize,
    len: usize,
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes {
            image: Arc::new(Image::Owned(Vec::new())),
            start: 0,
            len: 0,
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.image.bytes()[self.start..self.start + self.len]
    }
}

/// Where the code of an executable mapping comes from.
#[derive(Debug)]
pub(super) enum Source {
    /// A file: its name as /proc/PID/maps prints it, and its identity
    /// (device as printed there, inode).
    File {
        path: String,
        dev: crate::MapsField,
        inode: u64,
    },
    /// The kernel's vDSO, an ELF image in the target's memory.
    Vdso,
    /// Anonymous memory (JIT-like code): no unwind information.
    Anonymous,
}

/// Whether a mapping's unwind information was read.
#[derive(Debug)]
pub(super) enum Loaded {
    NotYet,
    /// Given to framehop as a module.
    Yes,
    /// Could not be read: framehop unwinds there by frame pointers.
    Failed(String),
}

/// One executable mapping of the target.
#[derive(Debug)]
pub(super) struct CodeMap {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) offset: u64,
    pub(super) source: Source,
    pub(super) loaded: Loaded,
}

impl CodeMap {
    pub(super) fn from_mapping(m: &Mapping) -> Option<CodeMap> {
        if !m.is_executable() {
            return None;
        }
        let source = match m.path.as_deref() {
            Some("[vdso]") => Source::Vdso,
            Some(p) if p.starts_with('/') && m.inode != 0 => Source::File {
                path: p.to_string(),
                dev: m.dev,
                inode: m.inode,
            },
            _ => Source::Anonymous,
        };
        Some(CodeMap {
            start: m.start.get(),
            end: m.end.get(),
            offset: m.offset,
            source,
            loaded: Loaded::NotYet,
        })
    }

    /// A short name for messages and framehop's module.
    pub(super) fn name(&self) -> String {
        match &self.source {
            Source::File { path, .. } => path.clone(),
            Source::Vdso => "[vdso]".into(),
            Source::Anonymous => format!("anonymous code at {:#x}", self.start),
        }
    }

    /// The file this maps, as a key for the objects read: mappings of one
    /// file (a text segment split by `mprotect`) share what was read.
    pub(super) fn file_key(&self) -> Option<(crate::MapsField, u64)> {
        match &self.source {
            Source::File { dev, inode, .. } => Some((*dev, *inode)),
            _ => None,
        }
    }

    /// Reads the unwind sections and load segments of this mapping's object.
    pub(super) fn read_object(&self, pid: Pid) -> Result<ObjectUnwind, String> {
        match &self.source {
            Source::File { path, inode, .. } => {
                let file = open_mapped(pid, self, path, *inode)?;
                ObjectUnwind::parse(Arc::new(Image::map(&file)?))
            }
            Source::Vdso => {
                let mut image = vec![0u8; (self.end - self.start) as usize];
                crate::read_mem(pid, RemoteAddr::new(self.start), &mut image)
                    .map_err(|e| e.to_string())?;
                ObjectUnwind::parse(Arc::new(Image::Owned(image)))
            }
            Source::Anonymous => Err("anonymous memory has no unwind information".into()),
        }
    }
}

/// How far past an object's entry point [`ObjectUnwind::in_entry_code`]
/// looks (glibc's loader entry code is about 60 bytes).
const ENTRY_CODE_MAX: u64 = 4096;

/// What an ELF object gives an unwind: its unwind sections and where its
/// load segments are in the file.
#[derive(Clone)]
pub(super) struct ObjectUnwind {
    pub(super) sections: ExplicitModuleSectionInfo<Bytes>,
    /// (virtual address, file offset, file size) of each load segment.
    segments: Vec<(u64, u64, u64)>,
    /// The ELF entry point (0: none).
    entry: u64,
    /// The whole file, as read.
    image: Arc<Image>,
}

impl ObjectUnwind {
    fn parse(image: Arc<Image>) -> Result<ObjectUnwind, String> {
        use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
        // The program headers and the section table are all an unwind
        // needs (`object::File::parse` also sets up the symbol tables).
        let data = image.bytes();
        let not_elf = |e: object::Error| format!("not an ELF object: {e}");
        let header =
            object::elf::FileHeader64::<object::Endianness>::parse(data).map_err(not_elf)?;
        let endian = header.endian().map_err(not_elf)?;
        let entry = header.e_entry(endian);
        let segments = header
            .program_headers(endian, data)
            .map_err(not_elf)?
            .iter()
            .filter(|p| p.p_type(endian) == object::elf::PT_LOAD)
            .map(|p| (p.p_vaddr(endian), p.p_offset(endian), p.p_filesz(endian)))
            .collect();
        let table = header.sections(endian, data).map_err(not_elf)?;
        // Section names compared in place (`SectionTable::section_by_name`
        // looks for each name's end with `memchr`, whose first use costs a
        // trigger its CPU feature detection: 7 `cpuid`, 4 µs each on a VM).
        let names = header
            .section_strings_index(endian, data)
            .and_then(|i| table.section(i))
            .ok()
            .and_then(|s| s.data(endian, data).ok())
            .unwrap_or_default();
        let section = |name: &str| {
            let name = name.as_bytes();
            table.iter().find(|s| {
                let at = s.sh_name(endian) as usize;
                names.get(at..at + name.len()) == Some(name)
                    && names.get(at + name.len()) == Some(&0)
            })
        };
        let range = |name: &str| -> Option<Range<u64>> {
            let s = section(name)?;
            Some(s.sh_addr(endian)..s.sh_addr(endian) + s.sh_size(endian))
        };
        let bytes = |name: &str| -> Result<Option<Bytes>, String> {
            match section(name) {
                None => Ok(None),
                Some(s) => match s.data(endian, data) {
                    Ok([]) => Ok(None),
                    Ok(d) => Ok(Some(Bytes {
                        image: image.clone(),
                        start: d.as_ptr() as usize - data.as_ptr() as usize,
                        len: d.len(),
                    })),
                    Err(e) => Err(format!("cannot read its {name}: {e}")),
                },
            }
        };
        // framehop reads .debug_frame only when there is no .eh_frame.
        let eh_frame = bytes(".eh_frame")?;
        let (eh_frame_hdr, debug_frame) = if eh_frame.is_some() {
            (bytes(".eh_frame_hdr")?, None)
        } else {
            (None, bytes(".debug_frame")?)
        };
        Ok(ObjectUnwind {
            sections: ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: range(".text"),
                got_svma: range(".got"),
                eh_frame_svma: range(".eh_frame"),
                eh_frame,
                eh_frame_hdr_svma: range(".eh_frame_hdr"),
                eh_frame_hdr,
                debug_frame,
                ..Default::default()
            },
            segments,
            entry,
            image,
        })
    }

    /// Whether virtual address `svma` is in the object's entry code: at or
    /// after its entry point, less than [`ENTRY_CODE_MAX`] past it, with
    /// no unwind information for it or for the entry point, and no
    /// function with unwind information starting in between. The dynamic
    /// loader's entry code (glibc's `_start` and `_dl_start_user`, written
    /// in assembly without CFI) is where its process's first thread starts:
    /// nothing calls it. `None` when the object's `.eh_frame_hdr` cannot
    /// answer (then nothing is assumed).
    pub(super) fn in_entry_code(&self, svma: u64) -> Option<bool> {
        use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
        if self.entry == 0 || svma < self.entry || svma - self.entry >= ENTRY_CODE_MAX {
            return Some(false);
        }
        let s = &self.sections;
        let (hdr, hdr_at) = (s.eh_frame_hdr.as_deref()?, s.eh_frame_hdr_svma.as_ref()?);
        let (frames, frames_at) = (s.eh_frame.as_deref()?, s.eh_frame_svma.as_ref()?);
        let mut bases = BaseAddresses::default()
            .set_eh_frame_hdr(hdr_at.start)
            .set_eh_frame(frames_at.start);
        if let Some(text) = &s.text_svma {
            bases = bases.set_text(text.start);
        }
        let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8).ok()?;
        let table = parsed.table()?;
        let eh_frame = EhFrame::new(frames, LittleEndian);
        for at in [self.entry, svma] {
            match table.fde_for_address(&eh_frame, &bases, at, EhFrame::cie_from_offset) {
                Ok(_) => return Some(false),
                Err(gimli::Error::NoUnwindInfoForAddress) => {}
                Err(_) => return None,
            }
        }
        let mut rows = table.iter(&bases);
        loop {
            match rows.next() {
                Ok(Some((start, _))) => {
                    let start = start.direct().ok()?;
                    if self.entry < start && start <= svma {
                        return Some(false);
                    }
                }
                Ok(None) => return Some(true),
                Err(_) => return None,
            }
        }
    }

    /// `len` bytes of the file from `offset`, if it has them.
    pub(super) fn file_bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.image.bytes().get(start..start.checked_add(len)?)
    }

    /// The load bias (framehop's `base_avma`: where the object's virtual
    /// address 0 is) of `m`, from the load segment its file offset is in.
    pub(super) fn bias(&self, m: &CodeMap) -> Result<u64, String> {
        self.segments
            .iter()
            .find(|(_, foff, fsize)| {
                *foff & !0xfff <= m.offset && m.offset < foff + (*fsize).max(1)
            })
            .map(|(vaddr, foff, _)| {
                m.start
                    .wrapping_sub(m.offset)
                    .wrapping_sub(vaddr.wrapping_sub(*foff))
            })
            .ok_or_else(|| format!("no load segment holds file offset {:#x}", m.offset))
    }
}

/// Opens the file a mapping maps: through /proc/PID/map_files (the very
/// file, even renamed or deleted) when that is allowed, else by its path
/// as the process sees it, if that still names the same file.
///
/// A process whose leader has exited has neither: both are looked at
/// through a thread that runs on (`procfs::stand_in`).
fn open_mapped(pid: Pid, m: &CodeMap, path: &str, inode: u64) -> Result<File, String> {
    open_mapped_as(pid, m, path, inode).or_else(|e| match crate::procfs::stand_in(pid) {
        Some(t) => open_mapped_as(t, m, path, inode),
        None => Err(e),
    })
}

/// [`open_mapped`] through `/proc/VIA/...`.
fn open_mapped_as(via: Pid, m: &CodeMap, path: &str, inode: u64) -> Result<File, String> {
    let by_map = PathBuf::from(format!("/proc/{via}/map_files/{:x}-{:x}", m.start, m.end));
    if let Ok(f) = File::open(&by_map) {
        return Ok(f);
    }
    let by_path = crate::in_root(via, path);
    let f = File::open(&by_path).map_err(|e| format!("cannot open {}: {e}", by_path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", by_path.display()))?;
    // The inode only: on overlayfs the maps line gives the device of the
    // layer the file is on, stat that of the overlay.
    if meta.ino() != inode {
        return Err(format!(
            "{path} is no longer the file the process mapped (replaced since)"
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(start: u64, end: u64, offset: u64) -> CodeMap {
        CodeMap {
            start,
            end,
            offset,
            source: Source::Anonymous,
            loaded: Loaded::NotYet,
        }
    }

    #[test]
    fn bias_of_each_piece_of_a_split_text_segment() {
        // A shared object's text segment: file 0x1000..0x5000 at virtual
        // 0x1000; a PIE's, on a 2 MiB-aligned layout: file 0x1000 at 0x201000.
        let so = ObjectUnwind {
            sections: ExplicitModuleSectionInfo::default(),
            segments: vec![
                (0, 0, 0x800),
                (0x1000, 0x1000, 0x4000),
                (0x6000, 0x5000, 0x100),
            ],
            entry: 0,
            image: Arc::new(Image::Owned(Vec::new())),
        };
        let base = 0x7f00_0000_0000;
        for (start, offset) in [(base + 0x1000, 0x1000), (base + 0x3000, 0x3000)] {
            assert_eq!(so.bias(&map(start, start + 0x1000, offset)), Ok(base));
        }
        let pie = ObjectUnwind {
            sections: ExplicitModuleSectionInfo::default(),
            segments: vec![(0, 0, 0x800), (0x201000, 0x1000, 0x2000)],
            entry: 0,
            image: Arc::new(Image::Owned(Vec::new())),
        };
        let base = 0x5555_0000_0000;
        assert_eq!(
            pie.bias(&map(base + 0x201000, base + 0x203000, 0x1000)),
            Ok(base)
        );
        assert!(pie.bias(&map(base, base + 0x1000, 0x9000)).is_err());
    }

    /// The loader of this test program: its entry code (no CFI in glibc
    /// up to now) is entry code; an address of a function with unwind
    /// information, one before the entry point, or one far past it, is not.
    #[test]
    fn the_loaders_entry_code_is_told_from_its_functions() {
        let maps = crate::maps(crate::Pid::new(std::process::id() as i32)).unwrap();
        let Some(path) = maps.iter().find_map(|m| {
            m.path
                .as_deref()
                .filter(|p| p.rsplit('/').next().unwrap().starts_with("ld-linux"))
        }) else {
            eprintln!("skipped: no ld-linux mapped");
            return;
        };
        let file = File::open(path).unwrap();
        let o = ObjectUnwind::parse(Arc::new(Image::map(&file).unwrap())).unwrap();
        assert_ne!(o.entry, 0);
        assert_eq!(o.in_entry_code(o.entry - 1), Some(false));
        assert_eq!(o.in_entry_code(o.entry + ENTRY_CODE_MAX), Some(false));
        let starts_with_cfi = o.in_entry_code(o.entry) == Some(false);
        if starts_with_cfi {
            eprintln!("this loader's entry code has unwind information: framehop ends its stacks");
            return;
        }
        assert_eq!(o.in_entry_code(o.entry), Some(true));
        // Some address past the entry point is in a function with unwind
        // information: from there on, nothing is entry code.
        let first_function = (o.entry..o.entry + ENTRY_CODE_MAX)
            .find(|&a| o.in_entry_code(a) == Some(false))
            .expect("a function with CFI follows the entry code");
        assert!(
            first_function - o.entry < 256,
            "{:#x}",
            first_function - o.entry
        );
        assert_eq!(o.in_entry_code(first_function + 1), Some(false));
    }
}

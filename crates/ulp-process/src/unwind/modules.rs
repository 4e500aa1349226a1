//! The target's executable mappings, and the unwind sections of the objects
//! they map, read the first time an address in them is unwound.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use framehop::ExplicitModuleSectionInfo;
use object::{Object, ObjectSection, ObjectSegment, ReadCache, ReadRef};

use crate::{Mapping, Pid, RemoteAddr};

/// Section bytes as framehop holds them.
pub(super) type Bytes = Arc<[u8]>;

/// Where the code of an executable mapping comes from.
#[derive(Debug)]
pub(super) enum Source {
    /// A file: its name as /proc/PID/maps prints it, and its identity.
    File { path: String, inode: u64 },
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

    /// The unwind sections of this mapping's object and its load bias
    /// (`base_avma`: the address its virtual address 0 is at).
    pub(super) fn read_sections(
        &self,
        pid: Pid,
    ) -> Result<(u64, ExplicitModuleSectionInfo<Bytes>), String> {
        match &self.source {
            Source::File { path, inode } => {
                let file = open_mapped(pid, self, path, *inode)?;
                let cache = ReadCache::new(file);
                sections(&cache, self.start, self.offset)
            }
            Source::Vdso => {
                let mut image = vec![0u8; (self.end - self.start) as usize];
                crate::read_mem(pid, RemoteAddr::new(self.start), &mut image)
                    .map_err(|e| e.to_string())?;
                sections(&image[..], self.start, self.offset)
            }
            Source::Anonymous => Err("anonymous memory has no unwind information".into()),
        }
    }
}

/// Opens the file a mapping maps: through /proc/PID/map_files (the very
/// file, even renamed or deleted) when that is allowed, else by its path
/// as the process sees it, if that still names the same file.
fn open_mapped(pid: Pid, m: &CodeMap, path: &str, inode: u64) -> Result<File, String> {
    let by_map = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    if let Ok(f) = File::open(&by_map) {
        return Ok(f);
    }
    let by_path = crate::in_root(pid, path);
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

/// Reads the unwind sections of the ELF object `data`, mapped (its
/// executable part) at `start` from file offset `offset`.
fn sections<'d, R: ReadRef<'d>>(
    data: R,
    start: u64,
    offset: u64,
) -> Result<(u64, ExplicitModuleSectionInfo<Bytes>), String> {
    let file = object::File::parse(data).map_err(|e| format!("not an ELF object: {e}"))?;
    // The load segment this mapping comes from gives the bias.
    let bias = file
        .segments()
        .find_map(|seg| {
            let (foff, fsize) = seg.file_range();
            let page_start = foff & !0xfff;
            (page_start <= offset && offset < foff + fsize.max(1)).then(|| {
                start
                    .wrapping_sub(offset)
                    .wrapping_sub(seg.address().wrapping_sub(foff))
            })
        })
        .ok_or_else(|| format!("no load segment holds file offset {offset:#x}"))?;
    let range = |name: &str| -> Option<Range<u64>> {
        let s = file.section_by_name(name)?;
        Some(s.address()..s.address() + s.size())
    };
    let bytes = |name: &str| -> Result<Option<Bytes>, String> {
        match file.section_by_name(name) {
            None => Ok(None),
            Some(s) => match s.data() {
                Ok([]) => Ok(None),
                Ok(d) => Ok(Some(Arc::from(d))),
                Err(e) => Err(format!("cannot read its {name}: {e}")),
            },
        }
    };
    let eh_frame = bytes(".eh_frame")?;
    let (eh_frame_hdr, debug_frame) = if eh_frame.is_some() {
        (bytes(".eh_frame_hdr")?, None)
    } else {
        (None, bytes(".debug_frame")?)
    };
    Ok((
        bias,
        ExplicitModuleSectionInfo {
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
    ))
}

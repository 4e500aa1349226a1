//! The objects (executable and libraries) a process has mapped, found from
//! `/proc/PID/maps` without stopping the process.

use std::path::{Path, PathBuf};

use ulp_elf::ElfFile;
use ulp_process::{Mapping, Pid};

/// One mapped file.
#[derive(Clone, Debug)]
pub struct MappedObject {
    /// The path as the process sees it.
    pub path: String,
    /// Load bias: the address that file vaddr 0 maps to.
    pub bias: u64,
}

impl MappedObject {
    pub fn basename(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// A path the tool can open: through `/proc/PID/root` first (which also
    /// works for chrooted and containerised targets), then as is.
    pub fn open(&self, pid: Pid) -> Result<ElfFile, ulp_elf::Error> {
        let via_root = PathBuf::from(format!("/proc/{pid}/root{}", self.path));
        match ElfFile::open(&via_root) {
            Ok(f) => Ok(f),
            Err(_) => ElfFile::open(Path::new(&self.path)),
        }
    }
}

/// Every file mapped from offset 0 by `pid`, once each, in address order.
pub fn mapped_objects(pid: Pid) -> Result<Vec<MappedObject>, ulp_process::Error> {
    Ok(objects_from_maps(&ulp_process::maps(pid)?))
}

pub fn objects_from_maps(maps: &[Mapping]) -> Vec<MappedObject> {
    let mut out: Vec<MappedObject> = Vec::new();
    for m in maps {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        if !path.starts_with('/') || m.offset != 0 || m.inode == 0 {
            continue;
        }
        if out.iter().any(|o| o.path == path) {
            continue;
        }
        // Shared objects and PIE executables have their first PT_LOAD at
        // vaddr 0, so the offset-0 mapping starts at the bias; non-PIE
        // executables (first vaddr 0x400000 or so) have bias 0. The caller
        // that knows the file corrects that case (see `bias_for`).
        out.push(MappedObject {
            path: path.to_string(),
            bias: m.start,
        });
    }
    out
}

/// The load bias of `obj` given its ELF file: the offset-0 mapping start
/// minus the page-aligned vaddr of the first PT_LOAD.
pub fn bias_for(obj: &MappedObject, elf: &ElfFile) -> u64 {
    if elf.is_shared_object() {
        obj.bias
    } else {
        0
    }
}

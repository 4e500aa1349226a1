//! The objects (executable and libraries) a process has mapped, found from
//! `/proc/PID/maps` without stopping the process, and named as its dynamic
//! loader names them ([`named_objects`]).
//!
//! Distributions install `libfoo.so.1 -> libfoo.so.1.2.3`: the maps show
//! the file, the loader (and the runtime, through `dl_iterate_phdr`) the
//! name the program asked for. ulp names an object by the loader's name
//! (its link_map `l_name`, read from memory), else by its SONAME in the
//! directory of the file, and matches a library name against it with the
//! one rule the runtime also uses ([`MappedObject::is_library`],
//! `ulp_abi::names`).

use std::path::{Path, PathBuf};
use ulp_abi::le::{u16_at, u32_at, u64_at};

use ulp_abi::elf::{gnu_build_id, DT_NULL, DT_SONAME, DT_STRTAB, PHDR_SIZE};
use ulp_abi::elf::{ELFCLASS64, ELFDATA2LSB, ELFMAG, PT_DYNAMIC, PT_LOAD, PT_NOTE};
use ulp_elf::ElfFile;
use ulp_process::{Mapping, MapsField, PerFile, Pid, RemoteAddr};

/// One mapped file.
#[derive(Clone, Debug)]
pub struct MappedObject {
    /// The mapped file's path, from `/proc/PID/maps` (from our root).
    pub path: String,
    /// The name the process's dynamic loader has for it, as the process
    /// sees it: `l_name` (e.g. the SONAME link `/usr/lib/libfoo.so.1`),
    /// the executable's path for the main program. [`named_objects`] sets
    /// it; until then, and for objects the loader does not list, the path
    /// (or the SONAME link in its directory: [`named_objects`]).
    pub name: String,
    /// Where its dynamic section is loaded (`l_ld`), when known.
    pub dynamic: Option<u64>,
    /// Load bias: the address that file vaddr 0 maps to.
    pub bias: u64,
    /// The file's device and inode as the maps line gives them: two
    /// processes mapping the same file have the same pair.
    pub dev: MapsField,
    pub inode: u64,
}

/// What the kernel appends in `/proc/PID/maps` to the path of a file that
/// was removed or replaced since it was mapped.
const DELETED: &str = " (deleted)";

impl MappedObject {
    /// The file name, without the ` (deleted)` mark: a process that keeps
    /// running an old build after a package upgrade renamed a new file over
    /// it still has that library loaded, under that name.
    pub fn basename(&self) -> &str {
        let path = self.path.strip_suffix(DELETED).unwrap_or(&self.path);
        path.rsplit('/').next().unwrap_or(path)
    }

    /// The GNU build-id of the copy the process has mapped, read from its
    /// memory (not from the file at `path`, which may be another build by
    /// now). `None` when it cannot be read or has no build-id note.
    pub fn build_id_in_memory(&self, pid: Pid) -> Option<Vec<u8>> {
        build_id_in_memory(pid, self.bias)
    }

    /// Whether `lib` (a patch's target name, `--revert-all=LIB`) names
    /// this object: its loader name's basename or its SONAME, or, with a
    /// `/`, its whole loader name. The same rule as the runtime's
    /// (`ulp_abi::names::names_object`).
    pub fn is_library(&self, pid: Pid, lib: &str) -> bool {
        let soname = std::cell::OnceCell::new();
        ulp_abi::names::names_object(lib.as_bytes(), self.name.as_bytes(), || {
            soname
                .get_or_init(|| self.soname_in_memory(pid))
                .as_deref()
                .map(str::as_bytes)
        })
    }

    /// The SONAME (`DT_SONAME`) of the copy the process has mapped, read
    /// from its memory through its dynamic section.
    pub fn soname_in_memory(&self, pid: Pid) -> Option<String> {
        // Kept per file for the tool run: a SONAME is part of the file, and
        // a file mapped somewhere keeps its device and inode (a fleet maps
        // the same libraries, and every name test of every object asks).
        // (What was read is kept, a SONAME or none; a failed read is not.)
        static SONAMES: PerFile<Option<String>> = PerFile::new();
        if self.inode != 0 {
            if let Some(s) = SONAMES.get(self.dev, self.inode) {
                return s;
            }
        }
        let soname = soname_in_memory(pid, self.bias, self.dynamic)?;
        if self.inode != 0 {
            SONAMES.put(self.dev, self.inode, soname.clone());
        }
        soname
    }

    /// Whether `path` (as the process's loader named it: the runtime's
    /// registry records that) is this object: its loader name, its mapped
    /// path, or another link to the same file.
    pub fn is_path(&self, pid: Pid, path: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.name == path || self.path == path {
            return true;
        }
        std::fs::metadata(ulp_process::in_root(pid, path))
            .or_else(|_| std::fs::metadata(path))
            .is_ok_and(|m| m.ino() == self.inode && m.ino() != 0)
    }

    /// A path the tool can open: through `/proc/PID/root` first (which also
    /// works for chrooted and containerised targets), then as is.
    pub fn open(&self, pid: Pid) -> Result<ElfFile, ulp_elf::Error> {
        self.open_with(pid, ElfFile::open)
    }

    /// Like [`MappedObject::open`], reading only the named sections (and
    /// the headers): see [`ElfFile::open_sections`].
    pub fn open_sections(&self, pid: Pid, names: &[&str]) -> Result<ElfFile, ulp_elf::Error> {
        self.open_with(pid, |p| ElfFile::open_sections(p, names))
    }

    fn open_with(
        &self,
        pid: Pid,
        open: impl Fn(&Path) -> Result<ElfFile, ulp_elf::Error>,
    ) -> Result<ElfFile, ulp_elf::Error> {
        let via_root = ulp_process::in_root(pid, &self.path);
        match open(&via_root) {
            Ok(f) => Ok(f),
            Err(_) => open(Path::new(&self.path)),
        }
    }
}

/// Every file mapped from offset 0 by `pid`, once each, in address order,
/// named by their paths (cheap: `/proc/PID/maps` only). See
/// [`named_objects`] for the loader's names.
pub fn mapped_objects(pid: Pid) -> Result<Vec<MappedObject>, ulp_process::Error> {
    Ok(objects_from_maps(&ulp_process::maps(pid)?))
}

/// [`mapped_objects`], each named as the process's dynamic loader names it
/// (see [`MappedObject::name`]). Read from memory without stopping the
/// process. When the loader's list cannot be read (a static program, a
/// list changing under a `dlopen`), a shared object is named by its SONAME
/// in its file's directory when that link leads to the file, else by its
/// path.
pub fn named_objects(pid: Pid) -> Result<Vec<MappedObject>, ulp_process::Error> {
    named_objects_in(pid, &ulp_process::maps(pid)?)
}

/// [`named_objects`] from maps of `pid` already read (a moment ago: the
/// loader's list is read now, and an object it lists that these maps do
/// not show keeps its path as its name).
pub fn named_objects_in(
    pid: Pid,
    maps: &[Mapping],
) -> Result<Vec<MappedObject>, ulp_process::Error> {
    let mut objects = objects_from_maps(maps);
    let root = chroot_of(pid);
    for o in &mut objects {
        let path = o.path.strip_suffix(DELETED).unwrap_or(&o.path);
        o.name = as_seen_from(root.as_deref(), path);
    }
    match ulp_process::link_map(pid) {
        Ok(list) => {
            for e in list {
                // The object whose file maps the dynamic section.
                let Some(m) = maps
                    .iter()
                    .find(|m| m.contains(RemoteAddr::new(e.ld)) && m.inode != 0)
                else {
                    continue;
                };
                let Some(o) = objects.iter_mut().find(|o| {
                    o.inode == m.inode && o.dev == m.dev && m.path.as_deref() == Some(&o.path)
                }) else {
                    continue;
                };
                if o.dynamic.is_some() {
                    // Loaded twice (another namespace): the first name.
                    continue;
                }
                o.dynamic = Some(e.ld);
                if !e.name.is_empty() {
                    o.name = e.name;
                }
            }
        }
        Err(e) if e.is_gone() => return Err(e),
        Err(_) => {
            for o in &mut objects {
                if let Some(link) = soname_link(pid, o) {
                    o.name = link;
                }
            }
        }
    }
    Ok(objects)
}

/// `DIR/SONAME` (as the process sees it) for `obj` at `DIR/FILE`, when
/// that link leads to the mapped file.
fn soname_link(pid: Pid, obj: &MappedObject) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let soname = obj.soname_in_memory(pid)?;
    if soname.contains('/') || obj.name.ends_with(&format!("/{soname}")) {
        return None;
    }
    let dir = obj.name.rsplit_once('/')?.0;
    let link = format!("{dir}/{soname}");
    let m = std::fs::metadata(ulp_process::in_root(pid, &link)).ok()?;
    (m.ino() == obj.inode).then_some(link)
}

/// The directory `pid` is chrooted at, when it is not `/` (as far as
/// `/proc/PID/root` tells).
pub fn chroot_of(pid: Pid) -> Option<PathBuf> {
    let root = ulp_process::root(pid)?;
    (root != Path::new("/")).then_some(root)
}

/// A path from `/proc/PID/maps` (from our root) as a process chrooted at
/// `root` sees it.
fn as_seen_from(root: Option<&Path>, path: &str) -> String {
    match root.map(|r| Path::new(path).strip_prefix(r)) {
        Some(Ok(inside)) => format!("/{}", inside.to_string_lossy()),
        _ => path.to_string(),
    }
}

/// A path from `/proc/PID/maps` as the process itself sees it: maps show
/// paths from our root, so a chrooted process's paths carry its root.
pub fn as_seen_by(pid: Pid, path: &str) -> String {
    as_seen_from(chroot_of(pid).as_deref(), path)
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
            name: path.strip_suffix(DELETED).unwrap_or(path).to_string(),
            dynamic: None,
            bias: m.start.get(),
            dev: m.dev,
            inode: m.inode,
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

/// `len` bytes of `pid`'s memory at `addr`.
fn read_memory(pid: Pid, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    ulp_process::read_mem(pid, RemoteAddr::new(addr), &mut buf).ok()?;
    Some(buf)
}

/// How much [`LoadedHeaders::read`] reads first: the ELF header and up to
/// 17 program headers after it.
const HEAD_READ: usize = 1024;

/// The program headers of an ELF object mapped in a process, read where
/// they lie in its first loaded segment, and its load bias.
struct LoadedHeaders {
    /// `phnum` raw `Elf64_Phdr`s.
    phdrs: Vec<u8>,
    bias: u64,
}

impl LoadedHeaders {
    /// The headers of the ELF object whose file offset 0 is mapped at
    /// `start` in `pid` (64-bit, little-endian; at most `max_phnum` of
    /// them). The process is not stopped.
    fn read(pid: Pid, start: u64, max_phnum: usize) -> Option<LoadedHeaders> {
        // The ELF header and, as linkers place them, the program headers
        // right after it, in one read: `start` maps at least a page.
        let ehdr = read_memory(pid, start, HEAD_READ)?;
        let phdr_size = PHDR_SIZE as usize;
        if ehdr[..4] != *ELFMAG
            || ehdr[4] != ELFCLASS64
            || ehdr[5] != ELFDATA2LSB
            || usize::from(u16_at(&ehdr, 54)?) != phdr_size
        {
            return None;
        }
        let phoff = u64_at(&ehdr, 32)?;
        let phnum = usize::from(u16_at(&ehdr, 56)?).min(max_phnum);
        let wanted = phnum * phdr_size;
        let phdrs = match usize::try_from(phoff)
            .ok()
            .filter(|&o| o + wanted <= ehdr.len())
        {
            Some(o) => ehdr[o..o + wanted].to_vec(),
            None => read_memory(pid, start.checked_add(phoff)?, wanted)?,
        };
        // The load bias: `start` maps file offset 0, which the first
        // PT_LOAD places at p_vaddr - p_offset (congruent modulo the page
        // size).
        let mut headers = LoadedHeaders { phdrs, bias: 0 };
        let first = headers.of_type(PT_LOAD).next()?;
        headers.bias = start.wrapping_sub(u64_at(first, 16)?.wrapping_sub(u64_at(first, 8)?));
        Some(headers)
    }

    /// The raw headers of type `p_type`, in table order.
    fn of_type(&self, p_type: u32) -> impl Iterator<Item = &[u8]> + '_ {
        self.phdrs
            .chunks_exact(PHDR_SIZE as usize)
            .filter(move |p| u32_at(p, 0) == Some(p_type))
    }
}

/// The GNU build-id of the ELF object whose file offset 0 is mapped at
/// `start` in `pid`: its program headers are read there (they lie in the
/// first loaded segment), then its `PT_NOTE` segments at their load
/// addresses. Every read goes through process memory; the process is not
/// stopped.
fn build_id_in_memory(pid: Pid, start: u64) -> Option<Vec<u8>> {
    let headers = LoadedHeaders::read(pid, start, usize::MAX)?;
    for p in headers.of_type(PT_NOTE) {
        let size = u64_at(p, 32)?.min(1 << 16) as usize;
        let Some(notes) = read_memory(pid, headers.bias.wrapping_add(u64_at(p, 16)?), size) else {
            continue;
        };
        if let Some(id) = gnu_build_id(&notes, u64_at(p, 48)?) {
            return Some(id.to_vec());
        }
    }
    None
}

/// The `DT_SONAME` of the ELF object whose file offset 0 is mapped at
/// `start` in `pid`, read from its dynamic section (at `dynamic` when the
/// loader said where, else where its `PT_DYNAMIC` header says).
/// `Some(None)`: the object has no `DT_SONAME` (an executable); `None`:
/// its headers could not be read.
fn soname_in_memory(pid: Pid, start: u64, dynamic: Option<u64>) -> Option<Option<String>> {
    let read = |addr: u64, len: usize| read_memory(pid, addr, len);
    let headers = LoadedHeaders::read(pid, start, 256)?;
    let bias = headers.bias;
    let dynamic = match dynamic {
        Some(d) => d,
        None => {
            let p = headers.of_type(PT_DYNAMIC).next()?;
            bias.wrapping_add(u64_at(p, 16)?)
        }
    };
    let dyns = read(dynamic, 16 * 64).or_else(|| read(dynamic, 16 * 16))?;
    let (mut strtab, mut soname) = (None, None);
    for d in dyns.chunks_exact(16) {
        match u64_at(d, 0)? {
            DT_NULL => break,
            DT_STRTAB => strtab = u64_at(d, 8),
            DT_SONAME => soname = u64_at(d, 8),
            _ => {}
        }
    }
    // The loader relocates the dynamic section's addresses in place when
    // it is writable; one still below the bias is a file address.
    let Some(soname) = soname else {
        return Some(None);
    };
    let strtab = strtab?;
    let strtab = if strtab < bias {
        strtab.wrapping_add(bias)
    } else {
        strtab
    };
    let mut addr = strtab.checked_add(soname)?;
    let mut name = Vec::new();
    for _ in 0..16 {
        // Never across a 256-byte boundary in one read: the string may end
        // just before an unmapped page.
        let len = (256 - (addr & 255)) as usize;
        let b = read(addr, len)?;
        addr += len as u64;
        match b.iter().position(|&c| c == 0) {
            Some(end) => {
                name.extend_from_slice(&b[..end]);
                return Some(String::from_utf8(name).ok().filter(|n| !n.is_empty()));
            }
            None => name.extend_from_slice(&b),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_of_this_process_from_its_memory() {
        let pid = Pid::this();
        let objects = mapped_objects(pid).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let me = objects
            .iter()
            .find(|o| Path::new(&o.path) == exe)
            .expect("the test executable is mapped");
        let from_file = ElfFile::open(&exe).unwrap().build_id();
        assert!(from_file.is_some(), "rustc links with a build-id");
        assert_eq!(me.build_id_in_memory(pid), from_file);
        let libc = objects
            .iter()
            .find(|o| o.basename().starts_with("libc.so"))
            .expect("libc is mapped");
        assert_eq!(
            libc.build_id_in_memory(pid),
            ElfFile::open(Path::new(&libc.path)).unwrap().build_id()
        );
    }

    #[test]
    fn this_process_named_by_its_loader() {
        let pid = Pid::this();
        let objects = named_objects(pid).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let me = objects.iter().find(|o| Path::new(&o.path) == exe).unwrap();
        assert_eq!(Path::new(&me.name), exe, "the main program by its path");
        assert!(me.dynamic.is_some(), "the loader lists the main program");
        let libc = objects
            .iter()
            .find(|o| o.is_library(pid, "libc.so.6"))
            .expect("libc.so.6 by its name or SONAME");
        assert_eq!(libc.soname_in_memory(pid).as_deref(), Some("libc.so.6"));
        assert!(libc.is_library(pid, &libc.name));
        assert!(!libc.is_library(pid, "libc.so"));
        assert!(!libc.is_library(pid, ""));
    }

    #[test]
    fn deleted_files_keep_their_basename() {
        let o = MappedObject {
            path: "/usr/lib/libx.so.1 (deleted)".into(),
            name: "/usr/lib/libx.so.1".into(),
            dynamic: None,
            bias: 0,
            dev: "fe:00".into(),
            inode: 1,
        };
        assert_eq!(o.basename(), "libx.so.1");
    }
}

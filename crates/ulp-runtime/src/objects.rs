//! The objects loaded in this process, as `dl_iterate_phdr` reports them:
//! name, load bias, segments, TLS module id and GNU build-id.
//!
//! Every address the runtime reads or writes on behalf of a patch is first
//! checked against these segments, so a wrong offset in a request becomes a
//! refusal, not a fault inside someone else's process.

#[allow(unused_imports)]
use crate::prelude::*;

use core::ffi::{c_int, c_void, CStr};

use ulp_abi::elf::{gnu_build_id, PT_DYNAMIC, PT_GNU_RELRO, PT_LOAD, PT_NOTE, PT_TLS, SYM_SIZE};
use ulp_abi::elf::{DT_NULL, DT_RELA, DT_RELAENT, DT_RELASZ, DT_SONAME, DT_STRTAB, DT_SYMTAB};
pub use ulp_abi::elf::{PF_W, PF_X, STT_FUNC, STT_GNU_IFUNC};
use ulp_abi::elf::{R_X86_64_64, R_X86_64_GLOB_DAT};

/// One `PT_LOAD` segment, at its address in this process.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub flags: u32,
}

#[derive(Clone, Debug)]
pub struct LoadedObject {
    /// `dlpi_name`: empty for the main program.
    pub name: Vec<u8>,
    /// The file: `dlpi_name`, or `/proc/self/exe` for the main program.
    pub path: Vec<u8>,
    pub is_main: bool,
    pub bias: u64,
    pub loads: Vec<Segment>,
    /// `PT_GNU_RELRO`: read-only once relocated.
    pub relro: Option<(u64, u64)>,
    /// The module id of its TLS block, 0 without `PT_TLS`.
    pub tls_modid: u64,
    pub build_id: Option<Vec<u8>>,
    /// `PT_DYNAMIC`: address of its dynamic section, if it has one.
    pub dynamic: Option<u64>,
    /// Its `DT_SONAME`, read during the walk (under the loader's lock:
    /// another thread may unload the object as soon as the walk ends).
    pub soname: Option<Vec<u8>>,
}

impl LoadedObject {
    /// The address this object's own code uses for the exported data
    /// symbol `name`, when it reaches it through its GOT: the value of the
    /// GOT slot of an `R_X86_64_GLOB_DAT` (or `R_X86_64_64`) relocation
    /// against `name`. The dynamic linker may have bound that slot to
    /// another object's definition, typically the executable's copy made by
    /// an `R_X86_64_COPY` relocation: then the object's own definition is
    /// dead and writing it changes nothing the program sees.
    ///
    /// `None` when the object has no such relocation (static, hidden or
    /// `-Bsymbolic` data is reached directly) or when anything it would
    /// read lies outside its loaded segments.
    pub fn got_binding(&self, name: &[u8]) -> Option<u64> {
        let t = self.dynamic_tables()?;
        if t.rela == 0 || t.relaent < 24 {
            return None;
        }
        let want_len = name.len() as u64 + 1;
        for i in 0..t.relasz / t.relaent {
            let r = t.rela.wrapping_add(i * t.relaent);
            let (offset, info) = (self.read_u64(r)?, self.read_u64(r.wrapping_add(8))?);
            let (sym, kind) = (info >> 32, info & 0xffff_ffff);
            let got = kind == u64::from(R_X86_64_GLOB_DAT) || kind == u64::from(R_X86_64_64);
            if sym == 0 || !got {
                continue;
            }
            let st_name = self.read_u64(t.symtab.wrapping_add(sym * SYM_SIZE))? & 0xffff_ffff;
            let s = t.strtab.wrapping_add(st_name);
            if !self.contains(s, want_len, 0) {
                continue;
            }
            // SAFETY: `want_len` bytes at `s` are inside a loaded segment.
            let bytes = unsafe { core::slice::from_raw_parts(s as *const u8, want_len as usize) };
            if bytes[..name.len()] == *name && bytes[name.len()] == 0 {
                let slot = self.bias.wrapping_add(offset);
                return self.read_u64(slot).filter(|&v| v != 0);
            }
        }
        None
    }

    /// The size and type (`STT_FUNC`, `STT_GNU_IFUNC`, ...) of the dynamic
    /// symbol defined at `addr`: what the entry rewrite needs to decode the
    /// whole function. The dynamic symbol table's length is where the
    /// string table starts (the linkers' layout); every read is checked
    /// against the loaded segments. `None` when no dynamic symbol with a
    /// size is defined there (a local function: only `.symtab`, which is
    /// not loaded, knows it).
    pub fn dynamic_symbol_at(&self, addr: u64) -> Option<(u64, u8)> {
        let t = self.dynamic_tables()?;
        let count = t.strtab.checked_sub(t.symtab)? / SYM_SIZE;
        let value = addr.wrapping_sub(self.bias);
        let mut found = None;
        for i in 1..count.min(1 << 20) {
            let sym = t.symtab.wrapping_add(i * SYM_SIZE);
            // st_name (4), st_info (1), st_other (1), st_shndx (2).
            let head = self.read_u64(sym)?;
            let st_value = self.read_u64(sym.wrapping_add(8))?;
            let st_size = self.read_u64(sym.wrapping_add(16))?;
            let shndx = (head >> 48) as u16;
            if st_value == value && shndx != 0 && st_size > 0 {
                let kind = ((head >> 32) & 0xf) as u8;
                // Prefer a function over an alias of another type.
                if found.is_none() || kind == STT_FUNC {
                    found = Some((st_size, kind));
                }
            }
        }
        found
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        if !self.contains(addr, 8, 0) {
            return None;
        }
        // SAFETY: inside one of this object's loaded segments (checked).
        Some(unsafe { core::ptr::read_unaligned(addr as *const u64) })
    }

    /// Where the dynamic section says the symbol, string and RELA tables
    /// are.
    fn dynamic_tables(&self) -> Option<DynamicTables> {
        // glibc relocates these d_ptr values in place when the dynamic
        // section is writable; an unrelocated one is below the bias.
        let absolute = |v: u64| {
            if v < self.bias {
                v.wrapping_add(self.bias)
            } else {
                v
            }
        };
        let mut t = DynamicTables {
            strtab: 0,
            symtab: 0,
            rela: 0,
            relasz: 0,
            relaent: 24,
            soname: None,
        };
        let mut at = self.dynamic?;
        for _ in 0..4096 {
            let tag = self.read_u64(at)?;
            let val = self.read_u64(at.wrapping_add(8))?;
            match tag {
                DT_NULL => break,
                DT_STRTAB => t.strtab = absolute(val),
                DT_SYMTAB => t.symtab = absolute(val),
                DT_RELA => t.rela = absolute(val),
                DT_RELASZ => t.relasz = val,
                DT_RELAENT => t.relaent = val,
                DT_SONAME => t.soname = Some(val),
                _ => {}
            }
            at = at.wrapping_add(16);
        }
        (t.strtab != 0 && t.symtab != 0).then_some(t)
    }

    pub fn basename(&self) -> &[u8] {
        basename(&self.path)
    }

    /// Whether `lib` (a patch's target name, a `REVERT_ALL` library) names
    /// this object: the basename of the loader's name or its SONAME, or,
    /// with a `/`, the whole name: the rule the tool applies from outside
    /// (`ulp_abi::names`).
    pub fn is_named(&self, lib: &[u8]) -> bool {
        ulp_abi::names::names_object(lib, &self.path, || self.soname.as_deref())
    }

    /// Its `DT_SONAME`, read from its dynamic section in memory; `None`
    /// without one or when anything to read lies outside its segments.
    /// Only while the object cannot be unloaded (during the walk).
    fn read_soname(&self) -> Option<&[u8]> {
        let t = self.dynamic_tables()?;
        let at = t.strtab.checked_add(t.soname?)?;
        let seg = self.loads.iter().find(|s| s.start <= at && at < s.end)?;
        let len = (seg.end - at).min(4096);
        // SAFETY: `len` bytes at `at` lie inside one loaded segment.
        let bytes = unsafe { core::slice::from_raw_parts(at as *const u8, len as usize) };
        let end = bytes.iter().position(|&b| b == 0)?;
        Some(&bytes[..end])
    }

    /// Is `[addr, addr + len)` inside one loaded segment that has all of
    /// `flags` (`PF_X`, `PF_W`, `PF_R`)?
    pub fn contains(&self, addr: u64, len: u64, flags: u32) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.loads
            .iter()
            .any(|s| s.flags & flags == flags && s.start <= addr && end <= s.end)
    }

    /// Is `[addr, addr + len)` writable now (in a writable segment and not
    /// in the part made read-only after relocation)?
    pub fn writable(&self, addr: u64, len: u64) -> bool {
        if !self.contains(addr, len, PF_W) {
            return false;
        }
        match self.relro {
            Some((s, e)) => addr.saturating_add(len) <= s || addr >= e,
            None => true,
        }
    }
}

/// The dynamic section's tables (addresses in this process).
struct DynamicTables {
    strtab: u64,
    symtab: u64,
    rela: u64,
    relasz: u64,
    relaent: u64,
    /// `DT_SONAME`: an offset in the string table.
    soname: Option<u64>,
}

pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// The executable's path, from `/proc/self/exe` (empty when unreadable).
pub fn exe_path() -> Vec<u8> {
    crate::sys::readlink(c"/proc/self/exe").unwrap_or_default()
}

struct Walk {
    exe: Vec<u8>,
    objects: Vec<LoadedObject>,
    failed: bool,
}

/// Whether [`loaded_objects`] names the main program by its file (one
/// `readlink` of `/proc/self/exe`, 7 µs on the VM measured), or leaves its
/// `path` empty for a caller that looks objects up by the loader's name
/// only (the main program's loader name is empty either way).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MainPath {
    Read,
    Skip,
}

/// Every loaded object, the main program first.
pub fn loaded_objects(main: MainPath) -> Option<Vec<LoadedObject>> {
    let mut walk = Walk {
        exe: match main {
            MainPath::Read => exe_path(),
            MainPath::Skip => Vec::new(),
        },
        objects: Vec::new(),
        failed: false,
    };
    // SAFETY: the callback only reads what the loader hands it and the
    // `Walk` passed as `data`, which outlives the call.
    unsafe { crate::lazy::dl_iterate_phdr(Some(visit), (&mut walk as *mut Walk).cast()) };
    if walk.failed {
        None
    } else {
        Some(walk.objects)
    }
}

unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, size: usize, data: *mut c_void) -> c_int {
    // A panic must not leave the loader's lock held: a guard of its own,
    // so it comes back here and stops the walk.
    let r = crate::guard::guarded(|| {
        // SAFETY: `data` is the `Walk` of `loaded_objects`; `info` is valid
        // for `size` bytes during the callback.
        let walk = unsafe { &mut *data.cast::<Walk>() };
        let object = unsafe { describe(&*info, size, walk.objects.is_empty(), &walk.exe) };
        walk.objects.push(object);
    });
    match r {
        Some(()) => 0,
        None => {
            // SAFETY: as above.
            unsafe { (*data.cast::<Walk>()).failed = true };
            1
        }
    }
}

/// # Safety
/// `info` must come from `dl_iterate_phdr`, valid for `size` bytes.
unsafe fn describe(
    info: &libc::dl_phdr_info,
    size: usize,
    first: bool,
    exe: &[u8],
) -> LoadedObject {
    let name = if info.dlpi_name.is_null() {
        Vec::new()
    } else {
        CStr::from_ptr(info.dlpi_name).to_bytes().to_vec()
    };
    // dl_iterate_phdr reports the main program first, with an empty name.
    let is_main = first && name.is_empty();
    let path = if is_main { exe.to_vec() } else { name.clone() };
    let bias = info.dlpi_addr;
    let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize)
    };
    let mut object = LoadedObject {
        name,
        path,
        is_main,
        bias,
        loads: Vec::new(),
        relro: None,
        tls_modid: 0,
        build_id: None,
        dynamic: None,
        soname: None,
    };
    // `dlpi_tls_modid` exists only when the loader's struct is that long.
    let modid_end =
        core::mem::size_of::<libc::dl_phdr_info>() - core::mem::size_of::<*mut c_void>();
    let has_tls = phdrs.iter().any(|p| p.p_type == PT_TLS);
    if size >= modid_end && has_tls {
        object.tls_modid = info.dlpi_tls_modid as u64;
    }
    for p in phdrs {
        let start = bias.wrapping_add(p.p_vaddr);
        match p.p_type {
            PT_LOAD => object.loads.push(Segment {
                start,
                end: start.wrapping_add(p.p_memsz),
                flags: p.p_flags,
            }),
            PT_GNU_RELRO => object.relro = Some((start, start.wrapping_add(p.p_memsz))),
            PT_DYNAMIC => object.dynamic = Some(start),
            _ => {}
        }
    }
    for p in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        let start = bias.wrapping_add(p.p_vaddr);
        // Read notes only where a loaded segment maps them.
        if object.build_id.is_none() && object.contains(start, p.p_filesz, 0) {
            let notes = core::slice::from_raw_parts(start as *const u8, p.p_filesz as usize);
            object.build_id = gnu_build_id(notes, p.p_align).map(<[u8]>::to_vec);
        }
    }
    object.soname = object.read_soname().map(<[u8]>::to_vec);
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_listed() {
        let objects = loaded_objects(MainPath::Read).unwrap();
        assert!(objects[0].is_main);
        assert!(!objects[0].path.is_empty());
        let unnamed = loaded_objects(MainPath::Skip).unwrap();
        assert!(unnamed[0].is_main && unnamed[0].path.is_empty());
        assert_eq!(unnamed[1..].len(), objects[1..].len());
        assert!(unnamed[1..]
            .iter()
            .zip(&objects[1..])
            .all(|(a, b)| a.path == b.path));
        assert!(objects.iter().any(|o| o.basename().starts_with(b"libc.so")));
        // libc is named by its SONAME too, whatever file it was loaded from.
        let libc = objects
            .iter()
            .find(|o| o.soname.as_deref() == Some(&b"libc.so.6"[..]))
            .expect("libc.so.6 has its SONAME in memory");
        assert!(libc.is_named(b"libc.so.6"));
        assert!(libc.is_named(&libc.path));
        assert!(!libc.is_named(b"libc.so"));
    }

    #[test]
    fn basenames() {
        assert_eq!(basename(b"/a/b/libx.so.1"), b"libx.so.1");
        assert_eq!(basename(b"libx.so"), b"libx.so");
        assert_eq!(basename(b""), b"");
    }
}

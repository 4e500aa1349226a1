//! Patches that stay: the runtime applies the records of the patch store
//! (`ulp trigger --persist`, `ulp_core::store`) by itself, once when the
//! process starts (from the constructor, before `main`) and again each
//! time `dlopen` loads something new (`dlopen.rs`), before `dlopen`
//! returns.
//!
//! The store is `ULP_STORE` from the process's environment, else
//! [`store::DEFAULT_DIR`]. When it does not exist at start, nothing more
//! happens, ever: the start cost is one `stat`, and `dlopen` stays a
//! plain jump to the C library's. When it exists, `dlopen` is *armed*:
//! after each successful load the store directory's change time is
//! compared with the last one seen (one `stat`), the records are read
//! again when it changed, and every record whose target (name and
//! build-id) is now loaded and not yet patched is applied.
//!
//! A record is used only when it passes the checks the tool makes
//! (`ulp_core::store`): a record directory named by the patch id, its
//! `record.json` of a known format, its container copy an ELF file whose
//! `.ulp` section decodes and carries that patch id; every entry (and
//! every directory above the store) owned by root or by this process's
//! user and not writable by group or others (a directory with the sticky
//! bit excepted). Anything else is refused with one line in the message
//! ring (`ulp messages`), and the process runs unpatched.
//!
//! How this squares with the runtime's rules (lib.rs): here the runtime
//! changes code itself, which it otherwise leaves to the tool. At start
//! no other thread exists yet (constructors run before `main`; a library
//! constructor that starts threads would have them outside the target's
//! code, since the patch goes in before anyone can call it through us
//! either way); after `dlopen` the target is the object just loaded,
//! whose code no other thread can have reached (its handle and symbols
//! are not returned yet). The writes are the same plan the tool would make
//! (every stub before the jump that leads to it), each checked against the
//! bytes it replaces, made through `/proc/self/mem` (which writes
//! read-only code without `mprotect`, so a process that forbids writable
//! code (W^X, `PR_SET_MDWE`) still takes them), falling back to a
//! temporary `mprotect` when `/proc/self/mem` is unavailable. A write
//! that fails puts back the ones made and takes the patch out of the
//! registry again: the process keeps its old code, whole.

use alloc::ffi::CString;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, Ordering};

use ulp_abi::format::Metadata;
use ulp_abi::{state, store, ApplyRequest, Write};

use crate::elf_file::ElfFile;
use crate::interface;
use crate::objects::{self, LoadedObject};
use crate::patch;
use crate::registry::Registry;
use crate::ring::{self, Hex, Text};
use crate::sys::{self, errno_text, Stat};

/// Set once the store was found at start: `dlopen` then looks at it.
pub(crate) static ARMED: AtomicBool = AtomicBool::new(false);

/// One record of the store, read and checked.
struct Rec {
    /// The record directory's name (the patch id, hex).
    name: Vec<u8>,
    container: CString,
    meta: Metadata,
    ulp: Vec<u8>,
    comments: Vec<u8>,
    /// Load biases of target objects this record was tried on: a refusal
    /// is not repeated at every `dlopen`.
    tried: Vec<u64>,
}

struct Store {
    dir: CString,
    /// The directory's (ctime, ctime_nsec, inode) when last read.
    stamp: Option<(i64, i64, u64)>,
    recs: Vec<Rec>,
}

struct Global(UnsafeCell<Option<Store>>);

// SAFETY: touched only under the runtime's BUSY flag (lib.rs), one thread
// at a time.
unsafe impl Sync for Global {}

static STORE: Global = Global(UnsafeCell::new(None));

/// At start (the constructor): the store's directory when live patching
/// is enabled and the directory exists (`ULP_STORE`, or the default).
/// No allocation: a process that never allocates must not pay for the
/// allocator's start here.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub(crate) fn start_dir() -> Option<&'static CStr> {
    if interface::state() != state::ENABLED {
        return None;
    }
    let path: &CStr = match sys::getenv_c(store::ENV_C.to_bytes()) {
        Some(named) if !named.is_empty() => named,
        _ => store::DEFAULT_DIR_C,
    };
    sys::stat(path, true).ok().map(|_| path)
}

/// At start (the constructor, under BUSY), the store found at `path`
/// ([`start_dir`]): applies what it records for the objects loaded now.
///
/// # Safety
/// The caller holds BUSY.
pub(crate) unsafe fn at_start(reg: &mut Registry, path: &CStr) {
    if interface::state() != state::ENABLED {
        return;
    }
    // Before the first walk of the loaded objects (its callback allocates).
    crate::lazy::prepare();
    if !preloaded() {
        return;
    }
    let dir = CString::from(path);
    let slot = &mut *STORE.0.get();
    let st = slot.insert(Store {
        dir,
        stamp: None,
        recs: Vec::new(),
    });
    ARMED.store(true, Ordering::Release);
    st.refresh();
    st.apply_pending(reg);
}

/// Whether this runtime was loaded with the program (a preload), not
/// later by `dlopen` (`ulp trigger --load-runtime`, which runs the
/// constructor while the program's threads run; the tool applies what it
/// was asked to there). The loader lists the objects of a start in order,
/// the program, its preloads, then the libraries they need (the C library
/// among them); an object that `dlopen` loads comes after all of those.
fn preloaded() -> bool {
    let Some(objects) = objects::loaded_objects(objects::MainPath::Read) else {
        return false;
    };
    let here = preloaded as *const () as u64;
    let ours = objects
        .iter()
        .position(|o| o.contains(here, 1, objects::PF_X));
    let libc = objects.iter().position(|o| o.is_named(b"libc.so.6"));
    matches!((ours, libc), (Some(a), Some(b)) if a < b)
}

/// After a successful `dlopen` (under BUSY): reads the store again when it
/// changed and applies what it records for objects not yet patched.
///
/// # Safety
/// The caller holds BUSY.
pub(crate) unsafe fn after_dlopen(reg: &mut Registry) {
    if interface::state() != state::ENABLED {
        return;
    }
    if let Some(st) = (*STORE.0.get()).as_mut() {
        st.refresh();
        st.apply_pending(reg);
    }
}

impl Store {
    /// Reads the records again when the directory changed since last time.
    fn refresh(&mut self) {
        let stamp = match sys::stat(&self.dir, true) {
            Ok(st) => st.change,
            Err(e) => {
                if self.stamp.take().is_some() || !self.recs.is_empty() {
                    ring::log(format_args!(
                        "patch store '{}' is gone ({}): no stored patches",
                        Text(self.dir.as_bytes()),
                        errno_text(e)
                    ));
                }
                self.recs.clear();
                return;
            }
        };
        if Some(stamp) == self.stamp {
            return;
        }
        self.stamp = Some(stamp);
        let old = core::mem::take(&mut self.recs);
        if let Err(why) = trusted_dir_path(&self.dir) {
            ring::log(format_args!(
                "patch store '{}' refused: {why}",
                Text(self.dir.as_bytes())
            ));
            return;
        }
        let names = match sys::read_dir(&self.dir) {
            Ok(n) => n,
            Err(e) => {
                ring::log(format_args!(
                    "patch store '{}' cannot be read: {}",
                    Text(self.dir.as_bytes()),
                    errno_text(e)
                ));
                return;
            }
        };
        for name in names {
            if name.starts_with(b".") {
                continue; // a record being written or removed
            }
            let path = join(&self.dir, &name);
            match read_record(&path) {
                Ok(mut rec) => {
                    if let Some(o) = old.iter().find(|o| o.name == rec.name) {
                        rec.tried.clone_from(&o.tried);
                    }
                    self.recs.push(rec);
                }
                Err(why) => ring::log(format_args!(
                    "stored patch '{}' refused: {why}",
                    Text(path.as_bytes())
                )),
            }
        }
    }

    /// Applies every record whose target is loaded and which is not
    /// applied yet (nor refused before for that very object).
    fn apply_pending(&mut self, reg: &mut Registry) {
        if self.recs.is_empty() {
            return;
        }
        let Some(objects) = objects::loaded_objects(objects::MainPath::Read) else {
            return;
        };
        for rec in &mut self.recs {
            if reg.position(&rec.meta.patch_id).is_some() {
                continue;
            }
            let Some(target) = objects.iter().find(|o| {
                o.is_named(rec.meta.target_name.as_bytes())
                    && o.build_id.as_deref() == Some(&rec.meta.build_id[..])
            }) else {
                continue;
            };
            if rec.tried.contains(&target.bias) {
                continue;
            }
            rec.tried.push(target.bias);
            apply_one(reg, rec, target);
        }
    }
}

/// Applies one record to `target`: the runtime's own APPLY, then the
/// writes made here (module comment).
fn apply_one(reg: &mut Registry, rec: &Rec, target: &LoadedObject) {
    let sizes = function_sizes(target, &rec.meta);
    let request = ApplyRequest {
        container_path: rec.container.as_bytes(),
        ulp: &rec.ulp,
        comments: &rec.comments,
        sizes: &sizes,
    };
    let mut buf = vec![0u8; request.encoded_len()];
    if request.encode(&mut buf).is_none() {
        return;
    }
    let shown = Text(rec.container.as_bytes());
    // APPLY logs its own result line (or why it refused).
    let done = match patch::apply(reg, &buf) {
        Ok(done) => done,
        Err(f) => {
            ring::log(format_args!("stored patch '{shown}' not applied: {f}"));
            return;
        }
    };
    match write_all(&done.writes) {
        Ok(()) => {
            if let Some(p) = reg.patches.last_mut() {
                p.at_start = true;
            }
            reg.publish();
            ring::log(format_args!(
                "stored patch '{shown}' applied by the runtime ({} code writes)",
                done.writes.len()
            ));
        }
        Err(why) => {
            let _ = patch::undo(reg);
            ring::log(format_args!(
                "stored patch '{shown}' not applied: {why}; nothing changed"
            ));
        }
    }
}

/// Each unit's old function size from the target file's `.symtab` (what
/// the tool sends with a request), when that file is the very build the
/// patch is for; 0 where unknown.
fn function_sizes(target: &LoadedObject, meta: &Metadata) -> Vec<u8> {
    let file = CString::new(target.path.clone())
        .ok()
        .and_then(|p| sys::read_file(&p, 1 << 30).ok())
        .and_then(ElfFile::parse)
        .filter(|f| f.build_id() == Some(&meta.build_id[..]));
    meta.units
        .iter()
        .flat_map(|u| {
            file.as_ref()
                .map_or(0, |f| f.size_at(u.old_faddr))
                .to_le_bytes()
        })
        .collect()
}

/// `dir/name`.
fn join(dir: &CStr, name: &[u8]) -> CString {
    let mut p = dir.to_bytes().to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    CString::new(p).unwrap_or_default()
}

/// `lstat` of `path`, or why not.
fn lstat(path: &CStr, what: &str) -> Result<Stat, String> {
    sys::stat(path, false).map_err(|e| format!("cannot examine {what} ({})", errno_text(e)))
}

/// The store's trust rule for one entry: owned by root or by this
/// process's user, not writable by group or others (a directory with the
/// sticky bit excepted).
fn trusted(what: &str, st: &Stat) -> Result<(), String> {
    let me = sys::geteuid();
    if st.uid != 0 && st.uid != me {
        return Err(format!(
            "{what} is owned by uid {}, not by root or this process's user (uid {me})",
            st.uid
        ));
    }
    if st.mode & 0o022 != 0 && !(st.is_dir() && st.mode & 0o1000 != 0) {
        return Err(format!(
            "{what} is writable by group or others (mode {:04o})",
            st.mode & 0o7777
        ));
    }
    Ok(())
}

/// The rule for the store directory and every directory above it.
fn trusted_dir_path(dir: &CStr) -> Result<(), String> {
    let real = sys::realpath(dir).map_err(|e| format!("cannot resolve it ({})", errno_text(e)))?;
    let mut at = Vec::with_capacity(real.len());
    let parts =
        core::iter::once(&b""[..]).chain(real.split(|&b| b == b'/').filter(|p| !p.is_empty()));
    for part in parts {
        if at.last() != Some(&b'/') {
            at.push(b'/');
        }
        at.extend_from_slice(part);
        let path = CString::new(at.clone()).unwrap_or_default();
        let what = format!("directory '{}'", Text(&at));
        trusted(&what, &lstat(&path, &what)?)?;
    }
    Ok(())
}

/// Reads and checks one record directory (module comment).
fn read_record(dir: &CStr) -> Result<Rec, String> {
    let meta = lstat(dir, "it")?;
    if !meta.is_dir() {
        return Err("not a record directory".into());
    }
    trusted("the record directory", &meta)?;
    let name = dir
        .to_bytes()
        .rsplit(|&b| b == b'/')
        .next()
        .unwrap_or_default()
        .to_vec();
    let mpath = join(dir, store::METADATA.as_bytes());
    let mmeta = lstat(&mpath, store::METADATA)?;
    if !mmeta.is_file() || mmeta.size > 64 * 1024 {
        return Err(format!(
            "its {} is not a small regular file",
            store::METADATA
        ));
    }
    trusted(store::METADATA, &mmeta)?;
    let text = sys::read_file(&mpath, 64 * 1024)
        .map_err(|e| format!("cannot read {} ({})", store::METADATA, errno_text(e)))?;
    let bad = |field: &str| format!("{} has no valid field '{field}'", store::METADATA);
    if json_number(&text, b"format") != Some(store::FORMAT) {
        return Err(bad("format"));
    }
    let container = json_string(&text, b"container")
        .filter(|c| !c.is_empty() && !c.contains(&b'/') && c[0] != b'.')
        .ok_or_else(|| bad("container"))?;
    let patch_id = json_string(&text, b"patch_id").ok_or_else(|| bad("patch_id"))?;
    if !patch_id.eq_ignore_ascii_case(&name) {
        return Err(format!(
            "its {} is for patch id {}, not the directory's name",
            store::METADATA,
            Text(&patch_id)
        ));
    }
    let cpath = join(dir, &container);
    let cmeta = lstat(
        &cpath,
        &format!("its container copy '{}'", Text(&container)),
    )?;
    if !cmeta.is_file() {
        return Err(format!(
            "its container copy '{}' is not a regular file",
            Text(&container)
        ));
    }
    trusted("its container copy", &cmeta)?;
    let elf = sys::read_file(&cpath, 1 << 30)
        .ok()
        .and_then(ElfFile::parse)
        .ok_or_else(|| {
            format!(
                "its container copy '{}' is not an ELF file",
                Text(&container)
            )
        })?;
    let ulp = elf
        .section(b".ulp")
        .ok_or("its container copy has no .ulp section")?
        .to_vec();
    let meta = Metadata::decode(&ulp)
        .map_err(|e| format!("the .ulp section of its container copy is bad: {e}"))?;
    if !format!("{}", Hex(&meta.patch_id))
        .as_bytes()
        .eq_ignore_ascii_case(&patch_id)
    {
        return Err(format!(
            "its container copy is patch {}, not {}",
            Hex(&meta.patch_id),
            Text(&patch_id)
        ));
    }
    let comments = elf.section(b".ulp.comments").unwrap_or_default().to_vec();
    Ok(Rec {
        name,
        container: cpath,
        meta,
        ulp,
        comments,
        tried: Vec::new(),
    })
}

/// The value of the top-level field `key` of the flat JSON object `text`
/// when it is a string (escapes decoded; `\u` only for ASCII).
fn json_string(text: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    let mut rest = json_value(text, key)?.strip_prefix(b"\"")?;
    let mut out = Vec::new();
    loop {
        let (&c, tail) = rest.split_first()?;
        rest = tail;
        match c {
            b'"' => return Some(out),
            b'\\' => {
                let (&e, tail) = rest.split_first()?;
                rest = tail;
                out.push(match e {
                    b'"' | b'\\' | b'/' => e,
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'u' => {
                        let hex = core::str::from_utf8(rest.get(..4)?).ok()?;
                        rest = &rest[4..];
                        u8::try_from(u32::from_str_radix(hex, 16).ok()?)
                            .ok()
                            .filter(u8::is_ascii)?
                    }
                    _ => return None,
                });
            }
            _ => out.push(c),
        }
    }
}

/// The value of field `key` when it is a non-negative integer.
fn json_number(text: &[u8], key: &[u8]) -> Option<u64> {
    let v = json_value(text, key)?;
    let end = v
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(v.len());
    core::str::from_utf8(&v[..end]).ok()?.parse().ok()
}

/// The text after `"key":` (and any blanks).
fn json_value<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    let at = text.windows(quoted.len()).position(|w| w == quoted)? + quoted.len();
    let rest = text[at..].trim_ascii_start().strip_prefix(b":")?;
    Some(rest.trim_ascii_start())
}

/// Makes `writes` in this process, in order, each checked against the
/// bytes it replaces; on a failure puts back those made (backwards) and
/// says why.
fn write_all(writes: &[Write]) -> Result<(), String> {
    let mem = Mem::open();
    for (i, w) in writes.iter().enumerate() {
        let len = (w.len as usize).min(16);
        let mut now = [0u8; 16];
        let result = mem.read(w.addr, &mut now[..len]).and_then(|()| {
            if now[..len] != w.old[..len] {
                return Err(format!(
                    "the code at {:#x} is not what the patch expects",
                    w.addr
                ));
            }
            mem.write(w.addr, &w.new[..len])
        });
        if let Err(why) = result {
            for d in writes[..i].iter().rev() {
                let _ = mem.write(d.addr, &d.old[..(d.len as usize).min(16)]);
            }
            return Err(why);
        }
    }
    Ok(())
}

/// This process's memory, through `/proc/self/mem` when it opens.
struct Mem(libc::c_int);

impl Mem {
    fn open() -> Mem {
        // SAFETY: a NUL-terminated path; the descriptor is closed on drop.
        Mem(sys::open(c"/proc/self/mem", libc::O_RDWR | libc::O_CLOEXEC))
    }

    fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), String> {
        // SAFETY: `out` is writable for its length; the kernel checks
        // the address.
        let n = unsafe { sys::pread(self.0, out.as_mut_ptr().cast(), out.len(), addr) };
        if self.0 >= 0 && n == out.len() as isize {
            return Ok(());
        }
        Err(format!("cannot read the code at {addr:#x}"))
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        if self.0 >= 0 {
            // SAFETY: as for `read`.
            let n = unsafe { sys::pwrite(self.0, data.as_ptr().cast(), data.len(), addr) };
            if n == data.len() as isize {
                return Ok(());
            }
        }
        write_protected(addr, data)
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        if self.0 >= 0 {
            sys::close(self.0);
        }
    }
}

/// The fallback: the pages made writable for the write, then given back
/// the protection `/proc/self/maps` gives them.
fn write_protected(addr: u64, data: &[u8]) -> Result<(), String> {
    let end = addr + data.len() as u64;
    let prot = protection_of(addr, end)
        .ok_or_else(|| format!("the code at {addr:#x} is not in one mapping"))?;
    let page = 4096u64;
    let start = addr & !(page - 1);
    let stop = (end + page - 1) & !(page - 1);
    let len = (stop - start) as usize;
    // SAFETY: the range lies in one mapping (checked); its protection is
    // restored right after the copy.
    unsafe {
        if !sys::mprotect(start, len, prot | libc::PROT_WRITE) {
            return Err(format!(
                "cannot write the code at {addr:#x}: /proc/self/mem and mprotect both refused"
            ));
        }
        core::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len());
        sys::mprotect(start, len, prot);
    }
    Ok(())
}

/// The protection of the mapping that holds `[addr, end)` whole.
fn protection_of(addr: u64, end: u64) -> Option<libc::c_int> {
    let maps = sys::read_file(c"/proc/self/maps", 64 << 20).ok()?;
    maps.split(|&b| b == b'\n').find_map(|line| {
        let mut f = line.split(|&b| b == b' ');
        let range = core::str::from_utf8(f.next()?).ok()?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        if !(lo <= addr && end <= hi) {
            return None;
        }
        let perms = f.next()?;
        let mut prot = 0;
        for (c, p) in [
            (b'r', libc::PROT_READ),
            (b'w', libc::PROT_WRITE),
            (b'x', libc::PROT_EXEC),
        ] {
            if perms.contains(&c) {
                prot |= p;
            }
        }
        Some(prot)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_are_read_from_the_tools_json() {
        let text = br#"{"format":1,"container":"fix\u002e\"a\".so","patch_id" : "00ff"}"#;
        assert_eq!(json_number(text, b"format"), Some(1));
        assert_eq!(json_string(text, b"container").unwrap(), b"fix.\"a\".so");
        assert_eq!(json_string(text, b"patch_id").unwrap(), b"00ff");
        assert_eq!(json_string(text, b"missing"), None);
        assert_eq!(json_string(br#"{"container":"open"#, b"container"), None);
        assert_eq!(json_number(br#"{"format":"1"}"#, b"format"), None);
    }
}

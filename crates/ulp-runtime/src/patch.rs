//! Applying and reverting patches: the registry of applied patches, the
//! checks made before anything changes, and the code writes handed back to
//! the tool.
//!
//! Glossary: a *patch* is one applied container; a *unit* replaces one
//! function of the *target* (the object the patch is for) by one function
//! of the *container*; a *site* is a patchable function entry: 14 bytes of
//! padding before the symbol (where the stub goes) and the two bytes at the
//! *patch point* (the entry, or just after `endbr64`) that become the short
//! jump to the stub. The *stub* jumps to the new function: a direct
//! `jmp rel32` (`e9 <rel32>` and 9 NOPs) when the new function is within
//! ±2 GiB, else `jmp *0(%rip)` and the absolute address (`ff 25 00 00 00
//! 00 <abs64>`); see [`ulp_abi::stub_bytes`]. Those, and the guarded form
//! below (whole or half converted), are "our stub" wherever a site is
//! checked ([`ulp_abi::parse_stub`]).
//!
//! The runtime never changes code. It returns [`Write`]s; the tool makes
//! them with every thread stopped, in the order given here (every stub
//! before the entry jump that leads to it). The registry changes here as
//! if the writes were made; when the tool cannot make them it calls UNDO,
//! which puts the registry back.
//!
//! A patch of several functions none of which is redirected yet is
//! *activated at once* ([`guarded_apply`]): its stubs are first written
//! guarded by a per-patch flag byte of ours ([`FLAGS`]), then the entry
//! jumps, then the flag (the one write that switches every function), then
//! the stubs become plain direct jumps again; a revert runs it backwards
//! ([`guarded_revert`]). A tool killed between any two of those writes
//! leaves every function of the patch on the same side of the flag
//! (ARCHITECTURE.md, "Activating a patch of several functions at once").
//!
//! Every operation is all or nothing: all checks come before the first
//! change (registry, container memory), so a refused patch leaves nothing.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_void, CStr};
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU8, Ordering};
use std::ffi::CString;

use ulp_abi::ReplaceRequest;
use ulp_abi::{code, entry_jump, state, stub_bytes, write_kind};
use ulp_abi::{direct_stub, guarded_stub, parse_stub, Stub};
use ulp_abi::{ApplyRequest, PatchRecord, Write};
use ulp_abi::{ENTRY_NOP, MAX_WRITES, STUB_LEN};
use ulp_container::format::{decode_comments, Metadata, PATCH_ID_LEN};

use crate::interface;
use crate::objects::{self, LoadedObject, PF_X};
use crate::rewrite::{self, Rewritten};
use crate::ring::{self, Hex, SpacedHex, Text};

/// What an operation hands back on success: the result message and the
/// writes for the tool.
#[derive(Debug)]
pub struct Done {
    pub msg: String,
    pub writes: Vec<Write>,
}

/// A refusal: the result code and a message naming what failed.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub msg: String,
}

impl Failure {
    fn new(code: i32, msg: impl Into<String>) -> Failure {
        Failure {
            code,
            msg: msg.into(),
        }
    }
}

fn failed(msg: impl Into<String>) -> Failure {
    Failure::new(code::FAILED, msg)
}

/// One redirected function of an applied patch.
#[derive(Debug)]
struct AppliedUnit {
    /// The symbol (the stub sits in the 14 bytes before it).
    entry: u64,
    /// Where the short jump sits: `entry`, or `entry + 4` after `endbr64`.
    patch_point: u64,
    /// The container's function the stub jumps to.
    new_addr: u64,
    /// Redirected by an entry rewrite (`rewrite.rs`), not through padding.
    rewrite: bool,
}

/// An applied patch. The strings are what the published [`PatchRecord`]s
/// point to: they live as long as the patch is in the registry, or is kept
/// for UNDO after a revert.
#[derive(Debug)]
struct Patch {
    id: [u8; PATCH_ID_LEN],
    container_path: CString,
    target_path: CString,
    target_bias: u64,
    comments: CString,
    applied_at: i64,
    units: Vec<AppliedUnit>,
    /// The slot of [`FLAGS`] the patch was activated with, when it was
    /// ([`guarded_apply`]); reserved while the patch is applied.
    flag: Option<usize>,
    /// From `dlopen`; closed only by UNDO of this patch's APPLY, never
    /// after a revert (a thread may still run the container's code).
    handle: *mut c_void,
}

impl Patch {
    fn unit_at(&self, entry: u64) -> Option<&AppliedUnit> {
        self.units.iter().find(|u| u.entry == entry)
    }

    fn record(&self) -> PatchRecord {
        PatchRecord {
            patch_id: self.id,
            applied_at: self.applied_at,
            container_path: self.container_path.as_ptr() as u64,
            target_path: self.target_path.as_ptr() as u64,
            comments: self.comments.as_ptr() as u64,
            nunits: self.units.len() as u64,
        }
    }
}

/// The registry change UNDO can reverse.
#[derive(Debug)]
enum LastChange {
    Applied {
        id: [u8; PATCH_ID_LEN],
    },
    Reverted {
        patch: Patch,
        index: usize,
    },
    /// REVERT_ALL or REPLACE: the patch added (REPLACE only, unless it was
    /// applied already) and the patches removed with their former indices,
    /// ascending.
    Many {
        added: Option<[u8; PATCH_ID_LEN]>,
        removed: Vec<(usize, Patch)>,
    },
}

/// The applied patches, oldest first, and the records published for them.
#[derive(Debug)]
pub struct Registry {
    patches: Vec<Patch>,
    last: Option<LastChange>,
    /// The array `reg_records` points to; replaced (and the old one freed)
    /// only after the next one is published.
    published: Vec<PatchRecord>,
}

impl Registry {
    pub const fn new() -> Registry {
        Registry {
            patches: Vec::new(),
            last: None,
            published: Vec::new(),
        }
    }

    fn position(&self, id: &[u8]) -> Option<usize> {
        self.patches.iter().position(|p| p.id[..] == *id)
    }

    /// Publishes the current patches; the previous array is dropped only
    /// once the new one is in place.
    fn publish(&mut self) {
        let records: Vec<PatchRecord> = self.patches.iter().map(Patch::record).collect();
        interface::publish(&records);
        self.published = records;
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

struct Global(UnsafeCell<Registry>);

// SAFETY: only `with_registry` touches the cell, and only `__ulp_entry`
// calls it, one call at a time (the `BUSY` flag in lib.rs).
unsafe impl Sync for Global {}

static REGISTRY: Global = Global(UnsafeCell::new(Registry::new()));

/// How many patches activated at once can be applied together (a patch
/// that finds no free slot is applied the plain way).
pub const FLAG_SLOTS: usize = 512;

/// The activation flags, one byte per slot, in our `.bss` (so within
/// rel32 reach of the stubs of libraries mapped near us). The guarded
/// stubs read them; only the tool writes them (with every thread stopped,
/// [`write_kind::FLAG`]); the runtime reads them to plan. A slot is free
/// when its byte is 0 and no applied patch holds it.
#[repr(C, align(64))]
pub struct Flags([AtomicU8; FLAG_SLOTS]);

#[allow(clippy::declare_interior_mutable_const)]
const FLAG_OFF: AtomicU8 = AtomicU8::new(0);

pub static FLAGS: Flags = Flags([FLAG_OFF; FLAG_SLOTS]);

fn flag_addr(slot: usize) -> u64 {
    FLAGS.0[slot].as_ptr() as u64
}

fn flag_value(slot: usize) -> u8 {
    FLAGS.0[slot].load(Ordering::Relaxed)
}

/// A slot for a new activation: its byte is 0 and no applied patch holds it.
fn free_flag(reg: &Registry) -> Option<usize> {
    (0..FLAG_SLOTS).find(|&k| flag_value(k) == 0 && !reg.patches.iter().any(|p| p.flag == Some(k)))
}

/// Runs `f` on the process's registry.
///
/// # Safety
/// The caller must hold `BUSY` (no other access may be live).
pub unsafe fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    f(&mut *REGISTRY.0.get())
}

/// How one function of a patch is redirected.
enum Method {
    /// Through its padding (stub and 2-byte entry jump).
    Padded(Site),
    /// By rewriting its first instructions.
    Rewrite(Rewritten),
}

impl Method {
    fn entry(&self) -> u64 {
        match self {
            Method::Padded(s) => s.entry,
            Method::Rewrite(r) => r.entry,
        }
    }

    fn patch_point(&self) -> u64 {
        match self {
            Method::Padded(s) => s.patch_point,
            Method::Rewrite(r) => r.start,
        }
    }

    /// Where the old function's own code can still be called: after the
    /// entry NOP, or the trampoline.
    fn original(&self) -> u64 {
        match self {
            Method::Padded(s) => s.patch_point + 2,
            Method::Rewrite(r) => r.tramp,
        }
    }
}

/// How `entry` (the function `name` of `target`) is redirected: an entry
/// rewritten before stays so; a padded site is used as such; otherwise
/// the entry rewrite, if the function allows it.
fn method_of(target: &LoadedObject, entry: u64, name: &str) -> Result<Method, Failure> {
    if let Some(r) = rewrite::lookup(entry) {
        return Ok(Method::Rewrite(r));
    }
    // An IFUNC resolver ran once, at load time: redirecting it (padded or
    // not) changes nothing the process calls.
    if target
        .dynamic_symbol_at(entry)
        .is_some_and(|(_, kind)| kind == objects::STT_GNU_IFUNC)
    {
        return Err(failed(format!(
            "function '{name}' is not live-patchable: it is an IFUNC resolver: the process runs \
             the implementation it selected; patch that function instead"
        )));
    }
    match read_site(target, entry, name) {
        Ok(site) => Ok(Method::Padded(site)),
        Err(_) if !has_padding(entry, target) => rewrite::prepare(target, entry)
            .map(Method::Rewrite)
            .map_err(|why| failed(format!("function '{name}' is not live-patchable: {why}"))),
        Err(padded) => Err(padded),
    }
}

/// Whether the 14 bytes before `entry` are NOPs or our stub: the function
/// was built with patchable padding (then only that is used).
fn has_padding(entry: u64, target: &LoadedObject) -> bool {
    let stub = entry.wrapping_sub(STUB_LEN as u64);
    if !target.contains(stub, STUB_LEN as u64, PF_X) {
        return false;
    }
    // SAFETY: inside the target's code (checked).
    let pad = unsafe { read_mem(stub, STUB_LEN) };
    pad.iter().all(|&b| b == 0x90) || parse_stub(stub, &pad).is_some()
}

/// A site's bytes, checked to be patchable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    pub entry: u64,
    pub patch_point: u64,
    /// The 14 bytes before the entry.
    pub pad: [u8; STUB_LEN],
    /// The 2 bytes at the patch point.
    pub jump: [u8; 2],
}

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Checks the code around `entry`: `code` holds the bytes from `entry - 14`,
/// 16 of them, or 20 when the 4 after the first 2 at the entry are mapped
/// too (needed to see past `endbr64`). The padding must be 14 NOPs or our
/// stub (either form); the patch point must hold `90 90`, `66 90` or our
/// short jump to the stub (and then the stub must be ours). On refusal,
/// the bytes in a form for the message.
pub fn inspect_site(entry: u64, code: &[u8]) -> Result<Site, String> {
    let describe = || {
        let split = STUB_LEN.min(code.len());
        format!(
            "entry bytes {} | {}",
            SpacedHex(&code[..split]),
            SpacedHex(&code[split..])
        )
    };
    if code.len() < STUB_LEN + 2 {
        return Err(describe());
    }
    let mut pad = [0u8; STUB_LEN];
    pad.copy_from_slice(&code[..STUB_LEN]);
    let at_entry = &code[STUB_LEN..];
    let off = if at_entry.len() >= 6 && at_entry[..4] == ENDBR64 {
        4
    } else {
        0
    };
    let jump = [at_entry[off], at_entry[off + 1]];
    let patch_point = entry.wrapping_add(off as u64);
    let stub_addr = entry.wrapping_sub(STUB_LEN as u64);
    let nop_pad = pad.iter().all(|&b| b == 0x90);
    // Our stub, and a guarded one (or one being converted) skips to the
    // byte after this site's entry jump.
    let our_stub = match parse_stub(stub_addr, &pad) {
        Some(Stub::Guarded { skip_to, .. } | Stub::Converting { skip_to, .. }) => {
            skip_to == patch_point.wrapping_add(2)
        }
        Some(_) => true,
        None => false,
    };
    let redirected = jump[0] == 0xeb && entry_jump(stub_addr, patch_point) == Some(jump);
    let free = jump == [0x90, 0x90] || jump == ENTRY_NOP;
    if (free && (nop_pad || our_stub)) || (redirected && our_stub) {
        Ok(Site {
            entry,
            patch_point,
            pad,
            jump,
        })
    } else {
        Err(describe())
    }
}

fn make_write(addr: u64, kind: u32, old: &[u8], new: &[u8]) -> Write {
    Write::new(addr, kind, old, new)
}

/// Reads `len` bytes of mapped memory.
///
/// # Safety
/// `[addr, addr + len)` must be mapped and readable.
unsafe fn read_mem(addr: u64, len: usize) -> Vec<u8> {
    core::slice::from_raw_parts(addr as *const u8, len).to_vec()
}

/// Reads the site of `entry` in `target`, refusing what is not mapped code.
fn read_site(target: &LoadedObject, entry: u64, name: &str) -> Result<Site, Failure> {
    let start = entry.wrapping_sub(STUB_LEN as u64);
    let len = if target.contains(start, 20, PF_X) {
        20
    } else if target.contains(start, 16, PF_X) {
        16
    } else {
        return Err(failed(format!(
            "function '{name}': address 0x{:x} (offset 0x{:x}) is not in the code of '{}'",
            entry,
            entry.wrapping_sub(target.bias),
            Text(&target.path)
        )));
    };
    // SAFETY: the range lies in a loaded executable segment of the target.
    let code = unsafe { read_mem(start, len) };
    inspect_site(entry, &code)
        .map_err(|bytes| failed(format!("function '{name}' is not live-patchable: {bytes}")))
}

#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const c_char,
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// A container opened by this APPLY: closed again (balancing our
/// `dlopen`) unless the apply succeeds.
struct Opened {
    handle: *mut c_void,
}

impl Opened {
    fn keep(self) -> *mut c_void {
        let h = self.handle;
        core::mem::forget(self);
        h
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: a handle from a successful dlopen, closed once. Nothing
        // points into the container yet: no write was returned.
        unsafe { libc::dlclose(self.handle) };
    }
}

/// Opens the container and finds its segments.
fn open_container(path: &CStr) -> Result<(Opened, LoadedObject), Failure> {
    let shown = path.to_string_lossy();
    // SAFETY: `path` is NUL-terminated; dlerror is cleared first so that
    // the text read after a failure is this call's.
    let handle = unsafe {
        libc::dlerror();
        libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL)
    };
    if handle.is_null() {
        return Err(failed(format!(
            "cannot load container '{shown}': {}",
            dlerror_text()
        )));
    }
    let opened = Opened { handle };
    let mut map: *mut LinkMap = core::ptr::null_mut();
    // SAFETY: RTLD_DI_LINKMAP stores a `struct link_map *`, whose first two
    // fields are `l_addr` and `l_name`.
    let (bias, name) = unsafe {
        let rc = libc::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            (&mut map as *mut *mut LinkMap).cast(),
        );
        if rc != 0 || map.is_null() {
            return Err(failed(format!(
                "cannot locate container '{shown}': {}",
                dlerror_text()
            )));
        }
        let name = if (*map).l_name.is_null() {
            Vec::new()
        } else {
            CStr::from_ptr((*map).l_name).to_bytes().to_vec()
        };
        ((*map).l_addr as u64, name)
    };
    let object = objects::loaded_objects()
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.bias == bias && o.name == name)
        .ok_or_else(|| failed(format!("cannot find the segments of container '{shown}'")))?;
    Ok((opened, object))
}

fn disabled_reason() -> &'static str {
    match interface::state() {
        state::DISABLED_BY_USER => "disabled by user (LIBPULP_DISABLE_ON_*)",
        state::DISABLED_BY_TOOL => "disabled by `ulp set_patchable`",
        _ => "disabled",
    }
}

/// op APPLY.
pub fn apply(reg: &mut Registry, req: &[u8]) -> Result<Done, Failure> {
    reg.last = None;
    let Some(request) = ApplyRequest::decode(req) else {
        let f = Failure::new(code::BAD_REQUEST, "malformed apply request");
        ring::log(format_args!("apply failed: {}", f.msg));
        return Err(f);
    };
    let result = apply_request(reg, &request, true);
    match &result {
        Ok(done) => ring::log(format_args!("{}", done.msg)),
        Err(f) => ring::log(format_args!(
            "apply of '{}' failed: {}",
            Text(request.container_path),
            f.msg
        )),
    }
    result
}

/// APPLY's checks, record and writes; `activate_at_once` allows the
/// guarded plan ([`guarded_apply`]; REPLACE, which makes its own plan,
/// does not).
fn apply_request(
    reg: &mut Registry,
    request: &ApplyRequest<'_>,
    activate_at_once: bool,
) -> Result<Done, Failure> {
    if interface::state() != state::ENABLED {
        return Err(Failure::new(
            code::DISABLED,
            format!("live patching is {} in this process", disabled_reason()),
        ));
    }
    let shown = Text(request.container_path);
    let container_path = CString::new(request.container_path)
        .ok()
        .filter(|p| !p.as_bytes().is_empty())
        .ok_or_else(|| Failure::new(code::BAD_REQUEST, "bad container path in apply request"))?;
    let meta = Metadata::decode(request.ulp).map_err(|e| {
        Failure::new(
            code::BAD_REQUEST,
            format!("bad .ulp section of '{shown}': {e}"),
        )
    })?;
    if reg.position(&meta.patch_id).is_some() {
        return Err(Failure::new(
            code::ALREADY_APPLIED,
            format!(
                "patch '{shown}' (id {}) is already applied",
                Hex(&meta.patch_id)
            ),
        ));
    }

    // The target: an object with the recorded basename and build-id.
    let objects =
        objects::loaded_objects().ok_or_else(|| failed("cannot list the loaded objects"))?;
    let named: Vec<&LoadedObject> = objects
        .iter()
        .filter(|o| o.basename() == meta.target_name.as_bytes())
        .collect();
    let Some(first) = named.first() else {
        return Err(Failure::new(
            code::TARGET_NOT_LOADED,
            format!(
                "target '{}' of patch '{shown}' is not loaded in this process",
                meta.target_name
            ),
        ));
    };
    let Some(target) = named
        .iter()
        .find(|o| o.build_id.as_deref() == Some(&meta.build_id[..]))
    else {
        let found = match &first.build_id {
            Some(id) => format!("{}", Hex(id)),
            None => "none".into(),
        };
        return Err(Failure::new(
            code::BUILD_ID_MISMATCH,
            format!(
                "'{}' has build-id {found}, patch '{shown}' is for build-id {}",
                Text(&first.path),
                Hex(&meta.build_id)
            ),
        ));
    };

    if meta.units.len() * 2 > MAX_WRITES {
        return Err(failed(format!(
            "patch '{shown}' has {} functions, at most {} fit in one call",
            meta.units.len(),
            MAX_WRITES / 2
        )));
    }
    // The sites, before anything is loaded: a refusal here costs nothing.
    let mut sites: Vec<Method> = Vec::with_capacity(meta.units.len());
    for unit in &meta.units {
        let entry = target.bias.wrapping_add(unit.old_faddr);
        let method = method_of(target, entry, &unit.old_fname)?;
        if sites.iter().any(|s| s.entry() == entry) {
            return Err(failed(format!(
                "function '{}' (offset 0x{:x}) is replaced twice by patch '{shown}'",
                unit.old_fname, unit.old_faddr
            )));
        }
        sites.push(method);
    }

    let (opened, container) = open_container(&container_path)?;

    // The new functions: defined in the container itself (dlsym also
    // searches its dependencies) and in its code.
    let mut new_addrs = Vec::with_capacity(meta.units.len());
    for unit in &meta.units {
        let name = CString::new(unit.new_fname.as_bytes())
            .map_err(|_| failed(format!("bad function name '{}'", unit.new_fname)))?;
        // SAFETY: a live handle and a NUL-terminated name.
        let addr = unsafe { libc::dlsym(opened.handle, name.as_ptr()) } as u64;
        if addr == 0 {
            return Err(failed(format!(
                "function '{}' not found in container '{shown}'",
                unit.new_fname
            )));
        }
        if !container.contains(addr, 1, PF_X) {
            return Err(failed(format!(
                "function '{}' is not defined in the code of container '{shown}'",
                unit.new_fname
            )));
        }
        new_addrs.push(addr);
    }

    // The references: values computed and places checked before any is
    // written.
    let mut ref_writes: Vec<(u64, [u8; 16], usize)> = Vec::with_capacity(meta.refs.len());
    for r in &meta.refs {
        let place = container.bias.wrapping_add(r.patch_offset);
        let mut value = [0u8; 16];
        let len = if r.tls {
            if target.tls_modid == 0 {
                return Err(failed(format!(
                    "reference '{}' -> '{}': target '{}' has no TLS",
                    r.patch_name,
                    r.target_name,
                    Text(&target.path)
                )));
            }
            value[..8].copy_from_slice(&target.tls_modid.to_le_bytes());
            value[8..].copy_from_slice(&r.target_offset.to_le_bytes());
            16
        } else {
            let own = target.bias.wrapping_add(r.target_offset);
            // Exported data the target reaches through its GOT may live in
            // another object (the executable's copy): point the patch where
            // the target's own code points.
            let addr = target.got_binding(r.target_name.as_bytes()).unwrap_or(own);
            if addr == own && !target.contains(addr, 1, 0) {
                return Err(failed(format!(
                    "reference '{}' -> '{}': offset 0x{:x} is outside '{}'",
                    r.patch_name,
                    r.target_name,
                    r.target_offset,
                    Text(&target.path)
                )));
            }
            value[..8].copy_from_slice(&addr.to_le_bytes());
            8
        };
        if !container.writable(place, len as u64) {
            return Err(failed(format!(
                "reference '{}': offset 0x{:x} is not a writable variable of container '{shown}'",
                r.patch_name, r.patch_offset
            )));
        }
        ref_writes.push((place, value, len));
    }
    // `__ulp_orig_<function>` in the container: where the old function's
    // own code can be called (the trampoline of a rewritten entry).
    for (unit, method) in meta.units.iter().zip(&sites) {
        let Ok(name) = CString::new(format!("__ulp_orig_{}", unit.old_fname)) else {
            continue;
        };
        // SAFETY: a live handle and a NUL-terminated name.
        let place = unsafe { libc::dlsym(opened.handle, name.as_ptr()) } as u64;
        if place == 0 {
            continue;
        }
        if !container.writable(place, 8) {
            return Err(failed(format!(
                "'{}' is not a writable pointer variable of container '{shown}'",
                name.to_string_lossy()
            )));
        }
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&method.original().to_le_bytes());
        ref_writes.push((place, value, 8));
    }
    // The code writes: stubs (and trampolines) before entries.
    let mut first = Vec::with_capacity(sites.len() * 2);
    let mut last = Vec::with_capacity(sites.len());
    for (site, &new_addr) in sites.iter().zip(&new_addrs) {
        match site {
            Method::Padded(site) => {
                let stub = site.entry - STUB_LEN as u64;
                first.push(make_write(
                    stub,
                    write_kind::STUB,
                    &site.pad,
                    &stub_bytes(stub, new_addr),
                ));
                // The stub is 14 bytes before the entry and the patch point
                // at most 4 after it: the short jump always reaches.
                let jump = entry_jump(stub, site.patch_point).unwrap_or(site.jump);
                last.push(make_write(
                    site.patch_point,
                    write_kind::ENTRY,
                    &site.jump,
                    &jump,
                ));
            }
            Method::Rewrite(r) => {
                let mut w = rewrite::redirect(r, new_addr)
                    .map_err(|why| failed(format!("function at 0x{:x}: {why}", r.entry)))?;
                last.extend(w.pop());
                first.extend(w);
            }
        }
    }
    if first.len() + last.len() > MAX_WRITES {
        return Err(failed(format!(
            "patch '{shown}' needs {} code writes, at most {MAX_WRITES} fit in one call",
            first.len() + last.len()
        )));
    }

    // Every check passed: from here on nothing can refuse.
    for (place, value, len) in &ref_writes {
        // SAFETY: checked writable in the container, which no code of the
        // target reaches yet.
        unsafe {
            core::ptr::copy_nonoverlapping(value.as_ptr(), *place as *mut u8, *len);
        }
    }
    // A patch of padded functions only may switch them all at once.
    let padded: Option<Vec<Site>> = sites
        .iter()
        .map(|m| match m {
            Method::Padded(s) => Some(*s),
            Method::Rewrite(_) => None,
        })
        .collect();
    let guarded = match &padded {
        Some(p) if activate_at_once => guarded_apply(reg, p, &new_addrs),
        _ => None,
    };
    let (flag, writes) = match guarded {
        Some((slot, writes)) => (Some(slot), writes),
        None => {
            let mut writes = first;
            writes.extend(last);
            (None, writes)
        }
    };
    for site in &sites {
        if let Method::Rewrite(r) = site {
            rewrite::keep(r);
        }
    }

    let handle = opened.keep();
    let comments = CString::new(decode_comments(request.comments)).unwrap_or_default();
    let patch = Patch {
        id: meta.patch_id,
        container_path,
        target_path: CString::new(target.path.clone()).unwrap_or_default(),
        target_bias: target.bias,
        comments,
        applied_at: ring::now(),
        units: sites
            .iter()
            .zip(&new_addrs)
            .map(|(s, &new_addr)| AppliedUnit {
                entry: s.entry(),
                patch_point: s.patch_point(),
                new_addr,
                rewrite: matches!(s, Method::Rewrite(_)),
            })
            .collect(),
        flag,
        handle,
    };
    reg.patches.push(patch);
    reg.last = Some(LastChange::Applied { id: meta.patch_id });
    reg.publish();

    let mut msg = format!(
        "applied patch '{shown}' to '{}': {} function",
        Text(&target.path),
        meta.units.len()
    );
    if meta.units.len() != 1 {
        msg.push('s');
    }
    let _ = write!(msg, ", {} reference", meta.refs.len());
    if meta.refs.len() != 1 {
        msg.push('s');
    }
    Ok(Done { msg, writes })
}

/// The APPLY plan that activates every function of the patch with one
/// byte write, and the flag slot it takes:
///
/// 1. each stub written guarded ([`guarded_stub`]) while no entry jump
///    leads to it;
/// 2. each entry jump: the guarded stub skips back to the function's own
///    code while the flag is 0, so nothing changes yet;
/// 3. the flag set to 1: every function switches to the new code at once;
/// 4. each stub's head (its first aligned word) made the direct jump, then
///    its tail NOPs: the stub ends as [`direct_stub`], the patched call
///    back to two jumps.
///
/// A tool killed between any two writes leaves all the functions before
/// step 3 (old code) or all after (new code). `None` (the plain plan) for
/// a patch of one function (whole on its own already), when a function is
/// redirected already (stacked patches), when a stub is not 8-byte
/// aligned (`-fpatchable-function-entry=16,14` aligns it to 16) or the
/// flag or a new function is out of rel32 reach, when no flag slot is
/// free, or when the writes would not fit in one result.
fn guarded_apply(reg: &Registry, sites: &[Site], new_addrs: &[u64]) -> Option<(usize, Vec<Write>)> {
    if sites.len() < 2 || sites.len() * 4 + 1 > MAX_WRITES {
        return None;
    }
    let slot = free_flag(reg)?;
    let flag = flag_addr(slot);
    let mut stubs = Vec::with_capacity(sites.len());
    for (site, &new_addr) in sites.iter().zip(new_addrs) {
        let stub = site.entry - STUB_LEN as u64;
        let free = site.jump == ENTRY_NOP || site.jump == [0x90, 0x90];
        let stacked = reg.patches.iter().any(|p| p.unit_at(site.entry).is_some());
        if !free || stacked || stub & 7 != 0 {
            return None;
        }
        let guarded = guarded_stub(stub, site.patch_point, flag, new_addr)?;
        let direct = direct_stub(stub, new_addr)?;
        let jump = entry_jump(stub, site.patch_point)?;
        stubs.push((site, stub, guarded, direct, jump));
    }
    let mut writes = Vec::with_capacity(sites.len() * 4 + 1);
    for &(site, stub, guarded, _, _) in &stubs {
        writes.push(make_write(stub, write_kind::STUB, &site.pad, &guarded));
    }
    for &(site, _, _, _, jump) in &stubs {
        writes.push(make_write(
            site.patch_point,
            write_kind::ENTRY,
            &site.jump,
            &jump,
        ));
    }
    writes.push(make_write(flag, write_kind::FLAG, &[0], &[1]));
    for &(_, stub, guarded, direct, _) in &stubs {
        writes.push(make_write(
            stub,
            write_kind::HEAD,
            &guarded[..8],
            &direct[..8],
        ));
    }
    for &(_, stub, guarded, direct, _) in &stubs {
        writes.push(make_write(
            stub + 8,
            write_kind::TAIL,
            &guarded[8..],
            &direct[8..],
        ));
    }
    Some((slot, writes))
}

/// The REVERT plan of a patch activated at once ([`guarded_apply`]), its
/// steps backwards: each stub's tail then head back to the guarded form
/// (the flag is still 1: still the new code), the flag to 0 (every
/// function back to the old code at once), then each entry to `66 90`.
/// Functions a later patch redirects are left alone. `None` (the plain
/// plan) when the flag is not 1, a function also has an older patch, or a
/// stub or entry is not what a completed activation left.
///
/// # Safety
/// The stubs and patch points of `patch`'s units must be mapped code.
unsafe fn guarded_revert(reg: &Registry, index: usize, slot: usize) -> Option<Vec<Write>> {
    if flag_value(slot) != 1 {
        return None;
    }
    let patch = &reg.patches[index];
    let flag = flag_addr(slot);
    let mut heads = Vec::new();
    let mut entries = Vec::new();
    for unit in &patch.units {
        if reg.patches[..index]
            .iter()
            .any(|p| p.unit_at(unit.entry).is_some())
        {
            return None;
        }
        if reg.patches[index + 1..]
            .iter()
            .any(|p| p.unit_at(unit.entry).is_some())
        {
            continue;
        }
        let stub = unit.entry - STUB_LEN as u64;
        let direct = direct_stub(stub, unit.new_addr)?;
        let guarded = guarded_stub(stub, unit.patch_point, flag, unit.new_addr)?;
        let jump = entry_jump(stub, unit.patch_point)?;
        let cur_stub = read_mem(stub, STUB_LEN);
        let cur_jump = read_mem(unit.patch_point, 2);
        if stub & 7 != 0 || cur_stub[..] != direct[..] || cur_jump[..] != jump[..] {
            return None;
        }
        heads.push(make_write(
            stub + 8,
            write_kind::TAIL,
            &direct[8..],
            &guarded[8..],
        ));
        heads.push(make_write(
            stub,
            write_kind::HEAD,
            &direct[..8],
            &guarded[..8],
        ));
        entries.push(make_write(
            unit.patch_point,
            write_kind::ENTRY,
            &jump,
            &ENTRY_NOP,
        ));
    }
    heads.push(make_write(flag, write_kind::FLAG, &[1], &[0]));
    heads.extend(entries);
    Some(heads)
}

/// The write that clears the flag of a removed patch activated at once,
/// when it is set, for the end of a plain plan: no stub reads it any more
/// once that plan is made, and the slot is free again.
fn clear_flag(flag: Option<usize>) -> Option<Write> {
    let slot = flag?;
    let value = flag_value(slot);
    (value != 0).then(|| make_write(flag_addr(slot), write_kind::FLAG, &[value], &[0]))
}

/// op REVERT.
pub fn revert(reg: &mut Registry, req: &[u8]) -> Result<Done, Failure> {
    reg.last = None;
    let result = revert_request(reg, req);
    match &result {
        Ok(done) => ring::log(format_args!("{}", done.msg)),
        Err(f) => ring::log(format_args!("revert failed: {}", f.msg)),
    }
    result
}

fn revert_request(reg: &mut Registry, req: &[u8]) -> Result<Done, Failure> {
    if req.len() != PATCH_ID_LEN {
        return Err(Failure::new(
            code::BAD_REQUEST,
            format!(
                "a revert request is a {PATCH_ID_LEN}-byte patch id, not {} bytes",
                req.len()
            ),
        ));
    }
    let Some(index) = reg.position(req) else {
        return Err(Failure::new(
            code::NOT_APPLIED,
            format!("patch {} is not applied", Hex(req)),
        ));
    };
    let patch = &reg.patches[index];
    // The target may have been unloaded since: then its code is gone and
    // there is nothing to write.
    let objects = objects::loaded_objects().unwrap_or_default();
    let target = objects
        .iter()
        .find(|o| o.bias == patch.target_bias && o.path == patch.target_path.as_bytes());
    // A patch activated at once is reverted at once when its sites are as
    // its activation left them.
    let guarded = match (target, patch.flag) {
        (Some(target), Some(slot))
            if patch.units.iter().all(|u| {
                let stub = u.entry - STUB_LEN as u64;
                target.contains(stub, u.patch_point + 2 - stub, PF_X)
            }) =>
        {
            // SAFETY: every site is in the target's code (checked above).
            unsafe { guarded_revert(reg, index, slot) }
        }
        _ => None,
    };
    let at_once = guarded.is_some();
    let mut stubs = Vec::new();
    let mut entries = Vec::new();
    if let Some(writes) = guarded {
        stubs = writes;
    } else if let Some(target) = target {
        for unit in &patch.units {
            // A later patch still redirects this entry: it stays as it is.
            if reg.patches[index + 1..]
                .iter()
                .any(|p| p.unit_at(unit.entry).is_some())
            {
                continue;
            }
            // The newest older patch of this function gets the entry back;
            // without one, the entry becomes the 2-byte NOP again and the
            // stub bytes stay (unreachable).
            let older = reg.patches[..index]
                .iter()
                .rev()
                .find_map(|p| p.unit_at(unit.entry));
            if unit.rewrite {
                let Some(r) = rewrite::lookup(unit.entry) else {
                    continue;
                };
                if !target.contains(r.start, r.covered as u64, PF_X) {
                    continue;
                }
                match older {
                    Some(o) => {
                        let mut w = rewrite::redirect(&r, o.new_addr).map_err(failed)?;
                        entries.extend(w.pop());
                        stubs.extend(w);
                    }
                    None => entries.push(rewrite::restore(&r)),
                }
                continue;
            }
            let stub = unit.entry - STUB_LEN as u64;
            let span = unit.patch_point + 2 - stub;
            if !target.contains(stub, span, PF_X) {
                continue;
            }
            match older {
                Some(o) => {
                    // SAFETY: inside the target's code (checked above).
                    let cur = unsafe { read_mem(stub, STUB_LEN) };
                    stubs.push(make_write(
                        stub,
                        write_kind::STUB,
                        &cur,
                        &stub_bytes(stub, o.new_addr),
                    ));
                }
                None => {
                    // SAFETY: as above.
                    let cur = unsafe { read_mem(unit.patch_point, 2) };
                    entries.push(make_write(
                        unit.patch_point,
                        write_kind::ENTRY,
                        &cur,
                        &ENTRY_NOP,
                    ));
                }
            }
        }
    }
    let patch = reg.patches.remove(index);
    reg.publish();
    // The plain plan (or a target gone): the flag is cleared last.
    if !at_once {
        entries.extend(clear_flag(patch.flag));
    }
    let mut msg = format!(
        "reverted patch '{}' from '{}'",
        patch.container_path.to_string_lossy(),
        patch.target_path.to_string_lossy()
    );
    if target.is_none() {
        msg.push_str(" (target no longer loaded)");
    }
    reg.last = Some(LastChange::Reverted { patch, index });
    stubs.extend(entries);
    Ok(Done { msg, writes: stubs })
}

/// op UNDO.
pub fn undo(reg: &mut Registry) -> Result<Done, Failure> {
    let result = undo_last(reg);
    match &result {
        Ok(done) => ring::log(format_args!("{}", done.msg)),
        Err(f) => ring::log(format_args!("undo failed: {}", f.msg)),
    }
    result
}

fn undo_last(reg: &mut Registry) -> Result<Done, Failure> {
    match reg.last.take() {
        None => Err(Failure::new(
            code::NOTHING_TO_UNDO,
            "nothing to undo: no APPLY or REVERT since the last UNDO or failure",
        )),
        Some(LastChange::Applied { id }) => {
            let index = reg
                .position(&id)
                .ok_or_else(|| failed("the patch to undo is no longer applied"))?;
            let patch = reg.patches.remove(index);
            reg.publish();
            // The tool made none of the writes: no code of the container
            // can be running. Balances the apply's dlopen; the container is
            // unloaded unless it was loaded before.
            // SAFETY: the handle from that dlopen, closed once.
            unsafe { libc::dlclose(patch.handle) };
            Ok(Done {
                msg: format!(
                    "undid apply of patch '{}'",
                    patch.container_path.to_string_lossy()
                ),
                writes: Vec::new(),
            })
        }
        Some(LastChange::Reverted { patch, index }) => {
            let msg = format!(
                "undid revert of patch '{}' (applied again)",
                patch.container_path.to_string_lossy()
            );
            let index = index.min(reg.patches.len());
            reg.patches.insert(index, patch);
            reg.publish();
            Ok(Done {
                msg,
                writes: Vec::new(),
            })
        }
        Some(LastChange::Many { added, removed }) => {
            let mut msg = String::from("undid ");
            if let Some(id) = added {
                if let Some(index) = reg.position(&id) {
                    let patch = reg.patches.remove(index);
                    // As for an APPLY: none of the writes was made.
                    // SAFETY: the handle from that dlopen, closed once.
                    unsafe { libc::dlclose(patch.handle) };
                    let _ = write!(
                        msg,
                        "apply of patch '{}' and ",
                        patch.container_path.to_string_lossy()
                    );
                }
            }
            let _ = write!(msg, "revert of {} patch", removed.len());
            if removed.len() != 1 {
                msg.push_str("es");
            }
            msg.push_str(" (applied again)");
            // Ascending former indices: each lands where it was.
            for (index, patch) in removed {
                let index = index.min(reg.patches.len());
                reg.patches.insert(index, patch);
            }
            reg.publish();
            Ok(Done {
                msg,
                writes: Vec::new(),
            })
        }
    }
}

/// Whether `patch` is for `lib`: a basename, or the loaded path when it
/// contains a `/`.
fn is_for_library(patch: &Patch, lib: &[u8]) -> bool {
    let path = patch.target_path.as_bytes();
    if lib.contains(&b'/') {
        path == lib
    } else {
        objects::basename(path) == lib
    }
}

/// op REVERT_ALL: the request is the library.
pub fn revert_all(reg: &mut Registry, req: &[u8]) -> Result<Done, Failure> {
    reg.last = None;
    let result = change_library(reg, req, None);
    match &result {
        Ok(done) => ring::log(format_args!("{}", done.msg)),
        Err(f) => ring::log(format_args!(
            "revert of all patches from '{}' failed: {}",
            Text(req),
            f.msg
        )),
    }
    result
}

/// op REPLACE: see [`ulp_abi::op::REPLACE`].
pub fn replace(reg: &mut Registry, req: &[u8]) -> Result<Done, Failure> {
    reg.last = None;
    let Some(request) = ReplaceRequest::decode(req) else {
        let f = Failure::new(code::BAD_REQUEST, "malformed replace request");
        ring::log(format_args!("replace failed: {}", f.msg));
        return Err(f);
    };
    let result = change_library(reg, request.library, Some(&request.apply));
    match &result {
        Ok(done) => ring::log(format_args!("{}", done.msg)),
        Err(f) => ring::log(format_args!(
            "replace of the patches from '{}' by '{}' failed: {}",
            Text(request.library),
            Text(request.apply.container_path),
            f.msg
        )),
    }
    result
}

/// REVERT_ALL (`new` is `None`) and REPLACE, as one plan: every check of
/// the new patch comes first (a refusal changes nothing), then the old
/// patches leave the registry, then the writes are computed from what the
/// code holds now to what the resulting registry says.
fn change_library(
    reg: &mut Registry,
    lib: &[u8],
    new: Option<&ApplyRequest<'_>>,
) -> Result<Done, Failure> {
    if lib.is_empty() || lib.contains(&0) {
        return Err(Failure::new(
            code::BAD_REQUEST,
            "bad library name in request",
        ));
    }
    let new_meta = match new {
        Some(a) => Some(Metadata::decode(a.ulp).map_err(|e| {
            Failure::new(
                code::BAD_REQUEST,
                format!("bad .ulp section of '{}': {e}", Text(a.container_path)),
            )
        })?),
        None => None,
    };
    let new_id = new_meta.as_ref().map(|m| m.patch_id);
    let remove: Vec<usize> = reg
        .patches
        .iter()
        .enumerate()
        .filter(|(_, p)| is_for_library(p, lib) && Some(p.id) != new_id)
        .map(|(i, _)| i)
        .collect();
    let already = new_id.is_some_and(|id| reg.position(&id).is_some());
    if let (Some(a), Some(id)) = (new, new_id) {
        if already && remove.is_empty() {
            return Err(Failure::new(
                code::ALREADY_APPLIED,
                format!(
                    "patch '{}' (id {}) is already applied and no other patch of '{}' is",
                    Text(a.container_path),
                    Hex(&id),
                    Text(lib)
                ),
            ));
        }
    } else if remove.is_empty() {
        return Err(Failure::new(
            code::NOT_APPLIED,
            format!("no patch of '{}' is applied", Text(lib)),
        ));
    }
    let new_units = match &new_meta {
        Some(m) if !already => m.units.len(),
        _ => 0,
    };
    let units = new_units
        + remove
            .iter()
            .map(|&i| reg.patches[i].units.len())
            .sum::<usize>();
    // Two writes a function, and the flags of removed patches.
    if units * 2 + remove.len() > MAX_WRITES {
        return Err(failed(format!(
            "the change touches {units} functions, at most {} fit in one call",
            MAX_WRITES / 2
        )));
    }

    // The new patch: every check, then recorded (and published). Its own
    // writes are superseded by the plan below, made from the final state.
    let mut added = None;
    if let (Some(a), Some(id), false) = (new, new_id, already) {
        apply_request(reg, a, false)?;
        added = Some(id);
    }

    // From here on nothing can refuse.
    let objects = objects::loaded_objects().unwrap_or_default();
    let mut sites: Vec<(u64, u64)> = Vec::new();
    let mut removed: Vec<(usize, Patch)> = Vec::with_capacity(remove.len());
    for &index in remove.iter().rev() {
        let patch = reg.patches.remove(index);
        // A target unloaded since: its code is gone, nothing to write.
        let target = objects
            .iter()
            .find(|o| o.bias == patch.target_bias && o.path == patch.target_path.as_bytes());
        if let Some(target) = target {
            for unit in &patch.units {
                let stub = unit.entry - STUB_LEN as u64;
                let mapped = match rewrite::lookup(unit.entry).filter(|_| unit.rewrite) {
                    Some(r) => target.contains(r.start, r.covered as u64, PF_X),
                    None => target.contains(stub, unit.patch_point + 2 - stub, PF_X),
                };
                if mapped {
                    sites.push((unit.entry, unit.patch_point));
                }
            }
        }
        removed.push((index, patch));
    }
    removed.reverse();
    if let Some(id) = added {
        if let Some(p) = reg.position(&id).map(|i| &reg.patches[i]) {
            sites.extend(p.units.iter().map(|u| (u.entry, u.patch_point)));
        }
    }
    reg.publish();
    // SAFETY: every site is in the loaded code of its target (checked
    // above for the removed patches, by `apply_request` for the new one).
    let mut writes = unsafe { plan_writes(reg, &mut sites) };
    // Removed patches activated at once: their flags are cleared last,
    // once no stub reads them.
    writes.extend(removed.iter().filter_map(|(_, p)| clear_flag(p.flag)));

    let names: Vec<String> = removed
        .iter()
        .map(|(_, p)| {
            let path = p.container_path.as_bytes();
            String::from_utf8_lossy(objects::basename(path)).into_owned()
        })
        .collect();
    let mut msg = match (new, added) {
        (None, _) => format!("reverted all patches from '{}'", Text(lib)),
        (Some(a), Some(_)) => format!(
            "replaced the patches from '{}' by '{}'",
            Text(lib),
            Text(a.container_path)
        ),
        (Some(a), None) => format!(
            "reverted the other patches from '{}', kept '{}'",
            Text(lib),
            Text(a.container_path)
        ),
    };
    let _ = write!(msg, ": {} removed", removed.len());
    if !names.is_empty() {
        let _ = write!(msg, " ({})", names.join(", "));
    }
    reg.last = Some(LastChange::Many { added, removed });
    Ok(Done { msg, writes })
}

/// The writes that take each site from the bytes it holds now to what the
/// registry says: the entry jumps to the stub of the newest applied patch
/// of that function, or is the 2-byte NOP when there is none (the stub
/// bytes then stay, unreachable). Every stub write comes before any entry
/// write. Sites are `(entry, patch point)`; duplicates are merged.
///
/// # Safety
/// Every site's stub and patch point must be mapped code.
unsafe fn plan_writes(reg: &Registry, sites: &mut Vec<(u64, u64)>) -> Vec<Write> {
    sites.sort_unstable();
    sites.dedup_by_key(|s| s.0);
    let mut stubs = Vec::new();
    let mut entries = Vec::new();
    for &(entry, patch_point) in sites.iter() {
        let newest = reg.patches.iter().rev().find_map(|p| p.unit_at(entry));
        if let Some(r) = rewrite::lookup(entry) {
            let cur = read_mem(r.start, r.covered);
            match newest {
                Some(unit) => match rewrite::redirect(&r, unit.new_addr) {
                    Ok(mut w) => {
                        if let Some(e) = w.pop() {
                            if cur[..] != e.new[..r.covered] {
                                entries.push(e);
                            }
                        }
                        stubs.extend(w);
                    }
                    // Only a far stub can fail, and the apply checked
                    // (and made) it: keep what the entry holds.
                    Err(why) => ring::log(format_args!("function at 0x{entry:x}: {why}")),
                },
                None if cur[..] != r.original[..r.covered] => {
                    entries.push(rewrite::restore(&r));
                }
                None => {}
            }
            continue;
        }
        let stub = entry - STUB_LEN as u64;
        let cur_jump = read_mem(patch_point, 2);
        match newest {
            Some(unit) => {
                let cur_stub = read_mem(stub, STUB_LEN);
                let want_stub = stub_bytes(stub, unit.new_addr);
                if cur_stub[..] != want_stub[..] {
                    stubs.push(make_write(stub, write_kind::STUB, &cur_stub, &want_stub));
                }
                // The stub is 14 bytes before the entry and the patch point
                // at most 4 after it: the short jump always reaches.
                if let Some(jump) = entry_jump(stub, patch_point) {
                    if cur_jump[..] != jump[..] {
                        entries.push(make_write(patch_point, write_kind::ENTRY, &cur_jump, &jump));
                    }
                }
            }
            None if cur_jump[0] == 0xeb => {
                entries.push(make_write(
                    patch_point,
                    write_kind::ENTRY,
                    &cur_jump,
                    &ENTRY_NOP,
                ));
            }
            None => {}
        }
    }
    stubs.extend(entries);
    stubs
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulp_abi::absolute_stub;

    fn code(pad: u8, at: &[u8]) -> Vec<u8> {
        let mut v = vec![pad; 14];
        v.extend_from_slice(at);
        v
    }

    #[test]
    fn site_states() {
        let e = 0x1000;
        let nop2 = inspect_site(e, &code(0x90, &[0x90, 0x90, 0x55, 0x48, 0x89, 0xe5])).unwrap();
        assert_eq!((nop2.patch_point, nop2.jump), (e, [0x90, 0x90]));
        let posted = inspect_site(e, &code(0x90, &[0x66, 0x90, 0, 0, 0, 0])).unwrap();
        assert_eq!(posted.jump, ENTRY_NOP);
        let cet = inspect_site(e, &code(0x90, &[0xf3, 0x0f, 0x1e, 0xfa, 0x66, 0x90])).unwrap();
        assert_eq!(cet.patch_point, e + 4);
        // Already redirected: our stub (either form) and our jump; reverted
        // earlier: the stub left in place, the entry NOP again.
        for stub in [stub_bytes(e - 14, 0x5555), absolute_stub(0x5555)] {
            let mut redirected = stub.to_vec();
            redirected.extend_from_slice(&[0xeb, 0xf0, 0, 0, 0, 0]);
            assert!(inspect_site(e, &redirected).is_ok());
            let mut cet_redirected = stub.to_vec();
            cet_redirected.extend_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa, 0xeb, 0xec]);
            assert_eq!(inspect_site(e, &cet_redirected).unwrap().patch_point, e + 4);
            let mut reverted = stub.to_vec();
            reverted.extend_from_slice(&[0x66, 0x90, 0, 0, 0, 0]);
            assert!(inspect_site(e, &reverted).is_ok());
        }
        // Only 16 bytes mapped: still fine without endbr64.
        assert!(inspect_site(e, &code(0x90, &[0x66, 0x90])).is_ok());
    }

    /// A patch activated at once leaves guarded stubs (and, when killed in
    /// the middle, stubs whose head is converted and tail not): sites with
    /// either, redirected or not, are ours, when the stub skips to the
    /// byte after this site's entry jump.
    #[test]
    fn guarded_site_states() {
        let e = 0x7f12_3456_7010u64;
        let stub = e - 14;
        let (flag, new) = (0x7f12_3000_0040, 0x7f12_3460_0000);
        for (at, patch_point, jump) in [
            (vec![0x66, 0x90, 0, 0, 0, 0], e, [0xeb, 0xf0]),
            (
                vec![0xf3, 0x0f, 0x1e, 0xfa, 0x66, 0x90],
                e + 4,
                [0xeb, 0xec],
            ),
        ] {
            let guarded = guarded_stub(stub, patch_point, flag, new).unwrap();
            let mut converting = guarded;
            converting[..8].copy_from_slice(&direct_stub(stub, new).unwrap()[..8]);
            for pad in [guarded, converting] {
                let mut bytes = pad.to_vec();
                bytes.extend_from_slice(&at);
                let site = inspect_site(e, &bytes).unwrap();
                assert_eq!((site.patch_point, site.pad), (patch_point, pad));
                let off = (patch_point - e) as usize + 14;
                bytes[off..off + 2].copy_from_slice(&jump);
                assert_eq!(inspect_site(e, &bytes).unwrap().jump, jump);
            }
        }
        // Skipping to the wrong place (the stub of an endbr64 site before
        // a site without it): not ours.
        let wrong = guarded_stub(stub, e + 4, flag, new).unwrap();
        let mut bytes = wrong.to_vec();
        bytes.extend_from_slice(&[0x66, 0x90, 0, 0, 0, 0]);
        assert!(inspect_site(e, &bytes).is_err());
    }

    /// The stub planned for a site: a direct jump when the new function is
    /// near, the absolute form when it is not; a site holding NOPs or
    /// either form takes a new apply, whose stub write covers all 14 bytes.
    #[test]
    fn stub_forms() {
        let entry = 0x7f12_3456_7010u64;
        let stub = entry - 14;
        let near = entry + 0x20_0000;
        let far = stub + 5 + (1u64 << 31);
        let direct = stub_bytes(stub, near);
        assert_eq!(direct[0], 0xe9);
        assert_eq!(direct[1..5], ((near - (stub + 5)) as i32).to_le_bytes()[..]);
        assert_eq!(direct[5..], [0x90; 9]);
        let absolute = stub_bytes(stub, far);
        assert_eq!(absolute[..6], [0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(absolute[6..], far.to_le_bytes());
        // The executable of a PIE far below its libraries' patches.
        assert_eq!(stub_bytes(0x5555_5555_5000, near)[..2], [0xff, 0x25]);

        for (what, pad, at) in [
            ("NOPs", [0x90; 14], ENTRY_NOP),
            ("direct, reverted", direct, ENTRY_NOP),
            ("absolute, reverted", absolute, ENTRY_NOP),
            ("direct, redirected", direct, [0xeb, 0xf0]),
            ("absolute, redirected", absolute, [0xeb, 0xf0]),
        ] {
            let mut bytes = pad.to_vec();
            bytes.extend_from_slice(&at);
            let site = inspect_site(entry, &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!((site.pad, site.jump), (pad, at), "{what}");
            for want in [direct, absolute] {
                let w = make_write(stub, write_kind::STUB, &site.pad, &want);
                assert_eq!((w.addr, w.len), (stub, 14), "{what}");
                assert_eq!(w.new[..14], want, "{what}");
            }
        }
        // A rel32 jump not followed by our NOPs is not our stub.
        let mut other = direct;
        other[13] = 0xcc;
        let mut bytes = other.to_vec();
        bytes.extend_from_slice(&ENTRY_NOP);
        assert!(inspect_site(entry, &bytes).is_err());
    }

    #[test]
    fn unpatchable_sites() {
        let e = 0x1000;
        let table: [(&str, Vec<u8>); 6] = [
            ("no padding", code(0xcc, &[0x90, 0x90, 0, 0, 0, 0])),
            ("ordinary code", code(0x90, &[0x55, 0x48, 0x89, 0xe5, 0, 0])),
            ("jump elsewhere", code(0x90, &[0xeb, 0x10, 0, 0, 0, 0])),
            ("jump to NOPs", code(0x90, &[0xeb, 0xf0, 0, 0, 0, 0])),
            (
                "endbr64 then code",
                code(0x90, &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48]),
            ),
            ("too short", code(0x90, &[0x90])),
        ];
        for (what, bytes) in table {
            let err = inspect_site(e, &bytes).unwrap_err();
            assert!(err.starts_with("entry bytes "), "{what}: {err}");
        }
        let err = inspect_site(e, &code(0xcc, &[0x90, 0x90])).unwrap_err();
        assert_eq!(
            err,
            "entry bytes cc cc cc cc cc cc cc cc cc cc cc cc cc cc | 90 90"
        );
    }
}

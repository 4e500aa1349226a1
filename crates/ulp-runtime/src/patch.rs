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
//! 00 <abs64>`); see [`ulp_abi::stub_bytes`]. Those are "our stub"
//! wherever a site is checked ([`ulp_abi::parse_stub`]); the tool writes
//! a stub with one write, so a live one is re-pointed in place.
//!
//! The runtime never changes code. It returns [`Write`]s; the tool makes
//! them with every thread stopped, in the order given here (every stub
//! before the entry jump that leads to it). The registry changes here as
//! if the writes were made; when the tool cannot make them it calls UNDO,
//! which puts the registry back.
//!
//! Every operation plans its writes the same way ([`plan_writes`]): from
//! what each function's code holds now to what the registry says once
//! the operation is done. When two functions or more change, the plan
//! *switches them at once* ([`switch_plan`], `switch.rs`): each function
//! is first pointed at a guarded slot that sends it where it went before
//! until one flag byte is set, then the flag is set (every function
//! switches), then each function is pointed straight at its new target.
//! A tool killed between any two of those writes leaves every function of
//! the change on the same side of the flag (ARCHITECTURE.md, "Switching
//! several functions at once").
//!
//! Every operation is all or nothing: all checks come before the first
//! change (registry, container memory), so a refused patch leaves nothing.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_void, CStr};
use core::fmt::Write as _;
use std::ffi::CString;

use ulp_abi::ReplaceRequest;
use ulp_abi::{code, entry_jump, parse_stub, state, stub_bytes, write_kind};
use ulp_abi::{ApplyRequest, PatchRecord, Write};
use ulp_abi::{ENTRY_NOP, MAX_WRITES, STUB_LEN};
use ulp_container::format::{decode_comments, Metadata, PATCH_ID_LEN};

use crate::interface;
use crate::objects::{self, LoadedObject, PF_X};
use crate::rewrite::{self, Rewritten};
use crate::ring::{self, Hex, SpacedHex, Text};
use crate::switch;

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
fn method_of(
    target: &LoadedObject,
    entry: u64,
    name: &str,
    known_size: Option<u64>,
) -> Result<Method, Failure> {
    if let Some(r) = rewrite::lookup(entry) {
        return Ok(Method::Rewrite(r));
    }
    // Its size and type: the dynamic symbol table in memory, else the size
    // the tool read in the library file.
    let symbol = target
        .dynamic_symbol_at(entry)
        .or(known_size.map(|size| (size, objects::STT_FUNC)));
    // An IFUNC resolver ran once, at load time: redirecting it (padded or
    // not) changes nothing the process calls.
    if symbol.is_some_and(|(_, kind)| kind == objects::STT_GNU_IFUNC) {
        return Err(failed(format!(
            "function '{name}' is not live-patchable: it is an IFUNC resolver: the process runs \
             the implementation it selected; patch that function instead"
        )));
    }
    match read_site(target, entry, name) {
        Ok(site) => Ok(Method::Padded(site)),
        Err(_) if !has_padding(entry, target) => rewrite::prepare(target, entry, symbol)
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
    let our_stub = parse_stub(stub_addr, &pad).is_some();
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

/// APPLY's checks, record and writes; without `plan`, no writes (REPLACE
/// makes one plan of its own for every function it changes).
fn apply_request(
    reg: &mut Registry,
    request: &ApplyRequest<'_>,
    plan: bool,
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

    // The target: an object with the recorded name (basename or SONAME)
    // and build-id.
    let objects =
        objects::loaded_objects().ok_or_else(|| failed("cannot list the loaded objects"))?;
    let named: Vec<&LoadedObject> = objects
        .iter()
        .filter(|o| o.is_named(meta.target_name.as_bytes()))
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
    for (i, unit) in meta.units.iter().enumerate() {
        let entry = target.bias.wrapping_add(unit.old_faddr);
        let method = method_of(target, entry, &unit.old_fname, request.size_of(i))?;
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
    // The writes of the plain plan, for their number, and to check that
    // every rewritten entry reaches its new function (a far stub found).
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
        handle,
    };
    reg.patches.push(patch);
    reg.last = Some(LastChange::Applied { id: meta.patch_id });
    reg.publish();
    let writes = if plan {
        let mut at: Vec<(u64, u64)> = sites.iter().map(|s| (s.entry(), s.patch_point())).collect();
        // SAFETY: every site is in the target's code (checked above).
        unsafe { plan_writes(reg, &mut at) }
    } else {
        Vec::new()
    };

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
    let mut sites = match target {
        Some(target) => mapped_sites(patch, target),
        None => Vec::new(),
    };
    let loaded = target.is_some();
    let patch = reg.patches.remove(index);
    reg.publish();
    // Each function goes to the newest remaining patch of it, or back to
    // its own code; one a later patch redirects stays as it is.
    // SAFETY: every site is in the target's code (`mapped_sites`).
    let writes = unsafe { plan_writes(reg, &mut sites) };
    let mut msg = format!(
        "reverted patch '{}' from '{}'",
        patch.container_path.to_string_lossy(),
        patch.target_path.to_string_lossy()
    );
    if !loaded {
        msg.push_str(" (target no longer loaded)");
    }
    reg.last = Some(LastChange::Reverted { patch, index });
    Ok(Done { msg, writes })
}

/// The sites of `patch`'s units, as `(entry, patch point)`, whose code is
/// mapped in `target` (the stub to the patch point, or the rewritten
/// bytes).
fn mapped_sites(patch: &Patch, target: &LoadedObject) -> Vec<(u64, u64)> {
    patch
        .units
        .iter()
        .filter(|unit| {
            let stub = unit.entry - STUB_LEN as u64;
            match rewrite::lookup(unit.entry).filter(|_| unit.rewrite) {
                Some(r) => target.contains(r.start, r.covered as u64, PF_X),
                None => target.contains(stub, unit.patch_point + 2 - stub, PF_X),
            }
        })
        .map(|unit| (unit.entry, unit.patch_point))
        .collect()
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

/// Whether `patch` is for `lib`: the basename or SONAME of its target, or
/// the target's loaded path when `lib` contains a `/` (`objects` are the
/// loaded objects, for the SONAME).
fn is_for_library(patch: &Patch, lib: &[u8], objects: &[LoadedObject]) -> bool {
    let path = patch.target_path.as_bytes();
    let target = objects
        .iter()
        .find(|o| o.bias == patch.target_bias && o.path == path);
    ulp_abi::names::names_object(lib, path, || target.and_then(|o| o.soname.as_deref()))
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
    let loaded = objects::loaded_objects().unwrap_or_default();
    let remove: Vec<usize> = reg
        .patches
        .iter()
        .enumerate()
        .filter(|(_, p)| is_for_library(p, lib, &loaded) && Some(p.id) != new_id)
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
    // Two writes a function in the plain plan (a switch that would not
    // fit falls back to it).
    if units * 2 > MAX_WRITES {
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
            sites.extend(mapped_sites(&patch, target));
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
    let writes = unsafe { plan_writes(reg, &mut sites) };

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

/// How one function is redirected, with the bytes it holds now.
enum Held {
    /// Through its padding: the stub's 14 bytes and the 2 at the patch
    /// point.
    Padded {
        stub: u64,
        pad: [u8; STUB_LEN],
        jump: [u8; 2],
    },
    /// By an entry rewrite: its covered bytes.
    Rewrite { r: Rewritten, now: [u8; 16] },
}

/// One function whose redirection an operation changes.
struct Move {
    patch_point: u64,
    held: Held,
    /// Where a call to it goes now (`None`: bytes that are not ours).
    from: Option<u64>,
    /// The new function it must go to; `None`: its own code.
    to: Option<u64>,
}

impl Move {
    /// Where its own code continues: after the entry NOP, or the
    /// trampoline.
    fn own(&self) -> u64 {
        match &self.held {
            Held::Padded { .. } => self.patch_point + 2,
            Held::Rewrite { r, .. } => r.tramp,
        }
    }

    fn to_addr(&self) -> u64 {
        self.to.unwrap_or_else(|| self.own())
    }
}

/// What `entry` holds now and where the registry says it must go; `None`
/// when nothing changes.
///
/// # Safety
/// The site's stub and patch point (or rewritten bytes) must be mapped.
unsafe fn move_of(reg: &Registry, entry: u64, patch_point: u64) -> Option<Move> {
    let to = reg
        .patches
        .iter()
        .rev()
        .find_map(|p| p.unit_at(entry))
        .map(|u| u.new_addr);
    if let Some(r) = rewrite::lookup(entry) {
        let mut now = [0u8; 16];
        now[..r.covered].copy_from_slice(&read_mem(r.start, r.covered));
        let from = rewrite::current_target(&r, &now);
        let held = Held::Rewrite { r, now };
        let m = Move {
            patch_point: r.start,
            held,
            from,
            to,
        };
        return (from != Some(m.to_addr())).then_some(m);
    }
    let stub = entry - STUB_LEN as u64;
    let mut pad = [0u8; STUB_LEN];
    pad.copy_from_slice(&read_mem(stub, STUB_LEN));
    let mut jump = [0u8; 2];
    jump.copy_from_slice(&read_mem(patch_point, 2));
    let live = entry_jump(stub, patch_point) == Some(jump);
    let from = if live {
        parse_stub(stub, &pad).map(|s| s.target())
    } else {
        Some(patch_point + 2)
    };
    let m = Move {
        patch_point,
        held: Held::Padded { stub, pad, jump },
        from,
        to,
    };
    (from != Some(m.to_addr())).then_some(m)
}

/// The writes that take each site from the bytes it holds now to what the
/// registry says: the function jumps to the newest applied patch of it,
/// or runs its own code when there is none (a padded entry back to the
/// 2-byte NOP, its stub bytes left unreachable; a rewritten entry back to
/// the library's bytes). When two functions or more change, they switch
/// at once ([`switch_plan`]); otherwise, or when no switch can be made,
/// the plain plan ([`plain_plan`]). Sites are `(entry, patch point)`;
/// duplicates are merged.
///
/// # Safety
/// Every site's stub and patch point (or rewritten bytes) must be mapped
/// code.
unsafe fn plan_writes(reg: &Registry, sites: &mut Vec<(u64, u64)>) -> Vec<Write> {
    sites.sort_unstable();
    sites.dedup_by_key(|s| s.0);
    let moves: Vec<Move> = sites
        .iter()
        .filter_map(|&(entry, patch_point)| move_of(reg, entry, patch_point))
        .collect();
    if moves.len() >= 2 {
        if let Some(writes) = switch_plan(&moves) {
            return writes;
        }
        ring::log(format_args!(
            "{} functions change one by one: no switch could be made (no near page, or too \
             many writes)",
            moves.len()
        ));
    }
    plain_plan(&moves)
}

/// Each function switched on its own write, every stub (and trampoline,
/// far stub) before any entry: a tool killed in the middle leaves each
/// function whole, some switched and others not.
fn plain_plan(moves: &[Move]) -> Vec<Write> {
    let mut first = Vec::new();
    let mut last = Vec::new();
    for m in moves {
        match (&m.held, m.to) {
            (Held::Rewrite { r, now }, Some(new_addr)) => {
                match rewrite::redirect_parts(r, new_addr) {
                    Ok((code, bytes)) => {
                        first.extend(code);
                        last.push(make_write(
                            r.start,
                            write_kind::REWRITE,
                            &now[..r.covered],
                            &bytes[..r.covered],
                        ));
                    }
                    // Only a far stub can fail, and the apply checked (and
                    // made) it: keep what the entry holds.
                    Err(why) => ring::log(format_args!("function at 0x{:x}: {why}", r.entry)),
                }
            }
            (Held::Rewrite { r, now }, None) => last.push(make_write(
                r.start,
                write_kind::REWRITE,
                &now[..r.covered],
                &r.original[..r.covered],
            )),
            (&Held::Padded { stub, pad, jump }, Some(new_addr)) => {
                let want = stub_bytes(stub, new_addr);
                if pad != want {
                    first.push(make_write(stub, write_kind::STUB, &pad, &want));
                }
                // The stub is 14 bytes before the entry and the patch point
                // at most 4 after it: the short jump always reaches.
                if let Some(to_stub) = entry_jump(stub, m.patch_point) {
                    if jump != to_stub {
                        last.push(make_write(
                            m.patch_point,
                            write_kind::ENTRY,
                            &jump,
                            &to_stub,
                        ));
                    }
                }
            }
            (&Held::Padded { jump, .. }, None) => {
                last.push(make_write(
                    m.patch_point,
                    write_kind::ENTRY,
                    &jump,
                    &ENTRY_NOP,
                ));
            }
        }
    }
    first.extend(last);
    first
}

/// The plan that switches every function of `moves` with one byte write:
///
/// 1. CODE: a guarded slot per function ([`switch::slot_code`]: to where
///    it goes now while the flag is 0, to where it must go once it is
///    not), in near pages, with the trampolines and far stubs the slots
///    and the final jumps lead to. Nothing reaches them yet.
/// 2. Each function pointed at its slot, one write each: a padded one's
///    stub re-pointed in place (STUB, one write), and when its entry is
///    the NOP, the entry jump after it (ENTRY); a rewritten one's entry
///    made `jmp rel32 slot` (REWRITE). The flag is 0: each still runs
///    what it ran.
/// 3. FLAG: the flag byte set to 1: every function switches at once.
/// 4. Each function pointed straight at its target, one write each: the
///    stub re-pointed (or the entry NOP again), the rewritten entry's
///    jump (or its original bytes). The call is back to two jumps.
///
/// `None` when a function holds bytes that are not ours, when no near
/// page can be mapped, the flag is out of a slot's reach, or the writes
/// would not fit in one result. The flag and the slots are never freed or
/// reused: a thread may still be inside a slot after the switch, and then
/// goes where the switch sent it.
fn switch_plan(moves: &[Move]) -> Option<Vec<Write>> {
    let flag = rewrite::alloc(switch::FLAG_LEN, moves.first()?.patch_point)?;
    let mut code = Vec::new();
    let mut point = Vec::new();
    let mut straight = Vec::new();
    for m in moves {
        let from = m.from?;
        let to = m.to_addr();
        let slot = rewrite::alloc(switch::SLOT_LEN, m.patch_point)?;
        let bytes = switch::slot_code(slot, flag, from, to)?;
        let mut padded = vec![0xcc; (bytes.len() + 7) & !7];
        padded[..bytes.len()].copy_from_slice(&bytes);
        match &m.held {
            Held::Rewrite { r, now } => {
                let (extra, last) = match m.to {
                    Some(new_addr) => rewrite::redirect_parts(r, new_addr).ok()?,
                    None => (rewrite::tramp_writes(r), r.original),
                };
                code.extend(extra);
                code.extend(rewrite::code_writes(slot, &padded));
                let via = rewrite::jump_bytes(r, slot)?;
                let n = r.covered;
                point.push(make_write(
                    r.start,
                    write_kind::REWRITE,
                    &now[..n],
                    &via[..n],
                ));
                straight.push(make_write(
                    r.start,
                    write_kind::REWRITE,
                    &via[..n],
                    &last[..n],
                ));
            }
            &Held::Padded { stub, pad, jump } => {
                code.extend(rewrite::code_writes(slot, &padded));
                let via = stub_bytes(stub, slot);
                point.push(make_write(stub, write_kind::STUB, &pad, &via));
                let to_stub = entry_jump(stub, m.patch_point)?;
                if jump != to_stub {
                    point.push(make_write(
                        m.patch_point,
                        write_kind::ENTRY,
                        &jump,
                        &to_stub,
                    ));
                }
                straight.push(match m.to {
                    Some(new_addr) => {
                        make_write(stub, write_kind::STUB, &via, &stub_bytes(stub, new_addr))
                    }
                    None => make_write(m.patch_point, write_kind::ENTRY, &to_stub, &ENTRY_NOP),
                });
            }
        }
    }
    let mut writes = code;
    writes.extend(point);
    // SAFETY: a byte of a near page we mapped (readable), 0 since.
    let now = unsafe { read_mem(flag, 1) };
    writes.push(make_write(flag, write_kind::FLAG, &now, &[1]));
    writes.extend(straight);
    (writes.len() <= MAX_WRITES).then_some(writes)
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

//! The operations (APPLY, REVERT, UNDO, REVERT_ALL, REPLACE): the checks
//! made before anything changes, the registry change, and the code writes
//! handed back to the tool. Their parts: `registry.rs` (the applied
//! patches), `site.rs` (whether and how a function can be redirected),
//! `container.rs` (opening a container), `plan.rs` (the writes).
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
//! Every operation plans its writes the same way
//! ([`crate::plan::plan_writes`]): from what each function's code holds
//! now to what the registry says once the operation is done. When two
//! functions or more change, the plan *switches them at once* (`plan.rs`,
//! `switch.rs`): each function is first pointed at a guarded slot that
//! sends it where it went before until one flag byte is set, then the flag
//! is set (every function switches), then each function is pointed
//! straight at its new target. A tool killed between any two of those
//! writes leaves every function of the change on the same side of the
//! flag (ARCHITECTURE.md, "Switching several functions at once").
//!
//! A refusal ([`Failure`]) that is one of libpulp's errors carries that
//! error's number as its code (`ulp_abi::code::of_error`): EDLOPEN,
//! ENOOLDFUNC, ENONEWFUNC, ENOPATCHABLE, EINVALIDULP, ENOLINKMAP,
//! ENOADDRESS.
//!
//! Every operation is all or nothing: all checks come before the first
//! change (registry, container memory), so a refused patch leaves nothing.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::ffi::CString;
use core::fmt::Write as _;

use ulp_abi::errors::{self, UlpError};
use ulp_abi::format::{decode_comments, Metadata, PATCH_ID_LEN};
use ulp_abi::ReplaceRequest;
use ulp_abi::{code, entry_jump, state, stub_bytes, write_kind};
use ulp_abi::{ApplyRequest, Write};
use ulp_abi::{MAX_WRITES, STUB_LEN};

use crate::container::open_container;
use crate::interface;
use crate::objects::{self, LoadedObject, PF_X};
use crate::plan::{make_write, plan_writes};
use crate::registry::{AppliedUnit, LastChange, Patch, Registry};
use crate::rewrite;
use crate::ring::{self, Hex, Text};
use crate::site::{method_in_memory, Method, Redirect};

/// What an operation hands back on success: the result message and the
/// writes for the tool.
#[derive(Debug)]
pub struct Done {
    pub msg: String,
    pub writes: Vec<Write>,
}

/// A refusal: the result code and a message naming what failed (for a
/// libpulp error, the detail after its phrase).
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

    /// A refusal that is libpulp's error `e` (its code is `e`'s number).
    pub(crate) fn error(e: UlpError, msg: impl Into<String>) -> Failure {
        Failure::new(code::of_error(e), msg)
    }
}

/// As logged: libpulp's phrase first when the code is one of its errors.
impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match code::error(self.code) {
            Some(e) => write!(f, "{}: {}", e.phrase, self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

fn failed(msg: impl Into<String>) -> Failure {
    Failure::new(code::FAILED, msg)
}

fn disabled_reason() -> &'static str {
    match interface::state() {
        state::DISABLED_BY_USER => "disabled by user (LIBPULP_DISABLE_ON_*)",
        state::DISABLED_BY_TOOL => "disabled by `ulp set_patchable`",
        state::DISABLED_BY_ERROR => {
            "disabled after an internal error of the runtime (see its messages)"
        }
        _ => "disabled",
    }
}

/// The refusal of a request of operation `op` that does not decode,
/// logged.
fn malformed(op: &str) -> Failure {
    let f = Failure::new(code::BAD_REQUEST, format!("malformed {op} request"));
    ring::log(format_args!("{op} failed: {}", f.msg));
    f
}

/// Logs how an operation ended: its result message, or `what` failed and
/// why (libpulp's phrase first). Returns `result`.
fn logged(result: Result<Done, Failure>, what: core::fmt::Arguments<'_>) -> Result<Done, Failure> {
    match &result {
        Ok(done) => ring::log(format_args!("{}", done.msg)),
        Err(f) => ring::log(format_args!("{what} failed: {f}")),
    }
    result
}

/// op APPLY.
pub fn apply(reg: &mut Registry, req: &[u8]) -> Result<Done, Failure> {
    reg.last = None;
    let Some(request) = ApplyRequest::decode(req) else {
        return Err(malformed("apply"));
    };
    let result = apply_request(reg, &request, true);
    let path = Text(request.container_path);
    logged(result, format_args!("apply of '{path}'"))
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
        Failure::error(
            errors::EINVALIDULP,
            format!("bad .ulp section of '{shown}': {e}"),
        )
    })?;
    // libpulp's line for every patch it is asked to load.
    ring::log(format_args!("Patch path: {shown}"));
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
    let objects = objects::loaded_objects(objects::MainPath::Read)
        .ok_or_else(|| failed("cannot list the loaded objects"))?;
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
        let method = method_in_memory(target, entry, &unit.old_fname, request.size_of(i))?;
        if sites.iter().any(|s| s.entry() == entry) {
            return Err(Failure::error(
                errors::EINVALIDULP,
                format!(
                    "function '{}' (offset 0x{:x}) is replaced twice by patch '{shown}'",
                    unit.old_fname, unit.old_faddr
                ),
            ));
        }
        sites.push(method);
    }

    let (opened, container) = open_container(&container_path)?;

    // The new functions: defined in the container itself (dlsym also
    // searches its dependencies) and in its code.
    let mut new_addrs = Vec::with_capacity(meta.units.len());
    for unit in &meta.units {
        let name = CString::new(unit.new_fname.as_bytes()).map_err(|_| {
            Failure::error(
                errors::EINVALIDULP,
                format!("bad function name '{}'", unit.new_fname),
            )
        })?;
        // SAFETY: a live handle and a NUL-terminated name.
        let addr = unsafe { libc::dlsym(opened.handle, name.as_ptr()) } as u64;
        if addr == 0 {
            return Err(Failure::error(
                errors::ENONEWFUNC,
                format!(
                    "function '{}' not found in container '{shown}'",
                    unit.new_fname
                ),
            ));
        }
        if !container.contains(addr, 1, PF_X) {
            return Err(Failure::error(
                errors::ENONEWFUNC,
                format!(
                    "function '{}' is not defined in the code of container '{shown}'",
                    unit.new_fname
                ),
            ));
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
                return Err(Failure::error(
                    errors::ENOADDRESS,
                    format!(
                        "reference '{}' -> '{}': target '{}' has no TLS",
                        r.patch_name,
                        r.target_name,
                        Text(&target.path)
                    ),
                ));
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
                return Err(Failure::error(
                    errors::ENOADDRESS,
                    format!(
                        "reference '{}' -> '{}': offset 0x{:x} is outside '{}'",
                        r.patch_name,
                        r.target_name,
                        r.target_offset,
                        Text(&target.path)
                    ),
                ));
            }
            value[..8].copy_from_slice(&addr.to_le_bytes());
            8
        };
        if !container.writable(place, len as u64) {
            return Err(Failure::error(
                errors::EINVALIDULP,
                format!(
                "reference '{}': offset 0x{:x} is not a writable variable of container '{shown}'",
                r.patch_name, r.patch_offset
            ),
            ));
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
            return Err(Failure::error(
                errors::EINVALIDULP,
                format!(
                    "'{}' is not a writable pointer variable of container '{shown}'",
                    name.to_string_lossy()
                ),
            ));
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
                let mut w = rewrite::redirect(r, new_addr).map_err(|why| {
                    Failure::error(
                        errors::ENOPATCHABLE,
                        format!("function at 0x{:x}: {why}", r.entry),
                    )
                })?;
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
        at_start: false,
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
    let objects = objects::loaded_objects(objects::MainPath::Read).unwrap_or_default();
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

/// Puts reverted patches back at their former indices (ascending: each
/// lands where it was) and publishes the registry.
fn reinsert(reg: &mut Registry, removed: impl IntoIterator<Item = (usize, Patch)>) {
    for (index, patch) in removed {
        let index = index.min(reg.patches.len());
        reg.patches.insert(index, patch);
    }
    reg.publish();
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
            unsafe { crate::lazy::dlclose(patch.handle) };
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
            reinsert(reg, [(index, patch)]);
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
                    unsafe { crate::lazy::dlclose(patch.handle) };
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
            reinsert(reg, removed);
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
    logged(
        result,
        format_args!("revert of all patches from '{}'", Text(req)),
    )
}

/// op REPLACE: see [`ulp_abi::op::REPLACE`].
pub fn replace(reg: &mut Registry, req: &[u8]) -> Result<Done, Failure> {
    reg.last = None;
    let Some(request) = ReplaceRequest::decode(req) else {
        return Err(malformed("replace"));
    };
    let result = change_library(reg, request.library, Some(&request.apply));
    let (library, path) = (Text(request.library), Text(request.apply.container_path));
    logged(
        result,
        format_args!("replace of the patches from '{library}' by '{path}'"),
    )
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
            Failure::error(
                errors::EINVALIDULP,
                format!("bad .ulp section of '{}': {e}", Text(a.container_path)),
            )
        })?),
        None => None,
    };
    let new_id = new_meta.as_ref().map(|m| m.patch_id);
    let loaded = objects::loaded_objects(objects::MainPath::Read).unwrap_or_default();
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
    let objects = objects::loaded_objects(objects::MainPath::Read).unwrap_or_default();
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

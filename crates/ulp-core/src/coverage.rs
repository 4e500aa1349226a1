//! Which processes still run a library build that is patched elsewhere,
//! and why they are not patched: the list an administrator needs after a
//! fleet-wide trigger to know what still needs a restart or a runtime
//! load (`ulp patches`, after the processes).
//!
//! A *patched build* is a library (file name and build-id, as loaded in a
//! process's memory) that has at least one patch applied in some process.
//! Every other process that maps the same build and lacks one of those
//! patches is listed with the reason. Everything is read from `/proc` and
//! process memory: nothing is stopped. Processes whose maps ulp may not
//! read are only counted (whether they map the library cannot be told).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ulp_process::Pid;

use crate::live_patching::{self, LivePatching};
use crate::objects::{mapped_objects, named_objects, MappedObject};
use crate::runtime::{Runtime, RuntimeError};

/// One patched build and the patches applied to it somewhere.
#[derive(Clone, Debug, Default)]
struct Patched {
    /// patch id -> container file name.
    patches: BTreeMap<[u8; 32], String>,
    /// patch id -> why the store's record of it is never used.
    refused: BTreeMap<[u8; 32], String>,
}

/// Why a process that maps a patched build does not have its patches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// No runtime: started without `LD_PRELOAD=libpulp.so.0`.
    NoRuntime,
    /// No runtime, and its environment opts out (`LIBPULP_DISABLE_ON_*`):
    /// the sentence that says which.
    OptedOut(String),
    /// The runtime is there but live patching is switched off.
    Disabled(LivePatching),
    /// ulp may not attach to it (the sentence says why).
    NotPermitted(String),
    /// Its runtime cannot be used by this ulp (another protocol version,
    /// unreadable): the sentence says why.
    RuntimeUnusable(String),
    /// Patchable, but these patches (container file names) are not applied.
    NotApplied(Vec<String>),
    /// A stored patch (`ulp trigger --persist`) that is refused: its
    /// container copy fails its checks, or its runtime refused it when
    /// the process started (the runtime's message).
    Refused(String),
}

impl Why {
    /// A stable identifier for JSON output.
    pub fn key(&self) -> &'static str {
        match self {
            Why::NoRuntime => "no_runtime",
            Why::OptedOut(_) => "opted_out",
            Why::Disabled(_) => "disabled",
            Why::NotPermitted(_) => "not_permitted",
            Why::RuntimeUnusable(_) => "runtime_unusable",
            Why::NotApplied(_) => "not_applied",
            Why::Refused(_) => "refused",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::NoRuntime => f.write_str(
                "no runtime: restart it with LD_PRELOAD=libpulp.so.0, or load the runtime now \
                 with `ulp trigger --load-runtime`",
            ),
            Why::OptedOut(why) => write!(f, "{why}: restart it without that setting"),
            Why::Disabled(state) => write!(
                f,
                "live patching is {state}: `ulp set_patchable enable` (if set_patchable \
                 disabled it), or restart it"
            ),
            Why::NotPermitted(why) | Why::RuntimeUnusable(why) => f.write_str(why),
            Why::NotApplied(c) => write!(
                f,
                "patchable, but not applied here: {} (run `ulp trigger`)",
                c.join(", ")
            ),
            Why::Refused(m) => write!(f, "the stored patch is refused: {m}"),
        }
    }
}

/// One process that maps a patched build without all of its patches.
#[derive(Clone, Debug)]
pub struct Unpatched {
    pub pid: Pid,
    pub name: String,
    /// The library as the process's loader names it (`MappedObject::name`).
    pub library: String,
    pub build_id: Vec<u8>,
    pub why: Why,
}

/// What [`scan`] found.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    pub unpatched: Vec<Unpatched>,
    /// Processes whose maps could not be read (permission): not examined.
    pub unreadable: usize,
}

/// A record of the patch store, as [`scan`] counts it: a build patched
/// "elsewhere" too, so that a process started with the runtime that did
/// not apply it (refused, or not preloaded) is listed.
#[derive(Clone, Debug)]
pub struct StoredPatch {
    /// The container's target name (basename or SONAME).
    pub target: String,
    pub build_id: Vec<u8>,
    pub patch_id: [u8; 32],
    /// The container's file name.
    pub container: String,
    /// Why the record is never used, when its container copy fails its
    /// checks (the runtime and `ulp watch` refuse it too).
    pub refused: Option<String>,
}

impl StoredPatch {
    /// Whether the mapped file `basename` may be the target: its name, or
    /// a file the name links to as distributions install them
    /// (`libz.so.1` -> `libz.so.1.2.13`). The build-id decides.
    fn may_be(&self, basename: &str) -> bool {
        basename == self.target
            || basename
                .strip_prefix(self.target.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// Finds, among `candidates`, the processes that map a build patched in
/// any process of the system, or that a record of the patch store is for,
/// without all its patches.
pub fn scan(candidates: &[Pid], stored: &[StoredPatch]) -> Coverage {
    let all = ulp_process::all_pids();
    // (library file name, build id) -> the patches applied to it anywhere.
    let mut patched: BTreeMap<(String, Vec<u8>), Patched> = BTreeMap::new();
    for &pid in &all {
        let Ok(rt) = Runtime::find(pid) else { continue };
        let Ok(applied) = rt.patches() else { continue };
        if applied.is_empty() {
            continue;
        }
        let Ok(objects) = named_objects(pid) else {
            continue;
        };
        for a in applied {
            let Some(obj) = objects.iter().find(|o| o.is_path(pid, &a.target_path)) else {
                continue;
            };
            let Some(id) = obj.build_id_in_memory(pid) else {
                continue;
            };
            let file = std::path::Path::new(&a.container_path)
                .file_name()
                .map_or(a.container_path.clone(), |f| f.to_string_lossy().into());
            patched
                .entry((obj.basename().to_string(), id))
                .or_default()
                .patches
                .insert(a.patch_id, file);
        }
    }
    let mut out = Coverage::default();
    if patched.is_empty() && stored.is_empty() {
        return out;
    }
    let names: BTreeSet<&str> = patched.keys().map(|(n, _)| n.as_str()).collect();
    let wanted = |base: &str| names.contains(base) || stored.iter().any(|s| s.may_be(base));
    let me = Pid::this();
    for &pid in candidates.iter().filter(|&&p| p != me) {
        let objects = match mapped_objects(pid) {
            Ok(o) => o,
            Err(e) if e.is_gone() => continue,
            Err(_) => {
                out.unreadable += 1;
                continue;
            }
        };
        if !objects.iter().any(|o| wanted(o.basename())) {
            continue;
        }
        // Named as the loader names them (what the registries record and
        // what `ulp patches` prints), for the few processes that map one.
        let objects = match named_objects(pid) {
            Ok(o) => o,
            Err(_) => objects,
        };
        let runtime = Runtime::find(pid);
        for obj in objects.iter().filter(|o| wanted(o.basename())) {
            let Some(id) = obj.build_id_in_memory(pid) else {
                continue;
            };
            let mut p = patched
                .get(&(obj.basename().to_string(), id.clone()))
                .cloned()
                .unwrap_or_default();
            for s in stored
                .iter()
                .filter(|s| s.build_id == id && s.may_be(obj.basename()))
            {
                p.patches.insert(s.patch_id, s.container.clone());
                if let Some(why) = &s.refused {
                    p.refused.insert(s.patch_id, why.clone());
                }
            }
            if p.patches.is_empty() {
                continue;
            }
            let Some(why) = why_unpatched(pid, &runtime, obj, &p) else {
                continue;
            };
            out.unpatched.push(Unpatched {
                pid,
                name: crate::select::process_name(pid),
                library: obj.name.clone(),
                build_id: id,
                why,
            });
        }
    }
    out
}

/// Why `pid` (whose runtime lookup gave `runtime`) lacks patches of `p`
/// on its library `obj`; `None` when it has them all.
fn why_unpatched(
    pid: Pid,
    runtime: &Result<Runtime, RuntimeError>,
    obj: &MappedObject,
    p: &Patched,
) -> Option<Why> {
    // Only refused records of the store: no runtime or tool would apply
    // them, whatever the process.
    if let Some(why) = p.refused.values().next() {
        if p.patches.keys().all(|id| p.refused.contains_key(id)) {
            return Some(Why::Refused(why.clone()));
        }
    }
    let rt = match runtime {
        Ok(rt) => rt,
        Err(RuntimeError::NotLoaded) => {
            return Some(match crate::inject::opted_out(pid) {
                Ok(Some(why)) => Why::OptedOut(why),
                _ => match attach_refusal(pid) {
                    Some(why) => Why::NotPermitted(why),
                    None => Why::NoRuntime,
                },
            })
        }
        Err(e) => return Some(Why::RuntimeUnusable(e.to_string())),
    };
    match live_patching::get(rt) {
        Ok(LivePatching::Enabled) => {}
        Ok(state) => return Some(Why::Disabled(state)),
        Err(e) => return Some(Why::RuntimeUnusable(e.to_string())),
    }
    let have: BTreeSet<[u8; 32]> = rt
        .patches()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| obj.is_path(pid, &a.target_path))
        .map(|a| a.patch_id)
        .collect();
    let missing: Vec<String> = p
        .patches
        .iter()
        .filter(|(id, _)| !have.contains(*id))
        .map(|(_, f)| f.clone())
        .collect();
    if missing.is_empty() {
        return None;
    }
    // A stored patch whose container copy fails its checks: that reason,
    // whoever would have applied it.
    if let Some(why) = p
        .refused
        .iter()
        .find_map(|(id, why)| (!have.contains(id)).then_some(why))
    {
        return Some(Why::Refused(why.clone()));
    }
    // A stored patch the runtime refused at start says why in its log.
    if let Ok(lines) = rt.messages() {
        if let Some(line) = lines.iter().rev().find(|l| {
            l.contains("stored patch")
                && (l.contains("refused") || l.contains("not applied"))
                && p.patches.iter().any(|(id, name)| {
                    !have.contains(id)
                        && (l.contains(name.as_str()) || l.contains(&ulp_abi::hex::hex(id)))
                })
        }) {
            let text = line.split_once("] ulp: ").map_or(line.as_str(), |(_, t)| t);
            return Some(Why::Refused(text.to_string()));
        }
    }
    Some(match attach_refusal(pid) {
        Some(why) => Why::NotPermitted(why),
        None => Why::NotApplied(missing),
    })
}

/// Why this ulp could not attach to `pid`, told from outside (without
/// trying): another user's process without privilege, or the Yama
/// `ptrace_scope` setting.
fn attach_refusal(pid: Pid) -> Option<String> {
    use ulp_process::PtraceScope;
    let scope = ulp_process::ptrace_scope().unwrap_or(PtraceScope::Classic);
    let by_scope = |advice: &str| {
        Some(format!(
            "not permitted: kernel.yama.ptrace_scope is {scope} ({}){advice}",
            scope.rule()
        ))
    };
    if scope == PtraceScope::Nobody {
        return by_scope("");
    }
    if has_cap_sys_ptrace() {
        return None;
    }
    if scope == PtraceScope::Admin {
        return by_scope(": run ulp as root");
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match ulp_process::owner_uid(pid) {
        Some(owner) if owner != me => Some(format!(
            "not permitted: the process belongs to uid {owner} and ulp runs as uid {me}: run ulp \
             as its owner or as root"
        )),
        _ if scope == PtraceScope::Ancestors => by_scope(": run ulp as root"),
        _ => None,
    }
}

/// Whether this process has CAP_SYS_PTRACE in its effective set.
fn has_cap_sys_ptrace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    ulp_process::has_capability(CAP_SYS_PTRACE)
}

//! What a process runs, as `ulp patches` shows it: its live-patching
//! state, the live-patchable libraries it maps (named as its loader names
//! them) and the patches applied to each. Read from outside: nothing is
//! stopped.

use crate::live_patching::{self, LivePatching};
use crate::runtime::{AppliedPatch, Runtime};
use crate::Pid;

/// One library of a process, with the patches applied to it.
pub struct Library {
    pub path: String,
    pub build_id: Option<Vec<u8>>,
    pub livepatchable: bool,
    pub patches: Vec<AppliedPatch>,
}

/// What `ulp patches` tells about one process.
pub struct Inventory {
    pub pid: Pid,
    pub name: String,
    pub state: LivePatching,
    /// The runtime's write journal is set: an interrupted ulp left code
    /// writes unfinished (the next trigger completes them).
    pub writes_pending: bool,
    /// The journal holds a per-thread transition whose flag is set: the
    /// writes left are its last part, made once no thread is old.
    pub in_transition: bool,
    /// Threads a pending transition still waits for (tid, the outermost
    /// replaced function on its stack), and how many.
    pub pending_threads: Option<(Vec<(ulp_process::Tid, String)>, usize)>,
    pub libraries: Vec<Library>,
}

/// The processes `ulp patches` looks at: those `spec` names (`-p
/// PID|NAME`), else every process with a runtime this ulp can read; with
/// `user`, only those whose login uid `user` matches (`-u`).
pub fn runtime_processes(spec: Option<&str>, user: Option<&str>) -> Vec<Pid> {
    let mut pids: Vec<Pid> = match spec {
        Some(spec) => crate::select::resolve(spec),
        None => ulp_process::all_pids()
            .into_iter()
            .filter(|&pid| Runtime::find(pid).is_ok())
            .collect(),
    };
    if let Some(user) = user {
        pids.retain(|&pid| crate::select::owner_matches(pid, user));
    }
    pids
}

/// Reads everything `patches` shows about one process.
pub fn of(pid: Pid, rt: &Runtime) -> Result<Inventory, ulp_process::Error> {
    let state = live_patching::get(rt)?;
    let writes_pending = rt.writes_pending()?;
    let in_transition = writes_pending
        && rt.read_result().is_ok_and(|(_, w)| {
            crate::transition::plan_of(&w).is_some_and(|p| crate::transition::flag_set(pid, &p))
        });
    let pending_threads = if in_transition {
        crate::transition::pending_now(rt)
    } else {
        None
    };
    let applied = rt.patches()?;
    let mut libraries = Vec::new();
    // Named as the process's loader names them, as libpulp prints them
    // (the SONAME link a program loaded, not the file it resolves to).
    for obj in crate::objects::named_objects(pid)? {
        if obj.path == rt.path {
            continue;
        }
        let elf = obj.open(pid).ok();
        let livepatchable = elf.as_ref().is_some_and(|e| e.livepatchable().is_ok());
        let patches: Vec<AppliedPatch> = applied
            .iter()
            .filter(|a| obj.is_path(pid, &a.target_path))
            .cloned()
            .collect();
        if !livepatchable && patches.is_empty() {
            continue;
        }
        libraries.push(Library {
            path: obj.name.clone(),
            // The copy the process runs, which may differ from the file
            // now at that path (an upgrade renamed a new build over it).
            build_id: obj
                .build_id_in_memory(pid)
                .or_else(|| elf.and_then(|e| e.build_id())),
            livepatchable,
            patches,
        });
    }
    Ok(Inventory {
        pid,
        name: crate::select::process_name(pid),
        state,
        writes_pending,
        in_transition,
        pending_threads,
        libraries,
    })
}

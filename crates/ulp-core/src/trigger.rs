//! Applying and reverting a live patch in one process.
//!
//! The flow (ARCHITECTURE.md, "How a trigger flows"):
//!
//! 1. Pre-check from outside, nothing stopped: the runtime is loaded, the
//!    target object is mapped and its build-id matches. Otherwise SKIPPED.
//! 2. Stop one thread and run the runtime's entry point on it. The runtime
//!    loads the container, resolves functions and references, updates its
//!    registry and answers with the byte writes to make. The process's other
//!    threads keep running meanwhile, so a lock they hold is released and
//!    the call cannot deadlock on them.
//! 3. Stop every thread, check that none is executing bytes about to change
//!    and that the bytes are still what the runtime saw, make the writes
//!    (every stub before any entry jump), resume everything.
//! 4. If the writes cannot be made (a thread is always in the way, an
//!    error), ask the runtime to undo its registry change: the process keeps
//!    its old code and a registry that says so.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use ulp_abi::{code, op, write_kind, ApplyRequest, Write, REQUEST_MAX};
use ulp_container::container::Container;
use ulp_process::{Pid, Stopped};

use crate::objects::mapped_objects;
use crate::runtime::{Runtime, RuntimeError};

/// How to run one trigger.
#[derive(Clone, Debug)]
pub struct Options {
    /// Upper bound for the whole operation in one process.
    pub timeout: Duration,
    /// How many more times to try when every thread cannot be caught
    /// outside the bytes to change.
    pub retries: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            retries: 3,
        }
    }
}

/// What happened in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Reverted,
    /// Nothing changed, for a reason that is not a failure.
    Skipped(String),
    /// The runtime is not loaded: nothing changed (a warning, not an error).
    NoRuntime,
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied => f.write_str("applied"),
            Outcome::Reverted => f.write_str("reverted"),
            Outcome::Skipped(r) => write!(f, "skipped: {r}"),
            Outcome::NoRuntime => {
                f.write_str("the live-patching runtime is not loaded in the target process")
            }
            Outcome::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

/// Apply `container` to process `pid`.
pub fn apply(pid: Pid, container: &Container, opts: &Options) -> Outcome {
    let deadline = Instant::now() + opts.timeout;
    let rt = match precheck(pid, container) {
        Ok(rt) => rt,
        Err(o) => return o,
    };
    // The runtime dlopens this path from inside the target, whose current
    // directory is not ours, and dlopen searches the library path for a
    // name without a slash: always hand it the absolute, resolved path.
    let path = match std::fs::canonicalize(&container.path) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("'{}': {e}", container.path.display())),
    };
    let path = path.to_string_lossy();
    let ulp = container.metadata.encode();
    let comments = container.comments.clone().unwrap_or_default();
    let req = ApplyRequest {
        container_path: path.as_bytes(),
        ulp: &ulp,
        comments: &comments,
    };
    let mut buf = vec![0u8; req.encoded_len()];
    if buf.len() > REQUEST_MAX || req.encode(&mut buf).is_none() {
        return Outcome::Failed(format!(
            "the patch metadata is too large for the runtime's request area ({} > {REQUEST_MAX} bytes)",
            buf.len()
        ));
    }
    run(
        &rt,
        op::APPLY,
        &buf,
        deadline,
        opts.retries,
        Outcome::Applied,
    )
}

/// Revert `container` in process `pid`.
pub fn revert(pid: Pid, container: &Container, opts: &Options) -> Outcome {
    let deadline = Instant::now() + opts.timeout;
    let rt = match Runtime::find(pid) {
        Ok(rt) => rt,
        Err(RuntimeError::NotLoaded) => return Outcome::NoRuntime,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    run(
        &rt,
        op::REVERT,
        &container.metadata.patch_id,
        deadline,
        opts.retries,
        Outcome::Reverted,
    )
}

/// Step 1: everything that can be known without stopping the process.
fn precheck(pid: Pid, container: &Container) -> Result<Runtime, Outcome> {
    let rt = match Runtime::find(pid) {
        Ok(rt) => rt,
        Err(RuntimeError::NotLoaded) => return Err(Outcome::NoRuntime),
        Err(e) => return Err(Outcome::Failed(e.to_string())),
    };
    let md = &container.metadata;
    let objects = mapped_objects(pid).map_err(|e| Outcome::Failed(e.to_string()))?;
    let Some(obj) = objects.iter().find(|o| o.basename() == md.target_name) else {
        return Err(Outcome::Skipped(format!(
            "library '{}' is not loaded",
            md.target_name
        )));
    };
    // The build-id is read from the file the process mapped; the runtime
    // checks the loaded copy in memory again before changing anything.
    let elf = obj.open(pid).map_err(|e| Outcome::Failed(e.to_string()))?;
    let have = elf.build_id().unwrap_or_default();
    if have != md.build_id {
        return Err(Outcome::Skipped(format!(
            "build id mismatch: '{}' has {}, the patch is for {}",
            obj.path,
            hex(&have),
            hex(&md.build_id)
        )));
    }
    Ok(rt)
}

/// Steps 2 to 4 for one operation.
fn run(
    rt: &Runtime,
    opcode: u32,
    req: &[u8],
    deadline: Instant,
    retries: u32,
    done: Outcome,
) -> Outcome {
    let writes = match call(rt, opcode, req, deadline) {
        Ok(Ok(writes)) => writes,
        Ok(Err(outcome)) => return outcome,
        Err(e) => return Outcome::Failed(e),
    };
    if writes.is_empty() {
        return done;
    }
    let mut last_err = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            // Let the thread that was in the way move on.
            thread::sleep(Duration::from_millis(1 << attempt.min(6)));
        }
        match write_all(rt.pid, &writes, deadline) {
            Ok(()) => return done,
            Err(WriteError::Busy(why)) => last_err = why,
            Err(WriteError::Fatal(why)) => {
                last_err = why;
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    // The registry says the operation happened but the code does not: take
    // the registry back so both agree on the old state.
    let undo = match call(rt, op::UNDO, &[], deadline + Duration::from_secs(5)) {
        Ok(_) => String::new(),
        Err(e) => format!(" (and undoing the runtime's record failed: {e})"),
    };
    Outcome::Failed(format!("{last_err}{undo}"))
}

/// Runs the entry point with `opcode` on one stopped thread; returns the
/// writes the runtime asks for, or the outcome it reports instead.
fn call(
    rt: &Runtime,
    opcode: u32,
    req: &[u8],
    deadline: Instant,
) -> Result<Result<Vec<Write>, Outcome>, String> {
    let mut stopped =
        Stopped::seize_threads(rt.pid, &[rt.pid], deadline).map_err(|e| e.to_string())?;
    rt.write_request(opcode, req).map_err(|e| e.to_string())?;
    let ret = stopped
        .remote_call(rt.pid, rt.entry, &[], deadline)
        .map_err(|e| e.to_string())?;
    let result = rt.read_result();
    stopped.release().map_err(|e| e.to_string())?;
    let (msg, writes) = result.map_err(|e| e.to_string())?;
    let rc = ret as i32;
    Ok(match rc {
        code::OK => Ok(writes),
        code::ALREADY_APPLIED => Err(Outcome::Skipped("Patch already applied".into())),
        code::TARGET_NOT_LOADED | code::BUILD_ID_MISMATCH | code::DISABLED => {
            Err(Outcome::Skipped(msg))
        }
        code::NOTHING_TO_UNDO => Err(Outcome::Failed(msg)),
        _ => Err(Outcome::Failed(if msg.is_empty() {
            format!("runtime returned code {rc}")
        } else {
            msg
        })),
    })
}

enum WriteError {
    /// A thread is executing bytes to change: try again later.
    Busy(String),
    Fatal(String),
}

/// Step 3: with every thread stopped, check and make the writes.
fn write_all(pid: Pid, writes: &[Write], deadline: Instant) -> Result<(), WriteError> {
    let fatal = |e: ulp_process::Error| WriteError::Fatal(e.to_string());
    let mut stopped = Stopped::seize_all(pid, deadline).map_err(fatal)?;
    for tid in stopped.tids() {
        let rip = stopped.regs(tid).map_err(fatal)?.rip();
        if let Some(w) = writes
            .iter()
            .find(|w| w.addr < rip && rip < w.addr + w.len as u64)
        {
            return Err(WriteError::Busy(format!(
                "process {pid} is busy: thread {tid} is executing bytes at {:#x} that the patch changes; retry later or with a higher -r",
                w.addr
            )));
        }
    }
    for w in writes {
        let mut now = [0u8; 16];
        stopped
            .peek(w.addr, &mut now[..w.len as usize])
            .map_err(fatal)?;
        if now[..w.len as usize] != w.old[..w.len as usize] {
            return Err(WriteError::Fatal(format!(
                "code at {:#x} in process {pid} changed since the runtime checked it (another tool?); nothing was written",
                w.addr
            )));
        }
    }
    // Every stub before any entry jump: a thread that takes a new jump must
    // find a complete stub. All threads are stopped, so this order matters
    // only if we die in the middle; then the process still runs old code.
    let ordered = writes
        .iter()
        .filter(|w| w.kind == write_kind::STUB)
        .chain(writes.iter().filter(|w| w.kind != write_kind::STUB));
    let mut done: Vec<&Write> = Vec::new();
    for w in ordered {
        if let Err(e) = stopped.poke(w.addr, &w.new[..w.len as usize]) {
            // Put back what was written so the process runs one version.
            for d in done.iter().rev() {
                let _ = stopped.poke(d.addr, &d.old[..d.len as usize]);
            }
            return Err(fatal(e));
        }
        done.push(w);
    }
    stopped.release().map_err(fatal)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

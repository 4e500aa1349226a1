//! `ulp patches`: processes with the runtime, their live-patchable
//! libraries and applied patches.

use std::path::Path;

use ulp_container::format::bug_labels;
use ulp_core::runtime::{format_utc, Runtime, RuntimeError};
use ulp_core::Pid;

use super::{process_name, resolve_processes};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &["process"];

pub const HELP: &str = "\
Usage: ulp patches [-p PID|NAME]

List the processes that have the live-patching runtime loaded (all of them,
or those named by -p), their live-patchable libraries and the patches applied
to each, with the bug labels found in the patches' comments.

Exit status: 0; 1 when -p names no readable process.
";

fn runtime_processes(p: &Parsed) -> Vec<Pid> {
    match p.value("process") {
        Some(spec) => resolve_processes(spec),
        None => ulp_process::all_pids()
            .into_iter()
            .filter(|&pid| Runtime::find(pid).is_ok())
            .collect(),
    }
}

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let pids = runtime_processes(p);
    if pids.is_empty() && p.value("process").is_some() {
        eprintln!(
            "ulp: no readable process matches '{}'",
            p.value("process").unwrap_or_default()
        );
        return Ok(1);
    }
    let mut status = 0;
    for pid in pids {
        let rt = match Runtime::find(pid) {
            Ok(rt) => rt,
            Err(RuntimeError::NotLoaded) if p.value("process").is_some() => {
                eprintln!(
                    "ulp: warning: {} (pid: {pid}): {}",
                    process_name(pid),
                    RuntimeError::NotLoaded
                );
                continue;
            }
            Err(RuntimeError::NotLoaded) => continue,
            Err(e) => {
                eprintln!("ulp: {} (pid: {pid}): {e}", process_name(pid));
                status = 1;
                continue;
            }
        };
        match describe(pid, &rt) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("ulp: {} (pid: {pid}): {e}", process_name(pid));
                status = 1;
            }
        }
    }
    Ok(status)
}

/// The `patches` block of one process (COMPAT.md, "Output of patches").
fn describe(pid: Pid, rt: &Runtime) -> Result<String, ulp_process::Error> {
    use std::fmt::Write;
    let state = rt.state()?;
    let applied = rt.patches()?;
    let mut s = String::new();
    let _ = writeln!(s, "PID: {pid}, name: {}", process_name(pid));
    let status = if state == ulp_abi::state::DISABLED_BY_USER {
        "disabled by user"
    } else {
        "enabled"
    };
    let _ = writeln!(s, "  Livepatching status: {status}");
    let _ = writeln!(s, "  Livepatchable libraries:");
    for obj in ulp_core::objects::mapped_objects(pid)? {
        if obj.path == rt.path {
            continue;
        }
        let patchable = obj.open(pid).is_ok_and(|e| e.livepatchable().is_ok());
        let mine: Vec<_> = applied
            .iter()
            .filter(|a| a.target_path == obj.path)
            .collect();
        if !patchable && mine.is_empty() {
            continue;
        }
        let _ = writeln!(s, "    in {}:", obj.path);
        for a in mine {
            let file = Path::new(&a.container_path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            let _ = writeln!(
                s,
                "      livepatch: {} loaded on {}",
                file.unwrap_or_else(|| a.container_path.clone()),
                format_utc(a.applied_at)
            );
            let labels = bug_labels(&a.comments);
            if !labels.is_empty() {
                let _ = writeln!(s, "        bug labels: {}", labels.join(", "));
            }
        }
    }
    Ok(s)
}

//! `ulp check`: is a patch applied in a process? Answered from the
//! runtime's registry, read through process memory (the process is never
//! stopped).

use std::path::Path;

use ulp_container::container;
use ulp_core::runtime::Runtime;

use super::{process_name, resolve_processes};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &["process"];

pub const HELP: &str = "\
Usage: ulp check -p PID|NAME FILE

Tell whether the live patch FILE is applied in the process.

Exit status (libpulp's): 1 applied, 0 not applied (also when the patch is
not meant for that process, or the process has no runtime), 255 error.
";

const APPLIED: u8 = 1;
const NOT_APPLIED: u8 = 0;
const ERROR: u8 = 255;

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let Some(spec) = p.value("process") else {
        return Err(UsageError("'check' needs -p PID|NAME".into()));
    };
    let [file] = p.operands.as_slice() else {
        return Err(UsageError("'check' takes one FILE".into()));
    };
    let c = match container::read(Path::new(file)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ulp: {e}");
            return Ok(ERROR);
        }
    };
    let pids = resolve_processes(spec);
    let [pid] = pids.as_slice() else {
        eprintln!(
            "ulp: '{spec}' names {} processes; check takes exactly one",
            pids.len()
        );
        return Ok(ERROR);
    };
    let name = process_name(*pid);
    let rt = match Runtime::find(*pid) {
        Ok(rt) => rt,
        Err(ulp_core::runtime::RuntimeError::NotLoaded) => {
            if !p.has("quiet") {
                println!("{name} (pid: {pid}): {file}: not applied (no live-patching runtime)");
            }
            return Ok(NOT_APPLIED);
        }
        Err(e) => {
            eprintln!("ulp: {name} (pid: {pid}): {e}");
            return Ok(ERROR);
        }
    };
    match rt.patches() {
        Ok(list) => {
            let applied = list.iter().any(|a| a.patch_id == c.metadata.patch_id);
            if !p.has("quiet") {
                let what = if applied { "applied" } else { "not applied" };
                println!("{name} (pid: {pid}): {file}: {what}");
            }
            Ok(if applied { APPLIED } else { NOT_APPLIED })
        }
        Err(e) => {
            eprintln!("ulp: {name} (pid: {pid}): {e}");
            Ok(ERROR)
        }
    }
}

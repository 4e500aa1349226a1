//! `ulp check`: is a patch applied in a process? Answered from the
//! runtime's registry, read through process memory (the process is never
//! stopped).

use clap::ValueHint;
use std::path::Path;

use serde_json::json;
use ulp_container::container;
use ulp_core::runtime::Runtime;

use super::{print_json, process_name, resolve_processes};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "is the patch applied? (exit 1 yes, 0 no, 255 error)",
    override_usage = "\
ulp check -p PID|NAME FILE",
    before_help = "\
Tell whether the live patch FILE is applied in the process:
  NAME (pid: PID): FILE: applied | not applied",
    after_help = "\
Exit status (libpulp's): 1 applied, 0 not applied (also when the patch is
not meant for that process), 255 error; a process without the runtime is an
error (`[time] ulp: error gathering target process information.` on
stderr, as libpulp's).",
    mut_arg("json", |a| a.help("{\"file\", \"pid\", \"name\", \"runtime\", \"applied\"} or {\"error\"} (see README.md)"))
)]
pub struct Args {
    /// the process (a NAME must match exactly one)
    #[arg(short, long, value_name = "PID|NAME")]
    pub process: Option<String>,
    #[arg(value_name = "FILE", value_hint = ValueHint::FilePath, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

const APPLIED: u8 = 1;
const NOT_APPLIED: u8 = 0;
const ERROR: u8 = 255;

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let Some(spec) = p.process.as_deref() else {
        return Err(UsageError("'check' needs -p PID|NAME".into()));
    };
    let [file] = p.operands.as_slice() else {
        return Err(UsageError("'check' takes one FILE".into()));
    };
    let json = p.common.json;
    let error = |msg: String| {
        eprintln!("ulp: {msg}");
        if json {
            print_json(&json!({ "file": file, "error": msg }));
        }
        Ok(ERROR)
    };
    let c = match container::read(Path::new(file)) {
        Ok(c) => c,
        Err(e) => return error(e.to_string()),
    };
    let pids = resolve_processes(spec);
    let [pid] = pids.as_slice() else {
        return error(format!(
            "'{spec}' names {} processes; check takes exactly one",
            pids.len()
        ));
    };
    let name = process_name(*pid);
    let answer = |runtime: bool, applied: bool| {
        if json {
            print_json(&json!({
                "file": file,
                "pid": pid.get(),
                "name": name,
                "runtime": runtime,
                "applied": applied,
            }));
        } else if !p.common.quiet {
            let what = if applied { "applied" } else { "not applied" };
            let why = if runtime {
                ""
            } else {
                " (no live-patching runtime)"
            };
            println!("{name} (pid: {pid}): {file}: {what}{why}");
        }
        Ok(if applied { APPLIED } else { NOT_APPLIED })
    };
    let rt = match Runtime::find_started(*pid).0 {
        Ok(rt) => rt,
        // libpulp cannot look into a process without its runtime: an
        // error (255), in its words.
        Err(ulp_core::runtime::RuntimeError::NotLoaded) => {
            if !p.common.quiet {
                super::log_stderr("error gathering target process information.");
            }
            if json {
                print_json(&json!({
                    "file": file,
                    "pid": pid.get(),
                    "name": name,
                    "runtime": false,
                    "error": ulp_abi::errors::ENOLIBPULP.phrase,
                }));
            }
            return Ok(ERROR);
        }
        Err(e) => return error(format!("{name} (pid: {pid}): {e}")),
    };
    if rt.writes_pending().unwrap_or(false) {
        eprintln!(
            "ulp: warning: {name} (pid: {pid}): a killed ulp left code writes unfinished; this \
             answer is the runtime's record, which the code may not match yet: any `ulp trigger` \
             on this process completes them"
        );
    }
    // Not just the patch id: the same fix packed for another build of the
    // target has the same id (see `ulp_core::trigger::is_applied`).
    let opts = ulp_core::trigger::Options::default();
    match ulp_core::trigger::is_applied(&rt, &c, &opts) {
        Ok(applied) => answer(true, applied),
        Err(e) => error(format!("{name} (pid: {pid}): {e}")),
    }
}

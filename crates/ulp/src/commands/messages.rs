//! `ulp messages`: a process's runtime message log.

use clap::ValueHint;
use serde_json::json;
use ulp_core::runtime::{Runtime, RuntimeError};
use ulp_core::Pid;

use super::{no_operands, print_json, process_name, resolve_processes, vanished};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "print a process's runtime message log",
    override_usage = "\
ulp messages -p PID|NAME",
    before_help = "\
Print the runtime's message log of the process (or of every process named
NAME): one line per message, the first saying the runtime was loaded, later
ones timestamped (UTC): [YYYY-MM-DD HH:MM:SS] ulp: ...
The process is only read, never stopped.",
    after_help = "\
A process without the runtime gets a warning; -p PID of such a process
gets libpulp's `[TIME] ulp: error gathering target process information.`

Exit status: 0; 1 when no process matches, a log cannot be read, or no
matching process has the runtime.",
    mut_arg("json", |a| a.help("{\"processes\": [{\"pid\", \"name\", \"messages\"}], \"warnings\": [...], \"errors\": [...]} (see README.md)"))
)]
pub struct Args {
    /// the process(es)
    #[arg(short, long, value_name = "PID|NAME")]
    pub process: Option<String>,
    #[arg(value_hint = ValueHint::Other, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let Some(spec) = p.process.as_deref() else {
        return Err(UsageError("'messages' needs -p PID|NAME".into()));
    };
    no_operands("messages", &p.operands)?;
    let json = p.common.json;
    let pids = resolve_processes(spec);
    let by_name = spec.parse::<Pid>().is_err();
    let (mut logs, mut warnings, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    if pids.is_empty() {
        let msg = ulp_core::select::NoProcess {
            spec: Some(spec),
            user: None,
        }
        .to_string();
        eprintln!("ulp: {msg}");
        errors.push(json!({ "error": msg }));
    }
    for pid in pids {
        let name = process_name(pid);
        let read = Runtime::find_started(pid)
            .0
            .and_then(|rt| rt.messages().map_err(RuntimeError::from));
        match read {
            Ok(lines) => {
                if !json {
                    lines.iter().for_each(|l| println!("{l}"));
                }
                logs.push(json!({ "pid": pid.get(), "name": name, "messages": lines }));
            }
            Err(RuntimeError::Process(e)) if by_name && vanished(pid, &e) => {}
            // A pid named without the runtime: libpulp's words (exit 1).
            Err(e @ RuntimeError::NotLoaded) if !by_name => {
                if !p.common.quiet {
                    super::log_stderr("error gathering target process information.");
                }
                warnings.push(json!({ "pid": pid.get(), "name": name, "warning": e.to_string() }));
            }
            Err(e @ RuntimeError::NotLoaded) => {
                eprintln!("ulp: warning: {name} (pid: {pid}): {e}");
                warnings.push(json!({ "pid": pid.get(), "name": name, "warning": e.to_string() }));
            }
            Err(e) => {
                eprintln!("ulp: {name} (pid: {pid}): {e}");
                errors.push(json!({ "pid": pid.get(), "name": name, "error": e.to_string() }));
            }
        }
    }
    if json {
        print_json(&json!({ "processes": logs, "warnings": warnings, "errors": errors }));
    }
    // A process without the runtime is a warning, unless it leaves nothing
    // to show.
    Ok(if errors.is_empty() && !logs.is_empty() {
        0
    } else {
        1
    })
}

//! `ulp messages`: a process's runtime message log.

use ulp_core::runtime::Runtime;

use super::{process_name, resolve_processes};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &["process"];

pub const HELP: &str = "\
Usage: ulp messages -p PID|NAME

Print the runtime's message log of the process: one line per message, the
first saying the runtime was loaded, later ones timestamped (UTC).

Exit status: 0; 1 when the log cannot be read.
";

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let Some(spec) = p.value("process") else {
        return Err(UsageError("'messages' needs -p PID|NAME".into()));
    };
    let pids = resolve_processes(spec);
    if pids.is_empty() {
        eprintln!("ulp: no process matches '{spec}'");
        return Ok(1);
    }
    let mut status = 0;
    for pid in pids {
        match Runtime::find(pid)
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.messages().map_err(|e| e.to_string()))
        {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("ulp: {} (pid: {pid}): {e}", process_name(pid));
                status = 1;
            }
        }
    }
    Ok(status)
}

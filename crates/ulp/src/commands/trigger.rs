//! `ulp trigger`: apply or revert live patches in running processes.

use std::path::Path;
use std::time::Duration;

use ulp_container::container::{self, Container};
use ulp_core::trigger::{self, Outcome};

use super::{process_name, resolve_processes};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &["process", "revert", "retries", "timeout"];

pub const HELP: &str = "\
Usage: ulp trigger -p PID|NAME [--revert] [-r N] [--timeout S] FILE...

Apply the live-patch containers FILE... to the process PID (or every process
named NAME: its /proc/PID/comm or its executable's file name). With --revert,
remove them instead. The process must run with libpulp.so.0 preloaded.

A patch applies only to a process that has loaded the exact build of the
library it was made for (same file name and build id); anything else is
SKIPPED and left untouched. A patch applies all or nothing.

Output: one line per process and patch, then a summary line:
  NAME (pid: PID): SUCCESS FILE | SKIPPED REASON | ERROR FILE: REASON
  ulp: Processes patched: N, Skipped: N, Failed: N.

Options:
  -p, --process PID|NAME  the target process(es)
      --revert            revert the patches instead of applying them
  -r, --retries N         retry a busy process N more times (default 3)
      --timeout S         give up on a process after S seconds (default 30)
  -q, --quiet             print only the summary line
  -v, --verbose           say more

Exit status: 0 when nothing failed (skips are not failures), 1 otherwise.
";

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let Some(spec) = p.value("process") else {
        return Err(UsageError(
            "'trigger' needs -p PID|NAME (patching every process comes later)".into(),
        ));
    };
    if p.operands.is_empty() {
        return Err(UsageError("'trigger' needs at least one FILE".into()));
    }
    let mut opts = trigger::Options::default();
    if let Some(r) = p.value("retries") {
        opts.retries = r
            .parse()
            .map_err(|_| UsageError(format!("-r needs a number, got '{r}'")))?;
    }
    if let Some(t) = p.value("timeout") {
        let secs: f64 = t
            .parse()
            .ok()
            .filter(|s: &f64| *s > 0.0 && s.is_finite())
            .ok_or_else(|| {
                UsageError(format!(
                    "--timeout needs a positive number of seconds, got '{t}'"
                ))
            })?;
        opts.timeout = Duration::from_secs_f64(secs);
    }
    let quiet = p.has("quiet");
    let revert = p.has("revert");

    // Read every container once, before touching any process.
    let mut containers: Vec<(&str, Result<Container, String>)> = Vec::new();
    for f in &p.operands {
        containers.push((f, container::read(Path::new(f)).map_err(|e| e.to_string())));
    }

    let pids = resolve_processes(spec);
    let (mut patched, mut skipped, mut failed) = (0, 0, 0);
    if pids.is_empty() {
        eprintln!("ulp: no process matches '{spec}'");
    }
    for pid in pids {
        let name = process_name(pid);
        let several = containers.len() > 1;
        if several && !quiet {
            println!("{name} (pid: {pid}):");
        }
        let (mut ok, mut bad, mut skip) = (0, 0, 0);
        for (file, c) in &containers {
            let outcome = match c {
                Ok(c) if revert => trigger::revert(pid, c, &opts),
                Ok(c) => trigger::apply(pid, c, &opts),
                Err(e) => Outcome::Failed(e.clone()),
            };
            let prefix = if several {
                "  ".to_string()
            } else {
                format!("{name} (pid: {pid}): ")
            };
            match outcome {
                Outcome::Applied | Outcome::Reverted => {
                    ok += 1;
                    if !quiet {
                        println!("{prefix}SUCCESS {file}");
                    }
                }
                Outcome::Skipped(reason) => {
                    skip += 1;
                    if !quiet {
                        println!("{prefix}SKIPPED {reason}");
                    }
                }
                Outcome::NoRuntime => {
                    skip += 1;
                    eprintln!(
                        "ulp: warning: {name} (pid: {pid}): the live-patching runtime is not loaded in the target process; start it with LD_PRELOAD=.../libpulp.so.0"
                    );
                }
                Outcome::Failed(reason) => {
                    bad += 1;
                    println!("{prefix}ERROR {file}: {reason}");
                }
            }
        }
        // A process counts once: failed if any patch failed, patched if any
        // patch went in, skipped otherwise.
        if bad > 0 {
            failed += 1;
        } else if ok > 0 {
            patched += 1;
        } else if skip > 0 {
            skipped += 1;
        }
    }
    println!("ulp: Processes patched: {patched}, Skipped: {skipped}, Failed: {failed}.");
    Ok(if failed > 0 { 1 } else { 0 })
}

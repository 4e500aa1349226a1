//! One function per command: check the arguments, call the libraries,
//! print the result in libpulp's format (COMPAT.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ulp_container::container::{self, Container};
use ulp_container::format::bug_labels;
use ulp_container::pack::{self, PackOptions};
use ulp_core::runtime::{format_utc, Runtime, RuntimeError};
use ulp_core::trigger::{self, Outcome};
use ulp_core::Pid;

use crate::args::{Parsed, UsageError};

/// Options every command accepts.
const COMMON: &[&str] = &["help", "version", "verbose", "quiet"];

pub fn help(command: &str) -> String {
    let text = match command {
        "trigger" => {
            "\
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
"
        }
        "patches" => {
            "\
Usage: ulp patches [-p PID|NAME]

List the processes that have the live-patching runtime loaded (all of them,
or those named by -p), their live-patchable libraries and the patches applied
to each, with the bug labels found in the patches' comments.

Exit status: 0; 1 when -p names no readable process.
"
        }
        "messages" => {
            "\
Usage: ulp messages -p PID|NAME

Print the runtime's message log of the process: one line per message, the
first saying the runtime was loaded, later ones timestamped (UTC).

Exit status: 0; 1 when the log cannot be read.
"
        }
        "post" => {
            "\
Usage: ulp post FILE

Rewrite FILE in place: at every function listed in its
__patchable_function_entries section (gcc -fpatchable-function-entry=16,14),
turn the two one-byte entry NOPs into one two-byte NOP, so that no thread can
ever stop between them. Entries already merged are left alone.

Exit status: 0 on success, 1 on failure.
"
        }
        "livepatchable" => {
            "\
Usage: ulp livepatchable FILE

Tell whether FILE was built with patchable function entries.

Exit status: 0 when it is live-patchable, 1 when not (the reason is printed).
"
        }
        "packer" => {
            "\
Usage: ulp packer [-l FILE] [-t FILE] FILE.dsc

Read the description FILE.dsc and write the live-patch metadata (.ulp,
.ulp.rev and, with comment lines, .ulp.comments sections) into the container
it names. Nothing is written when the description has an error; errors are
reported as FILE.dsc:LINE:COL: error: MESSAGE.

Options:
  -l, --livepatch FILE   the container to write (instead of the .dsc's first line)
  -t, --target FILE      the target library (instead of the .dsc's @ line)

Exit status: 0 on success, 1 on failure.
"
        }
        "dump" => {
            "\
Usage: ulp dump [--revert] [-b] FILE

Print the metadata of the live-patch container FILE.

Options:
      --revert      print the revert metadata (.ulp.rev) instead
  -b, --buildid     print only the target's build id

Exit status: 0 on success, 1 on failure.
"
        }
        _ => "",
    };
    text.to_string()
}

/// Runs `command`; returns its exit status.
pub fn run(command: &str, p: &Parsed) -> Result<u8, UsageError> {
    let allowed: &[&str] = match command {
        "trigger" => &["process", "revert", "retries", "timeout"],
        "patches" | "messages" => &["process"],
        "dump" => &["revert", "buildid"],
        "packer" => &["livepatch", "target"],
        _ => &[],
    };
    if let Some((bad, _)) = p
        .opts
        .iter()
        .find(|(o, _)| !COMMON.contains(o) && !allowed.contains(o))
    {
        return Err(UsageError(format!("'{command}' takes no option '--{bad}'")));
    }
    match command {
        "post" => Ok(post(one_operand(command, p)?)),
        "livepatchable" => Ok(livepatchable(one_operand(command, p)?)),
        "packer" => Ok(packer(one_operand(command, p)?, p)),
        "dump" => Ok(dump(one_operand(command, p)?, p)),
        "trigger" => trigger(p),
        "patches" => patches(p),
        "messages" => messages(p),
        _ => Err(UsageError(format!("unknown command '{command}'"))),
    }
}

fn one_operand<'a>(command: &str, p: &'a Parsed) -> Result<&'a Path, UsageError> {
    match p.operands.as_slice() {
        [one] => Ok(Path::new(one)),
        [] => Err(UsageError(format!("'{command}' needs a FILE"))),
        _ => Err(UsageError(format!(
            "'{command}' takes one FILE, got {}",
            p.operands.len()
        ))),
    }
}

fn post(path: &Path) -> u8 {
    match ulp_elf::post(path) {
        Ok(r) => {
            println!(
                "ulp: '{}': {} entries merged, {} already merged{}.",
                path.display(),
                r.merged,
                r.already,
                if r.skipped > 0 {
                    format!(", {} left alone (not NOPs)", r.skipped)
                } else {
                    String::new()
                }
            );
            0
        }
        Err(e) => fail(&e),
    }
}

fn livepatchable(path: &Path) -> u8 {
    let verdict = ulp_elf::ElfFile::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| f.livepatchable());
    match verdict {
        Ok(()) => {
            println!("file '{}' is livepatchable.", path.display());
            0
        }
        Err(reason) => {
            println!("file '{}' is not livepatchable: {reason}", path.display());
            1
        }
    }
}

fn packer(dsc: &Path, p: &Parsed) -> u8 {
    let opts = PackOptions {
        container_override: p.value("livepatch").map(PathBuf::from),
        target_override: p.value("target").map(PathBuf::from),
    };
    match pack::pack(dsc, &opts) {
        Ok(report) => {
            if !p.has("quiet") {
                println!(
                    "ulp: packed {} unit(s) and {} reference(s) for '{}' into '{}'.",
                    report.metadata.units.len(),
                    report.metadata.refs.len(),
                    report.metadata.target_name,
                    report.container.display()
                );
            }
            0
        }
        Err(e) => fail(&e),
    }
}

fn dump(path: &Path, p: &Parsed) -> u8 {
    match container::read(path) {
        Ok(c) => {
            print!(
                "{}",
                ulp_container::dump::dump_text(&c, p.has("revert"), p.has("buildid"))
            );
            0
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> u8 {
    eprintln!("ulp: {e}");
    1
}

/// `-p PID` or `-p NAME` to process ids (a name matches comm or exe name).
fn resolve_processes(spec: &str) -> Vec<Pid> {
    if let Ok(pid) = spec.parse::<Pid>() {
        return vec![pid];
    }
    ulp_process::all_pids()
        .into_iter()
        .filter(|&pid| {
            ulp_process::comm(pid).is_ok_and(|c| c == spec)
                || ulp_process::exe(pid).is_some_and(|e| e.file_name().is_some_and(|n| n == spec))
        })
        .collect()
}

fn process_name(pid: Pid) -> String {
    ulp_process::comm(pid).unwrap_or_else(|_| "?".into())
}

fn trigger(p: &Parsed) -> Result<u8, UsageError> {
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

fn runtime_processes(p: &Parsed) -> Vec<Pid> {
    match p.value("process") {
        Some(spec) => resolve_processes(spec),
        None => ulp_process::all_pids()
            .into_iter()
            .filter(|&pid| Runtime::find(pid).is_ok())
            .collect(),
    }
}

fn patches(p: &Parsed) -> Result<u8, UsageError> {
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

fn messages(p: &Parsed) -> Result<u8, UsageError> {
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

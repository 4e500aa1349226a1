//! One module per command: each states its options (`OPTIONS`), its help
//! (`HELP`) and runs (`run`), printing in libpulp's format (COMPAT.md).
//! Helpers shared by several commands live here.

mod check;
mod dump;
mod extract;
mod livepatchable;
mod messages;
mod packer;
mod patches;
mod post;
mod set_patchable;
mod trigger;

use std::path::Path;

use ulp_core::Pid;

use crate::args::{Parsed, UsageError};

/// Options every command accepts.
const COMMON: &[&str] = &["help", "version", "verbose", "quiet", "json"];

/// What each command word runs: its options, help and entry point.
struct Command {
    name: &'static str,
    options: &'static [&'static str],
    help: &'static str,
    run: fn(&Parsed) -> Result<u8, UsageError>,
}

const TABLE: &[Command] = &[
    Command {
        name: "trigger",
        options: trigger::OPTIONS,
        help: trigger::HELP,
        run: trigger::run,
    },
    Command {
        name: "patches",
        options: patches::OPTIONS,
        help: patches::HELP,
        run: patches::run,
    },
    Command {
        name: "messages",
        options: messages::OPTIONS,
        help: messages::HELP,
        run: messages::run,
    },
    Command {
        name: "check",
        options: check::OPTIONS,
        help: check::HELP,
        run: check::run,
    },
    Command {
        name: "dump",
        options: dump::OPTIONS,
        help: dump::HELP,
        run: dump::run,
    },
    Command {
        name: "packer",
        options: packer::OPTIONS,
        help: packer::HELP,
        run: packer::run,
    },
    Command {
        name: "post",
        options: post::OPTIONS,
        help: post::HELP,
        run: post::run,
    },
    Command {
        name: "livepatchable",
        options: livepatchable::OPTIONS,
        help: livepatchable::HELP,
        run: livepatchable::run,
    },
    Command {
        name: "extract",
        options: extract::OPTIONS,
        help: extract::HELP,
        run: extract::run,
    },
    Command {
        name: "set_patchable",
        options: set_patchable::OPTIONS,
        help: set_patchable::HELP,
        run: set_patchable::run,
    },
];

/// Every command word, for the argument parser.
pub fn names() -> Vec<&'static str> {
    TABLE.iter().map(|c| c.name).collect()
}

pub fn help(command: &str) -> &'static str {
    TABLE
        .iter()
        .find(|c| c.name == command)
        .map_or("", |c| c.help)
}

/// Runs `command`; returns its exit status.
pub fn run(command: &str, p: &Parsed) -> Result<u8, UsageError> {
    let Some(cmd) = TABLE.iter().find(|c| c.name == command) else {
        return Err(UsageError(format!("unknown command '{command}'")));
    };
    if let Some((bad, _)) = p
        .opts
        .iter()
        .find(|(o, _)| !COMMON.contains(o) && !cmd.options.contains(o))
    {
        return Err(UsageError(format!("'{command}' takes no option '--{bad}'")));
    }
    (cmd.run)(p)
}

pub(crate) fn one_operand<'a>(command: &str, p: &'a Parsed) -> Result<&'a Path, UsageError> {
    match p.operands.as_slice() {
        [one] => Ok(Path::new(one)),
        [] => Err(UsageError(format!("'{command}' needs a FILE"))),
        _ => Err(UsageError(format!(
            "'{command}' takes one FILE, got {}",
            p.operands.len()
        ))),
    }
}
pub(crate) fn fail(e: &dyn std::fmt::Display) -> u8 {
    eprintln!("ulp: {e}");
    1
}
/// `-p PID` or `-p NAME-PATTERN` to process ids, ascending (a pattern is a
/// shell glob matched against comm and the exe's file name; see
/// `ulp_core::select::resolve`).
pub(crate) fn resolve_processes(spec: &str) -> Vec<Pid> {
    ulp_core::select::resolve(spec)
}
/// Whether `pid` exited while it was being read (a process listed by name
/// or as one of all that is gone by the time it is read is skipped).
pub(crate) fn vanished(pid: Pid, e: &ulp_process::Error) -> bool {
    e.is_gone() || !ulp_process::exists(pid)
}
pub(crate) fn process_name(pid: Pid) -> String {
    ulp_process::comm(pid).unwrap_or_else(|_| "?".into())
}

/// Prints `value` as the one JSON document of a `--json` run. A closed
/// stdout (`ulp ... --json | head`) is not worth a panic.
pub(crate) fn print_json(value: &serde_json::Value) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// A failure under `--json`: the message on stderr (as without `--json`)
/// and `{"error": MESSAGE}` as the document on stdout. Returns 1.
pub(crate) fn fail_json(e: &dyn std::fmt::Display) -> u8 {
    eprintln!("ulp: {e}");
    print_json(&serde_json::json!({ "error": e.to_string() }));
    1
}

/// Refuses operands for a command that takes none.
pub(crate) fn no_operands(command: &str, p: &Parsed) -> Result<(), UsageError> {
    match p.operands.first() {
        None => Ok(()),
        Some(o) => Err(UsageError(format!(
            "'{command}' takes no operand, got '{o}'"
        ))),
    }
}

/// `--load-runtime [--runtime PATH]`: `None` without the option, else the
/// runtime file (given, or next to ulp) or why it cannot be used (not a
/// runtime; as root, a file another user could change, unless --force).
pub(crate) fn runtime_to_load(
    p: &Parsed,
) -> Result<Option<Result<std::path::PathBuf, String>>, UsageError> {
    if !p.has("load-runtime") {
        if p.has("runtime") {
            return Err(UsageError("--runtime goes with --load-runtime".into()));
        }
        return Ok(None);
    }
    let file = match p.value("runtime") {
        Some(r) => {
            std::fs::canonicalize(r).map_err(|e| UsageError(format!("--runtime '{r}': {e}")))?
        }
        None => ulp_core::inject::default_runtime().ok_or_else(|| {
            UsageError(
                "--load-runtime: no libpulp.so.0 next to ulp (../lib or the same directory); \
                 name it with --runtime=PATH"
                    .into(),
            )
        })?,
    };
    let check = !p.has("force") && ulp_core::trust::running_as_root();
    Ok(Some(
        ulp_core::inject::check_runtime_file(&file, check)
            .map(|()| file)
            .map_err(|e| e.to_string()),
    ))
}

pub(crate) use ulp_abi::hex::hex;

/// libpulp's timestamp of a message on stderr: the local time as
/// `[YYYY-MM-DD HH:MM:SS]`.
pub(crate) fn timestamp() -> String {
    let mut now: libc::time_t = 0;
    // SAFETY: an all-zero `tm` is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the calls; localtime_r is the
    // thread-safe variant and writes only `tm`.
    let ok = unsafe {
        libc::time(&mut now);
        !libc::localtime_r(&now, &mut tm).is_null()
    };
    if !ok {
        return "[?]".into();
    }
    format!(
        "[{:04}-{:02}-{:02} {:02}:{:02}:{:02}]",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// A message on stderr as libpulp's tool writes it:
/// `[YYYY-MM-DD HH:MM:SS] ulp: MESSAGE`.
pub(crate) fn log_stderr(message: &str) {
    eprintln!("{} ulp: {message}", timestamp());
}

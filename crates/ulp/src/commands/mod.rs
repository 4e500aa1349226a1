//! One module per command: each states its options (`OPTIONS`), its help
//! (`HELP`) and runs (`run`), printing in libpulp's format (COMPAT.md).
//! Helpers shared by several commands live here.

mod check;
mod dump;
mod livepatchable;
mod messages;
mod packer;
mod patches;
mod post;
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
/// `-p PID` or `-p NAME` to process ids (a name matches comm or exe name).
pub(crate) fn resolve_processes(spec: &str) -> Vec<Pid> {
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
pub(crate) fn process_name(pid: Pid) -> String {
    ulp_process::comm(pid).unwrap_or_else(|_| "?".into())
}

/// Prints `value` as the one JSON document of a `--json` run.
#[allow(dead_code)] // used as the commands gain --json
pub(crate) fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
    );
}

//! One module per command: each defines its options and help (`Args`,
//! clap's derive API) and runs (`run`), printing in libpulp's format
//! (COMPAT.md).
//! Helpers shared by several commands live here.

mod build;
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
mod watch;

use clap::ValueHint;
use std::path::Path;

use ulp_core::Pid;

use crate::args::{self, Parsed, UsageError};

/// Every command: its word, and its options and help (each module's
/// `Args`, clap's derive API: the one definition the parser, `--help`,
/// the bash completion and the man page test use).
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    Trigger(trigger::Args),
    Patches(patches::Args),
    Messages(messages::Args),
    Check(check::Args),
    #[command(name = "set_patchable")]
    SetPatchable(set_patchable::Args),
    Post(post::Args),
    Livepatchable(livepatchable::Args),
    Packer(packer::Args),
    Dump(dump::Args),
    Extract(extract::Args),
    Watch(watch::Args),
    Build(build::Args),
}

/// `ulp` itself: the words outside a command (`ulp --help`, `ulp -V`).
#[derive(clap::Parser, Debug)]
#[command(
    name = "ulp",
    disable_help_flag = true,
    disable_help_subcommand = true,
    override_usage = "ulp COMMAND [OPTIONS] [ARGS]   (the command word may stand anywhere)",
    about = "ulp: userspace live patching (a drop-in replacement for libpulp's ulp)",
    after_help = "\
Patching running processes needs libpulp.so.0 in them: preloaded, or loaded
with --load-runtime; `ulp watch` applies the patch store's records to
processes as they start. Building live patches: build, post, livepatchable,
packer, dump, extract. `ulp COMMAND --help` tells each command's options.

Exit status: 0 success, 1 failure (a failed trigger: libpulp's error number,
masked to 8 bits), 64 usage error (see `ulp COMMAND --help`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: args::Common,
}

/// A command's help: usage, prose, options, exit status.
const HELP_TEMPLATE: &str = "{usage-heading} {usage}\n\n{before-help}{all-args}{after-help}";
/// `ulp --help`: what ulp is, usage, the commands, the common options.
const TOP_HELP_TEMPLATE: &str = "{about-with-newline}\n{usage-heading} {usage}\n\n\
    Commands:\n{subcommands}\n\nOptions:\n{options}{after-help}";

/// The whole command line as clap knows it, with what every command
/// shares: ulp's own -h and -V; help wrapped at 90 columns whatever the
/// terminal (the widest line of the help's prose is 89); the last of a
/// repeated option wins; an option's value may begin with '-' (`-p -5` is
/// `-p` with the value `-5`, as libpulp's getopt has it).
pub fn definition() -> clap::Command {
    use clap::CommandFactory;
    let cli = finish(Cli::command()).help_template(TOP_HELP_TEMPLATE);
    let words = names(&cli);
    words
        .iter()
        .fold(cli, |cli, name| cli.mut_subcommand(name, finish))
}

/// The settings every command shares (see [`definition`]).
fn finish(c: clap::Command) -> clap::Command {
    c.disable_help_flag(true)
        .args_override_self(true)
        .term_width(90)
        .help_template(HELP_TEMPLATE)
        .mut_args(|a| {
            if a.get_action().takes_values() && a.get_long().is_some() {
                a.allow_hyphen_values(true)
            } else {
                a
            }
        })
}

/// Every command word, as the [`definition`] has them (a test holds the
/// two equal).
pub const NAMES: &[&str] = &[
    "trigger",
    "patches",
    "messages",
    "check",
    "set_patchable",
    "post",
    "livepatchable",
    "packer",
    "dump",
    "extract",
    "watch",
    "build",
];

/// The [`definition`] with only `command` in it: what parsing that command
/// needs. Building every command's options and help costs about 0.2 ms of
/// each `ulp` run on the machines measured (README, "Performance"), more
/// than most commands' own work; the whole definition is built only for
/// help and the bash completion.
pub fn definition_of(command: &str) -> Option<clap::Command> {
    use clap::Args as _;
    let name: &'static str = NAMES.iter().find(|n| **n == command)?;
    let sub = clap::Command::new(name);
    let sub = match name {
        "trigger" => trigger::Args::augment_args(sub),
        "patches" => patches::Args::augment_args(sub),
        "messages" => messages::Args::augment_args(sub),
        "check" => check::Args::augment_args(sub),
        "set_patchable" => set_patchable::Args::augment_args(sub),
        "post" => post::Args::augment_args(sub),
        "livepatchable" => livepatchable::Args::augment_args(sub),
        "packer" => packer::Args::augment_args(sub),
        "dump" => dump::Args::augment_args(sub),
        "extract" => extract::Args::augment_args(sub),
        "watch" => watch::Args::augment_args(sub),
        "build" => build::Args::augment_args(sub),
        _ => return None,
    };
    let top = args::Common::augment_args(clap::Command::new("ulp"));
    Some(finish(top).subcommand(finish(sub)))
}

/// Every command word of the definition, for the argument scan.
pub fn names(cli: &clap::Command) -> Vec<String> {
    cli.get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

/// The help of `command` (or of ulp itself), from the [`definition`].
pub fn help(mut cli: clap::Command, command: Option<&str>) -> String {
    match command.and_then(|c| cli.find_subcommand_mut(c)) {
        Some(c) => c.render_help().to_string(),
        None => cli.render_help().to_string(),
    }
}

/// Checks `command` got only its own options, then parses the words
/// with clap (the [`definition`]) and runs it; returns its exit status.
pub fn run(
    cli: clap::Command,
    command: &str,
    p: &Parsed,
    words: Vec<String>,
) -> Result<u8, UsageError> {
    use clap::FromArgMatches;
    let Some(cmd) = cli.find_subcommand(command) else {
        return Err(UsageError(format!("unknown command '{command}'")));
    };
    let own = args::options_of(cmd);
    if let Some((bad, _)) = p
        .opts
        .iter()
        .find(|(o, _)| !own.iter().any(|s| s.long == *o))
    {
        return Err(UsageError(format!("'{command}' takes no option '--{bad}'")));
    }
    let parsed = cli
        .try_get_matches_from(words)
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(|e| UsageError(clap_message(&e)))?;
    match parsed.command {
        Some(Command::Trigger(a)) => trigger::run(&a),
        Some(Command::Patches(a)) => patches::run(&a),
        Some(Command::Messages(a)) => messages::run(&a),
        Some(Command::Check(a)) => check::run(&a),
        Some(Command::Dump(a)) => dump::run(&a),
        Some(Command::Packer(a)) => packer::run(&a),
        Some(Command::Post(a)) => post::run(&a),
        Some(Command::Livepatchable(a)) => livepatchable::run(&a),
        Some(Command::Extract(a)) => extract::run(&a),
        Some(Command::SetPatchable(a)) => set_patchable::run(&a),
        Some(Command::Watch(a)) => watch::run(&a),
        Some(Command::Build(a)) => build::run(&a),
        None => Err(UsageError("no command given".into())),
    }
}

/// clap's own sentence for an error the scan let through (none is known:
/// the scan accepts only what clap accepts), without its "error: ".
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

pub(crate) fn one_operand<'a>(
    command: &str,
    operands: &'a [String],
) -> Result<&'a Path, UsageError> {
    match operands {
        [one] => Ok(Path::new(one)),
        [] => Err(UsageError(format!("'{command}' needs a FILE"))),
        _ => Err(UsageError(format!(
            "'{command}' takes one FILE, got {}",
            operands.len()
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
pub(crate) use ulp_core::select::process_name;

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
/// [`ulp_core::trust::check`] with its message as the error. A file that
/// does not exist has nobody to distrust: the command then says that it is
/// missing, as it does without root.
pub(crate) fn trusted(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => ulp_core::trust::check(path).map_err(|e| e.to_string()),
    }
}

/// The value of `--timeout`: a positive number of seconds.
pub(crate) fn timeout_seconds(t: &str) -> Result<std::time::Duration, UsageError> {
    t.parse()
        .ok()
        .filter(|s: &f64| *s > 0.0 && s.is_finite())
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| {
            UsageError(format!(
                "--timeout needs a positive number of seconds, got '{t}'"
            ))
        })
}

pub(crate) fn no_operands(command: &str, operands: &[String]) -> Result<(), UsageError> {
    match operands.first() {
        None => Ok(()),
        Some(o) => Err(UsageError(format!(
            "'{command}' takes no operand, got '{o}'"
        ))),
    }
}

/// `--load-runtime [--runtime PATH]`, the options `trigger` and
/// `set_patchable` share.
#[derive(clap::Args, Debug)]
pub struct LoadRuntime {
    /// load the runtime into processes that lack it first
    #[arg(long)]
    pub load_runtime: bool,
    /// the runtime file --load-runtime loads
    #[arg(long, value_name = "PATH", value_hint = ValueHint::AnyPath)]
    pub runtime: Option<String>,
}

/// `--load-runtime [--runtime PATH]`: `None` without the option, else the
/// runtime file (given, or next to ulp) or why it cannot be used (not a
/// runtime; as root, a file another user could change, unless --force).
pub(crate) fn runtime_to_load(
    load: &LoadRuntime,
    force: bool,
) -> Result<Option<Result<std::path::PathBuf, String>>, UsageError> {
    if !load.load_runtime {
        if load.runtime.is_some() {
            return Err(UsageError("--runtime goes with --load-runtime".into()));
        }
        return Ok(None);
    }
    let file = match load.runtime.as_deref() {
        Some(r) => {
            std::fs::canonicalize(r).map_err(|e| UsageError(format!("--runtime '{r}': {e}")))?
        }
        None => ulp_core::inject::default_runtime().ok_or_else(|| {
            UsageError(
                "--load-runtime: no libpulp.so.0 next to ulp (../lib, ../lib/<multiarch> or \
                 the same directory); name it with --runtime=PATH"
                    .into(),
            )
        })?,
    };
    let check = !force && ulp_core::trust::running_as_root();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The command words, the options the scan knows and each command's
    /// own definition, as the whole definition has them.
    #[test]
    fn the_static_tables_and_one_command_definitions_match_the_definition() {
        let cli = definition();
        assert_eq!(names(&cli), NAMES);
        let mut all = args::specs(&cli);
        let mut fixed = args::all_specs();
        all.sort_by(|a, b| a.long.cmp(&b.long));
        fixed.sort_by(|a, b| a.long.cmp(&b.long));
        assert_eq!(all, fixed, "args::ALL_OPTIONS is out of date");
        for name in NAMES {
            let one = definition_of(name).unwrap();
            let sub = one.find_subcommand(name).unwrap();
            let full = cli.find_subcommand(name).unwrap();
            assert_eq!(args::options_of(sub), args::options_of(full), "{name}");
            assert_eq!(args::options_of(&one), args::options_of(&cli), "{name}");
        }
        assert!(definition_of("no-such-command").is_none());
    }

    /// The scan knows an option by its long name across all commands: one
    /// name must mean one short letter and one arity everywhere.
    #[test]
    fn an_option_name_means_the_same_in_every_command() {
        let cli = definition();
        cli.clone().debug_assert();
        let all = args::specs(&cli);
        for s in &all {
            let same: Vec<_> = all.iter().filter(|o| o.long == s.long).collect();
            assert_eq!(same.len(), 1, "--{} differs between commands", s.long);
            if let Some(c) = s.short {
                assert_eq!(
                    all.iter().filter(|o| o.short == Some(c)).count(),
                    1,
                    "-{c} names two options"
                );
            }
        }
    }

    /// Whether roff `text` names the option `-c` or `--long` (as `\-c`,
    /// `\-\-long`, not as the start of a longer name).
    fn names_option(text: &str, short: Option<char>, long: &str) -> bool {
        let mut forms = vec![format!("\\-\\-{}", long.replace('-', "\\-"))];
        forms.extend(short.map(|c| format!("\\-{c}")));
        forms.iter().any(|f| {
            text.match_indices(f.as_str()).any(|(at, _)| {
                let next = &text[at + f.len()..];
                !(next.starts_with("\\-")
                    || next
                        .chars()
                        .next()
                        .is_some_and(|n| n.is_ascii_alphanumeric()))
            })
        })
    }

    /// The man page keeps its hand-written prose; every option of every
    /// command in the definition appears in that command's entry (under
    /// COMMANDS), and the common ones under OPTIONS.
    #[test]
    fn the_man_page_names_every_option_of_the_definition() {
        let page = std::fs::read_to_string(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/ulp.1"),
        )
        .unwrap();
        let section = |from: &str, to: &str| -> String {
            let start = page
                .find(from)
                .unwrap_or_else(|| panic!("no {from:?} in docs/ulp.1"));
            let rest = &page[start + from.len()..];
            rest[..rest.find(to).unwrap_or(rest.len())].to_string()
        };
        let cli = definition();
        let options = section("\n.SH OPTIONS\n", "\n.SH ");
        for a in cli.get_arguments() {
            let long = a.get_long().unwrap();
            assert!(
                names_option(&options, a.get_short(), long),
                "docs/ulp.1: OPTIONS does not name --{long}"
            );
        }
        let common: Vec<&str> = cli.get_arguments().filter_map(|a| a.get_long()).collect();
        for c in cli.get_subcommands() {
            let name = c.get_name().replace('-', "\\-");
            let entry = section(&format!("\n.TP\n.B {name} "), "\n.TP\n.B ");
            for a in c.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                if common.contains(&long) {
                    continue;
                }
                assert!(
                    names_option(&entry, a.get_short(), long),
                    "docs/ulp.1: the entry of {} does not name --{long}",
                    c.get_name()
                );
            }
        }
    }
}

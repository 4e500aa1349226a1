//! Command-line parsing. Every command's options, value forms and help
//! are defined once, with clap's derive API, as the `Args` struct of its
//! module (`commands::*`); `commands::definition()` puts them together.
//! clap parses the words into that struct and renders `--help`; the bash
//! completion (`completion`) and the man page's option test come from the
//! same definition.
//!
//! One rule of libpulp's clap cannot express: the command word may stand
//! anywhere among the arguments (`ulp -p 42 check x.so`). `scan` is the
//! hand-written part that keeps it: it walks the words with the arity
//! clap's definition gives each option (short options take their value
//! attached or as the next word, long options as `--opt=value` or
//! `--opt value`, short flags group, `--` ends the options), finds the
//! command word and reports usage errors in ulp's words; `for_clap` then
//! hands clap the words with the command word first.

use std::fmt;

/// A usage error: exit status 64 (EX_USAGE).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The options every command accepts. They are handled before clap runs
/// (`main`): help and version are ulp's own flags, not clap's.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Common {
    /// this help
    #[arg(short, long)]
    pub help: bool,
    /// say more
    #[arg(short, long)]
    pub verbose: bool,
    /// say less
    #[arg(short, long)]
    pub quiet: bool,
    /// print one JSON document on stdout (see README.md)
    #[arg(long)]
    pub json: bool,
    /// print the version
    #[arg(short = 'V', long)]
    pub version: bool,
}

/// One option some command accepts, as the scan needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub short: Option<char>,
    pub long: String,
    pub takes_value: bool,
}

/// Every option of every command: (short, long, takes a value). What the
/// scan needs to find the command word wherever it stands, without
/// building the whole clap definition (`commands::definition_of`); a test
/// holds it equal to [`specs`] of the definition.
pub const ALL_OPTIONS: &[(Option<char>, &str, bool)] = &[
    (Some('h'), "help", false),
    (Some('v'), "verbose", false),
    (Some('q'), "quiet", false),
    (None, "json", false),
    (Some('V'), "version", false),
    (Some('p'), "process", true),
    (None, "load-runtime", false),
    (None, "runtime", true),
    (None, "revert", false),
    (None, "revert-all", true),
    (Some('j'), "jobs", true),
    (Some('r'), "retries", true),
    (None, "timeout", true),
    (Some('R'), "root", true),
    (None, "disable-seccomp", false),
    (None, "redirect-got", false),
    (None, "consistency", true),
    (None, "force", false),
    (None, "persist", false),
    (None, "store", true),
    (Some('u'), "user", true),
    (Some('b'), "buildid", false),
    (None, "only-livepatched", false),
    (None, "stored", false),
    (None, "functions", false),
    (Some('l'), "livepatch", true),
    (Some('t'), "target", true),
    (Some('o'), "output", true),
    (None, "poll", false),
    (None, "compile-commands", true),
    (None, "description", true),
    (None, "source", true),
];

/// [`ALL_OPTIONS`] as the scan takes them.
pub fn all_specs() -> Vec<Spec> {
    ALL_OPTIONS
        .iter()
        .map(|&(short, long, takes_value)| Spec {
            short,
            long: long.to_string(),
            takes_value,
        })
        .collect()
}

/// Every option of `cmd` and of its subcommands (each command checks
/// afterwards that it got only its own: `commands::run`).
#[cfg(test)]
pub fn specs(cmd: &clap::Command) -> Vec<Spec> {
    let mut all: Vec<Spec> = Vec::new();
    for c in std::iter::once(cmd).chain(cmd.get_subcommands()) {
        for s in options_of(c) {
            if !all.contains(&s) {
                all.push(s);
            }
        }
    }
    all
}

/// The options (not the operands) of one command.
pub fn options_of(cmd: &clap::Command) -> Vec<Spec> {
    cmd.get_arguments()
        .filter_map(|a| {
            Some(Spec {
                short: a.get_short(),
                long: a.get_long()?.to_string(),
                takes_value: a.get_action().takes_values(),
            })
        })
        .collect()
}

/// Scanned arguments: the command word (and where it stood), options by
/// long name, operands.
#[derive(Debug, Default)]
pub struct Parsed {
    pub command: Option<String>,
    pub command_at: Option<usize>,
    pub opts: Vec<(String, Option<String>)>,
    pub operands: Vec<String>,
}

impl Parsed {
    pub fn has(&self, long: &str) -> bool {
        self.opts.iter().any(|(l, _)| l == long)
    }
}

/// Scans `args` (without the program name). `commands` are the command
/// words; `specs` every option any command accepts.
pub fn scan(args: &[String], commands: &[&str], specs: &[Spec]) -> Result<Parsed, UsageError> {
    let mut p = Parsed::default();
    let mut i = 0;
    let mut only_operands = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_operands || a == "-" || !a.starts_with('-') {
            if !only_operands && p.command.is_none() && commands.contains(&a.as_str()) {
                p.command = Some(a.clone());
                p.command_at = Some(i - 1);
            } else {
                p.operands.push(a.clone());
            }
            continue;
        }
        if a == "--" {
            only_operands = true;
            continue;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let spec = specs
                .iter()
                .find(|s| s.long == name)
                .ok_or_else(|| UsageError(format!("unknown option '--{name}'")))?;
            let v = if spec.takes_value {
                match inline {
                    Some(v) => Some(v),
                    None => {
                        let v = args.get(i).cloned().ok_or_else(|| {
                            UsageError(format!("option '--{name}' needs a value"))
                        })?;
                        i += 1;
                        Some(v)
                    }
                }
            } else if inline.is_some() {
                return Err(UsageError(format!("option '--{name}' takes no value")));
            } else {
                None
            };
            p.opts.push((spec.long.clone(), v));
            continue;
        }
        // Short options, possibly grouped (-qv) or with an attached value (-p42).
        let chars = a[1..].char_indices();
        for (at, c) in chars {
            let spec = specs
                .iter()
                .find(|s| s.short == Some(c))
                .ok_or_else(|| UsageError(format!("unknown option '-{c}'")))?;
            if spec.takes_value {
                let rest = &a[1 + at + c.len_utf8()..];
                let v = if !rest.is_empty() {
                    rest.to_string()
                } else {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| UsageError(format!("option '-{c}' needs a value")))?;
                    i += 1;
                    v
                };
                p.opts.push((spec.long.clone(), Some(v)));
                break;
            }
            p.opts.push((spec.long.clone(), None));
        }
    }
    Ok(p)
}

/// The words for clap: the program name, the command word, then every
/// other word in its order (the forms `scan` accepted are clap's too).
pub fn for_clap(args: &[String], p: &Parsed) -> Vec<String> {
    let mut words = vec!["ulp".to_string()];
    words.extend(p.command.clone());
    words.extend(
        args.iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != p.command_at)
            .map(|(_, a)| a.clone()),
    );
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<Spec> {
        let spec = |short, long: &str, takes_value| Spec {
            short,
            long: long.into(),
            takes_value,
        };
        vec![
            spec(Some('q'), "quiet", false),
            spec(Some('p'), "process", true),
            spec(None, "timeout", true),
        ]
    }

    fn run(a: &[&str]) -> Result<Parsed, UsageError> {
        let v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        scan(&v, &["trigger", "check"], &specs())
    }

    fn value<'a>(p: &'a Parsed, long: &str) -> Option<&'a str> {
        p.opts
            .iter()
            .rev()
            .find(|(l, _)| l == long)
            .and_then(|(_, v)| v.as_deref())
    }

    #[test]
    fn command_word_anywhere() {
        let p = run(&["-p", "42", "check", "x.so"]).unwrap();
        assert_eq!(p.command.as_deref(), Some("check"));
        assert_eq!(value(&p, "process"), Some("42"));
        assert_eq!(p.operands, ["x.so"]);
        let args: Vec<String> = ["-p", "check", "check", "x.so"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = scan(&args, &["trigger", "check"], &specs()).unwrap();
        assert_eq!(p.command_at, Some(2));
        assert_eq!(for_clap(&args, &p), ["ulp", "check", "-p", "check", "x.so"]);
    }

    #[test]
    fn value_forms() {
        let p = run(&["trigger", "-p42", "--timeout=5", "-q", "a", "--", "-b"]).unwrap();
        assert_eq!(value(&p, "process"), Some("42"));
        assert_eq!(value(&p, "timeout"), Some("5"));
        assert!(p.has("quiet"));
        assert_eq!(p.operands, ["a", "-b"]);
        let p = run(&["trigger", "--timeout", "7", "b"]).unwrap();
        assert_eq!(value(&p, "timeout"), Some("7"));
        assert_eq!(p.operands, ["b"]);
    }

    #[test]
    fn errors() {
        assert!(run(&["-x"]).is_err());
        assert!(run(&["-p"]).is_err());
        assert!(run(&["--quiet=1"]).is_err());
        assert!(run(&["--timeout"]).is_err());
    }
}

//! Command-line parsing in libpulp's style: the command word may stand
//! anywhere among the arguments (`ulp -p 42 trigger x.so` works), short
//! options take their value attached or as the next argument, long options
//! as `--opt=value` or `--opt value`.

use std::fmt;

/// A usage error: exit status 64 (EX_USAGE).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One option a command accepts.
pub struct Spec {
    pub short: Option<char>,
    pub long: &'static str,
    pub takes_value: bool,
}

pub const fn flag(short: Option<char>, long: &'static str) -> Spec {
    Spec {
        short,
        long,
        takes_value: false,
    }
}

pub const fn value(short: Option<char>, long: &'static str) -> Spec {
    Spec {
        short,
        long,
        takes_value: true,
    }
}

/// Parsed arguments: the command word, options by long name, operands.
#[derive(Debug, Default)]
pub struct Parsed {
    pub command: Option<String>,
    pub opts: Vec<(&'static str, Option<String>)>,
    pub operands: Vec<String>,
}

impl Parsed {
    pub fn has(&self, long: &str) -> bool {
        self.opts.iter().any(|(l, _)| *l == long)
    }

    /// The last value given for `long`.
    pub fn value(&self, long: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(l, _)| *l == long)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Parses `args` (without the program name). `commands` are the command
/// words; `specs` every option any command accepts (each command checks
/// afterwards that it got only its own).
pub fn parse(args: &[String], commands: &[&str], specs: &[Spec]) -> Result<Parsed, UsageError> {
    let mut p = Parsed::default();
    let mut i = 0;
    let mut only_operands = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_operands || a == "-" || !a.starts_with('-') {
            if !only_operands && p.command.is_none() && commands.contains(&a.as_str()) {
                p.command = Some(a.clone());
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
            p.opts.push((spec.long, v));
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
                p.opts.push((spec.long, Some(v)));
                break;
            }
            p.opts.push((spec.long, None));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[Spec] = &[
        flag(Some('q'), "quiet"),
        value(Some('p'), "process"),
        value(None, "timeout"),
    ];

    fn run(a: &[&str]) -> Result<Parsed, UsageError> {
        let v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        parse(&v, &["trigger", "check"], SPECS)
    }

    #[test]
    fn command_word_anywhere() {
        let p = run(&["-p", "42", "check", "x.so"]).unwrap();
        assert_eq!(p.command.as_deref(), Some("check"));
        assert_eq!(p.value("process"), Some("42"));
        assert_eq!(p.operands, ["x.so"]);
    }

    #[test]
    fn value_forms() {
        let p = run(&["trigger", "-p42", "--timeout=5", "-q", "a", "--", "-b"]).unwrap();
        assert_eq!(p.value("process"), Some("42"));
        assert_eq!(p.value("timeout"), Some("5"));
        assert!(p.has("quiet"));
        assert_eq!(p.operands, ["a", "-b"]);
        let p = run(&["trigger", "--timeout", "7", "b"]).unwrap();
        assert_eq!(p.value("timeout"), Some("7"));
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

//! The bash completion (`completions/ulp.bash`), generated from the clap
//! definition (`commands::definition`): the command words, each
//! command's options and what completes an option's value or an operand.
//! The file is checked in (the install script copies it); the test below
//! regenerates it and fails when it differs, so it cannot drift from the
//! options. `ULP_BLESS=1 cargo test -p ulp --bin ulp completion` rewrites it.
//!
//! Not clap_complete: its bash script finds the command only as the first
//! word and completes no process ids; libpulp's command word may stand
//! anywhere (`ulp -p 42 check x.so`), which this script keeps.
//!
//! What completes a value, from the definition:
//! * value name `PID|NAME`: the processes that have the runtime mapped;
//! * `ValueHint::Username`: user names;
//! * `ValueHint::Other`: nothing (a number; for an operand, none taken);
//! * `ValueHint::FilePath`: a live-patch container (`*.so*`) or directory;
//! * a value name `FILE.EXT`: `*.EXT` files and directories;
//! * a value name of lower-case words, `enable|disable`: those words;
//! * anything else: any file.

use clap::{Arg, ValueHint};

const HEAD: &str = r#"# bash completion for ulp (installed as
# PREFIX/share/bash-completion/completions/ulp). Self-contained: needs only
# bash's own `compgen`, not the bash-completion package's helpers.
# Generated from ulp's option definitions (crates/ulp/src/completion.rs):
# do not edit.

_ulp_pids() {
    # Process ids and names of the processes that have the runtime mapped.
    local d
    for d in /proc/[0-9]*; do
        if grep -qs 'libpulp\.so' "$d/maps" 2>/dev/null; then
            printf '%s\n' "${d#/proc/}"
            cat "$d/comm" 2>/dev/null
        fi
    done
}

_ulp() {
    local cur prev words cword
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=""
    [ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD-1]}
"#;

/// The shell words that complete `arg`'s value.
fn completes(arg: &Arg) -> String {
    let name = arg
        .get_value_names()
        .and_then(|n| n.first())
        .map(|n| n.to_string())
        .unwrap_or_default();
    let words = name
        .split('|')
        .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    if name == "PID|NAME" {
        r#"COMPREPLY=($(compgen -W "$(_ulp_pids)" -- "$cur"))"#.into()
    } else if arg.get_value_hint() == ValueHint::Username {
        r#"COMPREPLY=($(compgen -u -- "$cur"))"#.into()
    } else if arg.get_value_hint() == ValueHint::Other {
        "COMPREPLY=()".into()
    } else if arg.get_value_hint() == ValueHint::FilePath {
        r#"COMPREPLY=($(compgen -f -X '!*.so*' -- "$cur") $(compgen -d -- "$cur"))"#.into()
    } else if let Some(ext) = name.strip_prefix("FILE.") {
        format!(r#"COMPREPLY=($(compgen -f -X '!*.{ext}' -- "$cur") $(compgen -d -- "$cur"))"#)
    } else if words {
        format!(
            r#"COMPREPLY=($(compgen -W "{}" -- "$cur"))"#,
            name.replace('|', " ")
        )
    } else {
        r#"COMPREPLY=($(compgen -f -- "$cur"))"#.into()
    }
}

/// `-s --long` of each option, in definition order.
fn names(args: &[&Arg]) -> String {
    let mut out: Vec<String> = Vec::new();
    for a in args {
        out.extend(a.get_short().map(|c| format!("-{c}")));
        out.extend(a.get_long().map(|l| format!("--{l}")));
    }
    out.join(" ")
}

/// Case arms, `pattern) body ;;`, with the patterns of equal bodies
/// joined (`a|b)`), in the order each body first appears.
fn arms(items: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (pattern, body) in items {
        match out.iter_mut().find(|(_, b)| *b == body) {
            Some((p, _)) => {
                p.push('|');
                p.push_str(&pattern);
            }
            None => out.push((pattern, body)),
        }
    }
    out
}

/// The whole script.
pub fn bash(cli: &clap::Command) -> String {
    let common: Vec<&Arg> = cli
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .collect();
    let is_common = |a: &Arg| common.iter().any(|c| c.get_long() == a.get_long());
    let commands: Vec<&clap::Command> = cli.get_subcommands().collect();
    let mut s = HEAD.to_string();
    let words: Vec<&str> = commands.iter().map(|c| c.get_name()).collect();
    s += &format!("    local commands=\"{}\"\n", words.join(" "));
    s += &format!("    local common=\"{}\"\n", names(&common));
    s += r#"
    # The command word may stand anywhere: find it.
    local cmd="" i w
    for ((i = 1; i < ${#COMP_WORDS[@]}; i++)); do
        [ "$i" -eq "$COMP_CWORD" ] && continue
        w=${COMP_WORDS[i]}
        case " $commands " in
            *" $w "*) cmd=$w; break ;;
        esac
    done

    # Values of options.
    case "$prev" in
"#;
    let mut values: Vec<(String, String)> = Vec::new();
    for c in &commands {
        for a in c.get_arguments() {
            if a.get_long().is_none() || !a.get_action().takes_values() {
                continue;
            }
            let pattern = names(&[a]).replace(' ', "|");
            if !values.iter().any(|(p, _)| *p == pattern) {
                values.push((pattern, completes(a)));
            }
        }
    }
    for (pattern, body) in arms(values) {
        s += &format!("        {pattern})\n            {body}\n            return 0 ;;\n");
    }
    s += "    esac\n\n    local opts=\"\"\n    case \"$cmd\" in\n";
    let options: Vec<(String, String)> = commands
        .iter()
        .map(|c| {
            let own: Vec<&Arg> = c
                .get_arguments()
                .filter(|a| a.get_long().is_some() && !is_common(a))
                .collect();
            (c.get_name().to_string(), names(&own))
        })
        .filter(|(_, o)| !o.is_empty())
        .collect();
    for (pattern, opts) in arms(options) {
        s += &format!("        {pattern}) opts=\"{opts}\" ;;\n");
    }
    s += r#"    esac

    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts $common" -- "$cur"))
        return 0
    fi
    case "$cmd" in
        "")
            COMPREPLY=($(compgen -W "$commands" -- "$cur")) ;;
"#;
    let any_file = r#"COMPREPLY=($(compgen -f -- "$cur"))"#;
    let operands: Vec<(String, String)> = commands
        .iter()
        .filter_map(|c| {
            let operand = c.get_positionals().next();
            let body = operand.map_or(any_file.to_string(), completes);
            (body != any_file).then(|| (c.get_name().to_string(), body))
        })
        .collect();
    for (pattern, body) in arms(operands) {
        s += &format!("        {pattern})\n            {body} ;;\n");
    }
    s += &format!("        *)\n            {any_file} ;;\n");
    s += "    esac\n    return 0\n}\n\ncomplete -o filenames -F _ulp ulp\n";
    s
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// completions/ulp.bash is what the definition generates.
    #[test]
    fn the_bash_completion_is_generated_from_the_definition() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../completions/ulp.bash");
        let generated = super::bash(&crate::commands::definition());
        if std::env::var_os("ULP_BLESS").is_some() {
            std::fs::write(&file, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&file).unwrap();
        assert!(
            on_disk == generated,
            "completions/ulp.bash differs from the option definitions: regenerate it with \
             `ULP_BLESS=1 cargo test -p ulp --bin ulp completion`"
        );
    }
}

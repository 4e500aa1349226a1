//! `ulp livepatchable`: can the functions of a file be live patched, and
//! how?
//!
//! Without `--functions` it answers libpulp's question only (does the file
//! have patchable function entries?) with libpulp's output and exit status
//! (COMPAT.md). With `--functions` it tells, for each function, which of
//! the two redirection methods applies:
//!
//! The methods are decided by `ulp_core::redirect` (the same policy as the
//! runtime's); this module prints them.
//!
//! One entry per function address: aliases are listed under one name (a
//! global one, preferably without leading underscores) and matched by all.
//! Names that several functions share (glibc's older symbol versions) are
//! shown with their version, `memcpy@GLIBC_2.2.5`.

use clap::ValueHint;
use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};
use ulp_core::redirect::{classify, summarize, Function, Method, NotPatchable, Summary};
use ulp_elf::ElfFile;

use super::print_json;
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "tell whether FILE has patchable function entries",
    override_usage = "\
ulp livepatchable FILE
       ulp livepatchable --functions FILE [FUNCTION...]",
    before_help = "\
Tell whether FILE was built with patchable function entries
(gcc -fpatchable-function-entry=16,14):
  file 'FILE' is livepatchable.
  file 'FILE' is not livepatchable: REASON
(and then, on stderr, how many of its functions ulp can still patch by
rewriting their entry, unless -q).

With --functions, tell for each function how it can be live patched,
sorted by name (or for each FUNCTION named, in that order; NAME@VERSION
and aliases work too), then one summary line:
  NAME: padded                             built with the padding
  NAME: entry rewrite (N bytes displaced)  no padding: a jmp overwrites
                                           its first instructions
  NAME: not patchable: REASON              e.g. an IFUNC resolver, or an
                                           entry a jmp cannot overwrite
  file 'FILE': N functions: N padded, N entry rewrite, N not patchable
                             (KEY N, ...: the not patchable per reason)
Functions come from .symtab when FILE has one (static functions
included), else from .dynsym; aliases are listed once, names several
functions share with their version (memcpy@GLIBC_2.2.5).",
    after_help = "\
Exit status: 0 when it is live-patchable, 1 when not (the reason is printed).
With --functions: 0 when FILE has at least one patchable function (padded
or entry rewrite), or, with FUNCTION operands, when every FUNCTION exists
and is patchable; 1 otherwise.",
    mut_arg("json", |a| a.help("{\"file\", \"livepatchable\", \"reason\", \"methods\"}, and with --functions a \"functions\" array (see README.md)")),
    mut_arg("verbose", |a| a.help("with --functions: also each function's address, size and other names")),
    mut_arg("quiet", |a| a.help("with --functions: only the summary line"))
)]
pub struct Args {
    /// list the method per function (see above)
    #[arg(long)]
    pub functions: bool,
    #[arg(value_name = "FILE [FUNCTION]", value_hint = ValueHint::AnyPath, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let (path, wanted) = match p.operands.split_first() {
        None => return Err(UsageError("'livepatchable' needs a FILE".into())),
        Some((file, rest)) => (Path::new(file), rest),
    };
    if !p.functions {
        if !wanted.is_empty() {
            return Err(UsageError(format!(
                "'livepatchable' takes one FILE, got {} (FUNCTION operands need --functions)",
                p.operands.len()
            )));
        }
        return Ok(livepatchable(path, p.common.json, p.common.quiet));
    }
    Ok(functions(path, wanted, p))
}

/// libpulp's answer (COMPAT.md), unchanged; `--json` adds the per-method
/// counts.
fn livepatchable(path: &Path, json: bool, quiet: bool) -> u8 {
    let elf = ElfFile::open(path).map_err(|e| e.to_string());
    let verdict = elf
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|f| f.livepatchable());
    if json {
        let methods = elf.as_ref().ok().map(|f| summary_json(&classify(f)));
        print_json(&json!({
            "file": path.display().to_string(),
            "livepatchable": verdict.is_ok(),
            "reason": verdict.as_ref().err(),
            "methods": methods,
        }));
        return u8::from(verdict.is_err());
    }
    match verdict {
        Ok(()) => {
            println!("file '{}' is livepatchable.", path.display());
            0
        }
        Err(reason) => {
            println!("file '{}' is not livepatchable: {reason}", path.display());
            // libpulp's line stays as it was; stderr says that ulp can
            // still patch most of its functions, without padding.
            if let (Ok(f), false) = (&elf, quiet) {
                let rewritable = classify(f)
                    .iter()
                    .filter(|f| matches!(f.method, Ok(Method::Rewrite(_))))
                    .count();
                if rewritable > 0 {
                    eprintln!(
                        "ulp: note: ulp can still patch {rewritable} of its functions by \
                         rewriting their entry; see `ulp livepatchable --functions {}`",
                        path.display()
                    );
                }
            }
            1
        }
    }
}

fn summary_json(functions: &[Function]) -> Value {
    let s = summarize(functions);
    json!({
        "functions": s.functions,
        "padded": s.padded,
        "rewrite": s.rewrite,
        "none": s.none,
        "none_by_reason": s.none_by_reason,
    })
}

/// `--functions`: one line per function (or per FUNCTION asked for), then
/// the summary.
fn functions(path: &Path, wanted: &[String], p: &Args) -> u8 {
    let (json, quiet, verbose) = (p.common.json, p.common.quiet, p.common.verbose);
    let elf = match ElfFile::open(path) {
        Ok(elf) => elf,
        Err(e) => {
            let reason = e.message().to_string();
            eprintln!("ulp: {e}");
            if json {
                print_json(&json!({
                    "file": path.display().to_string(),
                    "livepatchable": false,
                    "reason": reason,
                    "methods": null,
                    "functions": [],
                }));
            } else {
                println!("file '{}' is not livepatchable: {reason}", path.display());
            }
            return 1;
        }
    };
    let all = classify(&elf);

    // Several functions listed under one name (glibc's older symbol
    // versions: memcpy@GLIBC_2.2.5 next to memcpy@@GLIBC_2.14) show their
    // versions.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for f in &all {
        *uses.entry(f.name.as_str()).or_default() += 1;
    }
    let label = |f: &Function| match &f.version {
        Some(v) if uses.get(f.name.as_str()).copied().unwrap_or(0) > 1 => format!("{}{v}", f.name),
        _ => f.name.clone(),
    };

    // The lines to print: each function under the name to show it by, or
    // (None) a FUNCTION that matches nothing, in the order of the
    // operands. A FUNCTION matches a function's name, NAME@VERSION or
    // NAME@@VERSION, or any of its aliases.
    let mut rows: Vec<(String, Option<&Function>)> = Vec::new();
    if wanted.is_empty() {
        rows.extend(all.iter().map(|f| (label(f), Some(f))));
    } else {
        let mut index: HashMap<String, Vec<&Function>> = HashMap::new();
        for f in &all {
            let mut keys: Vec<String> = vec![f.name.clone()];
            if let Some(v) = &f.version {
                keys.push(format!("{}{v}", f.name));
            }
            keys.extend(f.aliases.iter().cloned());
            for k in keys {
                index.entry(k).or_default().push(f);
            }
        }
        for w in wanted {
            match index.get(w.as_str()) {
                Some(found) => rows.extend(found.iter().map(|f| {
                    let name = if f.aliases.contains(w) {
                        w.clone()
                    } else {
                        label(f)
                    };
                    (name, Some(*f))
                })),
                None => rows.push((w.clone(), None)),
            }
        }
    }
    let shown: Vec<(&str, &Function)> = rows
        .iter()
        .filter_map(|(n, f)| Some((n.as_str(), (*f)?)))
        .collect();
    let missing: Vec<&str> = rows
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    let summary = summarize(shown.iter().map(|(_, f)| *f));
    let ok = if wanted.is_empty() {
        summary.padded + summary.rewrite > 0
    } else {
        missing.is_empty() && shown.iter().all(|(_, f)| f.method.is_ok())
    };

    if json {
        let verdict = elf.livepatchable();
        let list: Vec<Value> = shown.iter().map(|(n, f)| function_json(n, f)).collect();
        let mut doc = json!({
            "file": path.display().to_string(),
            "livepatchable": verdict.is_ok(),
            "reason": verdict.as_ref().err(),
            "methods": summary_json(&all),
            "functions": list,
        });
        if !wanted.is_empty() {
            doc["missing"] = json!(missing);
        }
        print_json(&doc);
        return u8::from(!ok);
    }

    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut lines = String::new();
    if !quiet {
        for (name, f) in &rows {
            match f {
                Some(f) => lines.push_str(&function_line(name, f, verbose)),
                None => {
                    lines.push_str(&format!("{name}: no such function in '{}'", path.display()))
                }
            }
            lines.push('\n');
        }
    }
    lines.push_str(&summary_line(path, &summary));
    lines.push('\n');
    // A closed stdout (`| head`) is not worth a panic.
    let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
    u8::from(!ok)
}

fn function_line(name: &str, f: &Function, verbose: bool) -> String {
    let what = match &f.method {
        Ok(Method::Padded(())) => "padded".to_string(),
        Ok(Method::Rewrite(displaced)) => format!("entry rewrite ({displaced} bytes displaced)"),
        Err(NotPatchable { reason, .. }) => format!("not patchable: {reason}"),
    };
    if !verbose {
        return format!("{name}: {what}");
    }
    let names = other_names(name, f);
    let also = if names.is_empty() {
        String::new()
    } else {
        format!(", also {}", names.join(", "))
    };
    format!("{name} ({:#x}, {} bytes{also}): {what}", f.address, f.size)
}

fn summary_line(path: &Path, s: &Summary) -> String {
    let mut line = format!(
        "file '{}': {} function{}: {} padded, {} entry rewrite, {} not patchable",
        path.display(),
        s.functions,
        if s.functions == 1 { "" } else { "s" },
        s.padded,
        s.rewrite,
        s.none,
    );
    if !s.none_by_reason.is_empty() {
        let parts: Vec<String> = s
            .none_by_reason
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        line.push_str(&format!(" ({})", parts.join(", ")));
    }
    line
}

fn function_json(name: &str, f: &Function) -> Value {
    let (reason_key, reason) = match &f.method {
        Err(NotPatchable { key, reason }) => (Some(*key), Some(reason.as_str())),
        Ok(_) => (None, None),
    };
    let displaced = match f.method {
        Ok(Method::Rewrite(displaced)) => Some(displaced),
        _ => None,
    };
    // The JSON `method` value.
    let method = match &f.method {
        Ok(Method::Padded(())) => "padded",
        Ok(Method::Rewrite(_)) => "rewrite",
        Err(_) => "none",
    };
    json!({
        "name": name.split('@').next().unwrap_or(name),
        "version": f.version,
        "aliases": other_names(name, f),
        "address": f.address,
        "size": f.size,
        "method": method,
        "displaced": displaced,
        "reason_key": reason_key,
        "reason": reason,
    })
}

/// The names of `f` other than `shown` (and than `shown` without its
/// version), sorted.
fn other_names<'a>(shown: &str, f: &'a Function) -> Vec<&'a str> {
    let bare = shown.split('@').next().unwrap_or(shown);
    let mut names: Vec<&str> = std::iter::once(f.name.as_str())
        .chain(f.aliases.iter().map(String::as_str))
        .filter(|n| *n != bare)
        .collect();
    names.sort_unstable();
    names
}

//! `ulp livepatchable`: can the functions of a file be live patched, and
//! how?
//!
//! Without `--functions` it answers libpulp's question only (does the file
//! have patchable function entries?) with libpulp's output and exit status
//! (COMPAT.md). With `--functions` it tells, for each function, which of
//! the two redirection methods applies:
//!
//! * **padded**: the function was built with
//!   `-fpatchable-function-entry=16,14` (its padding start is listed in
//!   `__patchable_function_entries`, posted or not: the same test as the
//!   libpulp answer, per function);
//! * **entry rewrite**: no padding, but `ulp_x86::rewrite_plan` accepts
//!   overwriting its first instructions with a `jmp`. It is the very
//!   function the runtime calls on the bytes in memory, here called on the
//!   bytes in the file, so the tool and the runtime agree;
//! * **not patchable**, with a stable reason key and a sentence: an IFUNC
//!   resolver (the process runs the implementation it returned, not the
//!   resolver), a refusal of `rewrite_plan`, or a symbol whose bytes are
//!   not code in the file.
//!
//! An IFUNC is never patchable, even when padded: its symbol is the
//! resolver, which the loader has already called.
//!
//! One entry per function address: aliases are listed under one name (a
//! global one, preferably without leading underscores) and matched by all.
//! Names that several functions share (glibc's older symbol versions) are
//! shown with their version, `memcpy@GLIBC_2.2.5`.

use clap::ValueHint;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Value};
use ulp_elf::{ElfFile, Symbol, PADDING_BEFORE_ENTRY};
use ulp_x86::{rewrite_plan, RefusalReason};

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
                    .filter(|f| matches!(f.method, Method::Rewrite { .. }))
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

/// How one function can be redirected.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Method {
    /// Built with the padding: the redirection writes into the NOPs.
    Padded,
    /// The first `displaced` bytes (after an `endbr64`) are overwritten
    /// by a `jmp`, their instructions moved to a trampoline.
    Rewrite { displaced: usize },
    /// Neither: `key` is a stable identifier, `reason` a sentence.
    None { key: &'static str, reason: String },
}

impl Method {
    /// The JSON `method` value.
    fn name(&self) -> &'static str {
        match self {
            Method::Padded => "padded",
            Method::Rewrite { .. } => "rewrite",
            Method::None { .. } => "none",
        }
    }

    fn patchable(&self) -> bool {
        !matches!(self, Method::None { .. })
    }
}

/// One function: an address, its names, its method.
#[derive(Debug)]
struct Function {
    /// The name it is listed under.
    name: String,
    /// That name's symbol version (`@@GLIBC_2.14`, `@GLIBC_2.2.5`), if any.
    version: Option<String>,
    /// Its other names (symbols at the same address), sorted.
    aliases: Vec<String>,
    address: u64,
    size: u64,
    method: Method,
}

/// Every function of `elf` with its method, sorted by name then address.
fn classify(elf: &ElfFile) -> Vec<Function> {
    let padded: Vec<u64> = elf.patchable_entries().unwrap_or_default();
    let symbols = elf.function_symbols();
    let mut versions = elf.dynamic_symbol_versions();
    let mut by_addr: BTreeMap<u64, Vec<&Symbol>> = BTreeMap::new();
    for s in &symbols {
        by_addr.entry(s.value).or_default().push(s);
    }
    let mut out: Vec<Function> = by_addr
        .into_values()
        .map(|mut group| {
            group.sort_by(|a, b| name_rank(a).cmp(&name_rank(b)));
            let first = group[0];
            let mut aliases: Vec<String> = group[1..].iter().map(|s| s.name.clone()).collect();
            aliases.sort();
            aliases.dedup();
            aliases.retain(|a| *a != first.name);
            // The IFUNC symbol and its resolver's own FUNC symbol share the
            // address: it is an IFUNC if any of its names is.
            let ifunc = group.iter().any(|s| s.is_ifunc());
            // Aliases of different sizes: the largest, so the scan for
            // branches into the overwritten bytes sees all the code.
            let size = group.iter().map(|s| s.size).max().unwrap_or(first.size);
            let sym = group
                .iter()
                .find(|s| s.size == size)
                .copied()
                .unwrap_or(first);
            // An IFUNC first, padded or not: redirecting the resolver
            // changes nothing once the loader has called it.
            let method = if ifunc {
                Method::None {
                    key: "ifunc",
                    reason: ifunc_reason(&first.name, &symbols),
                }
            } else {
                method_of(elf, sym, &padded)
            };
            Function {
                name: first.name.clone(),
                version: versions.remove(&(first.name.clone(), first.value)),
                aliases,
                address: first.value,
                size,
                method,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    out
}

/// The name to list a function under comes first: a global or weak name
/// before a local one, fewer leading underscores, then shorter, then
/// alphabetical (`memcpy` before `__memcpy`, `atoi` before `__GI_atoi`).
fn name_rank(s: &Symbol) -> (bool, usize, usize, &str) {
    const STB_LOCAL: u8 = 0;
    let underscores = s.name.bytes().take_while(|&b| b == b'_').count();
    (
        s.binding() == STB_LOCAL,
        underscores,
        s.name.len(),
        s.name.as_str(),
    )
}

/// The method of a function that is not an IFUNC: padding, else no code
/// in the file, else what `rewrite_plan` says.
fn method_of(elf: &ElfFile, sym: &Symbol, padded: &[u64]) -> Method {
    let pad_start = sym.value.wrapping_sub(PADDING_BEFORE_ENTRY);
    if padded.binary_search(&pad_start).is_ok() {
        return Method::Padded;
    }
    let code = match elf.function_code(sym) {
        Ok(code) => code,
        Err(e) => {
            let key = match e {
                ulp_elf::CodeUnavailable::NotExecutable { .. } => "not_executable",
                ulp_elf::CodeUnavailable::NotInFile { .. } => "not_in_file",
                _ => "no_code",
            };
            return Method::None {
                key,
                reason: format!("no code to patch: {e}"),
            };
        }
    };
    match rewrite_plan(code, sym.value) {
        Ok(plan) => Method::Rewrite {
            displaced: plan.covered(),
        },
        Err(refusal) => Method::None {
            key: refusal_key(refusal.reason()),
            reason: refusal.to_string(),
        },
    }
}

/// A stable key for each refusal of `rewrite_plan` (JSON `reason_key`).
fn refusal_key(reason: RefusalReason) -> &'static str {
    match reason {
        RefusalReason::TooShort => "too_short",
        RefusalReason::BranchIntoRange => "branch_into_range",
        RefusalReason::EndsInRange => "ends_in_range",
        RefusalReason::Unrelocatable => "unrelocatable",
        RefusalReason::DisplacesCall => "displaces_call",
        RefusalReason::Undecodable => "undecodable",
        _ => "refused",
    }
}

/// The reason an IFUNC is not patched, naming the implementations its
/// resolver probably picks between: the file's local functions called
/// `__NAME_*` (glibc's naming habit: `__memcpy_avx_unaligned_erms`; only
/// `.symtab` has them). Exported `__NAME_*` functions are not counted: in
/// glibc they are other interfaces (`__memcpy_chk`, `__strcpy_small`).
fn ifunc_reason(name: &str, all: &[Symbol]) -> String {
    const STB_LOCAL: u8 = 0;
    let base = "an IFUNC resolver; the process runs the implementation it selected: patch that function instead";
    let prefix = format!("__{}_", name.trim_start_matches('_'));
    let chk = format!("{prefix}chk");
    let mut candidates: Vec<&str> = all
        .iter()
        .filter(|s| !s.is_ifunc() && s.binding() == STB_LOCAL)
        .filter(|s| s.name.starts_with(&prefix) && !s.name.starts_with(&chk))
        .map(|s| s.name.as_str())
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    if candidates.is_empty() {
        return base.to_string();
    }
    format!("{base} (candidates: {})", candidates.join(", "))
}

/// Counts per method, and the not-patchable ones per reason key.
struct Summary {
    functions: usize,
    padded: usize,
    rewrite: usize,
    none: usize,
    none_by_reason: BTreeMap<&'static str, usize>,
}

fn summarize<'a>(functions: impl IntoIterator<Item = &'a Function>) -> Summary {
    let mut s = Summary {
        functions: 0,
        padded: 0,
        rewrite: 0,
        none: 0,
        none_by_reason: BTreeMap::new(),
    };
    for f in functions {
        s.functions += 1;
        match &f.method {
            Method::Padded => s.padded += 1,
            Method::Rewrite { .. } => s.rewrite += 1,
            Method::None { key, .. } => {
                s.none += 1;
                *s.none_by_reason.entry(key).or_default() += 1;
            }
        }
    }
    s
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
        missing.is_empty() && shown.iter().all(|(_, f)| f.method.patchable())
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
        Method::Padded => "padded".to_string(),
        Method::Rewrite { displaced } => format!("entry rewrite ({displaced} bytes displaced)"),
        Method::None { reason, .. } => format!("not patchable: {reason}"),
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
        Method::None { key, reason } => (Some(*key), Some(reason.as_str())),
        _ => (None, None),
    };
    let displaced = match f.method {
        Method::Rewrite { displaced } => Some(displaced),
        _ => None,
    };
    json!({
        "name": name.split('@').next().unwrap_or(name),
        "version": f.version,
        "aliases": other_names(name, f),
        "address": f.address,
        "size": f.size,
        "method": f.method.name(),
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

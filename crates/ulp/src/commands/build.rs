//! `ulp build`: a packed live patch from source diffs (`ulp_build`).

use clap::ValueHint;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::print_json;
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "build a packed live patch from source diffs",
    override_usage = "\
ulp build --compile-commands FILE.json --target LIB --output OUT.so
          [--description TEXT] [--source DIR] [--force] DIFF...",
    before_help = "\
Apply the unified diffs DIFF (as `git diff` writes them, paths relative to
the source tree) to copies of the files they touch, compile each touched file
before and after with its own flags from the compilation database, compare
the two objects function by function, and write the live patch OUT.so
(packed, ready for `ulp trigger`) and its description OUT.dsc beside it. The
source tree is never written.

Replaced are the functions whose code changed and those that inline them;
new functions go into the container without redirection; a function whose
only change is a moved __LINE__ is listed and not replaced. The changed
code reaches the running library's own variables through references
(static ones, static ones inside functions, and thread-local ones: each
thread its own copy).

Refused, naming the symbol (nothing written): a changed initial value or
size of an existing writable variable, a removed function, a changed
function the target has no symbol for (inlined: rebuild with
__attribute__((noinline))), an object whose unchanged functions differ
from the target's (flags that do not match its build), a static variable
inside a function that cannot be told from another of its name, a
replaced function that cannot be redirected, diffs of headers or new
files.

As root, a compilation database or DIFF that another user could change is
refused: the database names the compiler that runs and the diff decides
the code that goes into root's processes. --force builds anyway.",
    after_help = "\
Exit status: 0 on success, 1 when the build is refused or fails, 64 usage error.",
    mut_arg("json", |a| a.help("print what was built (or the error) as one JSON document"))
)]
pub struct Args {
    /// the JSON compilation database of the library's build
    #[arg(long, value_name = "FILE.json", value_hint = ValueHint::AnyPath)]
    pub compile_commands: Option<String>,
    /// the library (or executable) the running processes use
    #[arg(short, long, value_name = "FILE", value_hint = ValueHint::AnyPath)]
    pub target: Option<String>,
    /// the live patch to write (OUT.so; OUT.dsc is written beside it)
    #[arg(short, long, value_name = "FILE", value_hint = ValueHint::AnyPath)]
    pub output: Option<String>,
    /// the patch's description, a .dsc comment (its bug labels are listed too)
    #[arg(long, value_name = "TEXT", value_hint = ValueHint::Other)]
    pub description: Option<String>,
    /// the tree the diff paths are relative to (default: the database's directory)
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub source: Option<String>,
    /// as root, build even from a database or DIFF another user could change
    #[arg(long)]
    pub force: bool,
    #[arg(value_name = "DIFF", hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let need = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| UsageError(format!("'build' needs {what}")))
    };
    let compile_commands = need(&p.compile_commands, "--compile-commands FILE.json")?;
    let target = need(&p.target, "--target LIB")?;
    let output = need(&p.output, "--output OUT.so")?;
    if p.operands.is_empty() {
        return Err(UsageError("'build' needs at least one DIFF".into()));
    }
    if !output.ends_with(".so") {
        return Err(UsageError(format!(
            "--output '{output}' must end with .so (OUT.dsc is written beside it)"
        )));
    }
    let opts = ulp_build::Options {
        compile_commands: PathBuf::from(compile_commands),
        target: PathBuf::from(target),
        output: PathBuf::from(output),
        description: p.description.clone(),
        source: p.source.as_deref().map(PathBuf::from),
        diffs: p.operands.iter().map(PathBuf::from).collect(),
        check_units: Some(redirectable),
    };
    let json = p.common.json;
    if !p.force && ulp_core::trust::running_as_root() {
        let inputs = std::iter::once(&opts.compile_commands).chain(&opts.diffs);
        if let Some(why) = inputs.map(|f| super::trusted(f)).find_map(Result::err) {
            eprintln!("ulp: build: {why}");
            if json {
                print_json(&json!({ "error": why }));
            }
            return Ok(1);
        }
    }
    match ulp_build::build(&opts) {
        Ok(r) if json => {
            print_json(&json!({
                "container": r.container.display().to_string(),
                "dsc": r.dsc.display().to_string(),
                "replaced": r.replaced.iter().map(|f| json!({
                    "function": f.name, "new": f.new_name, "file": f.file, "reason": f.reason,
                })).collect::<Vec<_>>(),
                "new": r.added,
                "not_replaced": r.line_numbers_only.iter().map(|f| json!({
                    "function": f, "reason": "line numbers only",
                })).collect::<Vec<_>>(),
                "references": r.references,
                "milliseconds": {
                    "compare_compiles": r.compare_compile_ms as u64,
                    "container_compile": r.container_compile_ms as u64,
                    "total": r.total_ms as u64,
                },
            }));
            Ok(0)
        }
        Ok(r) => {
            if !p.common.quiet {
                for f in &r.replaced {
                    println!("replaced {}: {}", f.name, f.reason);
                }
                for f in &r.added {
                    println!("new {f}: added to the container, not redirected");
                }
                for f in &r.line_numbers_only {
                    println!("not replaced {f}: line numbers only");
                }
                for v in &r.references {
                    println!("reference {v}: the running library's own variable");
                }
                println!(
                    "ulp: wrote '{}' and '{}' ({} function(s) replaced).",
                    r.container.display(),
                    r.dsc.display(),
                    r.replaced.len()
                );
            }
            Ok(0)
        }
        Err(e) if e.usage => Err(UsageError(e.message)),
        Err(e) => {
            eprintln!("ulp: build: {e}");
            if json {
                print_json(&json!({ "error": e.message }));
            }
            Ok(1)
        }
    }
}

/// Refuses a build whose replaced functions the runtime could not redirect
/// in the target (no padding and an entry that cannot be rewritten), with
/// `ulp livepatchable --functions`' reason.
fn redirectable(target: &Path, units: &[(String, u64)]) -> Result<(), String> {
    let elf = ulp_elf::ElfFile::open(target).map_err(|e| e.to_string())?;
    let functions = ulp_core::redirect::classify(&elf);
    for (name, address) in units {
        let Some(f) = functions.iter().find(|f| f.address == *address) else {
            continue;
        };
        if let Err(why) = &f.method {
            return Err(format!(
                "function '{name}' cannot be redirected in the target '{}': {}",
                target.display(),
                why.reason
            ));
        }
    }
    Ok(())
}

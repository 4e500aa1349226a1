//! `ulp extract`: a JSON description of a library (name, build id,
//! symbols) that `ulp packer` accepts in place of the library.

use clap::ValueHint;
use std::path::{Path, PathBuf};

use serde_json::json;
use ulp_container::extract::TargetDescription;

use super::{fail, fail_json, hex, one_operand, print_json};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "describe LIB (name, build id, symbols) as JSON, for packing without the library (`@LIB.json` in a .dsc)",
    override_usage = "\
ulp extract [-o FILE] LIB",
    before_help = "\
Write a JSON description of the library LIB: its file name, GNU build id and
symbols (of .symtab and .dynsym: name, offset, size, st_info, st_other).
`ulp packer` takes such a file as the target (`@LIB.json` in the .dsc, or
-t LIB.json), so a live patch can be packed without the library itself.
The format is described in README.md (\"JSON output\").",
    after_help = "\
Exit status: 0 on success, 1 on failure.",
    mut_arg("json", |a| a.help("print a JSON summary of what was written (with -o -, the description itself is the document)"))
)]
pub struct Args {
    /// write to FILE (default: LIB's file name + .json, in the current directory); `-o -` writes to stdout
    #[arg(short, long, value_name = "FILE", value_hint = ValueHint::AnyPath)]
    pub output: Option<String>,
    #[arg(value_name = "LIB", value_hint = ValueHint::AnyPath, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let lib = one_operand("extract", &p.operands)?;
    let json = p.common.json;
    let failed = |e: &dyn std::fmt::Display| if json { fail_json(e) } else { fail(e) };
    let d = match TargetDescription::extract(lib) {
        Ok(d) => d,
        Err(e) => return Ok(failed(&e)),
    };
    let text = d.to_json_text();
    let out = match p.output.as_deref() {
        Some("-") => {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            return Ok(0);
        }
        Some(f) => PathBuf::from(f),
        None => PathBuf::from(format!("{}.json", d.name)),
    };
    if let Err(e) = write_file(&out, &text) {
        return Ok(failed(&format!("cannot write '{}': {e}", out.display())));
    }
    if json {
        print_json(&json!({
            "file": lib.display().to_string(),
            "output": out.display().to_string(),
            "name": d.name,
            "build_id": hex(&d.build_id),
            "symbols": d.symbols.len(),
        }));
    } else if !p.common.quiet {
        println!(
            "ulp: wrote the description of '{}' ({} symbols) to '{}'.",
            lib.display(),
            d.symbols.len(),
            out.display()
        );
    }
    Ok(0)
}

/// Writes through a temporary file in the same directory, then renames:
/// a reader never sees half a description.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

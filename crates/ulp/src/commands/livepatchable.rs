//! `ulp livepatchable`: does a file have patchable entries?

use std::path::Path;

use serde_json::json;

use super::{one_operand, print_json};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &[];

pub const HELP: &str = "\
Usage: ulp livepatchable FILE

Tell whether FILE was built with patchable function entries
(gcc -fpatchable-function-entry=16,14):
  file 'FILE' is livepatchable.
  file 'FILE' is not livepatchable: REASON

Options:
      --json        {\"file\", \"livepatchable\", \"reason\"} (see README.md)

Exit status: 0 when it is live-patchable, 1 when not (the reason is printed).
";

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let path = one_operand("livepatchable", p)?;
    Ok(livepatchable(path, p.has("json")))
}

fn livepatchable(path: &Path, json: bool) -> u8 {
    let verdict = ulp_elf::ElfFile::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| f.livepatchable());
    if json {
        print_json(&json!({
            "file": path.display().to_string(),
            "livepatchable": verdict.is_ok(),
            "reason": verdict.as_ref().err(),
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
            1
        }
    }
}

//! `ulp post`: merge the entry NOPs of a prepared library, in place.

use std::path::Path;

use serde_json::json;

use super::{fail, fail_json, one_operand, print_json};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &[];

pub const HELP: &str = "\
Usage: ulp post FILE

Rewrite FILE in place: at every function listed in its
__patchable_function_entries section (gcc -fpatchable-function-entry=16,14),
turn the two one-byte entry NOPs into one two-byte NOP, so that no thread can
ever stop between them. Entries already merged are left alone.

Options:
      --json        {\"file\", \"merged\", \"already\", \"skipped\"} (see README.md)

Exit status: 0 on success, 1 on failure.
";

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let path = one_operand("post", p)?;
    Ok(post(path, p))
}

fn post(path: &Path, p: &Parsed) -> u8 {
    match ulp_elf::post(path) {
        Ok(r) if p.has("json") => {
            print_json(&json!({
                "file": path.display().to_string(),
                "merged": r.merged,
                "already": r.already,
                "skipped": r.skipped,
            }));
            0
        }
        Ok(r) => {
            if !p.has("quiet") {
                println!(
                    "ulp: '{}': {} entries merged, {} already merged{}.",
                    path.display(),
                    r.merged,
                    r.already,
                    if r.skipped > 0 {
                        format!(", {} left alone (not NOPs)", r.skipped)
                    } else {
                        String::new()
                    }
                );
            }
            0
        }
        Err(e) if p.has("json") => fail_json(&e),
        Err(e) => fail(&e),
    }
}

//! `ulp post`: merge the entry NOPs of a prepared library, in place.

use clap::ValueHint;
use std::path::Path;

use serde_json::json;

use super::{fail, fail_json, one_operand, print_json};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "merge the entry NOPs of a library built with -fpatchable-function-entry=16,14 (in place)",
    override_usage = "\
ulp post FILE",
    before_help = "\
Rewrite FILE in place: at every function listed in its
__patchable_function_entries section (gcc -fpatchable-function-entry=16,14),
turn the two one-byte entry NOPs into one two-byte NOP, so that no thread can
ever stop between them. Entries already merged are left alone.",
    after_help = "\
Exit status: 0 on success, 1 on failure.",
    mut_arg("json", |a| a.help("{\"file\", \"merged\", \"already\", \"skipped\"} (see README.md)"))
)]
pub struct Args {
    #[arg(value_name = "FILE", value_hint = ValueHint::AnyPath, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let path = one_operand("post", &p.operands)?;
    Ok(post(path, p))
}

fn post(path: &Path, p: &Args) -> u8 {
    match ulp_elf::post(path) {
        Ok(r) if p.common.json => {
            print_json(&json!({
                "file": path.display().to_string(),
                "merged": r.merged,
                "already": r.already,
                "skipped": r.skipped,
            }));
            0
        }
        Ok(r) => {
            if !p.common.quiet {
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
        Err(e) if p.common.json => fail_json(&e),
        Err(e) => fail(&e),
    }
}

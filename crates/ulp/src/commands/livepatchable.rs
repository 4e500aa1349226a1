//! `ulp livepatchable`: does a file have patchable entries?

use std::path::Path;

use super::one_operand;
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &[];

pub const HELP: &str = "\
Usage: ulp livepatchable FILE

Tell whether FILE was built with patchable function entries.

Exit status: 0 when it is live-patchable, 1 when not (the reason is printed).
";

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let path = one_operand("livepatchable", p)?;
    Ok(livepatchable(path))
}

fn livepatchable(path: &Path) -> u8 {
    let verdict = ulp_elf::ElfFile::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| f.livepatchable());
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

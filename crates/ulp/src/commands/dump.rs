//! `ulp dump`: print a container's metadata.

use std::path::Path;

use ulp_container::container;

use super::{fail, one_operand};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &["revert", "buildid"];

pub const HELP: &str = "\
Usage: ulp dump [--revert] [-b] FILE

Print the metadata of the live-patch container FILE.

Options:
      --revert      print the revert metadata (.ulp.rev) instead
  -b, --buildid     print only the target's build id

Exit status: 0 on success, 1 on failure.
";

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let path = one_operand("dump", p)?;
    Ok(dump(path, p))
}

fn dump(path: &Path, p: &Parsed) -> u8 {
    match container::read(path) {
        Ok(c) => {
            print!(
                "{}",
                ulp_container::dump::dump_text(&c, p.has("revert"), p.has("buildid"))
            );
            0
        }
        Err(e) => fail(&e),
    }
}

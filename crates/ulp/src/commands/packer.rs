//! `ulp packer`: write the patch metadata into the container.

use std::path::{Path, PathBuf};

use ulp_container::pack::{self, PackOptions};

use super::{fail, one_operand};
use crate::args::{Parsed, UsageError};

pub const OPTIONS: &[&str] = &["livepatch", "target"];

pub const HELP: &str = "\
Usage: ulp packer [-l FILE] [-t FILE] FILE.dsc

Read the description FILE.dsc and write the live-patch metadata (.ulp,
.ulp.rev and, with comment lines, .ulp.comments sections) into the container
it names. Nothing is written when the description has an error; errors are
reported as FILE.dsc:LINE:COL: error: MESSAGE.

Options:
  -l, --livepatch FILE   the container to write (instead of the .dsc's first line)
  -t, --target FILE      the target library (instead of the .dsc's @ line)

Exit status: 0 on success, 1 on failure.
";

pub fn run(p: &Parsed) -> Result<u8, UsageError> {
    let path = one_operand("packer", p)?;
    Ok(packer(path, p))
}

fn packer(dsc: &Path, p: &Parsed) -> u8 {
    let opts = PackOptions {
        container_override: p.value("livepatch").map(PathBuf::from),
        target_override: p.value("target").map(PathBuf::from),
    };
    match pack::pack(dsc, &opts) {
        Ok(report) => {
            if !p.has("quiet") {
                println!(
                    "ulp: packed {} unit(s) and {} reference(s) for '{}' into '{}'.",
                    report.metadata.units.len(),
                    report.metadata.refs.len(),
                    report.metadata.target_name,
                    report.container.display()
                );
            }
            0
        }
        Err(e) => fail(&e),
    }
}

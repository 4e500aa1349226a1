//! `ulp packer`: write the patch metadata into the container.

use clap::ValueHint;
use std::path::{Path, PathBuf};

use serde_json::json;
use ulp_container::container;
use ulp_container::pack::{self, PackOptions};

use super::dump::container_json;
use super::{fail_json, one_operand, print_json};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "write the patch metadata into the container",
    override_usage = "\
ulp packer [-l FILE] [-t FILE] [--force] FILE.dsc",
    before_help = "\
Read the description FILE.dsc and write the live-patch metadata (.ulp,
.ulp.rev and, with comment lines, .ulp.comments sections) into the container
it names. The target (the .dsc's @ line, or -t) is the library itself, or
the JSON description of it written by `ulp extract`.

Nothing is written when the description has a mistake. The first one is
reported as a compiler does:
  FILE.dsc:LINE:COL: error: MESSAGE

As root, the packer refuses a .dsc or a container that another user could
change (the .dsc decides what root writes into which file, and the
container's code is what `trigger` loads): the file, a directory on its
path or a symbolic link followed is owned by someone other than root, or
the file or such a directory is writable by group or others (a sticky
directory such as /tmp is fine). --force packs anyway.",
    after_help = "\
Exit status: 0 on success, 1 on failure.",
    mut_arg("json", |a| a.help("print the packed container's metadata as `ulp dump --json` does, or {\"error\", \"location\", ...}"))
)]
pub struct Args {
    /// the container to write (instead of the .dsc's first line)
    #[arg(short, long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub livepatch: Option<String>,
    /// the target library or its `ulp extract` JSON (instead of the .dsc's @ line)
    #[arg(short, long, value_name = "FILE", value_hint = ValueHint::AnyPath)]
    pub target: Option<String>,
    /// as root, use a .dsc or container other users could change
    #[arg(long)]
    pub force: bool,
    #[arg(value_name = "FILE.dsc", hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let path = one_operand("packer", &p.operands)?;
    Ok(packer(path, p))
}

fn packer(dsc: &Path, p: &Args) -> u8 {
    let opts = PackOptions {
        container_override: p.livepatch.as_deref().map(PathBuf::from),
        target_override: p.target.as_deref().map(PathBuf::from),
        trust: (!p.force && ulp_core::trust::running_as_root()).then_some(super::trusted),
    };
    let json = p.common.json;
    match pack::pack(dsc, &opts) {
        Ok(report) if json => match container::read(&report.container) {
            Ok(c) => {
                print_json(&container_json(&c));
                0
            }
            Err(e) => fail_json(&e),
        },
        Ok(report) => {
            if !p.common.quiet {
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
        Err(e) if json => {
            report_error(&e);
            let location = e.location().map(|(file, line, col)| {
                json!({ "file": file.display().to_string(), "line": line, "col": col })
            });
            print_json(&json!({
                "error": e.to_string(),
                "message": e.message(),
                "location": location,
            }));
            1
        }
        Err(e) => {
            report_error(&e);
            1
        }
    }
}

/// A mistake in the .dsc goes out as a compiler writes it, at the start of
/// the line (`FILE.dsc:LINE:COL: error: ...`) so editors can jump to it;
/// any other failure as `ulp: MESSAGE`.
fn report_error(e: &pack::PackError) {
    if e.location().is_some() {
        eprintln!("{e}");
    } else {
        eprintln!("ulp: {e}");
    }
}

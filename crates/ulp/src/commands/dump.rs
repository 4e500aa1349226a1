//! `ulp dump`: print a container's metadata.

use clap::ValueHint;
use std::path::Path;

use serde_json::{json, Value};
use ulp_container::container::{self, Container};

use super::{fail, fail_json, hex, one_operand, print_json};
use crate::args::{Common, UsageError};

#[derive(clap::Args, Debug)]
#[command(
    about = "print a container's metadata",
    override_usage = "\
ulp dump [--revert] [-b] FILE",
    before_help = "\
Print the metadata of the live-patch container FILE.",
    after_help = "\
Exit status: 0 on success, 1 on failure.",
    mut_arg("json", |a| a.help("one JSON document with every fact of the container (.ulp, .ulp.rev, comments), whatever --revert and -b say (see README.md)"))
)]
pub struct Args {
    /// print the revert metadata (.ulp.rev) instead
    #[arg(long)]
    pub revert: bool,
    /// print only the target's build id
    #[arg(short = 'b', long)]
    pub buildid: bool,
    #[arg(value_name = "FILE", value_hint = ValueHint::FilePath, hide = true)]
    pub operands: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(p: &Args) -> Result<u8, UsageError> {
    let path = one_operand("dump", &p.operands)?;
    Ok(dump(path, p))
}

fn dump(path: &Path, p: &Args) -> u8 {
    match container::read(path) {
        Ok(c) if p.common.json => {
            print_json(&container_json(&c));
            0
        }
        Ok(c) => {
            print!(
                "{}",
                ulp_container::dump::dump_text(&c, p.revert, p.buildid)
            );
            0
        }
        Err(e) if p.common.json => fail_json(&e),
        Err(e) => fail(&e),
    }
}

/// Every fact of a container, for `dump --json` and `packer --json`.
pub(crate) fn container_json(c: &Container) -> Value {
    let m = &c.metadata;
    let units: Vec<Value> = m
        .units
        .iter()
        .map(|u| {
            json!({
                "old_fname": u.old_fname,
                "new_fname": u.new_fname,
                "old_faddr": u.old_faddr,
            })
        })
        .collect();
    let refs: Vec<Value> = m
        .refs
        .iter()
        .map(|r| {
            json!({
                "target_name": r.target_name,
                "patch_name": r.patch_name,
                "target_offset": r.target_offset,
                "patch_offset": r.patch_offset,
                "tls": r.tls,
            })
        })
        .collect();
    let revert = c.revert.as_ref().map(|r| {
        json!({
            "patch_id": hex(&r.patch_id),
            "build_id": hex(&r.build_id),
            "name": r.target_name,
        })
    });
    json!({
        "file": c.path.display().to_string(),
        "container_build_id": c.build_id.as_deref().map(hex),
        "patch_id": hex(&m.patch_id),
        "build_id": hex(&m.build_id),
        "name": m.target_name,
        "units": units,
        "references": refs,
        "revert": revert,
        "comments": c.comments.as_ref().map(|_| c.comment_text()),
        "bug_labels": c.bug_labels(),
    })
}

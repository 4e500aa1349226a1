//! `ulp dump`: a container's metadata as text, in libpulp's layout
//! (COMPAT.md, "Output of dump").

use std::fmt::Write;

use crate::container::Container;

/// Number of patch-id bytes libpulp's dump prints (of 32).
pub const PATCH_ID_SHOWN: usize = 20;

pub use ulp_abi::hex::hex;

/// The text `ulp dump` prints, ending with a newline.
///
/// - Default: the `.ulp` facts:
///
///   ```text
///   patch id: <first 20 bytes of the 32-byte id, hex, as libpulp prints it>
///   so filename: <c.path as given>
///
///   * build id: <target build-id, hex>
///   * name: <target name>
///   * units: <n>
///
///   ** old_fname: <name>        (one block per unit, each after a blank line)
///   ** new_fname: <name>
///   ** old_faddr: 0x<hex>       (lower case, no padding; 0 prints as 0x0)
///
///   static references: <n>
///   ```
///
/// - `revert`: the same header from `.ulp.rev` (patch id, so filename, build
///   id, name; a revert section has no units or references). A container
///   without `.ulp.rev` prints the patch id and file name, then
///   `* no .ulp.rev section`.
/// - `only_build_id`: just the target build-id in hex (from `.ulp.rev` when
///   `revert` is also set and there is one).
pub fn dump_text(c: &Container, revert: bool, only_build_id: bool) -> String {
    let m = &c.metadata;
    let rev = if revert { c.revert.as_ref() } else { None };
    let (patch_id, build_id, name) = match rev {
        Some(r) => (&r.patch_id, &r.build_id, &r.target_name),
        None => (&m.patch_id, &m.build_id, &m.target_name),
    };
    if only_build_id {
        return format!("{}\n", hex(build_id));
    }
    let mut out = String::new();
    let shown = patch_id.get(..PATCH_ID_SHOWN).unwrap_or(&patch_id[..]);
    let _ = writeln!(out, "patch id: {}", hex(shown));
    let _ = writeln!(out, "so filename: {}", c.path.display());
    if revert && rev.is_none() {
        let _ = writeln!(out, "\n* no .ulp.rev section");
        return out;
    }
    let _ = writeln!(out, "\n* build id: {}", hex(build_id));
    let _ = writeln!(out, "* name: {name}");
    if revert {
        return out;
    }
    let _ = writeln!(out, "* units: {}", m.units.len());
    for u in &m.units {
        let _ = writeln!(out, "\n** old_fname: {}", u.old_fname);
        let _ = writeln!(out, "** new_fname: {}", u.new_fname);
        let _ = writeln!(out, "** old_faddr: {:#x}", u.old_faddr);
    }
    let _ = writeln!(out, "\nstatic references: {}", m.refs.len());
    out
}

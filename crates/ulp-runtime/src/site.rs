//! Sites: whether a function's entry can be redirected, and how. A *site*
//! is a patchable function entry: 14 bytes of padding before the symbol
//! (where the stub goes) and the two bytes at the *patch point* (the
//! entry, or just after `endbr64`) that become the short jump to the stub.
//! A function without that padding may still be redirected by an entry
//! rewrite (`rewrite.rs`).

#[allow(unused_imports)]
use crate::prelude::*;

use ulp_abi::errors;
use ulp_abi::{entry_jump, parse_stub, ENTRY_NOP, STUB_LEN};

use crate::objects::{self, LoadedObject, PF_X};
use crate::patch::Failure;
use crate::rewrite::{self, Rewritten};
use crate::ring::{SpacedHex, Text};

/// How one function of a patch is redirected (its redirect method, the
/// one `ulp_x86` names): through its padding, with the site's bytes; or by
/// rewriting its first instructions, with the rewrite.
pub(crate) type Method = ulp_x86::Method<Site, Rewritten>;

/// Where a redirect method acts on a function.
pub(crate) trait Redirect {
    /// The function (its symbol).
    fn entry(&self) -> u64;
    /// The first byte the redirection changes at the entry.
    fn patch_point(&self) -> u64;
    /// Where the old function's own code can still be called: after the
    /// entry NOP, or the trampoline.
    fn original(&self) -> u64;
}

impl Redirect for Method {
    fn entry(&self) -> u64 {
        match self {
            Method::Padded(s) => s.entry,
            Method::Rewrite(r) => r.entry,
        }
    }

    fn patch_point(&self) -> u64 {
        match self {
            Method::Padded(s) => s.patch_point,
            Method::Rewrite(r) => r.start,
        }
    }

    fn original(&self) -> u64 {
        match self {
            Method::Padded(s) => s.patch_point + 2,
            Method::Rewrite(r) => r.tramp,
        }
    }
}

/// How `entry` (the function `name` of `target`) is redirected, decided on
/// the bytes in memory: an entry rewritten before stays so; otherwise
/// `ulp_x86::method_of`'s policy (an IFUNC resolver refused, a padded site
/// used as such, else the entry rewrite, if the function allows it).
pub(crate) fn method_in_memory(
    target: &LoadedObject,
    entry: u64,
    name: &str,
    known_size: Option<u64>,
) -> Result<Method, Failure> {
    if let Some(r) = rewrite::lookup(entry) {
        return Ok(Method::Rewrite(r));
    }
    // Not a function of the target at all (libpulp: the function to patch
    // is not found).
    if !target.contains(entry, 1, PF_X) {
        return Err(not_in_code(target, entry, name));
    }
    // Its size and type: the dynamic symbol table in memory, else the size
    // the tool read in the library file.
    let symbol = target
        .dynamic_symbol_at(entry)
        .or(known_size.map(|size| (size, objects::STT_FUNC)));
    let ifunc = symbol
        .is_some_and(|(_, kind)| kind == objects::STT_GNU_IFUNC)
        .then(|| {
            Failure::error(
                errors::ENOPATCHABLE,
                format!(
                    "function '{name}' is not live-patchable: it is an IFUNC resolver: the \
                     process runs the implementation it selected; patch that function instead"
                ),
            )
        });
    ulp_x86::method_of(
        ifunc,
        || match read_site(target, entry, name) {
            Ok(site) => Some(Ok(site)),
            Err(_) if !has_padding(entry, target) => None,
            Err(padded) => Some(Err(padded)),
        },
        || {
            rewrite::prepare(target, entry, symbol).map_err(|why| {
                Failure::error(
                    errors::ENOPATCHABLE,
                    format!("function '{name}' is not live-patchable: {why}"),
                )
            })
        },
    )
}

/// Whether the 14 bytes before `entry` are NOPs or our stub: the function
/// was built with patchable padding (then only that is used).
fn has_padding(entry: u64, target: &LoadedObject) -> bool {
    let stub = entry.wrapping_sub(STUB_LEN as u64);
    if !target.contains(stub, STUB_LEN as u64, PF_X) {
        return false;
    }
    // SAFETY: inside the target's code (checked).
    let pad = unsafe { read_mem(stub, STUB_LEN) };
    pad.iter().all(|&b| b == 0x90) || parse_stub(stub, &pad).is_some()
}

/// A site's bytes, checked to be patchable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    pub entry: u64,
    pub patch_point: u64,
    /// The 14 bytes before the entry.
    pub pad: [u8; STUB_LEN],
    /// The 2 bytes at the patch point.
    pub jump: [u8; 2],
}

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Checks the code around `entry`: `code` holds the bytes from `entry - 14`,
/// 16 of them, or 20 when the 4 after the first 2 at the entry are mapped
/// too (needed to see past `endbr64`). The padding must be 14 NOPs or our
/// stub (either form); the patch point must hold `90 90`, `66 90` or our
/// short jump to the stub (and then the stub must be ours). On refusal,
/// the bytes in a form for the message.
pub fn inspect_site(entry: u64, code: &[u8]) -> Result<Site, String> {
    let describe = || {
        let split = STUB_LEN.min(code.len());
        format!(
            "entry bytes {} | {}",
            SpacedHex(&code[..split]),
            SpacedHex(&code[split..])
        )
    };
    if code.len() < STUB_LEN + 2 {
        return Err(describe());
    }
    let mut pad = [0u8; STUB_LEN];
    pad.copy_from_slice(&code[..STUB_LEN]);
    let at_entry = &code[STUB_LEN..];
    let off = if at_entry.len() >= 6 && at_entry[..4] == ENDBR64 {
        4
    } else {
        0
    };
    let jump = [at_entry[off], at_entry[off + 1]];
    let patch_point = entry.wrapping_add(off as u64);
    let stub_addr = entry.wrapping_sub(STUB_LEN as u64);
    let nop_pad = pad.iter().all(|&b| b == 0x90);
    let our_stub = parse_stub(stub_addr, &pad).is_some();
    let redirected = jump[0] == 0xeb && entry_jump(stub_addr, patch_point) == Some(jump);
    let free = jump == [0x90, 0x90] || jump == ENTRY_NOP;
    if (free && (nop_pad || our_stub)) || (redirected && our_stub) {
        Ok(Site {
            entry,
            patch_point,
            pad,
            jump,
        })
    } else {
        Err(describe())
    }
}

/// Reads `len` bytes of mapped memory.
///
/// # Safety
/// `[addr, addr + len)` must be mapped and readable.
pub(crate) unsafe fn read_mem(addr: u64, len: usize) -> Vec<u8> {
    core::slice::from_raw_parts(addr as *const u8, len).to_vec()
}

/// libpulp's ENOOLDFUNC for an `entry` outside the code of `target`.
fn not_in_code(target: &LoadedObject, entry: u64, name: &str) -> Failure {
    Failure::error(
        errors::ENOOLDFUNC,
        format!(
            "function '{name}': address 0x{:x} (offset 0x{:x}) is not in the code of '{}'",
            entry,
            entry.wrapping_sub(target.bias),
            Text(&target.path)
        ),
    )
}

/// Reads the site of `entry` in `target`, refusing what is not mapped code.
fn read_site(target: &LoadedObject, entry: u64, name: &str) -> Result<Site, Failure> {
    let start = entry.wrapping_sub(STUB_LEN as u64);
    let len = if target.contains(start, 20, PF_X) {
        20
    } else if target.contains(start, 16, PF_X) {
        16
    } else {
        return Err(not_in_code(target, entry, name));
    };
    // SAFETY: the range lies in a loaded executable segment of the target.
    let code = unsafe { read_mem(start, len) };
    inspect_site(entry, &code).map_err(|bytes| {
        Failure::error(
            errors::ENOPATCHABLE,
            format!("function '{name}' is not live-patchable: {bytes}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::make_write;
    use ulp_abi::{absolute_stub, stub_bytes, write_kind};

    fn code(pad: u8, at: &[u8]) -> Vec<u8> {
        let mut v = vec![pad; 14];
        v.extend_from_slice(at);
        v
    }

    #[test]
    fn site_states() {
        let e = 0x1000;
        let nop2 = inspect_site(e, &code(0x90, &[0x90, 0x90, 0x55, 0x48, 0x89, 0xe5])).unwrap();
        assert_eq!((nop2.patch_point, nop2.jump), (e, [0x90, 0x90]));
        let posted = inspect_site(e, &code(0x90, &[0x66, 0x90, 0, 0, 0, 0])).unwrap();
        assert_eq!(posted.jump, ENTRY_NOP);
        let cet = inspect_site(e, &code(0x90, &[0xf3, 0x0f, 0x1e, 0xfa, 0x66, 0x90])).unwrap();
        assert_eq!(cet.patch_point, e + 4);
        // Already redirected: our stub (either form) and our jump; reverted
        // earlier: the stub left in place, the entry NOP again.
        for stub in [stub_bytes(e - 14, 0x5555), absolute_stub(0x5555)] {
            let mut redirected = stub.to_vec();
            redirected.extend_from_slice(&[0xeb, 0xf0, 0, 0, 0, 0]);
            assert!(inspect_site(e, &redirected).is_ok());
            let mut cet_redirected = stub.to_vec();
            cet_redirected.extend_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa, 0xeb, 0xec]);
            assert_eq!(inspect_site(e, &cet_redirected).unwrap().patch_point, e + 4);
            let mut reverted = stub.to_vec();
            reverted.extend_from_slice(&[0x66, 0x90, 0, 0, 0, 0]);
            assert!(inspect_site(e, &reverted).is_ok());
        }
        // Only 16 bytes mapped: still fine without endbr64.
        assert!(inspect_site(e, &code(0x90, &[0x66, 0x90])).is_ok());
    }

    /// The stub planned for a site: a direct jump when the new function is
    /// near, the absolute form when it is not; a site holding NOPs or
    /// either form takes a new apply, whose stub write covers all 14 bytes.
    #[test]
    fn stub_forms() {
        let entry = 0x7f12_3456_7010u64;
        let stub = entry - 14;
        let near = entry + 0x20_0000;
        let far = stub + 5 + (1u64 << 31);
        let direct = stub_bytes(stub, near);
        assert_eq!(direct[0], 0xe9);
        assert_eq!(direct[1..5], ((near - (stub + 5)) as i32).to_le_bytes()[..]);
        assert_eq!(direct[5..], [0x90; 9]);
        let absolute = stub_bytes(stub, far);
        assert_eq!(absolute[..6], [0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(absolute[6..], far.to_le_bytes());
        // The executable of a PIE far below its libraries' patches.
        assert_eq!(stub_bytes(0x5555_5555_5000, near)[..2], [0xff, 0x25]);

        for (what, pad, at) in [
            ("NOPs", [0x90; 14], ENTRY_NOP),
            ("direct, reverted", direct, ENTRY_NOP),
            ("absolute, reverted", absolute, ENTRY_NOP),
            ("direct, redirected", direct, [0xeb, 0xf0]),
            ("absolute, redirected", absolute, [0xeb, 0xf0]),
        ] {
            let mut bytes = pad.to_vec();
            bytes.extend_from_slice(&at);
            let site = inspect_site(entry, &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!((site.pad, site.jump), (pad, at), "{what}");
            for want in [direct, absolute] {
                let w = make_write(stub, write_kind::STUB, &site.pad, &want);
                assert_eq!((w.addr, w.len), (stub, 14), "{what}");
                assert_eq!(w.new[..14], want, "{what}");
            }
        }
        // A rel32 jump not followed by our NOPs is not our stub.
        let mut other = direct;
        other[13] = 0xcc;
        let mut bytes = other.to_vec();
        bytes.extend_from_slice(&ENTRY_NOP);
        assert!(inspect_site(entry, &bytes).is_err());
    }

    #[test]
    fn unpatchable_sites() {
        let e = 0x1000;
        let table: [(&str, Vec<u8>); 6] = [
            ("no padding", code(0xcc, &[0x90, 0x90, 0, 0, 0, 0])),
            ("ordinary code", code(0x90, &[0x55, 0x48, 0x89, 0xe5, 0, 0])),
            ("jump elsewhere", code(0x90, &[0xeb, 0x10, 0, 0, 0, 0])),
            ("jump to NOPs", code(0x90, &[0xeb, 0xf0, 0, 0, 0, 0])),
            (
                "endbr64 then code",
                code(0x90, &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48]),
            ),
            ("too short", code(0x90, &[0x90])),
        ];
        for (what, bytes) in table {
            let err = inspect_site(e, &bytes).unwrap_err();
            assert!(err.starts_with("entry bytes "), "{what}: {err}");
        }
        let err = inspect_site(e, &code(0xcc, &[0x90, 0x90])).unwrap_err();
        assert_eq!(
            err,
            "entry bytes cc cc cc cc cc cc cc cc cc cc cc cc cc cc | 90 90"
        );
    }
}

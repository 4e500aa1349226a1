//! The byte layout of the `.ulp`, `.ulp.rev` and `.ulp.comments` sections,
//! exactly as libpulp writes them (see COMPAT.md, "The container").
//!
//! Little-endian, no padding. Decoding never panics and never allocates
//! more than the input could describe: every length is checked against the
//! bytes that remain before anything is reserved.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

pub const TYPE_APPLY: u8 = 1;
pub const TYPE_REVERT: u8 = 2;
pub const PATCH_ID_LEN: usize = 32;

/// One replaced function: `old` of the target becomes `new` of the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub old_fname: String,
    pub new_fname: String,
    /// The old function's symbol value in the target file.
    pub old_faddr: u64,
}

/// A reference: at apply time the address of `target_name` in the target
/// (or, for TLS, its `tls_index`) is written into the container's pointer
/// variable `patch_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub target_name: String,
    pub patch_name: String,
    pub target_offset: u64,
    pub patch_offset: u64,
    pub tls: bool,
}

/// The `.ulp` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub patch_id: [u8; PATCH_ID_LEN],
    /// The target's GNU build-id.
    pub build_id: Vec<u8>,
    /// The target's file name (basename), without the NUL.
    pub target_name: String,
    pub units: Vec<Unit>,
    /// In section order (libpulp stores them in reverse .dsc order).
    pub refs: Vec<Reference>,
}

/// The `.ulp.rev` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevertMetadata {
    pub patch_id: [u8; PATCH_ID_LEN],
    pub build_id: Vec<u8>,
    pub target_name: String,
}

/// Why a section could not be decoded. The message names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl core::error::Error for DecodeError {}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.data.len() {
            return Err(DecodeError(what));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len_bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)? as usize;
        self.bytes(n, what)
    }

    /// A length-prefixed string whose length counts a terminating NUL.
    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.len_bytes(what)?;
        let b = match b.split_last() {
            Some((0, rest)) => rest,
            _ => return Err(DecodeError(what)),
        };
        if b.contains(&0) {
            return Err(DecodeError(what));
        }
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError(what))
    }

    fn header(&mut self, ty: u8) -> Result<([u8; PATCH_ID_LEN], Vec<u8>), DecodeError> {
        if self.u8("missing section type")? != ty {
            return Err(DecodeError(if ty == TYPE_APPLY {
                "section type is not 1 (apply)"
            } else {
                "section type is not 2 (revert)"
            }));
        }
        let mut id = [0u8; PATCH_ID_LEN];
        id.copy_from_slice(self.bytes(PATCH_ID_LEN, "truncated patch id")?);
        let build_id = self.len_bytes("truncated build id")?.to_vec();
        Ok((id, build_id))
    }

    fn count(&mut self, per_item_min: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        // Each item needs at least `per_item_min` bytes: refuse counts the
        // input cannot hold before reserving anything for them.
        match n.checked_mul(per_item_min) {
            Some(need) if need <= self.data.len() => Ok(n),
            _ => Err(DecodeError(what)),
        }
    }
}

impl Metadata {
    pub fn decode(data: &[u8]) -> Result<Metadata, DecodeError> {
        let mut r = Reader { data };
        let (patch_id, build_id) = r.header(TYPE_APPLY)?;
        let target_name = r.cstr("bad target name")?;
        let nunits = r.count(4 + 1 + 4 + 1 + 8, "bad unit count")?;
        let mut units = Vec::with_capacity(nunits);
        for _ in 0..nunits {
            let old_fname = r.cstr("bad old function name")?;
            let new_fname = r.cstr("bad new function name")?;
            let old_faddr = r.u64("truncated old function address")?;
            units.push(Unit {
                old_fname,
                new_fname,
                old_faddr,
            });
        }
        let ndeps = r.count(32, "bad dependency count")?;
        r.bytes(ndeps * 32, "truncated dependencies")?;
        let nrefs = r.count(4 + 1 + 4 + 1 + 8 + 8 + 1, "bad reference count")?;
        let mut refs = Vec::with_capacity(nrefs);
        for _ in 0..nrefs {
            let target_name = r.cstr("bad reference target name")?;
            let patch_name = r.cstr("bad reference patch name")?;
            let target_offset = r.u64("truncated reference target offset")?;
            let patch_offset = r.u64("truncated reference patch offset")?;
            let tls = match r.u8("truncated reference tls flag")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError("bad reference tls flag")),
            };
            refs.push(Reference {
                target_name,
                patch_name,
                target_offset,
                patch_offset,
                tls,
            });
        }
        if !r.data.is_empty() {
            return Err(DecodeError("trailing bytes after references"));
        }
        Ok(Metadata {
            patch_id,
            build_id,
            target_name,
            units,
            refs,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TYPE_APPLY];
        out.extend_from_slice(&self.patch_id);
        put_bytes(&mut out, &self.build_id);
        put_cstr(&mut out, &self.target_name);
        put_u32(&mut out, self.units.len());
        for u in &self.units {
            put_cstr(&mut out, &u.old_fname);
            put_cstr(&mut out, &u.new_fname);
            out.extend_from_slice(&u.old_faddr.to_le_bytes());
        }
        put_u32(&mut out, 0); // ndeps
        put_u32(&mut out, self.refs.len());
        for r in &self.refs {
            put_cstr(&mut out, &r.target_name);
            put_cstr(&mut out, &r.patch_name);
            out.extend_from_slice(&r.target_offset.to_le_bytes());
            out.extend_from_slice(&r.patch_offset.to_le_bytes());
            out.push(r.tls as u8);
        }
        out
    }

    pub fn revert(&self) -> RevertMetadata {
        RevertMetadata {
            patch_id: self.patch_id,
            build_id: self.build_id.clone(),
            target_name: self.target_name.clone(),
        }
    }
}

impl RevertMetadata {
    pub fn decode(data: &[u8]) -> Result<RevertMetadata, DecodeError> {
        let mut r = Reader { data };
        let (patch_id, build_id) = r.header(TYPE_REVERT)?;
        // Unlike `.ulp`, the name here carries no NUL.
        let name = r.len_bytes("bad target name")?;
        let target_name =
            String::from_utf8(name.to_vec()).map_err(|_| DecodeError("bad target name"))?;
        if !r.data.is_empty() {
            return Err(DecodeError("trailing bytes after target name"));
        }
        Ok(RevertMetadata {
            patch_id,
            build_id,
            target_name,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TYPE_REVERT];
        out.extend_from_slice(&self.patch_id);
        put_bytes(&mut out, &self.build_id);
        put_bytes(&mut out, self.target_name.as_bytes());
        out
    }
}

/// `.ulp.comments`: every `!` line of the .dsc without its `!`, each with its
/// newline, then one NUL. `None` when there are no comment lines.
pub fn encode_comments<S: AsRef<str>>(lines: &[S]) -> Option<Vec<u8>> {
    if lines.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_ref().as_bytes());
        out.push(b'\n');
    }
    out.push(0);
    Some(out)
}

/// The text of a `.ulp.comments` section (up to its first NUL).
pub fn decode_comments(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Bug labels in comment text: words starting with `CVE-`, `bsc#`, `jsc#`
/// or `boo#`, trailing punctuation removed, in order, without repeats.
pub fn bug_labels(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in
        text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(' || c == ')')
    {
        let word = word.trim_end_matches(['.', ':', '!', '?', '"', '\'']);
        let lower = word.to_ascii_lowercase();
        let is_label = ["cve-", "bsc#", "jsc#", "boo#"]
            .iter()
            .any(|p| lower.starts_with(p) && word.len() > p.len());
        if is_label && !out.iter().any(|w| w == word) {
            out.push(word.to_string());
        }
    }
    out
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() + 1);
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    const INTEROP: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/libpulp-interop"
    );

    fn interop(name: &str) -> Option<Vec<u8>> {
        std::fs::read(alloc::format!("{INTEROP}/{name}")).ok()
    }

    #[test]
    fn libpulp_sections_decode_and_reencode_identically() {
        let ulp = interop("ulp.bin").unwrap();
        let m = Metadata::decode(&ulp).unwrap();
        assert_eq!(m.target_name, "libgreet.so.0");
        assert_eq!(m.units.len(), 3);
        assert_eq!(m.units[0].old_faddr, 0x118e);
        assert_eq!(m.refs[0].target_name, "greet_thread_count");
        assert!(m.refs[0].tls);
        assert_eq!(m.refs[1].target_offset, 0x404c);
        assert_eq!(m.encode(), ulp);
        let rev = interop("ulp.rev.bin").unwrap();
        assert_eq!(RevertMetadata::decode(&rev).unwrap(), m.revert());
        assert_eq!(m.revert().encode(), rev);
        let comments = interop("ulp.comments.bin").unwrap();
        assert_eq!(
            encode_comments(&[" Fixes CVE-2099-0001 and bsc#1234567."]).unwrap(),
            comments
        );
        assert_eq!(
            bug_labels(&decode_comments(&comments)),
            ["CVE-2099-0001", "bsc#1234567"]
        );
    }

    #[test]
    fn hostile_sections_are_errors_not_panics() {
        let ulp = interop("ulp.bin").unwrap();
        for n in 0..ulp.len() {
            assert!(Metadata::decode(&ulp[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut huge = ulp.clone();
        // A unit count of 0xffffffff must be refused before reserving memory.
        let at = 1 + 32 + 4 + 20 + 4 + 14;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Metadata::decode(&huge), Err(DecodeError("bad unit count")));
    }
}

//! `ulp post`: merge the two one-byte entry NOPs of every patchable function
//! into one two-byte NOP, in place.
//!
//! With `-fpatchable-function-entry=16,14` gcc leaves `90 90` at each
//! function's entry (after `endbr64` with `-fcf-protection`). A thread could
//! be stopped between those two NOPs, and the redirection later writes a
//! two-byte jump over both: that thread would resume in the middle of the
//! jump. `66 90` is a single instruction, so no thread can be between its
//! bytes. Nothing else in the file changes.

use std::path::Path;

use crate::replace::replace_file;
use crate::{bytes, ElfFile, Error, PADDING_BEFORE_ENTRY};

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
const TWO_NOPS: [u8; 2] = [0x90, 0x90];
const NOP2: [u8; 2] = [0x66, 0x90];

/// What [`post`] found at the listed functions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostReport {
    /// Entries rewritten from `90 90` to `66 90`.
    pub merged: usize,
    /// Entries that already were `66 90`.
    pub already: usize,
    /// Entries left alone because they held something else, or because the
    /// listed address is not backed by the file.
    pub skipped: usize,
}

/// Rewrites `path` in place (atomically: temp file, fsync, rename; owner
/// and mode preserved). When `path` is a symbolic link (a SONAME link),
/// the file it leads to is rewritten and the link stays. The file is not
/// rewritten at all when nothing was merged.
pub fn post(path: &Path) -> Result<PostReport, Error> {
    let elf = ElfFile::open(path)?;
    let entries = elf.patchable_entries()?;
    let mut data = elf.data().to_vec();
    let mut report = PostReport::default();
    for padding_start in entries {
        let Some(mut at) = padding_start
            .checked_add(PADDING_BEFORE_ENTRY)
            .and_then(|entry| elf.vaddr_to_offset(entry))
        else {
            report.skipped += 1;
            continue;
        };
        if bytes::slice(&data, at, 4) == Some(&ENDBR64[..]) {
            at += 4;
        }
        match bytes::slice(&data, at, 2) {
            Some(b) if b == TWO_NOPS => {
                if bytes::put(&mut data, at, &NOP2).is_some() {
                    report.merged += 1;
                } else {
                    report.skipped += 1;
                }
            }
            Some(b) if b == NOP2 => report.already += 1,
            _ => report.skipped += 1,
        }
    }
    if report.merged > 0 {
        replace_file(path, &data)?;
    }
    Ok(report)
}

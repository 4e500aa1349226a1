//! The patchable function entries gcc's `-fpatchable-function-entry`
//! lists, read through the file's relative relocations.

use std::collections::HashMap;

use crate::file::SectionHeader;
use crate::PATCHABLE_SECTION;
use crate::{bytes, ElfFile, Error, ErrorKind};
use ulp_abi::elf::{RELA_SIZE, R_X86_64_RELATIVE, SHT_RELA};

impl ElfFile {
    /// `R_X86_64_RELATIVE` relocations of every `SHT_RELA` section:
    /// place -> addend.
    fn relative_relocations(&self) -> HashMap<u64, u64> {
        let mut out = HashMap::new();
        for s in self.sections.iter().filter(|s| s.sh_type == SHT_RELA) {
            let Some(data) = self.section_data(s) else {
                continue;
            };
            for i in 0..(data.len() as u64 / RELA_SIZE) {
                let at = i * RELA_SIZE;
                let (Some(place), Some(info), Some(addend)) = (
                    bytes::u64_at(data, at),
                    bytes::u64_at(data, at + 8),
                    bytes::u64_at(data, at + 16),
                ) else {
                    break;
                };
                if info & 0xffff_ffff == u64::from(R_X86_64_RELATIVE) {
                    out.insert(place, addend);
                }
            }
        }
        out
    }

    /// The addresses `__patchable_function_entries` lists: for each function
    /// built with `-fpatchable-function-entry=16,14`, the start of its NOP
    /// padding, which is its symbol value minus [`PADDING_BEFORE_ENTRY`](crate::PADDING_BEFORE_ENTRY)
    /// (in the interop `libgreet.so.0`, `greet_answer` is at 0x118e and the
    /// section lists 0x1180).
    ///
    /// Each 8-byte slot is read through its `R_X86_64_RELATIVE` relocation
    /// when there is one (shared objects and PIEs: the addend is the address,
    /// whatever the slot holds), else as the absolute address it holds
    /// (non-PIE executables, or RELR-packed relocations whose addend is in
    /// place). Slots that end up 0 are dropped. Sorted, deduplicated.
    pub fn patchable_entries(&self) -> Result<Vec<u64>, Error> {
        let secs: Vec<&SectionHeader> = self
            .sections
            .iter()
            .filter(|s| s.name == PATCHABLE_SECTION)
            .collect();
        if secs.is_empty() {
            return Err(Error::new(
                &self.path,
                ErrorKind::MissingSection,
                format!(
                    "no {PATCHABLE_SECTION} section (build with -fpatchable-function-entry=16,14)"
                ),
            ));
        }
        let relocs = self.relative_relocations();
        let mut out = Vec::new();
        for s in secs {
            let data = self.section_data(s).ok_or_else(|| {
                Error::malformed(
                    &self.path,
                    format!("{PATCHABLE_SECTION} section has no contents in the file"),
                )
            })?;
            if data.len() % 8 != 0 {
                return Err(Error::malformed(
                    &self.path,
                    format!(
                        "{PATCHABLE_SECTION} section size {} is not a multiple of 8",
                        data.len()
                    ),
                ));
            }
            for i in 0..(data.len() as u64 / 8) {
                let word = bytes::u64_at(data, i * 8).unwrap_or(0);
                let place = s.addr.wrapping_add(i * 8);
                let addr = relocs.get(&place).copied().unwrap_or(word);
                if addr != 0 {
                    out.push(addr);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// `Ok` when the file lists patchable function entries; otherwise the
    /// reason, suitable after "file 'X' is not livepatchable: ".
    pub fn livepatchable(&self) -> Result<(), String> {
        match self.patchable_entries() {
            Err(e) => Err(e.message().to_string()),
            Ok(v) if v.is_empty() => Err(format!(
                "{PATCHABLE_SECTION} lists no function (build with -fpatchable-function-entry=16,14)"
            )),
            Ok(_) => Ok(()),
        }
    }
}

//! ELF notes: the GNU build-id.

use crate::{bytes, ElfFile};
use crate::{NT_GNU_BUILD_ID, PT_NOTE, SHT_NOTE};

impl ElfFile {
    /// The `NT_GNU_BUILD_ID` note's descriptor, looked up in `PT_NOTE`
    /// segments first and then in `SHT_NOTE` sections.
    pub fn build_id(&self) -> Option<Vec<u8>> {
        let from_segments = self
            .segments
            .iter()
            .filter(|p| p.p_type == PT_NOTE)
            .find_map(|p| {
                let data = bytes::slice(&self.data, p.offset, p.filesz)?;
                find_note(data, p.align, b"GNU", NT_GNU_BUILD_ID)
            });
        from_segments
            .or_else(|| {
                self.sections
                    .iter()
                    .filter(|s| s.sh_type == SHT_NOTE)
                    .find_map(|s| {
                        find_note(self.section_data(s)?, s.addralign, b"GNU", NT_GNU_BUILD_ID)
                    })
            })
            .map(<[u8]>::to_vec)
    }
}

/// The descriptor of the first note called `name` with type `ty` in a note
/// area. Notes are padded to 4 bytes, or to 8 when the area is 8-aligned
/// (`.note.gnu.property`).
fn find_note<'a>(data: &'a [u8], align: u64, name: &[u8], ty: u32) -> Option<&'a [u8]> {
    let pad = if align == 8 { 8u64 } else { 4 };
    let round = |n: u64| n.checked_add(pad - 1).map(|n| n & !(pad - 1));
    let mut at = 0u64;
    while at < data.len() as u64 {
        let namesz = u64::from(bytes::u32_at(data, at)?);
        let descsz = u64::from(bytes::u32_at(data, at + 4)?);
        let nty = bytes::u32_at(data, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(round(namesz)?)?;
        let nname = bytes::slice(data, name_at, namesz)?;
        let desc = bytes::slice(data, desc_at, descsz)?;
        let nname = nname.strip_suffix(b"\0").unwrap_or(nname);
        if nty == ty && nname == name {
            return Some(desc);
        }
        at = desc_at.checked_add(round(descsz)?)?;
    }
    None
}

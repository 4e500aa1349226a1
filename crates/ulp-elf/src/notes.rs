//! ELF notes: the GNU build-id, found in the file's note segments or
//! sections by the one note parser, `ulp_abi::elf::gnu_build_id`.

use ulp_abi::elf::{gnu_build_id, PT_NOTE, SHT_NOTE};

use crate::{bytes, ElfFile};

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
                gnu_build_id(data, p.align)
            });
        from_segments
            .or_else(|| {
                self.sections
                    .iter()
                    .filter(|s| s.sh_type == SHT_NOTE)
                    .find_map(|s| gnu_build_id(self.section_data(s)?, s.addralign))
            })
            .map(<[u8]>::to_vec)
    }
}

//! The ELF facts every reader of ELF in this project shares: the constants
//! (from the System V gABI, the GNU extensions and the x86-64 psABI) and
//! the note parser that finds the GNU build-id.
//!
//! Three readers use them: `ulp-elf` (files), `ulp-core` (a process's
//! objects read through its memory) and the runtime (the objects it is
//! loaded with). They read different places, so each has its own reads;
//! what the bytes mean is written here once. `no_std`, no allocation: the
//! runtime uses it as it is.
//!
//! Widths follow the ELF64 field each constant goes in (`sh_type`,
//! `p_type`, `n_type` and `ELF64_R_TYPE` are 32 bits, `d_tag` is read as
//! 64, `st_shndx` is 16); `e_*` and `st_info` values as the header holds
//! them.

/// `e_ident[0..4]`: every ELF file starts with these bytes.
pub const ELFMAG: &[u8; 4] = b"\x7fELF";
/// `e_ident[4]` (`EI_CLASS`) of a 32-bit file.
pub const ELFCLASS32: u8 = 1;
/// `e_ident[4]` (`EI_CLASS`) of a 64-bit file.
pub const ELFCLASS64: u8 = 2;
/// `e_ident[5]` (`EI_DATA`) of a little-endian file.
pub const ELFDATA2LSB: u8 = 1;

/// `e_type` of a shared object or a position-independent executable.
pub const ET_DYN: u16 = 3;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;

/// `sizeof(Elf64_Ehdr)`.
pub const EHDR_SIZE: u64 = 64;
/// `sizeof(Elf64_Shdr)`.
pub const SHDR_SIZE: u64 = 64;
/// `sizeof(Elf64_Phdr)`.
pub const PHDR_SIZE: u64 = 56;
/// `sizeof(Elf64_Sym)`.
pub const SYM_SIZE: u64 = 24;
/// `sizeof(Elf64_Rela)`.
pub const RELA_SIZE: u64 = 24;

pub const SHT_PROGBITS: u32 = 1;
pub const SHT_SYMTAB: u32 = 2;
pub const SHT_RELA: u32 = 4;
pub const SHT_DYNAMIC: u32 = 6;
pub const SHT_NOTE: u32 = 7;
pub const SHT_NOBITS: u32 = 8;
pub const SHT_REL: u32 = 9;
pub const SHT_DYNSYM: u32 = 11;
pub const SHT_GROUP: u32 = 17;
pub const SHT_SYMTAB_SHNDX: u32 = 18;
pub const SHT_GNU_VERDEF: u32 = 0x6fff_fffd;
pub const SHT_GNU_VERSYM: u32 = 0x6fff_ffff;

pub const SHF_EXECINSTR: u64 = 0x4;
pub const SHF_INFO_LINK: u64 = 0x40;

pub const SHN_UNDEF: u16 = 0;
pub const SHN_LORESERVE: u16 = 0xff00;
pub const SHN_XINDEX: u16 = 0xffff;

/// `.gnu.version`: the bit that marks a version other than the default.
pub const VERSYM_HIDDEN: u16 = 0x8000;
/// `sizeof(Elf64_Verdef)`.
pub const VERDEF_SIZE: u64 = 20;
/// `sizeof(Elf64_Verdaux)`.
pub const VERDAUX_SIZE: u64 = 8;

pub const PT_LOAD: u32 = 1;
pub const PT_DYNAMIC: u32 = 2;
pub const PT_NOTE: u32 = 4;
pub const PT_TLS: u32 = 7;
pub const PT_GNU_RELRO: u32 = 0x6474_e552;

pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;

pub const DT_NULL: u64 = 0;
pub const DT_STRTAB: u64 = 5;
pub const DT_SYMTAB: u64 = 6;
pub const DT_RELA: u64 = 7;
pub const DT_RELASZ: u64 = 8;
pub const DT_RELAENT: u64 = 9;
pub const DT_STRSZ: u64 = 10;
pub const DT_SONAME: u64 = 14;

pub const STT_NOTYPE: u8 = 0;
pub const STT_OBJECT: u8 = 1;
pub const STT_FUNC: u8 = 2;
pub const STT_SECTION: u8 = 3;
pub const STT_FILE: u8 = 4;
pub const STT_COMMON: u8 = 5;
pub const STT_TLS: u8 = 6;
pub const STT_GNU_IFUNC: u8 = 10;

pub const STB_LOCAL: u8 = 0;

pub const R_X86_64_64: u32 = 1;
pub const R_X86_64_GLOB_DAT: u32 = 6;
pub const R_X86_64_JUMP_SLOT: u32 = 7;
pub const R_X86_64_RELATIVE: u32 = 8;

/// `n_type` of the GNU build-id note (name "GNU").
pub const NT_GNU_BUILD_ID: u32 = 3;

/// The descriptor of the first note called `name` with type `ty` in a note
/// area (a `PT_NOTE` segment or an `SHT_NOTE` section) whose alignment is
/// `align`. Entries are padded to 4 bytes, or to 8 when the area is
/// 8-aligned (`.note.gnu.property`). A note's name is compared without its
/// terminating NUL. `None` when there is no such note or an entry before
/// it runs past the end of `notes`.
pub fn find_note<'a>(notes: &'a [u8], align: u64, name: &[u8], ty: u32) -> Option<&'a [u8]> {
    let pad: usize = if align == 8 { 8 } else { 4 };
    let round = |n: usize| n.checked_add(pad - 1).map(|n| n & !(pad - 1));
    let word = |at: usize| -> Option<u32> {
        let b = notes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    };
    let size = |at: usize| usize::try_from(word(at)?).ok();
    let mut at = 0usize;
    while at < notes.len() {
        let (namesz, descsz, nty) = (size(at)?, size(at + 4)?, word(at + 8)?);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(round(namesz)?)?;
        let nname = notes.get(name_at..name_at.checked_add(namesz)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        let nname = nname.strip_suffix(b"\0").unwrap_or(nname);
        if nty == ty && nname == name {
            return Some(desc);
        }
        at = desc_at.checked_add(round(descsz)?)?;
    }
    None
}

/// The GNU build-id (the descriptor of the `NT_GNU_BUILD_ID` note named
/// "GNU") in a note area aligned to `align`.
pub fn gnu_build_id(notes: &[u8], align: u64) -> Option<&[u8]> {
    find_note(notes, align, b"GNU", NT_GNU_BUILD_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One note: header, name padded, descriptor padded, to `pad`.
    fn note(out: &mut [u8], at: usize, name: &[u8], ty: u32, desc: &[u8], pad: usize) -> usize {
        let round = |n: usize| (n + pad - 1) & !(pad - 1);
        out[at..at + 4].copy_from_slice(&(name.len() as u32).to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&(desc.len() as u32).to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&ty.to_le_bytes());
        let name_at = at + 12;
        out[name_at..name_at + name.len()].copy_from_slice(name);
        let desc_at = name_at + round(name.len());
        out[desc_at..desc_at + desc.len()].copy_from_slice(desc);
        desc_at + round(desc.len())
    }

    #[test]
    fn build_id_after_another_note() {
        let mut notes = [0u8; 96];
        let end = note(&mut notes, 0, b"GNU\0", 1, &[0; 16], 4);
        let end = note(
            &mut notes,
            end,
            b"GNU\0",
            NT_GNU_BUILD_ID,
            &[0xaa, 0xbb, 0xcc],
            4,
        );
        let notes = &notes[..end];
        assert_eq!(gnu_build_id(notes, 4), Some(&[0xaa, 0xbb, 0xcc][..]));
        // Every cut through the build-id note hides it, and nothing panics.
        for n in 0..end - 1 {
            assert_eq!(gnu_build_id(&notes[..n], 4), None, "prefix {n}");
        }
    }

    #[test]
    fn eight_byte_alignment_pads_the_name() {
        let mut notes = [0u8; 96];
        let end = note(&mut notes, 0, b"GNU\0", 5, &[1; 12], 8);
        let end = note(&mut notes, end, b"GNU\0", NT_GNU_BUILD_ID, &[7; 20], 8);
        assert_eq!(gnu_build_id(&notes[..end], 8), Some(&[7; 20][..]));
        assert_eq!(gnu_build_id(&notes[..end], 4), None);
    }

    #[test]
    fn hostile_sizes_are_none() {
        let mut notes = [0u8; 16];
        notes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_note(&notes, 4, b"GNU", NT_GNU_BUILD_ID), None);
        notes[..4].copy_from_slice(&4u32.to_le_bytes());
        notes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_note(&notes, 8, b"GNU", NT_GNU_BUILD_ID), None);
    }
}

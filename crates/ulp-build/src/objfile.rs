//! What `ulp build` reads from an object file compiled with
//! `-ffunction-sections -fdata-sections`, and from the target: functions
//! and variables with their bytes and relocations, relocation targets named
//! symbolically so that two builds compare.

use std::collections::HashMap;

use object::elf::{SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS, SHF_WRITE};
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionFlags,
    SectionIndex, SymbolKind,
};

/// x86-64 relocation types used here.
pub mod rtype {
    pub const PC32: u32 = 2;
    pub const PLT32: u32 = 4;
    pub const GOTPCREL: u32 = 9;
    pub const GOTPCRELX: u32 = 41;
    pub const REX_GOTPCRELX: u32 = 42;
    /// The thread-local ones: TLSGD .. TPOFF32, TLSDESC.
    pub fn is_tls(t: u32) -> bool {
        matches!(t, 16..=23 | 34 | 35)
    }
    pub fn is_pc_relative(t: u32) -> bool {
        matches!(t, PC32 | PLT32 | GOTPCREL | GOTPCRELX | REX_GOTPCRELX)
    }
}

/// A relocation, relative to the start of its function or variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u64,
    pub size: u8,
    pub r_type: u32,
    /// The target named as two builds compare it (see [`normalize`]).
    pub key: String,
    /// The target symbol's own name (a section's name for a section symbol).
    pub target: String,
    /// The addend (0 when `key` already names the merged constant).
    pub addend: i64,
    /// For a target in read-only data (a constant table, a jump table, a
    /// `CSWTCH` switch table, `.data.rel.ro`): that section's contents
    /// (bytes with relocated fields zeroed, and its relocations), so that
    /// a function whose code is the same but whose table changed differs.
    pub content: Option<String>,
    /// The section the target is in (internal: for `content`).
    target_section: Option<SectionIndex>,
}

/// A function or a variable of an object.
#[derive(Clone, Debug)]
pub struct Item {
    pub name: String,
    pub global: bool,
    pub section: String,
    pub value: u64,
    pub size: u64,
    /// Its bytes (zeros for .bss).
    pub bytes: Vec<u8>,
    /// The bytes before its start in its section (a patchable-entry area).
    pub before: Vec<u8>,
    pub relocs: Vec<Reloc>,
    pub tls: bool,
    /// Writable after relocation (not .rodata, not .data.rel.ro).
    pub mutable: bool,
}

impl Item {
    /// The bytes with every relocated field zeroed.
    pub fn masked(&self) -> Vec<u8> {
        let mut b = self.bytes.clone();
        for r in &self.relocs {
            let from = r.offset as usize;
            let to = (from + r.size as usize).min(b.len());
            if from < to {
                b[from..to].fill(0);
            }
        }
        b
    }

    /// The name two builds compare (digits after a period ignored).
    pub fn key(&self) -> String {
        normalize(&self.name)
    }

    /// A compiler-made clone or part (`f.part.0`, `f.cold`, `f.isra.0`...).
    pub fn is_clone(&self) -> bool {
        self.name.contains('.')
    }
}

/// An object file's functions and variables.
#[derive(Clone, Debug, Default)]
pub struct ObjectInfo {
    pub functions: Vec<Item>,
    pub variables: Vec<Item>,
    /// Whether it has constructors or destructors (`.init_array`...).
    pub has_constructors: bool,
    /// Compared names ([`Item::key`]) to indexes, the first of each.
    function_keys: HashMap<String, usize>,
    variable_keys: HashMap<String, usize>,
}

impl ObjectInfo {
    pub fn function(&self, key: &str) -> Option<&Item> {
        self.function_keys.get(key).map(|&i| &self.functions[i])
    }
    pub fn variable(&self, key: &str) -> Option<&Item> {
        self.variable_keys.get(key).map(|&i| &self.variables[i])
    }
}

/// `count.1` -> `count.`, `f.part.0` -> `f.part.`, `.bss.x.12` -> `.bss.x.`:
/// every all-digit part after a period dropped (compiler-made numbers).
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if i > 0 && !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        out.push_str(part);
    }
    out
}

/// A mergeable section's kind without the function it is named after:
/// `.rodata.f.str1.1` -> `.str1.1` (with `-fdata-sections` a string goes
/// into the section of the first function using it, which a change of
/// another function can move), `.rodata.cst8` -> `.cst8`.
fn merge_kind(section: &str) -> String {
    match [".str", ".cst"]
        .iter()
        .filter_map(|k| section.rfind(k))
        .max()
    {
        Some(at) => section[at..].to_string(),
        None => normalize(section),
    }
}

fn sh_flags(f: SectionFlags) -> u64 {
    match f {
        SectionFlags::Elf { sh_flags } => sh_flags,
        _ => 0,
    }
}

fn mutable_section(name: &str, flags: u64) -> bool {
    flags & u64::from(SHF_WRITE) != 0 && !name.starts_with(".data.rel.ro")
}

/// Reads an object file.
pub fn read_object(data: &[u8]) -> Result<ObjectInfo, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let mut info = ObjectInfo::default();
    let section_name = |i: SectionIndex| -> String {
        file.section_by_index(i)
            .ok()
            .and_then(|s| s.name().ok().map(str::to_string))
            .unwrap_or_default()
    };
    // Relocations by section.
    let mut relocs: HashMap<SectionIndex, Vec<(u64, Reloc)>> = HashMap::new();
    for s in file.sections() {
        let name = s.name().unwrap_or_default();
        if name.starts_with(".init_array")
            || name.starts_with(".fini_array")
            || name.starts_with(".ctors")
            || name.starts_with(".dtors")
        {
            info.has_constructors = true;
        }
        let mut list = Vec::new();
        for (off, r) in s.relocations() {
            let r_type = match r.flags() {
                RelocationFlags::Elf { r_type } => r_type,
                _ => 0,
            };
            let RelocationTarget::Symbol(si) = r.target() else {
                continue;
            };
            let Ok(sym) = file.symbol_by_index(si) else {
                continue;
            };
            let mut addend = r.addend();
            let target_section = sym.section_index();
            let section_symbol = sym.kind() == SymbolKind::Section;
            let sname = target_section.map(section_name).unwrap_or_default();
            let (target, mut key) = if section_symbol {
                (sname.clone(), normalize(&sname))
            } else {
                let n = sym.name().unwrap_or_default().to_string();
                let k = normalize(&n);
                (n, k)
            };
            // A piece of a mergeable section (a string, a constant), reached
            // through the section or a local label (`.LC0`): by contents.
            if section_symbol || sym.is_local() {
                if let Some(sec) = target_section.and_then(|i| file.section_by_index(i).ok()) {
                    let fl = sh_flags(sec.flags());
                    if fl & u64::from(SHF_MERGE) != 0 {
                        let base = if section_symbol {
                            0
                        } else {
                            sym.address() as i64
                        };
                        let at = base
                            + if rtype::is_pc_relative(r_type) {
                                addend + 4
                            } else {
                                addend
                            };
                        let d = sec.data().unwrap_or(&[]);
                        if at >= 0 && (at as usize) < d.len() {
                            let rest = &d[at as usize..];
                            let piece = if fl & u64::from(SHF_STRINGS) != 0 {
                                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                                &rest[..end]
                            } else {
                                let n = (sec.align().max(1) as usize).min(rest.len());
                                &rest[..n]
                            };
                            key = format!("{}:{piece:?}", merge_kind(&sname));
                            addend = 0;
                        }
                    }
                }
            }
            list.push((
                off,
                Reloc {
                    offset: off,
                    size: (r.size() / 8).max(1),
                    r_type,
                    key,
                    target,
                    addend,
                    content: None,
                    target_section,
                },
            ));
        }
        relocs.insert(s.index(), list);
    }
    // The contents of the read-only data sections (not mergeable: those are
    // compared piece by piece above), then given to the relocations to them.
    let mut contents: HashMap<SectionIndex, String> = HashMap::new();
    for s in file.sections() {
        let fl = sh_flags(s.flags());
        let name = s.name().unwrap_or_default();
        let alloc = fl & u64::from(SHF_ALLOC) != 0;
        let exec = fl & u64::from(SHF_EXECINSTR) != 0;
        let merge = fl & u64::from(SHF_MERGE) != 0;
        if !alloc || exec || merge || mutable_section(name, fl) {
            continue;
        }
        let mut bytes = s.data().unwrap_or(&[]).to_vec();
        let mut text = String::new();
        for (off, r) in relocs.get(&s.index()).map(Vec::as_slice).unwrap_or(&[]) {
            let from = *off as usize;
            let to = (from + r.size as usize).min(bytes.len());
            if from < to {
                bytes[from..to].fill(0);
            }
            text.push_str(&format!("{off}:{}:{}:{};", r.r_type, r.key, r.addend));
        }
        contents.insert(s.index(), format!("{bytes:?}|{text}"));
    }
    for list in relocs.values_mut() {
        for (_, r) in list.iter_mut() {
            r.content = r.target_section.and_then(|i| contents.get(&i).cloned());
        }
    }
    for sym in file.symbols() {
        let kind = sym.kind();
        if !matches!(kind, SymbolKind::Text | SymbolKind::Data | SymbolKind::Tls) {
            continue;
        }
        let Some(idx) = sym.section_index() else {
            continue;
        };
        if sym.is_undefined() {
            continue;
        }
        let Ok(sec) = file.section_by_index(idx) else {
            continue;
        };
        let sname = sec.name().unwrap_or_default().to_string();
        let data = sec.data().unwrap_or(&[]);
        let (start, size) = (sym.address(), sym.size());
        let bytes = if data.is_empty() {
            vec![0; size as usize]
        } else {
            data.get(start as usize..(start + size) as usize)
                .unwrap_or(&[])
                .to_vec()
        };
        let before = data.get(..start as usize).unwrap_or(&[]).to_vec();
        let item_relocs = relocs
            .get(&idx)
            .map(|l| {
                l.iter()
                    .filter(|(o, _)| *o >= start && *o < start + size.max(1))
                    .map(|(o, r)| Reloc {
                        offset: o - start,
                        ..r.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let fl = sh_flags(sec.flags());
        let item = Item {
            name: sym.name().unwrap_or_default().to_string(),
            global: sym.is_global(),
            mutable: mutable_section(&sname, fl),
            section: sname,
            value: start,
            size,
            bytes,
            before,
            relocs: item_relocs,
            tls: kind == SymbolKind::Tls,
        };
        if kind == SymbolKind::Text {
            info.functions.push(item);
        } else {
            info.variables.push(item);
        }
    }
    for (i, f) in info.functions.iter().enumerate() {
        info.function_keys.entry(f.key()).or_insert(i);
    }
    for (i, v) in info.variables.iter().enumerate() {
        info.variable_keys.entry(v.key()).or_insert(i);
    }
    Ok(info)
}

/// A symbol of a linked file (the target, the container).
#[derive(Clone, Debug)]
pub struct LinkedSymbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
    pub global: bool,
    pub function: bool,
    /// The `STT_FILE` name a local symbol follows (`None` for globals).
    pub file: Option<String>,
    /// Data in a section written at run time (not `.data.rel.ro`).
    pub mutable: bool,
    pub tls: bool,
}

/// The `.symtab` of a linked file (empty when stripped), in table order.
pub fn linked_symbols(data: &[u8]) -> Result<Vec<LinkedSymbol>, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for sym in file.symbols() {
        match sym.kind() {
            SymbolKind::File => {
                current = sym.name().ok().map(str::to_string);
                continue;
            }
            SymbolKind::Text | SymbolKind::Data | SymbolKind::Tls => {}
            _ => continue,
        }
        if sym.is_undefined() {
            continue;
        }
        let global = sym.is_global();
        let section = sym
            .section_index()
            .and_then(|i| file.section_by_index(i).ok());
        let mutable = section.as_ref().is_some_and(|sec| {
            mutable_section(sec.name().unwrap_or_default(), sh_flags(sec.flags()))
        });
        out.push(LinkedSymbol {
            mutable,
            tls: sym.kind() == SymbolKind::Tls,
            name: sym.name().unwrap_or_default().to_string(),
            address: sym.address(),
            size: sym.size(),
            global,
            function: sym.kind() == SymbolKind::Text,
            file: if global { None } else { current.clone() },
        });
    }
    Ok(out)
}

/// The `size` bytes at `address` of a linked file, from the section
/// holding them.
pub fn linked_bytes(data: &[u8], address: u64, size: u64) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    // Only the loaded sections (a non-loaded one has address 0).
    for s in file.sections().filter(|s| s.address() != 0) {
        if let Ok(Some(d)) = s.data_range(address, size) {
            return Some(d.to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn merged_pieces_ignore_the_function_a_section_is_named_after() {
        assert_eq!(super::merge_kind(".rodata.f.str1.1"), ".str1.1");
        assert_eq!(super::merge_kind(".rodata.str1.8"), ".str1.8");
        assert_eq!(super::merge_kind(".rodata.cst16"), ".cst16");
        assert_eq!(super::merge_kind(".rodata.g.cst4"), ".cst4");
    }

    #[test]
    fn compiler_numbers_are_ignored() {
        assert_eq!(normalize("count.1"), "count.");
        assert_eq!(normalize("count.23"), "count.");
        assert_eq!(normalize("f.part.0"), "f.part.");
        assert_eq!(normalize(".bss.count.4"), ".bss.count.");
        assert_eq!(normalize("plain"), "plain");
        assert_eq!(normalize(".text.f2"), ".text.f2");
    }
}

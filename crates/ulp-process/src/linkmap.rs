//! The dynamic loader's list of loaded objects (`struct link_map`), read
//! from another process's memory without stopping it.
//!
//! The way there: `/proc/PID/auxv` gives where the executable's program
//! headers are loaded (`AT_PHDR`, `AT_PHNUM`); its `PT_DYNAMIC` segment
//! holds `DT_DEBUG`, which the loader sets to its `r_debug`; `r_map` heads
//! the list. glibc's `r_debug_extended` (version 2 and later) chains the
//! lists of other namespaces (`dlmopen`) through `r_next`.
//!
//! The process keeps running: a `dlopen` or `dlclose` may change the list
//! while it is read, so every read is bounded and a list that cannot be
//! followed to its end is an error, never a loop.

use crate::error::Error;
use crate::mem::read_mem;
use crate::{Pid, RemoteAddr};

/// One entry of the loader's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkMapEntry {
    /// `l_addr`: the load bias.
    pub addr: u64,
    /// `l_name`: the name the loader has for the object (the path it
    /// opened, as the program named it); empty for the main program.
    pub name: String,
    /// `l_ld`: the address of its dynamic section.
    pub ld: u64,
}

/// At most this many objects (all namespaces together).
const MAX_OBJECTS: usize = 1 << 14;
/// At most this many namespaces.
const MAX_NAMESPACES: usize = 64;
/// Longest name read.
const MAX_NAME: usize = 4096;

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHNUM: u64 = 5;
const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;
const PT_LOAD: u32 = 1;
const DT_NULL: u64 = 0;
const DT_DEBUG: u64 = 21;

fn invalid(pid: Pid, what: impl Into<String>) -> Error {
    Error::Invalid {
        pid,
        what: what.into(),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Every object the loader of `pid` has loaded, in its list order (the
/// main program first), the base namespace first. Fails when the process
/// is not dynamically linked (no `DT_DEBUG`) or the list cannot be read.
pub fn link_map(pid: Pid) -> Result<Vec<LinkMapEntry>, Error> {
    let mut r_debug = r_debug_address(pid)?;
    let mut out = Vec::new();
    // Where each entry's name is (read at the end, all at once).
    let mut names = Vec::new();
    for _ in 0..MAX_NAMESPACES {
        // struct r_debug: int r_version; struct link_map *r_map; ...;
        // r_debug_extended adds `r_next` at 40.
        let mut head = [0u8; 48];
        read_mem(pid, RemoteAddr::new(r_debug), &mut head)?;
        let version = u32::from_le_bytes(head[..4].try_into().unwrap());
        let mut lm = u64_at(&head, 8);
        while lm != 0 {
            if out.len() >= MAX_OBJECTS {
                return Err(invalid(pid, "the loader's list of objects does not end"));
            }
            // struct link_map: l_addr, l_name, l_ld, l_next, l_prev.
            let mut e = [0u8; 32];
            read_mem(pid, RemoteAddr::new(lm), &mut e)?;
            out.push(LinkMapEntry {
                addr: u64_at(&e, 0),
                name: String::new(),
                ld: u64_at(&e, 16),
            });
            names.push(u64_at(&e, 8));
            lm = u64_at(&e, 24);
        }
        let next = u64_at(&head, 40);
        if version < 2 || next == 0 || next == r_debug {
            read_names(pid, &mut out, &names)?;
            return Ok(out);
        }
        r_debug = next;
    }
    Err(invalid(pid, "the loader's list of namespaces does not end"))
}

/// The names at `at` (0: none) into `entries`, in one read of memory for
/// all of them: up to [`NAME_PIECE`] bytes of each, never past its page;
/// a longer name is read on alone.
fn read_names(pid: Pid, entries: &mut [LinkMapEntry], at: &[u64]) -> Result<(), Error> {
    let piece = |a: u64| NAME_PIECE.min(4096 - (a & 4095) as usize);
    let pieces: Vec<(u64, usize)> = at
        .iter()
        .filter(|&&a| a != 0)
        .map(|&a| (a, piece(a)))
        .collect();
    let bytes = crate::mem::read_pieces(pid, &pieces)?;
    let mut off = 0;
    for (e, &a) in entries.iter_mut().zip(at) {
        if a == 0 {
            continue;
        }
        let b = &bytes[off..off + piece(a)];
        off += piece(a);
        e.name = match b.iter().position(|&c| c == 0) {
            Some(end) => String::from_utf8_lossy(&b[..end]).into_owned(),
            None => read_cstr(pid, a)?,
        };
    }
    Ok(())
}

/// How much of each name [`read_names`] reads at first: object paths are
/// shorter.
const NAME_PIECE: usize = 256;

/// The address of the loader's `r_debug`, from the executable's
/// `DT_DEBUG`.
fn r_debug_address(pid: Pid) -> Result<u64, Error> {
    let auxv = crate::procfs::read_proc(pid, "auxv")?;
    let (mut phdr, mut phnum) = (0, 0);
    for pair in auxv.chunks_exact(16) {
        match u64_at(pair, 0) {
            AT_NULL => break,
            AT_PHDR => phdr = u64_at(pair, 8),
            AT_PHNUM => phnum = u64_at(pair, 8),
            _ => {}
        }
    }
    if phdr == 0 || phnum == 0 || phnum > 256 {
        return Err(invalid(pid, "no program headers in the auxiliary vector"));
    }
    let mut phdrs = vec![0u8; phnum as usize * 56];
    read_mem(pid, RemoteAddr::new(phdr), &mut phdrs)?;
    let headers: Vec<&[u8]> = phdrs.chunks_exact(56).collect();
    let kind = |p: &[u8]| u32::from_le_bytes(p[..4].try_into().unwrap());
    // The load bias: where the headers are minus where PT_PHDR says they
    // are; without PT_PHDR, from the PT_LOAD that maps file offset 0.
    let bias = match headers.iter().find(|p| kind(p) == PT_PHDR) {
        Some(p) => phdr.wrapping_sub(u64_at(p, 16)),
        None => {
            let e_phoff = 64;
            let first = headers
                .iter()
                .find(|p| kind(p) == PT_LOAD && u64_at(p, 8) == 0)
                .ok_or_else(|| invalid(pid, "the executable has no first PT_LOAD"))?;
            phdr.wrapping_sub(e_phoff).wrapping_sub(u64_at(first, 16))
        }
    };
    let dynamic = headers
        .iter()
        .find(|p| kind(p) == PT_DYNAMIC)
        .ok_or_else(|| invalid(pid, "the executable is not dynamically linked"))?;
    let start = bias.wrapping_add(u64_at(dynamic, 16));
    let count = (u64_at(dynamic, 40) / 16).min(4096) as usize;
    let mut dyns = vec![0u8; count * 16];
    read_mem(pid, RemoteAddr::new(start), &mut dyns)?;
    for d in dyns.chunks_exact(16) {
        match u64_at(d, 0) {
            DT_NULL => break,
            DT_DEBUG if u64_at(d, 8) != 0 => return Ok(u64_at(d, 8)),
            _ => {}
        }
    }
    Err(invalid(pid, "the loader has not published its r_debug"))
}

/// A NUL-terminated string at `addr`, read a page at a time (a string may
/// end just before an unmapped page).
fn read_cstr(pid: Pid, addr: u64) -> Result<String, Error> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < MAX_NAME {
        let chunk = (4096 - (at & 4095) as usize).min(MAX_NAME - out.len());
        let mut b = vec![0u8; chunk];
        read_mem(pid, RemoteAddr::new(at), &mut b)?;
        if let Some(end) = b.iter().position(|&c| c == 0) {
            out.extend_from_slice(&b[..end]);
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&b);
        at += chunk as u64;
    }
    Err(invalid(pid, "a name in the loader's list is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_lists_itself_first_and_libc() {
        let pid = Pid::this();
        let list = link_map(pid).unwrap();
        assert_eq!(list[0].name, "", "the main program has no name");
        assert!(list.iter().any(|e| e.name.contains("libc.so")), "{list:?}");
        // Every entry's dynamic section is mapped in this process.
        let maps = crate::maps(pid).unwrap();
        for e in &list {
            assert!(
                maps.iter().any(|m| m.contains(RemoteAddr::new(e.ld))),
                "{e:?}"
            );
        }
    }
}

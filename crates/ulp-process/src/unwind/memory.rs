//! Reading the target's memory for an unwind in few system calls: the
//! stack in blocks of whole pages, kept for one unwind; code bytes (to
//! recognize the signal restorer) answered once per address and kept.

use std::collections::HashMap;

use crate::Pid;

const PAGE: u64 = 4096;
/// Pages read by one `process_vm_readv` when a word is asked on a page not
/// yet read: a stack is walked upwards, so the pages above come along.
const CHUNK_PAGES: u64 = 4;

/// Copies of the target's pages read during one unwind (a page that could
/// not be read is remembered as such).
pub(super) struct StackMem {
    pid: Pid,
    /// (page address, its bytes or `None` when unreadable); few entries.
    pages: Vec<(u64, Option<Box<[u8]>>)>,
}

impl StackMem {
    pub(super) fn new(pid: Pid) -> StackMem {
        StackMem {
            pid,
            pages: Vec::new(),
        }
    }

    fn page(&mut self, base: u64) -> Option<&[u8]> {
        let i = match self.pages.iter().position(|(b, _)| *b == base) {
            Some(i) => i,
            None => {
                self.fill(base);
                self.pages.iter().position(|(b, _)| *b == base)?
            }
        };
        self.pages[i].1.as_deref()
    }

    /// Reads the page at `base` and those after it not yet held, in one
    /// system call, and records what came back (the first page as
    /// unreadable when nothing did).
    fn fill(&mut self, base: u64) {
        let mut count = 1;
        while count < CHUNK_PAGES {
            let next = base.wrapping_add(count * PAGE);
            if next < base || self.pages.iter().any(|(b, _)| *b == next) {
                break;
            }
            count += 1;
        }
        let mut buf = vec![0u8; (count * PAGE) as usize];
        let got = read_pages(self.pid, base, count, &mut buf);
        if got == 0 {
            self.pages.push((base, None));
            return;
        }
        for (i, chunk) in buf.chunks_exact(PAGE as usize).take(got).enumerate() {
            self.pages.push((
                base + i as u64 * PAGE,
                Some(chunk.to_vec().into_boxed_slice()),
            ));
        }
    }

    /// The 8-byte little-endian word at `addr`, or `Err` when unreadable.
    pub(super) fn read_u64(&mut self, addr: u64) -> Result<u64, ()> {
        let mut bytes = [0u8; 8];
        let mut done = 0usize;
        while done < 8 {
            let a = addr.checked_add(done as u64).ok_or(())?;
            let base = a & !(PAGE - 1);
            let off = (a - base) as usize;
            let page = self.page(base).ok_or(())?;
            let n = (8 - done).min(PAGE as usize - off);
            bytes[done..done + n].copy_from_slice(&page[off..off + n]);
            done += n;
        }
        Ok(u64::from_le_bytes(bytes))
    }
}

/// Reads `count` pages from `base` into `buf` with one `process_vm_readv`,
/// one remote element per page: the kernel stops at the first element it
/// cannot read whole, so what comes back is a number of whole pages, which
/// this returns.
fn read_pages(pid: Pid, base: u64, count: u64, buf: &mut [u8]) -> usize {
    debug_assert_eq!(buf.len() as u64, count * PAGE);
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote: Vec<libc::iovec> = (0..count)
        .map(|i| libc::iovec {
            iov_base: (base + i * PAGE) as *mut libc::c_void,
            iov_len: PAGE as usize,
        })
        .collect();
    loop {
        return match crate::mem::vm_rw(pid, &local, &remote, false) {
            Err(libc::EINTR) => continue,
            Ok(n) => n / PAGE as usize,
            Err(_) => 0,
        };
    }
}

/// glibc's x86-64 signal restorer `__restore_rt`: `mov $15,%rax; syscall`
/// (rt_sigreturn). A handler returns to its first byte.
pub(super) const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// Whether code addresses start the signal restorer, read once per address
/// for the life of the [`super::Unwinder`] (code does not change under it).
#[derive(Default)]
pub(super) struct RestorerCache {
    known: HashMap<u64, bool>,
}

impl RestorerCache {
    /// Whether the bytes at `addr` are [`RESTORE_RT`]; `read` fills them
    /// (false: unreadable), the first time `addr` is asked about.
    pub(super) fn is_restorer(&mut self, addr: u64, read: impl FnOnce(&mut [u8]) -> bool) -> bool {
        *self.known.entry(addr).or_insert_with(|| {
            let mut code = [0u8; RESTORE_RT.len()];
            read(&mut code) && code == RESTORE_RT
        })
    }
}

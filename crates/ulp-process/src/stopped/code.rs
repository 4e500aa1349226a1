//! Reading and writing code bytes of a stopped process: PTRACE_PEEKDATA
//! and PTRACE_POKEDATA word by word (read-only and W^X-locked pages too),
//! and one write of `/proc/PID/mem` for bytes that must never be seen half
//! made.

use super::Stopped;
use crate::error::Error;
use crate::sys::{self, Errno};
use crate::RemoteAddr;

impl Stopped {
    /// Reads code or data bytes with PTRACE_PEEKDATA (works on pages without
    /// read permission). Any stopped thread of the guard is used.
    pub fn peek(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<(), Error> {
        let addr = addr.get();
        let tid = self.any_stopped()?;
        let mut off = 0usize;
        while off < buf.len() {
            let a = self.offset_addr(addr, off, buf.len())?;
            let base = a & !7;
            let skip = (a - base) as usize;
            let n = (8 - skip).min(buf.len() - off);
            let word = sys::peek_word(tid, base)
                .map_err(|e| self.mem_error(tid, addr, buf.len(), false, e))?;
            buf[off..off + n].copy_from_slice(&word.to_le_bytes()[skip..skip + n]);
            off += n;
        }
        Ok(())
    }

    /// Writes code bytes with PTRACE_POKEDATA (aligned word
    /// read-modify-write), which works on read-only and W^X-locked pages
    /// where `write_mem` fails. Any stopped thread of the guard is used;
    /// threads not held by this guard keep running meanwhile.
    pub fn poke(&mut self, addr: RemoteAddr, data: &[u8]) -> Result<(), Error> {
        let addr = addr.get();
        let tid = self.any_stopped()?;
        let mut off = 0usize;
        while off < data.len() {
            let a = self.offset_addr(addr, off, data.len())?;
            let base = a & !7;
            let skip = (a - base) as usize;
            let n = (8 - skip).min(data.len() - off);
            // Part of a word: one write of /proc/PID/mem, as whole as a
            // poke, instead of a peek and a poke.
            if n < 8 && self.write_mem_file(a, &data[off..off + n]) {
                off += n;
                continue;
            }
            let mut word = if n == 8 {
                [0u8; 8]
            } else {
                sys::peek_word(tid, base)
                    .map_err(|e| self.mem_error(tid, addr, data.len(), true, e))?
                    .to_le_bytes()
            };
            word[skip..skip + n].copy_from_slice(&data[off..off + n]);
            sys::poke_word(tid, base, u64::from_le_bytes(word))
                .map_err(|e| self.mem_error(tid, addr, data.len(), true, e))?;
            off += n;
        }
        Ok(())
    }

    /// Writes `data` at `addr` with one write of `/proc/PID/mem` (the
    /// kernel's forced access, like PTRACE_POKEDATA: works on read-only
    /// code): the bytes change in one system call, so a tool killed at any
    /// moment leaves them all old or all new. Falls back to
    /// [`Stopped::poke`] when `/proc/PID/mem` is refused and `data` lies
    /// within one aligned word (one poke is just as whole); otherwise the
    /// error.
    pub fn write_code_at_once(&mut self, addr: RemoteAddr, data: &[u8]) -> Result<(), Error> {
        let at = addr;
        let addr = addr.get();
        use std::os::unix::fs::FileExt;
        let tid = self.any_stopped()?;
        let written = self.mem_file().and_then(|f| f.write_at(data, addr));
        match written {
            Ok(n) if n == data.len() => Ok(()),
            _ if (addr & 7) + data.len() as u64 <= 8 => self.poke(at, data),
            Ok(_) => Err(self.mem_error(tid, addr, data.len(), true, Errno(libc::EIO))),
            Err(e) => Err(self.mem_error(
                tid,
                addr,
                data.len(),
                true,
                Errno(e.raw_os_error().unwrap_or(libc::EIO)),
            )),
        }
    }

    /// Whether all of `data` went to `addr` with one write of
    /// `/proc/PID/mem`.
    fn write_mem_file(&mut self, addr: u64, data: &[u8]) -> bool {
        use std::os::unix::fs::FileExt;
        self.mem_file()
            .and_then(|f| f.write_at(data, addr))
            .is_ok_and(|n| n == data.len())
    }

    /// `/proc/PID/mem` for writing, opened once per [`Stopped`]: through
    /// a thread it holds, which shares the process's memory even when the
    /// process's leader has exited and has none.
    pub(super) fn mem_file(&mut self) -> std::io::Result<&std::fs::File> {
        let f = match self.mem.take() {
            Some(f) => f,
            None => {
                let via = self.held.first().map_or(self.pid.get(), |h| h.tid.get());
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(format!("/proc/{via}/mem"))?
            }
        };
        Ok(self.mem.insert(f))
    }

    fn offset_addr(&self, addr: u64, off: usize, len: usize) -> Result<u64, Error> {
        addr.checked_add(off as u64).ok_or_else(|| Error::Invalid {
            pid: self.pid,
            what: format!("range {addr:#x}+{len} wraps around the address space"),
        })
    }
}

//! Reading and writing another process's memory without stopping it.
//!
//! `process_vm_readv`/`process_vm_writev` honour page protections: they
//! cannot write code (read-only or W^X-locked pages). Code is written with
//! `Stopped::poke`, which goes through ptrace and the kernel's forced access.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::Error;
use crate::{Pid, RemoteAddr};

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn mem_error(pid: Pid, addr: u64, len: usize, write: bool, errno: i32) -> Error {
    if errno == libc::ESRCH {
        Error::Gone { pid, tid: None }
    } else {
        Error::Memory {
            pid,
            addr: RemoteAddr::new(addr),
            len,
            write,
            errno,
        }
    }
}

/// One `process_vm_readv` (or, `write`, `process_vm_writev`) of `pid`:
/// the bytes moved, or the errno. When the pid has no memory any more
/// because its leader has exited while other threads run on (ESRCH), the
/// call is made again on one of those (`procfs::stand_in`).
pub(crate) fn vm_rw(
    pid: Pid,
    local: &libc::iovec,
    remote: &[libc::iovec],
    write: bool,
) -> Result<usize, i32> {
    let call = |p: Pid| {
        // SAFETY: `local` describes a buffer of the caller's, valid for
        // reads (write) or writes (read) of its length for the call; the
        // remote iovecs are only interpreted by the kernel in the target's
        // address space.
        let n = unsafe {
            if write {
                libc::process_vm_writev(p.get(), local, 1, remote.as_ptr(), remote.len() as _, 0)
            } else {
                libc::process_vm_readv(p.get(), local, 1, remote.as_ptr(), remote.len() as _, 0)
            }
        };
        if n < 0 {
            Err(errno())
        } else {
            Ok(n as usize)
        }
    };
    match call(pid) {
        Err(libc::ESRCH) => match crate::procfs::stand_in(pid) {
            Some(t) => call(t),
            None => Err(libc::ESRCH),
        },
        r => r,
    }
}

/// Reads exactly `buf.len()` bytes at `addr` of `pid`, or fails.
///
/// Uses `process_vm_readv`; if that cannot read everything (for example a
/// page without read permission), falls back to `/proc/PID/mem`.
pub fn read_mem(pid: Pid, addr: RemoteAddr, buf: &mut [u8]) -> Result<(), Error> {
    let addr = addr.get();
    let mut done = 0usize;
    let mut last_errno = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let local = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: rest.len(),
        };
        match vm_rw(pid, &local, &[remote], false) {
            Ok(n) if n > 0 => {
                done += n;
                continue;
            }
            Ok(_) => last_errno = libc::EFAULT,
            Err(libc::EINTR) => continue,
            Err(e) => last_errno = e,
        }
        break;
    }
    if done == buf.len() {
        return Ok(());
    }
    if last_errno == libc::ESRCH {
        return Err(Error::Gone { pid, tid: None });
    }
    // Fallback: /proc/PID/mem reads with the kernel's forced access
    // (through a thread that runs on when the leader has exited: its
    // /proc/PID/mem is gone then).
    let len = buf.len();
    let rest = addr + done as u64;
    let read_via = |via: Pid, buf: &mut [u8]| {
        let file = File::open(format!("/proc/{via}/mem")).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Gone { pid, tid: None }
            } else {
                mem_error(pid, addr, len, false, last_errno)
            }
        })?;
        file.read_exact_at(buf, rest).map_err(|e| {
            mem_error(
                pid,
                addr,
                len,
                false,
                e.raw_os_error().unwrap_or(last_errno),
            )
        })
    };
    read_via(pid, &mut buf[done..]).or_else(|e| match crate::procfs::stand_in(pid) {
        Some(t) => read_via(t, &mut buf[done..]),
        None => Err(e),
    })
}

/// Writes all of `data` at `addr` of `pid` with `process_vm_writev`.
///
/// Only for writable mappings (data, heap, stack); fails with EFAULT on
/// code. Use `Stopped::poke` for code.
pub fn write_mem(pid: Pid, addr: RemoteAddr, data: &[u8]) -> Result<(), Error> {
    let addr = addr.get();
    let mut done = 0usize;
    while done < data.len() {
        let rest = &data[done..];
        let local = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let e = match vm_rw(pid, &local, &[remote], true) {
            Ok(n) if n > 0 => {
                done += n;
                continue;
            }
            Ok(_) => libc::EFAULT,
            Err(libc::EINTR) => continue,
            Err(e) => e,
        };
        return Err(mem_error(pid, addr, data.len(), true, e));
    }
    Ok(())
}

/// Places one `process_vm_readv`/`process_vm_writev` call may name (the
/// kernel's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Reads `len` bytes at each of `addrs` of `pid`, concatenated in order
/// ([`read_pieces`] with one length).
pub fn read_scattered(pid: Pid, addrs: &[u64], len: usize) -> Result<Vec<u8>, Error> {
    let pieces: Vec<(u64, usize)> = addrs.iter().map(|&a| (a, len)).collect();
    read_pieces(pid, &pieces)
}

/// Reads each `(address, length)` piece of `pid`'s memory, concatenated in
/// order, with one `process_vm_readv` per [`IOV_MAX`] pieces (the marks of
/// every thread of a process, the bytes under every write of a plan); a
/// group that cannot be read whole is read again piece by piece with
/// [`read_mem`] (which falls back to /proc/PID/mem), whose error is
/// returned.
pub fn read_pieces(pid: Pid, pieces: &[(u64, usize)]) -> Result<Vec<u8>, Error> {
    let total: usize = pieces.iter().map(|p| p.1).sum();
    let mut out = vec![0u8; total];
    let mut at = 0;
    for group in pieces.chunks(IOV_MAX) {
        let len: usize = group.iter().map(|p| p.1).sum();
        let buf = &mut out[at..at + len];
        at += len;
        let remote: Vec<libc::iovec> = group
            .iter()
            .map(|&(a, n)| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: n,
            })
            .collect();
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        if vm_rw(pid, &local, &remote, false) != Ok(buf.len()) {
            let mut off = 0;
            for &(a, n) in group {
                read_mem(pid, RemoteAddr::new(a), &mut buf[off..off + n])?;
                off += n;
            }
        }
    }
    Ok(out)
}

/// Writes `data` (`len` bytes for each place, concatenated in order) at
/// each of `addrs` of `pid` ([`write_pieces`] with one length).
pub fn write_scattered(pid: Pid, addrs: &[u64], data: &[u8], len: usize) -> Result<(), Error> {
    assert_eq!(data.len(), addrs.len() * len, "one piece of data per place");
    let pieces: Vec<(u64, &[u8])> = addrs.iter().copied().zip(data.chunks(len.max(1))).collect();
    write_pieces(pid, &pieces)
}

/// Writes each `(address, bytes)` piece into `pid`'s memory, in order,
/// with one `process_vm_writev` per [`IOV_MAX`] pieces; a group not
/// written whole is written again piece by piece with [`write_mem`], whose
/// error is returned. Writable mappings only.
pub fn write_pieces(pid: Pid, pieces: &[(u64, &[u8])]) -> Result<(), Error> {
    for group in pieces.chunks(IOV_MAX) {
        let buf: Vec<u8> = group.iter().flat_map(|p| p.1.iter().copied()).collect();
        let remote: Vec<libc::iovec> = group
            .iter()
            .map(|&(a, d)| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: d.len(),
            })
            .collect();
        let local = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        if vm_rw(pid, &local, &remote, true) != Ok(buf.len()) {
            for &(a, d) in group {
                write_mem(pid, RemoteAddr::new(a), d)?;
            }
        }
    }
    Ok(())
}

//! The system calls of the patch store's code (`stored.rs`, `dlopen.rs`),
//! made by the `syscall` instruction itself rather than through the C
//! library: every function the runtime imports from the C library is one
//! more symbol the loader looks up in every process that preloads it,
//! before `main` (about 700 instructions each), whether the store is used
//! or not. A failed call returns `-errno` (the C library's `errno` is left
//! alone).

use alloc::vec;
use alloc::vec::Vec;
use core::ffi::{c_int, c_void, CStr};

/// System call `n` with six arguments (unused ones 0): the kernel's
/// answer, `-errno` on failure.
///
/// # Safety
/// As the system call: pointers among the arguments must be valid for it.
#[inline]
unsafe fn raw(n: i64, a: [u64; 6]) -> i64 {
    let ret: i64;
    core::arch::asm!(
        "syscall",
        inlateout("rax") n => ret,
        in("rdi") a[0],
        in("rsi") a[1],
        in("rdx") a[2],
        in("r10") a[3],
        in("r8") a[4],
        in("r9") a[5],
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

/// `raw`, with the fewer arguments given (the rest 0).
macro_rules! sc {
    ($n:expr $(, $a:expr)* $(,)?) => {{
        let given: &[u64] = &[$($a as u64),*];
        let mut args = [0u64; 6];
        // An index loop, not `copy_from_slice`: no call into the core
        // library's code (the start section, lib.rs `start`).
        let mut i = 0;
        while i < given.len() {
            args[i] = given[i];
            i += 1;
        }
        raw($n, args)
    }};
}

/// The errno of a failed call's answer (`-4095..=-1`), if it failed.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
fn failed(ret: i64) -> Option<i32> {
    (-4095..0).contains(&ret).then_some(-ret as i32)
}

/// The fields of `struct stat` the store's checks use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stat {
    pub(crate) uid: u32,
    pub(crate) mode: u32,
    pub(crate) size: u64,
    /// (ctime, its nanoseconds, inode): what changes when a directory's
    /// entries are added, removed or renamed.
    pub(crate) change: (i64, i64, u64),
}

impl Stat {
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub(crate) fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// `fstatat(AT_FDCWD, path)`, following a final symbolic link or not;
/// `Err(errno)` on failure.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub(crate) fn stat(path: &CStr, follow: bool) -> Result<Stat, i32> {
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: a NUL-terminated path and a buffer of the kernel's `struct
    // stat` (x86-64's, which `libc::stat` is).
    unsafe {
        let mut st: libc::stat = core::mem::zeroed();
        let rc = sc!(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut st as *mut libc::stat,
            flags
        );
        if let Some(e) = failed(rc) {
            return Err(e);
        }
        Ok(Stat {
            uid: st.st_uid,
            mode: st.st_mode,
            size: st.st_size as u64,
            change: (st.st_ctime, st.st_ctime_nsec, st.st_ino),
        })
    }
}

/// The text for an errno value, without the C library's `strerror`.
pub(crate) fn errno_text(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "no such file or directory",
        libc::EACCES => "permission denied",
        libc::ENOTDIR => "not a directory",
        libc::ELOOP => "too many symbolic links",
        libc::ENAMETOOLONG => "name too long",
        libc::EIO => "input/output error",
        libc::EFBIG => "file too large",
        _ => "system error",
    }
}

#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub(crate) fn gettid() -> i32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { sc!(libc::SYS_gettid) as i32 }
}

pub(crate) fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { sc!(libc::SYS_geteuid) as u32 }
}

pub(crate) fn sched_yield() {
    // SAFETY: no arguments.
    unsafe { sc!(libc::SYS_sched_yield) };
}

/// Whether `path` exists (`access(F_OK)`).
pub(crate) fn exists(path: &CStr) -> bool {
    // SAFETY: a NUL-terminated path.
    unsafe { sc!(libc::SYS_access, path.as_ptr(), libc::F_OK) == 0 }
}

/// `pread`: bytes read, or `-errno`.
///
/// # Safety
/// `buf` is writable for `len` bytes.
pub(crate) unsafe fn pread(fd: c_int, buf: *mut c_void, len: usize, at: u64) -> isize {
    sc!(libc::SYS_pread64, fd, buf, len, at as i64) as isize
}

/// `pwrite`: bytes written, or `-errno`.
///
/// # Safety
/// `buf` is readable for `len` bytes.
pub(crate) unsafe fn pwrite(fd: c_int, buf: *const c_void, len: usize, at: u64) -> isize {
    sc!(libc::SYS_pwrite64, fd, buf, len, at as i64) as isize
}

/// `mprotect`: true when it succeeded.
///
/// # Safety
/// As `mprotect(2)`: the caller answers for what the new protection does
/// to code that uses the pages.
pub(crate) unsafe fn mprotect(addr: u64, len: usize, prot: c_int) -> bool {
    sc!(libc::SYS_mprotect, addr, len, prot) == 0
}

/// The names in directory `path` (without `.` and `..`), by `getdents64`.
pub(crate) fn read_dir(path: &CStr) -> Result<Vec<Vec<u8>>, i32> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = open(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(-fd);
    }
    let mut names = Vec::new();
    let mut buf = vec![0u8; 8192];
    let result = loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { sc!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if let Some(e) = failed(n) {
            break Err(e);
        }
        if n == 0 {
            break Ok(());
        }
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen;
        // u8 d_type; char d_name[]; }
        let mut at = 0usize;
        while at + 19 <= n as usize {
            let reclen = u16::from_le_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen < 19 || at + reclen > n as usize {
                break;
            }
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
            at += reclen;
        }
    };
    close(fd);
    result.map(|()| names)
}

/// The target of the symbolic link `path` (`/proc/self/exe`), or `None`.
pub(crate) fn readlink(path: &CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a NUL-terminated path and a buffer of its length.
    let n = unsafe {
        sc!(
            libc::SYS_readlink,
            path.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n <= 0 || n as usize >= buf.len() {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// The environment variables the runtime reads, all at start.
const ENV_NAMES: [&[u8]; 4] = [
    ulp_abi::optout::PATH_VAR.as_bytes(),
    ulp_abi::optout::USERS_VAR.as_bytes(),
    ulp_abi::optout::GROUPS_VAR.as_bytes(),
    ulp_abi::store::ENV.as_bytes(),
];

/// The values of [`ENV_NAMES`] found by [`scan_env`] (null: unset). In
/// front of the interface block (build.rs), in a page a start writes
/// anyway.
#[cfg_attr(not(test), link_section = ".bss.ulp_start")]
static ENV_FOUND: [core::sync::atomic::AtomicPtr<u8>; 4] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; 4];

/// Finds the values of [`ENV_NAMES`] in `envp`, the environment glibc
/// passes `.init_array` functions (`argc, argv, envp`: its `environ` of
/// that moment), in one pass and without importing `getenv`: as the C
/// library's `getenv` would, the first `NAME=` entry of each. Nothing is
/// allocated; the values stay the environment's own.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub(crate) fn scan_env(envp: *const *const core::ffi::c_char) {
    if envp.is_null() {
        return;
    }
    let mut at = envp;
    // SAFETY: `envp` is the NULL-ended array of NUL-terminated strings
    // the loader passed to the constructor; each entry is read up to its
    // NUL at most.
    unsafe {
        while !(*at).is_null() {
            let entry = (*at).cast::<u8>();
            at = at.add(1);
            // Every name starts with `L` or `U`: most entries stop here.
            if *entry != b'L' && *entry != b'U' {
                continue;
            }
            for (name, found) in ENV_NAMES.iter().zip(&ENV_FOUND) {
                let mut i = 0;
                while i < name.len() && *entry.add(i) == name[i] {
                    i += 1;
                }
                if i == name.len() && *entry.add(i) == b'=' {
                    let value = entry.add(i + 1).cast_mut();
                    let _ = found.compare_exchange(
                        core::ptr::null_mut(),
                        value,
                        core::sync::atomic::Ordering::Relaxed,
                        core::sync::atomic::Ordering::Relaxed,
                    );
                    break;
                }
            }
        }
    }
}

/// Whether [`scan_env`] found any of [`ENV_NAMES`].
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub(crate) fn env_any() -> bool {
    let mut i = 0;
    while i < ENV_FOUND.len() {
        if !ENV_FOUND[i]
            .load(core::sync::atomic::Ordering::Relaxed)
            .is_null()
        {
            return true;
        }
        i += 1;
    }
    false
}

/// The value of environment variable `name` (one of [`ENV_NAMES`]) at
/// start, as [`scan_env`] found it; `None` when unset (or not one of
/// those names).
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub(crate) fn getenv_c(name: &[u8]) -> Option<&'static CStr> {
    // Byte by byte: a slice comparison would call into the core
    // library's code, outside the start section (lib.rs, `start`).
    let mut i = 0;
    loop {
        let n = ENV_NAMES.get(i)?;
        if n.len() == name.len() {
            let mut k = 0;
            while k < n.len() && n[k] == name[k] {
                k += 1;
            }
            if k == n.len() {
                break;
            }
        }
        i += 1;
    }
    let p = ENV_FOUND[i].load(core::sync::atomic::Ordering::Relaxed);
    // SAFETY: a NUL-terminated value in the environment, which the
    // runtime only reads at start.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p.cast()) })
}

/// The value of environment variable `name`, or `None` ([`getenv_c`],
/// copied).
pub(crate) fn getenv(name: &str) -> Option<Vec<u8>> {
    getenv_c(name.as_bytes()).map(|v| v.to_bytes().to_vec())
}

/// The whole file at `path`, at most `limit` bytes (`Err(errno)`; EFBIG
/// when it is larger).
pub(crate) fn read_file(path: &CStr, limit: usize) -> Result<Vec<u8>, i32> {
    let fd = open(path, libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(-fd);
    }
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let result = loop {
        // SAFETY: `chunk` is writable for its length.
        let n = unsafe { read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 {
            let e = -n as i32;
            if e == libc::EINTR {
                continue;
            }
            break Err(e);
        }
        if n == 0 {
            break Ok(());
        }
        if out.len() + n as usize > limit {
            break Err(libc::EFBIG);
        }
        out.extend_from_slice(&chunk[..n as usize]);
    };
    close(fd);
    result.map(|()| out)
}

/// `realpath(3)`: the path with every link and `.`/`..` resolved.
pub(crate) fn realpath(path: &CStr) -> Result<Vec<u8>, i32> {
    // SAFETY: a NUL-terminated path; realpath allocates the answer with
    // malloc, freed here after the copy.
    unsafe {
        let p = crate::lazy::realpath(path.as_ptr(), core::ptr::null_mut());
        if p.is_null() {
            return Err(*crate::lazy::__errno_location());
        }
        let out = CStr::from_ptr(p).to_bytes().to_vec();
        crate::lazy::free(p.cast());
        Ok(out)
    }
}

/// `open(path, flags)`: a descriptor, or `-errno`.
pub(crate) fn open(path: &CStr, flags: c_int) -> c_int {
    // SAFETY: a NUL-terminated path.
    unsafe { sc!(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, 0) as c_int }
}

pub(crate) fn close(fd: c_int) {
    // SAFETY: closing a descriptor the caller owns.
    unsafe { sc!(libc::SYS_close, fd) };
}

/// `read`: bytes read, or `-errno`.
///
/// # Safety
/// `buf` is writable for `len` bytes.
pub(crate) unsafe fn read(fd: c_int, buf: *mut c_void, len: usize) -> isize {
    sc!(libc::SYS_read, fd, buf, len) as isize
}

/// `clock_gettime(clock)`.
pub(crate) fn clock(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe {
        sc!(
            libc::SYS_clock_gettime,
            clock,
            &mut ts as *mut libc::timespec,
        )
    };
    ts
}

/// A new anonymous mapping (`mmap`), or `None`.
pub(crate) fn mmap_anonymous(hint: u64, len: usize, prot: c_int, flags: c_int) -> Option<u64> {
    // SAFETY: an anonymous mapping; the kernel checks the hint and flags.
    let p = unsafe {
        sc!(
            libc::SYS_mmap,
            hint,
            len,
            prot,
            flags | libc::MAP_ANONYMOUS,
            -1i32,
            0i64,
        )
    };
    failed(p).is_none().then_some(p as u64)
}

/// `munmap`.
///
/// # Safety
/// Nothing may use the mapping any more.
pub(crate) unsafe fn munmap(addr: u64, len: usize) {
    sc!(libc::SYS_munmap, addr, len);
}

pub(crate) fn getuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { sc!(libc::SYS_getuid) as u32 }
}

pub(crate) fn getgid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { sc!(libc::SYS_getgid) as u32 }
}

/// The supplementary groups.
pub(crate) fn getgroups() -> Vec<u32> {
    // SAFETY: a count query, then a buffer of that many entries.
    unsafe {
        let n = sc!(libc::SYS_getgroups, 0, core::ptr::null_mut::<u32>());
        if n <= 0 {
            return Vec::new();
        }
        let mut ids = vec![0u32; n as usize];
        let got = sc!(libc::SYS_getgroups, n, ids.as_mut_ptr());
        ids.truncate(got.max(0) as usize);
        ids
    }
}

//! `dlopen`, interposed (the runtime is preloaded, so the program's and
//! every library's calls to `dlopen` come here first), for one purpose: a
//! library that arrives by `dlopen` gets its stored patches before
//! `dlopen` returns (`stored.rs`).
//!
//! While the patch store was not found at start (`stored::ARMED` clear),
//! the entry is three instructions and a jump to the C library's `dlopen`
//! with the caller's own return address on the stack, so the C library
//! sees the very caller it would have seen without us (it uses the caller
//! to pick the namespace and the `RUNPATH` to search). Once armed, the
//! call goes through [`slow`]: the C library's `dlopen` is called from
//! here, and for a bare file name the caller's own search path is applied
//! first ([`caller_path`]) so that a program that relies on its
//! `RUNPATH` still finds its library.

#[allow(unused_imports)]
use crate::prelude::*;

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::stored::ARMED;

type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;

/// The C library's `dlopen`, found on the first call.
static REAL: AtomicUsize = AtomicUsize::new(0);

/// The interposed entry. Not armed: straight to the C library's.
///
/// # Safety
/// As `dlopen(3)`.
#[no_mangle]
#[unsafe(naked)]
pub unsafe extern "C" fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void {
    core::arch::naked_asm!(
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 2f",
        "cmp byte ptr [rip + {armed}], 0",
        "jne 2f",
        "jmp rax",
        "2:",
        // The caller's return address as the third argument.
        "mov rdx, qword ptr [rsp]",
        "jmp {slow}",
        real = sym REAL,
        armed = sym ARMED,
        slow = sym slow,
    )
}

/// The C library's `dlopen` (the next definition after this library).
fn real() -> Option<DlopenFn> {
    let mut at = REAL.load(Ordering::Acquire);
    if at == 0 {
        // SAFETY: a NUL-terminated name; RTLD_NEXT searches the objects
        // after this one (the C library's default version of the name).
        at = unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlopen".as_ptr()) as usize };
        if at == 0 || at == dlopen as *const () as usize {
            return None;
        }
        REAL.store(at, Ordering::Release);
    }
    // SAFETY: the address of the C library's `dlopen`.
    Some(unsafe { core::mem::transmute::<usize, DlopenFn>(at) })
}

/// The armed path, and the very first call (which finds the C library's
/// `dlopen`).
unsafe extern "C" fn slow(file: *const c_char, mode: c_int, caller: usize) -> *mut c_void {
    let Some(real) = real() else {
        return core::ptr::null_mut();
    };
    // Called from here, the C library takes this library for the caller:
    // the caller's own search path is applied first (also on the first,
    // unarmed call, which comes here to find the C library's `dlopen`).
    let path = crate::guard::guarded(|| caller_path(file, caller)).flatten();
    let handle = match &path {
        Some(p) => real(p.as_ptr(), mode),
        None => real(file, mode),
    };
    if handle.is_null() || mode & libc::RTLD_NOLOAD != 0 || !ARMED.load(Ordering::Acquire) {
        return handle;
    }
    // Armed: the store's start found every lazy function (`lazy.rs`), so
    // finding `__errno_location` calls nothing that could change errno.
    let errno = *crate::lazy::__errno_location();
    crate::after_dlopen();
    *crate::lazy::__errno_location() = errno;
    handle
}

/// `struct link_map`'s first fields.
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const c_char,
    l_ld: *const [u64; 2],
}

const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// For a bare file name (no `/`) from a caller whose object has its own
/// search path (`DT_RUNPATH` or `DT_RPATH`): the first file of that name
/// in the directories of the caller's search list that ours lacks (its
/// own `RUNPATH`/`RPATH` directories, `$ORIGIN` expanded by the loader).
/// `None`: let the C library search as for us.
fn caller_path(file: *const c_char, caller: usize) -> Option<alloc::ffi::CString> {
    if file.is_null() {
        return None;
    }
    // SAFETY: dlopen's argument, a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(file) }.to_bytes();
    if name.is_empty() || name.contains(&b'/') {
        return None;
    }
    let theirs = object_of(caller)?;
    // SAFETY: a link map from the loader; its dynamic section is an array
    // of (tag, value) ended by DT_NULL.
    let own_path = unsafe {
        let mut d = (*theirs).l_ld;
        let mut found = false;
        while !d.is_null() && (*d)[0] != 0 {
            found |= (*d)[0] == DT_RUNPATH || (*d)[0] == DT_RPATH;
            d = d.add(1);
        }
        found
    };
    if !own_path {
        return None;
    }
    let ours = object_of(dlopen as *const () as usize)?;
    let mine = search_dirs(ours.cast_mut().cast());
    for dir in search_dirs(theirs.cast_mut().cast()) {
        if mine.contains(&dir) {
            continue;
        }
        let mut p = dir;
        p.push(b'/');
        p.extend_from_slice(name);
        let c = alloc::ffi::CString::new(p).ok()?;
        if crate::sys::exists(&c) {
            return Some(c);
        }
    }
    None
}

/// `dladdr1`, looked up on first use (an import would cost every process
/// a symbol lookup at start).
type Dladdr1Fn =
    unsafe extern "C" fn(*const c_void, *mut libc::Dl_info, *mut *mut c_void, c_int) -> c_int;
static DLADDR1: AtomicUsize = AtomicUsize::new(0);

/// The link map of the object that holds `addr`.
fn object_of(addr: usize) -> Option<*const LinkMap> {
    let mut f = DLADDR1.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dladdr1".as_ptr()) as usize };
        if f == 0 {
            return None;
        }
        DLADDR1.store(f, Ordering::Release);
    }
    // SAFETY: the address of the C library's dladdr1.
    let dladdr1 = unsafe { core::mem::transmute::<usize, Dladdr1Fn>(f) };
    // SAFETY: Dl_info is plain data; zeroes are a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    let mut map: *mut c_void = core::ptr::null_mut();
    // SAFETY: valid out-pointers; RTLD_DL_LINKMAP stores a link map.
    let ok = unsafe { dladdr1(addr as *const c_void, &mut info, &mut map, RTLD_DL_LINKMAP) };
    (ok != 0 && !map.is_null()).then_some(map.cast_const().cast())
}

/// `dladdr1`'s request for the link map.
const RTLD_DL_LINKMAP: c_int = 2;

/// The directories the loader searches for a `dlopen` from `handle`'s
/// object, in order (`RTLD_DI_SERINFO`). `Dl_serinfo` is `{ size_t
/// dls_size; unsigned dls_cnt; Dl_serpath dls_serpath[]; }` with
/// `Dl_serpath` `{ char *dls_name; unsigned dls_flags; }` (16 bytes), the
/// array at offset 16.
fn search_dirs(handle: *mut c_void) -> Vec<Vec<u8>> {
    let mut head = [0u64; 4];
    // SAFETY: the two-step protocol of dlinfo(3): the size first (into a
    // header), then a buffer of that size (8-aligned) with the header's
    // two fields copied in, which the loader fills.
    unsafe {
        if crate::lazy::dlinfo(handle, libc::RTLD_DI_SERINFOSIZE, head.as_mut_ptr().cast()) != 0 {
            return Vec::new();
        }
        let size = head[0] as usize;
        let count = (head[1] & 0xffff_ffff) as usize;
        if size < 16 + 16 * count || size > 1 << 20 {
            return Vec::new();
        }
        let mut buf = vec![0u64; size.div_ceil(8)];
        buf[0] = head[0];
        buf[1] = head[1];
        if crate::lazy::dlinfo(handle, libc::RTLD_DI_SERINFO, buf.as_mut_ptr().cast()) != 0 {
            return Vec::new();
        }
        (0..count)
            .filter_map(|i| {
                let p = buf[2 + 2 * i] as *const c_char;
                (!p.is_null()).then(|| CStr::from_ptr(p).to_bytes().to_vec())
            })
            .collect()
    }
}

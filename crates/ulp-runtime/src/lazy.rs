//! C library functions the runtime calls only when it works (applying a
//! patch, reading the store), found by `dlsym` on their first call instead
//! of being imported: every imported function is a symbol lookup that the
//! loader makes, before `main`, in every process that preloads the runtime
//! (some 600 instructions each), whether the runtime is ever used or not.
//! Only `dlsym` stays imported: the system calls are made by the
//! instruction itself (`sys.rs`), the memory routines the compiler calls
//! are the runtime's own (`mem.rs`) and the environment is read from the
//! constructor's third argument (`sys::getenv`).
//!
//! `dlsym(RTLD_DEFAULT, name)` finds what the loader would have bound the
//! import to: the first definition in the process's global scope (an
//! interposed `malloc` included).

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The address of `name` (NUL-terminated), found once into `slot`.
fn resolve(slot: &AtomicUsize, name: &'static [u8]) -> usize {
    let at = slot.load(Ordering::Relaxed);
    if at != 0 {
        return at;
    }
    // SAFETY: a NUL-terminated name.
    let at = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast()) } as usize;
    if at == 0 {
        // Cannot happen in a process with the C library; a panic returns
        // to the entry guard (guard.rs) instead of calling address 0.
        panic!(
            "the C library has no {}",
            core::str::from_utf8(name).unwrap_or("?")
        );
    }
    slot.store(at, Ordering::Relaxed);
    at
}

macro_rules! lazy {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $t:ty),*) -> $ret:ty; )*) => {
        $(
            /// The function's address, once found.
            #[allow(non_snake_case)]
            mod $name {
                pub(super) static AT: super::AtomicUsize = super::AtomicUsize::new(0);
            }

            $(#[$doc])*
            ///
            /// # Safety
            /// As the C library's function of that name.
            #[cfg_attr(test, allow(dead_code))] // the allocator and panic handler are not in tests
            pub(crate) unsafe extern "C" fn $name($($arg: $t),*) -> $ret {
                let at = resolve(&$name::AT, concat!(stringify!($name), "\0").as_bytes());
                // SAFETY: the C library's function of that name and type.
                let f = core::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $ret>(at);
                f($($arg),*)
            }
        )*

        /// Finds every function now. Called on the way into the runtime,
        /// before anything that may run under the loader's locks (the
        /// `dl_iterate_phdr` callback allocates): `dlsym` takes the
        /// loader's lock, and taking it there could deadlock against a
        /// `dlopen` of another thread.
        pub(crate) fn prepare() {
            $( resolve(&$name::AT, concat!(stringify!($name), "\0").as_bytes()); )*
        }
    };
}

lazy! {
    fn malloc(size: usize) -> *mut c_void;
    fn free(p: *mut c_void) -> ();
    fn realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int;
    fn dlclose(handle: *mut c_void) -> c_int;
    fn dlerror() -> *mut c_char;
    fn dlinfo(handle: *mut c_void, request: c_int, info: *mut c_void) -> c_int;
    fn dl_iterate_phdr(
        callback: Option<unsafe extern "C" fn(*mut libc::dl_phdr_info, usize, *mut c_void) -> c_int>,
        data: *mut c_void
    ) -> c_int;
    fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char;
    fn abort() -> ();
    fn __errno_location() -> *mut c_int;
    fn fnmatch(pattern: *const c_char, subject: *const c_char, flags: c_int) -> c_int;
    fn getpwuid_r(
        uid: libc::uid_t,
        pw: *mut libc::passwd,
        buf: *mut c_char,
        len: usize,
        out: *mut *mut libc::passwd
    ) -> c_int;
    fn getgrgid_r(
        gid: libc::gid_t,
        gr: *mut libc::group,
        buf: *mut c_char,
        len: usize,
        out: *mut *mut libc::group
    ) -> c_int;
}

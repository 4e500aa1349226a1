//! Gives the cdylib the SONAME that processes preload (`libpulp.so.0`)
//! and links it against the C library.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpulp.so.0");
    // no_std: nothing else names the C library, whose functions (and
    // their versions) the runtime uses.
    println!("cargo:rustc-cdylib-link-arg=-lc");
    // No C start files (crti, crtbeginS, crtendS, crtn): their code is for
    // C++ destructors and transactional memory, and it names four symbols
    // (`__gmon_start__`, the two `_ITM_*TMCloneTable`, `__cxa_finalize`)
    // that the loader would look up in every process, three of them weak
    // and absent, so searched through every object in vain. The
    // constructor is an `.init_array` entry of our own.
    println!("cargo:rustc-cdylib-link-arg=-nostartfiles");
    // The runtime's own references to what it exports (`__ulp_interface`,
    // `dlopen`) bind to its own definitions at link time: relative
    // relocations instead of two symbol lookups at every start. Nothing
    // else could sensibly define either for the runtime to use.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rerun-if-changed=build.rs");
}

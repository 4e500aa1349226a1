//! Gives the cdylib the SONAME that processes preload (`libpulp.so.0`)
//! and links it against the C library.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpulp.so.0");
    // no_std: nothing else names the C library, whose functions (and
    // their versions) the runtime uses.
    println!("cargo:rustc-cdylib-link-arg=-lc");
    println!("cargo:rerun-if-changed=build.rs");
}

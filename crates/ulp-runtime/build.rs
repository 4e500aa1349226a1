//! Gives the cdylib the SONAME that processes preload: `libpulp.so.0`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpulp.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}

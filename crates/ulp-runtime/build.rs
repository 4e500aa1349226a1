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
    // The code every start runs is in sections `.text.startup.ulp*`
    // (lib.rs, `start`): gathered into one page of its own at the end of
    // the code, so that a start touches one page of the runtime's code.
    // The kernel maps the pages around each touched page of a file (the
    // aligned 64 kB fault-around window, or whole large folios of the page
    // cache): scattered start code made every process map all of the
    // runtime's code; one page at the end maps 20 to 84 kB of its 100. The page is filled to its end,
    // so that the writable data after it starts on a page of its own:
    // what the loader writes there (relocations, its own `.dynamic`
    // updates) then dirties two pages, not three.
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let script = out.join("start.ld");
    std::fs::write(
        &script,
        "SECTIONS\n{\n  .text.ulp_start ALIGN(4096) : { *(.text.startup.ulp*) . = ALIGN(4096); }\n}\nINSERT AFTER .text;\n",
    )
    .expect("writing the linker script");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,-T,{}",
        script.to_str().expect("a UTF-8 OUT_DIR")
    );
    println!("cargo:rerun-if-changed=build.rs");
}

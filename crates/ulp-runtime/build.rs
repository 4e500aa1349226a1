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
    // Read-only data in the code's segment: the loader maps each loadable
    // segment with an mmap of its own, and every start of a process that
    // preloads the runtime pays for them. rust-lld (the default linker of
    // x86-64 Linux since Rust 1.90) then makes three segments (code with
    // read-only data, RELRO data, data) instead of four; GNU ld with `-z
    // noseparate-code` makes the same three. The cost: the runtime's
    // read-only data and ELF headers are executable too (RELRO stays).
    match linker() {
        Linker::Lld => println!("cargo:rustc-cdylib-link-arg=-Wl,--no-rosegment"),
        Linker::Gnu => println!("cargo:rustc-cdylib-link-arg=-Wl,-z,noseparate-code"),
        Linker::Other => {}
    }
    // The code every start runs is in sections `.text.startup.ulp*`
    // (lib.rs, `start`), gathered into one page of its own in front of
    // the rest of the code: with the read-only data in the same segment,
    // that page lies within the first 64 kB of the file, with everything
    // else a start touches (headers, dynamic symbols, relocations). The
    // kernel maps the pages around each touched page of a file (the
    // aligned 64 kB fault-around window, or whole large folios of the page
    // cache), so a start maps one window of the runtime's file: 64 kB
    // resident, where scattered start code mapped all of it, and the
    // four-segment layout with the start page at the end of the code 68
    // kB. The code is padded to the end of its page (`.text.ulp_end`), so
    // that the writable data after it starts on a page of its own: what
    // the loader writes there (relocations, its own `.dynamic` updates)
    // then dirties two pages, not three. Measured with both: process start
    // 1.096 -> 1.081 of a plain one, interleaved, 2000 starts each (an
    // empty `gcc -shared` library: 1.075).
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let script = out.join("start.ld");
    std::fs::write(
        &script,
        "SECTIONS\n{\n  .text.ulp_start ALIGN(4096) : { *(.text.startup.ulp*) . = ALIGN(4096); }\n}\nINSERT BEFORE .text;\n\
         SECTIONS\n{\n  .text.ulp_end : { BYTE(0xcc) . = ALIGN(4096); }\n}\nINSERT AFTER .text;\n",
    )
    .expect("writing the linker script");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,-T,{}",
        script.to_str().expect("a UTF-8 OUT_DIR")
    );
    println!("cargo:rerun-if-changed=build.rs");
}

enum Linker {
    Lld,
    Gnu,
    Other,
}

/// Which linker links the cdylib: rust-lld when nothing chose another one
/// and rustc is 1.90 or later on x86-64 Linux, GNU ld (through `cc`) with
/// an older rustc, else unknown (no layout flag is given then).
fn linker() -> Linker {
    let chosen = std::env::var_os("RUSTC_LINKER").is_some()
        || std::env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    let target = std::env::var("TARGET").unwrap_or_default();
    if chosen || target != "x86_64-unknown-linux-gnu" {
        return Linker::Other;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let minor = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let v = String::from_utf8_lossy(&o.stdout).into_owned();
            v.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    match minor {
        Some(m) if m >= 90 => Linker::Lld,
        Some(_) => Linker::Gnu,
        None => Linker::Other,
    }
}

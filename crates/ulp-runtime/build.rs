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
    // Two loadable segments: code with the read-only data, then data. The
    // loader maps each segment with an mmap of its own, and every start of
    // a process that preloads the runtime pays for them: rust-lld (the
    // default linker of x86-64 Linux since Rust 1.90) would make four
    // (headers and read-only data, code, RELRO data, data), GNU ld three.
    // The read-only data and ELF headers are executable too. No RELRO
    // (`-z norelro`): making the relocated data read-only after the
    // relocations is one more mmap and one `mprotect` that splits the
    // mapping, about 5 µs of every process start on the VM measured
    // (ARCHITECTURE.md, "The runtime: no_std", has the figures and what
    // stays writable).
    match linker() {
        Linker::Lld => {
            println!("cargo:rustc-cdylib-link-arg=-Wl,--no-rosegment");
            println!("cargo:rustc-cdylib-link-arg=-Wl,-z,norelro");
        }
        Linker::Gnu => {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-z,noseparate-code");
            println!("cargo:rustc-cdylib-link-arg=-Wl,-z,norelro");
        }
        Linker::Other => {}
    }
    // The code every start runs is in sections `.text.startup.ulp*`
    // (lib.rs, `constructor`), gathered into one page of its own in front
    // of the rest of the code: with the read-only data in the same
    // segment, that page lies within the first 64 kB of the file, with
    // everything else a start touches (headers, dynamic symbols,
    // relocations). The kernel maps the pages around each touched page of
    // a file (the aligned 64 kB fault-around window, or whole large folios
    // of the page cache), so a start maps one window of the runtime's
    // file: 64 kB resident, where scattered start code mapped all of it.
    // The code is padded to the end of its page (`.text.ulp_end`), so
    // that the data after it starts on a page of its own.
    //
    // The zero-initialised data starts with what a start reads and writes
    // (`.bss.ulp_start`, then the interface block, whose first 100 bytes
    // the constructor writes: ulp_abi, `offset`). It begins in the last
    // page of the file's data, which the loader writes anyway (the
    // relocations, and the zeroing of that page's tail), so a start
    // writes no page of the runtime that the loader has not. Measured with
    // both: process start 1.080 -> 1.057 of a plain one, interleaved, 3000
    // starts each (an empty `gcc -shared` library: 1.076).
    // `crates/ulp-runtime-tests/tests/elf_checks.rs` checks the placement.
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let script = out.join("start.ld");
    std::fs::write(
        &script,
        "SECTIONS\n{\n  .text.ulp_start ALIGN(4096) : { *(.text.startup.ulp*) . = ALIGN(4096); }\n}\nINSERT BEFORE .text;\n\
         SECTIONS\n{\n  .text.ulp_end : { BYTE(0xcc) . = ALIGN(4096); }\n}\nINSERT AFTER .text;\n\
         SECTIONS\n{\n  .bss.ulp_first (NOLOAD) : { *(.bss.ulp_start) *(.bss.ulp_interface) }\n}\nINSERT BEFORE .bss;\n",
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

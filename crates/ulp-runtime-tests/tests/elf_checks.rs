//! The built `libpulp.so` as the loader and the tool see it: SONAME, no
//! text relocations, no GLIBC_PRIVATE reference, exactly three exports
//! (the two of the protocol and the interposed `dlopen`), and what a
//! process that preloads it pays: the C library as its only dependency
//! (no unwinder), 16 bytes of initial-exec thread-local storage (each
//! thread's mark and saved return address for per-thread transitions),
//! few imports.

mod support;

use std::process::Command;

fn readelf(args: &[&str]) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(support::runtime_so())
        .output()
        .expect("running readelf");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn soname_and_no_text_relocations() {
    let dynamic = readelf(&["-d", "-W"]);
    assert!(
        dynamic.contains("Library soname: [libpulp.so.0]"),
        "{dynamic}"
    );
    assert!(!dynamic.contains("TEXTREL"), "{dynamic}");
}

#[test]
fn only_the_c_library_16_bytes_of_static_tls_and_few_imports() {
    let dynamic = readelf(&["-d", "-W"]);
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert_eq!(needed.len(), 1, "{dynamic}");
    assert!(needed[0].contains("[libc.so.6]"), "{dynamic}");
    // One TLS segment of 16 bytes, zero-initialised (.tbss), in the static
    // TLS block (initial-exec: no __tls_get_addr, no allocation in a new
    // thread).
    let segments = readelf(&["-l", "-W"]);
    let tls: Vec<&str> = segments
        .lines()
        .filter(|l| l.trim_start().starts_with("TLS "))
        .collect();
    assert_eq!(tls.len(), 1, "{segments}");
    let f: Vec<&str> = tls[0].split_whitespace().collect();
    // Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
    assert_eq!((f[4], f[5]), ("0x000000", "0x000010"), "{}", tls[0]);
    assert!(dynamic.contains("STATIC_TLS"), "{dynamic}");
    assert!(!readelf(&["--dyn-syms", "-W"]).contains("__tls_get_addr"));
    let imports = readelf(&["--dyn-syms", "-W"])
        .lines()
        .filter(|l| l.contains(" UND ") && !l.contains(" WEAK "))
        .count();
    // Each one is a symbol lookup in every process that preloads the
    // runtime, before main: dlsym alone (and the table's null entry;
    // ARCHITECTURE.md, "The runtime: no_std").
    assert!(imports <= 2, "{imports} imported functions");
}

#[test]
fn no_glibc_private_and_only_the_three_exports() {
    let syms = readelf(&["--dyn-syms", "-W"]);
    assert!(!syms.contains("GLIBC_PRIVATE"), "{syms}");
    let mut exported: Vec<(String, String)> = syms
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num: Value Size Type Bind Vis Ndx Name
            (f.len() >= 8 && f[4] == "GLOBAL" && f[6] != "UND")
                .then(|| (f[7].to_string(), f[3].to_string()))
        })
        .collect();
    exported.sort();
    assert_eq!(
        exported,
        [
            ("__ulp_entry".to_string(), "FUNC".to_string()),
            ("__ulp_interface".to_string(), "OBJECT".to_string()),
            // Interposed for the patch store (dlopen.rs).
            ("dlopen".to_string(), "FUNC".to_string()),
        ]
    );
}

/// Preloaded into an ordinary program, the runtime is invisible: same
/// output, nothing on stderr, also when an opt-out needs NSS lookups.
#[test]
fn preloading_changes_nothing_visible() {
    for env in [
        None,
        Some(("LIBPULP_DISABLE_ON_USERS", "*")),
        Some(("LIBPULP_DISABLE_ON_GROUPS", "no-such-group")),
    ] {
        let mut cmd = Command::new("/bin/echo");
        cmd.arg("hello").env("LD_PRELOAD", support::runtime_so());
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running echo");
        assert!(out.status.success(), "{env:?}");
        assert_eq!(out.stdout, b"hello\n", "{env:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{env:?}");
    }
}

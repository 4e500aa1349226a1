//! The built `libpulp.so` as the loader and the tool see it: SONAME, no
//! text relocations, no GLIBC_PRIVATE reference, exactly three exports
//! (the two of the protocol and the interposed `dlopen`), and what a
//! process that preloads it pays: the C library as its only dependency
//! (no unwinder), 16 bytes of initial-exec thread-local storage (each
//! thread's mark and saved return address for per-thread transitions),
//! few imports, and no page of its own written at start but those the
//! loader relocates.

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

/// What a start writes: nothing but the two pages of relocated data the
/// loader writes anyway (build.rs). The interface block's header, its
/// "loaded" line and the variables the constructor reads sit in the
/// second of them, so the rest of the zero-initialised data (the block's
/// 130 kB, the guard's table) is never touched by a process that is not
/// patched: no page of it is resident.
#[test]
fn a_start_dirties_only_the_pages_the_loader_relocates() {
    let runtime = support::runtime_so();
    // A shell that says "ready" from `main` (the constructor has run),
    // then waits; killed when the test ends.
    let mut sh = Command::new("/bin/sh");
    sh.args(["-c", "echo ready; read x"])
        .env("LD_PRELOAD", &runtime);
    let target = ulp_fixtures::Target::spawn(sh);
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", target.pid)).unwrap();
    let pagemap = std::fs::File::open(format!("/proc/{}/pagemap", target.pid)).unwrap();

    // (start, end, path, Anonymous kB, Rss kB) of each mapping. A page of
    // the file that a write copied is anonymous (Private_Dirty would also
    // count the page cache's own dirty pages of a file just built).
    let mut maps: Vec<(u64, u64, String, u64, u64)> = Vec::new();
    for l in smaps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let Some((a, b)) = f.first().and_then(|r| r.split_once('-')) {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                maps.push((a, b, f.get(5).unwrap_or(&"").to_string(), 0, 0));
                continue;
            }
        }
        let kb = || f[1].parse::<u64>().unwrap();
        match f.first() {
            Some(&"Anonymous:") => maps.last_mut().unwrap().3 = kb(),
            Some(&"Rss:") => maps.last_mut().unwrap().4 = kb(),
            _ => {}
        }
    }
    let name = runtime.canonicalize().unwrap();
    let ours: Vec<_> = maps
        .iter()
        .filter(|m| std::path::Path::new(&m.2) == name)
        .collect();
    assert_eq!(ours.len(), 2, "two segments, two mappings:\n{smaps}");
    let written: u64 = ours.iter().map(|m| m.3).sum();
    let relocated = relocated_pages();
    assert!(
        written <= 4 * relocated,
        "{written} kB of the runtime's file written, {relocated} pages relocated:\n{smaps}"
    );
    // The zero-initialised data past the file's last page: anonymous
    // memory from the end of the file's mapping to the end of the data
    // segment, not one page of it present (the kernel may have merged it
    // with the loader's own memory after it: its pages are asked one by
    // one, in /proc/PID/pagemap, bit 63).
    let base = ours[0].0;
    let data_end = base + last_load_end();
    let from = ours.last().unwrap().1;
    assert!(data_end > from, "no zero-initialised data past the file");
    let present: Vec<u64> = (from / 4096..data_end.div_ceil(4096))
        .filter(|page| {
            let mut entry = [0u8; 8];
            use std::os::unix::fs::FileExt;
            pagemap.read_exact_at(&mut entry, page * 8).unwrap();
            u64::from_le_bytes(entry) >> 63 == 1
        })
        .map(|page| page * 4096)
        .collect();
    assert!(
        present.is_empty(),
        "pages of the runtime's zeroed data present: {present:x?}"
    );
}

/// Where the last loadable segment ends in memory (`p_vaddr + p_memsz`).
fn last_load_end() -> u64 {
    let segments = readelf(&["-l", "-W"]);
    let last = segments
        .lines()
        .rfind(|l| l.trim_start().starts_with("LOAD "))
        .expect("a loadable segment");
    let f: Vec<&str> = last.split_whitespace().collect();
    // Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    hex(f[2]) + hex(f[5])
}

/// How many pages the loader's relocations write (those of `.rela.dyn`).
fn relocated_pages() -> u64 {
    let mut pages: Vec<u64> = readelf(&["-r", "-W"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = u64::from_str_radix(f.first()?, 16).ok()?;
            f.get(2)?.starts_with("R_X86_64_").then_some(at / 4096)
        })
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages.len() as u64
}

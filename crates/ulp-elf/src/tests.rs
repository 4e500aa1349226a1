//! Tests on real files: the libpulp interop vectors, and libraries compiled
//! here with gcc.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const INTEROP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/libpulp-interop"
);

fn interop(name: &str) -> PathBuf {
    Path::new(INTEROP).join(name)
}

use ulp_fixtures::TempDir;

const LIB_C: &str = r#"
int counter;
static int twice(int x) { return 2 * x; }
int add_one(int x) { return x + 1; }
int use_both(int x) { counter++; return twice(x) + add_one(x); }
"#;

fn gcc(dir: &TempDir, out: &str, src: &str, flags: &[&str]) -> PathBuf {
    let c = dir.join("src.c");
    std::fs::write(&c, src).unwrap();
    let o = dir.join(out);
    let st = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&o)
        .arg(&c)
        .status()
        .expect("gcc must be installed to run these tests");
    assert!(st.success(), "gcc {flags:?} failed");
    o
}

fn shared_lib(dir: &TempDir, out: &str, extra: &[&str]) -> PathBuf {
    let mut flags = vec!["-O2", "-fPIC", "-shared", "-fno-inline", "-Wl,--build-id"];
    flags.extend_from_slice(extra);
    gcc(dir, out, LIB_C, &flags)
}

/// The two bytes at each listed function's entry (after endbr64 if any).
fn entry_bytes(elf: &ElfFile) -> Vec<[u8; 2]> {
    elf.patchable_entries()
        .unwrap()
        .into_iter()
        .map(|p| {
            let mut off = elf.vaddr_to_offset(p + PADDING_BEFORE_ENTRY).unwrap() as usize;
            if elf.data()[off..off + 4] == [0xf3, 0x0f, 0x1e, 0xfa] {
                off += 4;
            }
            [elf.data()[off], elf.data()[off + 1]]
        })
        .collect()
}

#[test]
fn interop_libgreet_facts() {
    let elf = ElfFile::open(&interop("libgreet.so.0")).unwrap();
    assert!(elf.is_shared_object());
    let hex: String = elf
        .build_id()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, "0b12723e714c785b321e9af5c995dc14ca869484");
    assert_eq!(elf.soname().as_deref(), Some("libgreet.so.0"));
    let answer = elf.symbol("greet_answer").unwrap();
    assert_eq!(answer.value, 0x118e);
    assert!(answer.is_function());
    // Static variables come from .symtab only.
    let count = elf.symbol("greet_count").unwrap();
    assert_eq!((count.value, count.is_object()), (0x404c, true));
    assert!(elf.dynamic_symbol("greet_count").is_none());
    let tls = elf.symbol("greet_thread_count").unwrap();
    assert_eq!((tls.value, tls.is_tls()), (0, true));
    assert!(elf.symbol("no_such_symbol").is_none());
    // No (name, value) pair twice although greet_answer is in both tables.
    let syms = elf.symbols();
    assert_eq!(syms.iter().filter(|s| s.name == "greet_answer").count(), 1);
    assert!(syms.iter().all(|s| s.shndx != 0));

    // The section lists padding starts: symbol value - 14 for every
    // function built with the flag (greet_answer: 0x118e -> 0x1180).
    let entries = elf.patchable_entries().unwrap();
    assert!(entries.contains(&(0x118e - 14)));
    assert!(entries.contains(&0x1180));
    assert_eq!(entries.len(), 5);
    for e in &entries {
        let f = syms
            .iter()
            .find(|s| s.value == e + 14 && s.is_function())
            .unwrap_or_else(|| panic!("no function at {:#x} + 14", e));
        assert!(f.name.starts_with("greet"), "{}", f.name);
    }
    assert_eq!(elf.livepatchable(), Ok(()));
    // libpulp's `ulp post` already ran on it.
    assert!(entry_bytes(&elf).iter().all(|b| *b == [0x66, 0x90]));
    assert_eq!(elf.vaddr_to_offset(0x118e), Some(0x118e));
    assert_eq!(elf.vaddr_to_offset(0x4018), Some(0x3018));
    assert_eq!(elf.vaddr_to_offset(0x4048), None); // .bss: not in the file
    assert!(elf.section(".bss").is_none());
    assert_eq!(elf.section(".comment").map(|d| d.len()), Some(0x27));
}

#[test]
fn post_merges_entry_nops_once() {
    for (tag, extra) in [
        ("plain", &["-fpatchable-function-entry=16,14"][..]),
        (
            "cet",
            &["-fpatchable-function-entry=16,14", "-fcf-protection"][..],
        ),
    ] {
        let dir = TempDir::new(tag);
        let lib = shared_lib(&dir, "libt.so", extra);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o751)).unwrap();
        let before = ElfFile::open(&lib).unwrap();
        assert_eq!(before.livepatchable(), Ok(()));
        let n = before.patchable_entries().unwrap().len();
        assert!(n >= 3, "{tag}: {n} entries");
        assert!(entry_bytes(&before).iter().all(|b| *b == [0x90, 0x90]));
        // The static function is listed too.
        let twice = before.symbol("twice").unwrap();
        assert!(before
            .patchable_entries()
            .unwrap()
            .contains(&(twice.value - 14)));

        let r = post(&lib).unwrap();
        assert_eq!(
            r,
            PostReport {
                merged: n,
                already: 0,
                skipped: 0
            },
            "{tag}"
        );
        let after = ElfFile::open(&lib).unwrap();
        assert!(entry_bytes(&after).iter().all(|b| *b == [0x66, 0x90]));
        let changed = before
            .data()
            .iter()
            .zip(after.data())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(before.data().len(), after.data().len());
        assert_eq!(
            changed, n,
            "{tag}: only the first byte of each entry changes"
        );
        let mode = std::fs::metadata(&lib).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o751);

        let again = post(&lib).unwrap();
        assert_eq!(
            again,
            PostReport {
                merged: 0,
                already: n,
                skipped: 0
            }
        );
        assert_eq!(std::fs::read(&lib).unwrap(), after.data());
    }
}

/// The SONAME link a distribution installs (`libt.so.1 -> libt.so.1.2.3`,
/// a second link on it): posting through a link rewrites the file it
/// leads to, with its owner and mode, and every link stays a link to it.
#[test]
fn post_through_a_soname_link_changes_the_file_and_keeps_the_link() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("link");
    let lib = shared_lib(
        &dir,
        "libt.so.1.2.3",
        &["-fpatchable-function-entry=16,14", "-Wl,-soname,libt.so.1"],
    );
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o750)).unwrap();
    let link = dir.join("libt.so.1");
    std::os::unix::fs::symlink("libt.so.1.2.3", &link).unwrap();
    let dev = dir.join("libt.so");
    std::os::unix::fs::symlink("libt.so.1", &dev).unwrap();
    let owner = std::fs::metadata(&lib).map(|m| (m.uid(), m.gid())).unwrap();
    let n = ElfFile::open(&lib)
        .unwrap()
        .patchable_entries()
        .unwrap()
        .len();

    let r = post(&dev).unwrap();
    assert_eq!(r.merged, n);
    for (l, to) in [(&link, "libt.so.1.2.3"), (&dev, "libt.so.1")] {
        assert!(std::fs::symlink_metadata(l)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_link(l).unwrap(), PathBuf::from(to));
    }
    let after = ElfFile::open(&lib).unwrap();
    assert!(entry_bytes(&after).iter().all(|b| *b == [0x66, 0x90]));
    let meta = std::fs::metadata(&lib).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!((meta.uid(), meta.gid()), owner);
    // Nothing else was left in the directory.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libt"))
        .collect();
    names.sort();
    assert_eq!(names, ["libt.so", "libt.so.1", "libt.so.1.2.3"]);
    assert_eq!(post(&link).unwrap().already, n);
}

#[test]
fn post_and_entries_in_a_non_pie_executable() {
    let dir = TempDir::new("exe");
    let exe = gcc(
        &dir,
        "prog",
        "int work(int x) { return x * 7; }\nint main(void) { return work(6) - 42; }\n",
        &[
            "-O2",
            "-no-pie",
            "-fno-inline",
            "-fpatchable-function-entry=16,14",
        ],
    );
    let elf = ElfFile::open(&exe).unwrap();
    assert!(!elf.is_shared_object());
    let work = elf.symbol("work").unwrap();
    assert!(work.value > 0x400000);
    assert!(elf
        .patchable_entries()
        .unwrap()
        .contains(&(work.value - 14)));
    let r = post(&exe).unwrap();
    assert!(r.merged >= 2 && r.skipped == 0, "{r:?}");
    assert!(Command::new(&exe).status().unwrap().success());
}

#[test]
fn not_livepatchable_without_the_flag() {
    let dir = TempDir::new("noflag");
    let lib = shared_lib(&dir, "libn.so", &[]);
    let elf = ElfFile::open(&lib).unwrap();
    let reason = elf.livepatchable().unwrap_err();
    assert_eq!(
        reason,
        "no __patchable_function_entries section (build with -fpatchable-function-entry=16,14)"
    );
    let e = post(&lib).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MissingSection);
    assert!(e
        .to_string()
        .starts_with(&format!("'{}': no __patch", lib.display())));
}

#[test]
fn clear_errors_for_non_targets() {
    let dir = TempDir::new("errs");
    let txt = dir.join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let e = ElfFile::open(&txt).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotElf);
    assert_eq!(
        e.to_string(),
        format!("'{}': not an ELF file", txt.display())
    );

    let missing = dir.join("missing.so");
    let e = ElfFile::open(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("cannot read"), "{e}");

    let mut elf32 = std::fs::read(interop("libgreet.so.0")).unwrap();
    elf32[4] = 1;
    let e = ElfFile::parse(Path::new("x32.so"), elf32).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().starts_with("'x32.so': 32-bit ELF file"),
        "{e}"
    );

    let mut arm = std::fs::read(interop("libgreet.so.0")).unwrap();
    arm[18] = 183;
    let e = ElfFile::parse(Path::new("arm.so"), arm).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("not x86-64"), "{e}");

    let head = std::fs::read(interop("libgreet.so.0")).unwrap()[..100].to_vec();
    let e = ElfFile::parse(Path::new("cut.so"), head).unwrap_err();
    assert_eq!(
        e.to_string(),
        "'cut.so': program header table lies outside the file (truncated?)"
    );
}

/// Every accessor on a parsed file; none may panic.
fn exercise(elf: &ElfFile) {
    let _ = elf.build_id();
    let _ = elf.soname();
    let _ = elf.symbols();
    let _ = elf.symbol("greet");
    let _ = elf.patchable_entries();
    let _ = elf.livepatchable();
    let _ = elf.section(".ulp");
    let _ = elf.vaddr_to_offset(0x118e);
}

#[test]
fn hostile_inputs_never_panic() {
    let real = std::fs::read(interop("libgreet.so.0")).unwrap();
    for n in (0..real.len()).filter(|n| *n < 4096 || n % 7 == 0) {
        if let Ok(elf) = ElfFile::parse(Path::new("prefix"), real[..n].to_vec()) {
            exercise(&elf);
        }
    }
    // Deterministic bit flips, concentrated on the headers and tables.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let regions = [
        (0usize, 64usize),
        (0x40, 0x270),
        (0x270, 0x800),
        (0x3000, real.len()),
    ];
    for i in 0..3000 {
        let mut d = real.clone();
        let (lo, hi) = regions[i % regions.len()];
        for _ in 0..(1 + next() % 4) {
            let at = lo + (next() as usize) % (hi - lo);
            d[at] ^= 1 << (next() % 8);
        }
        if let Ok(elf) = ElfFile::parse(Path::new("flipped"), d.clone()) {
            exercise(&elf);
            let _ = write::build_for_test(&elf);
        }
    }
    for garbage in [&b""[..], b"\x7fEL", b"\x7fELF", b"\x7fELF\x02\x01"] {
        assert!(ElfFile::parse(Path::new("g"), garbage.to_vec()).is_err());
    }
}

fn readelf_clean(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-a")
        .arg("-W")
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "readelf: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.to_lowercase().contains("warning"), "{stdout}");
    stdout
}

fn dlopen_ok(path: &Path) {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('loaded')")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dlopen {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replace_sections_adds_then_replaces() {
    let dir = TempDir::new("write");
    let lib = dir.join("libgreet.so.0");
    std::fs::copy(interop("libgreet.so.0"), &lib).unwrap();
    let orig = std::fs::read(&lib).unwrap();
    let drop = [".ulp", ".ulp.rev", ".ulp.comments"];
    replace_sections(&lib, &drop, &[(".ulp", b"first"), (".ulp.rev", b"rev")]).unwrap();
    let a = ElfFile::open(&lib).unwrap();
    assert_eq!(a.section(".ulp"), Some(&b"first"[..]));
    assert_eq!(a.section(".ulp.rev"), Some(&b"rev"[..]));
    // Everything that was there is still at its place.
    // (up to the old section name table, which is rebuilt at the end)
    let shstrtab = 0x3577;
    assert!(a.data()[64..shstrtab] == orig[64..shstrtab]);
    assert!(a.data()[..40] == orig[..40]);
    assert_eq!(a.symbol("greet_answer").unwrap().value, 0x118e);
    assert_eq!(a.patchable_entries().unwrap().len(), 5);
    let listing = readelf_clean(&lib);
    assert!(listing.contains(" .ulp "), "{listing}");
    dlopen_ok(&lib);

    replace_sections(
        &lib,
        &drop,
        &[(".ulp", b"second, longer"), (".ulp.comments", b"c\0")],
    )
    .unwrap();
    let b = ElfFile::open(&lib).unwrap();
    assert_eq!(b.section(".ulp"), Some(&b"second, longer"[..]));
    assert_eq!(b.section(".ulp.comments"), Some(&b"c\0"[..]));
    assert!(b.section(".ulp.rev").is_none());
    assert_eq!(
        b.sections()
            .iter()
            .filter(|s| s.name.starts_with(".ulp"))
            .count(),
        2
    );
    assert_eq!(b.sections().len(), a.sections().len());
    // The file does not grow with every re-pack.
    assert!(
        b.data().len() < a.data().len() + 64,
        "{} {}",
        b.data().len(),
        a.data().len()
    );
    readelf_clean(&lib);
    dlopen_ok(&lib);
}

#[test]
fn replace_sections_renumbers_after_a_dropped_middle_section() {
    // libpulp's packer puts .ulp* before .symtab: dropping them shifts
    // .symtab/.strtab/.shstrtab down, and links must follow.
    let dir = TempDir::new("renumber");
    let lib = dir.join("greet_livepatch1.so");
    std::fs::copy(interop("greet_livepatch1.so"), &lib).unwrap();
    let before = ElfFile::open(&lib).unwrap();
    let syms_before = before.symbols();
    replace_sections(
        &lib,
        &[".ulp", ".ulp.rev", ".ulp.comments"],
        &[(".ulp", b"x")],
    )
    .unwrap();
    let after = ElfFile::open(&lib).unwrap();
    assert_eq!(after.symbols(), syms_before);
    assert_eq!(after.section(".ulp"), Some(&b"x"[..]));
    assert!(after.section(".ulp.rev").is_none());
    readelf_clean(&lib);
    dlopen_ok(&lib);
}

#[test]
fn open_sections_reads_enough_for_dynamic_symbols() {
    let path = interop("libgreet.so.0");
    let full = ElfFile::open(&path).unwrap();
    let sparse = ElfFile::open_sections(&path, &[".dynsym", ".dynstr"]).unwrap();
    for name in ["greet", "greet_answer", "greet_word", "greet_calls"] {
        let want = full.dynamic_symbol(name).map(|s| (s.value, s.size));
        assert!(want.is_some(), "{name} is exported");
        assert_eq!(
            sparse.dynamic_symbol(name).map(|s| (s.value, s.size)),
            want,
            "{name}"
        );
    }
    // What was not asked for reads as zeros (here: the code).
    let text = sparse.section(".text").unwrap();
    assert!(text.iter().all(|&b| b == 0));
    // A file that is not an ELF is still an error, not a panic.
    let junk = std::env::temp_dir().join(format!("ulp-elf-junk-{}", std::process::id()));
    std::fs::write(
        &junk,
        b"not an ELF file at all, but long enough to have a header....",
    )
    .unwrap();
    assert!(ElfFile::open_sections(&junk, &[".dynsym"]).is_err());
    let _ = std::fs::remove_file(&junk);
}

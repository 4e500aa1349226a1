//! Packing, reading and dumping real containers: the libpulp interop
//! vectors (packed by libpulp's own packer) are the reference.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::container;
use crate::dump::dump_text;
use crate::format::{Metadata, RevertMetadata};
use crate::pack::{pack, PackErrorKind, PackOptions};

const INTEROP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/libpulp-interop"
);

fn interop(name: &str) -> PathBuf {
    Path::new(INTEROP).join(name)
}

use ulp_abi::hex::hex;

use ulp_fixtures::TempDir;

/// A temp dir laid out like libpulp's: the unpacked container under its
/// packed name, the .dsc and the target.
fn greet_dir(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::copy(
        interop("greet_livepatch1.unpacked.so"),
        d.join("greet_livepatch1.so"),
    )
    .unwrap();
    std::fs::copy(
        interop("greet_livepatch1.dsc"),
        d.join("greet_livepatch1.dsc"),
    )
    .unwrap();
    std::fs::copy(interop("libgreet.so.0"), d.join("libgreet.so.0")).unwrap();
    d
}

fn sections(path: &Path) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let elf = ulp_elf::ElfFile::open(path).unwrap();
    (
        elf.section(".ulp").unwrap().to_vec(),
        elf.section(".ulp.rev").unwrap().to_vec(),
        elf.section(".ulp.comments").map(<[u8]>::to_vec),
    )
}

fn readelf_clean(path: &Path) {
    let out = Command::new("readelf")
        .args(["-a", "-W"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "readelf: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout)
        .to_lowercase()
        .contains("warning"));
    let s = Command::new("readelf")
        .arg("-S")
        .arg(path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&s.stdout).contains(".ulp"));
}

/// dlopen through a tiny C program (RTLD_NOW: every symbol must resolve).
fn dlopen_ok(dir: &TempDir, lib: &Path) {
    let src = dir.join("dlopen.c");
    std::fs::write(
        &src,
        "#include <dlfcn.h>\n#include <stdio.h>\n\
         int main(int c, char **v) { void *h = dlopen(v[1], RTLD_NOW);\n\
         if (!h) { fprintf(stderr, \"%s\\n\", dlerror()); return 1; }\n\
         return dlsym(h, \"new_greet\") ? 0 : 2; }\n",
    )
    .unwrap();
    let exe = dir.join("dlopen");
    let st = Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success());
    // The container references the target's TLS symbol through
    // __tls_get_addr only; load the target first like a real process.
    let out = Command::new(&exe)
        .arg(lib)
        .env("LD_PRELOAD", dir.join("libgreet.so.0"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dlopen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn packing_matches_libpulp_byte_for_byte() {
    let d = greet_dir("pack");
    let dsc = d.join("greet_livepatch1.dsc");
    let lp = d.join("greet_livepatch1.so");
    let report = pack(&dsc, &PackOptions::default()).unwrap();
    assert_eq!(report.container, lp);
    assert!(report.comments_written);
    assert_eq!(
        hex(&report.metadata.patch_id),
        "dcd71a9f2b145cf6aa5392ca4ee7e89c8cb16625b42a7d0d35314980294fb8e7"
    );
    let (ulp, rev, comments) = sections(&lp);
    assert_eq!(ulp, std::fs::read(interop("ulp.bin")).unwrap());
    assert_eq!(rev, std::fs::read(interop("ulp.rev.bin")).unwrap());
    assert_eq!(
        comments,
        Some(std::fs::read(interop("ulp.comments.bin")).unwrap())
    );
    readelf_clean(&lp);
    dlopen_ok(&d, &lp);

    // Re-packing the packed file replaces the sections, never duplicates.
    let size = std::fs::metadata(&lp).unwrap().len();
    pack(&dsc, &PackOptions::default()).unwrap();
    assert_eq!(sections(&lp), (ulp.clone(), rev.clone(), comments.clone()));
    assert_eq!(std::fs::metadata(&lp).unwrap().len(), size);
    let listing = Command::new("readelf").arg("-S").arg(&lp).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(listing.matches(" .ulp ").count(), 1, "{listing}");
    assert_eq!(listing.matches(" .ulp.rev ").count(), 1, "{listing}");
    readelf_clean(&lp);
    dlopen_ok(&d, &lp);

    // Re-packing libpulp's own output (sections in the middle) too.
    let theirs = d.join("theirs.so");
    std::fs::copy(interop("greet_livepatch1.so"), &theirs).unwrap();
    let opts = PackOptions {
        container_override: Some(theirs.clone()),
        target_override: None,
        ..Default::default()
    };
    let r = pack(&dsc, &opts).unwrap();
    assert_eq!(r.container, theirs);
    assert_eq!(sections(&theirs), (ulp, rev, comments));
    readelf_clean(&theirs);
}

#[test]
fn reading_libpulp_packed_container() {
    let c = container::read(&interop("greet_livepatch1.so")).unwrap();
    let m = &c.metadata;
    assert_eq!(
        m,
        &Metadata::decode(&std::fs::read(interop("ulp.bin")).unwrap()).unwrap()
    );
    assert_eq!(
        hex(&m.patch_id),
        "dcd71a9f2b145cf6aa5392ca4ee7e89c8cb16625b42a7d0d35314980294fb8e7"
    );
    assert_eq!(hex(&m.build_id), "0b12723e714c785b321e9af5c995dc14ca869484");
    assert_eq!(m.target_name, "libgreet.so.0");
    let units: Vec<(&str, &str, u64)> = m
        .units
        .iter()
        .map(|u| (u.old_fname.as_str(), u.new_fname.as_str(), u.old_faddr))
        .collect();
    assert_eq!(
        units,
        [
            ("greet_answer", "new_greet_answer", 0x118e),
            ("greet_word", "new_greet_word", 0x11ae),
            ("greet", "new_greet", 0x11ce)
        ]
    );
    let refs: Vec<(&str, &str, u64, u64, bool)> = m
        .refs
        .iter()
        .map(|r| {
            (
                r.target_name.as_str(),
                r.patch_name.as_str(),
                r.target_offset,
                r.patch_offset,
                r.tls,
            )
        })
        .collect();
    assert_eq!(
        refs,
        [
            (
                "greet_thread_count",
                "ulpr_greet_thread_count",
                0,
                0x4030,
                true
            ),
            ("greet_count", "ulpr_greet_count", 0x404c, 0x4040, false)
        ]
    );
    assert_eq!(c.revert, Some(m.revert()));
    assert_eq!(
        c.revert,
        Some(RevertMetadata::decode(&std::fs::read(interop("ulp.rev.bin")).unwrap()).unwrap())
    );
    assert_eq!(c.bug_labels(), ["CVE-2099-0001", "bsc#1234567"]);
    assert_eq!(
        hex(c.build_id.as_deref().unwrap()),
        "dcd71a9f2b145cf6aa5392ca4ee7e89cdbb406e3"
    );
}

#[test]
fn container_read_errors() {
    let d = TempDir::new("read");
    let txt = d.join("notes.txt");
    std::fs::write(&txt, "not elf").unwrap();
    let e = container::read(&txt).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("'{}': not an ELF file", txt.display())
    );

    let unpacked = interop("greet_livepatch1.unpacked.so");
    let e = container::read(&unpacked).unwrap_err();
    assert_eq!(e.kind(), container::ErrorKind::NotPacked);
    assert_eq!(
        e.to_string(),
        format!(
            "'{}': no .ulp section: is it a live patch packed with `ulp packer`?",
            unpacked.display()
        )
    );

    let bad = d.join("bad.so");
    std::fs::copy(&unpacked, &bad).unwrap();
    crate::pack::write_sections(&bad, &[(".ulp", b"\x01short")]).unwrap();
    let e = container::read(&bad).unwrap_err();
    assert_eq!(e.kind(), container::ErrorKind::Corrupt);
    assert_eq!(
        e.to_string(),
        format!(
            "'{}': corrupt .ulp section: truncated patch id",
            bad.display()
        )
    );
}

#[test]
fn dump_layout() {
    let c = container::read(&interop("greet_livepatch1.so")).unwrap();
    let p = c.path.display();
    assert_eq!(
        dump_text(&c, false, false),
        format!(
            "patch id: dcd71a9f2b145cf6aa5392ca4ee7e89c8cb16625\n\
             so filename: {p}\n\
             \n\
             * build id: 0b12723e714c785b321e9af5c995dc14ca869484\n\
             * name: libgreet.so.0\n\
             * units: 3\n\
             \n\
             ** old_fname: greet_answer\n\
             ** new_fname: new_greet_answer\n\
             ** old_faddr: 0x118e\n\
             \n\
             ** old_fname: greet_word\n\
             ** new_fname: new_greet_word\n\
             ** old_faddr: 0x11ae\n\
             \n\
             ** old_fname: greet\n\
             ** new_fname: new_greet\n\
             ** old_faddr: 0x11ce\n\
             \n\
             static references: 2\n"
        )
    );
    assert_eq!(
        dump_text(&c, true, false),
        format!(
            "patch id: dcd71a9f2b145cf6aa5392ca4ee7e89c8cb16625\n\
             so filename: {p}\n\
             \n\
             * build id: 0b12723e714c785b321e9af5c995dc14ca869484\n\
             * name: libgreet.so.0\n"
        )
    );
    assert_eq!(
        dump_text(&c, false, true),
        "0b12723e714c785b321e9af5c995dc14ca869484\n"
    );
    let mut no_rev = c.clone();
    no_rev.revert = None;
    assert!(dump_text(&no_rev, true, false).ends_with("\n* no .ulp.rev section\n"));
}

/// Packs a .dsc with `text` in a greet dir; the error it gives.
fn pack_err(text: &str) -> (String, PackErrorKind) {
    let d = greet_dir("err");
    let dsc = d.join("t.dsc");
    std::fs::write(&dsc, text).unwrap();
    let lp = d.join("greet_livepatch1.so");
    let before = std::fs::read(&lp).unwrap();
    let e = pack(&dsc, &PackOptions::default()).expect_err(text);
    assert_eq!(
        std::fs::read(&lp).unwrap(),
        before,
        "nothing is written on error"
    );
    let shown = e
        .to_string()
        .replace(&d.path().display().to_string(), "DIR");
    (shown, e.kind())
}

#[test]
fn pack_errors_point_at_the_dsc_item() {
    let head = "greet_livepatch1.so\n@libgreet.so.0\n";
    #[rustfmt::skip]
    let table: &[(String, PackErrorKind, &str)] = &[
        (format!("{head}greet_answer:new_greet_answer\n  nope:new_greet\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:4:3: error: function 'nope' not found in the target 'DIR/libgreet.so.0' (neither in .symtab nor in .dynsym)"),
        (format!("{head}greet:new_nope\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:3:7: error: function 'new_nope' of the live patch 'DIR/greet_livepatch1.so' is not defined there"),
        (format!("{head}greet:ulpr_greet_count\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:3:7: error: 'ulpr_greet_count' in the live patch 'DIR/greet_livepatch1.so' is a data object"),
        (format!("{head}greet_count:new_greet\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:3:1: error: 'greet_count' in the target 'DIR/libgreet.so.0' is a data object"),
        ("missing.so\n@libgreet.so.0\n".to_string(), PackErrorKind::MissingFile,
         "DIR/t.dsc:1:1: error: cannot find the live patch 'missing.so' (looked in the current directory and in 'DIR')"),
        ("greet_livepatch1.so\n@ libnothere.so\n".to_string(), PackErrorKind::MissingFile,
         "DIR/t.dsc:2:3: error: cannot find the target 'libnothere.so' (looked in the current directory and in 'DIR')"),
        (format!("{head}@libgreet.so.0\n"), PackErrorKind::Description,
         "DIR/t.dsc:3:1: error: second target line: a .dsc names exactly one target (the first is at line 2, column 2)"),
        (format!("{head}#greet_count\n"), PackErrorKind::Description,
         "DIR/t.dsc:3:1: error: malformed reference with 1 field(s): expected `#TVAR:REF` or `#TVAR:REF:TOFF:POFF` (`#%` for thread-local)"),
        (format!("{head}#nope:ulpr_greet_count\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:3:2: error: variable 'nope' not found in the target 'DIR/libgreet.so.0' (neither in .symtab nor in .dynsym)"),
        (format!("{head}#greet_count:nope\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:3:14: error: variable 'nope' not found in the live patch 'DIR/greet_livepatch1.so'"),
        (format!("{head}#greet_thread_count:ulpr_greet_thread_count\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:3:2: error: 'greet_thread_count' in the target 'DIR/libgreet.so.0' is thread-local: write `#%greet_thread_count:ulpr_greet_thread_count`"),
        (format!("{head}#%greet_count:ulpr_greet_count\n"), PackErrorKind::Symbol,
         "DIR/t.dsc:3:3: error: 'greet_count' in the target 'DIR/libgreet.so.0' is not thread-local: write `#greet_count:ulpr_greet_count`"),
        ("greet_livepatch1.so\ngreet:new_greet\n".to_string(), PackErrorKind::Description,
         "'DIR/t.dsc': no target line: add `@/path/to/library.so` after the live patch line, or pass -t FILE"),
        ("greet_livepatch1.so\n@t.dsc\n".to_string(), PackErrorKind::Elf,
         "DIR/t.dsc:2:2: error: 'DIR/t.dsc': not an ELF file"),
    ];
    for (text, kind, want) in table {
        let (got, got_kind) = pack_err(text);
        assert_eq!(&got, want, "{text:?}");
        assert_eq!(got_kind, *kind, "{text:?}");
    }
}

#[test]
fn pack_error_for_non_utf8_dsc() {
    let d = greet_dir("utf8");
    let dsc = d.join("t.dsc");
    std::fs::write(&dsc, b"greet_livepatch1.so\n@lib\xffgreet\n").unwrap();
    let e = pack(&dsc, &PackOptions::default()).unwrap_err();
    assert_eq!(e.kind(), PackErrorKind::Description);
    assert_eq!(e.location().map(|(_, l, c)| (l, c)), Some((2, 5)));
    assert!(e.message().contains("UTF-8"));
}

#[test]
fn pack_with_overrides_offsets_and_no_comments() {
    let d = greet_dir("opts");
    let dsc = d.join("o.dsc");
    std::fs::write(
        &dsc,
        "ignored.so\n@ignored.so.0\ngreet_answer:new_greet_answer\n\
         #a:b:0x10:20\n#%c:d:0:8\n",
    )
    .unwrap();
    let lp = d.join("copy.so");
    std::fs::copy(interop("greet_livepatch1.unpacked.so"), &lp).unwrap();
    let opts = PackOptions {
        container_override: Some(lp.clone()),
        target_override: Some(d.join("libgreet.so.0")),
        ..Default::default()
    };
    let r = pack(&dsc, &opts).unwrap();
    assert!(!r.comments_written);
    let c = container::read(&lp).unwrap();
    assert_eq!(c.metadata, r.metadata);
    assert!(c.comments.is_none());
    assert_eq!(c.metadata.target_name, "libgreet.so.0");
    assert_eq!(c.metadata.units[0].old_faddr, 0x118e);
    // Reverse .dsc order, offsets as written, no symbol lookups.
    let refs: Vec<(&str, u64, u64, bool)> = c
        .metadata
        .refs
        .iter()
        .map(|r| {
            (
                r.target_name.as_str(),
                r.target_offset,
                r.patch_offset,
                r.tls,
            )
        })
        .collect();
    assert_eq!(refs, [("c", 0, 8, true), ("a", 0x10, 0x20, false)]);

    // Re-packing a container that had comments with a .dsc that has none
    // removes the old .ulp.comments.
    std::fs::copy(interop("greet_livepatch1.so"), &lp).unwrap();
    pack(&dsc, &opts).unwrap();
    assert!(container::read(&lp).unwrap().comments.is_none());
    readelf_clean(&lp);
}

#[test]
fn hostile_containers_and_descriptions_never_panic() {
    let packed = std::fs::read(interop("greet_livepatch1.so")).unwrap();
    for n in (0..packed.len()).filter(|n| *n < 2048 || n % 11 == 0) {
        if let Ok(elf) = ulp_elf::ElfFile::parse(Path::new("cut.so"), packed[..n].to_vec()) {
            if let Ok(c) = container::from_elf(&elf) {
                let _ = dump_text(&c, false, false);
                let _ = dump_text(&c, true, true);
            }
        }
    }
    // Flip bits inside the .ulp section itself.
    let elf = ulp_elf::ElfFile::parse(Path::new("p.so"), packed.clone()).unwrap();
    let ulp = elf.section(".ulp").unwrap();
    let at = packed.windows(ulp.len()).position(|w| w == ulp).unwrap();
    for i in 0..ulp.len() * 8 {
        let mut d = packed.clone();
        d[at + i / 8] ^= 1 << (i % 8);
        if let Ok(elf) = ulp_elf::ElfFile::parse(Path::new("f.so"), d) {
            if let Ok(c) = container::from_elf(&elf) {
                let _ = dump_text(&c, false, false);
            }
        }
    }
    let dsc = std::fs::read_to_string(interop("greet_livepatch1.dsc")).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..=dsc.len() {
        let _ = crate::dsc::parse(dsc.get(..n).unwrap_or(""));
    }
    let alphabet: Vec<char> = "!@#%:x0 \r\n\té".chars().collect();
    for _ in 0..5000 {
        let mut s = String::new();
        for _ in 0..(seed % 40) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        seed = seed.wrapping_add(1);
        let _ = crate::dsc::parse(&s);
    }
}

//! The command surface: usage errors, help, and the file-only commands
//! (post, livepatchable, packer, dump) on real ELF files.

mod common;

use common::*;

#[test]
fn usage_errors_exit_64() {
    let dir = TempDir::new("usage");
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["trigger", "--bogus", "x.so"][..],
        &["dump"][..],
        &["dump", "a", "b"][..],
        &["post", "-p", "1", "x"][..],
        &["trigger", "-p"][..],
        &["trigger", "-p", "1"][..],
    ] {
        let (code, out, err) = ulp(dir.path(), args);
        assert_eq!(code, 64, "ulp {args:?}: {out}{err}");
        assert!(
            err.starts_with("ulp: ") && err.contains("ulp --help"),
            "ulp {args:?}: {err}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn help_and_version() {
    let dir = TempDir::new("help");
    let (code, out, _) = ulp(dir.path(), &["--help"]);
    assert_eq!(code, 0);
    for c in [
        "trigger",
        "patches",
        "messages",
        "post",
        "livepatchable",
        "packer",
        "dump",
    ] {
        assert!(out.contains(c), "--help lists {c}");
        let (code, text, _) = ulp(dir.path(), &[c, "--help"]);
        assert_eq!(code, 0);
        assert!(text.starts_with(&format!("Usage: ulp {c}")), "{text}");
    }
    let (code, out, _) = ulp(dir.path(), &["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ulp "));
    // The protocols this ulp works with, for fleet tooling.
    let (code, out, _) = ulp(dir.path(), &["--version", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["protocol_version"], ulp_abi::PROTOCOL_VERSION);
    assert_eq!(v["oldest_protocol_read"], ulp_abi::OLDEST_PROTOCOL_READ);
}

#[test]
fn post_and_livepatchable() {
    let dir = TempDir::new("post");
    copy_files(&fixtures_dir(), dir.path(), &["libulpdemo.so.1"]);
    copy_files(
        &fixtures_dir().join("variant"),
        dir.path(),
        &["libulpdemo-nopad.so.1"],
    );
    let (code, out, _) = ulp(dir.path(), &["livepatchable", "libulpdemo.so.1"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "file 'libulpdemo.so.1' is livepatchable.\n")
    );
    let (code, out, _) = ulp(dir.path(), &["livepatchable", "libulpdemo-nopad.so.1"]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("file 'libulpdemo-nopad.so.1' is not livepatchable: "),
        "{out}"
    );
    let before = std::fs::read(dir.join("libulpdemo.so.1")).unwrap();
    let (code, out, err) = ulp(dir.path(), &["post", "libulpdemo.so.1"]);
    assert_eq!(code, 0, "{out}{err}");
    let after = std::fs::read(dir.join("libulpdemo.so.1")).unwrap();
    assert_eq!(before.len(), after.len());
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(!changed.is_empty(), "post changed nothing");
    assert!(
        changed
            .iter()
            .all(|&i| before[i] == 0x90 && after[i] == 0x66),
        "only 90 -> 66 at entries"
    );
    let (code, _, _) = ulp(dir.path(), &["post", "libulpdemo.so.1"]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read(dir.join("libulpdemo.so.1")).unwrap(),
        after,
        "post is idempotent"
    );
    let (code, _, err) = ulp(dir.path(), &["post", "missing.so"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.so"), "{err}");
}

/// Reads a section's bytes through readelf-free means: the library itself.
fn section(path: &std::path::Path, name: &str) -> Vec<u8> {
    ulp_elf::ElfFile::open(path)
        .unwrap()
        .section(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_vec()
}

#[test]
fn packer_reproduces_libpulp_bytes() {
    let dir = interop_unpacked("pack", "greet_livepatch1.so", &["greet_livepatch1.dsc"]);
    let (code, out, err) = ulp(dir.path(), &["packer", "greet_livepatch1.dsc"]);
    assert_eq!(code, 0, "{out}{err}");
    let packed = dir.join("greet_livepatch1.so");
    for (sec, file) in [
        (".ulp", "ulp.bin"),
        (".ulp.rev", "ulp.rev.bin"),
        (".ulp.comments", "ulp.comments.bin"),
    ] {
        assert_eq!(
            section(&packed, sec),
            std::fs::read(interop_dir().join(file)).unwrap(),
            "{sec}"
        );
    }
}

#[test]
fn packer_reports_dsc_errors_like_a_compiler_and_writes_nothing() {
    let dir = interop_unpacked("dscerr", "p.so", &[]);
    let before = std::fs::read(dir.join("p.so")).unwrap();
    std::fs::write(
        dir.join("bad.dsc"),
        "p.so\n@libgreet.so.0\ngreet_answer:new_greet_answer\nno_such_fn:new_greet\n",
    )
    .unwrap();
    let (code, _, err) = ulp(dir.path(), &["packer", "bad.dsc"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.dsc:4:1: error: "), "{err}");
    assert!(err.contains("no_such_fn"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("p.so")).unwrap(),
        before,
        "nothing written"
    );
}

#[test]
fn dump_of_a_libpulp_container() {
    let (code, out, err) = ulp(&interop_dir(), &["dump", "greet_livepatch1.so"]);
    assert_eq!(code, 0, "{err}");
    let expected = "\
patch id: dcd71a9f2b145cf6aa5392ca4ee7e89c8cb16625
so filename: greet_livepatch1.so

* build id: 0b12723e714c785b321e9af5c995dc14ca869484
* name: libgreet.so.0
* units: 3

** old_fname: greet_answer
** new_fname: new_greet_answer
** old_faddr: 0x118e

** old_fname: greet_word
** new_fname: new_greet_word
** old_faddr: 0x11ae

** old_fname: greet
** new_fname: new_greet
** old_faddr: 0x11ce

static references: 2
";
    assert_eq!(out, expected);
    let (code, out, _) = ulp(&interop_dir(), &["dump", "-b", "greet_livepatch1.so"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "0b12723e714c785b321e9af5c995dc14ca869484\n")
    );
    let (code, _, err) = ulp(&interop_dir(), &["dump", "greet_livepatch1.unpacked.so"]);
    assert_eq!(code, 1);
    assert!(err.contains("no .ulp section"), "{err}");
}

/// A usage error's words, exactly; the command word anywhere (libpulp's
/// rule); the forms an option and its value take.
#[test]
fn usage_error_texts_and_option_forms() {
    let dir = TempDir::new("usage-texts");
    for (args, msg) in [
        (&["--bogus"][..], "unknown option '--bogus'"),
        (&["dump", "-x"][..], "unknown option '-x'"),
        (&["trigger", "-p"][..], "option '-p' needs a value"),
        (
            &["trigger", "--timeout"][..],
            "option '--timeout' needs a value",
        ),
        (
            &["dump", "--json=1", "x"][..],
            "option '--json' takes no value",
        ),
        (
            &["post", "-p", "1", "x"][..],
            "'post' takes no option '--process'",
        ),
        (&["frobnicate"][..], "unknown command 'frobnicate'"),
        (&[][..], "no command given"),
        (&["--", "dump", "x"][..], "unknown command 'dump'"),
        (&["x", "dump", "y"][..], "'dump' takes one FILE, got 2"),
    ] {
        let (code, out, err) = ulp(dir.path(), args);
        assert_eq!(
            (code, out.as_str(), err),
            (
                64,
                "",
                format!("ulp: {msg}\nTry 'ulp --help' for more information.\n")
            ),
            "ulp {args:?}"
        );
    }
    let build_id = "0b12723e714c785b321e9af5c995dc14ca869484\n";
    for args in [
        &["-b", "greet_livepatch1.so", "dump"][..],
        &["dump", "-qb", "greet_livepatch1.so"][..],
        &["dump", "-b", "-b", "--", "greet_livepatch1.so"][..],
        &["--buildid", "dump", "greet_livepatch1.so"][..],
    ] {
        let (code, out, err) = ulp(&interop_dir(), args);
        assert_eq!((code, out.as_str()), (0, build_id), "ulp {args:?}: {err}");
    }
    // A value may begin with '-' (here not a process: an error of check,
    // not of the command line); the last of a repeated option counts.
    let (code, _, err) = ulp(dir.path(), &["check", "-p", "-q", "-p1", "x.so"]);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("'x.so'"), "{err}");
    // --version wins over the rest, --help over --version.
    let (code, out, _) = ulp(dir.path(), &["post", "-p", "1", "--version"]);
    assert_eq!(
        (code, out),
        (0, format!("ulp {}\n", env!("CARGO_PKG_VERSION")))
    );
    let (code, out, _) = ulp(dir.path(), &["-V", "dump", "--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Usage: ulp dump"), "{out}");
}

//! Live patching functions that have no patchable padding, by rewriting
//! their entry: the system's own libc.so.6 and libz.so.1 in a running
//! program, and every refusal of the entry rewrite, each leaving the
//! target untouched.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const LIBZ: &str = "/lib/x86_64-linux-gnu/libz.so.1";

/// A scratch directory with sys_prog, the runtime and the two system
/// library patches, packed against the system's files.
fn system_setup(tag: &str) -> TempDir {
    for lib in [LIBC, LIBZ] {
        assert!(
            Path::new(lib).exists(),
            "{lib} is missing: these tests patch the system's own libraries"
        );
    }
    let dir = TempDir::new(tag);
    copy_files(
        &fixtures_dir(),
        dir.path(),
        &["sys_prog", "sys_patch_libc.so", "sys_patch_libz.so"],
    );
    install_runtime(dir.path());
    std::fs::write(
        dir.join("libc.dsc"),
        format!("sys_patch_libc.so\n@{LIBC}\natoi:new_atoi\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("libz.dsc"),
        format!("sys_patch_libz.so\n@{LIBZ}\nzlibVersion:new_zlibVersion\n"),
    )
    .unwrap();
    for dsc in ["libc.dsc", "libz.dsc"] {
        let (code, out, err) = ulp(dir.path(), &["packer", dsc]);
        assert_eq!(code, 0, "packer {dsc}: {out}{err}");
    }
    dir
}

/// A scratch directory with the library without padding, its program,
/// the patch's functions and the runtime.
fn unpadded_setup(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    copy_files(
        &fixtures_dir(),
        dir.path(),
        &["unpadded_lib.so", "unpadded_prog", "unpadded_patch.so"],
    );
    install_runtime(dir.path());
    dir
}

/// unpadded_prog with the runtime preloaded.
fn start_unpadded(dir: &TempDir) -> Target {
    let mut cmd = Command::new(dir.join("unpadded_prog"));
    cmd.current_dir(dir.path())
        .env("LD_PRELOAD", dir.join("libpulp.so.0"));
    Target::spawn(cmd)
}

fn start_sys_prog(dir: &TempDir, preload: bool) -> Target {
    let mut cmd = Command::new(dir.join("sys_prog"));
    cmd.args(["-t", "4"]).current_dir(dir.path());
    if preload {
        cmd.env("LD_PRELOAD", dir.join("libpulp.so.0"));
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    Target::spawn(cmd)
}

fn trigger(dir: &TempDir, args: &[&str], what: &str) -> String {
    let mut all = vec!["trigger", "-r", "10"];
    all.extend_from_slice(args);
    let (code, out, err) = ulp(dir.path(), &all);
    assert_eq!(code, 0, "{what}: {out}{err}");
    assert!(
        !out.contains("SKIPPED") && !out.contains("ERROR"),
        "{what}: {out}"
    );
    out
}

/// The issue's acceptance: an unmodified program using the system's libc
/// and libz, four threads calling atoi and zlibVersion in a tight loop;
/// 100 apply/revert cycles of patches built against the system libraries,
/// every call returning the old or the new result. The libc patch calls
/// the original atoi through `__ulp_orig_atoi` (the trampoline).
#[test]
fn system_libc_and_libz_functions_are_patched_under_load() {
    let dir = system_setup("rewrite-system");
    let mut t = start_sys_prog(&dir, true);
    let pid = t.pid.to_string();
    let zver = t.ask("zver");
    assert_eq!(t.ask("atoi"), "41");
    let cycles: usize = std::env::var("ULP_REWRITE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let both = ["sys_patch_libc.so", "sys_patch_libz.so"];
    for i in 0..cycles {
        let mut args = vec!["-p", &pid];
        args.extend(both);
        trigger(&dir, &args, &format!("apply {i}"));
        assert_eq!(t.ask("atoi"), "1041", "cycle {i}");
        assert_eq!(t.ask("zver"), "ulp-patched", "cycle {i}");
        args.push("--revert");
        trigger(&dir, &args, &format!("revert {i}"));
        assert_eq!(t.ask("atoi"), "41", "cycle {i}");
        assert_eq!(t.ask("zver"), zver, "cycle {i}");
    }
    let stats = t.ask("stats");
    assert!(
        stats.ends_with(" bad=0"),
        "{stats}; first bad: {}",
        t.ask("first_bad")
    );
    assert!(t.alive());
    // Reverted means the library's own bytes again.
    settled(t.pid).unwrap();
}

/// The same in a program started without the runtime (--load-runtime),
/// and `ulp patches` and `check` see the patches under the libraries.
#[test]
fn a_plain_program_gets_system_library_patches() {
    let dir = system_setup("rewrite-plain");
    let mut t = start_sys_prog(&dir, false);
    let pid = t.pid.to_string();
    trigger(
        &dir,
        &[
            "-p",
            &pid,
            "--load-runtime",
            "--runtime",
            &dir.join("libpulp.so.0").to_string_lossy(),
            "sys_patch_libc.so",
            "sys_patch_libz.so",
        ],
        "apply",
    );
    assert_eq!(t.ask("atoi"), "1041");
    assert_eq!(t.ask("zver"), "ulp-patched");
    let (_, out, _) = ulp(dir.path(), &["patches", "-p", &pid]);
    assert!(
        out.contains("livepatch: sys_patch_libc.so")
            && out.contains("livepatch: sys_patch_libz.so"),
        "{out}"
    );
    for c in ["sys_patch_libc.so", "sys_patch_libz.so"] {
        let (code, out, err) = ulp(dir.path(), &["check", "-p", &pid, c]);
        assert_eq!(code, 1, "{c} applied: {out}{err}");
    }
    trigger(
        &dir,
        &[
            "-p",
            &pid,
            "--revert",
            "sys_patch_libc.so",
            "sys_patch_libz.so",
        ],
        "revert",
    );
    assert_eq!(t.ask("atoi"), "41");
    assert!(t.ask("stats").ends_with(" bad=0"));
}

/// A new function more than 2 GiB away from the function it replaces (the
/// container linked to load at 0x200000000000): the entry jumps to a far
/// stub in the runtime's page next to the library, which jumps on.
#[test]
fn a_far_new_function_is_reached_through_a_stub_next_to_the_library() {
    let dir = system_setup("rewrite-far");
    copy_files(&fixtures_dir(), dir.path(), &["sys_patch_libz_far.so"]);
    std::fs::write(
        dir.join("far.dsc"),
        format!("sys_patch_libz_far.so\n@{LIBZ}\nzlibVersion:new_zlibVersion\n"),
    )
    .unwrap();
    let (code, out, err) = ulp(dir.path(), &["packer", "far.dsc"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut t = start_sys_prog(&dir, true);
    let pid = t.pid.to_string();
    let zver = t.ask("zver");
    trigger(&dir, &["-p", &pid, "sys_patch_libz_far.so"], "apply far");
    assert_eq!(t.ask("zver"), "ulp-patched");
    // Where things are: the container and libz more than 2 GiB apart.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let start_of = |name: &str| {
        maps.lines()
            .find(|l| l.contains(name))
            .and_then(|l| l.split('-').next())
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .unwrap_or_else(|| panic!("{name} not mapped: {maps}"))
    };
    let distance = start_of("sys_patch_libz_far.so").abs_diff(start_of("libz.so"));
    assert!(
        distance > 1 << 32,
        "the container is {distance:#x} from libz"
    );
    trigger(
        &dir,
        &["-p", &pid, "--revert", "sys_patch_libz_far.so"],
        "revert far",
    );
    assert_eq!(t.ask("zver"), zver);
    assert!(t.ask("stats").ends_with(" bad=0"));
}

/// A static function of a library without padding: the runtime does not
/// see it in the dynamic symbol table in memory; its size comes from the
/// library file's `.symtab`, which ulp reads and passes along.
#[test]
fn a_static_function_is_rewritten_with_its_size_from_the_file() {
    let dir = unpadded_setup("rewrite-static");
    std::fs::write(
        dir.join("static.dsc"),
        "unpadded_patch.so\n@unpadded_lib.so\nup_static:new_up\n",
    )
    .unwrap();
    let (code, out, err) = ulp(dir.path(), &["packer", "static.dsc"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut t = start_unpadded(&dir);
    let pid = t.pid.to_string();
    assert_eq!(t.ask("static"), "7");
    trigger(&dir, &["-p", &pid, "unpadded_patch.so"], "apply");
    assert_eq!(t.ask("static"), "99");
    trigger(
        &dir,
        &["-p", &pid, "--revert", "unpadded_patch.so"],
        "revert",
    );
    assert_eq!(t.ask("static"), "7");
}

/// Every refusal of the entry rewrite: ERROR with the reason, and the
/// function (and the process) exactly as before.
#[test]
fn refused_entries_leave_the_target_untouched() {
    let dir = unpadded_setup("rewrite-refusals");
    let mut t = start_unpadded(&dir);
    let pid = t.pid.to_string();
    let before: Vec<String> = ["answer", "short", "loop", "call", "ifunc"]
        .iter()
        .map(|c| t.ask(c))
        .collect();
    assert_eq!(before, ["42", "0", "10", "43", "42"]);

    let cases = [
        ("up_short", "the redirect needs 5"),
        ("up_loop", "branch"),
        ("up_call", "call"),
        ("up_ifunc", "IFUNC"),
    ];
    for (function, says) in cases {
        let container = format!("{function}_patch.so");
        std::fs::copy(dir.join("unpadded_patch.so"), dir.join(&container)).unwrap();
        let dsc = format!("{function}.dsc");
        std::fs::write(
            dir.join(&dsc),
            format!("{container}\n@unpadded_lib.so\n{function}:new_up\n"),
        )
        .unwrap();
        let (code, out, err) = ulp(dir.path(), &["packer", &dsc]);
        assert_eq!(code, 0, "packer {dsc}: {out}{err}");
        let (code, out, err) = ulp(dir.path(), &["trigger", "-p", &pid, &container]);
        // libpulp's "Function is not livepatchable" (278), masked to 8 bits.
        assert_eq!(code, 22, "{function} must be refused: {out}{err}");
        assert!(
            out.contains("ERROR") && out.contains(function) && out.contains(says),
            "{function}: the reason says '{says}': {out}"
        );
        let now: Vec<String> = ["answer", "short", "loop", "call", "ifunc"]
            .iter()
            .map(|c| t.ask(c))
            .collect();
        assert_eq!(now, before, "{function}: the target changed");
    }

    // A function whose code another tool changed in memory: the bytes to
    // displace are not the library's, so ulp refuses to cover them.
    std::fs::write(
        dir.join("answer.dsc"),
        "answer_patch.so\n@unpadded_lib.so\nup_answer:new_up\n",
    )
    .unwrap();
    std::fs::copy(dir.join("unpadded_patch.so"), dir.join("answer_patch.so")).unwrap();
    let (code, out, err) = ulp(dir.path(), &["packer", "answer.dsc"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("hook"), "hooked");
    assert_eq!(t.ask("answer"), "43");
    let (code, out, err) = ulp(dir.path(), &["trigger", "-p", &pid, "answer_patch.so"]);
    // libpulp's `Error attaching to process` (258): exit 2.
    assert_eq!(code, 2, "a hooked function must be refused: {out}{err}");
    assert!(out.contains("differs from the file"), "{out}");
    assert_eq!(t.ask("answer"), "43", "the hook is left as it was");
    let (code, out, _) = ulp(dir.path(), &["check", "-p", &pid, "answer_patch.so"]);
    assert_eq!(code, 0, "the refused patch is not recorded: {out}");
}

/// The rewritable function of the same library, applied, stacked and
/// reverted out of order.
#[test]
fn an_unpadded_function_stacks_and_reverts_in_any_order() {
    let dir = unpadded_setup("rewrite-stack");
    // Two containers for up_answer: new_up (99), then new_up2 (100).
    for (name, new) in [("first", "new_up"), ("second", "new_up2")] {
        let container = format!("{name}.so");
        std::fs::copy(dir.join("unpadded_patch.so"), dir.join(&container)).unwrap();
        std::fs::write(
            dir.join(format!("{name}.dsc")),
            format!("{container}\n@unpadded_lib.so\nup_answer:{new}\n"),
        )
        .unwrap();
        let (code, out, err) = ulp(dir.path(), &["packer", &format!("{name}.dsc")]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let mut t = start_unpadded(&dir);
    let pid = t.pid.to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["trigger", "-p", &pid];
        all.extend_from_slice(args);
        let (code, out, err) = ulp(dir.path(), &all);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains("SUCCESS"), "{args:?}: {out}");
    };
    run(&["first.so"]);
    assert_eq!(t.ask("answer"), "99");
    run(&["second.so"]);
    assert_eq!(t.ask("answer"), "100");
    // The older one goes first: the newer stays in force.
    run(&["--revert", "first.so"]);
    assert_eq!(t.ask("answer"), "100");
    run(&["--revert", "second.so"]);
    assert_eq!(t.ask("answer"), "42");
    // And again, now that the entry's trampoline exists.
    run(&["first.so"]);
    assert_eq!(t.ask("answer"), "99");
    run(&["--revert-all=unpadded_lib.so"]);
    assert_eq!(t.ask("answer"), "42");
}

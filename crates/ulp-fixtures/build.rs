//! Compiles the C fixtures in /fixtures with gcc into OUT_DIR/fixtures.
//! Every test that needs a target library, program or live patch uses these
//! files (copied into its own temporary directory first).

use std::path::{Path, PathBuf};
use std::process::Command;

fn gcc(args: &[&str], out: &Path) {
    let status = Command::new("gcc")
        .args(args)
        .arg("-o")
        .arg(out)
        .status()
        .expect("running gcc (the fixtures need gcc on PATH)");
    assert!(status.success(), "gcc {args:?} -o {} failed", out.display());
}

/// The demo library's file; `libulpdemo.so.1` is its SONAME link.
const DEMO_FILE: &str = "libulpdemo.so.1.0.0";

/// Makes `dir/link` a symbolic link to `file` (in the same directory), as
/// a distribution's package installs a library's SONAME link.
fn soname_link(dir: &Path, file: &str, link: &str) {
    let at = dir.join(link);
    let _ = std::fs::remove_file(&at);
    std::os::unix::fs::symlink(file, &at)
        .unwrap_or_else(|e| panic!("linking {} -> {file}: {e}", at.display()));
}

fn main() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("fixtures");
    std::fs::create_dir_all(out.join("variant")).unwrap();
    println!("cargo:rerun-if-changed={}", src.display());
    let s = |name: &str| src.join(name).to_str().unwrap().to_string();
    let lib_flags = [
        "-O2",
        "-fPIC",
        "-shared",
        "-fno-inline",
        "-fpatchable-function-entry=16,14",
        "-Wl,--build-id",
        "-Wl,-soname,libulpdemo.so.1",
    ];
    // Installed as a distribution installs a library: the file
    // libulpdemo.so.1.0.0 and its SONAME link libulpdemo.so.1, which the
    // programs are linked against (their loader, and the runtime, name it
    // by the link; /proc/PID/maps shows the file).
    let lib = s("libulpdemo.c");
    let mut args: Vec<&str> = lib_flags.to_vec();
    args.push(&lib);
    gcc(&args, &out.join(DEMO_FILE));
    soname_link(&out, DEMO_FILE, "libulpdemo.so.1");
    args.push("-DDEMO_VARIANT=7");
    gcc(&args, &out.join("variant").join(DEMO_FILE));
    soname_link(&out.join("variant"), DEMO_FILE, "libulpdemo.so.1");
    // The same library without padding: not live-patchable.
    gcc(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-Wl,--build-id",
            "-Wl,-soname,libulpdemo.so.1",
            &lib,
        ],
        &out.join("variant/libulpdemo-nopad.so.1"),
    );
    // No padding, endbr64 entries: one function per answer of
    // `ulp livepatchable --functions` (crates/ulp/tests/livepatchable.rs).
    gcc(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-fcf-protection=full",
            "-Wl,--build-id",
            "-Wl,-soname,librewrite.so.1",
            &s("rewrite_lib.c"),
        ],
        &out.join("librewrite.so.1"),
    );
    let prog = s("demo_prog.c");
    let outdir = out.to_str().unwrap().to_string();
    let ldir = format!("-L{outdir}");
    gcc(
        &[
            "-O2",
            "-pthread",
            &prog,
            &ldir,
            "-l:libulpdemo.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("demo_prog"),
    );
    // crates/ulp/tests/got.rs: calls through the PLT, its GOT slot bound
    // at load (-z now) or at the first call (-z lazy).
    for (name, bind) in [
        ("got_prog_now", "-Wl,-z,now"),
        ("got_prog_lazy", "-Wl,-z,lazy"),
    ] {
        gcc(
            &[
                "-O2",
                &s("got_prog.c"),
                &ldir,
                "-l:libulpdemo.so.1",
                "-ldl",
                "-Wl,-rpath,$ORIGIN",
                bind,
            ],
            &out.join(name),
        );
    }
    // crates/ulp/tests/inject.rs: a program whose library's constructor
    // waits, so that its preloaded runtime is mapped and not yet started.
    gcc(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-Wl,--build-id",
            "-Wl,-soname,libslowinit.so.1",
            &s("slow_init_lib.c"),
        ],
        &out.join("libslowinit.so.1.0.0"),
    );
    soname_link(&out, "libslowinit.so.1.0.0", "libslowinit.so.1");
    gcc(
        &[
            "-O2",
            &s("slow_init_prog.c"),
            &ldir,
            "-l:libulpdemo.so.1",
            "-l:libslowinit.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("slow_init_prog"),
    );
    // Runs a program under PR_SET_MDWE (W^X locked, as systemd's
    // MemoryDenyWriteExecute=).
    gcc(&["-O2", &s("mdwe_exec.c")], &out.join("mdwe_exec"));
    // The target of crates/ulp/tests/trigger_options.rs (seccomp, vfork).
    gcc(
        &[
            "-O2",
            &s("options_prog.c"),
            &ldir,
            "-l:libulpdemo.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("options_prog"),
    );
    // The target of crates/ulp/tests/watch.rs and the watch bench: started
    // without the runtime, it waits for a live patch.
    gcc(
        &[
            "-O2",
            &s("watch_prog.c"),
            &ldir,
            "-l:libulpdemo.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("watch_prog"),
    );
    // The target of crates/ulp/tests/stress.rs and the library it opens
    // and closes over and over.
    gcc(
        &[
            "-O2",
            "-pthread",
            &s("stress_prog.c"),
            &ldir,
            "-l:libulpdemo.so.1",
            "-ldl",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("stress_prog"),
    );
    gcc(
        &["-O2", "-fPIC", "-shared", &s("stress_plugin.c")],
        &out.join("stress_plugin.so"),
    );
    // crates/ulp/tests/exits.rs: short-lived patchable processes and the
    // launcher that keeps them coming.
    gcc(
        &[
            "-O2",
            "-Wall",
            "-pthread",
            &s("exit_prog.c"),
            &ldir,
            "-l:libulpdemo.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("exit_prog"),
    );
    gcc(
        &["-O2", "-Wall", "-pthread", &s("exit_fleet.c")],
        &out.join("exit_fleet"),
    );
    // The target of crates/ulp/tests/syscalls.rs (threads blocked in
    // system calls, a signal receiver) and the parent that waits for it.
    gcc(
        &[
            "-O2",
            "-Wall",
            "-pthread",
            &s("syscall_prog.c"),
            &ldir,
            "-l:libulpdemo.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("syscall_prog"),
    );
    gcc(
        &["-O2", "-Wall", &s("parent_waiter.c")],
        &out.join("parent_waiter"),
    );
    // The target of crates/ulp/tests/threads_e2e.rs (registers checked in
    // inline asm; the ymm variant is chosen at run time, so no -mavx2).
    gcc(
        &[
            "-O2",
            "-Wall",
            "-pthread",
            &s("threads_prog.c"),
            &ldir,
            "-l:libulpdemo.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("threads_prog"),
    );
    // The target of crates/ulp/tests/rewrite.rs: the system's libc and
    // libz (by file name: no zlib headers needed), and patches for them.
    gcc(
        &["-O2", "-Wall", "-pthread", &s("sys_prog.c"), "-l:libz.so.1"],
        &out.join("sys_prog"),
    );
    // Started after patches were recorded in the store (tests/store_start.rs):
    // its own plugin directory is its RUNPATH.
    gcc(
        &[
            "-O2",
            "-Wall",
            &s("start_prog.c"),
            "-Wl,--enable-new-dtags,-rpath,$ORIGIN/plugins",
        ],
        &out.join("start_prog"),
    );
    // No padding: functions the entry rewrite must refuse (or take).
    gcc(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-Wl,--build-id",
            &s("unpadded_lib.c"),
        ],
        &out.join("unpadded_lib.so"),
    );
    gcc(
        &[
            "-O2",
            "-Wall",
            &s("unpadded_prog.c"),
            &format!("-L{}", out.display()),
            "-l:unpadded_lib.so",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("unpadded_prog"),
    );
    gcc(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-Wl,--build-id",
            &s("unpadded_patch.c"),
        ],
        &out.join("unpadded_patch.so"),
    );
    // The libz patch again, linked to load at 0x200000000000 (the loader
    // takes the address as a hint), far out of jmp rel32 reach of the
    // libraries: its entry rewrite goes through a far stub.
    gcc(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-Wl,--build-id",
            "-Wl,-Ttext-segment=0x200000000000",
            &s("sys_patch_libz.c"),
        ],
        &out.join("sys_patch_libz_far.so"),
    );
    for patch in ["sys_patch_libc", "sys_patch_libz"] {
        gcc(
            &[
                "-O2",
                "-fPIC",
                "-shared",
                "-Wl,--build-id",
                &s(&format!("{patch}.c")),
            ],
            &out.join(format!("{patch}.so")),
        );
    }
    for patch in [
        "demo_livepatch",
        "demo_livepatch2",
        "demo_livepatch3",
        "demo_livepatch4",
    ] {
        let c = s(&format!("{patch}.c"));
        gcc(
            &["-O2", "-fPIC", "-shared", "-Wl,--build-id", &c],
            &out.join(format!("{patch}.so")),
        );
    }
    // A patch dlopen refuses: its new function calls a symbol no object
    // defines (crates/ulp/tests/runtime_compat.rs).
    gcc(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-Wl,--build-id",
            "-Wl,--unresolved-symbols=ignore-all",
            &s("demo_livepatch_undef.c"),
        ],
        &out.join("demo_livepatch_undef.so"),
    );
    build_semantics(&src.join("semantics"), &out.join("semantics"));
    build_consistency(&src.join("consistency"), &out.join("consistency"));
}

/// Runs `tool` (gcc or g++) with `args` and `-o out`.
fn compile(tool: &str, args: &[&str], out: &Path) {
    let status = Command::new(tool)
        .args(args)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("running {tool} (the fixtures need it on PATH): {e}"));
    assert!(
        status.success(),
        "{tool} {args:?} -o {} failed",
        out.display()
    );
}

/// The fixtures of crates/ulp/tests/semantics.rs (fixtures/semantics), into
/// `out` (OUT_DIR/fixtures/semantics); `variant/` holds a libsem.so.1 with
/// another build-id. Targets are built with the padding and -fno-inline;
/// the tests run `ulp post` on their copies.
fn build_semantics(src: &Path, out: &Path) {
    std::fs::create_dir_all(out.join("variant")).unwrap();
    let s = |name: &str| src.join(name).to_str().unwrap().to_string();
    let o = |name: &str| out.join(name).to_str().unwrap().to_string();
    const PAD: &str = "-fpatchable-function-entry=16,14";
    const LIB: [&str; 6] = [
        "-O2",
        "-fPIC",
        "-shared",
        "-fno-inline",
        PAD,
        "-Wl,--build-id",
    ];
    const PATCH: [&str; 4] = ["-O2", "-fPIC", "-shared", "-Wl,--build-id"];

    // libsem.so.1: sem_nopad comes from an object compiled without padding.
    let nopad_o = o("libsem_nopad.o");
    compile(
        "gcc",
        &["-O2", "-fPIC", "-c", &s("libsem_nopad.c")],
        Path::new(&nopad_o),
    );
    // Installed as a distribution does: the file and its SONAME link.
    let libsem = s("libsem.c");
    let mut args = LIB.to_vec();
    args.extend(["-Wl,-soname,libsem.so.1", libsem.as_str(), nopad_o.as_str()]);
    compile("gcc", &args, &out.join("libsem.so.1.0.0"));
    soname_link(out, "libsem.so.1.0.0", "libsem.so.1");
    args.push("-DSEM_VARIANT=7");
    compile("gcc", &args, &out.join("variant/libsem.so.1.0.0"));
    soname_link(&out.join("variant"), "libsem.so.1.0.0", "libsem.so.1");

    // The program, as a PIE and as a non-PIE, itself patchable.
    let prog = s("sem_prog.c");
    let ldir = format!("-L{}", out.display());
    let common = [
        "-O2",
        "-fno-inline",
        PAD,
        "-pthread",
        "-Wl,--build-id",
        prog.as_str(),
        ldir.as_str(),
        "-l:libsem.so.1",
        "-ldl",
        "-Wl,-rpath,$ORIGIN",
    ];
    let mut pie = vec!["-fPIE", "-pie"];
    pie.extend(common);
    compile("gcc", &pie, &out.join("sem_prog"));
    let mut nopie = vec!["-fno-pie", "-no-pie"];
    nopie.extend(common);
    compile("gcc", &nopie, &out.join("sem_prog_nopie"));

    // libedge.so: endbr64 entries, no function alignment (for the padding
    // across a page, see libedge.c), -Bsymbolic; dlopen-ed after start.
    let edge = s("libedge.c");
    let mut args = LIB.to_vec();
    args.extend([
        "-fcf-protection=full",
        "-falign-functions=1",
        "-fno-toplevel-reorder",
        "-Wl,-Bsymbolic",
        "-Wl,-soname,libedge.so",
        edge.as_str(),
    ]);
    compile("gcc", &args, &out.join("libedge.so"));

    // C++: library, program, live patch.
    let cxx = s("libcxx.cpp");
    let mut args = LIB.to_vec();
    args.extend(["-Wl,-soname,libcxx.so.1", cxx.as_str()]);
    compile("g++", &args, &out.join("libcxx.so.1.0.0"));
    soname_link(out, "libcxx.so.1.0.0", "libcxx.so.1");
    let cxx_prog = s("cxx_prog.cpp");
    compile(
        "g++",
        &[
            "-O2",
            &cxx_prog,
            &ldir,
            "-l:libcxx.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
        &out.join("cxx_prog"),
    );
    let patch_cxx = s("patch_cxx.cpp");
    let mut args = PATCH.to_vec();
    args.push(&patch_cxx);
    compile("g++", &args, &out.join("patch_cxx.so"));

    // The C live patches.
    for name in [
        "patch_vars",
        "patch_tls",
        "patch_static",
        "patch_prog",
        "patch_multi",
    ] {
        let c = s(&format!("{name}.c"));
        let mut args = PATCH.to_vec();
        args.push(&c);
        compile("gcc", &args, &out.join(format!("{name}.so")));
    }
    let edge_patch = s("patch_edge.c");
    let mut args = PATCH.to_vec();
    args.extend(["-fcf-protection=full", edge_patch.as_str()]);
    compile("gcc", &args, &out.join("patch_edge.so"));
    let stack = s("patch_stack.c");
    for value in ["11", "12", "13"] {
        let def = format!("-DVALUE={value}");
        let mut args = PATCH.to_vec();
        args.extend([def.as_str(), stack.as_str()]);
        compile("gcc", &args, &out.join(format!("patch_stack{value}.so")));
    }
}

/// The fixtures of crates/ulp/tests/consistency.rs (fixtures/consistency),
/// into `out` (OUT_DIR/fixtures/consistency): the libraries libcons and
/// libloop installed as a distribution does (file and SONAME link), padded
/// and built with -fno-inline like libulpdemo; the programs linked against
/// them (and one against the system's libc only); the live patches' code
/// (the tests pack the containers with `ulp packer`).
fn build_consistency(src: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let s = |name: &str| src.join(name).to_str().unwrap().to_string();
    const PATCH: [&str; 4] = ["-O2", "-fPIC", "-shared", "-Wl,--build-id"];
    for (file, soname, c) in [
        ("libcons.so.1.2.3", "libcons.so.1", "libcons.c"),
        ("libloop.so.1.0.0", "libloop.so.1", "libloop.c"),
        ("libmany.so.1.0.0", "libmany.so.1", "libmany.c"),
    ] {
        let c = s(c);
        let soname_flag = format!("-Wl,-soname,{soname}");
        compile(
            "gcc",
            &[
                "-O2",
                "-Wall",
                "-fPIC",
                "-shared",
                "-fno-inline",
                "-fpatchable-function-entry=16,14",
                "-Wl,--build-id",
                &soname_flag,
                &c,
            ],
            &out.join(file),
        );
        soname_link(out, file, soname);
    }
    let ldir = format!("-L{}", out.display());
    for (prog, lib) in [
        ("cons_load_prog", "-l:libcons.so.1"),
        ("cons_block_prog", "-l:libcons.so.1"),
        ("cons_one_prog", "-l:libcons.so.1"),
        ("loop_prog", "-l:libloop.so.1"),
        ("many_prog", "-l:libmany.so.1"),
    ] {
        let c = s(&format!("{prog}.c"));
        compile(
            "gcc",
            &[
                "-O2",
                "-Wall",
                "-pthread",
                &c,
                &ldir,
                lib,
                "-Wl,-rpath,$ORIGIN",
            ],
            &out.join(prog),
        );
    }
    let c = s("libc_block_prog.c");
    compile(
        "gcc",
        &["-O2", "-Wall", "-pthread", &c],
        &out.join("libc_block_prog"),
    );
    for patch in [
        "cons_patch_fg",
        "cons_patch_pair",
        "loop_patch",
        "many_patch",
    ] {
        let c = s(&format!("{patch}.c"));
        let mut args = PATCH.to_vec();
        args.push(&c);
        compile("gcc", &args, &out.join(format!("{patch}.so")));
    }
}

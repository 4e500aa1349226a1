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
    let lib = s("libulpdemo.c");
    let mut args: Vec<&str> = lib_flags.to_vec();
    args.push(&lib);
    gcc(&args, &out.join("libulpdemo.so.1"));
    args.push("-DDEMO_VARIANT=7");
    gcc(&args, &out.join("variant/libulpdemo.so.1"));
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
    for patch in ["demo_livepatch", "demo_livepatch2"] {
        let c = s(&format!("{patch}.c"));
        gcc(
            &["-O2", "-fPIC", "-shared", "-Wl,--build-id", &c],
            &out.join(format!("{patch}.so")),
        );
    }
}

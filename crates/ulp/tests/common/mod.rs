//! Shared set-up of the end-to-end tests: a scratch directory holding a
//! prepared copy of the fixtures, the runtime as `libpulp.so.0`, and the
//! real `ulp` binary to run.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use ulp_fixtures::{copy_files, fixtures_dir, interop_dir, Target, TempDir};

pub fn ulp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ulp")
}

/// Runs `ulp ARGS` in `dir`; returns status, stdout, stderr.
pub fn ulp(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new(ulp_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running ulp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The runtime cargo built next to the `ulp` binary, copied into `dir`
/// under its installed name.
pub fn install_runtime(dir: &Path) -> PathBuf {
    let built = Path::new(ulp_bin()).with_file_name("libpulp.so");
    assert!(
        built.exists(),
        "{} is missing: build the workspace first (cargo build --workspace), as `make test` does",
        built.display()
    );
    let to = dir.join("libpulp.so.0");
    std::fs::copy(&built, &to).expect("copying the runtime");
    to
}

/// A scratch directory with the demo library (posted), program, runtime and
/// the live patch packed from `demo_livepatch.dsc`.
pub struct Demo {
    pub dir: TempDir,
    pub runtime: PathBuf,
}

pub const DEMO_DSC: &str = "\
! Demo fix for CVE-2026-0001 (bsc#42).
demo_livepatch.so
@libulpdemo.so.1
demo_answer:new_demo_answer
demo_word:new_demo_word
";

pub const DEMO2_DSC: &str = "\
demo_livepatch2.so
@libulpdemo.so.1
demo_answer:newer_demo_answer
";

impl Demo {
    pub fn new(tag: &str) -> Demo {
        let dir = TempDir::new(tag);
        copy_files(
            &fixtures_dir(),
            dir.path(),
            &[
                "libulpdemo.so.1",
                "demo_prog",
                "demo_livepatch.so",
                "demo_livepatch2.so",
            ],
        );
        let runtime = install_runtime(dir.path());
        let (code, out, err) = ulp(dir.path(), &["post", "libulpdemo.so.1"]);
        assert_eq!(code, 0, "post failed: {out}{err}");
        std::fs::write(dir.join("demo_livepatch.dsc"), DEMO_DSC).unwrap();
        std::fs::write(dir.join("demo_livepatch2.dsc"), DEMO2_DSC).unwrap();
        for dsc in ["demo_livepatch.dsc", "demo_livepatch2.dsc"] {
            let (code, out, err) = ulp(dir.path(), &["packer", dsc]);
            assert_eq!(code, 0, "packer {dsc} failed: {out}{err}");
        }
        Demo { dir, runtime }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Starts demo_prog with the runtime preloaded and `args`.
    pub fn start(&self, args: &[&str]) -> Target {
        let mut cmd = Command::new(self.dir.join("demo_prog"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("LD_PRELOAD", &self.runtime);
        Target::spawn(cmd)
    }

    pub fn ulp(&self, args: &[&str]) -> (i32, String, String) {
        ulp(self.dir.path(), args)
    }
}

/// A scratch directory holding libpulp's interop target `libgreet.so.0`,
/// the `extra` files of the interop folder, and its live patch still
/// unpacked, under the name `container`.
pub fn interop_unpacked(tag: &str, container: &str, extra: &[&str]) -> TempDir {
    let dir = TempDir::new(tag);
    copy_files(&interop_dir(), dir.path(), &["libgreet.so.0"]);
    copy_files(&interop_dir(), dir.path(), extra);
    std::fs::copy(
        interop_dir().join("greet_livepatch1.unpacked.so"),
        dir.join(container),
    )
    .expect("copying the unpacked interop container");
    dir
}

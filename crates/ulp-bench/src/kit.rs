//! The benchmark kit: the C fixtures of `fixtures/bench/` (embedded in the
//! binary) compiled with gcc into a scratch directory, the target library
//! posted and the live patch packed with the `ulp` under test, and the
//! runtime installed there as `libpulp.so.0`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, Proc, Ran};

const SOURCES: &[(&str, &str)] = &[
    (
        "libbench.c",
        include_str!("../../../fixtures/bench/libbench.c"),
    ),
    (
        "bench_livepatch.c",
        include_str!("../../../fixtures/bench/bench_livepatch.c"),
    ),
    (
        "bench_switch.c",
        include_str!("../../../fixtures/bench/bench_switch.c"),
    ),
    (
        "bench_target.c",
        include_str!("../../../fixtures/bench/bench_target.c"),
    ),
    (
        "callcost.c",
        include_str!("../../../fixtures/bench/callcost.c"),
    ),
    (
        "mallocbench.c",
        include_str!("../../../fixtures/bench/mallocbench.c"),
    ),
    ("hello.c", include_str!("../../../fixtures/bench/hello.c")),
    ("empty.c", include_str!("../../../fixtures/bench/empty.c")),
    ("bare.c", include_str!("../../../fixtures/bench/bare.c")),
    (
        "loaderbench.c",
        include_str!("../../../fixtures/bench/loaderbench.c"),
    ),
    (
        "watchbench.c",
        include_str!("../../../fixtures/bench/watchbench.c"),
    ),
];

/// The name the fleet's copies of the target run under (its comm), so
/// `ulp trigger -p NAME` finds exactly them.
pub const FLEET_NAME: &str = "ulpb_fleet";
/// The program the watch measure starts (`ulp watch -p WATCH_NAME`: the
/// watch leaves every other process of the machine alone).
pub const WATCH_NAME: &str = "ulpb_watch";
/// An empty shared library, preloaded for the floor of the process start
/// measure (what preloading any library costs).
pub const EMPTY_LIB: &str = "libempty.so";
/// The barest library in two segments (code; data holding only the
/// dynamic section): the floor of a library that keeps code and writable
/// data apart, as the runtime does.
pub const BARE_LIB: &str = "libbare.so";
/// The barest library in one read-only segment (rust-lld's `-z
/// rodynamic`): the floor of any preloaded library. Built only where
/// rustc's own lld is found.
pub const ONE_SEGMENT_LIB: &str = "libonesegment.so";
/// The two-function live patch (bench_fn and bench_fn2, switched at once
/// by the runtime's switch plan), packed in the kit directory.
pub const SWITCH_PATCH: &str = "bench_switch.so";

const LIB_FLAGS: &[&str] = &[
    "-O2",
    "-fPIC",
    "-shared",
    "-fno-inline",
    "-Wl,--build-id",
    "-Wl,-soname,libbench.so.1",
];

/// How long any one tool run (gcc, ulp, valgrind) may take, fleet runs
/// excepted.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Kit {
    pub dir: PathBuf,
    pub ulp: PathBuf,
    /// `dir/libpulp.so.0`.
    pub runtime: PathBuf,
    /// The packed live patch, `dir/bench_livepatch.so`.
    pub patch: PathBuf,
    /// `ulp --version`, for the report.
    pub ulp_version: String,
    keep: bool,
}

impl Kit {
    /// Builds everything into a fresh `dir`.
    pub fn build(dir: &Path, ulp: &Path, runtime: &Path, keep: bool) -> Result<Kit, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("src"))
            .and_then(|_| std::fs::create_dir_all(dir.join("nopad")))
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (name, text) in SOURCES {
            std::fs::write(dir.join("src").join(name), text)
                .map_err(|e| format!("writing {name}: {e}"))?;
        }
        for (what, p) in [("ulp", ulp), ("runtime", runtime)] {
            if !p.exists() {
                return Err(format!(
                    "the {what} {} does not exist: run `cargo build --release --workspace` first (as `make bench` does), or pass --ulp/--runtime",
                    p.display()
                ));
            }
        }
        let installed = dir.join("libpulp.so.0");
        std::fs::copy(runtime, &installed)
            .map_err(|e| format!("copying {}: {e}", runtime.display()))?;
        let ulp_version = {
            let r = procs::run(Command::new(ulp).arg("--version"), TOOL_TIMEOUT, Some(dir))?;
            r.stdout.lines().next().unwrap_or("").trim().to_string()
        };
        let kit = Kit {
            dir: dir.to_path_buf(),
            ulp: ulp.to_path_buf(),
            runtime: installed,
            patch: dir.join("bench_livepatch.so"),
            ulp_version,
            keep,
        };
        let src = |n: &str| format!("src/{n}");
        let padded: Vec<&str> = [LIB_FLAGS, &["-fpatchable-function-entry=16,14"]].concat();
        kit.gcc(&padded, &src("libbench.c"), "libbench.so.1")?;
        kit.gcc(LIB_FLAGS, &src("libbench.c"), "nopad/libbench.so.1")?;
        let post = kit.ulp(&["post", "libbench.so.1"])?;
        if post.code != 0 {
            return Err(format!("ulp post libbench.so.1 failed: {}", post.both()));
        }
        kit.gcc(
            &["-O2", "-fPIC", "-shared", "-Wl,--build-id"],
            &src("bench_livepatch.c"),
            "bench_livepatch.so",
        )?;
        std::fs::write(
            dir.join("bench_livepatch.dsc"),
            "! The benchmark's live patch.\nbench_livepatch.so\n@libbench.so.1\nbench_fn:new_bench_fn\n",
        )
        .map_err(|e| format!("writing the .dsc: {e}"))?;
        let pack = kit.ulp(&["packer", "bench_livepatch.dsc"])?;
        if pack.code != 0 {
            return Err(format!("ulp packer failed: {}", pack.both()));
        }
        kit.gcc(
            &["-O2", "-fPIC", "-shared", "-Wl,--build-id"],
            &src("bench_switch.c"),
            SWITCH_PATCH,
        )?;
        std::fs::write(
            dir.join("bench_switch.dsc"),
            format!("! The benchmark's two-function live patch.\n{SWITCH_PATCH}\n@libbench.so.1\nbench_fn:switch_bench_fn\nbench_fn2:switch_bench_fn2\n"),
        )
        .map_err(|e| format!("writing the switch .dsc: {e}"))?;
        let pack = kit.ulp(&["packer", "bench_switch.dsc"])?;
        if pack.code != 0 {
            return Err(format!("ulp packer (bench_switch) failed: {}", pack.both()));
        }
        let with_lib = [
            "-O2",
            "-pthread",
            "-L.",
            "-l:libbench.so.1",
            "-ldl",
            "-Wl,-rpath,$ORIGIN",
        ];
        kit.gcc(&with_lib, &src("bench_target.c"), "bench_target")?;
        kit.gcc(&with_lib, &src("bench_target.c"), FLEET_NAME)?;
        kit.gcc(&with_lib, &src("callcost.c"), "callcost")?;
        kit.gcc(&with_lib, &src("watchbench.c"), WATCH_NAME)?;
        kit.gcc(
            &[
                "-O2",
                "-Lnopad",
                "-l:libbench.so.1",
                "-ldl",
                "-Wl,-rpath,$ORIGIN/nopad",
            ],
            &src("callcost.c"),
            "callcost_nopad",
        )?;
        kit.gcc(&["-O2", "-pthread"], &src("mallocbench.c"), "mallocbench")?;
        kit.gcc(&["-O2"], &src("hello.c"), "hello")?;
        kit.gcc(&["-O2", "-fPIC", "-shared"], &src("empty.c"), EMPTY_LIB)?;
        let bare = ["-O2", "-fPIC", "-shared", "-nostartfiles", "-Wl,-z,norelro"];
        kit.gcc(
            &[&bare[..], &["-Wl,-z,noseparate-code"]].concat(),
            &src("bare.c"),
            BARE_LIB,
        )?;
        let mut synced = vec![BARE_LIB];
        if let Some(lld) = rust_lld_dir() {
            let b = format!("-B{}", lld.display());
            let one = [
                b.as_str(),
                "-fuse-ld=lld",
                "-Wl,-z,rodynamic",
                "-Wl,--no-rosegment",
            ];
            // Without it the row is left out (preload.rs says so).
            if kit
                .gcc(
                    &[&bare[..], &one[..]].concat(),
                    &src("bare.c"),
                    ONE_SEGMENT_LIB,
                )
                .is_ok()
            {
                synced.push(ONE_SEGMENT_LIB);
            }
        }
        kit.gcc(
            &["-O2", "-pthread", "-ldl"],
            &src("loaderbench.c"),
            "loaderbench",
        )?;
        // Write the fresh files back now: a page cache page not yet
        // written counts as dirty in /proc/PID/smaps, which would make the
        // runtime's shared code look like private memory of each target.
        for name in [
            "libpulp.so.0",
            "libbench.so.1",
            "nopad/libbench.so.1",
            "bench_livepatch.so",
            SWITCH_PATCH,
            "bench_target",
            FLEET_NAME,
            WATCH_NAME,
            "callcost",
            "callcost_nopad",
            "mallocbench",
            "hello",
            EMPTY_LIB,
            "loaderbench",
        ]
        .into_iter()
        .chain(synced)
        {
            let p = dir.join(name);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("syncing {}: {e}", p.display()))?;
        }
        Ok(kit)
    }

    /// gcc SOURCE FLAGS -o OUT, in the kit directory (libraries after the
    /// source, so -l resolves its symbols).
    fn gcc(&self, flags: &[&str], source: &str, out: &str) -> Result<(), String> {
        let mut cmd = Command::new("gcc");
        cmd.current_dir(&self.dir)
            .arg(source)
            .args(flags)
            .arg("-o")
            .arg(out);
        let r = procs::run(&mut cmd, TOOL_TIMEOUT, Some(&self.dir))
            .map_err(|e| format!("{e} (the suite needs gcc on PATH)"))?;
        if r.code != 0 {
            return Err(format!("gcc {source} -o {out} failed: {}", r.both()));
        }
        Ok(())
    }

    /// Is `name` in the kit directory (an optional fixture was built)?
    pub fn has(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `ulp ARGS` in the kit directory, timed end to end.
    pub fn ulp(&self, args: &[&str]) -> Result<Ran, String> {
        self.ulp_for(args, TOOL_TIMEOUT)
    }

    pub fn ulp_for(&self, args: &[&str], timeout: Duration) -> Result<Ran, String> {
        let mut cmd = Command::new(&self.ulp);
        cmd.current_dir(&self.dir).args(args);
        procs::run(&mut cmd, timeout, Some(&self.dir))
    }

    /// `ulp trigger -p PID [--revert] bench_livepatch.so`, which must
    /// succeed.
    pub fn trigger(&self, pid: i32, revert: bool) -> Result<Ran, String> {
        self.trigger_with(pid, revert, &[])
    }

    /// [`Kit::trigger`] with more options (`-v`, `--redirect-got`).
    pub fn trigger_with(&self, pid: i32, revert: bool, more: &[&str]) -> Result<Ran, String> {
        self.trigger_file(pid, revert, more, "bench_livepatch.so")
    }

    /// [`Kit::trigger_with`] for another container of the kit directory
    /// (`file`, e.g. [`SWITCH_PATCH`]).
    pub fn trigger_file(
        &self,
        pid: i32,
        revert: bool,
        more: &[&str],
        file: &str,
    ) -> Result<Ran, String> {
        let p = pid.to_string();
        let mut args = vec!["trigger", "-p", &p, "--timeout", "10"];
        if revert {
            args.push("--revert");
        }
        args.extend_from_slice(more);
        args.push(file);
        let r = self.ulp(&args)?;
        if r.code != 0 || !r.stdout.contains("SUCCESS") {
            return Err(format!(
                "ulp {} exited {}: {}",
                args.join(" "),
                r.code,
                r.both().trim()
            ));
        }
        Ok(r)
    }

    /// A command for `program` in the kit directory, with the runtime
    /// preloaded or not (never inheriting the caller's LD_PRELOAD).
    pub fn command(&self, program: &str, preload: bool) -> Command {
        self.command_preloading(program, preload.then_some(self.runtime.as_path()))
    }

    /// A command for `program` in the kit directory with `lib` (or
    /// nothing) as its only LD_PRELOAD.
    pub fn command_preloading(&self, program: &str, lib: Option<&Path>) -> Command {
        let mut cmd = Command::new(self.path(program));
        cmd.current_dir(&self.dir).env_remove("LD_PRELOAD");
        if let Some(lib) = lib {
            cmd.env("LD_PRELOAD", lib);
        }
        cmd
    }

    /// Starts bench_target (or its fleet copy) with the runtime preloaded.
    pub fn start_target(&self, program: &str, args: &[&str]) -> Result<Proc, String> {
        let mut cmd = self.command(program, true);
        cmd.args(args);
        Proc::start(cmd, program != FLEET_NAME)
    }
}

impl Drop for Kit {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The directory of rustc's `ld.lld` for gcc (`-B DIR -fuse-ld=lld`), the
/// linker rustc itself uses on x86-64 Linux: `SYSROOT/lib/rustlib/HOST/bin/gcc-ld`.
fn rust_lld_dir() -> Option<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = |args: &[&str]| -> Option<String> {
        let o = Command::new(&rustc).args(args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let sysroot = out(&["--print", "sysroot"])?;
    let host = out(&["-vV"])?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))?;
    let dir = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host.trim())
        .join("bin/gcc-ld");
    dir.join("ld.lld").exists().then_some(dir)
}

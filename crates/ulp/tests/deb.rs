//! The Debian package (`make deb`, scripts/deb.sh): built from this test
//! run's debug binaries, lintian-clean, installed into a scratch root with
//! dpkg, the installed pair live-patches a process started with the
//! installed runtime preloaded, the installed ulp finds that runtime for
//! `--load-runtime` by itself, and purging removes every file.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Bound of every command this test runs (lintian is the slow one).
const LIMIT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[track_caller]
fn ok(cmd: Command, what: &str) -> String {
    let (code, out, err) = run_bounded(cmd, what, LIMIT);
    assert_eq!(code, 0, "{what} failed:\n{out}{err}");
    out
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// dpkg on the scratch root: its own database, no log on the host, and
/// every path installed (the host's dpkg.cfg.d may exclude docs).
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .arg("--log=/dev/null")
        .arg("--path-include=*");
    cmd
}

#[test]
fn debian_package_installs_a_working_ulp_and_purges_cleanly() {
    for tool in ["dpkg", "dpkg-deb", "strip", "readelf"] {
        if !have(tool) {
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }
    let start = Instant::now();
    let demo = Demo::new("deb");
    let out_dir = demo.dir.join("out");
    let build_dir = Path::new(ulp_bin()).parent().unwrap().to_path_buf();

    // Build the package from this run's binaries.
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/deb.sh"))
        .env("BUILD_DIR", &build_dir)
        .env("OUT_DIR", &out_dir);
    ok(cmd, "scripts/deb.sh");
    let mut arch = Command::new("dpkg");
    arch.arg("--print-architecture");
    let arch = ok(arch, "dpkg --print-architecture").trim().to_string();
    let deb = out_dir.join(format!("ulp_{}-1_{arch}.deb", env!("CARGO_PKG_VERSION")));
    assert!(deb.is_file(), "{} was not built", deb.display());

    // Exactly these files, owned by root.
    let mut list = Command::new("dpkg-deb");
    list.arg("-c").arg(&deb);
    let listing = ok(list, "dpkg-deb -c");
    let multiarch = "x86_64-linux-gnu";
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "root/root", "{line}");
        if !f[0].starts_with('d') {
            files.insert(f[5].trim_start_matches("./").to_string());
        }
    }
    let lib = format!("usr/lib/{multiarch}/libpulp.so.0");
    let want: BTreeSet<String> = [
        "usr/bin/ulp",
        lib.as_str(),
        "usr/share/man/man1/ulp.1.gz",
        "usr/share/bash-completion/completions/ulp",
        "usr/share/doc/ulp/README.md",
        "usr/share/doc/ulp/COMPAT.md",
        "usr/share/doc/ulp/copyright",
        "usr/share/doc/ulp/changelog.Debian.gz",
        "usr/share/lintian/overrides/ulp",
        "lib/systemd/system/ulp-watch.service",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, want, "{listing}");

    // Lintian: no errors, no warnings.
    if have("lintian") {
        let mut cmd = Command::new("lintian");
        cmd.arg(&deb);
        let (_, out, err) = run_bounded(cmd, "lintian", LIMIT);
        let bad: Vec<&str> = out
            .lines()
            .chain(err.lines())
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .collect();
        assert!(bad.is_empty(), "lintian:\n{out}{err}");
    } else {
        eprintln!("skipped lintian: not installed");
    }

    // Install into a scratch root with a database of its own. It is empty,
    // so the libc6/libgcc-s1 the package depends on are not "installed"
    // there: --force-depends (the host has them; that is what runs it).
    let root = demo.dir.join("root");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(root.join("var/lib/dpkg").join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let mut install = dpkg(&root);
    install.arg("--force-depends").arg("-i").arg(&deb);
    ok(install, "dpkg -i");
    for f in &want {
        assert!(root.join(f).is_file(), "{f} not installed");
    }

    let ulp = root.join("usr/bin/ulp");
    let runtime = root.join(&lib);
    let mut version = Command::new(&ulp);
    version.arg("--version");
    assert_eq!(
        ok(version, "installed ulp --version"),
        format!("ulp {}\n", env!("CARGO_PKG_VERSION"))
    );
    let installed = |args: &[&str]| {
        let mut cmd = Command::new(&ulp);
        cmd.args(args).current_dir(demo.dir.path());
        ok(cmd, &format!("installed ulp {args:?}"))
    };

    // A program started with the installed runtime preloaded is patched
    // by the installed ulp.
    let mut cmd = Command::new(demo.dir.join("demo_prog"));
    cmd.current_dir(demo.dir.path()).env("LD_PRELOAD", &runtime);
    let mut t = Target::spawn(cmd);
    assert_eq!(t.ask("answer"), "1");
    let pid = t.pid.to_string();
    let out = installed(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(out, success_report("demo_prog", &pid, "demo_livepatch.so"));
    assert_eq!(t.ask("answer"), "2");
    drop(t);

    // --load-runtime with no path finds the installed runtime, relative
    // to the installed ulp (../lib/<multiarch>).
    let mut plain = demo.start_plain(&[]);
    assert_eq!(plain.ask("answer"), "1");
    let pid = plain.pid.to_string();
    installed(&["trigger", "-p", &pid, "--load-runtime", "demo_livepatch.so"]);
    assert_eq!(plain.ask("answer"), "2");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let real = runtime.canonicalize().unwrap();
    assert!(
        maps.contains(&*real.to_string_lossy()),
        "{} not mapped:\n{maps}",
        real.display()
    );
    drop(plain);

    // Purge: every packaged file is gone.
    let mut purge = dpkg(&root);
    purge.args(["--purge", "ulp"]);
    ok(purge, "dpkg --purge");
    for f in &want {
        assert!(!root.join(f).exists(), "{f} left after purge");
    }
    eprintln!("deb test took {:?}", start.elapsed());
}

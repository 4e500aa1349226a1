//! Installation for real use: `scripts/install.sh` (what `make install`
//! runs) puts ulp, libpulp.so.0, the man page and the bash completion under
//! a prefix, and the installed pair live-patches a process started with
//! `LD_PRELOAD=<prefix>/lib/libpulp.so.0`, as README.md shows.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_script_installs_a_working_ulp_under_the_prefix() {
    let demo = Demo::new("install");
    let prefix = demo.dir.join("prefix");
    let build_dir = Path::new(ulp_bin()).parent().unwrap().to_path_buf();
    let (code, out, err) = run(Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("PREFIX", &prefix)
        .env("BUILD_DIR", &build_dir)
        .env_remove("DESTDIR"));
    assert_eq!(code, 0, "{out}{err}");
    let preload = prefix.join("lib/libpulp.so.0");
    assert!(
        out.contains(&format!("LD_PRELOAD={} COMMAND", preload.display())),
        "{out}"
    );
    let bin = prefix.join("bin/ulp");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&preload), 0o755);
    assert_eq!(mode(&prefix.join("share/man/man1/ulp.1")), 0o644);
    assert_eq!(
        mode(&prefix.join("share/bash-completion/completions/ulp")),
        0o644
    );
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(ulp_bin()).unwrap()
    );
    let (code, out, _) = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        (code, out),
        (0, format!("ulp {}\n", env!("CARGO_PKG_VERSION")))
    );

    // The README line: LD_PRELOAD=<prefix>/lib/libpulp.so.0 CMD, then the
    // installed ulp patches it.
    let mut cmd = Command::new(demo.dir.join("demo_prog"));
    cmd.current_dir(demo.dir.path()).env("LD_PRELOAD", &preload);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    let installed = |args: &[&str]| run(Command::new(&bin).args(args).current_dir(demo.dir.path()));
    let (code, out, err) = installed(&["patches", "-p", &pid]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  Livepatching status: enabled\n"), "{out}");
    let (code, out, err) = installed(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("answer"), "2");

    // DESTDIR stages under another root; a relative PREFIX is refused.
    let stage = demo.dir.join("stage");
    let (code, _, err) = run(Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("PREFIX", "/opt/ulp")
        .env("DESTDIR", &stage)
        .env("BUILD_DIR", &build_dir));
    assert_eq!(code, 0, "{err}");
    assert!(stage.join("opt/ulp/lib/libpulp.so.0").exists());
    let (code, _, err) = run(Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("PREFIX", "relative")
        .env("BUILD_DIR", &build_dir));
    assert_eq!(code, 64, "{err}");
}

#[test]
fn make_install_runs_the_install_script() {
    if run(Command::new("make").arg("--version")).0 != 0 {
        eprintln!("make is not installed: skipped");
        return;
    }
    let (code, out, err) = run(Command::new("make")
        .args(["-n", "install", "PREFIX=/opt/x"])
        .current_dir(repo()));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("PREFIX=\"/opt/x\"") && out.contains("scripts/install.sh"),
        "{out}"
    );
}

#[test]
fn man_page_is_valid_roff() {
    let page = std::fs::read_to_string(repo().join("docs/ulp.1")).unwrap();
    assert!(page.contains("\n.TH ULP 1 "), "a .TH header");
    for c in [
        "trigger",
        "patches",
        "check",
        "messages",
        "set_patchable",
        "post",
        "livepatchable",
        "packer",
        "dump",
        "extract",
        "watch",
        "LIBPULP_DISABLE_ON_PATH",
        "--json",
    ] {
        assert!(
            page.contains(&c.replace('-', "\\-")),
            "the man page documents {c}"
        );
    }
    if run(Command::new("groff").arg("--version")).0 != 0 {
        eprintln!("groff is not installed: rendering not checked");
        return;
    }
    let (code, out, err) = run(Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(repo().join("docs/ulp.1")));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", ""),
        "groff warnings"
    );
}

#[test]
fn bash_completion_completes_commands_options_and_words() {
    // What the install script writes: `ulp --bash-completion`.
    let dir = ulp_fixtures::TempDir::new("completion");
    let script = dir.path().join("ulp.bash");
    let out = Command::new(env!("CARGO_BIN_EXE_ulp"))
        .arg("--bash-completion")
        .output()
        .expect("running ulp --bash-completion");
    assert!(out.status.success());
    std::fs::write(&script, &out.stdout).unwrap();
    let complete = |words: &str| {
        let prog = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _ulp; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let (code, out, err) = run(Command::new("bash").args(["--norc", "-c", &prog]));
        assert_eq!(code, 0, "{err}");
        out.lines().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(complete("ulp pa"), ["patches", "packer"]);
    assert_eq!(complete("ulp se"), ["set_patchable"]);
    assert_eq!(complete("ulp -p 1 set_patchable e"), ["enable"]);
    assert_eq!(complete("ulp patches --only"), ["--only-livepatched"]);
    assert_eq!(complete("ulp patches --sto"), ["--stored", "--store"]);
    assert_eq!(complete("ulp trigger --pers"), ["--persist"]);
    assert_eq!(complete("ulp wa"), ["watch"]);
    assert_eq!(complete("ulp watch --po"), ["--poll"]);
    assert_eq!(
        complete("ulp extract -"),
        [
            "-o",
            "--output",
            "-h",
            "--help",
            "-v",
            "--verbose",
            "-q",
            "--quiet",
            "--json",
            "-V",
            "--version"
        ]
    );
    let (code, _, err) = run(Command::new("bash")
        .args(["--norc", "-c"])
        .arg(format!("source '{}' && complete -p ulp", script.display())));
    assert_eq!(code, 0, "{err}");
}

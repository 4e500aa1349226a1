//! Patches that stay (issue 18): a program started after `ulp trigger
//! --persist` gets the recorded patches from its preloaded runtime before
//! `main`, a library it loads later by `dlopen` gets them before `dlopen`
//! returns, and a record the runtime must not trust is refused with a
//! message while the program starts and runs normally. Each test names
//! its own store (`ULP_STORE` for the programs, `--store` for ulp).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
/// A `-p` pattern that matches no process: --persist only records.
const NOBODY: &str = "ulp-store-start-nobody";

struct Setup {
    dir: TempDir,
    store: PathBuf,
}

impl Setup {
    /// start_prog, the runtime, the libc patch and the unpadded library's
    /// patch packed; the library itself in `plugins/` (start_prog's
    /// RUNPATH) and, for loads by path, in the directory itself.
    fn new(tag: &str) -> Setup {
        let dir = TempDir::new(tag);
        copy_files(
            &fixtures_dir(),
            dir.path(),
            &[
                "start_prog",
                "sys_patch_libc.so",
                "unpadded_lib.so",
                "unpadded_patch.so",
            ],
        );
        std::fs::create_dir(dir.join("plugins")).unwrap();
        std::fs::copy(
            dir.join("unpadded_lib.so"),
            dir.join("plugins/unpadded_lib.so"),
        )
        .unwrap();
        install_runtime(dir.path());
        std::fs::write(
            dir.join("libc.dsc"),
            format!("sys_patch_libc.so\n@{LIBC}\natoi:new_atoi\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("up.dsc"),
            "unpadded_patch.so\n@unpadded_lib.so\nup_answer:new_up\n",
        )
        .unwrap();
        for dsc in ["libc.dsc", "up.dsc"] {
            let (code, out, err) = ulp(dir.path(), &["packer", dsc]);
            assert_eq!(code, 0, "packer {dsc}: {out}{err}");
        }
        let store = dir.join("store");
        Setup { dir, store }
    }

    fn ulp_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = ulp_bounded(self.dir.path(), args, Duration::from_secs(60));
        assert_eq!(code, 0, "ulp {args:?}: {out}{err}");
        out + &err
    }

    /// `ulp trigger [--revert] --persist` of `file`, touching no process.
    fn persist(&self, file: &str, revert: bool) {
        let s = self.store.to_str().unwrap();
        let mut args = vec!["trigger", "--persist", "--store", s, "-p", NOBODY];
        if revert {
            args.push("--revert");
        }
        args.push(file);
        let out = self.ulp_ok(&args);
        assert!(out.contains(s), "{out}");
    }

    /// start_prog with the runtime preloaded and `ULP_STORE` set to
    /// `store`.
    fn start(&self, store: &Path) -> Target {
        let mut cmd = Command::new(self.dir.join("start_prog"));
        cmd.current_dir(self.dir.path())
            .env("LD_PRELOAD", self.dir.join("libpulp.so.0"))
            .env("ULP_STORE", store);
        Target::spawn(cmd)
    }

    fn patches_json(&self, pid: i32) -> Value {
        let s = self.store.to_str().unwrap();
        let args = ["patches", "-p", &pid.to_string(), "--store", s, "--json"];
        let (code, out, err) = ulp_bounded(self.dir.path(), &args, Duration::from_secs(60));
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn messages(&self, pid: i32) -> String {
        self.ulp_ok(&["messages", "-p", &pid.to_string()])
    }
}

/// The first atoi result a start_prog announced: `ready PID atoi=N`.
fn first_atoi(t: &Target) -> String {
    t.ready_line()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("atoi="))
        .unwrap()
        .to_string()
}

/// The acceptance: a libc patch recorded with --persist is in a
/// program started afterwards from its very first call in `main`, shown by
/// `ulp patches` as applied at start; after `--revert --persist` a new
/// program has the old function again.
#[test]
fn a_program_started_after_persist_has_the_patch_from_its_first_call() {
    let s = Setup::new("store-start-libc");
    s.persist("sys_patch_libc.so", false);

    let mut t = s.start(&s.store);
    assert_eq!(first_atoi(&t), "1041", "{:?}", t.ready_line());
    assert_eq!(t.ask("atoi"), "atoi=1041");
    let v = s.patches_json(t.pid);
    let libc = v["processes"][0]["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["path"].as_str().unwrap().ends_with("libc.so.6"))
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(libc["patches"][0]["container"], "sys_patch_libc.so", "{v}");
    assert_eq!(libc["patches"][0]["applied_at_start"], true, "{v}");
    let text = s.ulp_ok(&["patches", "-p", &t.pid.to_string()]);
    assert!(
        text.contains("livepatch: sys_patch_libc.so loaded on")
            && text.contains("applied by its runtime from the patch store"),
        "{text}"
    );
    assert!(
        s.messages(t.pid).contains("applied by the runtime"),
        "{}",
        s.messages(t.pid)
    );

    // The tool reverts a patch the runtime applied like any other.
    s.ulp_ok(&[
        "trigger",
        "-p",
        &t.pid.to_string(),
        "--revert",
        "sys_patch_libc.so",
    ]);
    assert_eq!(t.ask("atoi"), "atoi=41");

    s.persist("sys_patch_libc.so", true);
    let u = s.start(&s.store);
    assert_eq!(first_atoi(&u), "41", "{:?}", u.ready_line());
    // Without a store at all, nothing is applied either.
    let w = s.start(&s.dir.join("no-such-store"));
    assert_eq!(first_atoi(&w), "41");
    t.send("quit\n");
}

/// A library loaded by `dlopen` after start (by a bare name found in the
/// program's RUNPATH, and by path) is patched when `dlopen` returns: the
/// first call through the handle is new. A record made after the program
/// started counts too (the store is read again when it changes).
#[test]
fn a_library_loaded_by_dlopen_has_its_stored_patch_when_dlopen_returns() {
    let s = Setup::new("store-start-dlopen");
    s.persist("unpadded_patch.so", false);
    let mut t = s.start(&s.store);
    assert_eq!(first_atoi(&t), "41");
    assert_eq!(t.ask("dlopen unpadded_lib.so up_answer"), "up_answer=99");
    let v = s.patches_json(t.pid);
    let lib = v["processes"][0]["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["path"]
                .as_str()
                .unwrap()
                .ends_with("plugins/unpadded_lib.so")
        })
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(lib["patches"][0]["applied_at_start"], true, "{v}");

    // Recorded while the program runs: its next load of the target has it.
    let mut u = s.start(&s.store);
    s.persist("sys_patch_libc.so", false);
    let path = s.dir.join("unpadded_lib.so");
    assert_eq!(
        u.ask(&format!("dlopen {} up_answer", path.display())),
        "up_answer=99"
    );
    // The libc patch came with that dlopen's look at the store: libc was
    // loaded already, unpatched, and the record is for it.
    assert_eq!(u.ask("atoi"), "atoi=1041");

    // With no store the interposed dlopen is a plain jump: the bare name
    // is found through the program's RUNPATH, unpatched.
    let mut w = s.start(&s.dir.join("no-such-store"));
    assert_eq!(w.ask("dlopen unpadded_lib.so up_answer"), "up_answer=42");
    assert_eq!(
        w.ask("dlopen no-such-library.so up_answer")
            .split(':')
            .next(),
        Some("dlopen failed")
    );
    for p in [&mut t, &mut u, &mut w] {
        p.send("quit\n");
    }
}

/// The acceptance: a corrupt or foreign-owned record is refused
/// with a clear message (in the runtime's log, and in `ulp patches`'s
/// unpatched list), the program starts and runs normally, and the
/// records that are fine still apply.
#[test]
fn untrusted_and_corrupt_records_are_refused_and_programs_start_normally() {
    let s = Setup::new("store-start-refused");
    s.persist("sys_patch_libc.so", false);
    s.persist("unpadded_patch.so", false);
    let records: Vec<PathBuf> = std::fs::read_dir(&s.store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let libc_record = records
        .iter()
        .find(|r| r.join("sys_patch_libc.so").exists())
        .unwrap()
        .clone();
    let up_record = records
        .iter()
        .find(|r| r.join("unpadded_patch.so").exists())
        .unwrap()
        .clone();
    // A corrupt record beside them: metadata that is not JSON.
    let junk = s.store.join("00ff");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("record.json"), "{ not json").unwrap();

    let root = id("-u") == "0";
    if root {
        // Foreign-owned: the libc record's container belongs to nobody.
        let c = libc_record.join("sys_patch_libc.so");
        std::os::unix::fs::chown(&c, Some(65534), None).unwrap();
    } else {
        // Not root: a container that no longer is one.
        std::fs::write(libc_record.join("sys_patch_libc.so"), b"not an ELF file").unwrap();
    }

    let mut t = s.start(&s.store);
    assert_eq!(first_atoi(&t), "41", "{:?}", t.ready_line());
    assert_eq!(t.ask("atoi"), "atoi=41");
    let log = s.messages(t.pid);
    let why = if root {
        "is owned by uid 65534"
    } else {
        "is not an ELF file"
    };
    assert!(
        log.lines()
            .any(|l| l.contains("stored patch") && l.contains("refused") && l.contains(why)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("00ff") && l.contains("refused") && l.contains("record.json")),
        "{log}"
    );
    // The good record still applies, at dlopen.
    assert_eq!(t.ask("dlopen unpadded_lib.so up_answer"), "up_answer=99");
    assert!(up_record.exists());

    // A record whose container copy was cut short is refused too, and
    // `ulp patches` gives the runtime's reason for the process.
    let c = libc_record.join("sys_patch_libc.so");
    if root {
        std::os::unix::fs::chown(&c, Some(0), None).unwrap();
    }
    let bytes = std::fs::read(s.dir.join("sys_patch_libc.so")).unwrap();
    std::fs::write(&c, &bytes[..bytes.len() / 2]).unwrap();
    let mut u = s.start(&s.store);
    assert_eq!(first_atoi(&u), "41");
    assert_eq!(u.ask("atoi"), "atoi=41");
    let text = s.ulp_ok(&[
        "patches",
        "-p",
        &u.pid.to_string(),
        "--store",
        s.store.to_str().unwrap(),
    ]);
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("(pid: {})", u.pid))
                && l.contains("libc.so.6")
                && l.contains("the stored patch is refused: its container copy")
                && l.contains("outside the file")),
        "{text}"
    );
    // A program without the runtime (what `ulp watch` would patch) is
    // listed with the same reason, not as one that merely lacks the
    // runtime.
    let mut cmd = Command::new(s.dir.join("start_prog"));
    cmd.current_dir(s.dir.path()).env_remove("LD_PRELOAD");
    let mut plain = Target::spawn(cmd);
    let text = s.ulp_ok(&["patches", "--store", s.store.to_str().unwrap()]);
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("(pid: {})", plain.pid))
                && l.contains("the stored patch is refused: its container copy")),
        "{text}"
    );
    for p in [&mut t, &mut u, &mut plain] {
        p.send("quit\n");
    }
}

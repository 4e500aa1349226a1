//! Who may patch what. A user other than root cannot patch root's process
//! and is told why; and ulp running as root refuses to load a container
//! (or pack a .dsc) that another user could change, naming the path, the
//! reason and the fix, unless given `--force`.
//!
//! These tests need root (to own the target, to switch to `nobody`, to
//! chown files); run as anyone else they only say so and pass.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_user_cannot_patch_roots_process_and_is_told_why() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let demo = Demo::new("perm-nobody");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            ulp_bin(),
            "trigger",
            "-p",
            &pid,
            "demo_livepatch.so",
        ])
        .current_dir(demo.dir.path())
        .output()
        .expect("running setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // libpulp's `Libpulp not found in target process` (263): exit 7.
    assert_eq!(out.status.code(), Some(7), "{stdout}{stderr}");
    let error = stdout
        .lines()
        .find(|l| l.contains("ERROR demo_livepatch.so: "))
        .unwrap_or_else(|| panic!("no ERROR line: {stdout}{stderr}"));
    assert!(
        error.contains("Permission denied")
            && error.contains("belongs to uid 0 and ulp runs as uid 65534")
            && error.contains("CAP_SYS_PTRACE"),
        "{error}"
    );
    assert!(stdout.ends_with(&summary(0, 0, 1)), "{stdout}");
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
    assert!(t.alive());
}

/// Applies `file` in the target: refused without --force (exit 1, one
/// ERROR line containing every piece of `why`, the target unchanged),
/// applied with it, then reverted (a revert is not checked).
fn refused_then_forced(demo: &Demo, t: &mut Target, file: &str, why: &[&str]) {
    let pid = t.pid.to_string();
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, file]);
    assert_eq!(code, 1, "{file}: {out}{err}");
    let head = format!(
        "  demo_prog (pid: {pid}): ERROR {file}: Unknown error: refusing '{file}' as root: "
    );
    assert!(out.starts_with(&head), "{file}: {out}");
    for w in why {
        assert!(out.contains(w), "{file}: no {w:?} in: {out}");
    }
    assert!(out.contains("--force"), "{out}");
    assert!(out.ends_with(&summary(0, 0, 1)), "{out}");
    assert_eq!(t.ask("answer"), "1", "{file}: the target was changed");
    let (_, patches, _) = demo.ulp(&["patches", "-p", &pid]);
    assert!(!patches.contains("livepatch: demo_livepatch"), "{patches}");

    let (code, out, err) = demo.ulp(&["trigger", "--force", "-p", &pid, file]);
    assert_eq!(code, 0, "{file} --force: {out}{err}");
    assert!(out.contains(&format!("SUCCESS {file}")), "{out}");
    assert_eq!(t.ask("answer"), "2");
    let (code, out, err) = demo.ulp(&["trigger", "--revert", "-p", &pid, file]);
    assert_eq!(code, 0, "{file} --revert: {out}{err}");
    assert_eq!(t.ask("answer"), "1");
}

#[test]
fn root_refuses_containers_other_users_could_change() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let demo = Demo::new("perm-trust");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let dir = demo.dir.path();
    let put = |sub: &str, dir_mode: u32, file_mode: u32| -> String {
        let d = dir.join(sub);
        std::fs::create_dir(&d).unwrap();
        let f = d.join("demo_livepatch.so");
        std::fs::copy(dir.join("demo_livepatch.so"), &f).unwrap();
        chmod(&f, file_mode);
        chmod(&d, dir_mode);
        format!("{sub}/demo_livepatch.so")
    };

    // A world-writable directory on the path.
    let open = put("open", 0o777, 0o644);
    let open_dir = dir.join("open").display().to_string();
    refused_then_forced(
        &demo,
        &mut t,
        &open,
        &[
            &format!("directory '{open_dir}' on its path (mode 0777) is writable by its group and by others"),
            &format!("`chmod go-w '{open_dir}'`"),
        ],
    );

    // A file owned by another user.
    let theirs = put("theirs", 0o755, 0o644);
    std::os::unix::fs::chown(dir.join(&theirs), Some(NOBODY), Some(NOBODY)).unwrap();
    refused_then_forced(
        &demo,
        &mut t,
        &theirs,
        &[
            "the file is owned by nobody (uid 65534)",
            &format!("`chown root '{theirs}'`"),
        ],
    );

    // A group-writable file.
    let group = put("group", 0o755, 0o664);
    refused_then_forced(
        &demo,
        &mut t,
        &group,
        &[
            "the file (mode 0664) is writable by its group",
            &format!("`chmod go-w '{group}'`"),
        ],
    );

    // Root's 0644 file in root's 0755 directory; the same in a sticky
    // world-writable directory like /tmp (others cannot replace root's
    // entries there): both accepted as they are.
    for (sub, mode) in [("safe", 0o755), ("sticky", 0o1777)] {
        let file = put(sub, mode, 0o644);
        let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, &file]);
        assert_eq!(code, 0, "{file}: {out}{err}");
        assert_eq!(
            out,
            format!(
                "  demo_prog (pid: {pid}): SUCCESS {file}\n{}",
                summary(1, 0, 0)
            )
        );
        assert_eq!(t.ask("answer"), "2");
        let (code, out, err) = demo.ulp(&["trigger", "--revert", "-p", &pid, &file]);
        assert_eq!(code, 0, "{file}: {out}{err}");
        assert_eq!(t.ask("answer"), "1");
    }

    // In the sticky directory, a link another user owns could be swapped
    // for one to their own file: refused, though it points at root's.
    let link = dir.join("sticky/link.so");
    std::os::unix::fs::symlink(dir.join("safe/demo_livepatch.so"), &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    refused_then_forced(
        &demo,
        &mut t,
        "sticky/link.so",
        &[&format!(
            "symbolic link '{}' on its path is owned by nobody (uid 65534)",
            link.display()
        )],
    );

    // --json carries the same refusal.
    let (code, out, _) = demo.ulp(&["trigger", "--json", "-p", &pid, &open]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v["processes"][0]["results"][0];
    assert_eq!(r["status"], "failed", "{out}");
    assert!(
        r["reason"].as_str().unwrap().contains("is writable by"),
        "{out}"
    );
    assert!(t.alive());
}

#[test]
fn root_packer_refuses_descriptions_and_containers_others_could_change() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let demo = Demo::new("perm-packer");
    let dir = demo.dir.path();
    let dsc = dir.join("demo_livepatch.dsc");

    // A group-writable .dsc.
    chmod(&dsc, 0o664);
    let (code, out, err) = demo.ulp(&["packer", "demo_livepatch.dsc"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("ulp: refusing 'demo_livepatch.dsc' as root: the file (mode 0664) is writable by its group")
            && err.contains("chmod go-w"),
        "{err}"
    );
    let (code, out, err) = demo.ulp(&["packer", "--force", "demo_livepatch.dsc"]);
    assert_eq!(code, 0, "{out}{err}");
    chmod(&dsc, 0o644);

    // A container owned by another user: reported at its .dsc line.
    let so = dir.join("demo_livepatch.so");
    let before = std::fs::read(&so).unwrap();
    std::os::unix::fs::chown(&so, Some(NOBODY), None).unwrap();
    let (code, out, err) = demo.ulp(&["packer", "demo_livepatch.dsc"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("demo_livepatch.dsc:2:1: error: refusing 'demo_livepatch.so' as root: the file is owned by nobody (uid 65534)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&so).unwrap(),
        before,
        "the container was written"
    );
    let (code, out, err) = demo.ulp(&["packer", "--force", "demo_livepatch.dsc"]);
    assert_eq!(code, 0, "{out}{err}");

    // Root's files pack as before.
    std::os::unix::fs::chown(&so, Some(0), None).unwrap();
    let (code, out, err) = demo.ulp(&["packer", "demo_livepatch.dsc"]);
    assert_eq!(code, 0, "{out}{err}");
}

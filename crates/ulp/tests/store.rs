//! The patch store (issue 18, first step): `ulp trigger --persist` records
//! each container it applies (a copy and its metadata) and removes the
//! records of what it reverts; `ulp patches --stored` lists them. Every
//! test names its own store (`--store` or `ULP_STORE`): none touches
//! /var/lib/ulp/patches.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);
/// A `-p` pattern that matches no process: nothing is patched.
const NOBODY: &str = "ulp-store-nobody";

/// Runs `ulp ARGS` in `dir`, with `ULP_STORE` set to `env` or unset.
fn ulp_store(dir: &Path, env: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(ulp_bin());
    cmd.args(args).current_dir(dir).env_remove("ULP_STORE");
    if let Some(e) = env {
        cmd.env("ULP_STORE", e);
    }
    run_bounded(cmd, &format!("ulp {args:?}"), LIMIT)
}

/// The record directories of a store (temporary entries included).
fn entries(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(store) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn record_json(store: &Path, id: &str) -> Value {
    let text = std::fs::read_to_string(store.join(id).join("record.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `ulp patches --stored --json`.
fn stored_json(dir: &Path, store: &Path) -> Value {
    let s = store.to_str().unwrap();
    let (code, out, err) = ulp_store(dir, None, &["patches", "--stored", "--store", s, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// A second library's container (`unpadded_patch.so`, for
/// `unpadded_lib.so`), packed in the demo's directory.
fn pack_other(demo: &Demo) {
    copy_files(
        &fixtures_dir(),
        demo.dir.path(),
        &["unpadded_lib.so", "unpadded_patch.so"],
    );
    std::fs::write(
        demo.dir.join("other.dsc"),
        "unpadded_patch.so\n@unpadded_lib.so\nup_answer:new_up\n",
    )
    .unwrap();
    demo.ulp_ok(&["packer", "other.dsc"]);
}

#[test]
fn persist_applies_records_and_revert_removes() {
    let demo = Demo::new("store-apply");
    let store = demo.dir.join("store");
    let s = store.to_str().unwrap();
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let dir = demo.dir.path();

    let (code, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--persist",
            "--store",
            s,
            "-p",
            &pid,
            "demo_livepatch.so",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{}ulp: Recorded in {s}: demo_livepatch.so\n",
            success_report("demo_prog", &pid, "demo_livepatch.so")
        )
    );
    assert_eq!(t.ask("answer"), "2");

    // One record: the container copied, its metadata right; the store
    // created 0755.
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    let ids = entries(&store);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let copy = store.join(id).join("demo_livepatch.so");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(demo.dir.join("demo_livepatch.so")).unwrap()
    );
    let m = record_json(&store, id);
    assert_eq!(m["patch_id"], id.as_str());
    assert_eq!(m["target"], "libulpdemo.so.1");
    assert_eq!(m["container"], "demo_livepatch.so");
    let cwd = std::fs::canonicalize(demo.dir.path()).unwrap();
    assert_eq!(
        m["original_path"],
        cwd.join("demo_livepatch.so").to_str().unwrap()
    );
    assert_eq!(m["ulp_version"], env!("CARGO_PKG_VERSION"));
    let build_id = demo.ulp_ok(&["dump", "-b", "demo_livepatch.so"]);
    assert_eq!(m["build_id"], build_id.trim(), "{m}");
    let at = m["recorded_at"].as_str().unwrap();
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "{at}"
    );

    // Applied again: already applied, the record replaced (still one).
    let (code, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--persist",
            "--store",
            s,
            "-p",
            &pid,
            "demo_livepatch.so",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with(&format!("ulp: Recorded in {s}: demo_livepatch.so\n")),
        "{out}"
    );
    assert_eq!(entries(&store), ids);

    // Reverted: the record goes.
    let (code, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--revert",
            "--persist",
            "--store",
            s,
            "-p",
            &pid,
            "demo_livepatch.so",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{}ulp: Removed from {s}: demo_livepatch.so\n",
            success_report("demo_prog", &pid, "demo_livepatch.so")
        )
    );
    assert_eq!(t.ask("answer"), "1");
    assert!(entries(&store).is_empty(), "{:?}", entries(&store));

    // Reverting again: nothing to remove, said on stderr; not a failure of
    // the store (the revert itself fails: not applied).
    let (_, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--revert",
            "--persist",
            "--store",
            s,
            "-p",
            &pid,
            "demo_livepatch.so",
        ],
    );
    assert!(
        err.contains(&format!("demo_livepatch.so has no record in {s}")),
        "{out}{err}"
    );
}

#[test]
fn records_without_a_target_process_lists_and_reverts_all_of_one_library() {
    let demo = Demo::new("store-list");
    pack_other(&demo);
    let store = demo.dir.join("store");
    let s = store.to_str().unwrap();
    let dir = demo.dir.path();

    let (code, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--persist",
            "--store",
            s,
            "-p",
            NOBODY,
            "demo_livepatch.so",
            "demo_livepatch2.so",
            "unpadded_patch.so",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{}ulp: Recorded in {s}: demo_livepatch.so\n\
             ulp: Recorded in {s}: demo_livepatch2.so\n\
             ulp: Recorded in {s}: unpadded_patch.so\n",
            summary(0, 0, 0)
        )
    );
    // The records survive the originals.
    for f in [
        "demo_livepatch.so",
        "demo_livepatch2.so",
        "unpadded_patch.so",
    ] {
        std::fs::remove_file(demo.dir.join(f)).unwrap();
    }

    let (code, out, err) = ulp_store(dir, None, &["patches", "--stored", "--store", s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("Stored patches in {s}:\n")),
        "{out}"
    );
    assert_eq!(
        out.matches("    target: libulpdemo.so.1 (build id: ")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("    target: unpadded_lib.so (build id: ")
            .count(),
        1,
        "{out}"
    );
    assert!(!out.contains("corrupt"), "{out}");

    let doc = stored_json(dir, &store);
    assert_eq!(doc["store"], s);
    let records = doc["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{doc}");
    for r in records {
        let path = PathBuf::from(r["path"].as_str().unwrap());
        assert!(path.starts_with(&store) && path.is_file(), "{r}");
        assert!(out.contains(&format!("  {}\n", path.display())), "{out}");
        assert!(r["recorded_at"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    assert_eq!(doc["corrupt"], serde_json::json!([]));

    // --revert-all=LIB --persist removes the records of LIB only (JSON
    // says which).
    let (code, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--revert-all=libulpdemo.so.1",
            "--persist",
            "--store",
            s,
            "-p",
            NOBODY,
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let removed = doc["stored"]["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 2, "{doc}");
    assert!(
        removed.iter().all(|r| r["target"] == "libulpdemo.so.1"),
        "{doc}"
    );
    assert_eq!(doc["stored"]["recorded"], serde_json::json!([]));
    assert_eq!(doc["stored"]["store"], s);
    let left = stored_json(dir, &store);
    let records = left["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{left}");
    assert_eq!(records[0]["target"], "unpadded_lib.so");

    // Without --persist, --json says `stored: null`.
    let (_, out, _) = ulp_store(
        dir,
        None,
        &["trigger", "-p", NOBODY, "--json", "--revert-all=x"],
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["stored"], Value::Null, "{doc}");
}

#[test]
fn a_file_that_fails_its_checks_is_not_recorded() {
    let demo = Demo::new("store-bad-file");
    let store = demo.dir.join("store");
    let s = store.to_str().unwrap();
    std::fs::write(demo.dir.join("junk.so"), b"not an ELF file").unwrap();
    let (code, out, err) = ulp_store(
        demo.dir.path(),
        None,
        &[
            "trigger",
            "--persist",
            "--store",
            s,
            "-p",
            NOBODY,
            "junk.so",
            "--json",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("junk.so not recorded in {s}")),
        "{err}"
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["stored"]["recorded"], serde_json::json!([]), "{doc}");
    assert!(
        doc["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["file"] == "junk.so"),
        "{doc}"
    );
    assert!(entries(&store).is_empty());
}

#[test]
fn an_untrusted_store_is_refused_before_any_process_is_touched() {
    if id("-u") != "0" {
        eprintln!("not root: the store is not checked, skipped");
        return;
    }
    let demo = Demo::new("store-trust");
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    let dir = demo.dir.path();
    let store = demo.dir.join("store");
    std::fs::create_dir(&store).unwrap();
    let s = store.to_str().unwrap();
    let trigger = [
        "trigger",
        "--persist",
        "--store",
        s,
        "-p",
        &pid,
        "demo_livepatch.so",
    ];

    // Owned by another user.
    std::os::unix::fs::chown(&store, Some(65534), None).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out, err) = ulp_store(dir, None, &trigger);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("refusing the patch store '{s}' as root"))
            && err.contains("chown root")
            && err.contains("--store DIR"),
        "{err}"
    );
    assert_eq!(out, "");
    assert_eq!(t.ask("answer"), "1", "nothing applied");
    assert!(entries(&store).is_empty());
    let (code, _, err) = ulp_store(dir, None, &["patches", "--stored", "--store", s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refusing the patch store"), "{err}");

    // Group-writable.
    std::os::unix::fs::chown(&store, Some(0), None).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o775)).unwrap();
    let (code, out, err) = ulp_store(dir, None, &trigger);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("writable by its group") && err.contains("chmod go-w"),
        "{err}"
    );
    assert_eq!(t.ask("answer"), "1", "nothing applied");
    assert!(entries(&store).is_empty());

    // A store still to be created under an untrusted directory.
    let (code, _, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--persist",
            "--store",
            &format!("{s}/sub"),
            "-p",
            &pid,
            "demo_livepatch.so",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refusing the patch store"), "{err}");
    assert_eq!(t.ask("answer"), "1", "nothing applied");

    // Fixed: accepted.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out, err) = ulp_store(dir, None, &trigger);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(entries(&store).len(), 1);

    // A record's file another user owns is listed as corrupt.
    let id = &entries(&store)[0];
    std::os::unix::fs::chown(store.join(id).join("record.json"), Some(65534), None).unwrap();
    let doc = stored_json(dir, &store);
    assert_eq!(doc["records"], serde_json::json!([]), "{doc}");
    assert!(
        doc["corrupt"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("untrusted"),
        "{doc}"
    );
}

#[test]
fn corrupt_records_are_listed_with_the_reason_and_temporaries_ignored() {
    let demo = Demo::new("store-corrupt");
    let store = demo.dir.join("store");
    let s = store.to_str().unwrap();
    let dir = demo.dir.path();
    let (code, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--persist",
            "--store",
            s,
            "-p",
            NOBODY,
            "demo_livepatch.so",
            "demo_livepatch2.so",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut ids = entries(&store);
    assert_eq!(ids.len(), 2);
    // ids[0] the record of demo_livepatch.so, ids[1] of demo_livepatch2.so.
    if record_json(&store, &ids[0])["container"] != "demo_livepatch.so" {
        ids.swap(0, 1);
    }
    // One record's metadata truncated, a garbage record, a record without
    // its container, a stray file, a leftover temporary (an interrupted
    // write): only the temporary is not reported.
    let meta = store.join(&ids[0]).join("record.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, &text[..text.len() / 2]).unwrap();
    std::fs::remove_file(store.join(&ids[1]).join("demo_livepatch2.so")).unwrap();
    std::fs::create_dir(store.join("garbage")).unwrap();
    std::fs::write(
        store.join("garbage").join("record.json"),
        b"\x00\xffgarbage",
    )
    .unwrap();
    std::fs::write(store.join("stray"), b"x").unwrap();
    let tmp = store.join(".tmp-new-1-2-3");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("record.json"), &text[..10]).unwrap();

    let (code, out, err) = ulp_store(dir, None, &["patches", "--stored", "--store", s]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("  corrupt: ").count(), 4, "{out}");
    assert!(
        out.contains(&format!(
            "  corrupt: {s}/{}: metadata is not valid JSON",
            ids[0]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  corrupt: {s}/{}: its container copy 'demo_livepatch2.so' is missing",
            ids[1]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  corrupt: {s}/garbage: metadata is not valid JSON"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("  corrupt: {s}/stray: not a record directory")),
        "{out}"
    );
    assert!(!out.contains(".tmp"), "{out}");

    let doc = stored_json(dir, &store);
    assert_eq!(doc["records"], serde_json::json!([]));
    let corrupt = doc["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 4, "{doc}");
    assert!(corrupt
        .iter()
        .all(|c| c["reason"].as_str().is_some_and(|r| !r.is_empty())));

    // Recording again repairs the record; the leftover stays ignored.
    let (code, out, err) = ulp_store(
        dir,
        None,
        &[
            "trigger",
            "--persist",
            "--store",
            s,
            "-p",
            NOBODY,
            "demo_livepatch.so",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let doc = stored_json(dir, &store);
    assert_eq!(doc["records"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["corrupt"].as_array().unwrap().len(), 3, "{doc}");
}

#[test]
fn store_option_environment_and_precedence() {
    let demo = Demo::new("store-where");
    let dir = demo.dir.path();
    let env_store = demo.dir.join("from-env");
    let opt_store = demo.dir.join("from-option");
    let o = opt_store.to_str().unwrap();

    // ULP_STORE when there is no --store.
    let (code, out, err) = ulp_store(
        dir,
        Some(&env_store),
        &["trigger", "--persist", "-p", NOBODY, "demo_livepatch.so"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ulp: Recorded in {}: ", env_store.display())),
        "{out}"
    );
    assert_eq!(entries(&env_store).len(), 1);
    let (code, out, _) = ulp_store(dir, Some(&env_store), &["patches", "--stored"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("Stored patches in {}:", env_store.display())),
        "{out}"
    );

    // --store wins over ULP_STORE.
    let (code, out, err) = ulp_store(
        dir,
        Some(&env_store),
        &[
            "trigger",
            "--persist",
            "--store",
            o,
            "-p",
            NOBODY,
            "demo_livepatch2.so",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(entries(&env_store).len(), 1);
    assert_eq!(entries(&opt_store).len(), 1);
    let (_, out, _) = ulp_store(
        dir,
        Some(&env_store),
        &["patches", "--stored", "--store", o],
    );
    assert!(out.starts_with(&format!("Stored patches in {o}:")), "{out}");

    // A store that does not exist is an empty list.
    let none = demo.dir.join("none");
    let (code, out, err) = ulp_store(dir, Some(&none), &["patches", "--stored"]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            format!("No stored patches in {}.\n", none.display()).as_str()
        ),
        "{err}"
    );

    // Usage: --store takes a directory, and for trigger goes with
    // --persist (`ulp patches --store DIR` lists processes, the store's
    // records counting in its unpatched list: tests/store_start.rs).
    for args in [
        &["trigger", "--store", o, "-p", NOBODY, "demo_livepatch.so"][..],
        &["trigger", "--persist", "--store", "", "demo_livepatch.so"][..],
        &["trigger", "--persist", "demo_livepatch.so", "--store"][..],
        &["patches", "--store", ""][..],
        &["patches", "--stored", "-p", "1"][..],
    ] {
        let (code, out, err) = ulp_store(dir, None, args);
        assert_eq!(code, 64, "{args:?}: {out}{err}");
    }
}

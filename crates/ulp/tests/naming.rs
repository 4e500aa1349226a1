//! A library installed the way distributions install one: the file
//! `libulpdemo.so.1.0.0`, the SONAME link `libulpdemo.so.1`, the program
//! linked against the link. `/proc/PID/maps` shows the file; the loader,
//! the runtime and every line ulp prints name the link, and every command
//! finds the library by that name (issue 12).

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The directory as the process's loader names it (`$ORIGIN` is the
/// resolved directory of the executable).
fn loader_dir(demo: &Demo) -> PathBuf {
    std::fs::canonicalize(demo.dir.path()).unwrap()
}

/// The test works on what it says: the maps show the file, not the link.
fn assert_maps_show_the_file(pid: i32, dir: &Path) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let file = format!("{}/libulpdemo.so.1.0.0\n", dir.display());
    assert!(maps.contains(&file), "{maps}");
    assert!(!maps.contains("/libulpdemo.so.1\n"), "{maps}");
}

#[test]
fn revert_all_patches_and_checks_by_the_soname_link() {
    let demo = Demo::new("naming-one");
    let lib = demo.dir.join("libulpdemo.so.1");
    assert_eq!(
        std::fs::read_link(&lib).unwrap(),
        Path::new("libulpdemo.so.1.0.0"),
        "ulp post kept the SONAME link a link"
    );
    let dir = loader_dir(&demo);
    let mut t = demo.start(&[]);
    let pid = t.pid.to_string();
    assert_maps_show_the_file(t.pid, &dir);

    let out = demo.ulp_ok(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(out, success_report("demo_prog", &pid, "demo_livepatch.so"));
    assert_eq!(t.ask("answer"), "2");

    // `patches` names the library as the program loaded it, as libpulp.
    let out = demo.ulp_ok(&["patches", "-p", &pid]);
    let block = format!(
        "  Livepatchable libraries:\n    in {}/libulpdemo.so.1:\n      livepatch: demo_livepatch.so loaded on ",
        dir.display()
    );
    assert!(out.contains(&block), "{out}");
    assert!(!out.contains("libulpdemo.so.1.0.0"), "{out}");
    let out = demo.ulp_ok(&["patches", "--json", "-p", &pid]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let libs = doc["processes"][0]["libraries"].as_array().unwrap();
    assert!(
        libs.iter().any(
            |l| l["path"] == format!("{}/libulpdemo.so.1", dir.display()).as_str()
                && l["patches"].as_array().unwrap().len() == 1
        ),
        "{out}"
    );

    // `check` finds it applied.
    let (code, out, err) = demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 1, "applied: {out}{err}");

    // By its SONAME: reverted (the bug: "library 'libulpdemo.so.1' is not
    // loaded", exit 0, nothing reverted).
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "--revert-all=libulpdemo.so.1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        success_report(
            "demo_prog",
            &pid,
            "reverted all patches from 'libulpdemo.so.1'"
        )
    );
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("word"), "old");
    let (code, _, _) = demo.ulp(&["check", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "not applied any more");

    // Nothing left of it: libpulp's words, a skip.
    let out = demo.ulp_ok(&["trigger", "-p", &pid, "--revert-all=libulpdemo.so.1"]);
    assert_eq!(
        out,
        format!(
            "  demo_prog (pid: {pid}): SKIPPED No patches installed\n{}",
            summary(0, 1, 0)
        )
    );

    // By its whole loader name: the same library.
    let whole = format!("{}/libulpdemo.so.1", dir.display());
    demo.ulp_ok(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    let out = demo.ulp_ok(&["trigger", "-p", &pid, &format!("--revert-all={whole}")]);
    assert!(
        out.contains(&format!("SUCCESS reverted all patches from '{whole}'")),
        "{out}"
    );
    assert_eq!(t.ask("answer"), "1");

    // The file's name is not a name the loader has for it (nor libpulp's
    // runtime): not loaded under that name, a skip.
    let out = demo.ulp_ok(&["trigger", "-p", &pid, "--revert-all=libulpdemo.so.1.0.0"]);
    assert!(out.contains(": SKIPPED "), "{out}");
    assert!(out.contains("not loaded"), "{out}");
    assert!(out.ends_with(&summary(0, 1, 0)), "{out}");

    // Nor for a patch made for it under that name: skipped from outside
    // (the runtime, which goes by the loader's names, would not find it),
    // though the maps show that very file.
    std::fs::copy(
        demo.dir.join("demo_livepatch.so"),
        demo.dir.join("by_file_name.so"),
    )
    .unwrap();
    let dsc = DEMO_DSC
        .replace("demo_livepatch.so", "by_file_name.so")
        .replace("@libulpdemo.so.1", "@libulpdemo.so.1.0.0");
    std::fs::write(demo.dir.join("by_file_name.dsc"), dsc).unwrap();
    demo.ulp_ok(&["packer", "by_file_name.dsc"]);
    let out = demo.ulp_ok(&["trigger", "-p", &pid, "by_file_name.so"]);
    assert!(
        out.contains(": SKIPPED ") && out.contains("'libulpdemo.so.1.0.0' is not loaded"),
        "{out}"
    );
    assert!(out.ends_with(&summary(0, 1, 0)), "{out}");
    assert_eq!(t.ask("answer"), "1", "nothing changed");
}

#[test]
fn patches_check_and_coverage_agree_on_the_soname_link() {
    let demo = Demo::new("naming-cover");
    let dir = loader_dir(&demo);
    let mut patched = demo.start(&[]);
    let mut unpatched = demo.start(&[]);
    let (p, u) = (patched.pid.to_string(), unpatched.pid.to_string());
    demo.ulp_ok(&["trigger", "-p", &p, "demo_livepatch.so"]);
    assert_eq!(patched.ask("answer"), "2");
    assert_eq!(unpatched.ask("answer"), "1");

    let (code, _, _) = demo.ulp(&["check", "-p", &p, "demo_livepatch.so"]);
    assert_eq!(code, 1);
    let (code, _, _) = demo.ulp(&["check", "-p", &u, "demo_livepatch.so"]);
    assert_eq!(code, 0);
    // The unpatched process is listed, under the loader's name, and the
    // patched one is not. (Coverage looks at every process: other tests'
    // patches may be listed too, so only this library's line is looked at.)
    let lib = format!("{}/libulpdemo.so.1", dir.display());
    let out = demo.ulp_ok(&["patches", "-p", &u]);
    assert!(
        out.contains("Unpatched processes (they map a library that is patched elsewhere):\n"),
        "{out}"
    );
    let line = unpatched_line(&out, &u, &lib).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("demo_livepatch.so"), "{out}");
    let out = demo.ulp_ok(&["patches", "-p", &p]);
    assert!(
        unpatched_line(&out, &p, &lib).is_none_or(|l| !l.contains("demo_livepatch.so")),
        "{out}"
    );

    // Applied there too: coverage and check agree it is everywhere.
    demo.ulp_ok(&["trigger", "-p", &u, "demo_livepatch.so"]);
    let (code, _, _) = demo.ulp(&["check", "-p", &u, "demo_livepatch.so"]);
    assert_eq!(code, 1);
    let (_, out, _) = demo.ulp(&["patches", "-p", &u]);
    assert!(
        unpatched_line(&out, &u, &lib).is_none_or(|l| !l.contains("demo_livepatch.so")),
        "{out}"
    );
}

/// The "Unpatched processes" line of `pid` for the library `lib`.
fn unpatched_line<'a>(out: &'a str, pid: &str, lib: &str) -> Option<&'a str> {
    let head = format!("  demo_prog (pid: {pid}): {lib}: ");
    out.lines().find(|l| l.starts_with(&head))
}

#[test]
fn revert_all_by_the_soname_link_in_every_process() {
    let demo = Demo::new("naming-all");
    let ns = PidNs::new();
    let dir = demo.dir.path();
    let prog = demo.dir.join("demo_prog");
    let (mut a, pid_a) = ns.start(dir, &prog, &demo.runtime);
    let (mut b, pid_b) = ns.start(dir, &prog, &demo.runtime);
    let mut pids = [pid_a.clone(), pid_b.clone()];
    pids.sort_by_key(|p| p.parse::<u32>().unwrap());

    // Nothing applied anywhere: a skip in each process, exit 0.
    let (code, out, err) = ns.ulp(dir, &["trigger", "--revert-all=libulpdemo.so.1"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut want = String::new();
    for pid in &pids {
        want.push_str(&format!(
            "  demo_prog (pid: {pid}): SKIPPED No patches installed\n"
        ));
    }
    want.push_str(&summary(0, 2, 0));
    assert_eq!(out, want);

    let (code, out, err) = ns.ulp(dir, &["trigger", "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with(&summary(2, 0, 0)), "{out}");
    for t in [&mut a, &mut b] {
        assert_eq!(t.ask("answer"), "2");
    }

    let (code, out, err) = ns.ulp(dir, &["trigger", "--revert-all=libulpdemo.so.1"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut want = String::new();
    for pid in &pids {
        want.push_str(&format!(
            "  demo_prog (pid: {pid}): SUCCESS reverted all patches from 'libulpdemo.so.1'\n"
        ));
    }
    want.push_str(&summary(2, 0, 0));
    assert_eq!(out, want);
    for t in [&mut a, &mut b] {
        assert_eq!(t.ask("answer"), "1");
        assert_eq!(t.ask("word"), "old");
    }
}

#[test]
fn post_through_the_soname_link_posts_the_file_and_keeps_the_link() {
    let dir = TempDir::new("naming-post");
    copy_files(&fixtures_dir(), dir.path(), &["libulpdemo.so.1"]);
    let link = dir.join("libulpdemo.so.1");
    let file = dir.join(ulp_fixtures::DEMO_LIB_FILE);
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new(ulp_fixtures::DEMO_LIB_FILE),
        "copied as installed"
    );
    let before = std::fs::read(&file).unwrap();
    let (code, out, err) = ulp(dir.path(), &["post", "libulpdemo.so.1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("ulp: 'libulpdemo.so.1': ")
            && out.contains(" entries merged, 0 already merged"),
        "{out}"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new(ulp_fixtures::DEMO_LIB_FILE)
    );
    let after = std::fs::read(&file).unwrap();
    assert_eq!(before.len(), after.len());
    assert_ne!(before, after, "the file the link leads to was posted");
    // The fixture itself is untouched (the copy is a copy).
    assert_eq!(
        std::fs::read(fixtures_dir().join(ulp_fixtures::DEMO_LIB_FILE)).unwrap(),
        before
    );
    // Posted through the link or the file: nothing more to merge.
    for name in ["libulpdemo.so.1", ulp_fixtures::DEMO_LIB_FILE] {
        let (code, out, _) = ulp(dir.path(), &["post", name]);
        assert_eq!(code, 0);
        assert!(out.contains(" 0 entries merged, "), "{out}");
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

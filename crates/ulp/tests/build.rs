//! `ulp build` end to end: a small C library (fixtures/build) built with a
//! generated compilation database, live patches built from diffs, applied
//! to a program calling it under load, reverted; and what it refuses.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

fn source_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/build")
}

fn sh(dir: &Path, cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of the fixture tree built as libbld.so.1.2.3 (SONAME link
/// libbld.so.1) with `flags`, its compile_commands.json (core.c with
/// `arguments` and a relative directory, stats.c with `command`), the
/// program and the runtime.
struct Tree {
    dir: TempDir,
    runtime: PathBuf,
}

impl Tree {
    fn new(tag: &str, flags: &[&str], post: bool) -> Tree {
        let dir = TempDir::new(tag);
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        for f in ["bld.h", "core.c", "stats.c"] {
            std::fs::copy(source_fixtures().join("src").join(f), src.join(f)).unwrap();
        }
        let mut core: Vec<&str> = vec!["gcc"];
        core.extend(flags);
        core.extend(["-c", "core.c", "-o", "core.o"]);
        let stats = format!("gcc {} -c stats.c -o stats.o", flags.join(" "));
        let db = serde_json_text(&core, &stats, &src);
        std::fs::write(dir.join("compile_commands.json"), db).unwrap();
        sh(&src, &core);
        let stats_words: Vec<&str> = stats.split(' ').collect();
        sh(&src, &stats_words);
        sh(
            dir.path(),
            &[
                "gcc",
                "-shared",
                "-Wl,--build-id",
                "-Wl,-soname,libbld.so.1",
                "-o",
                "libbld.so.1.2.3",
                "src/core.o",
                "src/stats.o",
            ],
        );
        std::os::unix::fs::symlink("libbld.so.1.2.3", dir.join("libbld.so.1")).unwrap();
        let prog = source_fixtures().join("prog.c");
        sh(
            dir.path(),
            &[
                "gcc",
                "-O2",
                "-pthread",
                "-Isrc",
                "-o",
                "prog",
                prog.to_str().unwrap(),
                "-L.",
                "-l:libbld.so.1",
                "-Wl,-rpath,$ORIGIN",
            ],
        );
        let runtime = install_runtime(dir.path());
        if post {
            let (code, out, err) = ulp(dir.path(), &["post", "libbld.so.1"]);
            assert_eq!(code, 0, "{out}{err}");
        }
        Tree { dir, runtime }
    }

    fn start(&self) -> Target {
        let mut cmd = Command::new(self.dir.join("prog"));
        cmd.current_dir(self.dir.path())
            .env("LD_PRELOAD", &self.runtime);
        Target::spawn(cmd)
    }

    /// `ulp build` of the fixture diff `patch` into OUT.so, run from
    /// another directory (`/`).
    fn build(&self, patch: &str, out: &str, extra: &[&str]) -> (i32, String, String) {
        let diff = source_fixtures().join(patch);
        self.build_with(diff.to_str().unwrap(), out, extra)
    }

    /// `ulp build` of the diff file `diff` into OUT.so, run from `/`.
    fn build_with(&self, diff: &str, out: &str, extra: &[&str]) -> (i32, String, String) {
        let db = self.dir.join("compile_commands.json");
        let target = self.dir.join("libbld.so.1");
        let output = self.dir.join(out);
        let mut args = vec![
            "build",
            "--compile-commands",
            db.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend(extra);
        args.push(diff);
        ulp(Path::new("/"), &args)
    }

    fn ulp_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = ulp(self.dir.path(), args);
        assert_eq!(code, 0, "ulp {args:?}:\n{out}{err}");
        out
    }
}

fn serde_json_text(core: &[&str], stats: &str, src: &Path) -> String {
    let quoted: Vec<String> = core.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[\n  {{\"directory\": \"src\", \"file\": \"core.c\", \"arguments\": [{}]}},\n  \
         {{\"directory\": {:?}, \"file\": \"stats.c\", \"command\": {:?}}}\n]\n",
        quoted.join(", "),
        src.display().to_string(),
        stats
    )
}

/// The program's answers: `scale 5`, `lookup 5`, and the counter.
fn answers(t: &mut Target) -> (i32, i32) {
    let s = t.ask("scale 5").parse().unwrap();
    let l = t.ask("lookup 5").parse().unwrap();
    (s, l)
}

/// `count`: bld_count() then bld_peek().
fn count(t: &mut Target) -> (i32, i32) {
    let line = t.ask("count");
    let mut w = line.split(' ').map(|x| x.parse::<i32>().unwrap());
    (w.next().unwrap(), w.next().unwrap())
}

fn no_wrong_results(t: &mut Target) {
    let line = t.ask("wrong");
    let (wrong, calls) = line.split_once(' ').unwrap();
    assert_eq!(wrong, "0", "wrong results under load: {line}");
    assert!(calls.parse::<u64>().unwrap() > 0);
}

fn apply_check_revert(tree: &Tree, flags_name: &str) {
    // Build all three first.
    for (patch, out) in [
        ("scale.patch", "fix_scale.so"),
        ("bounds.patch", "fix_bounds.so"),
        ("count.patch", "fix_count.so"),
    ] {
        let (code, stdout, err) = tree.build(
            patch,
            out,
            &["--description", "Fix (CVE-2026-4242, bsc#77)"],
        );
        assert_eq!(code, 0, "{flags_name}: build {patch}:\n{stdout}{err}");
        assert!(tree.dir.join(out.replace(".so", ".dsc")).exists());
    }
    let (_, out, _) = tree.build("scale.patch", "fix_scale.so", &[]);
    assert!(out.contains("replaced bld_scale: changed code"), "{out}");
    assert!(out.contains("replaced scale: changed code"), "{out}");
    let (_, out, _) = tree.build("bounds.patch", "fix_bounds.so", &[]);
    assert!(out.contains("replaced bld_lookup: changed code"), "{out}");
    assert!(
        out.contains("not replaced scale: line numbers only"),
        "{out}"
    );
    assert!(!out.contains("replaced in_range"), "{out}");

    let mut t = tree.start();
    let pid = t.pid.to_string();
    assert_eq!(answers(&mut t), (10, 55));
    // (a) an exported and a static function together.
    tree.ulp_ok(&["trigger", "-p", &pid, "fix_scale.so"]);
    assert_eq!(answers(&mut t), (16, 55));
    tree.ulp_ok(&["trigger", "-p", &pid, "--revert", "fix_scale.so"]);
    assert_eq!(answers(&mut t), (10, 55));
    // (b) a bounds check calling an unchanged static helper.
    tree.ulp_ok(&["trigger", "-p", &pid, "fix_bounds.so"]);
    assert_eq!(answers(&mut t), (10, -1));
    tree.ulp_ok(&["trigger", "-p", &pid, "--revert", "fix_bounds.so"]);
    assert_eq!(answers(&mut t), (10, 55));
    // (c) the running library's own counter, before, during and after.
    assert_eq!(count(&mut t), (1, 1));
    assert_eq!(count(&mut t), (2, 2));
    tree.ulp_ok(&["trigger", "-p", &pid, "fix_count.so"]);
    assert_eq!(count(&mut t), (4, 4));
    assert_eq!(count(&mut t), (6, 6));
    tree.ulp_ok(&["trigger", "-p", &pid, "--revert", "fix_count.so"]);
    assert_eq!(count(&mut t), (7, 7));
    // The labels of the description are the patch's.
    tree.ulp_ok(&["trigger", "-p", &pid, "fix_count.so"]);
    let listed = tree.ulp_ok(&["patches", "-p", &pid]);
    assert!(
        listed.contains("CVE-2026-4242") && listed.contains("bsc#77"),
        "{listed}"
    );
    no_wrong_results(&mut t);
}

#[test]
fn build_apply_revert_unpadded_library() {
    let tree = Tree::new("build-unpadded", &["-O2", "-fPIC"], false);
    apply_check_revert(&tree, "unpadded");
}

#[test]
fn build_apply_revert_padded_posted_library() {
    let tree = Tree::new(
        "build-padded",
        &["-O2", "-fPIC", "-fpatchable-function-entry=16,14"],
        true,
    );
    apply_check_revert(&tree, "padded");
}

#[test]
fn build_refuses_a_changed_initial_value_and_writes_nothing() {
    let tree = Tree::new("build-refuse", &["-O2", "-fPIC"], false);
    let (code, out, err) = tree.build("limit.patch", "fix_limit.so", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("variable 'limit'") && err.contains("initial value"),
        "{err}"
    );
    assert!(!tree.dir.join("fix_limit.so").exists());
    assert!(!tree.dir.join("fix_limit.dsc").exists());
    // JSON: the error as the document.
    let (code, out, _) = tree.build("limit.patch", "fix_limit.so", &["--json"]);
    assert_eq!(code, 1);
    assert!(out.contains("\"error\""), "{out}");
}

#[test]
fn build_refuses_flags_that_do_not_match_the_target() {
    // The library is built without padding, the database says with.
    let tree = Tree::new("build-flags", &["-O2", "-fPIC"], false);
    let db = tree.dir.join("compile_commands.json");
    let text = std::fs::read_to_string(&db).unwrap().replace(
        "\"-fPIC\"",
        "\"-fPIC\", \"-fpatchable-function-entry=16,14\"",
    );
    std::fs::write(&db, text).unwrap();
    let (code, out, err) = tree.build("scale.patch", "fix.so", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("does not match the target"), "{err}");
    assert!(err.contains("-fpatchable-function-entry"), "{err}");
    assert!(!tree.dir.join("fix.so").exists());
}

#[test]
fn build_usage_errors_and_bad_inputs_write_nothing() {
    let tree = Tree::new("build-usage", &["-O2", "-fPIC"], false);
    let d = tree.dir.path();
    // Missing options: 64.
    let (code, _, err) = ulp(d, &["build", "--target", "libbld.so.1", "x.patch"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--compile-commands"), "{err}");
    let (code, _, err) = ulp(
        d,
        &[
            "build",
            "--compile-commands",
            "compile_commands.json",
            "--target",
            "libbld.so.1",
            "--output",
            "f.so",
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("DIFF"), "{err}");
    let (code, _, err) = ulp(
        d,
        &[
            "build",
            "--compile-commands",
            "compile_commands.json",
            "--target",
            "libbld.so.1",
            "--output",
            "f.out",
            "a.patch",
        ],
    );
    assert_eq!(code, 64, "{err}");
    // An unreadable database: 1.
    let (code, _, err) = ulp(
        d,
        &[
            "build",
            "--compile-commands",
            "nope.json",
            "--target",
            "libbld.so.1",
            "--output",
            "f.so",
            "a.patch",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot read the compilation database 'nope.json'"),
        "{err}"
    );
    // A diff that does not apply: 1, naming the file and the hunk.
    let bad = d.join("bad.patch");
    std::fs::write(
        &bad,
        "--- a/src/core.c\n+++ b/src/core.c\n@@ -1,2 +1,2 @@\n-not there\n+x\n context\n",
    )
    .unwrap();
    let (code, _, err) = ulp(
        d,
        &[
            "build",
            "--compile-commands",
            "compile_commands.json",
            "--target",
            "libbld.so.1",
            "--output",
            "f.so",
            "bad.patch",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("hunk 1") && err.contains("'src/core.c'") && err.contains("does not apply"),
        "{err}"
    );
    assert!(!d.join("f.so").exists() && !d.join("f.dsc").exists());
    // The source tree is untouched by a build.
    let before = std::fs::read(d.join("src/core.c")).unwrap();
    let (code, out, err) = tree.build("scale.patch", "ok.so", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read(d.join("src/core.c")).unwrap(), before);
}

/// The issue's bound: a build takes at most 2.5 times one plain compile
/// of the touched files (measured here, printed for the record).
#[test]
fn build_time_against_a_plain_compile() {
    let tree = Tree::new("build-time", &["-O2", "-fPIC"], false);
    let src = tree.dir.join("src");
    let t = Instant::now();
    sh(
        &src,
        &["gcc", "-O2", "-fPIC", "-c", "core.c", "-o", "/dev/null"],
    );
    let plain = t.elapsed();
    let t = Instant::now();
    let (code, out, err) = tree.build("scale.patch", "fix.so", &[]);
    let built = t.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("plain compile {plain:?}, ulp build {built:?}");
}

#[test]
fn build_replaces_the_callers_of_an_inlined_function() {
    let tree = Tree::new("build-inline", &["-O2", "-fPIC"], false);
    let (code, out, err) = tree.build("inline.patch", "fix_inline.so", &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"function\": \"bld_next\""), "{out}");
    assert!(
        out.contains("\"reason\": \"inlines a changed function\""),
        "{out}"
    );
    let dsc = std::fs::read_to_string(tree.dir.join("fix_inline.dsc")).unwrap();
    assert!(dsc.contains("\nbld_next:__ulp_new_bld_next\n"), "{dsc}");
    let dump = tree.ulp_ok(&["dump", "fix_inline.so"]);
    assert!(dump.contains("old_fname: bld_next"), "{dump}");
}

/// The directory of the dev-dependency crate `name` of ulp-build (fetched
/// by cargo; only its C sources are used), from `cargo metadata`.
fn crate_dir(name: &str) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} in the workspace's dependencies"));
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap());
    manifest.parent().unwrap().to_path_buf()
}

/// zlib's source directory, from the crate `libz-sys`.
fn zlib_sources() -> PathBuf {
    crate_dir("libz-sys").join("src/zlib")
}

/// A unified diff of `name` from `old` to `new`, as `diff -u` writes it.
fn unified(dir: &Path, name: &str, old: &str, new: &str) -> PathBuf {
    let (a, b) = (
        dir.join(format!("{name}.old")),
        dir.join(format!("{name}.new")),
    );
    std::fs::write(&a, old).unwrap();
    std::fs::write(&b, new).unwrap();
    let out = Command::new("diff")
        .args([
            "-u",
            "--label",
            &format!("a/{name}"),
            "--label",
            &format!("b/{name}"),
        ])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "diff -u");
    let patch = dir.join(format!("{name}.patch"));
    std::fs::write(&patch, out.stdout).unwrap();
    patch
}

/// A real library built in `dir` (its sources in `dir/SUB`, a generated
/// compile_commands.json there, the library `dir/LIB` with its SONAME
/// link), its program and the runtime.
struct RealLib {
    dir: TempDir,
    tree: PathBuf,
    target: PathBuf,
    runtime: PathBuf,
    prog: PathBuf,
}

impl RealLib {
    /// Each of `sources` compiled with `flags` (in parallel), linked as
    /// `file` with SONAME `soname` (and `libs`), and `prog_c` built
    /// against it with `prog_flags`.
    #[allow(clippy::too_many_arguments)]
    fn build(
        dir: TempDir,
        sub: &str,
        sources: &[String],
        flags: &[&str],
        soname: &str,
        file: &str,
        libs: &[&str],
        prog_c: &str,
        prog_flags: &[&str],
    ) -> RealLib {
        let tree = dir.join(sub);
        let mut entries = Vec::new();
        let mut children = Vec::new();
        for s in sources {
            let obj = s.replace(".c", ".o");
            let mut args: Vec<String> = vec!["gcc".into()];
            args.extend(flags.iter().map(|f| f.to_string()));
            args.extend(["-c".into(), s.clone(), "-o".into(), obj]);
            let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
            entries.push(format!(
                "{{\"directory\": {:?}, \"file\": {s:?}, \"arguments\": [{}]}}",
                tree.display().to_string(),
                quoted.join(", ")
            ));
            children.push(
                Command::new("gcc")
                    .args(&args[1..])
                    .current_dir(&tree)
                    .spawn()
                    .unwrap(),
            );
        }
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        std::fs::write(
            tree.join("compile_commands.json"),
            format!("[\n{}\n]\n", entries.join(",\n")),
        )
        .unwrap();
        let soname_flag = format!("-Wl,-soname,{soname}");
        let out = format!("../{file}");
        let mut link = vec!["gcc", "-shared", "-Wl,--build-id", &soname_flag, "-o", &out];
        let objs: Vec<String> = sources.iter().map(|s| s.replace(".c", ".o")).collect();
        link.extend(objs.iter().map(String::as_str));
        link.extend(libs);
        sh(&tree, &link);
        std::os::unix::fs::symlink(file, dir.join(soname)).unwrap();
        let prog = source_fixtures().join(prog_c);
        let inc = format!("-I{sub}");
        let lib = format!("-l:{soname}");
        let mut cc = vec!["gcc", "-O2", "-pthread", &inc, "-o", "prog"];
        cc.push(prog.to_str().unwrap());
        cc.extend(["-L.", &lib, "-Wl,-rpath,$ORIGIN"]);
        cc.extend(prog_flags);
        sh(dir.path(), &cc);
        let runtime = install_runtime(dir.path());
        RealLib {
            target: dir.join(soname),
            prog: dir.join("prog"),
            dir,
            tree,
            runtime,
        }
    }

    fn start(&self) -> Target {
        let mut cmd = Command::new(&self.prog);
        cmd.current_dir(self.dir.path())
            .env("LD_PRELOAD", &self.runtime);
        Target::spawn(cmd)
    }

    /// `ulp build` (run from `/`) of `file` with each `(from, to)` edit
    /// applied to every occurrence, into OUT.so.
    fn build_fix(&self, file: &str, edits: &[(&str, &str)], out: &str) -> (i32, String, String) {
        let old = std::fs::read_to_string(self.tree.join(file)).unwrap();
        let mut new = old.clone();
        for (from, to) in edits {
            assert!(new.contains(from), "{file} changed upstream: {from:?}");
            new = new.replace(from, to);
        }
        let patches = self.dir.join(out.replace(".so", ""));
        std::fs::create_dir_all(&patches).unwrap();
        let patch = unified(&patches, file, &old, &new);
        let db = self.tree.join("compile_commands.json");
        let output = self.dir.join(out);
        ulp(
            Path::new("/"),
            &[
                "build",
                "--compile-commands",
                db.to_str().unwrap(),
                "--target",
                self.target.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
                "--description",
                &format!("Fix of {file} (bsc#16)"),
                patch.to_str().unwrap(),
            ],
        )
    }

    /// Applies OUT.so to `t`, checks `check`, reverts, checks `back`.
    fn apply_revert(&self, t: &mut Target, out: &str, check: impl Fn(&mut Target)) {
        let pid = t.pid.to_string();
        let (code, o, e) = ulp(self.dir.path(), &["trigger", "-p", &pid, out]);
        assert_eq!(code, 0, "apply {out}: {o}{e}");
        check(t);
        let (code, o, e) = ulp(self.dir.path(), &["trigger", "-p", &pid, "--revert", out]);
        assert_eq!(code, 0, "revert {out}: {o}{e}");
    }
}

fn zero_wrong(t: &mut Target) {
    let line = t.ask("wrong");
    let (wrong, calls) = line.split_once(' ').unwrap();
    assert_eq!(wrong, "0", "wrong results under load: {line}");
    assert!(calls.parse::<u64>().unwrap() > 0, "{line}");
}

/// zlib built from its sources as libz.so.1 with a generated compilation
/// database (`-DDYNAMIC_CRC_TABLE`, zlib's own option, so that crc32.c has
/// mutable statics: zlib has none otherwise), and the issue's kinds of fix
/// built by `ulp build`, each applied to a program using zlib from several
/// threads and reverted, with no wrong result: a static function and an
/// exported one changed together (adler32.c), a bounds check in an
/// exported function that calls an unchanged static helper (deflate.c),
/// a change to a function using the library's mutable statics, which
/// become references (crc32.c). zlib has no mutable variable with an
/// initializer, so the refusal of a changed one is tested on SQLite.
#[test]
fn build_fixes_of_zlib_applied_under_load() {
    let dir = TempDir::new("build-zlib");
    let src = zlib_sources();
    let tree = dir.join("zlib");
    std::fs::create_dir_all(&tree).unwrap();
    let mut sources = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".c") || name.ends_with(".h") {
            std::fs::copy(&p, tree.join(&name)).unwrap();
            if name.ends_with(".c") {
                sources.push(name);
            }
        }
    }
    sources.sort();
    let flags = [
        "-O2",
        "-fPIC",
        "-D_LARGEFILE64_SOURCE=1",
        "-DHAVE_UNISTD_H",
        "-DHAVE_STDARG_H",
        "-DDYNAMIC_CRC_TABLE",
    ];
    let z = RealLib::build(
        dir,
        "zlib",
        &sources,
        &flags,
        "libz.so.1",
        "libz.so.1.3.1",
        &[],
        "zprog.c",
        &[],
    );

    // (a) A static function and an exported one: a negative length gives
    // 1, not 0xffffffff (adler32_combine_), and adler32_combine refuses a
    // first checksum whose halves are out of range.
    let (code, out, err) = z.build_fix(
        "adler32.c",
        &[
            ("        return 0xffffffffUL;", "        return 1UL;"),
            (
                "z_off_t len2) {\n    return adler32_combine_(",
                "z_off_t len2) {\n    if ((adler1 & 0xffff) >= BASE || (adler1 >> 16) >= BASE)\n        \
                 return 0xffffffffUL;\n    return adler32_combine_(",
            ),
        ],
        "fix_adler.so",
    );
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("adler32.c:\n{out}");
    assert!(
        out.contains("replaced adler32_combine: changed code"),
        "{out}"
    );
    // adler32_combine_ is inlined into both callers (no symbol of its
    // own): its change replaces the other one too.
    assert!(
        out.contains("replaced adler32_combine64: inlines a changed function"),
        "{out}"
    );
    // (b) A bounds check in deflateTune, which then calls the unchanged
    // static deflateStateCheck.
    let (code, out, err) = z.build_fix(
        "deflate.c",
        &[(
            "    if (deflateStateCheck(strm)) return Z_STREAM_ERROR;\n    s = strm->state;\n    \
             s->good_match = (uInt)good_length;",
            "    if (deflateStateCheck(strm)) return Z_STREAM_ERROR;\n    if (good_length < 0 || \
             max_lazy < 0 || nice_length < 0 || max_chain < 0)\n        return Z_STREAM_ERROR;\n    \
             s = strm->state;\n    s->good_match = (uInt)good_length;",
        )],
        "fix_tune.so",
    );
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("deflate.c:\n{out}");
    assert!(out.contains("replaced deflateTune: changed code"), "{out}");
    assert!(!out.contains("replaced deflateStateCheck"), "{out}");
    // (c) crc32_z (both of its definitions) returns the CRC it was given
    // for a NULL buffer; its copy uses the running library's tables and
    // once-flag through references.
    let (code, out, err) = z.build_fix(
        "crc32.c",
        &[(
            "    if (buf == Z_NULL) return 0;",
            "    if (buf == Z_NULL) return crc;",
        )],
        "fix_crc.so",
    );
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("crc32.c:\n{out}");
    assert!(out.contains("replaced crc32_z: changed code"), "{out}");
    let dsc = std::fs::read_to_string(z.dir.join("fix_crc.dsc")).unwrap();
    for v in ["crc_table", "crc_braid_table", "made"] {
        assert!(dsc.contains(&format!("\n#{v}:__ulp_ref_{v}:0x")), "{dsc}");
    }

    let mut t = z.start();
    let old = (
        t.ask("combine"),
        t.ask("halves"),
        t.ask("tune"),
        t.ask("crcnull"),
    );
    assert_eq!(old.0, "ffffffff");
    assert_ne!(old.1, "ffffffff");
    assert_eq!((old.2.as_str(), old.3.as_str()), ("0", "0"));
    let now = |t: &mut Target| {
        (
            t.ask("combine"),
            t.ask("halves"),
            t.ask("tune"),
            t.ask("crcnull"),
        )
    };
    z.apply_revert(&mut t, "fix_adler.so", |t| {
        let n = now(t);
        assert_eq!((n.0.as_str(), n.1.as_str()), ("1", "ffffffff"));
        assert_eq!((&n.2, &n.3), (&old.2, &old.3));
    });
    assert_eq!(now(&mut t), old);
    z.apply_revert(&mut t, "fix_tune.so", |t| {
        assert_eq!(t.ask("tune"), "-2");
        assert_eq!(t.ask("combine"), "ffffffff");
    });
    assert_eq!(now(&mut t), old);
    z.apply_revert(&mut t, "fix_crc.so", |t| {
        assert_eq!(t.ask("crcnull"), "5");
        assert_eq!(t.ask("tune"), "0");
    });
    assert_eq!(now(&mut t), old);
    // All three at once, reverted in the other order.
    let pid = t.pid.to_string();
    for f in ["fix_adler.so", "fix_tune.so", "fix_crc.so"] {
        let (code, o, e) = ulp(z.dir.path(), &["trigger", "-p", &pid, f]);
        assert_eq!(code, 0, "{f}: {o}{e}");
    }
    let n = now(&mut t);
    assert_eq!(
        (n.0.as_str(), n.1.as_str(), n.2.as_str(), n.3.as_str()),
        ("1", "ffffffff", "-2", "5")
    );
    for f in ["fix_crc.so", "fix_tune.so", "fix_adler.so"] {
        let (code, o, e) = ulp(z.dir.path(), &["trigger", "-p", &pid, "--revert", f]);
        assert_eq!(code, 0, "{f}: {o}{e}");
    }
    assert_eq!(now(&mut t), old);
    zero_wrong(&mut t);

    // The issue's bound, on zlib's largest file: a build of a one-line
    // change to deflate.c against one plain compile of it.
    let t0 = Instant::now();
    let mut plain = vec!["gcc"];
    plain.extend(flags);
    plain.extend(["-c", "deflate.c", "-o", "/dev/null"]);
    sh(&z.tree, &plain);
    let plain = t0.elapsed();
    let t0 = Instant::now();
    let (code, out, err) = z.build_fix(
        "deflate.c",
        &[(
            "    if (strm == Z_NULL ||\n",
            "    if (strm == Z_NULL || strm->state == Z_NULL ||\n",
        )],
        "fix_state.so",
    );
    let built = t0.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replaced deflateStateCheck"), "{out}");
    eprintln!("deflate.c: plain compile {plain:?}, ulp build {built:?}\n{out}");
}

const REFS_C: &str = r#"#include <stdio.h>
struct cfg { int a; int b; };
static struct cfg conf = { .a = 1, .b = 2 };
static int hits[4];
static __thread int tls_n;
static int plain = 5;

int use_conf(int x) { conf.a += x; return conf.a + conf.b; }
int use_hits(int i) { hits[i & 3]++; return hits[i & 3]; }
int use_tls(void) { return ++tls_n; }
int use_local(void) { static int calls; return ++calls; }
int use_plain(int y) { plain += y; return plain; }
int shadowy(int plain_) { int n = plain_; return n; }
int wrap(int x) { return use_conf(x) + 1; }
int use_local2(void) { static int calls; return --calls; }
"#;

/// A library of one file `r.c`; `ulp build` of `edit` applied to it.
fn build_refs(tag: &str, from: &str, to: &str) -> (i32, String, String, TempDir) {
    let dir = TempDir::new(tag);
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("r.c"), REFS_C).unwrap();
    std::fs::write(
        dir.join("compile_commands.json"),
        r#"[{"directory": "src", "file": "r.c", "command": "gcc -O2 -fPIC -c r.c -o r.o"}]"#,
    )
    .unwrap();
    sh(&src, &["gcc", "-O2", "-fPIC", "-c", "r.c", "-o", "r.o"]);
    sh(
        dir.path(),
        &[
            "gcc",
            "-shared",
            "-Wl,--build-id",
            "-o",
            "libr.so",
            "src/r.o",
        ],
    );
    let new = REFS_C.replacen(from, to, 1);
    assert_ne!(new, REFS_C);
    let patch = unified(dir.path(), "src/r.c", REFS_C, &new);
    let (code, out, err) = ulp(
        dir.path(),
        &[
            "build",
            "--compile-commands",
            "compile_commands.json",
            "--target",
            "libr.so",
            "--output",
            "out.so",
            patch.to_str().unwrap(),
        ],
    );
    (code, out, err, dir)
}

#[test]
fn build_references_and_what_it_refuses_about_variables() {
    // A struct with a designated initializer, an array: references.
    let (code, out, err, dir) = build_refs("build-refs-ok", "conf.a += x;", "conf.a += 2 * x;");
    assert_eq!(code, 0, "{out}{err}");
    let dsc = std::fs::read_to_string(dir.join("out.dsc")).unwrap();
    assert!(dsc.contains("\n#conf:__ulp_ref_conf:0x"), "{dsc}");
    assert!(dsc.contains("\n#hits:__ulp_ref_hits:0x"), "{dsc}");
    // A thread-local variable: its tls_index; a static local: a pointer
    // named after its function.
    let (code, out, err, dir) =
        build_refs("build-refs-tls", "return ++tls_n;", "return tls_n += 2;");
    assert_eq!(code, 0, "{out}{err}");
    let dsc = std::fs::read_to_string(dir.join("out.dsc")).unwrap();
    assert!(dsc.contains("\n#%tls_n:__ulp_tls_ref_tls_n:0x"), "{dsc}");
    let (code, out, err, dir) =
        build_refs("build-refs-local", "return ++calls;", "return calls += 2;");
    assert_eq!(code, 0, "{out}{err}");
    let dsc = std::fs::read_to_string(dir.join("out.dsc")).unwrap();
    assert!(dsc.contains(":__ulp_sl0_use_local_calls:0x"), "{dsc}");
    // Not the other function's `calls` (both are in sections `.bss.calls.N`).
    assert!(!dsc.contains("use_local2"), "{dsc}");
    // A local of the same name, a function whose entry cannot take a jump
    // (a call in its first 5 bytes, no padding), two static locals of one
    // name in one function: refused.
    for (tag, from, to, what) in [
        (
            "two-locals",
            "int use_local(void) { static int calls; return ++calls; }",
            "int use_local(void) { static int calls; { static int calls; calls++; } return calls += 2; }",
            "static local variable 'calls'",
        ),
        (
            "shadow",
            "int use_plain(int y) { plain += y; return plain; }",
            "int use_plain(int y) { plain += y; { int plain = y * 2; y += plain; } return plain + y; }",
            "variable 'plain' of 'src/r.c': a declaration in the file has the same name",
        ),
        (
            "entry",
            "return use_conf(x) + 1;",
            "return use_conf(x) + 2;",
            "function 'wrap' cannot be redirected in the target",
        ),
    ] {
        let (code, out, err, dir) = build_refs(&format!("build-refs-{tag}"), from, to);
        assert_eq!(code, 1, "{tag}: {out}{err}");
        assert!(err.contains(what), "{tag}: {err}");
        assert!(!dir.join("out.so").exists() && !dir.join("out.dsc").exists());
    }
}

#[test]
fn build_new_and_removed_functions_and_another_source_directory() {
    // A new static function called by a changed one: in the container,
    // listed as new, not redirected.
    let (code, out, err, dir) = build_refs(
        "build-new",
        "int use_plain(int y) { plain += y; return plain; }",
        "static __attribute__((noinline)) int twice(int v) { return v * 2 + 1; }\nint use_plain(int y) { plain += twice(y); return plain; }",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replaced use_plain: changed code"), "{out}");
    assert!(out.contains("new twice"), "{out}");
    let dsc = std::fs::read_to_string(dir.join("out.dsc")).unwrap();
    assert!(!dsc.contains("twice:"), "{dsc}");
    // A removed function: refused, named.
    let (code, out, err, dir) = build_refs(
        "build-removed",
        "int shadowy(int plain_) { int n = plain_; return n; }\n",
        "",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("function 'shadowy'") && err.contains("removing a function"),
        "{err}"
    );
    assert!(!dir.join("out.so").exists());
    // Diff paths relative to --source (not the database's directory).
    let tree = Tree::new("build-source", &["-O2", "-fPIC"], false);
    let text = std::fs::read_to_string(source_fixtures().join("scale.patch"))
        .unwrap()
        .replace("a/src/core.c", "a/core.c")
        .replace("b/src/core.c", "b/core.c");
    let patch = tree.dir.join("scale-in-src.patch");
    std::fs::write(&patch, text).unwrap();
    let src = tree.dir.join("src");
    let (code, out, err) = tree.build_with(
        patch.to_str().unwrap(),
        "fix.so",
        &["--source", src.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replaced scale: changed code"), "{out}");
}

/// One diff touching two files that both have a static `count`: each file's
/// changed code updates its own counter in the running library.
#[test]
fn build_two_files_with_statics_of_the_same_name() {
    let tree = Tree::new("build-two-files", &["-O2", "-fPIC"], false);
    let src = tree.dir.join("src");
    let core = std::fs::read_to_string(src.join("core.c")).unwrap();
    let stats = std::fs::read_to_string(src.join("stats.c")).unwrap();
    let core_new = core.replacen("count = count + 1;", "count = count + 10;", 1);
    let stats_new = stats.replacen("    count++;\n", "    count += 100;\n", 1);
    assert!(core_new != core && stats_new != stats);
    let a = unified(tree.dir.path(), "src/core.c", &core, &core_new);
    let b = unified(tree.dir.path(), "src/stats.c", &stats, &stats_new);
    let both = tree.dir.join("both.patch");
    let text = std::fs::read_to_string(&a).unwrap() + &std::fs::read_to_string(&b).unwrap();
    std::fs::write(&both, text).unwrap();
    let (code, out, err) = tree.build_with(both.to_str().unwrap(), "fix_both.so", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replaced bld_count: changed code"), "{out}");
    assert!(
        out.contains("replaced bld_stats_add: changed code"),
        "{out}"
    );
    let dsc = std::fs::read_to_string(tree.dir.join("fix_both.dsc")).unwrap();
    assert_eq!(dsc.matches("#count:__ulp_ref_count:").count(), 2, "{dsc}");

    let mut t = tree.start();
    let pid = t.pid.to_string();
    assert_eq!(count(&mut t), (1, 1));
    assert_eq!(t.ask("stats 5"), "1 5");
    tree.ulp_ok(&["trigger", "-p", &pid, "fix_both.so"]);
    assert_eq!(count(&mut t), (11, 11));
    assert_eq!(t.ask("stats 5"), "101 10");
    tree.ulp_ok(&["trigger", "-p", &pid, "--revert", "fix_both.so"]);
    assert_eq!(count(&mut t), (12, 12));
    assert_eq!(t.ask("stats 5"), "102 15");
    no_wrong_results(&mut t);
}

/// Static locals and thread-local variables used by changed code are the
/// running library's own, in every thread: a static local (`next` of
/// `bld_seq`, told from `bld_ticket`'s `next`), a thread-local variable at
/// file scope (`calls_here`, which the workers check against their own
/// count) and a thread-local static local (`seen`); each applied and
/// reverted under load. A changed initial value of a static local is
/// refused.
#[test]
fn build_static_locals_and_thread_locals_applied_under_load() {
    let tree = Tree::new("build-locals", &["-O2", "-fPIC"], false);
    let stats = std::fs::read_to_string(tree.dir.join("src/stats.c")).unwrap();
    let build = |out: &str, from: &str, to: &str| -> (i32, String, String) {
        let new = stats.replacen(from, to, 1);
        assert_ne!(new, stats);
        let dir = tree.dir.join(out.replace(".so", ""));
        std::fs::create_dir_all(&dir).unwrap();
        let patch = unified(&dir, "stats.c", &stats, &new);
        let text = std::fs::read_to_string(&patch)
            .unwrap()
            .replace("a/stats.c", "a/src/stats.c")
            .replace("b/stats.c", "b/src/stats.c");
        std::fs::write(&patch, text).unwrap();
        tree.build_with(patch.to_str().unwrap(), out, &[])
    };
    let dsc =
        |out: &str| std::fs::read_to_string(tree.dir.join(out.replace(".so", ".dsc"))).unwrap();
    let (code, out, err) = build(
        "fix_seq.so",
        "    next++;\n    return next;",
        "    next += 10;\n    return next;",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replaced bld_seq: changed code"), "{out}");
    assert!(out.contains("reference next (static in bld_seq)"), "{out}");
    let d = dsc("fix_seq.so");
    assert!(
        d.contains("\n#next.") && d.contains(":__ulp_sl0_bld_seq_next:0x"),
        "{d}"
    );
    let (code, out, err) = build(
        "fix_tcalls.so",
        "return ++calls_here;",
        "calls_here += 2;\n    return calls_here;",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reference calls_here (thread-local)"), "{out}");
    let d = dsc("fix_tcalls.so");
    assert!(
        d.contains("\n#%calls_here:__ulp_tls_ref_calls_here:0x"),
        "{d}"
    );
    let (code, out, err) = build(
        "fix_tseen.so",
        "    seen++;\n    return seen;",
        "    seen += 5;\n    return seen;",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("reference seen (static in bld_thread_seen, thread-local)"),
        "{out}"
    );
    assert!(dsc("fix_tseen.so").contains(":__ulp_tls_sl0_bld_thread_seen_seen:0x"));
    // A changed initial value of a static local: refused.
    let (code, out, err) = build(
        "fix_ticket.so",
        "static int next = 100;",
        "static int next = 200;",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("initial value changes"), "{err}");
    assert!(!tree.dir.join("fix_ticket.so").exists());

    let mut t = tree.start();
    let pid = t.pid.to_string();
    let apply = |t: &mut Target, out: &str, revert: bool| {
        let mut args = vec!["trigger", "-p", &pid];
        if revert {
            args.push("--revert");
        }
        args.push(out);
        tree.ulp_ok(&args);
        // Under load for a moment.
        t.ask("wrong");
    };
    assert_eq!(t.ask("seq"), "1");
    assert_eq!(t.ask("ticket"), "100");
    apply(&mut t, "fix_seq.so", false);
    assert_eq!(t.ask("seq"), "11");
    assert_eq!(t.ask("seq"), "21");
    assert_eq!(t.ask("ticket"), "101");
    apply(&mut t, "fix_seq.so", true);
    assert_eq!(t.ask("seq"), "22");

    assert_eq!(t.ask("tcalls"), "1");
    apply(&mut t, "fix_tcalls.so", false);
    assert_eq!(t.ask("tcalls"), "3");
    std::thread::sleep(std::time::Duration::from_millis(300));
    no_wrong_results(&mut t);
    assert_eq!(t.ask("tcalls"), "5");
    apply(&mut t, "fix_tcalls.so", true);
    assert_eq!(t.ask("tcalls"), "6");

    assert_eq!(t.ask("tseen"), "1");
    apply(&mut t, "fix_tseen.so", false);
    assert_eq!(t.ask("tseen"), "6");
    assert_eq!(t.ask("tseen"), "11");
    apply(&mut t, "fix_tseen.so", true);
    assert_eq!(t.ask("tseen"), "12");
    std::thread::sleep(std::time::Duration::from_millis(300));
    no_wrong_results(&mut t);
}

/// SQLite's amalgamation (from the crate `libsqlite3-sys`) built as
/// libsqlite3.so.0.8.6 with a generated compilation database, and fixes
/// built by `ulp build` applied to a program running queries from several
/// threads and reverted, with no wrong result: a static function (abs()'s
/// implementation, reached through a SQL query) and an exported one
/// (`sqlite3_strglob`) changed together; a changed initializer of a
/// mutable variable (`sqlite3Config`) refused, naming it; a bounds check
/// in an exported function that calls an unchanged static helper
/// (`sqlite3_strlike`, `patternCompare`); a fix reading the library's
/// mutable statics (`sqlite3_status64`: `sqlite3Stat`, `mem0`,
/// `pcache1_g`), whose workers check that the memory statistics stay the
/// library's live ones. sqlite3.c takes 15 to 20 s to compile here and
/// each `ulp build` compiles it two or three times: four builds only.
#[test]
fn build_fixes_of_sqlite_applied_under_load() {
    let dir = TempDir::new("build-sqlite");
    let src = crate_dir("libsqlite3-sys").join("sqlite3");
    let tree = dir.join("sqlite3");
    std::fs::create_dir_all(&tree).unwrap();
    for f in ["sqlite3.c", "sqlite3.h", "sqlite3ext.h"] {
        std::fs::copy(src.join(f), tree.join(f)).unwrap();
    }
    let flags = ["-O2", "-fPIC", "-DSQLITE_THREADSAFE=1"];
    let t0 = Instant::now();
    let q = RealLib::build(
        dir,
        "sqlite3",
        &["sqlite3.c".to_string()],
        &flags,
        "libsqlite3.so.0",
        "libsqlite3.so.0.8.6",
        &["-lm"],
        "sqprog.c",
        &[],
    );
    let plain = t0.elapsed();

    // (a) abs() of the smallest integer gives a real instead of an
    // "integer overflow" error (absFunc, static, reached only through
    // the table of SQL functions), and a NULL string matches no GLOB
    // pattern (sqlite3_strglob, exported).
    let t0 = Instant::now();
    let (code, out, err) = q.build_fix(
        "sqlite3.c",
        &[
            (
                "two complement value. */\n          \
                 sqlite3_result_error(context, \"integer overflow\", -1);",
                "two complement value. */\n          \
                 sqlite3_result_double(context, 9223372036854775808.0);",
            ),
            (
                "  if( zString==0 ){\n    return zGlobPattern!=0;",
                "  if( zString==0 ){\n    return 1;",
            ),
        ],
        "fix_abs.so",
    );
    let built = t0.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("sqlite3.c: build of the library {plain:?}, ulp build {built:?}\n{out}");
    assert!(out.contains("replaced absFunc: changed code"), "{out}");
    assert!(
        out.contains("replaced sqlite3_strglob: changed code"),
        "{out}"
    );

    // (b) A bounds check in the exported sqlite3_strlike (an escape
    // beyond Unicode matches nothing), which then calls the unchanged
    // static patternCompare.
    let (code, out, err) = q.build_fix(
        "sqlite3.c",
        &[(
            "  }else if( zPattern==0 ){\n    return 1;\n  }else{\n    \
             return patternCompare((u8*)zPattern, (u8*)zStr, &likeInfoNorm, esc);",
            "  }else if( zPattern==0 || esc>0x10ffff ){\n    return 1;\n  }else{\n    \
             return patternCompare((u8*)zPattern, (u8*)zStr, &likeInfoNorm, esc);",
        )],
        "fix_like.so",
    );
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("sqlite3.c (strlike):\n{out}");
    assert!(
        out.contains("replaced sqlite3_strlike: changed code"),
        "{out}"
    );
    assert!(!out.contains("replaced patternCompare"), "{out}");

    // (c) The library's mutable statics: the obsolete scratch counters
    // become a misuse and NULL outputs are refused (the API armor made
    // unconditional) in sqlite3_status64, which reads and resets the
    // counters of `sqlite3Stat` under the mutex of `mem0` or of
    // `pcache1_g`: all three references (`mem0` through SQLite's own
    // `#define mem0 GLOBAL(struct Mem0Global, mem0)`).
    let (code, out, err) = q.build_fix(
        "sqlite3.c",
        &[(
            "  if( op<0 || op>=ArraySize(wsdStat.nowValue) ){\n    return SQLITE_MISUSE_BKPT;\n  }\n\
             #ifdef SQLITE_ENABLE_API_ARMOR\n  \
             if( pCurrent==0 || pHighwater==0 ) return SQLITE_MISUSE_BKPT;\n#endif\n  \
             pMutex = statMutex[op]",
            "  if( op<0 || op>=ArraySize(wsdStat.nowValue)\n   \
             || op==SQLITE_STATUS_SCRATCH_USED || op==SQLITE_STATUS_SCRATCH_OVERFLOW\n   \
             || op==SQLITE_STATUS_SCRATCH_SIZE ){\n    return SQLITE_MISUSE_BKPT;\n  }\n  \
             if( pCurrent==0 || pHighwater==0 ) return SQLITE_MISUSE_BKPT;\n  \
             pMutex = statMutex[op]",
        )],
        "fix_status.so",
    );
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("sqlite3.c (status):\n{out}");
    assert!(
        out.contains("replaced sqlite3_status64: changed code"),
        "{out}"
    );
    for v in ["sqlite3Stat", "mem0", "pcache1_g"] {
        assert!(out.contains(&format!("reference {v}:")), "{v}: {out}");
    }

    // (d) A changed initial value of a mutable variable: refused, the
    // variable named, nothing written.
    let (code, out, err) = q.build_fix(
        "sqlite3.c",
        &[(
            "   0x7ffffffe,                /* mxStrlen */",
            "   1000000000,                /* mxStrlen */",
        )],
        "fix_config.so",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("sqlite3Config"), "{out}{err}");
    assert!(!q.dir.join("fix_config.so").exists());
    assert!(!q.dir.join("fix_config.dsc").exists());

    let mut t = q.start();
    assert_eq!(t.ask("abs"), "error");
    assert_eq!(t.ask("glob"), "0");
    for _ in 0..2 {
        q.apply_revert(&mut t, "fix_abs.so", |t| {
            assert_eq!(t.ask("abs"), "9223372036854775808.0");
            assert_eq!(t.ask("glob"), "1");
        });
        assert_eq!(t.ask("abs"), "error");
        assert_eq!(t.ask("glob"), "0");
    }
    assert_eq!(t.ask("like"), "0");
    q.apply_revert(&mut t, "fix_like.so", |t| {
        assert_eq!(t.ask("like"), "1");
        assert_eq!(t.ask("glob"), "0");
    });
    assert_eq!(t.ask("like"), "0");
    assert_eq!(t.ask("scratch"), "0");
    assert_eq!(t.ask("memory"), "1");
    for _ in 0..2 {
        q.apply_revert(&mut t, "fix_status.so", |t| {
            assert_eq!(t.ask("scratch"), "21");
            assert_eq!(t.ask("memory"), "1");
            zero_wrong(t);
        });
        assert_eq!(t.ask("scratch"), "0");
        assert_eq!(t.ask("memory"), "1");
    }
    zero_wrong(&mut t);
}

/// As root, a compilation database or a diff that another user could
/// change is refused before anything is compiled or written; `--force`
/// builds anyway.
#[test]
fn as_root_build_refuses_inputs_others_could_change() {
    use std::os::unix::fs::PermissionsExt;
    if id("-u") != "0" {
        eprintln!("not root: the trust rule applies to root only");
        return;
    }
    let tree = Tree::new("build-trust", &["-O2", "-fPIC"], false);
    let db = tree.dir.join("compile_commands.json");
    let diff = tree.dir.join("mine.patch");
    std::fs::copy(source_fixtures().join("scale.patch"), &diff).unwrap();
    for (file, what) in [(&db, "compile_commands.json"), (&diff, "mine.patch")] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (code, out, err) = tree.build_with(diff.to_str().unwrap(), "trust.so", &[]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains("refusing") && err.contains(what) && err.contains("chmod go-w"),
            "{err}"
        );
        assert!(!tree.dir.join("trust.so").exists() && !tree.dir.join("trust.dsc").exists());
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out, err) = tree.build_with(diff.to_str().unwrap(), "trust.so", &["--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(tree.dir.join("trust.so").exists());
}

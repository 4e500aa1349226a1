//! What real fixes touch, end to end through the real `ulp` binary on
//! running processes: variables (static, hidden, thread-local), static
//! functions, the executable itself, build-id matching, stacked patches,
//! all-or-nothing, code-layout edge cases and C++ exceptions.
//!
//! Every test observes the program before, after apply and after revert,
//! and asks `ulp check -p PID FILE` each time whether the patch is applied.
//! The fixtures are in fixtures/semantics (built by ulp-fixtures' build.rs).

mod common;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ulp_elf::ElfFile;

fn semantics_dir() -> PathBuf {
    fixtures_dir().join("semantics")
}

/// A scratch directory with some semantics fixtures and the runtime.
struct Sem {
    dir: TempDir,
    runtime: PathBuf,
}

impl Sem {
    /// Copies `files` from the semantics fixtures and runs `ulp post` on
    /// the targets among them (`post`).
    fn new(tag: &str, files: &[&str], post: &[&str]) -> Sem {
        let dir = TempDir::new(tag);
        copy_files(&semantics_dir(), dir.path(), files);
        let runtime = install_runtime(dir.path());
        let sem = Sem { dir, runtime };
        for f in post {
            sem.post(f);
        }
        sem
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn post(&self, file: &str) {
        let (code, out, err) = self.ulp(&["post", file]);
        assert_eq!(code, 0, "post {file}: {out}{err}");
    }

    fn ulp(&self, args: &[&str]) -> (i32, String, String) {
        ulp(self.dir.path(), args)
    }

    /// Writes `dsc` as `NAME.dsc` and packs it; `container` (copied from
    /// `built` first when they differ) is the .so it names.
    fn pack(&self, name: &str, built: &str, dsc: &str) -> String {
        let container = format!("{name}.so");
        if built != container {
            std::fs::copy(self.path(built), self.path(&container)).unwrap();
        }
        let dsc_file = format!("{name}.dsc");
        std::fs::write(self.path(&dsc_file), dsc).unwrap();
        let (code, out, err) = self.ulp(&["packer", &dsc_file]);
        assert_eq!(code, 0, "packer {dsc_file}: {out}{err}\n{dsc}");
        container
    }

    /// Starts `prog` (in the directory, or a path under it) with the
    /// runtime preloaded.
    fn start(&self, prog: &str) -> Target {
        let mut cmd = Command::new(self.path(prog));
        cmd.current_dir(self.dir.path())
            .env("LD_PRELOAD", &self.runtime);
        Target::spawn(cmd)
    }

    /// `ulp trigger -p PID [--revert] FILE` must succeed with the usual
    /// two lines.
    fn trigger_ok(&self, t: &Target, revert: bool, file: &str) {
        let pid = t.pid.to_string();
        let mut args = vec!["trigger", "-p", &pid];
        if revert {
            args.push("--revert");
        }
        args.push(file);
        let (code, out, err) = self.ulp(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert_eq!(
            out,
            format!(
                "  {} (pid: {pid}): SUCCESS {file}\n{}",
                comm(t.pid),
                summary(1, 0, 0)
            ),
            "{args:?}: {err}"
        );
    }

    fn apply(&self, t: &Target, file: &str) {
        self.trigger_ok(t, false, file);
    }

    fn revert(&self, t: &Target, file: &str) {
        self.trigger_ok(t, true, file);
    }

    /// `ulp trigger -p PID FILE`, whatever it answers.
    fn trigger(&self, t: &Target, file: &str) -> (i32, String, String) {
        self.ulp(&["trigger", "-p", &t.pid.to_string(), file])
    }

    /// Asserts that `ulp check -p PID FILE` says `applied` (exit 1) or not
    /// (exit 0), with its one line.
    fn expect_check(&self, t: &Target, file: &str, applied: bool) {
        let pid = t.pid.to_string();
        let (code, out, err) = self.ulp(&["check", "-p", &pid, file]);
        let (want_code, word) = if applied {
            (1, "applied")
        } else {
            (0, "not applied")
        };
        assert_eq!(
            (code, out),
            (
                want_code,
                format!("{} (pid: {pid}): {file}: {word}\n", comm(t.pid))
            ),
            "ulp check disagrees with reality: {err}"
        );
    }
}

/// The process name `ulp` prints (`/proc/PID/comm`).
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_string()
}

/// Symbol values of `names` in the ELF file `path` (panics when missing).
fn symbols(path: &Path, names: &[&str]) -> HashMap<String, u64> {
    let elf = ElfFile::open(path).unwrap();
    names
        .iter()
        .map(|n| {
            let s = elf
                .symbol(n)
                .unwrap_or_else(|| panic!("no symbol {n} in {}", path.display()));
            (n.to_string(), s.value)
        })
        .collect()
}

/// Where the first mapping of file `name` (offset 0) starts in `pid`: the
/// load bias of a shared object. `name` may be a SONAME link: the maps
/// show the file it leads to (`libsem.so.1` -> `libsem.so.1.0.0`).
fn load_bias(pid: i32, name: &str) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let behind_link = format!("/{name}.");
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6
            && f[2] == "00000000"
            && (f[5].ends_with(&format!("/{name}")) || f[5].contains(&behind_link))
        {
            let start = f[0].split('-').next().unwrap();
            return u64::from_str_radix(start, 16).unwrap();
        }
    }
    panic!("{name} is not mapped in {pid}:\n{maps}")
}

/// `len` bytes of the target's memory at `addr` (the tests are the
/// targets' parent: /proc/PID/mem is readable).
fn read_mem(pid: i32, addr: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr).unwrap();
    buf
}

/// The 14 bytes of padding and the first `after` bytes of the function at
/// `entry`.
fn site(pid: i32, entry: u64, after: usize) -> Vec<u8> {
    read_mem(pid, entry - 14, 14 + after)
}

const NOPS14: [u8; 14] = [0x90; 14];

/// Checks that `bytes` (from `stub`) are our stub in the form its reach
/// calls for: the direct `e9 <rel32>` and 9 NOPs when the new function is
/// within ±2 GiB, else `ff 25 00 00 00 00 <abs64>`.
fn our_stub(stub: u64, bytes: &[u8], what: &str) {
    let to = ulp_abi::stub_target(stub, bytes)
        .unwrap_or_else(|| panic!("{what}: not our stub: {:02x?}", &bytes[..14]));
    let want = ulp_abi::stub_bytes(stub, to);
    assert_eq!(bytes[..14], want, "{what}: stub form for {to:#x}");
}

// ---------------------------------------------------------------------
// Variables: static, hidden, by name and by explicit offsets.
// ---------------------------------------------------------------------

#[test]
fn static_and_hidden_variables_by_name_and_by_offsets() {
    let sem = Sem::new(
        "vars",
        &["libsem.so.1", "sem_prog", "patch_vars.so"],
        &["libsem.so.1"],
    );
    // sem_counter is static (by name), sem_hidden_total hidden (by offsets).
    let lib = symbols(
        &sem.path("libsem.so.1"),
        &["sem_counter", "sem_hidden_total"],
    );
    let patch = symbols(&sem.path("patch_vars.so"), &["ulpr_hidden"]);
    let elf = ElfFile::open(&sem.path("libsem.so.1")).unwrap();
    assert!(
        elf.dynamic_symbol("sem_counter").is_none()
            && elf.dynamic_symbol("sem_hidden_total").is_none(),
        "the variables must not be exported"
    );
    let dsc = format!(
        "patch_vars.so\n@libsem.so.1\nsem_bump:new_sem_bump\n\
         #sem_counter:ulpr_counter\n#sem_hidden_total:ulpr_hidden:{:x}:{:#x}\n",
        lib["sem_hidden_total"], patch["ulpr_hidden"]
    );
    let file = sem.pack("patch_vars", "patch_vars.so", &dsc);

    let mut t = sem.start("sem_prog");
    assert_eq!(t.ask("bump"), "1");
    assert_eq!(t.ask("bump"), "2");
    assert_eq!(t.ask("counter"), "2");
    assert_eq!(t.ask("hidden"), "2");
    sem.expect_check(&t, &file, false);

    sem.apply(&t, &file);
    sem.expect_check(&t, &file, true);
    // The new function continues from the library's own state, and the
    // library's own functions see what it wrote.
    assert_eq!(t.ask("bump"), "12");
    assert_eq!(t.ask("counter"), "12");
    assert_eq!(t.ask("hidden"), "1002");
    assert_eq!(t.ask("bump"), "22");
    assert_eq!(t.ask("hidden"), "2002");

    sem.revert(&t, &file);
    sem.expect_check(&t, &file, false);
    assert_eq!(t.ask("bump"), "23");
    assert_eq!(t.ask("counter"), "23");
    assert_eq!(t.ask("hidden"), "2003");
    assert!(t.alive());
}

// ---------------------------------------------------------------------
// Thread-local variables.
// ---------------------------------------------------------------------

#[test]
fn thread_local_variable_is_each_threads_own_copy_also_in_new_threads() {
    let sem = Sem::new(
        "tls",
        &["libsem.so.1", "sem_prog", "patch_tls.so"],
        &["libsem.so.1"],
    );
    let file = sem.pack(
        "patch_tls",
        "patch_tls.so",
        "patch_tls.so\n@libsem.so.1\nsem_tls_bump:new_sem_tls_bump\n#%sem_tls:ulpr_tls\n",
    );
    let mut t = sem.start("sem_prog");
    assert_eq!(t.ask("spawn"), "0", "a thread started before the patch");
    assert_eq!(t.ask("tls"), "1");
    assert_eq!(t.ask("tls"), "2");
    assert_eq!(t.ask("t 0 tls"), "1");
    sem.expect_check(&t, &file, false);

    sem.apply(&t, &file);
    sem.expect_check(&t, &file, true);
    assert_eq!(t.ask("tls"), "102", "main thread: its own copy");
    assert_eq!(t.ask("t 0 tls"), "101", "older thread: its own copy");
    assert_eq!(t.ask("spawn"), "1", "a thread started after the patch");
    assert_eq!(t.ask("t 1 tls"), "100");
    assert_eq!(t.ask("t 1 tls"), "200");
    assert_eq!(t.ask("spawn"), "2");
    assert_eq!(t.ask("t 2 tls"), "100");
    // The library's own reader sees each thread's write.
    assert_eq!(t.ask("tlsget"), "102");
    assert_eq!(t.ask("t 0 tlsget"), "101");
    assert_eq!(t.ask("t 1 tlsget"), "200");
    assert_eq!(t.ask("t 2 tlsget"), "100");

    sem.revert(&t, &file);
    sem.expect_check(&t, &file, false);
    assert_eq!(t.ask("tls"), "103");
    assert_eq!(t.ask("t 0 tls"), "102");
    assert_eq!(t.ask("t 1 tls"), "201");
    assert_eq!(t.ask("spawn"), "3", "a thread started after the revert");
    assert_eq!(t.ask("t 3 tls"), "1");
    assert!(t.alive());
}

// ---------------------------------------------------------------------
// Static functions, and functions of the executable (PIE and non-PIE).
// ---------------------------------------------------------------------

#[test]
fn static_function_of_a_library_found_through_the_symbol_table() {
    let sem = Sem::new(
        "static",
        &["libsem.so.1", "sem_prog", "patch_static.so"],
        &["libsem.so.1"],
    );
    let elf = ElfFile::open(&sem.path("libsem.so.1")).unwrap();
    let f = elf.symbol("sem_static_fn").expect("in .symtab");
    assert_eq!(f.binding(), 0, "sem_static_fn is STB_LOCAL");
    assert!(elf.dynamic_symbol("sem_static_fn").is_none());
    let file = sem.pack(
        "patch_static",
        "patch_static.so",
        "patch_static.so\n@libsem.so.1\nsem_static_fn:new_sem_static_fn\n",
    );
    let mut t = sem.start("sem_prog");
    assert_eq!(t.ask("static 5"), "6");
    sem.expect_check(&t, &file, false);
    sem.apply(&t, &file);
    sem.expect_check(&t, &file, true);
    assert_eq!(t.ask("static 5"), "500");
    sem.revert(&t, &file);
    sem.expect_check(&t, &file, false);
    assert_eq!(t.ask("static 5"), "6");
}

#[test]
fn functions_of_the_executable_itself_pie_and_non_pie() {
    let sem = Sem::new(
        "exe",
        &["libsem.so.1", "sem_prog", "sem_prog_nopie", "patch_prog.so"],
        &["libsem.so.1", "sem_prog", "sem_prog_nopie"],
    );
    for (prog, pie) in [("sem_prog", true), ("sem_prog_nopie", false)] {
        let elf = ElfFile::open(&sem.path(prog)).unwrap();
        assert_eq!(elf.is_shared_object(), pie, "{prog}: PIE is {pie}");
        let (code, out, err) = sem.ulp(&["livepatchable", prog]);
        assert_eq!(code, 0, "{out}{err}");
        let dsc = format!(
            "patch_prog_{prog}.so\n@{prog}\nprog_value:new_prog_value\n\
             prog_static:new_prog_static\n#prog_counter:ulpr_prog_counter\n"
        );
        let file = sem.pack(&format!("patch_prog_{prog}"), "patch_prog.so", &dsc);
        let (code, out, _) = sem.ulp(&["dump", &file]);
        assert_eq!(code, 0);
        assert!(out.contains(&format!("* name: {prog}\n")), "{out}");
        assert!(out.contains("* units: 2\n"), "{out}");
        if !pie {
            // A non-PIE has absolute addresses: the packer keeps them.
            let v = symbols(&sem.path(prog), &["prog_value"])["prog_value"];
            assert!(v >= 0x400000, "{v:#x}");
            assert!(out.contains(&format!("** old_faddr: {v:#x}\n")), "{out}");
        }

        let mut t = sem.start(prog);
        assert_eq!(t.ask("prog"), "1", "{prog}");
        assert_eq!(t.ask("prog"), "2", "{prog}");
        assert_eq!(t.ask("progstatic 5"), "4", "{prog}");
        sem.expect_check(&t, &file, false);

        sem.apply(&t, &file);
        sem.expect_check(&t, &file, true);
        assert_eq!(t.ask("prog"), "1002", "{prog}: reaches the counter");
        assert_eq!(t.ask("progcount"), "1002", "{prog}");
        assert_eq!(t.ask("progstatic 5"), "35", "{prog}: static function");
        assert_eq!(t.ask("answer"), "1", "{prog}: the library is untouched");

        sem.revert(&t, &file);
        sem.expect_check(&t, &file, false);
        assert_eq!(t.ask("prog"), "1003", "{prog}");
        assert_eq!(t.ask("progstatic 5"), "4", "{prog}");
        assert!(t.alive());
    }
}

// ---------------------------------------------------------------------
// Build-id matching.
// ---------------------------------------------------------------------

#[test]
fn a_container_applies_only_to_the_exact_build_it_was_made_for() {
    let sem = Sem::new(
        "buildid",
        &[
            "libsem.so.1",
            "sem_prog",
            "patch_static.so",
            "cxx_prog",
            "libcxx.so.1",
        ],
        &["libsem.so.1"],
    );
    // The same program next to another build of the library.
    std::fs::create_dir(sem.path("variant")).unwrap();
    copy_files(&semantics_dir(), &sem.path("variant"), &["sem_prog"]);
    copy_files(
        &semantics_dir().join("variant"),
        &sem.path("variant"),
        &["libsem.so.1"],
    );
    sem.post("variant/libsem.so.1");
    let id = |p: &str| {
        let id = ElfFile::open(&sem.path(p)).unwrap().build_id().unwrap();
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let (good_id, variant_id) = (id("libsem.so.1"), id("variant/libsem.so.1"));
    assert_ne!(good_id, variant_id);

    let dsc = "patch_static.so\n@libsem.so.1\nsem_static_fn:new_sem_static_fn\n";
    let good = sem.pack("patch_static", "patch_static.so", dsc);
    // The same patch packed against the variant build.
    std::fs::copy(sem.path("patch_static.so"), sem.path("for_variant.so")).unwrap();
    let (code, out, err) = sem.ulp(&[
        "packer",
        "-l",
        "for_variant.so",
        "-t",
        "variant/libsem.so.1",
        "patch_static.dsc",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let for_variant = "for_variant.so";

    let mut a = sem.start("sem_prog");
    let mut b = sem.start("variant/sem_prog");
    let mut c = sem.start("cxx_prog");
    let skipped = |t: &Target, file: &str, reason: &str| {
        let (code, out, err) = sem.trigger(t, file);
        assert_eq!(code, 0, "a skip is not a failure: {out}{err}");
        let head = format!("  {} (pid: {}): SKIPPED {reason}", comm(t.pid), t.pid);
        assert!(out.starts_with(&head), "want {head:?}, got {out:?}");
        assert!(out.ends_with(&summary(0, 1, 0)), "{out}");
        assert_eq!(out.lines().count(), 2, "{out}");
        out
    };

    // Wrong build: skipped with the reason naming both build-ids.
    let out = skipped(&b, &good, "Build ID mismatch: ");
    assert!(out.contains(&good_id) && out.contains(&variant_id), "{out}");
    sem.expect_check(&b, &good, false);
    assert_eq!(b.ask("static 5"), "6", "untouched");
    let out = skipped(&a, for_variant, "Build ID mismatch: ");
    assert!(out.contains(&good_id) && out.contains(&variant_id), "{out}");
    sem.expect_check(&a, for_variant, false);
    assert_eq!(a.ask("static 5"), "6", "untouched");
    // No such library at all.
    skipped(
        &c,
        &good,
        "Target library not loaded: library 'libsem.so.1' is not loaded",
    );
    sem.expect_check(&c, &good, false);
    assert_eq!(c.ask("outer 1"), "3");
    let (_, out, _) = sem.ulp(&["patches", "-p", &b.pid.to_string()]);
    assert!(!out.contains("livepatch:"), "{out}");

    // The right builds.
    sem.apply(&a, &good);
    sem.apply(&b, for_variant);
    sem.expect_check(&a, &good, true);
    sem.expect_check(&a, for_variant, false);
    sem.expect_check(&b, for_variant, true);
    sem.expect_check(&b, &good, false);
    assert_eq!(a.ask("static 5"), "500");
    assert_eq!(b.ask("static 5"), "500");
    // Both containers have the same patch id (same container build, same
    // .dsc): reverting the one for the other build must not take back the
    // one applied here.
    let c1 = ulp_container::container::read(&sem.path(&good)).unwrap();
    let c2 = ulp_container::container::read(&sem.path(for_variant)).unwrap();
    assert_eq!(c1.metadata.patch_id, c2.metadata.patch_id);
    let (code, out, err) = sem.ulp(&["trigger", "-p", &a.pid.to_string(), "--revert", for_variant]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!(
            "  sem_prog (pid: {}): SKIPPED Build ID mismatch",
            a.pid
        )),
        "{out}"
    );
    sem.expect_check(&a, &good, true);
    assert_eq!(a.ask("static 5"), "500", "the right build's patch stays");
    sem.revert(&a, &good);
    sem.revert(&b, for_variant);
    sem.expect_check(&a, &good, false);
    sem.expect_check(&b, for_variant, false);
    assert_eq!(a.ask("static 5"), "6");
    assert_eq!(b.ask("static 5"), "6");

    // The library is upgraded on disk (the file behind the SONAME link
    // renamed over, as a package manager does) while `a` runs: `a` still
    // runs the old build, whose file is now deleted; a process started now
    // runs the new one.
    std::fs::copy(sem.path("variant/libsem.so.1"), sem.path("libsem.so.1.new")).unwrap();
    std::fs::rename(sem.path("libsem.so.1.new"), sem.path("libsem.so.1.0.0")).unwrap();
    assert!(std::fs::symlink_metadata(sem.path("libsem.so.1"))
        .unwrap()
        .file_type()
        .is_symlink());
    let mut d = sem.start("sem_prog");
    let out = skipped(&a, for_variant, "Build ID mismatch: ");
    assert!(out.contains(&good_id) && out.contains(&variant_id), "{out}");
    sem.expect_check(&a, for_variant, false);
    let out = skipped(&d, &good, "Build ID mismatch: ");
    assert!(out.contains(&good_id) && out.contains(&variant_id), "{out}");
    sem.expect_check(&d, &good, false);
    assert_eq!(a.ask("static 5"), "6");
    assert_eq!(d.ask("static 5"), "6");
    sem.apply(&a, &good);
    sem.apply(&d, for_variant);
    sem.expect_check(&a, &good, true);
    sem.expect_check(&d, for_variant, true);
    assert_eq!(a.ask("static 5"), "500");
    assert_eq!(d.ask("static 5"), "500");
    sem.revert(&a, &good);
    sem.revert(&d, for_variant);
    sem.expect_check(&a, &good, false);
    sem.expect_check(&d, for_variant, false);
    assert_eq!(a.ask("static 5"), "6");
    assert_eq!(d.ask("static 5"), "6");
}

// ---------------------------------------------------------------------
// Several patches on one function.
// ---------------------------------------------------------------------

/// All orders of `items`.
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

#[test]
fn stacked_patches_on_one_function_in_any_order() {
    let sem = Sem::new(
        "stack",
        &[
            "libsem.so.1",
            "sem_prog",
            "patch_stack11.so",
            "patch_stack12.so",
            "patch_stack13.so",
        ],
        &["libsem.so.1"],
    );
    let values = [11, 12, 13];
    let files: Vec<String> = values
        .iter()
        .map(|v| {
            let name = format!("patch_stack{v}");
            sem.pack(
                &name,
                &format!("{name}.so"),
                &format!("{name}.so\n@libsem.so.1\nsem_answer:stack_answer_{v}\n"),
            )
        })
        .collect();
    let mut t = sem.start("sem_prog");
    let entry = load_bias(t.pid, "libsem.so.1")
        + symbols(&sem.path("libsem.so.1"), &["sem_answer"])["sem_answer"];
    let original = site(t.pid, entry, 2);
    assert_eq!(original[..14], NOPS14);
    assert_eq!(original[14..], [0x66, 0x90]);

    // `applied` is in apply order: the entry must lead to the last one.
    let mut applied: Vec<usize> = Vec::new();
    let observe = |t: &mut Target, applied: &[usize], what: &str| {
        let want = applied.last().map_or(1, |&i| values[i]);
        assert_eq!(t.ask("answer"), want.to_string(), "{what}");
        for (i, f) in files.iter().enumerate() {
            sem.expect_check(t, f, applied.contains(&i));
        }
        let now = site(t.pid, entry, 2);
        if applied.is_empty() {
            assert_eq!(now[14..], [0x66, 0x90], "{what}: entry restored");
        } else {
            assert_eq!(now[14..], [0xeb, 0xf0], "{what}: entry redirected");
            our_stub(entry - 14, &now, &format!("{what}: stub"));
        }
    };
    for apply_order in permutations(&[0, 1, 2]) {
        for revert_order in permutations(&[0, 1, 2]) {
            let what = format!("apply {apply_order:?}, revert {revert_order:?}");
            for &i in &apply_order {
                sem.apply(&t, &files[i]);
                applied.push(i);
                observe(&mut t, &applied, &what);
            }
            for &i in &revert_order {
                sem.revert(&t, &files[i]);
                applied.retain(|&a| a != i);
                observe(&mut t, &applied, &what);
            }
        }
    }
    // Re-applying a reverted patch makes it the newest.
    for step in [
        (0, true),
        (1, true),
        (2, true),
        (1, false),
        (1, true),
        (2, false),
        (1, false),
        (0, false),
    ] {
        let (i, apply) = step;
        if apply {
            sem.apply(&t, &files[i]);
            applied.push(i);
        } else {
            sem.revert(&t, &files[i]);
            applied.retain(|&a| a != i);
        }
        observe(&mut t, &applied, &format!("step {step:?}"));
    }
    assert!(t.alive());
}

// ---------------------------------------------------------------------
// All or nothing.
// ---------------------------------------------------------------------

#[test]
fn a_patch_with_an_unpatchable_function_leaves_nothing_applied() {
    let sem = Sem::new(
        "allornothing",
        &["libsem.so.1", "sem_prog", "patch_multi.so"],
        &["libsem.so.1"],
    );
    // sem_unpadded (assembly in libsem.c) and sem_nopad (an object compiled
    // without -fpatchable-function-entry) have no padding, and at 4 bytes
    // they are too short for an entry rewrite too.
    let bad_attr = sem.pack(
        "multi_attr",
        "patch_multi.so",
        "multi_attr.so\n@libsem.so.1\nsem_multi_a:new_sem_multi_a\nsem_unpadded:new_sem_unpadded\n",
    );
    let bad_obj = sem.pack(
        "multi_obj",
        "patch_multi.so",
        "multi_obj.so\n@libsem.so.1\nsem_answer:new_sem_answer\nsem_multi_a:new_sem_multi_a\n\
         sem_nopad:new_sem_nopad\n",
    );
    let good = sem.pack(
        "multi_good",
        "patch_multi.so",
        "multi_good.so\n@libsem.so.1\nsem_answer:new_sem_answer\nsem_multi_a:new_sem_multi_a\n",
    );
    let mut t = sem.start("sem_prog");
    let syms = symbols(&sem.path("libsem.so.1"), &["sem_answer", "sem_multi_a"]);
    let bias = load_bias(t.pid, "libsem.so.1");
    let (answer, multi_a) = (bias + syms["sem_answer"], bias + syms["sem_multi_a"]);
    let before = (site(t.pid, answer, 2), site(t.pid, multi_a, 2));
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("multi"), "10 20 30");

    for (file, culprit) in [(&bad_attr, "sem_unpadded"), (&bad_obj, "sem_nopad")] {
        let (code, out, err) = sem.trigger(&t, file);
        // libpulp's "Function is not livepatchable" (278), masked to 8 bits.
        assert_eq!(code, 22, "{out}{err}");
        let head = format!("  sem_prog (pid: {}): ERROR {file}: ", t.pid);
        assert!(out.starts_with(&head), "{out}");
        assert!(
            out.contains(&format!("function '{culprit}' is not live-patchable")),
            "the error names the function: {out}"
        );
        assert!(out.ends_with(&summary(0, 0, 1)), "{out}");
        sem.expect_check(&t, file, false);
        assert_eq!(t.ask("answer"), "1", "{file}");
        assert_eq!(t.ask("multi"), "10 20 30", "{file}: nothing applied");
        assert_eq!(
            (site(t.pid, answer, 2), site(t.pid, multi_a, 2)),
            before,
            "{file}: no byte written"
        );
        let (_, out, _) = sem.ulp(&["patches", "-p", &t.pid.to_string()]);
        assert!(!out.contains("livepatch:"), "{out}");
    }

    // The process stays patchable, the same functions included.
    sem.apply(&t, &good);
    sem.expect_check(&t, &good, true);
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(t.ask("multi"), "11 20 30");
    sem.revert(&t, &good);
    sem.expect_check(&t, &good, false);
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("multi"), "10 20 30");
}

// ---------------------------------------------------------------------
// Code layout: endbr64, padding across a page, hidden visibility, dlopen
// after start, -Bsymbolic.
// ---------------------------------------------------------------------

#[test]
fn cet_page_crossing_hidden_dlopened_and_bsymbolic_functions() {
    let sem = Sem::new(
        "edge",
        &["libsem.so.1", "sem_prog", "libedge.so", "patch_edge.so"],
        &["libedge.so"],
    );
    let lib = sem.path("libedge.so");
    let elf = ElfFile::open(&lib).unwrap();
    let names = ["edge_hidden", "edge_value", "edge_pagecross"];
    let syms = symbols(&lib, &names);
    // What the fixture is meant to be, checked on the file.
    let pc = syms["edge_pagecross"];
    assert_ne!(
        (pc - 14) / 4096,
        (pc - 1) / 4096,
        "edge_pagecross's padding {:#x}..{pc:#x} must cross a page",
        pc - 14
    );
    for n in names {
        let at = elf.vaddr_to_offset(syms[n]).unwrap() as usize;
        assert_eq!(
            elf.data()[at..at + 6],
            [0xf3, 0x0f, 0x1e, 0xfa, 0x66, 0x90],
            "{n}: endbr64, then the posted NOP"
        );
    }
    let hidden = elf.symbol("edge_hidden").unwrap();
    // The linker turns a hidden symbol into a local one: .symtab only.
    assert_eq!(hidden.binding(), 0, "edge_hidden is STB_LOCAL");
    assert!(elf.dynamic_symbol("edge_hidden").is_none());
    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&dynamic.stdout).contains("SYMBOLIC"),
        "linked with -Bsymbolic"
    );

    let file = sem.pack(
        "patch_edge",
        "patch_edge.so",
        "patch_edge.so\n@libedge.so\nedge_hidden:new_edge_hidden\n\
         edge_value:new_edge_value\nedge_pagecross:new_edge_pagecross\n",
    );
    let mut t = sem.start("sem_prog");
    // Not loaded yet: skipped, nothing changes.
    let (code, out, err) = sem.trigger(&t, &file);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "  sem_prog (pid: {}): SKIPPED Target library not loaded: library 'libedge.so' is not loaded\n{}",
            t.pid,
            summary(0, 1, 0)
        )
    );
    sem.expect_check(&t, &file, false);

    assert_eq!(t.ask(&format!("dlopen {}", lib.display())), "ok");
    let observe = |t: &mut Target, patched: bool| {
        let (h, v, p) = if patched {
            ("1005", "200 200", "77")
        } else {
            ("6", "100 100", "7")
        };
        assert_eq!(t.ask("edge hidden 5"), h, "hidden, patched: {patched}");
        // edge_call_value calls edge_value directly (-Bsymbolic); the
        // program calls it through dlsym.
        assert_eq!(t.ask("edge value"), v, "-Bsymbolic, patched: {patched}");
        assert_eq!(
            t.ask("edge pagecross"),
            p,
            "page crossing, patched: {patched}"
        );
    };
    observe(&mut t, false);
    let entry = load_bias(t.pid, "libedge.so") + pc;
    let before = site(t.pid, entry, 6);
    assert_eq!(before[..14], NOPS14);

    sem.apply(&t, &file);
    sem.expect_check(&t, &file, true);
    observe(&mut t, true);
    let now = site(t.pid, entry, 6);
    our_stub(entry - 14, &now, "stub across the page");
    assert_eq!(
        now[14..],
        [0xf3, 0x0f, 0x1e, 0xfa, 0xeb, 0xec],
        "endbr64 kept, short jump after it"
    );

    sem.revert(&t, &file);
    sem.expect_check(&t, &file, false);
    observe(&mut t, false);
    assert_eq!(site(t.pid, entry, 6)[14..], before[14..]);
    // And once more: the leftover stub is fine to patch over.
    sem.apply(&t, &file);
    observe(&mut t, true);
    sem.revert(&t, &file);
    observe(&mut t, false);
    assert!(t.alive());
}

// ---------------------------------------------------------------------
// C++: exceptions propagate through patched functions.
// ---------------------------------------------------------------------

#[test]
fn cxx_exceptions_propagate_before_after_apply_and_after_revert() {
    let sem = Sem::new(
        "cxx",
        &["libcxx.so.1", "cxx_prog", "patch_cxx.so"],
        &["libcxx.so.1"],
    );
    let file = sem.pack(
        "patch_cxx",
        "patch_cxx.so",
        "patch_cxx.so\n@libcxx.so.1\n_ZN3cxx5innerEi:_ZN9cxx_patch5innerEi\n\
         _ZN3cxx5checkEi:_ZN9cxx_patch5checkEi\n",
    );
    let mut t = sem.start("cxx_prog");
    let old = |t: &mut Target| {
        assert_eq!(t.ask("outer 5"), "11");
        assert_eq!(t.ask("inner 4"), "8");
        // Thrown by inner(), propagating through outer() to main's catch.
        assert_eq!(t.ask("outer -1"), "caught old inner: negative");
        assert_eq!(t.ask("inner -1"), "caught old inner: negative");
        assert_eq!(t.ask("check 60"), "60");
        assert_eq!(t.ask("check 200"), "caught old check: too big");
    };
    let new = |t: &mut Target| {
        assert_eq!(t.ask("outer 5"), "16");
        assert_eq!(t.ask("inner 4"), "12");
        // Thrown by the new inner() (in the container), through the old
        // outer() (in the library).
        assert_eq!(t.ask("outer -1"), "caught new inner: negative");
        assert_eq!(t.ask("inner -1"), "caught new inner: negative");
        // The new check() calls the library's fail(), which throws through
        // the container's frame.
        assert_eq!(t.ask("check 60"), "caught new check: too big");
        assert_eq!(t.ask("check 7"), "-7");
    };
    old(&mut t);
    sem.expect_check(&t, &file, false);
    for _ in 0..2 {
        sem.apply(&t, &file);
        sem.expect_check(&t, &file, true);
        new(&mut t);
        sem.revert(&t, &file);
        sem.expect_check(&t, &file, false);
        old(&mut t);
    }
    assert!(t.alive());
}

// ---------------------------------------------------------------------
// The container packed by libpulp (testdata/libpulp-interop).
// ---------------------------------------------------------------------

/// The README transcript (the same session as tests/trigger.rs's
/// `libpulp_packed_container_applies_with_the_readme_transcript`), with
/// `ulp check` at every stage.
#[test]
fn libpulp_packed_container_static_and_tls_references_follow_the_readme() {
    let dir = TempDir::new("interop-refs");
    copy_files(
        &interop_dir(),
        dir.path(),
        &["greet_prog", "libgreet.so.0", "greet_livepatch1.so"],
    );
    let runtime = install_runtime(dir.path());
    let sem = Sem { dir, runtime };
    let file = "greet_livepatch1.so";
    let mut t = sem.start("greet_prog");
    assert_eq!(t.ask("bob"), "hello, bob");
    assert_eq!(t.ask("answer"), "41");
    assert_eq!(t.ask("calls"), "1 1");
    sem.expect_check(&t, file, false);
    sem.apply(&t, file);
    sem.expect_check(&t, file, true);
    assert_eq!(t.ask("bob"), "howdy, bob!");
    assert_eq!(t.ask("answer"), "42");
    assert_eq!(t.ask("calls"), "11 11", "static and TLS references");
    sem.revert(&t, file);
    sem.expect_check(&t, file, false);
    assert_eq!(t.ask("bob"), "hello, bob");
    assert_eq!(t.ask("answer"), "41");
    assert_eq!(t.ask("calls"), "12 12");
}

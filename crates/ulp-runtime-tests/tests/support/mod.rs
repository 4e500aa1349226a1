//! Shared by the runtime's integration tests: the C fixtures in `tests/c`,
//! compiled once per test binary with gcc; APPLY requests built with
//! `ulp_abi` and `ulp_abi::format`; and runs of the C harness, which
//! loads the built `libpulp.so` and plays the tool's part in-process.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use ulp_abi::format::{Metadata, Reference, Unit};
use ulp_abi::ApplyRequest;

const C_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c");

/// The target library flags of a live-patchable build.
const PADDED: &[&str] = &["-fpatchable-function-entry=16,14"];

/// `<target>/<profile>`, where cargo puts `libpulp.so` for these tests:
/// the test executable is `<target>/<profile>/deps/<test>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable in <profile>/deps")
        .to_path_buf()
}

pub fn runtime_so() -> PathBuf {
    let so = profile_dir().join("libpulp.so");
    assert!(so.exists(), "{} not built", so.display());
    so
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gcc(args: &[&str]) {
    run_ok(Command::new("gcc").args(args));
}

/// One build of the target library with the harness linked against it.
pub struct Variant {
    pub dir: PathBuf,
    pub lib: PathBuf,
    pub harness: PathBuf,
}

pub struct Fixtures {
    pub dir: PathBuf,
    /// `-fpatchable-function-entry=16,14`.
    pub plain: Variant,
    /// The same with `-fcf-protection` (endbr64 before the entry NOPs).
    pub cet: Variant,
    /// Without the padding: nothing in it is live-patchable.
    pub unpadded: Variant,
    pub patch1: PathBuf,
    pub patch2: PathBuf,
    pub patch_prog: PathBuf,
}

fn offset_defines() -> Vec<String> {
    use ulp_abi::offset::*;
    let mut d: Vec<String> = [
        ("OFF_STATE", STATE),
        ("OFF_REQ_OP", REQ_OP),
        ("OFF_REQ_LEN", REQ_LEN),
        ("OFF_REQ", REQ),
        ("OFF_RES_CODE", RES_CODE),
        ("OFF_RES_NWRITES", RES_NWRITES),
        ("OFF_RES_MSG", RES_MSG),
        ("OFF_RES_WRITES", RES_WRITES),
        ("OFF_REG_GENERATION", REG_GENERATION),
        ("OFF_REG_COUNT", REG_COUNT),
        ("OFF_REG_RECORDS", REG_RECORDS),
        ("OFF_RING_HEAD", RING_HEAD),
        ("OFF_RING", RING),
    ]
    .iter()
    .map(|(n, v)| format!("-D{n}={v}"))
    .collect();
    d.push(format!("-DREQUEST_MAX={}", ulp_abi::REQUEST_MAX));
    d.push(format!("-DRING_SIZE={}", ulp_abi::RING_SIZE));
    d
}

fn build_variant(root: &Path, name: &str, flags: &[&str]) -> Variant {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libtarget.so");
    let src = format!("{C_DIR}/target.c");
    let mut args = vec!["-O2", "-fno-inline", "-fPIC", "-shared", "-Wl,--build-id"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[&src, "-o", lib.to_str().unwrap()]);
    gcc(&args);
    build_harness(dir, lib, "-ltarget")
}

/// The harness linked against `lib` (in `dir`, found through `$ORIGIN`).
fn build_harness(dir: PathBuf, lib: PathBuf, link: &str) -> Variant {
    let harness = dir.join("harness");
    let defines = offset_defines();
    let hsrc = format!("{C_DIR}/harness.c");
    let mut args: Vec<&str> = vec![
        "-O2",
        "-fpatchable-function-entry=16,14",
        "-Wl,--build-id",
        "-pthread",
    ];
    args.extend(defines.iter().map(String::as_str));
    args.extend_from_slice(&[
        &hsrc,
        "-o",
        harness.to_str().unwrap(),
        "-L",
        dir.to_str().unwrap(),
        "-Wl,--no-as-needed",
        link,
        "-Wl,-rpath,$ORIGIN",
        "-ldl",
    ]);
    gcc(&args);
    Variant { dir, lib, harness }
}

/// The harness linked against libpulp's own `libgreet.so.0` (testdata),
/// with its libpulp-packed container `greet_livepatch1.so` beside it.
pub fn interop() -> &'static Variant {
    static V: OnceLock<Variant> = OnceLock::new();
    V.get_or_init(|| {
        let dir = fixtures().dir.join("interop");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libgreet.so.0", "greet_livepatch1.so"] {
            std::fs::copy(interop_dir().join(name), dir.join(name)).unwrap();
        }
        let lib = dir.join("libgreet.so.0");
        build_harness(dir, lib, "-l:libgreet.so.0")
    })
}

pub fn interop_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/libpulp-interop"
    ))
}

fn build_patch(root: &Path, name: &str) -> PathBuf {
    let out = root.join(format!("{name}.so"));
    let src = format!("{C_DIR}/{name}.c");
    gcc(&[
        "-O2",
        "-fPIC",
        "-shared",
        "-Wl,--build-id",
        &src,
        "-o",
        out.to_str().unwrap(),
    ]);
    out
}

const PREFIX: &str = "ulp-runtime-fixtures-";

/// Removes the fixture directories of earlier test runs whose process is
/// gone (a running one keeps its own).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The fixtures, built once per test binary (in a directory named after
/// this process, removed by a later run).
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        remove_stale(&base);
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fixtures {
            plain: build_variant(&dir, "plain", PADDED),
            cet: build_variant(
                &dir,
                "cet",
                &["-fpatchable-function-entry=16,14", "-fcf-protection"],
            ),
            unpadded: build_variant(&dir, "unpadded", &[]),
            patch1: build_patch(&dir, "patch1"),
            patch2: build_patch(&dir, "patch2"),
            patch_prog: build_patch(&dir, "patch_prog"),
            dir,
        }
    })
}

/// The value of symbol `name` in `file`'s symbol table (`nm`), locals
/// included.
pub fn symbol(file: &Path, name: &str) -> u64 {
    let out = run_ok(Command::new("nm").arg(file));
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 && f[2] == name {
            return u64::from_str_radix(f[0], 16).unwrap();
        }
    }
    panic!("no symbol {name} in {}", file.display());
}

/// The GNU build-id of `file` (`readelf -n`).
pub fn build_id(file: &Path) -> Vec<u8> {
    let out = run_ok(Command::new("readelf").arg("-n").arg(file));
    let hex = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build-id in {}", file.display()));
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A unit `old` of `target` replaced by `new`.
pub fn unit(target: &Path, old: &str, new: &str) -> Unit {
    Unit {
        old_fname: old.into(),
        new_fname: new.into(),
        old_faddr: symbol(target, old),
    }
}

/// A reference from `tvar` of `target` into pointer `pvar` of `container`.
pub fn reference(target: &Path, tvar: &str, container: &Path, pvar: &str, tls: bool) -> Reference {
    Reference {
        target_name: tvar.into(),
        patch_name: pvar.into(),
        target_offset: symbol(target, tvar),
        patch_offset: symbol(container, pvar),
        tls,
    }
}

/// Metadata for `target` (its basename and build-id) with patch id
/// `[id; 32]`.
pub fn metadata(id: u8, target: &Path, units: Vec<Unit>, refs: Vec<Reference>) -> Metadata {
    Metadata {
        patch_id: [id; 32],
        build_id: build_id(target),
        target_name: target.file_name().unwrap().to_str().unwrap().into(),
        units,
        refs,
    }
}

/// Metadata with patch id `[id; 32]` that replaces one function `old` of
/// `target` by `new`, with no references.
pub fn one_function(id: u8, target: &Path, old: &str, new: &str) -> Metadata {
    metadata(id, target, vec![unit(target, old, new)], vec![])
}

/// Writes the APPLY request for `container` and `meta` into `dir` and
/// returns its path.
pub fn request_file(
    dir: &Path,
    name: &str,
    container: &Path,
    meta: &Metadata,
    comments: &[u8],
) -> PathBuf {
    let ulp = meta.encode();
    let container = container.to_str().unwrap().as_bytes();
    let req = ApplyRequest {
        container_path: container,
        ulp: &ulp,
        comments,
        sizes: &[],
    };
    let mut buf = vec![0u8; req.encoded_len()];
    let n = req.encode(&mut buf).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &buf[..n]).unwrap();
    path
}

/// The request of patch 1 for `v`: answer, bump and the static `secret`,
/// with the `counter` and TLS `tcounter` references.
pub fn patch1_request(v: &Variant, id: u8) -> PathBuf {
    let f = fixtures();
    let meta = metadata(
        id,
        &v.lib,
        vec![
            unit(&v.lib, "answer", "new_answer"),
            unit(&v.lib, "bump", "new_bump"),
            unit(&v.lib, "secret", "new_secret"),
        ],
        vec![
            reference(&v.lib, "counter", &f.patch1, "ulpr_counter", false),
            reference(&v.lib, "tcounter", &f.patch1, "ulpr_tcounter", true),
        ],
    );
    request_file(
        &v.dir,
        &format!("patch1-{id}.req"),
        &f.patch1,
        &meta,
        b" Fixes CVE-2099-0001.\n\0",
    )
}

/// The request of patch 2 for `v`: answer only.
pub fn patch2_request(v: &Variant, id: u8) -> PathBuf {
    let f = fixtures();
    let meta = one_function(id, &v.lib, "answer", "new_answer2");
    request_file(&v.dir, &format!("patch2-{id}.req"), &f.patch2, &meta, b"")
}

/// Runs the harness of `v` on `script` with extra environment; returns
/// its output lines (and checks it finished and wrote nothing unexpected).
pub fn run(v: &Variant, script: &str, env: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = Command::new(&v.harness);
    cmd.arg(runtime_so())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, val) in env {
        cmd.env(k, val);
    }
    let mut child = cmd.spawn().expect("starting the harness");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "harness failed ({}):\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // The runtime never prints: anything on stderr came from it.
    assert_eq!(stderr, "", "stderr of the harness");
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{stdout}");
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    lines
}

/// The lines starting with `prefix`.
pub fn with_prefix<'a>(lines: &'a [String], prefix: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .map(String::as_str)
        .collect()
}

/// The harness's result lines of `what` (`apply`, `revert`, `undo`,
/// `raw`...): (code, message, writes summary), in order.
pub fn results<'a>(lines: &'a [String], what: &str) -> Vec<(i32, &'a str, String)> {
    let heads = with_prefix(lines, &format!("{what} rc="));
    let writes = with_prefix(lines, &format!("{what} writes:"));
    assert_eq!(heads.len(), writes.len());
    heads
        .iter()
        .zip(writes)
        .map(|(h, w)| {
            let code: i32 = h
                .split("code=")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .unwrap()
                .parse()
                .unwrap();
            let rc: i32 = h[format!("{what} rc=").len()..]
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(rc, code, "{h}");
            let msg = h.split_once(" msg=").unwrap().1;
            let w = w[format!("{what} writes:").len()..].trim().to_string();
            (code, msg, w)
        })
        .collect()
}

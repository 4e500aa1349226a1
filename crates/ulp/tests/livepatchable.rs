//! `ulp livepatchable --functions`: the method per function (padded, entry
//! rewrite, not patchable and why) on real files: `librewrite.so.1`
//! (fixtures/rewrite_lib.c, one function per answer), the padded demo
//! library, `libsem.so.1` (padded but for two functions) and the system's
//! libc and zlib. Also: libpulp's answer without the option is unchanged.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use common::*;
use serde_json::Value;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const LIBZ: &str = "/lib/x86_64-linux-gnu/libz.so.1";

/// A scratch directory with `librewrite.so.1` and `libulpdemo.so.1`.
fn scratch(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    copy_files(
        &fixtures_dir(),
        dir.path(),
        &["librewrite.so.1", "libulpdemo.so.1"],
    );
    dir
}

/// The function lines of a `--functions` run: name -> what follows ": ".
/// The last line (the summary) is returned apart.
fn lines(out: &str) -> (BTreeMap<String, String>, String) {
    let mut all: Vec<&str> = out.lines().collect();
    let summary = all.pop().expect("a summary line").to_string();
    let map = all
        .iter()
        .map(|l| {
            let (name, what) = l.split_once(": ").unwrap_or_else(|| panic!("line {l:?}"));
            (name.to_string(), what.to_string())
        })
        .collect();
    (map, summary)
}

fn json(dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = ulp(dir, &all);
    assert_ne!(code, 64, "ulp {all:?}: usage error: {err}");
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, v)
}

#[test]
fn every_outcome_on_a_library_without_padding() {
    let dir = scratch("lp-outcomes");
    let (code, out, err) = ulp(
        dir.path(),
        &["livepatchable", "--functions", "librewrite.so.1"],
    );
    assert_eq!(code, 0, "one function can be rewritten: {out}{err}");
    let (f, summary) = lines(&out);
    let names: Vec<&str> = f.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "__rewrite_pick_fast",
            "__rewrite_pick_generic",
            "rewrite_call",
            "rewrite_early_ret",
            "rewrite_in_bss",
            "rewrite_in_data",
            "rewrite_jrcxz",
            "rewrite_loop",
            "rewrite_nothing",
            "rewrite_pick",
            "rewrite_plain",
            "rewrite_undecodable",
        ],
        "sorted by name; the alias rewrite_plain_alias and the IFUNC's resolver are not listed apart:\n{out}"
    );
    let is = |name: &str, prefix: &str| {
        assert!(
            f[name].starts_with(prefix),
            "{name}: expected {prefix:?}, got {:?}",
            f[name]
        );
    };
    is("rewrite_plain", "entry rewrite (5 bytes displaced)");
    is("rewrite_nothing", "not patchable: the function at 0x");
    assert!(f["rewrite_nothing"].ends_with("the redirect needs 5"));
    is(
        "rewrite_loop",
        "not patchable: a conditional jump (75 fa) at 0x",
    );
    assert!(f["rewrite_loop"].contains("(+0x2), inside the 6 bytes"));
    is("rewrite_call", "not patchable: the function at 0x");
    assert!(f["rewrite_call"].contains("has a call (e8"));
    is("rewrite_early_ret", "not patchable: the function at 0x");
    assert!(f["rewrite_early_ret"].contains("has a return (c3)"));
    assert!(f["rewrite_jrcxz"].contains("cannot be moved: a loop/jrcxz"));
    assert!(f["rewrite_undecodable"].contains("cannot be decoded completely"));
    assert_eq!(
        f["rewrite_pick"],
        "not patchable: an IFUNC resolver; the process runs the implementation it selected: \
         patch that function instead (candidates: __rewrite_pick_fast, __rewrite_pick_generic)"
    );
    assert_eq!(
        f["rewrite_in_data"],
        "not patchable: no code to patch: it is in section '.data', which is not executable"
    );
    is(
        "rewrite_in_bss",
        "not patchable: no code to patch: it is in section '.bss'",
    );
    assert_eq!(
        summary,
        "file 'librewrite.so.1': 12 functions: 0 padded, 1 entry rewrite, 11 not patchable \
         (branch_into_range 1, displaces_call 1, ends_in_range 1, ifunc 1, not_executable 2, \
         too_short 3, undecodable 1, unrelocatable 1)"
    );
}

#[test]
fn padded_libraries_before_and_after_post() {
    let dir = scratch("lp-padded");
    let expect = "\
demo_answer: padded
demo_bump: padded
demo_count: padded
demo_format: padded
demo_word: padded
file 'libulpdemo.so.1': 5 functions: 5 padded, 0 entry rewrite, 0 not patchable
";
    let run = || {
        ulp(
            dir.path(),
            &["livepatchable", "--functions", "libulpdemo.so.1"],
        )
    };
    assert_eq!((run().0, run().1.as_str()), (0, expect));
    let (code, out, err) = ulp(dir.path(), &["post", "libulpdemo.so.1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!((run().0, run().1.as_str()), (0, expect), "posted: the same");

    // Padded but for two functions without padding (one compiled without
    // the flag, one in assembly), both 4 bytes long: too short for an
    // entry rewrite as well.
    let sem = fixtures_dir().join("semantics").join("libsem.so.1");
    let (code, out, err) = ulp(
        dir.path(),
        &["livepatchable", "--functions", sem.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let (f, summary) = lines(&out);
    assert_eq!(f["sem_answer"], "padded");
    assert_eq!(
        f["sem_static_fn"], "padded",
        "static functions from .symtab"
    );
    for f in [&f["sem_nopad"], &f["sem_unpadded"]] {
        assert!(
            f.starts_with("not patchable: ") && f.contains("the redirect needs 5"),
            "{out}"
        );
    }
    assert!(
        summary
            .ends_with(": 11 functions: 9 padded, 0 entry rewrite, 2 not patchable (too_short 2)"),
        "{summary}"
    );
}

#[test]
fn function_operands_in_order_and_the_exit_status() {
    let dir = scratch("lp-filter");
    let (code, out, _) = ulp(
        dir.path(),
        &[
            "livepatchable",
            "--functions",
            "librewrite.so.1",
            "rewrite_plain_alias",
            "nope",
            "rewrite_nothing",
        ],
    );
    assert_eq!(code, 1, "a FUNCTION is missing and one is not patchable");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got[0],
        "rewrite_plain_alias: entry rewrite (5 bytes displaced)"
    );
    assert_eq!(got[1], "nope: no such function in 'librewrite.so.1'");
    assert!(
        got[2].starts_with("rewrite_nothing: not patchable: "),
        "{out}"
    );
    assert_eq!(
        got[3],
        "file 'librewrite.so.1': 2 functions: 0 padded, 1 entry rewrite, 1 not patchable (too_short 1)"
    );
    assert_eq!(got.len(), 4);

    // Every FUNCTION patchable: 0; the command word and options anywhere.
    let (code, out, _) = ulp(
        dir.path(),
        &[
            "--functions",
            "librewrite.so.1",
            "livepatchable",
            "rewrite_plain",
        ],
    );
    assert_eq!(code, 0, "{out}");
    // Without operands: 0 when at least one function is patchable by any
    // method, 1 when none is.
    let (code, _, _) = ulp(
        dir.path(),
        &["livepatchable", "--functions", "libulpdemo.so.1"],
    );
    assert_eq!(code, 0);
    let (code, _, _) = ulp(
        dir.path(),
        &[
            "livepatchable",
            "--functions",
            "librewrite.so.1",
            "rewrite_pick",
        ],
    );
    assert_eq!(code, 1);

    // -q: the summary only; -v: address, size and the other names.
    let (code, out, _) = ulp(
        dir.path(),
        &["livepatchable", "--functions", "-q", "librewrite.so.1"],
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("file 'librewrite.so.1': 12 functions: "));
    let (_, out, _) = ulp(
        dir.path(),
        &[
            "livepatchable",
            "--functions",
            "-v",
            "librewrite.so.1",
            "rewrite_plain",
        ],
    );
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("rewrite_plain (0x"), "{first}");
    assert!(
        first.ends_with(" bytes, also rewrite_plain_alias): entry rewrite (5 bytes displaced)"),
        "{first}"
    );

    // Not an ELF file: libpulp's sentence, status 1, the error on stderr.
    std::fs::write(dir.join("text.so"), "hello").unwrap();
    let (code, out, err) = ulp(dir.path(), &["livepatchable", "--functions", "text.so"]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "file 'text.so' is not livepatchable: not an ELF file\n"
    );
    assert!(err.starts_with("ulp: 'text.so': not an ELF file"), "{err}");
}

#[test]
fn libpulp_answer_unchanged_without_the_option() {
    let dir = scratch("lp-compat");
    let (code, out, err) = ulp(dir.path(), &["livepatchable", "libulpdemo.so.1"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "file 'libulpdemo.so.1' is livepatchable.\n", "")
    );
    // The same line and status as libpulp; only stderr adds that the
    // entry rewrite can still patch some of its functions.
    let (code, out, err) = ulp(dir.path(), &["livepatchable", "librewrite.so.1"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            1,
            "file 'librewrite.so.1' is not livepatchable: no __patchable_function_entries \
             section (build with -fpatchable-function-entry=16,14)\n",
            "ulp: note: ulp can still patch 1 of its functions by rewriting their entry; see \
             `ulp livepatchable --functions librewrite.so.1`\n"
        )
    );
    // FUNCTION operands need the option.
    let (code, _, err) = ulp(
        dir.path(),
        &["livepatchable", "librewrite.so.1", "rewrite_plain"],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("FUNCTION operands need --functions"), "{err}");
    let (code, _, _) = ulp(dir.path(), &["livepatchable", "--functions"]);
    assert_eq!(code, 64);
    // The other commands do not take it.
    let (code, _, err) = ulp(dir.path(), &["post", "--functions", "libulpdemo.so.1"]);
    assert_eq!(code, 64, "{err}");
    let (code, help, _) = ulp(dir.path(), &["livepatchable", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("--functions"), "{help}");
}

#[test]
fn json_shape() {
    let dir = scratch("lp-json");
    // Without the option: libpulp's three fields plus the counts.
    let (code, v) = json(dir.path(), &["livepatchable", "librewrite.so.1"]);
    assert_eq!(code, 1);
    assert_eq!(v["livepatchable"], false);
    assert!(v["reason"].is_string());
    assert_eq!(
        v["methods"],
        serde_json::json!({
            "functions": 12, "padded": 0, "rewrite": 1, "none": 11,
            "none_by_reason": {
                "branch_into_range": 1, "displaces_call": 1, "ends_in_range": 1,
                "ifunc": 1, "not_executable": 2, "too_short": 3, "undecodable": 1,
                "unrelocatable": 1
            }
        })
    );
    assert!(v.get("functions").is_none(), "{v}");
    let (code, v) = json(dir.path(), &["livepatchable", "libulpdemo.so.1"]);
    assert_eq!(code, 0);
    assert_eq!(v["methods"]["padded"], 5);
    assert_eq!(v["reason"], Value::Null);
    let (code, v) = json(dir.path(), &["livepatchable", "missing.so"]);
    assert_eq!((code, &v["methods"]), (1, &Value::Null));

    // With the option: one object per function, the same keys each.
    let (code, v) = json(
        dir.path(),
        &["livepatchable", "--functions", "librewrite.so.1"],
    );
    assert_eq!(code, 0);
    let list = v["functions"].as_array().unwrap();
    assert_eq!(list.len(), 12);
    let keys = [
        "address",
        "aliases",
        "displaced",
        "method",
        "name",
        "reason",
        "reason_key",
        "size",
        "version",
    ];
    for f in list {
        let got: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(got, keys, "{f}");
        assert!(f["address"].as_u64().unwrap() > 0 && f["size"].as_u64().unwrap() > 0);
    }
    let by_name: BTreeMap<&str, &Value> = list
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f))
        .collect();
    let plain = by_name["rewrite_plain"];
    assert_eq!(plain["method"], "rewrite");
    assert_eq!(plain["displaced"], 5);
    assert_eq!(plain["reason_key"], Value::Null);
    assert_eq!(plain["aliases"], serde_json::json!(["rewrite_plain_alias"]));
    let keys: BTreeMap<&str, &str> = list
        .iter()
        .filter(|f| f["method"] == "none")
        .map(|f| {
            assert!(f["reason"].is_string() && f["displaced"].is_null(), "{f}");
            (
                f["name"].as_str().unwrap(),
                f["reason_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        BTreeMap::from([
            ("__rewrite_pick_fast", "too_short"),
            ("__rewrite_pick_generic", "too_short"),
            ("rewrite_call", "displaces_call"),
            ("rewrite_early_ret", "ends_in_range"),
            ("rewrite_in_bss", "not_executable"),
            ("rewrite_in_data", "not_executable"),
            ("rewrite_jrcxz", "unrelocatable"),
            ("rewrite_loop", "branch_into_range"),
            ("rewrite_nothing", "too_short"),
            ("rewrite_pick", "ifunc"),
            ("rewrite_undecodable", "undecodable"),
        ])
    );
    // With FUNCTION operands: the ones asked for, and those not found.
    let (code, v) = json(
        dir.path(),
        &[
            "livepatchable",
            "--functions",
            "libulpdemo.so.1",
            "demo_answer",
            "nope",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(v["functions"].as_array().unwrap().len(), 1);
    assert_eq!(v["functions"][0]["method"], "padded");
    assert_eq!(v["missing"], serde_json::json!(["nope"]));
    assert_eq!(v["methods"]["functions"], 5, "counts cover the whole file");
}

/// The system's libraries (Debian 12 here and on CI): glibc and zlib
/// have no padding; their functions are patched by entry rewrite.
#[test]
fn system_libc_and_zlib() {
    if !Path::new(LIBC).exists() || !Path::new(LIBZ).exists() {
        eprintln!("skipped: no {LIBC} or {LIBZ} (Debian/Ubuntu layout)");
        return;
    }
    let dir = TempDir::new("lp-system");
    let (code, out, err) = ulp(
        dir.path(),
        &[
            "livepatchable",
            "--functions",
            LIBC,
            "atoi",
            "memcpy",
            "malloc",
        ],
    );
    assert_eq!(code, 1, "memcpy is an IFUNC: {out}{err}");
    let got: Vec<&str> = out.lines().collect();
    assert!(got[0].starts_with("atoi: entry rewrite ("), "{out}");
    // glibc has two memcpy: the IFUNC new links bind to, and the old
    // one kept for binaries linked before glibc 2.14.
    assert!(
        got.contains(
            &"memcpy@@GLIBC_2.14: not patchable: an IFUNC resolver; the process runs the \
              implementation it selected: patch that function instead"
        ),
        "{out}"
    );
    assert!(
        got.iter().any(|l| l.starts_with("malloc: entry rewrite (")),
        "{out}"
    );

    let (code, out, _) = ulp(
        dir.path(),
        &["livepatchable", "--functions", LIBZ, "zlibVersion"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("zlibVersion: entry rewrite ("), "{out}");

    // The whole of libc: most functions by entry rewrite, every line well
    // formed, in little time (the debug build; release is far faster).
    let started = Instant::now();
    let (code, out, _) = ulp(dir.path(), &["livepatchable", "--functions", LIBC]);
    let took = started.elapsed();
    assert_eq!(code, 0);
    let (f, summary) = lines(&out);
    assert!(f.len() > 1500, "{summary}");
    let rewrite = f
        .values()
        .filter(|w| w.starts_with("entry rewrite ("))
        .count();
    assert!(rewrite * 10 > f.len() * 8, "{summary}");
    assert!(f
        .values()
        .all(|w| w.starts_with("entry rewrite (") || w.starts_with("not patchable: ")));
    assert!(took.as_secs() < 10, "{took:?}");
}

/// Damaged copies of librewrite.so.1 (truncated, bytes flipped in the
/// headers, symbol and version tables) never crash the command: an error
/// or an answer, status 0 or 1.
#[test]
fn damaged_files_never_crash() {
    let dir = scratch("lp-hostile");
    let good = std::fs::read(dir.join("librewrite.so.1")).unwrap();
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for len in [0, 20, 64, 200, 1000, good.len() / 2, good.len() - 100] {
        cases.push(good[..len].to_vec());
    }
    // A cheap deterministic generator: flip one byte at a time, spread
    // over the whole file and every section header.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bad = good.clone();
        let at = if i % 2 == 0 {
            (x as usize) % bad.len()
        } else {
            bad.len() - 1 - (x as usize) % 2048
        };
        bad[at] ^= (x >> 32) as u8 | 1;
        cases.push(bad);
    }
    for (i, bytes) in cases.iter().enumerate() {
        std::fs::write(dir.join("bad.so"), bytes).unwrap();
        for args in [
            &["livepatchable", "--functions", "bad.so"][..],
            &["livepatchable", "--functions", "--json", "bad.so"][..],
            &["livepatchable", "--json", "bad.so"][..],
        ] {
            let (code, out, err) = ulp(dir.path(), args);
            assert!(
                code == 0 || code == 1,
                "case {i}, ulp {args:?}: status {code}\n{out}{err}"
            );
        }
    }
}

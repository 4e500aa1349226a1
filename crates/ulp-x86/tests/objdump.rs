//! Cross-check of the decoder against binutils' objdump on real code: every
//! sized function of the system's libc, zlib and libcrypto, and of libraries
//! gcc builds here with several instruction sets. For each function the
//! instruction boundaries must be the ones objdump finds, each relative
//! branch target must be the address objdump prints, and each RIP-relative
//! operand must refer to the address in objdump's `# ADDR` comment.
//!
//! Functions objdump itself cannot decode (a `(bad)` line) are counted and
//! skipped; any other difference is a decoder bug and fails the test.

mod common;

use std::path::Path;
use std::process::Command;

use common::{functions, gcc, SAMPLE_C};
use ulp_fixtures::TempDir;
use ulp_x86::{decode_all, Insn};

/// One line of objdump's output: the instruction address and its text.
struct Line {
    addr: u64,
    text: String,
}

/// `objdump -d --no-show-raw-insn` of `path`, one entry per instruction,
/// sorted by address.
fn objdump(path: &Path) -> Vec<Line> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-w"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("running objdump (from binutils) failed: {e}; install binutils to run this test")
        });
    assert!(
        out.status.success(),
        "objdump -d {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<Line> = Vec::new();
    // Whether the previous line was an instruction (not a symbol label,
    // where objdump starts decoding afresh).
    let mut after_insn = false;
    for line in text.lines() {
        // "   2a3f4:\tpush   %r15"
        let parsed = line
            .split_once(":\t")
            .filter(|_| line.starts_with(' '))
            .and_then(|(a, rest)| Some((u64::from_str_radix(a.trim_start(), 16).ok()?, rest)));
        let Some((addr, rest)) = parsed else {
            after_insn = false;
            continue;
        };
        // objdump shows a REX byte that another prefix follows (and so is
        // ignored by the processor) as an instruction of its own; the
        // processor, and this decoder, see one instruction.
        let merge = after_insn
            && lines
                .last()
                .is_some_and(|p| lone_rex_count(&p.text).is_some_and(|n| p.addr + n == addr));
        after_insn = true;
        if let Some(prev) = lines.last_mut().filter(|_| merge) {
            prev.text = format!("{} {rest}", prev.text);
            continue;
        }
        lines.push(Line {
            addr,
            text: rest.to_string(),
        });
    }
    lines.sort_by_key(|l| l.addr);
    lines
}

/// The number of REX prefixes (`rex`, `rex.W`, `rex.WRXB` …) on a line
/// that has nothing else.
fn lone_rex_count(text: &str) -> Option<u64> {
    let is_rex = |t: &str| {
        t == "rex"
            || t.strip_prefix("rex.")
                .is_some_and(|f| !f.is_empty() && f.chars().all(|c| "WRXB".contains(c)))
    };
    let tokens: Vec<&str> = text.split_whitespace().collect();
    (!tokens.is_empty() && tokens.iter().all(|t| is_rex(t))).then_some(tokens.len() as u64)
}

#[derive(Default)]
struct Tally {
    functions: usize,
    matched: usize,
    objdump_bad: usize,
    insns: usize,
    branches: usize,
    rip_refs: usize,
    mismatches: Vec<String>,
}

/// Does objdump's text for an instruction name `target` as a branch target
/// (a token equal to its hex)?
fn names_target(text: &str, target: u64) -> bool {
    let hex = format!("{target:x}");
    text.split_whitespace().any(|t| t == hex)
}

fn check_file(path: &Path, label: &str) -> Tally {
    let lines = objdump(path);
    let funcs = functions(path);
    assert!(
        !funcs.is_empty(),
        "no function symbols with sizes in {}",
        path.display()
    );
    let mut t = Tally::default();
    for f in &funcs {
        t.functions += 1;
        let end = f.addr + f.bytes.len() as u64;
        let lo = lines.partition_point(|l| l.addr < f.addr);
        let hi = lines.partition_point(|l| l.addr < end);
        let theirs = &lines[lo..hi];
        if theirs.iter().any(|l| l.text.contains("(bad)")) {
            t.objdump_bad += 1;
            continue;
        }
        let ours: Result<Vec<Insn>, _> = decode_all(&f.bytes, f.addr).collect();
        let ours = match ours {
            Ok(v) => v,
            Err(e) => {
                let at = theirs.iter().find(|l| l.addr == e.addr());
                t.mismatches.push(format!(
                    "{label} {} ({:#x}): {e}; objdump: {}",
                    f.name,
                    f.addr,
                    at.map_or("no instruction there", |l| &l.text)
                ));
                continue;
            }
        };
        match compare(&ours, theirs, &mut t) {
            Ok(()) => {
                t.matched += 1;
                t.insns += ours.len();
            }
            Err(why) => t
                .mismatches
                .push(format!("{label} {} ({:#x}): {why}", f.name, f.addr)),
        }
    }
    println!(
        "{label}: {} functions, {} decoded and matched objdump ({} instructions, {} branch targets, {} rip-relative targets), {} skipped (objdump: (bad)), {} mismatches",
        t.functions,
        t.matched,
        t.insns,
        t.branches,
        t.rip_refs,
        t.objdump_bad,
        t.mismatches.len()
    );
    t
}

/// Compares one function's instructions; counts the checked targets.
fn compare(ours: &[Insn], theirs: &[Line], t: &mut Tally) -> Result<(), String> {
    for (i, insn) in ours.iter().enumerate() {
        let Some(l) = theirs.get(i) else {
            return Err(format!(
                "{} instructions, objdump {}",
                ours.len(),
                theirs.len()
            ));
        };
        if l.addr != insn.addr() {
            return Err(format!(
                "boundary: ours {:#x}, objdump {:#x} '{}'",
                insn.addr(),
                l.addr,
                l.text
            ));
        }
        if let Some(target) = insn.branch_target() {
            if !names_target(&l.text, target) {
                return Err(format!(
                    "branch at {:#x}: ours {target:#x}, objdump '{}'",
                    insn.addr(),
                    l.text
                ));
            }
            t.branches += 1;
        }
        if let Some(rip) = insn.rip_ref() {
            if !l.text.contains(&format!("# {:x}", rip.target)) {
                return Err(format!(
                    "rip-relative at {:#x}: ours {:#x}, objdump '{}'",
                    insn.addr(),
                    rip.target,
                    l.text
                ));
            }
            t.rip_refs += 1;
        }
    }
    if ours.len() != theirs.len() {
        return Err(format!(
            "{} instructions, objdump {}",
            ours.len(),
            theirs.len()
        ));
    }
    Ok(())
}

fn assert_clean(tallies: &[Tally]) {
    let all: Vec<&String> = tallies.iter().flat_map(|t| &t.mismatches).collect();
    for m in all.iter().take(40) {
        println!("MISMATCH {m}");
    }
    assert!(
        all.is_empty(),
        "{} functions differ from objdump (first ones above)",
        all.len()
    );
}

fn objdump_available() {
    let st = Command::new("objdump").arg("--version").output();
    assert!(
        st.is_ok_and(|o| o.status.success()),
        "objdump (binutils) is required for the cross-check and could not be run"
    );
}

#[test]
fn libc_matches_objdump() {
    objdump_available();
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    assert!(
        libc.exists(),
        "the system libc {} is required",
        libc.display()
    );
    let t = check_file(libc, "libc");
    assert!(t.matched > 1000, "too few libc functions checked");
    assert_clean(&[t]);
}

#[test]
fn zlib_and_libcrypto_match_objdump() {
    objdump_available();
    let mut tallies = Vec::new();
    for (path, label) in [
        ("/lib/x86_64-linux-gnu/libz.so.1", "libz"),
        ("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "libcrypto"),
    ] {
        if Path::new(path).exists() {
            tallies.push(check_file(Path::new(path), label));
        } else {
            println!("{label}: {path} is not installed, skipped");
        }
    }
    assert_clean(&tallies);
}

#[test]
fn gcc_code_matches_objdump() {
    objdump_available();
    let dir = TempDir::new("x86-objdump");
    let mut tallies = Vec::new();
    for (name, flags) in [
        ("o2", &["-O2"][..]),
        ("os-cet", &["-Os", "-fcf-protection=full"][..]),
        ("o3-avx2", &["-O3", "-march=x86-64-v3"][..]),
        ("o3-avx512", &["-O3", "-march=x86-64-v4"][..]),
    ] {
        let mut args = vec!["-fPIC", "-shared"];
        args.extend_from_slice(flags);
        let lib = gcc(&dir, &format!("lib{name}.so"), SAMPLE_C, &args);
        let t = check_file(&lib, name);
        assert!(t.matched >= 10, "{name}: too few functions checked");
        tallies.push(t);
    }
    assert_clean(&tallies);
}

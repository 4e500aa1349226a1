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

use std::collections::BTreeMap;
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
        let merge = after_insn && lines.last().is_some_and(|p| prefixes_only(&p.text));
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

/// Whether objdump's text for an "instruction" is only prefixes. objdump
/// shows a REX byte that another prefix follows (and so is ignored by the
/// processor) as an instruction of its own, with the prefixes before it;
/// the processor, and this decoder, see one instruction.
fn prefixes_only(text: &str) -> bool {
    let mut words = text.split_whitespace().peekable();
    words.peek().is_some() && words.all(is_prefix_word)
}

/// Words objdump prints for prefixes.
fn is_prefix_word(t: &str) -> bool {
    let rex = t == "rex"
        || t.strip_prefix("rex.")
            .is_some_and(|f| !f.is_empty() && f.chars().all(|c| "WRXB".contains(c)));
    rex || matches!(
        t,
        "data16"
            | "addr32"
            | "cs"
            | "ds"
            | "es"
            | "ss"
            | "fs"
            | "gs"
            | "lock"
            | "rep"
            | "repz"
            | "repnz"
            | "bnd"
            | "notrack"
            | "xacquire"
            | "xrelease"
    )
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

/// xorshift64*: deterministic random bytes.
fn xorshift(state: &mut u64) -> u8 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
}

/// Random instructions, one per 32-byte slot (16 random bytes, 16 NOPs so
/// that objdump is back in step at the next slot), decoded by both. Where
/// both decode, lengths must agree. Where only objdump decodes, the
/// decoder refused an encoding (counted, fine). Where only this decoder
/// decodes, the encoding is undefined in a way the decoder does not check
/// (it validates opcodes per map, groups and x87 forms, not each
/// mandatory-prefix, VEX.L/W or ModRM.mod combination): counted and
/// reported, as the known limit of its validation.
#[test]
fn random_instructions_match_objdump() {
    objdump_available();
    let dir = TempDir::new("x86-random");
    const SLOT: usize = 32;
    const SLOTS: usize = 40_000;
    let starts: &[&[u8]] = &[
        &[],
        &[],
        &[],
        &[0x0f],
        &[0x0f],
        &[0x66, 0x0f],
        &[0xf3, 0x0f],
        &[0xf2, 0x0f],
        &[0x0f, 0x38],
        &[0x66, 0x0f, 0x38],
        &[0x66, 0x0f, 0x3a],
        &[0xc5],
        &[0xc4, 0xe1],
        &[0xc4, 0xe2],
        &[0xc4, 0xe3],
        &[0x62],
        &[0x48],
        &[0x67],
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut blob = vec![0x90u8; SLOT * SLOTS];
    for (i, slot) in blob.chunks_mut(SLOT).enumerate() {
        let start = starts[i % starts.len()];
        for b in &mut slot[..16] {
            *b = xorshift(&mut state);
        }
        slot[..start.len()].copy_from_slice(start);
    }
    let path = dir.join("random.bin");
    std::fs::write(&path, &blob).unwrap();
    let out = Command::new("objdump")
        .args([
            "-D",
            "-b",
            "binary",
            "-m",
            "i386:x86-64",
            "--no-show-raw-insn",
            "-w",
        ])
        .arg(&path)
        .output()
        .expect("running objdump");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Address and text of each instruction, lone REX lines merged.
    let mut lines: Vec<Line> = Vec::new();
    for line in text.lines() {
        let Some((a, rest)) = line.split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(a.trim(), 16) else {
            continue;
        };
        let merge = lines.last().is_some_and(|p| prefixes_only(&p.text));
        match lines.last_mut().filter(|_| merge) {
            Some(prev) => prev.text = format!("{} {rest}", prev.text),
            None => lines.push(Line {
                addr,
                text: rest.to_string(),
            }),
        }
    }
    let (mut both, mut refused, mut both_bad) = (0, 0, 0);
    let mut refused_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut accepted = Vec::new();
    for (i, slot) in blob.chunks(SLOT).enumerate() {
        let addr = (i * SLOT) as u64;
        let at = lines.partition_point(|l| l.addr < addr);
        let (Some(l), Some(next)) = (lines.get(at), lines.get(at + 1)) else {
            continue;
        };
        assert_eq!(l.addr, addr, "objdump is in step at every slot");
        let theirs_ok = !l.text.contains("(bad)") && !l.text.starts_with(".byte");
        let theirs_len = (next.addr - l.addr) as usize;
        // objdump shows fwait (9b) and the x87 instruction after it as one
        // (`fstsw` is `fwait; fnstsw`); for the processor they are two.
        let decoded = ulp_x86::decode(slot, addr).and_then(|insn| {
            let fwait = insn.bytes().last() == Some(&0x9b);
            if fwait && theirs_ok && insn.len() < theirs_len {
                let next = ulp_x86::decode(&slot[insn.len()..], insn.end())?;
                return Ok((insn.len() + next.len(), next));
            }
            Ok((insn.len(), insn))
        });
        let decoded = decoded.map(|(len, _)| len);
        match (decoded, theirs_ok) {
            (Ok(len), true) if len == theirs_len => both += 1,
            (Ok(len), true) => problems.push(format!(
                "{:02x?}: length {len} but objdump {theirs_len} '{}'",
                &slot[..16],
                l.text
            )),
            (Ok(len), false) => accepted.push(format!(
                "{:02x?}: decoded ({len} bytes) what objdump calls '{}'",
                &slot[..16],
                l.text
            )),
            (Err(_), true) => {
                refused += 1;
                let name = l.text.split_whitespace().find(|t| !is_prefix_word(t));
                *refused_names
                    .entry(name.unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            (Err(_), false) => both_bad += 1,
        }
    }
    let mut top: Vec<(usize, String)> = refused_names.into_iter().map(|(n, c)| (c, n)).collect();
    top.sort_unstable_by(|a, b| b.cmp(a));
    top.truncate(25);
    // What only this decoder accepts, by encoding.
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &accepted {
        let k = match a.get(1..3).unwrap_or("") {
            "c4" | "c5" => "VEX",
            "62" => "EVEX",
            "d8" | "d9" | "da" | "db" | "dc" | "dd" | "de" | "df" => "x87",
            _ if a.contains("0f, 38") || a.contains("0f, 3a") => "0f 38/0f 3a",
            _ if a.contains("0f") => "0f",
            _ => "other",
        };
        *by_kind.entry(k).or_default() += 1;
    }
    println!(
        "random: {SLOTS} instructions: {both} decoded alike, {both_bad} rejected by both, \
         {refused} refused here but decoded by objdump (most common: {top:?}), \
         {} decoded here with their regular length but undefined for objdump \
         (mandatory prefix, VEX.L/W, register-only or memory-only forms: {by_kind:?}), \
         {} length mismatches",
        accepted.len(),
        problems.len()
    );
    for a in accepted.iter().take(10) {
        println!("accepted: {a}");
    }
    for p in &problems {
        println!("MISMATCH {p}");
    }
    assert!(
        problems.is_empty(),
        "{} random instructions differ",
        problems.len()
    );
}

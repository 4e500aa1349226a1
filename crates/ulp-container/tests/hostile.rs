//! Hostile input: the parsers that read files a user hands to ulp (the
//! container ELF and its sections, the .dsc, the `ulp extract` JSON the
//! packer takes as a target) must answer every input with a
//! value or an error: never a panic, never a hang, never a huge allocation.
//!
//! A small mutation fuzzer, deterministic (fixed seeds, its own xorshift
//! generator) so any failure reproduces: it starts from real files (the
//! libpulp-packed interop container, its sections, its .dsc) and applies
//! byte flips, splices, truncations and "interesting" integers. Each case
//! runs under `catch_unwind`; a panic fails the test with the seed and the
//! input written to a file to keep as a regression case in `hostile/`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ulp_container::extract::TargetDescription;
use ulp_container::format::{Metadata, RevertMetadata};
use ulp_fixtures::Rng;

fn interop(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/libpulp-interop")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
    1 << 40,
];

/// One mutated copy of `seed_input`.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            3 if v.len() >= 8 => {
                // An interesting integer over 1, 2, 4 or 8 bytes.
                let width = [1, 2, 4, 8][rng.below(4)];
                let i = rng.below(v.len() - width + 1);
                let x = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                v[i..i + width].copy_from_slice(&x[..width]);
            }
            4 if !v.is_empty() => {
                // Duplicate a chunk somewhere else.
                let a = rng.below(v.len());
                let b = (a + rng.below(64)).min(v.len());
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            _ => {
                let at = rng.below(v.len() + 1);
                v.insert(at, rng.next() as u8);
            }
        }
    }
    v
}

/// Runs `parse` over mutations of `seed_input` for `cases` cases or
/// `budget`, whichever ends first; fails with a saved reproducer on a panic.
fn fuzz(name: &str, seed_input: &[u8], cases: usize, budget: Duration, parse: impl Fn(&[u8])) {
    let start = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    for case in 0..cases {
        if start.elapsed() > budget {
            break;
        }
        let input = mutate(&mut rng, seed_input);
        let cpu_before = thread_cpu_time();
        if catch_unwind(AssertUnwindSafe(|| parse(&input))).is_err() {
            let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("hostile-{name}-{case}.bin"));
            let _ = std::fs::write(&keep, &input);
            panic!(
                "{name}: case {case} panicked; input saved to {}",
                keep.display()
            );
        }
        // A parser that took long on one small input is a hang in waiting.
        // Counted in this thread's CPU time: a shared machine may leave the
        // thread unscheduled for seconds, which is no fault of the parser.
        let cpu = thread_cpu_time() - cpu_before;
        assert!(
            cpu < CASE_CPU_LIMIT,
            "{name}: case {case} took {cpu:?} of CPU time"
        );
    }
}

/// The CPU time one mutated input may take to parse (inputs are a few kB).
const CASE_CPU_LIMIT: Duration = Duration::from_secs(1);

/// CPU time used so far by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[test]
fn ulp_section_decoder_survives_mutations() {
    let seed = interop("ulp.bin");
    fuzz("ulp", &seed, 50_000, Duration::from_secs(10), |b| {
        let _ = Metadata::decode(b);
    });
}

#[test]
fn ulp_rev_section_decoder_survives_mutations() {
    let seed = interop("ulp.rev.bin");
    fuzz("ulp-rev", &seed, 20_000, Duration::from_secs(5), |b| {
        let _ = RevertMetadata::decode(b);
    });
}

#[test]
fn dsc_parser_survives_mutations() {
    let seed = interop("greet_livepatch1.dsc");
    fuzz("dsc", &seed, 50_000, Duration::from_secs(10), |b| {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = ulp_container::dsc::parse(text);
        }
    });
}

#[test]
fn container_reader_survives_mutations() {
    let seed = interop("greet_livepatch1.so");
    let path = Path::new("mutated.so");
    fuzz("container", &seed, 5_000, Duration::from_secs(20), |b| {
        if let Ok(elf) = ulp_elf::ElfFile::parse(path, b.to_vec()) {
            let _ = ulp_container::container::from_elf(&elf);
            let _ = elf.patchable_entries();
            let _ = elf.symbols();
            let _ = elf.build_id();
        }
    });
}

/// The `ulp extract` description of the interop target, as `ulp extract`
/// writes it: the seed of the JSON fuzzers.
fn extract_seed() -> String {
    let lib =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/libpulp-interop/libgreet.so.0");
    TargetDescription::extract(&lib)
        .expect("describing libgreet.so.0")
        .to_json_text()
}

/// What the packer does with a target JSON: parse it, then use it as
/// `pack` does (look symbols up).
fn read_description(b: &[u8]) {
    if let Ok(text) = std::str::from_utf8(b) {
        if let Ok(d) = TargetDescription::from_json_text(text) {
            let _ = d.symbol("greet");
            let _ = d.to_json_text();
        }
    }
}

#[test]
fn extract_json_reader_survives_byte_mutations() {
    let seed = extract_seed();
    fuzz(
        "extract",
        seed.as_bytes(),
        20_000,
        Duration::from_secs(10),
        read_description,
    );
    // The lenient form: symbols keyed by name, numbers as strings.
    let keyed = r#"{"name":"libgreet.so.0","build_id":"0b12723e714c785b321e9af5c995dc14ca869484",
        "symbols":{"greet":{"offset":"0x1140","size":"12","st_info":18,"st_other":"0"}}}"#;
    fuzz(
        "extract-keyed",
        keyed.as_bytes(),
        20_000,
        Duration::from_secs(5),
        read_description,
    );
}

/// Values that stress a JSON reader's assumptions about types and ranges.
fn odd_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(16) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1e300),
        5 => json!(0.5),
        6 => json!(""),
        7 => json!("0x"),
        8 => json!("0xffffffffffffffffff"),
        9 => json!("+f"),
        10 => json!("é".repeat(3)),
        11 => json!([]),
        12 => json!({}),
        13 => json!(true),
        14 => json!("a".repeat(rng.below(5000))),
        _ => {
            // Deep nesting, but within what serde_json accepts (128).
            let mut v = json!(1);
            for _ in 0..rng.below(100) {
                v = json!([v]);
            }
            v
        }
    }
}

/// Replaces, removes or adds one node somewhere in `v`.
fn mutate_value(rng: &mut Rng, v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) if !map.is_empty() && rng.below(4) != 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = keys[rng.below(keys.len())].clone();
            match rng.below(6) {
                0 => {
                    map.remove(&k);
                }
                1 => {
                    map.insert(k, odd_value(rng));
                }
                2 => {
                    let moved = map.remove(&k).unwrap();
                    map.insert(format!("{k}{}", rng.below(3)), moved);
                }
                _ => mutate_value(rng, map.get_mut(&k).unwrap()),
            }
        }
        Value::Array(list) if !list.is_empty() && rng.below(4) != 0 => {
            let i = rng.below(list.len());
            match rng.below(5) {
                0 => {
                    list.remove(i);
                }
                1 => list.push(odd_value(rng)),
                2 => {
                    let copy = list[i].clone();
                    list.insert(i, copy);
                }
                _ => mutate_value(rng, &mut list[i]),
            }
        }
        _ => *v = odd_value(rng),
    }
}

#[test]
fn extract_json_reader_survives_structural_mutations() {
    let seed: serde_json::Value = serde_json::from_str(&extract_seed()).unwrap();
    let start = Instant::now();
    let budget = Duration::from_secs(10);
    let mut rng = Rng(0x5eed_0fe7_a7c7_1234);
    for case in 0..20_000 {
        if start.elapsed() > budget {
            break;
        }
        let mut v = seed.clone();
        for _ in 0..1 + rng.below(3) {
            mutate_value(&mut rng, &mut v);
        }
        let text = v.to_string();
        if catch_unwind(AssertUnwindSafe(|| read_description(text.as_bytes()))).is_err() {
            let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("hostile-extract-structural-{case}.json"));
            let _ = std::fs::write(&keep, &text);
            panic!(
                "extract (structural): case {case} panicked; input saved to {}",
                keep.display()
            );
        }
    }
}

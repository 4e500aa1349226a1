//! Hostile input: the parsers that read files a user hands to ulp (the
//! container ELF and its sections, the .dsc) must answer every input with a
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

use ulp_container::format::{Metadata, RevertMetadata};

fn interop(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/libpulp-interop")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
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
        assert!(
            start.elapsed() < budget * 4,
            "{name}: case {case} is too slow"
        );
    }
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

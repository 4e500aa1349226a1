//! No input makes the crate panic: random bytes, random bytes that start
//! like the encodings with the most rules (VEX, EVEX, prefixes, escapes),
//! every truncation of real functions, and addresses at the ends of the
//! address space go through the decoder, the entry analysis and the
//! relocation. Whatever is decoded must also be self-consistent.

mod common;

use std::path::Path;

use common::{functions, gcc, SAMPLE_C};
use ulp_fixtures::{Rng, TempDir};
use ulp_x86::{
    analyze_entry, decode, decode_all, relocate, trampoline_len_bound, Insn, JMP_ABS_LEN,
    JMP_REL32_LEN, MAX_INSN_LEN,
};

/// Checks what the decoder says about `code` at `addr` for consistency.
fn check_insn(code: &[u8], addr: u64, insn: &Insn) {
    let len = insn.len();
    assert!((1..=MAX_INSN_LEN).contains(&len));
    assert!(len <= code.len());
    assert_eq!(insn.bytes(), &code[..len]);
    assert_eq!(insn.addr(), addr);
    if let Some(r) = insn.rip_ref() {
        assert!(usize::from(r.disp_offset) + 4 <= len);
    }
    if let Some((off, size)) = insn.rel_field() {
        assert_eq!(off + size, len);
        assert!(insn.branch_target().is_some());
    }
    // The instruction's own bytes are enough, and give the same result.
    assert_eq!(decode(&code[..len], addr).as_ref(), Ok(insn));
}

/// Decodes, analyzes and relocates `code` at `addr`; only checks that
/// nothing panics and that what succeeds is consistent.
fn exercise(code: &[u8], addr: u64, tramps: &[u64]) {
    if let Ok(insn) = decode(code, addr) {
        check_insn(code, addr, &insn);
    }
    for insn in decode_all(code, addr).flatten() {
        let off = insn.addr().wrapping_sub(addr) as usize;
        check_insn(&code[off..], insn.addr(), &insn);
    }
    for need in [1, JMP_REL32_LEN, JMP_ABS_LEN] {
        if let Ok(plan) = analyze_entry(code, addr, need) {
            assert!(plan.covered() >= need);
            for &t in tramps {
                if let Ok(bytes) = relocate(&plan, t) {
                    assert!(bytes.len() <= trampoline_len_bound(&plan));
                }
            }
        }
    }
}

const EDGE_ADDRS: [u64; 4] = [0, 0x7fff_ffff_f000, u64::MAX - 3, 0x8000_0000_0000_0000];

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let starts: &[&[u8]] = &[
        &[],
        &[0x0f],
        &[0x0f, 0x38],
        &[0x0f, 0x3a],
        &[0xc4],
        &[0xc5],
        &[0x62],
        &[0x66],
        &[0xf3, 0x0f],
        &[0xf2, 0x48, 0x0f],
        &[0x67],
        &[0x48],
        &[0xd9],
        &[0xff],
        &[0xc7],
        &[0xe9],
    ];
    let mut buf = [0u8; 40];
    let mut decoded = 0;
    for i in 0..60_000 {
        rng.fill(&mut buf);
        let start = starts[i % starts.len()];
        buf[..start.len()].copy_from_slice(start);
        let len = (rng.next() % buf.len() as u64) as usize;
        let addr = if i % 7 == 0 {
            EDGE_ADDRS[i % EDGE_ADDRS.len()]
        } else {
            rng.next()
        };
        if decode(&buf[..len], addr).is_ok() {
            decoded += 1;
        }
        exercise(&buf[..len], addr, &[addr.wrapping_add(0x1000), rng.next()]);
    }
    assert!(decoded > 10_000, "random bytes are mostly decodable x86");
}

#[test]
fn every_truncation_of_real_functions_is_handled() {
    let dir = TempDir::new("x86-robust");
    let lib = gcc(&dir, "libsample.so", SAMPLE_C, &["-O2", "-fPIC", "-shared"]);
    let mut funcs = functions(&lib);
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    if libc.exists() {
        // Every 50th libc function, up to 512 bytes of it: a spread of
        // hand-written string functions and compiled code.
        funcs.extend(functions(libc).into_iter().step_by(50));
    }
    let mut cuts = 0;
    for f in &funcs {
        let n = f.bytes.len().min(512);
        for len in 0..=n {
            let code = &f.bytes[..len];
            exercise(code, f.addr, &[f.addr + 0x1000, f.addr + 0x10_0000_0000]);
            cuts += 1;
        }
        // The same bytes at the ends of the address space.
        for addr in EDGE_ADDRS {
            exercise(
                &f.bytes,
                addr,
                &[addr.wrapping_add(64), addr.wrapping_sub(64)],
            );
        }
    }
    println!("{} functions, {cuts} truncations", funcs.len());
}

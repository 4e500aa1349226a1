//! Hand-assembled instructions and functions, one table row each: the
//! decoder's lengths and classifications, the entry analysis' plans and
//! refusals, and the trampolines' re-encodings.

use super::*;

/// Where the hand-assembled code is "loaded".
const AT: u64 = 0x1000;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("test hex"))
        .collect()
}

/// What a row expects besides the length.
#[derive(Debug)]
enum Want {
    Kind(Kind),
    /// A plain instruction with a RIP-relative operand: displacement
    /// offset, absolute target.
    Rip(u8, u64),
    /// An indirect jump or call through a RIP-relative pointer.
    KindRip(Kind, u8, u64),
}

#[rustfmt::skip]
const ROWS: &[(&str, usize, &str)] = &[
    // (bytes, length, what: "plain" or the name of a check in `want`)
    ("90", 1, "plain"),
    ("f3 0f 1e fa", 4, "plain"),                    // endbr64
    ("55", 1, "plain"),                             // push %rbp
    ("48 89 e5", 3, "plain"),                       // mov %rsp,%rbp
    ("48 83 ec 10", 4, "plain"),                    // sub $0x10,%rsp
    ("48 81 ec 00 01 00 00", 7, "plain"),           // sub $0x100,%rsp
    ("66 81 c1 34 12", 5, "plain"),                 // add $0x1234,%cx (imm16)
    ("48 81 c1 34 12 00 00", 7, "plain"),           // add with REX.W: imm32
    ("48 b8 88 77 66 55 44 33 22 11", 10, "plain"), // movabs $imm64,%rax
    ("66 b8 34 12", 4, "plain"),                    // mov $0x1234,%ax
    ("b8 01 00 00 00", 5, "plain"),                 // mov $1,%eax
    ("a0 88 77 66 55 44 33 22 11", 9, "plain"),     // movabs moffs64,%al
    ("67 a0 44 33 22 11", 6, "plain"),              // mov moffs32,%al
    ("c8 10 00 00", 4, "plain"),                    // enter $0x10,$0
    ("f6 c1 01", 3, "plain"),                       // test $1,%cl
    ("f6 d1", 2, "plain"),                          // not %cl
    ("f7 c1 00 00 01 00", 6, "plain"),              // test $0x10000,%ecx
    ("66 f7 c1 34 12", 5, "plain"),                 // test $0x1234,%cx
    ("f7 d8", 2, "plain"),                          // neg %eax
    ("6a 01", 2, "plain"),                          // push $1
    ("68 00 01 00 00", 5, "plain"),                 // push $0x100
    ("6b c0 03", 3, "plain"),                       // imul $3,%eax,%eax
    ("69 c0 00 01 00 00", 6, "plain"),              // imul $0x100,%eax,%eax
    ("8b 04 24", 3, "plain"),                       // mov (%rsp),%eax
    ("8b 44 24 08", 4, "plain"),                    // mov 8(%rsp),%eax
    ("8b 84 24 00 01 00 00", 7, "plain"),           // mov 0x100(%rsp),%eax
    ("8b 04 25 00 10 00 00", 7, "plain"),           // mov 0x1000,%eax (SIB, no base)
    ("41 8b 45 00", 4, "plain"),                    // mov 0(%r13),%eax
    ("42 8b 04 2d 00 00 00 00", 8, "plain"),        // mov 0(,%r13,1),%eax
    ("41 8b 04 24", 4, "plain"),                    // mov (%r12),%eax
    ("c1 e0 04", 3, "plain"),                       // shl $4,%eax
    ("d1 e0", 2, "plain"),                          // shl %eax
    ("0f b6 07", 3, "plain"),                       // movzbl (%rdi),%eax
    ("48 0f af c1", 4, "plain"),                    // imul %rcx,%rax
    ("0f 44 c1", 3, "plain"),                       // cmove %ecx,%eax
    ("0f 94 c0", 3, "plain"),                       // sete %al
    ("f3 48 0f b8 c7", 5, "plain"),                 // popcnt %rdi,%rax
    ("f3 48 0f bc c7", 5, "plain"),                 // tzcnt %rdi,%rax
    ("0f a2", 2, "plain"),                          // cpuid
    ("0f 31", 2, "plain"),                          // rdtsc
    ("0f ba e0 03", 4, "plain"),                    // bt $3,%eax
    ("0f a4 c2 04", 4, "plain"),                    // shld $4,%eax,%edx
    ("0f c8", 2, "plain"),                          // bswap %eax
    ("f0 48 0f b1 0f", 5, "plain"),                 // lock cmpxchg %rcx,(%rdi)
    ("f0 0f c7 0f", 4, "plain"),                    // lock cmpxchg8b (%rdi)
    ("0f ae e8", 3, "plain"),                       // lfence
    ("0f 01 d0", 3, "plain"),                       // xgetbv
    ("f3 a4", 2, "plain"),                          // rep movsb
    ("0f 1f 00", 3, "plain"),                       // nopl (%rax)
    ("0f 1f 44 00 00", 5, "plain"),                 // nopl 0(%rax,%rax,1)
    ("66 2e 0f 1f 84 00 00 00 00 00", 10, "plain"), // cs nopw 0(%rax,%rax,1)
    ("66 66 2e 0f 1f 84 00 00 00 00 00", 11, "plain"),
    ("64 48 8b 04 25 28 00 00 00", 9, "plain"),     // mov %fs:0x28,%rax
    ("c6 f8 ff", 3, "plain"),                       // xabort $0xff
    ("8f c0", 2, "plain"),                          // pop %rax (8f /0)
    ("48 40 90", 3, "plain"),                       // two REX prefixes: one nop
    // x87
    ("d9 ee", 2, "plain"),                          // fldz
    ("dd 44 24 08", 4, "plain"),                    // fldl 8(%rsp)
    ("df e0", 2, "plain"),                          // fnstsw %ax
    ("de c9", 2, "plain"),                          // fmulp
    ("9b", 1, "plain"),                             // fwait (objdump joins it to the next)
    ("0f 20 05", 3, "plain"),                       // mov %cr0,%rbp: mod ignored, no disp32
    ("0f 23 a4", 3, "plain"),                       // mov %rsp,%db4: no SIB
    ("db 7c 24 f0", 4, "plain"),                    // fstpt -0x10(%rsp)
    // SSE
    ("f3 0f 6f 0e", 4, "plain"),                    // movdqu (%rsi),%xmm1
    ("66 0f 3a 0f c1 08", 6, "plain"),              // palignr $8,%xmm1,%xmm0
    ("66 0f 38 00 c1", 5, "plain"),                 // pshufb %xmm1,%xmm0
    ("66 0f 73 d8 04", 5, "plain"),                 // psrldq $4,%xmm0
    ("66 0f 70 c0 00", 5, "plain"),                 // pshufd $0,%xmm0,%xmm0
    ("f2 0f 10 44 24 08", 6, "plain"),              // movsd 8(%rsp),%xmm0
    ("66 0f d7 c0", 4, "plain"),                    // pmovmskb %xmm0,%eax
    ("66 0f 38 dc c1", 5, "plain"),                 // aesenc %xmm1,%xmm0
    ("66 0f 3a 44 c1 00", 6, "plain"),              // pclmullqlqdq
    ("0f 38 c9 c1", 4, "plain"),                    // sha1msg1
    ("f2 48 0f 38 f1 c1", 6, "plain"),              // crc32 %rcx,%rax
    // VEX
    ("c5 fd 74 0f", 4, "plain"),                    // vpcmpeqb (%rdi),%ymm0,%ymm1
    ("c5 f8 77", 3, "plain"),                       // vzeroupper
    ("c4 e3 7d 18 c1 01", 6, "plain"),              // vinsertf128 $1,%xmm1,%ymm0,%ymm0
    ("c4 e2 7d 58 c0", 5, "plain"),                 // vpbroadcastd %xmm0,%ymm0
    ("c4 e2 f9 f7 c7", 5, "plain"),                 // shlx %rax,%rdi,%rax
    ("c4 e3 fb f0 c7 05", 6, "plain"),              // rorx $5,%rdi,%rax
    ("c5 f8 98 c1", 4, "plain"),                    // kortestw %k1,%k0
    ("c4 e1 f9 7e c0", 5, "plain"),                 // vmovq %xmm0,%rax
    ("c5 fd 71 d0 04", 5, "plain"),                 // vpsrlw $4,%ymm0,%ymm0
    // EVEX
    ("62 f1 fe 48 6f 07", 6, "plain"),              // vmovdqu64 (%rdi),%zmm0
    ("62 f1 fe 48 6f 47 01", 7, "plain"),           // vmovdqu64 0x40(%rdi),%zmm0
    ("62 f3 7d 48 3f c1 00", 7, "plain"),           // vpcmpeqb %zmm1,%zmm0,%k0 (vpcmpb $0)
    ("62 f2 7d 48 64 c1", 6, "plain"),              // vpblendmd (map 2)
    ("62 f1 7d 48 72 d0 04", 7, "plain"),           // vpsrld $4,%zmm0,%zmm0 (map 1 imm)
];

#[test]
fn plain_instructions_have_their_length() {
    for (bytes, len, what) in ROWS {
        let b = hex(bytes);
        // Followed by other bytes: only the instruction's are used.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0xcc; 16]);
        let insn = decode(&padded, AT).unwrap_or_else(|e| panic!("{bytes}: {e}"));
        assert_eq!(insn.len(), *len, "{bytes}");
        assert_eq!(insn.bytes(), &b[..*len], "{bytes}");
        assert_eq!(*what, "plain");
        assert_eq!(insn.kind(), Kind::Other, "{bytes}");
        assert_eq!(insn.rip_ref(), None, "{bytes}");
        // Exactly the instruction's bytes are enough; one less is not.
        assert_eq!(decode(&b[..*len], AT).map(|i| i.len()), Ok(*len));
        let short = decode(&b[..*len - 1], AT).unwrap_err();
        assert_eq!(short.kind(), DecodeErrorKind::Truncated, "{bytes}");
    }
}

fn want(bytes: &str) -> (usize, Want) {
    use Kind::*;
    let rip = |off: u8, target: u64| Want::Rip(off, target);
    match bytes {
        // Relative branches; the target is relative to the end.
        "eb fe" => (2, Want::Kind(Jmp { target: AT })),
        "eb 10" => (2, Want::Kind(Jmp { target: AT + 0x12 })),
        "eb 80" => (
            2,
            Want::Kind(Jmp {
                target: AT + 2 - 0x80,
            }),
        ),
        "e9 00 01 00 00" => (5, Want::Kind(Jmp { target: AT + 0x105 })),
        "e9 fb ff ff ff" => (5, Want::Kind(Jmp { target: AT })),
        "f2 e9 00 00 00 00" => (6, Want::Kind(Jmp { target: AT + 6 })), // bnd jmp
        "74 05" => (
            2,
            Want::Kind(Jcc {
                cond: 4,
                target: AT + 7,
            }),
        ),
        "7f f0" => (
            2,
            Want::Kind(Jcc {
                cond: 15,
                target: AT + 2 - 0x10,
            }),
        ),
        "0f 85 00 01 00 00" => (
            6,
            Want::Kind(Jcc {
                cond: 5,
                target: AT + 0x106,
            }),
        ),
        "3e 74 00" => (
            3,
            Want::Kind(Jcc {
                cond: 4,
                target: AT + 3,
            }),
        ), // hint prefix
        "e8 00 00 00 00" => (5, Want::Kind(Call { target: AT + 5 })),
        "e8 fb ef ff ff" => (5, Want::Kind(Call { target: 0 })),
        "e2 fe" => (
            2,
            Want::Kind(Loop {
                op: LoopOp::Loop,
                target: AT,
            }),
        ),
        "e0 00" => (
            2,
            Want::Kind(Loop {
                op: LoopOp::Loopne,
                target: AT + 2,
            }),
        ),
        "e1 00" => (
            2,
            Want::Kind(Loop {
                op: LoopOp::Loope,
                target: AT + 2,
            }),
        ),
        "e3 02" => (
            2,
            Want::Kind(Loop {
                op: LoopOp::Jrcxz,
                target: AT + 4,
            }),
        ),
        "67 e3 02" => (
            3,
            Want::Kind(Loop {
                op: LoopOp::Jrcxz,
                target: AT + 5,
            }),
        ),
        "c7 f8 10 00 00 00" => (6, Want::Kind(Xbegin { target: AT + 0x16 })),
        // Returns, traps, system calls, indirect branches.
        "c3" => (1, Want::Kind(Ret)),
        "f3 c3" => (2, Want::Kind(Ret)),
        "f2 c3" => (2, Want::Kind(Ret)), // bnd ret
        "c2 08 00" => (3, Want::Kind(Ret)),
        "cb" => (1, Want::Kind(Ret)),
        "48 cf" => (2, Want::Kind(Ret)),
        "cc" => (1, Want::Kind(Trap)),
        "f1" => (1, Want::Kind(Trap)),
        "f4" => (1, Want::Kind(Trap)),
        "0f 0b" => (2, Want::Kind(Trap)),
        "0f b9 c0" => (3, Want::Kind(Trap)),
        "0f 05" => (2, Want::Kind(Syscall)),
        "cd 80" => (2, Want::Kind(Syscall)),
        "ff e0" => (2, Want::Kind(JmpIndirect)),
        "3e ff e0" => (3, Want::Kind(JmpIndirect)), // notrack
        "41 ff e3" => (3, Want::Kind(JmpIndirect)),
        "ff 24 c5 00 10 00 00" => (7, Want::Kind(JmpIndirect)),
        "ff d0" => (2, Want::Kind(CallIndirect)),
        "41 ff d3" => (3, Want::Kind(CallIndirect)),
        "ff 50 08" => (3, Want::Kind(CallIndirect)),
        "ff 25 10 00 00 00" => (6, Want::KindRip(JmpIndirect, 2, AT + 0x16)),
        "ff 15 10 00 00 00" => (6, Want::KindRip(CallIndirect, 2, AT + 0x16)),
        // RIP-relative operands: relative to the end, immediate included.
        "8b 05 10 00 00 00" => (6, rip(2, AT + 0x16)),
        "48 8b 05 10 00 00 00" => (7, rip(3, AT + 0x17)),
        "48 8d 05 f0 ff ff ff" => (7, rip(3, AT + 7 - 0x10)),
        "c7 05 10 00 00 00 01 00 00 00" => (10, rip(2, AT + 0x1a)),
        "80 3d 10 00 00 00 00" => (7, rip(2, AT + 0x17)),
        "48 c7 05 10 00 00 00 ff ff ff ff" => (11, rip(3, AT + 0x1b)),
        "66 c7 05 10 00 00 00 01 00" => (9, rip(3, AT + 0x19)),
        "f6 05 10 00 00 00 01" => (7, rip(2, AT + 0x17)),
        "69 05 10 00 00 00 00 01 00 00" => (10, rip(2, AT + 0x1a)),
        "c1 25 10 00 00 00 04" => (7, rip(2, AT + 0x17)),
        "db 2d 10 00 00 00" => (6, rip(2, AT + 0x16)),
        "66 0f 6f 05 10 00 00 00" => (8, rip(4, AT + 0x18)),
        "66 0f 3a 63 0d 10 00 00 00 0c" => (10, rip(5, AT + 0x1a)),
        "c5 f9 6f 05 10 00 00 00" => (8, rip(4, AT + 0x18)),
        "c4 e3 79 63 05 10 00 00 00 0c" => (10, rip(5, AT + 0x1a)),
        "62 f1 7d 48 74 05 10 00 00 00" => (10, rip(6, AT + 0x1a)),
        "62 f3 7d 48 3f 05 10 00 00 00 04" => (11, rip(6, AT + 0x1b)),
        "64 48 8b 05 10 00 00 00" => (8, rip(4, AT + 0x18)),
        "f0 48 0f c1 05 10 00 00 00" => (9, rip(5, AT + 0x19)),
        other => panic!("no expectation for {other}"),
    }
}

#[rustfmt::skip]
const CLASSIFIED: &[&str] = &[
    "eb fe", "eb 10", "eb 80", "e9 00 01 00 00", "e9 fb ff ff ff", "f2 e9 00 00 00 00",
    "74 05", "7f f0", "0f 85 00 01 00 00", "3e 74 00", "e8 00 00 00 00", "e8 fb ef ff ff",
    "e2 fe", "e0 00", "e1 00", "e3 02", "67 e3 02", "c7 f8 10 00 00 00",
    "c3", "f3 c3", "f2 c3", "c2 08 00", "cb", "48 cf", "cc", "f1", "f4", "0f 0b", "0f b9 c0",
    "0f 05", "cd 80", "ff e0", "3e ff e0", "41 ff e3", "ff 24 c5 00 10 00 00", "ff d0",
    "41 ff d3", "ff 50 08", "ff 25 10 00 00 00", "ff 15 10 00 00 00",
    "8b 05 10 00 00 00", "48 8b 05 10 00 00 00", "48 8d 05 f0 ff ff ff",
    "c7 05 10 00 00 00 01 00 00 00", "80 3d 10 00 00 00 00",
    "48 c7 05 10 00 00 00 ff ff ff ff", "66 c7 05 10 00 00 00 01 00",
    "f6 05 10 00 00 00 01", "69 05 10 00 00 00 00 01 00 00", "c1 25 10 00 00 00 04",
    "db 2d 10 00 00 00", "66 0f 6f 05 10 00 00 00", "66 0f 3a 63 0d 10 00 00 00 0c",
    "c5 f9 6f 05 10 00 00 00", "c4 e3 79 63 05 10 00 00 00 0c",
    "62 f1 7d 48 74 05 10 00 00 00", "62 f3 7d 48 3f 05 10 00 00 00 04",
    "64 48 8b 05 10 00 00 00", "f0 48 0f c1 05 10 00 00 00",
];

#[test]
fn control_transfers_and_rip_operands_are_classified() {
    for bytes in CLASSIFIED {
        let (len, want) = want(bytes);
        let mut b = hex(bytes);
        b.extend_from_slice(&[0x90; 4]);
        let insn = decode(&b, AT).unwrap_or_else(|e| panic!("{bytes}: {e}"));
        assert_eq!(insn.len(), len, "{bytes}");
        assert_eq!(insn.end(), AT + len as u64, "{bytes}");
        let (kind, rip) = match want {
            Want::Kind(k) => (k, None),
            Want::Rip(off, target) => (Kind::Other, Some((off, target))),
            Want::KindRip(k, off, target) => (k, Some((off, target))),
        };
        assert_eq!(insn.kind(), kind, "{bytes}");
        let got = insn.rip_ref().map(|r| (r.disp_offset, r.target));
        assert_eq!(got, rip, "{bytes}");
        if insn.branch_target().is_some() {
            let (off, size) = insn.rel_field().expect("a branch has a displacement");
            assert_eq!(
                off + size,
                len,
                "{bytes}: the displacement ends the instruction"
            );
        }
    }
}

#[test]
fn eip_relative_operands_are_truncated_and_flagged() {
    let b = hex("67 8b 05 f0 ff ff ff");
    let insn = decode(&b, 0x1_0000_0004).unwrap();
    let rip = insn.rip_ref().unwrap();
    assert!(rip.addr32);
    assert_eq!(rip.target, (0x1_0000_0004u64 + 7 - 0x10) & 0xffff_ffff);
}

#[test]
fn endbr64_is_recognized() {
    let b = hex("f3 0f 1e fa 55");
    assert!(starts_with_endbr64(&b));
    assert!(decode(&b, AT).unwrap().is_endbr64());
    assert!(!starts_with_endbr64(&hex("f3 0f 1e fb"))); // endbr32
    assert!(!decode(&hex("0f 1f 00"), AT).unwrap().is_endbr64());
}

#[rustfmt::skip]
const BAD: &[(&str, DecodeErrorKind)] = &[
    ("", DecodeErrorKind::Truncated),
    ("0f", DecodeErrorKind::Truncated),
    ("66", DecodeErrorKind::Truncated),
    ("e8 00 00", DecodeErrorKind::Truncated),
    ("8b 04", DecodeErrorKind::Truncated),               // SIB missing
    ("8b 05 00 00", DecodeErrorKind::Truncated),         // disp32 cut
    ("c7 05 10 00 00 00 01", DecodeErrorKind::Truncated), // imm cut
    ("62 f1 fe", DecodeErrorKind::Truncated),
    ("06", DecodeErrorKind::Invalid),                    // push %es
    ("27", DecodeErrorKind::Invalid),                    // daa
    ("d6", DecodeErrorKind::Invalid),
    ("0f 04", DecodeErrorKind::Invalid),
    ("0f 0f c1 b4", DecodeErrorKind::Unsupported),       // 3DNow!
    ("0f b8 c0", DecodeErrorKind::Unsupported),          // jmpe
    ("66 e9 00 00 00 00", DecodeErrorKind::Unsupported), // jmpw
    ("66 74 00", DecodeErrorKind::Unsupported),
    ("66 e8 00 00 00 00", DecodeErrorKind::Unsupported),
    ("8f e8 78 c2 c0 00", DecodeErrorKind::Unsupported), // XOP
    ("66 c5 f9 6f c0", DecodeErrorKind::Invalid),        // VEX after 66
    ("48 c5 f9 6f c0", DecodeErrorKind::Invalid),        // VEX after REX
    ("c4 e4 79 00 c0", DecodeErrorKind::Invalid),        // VEX map 4
    ("c5 f8 00 c0", DecodeErrorKind::Invalid),           // VEX 0f 00
    ("62 f9 fe 48 6f 07", DecodeErrorKind::Invalid),     // EVEX P0 bit 3
    ("62 f1 fa 48 6f 07", DecodeErrorKind::Invalid),     // EVEX P1 bit 2
    ("62 f5 7c 48 58 c1", DecodeErrorKind::Unsupported), // EVEX map 5 (FP16)
    ("ff ff", DecodeErrorKind::Invalid),                 // ff /7
    ("ff d8", DecodeErrorKind::Invalid),                 // far call, register
    ("8d c0", DecodeErrorKind::Invalid),                 // lea, register
    ("c7 c8 00 00 00 00", DecodeErrorKind::Invalid),     // c7 /1
    ("fe d0", DecodeErrorKind::Invalid),                 // fe /2
    ("d9 d1", DecodeErrorKind::Invalid),                 // x87 register forms
    ("da ea", DecodeErrorKind::Invalid),
    ("df e1", DecodeErrorKind::Invalid),
    ("d9 08", DecodeErrorKind::Invalid),                 // x87 memory forms: d9 /1
    ("dd 28", DecodeErrorKind::Invalid),                 // dd /5
    ("66 66 66 66 66 66 66 66 66 66 66 66 66 66 66 90", DecodeErrorKind::TooLong),
    ("66 66 66 66 66 66 66 66 66 66 66 48 b8 00 00", DecodeErrorKind::TooLong),
];

#[test]
fn undecodable_bytes_are_errors_with_a_reason() {
    for (bytes, kind) in BAD {
        let e = decode(&hex(bytes), AT).expect_err(bytes);
        assert_eq!(e.kind(), *kind, "{bytes}: {e}");
        assert_eq!(e.addr(), AT);
        assert!(e
            .to_string()
            .starts_with("cannot decode the instruction at 0x1000 ("));
    }
    // The longest legal instruction: 15 bytes.
    let b = hex("66 66 66 66 66 66 66 66 66 66 66 66 66 66 90");
    assert_eq!(decode(&b, AT).map(|i| i.len()), Ok(15));
}

#[test]
fn decode_all_stops_at_the_first_error() {
    let code = hex("55 48 89 e5 06 c3");
    let got: Vec<_> = decode_all(&code, AT).collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].as_ref().unwrap().addr(), AT + 1);
    assert_eq!(got[2].as_ref().unwrap_err().addr(), AT + 4);
}

// --- Entry analysis ---------------------------------------------------------

fn plan(code: &str, need: usize) -> Result<EntryPlan, Refusal> {
    analyze_entry(&hex(code), AT, need)
}

fn refused(code: &str, need: usize) -> RefusalReason {
    let r = plan(code, need).expect_err(code);
    assert!(!r.to_string().is_empty());
    r.reason()
}

#[test]
fn a_plain_prologue_is_displaced_on_instruction_boundaries() {
    // push %rbp; mov %rsp,%rbp; pop %rbp; ret
    let p = plan("55 48 89 e5 5d c3", 5).unwrap();
    assert_eq!(p.start(), AT);
    assert_eq!(p.covered(), 5);
    assert_eq!(p.resume(), AT + 5);
    assert_eq!(p.displaced().len(), 3);
    assert!(!p.keeps_endbr64());
    // sub $0x100,%rsp covers 7 bytes for a 5-byte jump.
    let p = plan("48 81 ec 00 01 00 00 c3", 5).unwrap();
    assert_eq!(p.covered(), 7);
    // 14 bytes: more instructions.
    let p = plan("55 48 89 e5 48 81 ec 00 01 00 00 31 c0 90 90 c9 c3", 14).unwrap();
    assert_eq!(p.covered(), 14);
    assert_eq!(p.need(), 14);
}

#[test]
fn a_leading_endbr64_is_kept() {
    let p = plan("f3 0f 1e fa 55 48 89 e5 5d c3", 5).unwrap();
    assert!(p.keeps_endbr64());
    assert_eq!(p.start(), AT + 4);
    assert_eq!(p.covered(), 5);
    assert_eq!(p.resume(), AT + 9);
    // A branch back to the endbr64 is outside the overwritten bytes.
    let p = plan("f3 0f 1e fa 55 48 89 e5 5d eb f5", 5).unwrap();
    assert_eq!(p.resume(), AT + 9);
    // endbr64 + 4 bytes: too short for the jmp after it.
    assert_eq!(
        refused("f3 0f 1e fa 31 c0 c3 90", 5),
        RefusalReason::TooShort
    );
}

#[test]
fn refusals_name_their_reason() {
    use RefusalReason::*;
    // xor %eax,%eax; ret
    assert_eq!(refused("31 c0 c3", 5), TooShort);
    // The last displaced instruction does not end inside the function.
    assert_eq!(refused("90 90 90 e8 00 00", 5), TooShort);
    // ret, then padding.
    assert_eq!(refused("c3 90 90 90 90 90 90", 5), EndsInRange);
    assert_eq!(refused("31 c0 0f 0b 90 90 90", 5), EndsInRange);
    assert_eq!(refused("eb 10 90 90 90 90 90", 5), EndsInRange);
    assert_eq!(refused("ff e0 90 90 90 90 90", 5), EndsInRange);
    // xor %eax,%eax; 1: add %edi,%eax; dec %edi; jne 1b; ret
    assert_eq!(refused("31 c0 01 f8 ff cf 75 fa c3", 5), BranchIntoRange);
    // A later jump into the overwritten bytes (offset 3).
    assert_eq!(refused("31 c0 90 01 f8 ff cf 75 fa c3", 5), BranchIntoRange);
    // lea -5(%rip),%rax takes the address of offset 2.
    assert_eq!(refused("48 8d 05 fb ff ff ff c3", 5), BranchIntoRange);
    // loop and jrcxz cannot be moved.
    assert_eq!(refused("e2 fe 90 90 90 c3", 5), Unrelocatable);
    assert_eq!(refused("e3 05 90 90 90 c3 90", 5), Unrelocatable);
    // eip-relative.
    assert_eq!(refused("67 8b 05 00 00 00 00 c3", 5), Unrelocatable);
    assert_eq!(refused("06 90 90 90 90 c3", 5), Undecodable);
}

#[test]
fn a_jump_back_to_the_start_is_accepted() {
    // 0: dec %edi; jne 0; ret
    let p = plan("ff cf 75 fc c3", 5).unwrap();
    assert_eq!(p.covered(), 5);
    // A branch to the resume address (first byte kept) is fine too.
    let p = plan("85 ff 74 01 90 c3", 5).unwrap();
    assert_eq!(p.covered(), 5);
}

#[test]
fn undecodable_bytes_after_the_prefix_leave_a_partial_plan() {
    let r = plan("55 48 89 e5 5d 06 c3", 5).unwrap_err();
    assert_eq!(r.reason(), RefusalReason::Undecodable);
    let p = r.partial_plan().expect("the prefix decoded");
    assert_eq!(p.covered(), 5);
    assert_eq!(r.decode_error().unwrap().addr(), AT + 5);
    assert!(
        r.to_string().contains("cannot be decoded completely"),
        "{r}"
    );
    // In the prefix: no plan.
    let r = plan("06 90 90 90 90 c3", 5).unwrap_err();
    assert!(r.partial_plan().is_none());
}

#[test]
fn messages_name_the_function_and_the_instruction() {
    let r = plan("31 c0 01 f8 ff cf 75 fa c3", 5).unwrap_err();
    let m = r.to_string();
    assert!(m.contains("0x1006"), "{m}");
    assert!(m.contains("(+0x6)"), "{m}");
    assert!(m.contains("0x1002 (+0x2)"), "{m}");
    assert!(m.contains("function at 0x1000"), "{m}");
    assert!(m.contains("75 fa"), "{m}");
}

#[test]
fn indirect_jumps_are_counted() {
    let p = plan("55 48 89 e5 5d 3e ff e0 ff 25 00 00 00 00", 5).unwrap();
    assert_eq!(p.indirect_jumps(), 2);
}

#[test]
fn branches_from_elsewhere_are_found() {
    let p = plan("55 48 89 e5 5d c3", 5).unwrap();
    // A ".cold" part at 0x2000: jmp 0x1002; jmp 0x1000; jmp 0x1005.
    let cold_at = 0x2000u64;
    let mut cold = Vec::new();
    for target in [AT + 2, AT, AT + 5] {
        let here = cold_at + cold.len() as u64;
        cold.extend_from_slice(&jmp_rel32(here, target).unwrap());
    }
    assert_eq!(branches_into(&cold, cold_at, &p), Ok(vec![cold_at]));
}

// --- Redirects and trampolines ----------------------------------------------

#[test]
fn redirect_encodings() {
    assert_eq!(jmp_rel32(0x1000, 0x2000), Some([0xe9, 0xfb, 0x0f, 0, 0]));
    assert_eq!(
        jmp_rel32(0x2000, 0x1000),
        Some([0xe9, 0xfb, 0xef, 0xff, 0xff])
    );
    let max = 0x1000 + 5 + i32::MAX as u64;
    assert!(jmp_rel32(0x1000, max).is_some());
    assert!(jmp_rel32(0x1000, max + 1).is_none());
    let min = (0x8000_1000u64 + 5).wrapping_sub(1 << 31);
    assert!(jmp_rel32(0x8000_1000, min).is_some());
    assert!(jmp_rel32(0x8000_1000, min - 1).is_none());
    assert!(jmp_rel32(u64::MAX - 2, 0x10).is_some()); // wraps, no panic
    let abs = jmp_abs(0x1122_3344_5566_7788);
    assert_eq!(
        abs,
        [0xff, 0x25, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
    );
    let insn = decode(&abs, AT).unwrap();
    assert_eq!(insn.kind(), Kind::JmpIndirect);
    assert_eq!(insn.rip_ref().unwrap().target, AT + 6);
}

/// Decodes a trampoline and checks that it is within its bound.
fn tramp(p: &EntryPlan, at: u64) -> Vec<Insn> {
    let bytes = relocate(p, at).unwrap();
    assert!(bytes.len() <= trampoline_len_bound(p));
    decode_all(&bytes, at).collect::<Result<_, _>>().unwrap()
}

const NEAR: u64 = AT + 0x10_0000;
const FAR: u64 = AT + 0x10_0000_0000;

#[test]
fn trampolines_keep_targets_and_jump_back() {
    // je +0x20; mov 0x10(%rip),%eax; call +0x100; ret
    let code = "74 20 8b 05 10 00 00 00 e8 00 01 00 00 c3";
    let p = plan(code, 5).unwrap();
    assert_eq!(p.covered(), 8);
    let t = tramp(&p, NEAR);
    assert_eq!(t.len(), 3);
    assert_eq!(
        t[0].kind(),
        Kind::Jcc {
            cond: 4,
            target: AT + 0x22
        }
    );
    assert_eq!(t[0].len(), 6, "rel8 widened to rel32");
    assert_eq!(t[1].rip_ref().unwrap().target, AT + 0x18);
    assert_eq!(t[2].kind(), Kind::Jmp { target: AT + 8 });
    assert_eq!(t[2].len(), 5);

    assert!(!p.displaces_call());
    let p = plan(code, 14).unwrap();
    assert!(p.displaces_call());
    let t = tramp(&p, NEAR);
    assert_eq!(t[2].kind(), Kind::Call { target: AT + 0x10d });
    assert_eq!(t[3].kind(), Kind::Ret);
    assert_eq!(t[4].kind(), Kind::Jmp { target: AT + 14 });
}

/// The target of the absolute jump (`jmp *0(%rip); .quad target`) at `off`.
fn abs_target(bytes: &[u8], off: usize) -> u64 {
    assert_eq!(
        bytes[off..off + 6],
        [0xff, 0x25, 0, 0, 0, 0],
        "an absolute jump"
    );
    u64::from_le_bytes(bytes[off + 6..off + 14].try_into().unwrap())
}

#[test]
fn far_trampolines_use_absolute_jumps_and_refuse_far_data() {
    // je +0x20; jmp +0x30 (a 2-byte jcc and a 5-byte jmp).
    let p = plan("74 20 e9 30 00 00 00 c3", 5).unwrap();
    let bytes = relocate(&p, FAR).unwrap();
    assert!(bytes.len() <= trampoline_len_bound(&p));
    // jne over the absolute jump to the je's target.
    let jne = decode(&bytes, FAR).unwrap();
    assert_eq!(
        jne.kind(),
        Kind::Jcc {
            cond: 5,
            target: FAR + 16
        }
    );
    assert_eq!(abs_target(&bytes, 2), AT + 0x22);
    assert_eq!(abs_target(&bytes, 16), AT + 0x37);
    assert_eq!(abs_target(&bytes, 30), AT + 7); // the jump back
    assert_eq!(bytes.len(), 44);

    // call far: call *2(%rip); jmp +8; address.
    let p = plan("e8 00 01 00 00 c3", 5).unwrap();
    let bytes = relocate(&p, FAR).unwrap();
    let call = decode(&bytes, FAR).unwrap();
    assert_eq!(call.kind(), Kind::CallIndirect);
    assert_eq!(call.rip_ref().unwrap().target, FAR + 8);
    assert_eq!(
        decode(&bytes[6..], FAR + 6).unwrap().kind(),
        Kind::Jmp { target: FAR + 16 }
    );
    assert_eq!(bytes[8..16], (AT + 0x105).to_le_bytes());
    assert_eq!(abs_target(&bytes, 16), AT + 5);
    assert!(bytes.len() <= trampoline_len_bound(&p));

    // RIP-relative data cannot follow that far.
    let p = plan("8b 05 10 00 00 00 c3", 5).unwrap();
    let e = relocate(&p, FAR).unwrap_err();
    assert_eq!(e.kind(), RelocErrorKind::OutOfReach);
    assert_eq!(e.insn_addr(), AT);
    assert!(e.to_string().contains("more than 2 GiB"), "{e}");
    // xbegin neither.
    let p = plan("c7 f8 10 00 00 00 c3", 5).unwrap();
    assert_eq!(
        relocate(&p, FAR).unwrap_err().kind(),
        RelocErrorKind::OutOfReach
    );
    let t = tramp(&p, NEAR);
    assert_eq!(t[0].kind(), Kind::Xbegin { target: AT + 0x16 });
}

#[test]
fn trampolines_start_with_endbr64_when_the_function_does() {
    let p = plan("f3 0f 1e fa 55 48 89 e5 5d c3", 5).unwrap();
    let t = tramp(&p, NEAR);
    assert!(t[0].is_endbr64());
    assert_eq!(t[1].bytes(), [0x55]);
    assert_eq!(t.last().unwrap().kind(), Kind::Jmp { target: AT + 9 });
}

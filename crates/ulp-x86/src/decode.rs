//! The instruction length decoder: one x86-64 instruction at a time, as
//! gcc, glibc and OpenSSL emit them in user-space code.
//!
//! [`decode`] reads the prefixes (legacy, REX, VEX, EVEX), the opcode, the
//! ModRM/SIB/displacement and the immediate, and returns an [`Insn`]: its
//! length, a [`Kind`] saying how control leaves it (falls through, relative
//! branch with its target, return, indirect, trap, system call) and, when
//! it has one, its RIP-relative memory operand ([`RipRef`]) with the
//! absolute address it refers to.
//!
//! Only lengths and control flow are decoded, not operands: nothing here
//! knows `add` from `sub`. Opcodes undefined in their map (see `opcode.rs`
//! for what is defined), undefined group members and x87 forms, encodings
//! that do not exist in 64-bit mode, instructions longer than 15 bytes and
//! byte slices that end inside an instruction are errors. So are 16-bit
//! relative branches (a `66` prefix on `jmp`, `jcc`, `call`, `loop` or
//! `xbegin`): Intel and AMD disagree on their length and target, and
//! compilers never emit them.
//!
//! Not validated: whether a defined opcode is also defined with the
//! mandatory prefix (`66`/`f2`/`f3`), VEX.L/VEX.W or register/memory form
//! it comes with (e.g. `f2 0f 76`). Such bytes decode with the opcode's
//! regular length. They do not occur in compiled code; in the random-bytes
//! cross-check against objdump they are about one string in seven, and
//! every length both decoders give agrees.

use core::fmt;

use crate::opcode::*;

/// The longest instruction the processor accepts.
pub const MAX_INSN_LEN: usize = 15;

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    addr: u64,
    len: u8,
    bytes: [u8; MAX_INSN_LEN],
    kind: Kind,
    /// Offset and size (1 or 4) of a relative branch's displacement.
    rel: Option<(u8, u8)>,
    rip: Option<RipRef>,
}

/// How control leaves an instruction. Branch targets are absolute
/// addresses, computed from the address the instruction was decoded at.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Control falls through to the next instruction (this includes
    /// everything that is not listed below, e.g. `rep movsb` or `cpuid`).
    Other,
    /// `jmp rel8` / `jmp rel32`.
    Jmp { target: u64 },
    /// `jcc rel8` / `jcc rel32`; `cond` is the condition code (0 = `jo` …
    /// 15 = `jg`), the low nibble of the opcode.
    Jcc { cond: u8, target: u64 },
    /// `call rel32`.
    Call { target: u64 },
    /// `loop`, `loope`, `loopne`, `jrcxz` (rel8 only, no rel32 form).
    Loop { op: LoopOp, target: u64 },
    /// `xbegin rel32`: starts a transaction; `target` is where an abort
    /// resumes.
    Xbegin { target: u64 },
    /// `ret`, `ret imm16`, far returns and `iret`.
    Ret,
    /// `jmp` through a register or memory (near or far).
    JmpIndirect,
    /// `call` through a register or memory (near or far).
    CallIndirect,
    /// Stops the thread here: `int3`, `int1`, `ud0`, `ud1`, `ud2`, `hlt` and
    /// the privileged `sysret`/`sysexit`.
    Trap,
    /// Enters the kernel and comes back after the instruction: `syscall`,
    /// `sysenter`, `int imm8`.
    Syscall,
}

/// The rel8-only branches of [`Kind::Loop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopOp {
    /// `loopne` / `loopnz` (`e0`).
    Loopne,
    /// `loope` / `loopz` (`e1`).
    Loope,
    /// `loop` (`e2`).
    Loop,
    /// `jrcxz` (`e3`; `jecxz` with a `67` prefix).
    Jrcxz,
}

/// A RIP-relative memory operand (`disp32(%rip)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RipRef {
    /// Offset of the 4-byte displacement inside the instruction.
    pub disp_offset: u8,
    /// The absolute address the operand refers to: the address of the end
    /// of the instruction (immediate included) plus the displacement.
    pub target: u64,
    /// The instruction has a `67` prefix: the address is computed in 32
    /// bits (`disp32(%eip)`), `target` is truncated accordingly.
    pub addr32: bool,
}

impl Insn {
    /// Address the instruction was decoded at.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes (1 to 15).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true (an instruction has at least one byte); here for clippy.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the next instruction.
    pub fn end(&self) -> u64 {
        self.addr.wrapping_add(u64::from(self.len))
    }

    /// The instruction's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The RIP-relative memory operand, if the instruction has one.
    pub fn rip_ref(&self) -> Option<RipRef> {
        self.rip
    }

    /// Target of a relative branch (`jmp`, `jcc`, `call`, `loop*`,
    /// `jrcxz`, `xbegin`).
    pub fn branch_target(&self) -> Option<u64> {
        match self.kind {
            Kind::Jmp { target }
            | Kind::Jcc { target, .. }
            | Kind::Call { target }
            | Kind::Loop { target, .. }
            | Kind::Xbegin { target } => Some(target),
            _ => None,
        }
    }

    /// Offset and size (1 or 4) of a relative branch's displacement.
    pub fn rel_field(&self) -> Option<(usize, usize)> {
        self.rel.map(|(o, s)| (usize::from(o), usize::from(s)))
    }

    /// Whether execution can continue at [`Insn::end`] after this
    /// instruction (false for `jmp`, returns, indirect jumps and traps).
    pub fn falls_through(&self) -> bool {
        !matches!(
            self.kind,
            Kind::Jmp { .. } | Kind::Ret | Kind::JmpIndirect | Kind::Trap
        )
    }

    /// Whether this is `endbr64` (`f3 0f 1e fa`), the landing pad indirect
    /// branches need under CET indirect branch tracking.
    pub fn is_endbr64(&self) -> bool {
        self.bytes() == ENDBR64
    }
}

/// The bytes of `endbr64`.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Whether `code` starts with `endbr64`.
pub fn starts_with_endbr64(code: &[u8]) -> bool {
    code.starts_with(&ENDBR64)
}

/// Why bytes could not be decoded.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The bytes end inside the instruction.
    Truncated,
    /// More than 15 bytes (the processor raises #GP).
    TooLong,
    /// An opcode or encoding that is undefined in 64-bit mode.
    Invalid,
    /// A defined encoding this decoder does not handle (16-bit branches,
    /// 3DNow!, XOP, AVX-512 FP16 …).
    Unsupported,
}

/// An instruction that could not be decoded, with where and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    addr: u64,
    kind: DecodeErrorKind,
    what: &'static str,
    bytes: [u8; 8],
    nbytes: u8,
}

impl DecodeError {
    fn new(addr: u64, code: &[u8], kind: DecodeErrorKind, what: &'static str) -> DecodeError {
        let mut bytes = [0u8; 8];
        let n = code.len().min(bytes.len());
        bytes[..n].copy_from_slice(&code[..n]);
        DecodeError {
            addr,
            kind,
            what,
            bytes,
            nbytes: n as u8,
        }
    }

    /// Address of the instruction that could not be decoded.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode the instruction at {:#x} (", self.addr)?;
        for (i, b) in self.bytes[..usize::from(self.nbytes)].iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        if self.nbytes == 0 {
            f.write_str("no bytes")?;
        }
        write!(f, "): {}", self.what)
    }
}

impl core::error::Error for DecodeError {}

/// Decodes the instruction at the start of `code`, which is at address
/// `addr`. `code` may extend past the instruction (it usually holds the rest
/// of the function); only the bytes the instruction needs are read.
pub fn decode(code: &[u8], addr: u64) -> Result<Insn, DecodeError> {
    decode_one(code, addr).map_err(|(kind, what)| DecodeError::new(addr, code, kind, what))
}

/// Decodes `code` (at address `addr`) linearly, one instruction after the
/// other. The iterator yields an error at the first undecodable instruction
/// and then ends; it also ends at the end of `code`.
pub fn decode_all(code: &[u8], addr: u64) -> Insns<'_> {
    Insns {
        code,
        addr,
        pos: 0,
        failed: false,
    }
}

/// The iterator of [`decode_all`].
pub struct Insns<'a> {
    code: &'a [u8],
    addr: u64,
    pos: usize,
    failed: bool,
}

impl Iterator for Insns<'_> {
    type Item = Result<Insn, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.code.get(self.pos..).filter(|r| !r.is_empty())?;
        let addr = self.addr.wrapping_add(self.pos as u64);
        match decode(rest, addr) {
            Ok(insn) => {
                self.pos += insn.len();
                Some(Ok(insn))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

type Failure = (DecodeErrorKind, &'static str);

const TRUNCATED: Failure = (
    DecodeErrorKind::Truncated,
    "the bytes end inside the instruction",
);

fn invalid(what: &'static str) -> Failure {
    (DecodeErrorKind::Invalid, what)
}

fn unsupported(what: &'static str) -> Failure {
    (DecodeErrorKind::Unsupported, what)
}

/// Reads bytes of one instruction, enforcing the 15-byte limit.
struct Reader<'a> {
    code: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Result<u8, Failure> {
        if self.pos >= MAX_INSN_LEN {
            return Err((
                DecodeErrorKind::TooLong,
                "longer than 15 bytes (too many prefixes)",
            ));
        }
        self.code.get(self.pos).copied().ok_or(TRUNCATED)
    }

    fn byte(&mut self) -> Result<u8, Failure> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// Skips `n` bytes, returning the offset of the first.
    fn skip(&mut self, n: usize) -> Result<usize, Failure> {
        let at = self.pos;
        let end = at + n;
        if end > MAX_INSN_LEN {
            return Err((DecodeErrorKind::TooLong, "longer than 15 bytes"));
        }
        if end > self.code.len() {
            return Err(TRUNCATED);
        }
        self.pos = end;
        Ok(at)
    }

    /// The little-endian signed value of the `size` (1 or 4) bytes at `at`.
    fn signed(&self, at: usize, size: usize) -> i64 {
        match (size, self.code.get(at..at + size)) {
            (1, Some(&[b])) => i64::from(b as i8),
            (4, Some(&[a, b, c, d])) => i64::from(i32::from_le_bytes([a, b, c, d])),
            _ => 0, // not reached: callers pass what skip() accepted
        }
    }
}

#[derive(Default)]
struct Prefixes {
    opsize: bool,
    addr32: bool,
    /// The last of `f2`/`f3`.
    rep: Option<u8>,
    lock: bool,
    /// The REX byte, if it is the last prefix (0 otherwise).
    rex: u8,
}

impl Prefixes {
    fn rex_w(&self) -> bool {
        self.rex & 0x08 != 0
    }
}

/// The opcode map an instruction's opcode byte belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Map {
    OneByte,
    M0f,
    M0f38,
    M0f3a,
}

/// How the opcode was encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Legacy,
    Vex,
    Evex,
}

/// Size of the immediate, when it depends on the prefixes.
#[derive(Clone, Copy)]
enum Imm {
    None,
    Bytes(usize),
    /// 2 bytes with a `66` prefix, else 4 (also with REX.W).
    Z,
    /// `mov r, imm`: 8 bytes with REX.W, 2 with `66`, else 4.
    V,
    /// `mov` to/from an absolute address: 8 bytes, 4 with `67`.
    Moffs,
}

/// What the opcode and ModRM say about the rest of the instruction.
struct Shape {
    imm: Imm,
    /// Size of a relative branch displacement (0: none).
    rel: usize,
    kind: Kind,
}

impl Shape {
    fn plain(imm: Imm) -> Shape {
        Shape {
            imm,
            rel: 0,
            kind: Kind::Other,
        }
    }

    fn flow(kind: Kind) -> Shape {
        Shape {
            imm: Imm::None,
            rel: 0,
            kind,
        }
    }

    /// A relative branch; `kind`'s target is filled in once the
    /// displacement is read.
    fn branch(rel: usize, kind: Kind) -> Shape {
        Shape {
            imm: Imm::None,
            rel,
            kind,
        }
    }
}

fn decode_one(code: &[u8], addr: u64) -> Result<Insn, Failure> {
    let mut r = Reader { code, pos: 0 };
    let mut p = Prefixes::default();
    loop {
        let b = r.peek()?;
        match b {
            0x66 => p.opsize = true,
            0x67 => p.addr32 = true,
            0xf2 | 0xf3 => p.rep = Some(b),
            0xf0 => p.lock = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            0x40..=0x4f => {
                r.pos += 1;
                p.rex = b;
                continue;
            }
            _ => break,
        }
        // A legacy prefix after REX makes the REX byte ignored.
        p.rex = 0;
        r.pos += 1;
    }

    let op = r.byte()?;
    let (enc, map, op) = match op {
        0x0f => match r.byte()? {
            0x38 => (Encoding::Legacy, Map::M0f38, r.byte()?),
            0x3a => (Encoding::Legacy, Map::M0f3a, r.byte()?),
            b => (Encoding::Legacy, Map::M0f, b),
        },
        0xc4 | 0xc5 | 0x62 => {
            if p.opsize || p.rep.is_some() || p.lock || p.rex != 0 {
                return Err(invalid("a VEX or EVEX prefix after 66, f2, f3, f0 or REX"));
            }
            match op {
                0xc5 => {
                    r.byte()?; // R vvvv L pp; map 0f
                    (Encoding::Vex, Map::M0f, r.byte()?)
                }
                0xc4 => {
                    let m = r.byte()? & 0x1f;
                    r.byte()?; // W vvvv L pp
                    (Encoding::Vex, vex_map(m)?, r.byte()?)
                }
                _ => {
                    let p0 = r.byte()?;
                    let p1 = r.byte()?;
                    r.byte()?; // z L'L b V' aaa
                    if p0 & 0x08 != 0 || p1 & 0x04 == 0 {
                        return Err(invalid("EVEX prefix with reserved bits set wrong"));
                    }
                    (Encoding::Evex, evex_map(p0 & 0x07)?, r.byte()?)
                }
            }
        }
        b => (Encoding::Legacy, Map::OneByte, b),
    };

    let modrm = if has_modrm(enc, map, op)? {
        Some(r.byte()?)
    } else {
        None
    };
    let shape = shape(enc, map, op, modrm, &p)?;

    let mut rip_disp = None;
    if let Some(m) = modrm {
        // mov to/from control and debug registers (0f 20..23) ignore the
        // mod field: their operands are always registers.
        let always_reg = enc == Encoding::Legacy && map == Map::M0f && (0x20..=0x23).contains(&op);
        if !always_reg {
            rip_disp = memory_operand(&mut r, m)?;
        }
    }
    let imm = match shape.imm {
        Imm::None => 0,
        Imm::Bytes(n) => n,
        Imm::Z => {
            if p.opsize && !p.rex_w() {
                2
            } else {
                4
            }
        }
        Imm::V => {
            if p.rex_w() {
                8
            } else if p.opsize {
                2
            } else {
                4
            }
        }
        Imm::Moffs => {
            if p.addr32 {
                4
            } else {
                8
            }
        }
    };
    r.skip(imm)?;
    let rel_at = r.skip(shape.rel)?;
    let len = r.pos;
    let end = addr.wrapping_add(len as u64);

    let mut kind = shape.kind;
    let mut rel = None;
    if shape.rel != 0 {
        let target = end.wrapping_add(r.signed(rel_at, shape.rel) as u64);
        rel = Some((rel_at as u8, shape.rel as u8));
        match &mut kind {
            Kind::Jmp { target: t }
            | Kind::Jcc { target: t, .. }
            | Kind::Call { target: t }
            | Kind::Loop { target: t, .. }
            | Kind::Xbegin { target: t } => *t = target,
            _ => {}
        }
    }
    let rip = rip_disp.map(|at| {
        let mut target = end.wrapping_add(r.signed(at, 4) as u64);
        if p.addr32 {
            target &= 0xffff_ffff;
        }
        RipRef {
            disp_offset: at as u8,
            target,
            addr32: p.addr32,
        }
    });

    let mut bytes = [0u8; MAX_INSN_LEN];
    bytes[..len].copy_from_slice(&code[..len]);
    Ok(Insn {
        addr,
        len: len as u8,
        bytes,
        kind,
        rel,
        rip,
    })
}

fn vex_map(m: u8) -> Result<Map, Failure> {
    match m {
        1 => Ok(Map::M0f),
        2 => Ok(Map::M0f38),
        3 => Ok(Map::M0f3a),
        _ => Err(invalid("VEX prefix with an undefined opcode map")),
    }
}

fn evex_map(m: u8) -> Result<Map, Failure> {
    match m {
        1 => Ok(Map::M0f),
        2 => Ok(Map::M0f38),
        3 => Ok(Map::M0f3a),
        5 | 6 => Err(unsupported("EVEX map 5 or 6 (AVX-512 FP16)")),
        _ => Err(invalid("EVEX prefix with an undefined opcode map")),
    }
}

/// Whether the opcode is followed by a ModRM byte. Also rejects opcodes
/// that are undefined whatever follows them.
fn has_modrm(enc: Encoding, map: Map, op: u8) -> Result<bool, Failure> {
    let (valid, modrm) = match (enc, map) {
        (Encoding::Legacy, Map::OneByte) => {
            (!ONE_BYTE_INVALID.contains(op), ONE_BYTE_MODRM.contains(op))
        }
        (Encoding::Legacy, Map::M0f) => {
            if op == 0x0f {
                return Err(unsupported("3DNow! instruction"));
            }
            (MAP_0F_VALID.contains(op), !MAP_0F_NO_MODRM.contains(op))
        }
        (Encoding::Legacy, Map::M0f38) => (MAP_0F38_VALID.contains(op), true),
        (Encoding::Legacy, Map::M0f3a) => (MAP_0F3A_VALID.contains(op), true),
        (Encoding::Vex, Map::M0f) => (VEX_0F_VALID.contains(op), op != 0x77),
        (Encoding::Vex, Map::M0f38) => (VEX_0F38_VALID.contains(op), true),
        (Encoding::Vex, Map::M0f3a) => (VEX_0F3A_VALID.contains(op), true),
        (Encoding::Evex, Map::M0f) => (EVEX_0F_VALID.contains(op), true),
        (Encoding::Evex, Map::M0f38) => (EVEX_0F38_VALID.contains(op), true),
        (Encoding::Evex, Map::M0f3a) => (EVEX_0F3A_VALID.contains(op), true),
        (_, Map::OneByte) => (false, false), // not produced by decode_one
    };
    if valid {
        Ok(modrm)
    } else {
        Err(invalid("undefined opcode"))
    }
}

/// The immediate, relative displacement and kind of an instruction whose
/// opcode (and ModRM, if any) has been read.
fn shape(
    enc: Encoding,
    map: Map,
    op: u8,
    modrm: Option<u8>,
    p: &Prefixes,
) -> Result<Shape, Failure> {
    let reg = modrm.map_or(0, |m| (m >> 3) & 7);
    let is_reg = modrm.is_some_and(|m| m >> 6 == 3);
    match (enc, map) {
        (Encoding::Legacy, Map::OneByte) => one_byte(op, modrm, reg, is_reg, p),
        (Encoding::Legacy, Map::M0f) => two_byte(op, p),
        (Encoding::Legacy, Map::M0f38) => Ok(Shape::plain(Imm::None)),
        (Encoding::Vex, Map::M0f) if VEX_0F_IMM8.contains(op) => Ok(Shape::plain(Imm::Bytes(1))),
        (Encoding::Evex, Map::M0f) if EVEX_0F_IMM8.contains(op) => Ok(Shape::plain(Imm::Bytes(1))),
        (_, Map::M0f3a) => Ok(Shape::plain(Imm::Bytes(1))),
        _ => Ok(Shape::plain(Imm::None)),
    }
}

fn near_branch(p: &Prefixes, rel: usize, kind: Kind) -> Result<Shape, Failure> {
    // REX.W overrides 66 on both vendors: `66 66 48 e8 rel32` is the
    // padded `call __tls_get_addr` of the general-dynamic TLS sequence.
    if p.opsize && !p.rex_w() {
        return Err(unsupported(
            "relative branch with a 66 prefix (Intel and AMD disagree on it)",
        ));
    }
    Ok(Shape::branch(rel, kind))
}

fn one_byte(
    op: u8,
    modrm: Option<u8>,
    reg: u8,
    is_reg: bool,
    p: &Prefixes,
) -> Result<Shape, Failure> {
    use Imm::{Bytes, Moffs, None as NoImm, V, Z};
    let s = match op {
        // add, or, adc, sbb, and, sub, xor, cmp: the al/eax immediate forms.
        0x00..=0x3f if op & 7 == 4 => Shape::plain(Bytes(1)),
        0x00..=0x3f if op & 7 == 5 => Shape::plain(Z),
        0x68 | 0x69 | 0x81 | 0xa9 => Shape::plain(Z),
        0x6a | 0x6b | 0x80 | 0x83 | 0xa8 | 0xb0..=0xb7 | 0xc0 | 0xc1 | 0xe4..=0xe7 => {
            Shape::plain(Bytes(1))
        }
        0x70..=0x7f => near_branch(
            p,
            1,
            Kind::Jcc {
                cond: op & 0x0f,
                target: 0,
            },
        )?,
        0x8d if is_reg => return Err(invalid("lea with a register operand")),
        0xd8..=0xdf if !modrm.is_some_and(|m| x87_valid(op, m)) => {
            return Err(invalid("undefined x87 form"))
        }
        0x8f if reg != 0 => return Err(unsupported("AMD XOP instruction")),
        0xa0..=0xa3 => Shape::plain(Moffs),
        0xb8..=0xbf => Shape::plain(V),
        0xc2 => Shape {
            imm: Bytes(2),
            rel: 0,
            kind: Kind::Ret,
        },
        0xc3 | 0xcb | 0xcf => Shape::flow(Kind::Ret),
        0xca => Shape {
            imm: Bytes(2),
            rel: 0,
            kind: Kind::Ret,
        },
        0xc6 => match (reg, modrm) {
            (0, _) => Shape::plain(Bytes(1)),
            (7, Some(0xf8)) => Shape::plain(Bytes(1)), // xabort imm8
            _ => return Err(invalid("undefined c6 /r form")),
        },
        0xc7 => match (reg, modrm) {
            (0, _) => Shape::plain(Z),
            (7, Some(0xf8)) => near_branch(p, 4, Kind::Xbegin { target: 0 })?,
            _ => return Err(invalid("undefined c7 /r form")),
        },
        0xc8 => Shape::plain(Bytes(3)), // enter imm16, imm8
        0xcc | 0xf1 | 0xf4 => Shape::flow(Kind::Trap),
        0xcd => Shape {
            imm: Bytes(1),
            rel: 0,
            kind: Kind::Syscall,
        },
        0xe0..=0xe3 => {
            let op = match op {
                0xe0 => LoopOp::Loopne,
                0xe1 => LoopOp::Loope,
                0xe2 => LoopOp::Loop,
                _ => LoopOp::Jrcxz,
            };
            near_branch(p, 1, Kind::Loop { op, target: 0 })?
        }
        0xe8 => near_branch(p, 4, Kind::Call { target: 0 })?,
        0xe9 => near_branch(p, 4, Kind::Jmp { target: 0 })?,
        0xeb => near_branch(p, 1, Kind::Jmp { target: 0 })?,
        0xf6 if reg < 2 => Shape::plain(Bytes(1)),
        0xf7 if reg < 2 => Shape::plain(Z),
        0xfe if reg >= 2 => return Err(invalid("undefined fe /r form")),
        0xff => match reg {
            2 => Shape::flow(Kind::CallIndirect),
            4 => Shape::flow(Kind::JmpIndirect),
            3 | 5 if is_reg => return Err(invalid("far call or jmp with a register operand")),
            3 => Shape::flow(Kind::CallIndirect),
            5 => Shape::flow(Kind::JmpIndirect),
            7 => return Err(invalid("undefined ff /7")),
            _ => Shape::plain(NoImm),
        },
        _ => Shape::plain(NoImm),
    };
    Ok(s)
}

fn two_byte(op: u8, p: &Prefixes) -> Result<Shape, Failure> {
    let s = match op {
        0x05 | 0x34 => Shape::flow(Kind::Syscall),
        0x07 | 0x35 | 0x0b | 0xb9 | 0xff => Shape::flow(Kind::Trap),
        0x78 | 0x79 if p.opsize || p.rep == Some(0xf2) => {
            return Err(unsupported("SSE4a extrq/insertq"))
        }
        0x80..=0x8f => near_branch(
            p,
            4,
            Kind::Jcc {
                cond: op & 0x0f,
                target: 0,
            },
        )?,
        0xb8 if p.rep != Some(0xf3) => return Err(unsupported("jmpe (IA-64 mode switch)")),
        _ if MAP_0F_IMM8.contains(op) => Shape::plain(Imm::Bytes(1)),
        _ => Shape::plain(Imm::None),
    };
    Ok(s)
}

/// Reads the SIB byte and displacement of a ModRM operand; returns the
/// offset of the displacement if the operand is RIP-relative.
fn memory_operand(r: &mut Reader<'_>, modrm: u8) -> Result<Option<usize>, Failure> {
    let md = modrm >> 6;
    let rm = modrm & 7;
    let disp = match md {
        3 => return Ok(None),
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = r.byte()?;
        // mod 00 with SIB base 101: no base register, disp32.
        let disp = if md == 0 && sib & 7 == 5 { 4 } else { disp };
        r.skip(disp)?;
        Ok(None)
    } else if md == 0 && rm == 5 {
        Ok(Some(r.skip(4)?))
    } else {
        r.skip(disp)?;
        Ok(None)
    }
}

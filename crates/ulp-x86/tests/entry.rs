//! The entry analysis and the trampolines on real code:
//!
//! * functions gcc compiles here (and a few written in assembly for exact
//!   shapes): the plan or the refusal each one must get;
//! * every function of the system's libc: each plan's trampoline, built
//!   near and far, decoded back instruction by instruction, must branch to
//!   and refer to the same absolute addresses as the original prefix;
//! * execution: a library is loaded into this test process, a trampoline
//!   is written into an executable page near (and far from) it, and
//!   calling through the trampoline must give what calling the function
//!   does.

mod common;

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;

use common::{functions, gcc, Func};
use ulp_fixtures::TempDir;
use ulp_x86::{
    analyze_entry, decode, relocate, trampoline_len_bound, EntryPlan, Insn, Kind, RefusalReason,
    RelocErrorKind, JMP_ABS_LEN, JMP_REL32_LEN,
};

/// C and assembly with known entry shapes. Every `exec_*` function takes
/// and returns `long` and is called through a trampoline by `execution`.
const ENTRY_C: &str = r#"
static volatile long base = 1000;
void set_base(long b) { base = b; }

/* mov base(%rip),%rax first: a RIP-relative operand in the prefix. */
long exec_rip(long x) { return base + x * 3; }

/* A jump table after a 7-byte prefix. */
long exec_switch(long op) {
    switch (op) {
    case 0: return 11; case 1: return base * 7; case 2: return 29;
    case 3: return op << 9; case 4: return -5; case 5: return base / 3;
    case 6: return 1234567; default: return -op;
    }
}

int short_fn(void) { return 0; }

long exec_loop(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += i * i + base;
    return s;
}

__asm__(
    ".text\n"
    /* xor %eax,%eax; 1: add %edi,%eax; dec %edi; jnz 1b; ret
       The back edge targets offset 2, inside the 5 overwritten bytes. */
    ".globl loop2\n.type loop2,@function\n"
    "loop2:\n xor %eax,%eax\n1: add %edi,%eax\n dec %edi\n jnz 1b\n ret\n"
    ".size loop2, .-loop2\n"
    /* test; js (rel8) in the prefix. */
    ".globl exec_jcc\n.type exec_jcc,@function\n"
    "exec_jcc:\n test %rdi,%rdi\n js 1f\n lea 1(%rdi),%rax\n ret\n"
    "1: mov $-1,%rax\n ret\n"
    ".size exec_jcc, .-exec_jcc\n"
    /* call rel32 in the prefix; the callee doubles, the caller adds 5. */
    ".globl exec_call\n.type exec_call,@function\n"
    "exec_call:\n call 2f\n add $5,%rax\n ret\n"
    "2: lea (%rdi,%rdi),%rax\n ret\n"
    ".size exec_call, .-exec_call\n"
    /* jmp rel8 as the last displaced instruction. */
    ".globl exec_jmp\n.type exec_jmp,@function\n"
    "exec_jmp:\n mov %rdi,%rax\n nop\n jmp 3f\n ud2\n"
    "3: add $100,%rax\n ret\n"
    ".size exec_jmp, .-exec_jmp\n"
    /* jrcxz in the prefix: not relocatable. */
    ".globl with_jrcxz\n.type with_jrcxz,@function\n"
    "with_jrcxz:\n mov %rdi,%rcx\n jrcxz 4f\n mov $1,%eax\n ret\n4: xor %eax,%eax\n ret\n"
    ".size with_jrcxz, .-with_jrcxz\n"
    /* ret inside the first 5 bytes, padding after. */
    ".globl early_ret\n.type early_ret,@function\n"
    "early_ret:\n xor %eax,%eax\n ret\n nop\n nop\n nop\n nop\n"
    ".size early_ret, .-early_ret\n"
);
"#;

/// Builds the entry library into `dir`.
fn entry_lib(dir: &TempDir, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let mut flags = vec!["-O2", "-fPIC", "-shared"];
    flags.extend_from_slice(extra);
    gcc(dir, name, ENTRY_C, &flags)
}

fn by_name(funcs: &[Func]) -> BTreeMap<&str, &Func> {
    funcs.iter().map(|f| (f.name.as_str(), f)).collect()
}

#[test]
fn gcc_functions_get_the_expected_plans_and_refusals() {
    let dir = TempDir::new("x86-entry");
    for (lib, cet) in [("plain.so", false), ("cet.so", true)] {
        let extra: &[&str] = if cet {
            &["-fcf-protection=full"]
        } else {
            &["-fcf-protection=none"]
        };
        let path = entry_lib(&dir, lib, extra);
        let funcs = functions(&path);
        let f = by_name(&funcs);
        let analyze = |name: &str, need| {
            let func = f.get(name).unwrap_or_else(|| panic!("{name} in {lib}"));
            analyze_entry(&func.bytes, func.addr, need)
        };
        let refusal = |name: &str| analyze(name, JMP_REL32_LEN).expect_err(name).reason();

        assert_eq!(refusal("loop2"), RefusalReason::BranchIntoRange, "{lib}");
        assert_eq!(refusal("short_fn"), RefusalReason::TooShort, "{lib}");
        assert_eq!(refusal("with_jrcxz"), RefusalReason::Unrelocatable, "{lib}");
        assert_eq!(refusal("early_ret"), RefusalReason::EndsInRange, "{lib}");
        let m = analyze("loop2", JMP_REL32_LEN).unwrap_err().to_string();
        assert!(m.contains("(+0x2)"), "{m}");

        for name in [
            "exec_rip",
            "exec_switch",
            "exec_loop",
            "exec_jcc",
            "exec_call",
            "exec_jmp",
            "set_base",
        ] {
            for need in [JMP_REL32_LEN, JMP_ABS_LEN] {
                let func = f[name];
                let plan = match analyze(name, need) {
                    Ok(p) => p,
                    // set_base is `mov %rdi,base(%rip); ret`: too short
                    // for the 14-byte form.
                    Err(r) if need == JMP_ABS_LEN => {
                        println!("{lib} {name}, {need} bytes: {r}");
                        continue;
                    }
                    Err(r) => panic!("{lib} {name}: {r}"),
                };
                check_plan(&plan, func, need);
                let has_endbr = func.bytes.starts_with(&ulp_x86::ENDBR64);
                assert_eq!(plan.keeps_endbr64(), has_endbr, "{lib} {name}");
                let in_asm = ["exec_jcc", "exec_call", "exec_jmp"].contains(&name);
                if !in_asm {
                    assert_eq!(has_endbr, cet, "{lib} {name}: -fcf-protection adds endbr64");
                }
            }
        }
        let sw = analyze("exec_switch", JMP_REL32_LEN).unwrap();
        assert!(sw.indirect_jumps() >= 1, "a switch through a jump table");
    }
}

/// The plan covers at least `need` bytes on instruction boundaries, from
/// the start (after endbr64), inside the function.
fn check_plan(plan: &EntryPlan, func: &Func, need: usize) {
    assert_eq!(plan.function(), func.addr);
    assert!(plan.covered() >= need);
    let mut at = plan.start();
    for insn in plan.displaced() {
        assert_eq!(insn.addr(), at, "{}: contiguous", func.name);
        let off = (at - func.addr) as usize;
        assert_eq!(insn.bytes(), &func.bytes[off..off + insn.len()]);
        at = insn.end();
    }
    assert_eq!(at, plan.resume());
    assert!(plan.resume() <= func.addr + func.bytes.len() as u64);
    // The last displaced instruction is the first to reach `need`.
    let before_last = plan.covered() - plan.displaced().last().unwrap().len();
    assert!(before_last < need);
}

/// One relocated instruction, decoded back from a trampoline: what it does
/// and where it goes, including the absolute forms the decoder sees as
/// indirect jumps through an inline address.
#[derive(Debug, PartialEq, Eq)]
enum Moved {
    Jmp(u64),
    Jcc(u8, u64),
    Call(u64),
    Xbegin(u64),
    /// Copied, with its RIP-relative target (if any).
    Same(Vec<u8>, Option<u64>),
}

fn slot(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
}

/// Decodes the relocated instruction at `off` in the trampoline `bytes` at
/// `tramp`; returns it and its length.
fn moved_at(bytes: &[u8], off: usize, tramp: u64) -> (Moved, usize) {
    let here = tramp + off as u64;
    let rest = &bytes[off..];
    const ABS: [u8; 6] = [0xff, 0x25, 0, 0, 0, 0];
    if rest.starts_with(&ABS) {
        return (Moved::Jmp(slot(rest, 6)), JMP_ABS_LEN);
    }
    if rest.starts_with(&[0xff, 0x15, 2, 0, 0, 0, 0xeb, 8]) {
        return (Moved::Call(slot(rest, 8)), 16);
    }
    if rest.len() >= 16 && rest[0] & 0xf0 == 0x70 && rest[1] == 14 && rest[2..].starts_with(&ABS) {
        return (Moved::Jcc((rest[0] & 0x0f) ^ 1, slot(rest, 8)), 16);
    }
    let insn = decode(rest, here).expect("trampoline bytes decode");
    let m = match insn.kind() {
        Kind::Jmp { target } => Moved::Jmp(target),
        Kind::Jcc { cond, target } => Moved::Jcc(cond, target),
        Kind::Call { target } => Moved::Call(target),
        Kind::Xbegin { target } => Moved::Xbegin(target),
        _ => same(&insn),
    };
    (m, insn.len())
}

/// An instruction as copied: its bytes without the displacement, and its
/// RIP-relative target.
fn same(insn: &Insn) -> Moved {
    let mut b = insn.bytes().to_vec();
    if let Some(r) = insn.rip_ref() {
        let at = usize::from(r.disp_offset);
        b[at..at + 4].fill(0);
    }
    Moved::Same(b, insn.rip_ref().map(|r| r.target))
}

fn original(insn: &Insn) -> Moved {
    match insn.kind() {
        Kind::Jmp { target } => Moved::Jmp(target),
        Kind::Jcc { cond, target } => Moved::Jcc(cond, target),
        Kind::Call { target } => Moved::Call(target),
        Kind::Xbegin { target } => Moved::Xbegin(target),
        _ => same(insn),
    }
}

/// Checks a trampoline built for `plan` at `tramp` against the plan.
fn check_trampoline(plan: &EntryPlan, tramp: u64, bytes: &[u8]) {
    assert!(bytes.len() <= trampoline_len_bound(plan));
    let mut off = 0;
    if plan.keeps_endbr64() {
        assert!(bytes.starts_with(&ulp_x86::ENDBR64));
        off = 4;
    }
    for insn in plan.displaced() {
        let (m, len) = moved_at(bytes, off, tramp);
        assert_eq!(m, original(insn), "displaced {:#x}", insn.addr());
        off += len;
    }
    let (back, len) = moved_at(bytes, off, tramp);
    assert_eq!(back, Moved::Jmp(plan.resume()));
    assert_eq!(off + len, bytes.len(), "nothing after the jump back");
}

#[test]
fn libc_trampolines_branch_and_refer_to_the_original_addresses() {
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    assert!(
        libc.exists(),
        "the system libc {} is required",
        libc.display()
    );
    let funcs = functions(libc);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let (mut planned, mut near_ok, mut far_ok, mut far_refused) = (0, 0, 0, 0);
    let mut with = BTreeMap::new();
    for f in &funcs {
        for need in [JMP_REL32_LEN, JMP_ABS_LEN] {
            let plan = match analyze_entry(&f.bytes, f.addr, need) {
                Ok(p) => p,
                Err(r) => {
                    *reasons
                        .entry(format!("{:?} ({need})", r.reason()))
                        .or_default() += 1;
                    continue;
                }
            };
            planned += 1;
            check_plan(&plan, f, need);
            for insn in plan.displaced() {
                let k = match insn.kind() {
                    Kind::Jcc { .. } => "jcc",
                    Kind::Jmp { .. } => "jmp",
                    Kind::Call { .. } => "call",
                    _ if insn.rip_ref().is_some() => "rip-relative",
                    _ => continue,
                };
                *with.entry(k).or_insert(0usize) += 1;
            }
            // 256 MiB away: everything stays in rel32 reach.
            let near = f.addr + 0x1000_0000;
            let bytes = relocate(&plan, near).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            check_trampoline(&plan, near, &bytes);
            near_ok += 1;
            // 64 GiB away: absolute forms, or a refusal for data.
            let far = f.addr + 0x10_0000_0000;
            match relocate(&plan, far) {
                Ok(bytes) => {
                    check_trampoline(&plan, far, &bytes);
                    far_ok += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), RelocErrorKind::OutOfReach, "{}: {e}", f.name);
                    far_refused += 1;
                }
            }
        }
    }
    println!(
        "libc: {} functions x 2 redirect sizes: {planned} plans (displaced: {with:?}); \
         trampolines near: {near_ok}, far: {far_ok} (+{far_refused} refused: data out of reach); \
         refusals: {reasons:?}",
        funcs.len()
    );
    assert!(
        planned > funcs.len(),
        "most libc functions can be redirected"
    );
    assert!(with.get("rip-relative").copied().unwrap_or(0) > 10);
    assert!(with.get("jcc").copied().unwrap_or(0) > 10);
}

// --- Execution --------------------------------------------------------------

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn mmap(
        addr: *mut c_void,
        len: usize,
        prot: c_int,
        flags: c_int,
        fd: c_int,
        off: i64,
    ) -> *mut c_void;
    fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int;
    fn munmap(addr: *mut c_void, len: usize) -> c_int;
}

const RTLD_NOW: c_int = 2;
const PROT_READ: c_int = 1;
const PROT_WRITE: c_int = 2;
const PROT_EXEC: c_int = 4;
const MAP_PRIVATE: c_int = 0x02;
const MAP_ANONYMOUS: c_int = 0x20;
const MAP_FIXED_NOREPLACE: c_int = 0x10_0000;
const PAGE: usize = 4096;

/// An anonymous page mapped at a chosen address, unmapped on drop.
struct Page(u64);

impl Page {
    /// The first free page at one of `candidates`.
    fn at_one_of(candidates: impl Iterator<Item = u64>) -> Page {
        for addr in candidates {
            let addr = addr & !(PAGE as u64 - 1);
            // SAFETY: a fresh anonymous mapping; MAP_FIXED_NOREPLACE never
            // replaces an existing one.
            let p = unsafe {
                mmap(
                    addr as *mut c_void,
                    PAGE,
                    PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p as u64 == addr {
                return Page(addr);
            }
            if p as isize != -1 {
                // An old kernel ignoring the flag put it elsewhere.
                // SAFETY: unmapping the mapping just made.
                unsafe { munmap(p, PAGE) };
            }
        }
        panic!("no free page among the candidate addresses");
    }

    /// Copies `code` into the page and makes it executable (not writable).
    fn install(&self, code: &[u8]) {
        assert!(code.len() <= PAGE);
        // SAFETY: the page is ours, mapped writable, PAGE bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.0 as *mut u8, code.len());
            assert_eq!(
                mprotect(self.0 as *mut c_void, PAGE, PROT_READ | PROT_EXEC),
                0
            );
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmapping our own page; no function pointer into it
        // outlives the test that made it.
        unsafe { munmap(self.0 as *mut c_void, PAGE) };
    }
}

type LongFn = extern "C" fn(i64) -> i64;

#[test]
fn calling_through_a_trampoline_calls_the_function() {
    let dir = TempDir::new("x86-exec");
    for (lib, extra) in [
        ("exec-plain.so", &["-fcf-protection=none"][..]),
        ("exec-cet.so", &["-fcf-protection=full"][..]),
    ] {
        let path = entry_lib(&dir, lib, extra);
        let funcs = functions(&path);
        let f = by_name(&funcs);
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: loading a library built above; its constructors are gcc's.
        let handle = unsafe { dlopen(cpath.as_ptr(), RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen {}", path.display());
        let sym = |name: &str| {
            let c = CString::new(name).unwrap();
            // SAFETY: looking up a symbol in a handle that stays open.
            let p = unsafe { dlsym(handle, c.as_ptr()) };
            assert!(!p.is_null(), "dlsym {name}");
            p as u64
        };
        // SAFETY: set_base has this signature in ENTRY_C.
        let set_base: extern "C" fn(i64) = unsafe { std::mem::transmute(sym("set_base") as usize) };
        set_base(1000);

        let mut ran = 0;
        for name in [
            "exec_rip",
            "exec_switch",
            "exec_loop",
            "exec_jcc",
            "exec_call",
            "exec_jmp",
        ] {
            let func = f[name];
            let addr = sym(name);
            // The loaded code is the file's code.
            // SAFETY: the function's bytes are mapped readable (r-x).
            let live = unsafe { std::slice::from_raw_parts(addr as *const u8, func.bytes.len()) };
            assert_eq!(live, &func.bytes[..], "{name}");
            // SAFETY: every exec_* function takes and returns long.
            let direct: LongFn = unsafe { std::mem::transmute(addr as usize) };
            for need in [JMP_REL32_LEN, JMP_ABS_LEN] {
                let Ok(plan) = analyze_entry(live, addr, need) else {
                    assert_eq!(
                        need, JMP_ABS_LEN,
                        "{name} must be redirectable with 5 bytes"
                    );
                    continue;
                };
                // Near: the first free page within 1 GiB below or above.
                let near = Page::at_one_of(
                    (1..256u64)
                        .flat_map(|i| [addr.wrapping_sub(i * 0x40_0000), addr + i * 0x40_0000]),
                );
                // Far: 64 GiB and more away.
                let far = Page::at_one_of((1..64u64).map(|i| addr.wrapping_sub(i << 36)));
                for (page, where_) in [(&near, "near"), (&far, "far")] {
                    let code = match relocate(&plan, page.0) {
                        Ok(code) => code,
                        Err(e) => {
                            assert_eq!(where_, "far", "{name}: {e}");
                            assert_eq!(e.kind(), RelocErrorKind::OutOfReach, "{name}: {e}");
                            continue;
                        }
                    };
                    check_trampoline(&plan, page.0, &code);
                    page.install(&code);
                    // SAFETY: the trampoline runs the displaced prefix of
                    // `name` and jumps back into it: same signature.
                    let through: LongFn = unsafe { std::mem::transmute(page.0 as usize) };
                    for x in [-7i64, -1, 0, 1, 2, 3, 5, 6, 9, 1000] {
                        assert_eq!(
                            through(x),
                            direct(x),
                            "{lib} {name}({x}) through a {where_} trampoline ({need}-byte redirect)"
                        );
                    }
                    ran += 1;
                }
            }
        }
        println!("{lib}: {ran} trampolines called");
        assert!(ran >= 12, "{lib}: too few trampolines ran");
    }
}

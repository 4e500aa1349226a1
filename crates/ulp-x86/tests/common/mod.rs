//! Shared by the integration tests: the functions of an ELF file (with
//! their bytes), and libraries compiled here with gcc.

#![allow(dead_code)] // each test file uses a part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, SymbolKind};
use ulp_fixtures::TempDir;

/// A function symbol with its bytes (as long as its size says).
pub struct Func {
    pub name: String,
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// The sized function symbols in executable sections of `path`, one per
/// (address, size), sorted by address: those of its `.symtab` and
/// `.dynsym`, and of its detached debug file
/// (`/usr/lib/debug/.build-id/xx/yyyy.debug`) when one is installed.
pub fn functions(path: &Path) -> Vec<Func> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file = object::File::parse(&*data).expect("an ELF file");
    let code: Vec<(u64, &[u8])> = file
        .sections()
        .filter(|s| match s.flags() {
            SectionFlags::Elf { sh_flags } => sh_flags & u64::from(object::elf::SHF_EXECINSTR) != 0,
            _ => false,
        })
        .filter_map(|s| Some((s.address(), s.data().ok()?)))
        .collect();
    let bytes_at = |addr: u64, size: u64| -> Option<Vec<u8>> {
        let (base, data) = code
            .iter()
            .find(|(base, data)| addr >= *base && addr < base + data.len() as u64)?;
        let off = (addr - base) as usize;
        Some(data.get(off..off + size as usize)?.to_vec())
    };
    let mut by_range = BTreeMap::new();
    let mut add = |name: &str, addr: u64, size: u64| {
        if let Some(bytes) = bytes_at(addr, size) {
            by_range.entry((addr, size)).or_insert_with(|| Func {
                name: name.to_string(),
                addr,
                bytes,
            });
        }
    };
    let sized_funcs = |f: &object::File| -> Vec<(String, u64, u64)> {
        f.symbols()
            .chain(f.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && !s.is_undefined())
            .map(|s| (s.name().unwrap_or("?").to_string(), s.address(), s.size()))
            .collect()
    };
    for (name, addr, size) in sized_funcs(&file) {
        add(&name, addr, size);
    }
    if let Some(debug) = debug_file(&file) {
        let ddata = std::fs::read(&debug).expect("reading the debug file");
        let dfile = object::File::parse(&*ddata).expect("the debug file is ELF");
        for (name, addr, size) in sized_funcs(&dfile) {
            add(&name, addr, size);
        }
    }
    by_range.into_values().collect()
}

/// The detached debug file of `file`, found by its build-id.
fn debug_file(file: &object::File) -> Option<PathBuf> {
    let id = file.build_id().ok()??;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let path = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        hex.get(..2)?,
        hex.get(2..)?
    ));
    path.exists().then_some(path)
}

/// Compiles the C source `src` with gcc and `flags` into `dir/out`.
pub fn gcc(dir: &TempDir, out: &str, src: &str, flags: &[&str]) -> PathBuf {
    let c = dir.join(format!("{out}.c"));
    std::fs::write(&c, src).unwrap();
    let o = dir.join(out);
    let st = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&o)
        .arg(&c)
        .status()
        .expect("gcc must be installed to run these tests");
    assert!(st.success(), "gcc {flags:?} failed");
    o
}

/// C code with the shapes compilers produce: switches (jump tables),
/// loops, recursion, floating point, vectorizable loops, tail calls.
pub const SAMPLE_C: &str = r#"
#include <stddef.h>
#include <string.h>
int counter;
static int table[64];
double dtable[64];

int classify(int c) {
    switch (c) {
    case 0: return 11; case 1: return counter + 3; case 2: return 17;
    case 3: return table[c] * 2; case 4: return 99; case 5: return -1;
    case 6: return c * 7; case 7: return 1234567; default: return 0;
    }
}

int dispatch(int op, int a, int b) {
    switch (op) {
    case 0: return a + b; case 1: return a - b; case 2: return a * b;
    case 3: return b ? a / b : 0; case 4: return a << (b & 31);
    case 5: return a >> (b & 31); case 6: return a ^ b; case 7: return a | b;
    case 8: return a & b; case 9: return classify(a);
    }
    return -1;
}

long sum_array(const int *v, size_t n) {
    long s = 0;
    for (size_t i = 0; i < n; i++) s += v[i];
    return s;
}

void scale(float *restrict out, const float *restrict in, float k, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = in[i] * k + 1.0f;
}

double poly(double x) { return ((x * 3.5 + 2.25) * x - dtable[3]) * x + 0.5; }

long double ldmix(long double a, long double b) { return a * b + (long double)counter; }

int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

size_t my_strlen(const char *s) { const char *p = s; while (*p) p++; return (size_t)(p - s); }

int count_bits(unsigned long x) { int n = 0; while (x) { x &= x - 1; n++; } return n; }

void fill(char *dst, int c, size_t n) { memset(dst, c, n); }

int tail(int x) { return dispatch(x & 7, x, 3); }

unsigned hash(const unsigned char *p, size_t n) {
    unsigned h = 2166136261u;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 16777619u; }
    return h;
}

int bump(void) { return ++counter; }
"#;

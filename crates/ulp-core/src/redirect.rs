//! The redirect method of every function of a file (`ulp livepatchable
//! --functions`): padded, entry rewrite, or not patchable and why.
//!
//! * **padded**: the function was built with
//!   `-fpatchable-function-entry=16,14` (its padding start is listed in
//!   `__patchable_function_entries`, posted or not: the same test as
//!   libpulp's answer, per function);
//! * **entry rewrite**: no padding, but `ulp_x86::rewrite_plan` accepts
//!   overwriting its first instructions with a `jmp`. It is the very
//!   function the runtime calls on the bytes in memory, here called on the
//!   bytes in the file, with the same policy (`ulp_x86::method_of`), so the
//!   tool and the runtime agree;
//! * **not patchable**, with a stable reason key and a sentence: an IFUNC
//!   resolver (the process runs the implementation it returned, not the
//!   resolver; never patchable, even when padded), a refusal of
//!   `rewrite_plan`, or a symbol whose bytes are not code in the file.
//!
//! One [`Function`] per function address: aliases are listed under one
//! name (a global one, preferably without leading underscores). Nothing
//! here prints: the `ulp` command words the methods.

use std::collections::BTreeMap;

use ulp_elf::{ElfFile, Symbol, PADDING_BEFORE_ENTRY};
use ulp_x86::{rewrite_plan, RefusalReason};

/// A function's redirect method as the file tells it: padded, or an entry
/// rewrite displacing that many bytes (after an `endbr64`).
pub type Method = ulp_x86::Method;

/// Why a function is not patchable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotPatchable {
    /// A stable identifier (JSON `reason_key`).
    pub key: &'static str,
    /// A sentence.
    pub reason: String,
}

/// One function: an address, its names, its redirect method.
#[derive(Debug)]
pub struct Function {
    /// The name it is listed under.
    pub name: String,
    /// That name's symbol version (`@@GLIBC_2.14`, `@GLIBC_2.2.5`), if any.
    pub version: Option<String>,
    /// Its other names (symbols at the same address), sorted.
    pub aliases: Vec<String>,
    pub address: u64,
    pub size: u64,
    pub method: Result<Method, NotPatchable>,
}

/// Every function of `elf` with its method, sorted by name then address.
pub fn classify(elf: &ElfFile) -> Vec<Function> {
    let padded: Vec<u64> = elf.patchable_entries().unwrap_or_default();
    let symbols = elf.function_symbols();
    let mut versions = elf.dynamic_symbol_versions();
    let mut by_addr: BTreeMap<u64, Vec<&Symbol>> = BTreeMap::new();
    for s in &symbols {
        by_addr.entry(s.value).or_default().push(s);
    }
    let mut out: Vec<Function> = by_addr
        .into_values()
        .map(|mut group| {
            group.sort_by(|a, b| name_rank(a).cmp(&name_rank(b)));
            let first = group[0];
            let mut aliases: Vec<String> = group[1..].iter().map(|s| s.name.clone()).collect();
            aliases.sort();
            aliases.dedup();
            aliases.retain(|a| *a != first.name);
            // The IFUNC symbol and its resolver's own FUNC symbol share the
            // address: it is an IFUNC if any of its names is.
            let ifunc = group.iter().any(|s| s.is_ifunc());
            // Aliases of different sizes: the largest, so the scan for
            // branches into the overwritten bytes sees all the code.
            let size = group.iter().map(|s| s.size).max().unwrap_or(first.size);
            let sym = group
                .iter()
                .find(|s| s.size == size)
                .copied()
                .unwrap_or(first);
            // An IFUNC first, padded or not: redirecting the resolver
            // changes nothing once the loader has called it.
            let ifunc = ifunc.then(|| NotPatchable {
                key: "ifunc",
                reason: ifunc_reason(&first.name, &symbols),
            });
            let method = method_in_file(elf, sym, &padded, ifunc);
            Function {
                name: first.name.clone(),
                version: versions.remove(&(first.name.clone(), first.value)),
                aliases,
                address: first.value,
                size,
                method,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    out
}

/// The name to list a function under comes first: a global or weak name
/// before a local one, fewer leading underscores, then shorter, then
/// alphabetical (`memcpy` before `__memcpy`, `atoi` before `__GI_atoi`).
fn name_rank(s: &Symbol) -> (bool, usize, usize, &str) {
    const STB_LOCAL: u8 = 0;
    let underscores = s.name.bytes().take_while(|&b| b == b'_').count();
    (
        s.binding() == STB_LOCAL,
        underscores,
        s.name.len(),
        s.name.as_str(),
    )
}

/// The redirect method of `sym` by `ulp_x86::method_of`'s policy, on the
/// file: `ifunc` refuses it, padding (its start in `padded`) is used,
/// else no code in the file refuses it, else what `rewrite_plan` says.
fn method_in_file(
    elf: &ElfFile,
    sym: &Symbol,
    padded: &[u64],
    ifunc: Option<NotPatchable>,
) -> Result<Method, NotPatchable> {
    let pad_start = sym.value.wrapping_sub(PADDING_BEFORE_ENTRY);
    ulp_x86::method_of(
        ifunc,
        || padded.binary_search(&pad_start).is_ok().then_some(Ok(())),
        || {
            let code = elf.function_code(sym).map_err(|e| {
                let key = match e {
                    ulp_elf::CodeUnavailable::NotExecutable { .. } => "not_executable",
                    ulp_elf::CodeUnavailable::NotInFile { .. } => "not_in_file",
                    _ => "no_code",
                };
                NotPatchable {
                    key,
                    reason: format!("no code to patch: {e}"),
                }
            })?;
            rewrite_plan(code, sym.value)
                .map(|plan| plan.covered())
                .map_err(|refusal| NotPatchable {
                    key: refusal_key(refusal.reason()),
                    reason: refusal.to_string(),
                })
        },
    )
}

/// A stable key for each refusal of `rewrite_plan` (JSON `reason_key`).
fn refusal_key(reason: RefusalReason) -> &'static str {
    match reason {
        RefusalReason::TooShort => "too_short",
        RefusalReason::BranchIntoRange => "branch_into_range",
        RefusalReason::EndsInRange => "ends_in_range",
        RefusalReason::Unrelocatable => "unrelocatable",
        RefusalReason::DisplacesCall => "displaces_call",
        RefusalReason::Undecodable => "undecodable",
        _ => "refused",
    }
}

/// The reason an IFUNC is not patched, naming the implementations its
/// resolver probably picks between: the file's local functions called
/// `__NAME_*` (glibc's naming habit: `__memcpy_avx_unaligned_erms`; only
/// `.symtab` has them). Exported `__NAME_*` functions are not counted: in
/// glibc they are other interfaces (`__memcpy_chk`, `__strcpy_small`).
fn ifunc_reason(name: &str, all: &[Symbol]) -> String {
    const STB_LOCAL: u8 = 0;
    let base = "an IFUNC resolver; the process runs the implementation it selected: patch that function instead";
    let prefix = format!("__{}_", name.trim_start_matches('_'));
    let chk = format!("{prefix}chk");
    let mut candidates: Vec<&str> = all
        .iter()
        .filter(|s| !s.is_ifunc() && s.binding() == STB_LOCAL)
        .filter(|s| s.name.starts_with(&prefix) && !s.name.starts_with(&chk))
        .map(|s| s.name.as_str())
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    if candidates.is_empty() {
        return base.to_string();
    }
    format!("{base} (candidates: {})", candidates.join(", "))
}

/// Counts per method, and the not-patchable ones per reason key.
pub struct Summary {
    pub functions: usize,
    pub padded: usize,
    pub rewrite: usize,
    pub none: usize,
    pub none_by_reason: BTreeMap<&'static str, usize>,
}

pub fn summarize<'a>(functions: impl IntoIterator<Item = &'a Function>) -> Summary {
    let mut s = Summary {
        functions: 0,
        padded: 0,
        rewrite: 0,
        none: 0,
        none_by_reason: BTreeMap::new(),
    };
    for f in functions {
        s.functions += 1;
        match &f.method {
            Ok(Method::Padded(())) => s.padded += 1,
            Ok(Method::Rewrite(_)) => s.rewrite += 1,
            Err(NotPatchable { key, .. }) => {
                s.none += 1;
                *s.none_by_reason.entry(key).or_default() += 1;
            }
        }
    }
    s
}

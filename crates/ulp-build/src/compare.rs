//! The comparison of the before and after objects of one file, and the
//! checks against the target.
//!
//! - Two functions are the same when they have the same size, the same
//!   bytes once every relocated field is zeroed, and the same relocations
//!   (offset, type, target named with compiler numbers ignored, addend;
//!   a merged string or constant by its contents).
//! - Line numbers only: same size and relocations, and every run of
//!   differing bytes lies in a 4-byte little-endian field whose old value
//!   is a line of the original file that the diffs kept and whose new value
//!   is where that line is now (a `__LINE__` that moved). Such a function
//!   is listed and not replaced.
//! - A changed `f.cold` part changes `f`; another changed compiler-made
//!   clone (`.part`, `.isra`, `.constprop`) changes every function that
//!   refers to it.

use std::collections::{BTreeMap, BTreeSet};

use crate::diff::Patched;
use crate::objfile::{linked_bytes, normalize, rtype, Item, LinkedSymbol, ObjectInfo};
use crate::{target_symbol, Replaced};

/// A mutable variable of the file that the target has: the container
/// reaches it through `__ulp_ref_NAME` (a thread-local one through the
/// function `__ulp_ref_NAME()` and its `tls_index` `__ulp_tls_NAME`; a
/// static local one through a pointer named after its function).
#[derive(Clone, Debug)]
pub struct RefVar {
    /// The name in the source (for a static local, its target symbol's
    /// name: `count.1`).
    pub name: String,
    pub global: bool,
    /// Its symbol's value in the target (a thread-local one's: its offset
    /// in the target's TLS block).
    pub target_address: u64,
    pub tls: bool,
    pub local: Option<LocalRef>,
}

/// A static variable inside a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRef {
    /// Its name in the source (`count`).
    pub base: String,
    /// The function whose body declares it.
    pub owner: String,
}

impl RefVar {
    /// How the report shows it.
    pub fn shown(&self) -> String {
        let tls = if self.tls { ", thread-local" } else { "" };
        match &self.local {
            Some(l) => format!("{} (static in {}{tls})", l.base, l.owner),
            None if self.tls => format!("{} (thread-local)", self.name),
            None => self.name.clone(),
        }
    }
}

/// The functions of `obj` (clone parts by their parent's name) whose
/// relocations name variable `v` (its symbol or its section).
fn users(obj: &ObjectInfo, v: &Item) -> BTreeSet<String> {
    obj.functions
        .iter()
        .filter(|f| {
            f.relocs
                .iter()
                .any(|r| r.target == v.name || r.target == v.section)
        })
        .map(|f| f.name.split('.').next().unwrap_or(&f.name).to_string())
        .collect()
}

/// The variables of `other` that variable `v` of `obj` is: the one of the
/// same compared name, or for a static local (`count.1`) with several of
/// that name, those used by the same functions.
fn counterparts(obj: &ObjectInfo, v: &Item, other: &ObjectInfo) -> Vec<usize> {
    let key = v.key();
    let cands: Vec<usize> = (0..other.variables.len())
        .filter(|&i| other.variables[i].key() == key)
        .collect();
    let ours = obj.variables.iter().filter(|x| x.key() == key).count();
    if key == v.name || (cands.len() <= 1 && ours <= 1) {
        return cands;
    }
    let mine = users(obj, v);
    cands
        .into_iter()
        .filter(|&i| users(other, &other.variables[i]) == mine)
        .collect()
}

/// How a function changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Same,
    LineNumbers,
    Code,
}

/// What one file's comparison found.
#[derive(Clone, Debug, Default)]
pub struct FileAnalysis {
    pub path: String,
    pub replaced: Vec<Replaced>,
    pub added: Vec<String>,
    pub line_only: Vec<String>,
    pub references: Vec<RefVar>,
}

fn same_relocs(a: &Item, b: &Item) -> bool {
    a.relocs.len() == b.relocs.len()
        && a.relocs.iter().zip(&b.relocs).all(|(x, y)| {
            x.offset == y.offset
                && x.r_type == y.r_type
                && x.key == y.key
                && x.addend == y.addend
                && x.content == y.content
        })
}

/// How `after` differs from `before` (see the module comment);
/// `lines` maps original lines to patched ones.
pub fn change(before: &Item, after: &Item, lines: &BTreeMap<usize, usize>) -> Change {
    if before.size != after.size || !same_relocs(before, after) {
        return Change::Code;
    }
    let (b, a) = (before.masked(), after.masked());
    if b == a {
        return Change::Same;
    }
    let mut i = 0;
    let n = b.len();
    while i < n {
        if b[i] == a[i] {
            i += 1;
            continue;
        }
        let s = i;
        while i < n && b[i] != a[i] {
            i += 1;
        }
        let e = i;
        if e - s > 4 {
            return Change::Code;
        }
        let ok = (e.saturating_sub(4)..=s).any(|w| {
            if w + 4 > n {
                return false;
            }
            let old = u32::from_le_bytes([b[w], b[w + 1], b[w + 2], b[w + 3]]) as usize;
            let new = u32::from_le_bytes([a[w], a[w + 1], a[w + 2], a[w + 3]]) as usize;
            old != new && lines.get(&old) == Some(&new)
        });
        if !ok {
            return Change::Code;
        }
    }
    Change::LineNumbers
}

/// The 1-based lines of the definition of function `name` in `text`: a
/// line starting at column 0 with `name (` in it, whose parenthesis is
/// followed by `{` before any `;`, to its matching `}`.
pub fn extent(text: &str, name: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut line_start = 0;
    let mut line_no = 1;
    while line_start < bytes.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(bytes.len(), |p| line_start + p);
        let line = &text[line_start..line_end];
        if !line.starts_with([' ', '\t', '#', '/', '*']) {
            let mut from = 0;
            while let Some(p) = line[from..].find(name) {
                let at = from + p;
                from = at + name.len();
                let before_ok = at == 0 || !is_ident(line.as_bytes()[at - 1]);
                let rest = line[from..].trim_start();
                if !(before_ok && rest.starts_with('(')) {
                    continue;
                }
                // Find `{` or `;` after the parameter list.
                let mut i = line_start + from;
                let mut depth = 0i32;
                let mut body = None;
                while i < bytes.len() {
                    match bytes[i] {
                        b'(' => depth += 1,
                        b')' => depth -= 1,
                        b';' if depth == 0 => break,
                        b'{' if depth == 0 => {
                            body = Some(i);
                            break;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                let Some(open) = body else { break };
                let end = crate::source::matching_code_brace(bytes, open)?;
                let end_line = line_no + text[line_start..end].matches('\n').count();
                return Some((line_no, end_line));
            }
        }
        line_start = line_end + 1;
        line_no += 1;
    }
    None
}

/// Whether a relocation key names function `f` (its symbol or section).
fn names_function(key: &str, f: &Item) -> bool {
    let k = f.key();
    key == k || key == normalize(&format!(".text.{}", f.name)) || key == normalize(&f.section)
}

/// Compares an unchanged function of the before object with the target's
/// copy; `Err` says how they differ and which flag is probably missing.
fn matches_target(obj: &Item, t: &LinkedSymbol, target_data: &[u8]) -> Result<(), String> {
    let Some(mut tb) = linked_bytes(target_data, t.address, t.size) else {
        return Ok(());
    };
    let mut ob = obj.masked();
    let endbr = [0xf3, 0x0f, 0x1e, 0xfa];
    let pad_before_t =
        t.address > 0 && linked_bytes(target_data, t.address - 1, 1).is_some_and(|b| b == [0x90]);
    let pad_before_o = obj.before.last() == Some(&0x90);
    let hint_of = |tb: &[u8], ob: &[u8]| -> String {
        if tb.starts_with(&endbr) != ob.starts_with(&endbr) {
            return format!(
                "-fcf-protection (the target's function {} endbr64)",
                if tb.starts_with(&endbr) {
                    "starts with"
                } else {
                    "has no"
                }
            );
        }
        if pad_before_t != pad_before_o {
            return "-fpatchable-function-entry (NOP padding before the entries differs)".into();
        }
        if tb.len() != ob.len() {
            return "-O level (or another code generation flag: -fPIC, \
                    -fno-semantic-interposition, -fstack-protector...)"
                .into();
        }
        "-fPIC or the -O level (or another code generation flag)".into()
    };
    if tb.len() != ob.len() {
        return Err(format!(
            "'{}' is {} bytes in the target and {} bytes here: flag probably missing or different: {}",
            obj.name,
            tb.len(),
            ob.len(),
            hint_of(&tb, &ob)
        ));
    }
    for r in &obj.relocs {
        let from = r.offset as usize;
        let back = if matches!(
            r.r_type,
            rtype::GOTPCRELX | rtype::REX_GOTPCRELX | rtype::GOTPCREL
        ) {
            3
        } else {
            0
        };
        let lo = from.saturating_sub(back);
        let hi = (from + r.size as usize).min(tb.len());
        if lo < hi {
            tb[lo..hi].fill(0);
            ob[lo..hi].fill(0);
        }
    }
    for at in [0usize, 4] {
        if tb.get(at..at + 2) == Some(&[0x66, 0x90]) && ob.get(at..at + 2) == Some(&[0x90, 0x90]) {
            tb[at..at + 2].fill(0);
            ob[at..at + 2].fill(0);
        }
    }
    let hint = hint_of(&tb, &ob);
    if tb != ob {
        return Err(format!(
            "'{}' has other bytes in the target: flag probably missing or different: {}",
            obj.name, hint
        ));
    }
    Ok(())
}

/// Compares one file's objects and checks them against the target (see
/// the module comment). `Err` is a refusal naming the symbol.
pub fn analyse(
    path: &str,
    basename: &str,
    before: &ObjectInfo,
    after: &ObjectInfo,
    patched: &Patched,
    tsyms: &[LinkedSymbol],
    target_data: &[u8],
) -> Result<FileAnalysis, String> {
    let mut out = FileAnalysis {
        path: path.to_string(),
        ..FileAnalysis::default()
    };
    if after.has_constructors {
        return Err(format!(
            "'{path}' has constructors or destructors: the container would run them again \
             when it is loaded: not supported"
        ));
    }
    // Data.
    // Mutable data only: changed read-only data (tables, switch tables)
    // goes into the container with the functions that use it, which differ
    // through their relocations' contents.
    for b in before.variables.iter().filter(|v| v.mutable) {
        let mut all = counterparts(before, b, after);
        if all.is_empty() {
            all = (0..after.variables.len())
                .filter(|&i| after.variables[i].key() == b.key())
                .collect();
        }
        // Of several static locals of that name, the first that is the same.
        let Some(a) = all
            .iter()
            .map(|&i| &after.variables[i])
            .find(|a| a.size == b.size && a.masked() == b.masked() && same_relocs(a, b))
            .or_else(|| all.first().map(|&i| &after.variables[i]))
        else {
            continue;
        };
        if a.size != b.size {
            return Err(format!(
                "variable '{}' of '{path}': its size changes from {} to {} bytes: a live \
                 patch cannot change existing data (add a new variable instead)",
                b.name, b.size, a.size
            ));
        }
        if a.masked() != b.masked() || !same_relocs(a, b) {
            return Err(format!(
                "variable '{}' of '{path}': its initial value changes: a live patch cannot \
                 change the value of existing data (running processes keep theirs)",
                b.name
            ));
        }
    }
    // Functions.
    let lines = patched.line_map();
    let mut changed: BTreeMap<String, Option<String>> = BTreeMap::new();
    for f in &after.functions {
        match before.function(&f.key()) {
            None => {
                if !f.is_clone() {
                    out.added.push(f.name.clone());
                }
            }
            Some(b) => match change(b, f, &lines) {
                Change::Same => {}
                Change::LineNumbers => out.line_only.push(f.name.clone()),
                Change::Code => {
                    changed.insert(f.name.clone(), None);
                }
            },
        }
    }
    for b in &before.functions {
        if !b.is_clone() && after.function(&b.key()).is_none() {
            return Err(format!(
                "function '{}' of '{path}' is gone from the patched object: removing a \
                 function is not supported (if the compiler now inlines it everywhere, mark \
                 it __attribute__((noinline)))",
                b.name
            ));
        }
    }
    // Clones and cold parts change their parents and callers.
    loop {
        let mut more = Vec::new();
        for c in changed.keys().filter(|c| c.contains('.')) {
            let Some(ci) = after.functions.iter().find(|f| &f.name == c) else {
                continue;
            };
            if let Some(parent) = c.split(".cold").next().filter(|_| c.contains(".cold")) {
                if !changed.contains_key(parent) && after.functions.iter().any(|f| f.name == parent)
                {
                    more.push((parent.to_string(), format!("its cold part '{c}' changed")));
                }
                continue;
            }
            for f in &after.functions {
                if f.name != *c
                    && !changed.contains_key(&f.name)
                    && f.relocs.iter().any(|r| names_function(&r.key, ci))
                {
                    more.push((
                        f.name.clone(),
                        format!("calls '{c}', a changed compiler-made clone"),
                    ));
                }
            }
        }
        if more.is_empty() {
            break;
        }
        for (n, why) in more {
            changed.entry(n).or_insert(Some(why));
        }
    }
    // The replaced functions, found in the target.
    for (name, why) in &changed {
        if name.contains('.') {
            continue;
        }
        let f = after
            .functions
            .iter()
            .find(|f| &f.name == name)
            .expect("a function of the object");
        let t = target_symbol(tsyms, name, f.global, basename, true)
            .map_err(|e| format!("function '{name}' of '{path}': {e}"))?;
        let Some(t) = t else {
            return Err(format!(
                "function '{name}' of '{path}' changes but has no symbol in the target: the \
                 target's build inlined it into its callers; rebuild the target with \
                 __attribute__((noinline)) on it (or -fno-inline)"
            ));
        };
        if !f.global {
            let first = tsyms.iter().find(|s| &s.name == name);
            if first.is_some_and(|s| s.global || s.file.as_deref() != Some(basename)) {
                return Err(format!(
                    "static function '{name}' of '{path}': the target has another symbol \
                     '{name}' before it, and a .dsc names the target's function by name only: \
                     not supported yet"
                ));
            }
        }
        let touched = extent(&patched.text, name)
            .is_some_and(|(s, e)| (s..=e + 1).any(|l| patched.touched(l)));
        let reason = match (touched, why) {
            (true, _) => "changed code".to_string(),
            (false, Some(w)) => w.clone(),
            (false, None) => "inlines a changed function".to_string(),
        };
        out.replaced.push(Replaced {
            name: name.clone(),
            new_name: format!("__ulp_new_{name}"),
            file: path.to_string(),
            reason,
            target_address: t.address,
        });
    }
    // The unchanged functions must be the target's.
    let mut compared = 0;
    for f in &after.functions {
        if compared == 2 {
            break;
        }
        if f.is_clone() || f.size < 4 || changed.contains_key(&f.name) {
            continue;
        }
        let Some(b) = before.function(&f.key()) else {
            continue;
        };
        if change(b, f, &BTreeMap::new()) != Change::Same
            || b.relocs.iter().any(|r| rtype::is_tls(r.r_type))
        {
            continue;
        }
        let Ok(Some(t)) = target_symbol(tsyms, &b.name, b.global, basename, true) else {
            continue;
        };
        compared += 1;
        matches_target(b, t, target_data).map_err(|why| {
            format!(
                "the object compiled from '{path}' does not match the target: {why}; \
                 check the compilation database's flags for it"
            )
        })?;
    }
    // What the container runs: the replaced functions, the local functions
    // they reach, and the data they reach (through the data too: a table of
    // pointers to variables). Global functions are reached through the
    // PLT: the target's.
    // Variables by the relocation's own target (symbol or section) name:
    // within one object it is exact (`count.1` is not `count.0`).
    let item_of = |key: &str, target: &str| -> Vec<(bool, usize)> {
        let mut found = Vec::new();
        for (i, g) in after.functions.iter().enumerate() {
            if !g.global && names_function(key, g) {
                found.push((true, i));
            }
        }
        for (i, v) in after.variables.iter().enumerate() {
            if target == v.name || target == v.section {
                found.push((false, i));
            }
        }
        found
    };
    let mut seen: BTreeSet<(bool, usize)> = BTreeSet::new();
    let mut todo: Vec<((bool, usize), String)> = Vec::new();
    for (i, f) in after.functions.iter().enumerate() {
        if changed.contains_key(&f.name) && seen.insert((true, i)) {
            todo.push(((true, i), f.name.clone()));
        }
    }
    let mut reached_vars: Vec<(usize, String)> = Vec::new();
    while let Some(((is_fn, i), via)) = todo.pop() {
        let item = if is_fn {
            &after.functions[i]
        } else {
            reached_vars.push((i, via.clone()));
            &after.variables[i]
        };
        let via = if is_fn { item.name.clone() } else { via };
        for r in &item.relocs {
            for next in item_of(&r.key, &r.target) {
                if seen.insert(next) {
                    todo.push((next, via.clone()));
                }
            }
        }
    }
    reached_vars.sort();
    for (i, n) in &reached_vars {
        let v = &after.variables[*i];
        let existed = before.variable(&v.key()).is_some();
        if !v.mutable || !existed {
            continue;
        }
        let local = if normalize(&v.name) != v.name {
            Some(static_local(
                path, basename, before, after, v, n, patched, tsyms,
            )?)
        } else {
            None
        };
        let (tname, global) = match &local {
            Some((t, _)) => (t.clone(), false),
            None => (v.name.clone(), v.global),
        };
        match target_symbol(tsyms, &tname, global, basename, false)
            .map_err(|e| format!("variable '{}' of '{path}': {e}", v.name))?
        {
            Some(t) => {
                if t.tls != v.tls {
                    return Err(format!(
                        "variable '{}' of '{path}' is {}thread-local here and {}in the target",
                        v.name,
                        if v.tls { "" } else { "not " },
                        if t.tls { "" } else { "not " }
                    ));
                }
                if !out.references.iter().any(|x| x.name == tname) {
                    out.references.push(RefVar {
                        name: tname,
                        global,
                        target_address: t.address,
                        tls: v.tls,
                        local: local.map(|(_, l)| l),
                    });
                }
            }
            None => {
                return Err(format!(
                    "variable '{}' of '{path}' (used by '{n}') has no symbol in the target: \
                     the container would get a copy of it, which splits the program's state",
                    v.name
                ))
            }
        }
    }
    Ok(out)
}

/// The target's symbol of static local variable `v` of the after object
/// (`count.2`), and its name and function in the source. The after
/// object's variable is matched with the before object's (of the same
/// name, or, several having it, the one the same functions use), the
/// before object's with the target's symbol of the same name in this
/// file (the same compiler numbering: checked on the whole set of that
/// name), and the function with the one of the patched text whose body
/// declares `static ... NAME` (of several, the one among its users).
#[allow(clippy::too_many_arguments)]
fn static_local(
    path: &str,
    basename: &str,
    before: &ObjectInfo,
    after: &ObjectInfo,
    v: &Item,
    used_by: &str,
    patched: &Patched,
    tsyms: &[LinkedSymbol],
) -> Result<(String, LocalRef), String> {
    let base = v.name.split('.').next().unwrap_or(&v.name).to_string();
    let key = v.key();
    let named = |list: &[usize], obj: &ObjectInfo| -> String {
        let mut names: Vec<String> = list
            .iter()
            .map(|&i| {
                let u: Vec<String> = users(obj, &obj.variables[i]).into_iter().collect();
                format!("'{}' (used by {})", obj.variables[i].name, u.join(", "))
            })
            .collect();
        names.sort();
        names.join(" and ")
    };
    let b = match counterparts(after, v, before).as_slice() {
        [one] => &before.variables[*one],
        [] => {
            let all: Vec<usize> = (0..before.variables.len())
                .filter(|&i| before.variables[i].key() == key)
                .collect();
            return Err(format!(
                "static local variable '{base}' of '{path}' (used by '{used_by}'): the \
                 original file has {} of that name ({}) and which one the patched code's is \
                 cannot be told (no other is used by the same functions); rename it",
                all.len(),
                named(&all, before)
            ));
        }
        many => {
            return Err(format!(
                "static local variable '{base}' of '{path}' (used by '{used_by}'): the file \
                 has several of that name ({}) and which one the patched code's is cannot be \
                 told; rename one",
                named(many, before)
            ))
        }
    };
    let mut ours: Vec<&str> = before
        .variables
        .iter()
        .filter(|x| x.key() == key)
        .map(|x| x.name.as_str())
        .collect();
    let mut theirs: Vec<&str> = tsyms
        .iter()
        .filter(|s| !s.global && !s.function && s.file.as_deref() == Some(basename))
        .filter(|s| normalize(&s.name) == key)
        .map(|s| s.name.as_str())
        .collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    if ours != theirs {
        return Err(format!(
            "static local variable '{base}' of '{path}' (used by '{used_by}'): the target's \
             symbols for it ({}) are not this compile's ({}), so which one is which cannot \
             be told",
            theirs.join(", "),
            ours.join(", ")
        ));
    }
    let decls = crate::source::static_locals(&patched.text, &base);
    let mut owners: Vec<&str> = decls.iter().map(|d| d.owner.as_str()).collect();
    owners.dedup();
    let owner = match owners.as_slice() {
        [one] => one.to_string(),
        [] => {
            return Err(format!(
                "static local variable '{base}' of '{path}' (used by '{used_by}'): no function \
                 of the patched file declares it where ulp build looks (`static ... {base}` in \
                 a body whose definition starts at column 0)"
            ))
        }
        many => {
            let users = users(after, v);
            let hit: Vec<&&str> = many.iter().filter(|o| users.contains(**o)).collect();
            match hit.as_slice() {
                [one] => one.to_string(),
                _ => {
                    return Err(format!(
                        "static local variable '{base}' of '{path}' (used by '{used_by}'): \
                         {} declare one of that name and which one is meant cannot be told; \
                         rename one",
                        many.join(" and ")
                    ))
                }
            }
        }
    };
    let mine: Vec<&crate::source::LocalDecl> = decls.iter().filter(|d| d.owner == owner).collect();
    match mine.as_slice() {
        [d] if !d.several => {}
        [_] => {
            return Err(format!(
                "static local variable '{base}' of '{owner}' in '{path}': its declaration \
                 declares several names; declare '{base}' on its own to make it a reference"
            ))
        }
        _ => {
            return Err(format!(
                "static local variable '{base}' of '{path}': '{owner}' declares {} of that \
                 name and which one is meant cannot be told; rename one",
                mine.len()
            ))
        }
    }
    Ok((b.name.clone(), LocalRef { base, owner }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles C `text` as `ulp build` does; returns the object.
    fn compile(text: &str, tag: &str) -> ObjectInfo {
        let dir = std::env::temp_dir().join(format!("ulp-build-cmp-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.c"), text).unwrap();
        let ok = std::process::Command::new("gcc")
            .args([
                "-O2",
                "-fPIC",
                "-ffunction-sections",
                "-fdata-sections",
                "-c",
                "t.c",
            ])
            .current_dir(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let o = crate::objfile::read_object(&std::fs::read(dir.join("t.o")).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        o
    }

    fn change_of(before: &str, after: &str, name: &str, lines: &BTreeMap<usize, usize>) -> Change {
        let (b, a) = (compile(before, "b"), compile(after, "a"));
        change(b.function(name).unwrap(), a.function(name).unwrap(), lines)
    }

    #[test]
    fn tables_strings_and_line_numbers() {
        let sw = |v: u32| {
            format!(
                "int f(int x) {{ switch (x) {{ case 0: return 11; case 1: return 22; \
                 case 2: return {v}; case 3: return 41; case 4: return 59; case 5: return 6; \
                 case 6: return 99; }} return 0; }}\n"
            )
        };
        let none = BTreeMap::new();
        // A switch table (CSWTCH) in read-only data: the code is the same.
        assert_eq!(change_of(&sw(37), &sw(37), "f", &none), Change::Same);
        assert_eq!(change_of(&sw(37), &sw(38), "f", &none), Change::Code);
        // Strings compare by contents, not by their offsets.
        let strs = |first: &str| {
            format!(
                "int puts(const char *);\nvoid a(void) {{ puts(\"{first}\"); }}\n\
                 void b(void) {{ puts(\"unchanged\"); }}\n"
            )
        };
        assert_eq!(
            change_of(&strs("one"), &strs("a longer one"), "b", &none),
            Change::Same
        );
        assert_eq!(
            change_of(&strs("one"), &strs("a longer one"), "a", &none),
            Change::Code
        );
        // __LINE__ moved by a line added above: line numbers only.
        let lined = |blank: &str| {
            format!("void report(int);\n{blank}void g(void) {{\n  report(__LINE__);\n}}\n")
        };
        let moved: BTreeMap<usize, usize> = [(1, 1), (2, 3), (3, 4), (4, 5)].into_iter().collect();
        assert_eq!(
            change_of(&lined(""), &lined("\n"), "g", &moved),
            Change::LineNumbers
        );
        // Without the line map it is a change of code.
        assert_eq!(
            change_of(&lined(""), &lined("\n"), "g", &none),
            Change::Code
        );
    }

    #[test]
    fn finds_a_definition() {
        let text = "int f(int);\nstatic int\nhelper (int x)\n{\n  if (x) { return \"}\"[0]; }\n  return 0;\n}\nint f(int y) { return helper(y); }\n";
        assert_eq!(extent(text, "helper"), Some((3, 7)));
        assert_eq!(extent(text, "f"), Some((8, 8)));
        assert_eq!(extent(text, "nope"), None);
    }
}

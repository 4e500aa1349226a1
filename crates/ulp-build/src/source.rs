//! Small edits of C source text for the container's compile.

/// Blanks (with spaces, newlines kept, so line numbers stay) the
/// initializer of every file-scope declarator `name = ...` in `text`: the
/// container's copy of a variable turned into a reference pointer
/// (`-Dname=(*__ulp_ref_name)`) must not keep the variable's initializer,
/// which would not fit a pointer (`{ .a = 1 }`). Comments, strings,
/// character constants and preprocessor lines are skipped; file scope is
/// outside every brace and parenthesis.
pub fn blank_initializer(text: &str, name: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    // Backwards, so that earlier positions stay valid.
    for (_, _, at, next) in declarators(&b, Some(name)).into_iter().rev() {
        if next == b'=' {
            let end = initializer_end(&b, at + 1);
            for x in &mut b[at..end] {
                if *x != b'\n' {
                    *x = b' ';
                }
            }
        }
    }
    String::from_utf8(b).unwrap_or_else(|_| text.to_string())
}

/// Whether `text` declares `name` at file scope (`T name;`, `T name = ...`,
/// `T name[N], ...`; `extern` declarations too).
pub fn declares(text: &str, name: &str) -> bool {
    declarators(text.as_bytes(), Some(name))
        .iter()
        .any(|&(_, _, _, next)| matches!(next, b'=' | b';' | b','))
}

/// Every name `text` declares at file scope (see [`declares`]), in one
/// pass, but those declared as arrays of unknown size (`T name[] = {...}`:
/// a pointer to such an array has no `sizeof`).
pub fn declared_names(text: &str) -> std::collections::HashSet<String> {
    let all = declarators(text.as_bytes(), None);
    let unsized_: std::collections::HashSet<&str> = all
        .iter()
        .filter(|&&(_, end, after, _)| {
            text[end..after]
                .split_whitespace()
                .collect::<String>()
                .contains("[]")
        })
        .map(|&(start, end, _, _)| &text[start..end])
        .collect();
    all.iter()
        .filter(|&&(_, _, _, next)| matches!(next, b'=' | b';' | b','))
        .map(|&(start, end, _, _)| &text[start..end])
        .filter(|name| !unsized_.contains(name))
        .map(str::to_string)
        .collect()
}

/// The file-scope occurrences of identifier `name` (of every identifier
/// with `None`): for each, where it starts and ends, where what follows it
/// and any array brackets starts, and that byte.
fn declarators(b: &[u8], name: Option<&str>) -> Vec<(usize, usize, usize, u8)> {
    let n = b.len();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth = 0i32;
    let mut line_start = true;
    while i < n {
        let c = b[i];
        if let Some(end) = skip_non_code(b, i, line_start) {
            line_start = b[end - 1] == b'\n';
            i = end;
            continue;
        }
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if !c.is_ascii_whitespace() {
            line_start = false;
        }
        match c {
            b'{' | b'(' | b'[' => depth += 1,
            b'}' | b')' | b']' => depth -= 1,
            _ => {}
        }
        if ident(c) {
            let start = i;
            while i < n && ident(b[i]) {
                i += 1;
            }
            if depth == 0 && name.is_none_or(|name| &b[start..i] == name.as_bytes()) {
                let mut j = i;
                loop {
                    while j < n && b[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if j < n && b[j] == b'[' {
                        while j < n && b[j] != b']' {
                            j += 1;
                        }
                        j += 1;
                        continue;
                    }
                    break;
                }
                if j < n && !(b[j] == b'=' && b.get(j + 1) == Some(&b'=')) {
                    out.push((start, i, j, b[j]));
                }
            }
            continue;
        }
        i += 1;
    }
    out
}

/// When a comment, string, character constant or preprocessor line starts
/// at `i`: the index just after it.
fn skip_non_code(b: &[u8], i: usize, line_start: bool) -> Option<usize> {
    let n = b.len();
    match b[i] {
        b'/' if b.get(i + 1) == Some(&b'/') => {
            let mut j = i;
            while j < n && b[j] != b'\n' {
                j += 1;
            }
            Some(j)
        }
        b'/' if b.get(i + 1) == Some(&b'*') => {
            let mut j = i + 2;
            while j + 1 < n && !(b[j] == b'*' && b[j + 1] == b'/') {
                j += 1;
            }
            Some((j + 2).min(n))
        }
        q @ (b'"' | b'\'') => {
            let mut j = i + 1;
            while j < n && b[j] != q && b[j] != b'\n' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            Some((j + 1).min(n))
        }
        b'#' if line_start => {
            let mut j = i;
            while j < n && !(b[j] == b'\n' && b[j - 1] != b'\\') {
                j += 1;
            }
            Some((j + 1).min(n))
        }
        _ => None,
    }
}

/// The index of the `,` or `;` that ends an initializer starting at `i`.
fn initializer_end(b: &[u8], mut i: usize) -> usize {
    let n = b.len();
    let mut depth = 0i32;
    while i < n {
        if let Some(end) = skip_non_code(b, i, false) {
            i = end;
            continue;
        }
        match b[i] {
            b'{' | b'(' | b'[' => depth += 1,
            b'}' | b')' | b']' => depth -= 1,
            b',' | b';' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::blank_initializer;

    #[test]
    fn blanks_only_file_scope_initializers() {
        let text = "#define X v = 1\nstatic struct s v = { .a = 1,\n  .b = \"}\" };\nint f(int v) { int w = v; v = 2; return w; }\nstatic int a = 1, v2 = 3, *p;\n";
        let out = blank_initializer(text, "v");
        assert_eq!(
            out,
            "#define X v = 1\nstatic struct s v            \n            ;\nint f(int v) { int w = v; v = 2; return w; }\nstatic int a = 1, v2 = 3, *p;\n"
        );
        assert_eq!(out.len(), text.len());
        let out = blank_initializer("static int tab[4] = {1, 2}, n = 2;\n", "tab");
        assert_eq!(out, "static int tab[4]         , n = 2;\n");
        assert!(super::declares(
            "extern int g;\nint f(int g) { return g; }",
            "g"
        ));
        assert!(super::declares("static long a, g[2];", "g"));
        assert!(!super::declares(
            "int f(int g) { int g2 = g; return g2; }",
            "g"
        ));
        assert!(!super::declares("struct s { int g; };", "g"));
        let mut names: Vec<String> = super::declared_names(
            "static int a[2] = {1}, b;\nextern long c;\nint f(int d);\nint u[ ] = {1};\n",
        )
        .into_iter()
        .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
    }
}

/// The names of the functions `text` defines, in one pass over its lines:
/// a line starting at column 0 (not a preprocessor line, comment or brace)
/// with `name (`, whose parameter list's `)` is followed by `{` (attribute
/// groups in between skipped). Line-based rather than brace-counting, so
/// braces left unbalanced by `#if`/`#else` branches do not matter.
pub fn defined_functions(text: &str) -> std::collections::HashSet<String> {
    let b = text.as_bytes();
    let n = b.len();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = std::collections::HashSet::new();
    let mut at = 0;
    while at < n {
        let line_end = text[at..].find('\n').map_or(n, |p| at + p);
        let first = b[at];
        if !(first.is_ascii_whitespace() || matches!(first, b'#' | b'/' | b'*' | b'{' | b'}')) {
            if let Some(name) = defined_on_line(b, at, line_end, ident) {
                out.insert(name);
            }
        }
        at = line_end + 1;
    }
    out
}

/// See [`defined_functions`]: the function a line starting at `at` defines.
fn defined_on_line(
    b: &[u8],
    at: usize,
    line_end: usize,
    ident: impl Fn(u8) -> bool,
) -> Option<String> {
    let n = b.len();
    let mut i = at;
    while i < line_end {
        if !ident(b[i]) {
            if matches!(b[i], b';' | b'=' | b'{' | b'"' | b'\'') {
                return None;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < n && ident(b[i]) {
            i += 1;
        }
        let word = std::str::from_utf8(&b[start..i]).ok()?;
        let mut j = i;
        while j < n && (b[j] == b' ' || b[j] == b'\t' || b[j] == b'\n') {
            j += 1;
        }
        if j >= n || b[j] != b'(' {
            continue;
        }
        let close = matching_paren(b, j)?;
        if word.starts_with("__attribute") || word == "__declspec" {
            i = close + 1;
            continue;
        }
        // After the parameters: attribute groups, then `{`.
        let mut k = close + 1;
        loop {
            while k < n && b[k].is_ascii_whitespace() {
                k += 1;
            }
            if b[k..].starts_with(b"__attribute__") {
                let mut p = k + "__attribute__".len();
                while p < n && b[p].is_ascii_whitespace() {
                    p += 1;
                }
                if p < n && b[p] == b'(' {
                    k = matching_paren(b, p)? + 1;
                    continue;
                }
            }
            break;
        }
        return (k < n && b[k] == b'{').then(|| word.to_string());
    }
    None
}

/// The index of the `)` matching the `(` at `open`, skipping comments,
/// strings and character constants.
fn matching_paren(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = open;
    while i < b.len() {
        if let Some(end) = skip_non_code(b, i, false) {
            i = end;
            continue;
        }
        match b[i] {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b';' | b'{' | b'}' => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod defined_tests {
    #[test]
    fn finds_function_definitions_once() {
        let text = "static int f(int);\nint g(void) { return f(1); }\n\
                    static __attribute__((noinline)) int\nscale (int x)\n{\n  return x;\n}\n\
                    struct s { int (*p)(void); };\nstatic int (*fp)(int) = 0;\n\
                    int h(a) int a; { return a; }\n#define M(x) { x }\n";
        let d = super::defined_functions(text);
        let mut v: Vec<&String> = d.iter().collect();
        v.sort();
        assert_eq!(v, ["g", "scale"]);
    }
}

/// The identifiers whose address `text` takes (`&name`, outside comments
/// and strings): such a variable in a constant initializer cannot become a
/// reference pointer (`&(*p)` is not constant).
pub fn address_taken(text: &str) -> std::collections::HashSet<String> {
    let b = text.as_bytes();
    let n = b.len();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = std::collections::HashSet::new();
    let mut i = 0;
    let mut line_start = true;
    while i < n {
        if let Some(end) = skip_non_code(b, i, line_start) {
            line_start = b[end - 1] == b'\n';
            i = end;
            continue;
        }
        line_start = b[i] == b'\n';
        if b[i] == b'&' && b.get(i + 1) != Some(&b'&') && (i == 0 || b[i - 1] != b'&') {
            let mut j = i + 1;
            while j < n && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            let start = j;
            while j < n && ident(b[j]) {
                j += 1;
            }
            if j > start {
                out.insert(text[start..j].to_string());
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod address_tests {
    #[test]
    fn finds_taken_addresses() {
        let t = super::address_taken(
            "static int *p = &a;\nint f(int x) { return x && b & c ? g(& d) : 0; } /* &e */\n",
        );
        let mut v: Vec<String> = t.into_iter().collect();
        v.sort();
        assert_eq!(v, ["a", "c", "d"]);
        let m = super::macro_names("#define A 1\n  #  define B(x) x\n#defineC\n#undef D\n");
        let mut v: Vec<String> = m.into_iter().collect();
        v.sort();
        assert_eq!(v, ["A", "B"]);
    }
}

/// The names `text` defines as macros (`#define NAME`).
pub fn macro_names(text: &str) -> std::collections::HashSet<String> {
    text.lines()
        .filter_map(|l| define_name(l).map(|(name, _)| name.to_string()))
        .collect()
}

/// `#define NAME...`: NAME and what follows it on the line (`(` first for
/// a function-like macro).
fn define_name(line: &str) -> Option<(&str, &str)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("define")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let rest = rest.trim_start();
    let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
    (end > 0).then(|| (&rest[..end], &rest[end..]))
}

/// Whether `b[at..]` starts with the identifier `word` (a whole one).
pub(crate) fn word_at(b: &[u8], at: usize, word: &str) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    b[at..].starts_with(word.as_bytes())
        && (at == 0 || !ident(b[at - 1]))
        && b.get(at + word.len()).is_none_or(|&c| !ident(c))
}

/// The thread-local storage class keywords.
const TLS_WORDS: [&str; 3] = ["__thread", "_Thread_local", "thread_local"];

/// Blanks the thread-local keyword (`__thread`, `_Thread_local`,
/// `thread_local`) of every file-scope declaration of `name` (between the
/// `;`, `{` or `}` before the declarator and the declarator): the
/// container's copy of a thread-local variable turned into a reference
/// declares a function (`-Dname=(*__ulp_ref_name())`), which cannot be
/// thread-local.
pub fn blank_tls_keyword(text: &str, name: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    for (start, _, _, next) in declarators(&b, Some(name)) {
        if !matches!(next, b'=' | b';' | b',') {
            continue;
        }
        let from = b[..start]
            .iter()
            .rposition(|&c| matches!(c, b';' | b'{' | b'}'))
            .map_or(0, |p| p + 1);
        for at in from..start {
            for w in TLS_WORDS {
                if word_at(&b, at, w) {
                    b[at..at + w.len()].fill(b' ');
                }
            }
        }
    }
    String::from_utf8(b).unwrap_or_else(|_| text.to_string())
}

/// The names defined as macros whose body mentions the name itself
/// (SQLite's `#define mem0 GLOBAL(struct Mem0Global, mem0)`): in the body
/// the name is the variable (a macro does not expand inside itself).
pub fn self_referring_macros(text: &str) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some((name, body)) = define_parts(l) {
            if mentions_word(body, name) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// `#define NAME BODY` (an object-like macro): NAME and BODY.
fn define_parts(line: &str) -> Option<(&str, &str)> {
    define_name(line).filter(|(_, body)| !body.starts_with('('))
}

fn mentions_word(text: &str, word: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices(word).any(|(at, _)| word_at(b, at, word))
}

/// Rewrites the body of every `#define name BODY` that mentions `name`
/// itself: there `name` is the variable, which in the container's copy is
/// `replacement` (`(*__ulp_ref_name)`); the define, which comes after the
/// command line's `-D`, would otherwise undo it. Line count kept.
pub fn rewrite_self_defines(text: &str, name: &str, replacement: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive('\n') {
        match define_parts(piece) {
            Some((n, body)) if n == name && mentions_word(body, name) => {
                let head = &piece[..piece.len() - body.len()];
                out.push_str(head);
                let bb = body.as_bytes();
                let mut i = 0;
                while i < body.len() {
                    if word_at(bb, i, name) {
                        out.push_str(replacement);
                        i += name.len();
                    } else {
                        let c = body[i..].chars().next().unwrap_or(' ');
                        out.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            _ => out.push_str(piece),
        }
    }
    out
}

/// A `static` declaration of a variable inside a function body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalDecl {
    /// The function whose body has it.
    pub owner: String,
    /// Where `static` starts, where the statement's `;` is, where its
    /// initializer's `=` is.
    pub start: usize,
    pub end: usize,
    pub eq: Option<usize>,
    /// The `}` closing the block that has the declaration.
    pub block_end: usize,
    /// The statement declares more than one name (`static int a, b;`).
    pub several: bool,
    pub tls: bool,
}

/// Every `static` declaration of a variable `name` inside the bodies of the
/// functions `text` defines (found as [`defined_functions`] does).
pub fn static_locals(text: &str, name: &str) -> Vec<LocalDecl> {
    let b = text.as_bytes();
    let n = b.len();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut at = 0;
    while at < n {
        let line_end = text[at..].find('\n').map_or(n, |p| at + p);
        let first = b[at];
        let mut next = line_end + 1;
        if !(first.is_ascii_whitespace() || matches!(first, b'#' | b'/' | b'*' | b'{' | b'}')) {
            if let Some((owner, open)) = defined_at(b, at, line_end, ident) {
                if let Some(close) = matching_code_brace(b, open) {
                    scan_body(b, open, close, name, &owner, &mut out);
                    next = close + 1;
                }
            }
        }
        at = next;
    }
    out
}

/// The `}` matching the `{` at `open`, skipping comments, strings,
/// character constants and preprocessor lines.
pub(crate) fn matching_code_brace(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = open;
    let mut line_start = false;
    while i < b.len() {
        if let Some(end) = skip_non_code(b, i, line_start) {
            line_start = b[end - 1] == b'\n';
            i = end;
            continue;
        }
        line_start = b[i] == b'\n' || (line_start && (b[i] == b' ' || b[i] == b'\t'));
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn scan_body(
    b: &[u8],
    open: usize,
    close: usize,
    name: &str,
    owner: &str,
    out: &mut Vec<LocalDecl>,
) {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut stack = vec![open];
    let mut i = open + 1;
    let mut line_start = false;
    while i < close {
        if let Some(end) = skip_non_code(b, i, line_start) {
            line_start = b[end - 1] == b'\n';
            i = end;
            continue;
        }
        line_start = b[i] == b'\n' || (line_start && (b[i] == b' ' || b[i] == b'\t'));
        match b[i] {
            b'{' => stack.push(i),
            b'}' => {
                stack.pop();
            }
            _ => {}
        }
        if !ident(b[i]) {
            i += 1;
            continue;
        }
        let s = i;
        while i < close && ident(b[i]) {
            i += 1;
        }
        if &b[s..i] != b"static" || (s > 0 && ident(b[s - 1])) {
            continue;
        }
        // The statement: to the `;` outside parentheses and braces.
        let mut j = i;
        let mut depth = 0i32;
        let mut eq = None;
        let mut several = false;
        let mut found = false;
        let mut tls = false;
        let mut bracket = 0i32;
        while j < close {
            if let Some(end) = skip_non_code(b, j, false) {
                j = end;
                continue;
            }
            match b[j] {
                b'(' | b'{' => depth += 1,
                b')' | b'}' => depth -= 1,
                b'[' => bracket += 1,
                b']' => bracket -= 1,
                b',' if depth == 0 && bracket == 0 => several = true,
                b'=' if depth == 0
                    && bracket == 0
                    && eq.is_none()
                    && b.get(j + 1) != Some(&b'=') =>
                {
                    eq = Some(j)
                }
                b';' if depth == 0 => break,
                _ => {}
            }
            if eq.is_none() && ident(b[j]) && !ident(b[j - 1]) {
                if bracket == 0 && word_at(b, j, name) {
                    let mut k = j + name.len();
                    while k < close && b[k].is_ascii_whitespace() {
                        k += 1;
                    }
                    // `static int f(int);` declares a function.
                    found |= b.get(k) != Some(&b'(');
                }
                tls |= TLS_WORDS.iter().any(|w| word_at(b, j, w));
            }
            j += 1;
        }
        if found {
            let top = *stack.last().unwrap_or(&open);
            out.push(LocalDecl {
                owner: owner.to_string(),
                start: s,
                end: j,
                eq,
                block_end: matching_code_brace(b, top).unwrap_or(close),
                several,
                tls,
            });
        }
        i = j.max(i);
    }
}

/// See [`defined_functions`]: the function a line starting at `at` defines
/// and the index of its body's `{`.
fn defined_at(
    b: &[u8],
    at: usize,
    line_end: usize,
    ident: impl Fn(u8) -> bool,
) -> Option<(String, usize)> {
    let name = defined_on_line(b, at, line_end, &ident)?;
    // The `{` after the name's parameter list.
    let mut i = at;
    while i < line_end {
        if word_at(b, i, &name) {
            let mut j = i + name.len();
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if b.get(j) == Some(&b'(') {
                let close = matching_paren(b, j)?;
                let mut k = close + 1;
                while k < b.len() && b[k] != b'{' {
                    if b[k] == b';' {
                        return None;
                    }
                    k += 1;
                }
                return (k < b.len()).then_some((name, k));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod local_tests {
    #[test]
    fn finds_static_locals_and_rewrites_defines() {
        let text = "static int n;\nint f(void)\n{\n  static int n = 3;\n  return ++n;\n}\n\
                    int g(int x)\n{\n  if (x) {\n    static __thread long n[2], m;\n    n[0]++;\n  }\n  return x;\n}\n\
                    int h(void) { static int count; return count; }\n";
        let d = super::static_locals(text, "n");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].owner, "f");
        assert_eq!(&text[d[0].start..d[0].end], "static int n = 3");
        assert_eq!(&text[d[0].eq.unwrap()..d[0].end], "= 3");
        assert!(!d[0].several && !d[0].tls);
        assert_eq!(d[1].owner, "g");
        assert!(d[1].several && d[1].tls);
        assert_eq!(&text[d[1].block_end..d[1].block_end + 5], "}\n  r");
        let c = super::static_locals(text, "count");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].owner, "h");
        assert_eq!(&text[c[0].block_end..], "}\n");
        let t = "static int mem0;\n#define mem0 GLOBAL(int, mem0)\n#define other mem0\n";
        let s = super::self_referring_macros(t);
        assert!(s.contains("mem0") && !s.contains("other"));
        assert_eq!(
            super::rewrite_self_defines(t, "mem0", "(*__ulp_ref_mem0)"),
            "static int mem0;\n#define mem0 GLOBAL(int, (*__ulp_ref_mem0))\n#define other mem0\n"
        );
        assert_eq!(
            super::blank_tls_keyword(
                "int a; static __thread int t = 1;\nint f(void) { return t; }\n",
                "t"
            ),
            "int a; static          int t = 1;\nint f(void) { return t; }\n"
        );
    }
}

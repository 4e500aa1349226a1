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
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix('#')?.trim_start();
            let rest = rest.strip_prefix("define")?;
            if !rest.starts_with([' ', '\t']) {
                return None;
            }
            let rest = rest.trim_start();
            let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
            (end > 0).then(|| rest[..end].to_string())
        })
        .collect()
}

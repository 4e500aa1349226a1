//! A small, strict unified-diff applier: the diffs `git diff` and `diff -u`
//! write (`a/` and `b/` prefixes are taken off). Every hunk must match the
//! file at the line its header names (after the earlier hunks of the same
//! file): no fuzz, no offset search. A hunk that does not match is refused
//! with the file and the hunk named.

use std::collections::BTreeMap;

/// One hunk: the old start line (1-based) and its lines.
#[derive(Clone, Debug)]
struct Hunk {
    old_start: usize,
    header: String,
    /// (' ' | '-' | '+', text without the newline)
    lines: Vec<(char, String)>,
}

/// The hunks of one file of one diff.
#[derive(Clone, Debug)]
pub struct FilePatch {
    /// The path relative to the source tree (the `+++` side).
    pub path: String,
    hunks: Vec<Hunk>,
}

/// A file after the diffs: its text and where each of its lines came from.
#[derive(Clone, Debug)]
pub struct Patched {
    pub original: String,
    pub text: String,
    /// For each line of `text` (0-based index), the 1-based line of the
    /// original it is, or `None` for an added line.
    pub origin: Vec<Option<usize>>,
    /// 1-based lines of `text` next to which original lines were removed.
    pub removed_at: Vec<usize>,
}

impl Patched {
    fn new(original: String) -> Patched {
        let n = split_lines(&original).0.len();
        Patched {
            text: original.clone(),
            original,
            origin: (1..=n).map(Some).collect(),
            removed_at: Vec::new(),
        }
    }

    /// Original line -> patched line, for the lines the diffs kept.
    pub fn line_map(&self) -> BTreeMap<usize, usize> {
        self.origin
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.map(|o| (o, i + 1)))
            .collect()
    }

    /// Whether patched line `line` (1-based) was added or borders a removal.
    pub fn touched(&self, line: usize) -> bool {
        matches!(self.origin.get(line.wrapping_sub(1)), Some(None))
            || self.removed_at.contains(&line)
    }
}

/// Lines without their `\n`, and whether the text ended with one.
fn split_lines(text: &str) -> (Vec<&str>, bool) {
    if text.is_empty() {
        return (Vec::new(), true);
    }
    let ends = text.ends_with('\n');
    let body = if ends { &text[..text.len() - 1] } else { text };
    (body.split('\n').collect(), ends)
}

fn strip_prefix_path(p: &str) -> String {
    let p = p.split('\t').next().unwrap_or(p).trim_end();
    let p = p
        .strip_prefix("a/")
        .or_else(|| p.strip_prefix("b/"))
        .unwrap_or(p);
    p.to_string()
}

/// Parses the hunk header `@@ -A[,B] +C[,D] @@`: (A, B, D).
fn hunk_header(line: &str) -> Option<(usize, usize, usize)> {
    let rest = line.strip_prefix("@@ -")?;
    let (old, rest) = rest.split_once(" +")?;
    let (new, _) = rest.split_once(" @@")?;
    let range = |s: &str| -> Option<(usize, usize)> {
        match s.split_once(',') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => Some((s.parse().ok()?, 1)),
        }
    };
    let (a, b) = range(old)?;
    let (_, d) = range(new)?;
    Some((a, b, d))
}

/// Parses a unified diff into its files. `name` is for messages.
pub fn parse(name: &str, text: &str) -> Result<Vec<FilePatch>, String> {
    let mut files: Vec<FilePatch> = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut i = 0;
    let mut old_path: Option<String> = None;
    while i < lines.len() {
        let line = lines[i].trim_end_matches('\r');
        if let Some(p) = line.strip_prefix("--- ") {
            old_path = Some(p.to_string());
            i += 1;
            continue;
        }
        if let Some(p) = line.strip_prefix("+++ ") {
            let old = old_path.take().unwrap_or_default();
            if old.starts_with("/dev/null") {
                return Err(format!(
                    "{name}: creates the file '{}': new source files are not supported yet \
                     (put new functions into an existing file)",
                    strip_prefix_path(p)
                ));
            }
            if p.starts_with("/dev/null") {
                return Err(format!(
                    "{name}: deletes the file '{}': not supported",
                    strip_prefix_path(&old)
                ));
            }
            files.push(FilePatch {
                path: strip_prefix_path(p),
                hunks: Vec::new(),
            });
            i += 1;
            continue;
        }
        if line.starts_with("@@ ") {
            let Some(file) = files.last_mut() else {
                return Err(format!(
                    "{name}:{}: a hunk before any `+++` file line",
                    i + 1
                ));
            };
            let (a, b, d) = hunk_header(line)
                .ok_or_else(|| format!("{name}:{}: malformed hunk header '{line}'", i + 1))?;
            let mut hunk = Hunk {
                old_start: a,
                header: line.to_string(),
                lines: Vec::new(),
            };
            let (mut old_left, mut new_left) = (b, d);
            i += 1;
            while old_left > 0 || new_left > 0 {
                let Some(l) = lines.get(i) else {
                    return Err(format!(
                        "{name}: hunk '{}' of '{}' ends early",
                        hunk.header, file.path
                    ));
                };
                let l = l.strip_suffix('\r').unwrap_or(l);
                i += 1;
                if l.starts_with('\\') {
                    continue;
                }
                let (kind, body) = match l.chars().next() {
                    Some(c @ (' ' | '-' | '+')) => (c, &l[1..]),
                    // An empty context line whose space an editor removed.
                    None => (' ', ""),
                    Some(_) => {
                        return Err(format!(
                            "{name}:{i}: unexpected line in hunk '{}' of '{}': '{l}'",
                            hunk.header, file.path
                        ))
                    }
                };
                match kind {
                    ' ' => {
                        old_left = old_left.saturating_sub(1);
                        new_left = new_left.saturating_sub(1);
                    }
                    '-' => old_left = old_left.saturating_sub(1),
                    _ => new_left = new_left.saturating_sub(1),
                }
                hunk.lines.push((kind, body.to_string()));
            }
            // A "\ No newline at end of file" after the last line.
            if lines.get(i).is_some_and(|l| l.starts_with("\\ No newline")) {
                i += 1;
            }
            file.hunks.push(hunk);
            continue;
        }
        i += 1;
    }
    if files.iter().all(|f| f.hunks.is_empty()) {
        return Err(format!("{name}: no hunks: not a unified diff"));
    }
    Ok(files)
}

/// Applies one file's hunks to `file`, strictly.
pub fn apply(name: &str, patch: &FilePatch, file: &mut Patched) -> Result<(), String> {
    let (cur, ends_nl) = split_lines(&file.text);
    let mut cur: Vec<String> = cur.into_iter().map(str::to_string).collect();
    let mut origin = std::mem::take(&mut file.origin);
    let mut delta: isize = 0;
    let mut removed_new: Vec<usize> = Vec::new();
    for (n, h) in patch.hunks.iter().enumerate() {
        let old: Vec<&String> = h
            .lines
            .iter()
            .filter(|(k, _)| *k != '+')
            .map(|(_, t)| t)
            .collect();
        // `-A,0` means "after line A".
        let start_old = if old.is_empty() {
            h.old_start
        } else {
            h.old_start.saturating_sub(1)
        };
        let at = start_old as isize + delta;
        let bad = |why: &str| {
            format!(
                "{name}: hunk {} ('{}') of '{}' does not apply: {why}",
                n + 1,
                h.header,
                patch.path
            )
        };
        if at < 0 || at as usize + old.len() > cur.len() {
            return Err(bad("the file is shorter"));
        }
        let at = at as usize;
        for (k, o) in old.iter().enumerate() {
            if cur[at + k] != **o {
                return Err(bad(&format!(
                    "line {} is '{}', the diff expects '{}'",
                    at + k + 1,
                    cur[at + k],
                    o
                )));
            }
        }
        let mut new_lines = Vec::new();
        let mut new_origin = Vec::new();
        let mut k = 0;
        for (kind, text) in &h.lines {
            match kind {
                ' ' => {
                    new_lines.push(text.clone());
                    new_origin.push(origin[at + k]);
                    k += 1;
                }
                '-' => {
                    removed_new.push(at + new_lines.len() + 1);
                    k += 1;
                }
                _ => {
                    new_lines.push(text.clone());
                    new_origin.push(None);
                }
            }
        }
        delta += new_lines.len() as isize - old.len() as isize;
        cur.splice(at..at + old.len(), new_lines);
        origin.splice(at..at + old.len(), new_origin);
    }
    let mut text = cur.join("\n");
    if ends_nl && !cur.is_empty() {
        text.push('\n');
    }
    file.text = text;
    file.origin = origin;
    file.removed_at.extend(removed_new);
    Ok(())
}

/// Applies `diffs` (name, text) in order to files read by `read`
/// (a path relative to the source tree). Returns the patched files by path.
pub fn apply_all(
    diffs: &[(String, String)],
    mut read: impl FnMut(&str) -> Result<String, String>,
) -> Result<BTreeMap<String, Patched>, String> {
    let mut out: BTreeMap<String, Patched> = BTreeMap::new();
    for (name, text) in diffs {
        for fp in parse(name, text)? {
            if !out.contains_key(&fp.path) {
                let original = read(&fp.path)?;
                out.insert(fp.path.clone(), Patched::new(original));
            }
            let f = out.get_mut(&fp.path).expect("inserted above");
            apply(name, &fp, f)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIG: &str = "a\nb\nc\nd\ne\nf\ng\n";

    fn run(diff: &str) -> Result<Patched, String> {
        let m = apply_all(&[("fix.patch".into(), diff.into())], |_| Ok(ORIG.into()))?;
        Ok(m.into_values().next().unwrap())
    }

    #[test]
    fn applies_and_maps_lines() {
        let d = "diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -2,3 +2,4 @@\n b\n-c\n+C\n+C2\n d\n@@ -6,1 +7,1 @@\n-f\n+F\n";
        let p = run(d).unwrap();
        assert_eq!(p.text, "a\nb\nC\nC2\nd\ne\nF\ng\n");
        let m = p.line_map();
        assert_eq!(m.get(&1), Some(&1));
        assert_eq!(m.get(&3), None);
        assert_eq!(m.get(&4), Some(&5));
        assert_eq!(m.get(&7), Some(&8));
        assert!(p.touched(3) && p.touched(4) && p.touched(7) && !p.touched(5));
    }

    #[test]
    fn refuses_a_hunk_that_does_not_match() {
        let d = "--- a/x.c\n+++ b/x.c\n@@ -2,2 +2,2 @@\n b\n-x\n+y\n";
        let e = run(d).unwrap_err();
        assert!(
            e.contains("hunk 1") && e.contains("'x.c'") && e.contains("line 3"),
            "{e}"
        );
        let e = run("--- a/x.c\n+++ b/x.c\n@@ -9,1 +9,1 @@\n-z\n+y\n").unwrap_err();
        assert!(e.contains("shorter"), "{e}");
        assert!(run("hello\n").unwrap_err().contains("no hunks"));
        let e = run("--- /dev/null\n+++ b/new.c\n@@ -0,0 +1 @@\n+x\n").unwrap_err();
        assert!(e.contains("new source files"), "{e}");
    }

    #[test]
    fn insertion_after_a_line_and_several_diffs() {
        let d1 = "--- a/x.c\n+++ b/x.c\n@@ -1,0 +2 @@\n+new\n";
        let d2 = "--- a/x.c\n+++ b/x.c\n@@ -7,2 +7,1 @@\n-f\n g\n";
        let m = apply_all(&[("1".into(), d1.into()), ("2".into(), d2.into())], |_| {
            Ok(ORIG.into())
        })
        .unwrap();
        let p = &m["x.c"];
        assert_eq!(p.text, "a\nnew\nb\nc\nd\ne\ng\n");
        assert_eq!(p.line_map().get(&7), Some(&7));
    }
}

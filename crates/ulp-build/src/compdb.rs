//! The JSON compilation database (`compile_commands.json`): entries with
//! `directory`, `file` and `arguments` (a list) or `command` (a shell
//! string). A relative `directory` is relative to the database's own
//! directory, a relative `file` to the entry's directory.

use std::path::{Component, Path, PathBuf};

/// One entry, resolved.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where the compiler runs (absolute).
    pub directory: PathBuf,
    /// The source file (absolute, lexically normalised).
    pub file: PathBuf,
    /// The command line, compiler first.
    pub arguments: Vec<String>,
}

/// `a/./b/../c` to `a/c`, without touching the file system.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The path itself when it exists (symbolic links resolved), else lexically normalised.
pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| normalize(p))
}

/// Splits a shell command line as POSIX `sh` would for plain words:
/// quotes ('', ""), backslash escapes; no expansions.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err("unterminated ' in the command".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some('\n') => {}
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err("unterminated \" in the command".into()),
                        },
                        Some(x) => cur.push(x),
                        None => return Err("unterminated \" in the command".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    if x != '\n' {
                        cur.push(x);
                    }
                }
            }
            other => {
                in_word = true;
                cur.push(other);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Reads the database at `path`.
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the compilation database '{shown}': {e}"))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("'{shown}' is not a JSON compilation database: {e}"))?;
    let list = value
        .as_array()
        .ok_or_else(|| format!("'{shown}' is not a JSON compilation database: not an array"))?;
    let base = canonical(path.parent().unwrap_or(Path::new(".")));
    let base = if base.as_os_str().is_empty() {
        canonical(Path::new("."))
    } else {
        base
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let bad = |why: &str| format!("'{shown}': entry {}: {why}", i + 1);
        let dir = e
            .get("directory")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no \"directory\""))?;
        let file = e
            .get("file")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no \"file\""))?;
        let arguments = match (e.get("arguments"), e.get("command")) {
            (Some(a), _) => a
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| bad("\"arguments\" is not a list of strings"))?,
            (None, Some(c)) => shell_split(
                c.as_str()
                    .ok_or_else(|| bad("\"command\" is not a string"))?,
            )
            .map_err(|w| bad(&w))?,
            (None, None) => return Err(bad("neither \"arguments\" nor \"command\"")),
        };
        if arguments.is_empty() {
            return Err(bad("an empty command"));
        }
        let directory = normalize(&base.join(dir));
        out.push(Entry {
            file: normalize(&directory.join(file)),
            directory,
            arguments,
        });
    }
    Ok(out)
}

/// Whether two paths name the same file: lexically, or once resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    normalize(a) == normalize(b)
        || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// The compiler of an entry: its first word, or the second after a
/// compiler cache or distributor (`ccache gcc ...`).
pub fn compiler(entry: &Entry) -> &str {
    let first = entry.arguments[0].as_str();
    let base = first.rsplit('/').next().unwrap_or(first);
    match entry.arguments.get(1) {
        Some(next) if matches!(base, "ccache" | "sccache" | "distcc" | "icecc") => next,
        _ => first,
    }
}

/// Options whose value is the next word and that we drop with it
/// (outputs: the object, dependency files).
const DROP_WITH_VALUE: [&str; 4] = ["-o", "-MF", "-MT", "-MQ"];
/// Options we drop alone.
const DROP: [&str; 7] = ["-c", "-MD", "-MMD", "-M", "-MM", "-MP", "-save-temps"];

/// The entry's command for compiling `source` (in place of the entry's own
/// file) into `object`, with `extra` flags: its `-o X`, `-c` and
/// dependency-file options dropped, then `-c -o OBJECT` and the extra flags
/// added. Refuses LTO (there would be no code to compare).
/// With `source` `None` the entry's own file argument is kept. Also returns
/// the file argument as the entry writes it (what `__FILE__` says).
pub fn command_for(
    entry: &Entry,
    source: Option<&Path>,
    object: &Path,
    extra: &[String],
) -> Result<(Vec<String>, String), String> {
    let mut out = vec![entry.arguments[0].clone()];
    let mut skip = false;
    let mut found = false;
    let mut as_written = entry.file.display().to_string();
    for a in &entry.arguments[1..] {
        if skip {
            skip = false;
            continue;
        }
        if DROP_WITH_VALUE.contains(&a.as_str()) {
            skip = true;
            continue;
        }
        if DROP.contains(&a.as_str())
            || (a.starts_with("-o") && a.len() > 2)
            || a.starts_with("-MF")
            || a.starts_with("-Wp,-M")
        {
            continue;
        }
        if a.starts_with("-flto") && a != "-flto=none" && a != "-fno-lto" {
            return Err(format!(
                "'{}' is compiled with {a}: link-time optimisation is not supported \
                 (the objects would carry no code to compare)",
                entry.file.display()
            ));
        }
        if !a.starts_with('-') && !found && same_file(&entry.directory.join(a), &entry.file) {
            found = true;
            as_written = a.clone();
            out.push(source.map_or_else(|| a.clone(), |s| s.display().to_string()));
            continue;
        }
        out.push(a.clone());
    }
    if !found {
        out.push(source.unwrap_or(&entry.file).display().to_string());
    }
    out.push("-c".into());
    out.push("-o".into());
    out.push(object.display().to_string());
    out.extend(extra.iter().cloned());
    Ok((out, as_written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            shell_split(r#"gcc -DX="a b" 'c d' e\ f  -O2"#).unwrap(),
            ["gcc", "-DX=a b", "c d", "e f", "-O2"]
        );
        assert!(shell_split("gcc 'x").is_err());
    }

    #[test]
    fn reads_and_rewrites_an_entry() {
        let dir = std::env::temp_dir().join(format!("ulp-compdb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("compile_commands.json");
        std::fs::write(
            &db,
            r#"[{"directory": "build", "file": "../src/a.c",
                "command": "cc -O2 -fPIC -MD -MF a.d -c ../src/a.c -o a.o"}]"#,
        )
        .unwrap();
        let e = read(&db).unwrap();
        let base = canonical(&dir);
        assert_eq!(e[0].directory, base.join("build"));
        assert_eq!(e[0].file, base.join("src/a.c"));
        let (cmd, written) = command_for(
            &e[0],
            Some(Path::new("/t/a.c")),
            Path::new("/t/a.o"),
            &["-x1".into()],
        )
        .unwrap();
        assert_eq!(
            cmd,
            ["cc", "-O2", "-fPIC", "/t/a.c", "-c", "-o", "/t/a.o", "-x1"]
        );
        assert_eq!(written, "../src/a.c");
        std::fs::write(&db, "{}").unwrap();
        assert!(read(&db).unwrap_err().contains("not an array"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Choosing what a command works on: processes (`-p PID`, `-p
//! NAME-PATTERN`, or every process with the runtime loaded) and files
//! (a shell-style glob that ulp expands itself, for `ulp trigger '*.so'`).
//!
//! Patterns are shell patterns: `*` any run of characters, `?` one
//! character, `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one character of a
//! set, `\` makes the next character literal.

use std::path::{Path, PathBuf};

use ulp_process::Pid;

use crate::objects::objects_from_maps;

/// Does `text` match the shell pattern `pattern` (the whole of it)?
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match_bytes(pattern.as_bytes(), text.as_bytes())
}

/// Does `s` contain a glob character (`*`, `?`, `[`)?
pub fn is_glob(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn match_bytes(p: &[u8], t: &[u8]) -> bool {
    // Iterative matching with one backtrack point (the last `*`): linear
    // in practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, next)) = class(&p[pi..], t[ti]) {
                        if ok {
                            pi += next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == t[ti] {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                }
                c => {
                    if c == t[ti] {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression at the start of `p`;
/// returns (matched, length of the expression), or `None` when it is not
/// closed.
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        if lo == b'\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        let mut hi = lo;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&b| b != b']') {
            hi = p[i + 2];
            if hi == b'\\' {
                hi = *p.get(i + 3)?;
                i += 1;
            }
            i += 2;
        }
        if lo <= c && c <= hi {
            found = true;
        }
        i += 1;
    }
}

/// `-p SPEC` to process ids, ascending: a number is that pid (whether or
/// not it exists: the caller reports it); anything else is a shell pattern
/// matched against each process's name (`/proc/PID/comm`, which the kernel
/// cuts at 15 characters) and its executable's file name. Kernel threads
/// and the calling process are never matched by a pattern.
pub fn resolve(spec: &str) -> Vec<Pid> {
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(pid) = spec.parse::<Pid>() {
            return vec![pid];
        }
    }
    let me = Pid::this();
    let mut pids: Vec<Pid> = ulp_process::all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let Some((name, kernel)) = ulp_process::name_and_kind(pid) else {
                return false;
            };
            !kernel
                && (glob_match(spec, &name)
                    || ulp_process::exe(pid).is_some_and(|e| {
                        e.file_name()
                            .is_some_and(|n| glob_match(spec, &n.to_string_lossy()))
                    }))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The owner of `pid` as libpulp's `-u` sees it: the login uid of its
/// session (`/proc/PID/loginuid`), `None` when unreadable. 4294967295 is
/// the kernel's "unset" (a process started outside any login).
pub fn login_uid(pid: Pid) -> Option<u32> {
    ulp_process::login_uid(pid)
}

/// The user name of `uid` from the password database (`/etc/passwd`).
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// `-u USER`: whether `pid`'s owner ([`login_uid`]) is `user`: a numeric
/// uid, or a user name or shell pattern matched against the owner's name.
/// An owner that cannot be read, or has no name, matches only its number.
pub fn owner_matches(pid: Pid, user: &str) -> bool {
    let Some(uid) = login_uid(pid) else {
        return false;
    };
    if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) {
        return user.parse::<u32>() == Ok(uid);
    }
    user_name(uid).is_some_and(|name| glob_match(user, &name))
}

/// Why a selection chose no process, as every command says it: `-p SPEC`
/// (and `-u USER`) matched nothing, or, without `-p`, no process has the
/// runtime (owned by `USER`). Whether that is a warning or an error is the
/// command's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoProcess<'a> {
    /// `-p`, when given.
    pub spec: Option<&'a str>,
    /// `-u`, when given.
    pub user: Option<&'a str>,
}

impl std::fmt::Display for NoProcess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.spec, self.user) {
            (Some(spec), Some(user)) => write!(f, "no process matches '{spec}' owned by '{user}'"),
            (Some(spec), None) => write!(f, "no process matches '{spec}'"),
            (None, Some(user)) => write!(f, "no process with the runtime is owned by '{user}'"),
            (None, None) => write!(f, "no process has the runtime loaded"),
        }
    }
}

/// Every process (but the calling one) that has the runtime
/// (`libpulp.so*`) mapped, ascending. Processes whose maps cannot be read
/// (another user's, without privileges) are left out.
pub fn with_runtime() -> Vec<Pid> {
    let me = Pid::this();
    let mut pids: Vec<Pid> = ulp_process::all_pids()
        .into_iter()
        .filter(|&pid| pid != me && has_runtime(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pid` maps a file named like the runtime (cheap: its maps only).
pub fn has_runtime(pid: Pid) -> bool {
    ulp_process::maps(pid).is_ok_and(|maps| {
        objects_from_maps(&maps)
            .iter()
            .any(|o| o.basename().starts_with("libpulp.so"))
    })
}

/// The file a path names on this host: `path` itself, or under `root`
/// (`-R PREFIX`) where `path` is as the chrooted process sees it (a
/// relative path counts from the chroot's top).
pub fn host_path(root: Option<&Path>, path: &str) -> PathBuf {
    match root {
        None => PathBuf::from(path),
        Some(r) => r.join(path.trim_start_matches('/')),
    }
}

/// Expands the shell pattern `pattern` to the regular files it matches,
/// sorted by the bytes of their paths (so `a10.so` comes before `a2.so`,
/// and `B.so` before `a.so`). Globs may stand in any component; `*`, `?`
/// and `[` never match a `/`, nor a leading `.` of a file name (as in the
/// shell). Results are spelt as the pattern is (relative stays relative).
/// With `root`, names are looked up under it (see [`host_path`]) but
/// returned without it.
pub fn expand_glob(pattern: &str, root: Option<&Path>) -> Vec<String> {
    let absolute = pattern.starts_with('/');
    let mut found: Vec<String> = vec![if absolute { "/".into() } else { String::new() }];
    let parts: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    for (k, part) in parts.iter().enumerate() {
        let last = k + 1 == parts.len();
        let mut next = Vec::new();
        for base in &found {
            if !is_glob(part) {
                next.push(format!("{base}{}", unescape(part)));
                continue;
            }
            let dir = if base.is_empty() {
                host_path(root, ".")
            } else {
                host_path(root, base)
            };
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && !part.starts_with('.') {
                    continue;
                }
                if glob_match(part, &name) {
                    next.push(format!("{base}{name}"));
                }
            }
        }
        found = next
            .into_iter()
            .map(|p| if last { p } else { format!("{p}/") })
            .collect();
    }
    let mut files: Vec<String> = found
        .into_iter()
        .filter(|p| !p.is_empty() && host_path(root, p).is_file())
        .collect();
    files.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    files.dedup();
    files
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The name ulp shows for a process: its `comm` (cut at 15 characters by
/// the kernel), or `?` when it cannot be read (it exited meanwhile).
pub fn process_name(pid: Pid) -> String {
    ulp_process::comm(pid).unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_process_said_one_way() {
        for (spec, user, said) in [
            (
                Some("x*"),
                Some("bob"),
                "no process matches 'x*' owned by 'bob'",
            ),
            (Some("42"), None, "no process matches '42'"),
            (
                None,
                Some("bob"),
                "no process with the runtime is owned by 'bob'",
            ),
            (None, None, "no process has the runtime loaded"),
        ] {
            assert_eq!(NoProcess { spec, user }.to_string(), said);
        }
    }

    #[test]
    fn owners() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        let me = Pid::this();
        let uid = login_uid(me).expect("own loginuid");
        assert!(owner_matches(me, &uid.to_string()));
        assert!(!owner_matches(me, &uid.wrapping_add(1).to_string()));
        assert!(!owner_matches(Pid::new(1 << 30), "*"), "no such process");
    }

    #[test]
    fn patterns() {
        for (p, t, want) in [
            ("*", "anything", true),
            ("*", "", true),
            ("demo_*", "demo_prog", true),
            ("demo_*", "xdemo_prog", false),
            ("d?mo", "demo", true),
            ("d?mo", "dmo", false),
            ("*prog", "demo_prog", true),
            ("*o*o*", "demo_prog", true),
            ("*x*", "demo_prog", false),
            ("[a-d]emo", "demo", true),
            ("[!a-d]emo", "demo", false),
            ("[^a-d]emo", "xemo", true),
            ("[]]x", "]x", true),
            ("[a-]", "-", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[abc", "[abc", true),
            ("lib*.so.[0-9]", "libulpdemo.so.1", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p:?} vs {t:?}");
        }
        assert!(is_glob("*.so") && is_glob("a?") && is_glob("x[12]"));
        assert!(!is_glob("plain.so") && !is_glob("a\\*b"));
    }

    #[test]
    fn expansion_is_sorted_by_bytes_and_skips_dot_files() {
        let dir = std::env::temp_dir().join(format!("ulp-select-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in [
            "b.so",
            "a10.so",
            "a2.so",
            "B.so",
            ".hidden.so",
            "sub/c.so",
            "x.txt",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        std::fs::create_dir(dir.join("d.so")).unwrap();
        let d = dir.to_string_lossy().into_owned();
        let got = expand_glob(&format!("{d}/*.so"), None);
        let want: Vec<String> = ["B.so", "a10.so", "a2.so", "b.so"]
            .iter()
            .map(|f| format!("{d}/{f}"))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            expand_glob(&format!("{d}/*/*.so"), None),
            [format!("{d}/sub/c.so")]
        );
        // Under a root: looked up there, returned without it.
        assert_eq!(
            expand_glob("/sub/?.so", Some(&dir)),
            ["/sub/c.so".to_string()]
        );
        assert_eq!(
            expand_glob("sub/*.so", Some(&dir)),
            ["sub/c.so".to_string()]
        );
        assert!(expand_glob(&format!("{d}/*.none"), None).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

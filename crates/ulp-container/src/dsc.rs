//! The live-patch description file (.dsc), as libpulp's packer reads it
//! (COMPAT.md, "Description file"):
//!
//! ```text
//! ! Fixes CVE-2099-0001.            comment (any number, anywhere)
//! greet_livepatch1.so               the container: first non-comment line
//! @libgreet.so.0                    the target: exactly one
//! greet_answer:new_greet_answer     a unit, OLD:NEW
//! #greet_count:ulpr_greet_count     a reference, #TVAR:REF[:TOFF:POFF]
//! #%greet_tls:ulpr_greet_tls        a thread-local reference
//! ```
//!
//! Empty lines are skipped, a trailing `\r` and whitespace around a line
//! and around each `:`-separated field are tolerated. Offsets are
//! hexadecimal, with or without `0x`. Every item keeps its 1-based line and
//! column (in characters) so that the packer can point at the exact place
//! of a problem the parser cannot see (a function missing from the target).
//!
//! This module only parses: it opens no file and looks nothing up.

use std::fmt;

/// A value with the 1-based line and column where it starts in the .dsc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
    pub col: usize,
}

/// `OLD:NEW`: function OLD of the target is replaced by NEW of the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DscUnit {
    pub old: Located<String>,
    pub new: Located<String>,
}

/// Explicit offsets of a reference (`#TVAR:REF:TOFF:POFF`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefOffsets {
    /// Offset of TVAR in the target (TOFF).
    pub target: u64,
    /// Offset of REF in the container (POFF).
    pub patch: u64,
}

/// `#TVAR:REF[:TOFF:POFF]` or `#%TVAR:REF[:TOFF:POFF]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DscRef {
    /// TVAR: the variable of the target.
    pub target: Located<String>,
    /// REF: the container's pointer variable that receives TVAR's address.
    pub patch: Located<String>,
    pub offsets: Option<RefOffsets>,
    /// `#%`: TVAR is thread-local.
    pub tls: bool,
    /// Where the line's `#` is.
    pub line: usize,
    pub col: usize,
}

/// A parsed .dsc file, items in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dsc {
    /// The container path, as written (not resolved).
    pub container: Located<String>,
    /// The target path after `@`, as written. `None` when the .dsc has no
    /// target line (the packer's `-t` can supply one).
    pub target: Option<Located<String>>,
    pub units: Vec<DscUnit>,
    pub refs: Vec<DscRef>,
    /// Every `!` line's text after the `!`, verbatim, without the newline.
    pub comments: Vec<String>,
}

/// A syntax error at a 1-based line and column. Displays as
/// `LINE:COL: error: MESSAGE`; callers that know the file name put it
/// first, which gives the compiler-style `FILE:LINE:COL: error: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DscError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for DscError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: error: {}", self.line, self.col, self.message)
    }
}

impl std::error::Error for DscError {}

/// One line being parsed: its text and number, for column arithmetic.
struct Line<'a> {
    text: &'a str,
    number: usize,
}

impl<'a> Line<'a> {
    /// 1-based column of byte offset `at` of the line.
    fn col(&self, at: usize) -> usize {
        self.text.get(..at).map_or(1, |s| s.chars().count() + 1)
    }

    fn err(&self, at: usize, message: impl Into<String>) -> DscError {
        DscError {
            line: self.number,
            col: self.col(at),
            message: message.into(),
        }
    }

    fn located(&self, at: usize, value: &str) -> Located<String> {
        Located {
            value: value.to_string(),
            line: self.number,
            col: self.col(at),
        }
    }

    /// Splits `text[from..]` on `:` into fields trimmed of whitespace, each
    /// with the byte offset (in the line) where its trimmed text starts, or
    /// where it would start when empty.
    fn fields(&self, from: usize) -> Vec<(usize, &'a str)> {
        let mut out = Vec::new();
        let mut start = from;
        let rest = self.text.get(from..).unwrap_or("");
        for piece in rest.split(':') {
            let lead = piece.len() - piece.trim_start().len();
            out.push((start + lead, piece.trim()));
            start += piece.len() + 1;
        }
        out
    }

    /// A symbol name field: not empty, no whitespace inside.
    fn name(&self, (at, s): (usize, &str), what: &str) -> Result<Located<String>, DscError> {
        if s.is_empty() {
            return Err(self.err(at, format!("missing {what}")));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(self.err(
                at,
                format!("'{s}' is not a symbol name ({what}): it contains whitespace"),
            ));
        }
        Ok(self.located(at, s))
    }

    fn offset(&self, (at, s): (usize, &str), what: &str) -> Result<u64, DscError> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        let ok = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit());
        match u64::from_str_radix(digits, 16) {
            Ok(v) if ok => Ok(v),
            _ => Err(self.err(
                at,
                format!("bad {what} '{s}': expected a hexadecimal number such as 0x4040"),
            )),
        }
    }
}

const REF_SYNTAX: &str = "expected `#TVAR:REF` or `#TVAR:REF:TOFF:POFF` (`#%` for thread-local)";

/// Parses the text of a .dsc file. Stops at the first error.
pub fn parse(text: &str) -> Result<Dsc, DscError> {
    let mut container: Option<Located<String>> = None;
    let mut target: Option<Located<String>> = None;
    let mut units = Vec::new();
    let mut refs = Vec::new();
    let mut comments = Vec::new();
    let mut last_line = 0;

    for (i, raw) in text.split('\n').enumerate() {
        let line = Line {
            text: raw.trim_end_matches('\r'),
            number: i + 1,
        };
        last_line = line.number;
        let trimmed = line.text.trim();
        if trimmed.is_empty() {
            continue;
        }
        let start = line.text.len() - line.text.trim_start().len();

        if let Some(comment) = line.text.trim_start().strip_prefix('!') {
            comments.push(comment.to_string());
            continue;
        }

        if container.is_none() {
            let found = match trimmed.as_bytes().first() {
                Some(b'@') => Some("a target line (`@PATH`)"),
                Some(b'#') => Some("a reference line (`#TVAR:REF`)"),
                _ => None,
            };
            if let Some(found) = found {
                return Err(line.err(
                    start,
                    format!(
                        "expected the live-patch container path first, found {found}: \
                         the first line that is not a comment names the container (.so)"
                    ),
                ));
            }
            container = Some(line.located(start, trimmed));
            continue;
        }

        if let Some(rest) = trimmed.strip_prefix('@') {
            if let Some(first) = &target {
                return Err(line.err(
                    start,
                    format!(
                        "second target line: a .dsc names exactly one target \
                         (the first is at line {}, column {})",
                        first.line, first.col
                    ),
                ));
            }
            let at = start + 1 + (rest.len() - rest.trim_start().len());
            let path = rest.trim();
            if path.is_empty() {
                return Err(line.err(at, "missing target path after `@`"));
            }
            target = Some(line.located(at, path));
            continue;
        }

        if let Some(rest) = trimmed.strip_prefix('#') {
            let (tls, from) = match rest.strip_prefix('%') {
                Some(_) => (true, start + 2),
                None => (false, start + 1),
            };
            let f = line.fields(from);
            if f.len() != 2 && f.len() != 4 {
                return Err(line.err(
                    start,
                    format!(
                        "malformed reference with {} field(s): {REF_SYNTAX}",
                        f.len()
                    ),
                ));
            }
            let target_var = line.name(f[0], "target variable name (TVAR)")?;
            let patch_var = line.name(f[1], "pointer variable name in the live patch (REF)")?;
            let offsets = if f.len() == 4 {
                Some(RefOffsets {
                    target: line.offset(f[2], "target offset (TOFF)")?,
                    patch: line.offset(f[3], "live patch offset (POFF)")?,
                })
            } else {
                None
            };
            refs.push(DscRef {
                target: target_var,
                patch: patch_var,
                offsets,
                tls,
                line: line.number,
                col: line.col(start),
            });
            continue;
        }

        let f = line.fields(start);
        match f.len() {
            1 => {
                return Err(line.err(
                    start,
                    format!(
                        "expected `OLD:NEW` (a function of the target and its replacement \
                         in the live patch), found '{trimmed}'"
                    ),
                ))
            }
            2 => {}
            _ => {
                // Point at the second ':' (just before the third field).
                return Err(line.err(
                    f[2].0.saturating_sub(1),
                    "unexpected ':' in a unit line: expected `OLD:NEW`",
                ));
            }
        }
        units.push(DscUnit {
            old: line.name(f[0], "function name of the target (OLD)")?,
            new: line.name(f[1], "function name in the live patch (NEW)")?,
        });
    }

    let container = container.ok_or_else(|| DscError {
        line: last_line.max(1),
        col: 1,
        message: "no container path: the first line that is not a comment names the \
                  live-patch container (.so)"
            .to_string(),
    })?;
    Ok(Dsc {
        container,
        target,
        units,
        refs,
        comments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(value: &str, line: usize, col: usize) -> Located<String> {
        Located {
            value: value.to_string(),
            line,
            col,
        }
    }

    #[test]
    fn interop_dsc() {
        let text = include_str!("../../../testdata/libpulp-interop/greet_livepatch1.dsc");
        let d = parse(text).unwrap();
        assert_eq!(d.comments, [" Fixes CVE-2099-0001 and bsc#1234567."]);
        assert_eq!(d.container, loc("greet_livepatch1.so", 2, 1));
        assert_eq!(d.target, Some(loc("libgreet.so.0", 3, 2)));
        assert_eq!(d.units.len(), 3);
        assert_eq!(d.units[0].old, loc("greet_answer", 4, 1));
        assert_eq!(d.units[0].new, loc("new_greet_answer", 4, 14));
        assert_eq!(d.refs.len(), 2);
        assert_eq!(d.refs[0].target, loc("greet_count", 7, 2));
        assert_eq!(d.refs[0].patch, loc("ulpr_greet_count", 7, 14));
        assert!(!d.refs[0].tls);
        assert!(d.refs[1].tls);
        assert_eq!(d.refs[1].target, loc("greet_thread_count", 8, 3));
        assert_eq!((d.refs[1].line, d.refs[1].col), (8, 1));
    }

    #[test]
    fn accepted_forms() {
        let text = "\r\n  lp.so  \r\n!first\n@ /lib/libt.so \r\n\n  old : new \n\
                    #a:b:0x10:20\n#%t:u:0X1f:0\n!  second comment  \n  ! third\n";
        let d = parse(text).unwrap();
        assert_eq!(d.container, loc("lp.so", 2, 3));
        assert_eq!(d.target, Some(loc("/lib/libt.so", 4, 3)));
        assert_eq!(d.units[0].old, loc("old", 6, 3));
        assert_eq!(d.units[0].new, loc("new", 6, 9));
        assert_eq!(
            d.refs[0].offsets,
            Some(RefOffsets {
                target: 0x10,
                patch: 0x20
            })
        );
        assert_eq!(
            d.refs[1].offsets,
            Some(RefOffsets {
                target: 0x1f,
                patch: 0
            })
        );
        assert!(d.refs[1].tls && !d.refs[0].tls);
        assert_eq!(d.comments, ["first", "  second comment  ", " third"]);
        // No target line is not a syntax error (`-t` may give one).
        assert_eq!(parse("lp.so\na:b\n").unwrap().target, None);
    }

    #[test]
    fn errors_point_at_the_problem() {
        #[rustfmt::skip]
        let table: &[(&str, usize, usize, &str)] = &[
            ("", 1, 1, "no container path"),
            ("! only a comment\n\n", 3, 1, "no container path"),
            ("@libt.so\n", 1, 1, "expected the live-patch container path first, found a target"),
            ("  #a:b\n", 1, 3, "expected the live-patch container path first, found a reference"),
            ("lp.so\n@a.so\n@b.so\n", 3, 1, "second target line: a .dsc names exactly one target (the first is at line 2, column 2)"),
            ("lp.so\n@   \n", 2, 2, "missing target path after `@`"),
            ("lp.so\n@t.so\nfoo\n", 3, 1, "expected `OLD:NEW`"),
            ("lp.so\n@t.so\n  a:b:c\n", 3, 6, "unexpected ':' in a unit line"),
            ("lp.so\n@t.so\n:new\n", 3, 1, "missing function name of the target (OLD)"),
            ("lp.so\n@t.so\nold:\n", 3, 5, "missing function name in the live patch (NEW)"),
            ("lp.so\n@t.so\nold:  \r\n", 3, 7, "missing function name in the live patch (NEW)"),
            ("lp.so\n@t.so\nol d:new\n", 3, 1, "'ol d' is not a symbol name"),
            ("lp.so\n@t.so\n#a\n", 3, 1, "malformed reference with 1 field(s)"),
            ("lp.so\n@t.so\n #a:b:1\n", 3, 2, "malformed reference with 3 field(s)"),
            ("lp.so\n@t.so\n#a:b:1:2:3\n", 3, 1, "malformed reference with 5 field(s)"),
            ("lp.so\n@t.so\n#:b\n", 3, 2, "missing target variable name (TVAR)"),
            ("lp.so\n@t.so\n#%:b\n", 3, 3, "missing target variable name (TVAR)"),
            ("lp.so\n@t.so\n#a:\n", 3, 4, "missing pointer variable name in the live patch (REF)"),
            ("lp.so\n@t.so\n#a:b:xyz:0\n", 3, 6, "bad target offset (TOFF) 'xyz'"),
            ("lp.so\n@t.so\n#a:b:0x:0\n", 3, 6, "bad target offset (TOFF) '0x'"),
            ("lp.so\n@t.so\n#%a:b:10: 0x1g\n", 3, 11, "bad live patch offset (POFF) '0x1g'"),
            ("lp.so\n@t.so\n#a:b:10:\n", 3, 9, "bad live patch offset (POFF) ''"),
            ("lp.so\n@t.so\n#a:b:1:11112222333344445\n", 3, 8, "bad live patch offset (POFF)"),
            ("lp.so\n@t.so\n#a:b:-1:0\n", 3, 6, "bad target offset (TOFF) '-1'"),
        ];
        for &(text, line, col, msg) in table {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.col), (line, col), "{text:?}: {e}");
            assert!(e.message.starts_with(msg), "{text:?}: {}", e.message);
        }
        let e = parse("lp.so\n@t.so\nfoo\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "3:1: error: expected `OLD:NEW` (a function of the target and its replacement \
             in the live patch), found 'foo'"
        );
    }

    #[test]
    fn columns_count_characters() {
        let e = parse("lp.so\n@t.so\n#é:b:zz:0\n").unwrap_err();
        assert_eq!((e.line, e.col), (3, 6));
    }
}

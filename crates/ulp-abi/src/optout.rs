//! The opt-outs: `LIBPULP_DISABLE_ON_PATH`, `LIBPULP_DISABLE_ON_USERS`
//! and `LIBPULP_DISABLE_ON_GROUPS`, in a process's environment, switch live
//! patching off for it. The runtime checks its own process once at start;
//! the tool checks a process from outside before it loads the runtime into
//! it (`ulp trigger --load-runtime`). Both use [`check_with`], so they agree.
//!
//! Each variable holds entries separated by `:` (libpulp's separator) or
//! `,`. An entry is matched as libpulp does: in the USERS (GROUPS) list an
//! entry made of digits only is a numeric uid (gid) compared with the
//! process's real uid (its real gid and supplementary groups); any other
//! entry, and a numeric one that does not match, is an extended glob
//! pattern (glibc `fnmatch` with `FNM_EXTMATCH`: `*`, `?`, `[...]`, and
//! `+(a|b)`, `@(a|b)`, `*(...)`, `?(...)`, `!(...)`; `*` also matches `/`)
//! matched against the user (group) names, or the executable's path.
//! Nothing is looked up unless its variable is set: the runtime's
//! constructor stays cheap for every process that does not opt out (user
//! and group names may need NSS).

use alloc::ffi::CString;
use alloc::vec;
use alloc::vec::Vec;
use core::ffi::CStr;
use core::fmt;

/// glibc's `FNM_EXTMATCH` (`<fnmatch.h>`), which the libc crate lacks:
/// ksh-style extended patterns.
pub const FNM_EXTMATCH: libc::c_int = 1 << 5;

/// What an entry matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    /// A pattern of `LIBPULP_DISABLE_ON_PATH`, the executable's path.
    Path,
    /// A pattern of `LIBPULP_DISABLE_ON_USERS`, the user's name.
    User,
    /// A numeric entry of `LIBPULP_DISABLE_ON_USERS`, the real uid.
    Uid,
    /// A pattern of `LIBPULP_DISABLE_ON_GROUPS`, a group's name.
    Group,
    /// A numeric entry of `LIBPULP_DISABLE_ON_GROUPS`, a gid.
    Gid,
}

/// Why live patching was disabled: the variable, the entry and the value
/// it matched. Displayed, it is libpulp's log line (without `ulp: `), e.g.
/// `Matched uid 1000: livepatching disabled by user request.`
#[derive(Debug, PartialEq, Eq)]
pub struct OptOut {
    pub variable: &'static str,
    pub matched: Matched,
    /// The entry as written in the variable.
    pub pattern: Vec<u8>,
    /// What it matched: the path, the name, or the id in decimal.
    pub subject: Vec<u8>,
}

impl fmt::Display for OptOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.matched {
            Matched::Path => "path pattern",
            Matched::User => "user pattern",
            Matched::Uid => "uid",
            Matched::Group => "group pattern",
            Matched::Gid => "gid",
        };
        f.write_str("Matched ")?;
        f.write_str(what)?;
        f.write_str(" ")?;
        for chunk in self.pattern.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        f.write_str(": livepatching disabled by user request.")
    }
}

pub const PATH_VAR: &str = "LIBPULP_DISABLE_ON_PATH";
pub const USERS_VAR: &str = "LIBPULP_DISABLE_ON_USERS";
pub const GROUPS_VAR: &str = "LIBPULP_DISABLE_ON_GROUPS";

/// The C library functions the rules use, as pointers: the tool passes
/// [`Lookups::LIBC`]; the runtime passes its own, found on first use
/// (an import costs every preloading process a symbol lookup at start).
#[derive(Clone, Copy)]
pub struct Lookups {
    pub fnmatch:
        unsafe extern "C" fn(*const libc::c_char, *const libc::c_char, libc::c_int) -> libc::c_int,
    pub getpwuid_r: unsafe extern "C" fn(
        libc::uid_t,
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
    pub getgrgid_r: unsafe extern "C" fn(
        libc::gid_t,
        *mut libc::group,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::group,
    ) -> libc::c_int,
}

impl Lookups {
    /// The C library's, linked.
    pub const LIBC: Lookups = Lookups {
        fnmatch: libc::fnmatch,
        getpwuid_r: libc::getpwuid_r,
        getgrgid_r: libc::getgrgid_r,
    };
}

/// Checks the three variables, in that order; the first match wins.
/// `var` reads the process's environment; `exe` (its executable's path),
/// `uid` (its real user) and `gids` (its real group, then the
/// supplementary ones) are asked only when their variable is set.
pub fn check_with(
    var: impl Fn(&str) -> Option<Vec<u8>>,
    exe: impl FnOnce() -> Option<Vec<u8>>,
    uid: impl FnOnce() -> libc::uid_t,
    gids: impl FnOnce() -> Vec<libc::gid_t>,
    lookups: &Lookups,
) -> Option<OptOut> {
    if let Some(patterns) = var(PATH_VAR) {
        if let Some(exe) = exe() {
            if let Some(o) = matching(PATH_VAR, &patterns, &[], &[exe], lookups) {
                return Some(o);
            }
        }
    }
    if let Some(patterns) = var(USERS_VAR) {
        let uid = uid();
        let names: Vec<Vec<u8>> = user_name(uid, lookups).into_iter().collect();
        if let Some(o) = matching(USERS_VAR, &patterns, &[uid], &names, lookups) {
            return Some(o);
        }
    }
    if let Some(patterns) = var(GROUPS_VAR) {
        let gids = gids();
        let names: Vec<Vec<u8>> = gids
            .iter()
            .copied()
            .filter_map(|g| group_name(g, lookups))
            .collect();
        if let Some(o) = matching(GROUPS_VAR, &patterns, &gids, &names, lookups) {
            return Some(o);
        }
    }
    None
}

/// An entry made of decimal digits only, as a number (libpulp's test).
fn numeric(entry: &[u8]) -> Option<u32> {
    if entry.is_empty() || !entry.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(entry).ok()?.parse().ok()
}

/// Whether the extended glob `pattern` matches `subject`.
pub fn glob_matches(pattern: &[u8], subject: &[u8], lookups: &Lookups) -> bool {
    let (Ok(cpat), Ok(csub)) = (CString::new(pattern), CString::new(subject)) else {
        return false;
    };
    // SAFETY: both are NUL-terminated strings.
    unsafe { (lookups.fnmatch)(cpat.as_ptr(), csub.as_ptr(), FNM_EXTMATCH) == 0 }
}

/// The first entry of `patterns` that matches: a numeric entry equal to
/// one of `ids` (uids or gids; none for the path), else a pattern matching
/// one of `subjects`.
pub fn matching(
    variable: &'static str,
    patterns: &[u8],
    ids: &[u32],
    subjects: &[Vec<u8>],
    lookups: &Lookups,
) -> Option<OptOut> {
    let (by_id, by_name) = match variable {
        USERS_VAR => (Matched::Uid, Matched::User),
        GROUPS_VAR => (Matched::Gid, Matched::Group),
        _ => (Matched::Path, Matched::Path),
    };
    for pattern in patterns.split(|&b| b == b':' || b == b',') {
        if pattern.is_empty() {
            continue;
        }
        if let Some(id) = numeric(pattern).filter(|n| ids.contains(n)) {
            return Some(OptOut {
                variable,
                matched: by_id,
                pattern: pattern.to_vec(),
                subject: alloc::format!("{id}").into_bytes(),
            });
        }
        if let Some(subject) = subjects.iter().find(|s| glob_matches(pattern, s, lookups)) {
            return Some(OptOut {
                variable,
                matched: by_name,
                pattern: pattern.to_vec(),
                subject: subject.clone(),
            });
        }
    }
    None
}

/// Runs a `get*_r` lookup with a growing buffer; `None` when the entry
/// does not exist or cannot be read.
fn lookup_name(
    mut call: impl FnMut(&mut [u8]) -> Result<Option<Vec<u8>>, libc::c_int>,
) -> Option<Vec<u8>> {
    let mut size = 1024;
    while size <= 1 << 20 {
        let mut buf = vec![0u8; size];
        match call(&mut buf) {
            Ok(name) => return name,
            Err(libc::ERANGE) => size *= 4,
            Err(_) => return None,
        }
    }
    None
}

pub fn user_name(uid: libc::uid_t, lookups: &Lookups) -> Option<Vec<u8>> {
    lookup_name(|buf| {
        // SAFETY: zeroed passwd is a valid out-value; all pointers are valid
        // for the call and the name is copied before `buf` goes away.
        unsafe {
            let mut pw: libc::passwd = core::mem::zeroed();
            let mut out: *mut libc::passwd = core::ptr::null_mut();
            let rc =
                (lookups.getpwuid_r)(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out);
            if rc != 0 {
                return Err(rc);
            }
            if out.is_null() || pw.pw_name.is_null() {
                return Ok(None);
            }
            Ok(Some(CStr::from_ptr(pw.pw_name).to_bytes().to_vec()))
        }
    })
}

pub fn group_name(gid: libc::gid_t, lookups: &Lookups) -> Option<Vec<u8>> {
    lookup_name(|buf| {
        // SAFETY: as in `user_name`.
        unsafe {
            let mut gr: libc::group = core::mem::zeroed();
            let mut out: *mut libc::group = core::ptr::null_mut();
            let rc =
                (lookups.getgrgid_r)(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out);
            if rc != 0 {
                return Err(rc);
            }
            if out.is_null() || gr.gr_name.is_null() {
                return Ok(None);
            }
            Ok(Some(CStr::from_ptr(gr.gr_name).to_bytes().to_vec()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_lists() {
        let subj = [b"/usr/bin/bash".to_vec()];
        let table: [(&[u8], Option<&[u8]>); 9] = [
            (b"*", Some(b"*")),
            (b"/usr/bin/zsh:*/bash", Some(b"*/bash")),
            (b"/bin/*,/usr/bin/ba?h", Some(b"/usr/bin/ba?h")),
            (b"*/@(zsh|bash)", Some(b"*/@(zsh|bash)")),
            (b"*/+(ba)sh", Some(b"*/+(ba)sh")),
            (b"/usr/bin/!(bash)", None),
            (b"", None),
            (b"::,", None),
            (b"bash", None),
        ];
        for (pats, want) in table {
            let got = matching(PATH_VAR, pats, &[], &subj, &Lookups::LIBC).map(|o| o.pattern);
            assert_eq!(
                got.as_deref(),
                want,
                "{:?}",
                alloc::string::String::from_utf8_lossy(pats)
            );
        }
    }

    #[test]
    fn any_group_may_match() {
        let groups = [b"users".to_vec(), b"wheel".to_vec()];
        let o = matching(GROUPS_VAR, b"adm,whe*", &[100, 10], &groups, &Lookups::LIBC).unwrap();
        assert_eq!((o.matched, &o.subject[..]), (Matched::Group, &b"wheel"[..]));
        let o = matching(GROUPS_VAR, b"adm:10", &[100, 10], &groups, &Lookups::LIBC).unwrap();
        assert_eq!((o.matched, &o.subject[..]), (Matched::Gid, &b"10"[..]));
    }

    #[test]
    fn numeric_entries_are_ids_and_the_lines_are_libpulps() {
        let names = [b"root".to_vec()];
        let line = |o: Option<OptOut>| o.map(|o| alloc::format!("{o}"));
        assert_eq!(
            line(matching(
                USERS_VAR,
                b"1000:+(ro)ot",
                &[1000],
                &names,
                &Lookups::LIBC
            )),
            Some("Matched uid 1000: livepatching disabled by user request.".into())
        );
        assert_eq!(
            line(matching(
                USERS_VAR,
                b"1000:+(ro)ot",
                &[0],
                &names,
                &Lookups::LIBC
            )),
            Some("Matched user pattern +(ro)ot: livepatching disabled by user request.".into())
        );
        // A number that is not the id is still a pattern for the name.
        assert_eq!(
            line(matching(
                USERS_VAR,
                b"1001",
                &[1000],
                &[b"1001".to_vec()],
                &Lookups::LIBC
            )),
            Some("Matched user pattern 1001: livepatching disabled by user request.".into())
        );
        assert_eq!(
            line(matching(
                USERS_VAR,
                b"1001,1x",
                &[1000],
                &names,
                &Lookups::LIBC
            )),
            None
        );
        assert_eq!(
            line(matching(GROUPS_VAR, b"5", &[5], &[], &Lookups::LIBC)),
            Some("Matched gid 5: livepatching disabled by user request.".into())
        );
        assert_eq!(
            line(matching(
                PATH_VAR,
                b"/x/*",
                &[],
                &[b"/x/y".to_vec()],
                &Lookups::LIBC
            )),
            Some("Matched path pattern /x/*: livepatching disabled by user request.".into())
        );
        assert_eq!(numeric(b"0042"), Some(42));
        assert_eq!(numeric(b"99999999999"), None);
    }
}

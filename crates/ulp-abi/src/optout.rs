//! The opt-outs: `LIBPULP_DISABLE_ON_PATH`, `LIBPULP_DISABLE_ON_USERS`
//! and `LIBPULP_DISABLE_ON_GROUPS`, in a process's environment, switch live
//! patching off for it. The runtime checks its own process once at start;
//! the tool checks a process from outside before it loads the runtime into
//! it (`ulp trigger --load-runtime`). Both use [`check_with`], so they agree.
//!
//! Each variable holds shell-style patterns (libc `fnmatch`, no flags, so
//! `*` also matches `/`) separated by `:` or `,`. Nothing is looked up
//! unless its variable is set: the runtime's constructor stays cheap for
//! every process that does not opt out (user and group names may need NSS).

use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::vec;
use std::vec::Vec;

/// Why live patching was disabled: the variable, the pattern and the value
/// it matched.
#[derive(Debug, PartialEq, Eq)]
pub struct OptOut {
    pub variable: &'static str,
    pub pattern: Vec<u8>,
    pub subject: Vec<u8>,
}

pub const PATH_VAR: &str = "LIBPULP_DISABLE_ON_PATH";
pub const USERS_VAR: &str = "LIBPULP_DISABLE_ON_USERS";
pub const GROUPS_VAR: &str = "LIBPULP_DISABLE_ON_GROUPS";

/// Checks the three variables, in that order; the first match wins.
/// `var` reads the process's environment; `exe` (its executable's path),
/// `uid` (its real user) and `gids` (its real group, then the
/// supplementary ones) are asked only when their variable is set.
pub fn check_with(
    var: impl Fn(&str) -> Option<OsString>,
    exe: impl FnOnce() -> Option<Vec<u8>>,
    uid: impl FnOnce() -> libc::uid_t,
    gids: impl FnOnce() -> Vec<libc::gid_t>,
) -> Option<OptOut> {
    if let Some(patterns) = var(PATH_VAR) {
        if let Some(exe) = exe() {
            if let Some(o) = matching(PATH_VAR, &patterns, &[exe]) {
                return Some(o);
            }
        }
    }
    if let Some(patterns) = var(USERS_VAR) {
        if let Some(name) = user_name(uid()) {
            if let Some(o) = matching(USERS_VAR, &patterns, &[name]) {
                return Some(o);
            }
        }
    }
    if let Some(patterns) = var(GROUPS_VAR) {
        let names: Vec<Vec<u8>> = gids().into_iter().filter_map(group_name).collect();
        if let Some(o) = matching(GROUPS_VAR, &patterns, &names) {
            return Some(o);
        }
    }
    None
}

/// The first pattern of `patterns` that matches one of `subjects`.
pub fn matching(
    variable: &'static str,
    patterns: &OsString,
    subjects: &[Vec<u8>],
) -> Option<OptOut> {
    for pattern in patterns.as_bytes().split(|&b| b == b':' || b == b',') {
        if pattern.is_empty() {
            continue;
        }
        let Ok(cpat) = CString::new(pattern) else {
            continue;
        };
        for subject in subjects {
            let Ok(csub) = CString::new(subject.as_slice()) else {
                continue;
            };
            // SAFETY: both are NUL-terminated strings.
            if unsafe { libc::fnmatch(cpat.as_ptr(), csub.as_ptr(), 0) } == 0 {
                return Some(OptOut {
                    variable,
                    pattern: pattern.to_vec(),
                    subject: subject.clone(),
                });
            }
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

pub fn user_name(uid: libc::uid_t) -> Option<Vec<u8>> {
    lookup_name(|buf| {
        // SAFETY: zeroed passwd is a valid out-value; all pointers are valid
        // for the call and the name is copied before `buf` goes away.
        unsafe {
            let mut pw: libc::passwd = core::mem::zeroed();
            let mut out: *mut libc::passwd = core::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out);
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

pub fn group_name(gid: libc::gid_t) -> Option<Vec<u8>> {
    lookup_name(|buf| {
        // SAFETY: as in `user_name`.
        unsafe {
            let mut gr: libc::group = core::mem::zeroed();
            let mut out: *mut libc::group = core::ptr::null_mut();
            let rc = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out);
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

/// `OsString` from bytes, for tests and callers holding raw values.
pub fn os(bytes: &[u8]) -> OsString {
    std::ffi::OsStr::from_bytes(bytes).to_os_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_lists() {
        let subj = [b"/usr/bin/bash".to_vec()];
        let table: [(&[u8], Option<&[u8]>); 6] = [
            (b"*", Some(b"*")),
            (b"/usr/bin/zsh:*/bash", Some(b"*/bash")),
            (b"/bin/*,/usr/bin/ba?h", Some(b"/usr/bin/ba?h")),
            (b"", None),
            (b"::,", None),
            (b"bash", None),
        ];
        for (pats, want) in table {
            let got = matching(PATH_VAR, &os(pats), &subj).map(|o| o.pattern);
            assert_eq!(
                got.as_deref(),
                want,
                "{:?}",
                std::string::String::from_utf8_lossy(pats)
            );
        }
    }

    #[test]
    fn any_group_may_match() {
        let groups = [b"users".to_vec(), b"wheel".to_vec()];
        let o = matching(GROUPS_VAR, &os(b"adm,whe*"), &groups).unwrap();
        assert_eq!(o.subject, b"wheel");
    }
}

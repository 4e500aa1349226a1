//! The opt-outs of this process, checked once at start (see
//! `ulp_abi::optout`, shared with the tool, which checks a process from
//! outside before loading the runtime into it).

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::vec;
use alloc::vec::Vec;

pub use ulp_abi::optout::{OptOut, GROUPS_VAR, PATH_VAR, USERS_VAR};

/// Checks this process's environment, executable, user and groups.
pub fn check() -> Option<OptOut> {
    ulp_abi::optout::check_with(
        crate::sys::getenv,
        || crate::sys::readlink(c"/proc/self/exe"),
        // SAFETY: getuid cannot fail.
        || unsafe { libc::getuid() },
        group_ids,
    )
}

/// The real gid, then the supplementary groups.
fn group_ids() -> Vec<libc::gid_t> {
    // SAFETY: getgid cannot fail; getgroups(0, NULL) returns the count and
    // the second call fills at most `n` entries of a buffer that long.
    unsafe {
        let mut ids = vec![libc::getgid()];
        let n = libc::getgroups(0, core::ptr::null_mut());
        if n > 0 {
            let mut extra = vec![0 as libc::gid_t; n as usize];
            let got = libc::getgroups(n, extra.as_mut_ptr());
            if got > 0 {
                extra.truncate(got as usize);
                for g in extra {
                    if !ids.contains(&g) {
                        ids.push(g);
                    }
                }
            }
        }
        ids
    }
}

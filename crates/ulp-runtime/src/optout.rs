//! The opt-outs of this process, checked once at start (see
//! `ulp_abi::optout`, shared with the tool, which checks a process from
//! outside before loading the runtime into it).

use alloc::vec;
use alloc::vec::Vec;

pub use ulp_abi::optout::{OptOut, GROUPS_VAR, PATH_VAR, USERS_VAR};

/// Checks this process's environment, executable, user and groups.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub fn check() -> Option<OptOut> {
    // Most processes have none of the variables: the check (and its code,
    // outside the start section) is not run then.
    if [PATH_VAR, USERS_VAR, GROUPS_VAR]
        .iter()
        .all(|v| crate::sys::getenv_c(v.as_bytes()).is_none())
    {
        return None;
    }
    ulp_abi::optout::check_with(
        crate::sys::getenv,
        || crate::sys::readlink(c"/proc/self/exe"),
        crate::sys::getuid,
        group_ids,
        &ulp_abi::optout::Lookups {
            fnmatch: crate::lazy::fnmatch,
            getpwuid_r: crate::lazy::getpwuid_r,
            getgrgid_r: crate::lazy::getgrgid_r,
        },
    )
}

/// The real gid, then the supplementary groups.
fn group_ids() -> Vec<libc::gid_t> {
    let mut ids = vec![crate::sys::getgid()];
    for g in crate::sys::getgroups() {
        if !ids.contains(&g) {
            ids.push(g);
        }
    }
    ids
}

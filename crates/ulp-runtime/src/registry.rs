//! The registry of applied patches, oldest first: what each one
//! redirected, the last change (which UNDO takes back), and the records
//! published to the tool (`ulp patches`), read from outside under a
//! seqlock (`interface::publish`).

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::ffi::CString;
use core::cell::UnsafeCell;
use core::ffi::c_void;

use ulp_abi::format::PATCH_ID_LEN;
use ulp_abi::PatchRecord;

use crate::interface;

/// One redirected function of an applied patch.
#[derive(Debug)]
pub(crate) struct AppliedUnit {
    /// The symbol (the stub sits in the 14 bytes before it).
    pub(crate) entry: u64,
    /// Where the short jump sits: `entry`, or `entry + 4` after `endbr64`.
    pub(crate) patch_point: u64,
    /// The container's function the stub jumps to.
    pub(crate) new_addr: u64,
    /// Redirected by an entry rewrite (`rewrite.rs`), not through padding.
    pub(crate) rewrite: bool,
}

/// An applied patch. The strings are what the published [`PatchRecord`]s
/// point to: they live as long as the patch is in the registry, or is kept
/// for UNDO after a revert.
#[derive(Debug)]
pub(crate) struct Patch {
    pub(crate) id: [u8; PATCH_ID_LEN],
    pub(crate) container_path: CString,
    pub(crate) target_path: CString,
    pub(crate) target_bias: u64,
    pub(crate) comments: CString,
    pub(crate) applied_at: i64,
    pub(crate) units: Vec<AppliedUnit>,
    /// From `dlopen`; closed only by UNDO of this patch's APPLY, never
    /// after a revert (a thread may still run the container's code).
    pub(crate) handle: *mut c_void,
    /// Applied by the runtime itself from the patch store (`stored.rs`).
    pub(crate) at_start: bool,
}

impl Patch {
    pub(crate) fn unit_at(&self, entry: u64) -> Option<&AppliedUnit> {
        self.units.iter().find(|u| u.entry == entry)
    }

    pub(crate) fn record(&self) -> PatchRecord {
        PatchRecord {
            patch_id: self.id,
            applied_at: self.applied_at,
            container_path: self.container_path.as_ptr() as u64,
            target_path: self.target_path.as_ptr() as u64,
            comments: self.comments.as_ptr() as u64,
            nunits: self.units.len() as u64,
            flags: if self.at_start {
                ulp_abi::record_flag::AT_START
            } else {
                0
            },
        }
    }
}

/// The registry change UNDO can reverse.
#[derive(Debug)]
pub(crate) enum LastChange {
    Applied {
        id: [u8; PATCH_ID_LEN],
    },
    Reverted {
        patch: Patch,
        index: usize,
    },
    /// REVERT_ALL or REPLACE: the patch added (REPLACE only, unless it was
    /// applied already) and the patches removed with their former indices,
    /// ascending.
    Many {
        added: Option<[u8; PATCH_ID_LEN]>,
        removed: Vec<(usize, Patch)>,
    },
}

/// The applied patches, oldest first, and the records published for them.
#[derive(Debug)]
pub struct Registry {
    pub(crate) patches: Vec<Patch>,
    pub(crate) last: Option<LastChange>,
    /// The array `reg_records` points to; replaced (and the old one freed)
    /// only after the next one is published.
    pub(crate) published: Vec<PatchRecord>,
}

impl Registry {
    pub const fn new() -> Registry {
        Registry {
            patches: Vec::new(),
            last: None,
            published: Vec::new(),
        }
    }

    pub(crate) fn position(&self, id: &[u8]) -> Option<usize> {
        self.patches.iter().position(|p| p.id[..] == *id)
    }

    /// Publishes the current patches; the previous array is dropped only
    /// once the new one is in place.
    pub(crate) fn publish(&mut self) {
        let records: Vec<PatchRecord> = self.patches.iter().map(Patch::record).collect();
        interface::publish(&records);
        self.published = records;
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) struct Global(UnsafeCell<Registry>);

// SAFETY: only `with_registry` touches the cell, and only `__ulp_entry`
// calls it, one call at a time (the `BUSY` flag in lib.rs).
unsafe impl Sync for Global {}

static REGISTRY: Global = Global(UnsafeCell::new(Registry::new()));

/// Runs `f` on the process's registry.
///
/// # Safety
/// The caller must hold `BUSY` (no other access may be live).
pub unsafe fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    f(&mut *REGISTRY.0.get())
}

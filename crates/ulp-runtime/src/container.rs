//! Opening a container: `dlopen` (a refusal is libpulp's EDLOPEN, logged
//! with libpulp's lines), its link map, and its loaded segments.

#[allow(unused_imports)]
use crate::prelude::*;

use core::ffi::{c_char, c_void, CStr};

use ulp_abi::errors;

use crate::objects::{self, LoadedObject};
use crate::patch::Failure;
use crate::ring;

#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const c_char,
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string.
    unsafe {
        let e = crate::lazy::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// A container opened by this APPLY: closed again (balancing our
/// `dlopen`) unless the apply succeeds.
pub(crate) struct Opened {
    pub(crate) handle: *mut c_void,
}

impl Opened {
    pub(crate) fn keep(self) -> *mut c_void {
        let h = self.handle;
        core::mem::forget(self);
        h
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: a handle from a successful dlopen, closed once. Nothing
        // points into the container yet: no write was returned.
        unsafe { crate::lazy::dlclose(self.handle) };
    }
}

/// Opens the container and finds its segments. A container `dlopen`
/// refuses is libpulp's EDLOPEN with `dlerror()`'s text as the detail,
/// logged with libpulp's three lines.
pub(crate) fn open_container(path: &CStr) -> Result<(Opened, LoadedObject), Failure> {
    let shown = path.to_string_lossy();
    // SAFETY: `path` is NUL-terminated; dlerror is cleared first so that
    // the text read after a failure is this call's.
    let handle = unsafe {
        crate::lazy::dlerror();
        crate::dlopen::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL)
    };
    if handle.is_null() {
        let why = dlerror_text();
        ring::log(format_args!("Unable to load shared object {shown}: {why}."));
        ring::log(format_args!("Unable to load patch dl handler."));
        ring::log(format_args!(
            "Error in metadata load: {}.",
            errors::EDLOPEN.phrase
        ));
        return Err(Failure::error(errors::EDLOPEN, why));
    }
    let opened = Opened { handle };
    let mut map: *mut LinkMap = core::ptr::null_mut();
    // SAFETY: RTLD_DI_LINKMAP stores a `struct link_map *`, whose first two
    // fields are `l_addr` and `l_name`.
    let (bias, name) = unsafe {
        let rc = crate::lazy::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            (&mut map as *mut *mut LinkMap).cast(),
        );
        if rc != 0 || map.is_null() {
            return Err(Failure::error(
                errors::ENOLINKMAP,
                format!("cannot locate container '{shown}': {}", dlerror_text()),
            ));
        }
        let name = if (*map).l_name.is_null() {
            Vec::new()
        } else {
            CStr::from_ptr((*map).l_name).to_bytes().to_vec()
        };
        ((*map).l_addr as u64, name)
    };
    // Found by the loader's name, which is never the main program's.
    let object = objects::loaded_objects(objects::MainPath::Skip)
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.bias == bias && o.name == name)
        .ok_or_else(|| {
            Failure::error(
                errors::ENOLINKMAP,
                format!("cannot find the segments of container '{shown}'"),
            )
        })?;
    Ok((opened, object))
}

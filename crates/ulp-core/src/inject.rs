//! Loading the runtime into a process that never preloaded it
//! (`ulp trigger --load-runtime`).
//!
//! The runtime is loaded the way the process would load it itself: one of
//! its threads calls the C library's `dlopen` on the runtime file, and the
//! runtime's constructor runs as after `LD_PRELOAD`. Everything that makes
//! a runtime call safe applies to this call too:
//!
//! * the thread is chosen like the runtime's caller (`caller.rs`): not
//!   inside the allocator or the dynamic loader, so `dlopen` and the
//!   `malloc` calls it makes cannot wait for a lock that thread holds; the
//!   process's other threads keep running meanwhile, so a lock one of
//!   *them* holds is released in due course;
//! * the call returns to the thread's own code by itself even if ulp dies
//!   at any moment: `dlopen` returns into the C library's signal restorer
//!   (`mov $15, %rax; syscall`, i.e. `rt_sigreturn`) over a signal frame
//!   holding the thread's whole state (`Caller::call_sigreturn`).
//!   While ulp lives, it catches the thread as it enters that
//!   `rt_sigreturn` and sends it into the freshly loaded runtime's resume
//!   routine instead, so the thread's registers are written back exactly
//!   as after any runtime call;
//! * `dlopen` either loads the runtime whole or not at all: a thread that
//!   runs the call to its end alone (ulp gone) still loads all of it, or
//!   fails cleanly;
//! * a process whose environment opts out (`LIBPULP_DISABLE_ON_*`, the
//!   same rules as the runtime's own) is not loaded into;
//! * as root, a runtime file that another user could change is refused
//!   (it would run that user's code in the process), unless forced.
//!
//! A loaded runtime stays: it is never unloaded (a later trigger or revert
//! uses it, and `ulp patches` lists the process from then on).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ulp_abi::errors;
use ulp_process::{Mapping, Pid, RemoteAddr, SIGRETURN_CODE};

use crate::caller;
use crate::error::{Context, Error};
use crate::objects::objects_from_maps;
use crate::reason::Reason;
use crate::runtime::{Runtime, RuntimeError};
use crate::trigger::{self, Options, Outcome};

/// `RTLD_NOW` from <dlfcn.h>.
const RTLD_NOW: u64 = 2;
/// `__RTLD_DLOPEN`: what glibc's own `dlopen` adds when it calls
/// `__libc_dlopen_mode` (needed by that older entry point).
const RTLD_DLOPEN: u64 = 0x8000_0000;

/// The Debian multiarch triple of the platform this ulp was built for
/// (`x86_64-linux-gnu`...): where a distribution package puts the runtime
/// (`/usr/lib/<triple>/libpulp.so.0`). `None` on a platform without one.
pub const MULTIARCH: Option<&str> = multiarch();

const fn multiarch() -> Option<&'static str> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    if cfg!(all(target_arch = "x86_64", target_pointer_width = "64")) {
        Some("x86_64-linux-gnu")
    } else if cfg!(target_arch = "x86_64") {
        Some("x86_64-linux-gnux32")
    } else if cfg!(target_arch = "x86") {
        Some("i386-linux-gnu")
    } else if cfg!(target_arch = "aarch64") {
        Some("aarch64-linux-gnu")
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        Some("powerpc64le-linux-gnu")
    } else if cfg!(target_arch = "riscv64") {
        Some("riscv64-linux-gnu")
    } else if cfg!(target_arch = "s390x") {
        Some("s390x-linux-gnu")
    } else {
        None
    }
}

/// The runtime file found next to the `ulp` executable, in this order:
/// the `make install` layout (`PREFIX/bin/ulp`, `PREFIX/lib/libpulp.so.0`),
/// the Debian package's multiarch layout (`/usr/bin/ulp`,
/// `/usr/lib/x86_64-linux-gnu/libpulp.so.0`), or the build directory
/// (`target/release/ulp`, `target/release/libpulp.so`). Relative to the
/// executable, so an unpacked package tree works too.
pub fn default_runtime() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    runtime_candidates(dir)
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// Where [`default_runtime`] looks, for an executable in `dir`.
pub fn runtime_candidates(dir: &Path) -> Vec<PathBuf> {
    let mut c = vec![dir.join("../lib/libpulp.so.0")];
    if let Some(triple) = MULTIARCH {
        c.push(dir.join("../lib").join(triple).join("libpulp.so.0"));
    }
    c.push(dir.join("libpulp.so.0"));
    c.push(dir.join("libpulp.so"));
    c
}

/// Checks that `path` is a runtime this ulp can talk to (it exports the
/// interface and the entry point) and, as root, that nobody else can
/// change it. Run once per `ulp` run, before any process is touched.
pub fn check_runtime_file(path: &Path, check_trust: bool) -> Result<(), Error> {
    if check_trust {
        crate::trust::check(path)?;
    }
    let elf = ulp_elf::ElfFile::open_sections(path, &[".dynsym", ".dynstr"])
        .context(|| format!("cannot use '{}' as the runtime", path.display()))?;
    for sym in [ulp_abi::INTERFACE_SYMBOL, ulp_abi::ENTRY_SYMBOL] {
        if elf.dynamic_symbol(sym).is_none() {
            return Err(Error::refused(format!(
                "'{}' is not the ulp runtime (it does not export {sym})",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Why the runtime must not be loaded into `pid`: the opt-out its
/// environment carries (`LIBPULP_DISABLE_ON_*`), as a sentence.
pub fn opted_out(pid: Pid) -> Result<Option<String>, Error> {
    let environ = ulp_process::environ(pid)
        .context(|| format!("cannot read the environment of process {pid}"))?;
    let var = |name: &str| -> Option<Vec<u8>> {
        environ.split(|&b| b == 0).find_map(|entry| {
            let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            Some(value.to_vec())
        })
    };
    let ids = ulp_process::credentials(pid);
    let found = ulp_abi::optout::check_with(
        var,
        || {
            ulp_process::exe(pid).map(|p| {
                let p = p.as_os_str().as_bytes();
                p.strip_suffix(b" (deleted)").unwrap_or(p).to_vec()
            })
        },
        || ids.uids.first().copied().unwrap_or(u32::MAX),
        || {
            let mut gids = ids.gids.iter().copied().take(1).collect::<Vec<_>>();
            for &g in &ids.groups {
                if !gids.contains(&g) {
                    gids.push(g);
                }
            }
            gids
        },
        &ulp_abi::optout::Lookups::LIBC,
    );
    Ok(found.map(|o| {
        format!(
            "live patching disabled by the process's environment: '{}' matches {} pattern '{}'",
            String::from_utf8_lossy(&o.subject),
            o.variable,
            String::from_utf8_lossy(&o.pattern)
        )
    }))
}

/// The runtime of `pid`, loading `file` into it first when it has none.
/// `Outcome::Skipped` when the process opted out; `Outcome::Failed` with
/// the reason when it cannot be loaded (the process is unchanged then).
///
/// A process that exits meanwhile is SKIPPED (`process exited`), as in a
/// trigger.
pub fn ensure_runtime(pid: Pid, file: &Path, opts: &Options) -> Result<Runtime, Outcome> {
    let life = ulp_process::Incarnation::of(pid);
    load_runtime(&life, file, opts).map_err(|o| crate::trigger::unless_exited(&life, o))
}

fn load_runtime(
    life: &ulp_process::Incarnation,
    file: &Path,
    opts: &Options,
) -> Result<Runtime, Outcome> {
    let pid = life.pid;
    match Runtime::find(pid) {
        Ok(rt) => return Ok(rt),
        Err(RuntimeError::NotLoaded) => {}
        // A runtime that is there but cannot be used now (starting,
        // another protocol) is never joined by a second one.
        Err(e) => return Err(Outcome::Failed(Reason::new(e.error(), e.to_string()))),
    }
    let failed = |error| move |e: Error| Outcome::Failed(Reason::new(error, e.to_string()));
    if let Some(why) = opted_out(pid).map_err(failed(errors::ETARGETHOOK))? {
        return Err(Outcome::Skipped(Reason::new(errors::EUSRBLOCKED, why)));
    }
    load(life, file, opts).map_err(failed(errors::EDLOPEN))?;
    match Runtime::find(pid) {
        Ok(rt) => Ok(rt),
        Err(RuntimeError::NotLoaded) => Err(Outcome::Failed(Reason::new(
            errors::EDLOPEN,
            format!(
            "the process could not load the runtime '{}' (dlopen failed inside it: is the file \
             readable by the process's user, and built for its C library?)",
            file.display()
        ),
        ))),
        Err(e) => Err(Outcome::Failed(Reason::new(
            errors::EINITFAIL,
            format!("loaded the runtime, but cannot use it: {e}"),
        ))),
    }
}

/// Where, in the process, the call starts and returns.
struct Entry {
    /// `dlopen`, or glibc's older `__libc_dlopen_mode`.
    dlopen: RemoteAddr,
    mode: u64,
    /// A `mov $15, %rax; syscall` of the C library.
    sigreturn: RemoteAddr,
}

/// Loads `file` into `pid` with one remote `dlopen` (see the module
/// documentation). Returns when the call is over, whether it loaded the
/// runtime or not.
fn load(life: &ulp_process::Incarnation, file: &Path, opts: &Options) -> Result<(), Error> {
    let pid = life.pid;
    let deadline = Instant::now() + opts.timeout;
    let maps = ulp_process::maps(pid)?;
    let entry = entry_points(pid, &maps)?;
    let inside = path_in_process(pid, file, opts)?;
    let mut data = inside.into_bytes();
    data.push(0);

    let (mut stopped, tid) =
        caller::find_caller(life, deadline, opts.seize(), opts.retries, None, false)?;
    let mut resume_path = || {
        let rt = Runtime::find(pid).ok()?;
        trigger::return_path(&rt).ok()
    };
    let called = stopped.caller(tid).call_sigreturn(
        entry.dlopen,
        &data,
        &[entry.mode],
        entry.sigreturn,
        &mut resume_path,
        deadline,
    );
    let released = stopped.release();
    called.context(|| "loading the runtime")?;
    Ok(released?)
}

/// The path of `file` as the process sees it (`-R PREFIX`: PREFIX + its
/// real path, as for a patch), after checking that the process would open
/// that very file.
fn path_in_process(pid: Pid, file: &Path, opts: &Options) -> Result<String, Error> {
    let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let inside = PathBuf::from(crate::trigger::with_prefix(opts, &real.to_string_lossy()));
    let ours = std::fs::metadata(file)
        .context(|| format!("cannot read the runtime '{}'", file.display()))?;
    // Through a thread that runs on when the process's leader has exited
    // (its root link is gone then).
    let seen = std::fs::metadata(ulp_process::in_root(pid, &inside)).or_else(|e| {
        match ulp_process::stand_in(pid) {
            Some(t) => std::fs::metadata(ulp_process::in_root(t, &inside)),
            None => Err(e),
        }
    });
    match seen {
        Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => {}
        _ => {
            return Err(Error::refused(format!(
                "the process does not see the runtime at '{}' (it runs in another root or mount \
                 namespace): use -R for a chroot, or put a copy where it can see it and name it \
                 with --runtime",
                inside.display()
            )))
        }
    }
    inside.to_str().map(str::to_string).ok_or_else(|| {
        Error::refused(format!(
            "the runtime path '{}' is not UTF-8",
            inside.display()
        ))
    })
}

/// `dlopen` and a signal restorer in the process's C library.
fn entry_points(pid: Pid, maps: &[Mapping]) -> Result<Entry, Error> {
    let objects = objects_from_maps(maps);
    let libc = objects
        .iter()
        .find(|o| o.basename().starts_with("libc.so"))
        .ok_or_else(|| {
            Error::refused(format!(
                "process {pid} does not use the GNU C library's libc.so (statically linked?): \
                 the runtime cannot be loaded into it"
            ))
        })?;
    let elf = libc
        .open_sections(pid, &[".dynsym", ".dynstr"])
        .context(|| format!("reading the C library of process {pid}"))?;
    let (dlopen, mode) = if let Some(s) = elf.dynamic_symbol("dlopen") {
        (RemoteAddr::new(libc.bias + s.value), RTLD_NOW)
    } else if let Some(s) = elf.dynamic_symbol("__libc_dlopen_mode") {
        (RemoteAddr::new(libc.bias + s.value), RTLD_NOW | RTLD_DLOPEN)
    } else {
        return Err(Error::refused(format!(
            "the C library of process {pid} ('{}') has no dlopen",
            libc.path
        )));
    };
    let sigreturn = sigreturn_in(pid, maps, libc)?;
    Ok(Entry {
        dlopen,
        mode,
        sigreturn,
    })
}

/// [`sigreturn_in`]'s offsets of [`SIGRETURN_CODE`] in C library files.
static SIGRETURN_OFFSETS: ulp_process::PerFile<Option<u64>> = ulp_process::PerFile::new();

/// The address of [`SIGRETURN_CODE`] in an executable mapping of `obj`:
/// found in the file once per (device, inode) and kept, and checked in the
/// process's memory before it is used. A file of the same device and
/// inode can be another build (an inode number is reused once its file is
/// gone, which a long `ulp watch` may meet after two upgrades of the C
/// library): a kept offset that does not lead to the sequence sends the
/// tool back to the file, and one that still does not is refused, never
/// called.
fn sigreturn_in(
    pid: Pid,
    maps: &[Mapping],
    obj: &crate::objects::MappedObject,
) -> Result<RemoteAddr, Error> {
    let exec: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.is_executable() && m.inode == obj.inode && m.dev == obj.dev)
        .collect();
    // Where `offset` of the file is mapped, when a mapping holds the whole
    // sequence there.
    let mapped_at = |offset: u64| {
        exec.iter()
            .find(|m| {
                m.offset <= offset
                    && offset + SIGRETURN_CODE.len() as u64 <= m.offset + (m.end - m.start)
            })
            .map(|m| m.start + (offset - m.offset))
    };
    let holds_sequence = |at: RemoteAddr| {
        let mut b = [0u8; SIGRETURN_CODE.len()];
        ulp_process::read_mem(pid, at, &mut b).is_ok() && b == SIGRETURN_CODE
    };
    if let Some(Some(offset)) = SIGRETURN_OFFSETS.get(obj.dev, obj.inode) {
        if let Some(at) = mapped_at(offset).filter(|&at| holds_sequence(at)) {
            return Ok(at);
        }
    }
    let path = ulp_process::in_root(pid, &obj.path);
    let bytes = std::fs::read(&path)
        .or_else(|_| std::fs::read(&obj.path))
        .context(|| format!("reading '{}'", obj.path))?;
    // Searched in the file's own code segments, not in what the process
    // has mapped: a process caught while the loader maps its C library has
    // no code of it mapped yet, and must read as busy, not as a C library
    // without the sequence.
    let file = ulp_elf::ElfFile::parse(Path::new(&obj.path), bytes)
        .context(|| format!("reading '{}'", obj.path))?;
    let offset = file.executable_segments().find_map(|(start, code)| {
        code.windows(SIGRETURN_CODE.len())
            .position(|w| w == SIGRETURN_CODE)
            .map(|at| start + at as u64)
    });
    SIGRETURN_OFFSETS.put(obj.dev, obj.inode, offset);
    let offset = offset.ok_or_else(|| {
        Error::refused(format!(
            "no rt_sigreturn sequence in '{}' (not the GNU C library?): the runtime cannot be \
             loaded safely into process {pid}",
            obj.path
        ))
    })?;
    let Some(at) = mapped_at(offset) else {
        // The loader maps a library's whole extent first and its code
        // over it next: a process caught in between is starting, not
        // broken ("busy": a watch tries it again).
        return Err(Error::refused(format!(
            "process {pid} is busy: its C library's code is not mapped (yet): the loader \
             is still mapping it, or the process is exiting; retry later"
        )));
    };
    if !holds_sequence(at) {
        return Err(Error::refused(format!(
            "the C library process {pid} has mapped is not the file '{}' now (replaced in \
             place?): the runtime cannot be loaded safely into it",
            obj.path
        )));
    }
    Ok(at)
}

#[cfg(test)]
mod runtime_location_tests {
    use super::*;

    /// This test program: its pid, its maps and its C library.
    fn own_libc() -> Option<(Pid, Vec<Mapping>, crate::objects::MappedObject)> {
        let pid = Pid::new(std::process::id() as i32);
        let maps = ulp_process::maps(pid).unwrap();
        let libc = crate::objects::objects_from_maps(&maps)
            .into_iter()
            .find(|o| o.basename().starts_with("libc.so"))?;
        Some((pid, maps, libc))
    }

    /// A kept offset that does not lead to the sequence in the process
    /// (another build of the C library under the same device and inode)
    /// is found again in the file; the address given always holds it.
    #[test]
    fn a_stale_sigreturn_offset_is_found_again_in_the_file() {
        let Some((pid, maps, libc)) = own_libc() else {
            eprintln!("skipped: this test program has no libc.so mapped");
            return;
        };
        let libc = &libc;
        let good = sigreturn_in(pid, &maps, libc).unwrap();
        let offset = SIGRETURN_OFFSETS
            .get(libc.dev, libc.inode)
            .unwrap()
            .unwrap();
        for stale in [Some(offset + 1), Some(0), None] {
            SIGRETURN_OFFSETS.put(libc.dev, libc.inode, stale);
            assert_eq!(sigreturn_in(pid, &maps, libc).unwrap(), good, "{stale:?}");
            assert_eq!(
                SIGRETURN_OFFSETS.get(libc.dev, libc.inode),
                Some(Some(offset)),
                "mended"
            );
        }
    }

    /// A process whose loader has mapped the C library's extent but not
    /// yet its code (the maps between the loader's two mmaps, taken from
    /// this process's own with the code mapping left out) is busy, so a
    /// watch tries it again; it was once refused as a C library without
    /// the sequence. Once the code is there, the address is found.
    #[test]
    fn a_c_library_whose_code_is_not_mapped_yet_is_busy() {
        let Some((pid, maps, libc)) = own_libc() else {
            eprintln!("skipped: this test program has no libc.so mapped");
            return;
        };
        let libc = &libc;
        let loading: Vec<Mapping> = maps
            .iter()
            .filter(|m| !(m.is_executable() && m.inode == libc.inode && m.dev == libc.dev))
            .cloned()
            .collect();
        assert!(
            loading.len() < maps.len(),
            "the C library has a code mapping"
        );
        for _ in 0..2 {
            let e = sigreturn_in(pid, &loading, libc).unwrap_err().to_string();
            assert!(e.contains(&format!("process {pid} is busy")), "{e}");
        }
        let at = sigreturn_in(pid, &maps, libc).unwrap();
        let mut b = [0u8; SIGRETURN_CODE.len()];
        ulp_process::read_mem(pid, at, &mut b).unwrap();
        assert_eq!(b, SIGRETURN_CODE);
    }

    #[test]
    fn the_runtime_is_looked_for_in_the_install_package_and_build_layouts() {
        let c = runtime_candidates(Path::new("/p/bin"));
        let mut want = vec![PathBuf::from("/p/bin/../lib/libpulp.so.0")];
        if let Some(t) = MULTIARCH {
            want.push(PathBuf::from(format!("/p/bin/../lib/{t}/libpulp.so.0")));
        }
        want.push(PathBuf::from("/p/bin/libpulp.so.0"));
        want.push(PathBuf::from("/p/bin/libpulp.so"));
        assert_eq!(c, want);
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        assert_eq!(MULTIARCH, Some("x86_64-linux-gnu"));
    }
}

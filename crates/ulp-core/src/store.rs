//! The patch store: live-patch containers recorded to stay (issue 18,
//! "patches that stay"). `ulp trigger --persist` records each container
//! it applies, and removes the records of what it reverts; `ulp patches
//! --stored` lists them. (Applying the records at process start and
//! `ulp watch` come later.)
//!
//! Layout: one directory per record in the store directory (default
//! [`DEFAULT_DIR`], else `ULP_STORE`, else `--store DIR`), named by the
//! container's patch id in hex (what the runtime tells containers apart
//! by), holding a copy of the container under its original file name and
//! [`METADATA`], a JSON object ([`Record`]).
//!
//! Atomicity: a record is built whole in a temporary directory of the
//! store (a name starting with `.`), its files written and fsynced, the
//! temporary directory fsynced, then renamed to its final name (swapped
//! with the old record by `renameat2(RENAME_EXCHANGE)` when there is one)
//! and the store directory fsynced. Removing renames the record to a
//! temporary name first. A crash leaves either the old or the new record,
//! and at worst a temporary entry, which readers ignore. A record whose
//! files are missing or do not parse is reported as corrupt with the
//! reason, never trusted.
//!
//! As root, the store directory (and every directory above it) must be
//! root's and not writable by group or others ([`trust`]'s rule); so must
//! each record's files, else the record is listed as corrupt.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};
use ulp_abi::hex::hex;
use ulp_container::container::Container;

use crate::trust;

pub use ulp_abi::store::{DEFAULT_DIR, ENV, FORMAT, METADATA};

/// The store directory: `--store DIR`, else `ULP_STORE`, else the default.
pub fn resolve(option: Option<&str>) -> PathBuf {
    if let Some(d) = option {
        return PathBuf::from(d);
    }
    match std::env::var_os(ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// A record's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The container's file name in the record directory.
    pub container: String,
    /// The target library's name, as the container gives it.
    pub target: String,
    /// The target's build id, hex.
    pub build_id: String,
    /// The container's patch id, hex (the record directory's name).
    pub patch_id: String,
    /// The container file's own build id, hex, when it has one.
    pub container_build_id: Option<String>,
    /// Where the container was recorded from (absolute, links not
    /// resolved).
    pub original_path: String,
    /// RFC 3339, UTC.
    pub recorded_at: String,
    /// The ulp that recorded it.
    pub ulp_version: String,
}

impl Record {
    /// The record of `container`, recorded now.
    pub fn of(container: &Container, original_path: &Path) -> Record {
        let m = &container.metadata;
        Record {
            container: file_name(original_path),
            target: m.target_name.clone(),
            build_id: hex(&m.build_id),
            patch_id: hex(&m.patch_id),
            container_build_id: container.build_id.as_deref().map(hex),
            original_path: absolute(original_path).to_string_lossy().into_owned(),
            recorded_at: rfc3339(now()),
            ulp_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "format": FORMAT,
            "container": self.container,
            "target": self.target,
            "build_id": self.build_id,
            "patch_id": self.patch_id,
            "container_build_id": self.container_build_id,
            "original_path": self.original_path,
            "recorded_at": self.recorded_at,
            "ulp_version": self.ulp_version,
        })
    }

    /// Parses a metadata file's text; the error says which field is wrong.
    pub fn parse(text: &str) -> Result<Record, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("metadata is not valid JSON ({e})"))?;
        let s = |k: &str| -> Result<String, String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("metadata has no text field '{k}'"))
        };
        match v.get("format").and_then(Value::as_u64) {
            Some(FORMAT) => {}
            Some(n) => return Err(format!("metadata format {n} is not known to this ulp")),
            None => return Err("metadata has no field 'format'".into()),
        }
        let container = s("container")?;
        if container.is_empty() || container.contains('/') || container.starts_with('.') {
            return Err(format!(
                "metadata names an invalid container file '{container}'"
            ));
        }
        let patch_id = s("patch_id")?;
        if patch_id.is_empty() || !patch_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("metadata has an invalid patch_id '{patch_id}'"));
        }
        Ok(Record {
            container,
            target: s("target")?,
            build_id: s("build_id")?,
            patch_id,
            container_build_id: v
                .get("container_build_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            original_path: s("original_path")?,
            recorded_at: s("recorded_at")?,
            ulp_version: s("ulp_version")?,
        })
    }

    /// Whether `lib` (`--revert-all=LIB`) names this record's target: by
    /// the rule of [`ulp_abi::names::names_object`], the record's target
    /// name being the basename or SONAME of the library LIB names (a path
    /// LIB: its basename, or the SONAME of the file there).
    pub fn targets(&self, lib: &str) -> bool {
        let target = self.target.as_bytes();
        if lib.contains('/') {
            let soname = soname_of(Path::new(lib));
            ulp_abi::names::names_object(target, lib.as_bytes(), || {
                soname.as_deref().map(str::as_bytes)
            })
        } else {
            ulp_abi::names::names_object(lib.as_bytes(), target, || None)
        }
    }
}

fn soname_of(path: &Path) -> Option<String> {
    ulp_elf::ElfFile::open(path).ok()?.soname()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "container.so".into())
}

/// Seconds since the epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: i64) -> String {
    ulp_abi::time::Rfc3339(ulp_abi::time::civil(secs)).to_string()
}

/// A record found in the store.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The record directory.
    pub dir: PathBuf,
    pub record: Record,
}

impl Stored {
    /// The container copy.
    pub fn container_path(&self) -> PathBuf {
        self.dir.join(&self.record.container)
    }
}

/// A record that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    pub path: PathBuf,
    pub reason: String,
}

/// What the store holds.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// By patch id.
    pub records: Vec<Stored>,
    /// By path.
    pub corrupt: Vec<Corrupt>,
}

/// Why the store cannot be used. Displays as a sentence that says what
/// to do.
#[derive(Debug)]
pub enum StoreError {
    /// As root: another user could change the store.
    Untrusted(PathBuf, trust::Untrusted),
    /// An I/O failure on `path`, doing `what`.
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Untrusted(dir, u) => write!(
                f,
                "refusing the patch store '{}' as root: {}; fix it or choose another store \
                 with --store DIR (--force does not apply to the store)",
                dir.display(),
                u.problem()
            ),
            StoreError::Io { what, path, error } => write!(
                f,
                "cannot {what} '{}' in the patch store: {error}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |error| StoreError::Io {
        what,
        path: path.to_path_buf(),
        error,
    }
}

/// The patch store at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    pub dir: PathBuf,
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// As root, whether the store may be used: the directory, or while it
    /// does not exist the nearest directory above it that does (where it
    /// will be created), passes [`trust::check`]. Not as root: always.
    pub fn check_trust(&self) -> Result<(), StoreError> {
        if !trust::running_as_root() {
            return Ok(());
        }
        let mut at = absolute(&self.dir);
        while fs::symlink_metadata(&at).is_err() {
            if !at.pop() {
                break;
            }
        }
        trust::check(&at).map_err(|u| StoreError::Untrusted(self.dir.clone(), u))
    }

    /// Creates the store directory (0755; its missing parents too) when it
    /// does not exist.
    fn create(&self) -> Result<(), StoreError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(io_err("create the directory", &self.dir))
    }

    /// A fresh temporary name in the store (readers ignore it).
    fn temp_path(&self, tag: &str) -> PathBuf {
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.dir
            .join(format!(".tmp-{tag}-{}-{nanos}-{n}", std::process::id()))
    }

    /// Records `container` (read from `original`): a copy of the file and
    /// its metadata, atomically (module comment); an earlier record of the
    /// same patch is replaced. Checks the store's trust first.
    pub fn record(&self, container: &Container, original: &Path) -> Result<Stored, StoreError> {
        self.check_trust()?;
        self.create()?;
        self.check_trust()?;
        let bytes = fs::read(original).map_err(io_err("read the container", original))?;
        let record = Record::of(container, original);
        let final_dir = self.dir.join(&record.patch_id);
        let tmp = self.temp_path("new");
        let build = || -> Result<(), StoreError> {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&tmp)
                .map_err(io_err("create the directory", &tmp))?;
            write_synced(&tmp.join(&record.container), &bytes, 0o644)?;
            let mut text =
                serde_json::to_string_pretty(&record.to_json()).expect("a JSON value serializes");
            text.push('\n');
            write_synced(&tmp.join(METADATA), text.as_bytes(), 0o644)?;
            sync_dir(&tmp)?;
            if fs::symlink_metadata(&final_dir).is_ok() {
                exchange(&tmp, &final_dir)?;
                sync_dir(&self.dir)?;
                // `tmp` now holds the old record.
                let _ = fs::remove_dir_all(&tmp);
            } else {
                fs::rename(&tmp, &final_dir).map_err(io_err("rename into place", &tmp))?;
            }
            sync_dir(&self.dir)
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Stored {
            dir: final_dir,
            record,
        })
    }

    /// Removes the record of patch id `patch_id` (hex), if there is one:
    /// `Ok(Some(dir))` removed, `Ok(None)` there was none.
    pub fn remove(&self, patch_id: &str) -> Result<Option<PathBuf>, StoreError> {
        let dir = self.dir.join(patch_id);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(None);
        }
        self.check_trust()?;
        let tmp = self.temp_path("old");
        fs::rename(&dir, &tmp).map_err(io_err("remove the record", &dir))?;
        sync_dir(&self.dir)?;
        let _ = fs::remove_dir_all(&tmp);
        Ok(Some(dir))
    }

    /// Every record and corrupt record. A store that does not exist is
    /// empty; one that cannot be read (or, as root, is not trusted) is an
    /// error.
    pub fn list(&self) -> Result<Listing, StoreError> {
        let mut out = Listing::default();
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(StoreError::Io {
                    what: "read the directory",
                    path: self.dir.clone(),
                    error: e,
                })
            }
            Ok(entries) => entries,
        };
        self.check_trust()?;
        for entry in entries {
            let entry = entry.map_err(io_err("read the directory", &self.dir))?;
            let name = entry.file_name();
            if name.as_bytes().starts_with(b".") {
                // A temporary entry: a record being written or removed.
                continue;
            }
            let path = entry.path();
            match read_record(&path) {
                Ok(record) => out.records.push(Stored { dir: path, record }),
                Err(reason) => out.corrupt.push(Corrupt { path, reason }),
            }
        }
        out.records
            .sort_by(|a, b| a.record.patch_id.cmp(&b.record.patch_id));
        out.corrupt.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// Reads one record directory, or says why it is corrupt.
fn read_record(dir: &Path) -> Result<Record, String> {
    let as_root = trust::running_as_root();
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("cannot examine it ({e})"))?;
    if !meta.is_dir() {
        return Err("not a record directory (a stray file in the store)".into());
    }
    if as_root {
        trusted_entry(trust::Kind::Directory, &meta)?;
    }
    let mpath = dir.join(METADATA);
    let mmeta = fs::symlink_metadata(&mpath)
        .map_err(|e| format!("its metadata file {METADATA} is missing or unreadable ({e})"))?;
    if !mmeta.is_file() {
        return Err(format!("{METADATA} is not a regular file"));
    }
    if as_root {
        trusted_entry(trust::Kind::File, &mmeta)?;
    }
    let bytes =
        fs::read(&mpath).map_err(|e| format!("cannot read its metadata file {METADATA} ({e})"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| "metadata is not valid JSON (not UTF-8 text)".to_string())?;
    let record = Record::parse(&text)?;
    let named = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    if named.as_deref() != Some(record.patch_id.as_str()) {
        return Err(format!(
            "its metadata is for patch id {}, not the directory's name",
            record.patch_id
        ));
    }
    let cpath = dir.join(&record.container);
    let cmeta = fs::symlink_metadata(&cpath)
        .map_err(|e| format!("its container copy '{}' is missing ({e})", record.container))?;
    if !cmeta.is_file() {
        return Err(format!(
            "its container copy '{}' is not a regular file",
            record.container
        ));
    }
    if as_root {
        trusted_entry(trust::Kind::File, &cmeta)?;
    }
    Ok(record)
}

/// The trust rule for one entry of a record.
fn trusted_entry(kind: trust::Kind, meta: &fs::Metadata) -> Result<(), String> {
    match trust::judge(kind, meta.uid(), meta.mode()) {
        None => Ok(()),
        Some((Some(uid), _)) => Err(format!(
            "untrusted: owned by uid {uid}, not root (another user could change it)"
        )),
        Some((None, mode)) => Err(format!(
            "untrusted: writable by group or others (mode {:04o})",
            mode.unwrap_or(0) & 0o7777
        )),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Writes a new file, fsynced.
fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory", dir))
}

/// Swaps two directory entries atomically.
fn exchange(a: &Path, b: &Path) -> Result<(), StoreError> {
    let ca = CString::new(a.as_os_str().as_bytes()).expect("a path has no NUL");
    let cb = CString::new(b.as_os_str().as_bytes()).expect("a path has no NUL");
    // SAFETY: both are NUL-terminated paths; AT_FDCWD resolves them as
    // given.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(StoreError::Io {
            what: "replace the record",
            path: b.to_path_buf(),
            error: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            container: "fix.so".into(),
            target: "libfoo.so.1".into(),
            build_id: "abcd".into(),
            patch_id: "00ff".into(),
            container_build_id: Some("1234".into()),
            original_path: "/srv/fix.so".into(),
            recorded_at: rfc3339(1_795_865_400),
            ulp_version: "0.1.0".into(),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(r.recorded_at, "2026-11-28T11:30:00Z");
        let text = serde_json::to_string(&r.to_json()).unwrap();
        assert_eq!(Record::parse(&text), Ok(r.clone()));
        let none = Record {
            container_build_id: None,
            ..r
        };
        let text = serde_json::to_string(&none.to_json()).unwrap();
        assert_eq!(Record::parse(&text), Ok(none));
    }

    #[test]
    fn bad_metadata_says_why() {
        let text = serde_json::to_string(&sample().to_json()).unwrap();
        let e = Record::parse(&text[..text.len() / 2]).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = Record::parse("garbage\u{1}").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let mut v = sample().to_json();
        v.as_object_mut().unwrap().remove("target");
        let e = Record::parse(&v.to_string()).unwrap_err();
        assert!(e.contains("'target'"), "{e}");
        let mut v = sample().to_json();
        v["format"] = json!(99);
        let e = Record::parse(&v.to_string()).unwrap_err();
        assert!(e.contains("format 99"), "{e}");
        let mut v = sample().to_json();
        v["container"] = json!("../etc/passwd");
        assert!(Record::parse(&v.to_string()).is_err());
        let mut v = sample().to_json();
        v["patch_id"] = json!("../x");
        assert!(Record::parse(&v.to_string()).is_err());
    }

    #[test]
    fn targets_by_name_or_path() {
        let r = sample();
        assert!(r.targets("libfoo.so.1"));
        assert!(!r.targets("libfoo.so"));
        assert!(r.targets("/usr/lib/libfoo.so.1"));
        assert!(!r.targets("/usr/lib/libbar.so.1"));
    }

    #[test]
    fn resolve_precedence() {
        assert_eq!(resolve(Some("/x")), PathBuf::from("/x"));
    }

    #[test]
    fn record_replaces_whole_and_leaves_no_temporaries() {
        use ulp_container::format::Metadata;
        let dir = std::env::temp_dir().join(format!("ulp-store-rec-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("fix.so");
        let c = Container {
            path: src.clone(),
            metadata: Metadata {
                patch_id: [0xab; ulp_container::format::PATCH_ID_LEN],
                build_id: vec![1, 2, 3],
                target_name: "libfoo.so.1".into(),
                units: Vec::new(),
                refs: Vec::new(),
            },
            revert: None,
            comments: None,
            build_id: None,
            resolved: Default::default(),
        };
        let store = Store::new(dir.join("store"));
        for content in [&b"first"[..], b"second"] {
            fs::write(&src, content).unwrap();
            let s = store.record(&c, &src).unwrap();
            assert_eq!(fs::read(s.container_path()).unwrap(), content);
            assert_eq!(s.dir, store.dir.join("ab".repeat(32)));
            assert_eq!(s.record.build_id, "010203");
            assert_eq!(s.record.container_build_id, None);
        }
        // One record, no temporary left behind.
        let names: Vec<_> = fs::read_dir(&store.dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        let l = store.list().unwrap();
        assert_eq!((l.records.len(), l.corrupt.len()), (1, 0));
        assert_eq!(l.records[0].record.original_path, src.to_str().unwrap());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn listing_ignores_temporaries_and_reports_corrupt() {
        let dir = std::env::temp_dir().join(format!("ulp-store-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        assert!(store.list().unwrap().records.is_empty(), "missing: empty");
        fs::create_dir_all(dir.join(".tmp-new-1")).unwrap();
        let good = dir.join("00ff");
        fs::create_dir_all(&good).unwrap();
        fs::write(good.join("fix.so"), b"x").unwrap();
        let text = serde_json::to_string(&sample().to_json()).unwrap();
        fs::write(good.join(METADATA), &text).unwrap();
        let bad = dir.join("0011");
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join(METADATA), &text[..10]).unwrap();
        let l = store.list().unwrap();
        assert_eq!(l.records.len(), 1);
        assert_eq!(l.records[0].container_path(), good.join("fix.so"));
        assert_eq!(l.corrupt.len(), 1);
        assert!(l.corrupt[0].reason.contains("not valid JSON"), "{l:?}");
        fs::remove_file(good.join("fix.so")).unwrap();
        let l = store.list().unwrap();
        assert!(
            l.corrupt.iter().any(|c| c.reason.contains("missing")),
            "{l:?}"
        );
        assert_eq!(store.remove("00ff").unwrap(), Some(good.clone()));
        assert!(!good.exists());
        assert_eq!(store.remove("00ff").unwrap(), None);
        let _ = fs::remove_dir_all(&dir);
    }
}

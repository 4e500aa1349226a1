//! Replacing a file in place, whole or not at all: what [`crate::post`]
//! and [`crate::replace_sections`] end with.

use std::io;
use std::path::{Path, PathBuf};

use crate::Error;

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new file: write a temporary file in the same directory, give it the
/// original's owner and permissions, fsync it, rename it over the
/// original, fsync the directory. A symbolic link (the SONAME link a
/// distribution installs, `libfoo.so.1 -> libfoo.so.1.2.3`) stays a link:
/// the file it leads to is the one replaced.
pub(crate) fn replace_file(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let path = &std::fs::canonicalize(path).map_err(|e| Error::io(path, "cannot resolve", e))?;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot stat", e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{base}.ulp-tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        let mine = f.metadata()?;
        if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        }
        // After the owner: a change of owner clears set-id bits.
        f.set_permissions(meta.permissions())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; failure here does not undo it.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            path,
            &format!(
                "cannot replace the file (temporary file '{}' in the same directory)",
                tmp.display()
            ),
            e,
        )
    })
}

//! Reading a packed live-patch container: its `.ulp`, `.ulp.rev` and
//! `.ulp.comments` sections and its own build-id.

use std::fmt;
use std::path::{Path, PathBuf};

use ulp_elf::ElfFile;

use crate::format::{bug_labels, decode_comments, DecodeError, Metadata, RevertMetadata};

/// A live-patch container as read from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub path: PathBuf,
    /// The `.ulp` section.
    pub metadata: Metadata,
    /// The `.ulp.rev` section, when there is one.
    pub revert: Option<RevertMetadata>,
    /// The raw `.ulp.comments` section, when there is one.
    pub comments: Option<Vec<u8>>,
    /// The container's own GNU build-id.
    pub build_id: Option<Vec<u8>>,
    /// [`Container::real_path`], once found.
    pub resolved: Resolved,
}

/// A container's path made absolute with every symbolic link resolved,
/// found on first use and kept with the container: a fleet hands the same
/// path to the runtime of every process (two system calls each
/// otherwise). Not part of the container's value: any two compare equal.
#[derive(Clone, Debug, Default)]
pub struct Resolved(std::sync::OnceLock<Result<PathBuf, String>>);

impl PartialEq for Resolved {
    fn eq(&self, _: &Resolved) -> bool {
        true
    }
}

impl Eq for Resolved {}

impl Container {
    /// The path made absolute with every symbolic link resolved
    /// (`realpath`), as found the first time it is asked; the error's text
    /// when it cannot be.
    pub fn real_path(&self) -> Result<&Path, &str> {
        self.resolved
            .0
            .get_or_init(|| std::fs::canonicalize(&self.path).map_err(|e| e.to_string()))
            .as_deref()
            .map_err(String::as_str)
    }

    /// The comment text (up to its NUL), empty without `.ulp.comments`.
    pub fn comment_text(&self) -> String {
        self.comments
            .as_deref()
            .map(decode_comments)
            .unwrap_or_default()
    }

    /// The bug labels (`CVE-…`, `bsc#…`, …) found in the comments.
    pub fn bug_labels(&self) -> Vec<String> {
        bug_labels(&self.comment_text())
    }
}

/// What kind of file failed to read as a container.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unreadable, or not an ELF file we can parse (see the message).
    Elf,
    /// A valid ELF file without a `.ulp` section.
    NotPacked,
    /// A `.ulp` or `.ulp.rev` section that does not decode.
    Corrupt,
}

/// Why a container could not be read. Displays as `'PATH': MESSAGE`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

fn corrupt(path: &Path, section: &str, e: DecodeError) -> Error {
    Error {
        kind: ErrorKind::Corrupt,
        message: format!("'{}': corrupt {section} section: {e}", path.display()),
        source: Some(Box::new(e)),
    }
}

/// Reads the container at `path`.
pub fn read(path: &Path) -> Result<Container, Error> {
    let elf = ElfFile::open(path).map_err(|e| Error {
        kind: ErrorKind::Elf,
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    from_elf(&elf)
}

/// Reads the container sections of an already parsed ELF file.
pub fn from_elf(elf: &ElfFile) -> Result<Container, Error> {
    let path = elf.path();
    let ulp = elf.section(".ulp").ok_or_else(|| Error {
        kind: ErrorKind::NotPacked,
        message: format!(
            "'{}': no .ulp section: is it a live patch packed with `ulp packer`?",
            path.display()
        ),
        source: None,
    })?;
    let metadata = Metadata::decode(ulp).map_err(|e| corrupt(path, ".ulp", e))?;
    let revert = elf
        .section(".ulp.rev")
        .map(RevertMetadata::decode)
        .transpose()
        .map_err(|e| corrupt(path, ".ulp.rev", e))?;
    Ok(Container {
        path: path.to_path_buf(),
        metadata,
        revert,
        comments: elf.section(".ulp.comments").map(<[u8]>::to_vec),
        build_id: elf.build_id(),
        resolved: Resolved::default(),
    })
}

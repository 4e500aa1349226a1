//! The one error type of this crate: which file, what kind of failure
//! (for callers that act on it), and a message that names the field or
//! table at fault.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, for callers that act on the kind of failure.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read or written.
    Io,
    /// The file is not an ELF file at all.
    NotElf,
    /// An ELF file, but not x86-64 ELF64 little-endian.
    Unsupported,
    /// An ELF file whose headers or tables are inconsistent or truncated.
    Malformed,
    /// A section the operation needs is not there.
    MissingSection,
}

/// An error about one file. Displays as `'PATH': MESSAGE`.
#[derive(Debug)]
pub struct Error {
    path: PathBuf,
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    pub(crate) fn new(path: &Path, kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            path: path.to_path_buf(),
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(path: &Path, what: &str, err: io::Error) -> Error {
        Error {
            path: path.to_path_buf(),
            kind: ErrorKind::Io,
            message: format!("{what}: {err}"),
            source: Some(err),
        }
    }

    pub(crate) fn malformed(path: &Path, message: impl Into<String>) -> Error {
        Error::new(path, ErrorKind::Malformed, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The message without the path (for callers that name the file
    /// themselves, e.g. "file 'X' is not livepatchable: MESSAGE").
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}': {}", self.path.display(), self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

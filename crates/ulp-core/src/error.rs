//! The error of what `ulp-core` does, typed at its seams: a failure of
//! the crate below (a process, an ELF file, a container, a file, the
//! runtime, the trust check), a fact that rules the operation out (in
//! ulp's words), and what ulp was doing when it happened.
//!
//! Its text is what the user reads: each variant prints exactly the
//! sentence the operation has always printed. Where an error becomes the
//! detail of a skip or a failure, it is turned into a [`crate::Reason`]
//! with libpulp's error number; the caller picks the number, since the
//! same failure means different things to different operations.

use std::fmt;
use std::io;

use crate::runtime::RuntimeError;
use crate::trust::Untrusted;

/// Why an operation of `ulp-core` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Looking at or controlling a process failed.
    Process(ulp_process::Error),
    /// Reading the process's runtime failed (not loaded, a bad interface).
    Runtime(RuntimeError),
    /// An ELF file could not be read.
    Elf(ulp_elf::Error),
    /// A live patch container could not be read.
    Container(ulp_container::container::Error),
    /// A file could not be read.
    Io(io::Error),
    /// As root, a file another user could change.
    Untrusted(Untrusted),
    /// The process or the file rules the operation out: ulp's sentence.
    Refused(String),
    /// One of the others, with what ulp was doing: `CONTEXT: ERROR`.
    Context { context: String, source: Box<Error> },
}

impl Error {
    /// A refusal in ulp's words.
    pub fn refused(why: impl Into<String>) -> Error {
        Error::Refused(why.into())
    }

    /// This error, said after what ulp was doing (`CONTEXT: ERROR`).
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The process error underneath, if this is one (through any context).
    pub fn process(&self) -> Option<&ulp_process::Error> {
        match self {
            Error::Process(e) | Error::Runtime(RuntimeError::Process(e)) => Some(e),
            Error::Context { source, .. } => source.process(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Process(e) => e.fmt(f),
            Error::Runtime(e) => e.fmt(f),
            Error::Elf(e) => e.fmt(f),
            Error::Container(e) => e.fmt(f),
            Error::Io(e) => e.fmt(f),
            Error::Untrusted(e) => e.fmt(f),
            Error::Refused(why) => f.write_str(why),
            Error::Context { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Process(e) => Some(e),
            Error::Runtime(e) => Some(e),
            Error::Elf(e) => Some(e),
            Error::Container(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Untrusted(e) => Some(e),
            Error::Refused(_) => None,
            Error::Context { source, .. } => Some(source.as_ref()),
        }
    }
}

/// `?` turns each failure below into its variant.
macro_rules! wrap {
    ($($from:ty => $variant:ident),* $(,)?) => {
        $(impl From<$from> for Error {
            fn from(e: $from) -> Error {
                Error::$variant(e)
            }
        })*
    };
}

wrap! {
    ulp_process::Error => Process,
    RuntimeError => Runtime,
    ulp_elf::Error => Elf,
    ulp_container::container::Error => Container,
    io::Error => Io,
    Untrusted => Untrusted,
}

/// [`Error::context`] on a result whose error converts into [`Error`].
pub trait Context<T> {
    /// The error, said after `context()` (computed only on failure).
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Error> {
        self.map_err(|e| e.into().context(context()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_as_the_sentences_were() {
        let gone = Error::from(ulp_process::Error::Gone {
            pid: crate::Pid::new(7),
            tid: None,
        });
        assert_eq!(
            gone.to_string(),
            "process 7 exited (or does not exist); check the pid"
        );
        assert!(gone.process().is_some_and(|e| e.is_gone()));
        let io = io::Error::from_raw_os_error(libc::ENOENT);
        let read: Result<(), _> = Err(io);
        let e = read.context(|| "reading '/x'").unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading '/x': No such file or directory (os error 2)"
        );
        assert!(e.process().is_none());
        assert_eq!(Error::refused("no dlopen").to_string(), "no dlopen");
        let nested = gone.context("loading the runtime");
        assert!(nested.process().is_some());
        assert_eq!(
            nested.to_string(),
            "loading the runtime: process 7 exited (or does not exist); check the pid"
        );
    }
}

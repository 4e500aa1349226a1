//! Why an operation did not change a process: one of libpulp's errors
//! (its number and phrase, [`ulp_abi::errors`]) and ulp's own detail.

use std::fmt;

use ulp_abi::errors::{self, UlpError};

/// A skip or failure reason: libpulp's error, then ulp's detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub error: UlpError,
    /// ulp's words about this case (may be empty).
    pub detail: String,
}

impl Reason {
    pub fn new(error: UlpError, detail: impl Into<String>) -> Reason {
        Reason {
            error,
            detail: detail.into(),
        }
    }

    /// The error alone, no detail.
    pub fn bare(error: UlpError) -> Reason {
        Reason::new(error, String::new())
    }

    /// A failure libpulp has no specific error for.
    pub fn unknown(detail: impl Into<String>) -> Reason {
        Reason::new(errors::EUNKNOWN, detail)
    }

    /// The exit status of a run that failed for this reason.
    pub fn exit_code(&self) -> u8 {
        self.error.exit_code()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.error.phrase)
        } else {
            f.write_str(&self.detail)
        }
    }
}

//! Why an operation did not change a process: one of libpulp's errors
//! (its number and phrase, [`ulp_abi::errors`]) and ulp's own detail.

use std::fmt;

use ulp_abi::errors::{self, UlpError};

/// A skip or failure reason: libpulp's error, then ulp's detail. Shown as
/// `PHRASE: DETAIL` (just `PHRASE` without a detail).
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
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // libpulp's phrase first (what a libpulp user's scripts look for),
        // then ulp's detail; a detail that already begins with the phrase
        // is not preceded by it twice.
        let phrase = self.error.phrase;
        let detail = self.detail.as_str();
        match detail.get(..phrase.len()) {
            _ if detail.is_empty() => f.write_str(phrase),
            // The detail starts with the phrase (in any case): the phrase
            // as libpulp writes it, then the rest of the detail.
            Some(head) if head.eq_ignore_ascii_case(phrase) => {
                write!(f, "{phrase}{}", &detail[phrase.len()..])
            }
            _ => write!(f, "{phrase}: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_phrase_then_detail() {
        let r = Reason::new(errors::EDLOPEN, "cannot open x.so");
        assert_eq!(r.to_string(), "Failure in dlopen: cannot open x.so");
        assert_eq!(
            Reason::bare(errors::ENOPATCH).to_string(),
            "No patches installed"
        );
        let same = Reason::new(errors::EAPPLIED, "Patch already applied: p.so");
        assert_eq!(same.to_string(), "Patch already applied: p.so");
        let case = Reason::new(errors::EBUILDID, "build id mismatch: 'l' has 01");
        assert_eq!(case.to_string(), "Build ID mismatch: 'l' has 01");
        assert_eq!(r.error.exit_code(), 31);
    }
}

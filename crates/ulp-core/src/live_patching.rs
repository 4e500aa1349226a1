//! A process's *live-patching state* (enabled, or disabled by its user or
//! by the tool: whether it accepts live patches at all), and `ulp
//! set_patchable`, which switches it. Not to be confused with a function's
//! *redirect method* (`ulp_x86::Method`), which says how one function of
//! an enabled process is patched (ARCHITECTURE.md, glossary).
//!
//! The runtime keeps one word, `Interface::state`, in writable memory:
//! `ENABLED`, `DISABLED_BY_USER` (a `LIBPULP_DISABLE_ON_*` pattern matched
//! at start; set by the runtime itself) or `DISABLED_BY_TOOL` (set by `ulp
//! set_patchable disable`). The tool changes it with one aligned 4-byte
//! write through process memory, without stopping the process; the runtime
//! reads it at the start of every APPLY.
//!
//! Policy: `enable` never overrides the user's opt-out. A process disabled
//! by `LIBPULP_DISABLE_ON_*` stays disabled, and `enable` reports it as a
//! failure. `disable` of such a process changes nothing and succeeds (it
//! already refuses patches).

use std::fmt;

use ulp_abi::{offset, state};

use crate::runtime::Runtime;

/// The live-patching state of a process, as its runtime publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivePatching {
    Enabled,
    /// `LIBPULP_DISABLE_ON_*` matched when the process started.
    DisabledByUser,
    /// Switched off by `ulp set_patchable disable`.
    DisabledByTool,
    /// Switched off by the runtime after an internal error (its ring says
    /// which): for good.
    DisabledByError,
    /// A value this ulp does not know.
    Unknown(u32),
}

impl LivePatching {
    pub fn from_raw(raw: u32) -> LivePatching {
        match raw {
            state::ENABLED => LivePatching::Enabled,
            state::DISABLED_BY_USER => LivePatching::DisabledByUser,
            state::DISABLED_BY_TOOL => LivePatching::DisabledByTool,
            state::DISABLED_BY_ERROR => LivePatching::DisabledByError,
            other => LivePatching::Unknown(other),
        }
    }

    /// A stable identifier for JSON output: `enabled`, `disabled_by_user`,
    /// `disabled_by_tool` or `unknown`.
    pub fn key(self) -> &'static str {
        match self {
            LivePatching::Enabled => "enabled",
            LivePatching::DisabledByUser => "disabled_by_user",
            LivePatching::DisabledByTool => "disabled_by_tool",
            LivePatching::DisabledByError => "disabled_by_error",
            LivePatching::Unknown(_) => "unknown",
        }
    }
}

/// The `Livepatching status:` text of `ulp patches` (COMPAT.md:
/// `enabled | disabled by user | disabled (<reason>)`).
impl fmt::Display for LivePatching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LivePatching::Enabled => f.write_str("enabled"),
            LivePatching::DisabledByUser => f.write_str("disabled by user"),
            // libpulp says the same for both: its set_patchable sets the
            // user's state.
            LivePatching::DisabledByTool => f.write_str("disabled by user"),
            LivePatching::DisabledByError => {
                f.write_str("disabled (internal error of the runtime: see ulp messages)")
            }
            LivePatching::Unknown(v) => write!(f, "disabled (unknown state {v})"),
        }
    }
}

/// What `set_patchable` did in one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub before: LivePatching,
    pub after: LivePatching,
}

impl Change {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// Why `set_patchable` did not change a process.
#[derive(Debug)]
pub enum SetError {
    /// `enable` of a process whose user opted out at start.
    DisabledByUser,
    /// `enable` of a process whose runtime switched itself off after an
    /// internal error.
    DisabledByError,
    /// The state word holds a value this ulp does not know.
    UnknownState(u32),
    Process(ulp_process::Error),
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::DisabledByUser => f.write_str(
                "live patching was disabled by user (LIBPULP_DISABLE_ON_PATH/USERS/GROUPS \
                 matched when the process started); ulp does not override that",
            ),
            SetError::DisabledByError => f.write_str(
                "live patching was switched off by the runtime after an internal error (see \
                 `ulp messages`); a patch it was applying may be half recorded, so ulp does not \
                 switch it on again: restart the process",
            ),
            SetError::UnknownState(v) => write!(
                f,
                "the runtime's state is {v}, which this ulp does not know; left unchanged"
            ),
            SetError::Process(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SetError {}

impl From<ulp_process::Error> for SetError {
    fn from(e: ulp_process::Error) -> Self {
        SetError::Process(e)
    }
}

/// The state of the runtime `rt`.
pub fn get(rt: &Runtime) -> Result<LivePatching, ulp_process::Error> {
    Ok(LivePatching::from_raw(rt.state()?))
}

/// Switches live patching on (`enable`) or off in the process of `rt`
/// (see the module comment for the policy).
pub fn set(rt: &Runtime, enable: bool) -> Result<Change, SetError> {
    let before = get(rt)?;
    let after = match (before, enable) {
        (LivePatching::Unknown(v), _) => return Err(SetError::UnknownState(v)),
        (LivePatching::DisabledByUser, true) => return Err(SetError::DisabledByUser),
        (LivePatching::DisabledByUser, false) => LivePatching::DisabledByUser,
        (LivePatching::DisabledByError, true) => return Err(SetError::DisabledByError),
        (LivePatching::DisabledByError, false) => LivePatching::DisabledByError,
        (_, true) => LivePatching::Enabled,
        (_, false) => LivePatching::DisabledByTool,
    };
    if after != before {
        let raw = match after {
            LivePatching::Enabled => state::ENABLED,
            _ => state::DISABLED_BY_TOOL,
        };
        ulp_process::write_mem(
            rt.pid,
            rt.interface + offset::STATE as u64,
            &raw.to_le_bytes(),
        )?;
    }
    Ok(Change { before, after })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(LivePatching::from_raw(0).to_string(), "enabled");
        assert_eq!(LivePatching::from_raw(1).to_string(), "disabled by user");
        assert_eq!(LivePatching::from_raw(2).to_string(), "disabled by user");
        assert_eq!(LivePatching::from_raw(9), LivePatching::Unknown(9));
        assert_eq!(LivePatching::from_raw(2).key(), "disabled_by_tool");
    }
}

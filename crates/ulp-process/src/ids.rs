//! Process and thread ids as types, so a pid is not taken for a tid (or
//! for any other number) at the seams between crates.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

/// A process id (thread-group id). Prints (`Display` and `Debug`) as the
/// bare number, as the `i32` it replaces did.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(i32);

/// A thread id (as in /proc/PID/task). Prints (`Display` and `Debug`) as
/// the bare number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid(i32);

impl Pid {
    /// The pid with this number.
    pub const fn new(raw: i32) -> Pid {
        Pid(raw)
    }

    /// The number, as the kernel's system calls take it.
    pub const fn get(self) -> i32 {
        self.0
    }

    /// The process's main thread, whose tid is the pid.
    pub const fn main_thread(self) -> Tid {
        Tid(self.0)
    }

    /// The pid of this (calling) process.
    pub fn this() -> Pid {
        Pid(std::process::id() as i32)
    }
}

impl Tid {
    /// The tid with this number.
    pub const fn new(raw: i32) -> Tid {
        Tid(raw)
    }

    /// The number, as the kernel's system calls take it.
    pub const fn get(self) -> i32 {
        self.0
    }

    /// The main thread of `pid` (its tid is the pid).
    pub const fn main_of(pid: Pid) -> Tid {
        Tid(pid.0)
    }

    /// Whether this is the main thread of `pid`.
    pub const fn is_main_of(self, pid: Pid) -> bool {
        self.0 == pid.0
    }
}

impl From<i32> for Pid {
    fn from(raw: i32) -> Pid {
        Pid(raw)
    }
}

impl From<Pid> for i32 {
    fn from(pid: Pid) -> i32 {
        pid.0
    }
}

impl From<i32> for Tid {
    fn from(raw: i32) -> Tid {
        Tid(raw)
    }
}

impl From<Tid> for i32 {
    fn from(tid: Tid) -> i32 {
        tid.0
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Debug for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for Pid {
    type Err = ParseIntError;
    fn from_str(s: &str) -> Result<Pid, ParseIntError> {
        s.parse().map(Pid)
    }
}

impl FromStr for Tid {
    type Err = ParseIntError;
    fn from_str(s: &str) -> Result<Tid, ParseIntError> {
        s.parse().map(Tid)
    }
}

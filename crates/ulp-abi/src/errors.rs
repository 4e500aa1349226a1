//! libpulp's error numbers and their phrases (libpulp 0.3.x,
//! `error_common.h`), the words a libpulp user's scripts look for.
//!
//! A reason that ulp prints starts with the phrase of one of these errors,
//! then ulp's own detail after `": "`. A failed `ulp trigger` exits with the
//! error's number masked to 8 bits, as libpulp does (a dlopen failure, 287,
//! exits 31). Numbers below 256 are errno values in libpulp: ulp does not
//! use them here.

/// One libpulp error: its number and its phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UlpError {
    pub number: u16,
    pub phrase: &'static str,
}

impl UlpError {
    /// The exit status libpulp's `ulp` uses for this error: the number
    /// masked to 8 bits.
    pub const fn exit_code(self) -> u8 {
        (self.number & 0xff) as u8
    }
}

macro_rules! table {
    ($($name:ident = $num:literal, $phrase:literal;)*) => {
        $(
            #[doc = $phrase]
            pub const $name: UlpError = UlpError { number: $num, phrase: $phrase };
        )*
        /// Every error of the table, in number order.
        pub const ALL: &[UlpError] = &[$($name),*];
    };
}

table! {
    EUNKNOWN = 256, "Unknown error";
    EBUILDID = 257, "Build ID mismatch";
    ETARGETHOOK = 258, "Error attaching to process";
    ENODEBUGTAG = 259, "Process without debug tag";
    ENOLINKMAP = 260, "No link map in object";
    ENOPHDR = 261, "Invalid program header";
    ENOPENTRY = 262, "Unable to find process entry address";
    ENOLIBPULP = 263, "Libpulp not found in target process";
    ETHRDATTACH = 264, "Thread attach failure";
    ETHRDDETTACH = 265, "Thread dettach failure";
    EINVALIDULP = 266, "Invalid .ulp file";
    ENOOLDFUNC = 267, "To be patched function not found";
    ENONEWFUNC = 268, "New function not found";
    ENOMETA = 269, "No metadata in .so";
    ESTATE = 270, "State update failure";
    ENOSTATE = 271, "Unable to retrieve ulp state";
    ENOTAPPLIED = 272, "Patch not applied";
    EDEPEND = 273, "Dependency failure";
    ENOADDRESS = 274, "Address read error";
    EAPPLIED = 275, "Patch already applied";
    ENOTARGETLIB = 276, "Target library not loaded";
    EHOOKNOTRUN = 277, "libpulp.so hook routine not run";
    ENOPATCHABLE = 278, "Function is not livepatchable";
    EWILDNOMATCH = 279, "No file matched wildcard";
    EUSRBLOCKED = 280, "Livepatching blocked by user request";
    EOLDLIBPULP = 281, "Libpulp version is too old";
    EINITFAIL = 282, "Libpulp initialization failure";
    MPROTFAIL = 283, "Page permission error";
    ENOPATCH = 284, "No patches installed";
    EINSNQ = 285, "Instruction queue in inconsistent state";
    EOLDULP = 286, "ULP tool is too old";
    EDLOPEN = 287, "Failure in dlopen";
    ENOLIBDL = 288, "Libdl not found.";
    ENOLIBC = 289, "Libc not found or unsupported.";
}

/// The error with this number, if the table has it.
pub fn by_number(number: u16) -> Option<UlpError> {
    ALL.iter().copied().find(|e| e.number == number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_consecutive_and_exit_codes_masked() {
        for (i, e) in ALL.iter().enumerate() {
            assert_eq!(e.number as usize, 256 + i, "{}", e.phrase);
        }
        assert_eq!(EDLOPEN.exit_code(), 31);
        assert_eq!(ENOLIBPULP.exit_code(), 7);
        assert_eq!(by_number(284), Some(ENOPATCH));
        assert_eq!(by_number(12), None);
    }
}

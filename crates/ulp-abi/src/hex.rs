//! Byte strings as lowercase hexadecimal: how every build-id and patch id
//! is shown, by the tool (text and JSON) and by the runtime (its messages).

/// Lowercase hexadecimal of a byte string, two digits a byte, no
/// separator. Writes as it formats: the runtime uses it without
/// allocating.
pub struct Hex<'a>(pub &'a [u8]);

impl core::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// [`Hex`] as a string.
pub fn hex(bytes: &[u8]) -> alloc::string::String {
    use alloc::string::ToString;
    Hex(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[0, 0xab, 0x0f, 0xff]), "00ab0fff");
        assert_eq!(hex(&[]), "");
    }
}

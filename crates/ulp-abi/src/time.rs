//! The date formats of ulp, from seconds since the Unix epoch, UTC: the
//! one shared by the runtime (the timestamps of its message log) and the
//! tool (`ulp patches`), `YYYY-MM-DD HH:MM:SS`; and RFC 3339
//! (`YYYY-MM-DDTHH:MM:SSZ`, [`Rfc3339`]) for the patch store's records. No
//! allocation, so the runtime formats into a fixed line buffer.

use core::fmt;

/// A UTC date and time split from epoch seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Howard Hinnant's `civil_from_days`, proleptic Gregorian calendar.
pub fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
    }
}

/// `YYYY-MM-DD HH:MM:SS`.
impl fmt::Display for Civil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub Civil);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats into a stack buffer (the crate has no `alloc`).
    struct Buf {
        b: [u8; 32],
        n: usize,
    }

    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.n + s.len();
            self.b
                .get_mut(self.n..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.n = end;
            Ok(())
        }
    }

    #[test]
    fn civil_dates() {
        use fmt::Write as _;
        let table = [
            (0, "1970-01-01 00:00:00"),
            (951_782_400, "2000-02-29 00:00:00"),
            (1_709_251_199, "2024-02-29 23:59:59"),
            (1_795_865_400, "2026-11-28 11:30:00"),
            (4_102_444_800, "2100-01-01 00:00:00"),
            (-1, "1969-12-31 23:59:59"),
        ];
        for (secs, want) in table {
            let mut b = Buf { b: [0; 32], n: 0 };
            write!(b, "{}", civil(secs)).unwrap();
            assert_eq!(core::str::from_utf8(&b.b[..b.n]).unwrap(), want, "{secs}");
        }
    }
}

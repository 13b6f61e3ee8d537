//! Event-time instants. The engine never reads a clock: every instant comes from an
//! event, from the shell's watermark, or from the command line.

use std::fmt;

/// Milliseconds per second, minute, hour and day.
pub const SECOND_MS: i64 = 1_000;
/// Milliseconds in one day.
pub const DAY_MS: i64 = 86_400 * SECOND_MS;

/// An instant in event time: milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 timestamp with an offset (`2026-03-01T10:15:00Z`).
    ///
    /// The usual shape (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`) is read directly,
    /// since this runs once per event; anything else (lowercase `t`/`z`, a space for
    /// `T`, leap seconds) goes to chrono, which also has the last word on what is
    /// invalid. A property test holds the two to the same answers.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        fast_rfc3339(s.as_bytes()).or_else(|| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| Timestamp(d.timestamp_millis()))
        })
    }

    /// Formats as RFC 3339 in UTC with second precision, or millisecond precision when
    /// the instant has a fraction (`2026-03-01T10:15:00Z`, `2026-03-01T10:15:00.250Z`).
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// Whole days (fractional) between two instants.
    pub fn days_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0) as f64 / DAY_MS as f64
    }

    /// This instant plus `days` (fractional) days.
    pub fn plus_days(self, days: f64) -> Timestamp {
        Timestamp(self.0.saturating_add((days * DAY_MS as f64) as i64))
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// The common RFC 3339 shape, or `None` to let chrono decide.
fn fast_rfc3339(b: &[u8]) -> Option<Timestamp> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &b[start..i];
        if frac.is_empty() || frac.len() > 9 {
            return None;
        }
        let mut ms = 0;
        for k in 0..3 {
            ms = ms * 10 + frac.get(k).map_or(0, |c| i64::from(c - b'0'));
        }
        millis = ms;
    }
    let offset_min = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = digits(&[*oh1, *oh2])?;
            let om = digits(&[*om1, *om2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 60 + om;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + sec - offset_min * 60;
    Some(Timestamp(secs * 1_000 + millis))
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(d) if self.0 % 1000 == 0 => {
                write!(f, "{}", d.format("%Y-%m-%dT%H:%M:%SZ"))
            }
            Some(d) => write!(f, "{}", d.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            None => write!(f, "{}ms", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_the_instant_and_normalises_to_utc() {
        let t = Timestamp::parse_rfc3339("2026-03-01T11:15:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-01T10:15:00Z");
        let t = Timestamp::parse_rfc3339("2026-03-01T10:15:00.250Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-01T10:15:00.250Z");
    }

    proptest::proptest! {
        /// The fast path and chrono agree on every timestamp of the common shape...
        #[test]
        fn fast_path_agrees_with_chrono_on_valid_timestamps(
            secs in -2_000_000_000i64..8_000_000_000,
            millis in 0i64..1000,
            frac_digits in 0usize..10,
            offset_min in -1439i64..1440,
        ) {
            let d = chrono::DateTime::from_timestamp(secs, (millis * 1_000_000) as u32).unwrap();
            let tz = chrono::FixedOffset::east_opt((offset_min * 60) as i32).unwrap();
            let local = d.with_timezone(&tz);
            let mut text = local.format("%Y-%m-%dT%H:%M:%S").to_string();
            if frac_digits > 0 {
                let frac = format!("{:09}", millis * 1_000_000);
                text.push('.');
                text.push_str(&frac[..frac_digits]);
            }
            text.push_str(&if offset_min == 0 { "Z".to_string() } else { local.format("%:z").to_string() });
            let slow = chrono::DateTime::parse_from_rfc3339(&text).ok().map(|d| Timestamp(d.timestamp_millis()));
            proptest::prop_assert_eq!(fast_rfc3339(text.as_bytes()), slow, "{}", text);
        }

        /// ...and never accepts what chrono rejects.
        #[test]
        fn fast_path_accepts_nothing_chrono_rejects(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?(Z|[+-][0-9]{2}:[0-9]{2}|z|)") {
            if let Some(fast) = fast_rfc3339(text.as_bytes()) {
                let slow = chrono::DateTime::parse_from_rfc3339(&text).ok().map(|d| Timestamp(d.timestamp_millis()));
                proptest::prop_assert_eq!(Some(fast), slow, "{}", text);
            }
        }
    }

    #[test]
    fn unusual_but_valid_forms_still_parse() {
        let a = Timestamp::parse_rfc3339("2026-03-01T10:15:00Z").unwrap();
        assert_eq!(Timestamp::parse_rfc3339("2026-03-01t10:15:00z"), Some(a));
        assert_eq!(Timestamp::parse_rfc3339("2026-03-01 10:15:00Z"), Some(a));
        assert!(
            Timestamp::parse_rfc3339("2026-02-29T10:15:00Z").is_none(),
            "not a leap year"
        );
        assert!(Timestamp::parse_rfc3339("2028-02-29T10:15:00Z").is_some());
    }

    #[test]
    fn timestamps_without_offset_are_rejected() {
        assert!(Timestamp::parse_rfc3339("2026-03-01T10:15:00").is_none());
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }
}

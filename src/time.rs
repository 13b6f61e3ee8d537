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
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| Timestamp(d.timestamp_millis()))
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

    #[test]
    fn timestamps_without_offset_are_rejected() {
        assert!(Timestamp::parse_rfc3339("2026-03-01T10:15:00").is_none());
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }
}

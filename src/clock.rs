//! Time in the forms the agent uses: now, in nanoseconds or milliseconds since the epoch, and RFC 3339 text
//! to and from nanoseconds.
//!
//! A leaf: it imports nothing of the crate, and everyone may import it.
//!
//! Invariants:
//! - Nothing here panics on a clock before 1970 or past 2262 (the end of `i64` nanoseconds): `now_ms` is 0
//!   before the epoch and `now_ns` saturates at `i64::MAX`.
//! - `parse_rfc3339_ns(&format_rfc3339_ns(ns)) == Some(ns)` for every representable instant.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 with any sub-second precision, to integer nanoseconds since the epoch.
pub fn parse_rfc3339_ns(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()?
        .timestamp_nanos_opt()
}

/// Integer nanoseconds to RFC 3339 UTC with as many fractional digits as needed (JumpCloud accepts it).
pub fn format_rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_every_precision() {
        for ns in [
            0,
            1,
            1_000,
            1_000_000,
            1_700_000_000_123_456_789,
            -1_500_000_000,
        ] {
            let text = format_rfc3339_ns(ns);
            assert_eq!(parse_rfc3339_ns(&text), Some(ns), "{text}");
        }
        assert_eq!(format_rfc3339_ns(1_000_000), "1970-01-01T00:00:00.001Z");
    }

    #[test]
    fn timestamps_of_every_precision() {
        assert_eq!(
            parse_rfc3339_ns("1970-01-01T00:00:01Z"),
            Some(1_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00.000000001Z"), Some(1));
        assert_eq!(parse_rfc3339_ns("yesterday"), None);
        assert_eq!(format_rfc3339_ns(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn offsets_are_honoured_and_garbage_refused() {
        assert_eq!(
            parse_rfc3339_ns("1970-01-01T01:00:00+01:00"),
            Some(0),
            "an offset moves the instant"
        );
        assert_eq!(parse_rfc3339_ns("yesterday"), None);
        assert_eq!(parse_rfc3339_ns(""), None);
    }

    #[test]
    fn now_agrees_in_both_units() {
        let ms = now_ms();
        let ns = now_ns();
        assert!(ms > 1_600_000_000_000, "the clock is after 2020");
        assert!((ns / 1_000_000 - ms as i64).abs() < 60_000);
    }
}

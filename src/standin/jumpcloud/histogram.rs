//! `POST /insights/directory/v1/events/interval`: how many events a query selects per time bucket, answered
//! the way Elasticsearch's `date_histogram` answers (`min_doc_count` 0, no `extended_bounds`).
//!
//! Invariants it keeps:
//! - the events counted are exactly those `/events/count` counts for the same body (one selection,
//!   `query::selected`), so the `doc_count`s always add up to that count;
//! - buckets are aligned in UTC: seconds, minutes, hours and days on multiples of their width since the
//!   epoch, weeks on Mondays 00:00 (as Elasticsearch's calendar week); `key` is the bucket's start in epoch
//!   milliseconds and `key_as_string` the same instant as `2026-11-29T12:00:00.000Z`;
//! - buckets ascend and are consecutive from the first non-empty one to the last non-empty one (empty ones
//!   in between are listed with `doc_count` 0), and there are at most `MAX_BUCKETS` of them: a request that
//!   would make more is refused with 400, as Elasticsearch refuses it with `too_many_buckets_exception`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::SystemTime;

use chrono::DateTime;
use serde_json::{Map, Value};

use super::query::{bad_request, selected, Query, Refusal, SortKey, Stored};

/// Elasticsearch's default `search.max_buckets`.
const MAX_BUCKETS: i128 = 65_536;

/// The units `interval_unit` accepts, with their width in milliseconds.
const UNITS: &[(&str, i64)] = &[
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// 1970-01-05T00:00:00Z, the first Monday after the epoch: where week buckets are aligned.
const FIRST_MONDAY_MS: i64 = 4 * 86_400_000;

/// The bucket layout of an interval request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Interval {
    /// Bucket width in milliseconds (at least 1000).
    width_ms: i64,
    /// A bucket starts at `origin_ms + k * width_ms` for some integer k.
    origin_ms: i64,
}

/// Reads `interval_unit` (one of `s m h d w`) and `interval_value` (a positive integer, written as a string)
/// from a request body.
pub(super) fn parse_interval(object: &Map<String, Value>) -> Result<Interval, Refusal> {
    let valid = || {
        UNITS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (unit, unit_ms) = match object.get("interval_unit") {
        None | Some(Value::Null) => return Err(bad_request("interval_unit is required")),
        Some(Value::String(text)) => match UNITS.iter().find(|(name, _)| name == text) {
            Some(&(name, ms)) => (name, ms),
            None => {
                return Err(bad_request(format!(
                    "invalid interval_unit {text:?}; valid: {}",
                    valid()
                )))
            }
        },
        Some(other) => {
            return Err(bad_request(format!(
                "invalid interval_unit {other}; valid: {}",
                valid()
            )))
        }
    };
    let value = match object.get("interval_value") {
        None | Some(Value::Null) => return Err(bad_request("interval_value is required")),
        Some(Value::String(text)) => match text.parse::<i64>() {
            Ok(value) if value >= 1 => value,
            _ => {
                return Err(bad_request(format!(
                    "interval_value {text:?} is not a positive integer"
                )))
            }
        },
        Some(_) => {
            return Err(bad_request(
                "interval_value must be a string holding a positive integer",
            ))
        }
    };
    let width_ms = value
        .checked_mul(unit_ms)
        .ok_or_else(|| bad_request("interval_value is too large"))?;
    let origin_ms = if unit == "w" { FIRST_MONDAY_MS } else { 0 };
    Ok(Interval {
        width_ms,
        origin_ms,
    })
}

impl Interval {
    /// The start of the bucket holding `ms`. Computed in i128: `ms - origin` rounded down to a multiple of a
    /// huge width can leave the i64 range.
    fn bucket_of(self, ms: i64) -> i128 {
        let (ms, origin, width) = (
            i128::from(ms),
            i128::from(self.origin_ms),
            i128::from(self.width_ms),
        );
        origin + (ms - origin).div_euclid(width) * width
    }
}

/// The JSON body answering an interval request: `{"buckets":[{"key":..,"key_as_string":..,"doc_count":..}]}`.
pub(super) fn histogram(
    events: &BTreeMap<SortKey, Stored>,
    query: &Query,
    interval: Interval,
    now: SystemTime,
) -> Result<String, Refusal> {
    // Non-empty buckets in ascending order: the selection ascends by millisecond.
    let mut filled: Vec<(i128, u64)> = Vec::new();
    for ((ms, _), _) in selected(events, query, now, false) {
        let start = interval.bucket_of(*ms);
        match filled.last_mut() {
            Some((last, count)) if *last == start => *count += 1,
            _ => filled.push((start, 1)),
        }
    }
    let width = i128::from(interval.width_ms);
    if let (Some((first, _)), Some((last, _))) = (filled.first(), filled.last()) {
        let buckets = (last - first) / width + 1;
        if buckets > MAX_BUCKETS {
            return Err(bad_request(format!(
                "too many buckets: {buckets} (at most {MAX_BUCKETS}); use a larger interval or a shorter range"
            )));
        }
    }

    let mut body = String::from("{\"buckets\":[");
    let mut filled = filled.into_iter().peekable();
    let mut next_start = filled.peek().map(|(start, _)| *start);
    while let Some(start) = next_start {
        let count = match filled.peek() {
            Some((at, count)) if *at == start => {
                let count = *count;
                filled.next();
                count
            }
            _ => 0,
        };
        if !body.ends_with('[') {
            body.push(',');
        }
        let _ = write!(
            body,
            "{{\"key\":{start},\"key_as_string\":\"{}\",\"doc_count\":{count}}}",
            key_as_string(start)
        );
        next_start = filled.peek().map(|_| start + width);
    }
    body.push_str("]}");
    Ok(body)
}

/// A bucket start as Elasticsearch's default date format writes it: `2026-11-29T12:00:00.000Z`.
fn key_as_string(ms: i128) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        // Only reachable with a start thousands of years away, which no stored event has.
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(unit: &str, value: &str) -> Result<Interval, Refusal> {
        let body = serde_json::json!({"interval_unit": unit, "interval_value": value});
        parse_interval(body.as_object().unwrap())
    }

    #[test]
    fn buckets_align_on_the_unit_in_utc() {
        // 2026-11-29T12:34:56.789Z is a Sunday.
        let ms = 1_795_955_696_789;
        let start = |unit, value| interval(unit, value).unwrap().bucket_of(ms);
        let text = |start| key_as_string(start);
        assert_eq!(text(start("s", "1")), "2026-11-29T12:34:56.000Z");
        assert_eq!(text(start("s", "10")), "2026-11-29T12:34:50.000Z");
        assert_eq!(text(start("m", "1")), "2026-11-29T12:34:00.000Z");
        assert_eq!(text(start("m", "15")), "2026-11-29T12:30:00.000Z");
        assert_eq!(text(start("h", "1")), "2026-11-29T12:00:00.000Z");
        assert_eq!(text(start("d", "1")), "2026-11-29T00:00:00.000Z");
        assert_eq!(
            text(start("w", "1")),
            "2026-11-23T00:00:00.000Z",
            "a Monday"
        );
        assert_eq!(start("h", "1"), 1_795_953_600_000);
        // Before the epoch too.
        let before = interval("d", "1").unwrap().bucket_of(-1);
        assert_eq!(key_as_string(before), "1969-12-31T00:00:00.000Z");
    }

    #[test]
    fn refuses_bad_units_and_values() {
        for (unit, value, needle) in [
            (
                "y",
                "1",
                "invalid interval_unit \"y\"; valid: s, m, h, d, w",
            ),
            ("H", "1", "invalid interval_unit"),
            ("h", "0", "not a positive integer"),
            ("h", "-2", "not a positive integer"),
            ("h", "1.5", "not a positive integer"),
            ("h", "", "not a positive integer"),
            ("w", "99999999999999999", "too large"),
        ] {
            let (status, message) = interval(unit, value).unwrap_err();
            assert_eq!(status, http::StatusCode::BAD_REQUEST);
            assert!(message.contains(needle), "{unit} {value}: {message}");
        }
        let missing = serde_json::json!({"interval_value": "1"});
        assert!(parse_interval(missing.as_object().unwrap())
            .unwrap_err()
            .1
            .contains("interval_unit is required"));
        let number = serde_json::json!({"interval_unit": "h", "interval_value": 1});
        assert!(parse_interval(number.as_object().unwrap())
            .unwrap_err()
            .1
            .contains("must be a string"));
    }
}

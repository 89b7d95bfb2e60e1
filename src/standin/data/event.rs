//! One Directory Insights event as the API stand-in stores and serves it, and reading the fields it needs
//! (`timestamp`, `service`) out of a raw JSON text.
//!
//! Invariants it keeps: `raw` is never rewritten (the stand-in serves it byte for byte), and
//! `timestamp_ns` is the instant the text's `timestamp` says, at whatever precision it is written.

use std::time::SystemTime;

use chrono::DateTime;
use serde::Deserialize;

/// One event as the stand-in serves it.
#[derive(Clone, Debug)]
pub struct ApiEvent {
    /// The JSON text served, byte for byte.
    pub raw: String,
    /// The event's `timestamp`, in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The event's `service`, used to filter.
    pub service: String,
    /// Until this moment the event is not served at all (imitates late indexing); `None`: visible at once.
    pub visible_at: Option<SystemTime>,
}

impl ApiEvent {
    /// Reads `timestamp` (RFC 3339, any precision) and `service` from the raw JSON text; visible_at None.
    pub fn from_raw(raw: impl Into<String>) -> Result<ApiEvent, String> {
        #[derive(Deserialize)]
        struct Fields {
            timestamp: Option<String>,
            service: Option<String>,
        }
        let raw = raw.into();
        let fields: Fields = serde_json::from_str(&raw)
            .map_err(|error| format!("event is not a JSON object: {error}"))?;
        let timestamp = fields
            .timestamp
            .ok_or_else(|| "event has no string field \"timestamp\"".to_string())?;
        let service = fields
            .service
            .ok_or_else(|| "event has no string field \"service\"".to_string())?;
        let timestamp_ns = parse_time_ns(&timestamp)
            .ok_or_else(|| format!("event timestamp {timestamp:?} is not an RFC 3339 time"))?;
        Ok(ApiEvent {
            raw,
            timestamp_ns,
            service,
            visible_at: None,
        })
    }
}

/// Parses an RFC 3339 time into nanoseconds since the epoch.
pub(crate) fn parse_time_ns(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()?
        .timestamp_nanos_opt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_raw_reads_timestamp_and_service() {
        let event = ApiEvent::from_raw(
            r#"{"event_type":"sso_auth","service":"sso","id":"648b1e56c0b7fd51eb1d0938","timestamp":"2023-06-15T14:21:10.34334445Z"}"#,
        )
        .unwrap();
        assert_eq!(event.service, "sso");
        assert_eq!(event.timestamp_ns, 1_686_838_870_343_344_450);
        assert!(event.visible_at.is_none());
        let radius =
            ApiEvent::from_raw(r#"{"service":"radius","timestamp":"2023-06-15T15:16:41Z"}"#)
                .unwrap();
        assert_eq!(radius.timestamp_ns, 1_686_842_201_000_000_000);
        assert!(ApiEvent::from_raw("{").is_err());
        assert!(ApiEvent::from_raw(r#"{"service":"sso"}"#).is_err());
        assert!(ApiEvent::from_raw(r#"{"service":"sso","timestamp":"soon"}"#).is_err());
    }
}

//! The event types every part of the pipeline shares: an event as collected ([`IncomingEvent`]), as read
//! back from the queue ([`QueuedEvent`]), a stream's collection progress ([`Cursor`]), and the two hashes
//! that name things on disk ([`event_key`], [`stream_tag`]).
//!
//! A leaf: it imports nothing of the crate (the clock aside), and everyone may import it.
//!
//! Invariants:
//! - An event's bytes are kept exactly as JumpCloud sent them; nothing here re-serializes them.
//! - [`event_key`] and [`stream_tag`] are stored on disk (dedup index, chunk headers): their values never
//!   change from one version to the next.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::parse_rfc3339_ns;

/// The name of the stream of the single-organization form (`[jumpcloud]` without `[[streams]]`).
pub const DEFAULT_STREAM: &str = "default";

/// What the poller hands over for one event.
#[derive(Clone, Debug)]
pub struct IncomingEvent {
    /// The event's JSON text exactly as received (UTF-8): usually a slice of the response body it came
    /// in, so that a page is not copied event by event.
    pub raw: Bytes,
    /// The event's `timestamp` in nanoseconds since the epoch.
    pub timestamp_ns: i64,
    /// A hash of the event's identity (its `id`, or its raw bytes when it has none).
    pub key: [u8; 16],
}

impl IncomingEvent {
    /// The event whose JSON text `raw` is held in `shared` (the same bytes, e.g. a slice of a response
    /// body): reads its `id` and `timestamp`. Events that are not objects, or whose `id` is not a string,
    /// are still kept: identity then comes from the raw bytes. An event without a readable timestamp is
    /// filed under `now_ns`, the time it was read.
    pub fn from_shared(raw: &str, shared: Bytes, now_ns: i64) -> IncomingEvent {
        IncomingEvent::read(raw, shared, now_ns).0
    }

    /// [`IncomingEvent::from_shared`], and whether `raw` was read whole as JSON on the way (when false, it
    /// may still be valid JSON: an `id` that is not a string, say; the caller checks it otherwise).
    pub fn read(raw: &str, shared: Bytes, now_ns: i64) -> (IncomingEvent, bool) {
        let probed: Result<Probe, _> = serde_json::from_str(raw);
        let valid = probed.is_ok();
        let probe = probed.unwrap_or_default();
        let timestamp_ns = probe
            .timestamp
            .as_deref()
            .and_then(parse_rfc3339_ns)
            .unwrap_or(now_ns);
        let id = probe.id.as_deref().filter(|id| !id.is_empty());
        let event = IncomingEvent {
            key: event_key(id, raw),
            raw: shared,
            timestamp_ns,
        };
        (event, valid)
    }

    /// [`IncomingEvent::from_shared`] for text not held in a shared buffer (it is copied once).
    pub fn from_text(raw: &str, now_ns: i64) -> IncomingEvent {
        IncomingEvent::from_shared(raw, Bytes::copy_from_slice(raw.as_bytes()), now_ns)
    }
}

/// The two fields of an event the queue needs, read without building the rest.
#[derive(Default, Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
}

/// An event read from the head of the queue.
#[derive(Clone, Debug)]
pub struct QueuedEvent {
    pub seq: u64,
    pub stream: u32,
    pub timestamp_ns: i64,
    pub queued_at_ms: u64,
    pub raw: String,
}

/// One stream's collection progress, committed with the events it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every event with a timestamp below this, indexed by the time it was read, is queued.
    pub watermark_ns: i64,
    /// When this cursor was written (milliseconds since the epoch).
    pub updated_at_ms: u64,
}

/// The 4-byte tag that scopes dedup entries and records to one stream.
pub fn stream_tag(stream: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(stream.as_bytes()) as u32
}

/// The identity hash of an event: its `id` when it has one, else its raw bytes.
pub fn event_key(id: Option<&str>, raw: &str) -> [u8; 16] {
    let hash = match id {
        Some(id) => xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), 1),
        None => xxhash_rust::xxh3::xxh3_128_with_seed(raw.as_bytes(), 2),
    };
    hash.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uses_id_then_bytes() {
        let a =
            IncomingEvent::from_text(r#"{"id":"x","timestamp":"1970-01-01T00:00:01Z","n":1}"#, 0);
        let b =
            IncomingEvent::from_text(r#"{"id":"x","timestamp":"1970-01-01T00:00:01Z","n":2}"#, 0);
        assert_eq!(a.key, b.key);
        assert_eq!(a.timestamp_ns, 1_000_000_000);
        let c = IncomingEvent::from_text(r#"{"connection_id":"c","operation_number":1}"#, 7);
        let d = IncomingEvent::from_text(r#"{"connection_id":"c","operation_number":2}"#, 7);
        assert_ne!(c.key, d.key);
        assert_eq!(c.timestamp_ns, 7);
        let odd = IncomingEvent::from_text("42", 7);
        assert_eq!(odd.raw, "42");
        let empty_id = IncomingEvent::from_text(r#"{"id":"","n":1}"#, 7);
        assert_eq!(
            empty_id.key,
            event_key(None, r#"{"id":"","n":1}"#),
            "an empty id is no id"
        );
    }

    #[test]
    fn timestamp_is_read_or_the_time_of_reading() {
        let e = IncomingEvent::from_text(r#"{"timestamp":"1970-01-01T00:00:01.5Z"}"#, 7);
        assert_eq!(e.timestamp_ns, 1_500_000_000);
        for raw in [r#"{"timestamp":"soon"}"#, "[1,2]", "42", r#"{"id":5}"#] {
            assert_eq!(IncomingEvent::from_text(raw, 7).timestamp_ns, 7, "{raw}");
        }
    }

    #[test]
    fn stored_hashes_keep_their_values() {
        // These values are on disk in existing queues: they must never change. Expected values computed
        // with Python's `xxhash` package (xxh3_64 truncated to 32 bits; xxh3_128 with seeds 1 and 2).
        assert_eq!(stream_tag("default"), 2_490_608_666);
        let hex = |key: [u8; 16]| key.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(event_key(Some("abc"), "ignored")),
            "7577b06fae9ee3ed6b4467b443c76228"
        );
        assert_eq!(
            hex(event_key(None, "{}")),
            "9f3c8ef3065eebc4ba53e4e0784fa7ae"
        );
    }
}

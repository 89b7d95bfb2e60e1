//! The event types every part of the pipeline shares: an event as collected ([`IncomingEvent`]), as read
//! back from the queue ([`QueuedEvent`]), a stream's collection progress ([`Cursor`]), and the two hashes
//! that name things on disk ([`event_key`], [`stream_tag`]).
//!
//! A leaf: it imports nothing of the crate (the clock and the fast reader, [`crate::probe`], aside), and
//! everyone may import it.
//!
//! Invariants:
//! - An event's bytes are kept exactly as JumpCloud sent them; nothing here re-serializes them.
//! - [`event_key`] and [`stream_tag`] are stored on disk (dedup index, chunk headers): their values never
//!   change from one version to the next.

use std::borrow::Cow;

use bytes::Bytes;
use bytestring::ByteString;
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
        let read = probed.unwrap_or_default().read(raw.as_bytes(), now_ns);
        (read.into_event(shared), valid)
    }

    /// Reads the JSON object at the very start of `bytes` (other text may follow it) as
    /// [`IncomingEvent::read`] reads a whole one: what it found, and how many bytes the object takes.
    /// `None` when `bytes` does not start with a JSON object that reads whole (cut short, not JSON, an
    /// `id` that is not a string...): the caller then finds its end otherwise and uses `read`.
    ///
    /// Whether the object's bytes were checked as UTF-8 on the way is [`ReadAhead::utf8`]; when not, the
    /// caller checks them.
    pub fn read_at_start(bytes: &[u8], now_ns: i64) -> Option<(usize, ReadAhead)> {
        // serde reads a struct from an array too: only an object is an event read here.
        if bytes.first() != Some(&b'{') {
            return None;
        }
        if let Some(found) = crate::probe::read_object(bytes) {
            let probe = Probe {
                id: found.id.map(Cow::Borrowed),
                timestamp: found.timestamp.map(Cow::Borrowed),
            };
            let mut read = probe.read(bytes.get(..found.len)?, now_ns);
            read.utf8 = true;
            return Some((found.len, read));
        }
        // What the fast reader leaves (an escape in a key or in either field, not JSON, cut short...):
        // read as `read` reads, to be sure to agree with it.
        let mut reader = serde_json::Deserializer::from_slice(bytes).into_iter::<Probe>();
        let probe = reader.next()?.ok()?;
        let len = reader.byte_offset();
        Some((len, probe.read(bytes.get(..len)?, now_ns)))
    }

    /// [`IncomingEvent::from_shared`] for text not held in a shared buffer (it is copied once).
    pub fn from_text(raw: &str, now_ns: i64) -> IncomingEvent {
        IncomingEvent::from_shared(raw, Bytes::copy_from_slice(raw.as_bytes()), now_ns)
    }
}

/// What was read of an event ([`IncomingEvent::read_at_start`]), before its bytes were cut out.
#[derive(Clone, Copy, Debug)]
pub struct ReadAhead {
    timestamp_ns: i64,
    key: [u8; 16],
    utf8: bool,
}

impl ReadAhead {
    /// Whether the object's bytes were found to be UTF-8 while it was read (by the fast reader, which
    /// checks every string it passes; serde_json's reading, when it was asked, does not say).
    pub fn utf8(&self) -> bool {
        self.utf8
    }

    /// The event, once its bytes are cut out: `raw` must be the bytes that were read.
    pub fn into_event(self, raw: Bytes) -> IncomingEvent {
        IncomingEvent {
            raw,
            timestamp_ns: self.timestamp_ns,
            key: self.key,
        }
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

impl Probe<'_> {
    /// The event's timestamp (else `now_ns`) and key (from its `id`, else its bytes `raw`).
    fn read(&self, raw: &[u8], now_ns: i64) -> ReadAhead {
        let timestamp_ns = self
            .timestamp
            .as_deref()
            .and_then(parse_rfc3339_ns)
            .unwrap_or(now_ns);
        let id = self.id.as_deref().filter(|id| !id.is_empty());
        ReadAhead {
            timestamp_ns,
            key: event_key_of_bytes(id, raw),
            utf8: false,
        }
    }
}

/// An event read from the head of the queue.
#[derive(Clone, Debug)]
pub struct QueuedEvent {
    pub seq: u64,
    pub stream: u32,
    pub timestamp_ns: i64,
    pub queued_at_ms: u64,
    /// Its text, sharing one buffer with the other events of its chunk in the same batch (`.into()` makes
    /// one from a `String` or a `&str`).
    pub raw: ByteString,
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
    event_key_of_bytes(id, raw.as_bytes())
}

fn event_key_of_bytes(id: Option<&str>, raw: &[u8]) -> [u8; 16] {
    let hash = match id {
        Some(id) => xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), 1),
        None => xxhash_rust::xxh3::xxh3_128_with_seed(raw, 2),
    };
    hash.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// `read_at_start` on an object followed by other text, as the page reader gives it, against `read`
    /// on the object alone: `None` only where `read` does not read it whole, else the same event.
    fn agrees_with_read(object: &str, tail: &str) -> Result<(), TestCaseError> {
        let text = format!("{object}{tail}");
        if serde_json::from_str::<serde::de::IgnoredAny>(object).is_err() {
            // Not one JSON value: whatever is read at the start must be one object, and no more.
            if let Some((len, _)) = IncomingEvent::read_at_start(text.as_bytes(), 7) {
                let read = text.get(..len).unwrap_or_default();
                prop_assert!(read.ends_with('}'), "{}", read);
                prop_assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(read).is_ok(),
                    "{}",
                    read
                );
            }
            return Ok(());
        }
        let (alone, whole) = IncomingEvent::read(object, Bytes::from(object.to_string()), 7);
        match IncomingEvent::read_at_start(text.as_bytes(), 7) {
            Some((len, ahead)) => {
                prop_assert!(whole, "read whole at the start, not alone: {}", object);
                prop_assert_eq!(len, object.len());
                let event = ahead.into_event(Bytes::from(text[..len].to_string()));
                prop_assert_eq!(event.key, alone.key);
                prop_assert_eq!(event.timestamp_ns, alone.timestamp_ns);
                prop_assert_eq!(event.raw, alone.raw);
            }
            None => prop_assert!(!whole, "read whole alone, not at the start: {}", object),
        }
        Ok(())
    }

    #[test]
    fn read_at_start_reads_one_object_and_no_more() {
        let object = r#"{"id":"a\"b","timestamp":"1970-01-01T00:00:02Z","x":[1,{"y":"}"}]}"#;
        let (len, ahead) =
            IncomingEvent::read_at_start(format!("{object},{{\"id\":\"next\"}}]").as_bytes(), 7)
                .expect("read");
        assert_eq!(len, object.len());
        let event = ahead.into_event(Bytes::from(object));
        assert_eq!(event.key, event_key(Some("a\"b"), object));
        assert_eq!(event.timestamp_ns, 2_000_000_000);
        // Cut short, not an object, or an id that is not a string: left to the caller.
        for text in [
            &object[..20],
            "[1,2]",
            r#"["a","1970-01-01T00:00:02Z"]"#,
            r#"{"id":5},"#,
            r#"{"a":tru}"#,
        ] {
            assert!(
                IncomingEvent::read_at_start(text.as_bytes(), 7).is_none(),
                "{text}"
            );
        }
        agrees_with_read(object, "]").expect("agrees");
    }

    #[test]
    fn escaped_and_odd_keys_agree_with_read() {
        let id = r#""id":"x","timestamp":"1970-01-01T00:00:02Z""#;
        for object in [
            // Escaped keys, the two fields' among them: read as `read` reads them.
            format!(r#"{{"\u0069d":"y",{}}}"#, &id[9..]),
            format!(r#"{{"a\"b":1,{id}}}"#),
            format!(r#"{{"\u0001":1,{id}}}"#),
            // A control character in a key is not JSON; nor is a field given twice for `read`.
            format!("{{\"a\u{1}b\":1,{id}}}"),
            format!(r#"{{{id},"id":"z"}}"#),
            format!(r#"{{{id},"timestamp":"1970-01-01T00:00:03Z"}}"#),
            r#"{"id":null,"timestamp":5}"#.to_string(),
            format!(r#"{{"é":[1,{{"id":"inner"}}],{id}}}"#),
        ] {
            agrees_with_read(&object, ",{}]").unwrap_or_else(|err| panic!("{object}: {err}"));
        }
        // A key with an escape is still read whole at the start.
        let escaped = r#"{"\u0069d":"y","timestamp":"1970-01-01T00:00:02Z"}"#;
        let (len, ahead) = IncomingEvent::read_at_start(escaped.as_bytes(), 7).expect("read");
        assert_eq!(len, escaped.len());
        let event = ahead.into_event(Bytes::from(escaped));
        assert_eq!(event.key, event_key(Some("y"), escaped));
        assert_eq!(event.timestamp_ns, 2_000_000_000);
    }

    proptest! {
        #[test]
        fn read_at_start_agrees_with_read(
            id in proptest::option::of(prop_oneof![
                "[a-z0-9\"\\\\é]{0,6}".prop_map(|t| serde_json::to_string(&t).expect("json")),
                any::<i32>().prop_map(|n| n.to_string()),
                Just("null".to_string()),
            ]),
            seconds in proptest::option::of(0i64..4_000_000_000),
            other in prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                "[a-z}{\\]\"]{0,6}".prop_map(|t| serde_json::to_string(&t).expect("json")),
                Just(r#"[1,{"id":"inner","t":"}"},[]]"#.to_string()),
                // Often not JSON at all: then neither reads it whole.
                "[a-z ,:\"{}\\[\\]0-9]{0,12}",
            ],
            tail in "[ ,\\]{}\"a-z]{0,4}",
        ) {
            let mut fields = Vec::new();
            if let Some(id) = id {
                fields.push(format!("\"id\":{id}"));
            }
            if let Some(seconds) = seconds {
                let at = chrono::DateTime::from_timestamp(seconds, 0).expect("in range");
                fields.push(format!("\"timestamp\":\"{}\"", at.format("%Y-%m-%dT%H:%M:%SZ")));
            }
            fields.push(format!("\"other\":{other}"));
            let object = format!("{{{}}}", fields.join(","));
            agrees_with_read(&object, &tail)?;
        }
    }
}

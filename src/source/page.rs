//! What an answer of JumpCloud's events endpoint holds: the events of a page, what in it is not an event,
//! and whether it can be used at all.
//!
//! A page is a JSON array of JSON objects, each an event. Invariants:
//! - Only JSON objects become events; every other element (number, string, null, array, boolean) is set
//!   aside in [`Judged::not_events`], never queued.
//! - Each event's bytes are kept exactly as received: the array elements are slices of the body (never
//!   re-serialized, never copied), so `\u003c` stays `\u003c`.
//! - An answer is usable only if it is complete and consistent: a JSON array, as many elements as
//!   `X-Result-Count` says, and a JSON `X-Search_after` cursor when the page is full. Anything else is
//!   [`Unusable`], with what was wrong; nothing of it is used.
//! - Judging never panics, whatever the bytes.

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::clock::parse_rfc3339_ns;
use crate::event::IncomingEvent;

/// A usable answer.
#[derive(Debug)]
pub struct Judged {
    pub events: Vec<IncomingEvent>,
    /// True when the server may hold more events after this page (`X-Result-Count == X-Limit`).
    pub full: bool,
    /// The `X-Search_after` header, for the next request of the same poll.
    pub search_after: Option<Box<RawValue>>,
    /// The elements that are not events, as a JSON array of their texts (`[1,"two",null]`), and how many.
    pub not_events: Option<(usize, String)>,
    /// Events without a usable `timestamp` (filed under the time they were read).
    pub untimed: Untimed,
}

/// The events of a page that had no usable `timestamp`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Untimed {
    pub count: u64,
    /// The `id` of the first of them that has one.
    pub example_id: Option<String>,
}

/// Why an answer cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct Unusable(pub String);

/// Judges an answer (`body` and `headers` of a 2xx), read at `now_ns`.
pub fn judge(body: &Bytes, headers: &HeaderMap, now_ns: i64) -> Result<Judged, Unusable> {
    let elements: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|err| Unusable(not_an_array(body, headers, &err)))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let number = |name: &str| header(name).and_then(|v| v.trim().parse::<usize>().ok());
    let count = number("x-result-count").unwrap_or(elements.len());
    if count != elements.len() {
        return Err(Unusable(format!(
            "X-Result-Count says {count}, the body holds {}",
            elements.len()
        )));
    }
    let full = number("x-limit").is_some_and(|limit| count >= limit && count > 0);
    let search_after = match headers.get("x-search_after").map(|v| v.to_str()) {
        None => None,
        Some(Err(_)) => return Err(Unusable("X-Search_after is not text".to_string())),
        Some(Ok(text)) if text.trim().is_empty() => None,
        Some(Ok(text)) => Some(
            RawValue::from_string(text.trim().to_string())
                .map_err(|err| Unusable(format!("X-Search_after is not JSON: {err}")))?,
        ),
    };
    if full && search_after.is_none() {
        return Err(Unusable("a full page without X-Search_after".to_string()));
    }
    let mut events = Vec::with_capacity(elements.len());
    let mut not_events: Vec<&str> = Vec::new();
    let mut untimed = Untimed::default();
    for element in elements {
        let text = element.get();
        if !text.starts_with('{') {
            not_events.push(text);
            continue;
        }
        // The element borrows from the body: share the body's buffer instead of copying the text.
        let event = IncomingEvent::from_shared(text, body.slice_ref(text.as_bytes()), now_ns);
        // An event is filed under `now_ns` when its timestamp cannot be read; one whose timestamp is
        // exactly `now_ns` is told apart by reading it again (rare: only then is it read twice).
        if event.timestamp_ns == now_ns && !has_timestamp(text) {
            untimed.count += 1;
            if untimed.example_id.is_none() {
                untimed.example_id = id_of(text);
            }
        }
        events.push(event);
    }
    let not_events =
        (!not_events.is_empty()).then(|| (not_events.len(), format!("[{}]", not_events.join(","))));
    Ok(Judged {
        events,
        full,
        search_after,
        not_events,
        untimed,
    })
}

/// What the body is instead of a JSON array, for the message.
fn not_an_array(body: &[u8], headers: &HeaderMap, err: &serde_json::Error) -> String {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let what = match first {
        None => "an empty body".to_string(),
        Some(b'<') => "HTML or XML, not JSON".to_string(),
        Some(b'{') => "a JSON object, not an array of events".to_string(),
        Some(_) if std::str::from_utf8(body).is_err() => "not UTF-8 text".to_string(),
        Some(_) => "not a JSON array of events".to_string(),
    };
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            format!(
                ", Content-Type {:?}",
                v.chars().take(100).collect::<String>()
            )
        })
        .unwrap_or_default();
    format!("{what}: {err}; {} bytes{content_type}", body.len())
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<std::borrow::Cow<'a, str>>,
}

fn probe(text: &str) -> Option<Probe<'_>> {
    serde_json::from_str(text).ok()
}

fn has_timestamp(text: &str) -> bool {
    probe(text)
        .and_then(|p| p.timestamp)
        .is_some_and(|t| parse_rfc3339_ns(&t).is_some())
}

/// An event's `id` as a log may show it: at most 100 printable characters.
fn id_of(text: &str) -> Option<String> {
    let id = probe(text)?.id?;
    let shown: String = id.chars().filter(|c| !c.is_control()).take(100).collect();
    (!shown.is_empty()).then_some(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    fn judge_text(body: &str) -> Result<Judged, Unusable> {
        judge(&Bytes::from(body.to_string()), &HeaderMap::new(), NOW)
    }

    #[test]
    fn objects_are_events_and_the_rest_is_set_aside() {
        let page = judge_text(
            r#"[{"id":"a","timestamp":"2024-01-01T00:00:00Z"}, 1,"two",null,[3],true, {"id":"b","timestamp":"2024-01-01T00:00:01Z"}]"#,
        )
        .expect("usable");
        let raws: Vec<&[u8]> = page.events.iter().map(|e| &e.raw[..]).collect();
        assert_eq!(
            raws,
            [
                &br#"{"id":"a","timestamp":"2024-01-01T00:00:00Z"}"#[..],
                br#"{"id":"b","timestamp":"2024-01-01T00:00:01Z"}"#
            ]
        );
        assert_eq!(
            page.not_events,
            Some((5, r#"[1,"two",null,[3],true]"#.to_string()))
        );
        assert_eq!(page.untimed, Untimed::default());
        let only = judge_text(r#"[1,"two",null,[3]]"#).expect("usable");
        assert!(only.events.is_empty());
        assert_eq!(only.not_events.map(|(n, _)| n), Some(4));
    }

    #[test]
    fn events_without_a_usable_timestamp_are_counted_with_an_example() {
        let page = judge_text(
            r#"[{"timestamp":"soon"},{"id":"x1","n":1},{"id":"x2"},{"id":"ok","timestamp":"2024-01-01T00:00:00Z"}]"#,
        )
        .expect("usable");
        assert_eq!(page.events.len(), 4, "delivered all the same");
        assert_eq!(
            page.untimed,
            Untimed {
                count: 3,
                example_id: Some("x1".to_string())
            }
        );
        assert!(page.events[..3].iter().all(|e| e.timestamp_ns == NOW));
    }

    #[test]
    fn unusable_answers_say_what_is_wrong() {
        let html = judge(
            &Bytes::from_static(b"<html><body>Access denied</body></html>"),
            &headers(&[("content-type", "text/html")]),
            NOW,
        )
        .unwrap_err();
        assert!(html.0.starts_with("HTML or XML, not JSON: "), "{html:?}");
        assert!(
            html.0.ends_with("; 39 bytes, Content-Type \"text/html\""),
            "{html:?}"
        );
        let cases: &[(&[u8], &str)] = &[
            (b"", "an empty body"),
            (
                b"{\"message\":\"rate\"}",
                "a JSON object, not an array of events",
            ),
            (b"[{\"id\":\"\xff\"}]", "not UTF-8 text"),
            (b"[{\"id\":1}", "not a JSON array of events"),
            (b"42", "not a JSON array of events"),
        ];
        for (body, expected) in cases {
            let err = judge(&Bytes::copy_from_slice(body), &HeaderMap::new(), NOW).unwrap_err();
            assert!(err.0.starts_with(expected), "{body:?}: {err:?}");
        }
        // Deep nesting is read without recursion (no stack overflow): as an element it is not an event;
        // inside an event it is the event's business.
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        let page = judge_text(&deep).expect("a JSON array");
        assert!(page.events.is_empty());
        assert_eq!(page.not_events.map(|(n, _)| n), Some(1));
        let deep = format!(
            "[{{\"id\":\"d\",\"a\":{}{}}}]",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let page = judge_text(&deep).expect("a JSON array");
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].raw.len(), deep.len() - 2);
        assert_eq!(page.untimed.example_id.as_deref(), Some("d"));
        let count = judge(
            &Bytes::from_static(b"[{}]"),
            &headers(&[("x-result-count", "2")]),
            NOW,
        )
        .unwrap_err();
        assert_eq!(count.0, "X-Result-Count says 2, the body holds 1");
        let cursor = judge(
            &Bytes::from_static(b"[{}]"),
            &headers(&[("x-limit", "1"), ("x-search_after", "[1,")]),
            NOW,
        )
        .unwrap_err();
        assert!(
            cursor.0.starts_with("X-Search_after is not JSON"),
            "{cursor:?}"
        );
        let full = judge(
            &Bytes::from_static(b"[{}]"),
            &headers(&[("x-limit", "1")]),
            NOW,
        )
        .unwrap_err();
        assert_eq!(full.0, "a full page without X-Search_after");
    }

    #[test]
    fn a_full_page_keeps_its_cursor() {
        let page = judge(
            &Bytes::from_static(b"[{\"id\":\"a\"}]"),
            &headers(&[
                ("x-limit", "1"),
                ("x-result-count", "1"),
                ("x-search_after", "[5,\"a\"]"),
            ]),
            NOW,
        )
        .expect("usable");
        assert!(page.full);
        assert_eq!(
            page.search_after.map(|r| r.get().to_string()),
            Some("[5,\"a\"]".to_string())
        );
    }

    /// Any JSON value, nested a little.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// How an element is written in the page: compact, or with spaces and escapes as a server may.
    fn written(value: &serde_json::Value, pretty: bool) -> String {
        if pretty {
            serde_json::to_string_pretty(value).expect("json")
        } else {
            serde_json::to_string(value).expect("json")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes: never a panic, and whatever is kept as an event is an object.
        #[test]
        fn arbitrary_bytes_never_panic_nor_queue_a_non_object(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(page) = judge(&Bytes::from(body), &HeaderMap::new(), NOW) {
                for event in &page.events {
                    prop_assert!(event.raw.starts_with(b"{"), "an event that is not an object");
                }
            }
        }

        /// Pages of arbitrary values: every object is kept byte for byte and in order, nothing else is.
        #[test]
        fn every_object_is_kept_byte_for_byte(values in prop::collection::vec((json_value(), any::<bool>()), 0..8)) {
            let texts: Vec<String> = values.iter().map(|(v, pretty)| written(v, *pretty)).collect();
            let body = format!("[ {} ]", texts.join(" ,\n"));
            let page = judge_text(&body).expect("a JSON array is usable");
            let objects: Vec<&str> = values
                .iter()
                .zip(&texts)
                .filter(|((v, _), _)| v.is_object())
                .map(|(_, t)| t.as_str())
                .collect();
            let kept: Vec<&[u8]> = page.events.iter().map(|e| &e.raw[..]).collect();
            let expected: Vec<&[u8]> = objects.iter().map(|t| t.as_bytes()).collect();
            prop_assert_eq!(kept, expected);
            let others = values.len() - objects.len();
            prop_assert_eq!(page.not_events.as_ref().map_or(0, |(n, _)| *n), others);
            if let Some((_, text)) = &page.not_events {
                let set_aside: Vec<serde_json::Value> = serde_json::from_str(text).expect("a JSON array");
                prop_assert!(set_aside.iter().all(|v| !v.is_object()));
            }
        }

        /// A valid page mutated (bytes flipped, cut, inserted): never a panic, never a non-object queued,
        /// and when it is still usable its events are slices of what was received.
        #[test]
        fn mutated_pages_never_panic_nor_queue_a_non_object(
            values in prop::collection::vec(json_value(), 1..6),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut body = serde_json::to_vec(&values).expect("json");
            for (at, byte, kind) in edits {
                let i = at.index(body.len().max(1)).min(body.len());
                match kind {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.truncate(i),
                    _ => body.insert(i, byte),
                }
            }
            let received = Bytes::from(body);
            if let Ok(page) = judge(&received, &HeaderMap::new(), NOW) {
                for event in &page.events {
                    prop_assert!(event.raw.starts_with(b"{"), "an event that is not an object");
                    let text = std::str::from_utf8(&event.raw).expect("UTF-8");
                    prop_assert!(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_ok());
                    let start = event.raw.as_ptr() as usize - received.as_ptr() as usize;
                    prop_assert_eq!(&received[start..start + event.raw.len()], &event.raw[..]);
                }
            }
        }
    }
}

//! JSON written the way a Go service (JumpCloud's) writes it: strings, objects and arrays appended to a
//! `String` member by member, and timestamps as Go's `time.RFC3339Nano` prints them.
//!
//! Invariants it keeps:
//! - `<`, `>`, `&`, U+2028 and U+2029 are always escaped (`\u003c`, `\u003e`, `\u0026`, `\u2028`, `\u2029`),
//!   other control characters as `\u00XX`, and every other non-ASCII character is left as UTF-8;
//! - what `Obj` and `Arr` write is always valid JSON, provided keys are plain ASCII (checked in debug builds);
//! - `format_timestamp` writes UTC with the fraction's trailing zeros trimmed, so parsing its text gives back
//!   the same nanosecond instant.

use std::fmt::Write;

use chrono::{DateTime, Datelike, Timelike};

/// RFC 3339 in UTC with the fraction's trailing zeros trimmed, as Go's `time.RFC3339Nano` writes it.
pub fn format_timestamp(timestamp_ns: i64) -> String {
    let seconds = timestamp_ns.div_euclid(1_000_000_000);
    let nanos = timestamp_ns.rem_euclid(1_000_000_000) as u32;
    let Some(time) = DateTime::from_timestamp(seconds, nanos) else {
        return "1970-01-01T00:00:00Z".to_string();
    };
    // Written by hand rather than with `format("%Y-%m-%dT%H:%M:%S")`: it is several times faster, and the
    // benchmarks generate a million events.
    let mut text = String::with_capacity(30);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    if nanos > 0 {
        let mut digits = 9;
        let mut fraction = nanos;
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        let _ = write!(text, ".{fraction:0digits$}");
    }
    text.push('Z');
    text
}

/// Appends `text` as a JSON string the way Go's encoding/json does: HTML-sensitive characters escaped as
/// `\u003c`, `\u003e`, `\u0026`, other non-ASCII kept as UTF-8.
pub(super) fn push_go_string(out: &mut String, text: &str) {
    out.push('"');
    // Scan bytes and copy runs that need no escape in one go: this is the generator's hot loop. Every
    // character to escape is ASCII except U+2028 and U+2029 (E2 80 A8 / E2 80 A9 in UTF-8), so a run always
    // starts and ends on a character boundary.
    let bytes = text.as_bytes();
    let mut run_start = 0;
    let mut at = 0;
    while at < bytes.len() {
        let escape = match bytes[at] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b'<' => "\\u003c",
            b'>' => "\\u003e",
            b'&' => "\\u0026",
            0xE2 if bytes.get(at + 1) == Some(&0x80) && bytes.get(at + 2) == Some(&0xA8) => {
                "\\u2028"
            }
            0xE2 if bytes.get(at + 1) == Some(&0x80) && bytes.get(at + 2) == Some(&0xA9) => {
                "\\u2029"
            }
            byte if byte < 0x20 => "",
            _ => {
                at += 1;
                continue;
            }
        };
        out.push_str(&text[run_start..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", bytes[at]);
            at += 1;
        } else {
            out.push_str(escape);
            at += if bytes[at] == 0xE2 { 3 } else { 1 };
        }
        run_start = at;
    }
    out.push_str(&text[run_start..]);
    out.push('"');
}

/// Writes one JSON object into a string, member by member, without building a tree first.
pub(super) struct Obj<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> Obj<'a> {
    pub(super) fn open(out: &'a mut String) -> Obj<'a> {
        out.push('{');
        Obj { out, empty: true }
    }

    pub(super) fn close(self) {
        self.out.push('}');
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        // Keys are the factory's own plain ASCII literals: no escaping needed (checked in debug builds).
        debug_assert!(key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'@'));
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    pub(super) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        push_go_string(self.out, value);
        self
    }

    pub(super) fn num(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    pub(super) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    pub(super) fn null(&mut self, key: &str) -> &mut Self {
        self.raw(key, "null")
    }

    /// A member whose value is already JSON text.
    pub(super) fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key);
        self.out.push_str(json);
        self
    }

    pub(super) fn obj(&mut self, key: &str, fill: impl FnOnce(&mut Obj)) -> &mut Self {
        self.key(key);
        let mut inner = Obj::open(self.out);
        fill(&mut inner);
        inner.close();
        self
    }

    pub(super) fn arr(&mut self, key: &str, fill: impl FnOnce(&mut Arr)) -> &mut Self {
        self.key(key);
        self.out.push('[');
        let mut inner = Arr {
            out: self.out,
            empty: true,
        };
        fill(&mut inner);
        self.out.push(']');
        self
    }
}

/// Writes one JSON array's elements.
pub(super) struct Arr<'a> {
    out: &'a mut String,
    empty: bool,
}

impl Arr<'_> {
    fn comma(&mut self) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
    }

    pub(super) fn str(&mut self, value: &str) -> &mut Self {
        self.comma();
        push_go_string(self.out, value);
        self
    }

    pub(super) fn obj(&mut self, fill: impl FnOnce(&mut Obj)) -> &mut Self {
        self.comma();
        let mut inner = Obj::open(self.out);
        fill(&mut inner);
        inner.close();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_go_does() {
        let mut out = String::new();
        push_go_string(&mut out, "a\"b\\c\nd\u{1}e<f>g&hé\u{2028}");
        assert_eq!(out, r#""a\"b\\c\nd\u0001e\u003cf\u003eg\u0026hé\u2028""#);
        let decoded: String = serde_json::from_str(&out).unwrap();
        assert_eq!(decoded, "a\"b\\c\nd\u{1}e<f>g&hé\u{2028}");
    }
}

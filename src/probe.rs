//! Reading an event's `id` and `timestamp`, and where it ends, straight from the bytes of a page: the fast
//! path of [`crate::event::IncomingEvent::read_at_start`].
//!
//! A leaf: it uses only [`crate::escape`]'s scan for the bytes a string stops at.
//!
//! Why by hand: serde_json reading an event for two fields and skipping the rest (checking that it is JSON)
//! was the largest part of reading pages in CPU profiles, most of it in the machinery around each value
//! skipped rather than in the bytes. Here the object is checked in one loop, its strings 32 bytes at a time.
//!
//! Invariants:
//! - Whatever it reads, serde_json reads the same (the same length, `id` and `timestamp`), checked by a
//!   property test against it. Where it is not sure, it reads nothing (`None`) and the caller asks serde_json:
//!   a key or either field holding an escape, either field neither a string nor `null` or given twice,
//!   nesting deeper than [`MAX_DEPTH`], anything that is not JSON.
//! - An object read is UTF-8 throughout: outside strings only ASCII is JSON, and a string holding a byte
//!   above 0x7f is checked (the scan that finds its end says whether it holds one, at no extra pass).
//! - Never panics, whatever the bytes, and the length it gives ends at the object's `}` (the 32-byte scans
//!   may look at what follows, never count it).

use crate::escape::{masks, BLOCK};

/// Deeper than this, serde_json is asked instead (it skips any depth; recursion here stays shallow).
const MAX_DEPTH: u32 = 64;

/// An object read at the start of the bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Probed<'a> {
    /// The object's length in bytes.
    pub len: usize,
    /// Its `id`, when it is a string (`None` also for `null`).
    pub id: Option<&'a str>,
    /// Its `timestamp`, when it is a string.
    pub timestamp: Option<&'a str>,
}

/// Reads the JSON object at the very start of `bytes` (other bytes may follow it); `None` when it is not
/// one or when serde_json should be asked (see the invariants above).
pub fn read_object(bytes: &[u8]) -> Option<Probed<'_>> {
    let mut reader = Reader::new(bytes);
    reader.expect(b'{')?;
    let (mut id, mut timestamp) = (None, None);
    let (mut seen_id, mut seen_timestamp) = (false, false);
    reader.members(|reader, key| {
        let (seen, field) = match key? {
            b"id" => (&mut seen_id, &mut id),
            b"timestamp" => (&mut seen_timestamp, &mut timestamp),
            _ => return reader.value(1),
        };
        if std::mem::replace(seen, true) {
            return None;
        }
        *field = reader.text_or_null()?;
        Some(())
    })?;
    Some(Probed {
        len: reader.at,
        id,
        timestamp,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The last block scanned for the bytes a string stops at: where it starts, and its masks (see
    /// [`masks`]). A string is about seven bytes here, so the next few strings start in the same block:
    /// they are found in its masks instead of scanning again from their start.
    block_at: usize,
    block: (u32, u32),
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            at: 0,
            // No block scanned yet: no offset is at or after this one.
            block_at: usize::MAX,
            block: (0, 0),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        if self.peek()? != byte {
            return None;
        }
        self.at += 1;
        Some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// After a member's value: `,` (true, another member follows, whitespace skipped) or `}` (false).
    fn next_member(&mut self) -> Option<bool> {
        self.whitespace();
        match self.peek()? {
            b',' => {
                self.at += 1;
                self.whitespace();
                Some(true)
            }
            b'}' => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A string without escapes, or `null`, as serde_json reads an `Option<&str>`.
    fn text_or_null(&mut self) -> Option<Option<&'a str>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                let start = self.at;
                if self.string()? {
                    return None;
                }
                std::str::from_utf8(&self.bytes[start..self.at - 1])
                    .ok()
                    .map(Some)
            }
            b'n' => {
                self.literal(b"null")?;
                Some(None)
            }
            _ => None,
        }
    }

    /// The rest of a string whose opening quote was read, through its closing quote: whether it held an
    /// escape. Escapes are checked as serde_json checks a string it skips (a `\u` takes four hex digits).
    ///
    /// A string holding a byte above 0x7f is checked as UTF-8 (`None` when it is not): the only place
    /// such a byte may be in JSON, so that an object read is UTF-8 throughout.
    fn string(&mut self) -> Option<bool> {
        let start = self.at;
        let (mut escaped, mut wide) = (false, false);
        loop {
            wide |= self.skip_to_special()?;
            match self.bytes[self.at] {
                b'"' => {
                    if wide {
                        std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
                    }
                    self.at += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                // A control character, which a string may not hold as it is.
                _ => return None,
            }
        }
    }

    /// Moves to the next quote, backslash or control character (`None` when there is none): whether a byte
    /// passed over is above 0x7f.
    fn skip_to_special(&mut self) -> Option<bool> {
        let mut wide = 0;
        loop {
            if self.at >= self.block_at && self.at - self.block_at < BLOCK {
                // The masks of the bytes from `at` to the end of the block scanned last.
                let skip = self.at - self.block_at;
                let (found, high) = (self.block.0 >> skip, self.block.1 >> skip);
                if found != 0 {
                    // Only the bytes before the special one were passed over.
                    wide |= high & ((found ^ (found - 1)) >> 1);
                    self.at += found.trailing_zeros() as usize;
                    return Some(wide != 0);
                }
                wide |= high;
                self.at = self.block_at + BLOCK;
            }
            let rest = self.bytes.get(self.at..)?;
            match rest.get(..BLOCK) {
                Some(block) => {
                    self.block = masks(block.try_into().ok()?);
                    self.block_at = self.at;
                }
                None => {
                    let offset = rest
                        .iter()
                        .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
                    self.at += offset;
                    return Some(wide != 0 || !rest[..offset].is_ascii());
                }
            }
        }
    }

    /// Any JSON value, `depth` containers deep.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(|_| ())
            }
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.members(|reader, _| reader.value(depth))
    }

    /// The members of an object whose `{` was read, through its `}`: `member` reads each value, given the
    /// key (`None` for a key holding an escape, whose raw bytes are not the key).
    fn members(
        &mut self,
        mut member: impl FnMut(&mut Self, Option<&'a [u8]>) -> Option<()>,
    ) -> Option<()> {
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.expect(b'"')?;
            let start = self.at;
            let escaped = self.string()?;
            let bytes = self.bytes;
            let key = (!escaped).then(|| &bytes[start..self.at - 1]);
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            member(self, key)?;
            if !self.next_member()? {
                return Some(());
            }
        }
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.whitespace();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.whitespace();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.whitespace();
                }
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes.get(self.at..self.at + word.len())? != word {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// JSON's number: `-`?, then `0` or a digit 1-9 and more digits, then `.` and digits?, then `e` or `E`,
    /// a sign and digits?
    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => {
                self.at += 1;
                // serde_json refuses a leading zero followed by digits.
                if self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// At least one digit.
    fn some_digits(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        self.digits();
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::Value;
    use std::borrow::Cow;

    /// The two fields as serde_json reads them (as `event::Probe` does).
    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        timestamp: Option<Cow<'a, str>>,
    }

    /// What serde_json reads at the start of `bytes`: the object's length and its two fields.
    fn serde_read(bytes: &[u8]) -> Option<(usize, Option<String>, Option<String>)> {
        if bytes.first() != Some(&b'{') {
            return None;
        }
        let mut reader = serde_json::Deserializer::from_slice(bytes).into_iter::<Fields>();
        let fields = reader.next()?.ok()?;
        Some((
            reader.byte_offset(),
            fields.id.map(Cow::into_owned),
            fields.timestamp.map(Cow::into_owned),
        ))
    }

    /// Whatever `read_object` reads, serde_json reads the same, and it is UTF-8.
    fn agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Some(probed) = read_object(bytes) {
            let expected = serde_read(bytes);
            prop_assert!(
                expected.is_some(),
                "read, but not by serde_json: {:?}",
                String::from_utf8_lossy(bytes)
            );
            prop_assert!(
                std::str::from_utf8(&bytes[..probed.len]).is_ok(),
                "read, but not UTF-8: {:?}",
                String::from_utf8_lossy(bytes)
            );
            let (len, id, timestamp) = expected.unwrap_or_default();
            prop_assert_eq!(probed.len, len, "{:?}", String::from_utf8_lossy(bytes));
            prop_assert_eq!(probed.id.map(str::to_string), id);
            prop_assert_eq!(probed.timestamp.map(str::to_string), timestamp);
        }
        Ok(())
    }

    /// Any JSON value, keys plain lower-case letters.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z\"\\\\/é\\x00-\\x1f\u{2028}]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,12}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Fragments of JSON, right and wrong, to be put together at random.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\"",
        "\\",
        "\"id\"",
        "\"timestamp\"",
        "\"a\"",
        "\"x\\\"y\"",
        "\"\\u0041\"",
        "\"\\u00zg\"",
        "\"\\q\"",
        "\"\u{1}\"",
        "1",
        "-0",
        "01",
        "-",
        "1.5e+3",
        "1.",
        "2E",
        ".5",
        "true",
        "tru",
        "null",
        "nul",
        "false",
        "\"\\/\"",
        "é",
    ];

    #[test]
    fn reads_what_serde_json_reads_on_examples() {
        for (text, len, id, timestamp) in [
            (
                r#"{"id":"a","timestamp":"t","x":[1,{"y":"}"}]},{"#,
                44,
                Some("a"),
                Some("t"),
            ),
            (r#"{ "id" : null , "n" : -0.5e-3 }"#, 31, None, None),
            (r#"{}]"#, 2, None, None),
        ] {
            let probed = read_object(text.as_bytes()).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(probed, Probed { len, id, timestamp }, "{text}");
            agrees(text.as_bytes()).expect("serde_json agrees");
        }
        // Left to serde_json: not JSON, cut short, an escape in a key or a field, a field twice or not a
        // string, nesting too deep.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        for text in [
            r#"{"a":01}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":"b"#,
            r#"{"\u0069d":"x"}"#,
            r#"{"id":"a\"b"}"#,
            r#"{"id":"a","id":"b"}"#,
            r#"{"id":5}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":1.}"#,
            r#"{"a":tru}"#,
            &deep,
        ] {
            assert_eq!(read_object(text.as_bytes()), None, "{text}");
        }
    }

    /// The pieces most likely to turn JSON into almost-JSON.
    const STRUCTURE: &[&str] = &[
        ",", "]", "}", "[", "{", ":", "\"", "\\", "0", "-", ".", "e", "\u{1}",
    ];

    proptest! {
        #[test]
        fn reads_any_object_serde_json_writes_as_serde_json_reads_it(
            value in json(),
            id in proptest::option::of("[a-z0-9]{0,8}"),
            timestamp in proptest::option::of("[0-9T:Z-]{0,24}"),
            tail in "[ ,\\]{}\"a-z]{0,4}",
        ) {
            let mut object = serde_json::Map::new();
            object.insert("value".into(), value);
            if let Some(id) = id {
                object.insert("id".into(), Value::String(id));
            }
            if let Some(timestamp) = timestamp {
                object.insert("timestamp".into(), Value::String(timestamp));
            }
            let text = format!("{}{tail}", Value::Object(object));
            // Plain keys and fields: the fast path reads it, not serde_json.
            prop_assert!(read_object(text.as_bytes()).is_some(), "{}", text);
            agrees(text.as_bytes())?;
            let pretty = format!("{}{tail}", serde_json::to_string_pretty(&serde_json::from_str::<Value>(&text[..text.len() - tail.len()]).unwrap_or_default()).unwrap_or_default());
            prop_assert!(read_object(pretty.as_bytes()).is_some(), "{}", pretty);
            agrees(pretty.as_bytes())?;
        }

        #[test]
        fn reads_nothing_serde_json_does_not_read(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..24),
        ) {
            let text = format!("{{{}", pieces.concat());
            agrees(text.as_bytes())?;
        }

        #[test]
        fn an_object_that_is_not_utf8_is_never_read(value in json(), ascii in "[a-z]{0,70}") {
            // Bytes that are not UTF-8 (a stray byte, a cut sequence, an overlong one, a surrogate, past
            // U+10FFFF) at every byte of an object, inside characters too, and around long ASCII runs so
            // that they fall anywhere in a 32-byte block.
            const NOT_UTF8: &[&[u8]] = &[
                &[0xff],
                &[0x80],
                &[0xc3],
                &[0xe2, 0x80],
                &[0xc0, 0xaf],
                &[0xed, 0xa0, 0x80],
                &[0xf4, 0x90, 0x80, 0x80],
            ];
            let text = serde_json::json!({"id": "x", "a": ascii, "value": value, "b": ascii}).to_string();
            let bytes = text.as_bytes();
            for at in 0..=bytes.len() {
                for bad in NOT_UTF8 {
                    agrees(&[&bytes[..at], bad, &bytes[at..]].concat())?;
                }
            }
        }

        #[test]
        fn a_damaged_object_is_read_as_serde_json_reads_it(value in json()) {
            // Every piece that makes JSON almost JSON, at every place, and every character left out.
            let text = serde_json::json!({"id": "x", "timestamp": "t", "value": value}).to_string();
            for (at, removed) in text.char_indices() {
                let next = at + removed.len_utf8();
                agrees(format!("{}{}", &text[..at], &text[next..]).as_bytes())?;
                for piece in STRUCTURE {
                    agrees(format!("{}{piece}{}", &text[..at], &text[at..]).as_bytes())?;
                }
            }
        }
    }
}

//! A JSON value rendered as the format's Jinja templates render it:
//! `{{ value | string() }}` on what Python's `json` module decoded, i.e.
//! Python's `str()` of that value.
//!
//! - `null` → `None`, `true`/`false` → `True`/`False`.
//! - A number with a fraction or an exponent is a Python `float`, written as
//!   Python's shortest round-trip `repr` (`1.0`, `0.1`, `1e+20`, `1e-05`,
//!   `inf` for `1E400`); any other number is an `int`, written with all its
//!   digits as received (`-0` is `0`).
//! - A string is itself (str of a str), except that a lone surrogate escape,
//!   which Rust text cannot hold, becomes U+FFFD.
//! - Arrays and objects are Python's `repr` of the list or dict: `[1, 'a']`,
//!   `{'a': True, 'b': None}`, strings inside quoted and escaped as Python
//!   does (see [`push_repr_str`]).
//!
//! Invariants: the number text is read from the raw JSON, never through a
//! lossy `f64`/`u64` conversion (serde_json's `arbitrary_precision` is off);
//! floats are parsed with correct rounding (`str::parse`), as Python does;
//! in an object a repeated key keeps its first position and its last value,
//! as a Python `dict` built from the pairs does; a value nested deeper than
//! [`MAX_DEPTH`] is not rendered at all, so no input can exhaust the stack.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::printable::is_printable;

/// Deepest nesting of arrays and objects rendered, as serde_json's own
/// recursion limit. (Python would go to about 1000 levels, where Sekoia's
/// parser fails the whole event instead.)
const MAX_DEPTH: usize = 128;

/// Python's `str()` of the value that `json.loads(text)` gives; `None` when
/// `text` is not one JSON value or nests deeper than [`MAX_DEPTH`].
pub(super) fn python_str(text: &str) -> Option<String> {
    let mut reader = Reader { text, pos: 0 };
    reader.skip_whitespace();
    let mut out = String::new();
    if reader.peek()? == b'"' {
        let units = reader.string()?;
        out.extend(
            units
                .iter()
                .map(|&u| char::from_u32(u).unwrap_or('\u{fffd}')),
        );
    } else {
        reader.repr(&mut out, 0)?;
    }
    reader.skip_whitespace();
    (reader.pos == text.len()).then_some(out)
}

/// A cursor over JSON text. The text has already been accepted by
/// serde_json, but every step still checks its input and gives `None` on
/// anything unexpected rather than panicking.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Consumes `expected` if it comes next.
    fn eat(&mut self, expected: u8) -> bool {
        let found = self.peek() == Some(expected);
        if found {
            self.pos += 1;
        }
        found
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let found = self.text.get(self.pos..)?.starts_with(word);
        self.pos += word.len();
        found.then_some(())
    }

    /// Appends Python's `repr` of the value that starts here.
    fn repr(&mut self, out: &mut String, depth: usize) -> Option<()> {
        match self.peek()? {
            b'n' => self.literal("null").map(|()| out.push_str("None")),
            b't' => self.literal("true").map(|()| out.push_str("True")),
            b'f' => self.literal("false").map(|()| out.push_str("False")),
            b'"' => self.string().map(|units| push_repr_str(out, &units)),
            b'[' => self.list(out, depth + 1),
            b'{' => self.dict(out, depth + 1),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => None,
        }
    }

    fn list(&mut self, out: &mut String, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1; // '['
        out.push('[');
        self.skip_whitespace();
        if !self.eat(b']') {
            loop {
                self.skip_whitespace();
                self.repr(out, depth)?;
                self.skip_whitespace();
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
                out.push_str(", ");
            }
        }
        out.push(']');
        Some(())
    }

    fn dict(&mut self, out: &mut String, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1; // '{'
                       // (key repr, value repr) in first-seen order; `index` finds a
                       // repeated key without a quadratic scan. Distinct strings have
                       // distinct reprs, so comparing reprs compares keys.
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        self.skip_whitespace();
        if !self.eat(b'}') {
            loop {
                self.skip_whitespace();
                if self.peek()? != b'"' {
                    return None;
                }
                let mut key = String::new();
                push_repr_str(&mut key, &self.string()?);
                self.skip_whitespace();
                if !self.eat(b':') {
                    return None;
                }
                self.skip_whitespace();
                let mut value = String::new();
                self.repr(&mut value, depth)?;
                match index.get(&key) {
                    Some(&at) => entries[at].1 = value,
                    None => {
                        index.insert(key.clone(), entries.len());
                        entries.push((key, value));
                    }
                }
                self.skip_whitespace();
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        out.push('{');
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
        }
        out.push('}');
        Some(())
    }

    /// A JSON number as Python's `json` reads it: a fraction or an exponent
    /// makes a `float`, anything else an `int` of any size.
    fn number(&mut self, out: &mut String) -> Option<()> {
        let start = self.pos;
        let mut is_float = false;
        while let Some(b) = self.peek() {
            match b {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => is_float = true,
                _ => break,
            }
            self.pos += 1;
        }
        let text = self.text.get(start..self.pos)?;
        if is_float {
            push_float_repr(out, text.parse().ok()?);
        } else if text == "-0" {
            // The int 0 (JSON allows no leading zeros: no other spelling).
            out.push('0');
        } else {
            out.push_str(text);
        }
        Some(())
    }

    /// Decodes the string that starts here into code points, keeping lone
    /// surrogates (as Python's `json` does) so that `repr` can escape them.
    /// A high surrogate escape followed by a low one makes one character.
    fn string(&mut self) -> Option<Vec<u32>> {
        self.pos += 1; // '"'
        let mut units = Vec::new();
        loop {
            let start = self.pos;
            while !matches!(self.peek()?, b'"' | b'\\') {
                self.pos += 1;
            }
            // Both stops are ASCII, so `start..pos` lies on char boundaries.
            units.extend(self.text.get(start..self.pos)?.chars().map(u32::from));
            if self.eat(b'"') {
                return Some(units);
            }
            self.pos += 1; // '\\'
            let escape = self.peek()?;
            self.pos += 1;
            units.push(match escape {
                b'"' => 0x22,
                b'\\' => 0x5c,
                b'/' => 0x2f,
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => 0x0a,
                b'r' => 0x0d,
                b't' => 0x09,
                b'u' => self.unicode_escape()?,
                _ => return None,
            });
        }
    }

    /// The code point of a `\uXXXX` escape (the `\u` already consumed),
    /// joined with a following low surrogate escape when it is a high one.
    fn unicode_escape(&mut self) -> Option<u32> {
        let first = self.hex4()?;
        if (0xd800..0xdc00).contains(&first) && self.text.get(self.pos..)?.starts_with("\\u") {
            let after_first = self.pos;
            self.pos += 2;
            let second = self.hex4()?;
            if (0xdc00..0xe000).contains(&second) {
                return Some(0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00));
            }
            // Not a pair: the second escape is decoded on its own.
            self.pos = after_first;
        }
        Some(first)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        u32::from_str_radix(digits, 16).ok()
    }
}

/// Python's `repr` of a `str` given as code points (lone surrogates
/// allowed): single quotes, or double quotes when the text holds a single
/// quote and no double quote; `\\`, `\t`, `\n`, `\r` and the chosen quote
/// escaped; other ASCII controls as `\xhh`; non-ASCII kept when printable,
/// else `\xhh`, `\uhhhh` or `\Uhhhhhhhh`.
fn push_repr_str(out: &mut String, units: &[u32]) {
    let quote = if units.contains(&0x27) && !units.contains(&0x22) {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for &unit in units {
        let c = char::from_u32(unit);
        match c {
            Some('\\') => out.push_str("\\\\"),
            Some(c) if c == quote => {
                out.push('\\');
                out.push(c);
            }
            Some('\t') => out.push_str("\\t"),
            Some('\n') => out.push_str("\\n"),
            Some('\r') => out.push_str("\\r"),
            Some(c) if c.is_ascii_control() => push_escape(out, unit),
            Some(c) if c.is_ascii() || is_printable(c) => out.push(c),
            // Not printable, or a lone surrogate.
            _ => push_escape(out, unit),
        }
    }
    out.push(quote);
}

fn push_escape(out: &mut String, unit: u32) {
    // Writing to a String cannot fail.
    let _ = match unit {
        0..=0xff => write!(out, "\\x{unit:02x}"),
        0x100..=0xffff => write!(out, "\\u{unit:04x}"),
        _ => write!(out, "\\U{unit:08x}"),
    };
}

/// Python's `repr` of a float: the shortest digits that read back as the
/// same value, in plain notation when the decimal point falls within
/// 16 digits (`1e+16` but `1000000000000000.0`, `0.0001` but `1e-05`),
/// else in scientific notation with a signed exponent of at least two
/// digits; `.0` added to whole numbers in plain notation.
fn push_float_repr(out: &mut String, value: f64) {
    if value.is_infinite() {
        out.push_str(if value < 0.0 { "-inf" } else { "inf" });
        return;
    }
    if value.is_nan() {
        out.push_str("nan");
        return;
    }
    // Rust's `{:e}` gives the same shortest round-trip digits, as
    // `d.ddde[-]x`; only the layout differs.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    // The value is 0.DIGITS × 10^point, Python's `decpt`.
    let point = exponent + 1;
    out.push_str(sign);
    if !(-4 < point && point <= 16) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        );
    } else if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if point >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_python_repr() {
        // Expected texts are Python 3.11's repr() of the same doubles.
        for (value, expected) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (1e100, "1e+100"),
            (-2.5e-300, "-2.5e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let mut out = String::new();
            push_float_repr(&mut out, value);
            assert_eq!(out, expected, "{value:e}");
        }
    }

    #[test]
    fn malformed_text_renders_nothing() {
        // serde_json hands over valid JSON only; anything else must still
        // give `None`, never a panic or a partial rendering.
        for text in [
            "",
            " ",
            "nul",
            "tru",
            "[1,",
            "[1 2]",
            "{\"a\" 1}",
            "{1: 2}",
            "{\"a\": 1,}",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "1 2",
            "[] x",
            "@",
        ] {
            assert_eq!(python_str(text), None, "{text:?}");
        }
    }

    #[test]
    fn strings_alone_are_their_text() {
        assert_eq!(python_str(r#""It's \"x\"""#).as_deref(), Some("It's \"x\""));
        assert_eq!(python_str(r#" "\ud83e\udd8a" "#).as_deref(), Some("🦊"));
        assert_eq!(python_str(r#""\udc00""#).as_deref(), Some("\u{fffd}"));
    }
}

//! Writing text as a JSON string: the escaper of the intake's batch bodies, where every event's JSON text
//! becomes one string.
//!
//! A leaf: it uses nothing of the crate.
//!
//! Why by hand: JumpCloud's events have a quote every seven bytes or so, and the escapers at hand are
//! built for text where escapes are rare. serde_json's goes byte by byte; `json-escape-simd` (sonic-rs's)
//! checks 128 bytes at a time but starts over after every escape, checking the next 128 again: on this
//! text, most of its work. Here a block of 32 bytes is checked once, and its escapes are then written one
//! after the other from the mask of where they are (BENCHMARKS.md, "A JSON reader and an escaper of our
//! own").
//!
//! Invariants:
//! - The output is exactly serde_json's (`serde_json::to_writer` of the same `&str`): `"` and `\` escaped,
//!   control characters as `\b \f \n \r \t` or `\u00XX` (lower-case hex), everything else as it is.
//! - No `unsafe`: the output is written into initialized room of the `Vec` (grown with zeros ahead of the
//!   writing, a block's worst case at a time) and the `Vec` is cut back to what was written at the end.

/// Bytes checked at once.
pub const BLOCK: usize = 32;
/// The longest a byte becomes once escaped (`\u001f`).
const LONGEST: usize = 6;
/// The room one block may need: every byte at its longest, and the copy of a whole block after the last
/// escape (a fixed-size copy, of which only the block's own bytes are kept).
const BLOCK_ROOM: usize = BLOCK * LONGEST + BLOCK;
/// How much room is added (zeroed) at a time when the output runs short.
const GROW: usize = 16 * 1024;
/// The most a [`Writer`] needs beyond what it writes: reserving this much more than the output's size
/// spares a reallocation.
pub const ROOM: usize = BLOCK_ROOM;

/// Writes into a `Vec` through the room ahead of what was written: [`Writer::string`] and [`Writer::raw`]
/// append, and the `Vec` is cut back to what was written when the writer is dropped.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// How much of `out` is written; the rest, up to `out.len()`, is room (zeros or stale bytes).
    len: usize,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        let len = out.len();
        Writer { out, len }
    }

    /// A writer writing from the start of `out`, over what it holds: those bytes are room, written over
    /// and not zeroed again (a buffer of an earlier body, reused), and `out` ends up holding exactly what
    /// was written.
    pub fn over(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out, len: 0 }
    }

    /// Appends `bytes` as they are.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.room(bytes.len());
        self.out[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `text` as a JSON string, quotes included.
    pub fn string(&mut self, text: &str) {
        self.raw(b"\"");
        let bytes = text.as_bytes();
        let mut at = 0;
        // A block's copies read up to a block past it: taken from the text while it has that much.
        while let Some(window) = bytes.get(at..at + 2 * BLOCK) {
            self.block(window.try_into().expect("two blocks"), BLOCK);
            at += BLOCK;
        }
        while at < bytes.len() {
            let len = (bytes.len() - at).min(BLOCK);
            let mut padded = [0u8; 2 * BLOCK];
            padded[..len].copy_from_slice(&bytes[at..at + len]);
            self.block(&padded, len);
            at += len;
        }
        self.raw(b"\"");
    }

    /// Makes sure `out` has `needed` bytes of room after what is written.
    fn room(&mut self, needed: usize) {
        let needed = self.len + needed;
        if self.out.len() < needed {
            // Zeroed a piece at a time, ahead of the writing, within the capacity when it is enough: the
            // room alone never reallocates.
            let ahead = (self.len + GROW).min(self.out.capacity()).max(needed);
            self.out.resize(ahead, 0);
        }
    }

    /// Writes the first `len` bytes of `padded` (at most a block; the rest is room for fixed-size copies).
    #[inline(always)]
    fn block(&mut self, padded: &[u8; 2 * BLOCK], len: usize) {
        self.room(BLOCK_ROOM);
        let out = &mut self.out[self.len..self.len + BLOCK_ROOM];
        let mut escapes = specials(padded[..BLOCK].try_into().expect("a block"));
        if len < BLOCK {
            escapes &= (1 << len) - 1;
        }
        if escapes == 0 {
            out[..BLOCK].copy_from_slice(&padded[..BLOCK]);
            self.len += len;
            return;
        }
        // `from`: the first byte of the block not written yet; `at`: where it goes in `out`.
        let (mut from, mut at) = (0, 0);
        while escapes != 0 {
            let escape = escapes.trailing_zeros() as usize;
            escapes &= escapes - 1;
            // The bytes before the escape, copied as a whole block of which only they are kept.
            out[at..at + BLOCK].copy_from_slice(&padded[from..from + BLOCK]);
            at += escape - from;
            let byte = padded[escape];
            let short = SHORT[usize::from(byte)];
            if short != 0 {
                out[at..at + 2].copy_from_slice(&[b'\\', short]);
                at += 2;
            } else {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let unicode = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                out[at..at + LONGEST].copy_from_slice(&unicode);
                at += LONGEST;
            }
            from = escape + 1;
        }
        out[at..at + BLOCK].copy_from_slice(&padded[from..from + BLOCK]);
        self.len += at + len - from;
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.out.truncate(self.len);
    }
}

/// Bit `i` set when byte `i` of `block` is a quote, a backslash or a control character: the bytes a JSON
/// string cannot hold as they are, and the only ones a reader of a string must stop at.
#[inline]
pub fn specials(block: &[u8; BLOCK]) -> u32 {
    masks(block).0
}

/// [`specials`], and bit `i` set when byte `i` is above 0x7f (not ASCII): both from one look at the block,
/// for a reader that also wants to know whether a string is all ASCII.
/// SSE2, which every x86-64 processor has: sixteen bytes at a time.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
pub fn masks(block: &[u8; BLOCK]) -> (u32, u32) {
    use safe_arch::*;
    let quote = set_splat_i8_m128i(b'"' as i8);
    let backslash = set_splat_i8_m128i(b'\\' as i8);
    let control = set_splat_i8_m128i(0x1f);
    let (mut specials, mut high) = (0u32, 0u32);
    for (i, half) in block.chunks_exact(16).enumerate() {
        let bytes = load_unaligned_m128i(half.try_into().expect("16 bytes"));
        let escaped = cmp_eq_mask_i8_m128i(bytes, quote)
            | cmp_eq_mask_i8_m128i(bytes, backslash)
            | cmp_eq_mask_i8_m128i(max_u8_m128i(bytes, control), control);
        specials |= (move_mask_i8_m128i(escaped) as u32) << (16 * i);
        high |= (move_mask_i8_m128i(bytes) as u32) << (16 * i);
    }
    (specials, high)
}

/// [`masks`] where SSE2 is not (other architectures).
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
pub fn masks(block: &[u8; BLOCK]) -> (u32, u32) {
    portable::masks(block)
}

/// [`masks`] without SIMD instructions: eight bytes at a time in a `u64`.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
mod portable {
    use super::BLOCK;

    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

    pub(super) fn masks(block: &[u8; BLOCK]) -> (u32, u32) {
        let (mut specials, mut high) = (0u32, 0u32);
        for (i, word) in block.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            specials |= (gather(special_bytes(word)) as u32) << (8 * i);
            high |= (gather(word & !LOW7) as u32) << (8 * i);
        }
        (specials, high)
    }

    /// The high bit of each byte of `x` that is zero, exactly (no borrow from one byte to the next).
    fn zero_bytes(x: u64) -> u64 {
        !(((x & LOW7) + LOW7) | x | LOW7)
    }

    /// The high bit of each byte of `word` that must be escaped.
    fn special_bytes(word: u64) -> u64 {
        zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | zero_bytes(word & (ONES * 0xe0))
    }

    /// Bit `k` set when byte `k` of `flags` (little-endian) has its high bit set; its other bits must be
    /// clear.
    fn gather(flags: u64) -> u64 {
        // Each flag (bit 8k + 7) to bit k: the multiplication gathers them in the top byte, each from its
        // own product term, so no two terms meet and nothing carries.
        ((flags >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
    }
}

/// What follows the backslash of an escaped byte; 0 for one written `\u00XX`.
const SHORT: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde(text: &str) -> Vec<u8> {
        serde_json::to_vec(text).expect("a string serializes")
    }

    fn escaped(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Writer::new(&mut out).string(text);
        out
    }

    #[test]
    fn writes_what_serde_json_writes() {
        for text in [
            "",
            "a",
            "\"",
            "\\",
            "{\"id\":\"5f0c\",\"service\":\"directory\"}",
            "tab\there, line\nthere, \r, \u{8}, \u{c}, \u{0}, \u{1f}, \u{7f}, é, 😀",
            &"\"".repeat(100),
            &"\u{1}".repeat(70),
            &"x".repeat(31),
            &"x".repeat(32),
            &"x".repeat(33),
        ] {
            assert_eq!(escaped(text), serde(text), "{text:?}");
        }
    }

    #[test]
    fn appends_to_what_is_there_and_leaves_no_room_behind() {
        let mut out = b"[".to_vec();
        {
            let mut writer = Writer::new(&mut out);
            writer.string("a\"b");
            writer.raw(b",");
            writer.string(&"q\"".repeat(40));
        }
        out.push(b']');
        let expected = format!(
            "[{},{}]",
            serde_json::to_string("a\"b").unwrap(),
            serde_json::to_string(&"q\"".repeat(40)).unwrap()
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    proptest! {
        #[test]
        fn both_masks_find_every_byte_to_escape_and_every_byte_above_ascii(block in proptest::array::uniform32(any::<u8>())) {
            let expected = block.iter().enumerate().fold(0u32, |mask, (i, &byte)| {
                mask | (u32::from(byte == b'"' || byte == b'\\' || byte < 0x20) << i)
            });
            let high: u32 = (0..BLOCK).filter(|&i| block[i] > 0x7f).map(|i| 1 << i).sum();
            prop_assert_eq!(masks(&block), (expected, high));
            prop_assert_eq!(portable::masks(&block), (expected, high));
        }

        #[test]
        fn any_text_is_written_as_serde_json_writes_it(text in ".{0,300}", quotes in "[\"\\\\a\\x00-\\x1f]{0,80}") {
            prop_assert_eq!(escaped(&text), serde(&text));
            prop_assert_eq!(escaped(&quotes), serde(&quotes));
            let both = format!("{quotes}{text}{quotes}");
            prop_assert_eq!(escaped(&both), serde(&both));
        }
    }
}

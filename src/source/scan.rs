//! Finds the elements of a JSON array in a body that arrives in pieces, so that a page of events can be
//! queued while it is still being read and memory does not grow with the page size.
//!
//! The scanner only finds where each element begins and ends (strings, escapes and nesting are followed
//! byte by byte); whether an element is valid JSON is for the caller to check. Invariants:
//! - Each element is handed out once, as the exact bytes received (a slice sharing the pieces' buffer,
//!   never copied again), in the order of the array.
//! - The scanner holds at most the bytes of the element being read and of the piece that completed it:
//!   bytes before an element that was handed out are let go. Besides, it keeps up to [`SPARE_BLOCKS`] of
//!   the buffers it filled, to write in again once every element cut from them is dropped.
//! - Between answers, [`SpareBlocks`] keeps at most [`KEPT_BLOCKS`] such buffers for the agent's next
//!   scanners, and none once pages stop following one another.
//! - A body that is not one JSON array (and whitespace) is an error naming the first wrong byte's offset;
//!   the scanner never panics, whatever the bytes.

use std::sync::{Mutex, MutexGuard};

use bytes::{Buf, Bytes, BytesMut};

/// Where the scanner is in the array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the opening `[`.
    Start,
    /// After `[` or after `,`: an element (or, right after `[`, the closing `]`) comes next.
    BeforeElement,
    /// Inside an element that starts at the beginning of the buffer.
    InElement,
    /// After an element: `,` or `]` comes next.
    AfterElement,
    /// After the closing `]`: only whitespace may follow.
    Done,
}

/// The size of the buffers the pieces of a large answer are copied into (a larger piece gets a buffer of
/// its own size; the first buffers of an answer are no larger than what came so far).
const BLOCK_BYTES: usize = 1024 * 1024;
/// How many filled buffers are kept for reuse: the elements of a part being queued hold two or three,
/// the part being read one or two.
const SPARE_BLOCKS: usize = 3;
/// How many buffers [`SpareBlocks`] keeps between answers: what one scanner holds at most.
const KEPT_BLOCKS: usize = SPARE_BLOCKS + 1;

/// Buffers that the scanners of finished answers filled, for the scanners of the next answers.
///
/// A stream catching up reads page after page; without these, each page's scanner started with no buffer
/// and filled freshly mapped ones (see [`ArrayScanner::next_block`]): most of the agent's page faults
/// while catching up. One is shared by all the streams of an agent, so what it holds does not grow with
/// their number: at most [`KEPT_BLOCKS`] buffers, those of the last answer that asked to keep them, and
/// none after [`SpareBlocks::release`] (a stream reached the present: the next page is a poll interval
/// away).
#[derive(Debug, Default)]
pub struct SpareBlocks(Mutex<Vec<BytesMut>>);

impl SpareBlocks {
    /// Takes every buffer kept, for a new scanner ([`ArrayScanner::with_blocks`]).
    pub fn take(&self) -> Vec<BytesMut> {
        std::mem::take(&mut *self.lock())
    }

    /// Keeps a finished scanner's buffers ([`ArrayScanner::take_blocks`]), up to [`KEPT_BLOCKS`] in all.
    pub fn keep(&self, blocks: Vec<BytesMut>) {
        let mut kept = self.lock();
        let room = KEPT_BLOCKS.saturating_sub(kept.len());
        kept.extend(blocks.into_iter().take(room));
    }

    /// Lets every buffer go.
    pub fn release(&self) {
        self.lock().clear();
    }

    /// How many buffers are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A panic while the list was held cannot leave it inconsistent (a `Vec` of buffers).
    fn lock(&self) -> MutexGuard<'_, Vec<BytesMut>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why a body is not a JSON array.
#[derive(Debug, PartialEq, Eq)]
pub struct ScanError {
    /// The offset in the body of the byte that does not fit.
    pub offset: u64,
    pub what: &'static str,
}

/// Splits a JSON array into its elements, piece by piece.
#[derive(Debug)]
pub struct ArrayScanner {
    /// Bytes received and not handed out; when an element is being read, it starts at offset 0.
    buffer: BytesMut,
    /// Buffers filled before `buffer`, still shared with the elements cut from them, or free again.
    spare: Vec<BytesMut>,
    /// `buffer` was grown past a block for a large element: it is let go, not kept in `spare`.
    oversized: bool,
    /// `buffer` is still the empty one the scanner started with: nothing to keep.
    unfilled: bool,
    /// How far into `buffer` the current state has looked.
    pos: usize,
    /// The body offset of `buffer[0]`.
    base: u64,
    state: State,
    /// No element yet: `]` may close the array at once.
    empty: bool,
    /// Within the current element: how deep in `{`/`[`, and whether in a string (after a `\`).
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The current element is a bare value (number, `true`...), which ends where a separator starts.
    bare: bool,
    /// The caller's reader was given its chance at the current element (see
    /// [`ArrayScanner::next_element_with`]).
    tried: bool,
}

impl Default for ArrayScanner {
    fn default() -> Self {
        ArrayScanner {
            buffer: BytesMut::new(),
            spare: Vec::new(),
            oversized: false,
            unfilled: true,
            pos: 0,
            base: 0,
            state: State::Start,
            empty: true,
            depth: 0,
            in_string: false,
            escaped: false,
            bare: false,
            tried: false,
        }
    }
}

impl ArrayScanner {
    /// A scanner that writes into `blocks` (buffers another scanner filled, see [`SpareBlocks`]) before it
    /// asks for new ones.
    pub fn with_blocks(mut blocks: Vec<BytesMut>) -> ArrayScanner {
        blocks.truncate(KEPT_BLOCKS);
        ArrayScanner {
            spare: blocks,
            ..ArrayScanner::default()
        }
    }

    /// Takes the buffers this scanner filled (not one grown past a block for a large element), for
    /// another scanner; the elements handed out keep their bytes. Call it once the body has ended: the
    /// scanner then holds nothing more to read.
    pub fn take_blocks(&mut self) -> Vec<BytesMut> {
        let mut blocks = std::mem::take(&mut self.spare);
        let buffer = std::mem::take(&mut self.buffer);
        let unfilled = std::mem::replace(&mut self.unfilled, true);
        if !std::mem::take(&mut self.oversized) && !unfilled {
            blocks.push(buffer);
        }
        for block in &mut blocks {
            block.clear();
        }
        blocks
    }

    /// Adds the next piece of the body.
    pub fn push(&mut self, piece: &[u8]) {
        if self.buffer.capacity() - self.buffer.len() < piece.len() {
            if self.buffer.len() + piece.len() <= BLOCK_BYTES {
                self.next_block(piece.len());
            } else {
                // An element larger than a block: `BytesMut` grows its buffer (doubling, in place once
                // nothing else holds it), and that buffer is not kept for reuse.
                self.oversized = true;
            }
        }
        self.buffer.extend_from_slice(piece);
    }

    /// Moves the bytes not handed out to a buffer with room for `additional` more: a spare one whose
    /// elements were all dropped, else a new one.
    ///
    /// Why not let `BytesMut` grow: the buffer is still shared with the elements of the part being
    /// queued, so it would allocate anew each time, in sizes the allocator serves with a fresh `mmap`
    /// (over 256 KiB, see `crate::allocator`) that the kernel maps and zeroes page by page. Reusing a few
    /// buffers of a fixed size saves that for most of a page.
    fn next_block(&mut self, additional: usize) {
        let need = self.buffer.len() + additional;
        // A buffer is reclaimed whole when it is a block (`try_reclaim(need)` alone would leave it only
        // `need` bytes of room, and the next piece would need another buffer already).
        let reusable = self
            .spare
            .iter_mut()
            .position(|block| block.try_reclaim(BLOCK_BYTES.max(need)) || block.try_reclaim(need));
        let mut block = match reusable {
            Some(at) => self.spare.swap_remove(at),
            // A small answer gets a small buffer: as much as came so far, up to a block.
            None => BytesMut::with_capacity(need.max((self.base as usize + need).min(BLOCK_BYTES))),
        };
        block.extend_from_slice(&self.buffer);
        let mut filled = std::mem::replace(&mut self.buffer, block);
        // The empty buffer a scanner starts with is not worth a place.
        let unfilled = std::mem::replace(&mut self.unfilled, false);
        if std::mem::take(&mut self.oversized) || unfilled {
            return;
        }
        filled.clear();
        if self.spare.len() >= SPARE_BLOCKS {
            self.spare.remove(0);
        }
        self.spare.push(filled);
    }

    /// The next complete element, if the bytes received hold one.
    #[cfg(test)]
    pub fn next_element(&mut self) -> Result<Option<Bytes>, ScanError> {
        let found = self.next_element_with(|_| None::<(usize, ())>)?;
        Ok(found.map(|(element, _)| element))
    }

    /// [`ArrayScanner::next_element`], letting the caller read an object element itself: `read` is given
    /// the bytes received from the element's `{` on, once per element, and returns how many bytes the
    /// object takes and what it made of them, or `None` when it cannot read it whole (cut short, not
    /// JSON...). The element is then found byte by byte, as always, and comes out with `None`.
    ///
    /// Why: a reader that parses the object (serde_json) finds its end on the way, so most elements are
    /// read once instead of twice. An element cut by the end of a piece is given to `read` before it is
    /// complete and found byte by byte afterwards; that is one element a piece, and never quadratic.
    pub fn next_element_with<T>(
        &mut self,
        mut read: impl FnMut(&[u8]) -> Option<(usize, T)>,
    ) -> Result<Option<(Bytes, Option<T>)>, ScanError> {
        loop {
            match self.state {
                State::Start | State::BeforeElement | State::AfterElement | State::Done => {
                    let Some(byte) = self.skip_whitespace() else {
                        return Ok(None);
                    };
                    self.between(byte)?;
                }
                State::InElement => {
                    if !std::mem::replace(&mut self.tried, true) && self.pos == 0 {
                        if let Some((len, value)) = self.read_whole(&mut read) {
                            return Ok(Some((self.hand_out(len), Some(value))));
                        }
                    }
                    return Ok(self.in_element()?.map(|element| (element, None)));
                }
            }
        }
    }

    /// The caller's reading of the object at the head of the buffer, if it read one whole: its length
    /// must end on the object's `}` within the bytes received.
    fn read_whole<T>(
        &self,
        read: &mut impl FnMut(&[u8]) -> Option<(usize, T)>,
    ) -> Option<(usize, T)> {
        if self.buffer.first() != Some(&b'{') {
            return None;
        }
        let (len, value) = read(&self.buffer)?;
        (len > 0 && len <= self.buffer.len() && self.buffer[len - 1] == b'}')
            .then_some((len, value))
    }

    /// Checks that the body ended where an array may end.
    pub fn finish(&self) -> Result<(), ScanError> {
        match self.state {
            State::Done => Ok(()),
            State::Start => Err(self.error(self.pos, "an empty body")),
            // A bare value at the very end of the body was never closed by `]`.
            _ => Err(self.error(self.buffer.len(), "the body ends inside the array")),
        }
    }

    /// Drops leading whitespace (outside any element); the first other byte, if any.
    fn skip_whitespace(&mut self) -> Option<u8> {
        let skip = self
            .buffer
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buffer.len());
        self.consume(skip);
        self.buffer.first().copied()
    }

    /// Lets go of the first `n` bytes of the buffer (not part of any element).
    fn consume(&mut self, n: usize) {
        self.buffer.advance(n);
        self.base += n as u64;
        self.pos = 0;
    }

    /// Handles the structural byte `byte` at the head of the buffer, between elements.
    fn between(&mut self, byte: u8) -> Result<(), ScanError> {
        match (self.state, byte) {
            (State::Start, b'[') => self.state = State::BeforeElement,
            (State::Start, _) => return Err(self.error(0, "the body does not start with `[`")),
            (State::BeforeElement, b']') if self.empty => self.state = State::Done,
            (State::BeforeElement, b']' | b',') => {
                return Err(self.error(0, "a value is missing in the array"))
            }
            (State::BeforeElement, first) => {
                self.state = State::InElement;
                self.empty = false;
                self.depth = 0;
                self.in_string = false;
                self.escaped = false;
                self.tried = false;
                self.bare = !matches!(first, b'{' | b'[' | b'"');
                // The element starts here: `in_element` reads from offset 0.
                return Ok(());
            }
            (State::AfterElement, b',') => self.state = State::BeforeElement,
            (State::AfterElement, b']') => self.state = State::Done,
            (State::AfterElement, _) => {
                return Err(self.error(0, "`,` or `]` expected after a value"))
            }
            (State::Done, _) => return Err(self.error(0, "data after the end of the array")),
            (State::InElement, _) => {}
        }
        self.consume(1);
        Ok(())
    }

    /// Reads on in the element at the head of the buffer; hands it out when it is complete.
    fn in_element(&mut self) -> Result<Option<Bytes>, ScanError> {
        let mut i = self.pos;
        let bytes = &self.buffer[..];
        let end = loop {
            if i >= bytes.len() {
                self.pos = i;
                return Ok(None);
            }
            if self.in_string {
                // Most of an event is string content: jump to the next quote or backslash.
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                    None => {
                        self.pos = bytes.len();
                        return Ok(None);
                    }
                    Some(at) => {
                        i += at;
                        if bytes[i] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                            if self.depth == 0 {
                                // A string element ends at its closing quote.
                                break i + 1;
                            }
                        }
                        i += 1;
                        continue;
                    }
                }
            }
            let byte = bytes[i];
            if self.bare {
                if byte.is_ascii_whitespace() || byte == b',' || byte == b']' {
                    break i;
                }
                if matches!(byte, b'{' | b'}' | b'[' | b'"') {
                    return Err(self.error(i, "a value is malformed"));
                }
                i += 1;
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        break i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        };
        Ok(Some(self.hand_out(end)))
    }

    /// Hands out the element that takes the first `len` bytes of the buffer.
    fn hand_out(&mut self, len: usize) -> Bytes {
        self.state = State::AfterElement;
        self.base += len as u64;
        self.pos = 0;
        self.buffer.split_to(len).freeze()
    }

    fn error(&self, at: usize, what: &'static str) -> ScanError {
        ScanError {
            offset: self.base + at as u64,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Scans `body` fed in pieces of `piece` bytes; the elements, or the error.
    fn scan(body: &[u8], piece: usize) -> Result<Vec<String>, ScanError> {
        let mut scanner = ArrayScanner::default();
        let mut found = Vec::new();
        for chunk in body.chunks(piece.max(1)) {
            scanner.push(chunk);
            while let Some(element) = scanner.next_element()? {
                found.push(String::from_utf8_lossy(&element).into_owned());
            }
        }
        scanner.finish()?;
        Ok(found)
    }

    #[test]
    fn elements_come_out_as_received_in_any_pieces() {
        let body =
            br#" [ {"a":"x,]}\"{"} , 1, "two\"]", null,[3,[4]] ,true,-1.5e3,{"b":{"c":[]}}] "#;
        let expected = vec![
            r#"{"a":"x,]}\"{"}"#,
            "1",
            r#""two\"]""#,
            "null",
            "[3,[4]]",
            "true",
            "-1.5e3",
            r#"{"b":{"c":[]}}"#,
        ];
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(
                scan(body, piece).expect("an array"),
                expected,
                "pieces of {piece}"
            );
        }
        assert_eq!(scan(b"[]", 1).expect("empty"), Vec::<String>::new());
        assert_eq!(scan(b"  [ ]\n", 1).expect("empty"), Vec::<String>::new());
    }

    #[test]
    fn what_is_not_an_array_is_an_error_at_its_offset() {
        let cases: [(&[u8], u64); 9] = [
            (b"", 0),
            (b"   ", 3),
            (b"<html>", 0),
            (b"{\"a\":1}", 0),
            (b"[1,]", 3),
            (b"[,1]", 1),
            (b"[1 2]", 3),
            (b"[1] x", 4),
            (b"[{\"a\":1}", 8),
        ];
        for (body, offset) in cases {
            let err = scan(body, 1).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(
                err.offset,
                offset,
                "{}: {}",
                String::from_utf8_lossy(body),
                err.what
            );
        }
    }

    #[test]
    fn an_element_larger_than_a_block_comes_out_whole_and_its_buffer_is_not_kept() {
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(3 * BLOCK_BYTES));
        let body = format!("[{{}},{huge},{{}}]");
        let mut scanner = ArrayScanner::default();
        let mut elements = Vec::new();
        for piece in body.as_bytes().chunks(64 * 1024) {
            scanner.push(piece);
            while let Some(element) = scanner.next_element().expect("fine") {
                elements.push(element);
            }
        }
        scanner.finish().expect("complete");
        assert_eq!(elements.len(), 3);
        assert_eq!(elements[1], huge.as_bytes());
        assert!(
            scanner.spare.iter().all(|b| b.capacity() <= BLOCK_BYTES),
            "no buffer grown for the large element is kept"
        );
    }

    #[test]
    fn buffers_are_written_again_once_their_elements_are_dropped() {
        let element = format!("{{\"s\":\"{}\"}}", "x".repeat(1000));
        // As many elements as fit in one buffer.
        let fit = BLOCK_BYTES / (element.len() + 1);
        let piece = format!("{element},").repeat(fit);
        let mut scanner = ArrayScanner::default();
        scanner.push(b"[");
        assert_eq!(scanner.next_element().expect("fine"), None);
        let read = |scanner: &mut ArrayScanner| {
            scanner.push(piece.as_bytes());
            let mut elements = Vec::new();
            while let Some(element) = scanner.next_element().expect("fine") {
                elements.push(element);
            }
            assert_eq!(elements.len(), fit);
            elements
        };
        let within = |elements: &[Bytes], start: usize| {
            elements.iter().all(|e| {
                let at = e.as_ptr() as usize;
                at >= start && at < start + piece.len()
            })
        };
        let first = read(&mut scanner);
        let first_buffer = first[0].as_ptr() as usize;
        assert!(within(&first, first_buffer));
        // The first buffer is full and its elements are held: the next ones go to a new buffer.
        let second = read(&mut scanner);
        assert!(!within(&second, first_buffer));
        // Once they are dropped, the first buffer is written again, not a new one.
        drop(first);
        let third = read(&mut scanner);
        assert!(within(&third, first_buffer), "the first buffer is reused");
        assert!(third
            .iter()
            .chain(&second)
            .all(|e| e[..] == *element.as_bytes()));
        scanner.push(b"{}]");
        assert_eq!(
            scanner.next_element().expect("fine").as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(scanner.next_element().expect("fine"), None);
        scanner.finish().expect("complete");
    }

    /// Reads all of `body`, in pieces of 64 KiB, with `scanner`.
    fn read_whole(scanner: &mut ArrayScanner, body: &[u8]) -> Vec<Bytes> {
        let mut elements = Vec::new();
        for piece in body.chunks(64 * 1024) {
            scanner.push(piece);
            while let Some(element) = scanner.next_element().expect("an array") {
                elements.push(element);
            }
        }
        scanner.finish().expect("complete");
        elements
    }

    /// An array of `count` objects of about a kilobyte, numbered.
    fn numbered(count: usize, tag: &str) -> (String, Vec<String>) {
        let elements: Vec<String> = (0..count)
            .map(|i| format!("{{\"n\":\"{tag}-{i}\",\"s\":\"{}\"}}", "x".repeat(1000)))
            .collect();
        (format!("[{}]", elements.join(",")), elements)
    }

    #[test]
    fn the_next_answer_is_read_into_the_buffers_of_the_last() {
        // Five blocks' worth: the last buffers filled are whole blocks.
        let (first_body, _) = numbered(5000, "first");
        let mut first = ArrayScanner::default();
        let held = read_whole(&mut first, first_body.as_bytes());
        let spare = SpareBlocks::default();
        spare.keep(first.take_blocks());
        assert_eq!(
            spare.len(),
            KEPT_BLOCKS,
            "a scanner fills more than are kept"
        );
        // Where the kept buffers are, once nothing else holds them (reclaimed whole, from their start).
        drop(held);
        let mut blocks = spare.take();
        let kept: Vec<(usize, usize)> = blocks
            .iter_mut()
            .map(|block| {
                assert!(
                    block.try_reclaim(BLOCK_BYTES),
                    "a kept buffer is a whole block, held by nothing else"
                );
                (block.as_ptr() as usize, block.capacity())
            })
            .collect();
        assert_eq!(spare.len(), 0, "taken");

        let (second_body, expected) = numbered(200, "second");
        let mut second = ArrayScanner::with_blocks(blocks);
        let elements = read_whole(&mut second, second_body.as_bytes());
        assert_eq!(elements, expected);
        for element in &elements {
            let at = element.as_ptr() as usize;
            assert!(
                kept.iter()
                    .any(|&(start, len)| at >= start && at + element.len() <= start + len),
                "an element of the next answer is outside the buffers kept from the last"
            );
        }
    }

    #[test]
    fn elements_still_held_are_never_written_over_by_the_next_answer() {
        let (first_body, first_expected) = numbered(3000, "first");
        let mut first = ArrayScanner::default();
        let held = read_whole(&mut first, first_body.as_bytes());
        // The next answer gets the buffers while every element cut from them is still held.
        let (second_body, second_expected) = numbered(3000, "second");
        let mut second = ArrayScanner::with_blocks(first.take_blocks());
        let elements = read_whole(&mut second, second_body.as_bytes());
        assert_eq!(elements, second_expected);
        assert_eq!(
            held, first_expected,
            "the first answer's elements are unchanged"
        );
    }

    #[test]
    fn spare_blocks_keep_a_few_and_let_go_of_all() {
        let spare = SpareBlocks::default();
        spare.keep(
            (0..KEPT_BLOCKS + 3)
                .map(|_| BytesMut::with_capacity(16))
                .collect(),
        );
        assert_eq!(spare.len(), KEPT_BLOCKS, "no more than one scanner's worth");
        spare.keep(vec![BytesMut::with_capacity(16)]);
        assert_eq!(spare.len(), KEPT_BLOCKS);
        spare.release();
        assert!(spare.is_empty());
        assert!(spare.take().is_empty());
        // A scanner given nothing, or more than it may hold, reads as any other.
        let (body, expected) = numbered(50, "any");
        for given in [0, KEPT_BLOCKS + 2] {
            let blocks = (0..given).map(|_| BytesMut::with_capacity(100)).collect();
            let mut scanner = ArrayScanner::with_blocks(blocks);
            assert!(scanner.spare.len() <= KEPT_BLOCKS);
            assert_eq!(read_whole(&mut scanner, body.as_bytes()), expected);
        }
    }

    #[test]
    fn bytes_before_the_current_element_are_let_go() {
        let mut scanner = ArrayScanner::default();
        scanner.push(br#"[{"a":1},{"b":"#);
        assert_eq!(
            scanner.next_element().expect("fine").as_deref(),
            Some(&br#"{"a":1}"#[..])
        );
        assert_eq!(scanner.next_element().expect("fine"), None);
        // Only the unfinished element is held.
        assert_eq!(&scanner.buffer[..], br#"{"b":"#);
        scanner.push(br#"2}]"#);
        assert_eq!(
            scanner.next_element().expect("fine").as_deref(),
            Some(&br#"{"b":2}"#[..])
        );
        assert_eq!(scanner.next_element().expect("fine"), None);
        scanner.finish().expect("complete");
    }

    proptest! {
        /// Any array of JSON values, in any pieces, gives back the values serde_json finds.
        #[test]
        fn agrees_with_serde_json(values in prop::collection::vec(any_json(), 0..8), piece in 1usize..40) {
            let body = serde_json::to_string(&values).expect("json");
            let found = scan(body.as_bytes(), piece).expect("an array");
            let expected: Vec<String> = values.iter().map(|v| serde_json::to_string(v).expect("json")).collect();
            prop_assert_eq!(found, expected);
        }

        /// With a reader that parses objects (as the page reader's does), the same elements come out,
        /// and every object wholly received before its turn comes out with what the reader made of it.
        #[test]
        fn a_reader_changes_nothing_found(values in prop::collection::vec(any_json(), 0..8), piece in 1usize..40) {
            let body = serde_json::to_string(&values).expect("json");
            let (found, read) = scan_reading(body.as_bytes(), piece).expect("an array");
            let expected: Vec<String> = values.iter().map(|v| serde_json::to_string(v).expect("json")).collect();
            prop_assert_eq!(&found, &expected);
            for (element, value) in found.iter().zip(&read) {
                if let Some(value) = value {
                    prop_assert_eq!(value, element, "the reader's value is of the element it came with");
                }
            }
            // In one piece, every object is read by the reader, nothing byte by byte.
            let (_, read) = scan_reading(body.as_bytes(), body.len()).expect("an array");
            for (value, read) in values.iter().zip(&read) {
                prop_assert_eq!(value.is_object(), read.is_some());
            }
        }

        /// Whatever the bytes, scanning never panics.
        #[test]
        fn never_panics(body in prop::collection::vec(any::<u8>(), 0..200), piece in 1usize..20) {
            let _ = scan(&body, piece);
            let _ = scan_reading(&body, piece);
        }
    }

    /// [`scan`] with a reader that parses objects with serde_json: the elements, and for each what the
    /// reader read (the object's text again) or `None` when it was found byte by byte.
    #[allow(clippy::type_complexity)]
    fn scan_reading(
        body: &[u8],
        piece: usize,
    ) -> Result<(Vec<String>, Vec<Option<String>>), ScanError> {
        let read = |bytes: &[u8]| {
            let mut stream =
                serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
            let value = stream.next()?.ok()?;
            Some((
                stream.byte_offset(),
                serde_json::to_string(&value).expect("json"),
            ))
        };
        let mut scanner = ArrayScanner::default();
        let (mut found, mut values) = (Vec::new(), Vec::new());
        for chunk in body.chunks(piece.max(1)) {
            scanner.push(chunk);
            while let Some((element, value)) = scanner.next_element_with(read)? {
                found.push(String::from_utf8_lossy(&element).into_owned());
                values.push(value);
            }
        }
        scanner.finish()?;
        Ok((found, values))
    }

    #[test]
    fn an_object_the_reader_cannot_read_is_found_byte_by_byte() {
        let mut scanner = ArrayScanner::default();
        let mut asked = Vec::new();
        scanner.push(br#"[{"a":1},{"b":"#);
        let mut refuse = |bytes: &[u8]| {
            asked.push(String::from_utf8_lossy(bytes).into_owned());
            None::<(usize, ())>
        };
        let first = scanner.next_element_with(&mut refuse).expect("fine");
        assert_eq!(first, Some((Bytes::from_static(br#"{"a":1}"#), None)));
        // The second is cut short: the reader has its one chance, then it is found byte by byte.
        assert_eq!(scanner.next_element_with(&mut refuse).expect("fine"), None);
        scanner.push(br#"2}]"#);
        let second = scanner.next_element_with(&mut refuse).expect("fine");
        assert_eq!(
            second.map(|(e, _)| e),
            Some(Bytes::from_static(br#"{"b":2}"#))
        );
        assert_eq!(
            asked,
            vec![r#"{"a":1},{"b":"#.to_string(), r#"{"b":"#.to_string()]
        );
        // A reader that claims a length that does not end on the object's `}` is not believed.
        let mut scanner = ArrayScanner::default();
        scanner.push(br#"[{"a":[1,2]}]"#);
        let lying = scanner.next_element_with(|_| Some((5, ()))).expect("fine");
        assert_eq!(lying, Some((Bytes::from_static(br#"{"a":[1,2]}"#), None)));
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\\\]\\[{},é]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\"]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

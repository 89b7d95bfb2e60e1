//! Reading events from the head of the queue, for every stream or for one.
//!
//! Invariants:
//! - Reading removes nothing and writes nothing: an event leaves only when acknowledged or dead-lettered.
//! - Events come in sequence order; acknowledged or dead-lettered events are skipped.
//! - A batch holds at least one event when any is there, whatever the byte limit (a single event larger
//!   than the limit must still be sent, or dead-lettered).
//! - [`Queue::read_stream_batch`] reports how far it looked: every event of its stream up to that sequence
//!   number is in the batch (or already gone), so the next read may start after it once the batch is done.

use bytestring::ByteString;

use super::acks::bit;
use super::ledger::read_u64;
use super::record::{chunk_header, decode_chunk};
use super::{Queue, QueueError};
use crate::event::QueuedEvent;

impl Queue {
    /// Reads up to `max_events` events (and about `max_bytes` of raw text, at least one event) from the head,
    /// starting after `after` when given. Nothing is removed.
    pub fn read_batch(
        &self,
        after: Option<u64>,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedEvent>, QueueError> {
        self.read_from(None, after, max_events, max_bytes, usize::MAX)
            .map(|(batch, _)| batch)
    }

    /// Like [`Queue::read_batch`], but only events of the stream `tag`, and examining at most `max_scan`
    /// records. Returns the batch and the last sequence number examined: every event of that stream up to
    /// it is in the batch, so the next read may start after it once the batch is acknowledged. (For a
    /// forwarder per stream: several JumpCloud organizations, each to its own intake.)
    pub fn read_stream_batch(
        &self,
        tag: u32,
        after: Option<u64>,
        max_events: usize,
        max_bytes: usize,
        max_scan: usize,
    ) -> Result<(Vec<QueuedEvent>, Option<u64>), QueueError> {
        self.read_from(Some(tag), after, max_events, max_bytes, max_scan)
    }

    /// [`Queue::read_batch`] (every stream, `tag` None) and [`Queue::read_stream_batch`] in one.
    fn read_from(
        &self,
        tag: Option<u32>,
        after: Option<u64>,
        max_events: usize,
        max_bytes: usize,
        max_scan: usize,
    ) -> Result<(Vec<QueuedEvent>, Option<u64>), QueueError> {
        let start = after.map_or(0, |seq| seq.saturating_add(1));
        // The chunk that holds `start` begins at or before it.
        let from = match self.events.range(..=start.to_be_bytes()).next_back() {
            Some(entry) => read_u64(Some(entry?.0)),
            None => start,
        };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut examined = after;
        // `max_scan` counts records (chunks): a chunk holds one stream's events, so another stream's chunk
        // is skipped whole from its header, without decoding its events.
        // One buffer for the chunks' decompressed events, written again for each chunk.
        let mut scratch = Vec::new();
        for (scanned, entry) in self.events.range(from.to_be_bytes()..).enumerate() {
            if scanned >= max_scan {
                break;
            }
            let (key, value) = entry?;
            let first = read_u64(Some(key.clone()));
            let header = chunk_header(first, &value)?;
            let last = first + header.count.saturating_sub(1);
            if tag.is_some_and(|tag| header.stream != tag) {
                examined = examined.max(Some(last));
                continue;
            }
            let chunk = decode_chunk(first, &value, &mut scratch)?;
            let acked = self.acked.get(&key)?;
            // The events taken from this chunk share one buffer: one allocation per chunk rather than per
            // event (a batch of a thousand events spans about thirty chunks).
            let mut text = Vec::new();
            let mut taken = Vec::new();
            let mut full = false;
            for (index, event) in chunk.events.iter().enumerate() {
                let seq = first + index as u64;
                if seq < start {
                    continue;
                }
                if acked.as_deref().is_some_and(|bits| bit(bits, index)) {
                    examined = Some(seq);
                    continue;
                }
                if (!batch.is_empty() || !taken.is_empty()) && bytes + event.raw.len() > max_bytes {
                    full = true;
                    break;
                }
                if taken.is_empty() {
                    text.reserve(chunk.events[index..].iter().map(|e| e.raw.len()).sum());
                }
                bytes += event.raw.len();
                taken.push((
                    seq,
                    event.timestamp_ns,
                    text.len()..text.len() + event.raw.len(),
                ));
                text.extend_from_slice(event.raw);
                examined = Some(seq);
                if batch.len() + taken.len() >= max_events {
                    full = true;
                    break;
                }
            }
            let shared = bytes::Bytes::from(text);
            for (seq, timestamp_ns, range) in taken {
                let raw = ByteString::try_from(shared.slice(range))
                    .map_err(|_| QueueError::Damaged(format!("event #{seq} is not UTF-8")))?;
                batch.push(QueuedEvent {
                    seq,
                    stream: chunk.stream,
                    timestamp_ns,
                    queued_at_ms: chunk.queued_at_ms,
                    raw,
                });
            }
            if full {
                break;
            }
        }
        Ok((batch, examined))
    }

    /// When the event at the head was queued (milliseconds since the epoch), if the queue is not empty.
    pub fn oldest_queued_at_ms(&self) -> Result<Option<u64>, QueueError> {
        match self.events.first()? {
            None => Ok(None),
            Some((key, value)) => Ok(Some(
                decode_chunk(read_u64(Some(key)), &value, &mut Vec::new())?.queued_at_ms,
            )),
        }
    }
}

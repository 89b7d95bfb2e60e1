//! Dead letters: events the intake will never accept, kept (never sent) in the `dead_letter` tree, under
//! their sequence number, with the reason; put back at the tail of the queue or purged on request. The same
//! tree keeps, for inspection, the answers of JumpCloud that were not events ([`KeptAnswer`]).
//!
//! Invariants:
//! - Dead-lettering moves an event in one transaction: its bit is set in `acked` (see `acks`) and its
//!   letter written together, so it is either still queued or kept here, never both and never lost.
//! - Dead letters keep their first layout ([`DEAD_LETTER_VERSION`]); another version is refused. Kept
//!   answers have a layout of their own ([`KEPT_ANSWER_VERSION`]) under keys of their own (`answer/<id>`).
//! - `stats/dead` holds (ever dead-lettered, since retried or purged), written with each change: the store
//!   holds the difference, kept answers included. A retry counts its events in again (`stats/in`, and
//!   their streams' bytes in), as a commit does.
//! - Retried letters go to the tail as ordinary chunks: consecutive letters of one stream share a chunk,
//!   in the order they were dead-lettered. A kept answer is never retried: it is not an event, and nothing
//!   that is not an event is ever sent as one. Purging deletes both.
//! - A letter's raw bytes are held once while it is written: the record is encoded from borrowed fields.
//! - At most [`MAX_KEPT_ANSWERS`] answers are kept, each cut to [`KEPT_ANSWER_MAX_BYTES`]: a server that
//!   answers garbage forever cannot fill the disk.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::acks::mark_gone;
use super::ledger::{add_stream_bytes, pair_bytes, read_pair, read_u64, Flow};
use super::ledger::{KEY_DEAD, KEY_IN, KEY_OUT, KEY_SEQ};
use super::record::ChunkWriter;
use super::{Queue, QueueError};
use crate::clock::now_ms;
use crate::event::{stream_tag, QueuedEvent};

/// Dead letters keep their first layout.
const DEAD_LETTER_VERSION: u8 = 1;
/// The layout of a kept answer.
const KEPT_ANSWER_VERSION: u8 = 2;
/// Kept answers are stored under this prefix and their id: apart from the events' 8-byte sequence numbers.
const ANSWER_PREFIX: &[u8] = b"answer/";
/// The most answers kept; the oldest go first.
pub const MAX_KEPT_ANSWERS: usize = 100;
/// The most bytes of one answer kept (the rest is counted in [`KeptAnswer::total_bytes`], not kept).
pub const KEPT_ANSWER_MAX_BYTES: usize = 1024 * 1024;

/// A dead-lettered event with the reason it can never be sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: u64,
    pub stream: u32,
    pub timestamp_ns: i64,
    pub dead_at_ms: u64,
    pub reason: String,
    pub raw: String,
}

/// [`DeadLetter`] as it is encoded, borrowing the event's text instead of copying it (same bincode layout).
#[derive(Serialize)]
struct DeadLetterRecord<'a> {
    seq: u64,
    stream: u32,
    timestamp_ns: i64,
    dead_at_ms: u64,
    reason: &'a str,
    raw: &'a str,
}

/// An answer of JumpCloud that was not a page of events, kept for inspection (never sent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptAnswer {
    /// Unique among kept answers; set by [`Queue::keep_answer`].
    pub id: u64,
    pub stream: String,
    pub kept_at_ms: u64,
    /// What was wrong with it.
    pub reason: String,
    /// JumpCloud's `X-Request-Id`, to quote to its support.
    pub request_id: Option<String>,
    /// The request's body (no secret: the keys travel in headers).
    pub query: String,
    /// The answer's size; `raw` holds at most [`KEPT_ANSWER_MAX_BYTES`] of it.
    pub total_bytes: u64,
    /// The bytes as received.
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
}

/// [`KeptAnswer`] as it is encoded, borrowing its fields (same bincode layout).
#[derive(Serialize)]
struct KeptAnswerRecord<'a> {
    id: u64,
    stream: &'a str,
    kept_at_ms: u64,
    reason: &'a str,
    request_id: Option<&'a str>,
    query: &'a str,
    total_bytes: u64,
    raw: &'a serde_bytes::Bytes,
}

impl KeptAnswer {
    /// How it is listed with the dead letters: its id as `seq`, its reason (with the request id and the
    /// query), its bytes as text.
    fn as_letter(&self) -> DeadLetter {
        let request = self.request_id.as_deref().unwrap_or("-");
        let cut = if self.total_bytes > self.raw.len() as u64 {
            format!(
                "; its first {} of {} bytes are kept",
                self.raw.len(),
                self.total_bytes
            )
        } else {
            String::new()
        };
        DeadLetter {
            seq: self.id,
            stream: stream_tag(&self.stream),
            timestamp_ns: (self.kept_at_ms as i64).saturating_mul(1_000_000),
            dead_at_ms: self.kept_at_ms,
            reason: format!(
                "not an event, kept for inspection and never sent: {} (stream {}, request id {request}, \
                 query {}{cut})",
                self.reason, self.stream, self.query
            ),
            raw: String::from_utf8_lossy(&self.raw).into_owned(),
        }
    }
}

/// One entry of the dead-letter tree.
enum Entry {
    Event(DeadLetter),
    Answer(KeptAnswer),
}

impl Queue {
    /// Moves one event from the queue to the dead-letter tree, with the reason, in one transaction.
    pub fn dead_letter(&self, event: &QueuedEvent, reason: &str) -> Result<(), QueueError> {
        let letter = DeadLetterRecord {
            seq: event.seq,
            stream: event.stream,
            timestamp_ns: event.timestamp_ns,
            dead_at_ms: now_ms(),
            reason,
            raw: &event.raw,
        };
        // Encoded once; sled keeps the record as is (cloning an `IVec` shares it), so the event's bytes are
        // not copied again for each try of the transaction.
        let record =
            sled::IVec::from(bincode::serialize(&(DEAD_LETTER_VERSION, &letter)).map_err(
                |err| QueueError::Damaged(format!("cannot encode a dead letter: {err}")),
            )?);
        let key = event.seq.to_be_bytes();
        let groups = self.locate(&[event.seq])?;
        let (totals, dead, streams, removed) = (&self.events, &self.acked, &self.dead, &self.meta)
            .transaction(|(events_tx, acked_tx, dead_tx, meta_tx)| {
                let (mut out_events, mut out_bytes) = read_pair(meta_tx.get(KEY_OUT)?);
                let (mut dead, dead_out) = read_pair(meta_tx.get(KEY_DEAD)?);
                let mut streams = Vec::new();
                let mut removed = Vec::new();
                for (first, indexes) in &groups {
                    let gone = mark_gone(events_tx, acked_tx, *first, indexes)?;
                    removed.push((gone.stream, *first, gone.bytes));
                    if gone.events > 0 {
                        out_events += gone.events;
                        out_bytes += gone.bytes;
                        dead += gone.events;
                        dead_tx.insert(&key[..], record.clone())?;
                        streams.extend(add_stream_bytes(
                            meta_tx,
                            Flow::Out,
                            gone.stream,
                            gone.bytes,
                        )?);
                    }
                }
                meta_tx.insert(KEY_OUT, &pair_bytes(out_events, out_bytes)[..])?;
                meta_tx.insert(KEY_DEAD, &pair_bytes(dead, dead_out)[..])?;
                Ok::<_, ConflictableTransactionError<QueueError>>((
                    (out_events, out_bytes),
                    (dead, dead_out),
                    streams,
                    removed,
                ))
            })?;
        self.ledger.raise_out(totals.0, totals.1);
        self.ledger.raise_dead(dead.0, dead.1);
        self.ledger.raise_streams(&streams);
        self.removed(&removed);
        Ok(())
    }

    /// Every dead letter: the dead-lettered events, oldest first, then the kept answers (listed with their
    /// id as `seq`, see [`KeptAnswer`]).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .entries()?
            .into_iter()
            .map(|entry| match entry {
                Entry::Event(letter) => letter,
                Entry::Answer(answer) => answer.as_letter(),
            })
            .collect())
    }

    /// The answers kept for inspection, oldest first, with their bytes as received.
    pub fn kept_answers(&self) -> Result<Vec<KeptAnswer>, QueueError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|entry| match entry {
                Entry::Answer(answer) => Some(answer),
                Entry::Event(_) => None,
            })
            .collect())
    }

    /// Keeps an answer that was not a page of events, for inspection, cut to [`KEPT_ANSWER_MAX_BYTES`];
    /// beyond [`MAX_KEPT_ANSWERS`] the oldest kept answer is deleted. Returns the id it was kept under.
    pub fn keep_answer(&self, answer: &KeptAnswer) -> Result<u64, QueueError> {
        let id = self.db.generate_id()?;
        let kept = KeptAnswerRecord {
            id,
            stream: &answer.stream,
            kept_at_ms: answer.kept_at_ms,
            reason: &answer.reason,
            request_id: answer.request_id.as_deref(),
            query: &answer.query,
            total_bytes: answer.total_bytes.max(answer.raw.len() as u64),
            raw: serde_bytes::Bytes::new(
                &answer.raw[..answer.raw.len().min(KEPT_ANSWER_MAX_BYTES)],
            ),
        };
        let record = sled::IVec::from(
            bincode::serialize(&(KEPT_ANSWER_VERSION, &kept)).map_err(|err| {
                QueueError::Damaged(format!("cannot encode a kept answer: {err}"))
            })?,
        );
        let mut key = ANSWER_PREFIX.to_vec();
        key.extend_from_slice(&id.to_be_bytes());
        let older: Vec<sled::IVec> = self
            .dead
            .scan_prefix(ANSWER_PREFIX)
            .keys()
            .collect::<Result<_, _>>()?;
        let excess = (older.len() + 1).saturating_sub(MAX_KEPT_ANSWERS);
        let dead = (&self.dead, &self.meta).transaction(|(dead_tx, meta_tx)| {
            let (mut dead_in, mut dead_out) = read_pair(meta_tx.get(KEY_DEAD)?);
            for old in &older[..excess] {
                if dead_tx.remove(old)?.is_some() {
                    dead_out += 1;
                }
            }
            if dead_tx.insert(&key[..], record.clone())?.is_none() {
                dead_in += 1;
            }
            meta_tx.insert(KEY_DEAD, &pair_bytes(dead_in, dead_out)[..])?;
            Ok::<_, ConflictableTransactionError<QueueError>>((dead_in, dead_out))
        })?;
        self.ledger.raise_dead(dead.0, dead.1);
        Ok(id)
    }

    /// Every entry of the dead-letter tree, in key order (events by sequence number, then answers).
    fn entries(&self) -> Result<Vec<Entry>, QueueError> {
        self.dead
            .iter()
            .map(|entry| {
                let (_, value) = entry?;
                let damaged =
                    |err: bincode::Error| QueueError::Damaged(format!("dead letter: {err}"));
                match value.first() {
                    Some(&DEAD_LETTER_VERSION) => {
                        let (_, letter): (u8, DeadLetter) =
                            bincode::deserialize(&value).map_err(damaged)?;
                        Ok(Entry::Event(letter))
                    }
                    Some(&KEPT_ANSWER_VERSION) => {
                        let (_, answer): (u8, KeptAnswer) =
                            bincode::deserialize(&value).map_err(damaged)?;
                        Ok(Entry::Answer(answer))
                    }
                    other => Err(QueueError::Damaged(format!(
                        "dead letter of format {}",
                        other.map_or("(empty)".to_string(), u8::to_string)
                    ))),
                }
            })
            .collect()
    }

    /// How many dead letters are kept: events, and answers that were not events.
    pub fn dead_letter_count(&self) -> u64 {
        self.ledger.dead_letters()
    }

    /// Moves every dead letter back to the tail of the queue, to be sent again (for example after the
    /// intake's limit was raised). Returns how many were moved.
    pub fn retry_dead_letters(&self) -> Result<u64, QueueError> {
        // Kept answers are not events: they stay where they are.
        let letters: Vec<DeadLetter> = self
            .entries()?
            .into_iter()
            .filter_map(|entry| match entry {
                Entry::Event(letter) => Some(letter),
                Entry::Answer(_) => None,
            })
            .collect();
        if letters.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let keys: Vec<[u8; 8]> = letters.iter().map(|l| l.seq.to_be_bytes()).collect();
        // Per stream: the oldest letter and the bytes put back, for the checkpoint, which must cover them
        // before they are in the queue again.
        let mut by_stream: HashMap<u32, (i64, u64)> = HashMap::new();
        for letter in &letters {
            let entry = by_stream
                .entry(letter.stream)
                .or_insert((letter.timestamp_ns, 0));
            entry.0 = entry.0.min(letter.timestamp_ns);
            entry.1 += letter.raw.len() as u64;
        }
        {
            let mut checkpoints = self.checkpoints();
            for (&tag, &(oldest, _)) in &by_stream {
                checkpoints
                    .before_commit(tag, None, oldest)
                    .map_err(|source| self.checkpoint_error(source))?;
            }
        }
        // Written as ordinary chunks under new sequence numbers at the tail: consecutive letters of one
        // stream share a chunk (a chunk never mixes streams, so a stream's forwarder can skip the
        // others' chunks whole), in the order they were dead-lettered.
        let (moved, totals, dead, streams, keys) = (&self.events, &self.dead, &self.meta)
            .transaction(|(events_tx, dead_tx, meta_tx)| {
                let first_seq = read_u64(meta_tx.get(KEY_SEQ)?);
                let mut chunks = ChunkWriter::new(first_seq, now);
                let (mut in_events, mut in_bytes) = read_pair(meta_tx.get(KEY_IN)?);
                let (dead_in, mut dead_out) = read_pair(meta_tx.get(KEY_DEAD)?);
                let mut moved = 0;
                let mut streams = Vec::new();
                for (letter, dead_key) in letters.iter().zip(&keys) {
                    if dead_tx.remove(&dead_key[..])?.is_none() {
                        continue;
                    }
                    let raw = letter.raw.as_bytes();
                    chunks.push(events_tx, letter.stream, letter.timestamp_ns, raw)?;
                    let bytes = raw.len() as u64;
                    streams.extend(add_stream_bytes(meta_tx, Flow::In, letter.stream, bytes)?);
                    in_events += 1;
                    in_bytes += bytes;
                    dead_out += 1;
                    moved += 1;
                }
                let seq = chunks.finish(events_tx)?;
                meta_tx.insert(KEY_SEQ, &seq.to_be_bytes()[..])?;
                meta_tx.insert(KEY_IN, &pair_bytes(in_events, in_bytes)[..])?;
                meta_tx.insert(KEY_DEAD, &pair_bytes(dead_in, dead_out)[..])?;
                Ok::<_, ConflictableTransactionError<QueueError>>((
                    moved,
                    (in_events, in_bytes),
                    (dead_in, dead_out),
                    streams,
                    (first_seq, seq.saturating_sub(1)),
                ))
            })?;
        self.ledger.raise_in(totals.0, totals.1);
        self.ledger.raise_dead(dead.0, dead.1);
        self.ledger.raise_streams(&streams);
        let mut checkpoints = self.checkpoints();
        for (tag, (oldest, bytes)) in by_stream {
            // Letters purged meanwhile were not put back: the extent may count more bytes than it holds,
            // which only keeps the checkpoint older (safe) until the stream drains.
            checkpoints.requeued(tag, keys, oldest, bytes);
        }
        Ok(moved)
    }

    /// Deletes every dead letter (kept answers included) for good. Returns how many were deleted.
    pub fn purge_dead_letters(&self) -> Result<u64, QueueError> {
        let keys: Vec<sled::IVec> = self.dead.iter().keys().collect::<Result<_, _>>()?;
        let (purged, dead) = (&self.dead, &self.meta).transaction(|(dead_tx, meta_tx)| {
            let (dead_in, mut dead_out) = read_pair(meta_tx.get(KEY_DEAD)?);
            let mut purged = 0;
            for key in &keys {
                if dead_tx.remove(key)?.is_some() {
                    purged += 1;
                    dead_out += 1;
                }
            }
            meta_tx.insert(KEY_DEAD, &pair_bytes(dead_in, dead_out)[..])?;
            Ok::<_, ConflictableTransactionError<QueueError>>((purged, (dead_in, dead_out)))
        })?;
        self.ledger.raise_dead(dead.0, dead.1);
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::IncomingEvent;

    fn answer(raw: &[u8]) -> KeptAnswer {
        KeptAnswer {
            id: 0,
            stream: "s".to_string(),
            kept_at_ms: 1_000,
            reason: "not a JSON array".to_string(),
            request_id: Some("req-1".to_string()),
            query: "{\"limit\":10}".to_string(),
            total_bytes: raw.len() as u64,
            raw: raw.to_vec(),
        }
    }

    #[test]
    fn kept_answers_are_listed_counted_purged_and_never_retried() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.commit_page("s", &[IncomingEvent::from_text("{\"id\":\"a\"}", 1)], None)
            .unwrap();
        let event = q.read_batch(None, 10, 1 << 20).unwrap().remove(0);
        q.dead_letter(&event, "too big").unwrap();
        let bytes = b"<html>\xff\xfe</html>";
        let id = q.keep_answer(&answer(bytes)).unwrap();
        assert_eq!(q.dead_letter_count(), 2);
        let kept = q.kept_answers().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].id, id);
        assert_eq!(kept[0].raw, bytes, "the bytes as received");
        let letters = q.dead_letters().unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[0].raw, "{\"id\":\"a\"}");
        assert!(
            letters[1].reason.contains("not a JSON array")
                && letters[1].reason.contains("request id req-1")
                && letters[1].reason.contains("query {\"limit\":10}"),
            "{}",
            letters[1].reason
        );
        assert_eq!(q.retry_dead_letters().unwrap(), 1, "only the event");
        assert_eq!(q.dead_letter_count(), 1);
        assert_eq!(q.kept_answers().unwrap().len(), 1);
        assert_eq!(
            q.depth().events,
            1,
            "the event is queued again, not the answer"
        );
        assert_eq!(q.purge_dead_letters().unwrap(), 1);
        assert_eq!(q.dead_letter_count(), 0);
        assert!(q.dead_letters().unwrap().is_empty());
    }

    #[test]
    fn kept_answers_are_bounded_in_number_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let big = vec![b'x'; KEPT_ANSWER_MAX_BYTES + 10];
        let first = q.keep_answer(&answer(&big)).unwrap();
        for _ in 0..MAX_KEPT_ANSWERS {
            q.keep_answer(&answer(b"[1]")).unwrap();
        }
        let kept = q.kept_answers().unwrap();
        assert_eq!(kept.len(), MAX_KEPT_ANSWERS);
        assert!(kept.iter().all(|k| k.id != first), "the oldest went first");
        assert_eq!(q.dead_letter_count(), MAX_KEPT_ANSWERS as u64);
        q.purge_dead_letters().unwrap();
        q.keep_answer(&answer(&big)).unwrap();
        let kept = q.kept_answers().unwrap().remove(0);
        assert_eq!(kept.raw.len(), KEPT_ANSWER_MAX_BYTES);
        assert_eq!(kept.total_bytes, big.len() as u64);
        assert!(q.dead_letters().unwrap()[0]
            .reason
            .contains(&format!("its first {KEPT_ANSWER_MAX_BYTES} of")));
    }
}

//! Dead letters: events the intake will never accept, kept (never sent) in the `dead_letter` tree, under
//! their sequence number, with the reason; put back at the tail of the queue or purged on request.
//!
//! Invariants:
//! - Dead-lettering moves an event in one transaction: its bit is set in `acked` (see `acks`) and its
//!   letter written together, so it is either still queued or kept here, never both and never lost.
//! - Dead letters keep their first layout ([`DEAD_LETTER_VERSION`]); another version is refused.
//! - `stats/dead` holds (ever dead-lettered, since retried or purged), written with each change: the store
//!   holds the difference. A retry counts its events in again (`stats/in`, and their streams' bytes in),
//!   as a commit does.
//! - Retried letters go to the tail as ordinary chunks: consecutive letters of one stream share a chunk,
//!   in the order they were dead-lettered.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::acks::mark_gone;
use super::ledger::{add_stream_bytes, pair_bytes, read_pair, read_u64, Flow};
use super::ledger::{KEY_DEAD, KEY_IN, KEY_OUT, KEY_SEQ};
use super::record::ChunkWriter;
use super::{Queue, QueueError};
use crate::clock::now_ms;
use crate::event::QueuedEvent;

/// Dead letters keep their first layout.
const DEAD_LETTER_VERSION: u8 = 1;

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

impl Queue {
    /// Moves one event from the queue to the dead-letter tree, with the reason, in one transaction.
    pub fn dead_letter(&self, event: &QueuedEvent, reason: &str) -> Result<(), QueueError> {
        let letter = DeadLetter {
            seq: event.seq,
            stream: event.stream,
            timestamp_ns: event.timestamp_ns,
            dead_at_ms: now_ms(),
            reason: reason.to_string(),
            raw: event.raw.clone(),
        };
        let record = bincode::serialize(&(DEAD_LETTER_VERSION, &letter))
            .map_err(|err| QueueError::Damaged(format!("cannot encode a dead letter: {err}")))?;
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
                        dead_tx.insert(&key[..], &record[..])?;
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

    /// Every dead-lettered event, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.dead
            .iter()
            .map(|entry| {
                let (_, value) = entry?;
                let (version, letter): (u8, DeadLetter) = bincode::deserialize(&value)
                    .map_err(|err| QueueError::Damaged(format!("dead letter: {err}")))?;
                if version != DEAD_LETTER_VERSION {
                    return Err(QueueError::Damaged(format!(
                        "dead letter of format {version}"
                    )));
                }
                Ok(letter)
            })
            .collect()
    }

    /// How many events were ever dead-lettered and are still kept.
    pub fn dead_letter_count(&self) -> u64 {
        self.ledger.dead_letters()
    }

    /// Moves every dead letter back to the tail of the queue, to be sent again (for example after the
    /// intake's limit was raised). Returns how many were moved.
    pub fn retry_dead_letters(&self) -> Result<u64, QueueError> {
        let letters = self.dead_letters()?;
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
        // Written as ordinary chunks of format 2 under new sequence numbers at the tail: consecutive letters
        // of one stream share a chunk (a chunk never mixes streams, so a stream's forwarder can skip the
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

    /// Deletes every dead letter for good. Returns how many were deleted.
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

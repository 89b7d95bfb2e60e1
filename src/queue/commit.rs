//! Committing a page: the events not seen before, their dedup entries and the stream's cursor. Also the
//! cursors themselves (`cursor/<stream>` in `meta`) and the pruning of the dedup index.
//!
//! Invariants:
//! - A page of events, the dedup entries and the stream's new cursor are written in one sled transaction
//!   ([`Queue::commit_page`]): after a crash all are there or none, so the poller simply polls again.
//!   (A page larger than [`COMMIT_MAX_EVENTS`] is written in several, the cursor with the last: what a
//!   crash leaves of it is deduplicated when it is read again.)
//! - Commits and dedup pruning take turns (`commit_lock`): they write the same keys anyway, and the dedup
//!   index decides what is new outside the transaction.
//! - Every event queued is counted in (`stats/in`, its stream's bytes in) in the same transaction, whatever
//!   wrote it: a poll, a backfill (no cursor), or a dead-letter retry (see `dead_letter`).

use sled::transaction::{ConflictableTransactionError, Transactional};

use super::ledger::{add_stream_bytes, pair_bytes, read_pair, read_u64, Flow, KEY_IN, KEY_SEQ};
use super::record::ChunkWriter;
use super::{Queue, QueueError};
use crate::clock::now_ms;
use crate::event::{stream_tag, Cursor, IncomingEvent};

/// At most this many events are committed in one transaction. sled keeps a transaction's writes in memory
/// until it commits, and a catch-up page may hold 10,000 events (10 MB or more).
pub const COMMIT_MAX_EVENTS: usize = 1000;

const CURSOR_PREFIX: &[u8] = b"cursor/";

/// How one page commit went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    pub queued: u64,
    pub duplicates: u64,
    /// The raw bytes of the events queued.
    pub queued_bytes: u64,
}

impl Queue {
    /// Queues the events not seen before and moves the stream's cursor, in one atomic transaction when the
    /// page has at most [`COMMIT_MAX_EVENTS`] events. A larger page is committed in parts of that size, the
    /// cursor with the last part: after a crash the cursor has moved only if every event is queued, and
    /// the parts already committed are known to the dedup index when the page is read again.
    pub fn commit_page(
        &self,
        stream: &str,
        events: &[IncomingEvent],
        cursor: Option<Cursor>,
    ) -> Result<CommitOutcome, QueueError> {
        if events.len() <= COMMIT_MAX_EVENTS {
            return self.commit_part(stream, events, cursor);
        }
        let mut total = CommitOutcome::default();
        let parts = events.len().div_ceil(COMMIT_MAX_EVENTS);
        for (i, part) in events.chunks(COMMIT_MAX_EVENTS).enumerate() {
            let last = i + 1 == parts;
            let outcome = self.commit_part(stream, part, cursor.filter(|_| last))?;
            total.queued += outcome.queued;
            total.duplicates += outcome.duplicates;
            total.queued_bytes += outcome.queued_bytes;
        }
        Ok(total)
    }

    /// [`Queue::commit_page`] for one transaction's worth of events.
    fn commit_part(
        &self,
        stream: &str,
        events: &[IncomingEvent],
        cursor: Option<Cursor>,
    ) -> Result<CommitOutcome, QueueError> {
        let tag = stream_tag(stream);
        let now = now_ms();
        let cursor_bytes = cursor
            .map(|cursor| bincode::serialize(&cursor))
            .transpose()
            .map_err(|err| QueueError::Damaged(format!("cannot encode a cursor: {err}")))?;
        let cursor_key = cursor_key(stream);
        // Which events are new is decided before the transaction (which cannot look up ranges), and holds
        // because no other writer of the dedup index runs until the transaction is done.
        let _commit = self
            .commit_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let identities: Vec<(i64, [u8; 16])> = events
            .iter()
            .map(|event| (event.timestamp_ns, event.key))
            .collect();
        let plan = self.dedup.plan(tag, &identities)?;
        let oldest_new = events
            .iter()
            .zip(&plan.new)
            .filter(|(_, new)| **new)
            .map(|(event, _)| event.timestamp_ns)
            .min();
        if let Some(oldest) = oldest_new {
            // The checkpoint file must cover these events before they can be in the queue.
            self.checkpoints()
                .before_commit(tag, Some(stream), oldest)
                .map_err(|source| self.checkpoint_error(source))?;
        }

        let (outcome, totals, streams, keys) = (&self.events, self.dedup.tree(), &self.meta)
            .transaction(|(events_tx, dedup_tx, meta_tx)| {
                let first_seq = read_u64(meta_tx.get(KEY_SEQ)?);
                let mut chunks = ChunkWriter::new(first_seq, now);
                let (mut in_events, mut in_bytes) = read_pair(meta_tx.get(KEY_IN)?);
                let mut outcome = CommitOutcome::default();
                for (event, new) in events.iter().zip(&plan.new) {
                    if !new {
                        outcome.duplicates += 1;
                        continue;
                    }
                    chunks.push(events_tx, tag, event.timestamp_ns, &event.raw)?;
                    in_events += 1;
                    in_bytes += event.raw.len() as u64;
                    outcome.queued += 1;
                    outcome.queued_bytes += event.raw.len() as u64;
                }
                let seq = chunks.finish(events_tx)?;
                for (key, value) in &plan.writes {
                    dedup_tx.insert(&key[..], &value[..])?;
                }
                meta_tx.insert(KEY_SEQ, &seq.to_be_bytes()[..])?;
                meta_tx.insert(KEY_IN, &pair_bytes(in_events, in_bytes)[..])?;
                let streams = add_stream_bytes(meta_tx, Flow::In, tag, outcome.queued_bytes)?;
                if let Some(cursor_bytes) = &cursor_bytes {
                    meta_tx.insert(cursor_key.as_bytes(), &cursor_bytes[..])?;
                }
                Ok::<_, ConflictableTransactionError<QueueError>>((
                    outcome,
                    (in_events, in_bytes),
                    streams,
                    (first_seq, seq.saturating_sub(1)),
                ))
            })?;
        self.ledger.raise_in(totals.0, totals.1);
        self.ledger.raise_streams(streams.as_slice());
        self.checkpoints().committed(
            stream,
            keys,
            oldest_new.unwrap_or(i64::MAX),
            outcome.queued_bytes,
            cursor.map(|c| c.watermark_ns),
        );
        Ok(outcome)
    }

    /// Forgets dedup entries of `stream` for events older than `before_ns`, stopping once at least `limit`
    /// were forgotten. Returns how many were. Safe to interrupt: it only forgets, oldest first.
    pub fn prune_dedup(
        &self,
        stream: &str,
        before_ns: i64,
        limit: usize,
    ) -> Result<usize, QueueError> {
        let _commit = self
            .commit_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.dedup.prune(stream_tag(stream), before_ns, limit)
    }

    /// The stream's last committed cursor, if it ever committed one.
    pub fn cursor(&self, stream: &str) -> Result<Option<Cursor>, QueueError> {
        match self.meta.get(cursor_key(stream))? {
            None => Ok(None),
            Some(bytes) => bincode::deserialize(&bytes)
                .map(Some)
                .map_err(|err| QueueError::Damaged(format!("cursor of stream {stream}: {err}"))),
        }
    }

    /// Every stream's cursor, by stream name.
    pub fn cursors(&self) -> Result<Vec<(String, Cursor)>, QueueError> {
        self.meta
            .scan_prefix(CURSOR_PREFIX)
            .map(|entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[CURSOR_PREFIX.len()..]).into_owned();
                let cursor = bincode::deserialize(&value).map_err(|err| {
                    QueueError::Damaged(format!("cursor of stream {name}: {err}"))
                })?;
                Ok((name, cursor))
            })
            .collect()
    }
}

fn cursor_key(stream: &str) -> String {
    format!("cursor/{stream}")
}

//! The durable queue between the pollers and the forwarder: the only module that knows sled.
//!
//! Trees of the one sled database:
//! - `events`: sequence number of a chunk's first event (u64, big-endian) → `Chunk` (bincode, versioned): up
//!   to `CHUNK_MAX_EVENTS` consecutive events of one page, raw bytes as received. Event `i` of the chunk at
//!   key `k` has sequence number `k + i`. A page belongs to one stream, so a chunk holds one stream's events
//!   (its tag is in the chunk's header): [`Queue::read_stream_batch`] skips other streams' chunks whole.
//!   Dead letters retried are written as chunks too (consecutive letters of one stream together). (Format 1
//!   records, one event each, are still read, as chunks of one.)
//! - `acked`: chunk key → bitmap of the chunk's events already acknowledged or dead-lettered; the chunk and its
//!   bitmap are removed together when the last event goes.
//! - `dedup`: records of the timestamps and identity hashes of the events each stream queued, sorted by
//!   time within a stream, so pruning is a range scan. Their layout is the business of [`dedup`].
//! - `dead_letter`: sequence number → [`DeadLetter`]: events the intake will never accept, kept, never sent.
//! - `meta`: cursors (`cursor/<stream>`), the next sequence number, the in/out counters and the per-stream
//!   byte counters (`stats/stream_in/<tag>`, `stats/stream_out/<tag>`: an ack or dead-letter counts only the
//!   bytes of the events it newly marks in a chunk).
//!
//! Why chunks: sled 0.34 copies and merges a tree node on every insert and remove, so its cost is per
//! operation, not per byte; one record per event made those copies most of the agent's CPU (BENCHMARKS.md).
//!
//! Invariants:
//! - A page of events, the dedup entries and the stream's new cursor are written in one sled transaction
//!   ([`Queue::commit_page`]): after a crash both are there or neither, so the poller simply polls again.
//!   (A page larger than [`COMMIT_MAX_EVENTS`] is written in several, the cursor with the last: what a
//!   crash leaves of it is deduplicated when it is read again.)
//!   Commits and dedup pruning take turns (`commit_lock`): they write the same keys anyway, and the dedup
//!   index decides what is new outside the transaction.
//! - An event leaves the queue only through [`Queue::ack`] (after the intake said 2xx) or
//!   [`Queue::dead_letter`] (moved, in one transaction), which set its bit in `acked`; a chunk is removed
//!   only when every bit is set. Nothing is ever dropped.
//! - Queue depth comes from persisted counters (`in` written by pollers, `out` by the forwarder, each in the
//!   same transaction as the change it counts), never from `Tree::len()`, which scans.
//! - No `Db`/`Tree` method is called inside a transaction closure (sled deadlocks), and the closures have no
//!   side effects outside their return value (sled may run them more than once).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::Tree;

use dedup::DedupIndex;

use crate::clock::now_ms;
use crate::event::{stream_tag, Cursor, IncomingEvent, QueuedEvent};

mod dedup;

/// The version of the on-disk record layout; records of an unknown version are refused, not misread.
const FORMAT_VERSION: u8 = 2;
/// Records written before chunks: one [`Envelope`] per event. Read (and acknowledged) as chunks of one.
const SINGLE_EVENT_VERSION: u8 = 1;
/// Dead letters keep their first layout.
const DEAD_LETTER_VERSION: u8 = 1;

/// At most this many events in one chunk, and about this many raw bytes. sled keeps up to 16 entries in a
/// leaf node and holds a whole node in memory while it is cached, so the chunk size sets the size of the
/// nodes that memory is made of. sled's cache has 256 shards that each keep their latest node whatever the
/// capacity, and evict only after 64 accesses of their own: what stays resident is a few hundred recent
/// leaves. Chunks of 64 KiB made 1 MiB leaves and 175 MB of RSS with a backlog of a million events; 8 KiB
/// chunks keep leaves near 100 KiB and that RSS under 64 MB, for about one CPU second per million events
/// more than 16 KiB chunks (BENCHMARKS.md, "Memory" and "Dedup records").
/// Chunks written with other limits are read all the same: only new chunks are cut to this size.
const CHUNK_MAX_EVENTS: usize = 8;
const CHUNK_MAX_BYTES: usize = 8 * 1024;

/// At most this many events are committed in one transaction. sled keeps a transaction's writes in memory
/// until it commits, and a catch-up page may hold 10,000 events (10 MB or more).
pub const COMMIT_MAX_EVENTS: usize = 1000;

const KEY_SEQ: &[u8] = b"seq";
const KEY_IN: &[u8] = b"stats/in";
const KEY_OUT: &[u8] = b"stats/out";
/// (events ever dead-lettered, events since retried or purged): the store holds the difference.
const KEY_DEAD: &[u8] = b"stats/dead";
const KEY_LAST_ACK: &[u8] = b"stats/last_ack_ms";
/// Per stream (followed by the 4-byte tag): raw bytes ever queued, and ever removed (sent, dead-lettered).
const STREAM_IN: &[u8] = b"stats/stream_in/";
const STREAM_OUT: &[u8] = b"stats/stream_out/";

/// sled's page cache; its 1 GiB default would make RSS grow with the database. sled splits it in 256 shards
/// that each keep their most recent node whatever its size, so the real floor is higher than this.
const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;

/// How long opening waits for a queue's lock before saying another process holds it.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// sled's log segment size for a new queue (sled's default is 512 KiB). sled writes any node larger than a
/// quarter of a segment to a file of its own (open, write, fsync, later unlink); with 1 MiB segments a leaf
/// of full chunks (up to 17 of them) stays in the log. An existing queue keeps the size it was created
/// with, which sled stores in its `conf` file and refuses to change.
const NEW_QUEUE_SEGMENT_SIZE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "cannot open the queue in {dir}: {source}. If it is damaged, stop the agent, move the folder aside \
         (mv {dir} {dir}.damaged) and start again: JumpCloud keeps events for 90 days, so raise \
         jumpcloud.initial_lookback to cover the time since the last forwarded event"
    )]
    Open { dir: String, source: sled::Error },
    #[error(
        "the queue in {0} is in use by another process (is jcdi-forwarder already running? \
         `jcdi-forwarder status` asks it instead); only one process may open a queue"
    )]
    Locked(String),
    #[error(
        "the disk of the queue in {0} is full: free some space there (the queue is intact; polling pauses \
         before the disk fills, below queue.min_free_disk, unless something else fills it)"
    )]
    DiskFull(String),
    #[error("queue storage error: {0} (is the disk full or failing?)")]
    Storage(#[from] sled::Error),
    #[error("a queued record is damaged: {0}")]
    Damaged(String),
}

impl From<TransactionError<QueueError>> for QueueError {
    fn from(err: TransactionError<QueueError>) -> Self {
        match err {
            TransactionError::Abort(err) => err,
            TransactionError::Storage(err) => QueueError::Storage(err),
        }
    }
}

/// How one page commit went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    pub queued: u64,
    pub duplicates: u64,
    /// The raw bytes of the events queued (for the stream's share of the queue).
    pub queued_bytes: u64,
}

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

/// The record of format 1: one event.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    version: u8,
    stream: u32,
    timestamp_ns: i64,
    queued_at_ms: u64,
    #[serde(borrow)]
    raw: &'a str,
}

/// The record of format 2: consecutive events of one page, borrowed from the stored bytes when read.
#[derive(Serialize, Deserialize)]
struct Chunk<'a> {
    version: u8,
    stream: u32,
    queued_at_ms: u64,
    #[serde(borrow)]
    events: Vec<ChunkEvent<'a>>,
}

#[derive(Serialize, Deserialize)]
struct ChunkEvent<'a> {
    timestamp_ns: i64,
    /// Bytes, not `str`: reading a chunk checks UTF-8 only for the events it returns.
    #[serde(borrow, with = "serde_bytes")]
    raw: &'a [u8],
}

/// Depth of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    pub events: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    in_events: AtomicU64,
    in_bytes: AtomicU64,
    out_events: AtomicU64,
    out_bytes: AtomicU64,
    dead_in: AtomicU64,
    dead_out: AtomicU64,
}

impl Counters {
    /// The persisted totals only grow; concurrent transactions may report theirs in any order.
    fn raise_in(&self, events: u64, bytes: u64) {
        self.in_events.fetch_max(events, Ordering::Relaxed);
        self.in_bytes.fetch_max(bytes, Ordering::Relaxed);
    }

    fn raise_out(&self, events: u64, bytes: u64) {
        self.out_events.fetch_max(events, Ordering::Relaxed);
        self.out_bytes.fetch_max(bytes, Ordering::Relaxed);
    }
}

/// The durable queue. Cheap to clone; one per process (sled allows one `Db` per folder).
#[derive(Clone)]
pub struct Queue {
    db: sled::Db,
    events: Tree,
    acked: Tree,
    dedup: DedupIndex,
    /// Held by whoever changes the dedup index, from deciding what is new until it is committed.
    commit_lock: Arc<Mutex<()>>,
    dead: Tree,
    meta: Tree,
    counters: Arc<Counters>,
    dir: PathBuf,
}

impl Queue {
    /// Opens (or creates) the queue in `dir`.
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        remove_incomplete_snapshots(dir);
        let open_error = |source: sled::Error| match &source {
            // sled wraps the EWOULDBLOCK of its file lock in an error of its own wording.
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                QueueError::Locked(dir.display().to_string())
            }
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                QueueError::DiskFull(dir.display().to_string())
            }
            _ => QueueError::Open {
                dir: dir.display().to_string(),
                source,
            },
        };
        // flush_every_ms stays at its default (a real fsync every 500 ms): never None.
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY)
            .segment_size(existing_segment_size(dir).unwrap_or(NEW_QUEUE_SEGMENT_SIZE))
            .mode(sled::Mode::HighThroughput);
        // sled lets go of its lock file only when the last of its background threads has let go of the
        // database, a moment after the `Db` was dropped: a queue opened again by the same process (a
        // command after another, a test) can find its own lock still held. Another process holding it
        // is reported once the wait is over.
        let lock_wait_ends = Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open().map_err(open_error) {
                Err(QueueError::Locked(_)) if Instant::now() < lock_wait_ends => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        let queue = Queue {
            events: tree("events")?,
            acked: tree("acked")?,
            dedup: DedupIndex::new(tree("dedup")?),
            commit_lock: Arc::default(),
            dead: tree("dead_letter")?,
            meta: tree("meta")?,
            db,
            counters: Arc::default(),
            dir: dir.to_path_buf(),
        };
        let (in_events, in_bytes) = read_pair(queue.meta.get(KEY_IN)?);
        let (out_events, out_bytes) = read_pair(queue.meta.get(KEY_OUT)?);
        let (dead_in, dead_out) = read_pair(queue.meta.get(KEY_DEAD)?);
        let c = &queue.counters;
        c.in_events.store(in_events, Ordering::Relaxed);
        c.in_bytes.store(in_bytes, Ordering::Relaxed);
        c.out_events.store(out_events, Ordering::Relaxed);
        c.out_bytes.store(out_bytes, Ordering::Relaxed);
        c.dead_in.store(dead_in, Ordering::Relaxed);
        c.dead_out.store(dead_out, Ordering::Relaxed);
        Ok(queue)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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

        let (outcome, totals) = (&self.events, self.dedup.tree(), &self.meta).transaction(
            |(events_tx, dedup_tx, meta_tx)| {
                let mut seq = read_u64(meta_tx.get(KEY_SEQ)?);
                let (mut in_events, mut in_bytes) = read_pair(meta_tx.get(KEY_IN)?);
                let mut outcome = CommitOutcome::default();
                let mut chunk = Chunk {
                    version: FORMAT_VERSION,
                    stream: tag,
                    queued_at_ms: now,
                    events: Vec::with_capacity(CHUNK_MAX_EVENTS.min(events.len())),
                };
                let mut chunk_bytes = 0;
                for (event, new) in events.iter().zip(&plan.new) {
                    if !new {
                        outcome.duplicates += 1;
                        continue;
                    }
                    chunk.events.push(ChunkEvent {
                        timestamp_ns: event.timestamp_ns,
                        raw: &event.raw,
                    });
                    chunk_bytes += event.raw.len();
                    in_events += 1;
                    in_bytes += event.raw.len() as u64;
                    outcome.queued += 1;
                    outcome.queued_bytes += event.raw.len() as u64;
                    if chunk.events.len() >= CHUNK_MAX_EVENTS || chunk_bytes >= CHUNK_MAX_BYTES {
                        seq = write_chunk(events_tx, seq, &mut chunk)?;
                        chunk_bytes = 0;
                    }
                }
                if !chunk.events.is_empty() {
                    seq = write_chunk(events_tx, seq, &mut chunk)?;
                }
                for (key, value) in &plan.writes {
                    dedup_tx.insert(&key[..], &value[..])?;
                }
                meta_tx.insert(KEY_SEQ, &seq.to_be_bytes()[..])?;
                meta_tx.insert(KEY_IN, &pair_bytes(in_events, in_bytes)[..])?;
                add_stream_bytes(meta_tx, STREAM_IN, tag, outcome.queued_bytes)?;
                if let Some(cursor_bytes) = &cursor_bytes {
                    meta_tx.insert(cursor_key.as_bytes(), &cursor_bytes[..])?;
                }
                Ok::<_, ConflictableTransactionError<QueueError>>((outcome, (in_events, in_bytes)))
            },
        )?;
        self.counters.raise_in(totals.0, totals.1);
        Ok(outcome)
    }

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

    /// Removes events the intake acknowledged. Sequences already gone are skipped (and not counted twice).
    pub fn ack(&self, seqs: &[u64]) -> Result<(), QueueError> {
        let now = now_ms();
        let groups = self.locate(seqs)?;
        let totals = (&self.events, &self.acked, &self.meta).transaction(
            |(events_tx, acked_tx, meta_tx)| {
                let (mut out_events, mut out_bytes) = read_pair(meta_tx.get(KEY_OUT)?);
                // A batch is of one stream (and so is a chunk), but nothing here depends on it.
                let mut by_stream: Vec<(u32, u64)> = Vec::new();
                for (first, indexes) in &groups {
                    let gone = mark_gone(events_tx, acked_tx, *first, indexes)?;
                    out_events += gone.events;
                    out_bytes += gone.bytes;
                    match by_stream.iter_mut().find(|(t, _)| *t == gone.stream) {
                        Some((_, bytes)) => *bytes += gone.bytes,
                        None => by_stream.push((gone.stream, gone.bytes)),
                    }
                }
                meta_tx.insert(KEY_OUT, &pair_bytes(out_events, out_bytes)[..])?;
                for (tag, bytes) in &by_stream {
                    add_stream_bytes(meta_tx, STREAM_OUT, *tag, *bytes)?;
                }
                meta_tx.insert(KEY_LAST_ACK, &now.to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<QueueError>>((out_events, out_bytes))
            },
        )?;
        self.counters.raise_out(totals.0, totals.1);
        Ok(())
    }

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
        let totals = (&self.events, &self.acked, &self.dead, &self.meta).transaction(
            |(events_tx, acked_tx, dead_tx, meta_tx)| {
                let (mut out_events, mut out_bytes) = read_pair(meta_tx.get(KEY_OUT)?);
                let (mut dead, dead_out) = read_pair(meta_tx.get(KEY_DEAD)?);
                for (first, indexes) in &groups {
                    let gone = mark_gone(events_tx, acked_tx, *first, indexes)?;
                    if gone.events > 0 {
                        out_events += gone.events;
                        out_bytes += gone.bytes;
                        dead += gone.events;
                        dead_tx.insert(&key[..], &record[..])?;
                        add_stream_bytes(meta_tx, STREAM_OUT, gone.stream, gone.bytes)?;
                    }
                }
                meta_tx.insert(KEY_OUT, &pair_bytes(out_events, out_bytes)[..])?;
                meta_tx.insert(KEY_DEAD, &pair_bytes(dead, dead_out)[..])?;
                Ok::<_, ConflictableTransactionError<QueueError>>((out_events, out_bytes, dead))
            },
        )?;
        self.counters.raise_out(totals.0, totals.1);
        self.counters.dead_in.fetch_max(totals.2, Ordering::Relaxed);
        Ok(())
    }

    /// Groups sequence numbers by the chunk that holds them: (chunk key, indexes in the chunk). Sequences in
    /// no chunk (already gone) are left out. Done outside transactions, which cannot iterate; it stays right
    /// inside them because chunk keys never change (a chunk only goes away, which the transaction sees).
    fn locate(&self, seqs: &[u64]) -> Result<Vec<(u64, Vec<usize>)>, QueueError> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut groups: Vec<(u64, u64, Vec<usize>)> = Vec::new();
        for seq in sorted {
            if let Some((first, end, indexes)) = groups.last_mut() {
                if seq < *end {
                    indexes.push((seq - *first) as usize);
                    continue;
                }
            }
            let Some(entry) = self.events.range(..=seq.to_be_bytes()).next_back() else {
                continue;
            };
            let (key, value) = entry?;
            let first = read_u64(Some(key));
            let end = first + chunk_header(first, &value)?.count;
            if seq < end {
                groups.push((first, end, vec![(seq - first) as usize]));
            }
        }
        Ok(groups
            .into_iter()
            .map(|(first, _, indexes)| (first, indexes))
            .collect())
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

    /// Every stream's cursor, by stream name.
    pub fn cursors(&self) -> Result<Vec<(String, Cursor)>, QueueError> {
        self.meta
            .scan_prefix(b"cursor/")
            .map(|entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[b"cursor/".len()..]).into_owned();
                let cursor = bincode::deserialize(&value).map_err(|err| {
                    QueueError::Damaged(format!("cursor of stream {name}: {err}"))
                })?;
                Ok((name, cursor))
            })
            .collect()
    }

    /// When the intake last acknowledged a batch (milliseconds since the epoch).
    pub fn last_ack_ms(&self) -> Result<Option<u64>, QueueError> {
        Ok(self.meta.get(KEY_LAST_ACK)?.map(|v| read_u64(Some(v))))
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
        // Written as ordinary chunks of format 2 under new sequence numbers at the tail: consecutive letters
        // of one stream share a chunk (a chunk never mixes streams, so a stream's forwarder can skip the
        // others' chunks whole), in the order they were dead-lettered.
        let (moved, totals, dead_out) = (&self.events, &self.dead, &self.meta).transaction(
            |(events_tx, dead_tx, meta_tx)| {
                let mut seq = read_u64(meta_tx.get(KEY_SEQ)?);
                let (mut in_events, mut in_bytes) = read_pair(meta_tx.get(KEY_IN)?);
                let (dead_in, mut dead_out) = read_pair(meta_tx.get(KEY_DEAD)?);
                let mut moved = 0;
                let mut chunk = Chunk {
                    version: FORMAT_VERSION,
                    stream: 0,
                    queued_at_ms: now,
                    events: Vec::new(),
                };
                let mut chunk_bytes = 0;
                for (letter, dead_key) in letters.iter().zip(&keys) {
                    if dead_tx.remove(&dead_key[..])?.is_none() {
                        continue;
                    }
                    if !chunk.events.is_empty()
                        && (chunk.stream != letter.stream
                            || chunk.events.len() >= CHUNK_MAX_EVENTS
                            || chunk_bytes >= CHUNK_MAX_BYTES)
                    {
                        seq = write_chunk(events_tx, seq, &mut chunk)?;
                        chunk_bytes = 0;
                    }
                    chunk.stream = letter.stream;
                    chunk.events.push(ChunkEvent {
                        timestamp_ns: letter.timestamp_ns,
                        raw: letter.raw.as_bytes(),
                    });
                    let bytes = letter.raw.len() as u64;
                    chunk_bytes += letter.raw.len();
                    add_stream_bytes(meta_tx, STREAM_IN, letter.stream, bytes)?;
                    in_events += 1;
                    in_bytes += bytes;
                    dead_out += 1;
                    moved += 1;
                }
                if !chunk.events.is_empty() {
                    seq = write_chunk(events_tx, seq, &mut chunk)?;
                }
                meta_tx.insert(KEY_SEQ, &seq.to_be_bytes()[..])?;
                meta_tx.insert(KEY_IN, &pair_bytes(in_events, in_bytes)[..])?;
                meta_tx.insert(KEY_DEAD, &pair_bytes(dead_in, dead_out)[..])?;
                Ok::<_, ConflictableTransactionError<QueueError>>((
                    moved,
                    (in_events, in_bytes),
                    dead_out,
                ))
            },
        )?;
        let c = &self.counters;
        c.raise_in(totals.0, totals.1);
        c.dead_out.fetch_max(dead_out, Ordering::Relaxed);
        Ok(moved)
    }

    /// Deletes every dead letter for good. Returns how many were deleted.
    pub fn purge_dead_letters(&self) -> Result<u64, QueueError> {
        let keys: Vec<sled::IVec> = self.dead.iter().keys().collect::<Result<_, _>>()?;
        let (purged, dead_out) = (&self.dead, &self.meta).transaction(|(dead_tx, meta_tx)| {
            let (dead_in, mut dead_out) = read_pair(meta_tx.get(KEY_DEAD)?);
            let mut purged = 0;
            for key in &keys {
                if dead_tx.remove(key)?.is_some() {
                    purged += 1;
                    dead_out += 1;
                }
            }
            meta_tx.insert(KEY_DEAD, &pair_bytes(dead_in, dead_out)[..])?;
            Ok::<_, ConflictableTransactionError<QueueError>>((purged, dead_out))
        })?;
        self.counters
            .dead_out
            .fetch_max(dead_out, Ordering::Relaxed);
        Ok(purged)
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

    /// The events and raw bytes waiting to be forwarded.
    pub fn depth(&self) -> Depth {
        let c = &self.counters;
        Depth {
            events: c
                .in_events
                .load(Ordering::Relaxed)
                .saturating_sub(c.out_events.load(Ordering::Relaxed)),
            bytes: c
                .in_bytes
                .load(Ordering::Relaxed)
                .saturating_sub(c.out_bytes.load(Ordering::Relaxed)),
        }
    }

    /// How many events were ever dead-lettered and are still kept.
    pub fn dead_letter_count(&self) -> u64 {
        let c = &self.counters;
        c.dead_in
            .load(Ordering::Relaxed)
            .saturating_sub(c.dead_out.load(Ordering::Relaxed))
    }

    /// When the event at the head was queued (milliseconds since the epoch), if the queue is not empty.
    pub fn oldest_queued_at_ms(&self) -> Result<Option<u64>, QueueError> {
        match self.events.first()? {
            None => Ok(None),
            Some((key, value)) => Ok(Some(
                decode_chunk(read_u64(Some(key)), &value)?.queued_at_ms,
            )),
        }
    }

    /// Makes every write so far survive the death of the process (sled's flush; see the README on power loss).
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Free space on the queue's filesystem, if the system says.
    pub fn disk_free_bytes(&self) -> Option<u64> {
        fs4::available_space(&self.dir).ok()
    }

    /// The bytes the database occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Reading by stream, for a forwarder per stream (several JumpCloud organizations, each to its own intake).
impl Queue {
    /// Like [`Queue::read_batch`], but only events of the stream `tag`, and examining at most `max_scan`
    /// records. Returns the batch and the last sequence number examined: every event of that stream up to
    /// it is in the batch, so the next read may start after it once the batch is acknowledged.
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
        'chunks: for (scanned, entry) in self.events.range(from.to_be_bytes()..).enumerate() {
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
            let chunk = decode_chunk(first, &value)?;
            let acked = self.acked.get(&key)?;
            for (index, event) in chunk.events.iter().enumerate() {
                let seq = first + index as u64;
                if seq < start {
                    continue;
                }
                if acked.as_deref().is_some_and(|bits| bit(bits, index)) {
                    examined = Some(seq);
                    continue;
                }
                if !batch.is_empty() && bytes + event.raw.len() > max_bytes {
                    break 'chunks;
                }
                let raw = String::from_utf8(event.raw.to_vec())
                    .map_err(|_| QueueError::Damaged(format!("event #{seq} is not UTF-8")))?;
                bytes += raw.len();
                batch.push(QueuedEvent {
                    seq,
                    stream: chunk.stream,
                    timestamp_ns: event.timestamp_ns,
                    queued_at_ms: chunk.queued_at_ms,
                    raw,
                });
                examined = Some(seq);
                if batch.len() >= max_events {
                    break 'chunks;
                }
            }
        }
        Ok((batch, examined))
    }

    /// The raw bytes queued per stream tag (one scan of the queue, at start-up).
    pub fn bytes_by_stream(&self) -> Result<std::collections::HashMap<u32, u64>, QueueError> {
        // Read from the per-stream counters, never by scanning the events: a backlog of millions of
        // events must not slow the start.
        let mut usage = std::collections::HashMap::new();
        for (prefix, sign) in [(STREAM_IN, 1i128), (STREAM_OUT, -1i128)] {
            for entry in self.meta.scan_prefix(prefix) {
                let (key, value) = entry?;
                let Ok(tag) = <[u8; 4]>::try_from(&key[prefix.len()..]) else {
                    continue;
                };
                *usage.entry(u32::from_be_bytes(tag)).or_insert(0i128) +=
                    sign * i128::from(read_u64(Some(value)));
            }
        }
        Ok(usage
            .into_iter()
            .filter(|(_, bytes)| *bytes > 0)
            .map(|(tag, bytes)| (tag, u64::try_from(bytes).unwrap_or(0)))
            .collect())
    }
}

/// The segment size an existing queue was created with, from the `segment_size: N` line of sled's `conf`
/// file (text lines followed by a 4-byte checksum). `None` for a new queue, or when the file cannot be
/// read: sled then reports the problem itself.
fn existing_segment_size(dir: &Path) -> Option<usize> {
    let conf = std::fs::read(dir.join("conf")).ok()?;
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size:"))
        .and_then(|value| value.trim().parse().ok())
}

/// sled 0.34 writes a snapshot as `snap.<lsn>.generating` and renames it when complete, but on open it
/// also considers `.generating` files, and the newest one wins: a snapshot cut short (a full disk, a crash
/// at that instant) then makes the queue refuse to open ("Read corrupted data"). Such a file is by
/// definition incomplete and never the one to use: removing it lets sled open from the previous snapshot
/// and its log, losing nothing.
fn remove_incomplete_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(file = %entry.path().display(), "removed an incomplete sled snapshot left by an interrupted write")
                }
                Err(err) => {
                    tracing::warn!(file = %entry.path().display(), "cannot remove an incomplete sled snapshot: {err}")
                }
            }
        }
    }
}

/// Reads a stored record as a chunk, borrowing the raw bytes; a format 1 record is a chunk of one.
fn decode_chunk(first: u64, value: &[u8]) -> Result<Chunk<'_>, QueueError> {
    let damaged = |err: bincode::Error| QueueError::Damaged(format!("record #{first}: {err}"));
    match value.first() {
        Some(&FORMAT_VERSION) => bincode::deserialize(value).map_err(damaged),
        Some(&SINGLE_EVENT_VERSION) => {
            let envelope: Envelope = bincode::deserialize(value).map_err(damaged)?;
            Ok(Chunk {
                version: SINGLE_EVENT_VERSION,
                stream: envelope.stream,
                queued_at_ms: envelope.queued_at_ms,
                events: vec![ChunkEvent {
                    timestamp_ns: envelope.timestamp_ns,
                    raw: envelope.raw.as_bytes(),
                }],
            })
        }
        Some(version) => Err(QueueError::Damaged(format!(
            "record #{first} has format {version}, this version reads {SINGLE_EVENT_VERSION} and {FORMAT_VERSION}"
        ))),
        None => Err(QueueError::Damaged(format!("record #{first} is empty"))),
    }
}

/// The fixed start of a stored record: enough to skip another stream's chunk without decoding its events.
struct ChunkHeader {
    stream: u32,
    /// How many events the record holds (acknowledged ones included).
    count: u64,
}

/// Reads a record's stream and event count (bincode writes a chunk's version, stream, queued_at_ms, then
/// the length of its events as a u64, before any event; trailing bytes are allowed).
fn chunk_header(first: u64, value: &[u8]) -> Result<ChunkHeader, QueueError> {
    #[derive(Deserialize)]
    struct Header {
        version: u8,
        stream: u32,
        _queued_at_ms: u64,
        count: u64,
    }
    match value.first() {
        Some(&FORMAT_VERSION) => {
            let header: Header = bincode::deserialize(value)
                .map_err(|err| QueueError::Damaged(format!("record #{first}: {err}")))?;
            debug_assert_eq!(header.version, FORMAT_VERSION);
            Ok(ChunkHeader {
                stream: header.stream,
                count: header.count,
            })
        }
        _ => {
            let chunk = decode_chunk(first, value)?;
            Ok(ChunkHeader {
                stream: chunk.stream,
                count: chunk.events.len() as u64,
            })
        }
    }
}

/// Stores `chunk` at key `first` (inside a transaction), empties it, and returns the next free sequence.
fn write_chunk(
    events_tx: &TransactionalTree,
    first: u64,
    chunk: &mut Chunk<'_>,
) -> Result<u64, ConflictableTransactionError<QueueError>> {
    let record = bincode::serialize(&*chunk).map_err(|err| {
        ConflictableTransactionError::Abort(QueueError::Damaged(format!(
            "cannot encode events: {err}"
        )))
    })?;
    events_tx.insert(&first.to_be_bytes()[..], record)?;
    let next = first + chunk.events.len() as u64;
    chunk.events.clear();
    Ok(next)
}

/// Marks events of the chunk at `first` as gone (inside a transaction) and removes the chunk with its
/// bitmap once every event is gone. Returns the events and raw bytes newly marked, with the chunk's stream
/// (events already marked, or a chunk already removed, count nothing).
fn mark_gone(
    events_tx: &TransactionalTree,
    acked_tx: &TransactionalTree,
    first: u64,
    indexes: &[usize],
) -> Result<Gone, ConflictableTransactionError<QueueError>> {
    let key = first.to_be_bytes();
    let Some(value) = events_tx.get(&key[..])? else {
        return Ok(Gone::default());
    };
    let chunk = decode_chunk(first, &value).map_err(ConflictableTransactionError::Abort)?;
    let len = chunk.events.len();
    let mut bits = acked_tx
        .get(&key[..])?
        .map(|bits| bits.to_vec())
        .unwrap_or_default();
    bits.resize(len.div_ceil(8), 0);
    let (mut events, mut bytes) = (0, 0);
    for &index in indexes {
        if index < len && !bit(&bits, index) {
            bits[index / 8] |= 1 << (index % 8);
            events += 1;
            bytes += chunk.events[index].raw.len() as u64;
        }
    }
    let gone: u32 = bits.iter().map(|byte| byte.count_ones()).sum();
    if gone as usize >= len {
        events_tx.remove(&key[..])?;
        acked_tx.remove(&key[..])?;
    } else if events > 0 {
        acked_tx.insert(&key[..], bits)?;
    }
    Ok(Gone {
        stream: chunk.stream,
        events,
        bytes,
    })
}

/// What [`mark_gone`] removed from one chunk.
#[derive(Default)]
struct Gone {
    stream: u32,
    events: u64,
    bytes: u64,
}

/// Whether bit `index` of a chunk's bitmap is set.
fn bit(bits: &[u8], index: usize) -> bool {
    bits.get(index / 8)
        .is_some_and(|byte| byte & (1 << (index % 8)) != 0)
}

/// Adds `bytes` to one stream's monotonic in- or out-counter (`stats/in/<tag>`, `stats/out/<tag>`).
fn add_stream_bytes(
    meta_tx: &sled::transaction::TransactionalTree,
    prefix: &[u8],
    tag: u32,
    bytes: u64,
) -> Result<(), ConflictableTransactionError<QueueError>> {
    if bytes == 0 {
        return Ok(());
    }
    let mut key = prefix.to_vec();
    key.extend_from_slice(&tag.to_be_bytes());
    let total = read_u64(meta_tx.get(&key)?) + bytes;
    meta_tx.insert(key, &total.to_be_bytes()[..])?;
    Ok(())
}

fn cursor_key(stream: &str) -> String {
    format!("cursor/{stream}")
}

/// Maps an i64 timestamp to bytes that sort like the numbers (sign bit flipped, big-endian).
fn ordered_time(ns: i64) -> [u8; 8] {
    ((ns as u64) ^ (1 << 63)).to_be_bytes()
}

fn read_u64(value: Option<sled::IVec>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map_or(0, u64::from_be_bytes)
}

fn read_pair(value: Option<sled::IVec>) -> (u64, u64) {
    match value {
        Some(v) if v.len() == 16 => {
            let mut a = [0u8; 8];
            let mut b = [0u8; 8];
            a.copy_from_slice(&v[..8]);
            b.copy_from_slice(&v[8..]);
            (u64::from_be_bytes(a), u64::from_be_bytes(b))
        }
        _ => (0, 0),
    }
}

fn pair_bytes(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::event::event_key;

    fn event(id: &str, ts: i64) -> IncomingEvent {
        let raw = format!("{{\"id\":\"{id}\",\"timestamp\":\"x\"}}");
        IncomingEvent {
            key: event_key(Some(id), &raw),
            raw: raw.into(),
            timestamp_ns: ts,
        }
    }

    fn cursor(ns: i64) -> Cursor {
        Cursor {
            watermark_ns: ns,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn commit_dedups_and_moves_cursor_together() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let page = vec![event("a", 1), event("b", 2), event("a", 1)];
        let outcome = q.commit_page("s", &page, Some(cursor(5))).unwrap();
        assert_eq!(
            outcome,
            CommitOutcome {
                queued: 2,
                duplicates: 1,
                queued_bytes: (page[0].raw.len() + page[1].raw.len()) as u64,
            }
        );
        let again = q.commit_page("s", &page[..2], Some(cursor(6))).unwrap();
        assert_eq!(
            again,
            CommitOutcome {
                queued: 0,
                duplicates: 2,
                queued_bytes: 0,
            }
        );
        assert_eq!(q.cursor("s").unwrap(), Some(cursor(6)));
        assert_eq!(q.depth().events, 2);
        // Another stream has its own dedup scope.
        assert_eq!(
            q.commit_page("t", &page[..1], Some(cursor(1)))
                .unwrap()
                .queued,
            1
        );
    }

    #[test]
    fn read_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path()).unwrap();
            let page: Vec<_> = (0..10).map(|i| event(&format!("e{i}"), i)).collect();
            q.commit_page("s", &page, Some(cursor(10))).unwrap();
            let batch = q.read_batch(None, 4, 1 << 20).unwrap();
            assert_eq!(batch.len(), 4);
            assert_eq!(batch[0].raw, page[0].raw);
            let next = q.read_batch(Some(batch[3].seq), 100, 1 << 20).unwrap();
            assert_eq!(next.len(), 6);
            let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
            q.ack(&seqs).unwrap();
            q.ack(&seqs).unwrap(); // twice: counted once
            q.dead_letter(&next[0], "too big").unwrap();
            assert_eq!(q.depth().events, 5);
        }
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.depth().events, 5);
        assert_eq!(q.dead_letter_count(), 1);
        assert_eq!(q.dead_letters().unwrap()[0].reason, "too big");
        assert_eq!(q.read_batch(None, 100, 1 << 20).unwrap().len(), 5);
        assert_eq!(q.cursors().unwrap(), vec![("s".to_string(), cursor(10))]);
        assert!(q.last_ack_ms().unwrap().is_some());
        // Retry puts the dead letter back at the tail; purge then has nothing left.
        assert_eq!(q.retry_dead_letters().unwrap(), 1);
        assert_eq!(q.dead_letter_count(), 0);
        assert_eq!(q.depth().events, 6);
        let all = q.read_batch(None, 100, 1 << 20).unwrap();
        assert_eq!(all.last().unwrap().raw, event("e4", 4).raw);
        q.dead_letter(&all[0], "again").unwrap();
        assert_eq!(q.purge_dead_letters().unwrap(), 1);
        assert_eq!(q.dead_letter_count(), 0);
        assert!(q.dead_letters().unwrap().is_empty());
    }

    #[test]
    fn partial_acks_across_chunks_keep_the_rest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let total = CHUNK_MAX_EVENTS * 3 + 5;
        {
            let q = Queue::open(dir.path()).unwrap();
            let page: Vec<_> = (0..total)
                .map(|i| event(&format!("e{i}"), i as i64))
                .collect();
            assert_eq!(
                q.commit_page("s", &page, Some(cursor(1))).unwrap().queued,
                total as u64
            );
            assert!(q.events.len() > 3, "the page is stored in several chunks");
            let all = q.read_batch(None, usize::MAX, usize::MAX).unwrap();
            let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (0..total as u64).collect::<Vec<_>>());
            // Every other event, out of order and twice: counted once each.
            let mut odd: Vec<u64> = seqs.iter().copied().filter(|s| s % 2 == 1).collect();
            odd.reverse();
            q.ack(&odd).unwrap();
            q.ack(&odd).unwrap();
            assert_eq!(q.depth().events, (total - odd.len()) as u64);
            // Reading from the middle of a chunk skips what is acknowledged.
            let rest = q.read_batch(Some(2), 3, usize::MAX).unwrap();
            let rest: Vec<u64> = rest.iter().map(|e| e.seq).collect();
            assert_eq!(rest, vec![4, 6, 8]);
            q.dead_letter(&all[4], "refused").unwrap();
        }
        let q = Queue::open(dir.path()).unwrap();
        let left = q.read_batch(None, usize::MAX, usize::MAX).unwrap();
        assert!(left.iter().all(|e| e.seq % 2 == 0 && e.seq != 4));
        assert_eq!(left.len() as u64, q.depth().events);
        let seqs: Vec<u64> = left.iter().map(|e| e.seq).collect();
        q.ack(&seqs).unwrap();
        assert_eq!(q.depth(), Depth::default());
        assert!(
            q.events.is_empty() && q.acked.is_empty(),
            "chunks and bitmaps go"
        );
        assert_eq!(q.dead_letters().unwrap()[0].seq, 4);
    }

    #[test]
    fn records_of_format_1_are_still_read_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let raw = r#"{"id":"old"}"#;
        let old = Envelope {
            version: SINGLE_EVENT_VERSION,
            stream: stream_tag("s"),
            timestamp_ns: 5,
            queued_at_ms: 9,
            raw,
        };
        q.events
            .insert(7u64.to_be_bytes(), bincode::serialize(&old).unwrap())
            .unwrap();
        q.meta.insert(KEY_SEQ, &8u64.to_be_bytes()[..]).unwrap();
        q.commit_page("s", &[event("new", 6)], Some(cursor(7)))
            .unwrap();
        let batch = q.read_batch(None, 10, 1 << 20).unwrap();
        assert_eq!((batch[0].seq, batch[0].raw.as_str()), (7, raw));
        assert_eq!(batch[0].queued_at_ms, 9);
        assert_eq!(batch[1].seq, 8);
        assert_eq!(q.oldest_queued_at_ms().unwrap(), Some(9));
        q.ack(&[7]).unwrap();
        assert_eq!(q.read_batch(None, 10, 1 << 20).unwrap()[0].seq, 8);
    }

    #[test]
    fn a_second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Queue::open(dir.path()).unwrap();
        let second = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "queue::tests::open_from_child", "--nocapture"])
            .env("JCDI_TEST_QUEUE_DIR", dir.path())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&second.stdout);
        assert!(out.contains("is in use by another process"), "{out}");
    }

    /// Helper for the test above: runs in a child process (sled locks per process).
    #[test]
    fn open_from_child() {
        if let Ok(dir) = std::env::var("JCDI_TEST_QUEUE_DIR") {
            match Queue::open(Path::new(&dir)) {
                Ok(_) => println!("opened"),
                Err(err) => println!("{err}"),
            }
        }
    }

    #[test]
    fn an_interrupted_snapshot_does_not_stop_the_queue_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path()).unwrap();
            q.commit_page("s", &[event("a", 1), event("b", 2)], Some(cursor(3)))
                .unwrap();
            q.db.flush().unwrap();
        }
        // What a snapshot write cut short by a full disk leaves behind.
        std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFFF.generating"), b"cut").unwrap();
        let q = Queue::open(dir.path()).expect("opens");
        assert_eq!(q.read_batch(None, 10, 1 << 20).unwrap().len(), 2);
        assert_eq!(q.cursor("s").unwrap(), Some(cursor(3)));
    }

    #[test]
    fn a_queue_made_with_another_segment_size_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        // What versions before 1 MiB segments left: sled's default of 512 KiB, recorded in `conf`.
        {
            let db = sled::Config::new()
                .path(dir.path())
                .segment_size(512 * 1024)
                .open()
                .unwrap();
            db.flush().unwrap();
        }
        assert_eq!(existing_segment_size(dir.path()), Some(512 * 1024));
        {
            let q = Queue::open(dir.path()).expect("opens with its own segment size");
            q.commit_page("s", &[event("a", 1), event("b", 2)], Some(cursor(3)))
                .unwrap();
            q.db.flush().unwrap();
        }
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.read_batch(None, 10, 1 << 20).unwrap().len(), 2);
        assert_eq!(existing_segment_size(dir.path()), Some(512 * 1024));

        let fresh = tempfile::tempdir().unwrap();
        drop(Queue::open(fresh.path()).unwrap());
        assert_eq!(
            existing_segment_size(fresh.path()),
            Some(NEW_QUEUE_SEGMENT_SIZE)
        );
    }

    #[test]
    fn byte_limit_keeps_at_least_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.commit_page("s", &[event("a", 1), event("b", 2)], Some(cursor(3)))
            .unwrap();
        assert_eq!(q.read_batch(None, 10, 1).unwrap().len(), 1);
    }

    #[test]
    fn pruning_forgets_old_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.commit_page(
            "s",
            &[event("old", -5), event("new", 100)],
            Some(cursor(200)),
        )
        .unwrap();
        assert_eq!(q.prune_dedup("s", 50, 1000).unwrap(), 1);
        // The old event is forgotten (queued again), the new one still deduplicated.
        let outcome = q
            .commit_page(
                "s",
                &[event("old", -5), event("new", 100)],
                Some(cursor(200)),
            )
            .unwrap();
        assert_eq!((outcome.queued, outcome.duplicates), (1, 1));
    }

    /// Pages of events in a rough time order, with late events, repeats across and within pages, and
    /// timestamps shared by several events: many dedup records, split many times.
    fn shuffled_pages(seed: u64, pages: usize) -> Vec<Vec<IncomingEvent>> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut next_id = 0u64;
        let mut pages_out: Vec<Vec<IncomingEvent>> = Vec::new();
        for page in 0..pages {
            let mut events: Vec<IncomingEvent> = Vec::new();
            for _ in 0..rng.usize(1..400) {
                let roll = rng.u8(..);
                let old = pages_out.iter().flatten().count();
                let repeat = if roll < 20 && old > 0 {
                    // A repeat of an event of an earlier page.
                    let pick = rng.usize(..old);
                    pages_out.iter().flatten().nth(pick).cloned()
                } else if roll < 30 && !events.is_empty() {
                    // A repeat within this page.
                    Some(events[rng.usize(..events.len())].clone())
                } else {
                    None
                };
                let incoming = repeat.unwrap_or_else(|| {
                    next_id += 1;
                    // Mostly moving forward by page, sometimes late, often sharing a timestamp.
                    let base = page as i64 * 1000;
                    let ts = if rng.u8(..) < 25 {
                        rng.i64(-500..base.max(1))
                    } else {
                        base + rng.i64(0..50) * 20
                    };
                    event(&format!("e{next_id}"), ts)
                });
                events.push(incoming);
            }
            pages_out.push(events);
        }
        pages_out
    }

    #[test]
    fn the_dedup_index_queues_each_event_once_across_pages_records_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let pages = shuffled_pages(7, 60);
        let mut seen = HashSet::new();
        {
            let q = Queue::open(dir.path()).unwrap();
            for page in &pages {
                let expected_new = page.iter().filter(|e| seen.insert(e.key)).count() as u64;
                let outcome = q.commit_page("s", page, None).unwrap();
                assert_eq!(outcome.queued, expected_new);
                assert_eq!(outcome.queued + outcome.duplicates, page.len() as u64);
            }
            assert!(
                q.dedup.tree().len() > 10,
                "{} events should make many records",
                seen.len()
            );
        }
        // After a restart, every event is known; another stream knows none of them.
        let q = Queue::open(dir.path()).unwrap();
        for page in &pages {
            let outcome = q.commit_page("s", page, None).unwrap();
            assert_eq!(outcome.queued, 0);
        }
        let all: Vec<IncomingEvent> = pages.concat();
        assert_eq!(
            q.commit_page("other", &all, None).unwrap().queued,
            seen.len() as u64
        );
        assert_eq!(q.depth().events, 2 * seen.len() as u64);
    }

    #[test]
    fn a_page_larger_than_one_transaction_is_committed_whole_with_its_cursor_last() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let n = COMMIT_MAX_EVENTS * 2 + 300;
        let mut page: Vec<IncomingEvent> =
            (0..n).map(|i| event(&format!("e{i}"), i as i64)).collect();
        // Copies of events of the first part, in the last part: duplicates across transactions.
        page.extend(page[..5].to_vec());
        let outcome = q.commit_page("s", &page, Some(cursor(77))).unwrap();
        assert_eq!((outcome.queued, outcome.duplicates), (n as u64, 5));
        assert_eq!(
            outcome.queued_bytes,
            page[..n].iter().map(|e| e.raw.len() as u64).sum::<u64>()
        );
        assert_eq!(q.cursor("s").unwrap(), Some(cursor(77)));
        assert_eq!(q.depth().events, n as u64);
        let batch = q.read_batch(None, usize::MAX, usize::MAX).unwrap();
        let ids: Vec<&[u8]> = batch.iter().map(|e| e.raw.as_bytes()).collect();
        let expected: Vec<&[u8]> = page[..n].iter().map(|e| &e.raw[..]).collect();
        assert_eq!(ids, expected, "every event once, in page order");
        // What a crash between two parts would leave (the first part, the old cursor) is read again
        // without duplicates.
        let again = q.commit_page("s", &page, Some(cursor(78))).unwrap();
        assert_eq!((again.queued, again.duplicates), (0, page.len() as u64));
    }

    #[test]
    fn dedup_entries_of_the_layout_before_records_are_still_known() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let tag = stream_tag("s");
        let old: Vec<IncomingEvent> = (0..40).map(|i| event(&format!("old{i}"), i * 10)).collect();
        // One key per event and an empty value: what versions before dedup records wrote.
        for e in &old {
            let mut key = tag.to_be_bytes().to_vec();
            key.extend_from_slice(&ordered_time(e.timestamp_ns));
            key.extend_from_slice(&e.key);
            q.dedup.tree().insert(key, &[][..]).unwrap();
        }
        // New events between, before and after the old ones, with the old ones again.
        let mut page: Vec<IncomingEvent> = (0..600)
            .map(|i| event(&format!("new{i}"), i - 100))
            .collect();
        page.extend(old.iter().cloned());
        let outcome = q.commit_page("s", &page, None).unwrap();
        assert_eq!((outcome.queued, outcome.duplicates), (600, 40));
        let again = q.commit_page("s", &page, None).unwrap();
        assert_eq!((again.queued, again.duplicates), (0, 640));
        // Pruning reads the old entries too.
        assert_eq!(q.prune_dedup("s", 200, usize::MAX).unwrap(), 300 + 20);
        let after = q.commit_page("s", &page, None).unwrap();
        assert_eq!(
            after.queued,
            300 + 20,
            "the events before 200 are forgotten"
        );
    }

    #[test]
    fn pruning_in_steps_forgets_exactly_the_entries_before_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let events: Vec<IncomingEvent> = (0..3000)
            .map(|i| event(&format!("e{i}"), (i * 7919) % 3000))
            .collect();
        for page in events.chunks(250) {
            q.commit_page("s", page, None).unwrap();
        }
        q.commit_page("other", &events, None).unwrap();
        let mut forgotten = 0;
        loop {
            let step = q.prune_dedup("s", 1000, 300).unwrap();
            forgotten += step;
            if step < 300 {
                break;
            }
        }
        assert_eq!(forgotten, 1000);
        let again = q.commit_page("s", &events, None).unwrap();
        assert_eq!((again.queued, again.duplicates), (1000, 2000));
        let other = q.commit_page("other", &events, None).unwrap();
        assert_eq!(other.queued, 0, "another stream's entries are kept");
    }

    #[test]
    fn reading_by_stream_skips_the_others_and_reports_how_far_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.commit_page("a", &[event("a1", 1), event("a2", 2)], Some(cursor(3)))
            .unwrap();
        q.commit_page("b", &[event("b1", 1)], Some(cursor(3)))
            .unwrap();
        q.commit_page("a", &[event("a3", 3)], Some(cursor(4)))
            .unwrap();
        let (b, upto) = q
            .read_stream_batch(stream_tag("b"), None, 10, 1 << 20, 1000)
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(upto, Some(3), "looked at every record");
        let (a, upto) = q
            .read_stream_batch(stream_tag("a"), None, 2, 1 << 20, 1000)
            .unwrap();
        assert_eq!((a.len(), upto), (2, Some(1)));
        let (a, upto) = q
            .read_stream_batch(stream_tag("a"), upto, 10, 1 << 20, 1)
            .unwrap();
        assert_eq!((a.len(), upto), (0, Some(2)), "max_scan bounds the work");
        let usage = q.bytes_by_stream().unwrap();
        assert_eq!(usage[&stream_tag("b")], b[0].raw.len() as u64);
        assert_eq!(usage.len(), 2);
    }

    #[test]
    fn chunks_are_per_stream_and_stream_counters_follow_acks_dead_letters_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let (ta, tb) = (stream_tag("a"), stream_tag("b"));
        // Two chunks per page, and more than the 10 events of b read below.
        let n = CHUNK_MAX_EVENTS + 4;
        let page_a: Vec<_> = (0..n).map(|i| event(&format!("a{i}"), i as i64)).collect();
        let page_b: Vec<_> = (0..n).map(|i| event(&format!("b{i}"), i as i64)).collect();
        let bytes = |page: &[IncomingEvent]| page.iter().map(|e| e.raw.len() as u64).sum::<u64>();
        {
            let q = Queue::open(dir.path()).unwrap();
            q.commit_page("a", &page_a, Some(cursor(1))).unwrap();
            q.commit_page("b", &page_b, Some(cursor(1))).unwrap();
            q.commit_page("a", &page_a[..0], None).unwrap();
            assert_eq!(
                q.events.len(),
                4,
                "two chunks per page, none mixing streams"
            );
            // b's forwarder skips a's chunks whole: within the scan limit of 4 records it gets b's events.
            let (b, upto) = q.read_stream_batch(tb, None, 10, 1 << 20, 4).unwrap();
            assert_eq!(b.len(), 10);
            assert!(b.iter().all(|e| e.stream == tb));
            assert_eq!(b[0].seq, n as u64);
            assert_eq!(upto, Some(b[9].seq));
            // Partial acks of a chunk count only the newly acknowledged bytes, per stream.
            let seqs: Vec<u64> = b.iter().map(|e| e.seq).collect();
            q.ack(&seqs[..5]).unwrap();
            q.ack(&seqs).unwrap();
            let first_ten = bytes(&page_b[..10]);
            let usage = q.bytes_by_stream().unwrap();
            assert_eq!(usage[&tb], bytes(&page_b) - first_ten);
            assert_eq!(usage[&ta], bytes(&page_a));
            // Reading on skips the acknowledged ones.
            let (b2, _) = q.read_stream_batch(tb, None, 1, 1 << 20, 100).unwrap();
            assert_eq!(b2[0].seq, n as u64 + 10);
            // A dead letter leaves its stream's bytes too, and only once.
            q.dead_letter(&b2[0], "refused").unwrap();
            q.dead_letter(&b2[0], "refused").unwrap();
            let usage = q.bytes_by_stream().unwrap();
            assert_eq!(
                usage[&tb],
                bytes(&page_b) - first_ten - b2[0].raw.len() as u64
            );
            assert_eq!(q.dead_letter_count(), 1);
            // And one of a's, so the retry has two streams to put back.
            let (a, _) = q.read_stream_batch(ta, None, 1, 1 << 20, 100).unwrap();
            q.dead_letter(&a[0], "refused").unwrap();
            assert_eq!(q.depth().events, 2 * n as u64 - 12);
        }
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.depth().events, 2 * n as u64 - 12);
        assert_eq!(q.retry_dead_letters().unwrap(), 2);
        assert_eq!(q.depth().events, 2 * n as u64 - 10);
        assert_eq!(q.dead_letter_count(), 0);
        let usage = q.bytes_by_stream().unwrap();
        assert_eq!(usage[&tb], bytes(&page_b) - bytes(&page_b[..10]));
        assert_eq!(usage[&ta], bytes(&page_a));
        // The retried events are read back by their own stream's forwarder, at the tail, once each.
        let (all_a, _) = q
            .read_stream_batch(ta, None, usize::MAX, usize::MAX, usize::MAX)
            .unwrap();
        let (all_b, _) = q
            .read_stream_batch(tb, None, usize::MAX, usize::MAX, usize::MAX)
            .unwrap();
        assert_eq!((all_a.len(), all_b.len()), (n, n - 10));
        assert_eq!(all_a.last().unwrap().raw, page_a[0].raw);
        assert_eq!(all_b.last().unwrap().raw, page_b[10].raw);
        assert_eq!(
            q.read_batch(None, usize::MAX, usize::MAX).unwrap().len() as u64,
            q.depth().events
        );
        let seqs: Vec<u64> = all_a.iter().chain(&all_b).map(|e| e.seq).collect();
        q.ack(&seqs).unwrap();
        assert_eq!(q.depth(), Depth::default());
        assert!(q.bytes_by_stream().unwrap().is_empty());
        assert!(q.events.is_empty() && q.acked.is_empty());
        assert_eq!(q.oldest_queued_at_ms().unwrap(), None);
    }
}

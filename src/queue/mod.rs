//! The durable queue between the pollers and the forwarder: the only module that knows sled.
//!
//! Trees of the one sled database, and the file that owns each:
//! - `events`: sequence number of a chunk's first event (u64, big-endian) → chunk: up to a few dozen
//!   consecutive events of one page, raw bytes as received, compressed together ([`record`]). Dead
//!   letters retried are written as chunks too.
//! - `acked`: chunk key → bitmap of the chunk's events already acknowledged or dead-lettered ([`acks`]); the
//!   chunk and its bitmap are removed together when the last event goes.
//! - `dedup`: records of the timestamps and identity hashes of the events each stream queued, sorted by
//!   time within a stream, so pruning is a range scan ([`dedup`]).
//! - `dead_letter`: sequence number → [`DeadLetter`]: events the intake will never accept, kept, never sent;
//!   and `answer/<id>` → [`KeptAnswer`]: answers of JumpCloud that were not events, kept for inspection
//!   ([`dead_letter`]).
//! - `meta`: cursors (`cursor/<stream>`, [`commit`]), the next sequence number, the in/out counters and the
//!   per-stream byte counters ([`ledger`]).
//!
//! The other files: [`open`] (opening sled), [`read`] (reading batches), [`admission`] (whether a stream may
//! queue more: the size limit, its share, the disk reserve), [`blocking`] (how async code calls the queue),
//! [`flush`] (making writes durable, one flush at a time).
//!
//! Invariants (of every file here; each file states its own):
//! - No `Db`/`Tree` method is called inside a transaction closure (sled deadlocks), and the closures have no
//!   side effects outside their return value (sled may run them more than once): what a transaction
//!   changed in memory (the [`ledger`]'s copies) is applied from its return value once it is committed.
//! - Nothing outside this module sees sled: errors are [`QueueError`], values are the types below.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sled::transaction::TransactionError;
use sled::Tree;

use admission::Admission;
use checkpoint::Checkpoints;
use dedup::DedupIndex;
use ledger::Ledger;

mod acks;
mod admission;
mod aside;
mod blocking;
mod checkpoint;
mod commit;
mod dead_letter;
mod dedup;
mod flush;
mod ledger;
mod open;
mod read;
mod record;
mod recover;
#[cfg(test)]
mod recover_tests;
#[cfg(test)]
mod tests;

pub use admission::{Limits, Share};
pub use checkpoint::{CheckpointFile, Recovery, StreamCheckpoint};
pub use commit::{CommitOutcome, COMMIT_MAX_EVENTS};
pub use dead_letter::{DeadLetter, KeptAnswer, KEPT_ANSWER_MAX_BYTES, MAX_KEPT_ANSWERS};
pub use ledger::Depth;
pub use recover::{Opened, RecoveryPolicy};

/// What went wrong with the queue. [`QueueError::is_damage`] tells a damaged queue (whose data cannot be
/// trusted) from one that is unavailable (locked, on a full disk, not permitted) but intact.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "cannot open the queue in {dir}: {source} (can the agent's user read and write that folder? a \
         damaged queue is rebuilt by itself from the delivery checkpoint)"
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
    /// A call into the queue panicked (sled panics on some damage it finds), with the panic's message.
    #[error("the queue's storage failed unexpectedly (a panic: {0})")]
    Panicked(String),
    /// A call into the queue was dropped before it ran: the runtime is shutting down.
    #[error("a queue operation was cancelled (shutting down)")]
    Cancelled,
    /// The delivery checkpoint file could not be written (events that it must cover first are then not
    /// committed: the poller asks again).
    #[error(
        "cannot write the delivery checkpoint in {dir}: {source} (is the disk full or read-only?)"
    )]
    Checkpoint { dir: String, source: std::io::Error },
}

impl QueueError {
    /// True when the queue's data is damaged or its storage broke down in an unforeseen way (a damaged
    /// record, a panic, sled reporting corruption): what collecting again may recover from. False for a
    /// queue that is intact but unavailable (another process holds it, the disk is full, an I/O error such
    /// as a permission refused) and for a cancelled call.
    pub fn is_damage(&self) -> bool {
        match self {
            QueueError::Damaged(_) | QueueError::Panicked(_) => true,
            QueueError::Storage(source) | QueueError::Open { source, .. } => {
                matches!(source, sled::Error::Corruption { .. })
            }
            QueueError::Locked(_)
            | QueueError::DiskFull(_)
            | QueueError::Cancelled
            | QueueError::Checkpoint { .. } => false,
        }
    }
}

impl From<TransactionError<QueueError>> for QueueError {
    fn from(err: TransactionError<QueueError>) -> Self {
        match err {
            TransactionError::Abort(err) => err,
            TransactionError::Storage(err) => QueueError::Storage(err),
        }
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
    ledger: Arc<Ledger>,
    admission: Arc<Admission>,
    /// What is queued per stream, for the delivery checkpoint file (see [`checkpoint`]).
    checkpoints: Arc<Mutex<Checkpoints>>,
    /// The first damage an async caller met, if any (see [`Queue::damaged`]).
    damage: Arc<blocking::Damage>,
    /// Flushes take turns (see [`flush`]).
    flush_turns: Arc<flush::FlushTurns>,
    dir: PathBuf,
}

impl Queue {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn checkpoints(&self) -> std::sync::MutexGuard<'_, Checkpoints> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the delivery checkpoint file if a stream's restore point moved since it was last written
    /// (the agent calls this every few seconds and when it stops). True if it wrote.
    pub fn write_checkpoint(&self) -> Result<bool, QueueError> {
        self.checkpoints()
            .write_if_moved()
            .map_err(|source| self.checkpoint_error(source))
    }

    /// The delivery checkpoint as last written (with the history of recoveries).
    pub fn checkpoint_file(&self) -> CheckpointFile {
        self.checkpoints().file().clone()
    }

    fn checkpoint_error(&self, source: std::io::Error) -> QueueError {
        QueueError::Checkpoint {
            dir: self.dir.display().to_string(),
            source,
        }
    }

    /// The events and raw bytes waiting to be forwarded.
    pub fn depth(&self) -> Depth {
        self.ledger.depth()
    }

    /// When the intake last acknowledged a batch (milliseconds since the epoch).
    pub fn last_ack_ms(&self) -> Result<Option<u64>, QueueError> {
        Ok(self
            .meta
            .get(ledger::KEY_LAST_ACK)?
            .map(|v| ledger::read_u64(Some(v))))
    }

    /// The raw bytes queued per stream tag, from the persisted per-stream counters (never by scanning the
    /// events: a backlog of millions of events must not slow the start).
    pub fn bytes_by_stream(&self) -> Result<std::collections::HashMap<u32, u64>, QueueError> {
        ledger::bytes_by_stream(&self.meta)
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

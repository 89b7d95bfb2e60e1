//! Opening the queue: sled's settings, the wait for its lock, the repair of what an interrupted snapshot
//! leaves, and the classification of what goes wrong (another process, a full disk, anything else).
//!
//! Invariants:
//! - An existing queue is opened with the segment size it was created with (sled refuses another); only a
//!   new queue gets [`NEW_QUEUE_SEGMENT_SIZE`].
//! - A snapshot sled did not finish writing (`snap.*.generating`) is removed before opening: it is never
//!   the one to use, and sled would otherwise prefer it and refuse to open.
//! - Opening reports another process holding the queue as [`QueueError::Locked`] and a full disk as
//!   [`QueueError::DiskFull`], distinct from a damaged queue; it waits [`LOCK_WAIT`] for a lock this process
//!   may still hold itself.
//! - `flush_every_ms` stays at sled's default (a real fsync every 500 ms): never None.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkpoint::{CheckpointFile, Checkpoints};
use super::dedup::DedupIndex;
use super::ledger::{bytes_by_stream, read_u64, Ledger, KEY_SEQ};
use super::record::decode_chunk;
use super::{Queue, QueueError};

/// sled's page cache; its 1 GiB default would make RSS grow with the database. sled splits it among shards
/// that each keep their most recent node whatever its size; our sled has 16 shards instead of 256, so that
/// this capacity is what bounds the cache (vendor/sled/JCDI-FORWARDER.md, item 3).
const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;

/// How long opening waits for a queue's lock before saying another process holds it.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// sled's log segment size for a new queue (sled's default is 512 KiB). sled writes any node larger than a
/// quarter of a segment to a file of its own (open, write, fsync, later unlink); with 1 MiB segments a leaf
/// of full chunks (up to 17 of them) stays in the log. An existing queue keeps the size it was created
/// with, which sled stores in its `conf` file and refuses to change.
pub(super) const NEW_QUEUE_SEGMENT_SIZE: usize = 1024 * 1024;

impl Queue {
    /// Opens (or creates) the queue in `dir`.
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        remove_incomplete_snapshots(dir);
        let open_error = |source: sled::Error| classify_open_error(dir, source);
        let config = sled_config(dir);
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
        // sled never syncs the folder it creates its files in: without this, a power cut soon after the
        // first start can lose the database's very names.
        sync_dir(dir);
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        let meta = tree("meta")?;
        let queue = Queue {
            events: tree("events")?,
            acked: tree("acked")?,
            dedup: DedupIndex::new(tree("dedup")?),
            commit_lock: Arc::default(),
            dead: tree("dead_letter")?,
            ledger: Arc::new(Ledger::load(&meta)?),
            admission: Arc::default(),
            checkpoints: Arc::new(Mutex::new(Checkpoints::load(
                dir,
                None,
                Vec::new(),
                &HashMap::new(),
                0,
                |_| None,
            ))),
            damage: Arc::default(),
            flush_turns: Arc::default(),
            meta,
            db,
            dir: dir.to_path_buf(),
        };
        queue.load_checkpoints()?;
        Ok(queue)
    }

    /// Opens the database in `dir`, when there is one, and closes it again at once; reports nothing.
    ///
    /// sled 0.34 writes a snapshot of where its pages are only when it opens a database, and on opening
    /// replays all the log written since the last snapshot, in buffers of a segment each. Once the agent
    /// has settled its allocator ([`crate::allocator`]), buffers of that size are fresh `mmap`s, page
    /// faults and all: replaying the log of 1,000,000 queued events (before chunks were compressed) took
    /// 1.07 s there against 0.27 s with glibc's defaults (BENCHMARKS.md). So the first image of the
    /// process calls this just before it starts itself again, and the agent then opens the queue from a
    /// fresh snapshot.
    ///
    /// Nothing is created where there is no database. Whatever goes wrong (another process holds the
    /// queue, damage, a panic in sled) is left for [`Queue::open`] to find and report.
    pub fn replay_log(dir: &Path) {
        if !super::aside::has_database(dir) {
            return;
        }
        remove_incomplete_snapshots(dir);
        let config = sled_config(dir);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Ok(db) = config.open() {
                let _ = db.flush();
            }
        }));
    }

    /// Reads the delivery checkpoint file and seeds what it follows from the database.
    fn load_checkpoints(&self) -> Result<(), QueueError> {
        let file = match CheckpointFile::read(&self.dir) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!("{err}: the delivery checkpoint is written again from the queue");
                None
            }
        };
        let cursors = self
            .cursors()?
            .into_iter()
            .map(|(name, cursor)| (name, cursor.watermark_ns))
            .collect();
        let queued = bytes_by_stream(&self.meta)?;
        let next_seq = read_u64(self.meta.get(KEY_SEQ)?);
        let mut scan_error = None;
        let state = Checkpoints::load(&self.dir, file, cursors, &queued, next_seq, |tag| {
            self.scan_oldest(tag).unwrap_or_else(|err| {
                scan_error = Some(err);
                None
            })
        });
        if let Some(err) = scan_error {
            return Err(err);
        }
        *self.checkpoints() = state;
        Ok(())
    }

    /// The oldest timestamp of stream `tag` in the queue, read from every chunk: only for a queue written
    /// before checkpoints existed, once.
    fn scan_oldest(&self, tag: u32) -> Result<Option<i64>, QueueError> {
        let mut oldest = None;
        for entry in self.events.iter() {
            let (key, value) = entry?;
            let first = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            let mut scratch = Vec::new();
            let chunk = decode_chunk(first, &value, &mut scratch)?;
            if chunk.stream != tag {
                continue;
            }
            if let Some(min) = chunk.events.iter().map(|e| e.timestamp_ns).min() {
                oldest = Some(oldest.map_or(min, |o: i64| o.min(min)));
            }
        }
        Ok(oldest)
    }
}

/// sled's settings for the queue in `dir`. `flush_every_ms` stays at its default (a real fsync every
/// 500 ms): never None.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY)
        .segment_size(existing_segment_size(dir).unwrap_or(NEW_QUEUE_SEGMENT_SIZE))
        .mode(sled::Mode::HighThroughput)
}

/// `fsync`s a folder, so that the files created or renamed in it are durable (best effort: a folder that
/// cannot be opened is reported when its files are used).
pub(super) fn sync_dir(dir: &Path) {
    if let Err(err) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), "cannot sync the queue's folder: {err}");
    }
}

/// What an error of sled's while opening `dir` means for the operator.
fn classify_open_error(dir: &Path, source: sled::Error) -> QueueError {
    match &source {
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
    }
}

/// The segment size an existing queue was created with, from the `segment_size: N` line of sled's `conf`
/// file (text lines followed by a 4-byte checksum). `None` for a new queue, or when the file cannot be
/// read: sled then reports the problem itself.
pub(super) fn existing_segment_size(dir: &Path) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_are_told_apart() {
        let dir = Path::new("/q");
        let io = |kind: std::io::ErrorKind, text: &str| {
            sled::Error::Io(std::io::Error::new(kind, text.to_string()))
        };
        let locked = classify_open_error(
            dir,
            io(
                std::io::ErrorKind::Other,
                "could not acquire lock on \"/q/db\"",
            ),
        );
        assert!(matches!(locked, QueueError::Locked(_)), "{locked}");
        let full = classify_open_error(dir, io(std::io::ErrorKind::StorageFull, "no space"));
        assert!(matches!(full, QueueError::DiskFull(_)), "{full}");
        let denied = classify_open_error(dir, io(std::io::ErrorKind::PermissionDenied, "denied"));
        assert!(matches!(denied, QueueError::Open { .. }), "{denied}");
        assert!(
            denied.to_string().contains("read and write that folder"),
            "{denied}"
        );
        // Only damage is damage: a queue that is merely unavailable is intact.
        assert!(!locked.is_damage() && !full.is_damage() && !denied.is_damage());
        let corrupt = classify_open_error(dir, sled::Error::Corruption { at: None, bt: () });
        assert!(matches!(corrupt, QueueError::Open { .. }), "{corrupt}");
        assert!(corrupt.is_damage());
        assert!(QueueError::Storage(sled::Error::Corruption { at: None, bt: () }).is_damage());
        assert!(!QueueError::Storage(io(std::io::ErrorKind::StorageFull, "no space")).is_damage());
        assert!(QueueError::Damaged("record #1".into()).is_damage());
        assert!(QueueError::Panicked("torn".into()).is_damage());
        assert!(!QueueError::Cancelled.is_damage());
    }
}

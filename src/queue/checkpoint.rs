//! The delivery checkpoint: for each stream, the instant from which collecting again from JumpCloud gets
//! back every event not yet acknowledged by its destination. It lives in a small JSON file beside the
//! queue (`data_dir/checkpoint.json`), outside sled, so that a queue whose database is damaged or lost can
//! be rebuilt by collecting again (JumpCloud keeps events for 90 days).
//!
//! For a stream, the checkpoint is `restore_ns = min(cursor, oldest unacknowledged event's timestamp)`:
//! putting the stream's cursor back there makes the next poll start at `restore_ns - overlap`, which reads
//! every event with a timestamp at or after it.
//!
//! Invariants:
//! - The file is replaced atomically (temporary file, `fsync`, rename, `fsync` of the folder): after a crash
//!   or a power cut it holds the previous checkpoint or the new one, never a mix.
//! - The file may lag behind the queue, but only in the safe direction: a checkpoint written earlier is
//!   older, so it makes a recovery collect more again (duplicates), never less. What would move a
//!   checkpoint *back* (events older than the last file's restore point: late events, a backfill, dead
//!   letters retried) is written before the events are committed ([`Tracker::needs_write_before`]).
//! - [`Tracker`] follows what is queued with no I/O of its own: each commit is an extent (its chunk keys,
//!   its oldest timestamp, its bytes), removed when its last byte is acknowledged or dead-lettered.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clock::{format_rfc3339_ns, now_ns};
use crate::event::stream_tag;

/// The file's name in `data_dir`.
pub const FILE_NAME: &str = "checkpoint.json";
/// The version of the file's layout; a file of a newer version is refused, not misread.
const VERSION: u32 = 1;
/// Recoveries remembered in the file (for `status`); older ones are only in the logs.
const RECOVERIES_KEPT: usize = 10;

/// The checkpoint file, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub version: u32,
    /// What this file is, for whoever opens it.
    #[serde(default)]
    pub about: String,
    /// When it was written (RFC 3339).
    #[serde(default)]
    pub written_at: String,
    /// Per stream name.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamCheckpoint>,
    /// How many times the queue was rebuilt from this checkpoint, ever.
    #[serde(default)]
    pub recoveries_total: u64,
    /// The latest recoveries, newest last.
    #[serde(default)]
    pub recoveries: Vec<Recovery>,
}

/// One stream's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    /// Put the stream's cursor back here to collect again every event not acknowledged (RFC 3339)...
    pub restore_cursor: String,
    /// ... the same instant in nanoseconds since the epoch (what the agent reads).
    pub restore_cursor_ns: i64,
    /// The cursor when the file was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The timestamp of the oldest event queued and not yet acknowledged, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_unacknowledged: Option<String>,
}

/// A rebuild of the queue, as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// When (RFC 3339).
    pub at: String,
    /// What was wrong with the queue.
    pub reason: String,
    /// Where the damaged files were moved (empty when there was nothing left to keep).
    pub moved_to: String,
    /// Per stream: where collection starts again (RFC 3339).
    pub collect_again_from: BTreeMap<String, String>,
}

impl Recovery {
    /// One line for `status` and `/health`.
    pub fn describe(&self) -> String {
        let from: Vec<String> = self
            .collect_again_from
            .iter()
            .map(|(name, from)| format!("{name} from {from}"))
            .collect();
        let mut text = format!("{}: {}", self.at, self.reason);
        if !from.is_empty() {
            text.push_str(&format!("; collected again: {}", from.join(", ")));
        }
        if !self.moved_to.is_empty() {
            text.push_str(&format!("; damaged copy in {}", self.moved_to));
        }
        text
    }
}

impl StreamCheckpoint {
    pub fn new(
        restore_ns: i64,
        cursor_ns: Option<i64>,
        oldest_ns: Option<i64>,
    ) -> StreamCheckpoint {
        StreamCheckpoint {
            restore_cursor: format_rfc3339_ns(restore_ns),
            restore_cursor_ns: restore_ns,
            cursor: cursor_ns.map(format_rfc3339_ns),
            oldest_unacknowledged: oldest_ns.map(format_rfc3339_ns),
        }
    }
}

impl CheckpointFile {
    /// The file in `dir`, `Ok(None)` when there is none. A file that cannot be read or understood is an
    /// error naming it: the caller decides (a damaged checkpoint must not pass for "no checkpoint").
    pub fn read(dir: &Path) -> Result<Option<CheckpointFile>, String> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
        };
        let file: CheckpointFile = serde_json::from_slice(&text)
            .map_err(|err| format!("{} is not a checkpoint file: {err}", path.display()))?;
        if file.version > VERSION {
            return Err(format!(
                "{} is of version {}, newer than this agent's {VERSION}: run the newer agent",
                path.display(),
                file.version
            ));
        }
        Ok(Some(file))
    }

    /// Replaces the file in `dir` atomically and durably.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut file = self.clone();
        file.version = VERSION;
        file.about = "jcdi-forwarder's delivery checkpoint: per stream, putting the cursor back to \
                      restore_cursor collects again every event not yet acknowledged by the intake. \
                      Written by the agent; do not edit."
            .to_string();
        file.written_at = format_rfc3339_ns(now_ns());
        let len = file.recoveries.len();
        file.recoveries.drain(..len.saturating_sub(RECOVERIES_KEPT));
        let mut text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        text.push(b'\n');
        write_atomically(&dir.join(FILE_NAME), &text)
    }
}

/// Writes `bytes` to `path` so that after a crash the file holds either its old content or `bytes`:
/// a temporary file beside it, `fsync`ed, renamed over it, then the folder `fsync`ed (the rename itself
/// is durable only then).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp: PathBuf = path.to_path_buf();
    tmp.as_mut_os_string().push(".tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A commit's events still queued: the chunk keys it used, its oldest timestamp and its bytes left.
#[derive(Clone, Copy, Debug)]
struct Extent {
    last_key: u64,
    oldest_ns: i64,
    bytes_left: u64,
}

/// Follows, per stream (by tag), the oldest timestamp of what is still queued, from the commits and the
/// removals the queue reports. Cheap: one map entry per commit still queued.
#[derive(Debug, Default)]
pub struct Tracker {
    /// (stream tag, first chunk key) → extent.
    extents: BTreeMap<(u32, u64), Extent>,
    /// The restore points last written to the file, per stream tag.
    written: HashMap<u32, i64>,
}

impl Tracker {
    /// What was queued before this process opened the queue: `bytes` of stream `tag` in chunk keys below
    /// `below_key`, none older than `oldest_ns` (the restore point of the last checkpoint file).
    pub fn queued_before_open(&mut self, tag: u32, below_key: u64, oldest_ns: i64, bytes: u64) {
        if bytes > 0 && below_key > 0 {
            self.insert(tag, 0, below_key - 1, oldest_ns, bytes);
        }
    }

    /// A commit of stream `tag` wrote chunks with keys `first_key..=last_key`.
    pub fn committed(
        &mut self,
        tag: u32,
        first_key: u64,
        last_key: u64,
        oldest_ns: i64,
        bytes: u64,
    ) {
        if bytes > 0 {
            self.insert(tag, first_key, last_key, oldest_ns, bytes);
        }
    }

    fn insert(&mut self, tag: u32, first: u64, last_key: u64, oldest_ns: i64, bytes_left: u64) {
        self.extents.insert(
            (tag, first),
            Extent {
                last_key,
                oldest_ns,
                bytes_left,
            },
        );
    }

    /// `bytes` of the chunk at `key` of stream `tag` were acknowledged or dead-lettered.
    pub fn removed(&mut self, tag: u32, key: u64, bytes: u64) {
        let found = self
            .extents
            .range_mut((tag, 0)..=(tag, key))
            .next_back()
            .filter(|(_, extent)| extent.last_key >= key)
            .map(|(at, extent)| {
                extent.bytes_left = extent.bytes_left.saturating_sub(bytes);
                (*at, extent.bytes_left)
            });
        if let Some((at, 0)) = found {
            self.extents.remove(&at);
        }
    }

    /// The stream has nothing queued any more (its persisted byte counters say so): whatever the extents
    /// still hold is stale (bytes of an older layout, say).
    pub fn stream_empty(&mut self, tag: u32) {
        self.extents.retain(|(t, _), _| *t != tag);
    }

    /// The oldest timestamp still queued for stream `tag`.
    pub fn oldest(&self, tag: u32) -> Option<i64> {
        self.extents
            .range((tag, 0)..=(tag, u64::MAX))
            .map(|(_, extent)| extent.oldest_ns)
            .min()
    }

    /// The restore point of stream `tag` given its cursor: `min(cursor, oldest queued)`.
    pub fn restore_point(&self, tag: u32, cursor_ns: Option<i64>) -> Option<i64> {
        match (cursor_ns, self.oldest(tag)) {
            (Some(c), Some(o)) => Some(c.min(o)),
            (c, o) => c.or(o),
        }
    }

    /// Whether events of stream `tag` as old as `oldest_ns` must be in the file before they are committed:
    /// true when they are older than the last restore point written (late events, a backfill, dead
    /// letters retried). So the file never promises more than the queue holds.
    pub fn needs_write_before(&self, tag: u32, oldest_ns: i64) -> bool {
        self.written
            .get(&tag)
            .is_none_or(|written| oldest_ns < *written)
    }

    /// Records what was written to the file.
    pub fn wrote(&mut self, tag: u32, restore_ns: i64) {
        self.written.insert(tag, restore_ns);
    }

    /// The restore point last written for stream `tag`.
    pub fn written(&self, tag: u32) -> Option<i64> {
        self.written.get(&tag).copied()
    }
}

/// The queue's side of the checkpoint: what is queued per stream ([`Tracker`]), each stream's cursor as
/// last committed, and the file as last written (which also keeps the history of recoveries).
#[derive(Debug)]
pub(super) struct Checkpoints {
    dir: PathBuf,
    tracker: Tracker,
    /// Stream name → its cursor's watermark, as last committed (or read at open).
    cursors: BTreeMap<String, i64>,
    /// Stream tag → name, for every stream this queue has seen.
    names: HashMap<u32, String>,
    file: CheckpointFile,
}

impl Checkpoints {
    /// The state of a queue just opened in `dir`: `file` is the checkpoint file found there (if any),
    /// `cursors` the streams' cursors in the database, `queued` the bytes each stream has queued, and
    /// `next_seq` the first key a new chunk will get. `oldest_queued(tag)` finds the oldest timestamp a
    /// stream has queued by reading the queue; it is called only for a queue with events and no
    /// checkpoint for their stream (one written before checkpoints existed).
    pub(super) fn load(
        dir: &Path,
        file: Option<CheckpointFile>,
        cursors: Vec<(String, i64)>,
        queued: &HashMap<u32, u64>,
        next_seq: u64,
        mut oldest_queued: impl FnMut(u32) -> Option<i64>,
    ) -> Checkpoints {
        let file = file.unwrap_or_default();
        let mut state = Checkpoints {
            dir: dir.to_path_buf(),
            tracker: Tracker::default(),
            cursors: cursors.into_iter().collect(),
            names: HashMap::new(),
            file,
        };
        let names: Vec<String> = state
            .cursors
            .keys()
            .chain(state.file.streams.keys())
            .cloned()
            .collect();
        for name in names {
            state.names.insert(stream_tag(&name), name);
        }
        for (name, stream) in &state.file.streams {
            state
                .tracker
                .wrote(stream_tag(name), stream.restore_cursor_ns);
        }
        for (&tag, &bytes) in queued {
            // The last file covers what was queued when it was written, and everything committed since
            // (anything older was written to it first): its restore point bounds the oldest queued event.
            let oldest = state
                .names
                .get(&tag)
                .and_then(|name| state.file.streams.get(name))
                .map(|stream| stream.restore_cursor_ns)
                .or_else(|| oldest_queued(tag));
            if let Some(oldest) = oldest {
                state
                    .tracker
                    .queued_before_open(tag, next_seq, oldest, bytes);
            }
        }
        state
    }

    /// Before events of stream `tag` (named `name`, when the caller knows it) as old as `oldest_ns` are
    /// committed: writes the checkpoint first when they are older than what it covers.
    pub(super) fn before_commit(
        &mut self,
        tag: u32,
        name: Option<&str>,
        oldest_ns: i64,
    ) -> std::io::Result<()> {
        if let Some(name) = name {
            self.names.entry(tag).or_insert_with(|| name.to_string());
        }
        if !self.names.contains_key(&tag) {
            // Events of a stream this queue knows no name of (dead letters of a stream no longer
            // configured): no configured stream sends them, and the file, which is by name, cannot say
            // where to collect them again.
            return Ok(());
        }
        if self.tracker.needs_write_before(tag, oldest_ns) {
            self.write(Some((tag, oldest_ns)))?;
        }
        Ok(())
    }

    /// A commit of `stream` queued `bytes` in chunks `first_key..=last_key`, none older than `oldest_ns`,
    /// and moved its cursor to `cursor_ns` (if it did).
    pub(super) fn committed(
        &mut self,
        stream: &str,
        keys: (u64, u64),
        oldest_ns: i64,
        bytes: u64,
        cursor_ns: Option<i64>,
    ) {
        let tag = stream_tag(stream);
        self.tracker
            .committed(tag, keys.0, keys.1, oldest_ns, bytes);
        if let Some(cursor) = cursor_ns {
            self.cursors.insert(stream.to_string(), cursor);
        }
    }

    /// Dead letters of stream `tag` were put back in chunks `first_key..=last_key`.
    pub(super) fn requeued(&mut self, tag: u32, keys: (u64, u64), oldest_ns: i64, bytes: u64) {
        self.tracker
            .committed(tag, keys.0, keys.1, oldest_ns, bytes);
    }

    /// Events of stream `tag` left the chunk at `key` (acknowledged or dead-lettered): `bytes` of them,
    /// leaving `stream_bytes_left` of the stream queued.
    pub(super) fn removed(&mut self, tag: u32, key: u64, bytes: u64, stream_bytes_left: u64) {
        self.tracker.removed(tag, key, bytes);
        if stream_bytes_left == 0 {
            self.tracker.stream_empty(tag);
        }
    }

    /// Writes the file when a stream's restore point moved since it was last written. True if it wrote.
    pub(super) fn write_if_moved(&mut self) -> std::io::Result<bool> {
        let moved = self.names.iter().any(|(&tag, name)| {
            let cursor = self.cursors.get(name).copied();
            self.tracker.restore_point(tag, cursor) != self.tracker.written(tag)
        });
        if moved {
            self.write(None)?;
        }
        Ok(moved)
    }

    /// Writes the file now; `lower` moves one stream's restore point back to cover events about to be
    /// committed.
    fn write(&mut self, lower: Option<(u32, i64)>) -> std::io::Result<()> {
        let mut streams = BTreeMap::new();
        let mut written = Vec::new();
        for (&tag, name) in &self.names {
            let cursor = self.cursors.get(name).copied();
            let oldest = self.tracker.oldest(tag);
            let mut restore = self.tracker.restore_point(tag, cursor);
            if let Some((lowered, ns)) = lower {
                if lowered == tag {
                    restore = Some(restore.map_or(ns, |r| r.min(ns)));
                }
            }
            if let Some(restore) = restore {
                streams.insert(name.clone(), StreamCheckpoint::new(restore, cursor, oldest));
                written.push((tag, restore));
            }
        }
        let mut file = self.file.clone();
        file.streams = streams;
        file.write(&self.dir)?;
        self.file = file;
        for (tag, restore) in written {
            self.tracker.wrote(tag, restore);
        }
        Ok(())
    }

    /// Sets `stream`'s cursor as a recovery restores it (already committed to the queue).
    pub(super) fn restored(&mut self, stream: &str, cursor_ns: i64) {
        self.names.insert(stream_tag(stream), stream.to_string());
        self.cursors.insert(stream.to_string(), cursor_ns);
    }

    /// Records a recovery in the file (and writes it).
    pub(super) fn record_recovery(&mut self, recovery: Recovery) -> std::io::Result<()> {
        self.file.recoveries_total += 1;
        self.file.recoveries.push(recovery);
        self.write(None)
    }

    /// The file as last written (or read at open).
    pub(super) fn file(&self) -> &CheckpointFile {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_is_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(CheckpointFile::read(dir.path()), Ok(None));
        let mut file = CheckpointFile::default();
        file.streams.insert(
            "default".to_string(),
            StreamCheckpoint::new(1_000_000_000, Some(2_000_000_000), Some(1_000_000_000)),
        );
        file.write(dir.path()).expect("write");
        let read = CheckpointFile::read(dir.path())
            .expect("read")
            .expect("some");
        assert_eq!(read.streams, file.streams);
        assert_eq!(read.version, VERSION);
        assert_eq!(
            read.streams["default"].restore_cursor,
            "1970-01-01T00:00:01Z"
        );
        assert!(!dir.path().join("checkpoint.json.tmp").exists());
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("text");
        assert!(
            text.contains("\"restore_cursor\": \"1970-01-01T00:00:01Z\""),
            "{text}"
        );
    }

    #[test]
    fn a_damaged_or_newer_file_is_an_error_not_an_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), b"{\"version\":1,\"str").expect("write");
        let err = CheckpointFile::read(dir.path()).unwrap_err();
        assert!(err.contains("is not a checkpoint file"), "{err}");
        std::fs::write(dir.path().join(FILE_NAME), b"{\"version\":99}").expect("write");
        let err = CheckpointFile::read(dir.path()).unwrap_err();
        assert!(err.contains("newer than this agent"), "{err}");
    }

    #[test]
    fn only_the_latest_recoveries_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = CheckpointFile::default();
        for i in 0..15 {
            file.recoveries_total += 1;
            file.recoveries.push(Recovery {
                at: format!("{i}"),
                reason: String::new(),
                moved_to: String::new(),
                collect_again_from: BTreeMap::new(),
            });
        }
        file.write(dir.path()).expect("write");
        let read = CheckpointFile::read(dir.path())
            .expect("read")
            .expect("some");
        assert_eq!(read.recoveries_total, 15);
        assert_eq!(read.recoveries.len(), RECOVERIES_KEPT);
        assert_eq!(read.recoveries.last().map(|r| r.at.as_str()), Some("14"));
    }

    #[test]
    fn the_oldest_follows_commits_and_removals() {
        let mut t = Tracker::default();
        assert_eq!(t.restore_point(1, Some(500)), Some(500));
        t.committed(1, 10, 19, 300, 100);
        t.committed(1, 20, 29, 200, 50);
        t.committed(2, 30, 39, 100, 10);
        assert_eq!(t.oldest(1), Some(200));
        assert_eq!(t.restore_point(1, Some(500)), Some(200));
        assert_eq!(t.restore_point(1, Some(150)), Some(150));
        // Part of the older commit goes: it still holds the minimum.
        t.removed(1, 20, 30);
        assert_eq!(t.oldest(1), Some(200));
        t.removed(1, 28, 20);
        assert_eq!(t.oldest(1), Some(300), "the commit at 20 is gone whole");
        // Another stream's chunks do not touch this stream.
        t.removed(2, 30, 10);
        assert_eq!(t.oldest(2), None);
        assert_eq!(t.oldest(1), Some(300));
        t.removed(1, 15, 100);
        assert_eq!(t.oldest(1), None);
        assert_eq!(t.restore_point(1, Some(500)), Some(500));
        assert_eq!(t.restore_point(1, None), None);
    }

    #[test]
    fn what_was_queued_before_open_counts_until_drained() {
        let mut t = Tracker::default();
        t.queued_before_open(1, 1_000, 42, 300);
        t.committed(1, 1_000, 1_010, 99, 10);
        assert_eq!(t.oldest(1), Some(42));
        t.removed(1, 5, 200);
        t.removed(1, 999, 100);
        assert_eq!(t.oldest(1), Some(99));
        t.stream_empty(1);
        assert_eq!(t.oldest(1), None);
    }

    #[test]
    fn only_older_events_than_the_file_covers_need_a_write_first() {
        let mut t = Tracker::default();
        assert!(t.needs_write_before(1, 1_000), "nothing written yet");
        t.wrote(1, 1_000);
        assert!(!t.needs_write_before(1, 1_000), "covered");
        assert!(!t.needs_write_before(1, 5_000), "newer");
        assert!(
            t.needs_write_before(1, 999),
            "older: a late event or a backfill"
        );
        assert_eq!(t.written(1), Some(1_000));
    }
}

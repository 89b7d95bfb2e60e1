//! The dedup index: which events of each stream were already queued, by timestamp and identity hash.
//!
//! Layout of the `dedup` tree: entries are 24 bytes, the event's timestamp (8 bytes, order-preserving) then
//! its identity hash (16 bytes), and they are grouped in *records* of up to [`RECORD_MAX_ENTRIES`]. A
//! record's key is the stream tag (4 bytes) followed by its first entry; its value is its entries, sorted,
//! end to end. A record owns every entry from its key up to the next record's key of the same stream, so
//! the one record that could hold an entry is found with a single backward range lookup.
//!
//! Why records: one sled entry per event made every page of 1000 events cost 1000 lookups and 1000 inserts
//! into the tree, each copying a tree node: half the agent's CPU, and about 1 KB of disk per event once sled
//! had written its nodes out (BENCHMARKS.md, "Dedup records"). A page now rewrites the few records its
//! events fall in (about five for a poller's part of 500 events in time order).
//!
//! Counting what a stream holds per time range ([`Queue::dedup_counts`], for the poller's late check) is a
//! range scan for the same reason: entries are sorted by time within a stream.
//!
//! Invariants:
//! - Every entry lies in the record that owns it (`key <= tag + entry < next key`). Splitting a record
//!   keeps this (each piece is keyed by its first entry); pruning removes a record, or rewrites it under
//!   the key of its first remaining entry.
//! - Queues written before records have one entry per key and an empty value: such an entry is read as a
//!   record of one, so they need no migration.
//! - The caller holds the queue's commit lock from [`DedupIndex::plan`] until the planned writes are
//!   committed (or [`DedupIndex::prune`] returns): the plan is computed outside the sled transaction, which
//!   cannot look up ranges, and stays right only while no other writer changes the tree.

use std::ops::Bound;

use sled::Tree;

use super::{Queue, QueueError};
use crate::event::stream_tag;

/// Size of one entry: ordered timestamp (8 bytes) and identity hash (16 bytes).
const ENTRY_LEN: usize = 24;
/// A record holding more entries is split in halves. Pages in time order append to a stream's last record,
/// so the 500 events of a poller's part are written as about five records of 128 entries (3 KiB each).
/// Records of 64 entries made that sixteen, and each is a sled operation paid in full (a node copied, a
/// leaf rewritten on splits): 256 took 6-7 % off the agent's CPU end to end, the same as 1024 (BENCHMARKS.md,
/// "Dedup records of 256 entries"). Records of 512 once raised RSS with a backlog, when sled's cache did not
/// hold to its capacity (BENCHMARKS.md, "Dedup records"); that was mended in `vendor/sled`
/// (JCDI-FORWARDER.md, item 3).
const RECORD_MAX_ENTRIES: usize = 256;

type Entry = [u8; ENTRY_LEN];

/// The dedup index of one queue.
#[derive(Clone)]
pub(super) struct DedupIndex {
    tree: Tree,
}

/// What [`DedupIndex::plan`] decided for one page.
pub(super) struct Plan {
    /// For each event of the page, in order: true when it is new (to be queued), false for a duplicate.
    pub new: Vec<bool>,
    /// The records to write, in the same transaction as the events (key, value).
    pub writes: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A record loaded for a page.
struct Record {
    key: Vec<u8>,
    entries: Vec<Entry>,
    changed: bool,
}

impl DedupIndex {
    pub(super) fn new(tree: Tree) -> DedupIndex {
        DedupIndex { tree }
    }

    /// The tree, for the transaction that commits a [`Plan`]'s writes with the events they cover.
    pub(super) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Decides which of `events` (timestamp, identity hash) are new to stream `tag`, counting a repeat
    /// within the page as a duplicate too, and the record writes that remember the new ones.
    pub(super) fn plan(&self, tag: u32, events: &[(i64, [u8; 16])]) -> Result<Plan, QueueError> {
        let prefix = tag.to_be_bytes();
        let entries: Vec<Entry> = events
            .iter()
            .map(|(timestamp_ns, hash)| entry(*timestamp_ns, hash))
            .collect();

        // Find each event's record, walking the page's entries in order so that a record is looked up
        // once for all the entries it owns.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_unstable_by(|a, b| entries[*a].cmp(&entries[*b]));
        let mut records: Vec<Record> = Vec::new();
        let mut owner = vec![0; entries.len()];
        // The next record's key after the current one (None: the current one is the stream's last).
        let mut owned_until: Option<Vec<u8>> = None;
        for index in order {
            let key = record_key(tag, &entries[index]);
            let still_current =
                !records.is_empty() && owned_until.as_ref().is_none_or(|next| key[..] < next[..]);
            if !still_current {
                records.push(match self.tree.range(&prefix[..]..=&key[..]).next_back() {
                    Some(found) => {
                        let (found_key, value) = found?;
                        Record {
                            entries: record_entries(&found_key, &value)?,
                            key: found_key.to_vec(),
                            changed: false,
                        }
                    }
                    // Before the stream's first record (or the stream has none): a new record.
                    None => Record {
                        key: key.to_vec(),
                        entries: Vec::new(),
                        changed: false,
                    },
                });
                // (A key of another stream is as good a bound: it sorts after all of this stream's.)
                owned_until = match self
                    .tree
                    .range::<&[u8], _>((Bound::Excluded(&key[..]), Bound::Unbounded))
                    .next()
                {
                    Some(next) => Some(next?.0.to_vec()),
                    None => None,
                };
            }
            owner[index] = records.len() - 1;
        }

        // Decide in page order, so that of two copies in a page the first is the one queued.
        let mut new = Vec::with_capacity(entries.len());
        for (entry, owner) in entries.iter().zip(&owner) {
            let record = &mut records[*owner];
            match record.entries.binary_search(entry) {
                Ok(_) => new.push(false),
                Err(position) => {
                    record.entries.insert(position, *entry);
                    record.changed = true;
                    new.push(true);
                }
            }
        }

        let mut writes = Vec::new();
        for record in records.into_iter().filter(|record| record.changed) {
            if record.entries.len() <= RECORD_MAX_ENTRIES {
                writes.push((record.key, record_value(&record.entries)));
                continue;
            }
            // Split in pieces of half the maximum: the first keeps the record's key, the others are keyed
            // by their first entry, so every entry stays in the record that owns it.
            for (i, piece) in record.entries.chunks(RECORD_MAX_ENTRIES / 2).enumerate() {
                let key = if i == 0 {
                    record.key.clone()
                } else {
                    record_key(tag, &piece[0]).to_vec()
                };
                writes.push((key, record_value(piece)));
            }
        }
        Ok(Plan { new, writes })
    }

    /// Forgets the entries of stream `tag` older than `before_ns`, stopping once at least `limit` were
    /// forgotten. Returns how many were. Safe to interrupt: each call is one atomic batch, oldest first.
    pub(super) fn prune(
        &self,
        tag: u32,
        before_ns: i64,
        limit: usize,
    ) -> Result<usize, QueueError> {
        let prefix = tag.to_be_bytes();
        let mut cutoff = prefix.to_vec();
        cutoff.extend_from_slice(&ordered_time(before_ns));
        let mut batch = sled::Batch::default();
        let mut records = 0;
        let mut forgotten = 0;
        // Records whose key is below the cutoff hold the old entries (and maybe some newer ones).
        for found in self.tree.range(prefix.to_vec()..cutoff.clone()) {
            let (key, value) = found?;
            let entries = record_entries(&key, &value)?;
            let old = entries.partition_point(|entry| entry[..8] < cutoff[4..]);
            batch.remove(key);
            if let Some(first_kept) = entries.get(old) {
                // Its entries from the cutoff on: under the key of the first, which is past the cutoff, so
                // the next prune does not read this record again.
                batch.insert(
                    &record_key(tag, first_kept)[..],
                    record_value(&entries[old..]),
                );
            }
            records += 1;
            forgotten += old;
            if forgotten >= limit {
                break;
            }
        }
        if records > 0 {
            self.tree.apply_batch(batch)?;
        }
        Ok(forgotten)
    }
}

impl DedupIndex {
    /// How many entries of stream `tag` lie in each range `[bounds[i], bounds[i + 1])` (timestamps in ns,
    /// `bounds` ascending): one range scan over the records from the one owning `bounds[0]`, whatever the
    /// number of ranges. The caller holds the commit lock, so that no record is split under the scan (it
    /// would be seen twice).
    pub(super) fn count_between(&self, tag: u32, bounds: &[i64]) -> Result<Vec<u64>, QueueError> {
        let (Some(&first), Some(&last)) = (bounds.first(), bounds.last()) else {
            return Ok(Vec::new());
        };
        let mut counts = vec![0; bounds.len().saturating_sub(1)];
        if counts.is_empty() || last <= first {
            return Ok(counts);
        }
        let prefix = tag.to_be_bytes();
        let key_at = |ns: i64| {
            let mut key = prefix.to_vec();
            key.extend_from_slice(&ordered_time(ns));
            key
        };
        let (start, end) = (key_at(first), key_at(last));
        // The record owning the first bound may begin before it.
        let from = match self.tree.range(&prefix[..]..=&start[..]).next_back() {
            Some(found) => found?.0.to_vec(),
            None => start.clone(),
        };
        // Entries come in time order: the range an entry falls in only moves forward.
        let mut slot = 0;
        'records: for found in self.tree.range(from..end) {
            let (key, value) = found?;
            for entry in record_entries(&key, &value)? {
                let ns = entry_time(&entry);
                if ns < first {
                    continue;
                }
                while slot < counts.len() && ns >= bounds[slot + 1] {
                    slot += 1;
                }
                if slot == counts.len() {
                    break 'records;
                }
                counts[slot] += 1;
            }
        }
        Ok(counts)
    }
}

impl Queue {
    /// How many events of `stream` the dedup index holds in each range `[bounds[i], bounds[i + 1])`
    /// (timestamps in nanoseconds, `bounds` ascending): `bounds.len() - 1` counts. Events without a
    /// timestamp are counted under the time they were read.
    pub fn dedup_counts(&self, stream: &str, bounds: &[i64]) -> Result<Vec<u64>, QueueError> {
        let _commit = self
            .commit_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.dedup.count_between(stream_tag(stream), bounds)
    }
}

/// Maps an i64 timestamp to bytes that sort like the numbers (sign bit flipped, big-endian).
pub(super) fn ordered_time(ns: i64) -> [u8; 8] {
    ((ns as u64) ^ (1 << 63)).to_be_bytes()
}

/// The timestamp an entry starts with ([`ordered_time`] reversed).
fn entry_time(entry: &Entry) -> i64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&entry[..8]);
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

fn entry(timestamp_ns: i64, hash: &[u8; 16]) -> Entry {
    let mut entry = [0; ENTRY_LEN];
    entry[..8].copy_from_slice(&ordered_time(timestamp_ns));
    entry[8..].copy_from_slice(hash);
    entry
}

fn record_key(tag: u32, entry: &Entry) -> [u8; 4 + ENTRY_LEN] {
    let mut key = [0; 4 + ENTRY_LEN];
    key[..4].copy_from_slice(&tag.to_be_bytes());
    key[4..].copy_from_slice(entry);
    key
}

fn record_value(entries: &[Entry]) -> Vec<u8> {
    entries.concat()
}

/// A stored record's entries; an empty value is an entry of the layout before records (its key).
fn record_entries(key: &[u8], value: &[u8]) -> Result<Vec<Entry>, QueueError> {
    let damaged = || {
        QueueError::Damaged(format!(
            "dedup record of {} bytes under a key of {} bytes",
            value.len(),
            key.len()
        ))
    };
    if value.is_empty() {
        let entry = key.get(4..).and_then(|e| Entry::try_from(e).ok());
        return entry.map(|entry| vec![entry]).ok_or_else(damaged);
    }
    if value.len() % ENTRY_LEN != 0 {
        return Err(damaged());
    }
    Ok(value
        .chunks_exact(ENTRY_LEN)
        .filter_map(|entry| Entry::try_from(entry).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::event::{event_key, IncomingEvent};
    use crate::queue::Queue;

    fn event(id: &str, ts: i64) -> IncomingEvent {
        let raw = format!("{{\"id\":\"{id}\"}}");
        IncomingEvent {
            key: event_key(Some(id), &raw),
            raw: raw.into(),
            timestamp_ns: ts,
        }
    }

    #[test]
    fn counts_per_range_span_records_and_ignore_other_streams() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        // 1000 events, 10 per millisecond, committed out of order in pages: many records, many splits.
        let mut events: Vec<_> = (0..1000)
            .map(|i| event(&format!("e{i}"), (i / 10) * 1_000_000 + i % 10))
            .collect();
        fastrand::Rng::with_seed(7).shuffle(&mut events);
        for page in events.chunks(100) {
            q.commit_page("s", page, None).unwrap();
        }
        q.commit_page("other", &events[..50], None).unwrap();
        let ms = 1_000_000;
        assert_eq!(
            q.dedup_counts("s", &[0, 10 * ms, 10 * ms + 5, 55 * ms, 100 * ms])
                .unwrap(),
            vec![100, 5, 445, 450]
        );
        // Bounds that cut inside a millisecond, outside the data, and empty ranges.
        assert_eq!(
            q.dedup_counts("s", &[-5 * ms, 3, 3, 99 * ms + 9, 200 * ms])
                .unwrap(),
            vec![3, 0, 996, 1]
        );
        assert_eq!(q.dedup_counts("s", &[42]).unwrap(), Vec::<u64>::new());
        assert_eq!(q.dedup_counts("nobody", &[0, 100 * ms]).unwrap(), vec![0]);
        assert_eq!(q.dedup_counts("other", &[0, 100 * ms]).unwrap(), vec![50]);
    }

    #[test]
    fn counts_follow_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let events: Vec<_> = (0..300).map(|i| event(&format!("e{i}"), i)).collect();
        q.commit_page("s", &events, None).unwrap();
        q.prune_dedup("s", 150, usize::MAX).unwrap();
        assert_eq!(q.dedup_counts("s", &[0, 150, 300]).unwrap(), vec![0, 150]);
        assert_eq!(q.dedup_counts("s", &[140, 160]).unwrap(), vec![10]);
    }
}

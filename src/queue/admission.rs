//! Admission: whether the queue has room for more of a stream's events. The queue is full at
//! `queue.max_bytes`; with several streams each may hold only its equal share of that (so that a noisy
//! organization, or one whose intake refuses its key, pauses its own polling while the others go on); and
//! the disk must keep `queue.min_free_disk` free. Writers ask before they read more events
//! ([`Queue::no_room`], [`Queue::room_bytes`]); nothing is refused or dropped here: a paused stream
//! resumes where its cursor stopped (JumpCloud keeps events for 90 days).
//!
//! Invariants:
//! - A stream's bytes are the ledger's (`stats/stream_in/<tag>` minus `stats/stream_out/<tag>`), counted in
//!   the transaction of every change: commits (polls and backfills alike), dead-letter retries, acks and
//!   dead-lettering. Nothing outside the queue adds or removes, so no path can forget to, and the count
//!   survives a restart.
//! - With one stream its share is the whole queue; with `n`, `max_bytes / n` (at least one byte).
//! - The disk check keeps room for the forwarder: a full disk would stop sled from writing acks and even
//!   from opening the queue, so writers pause while there is still `min_free_disk` free.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Queue;
use crate::event::stream_tag;

/// The limits the queue admits events within. The default admits everything (no size limit, no disk
/// reserve, one stream): what a queue opened for a command rather than for the agent gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `queue.max_bytes`: the raw bytes of queued events at which every stream pauses.
    pub max_bytes: u64,
    /// `queue.min_free_disk`: writers pause when the queue's filesystem has less free (0: no check).
    pub min_free_disk: u64,
    /// How many streams share the queue equally.
    pub streams: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: u64::MAX,
            min_free_disk: 0,
            streams: 1,
        }
    }
}

/// One stream's bytes in the queue and the most it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub bytes: u64,
    pub limit: u64,
}

/// The limits in force, shared by every clone of the queue.
pub(super) struct Admission {
    max_bytes: AtomicU64,
    min_free_disk: AtomicU64,
    share_limit: AtomicU64,
}

impl Default for Admission {
    fn default() -> Admission {
        let admission = Admission {
            max_bytes: AtomicU64::new(0),
            min_free_disk: AtomicU64::new(0),
            share_limit: AtomicU64::new(0),
        };
        admission.set(Limits::default());
        admission
    }
}

impl Admission {
    fn set(&self, limits: Limits) {
        let share = match limits.streams {
            0 | 1 => u64::MAX,
            n => (limits.max_bytes / n).max(1),
        };
        self.max_bytes.store(limits.max_bytes, Ordering::Relaxed);
        self.min_free_disk
            .store(limits.min_free_disk, Ordering::Relaxed);
        self.share_limit.store(share, Ordering::Relaxed);
    }
}

impl Queue {
    /// Sets the limits the queue admits events within (see [`Limits`]); every clone sees them.
    pub fn set_limits(&self, limits: Limits) {
        self.admission.set(limits);
    }

    /// The size limit of the whole queue (`queue.max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.admission.max_bytes.load(Ordering::Relaxed)
    }

    /// `stream`'s bytes in the queue and its share.
    pub fn share(&self, stream: &str) -> Share {
        Share {
            bytes: self.ledger.stream_bytes(stream_tag(stream)),
            limit: self.admission.share_limit.load(Ordering::Relaxed),
        }
    }

    /// Why `stream` must not queue more events now, if it must not: the whole queue is at its limit, the
    /// stream has its share, or the disk is almost full.
    pub fn no_room(&self, stream: &str) -> Option<String> {
        if self.depth().bytes >= self.max_bytes() {
            return Some("queue is full (queue.max_bytes)".to_string());
        }
        let share = self.share(stream);
        if share.bytes >= share.limit {
            return Some(
                "this stream has its equal share of the queue (queue.max_bytes / streams)"
                    .to_string(),
            );
        }
        let min_free_disk = self.admission.min_free_disk.load(Ordering::Relaxed);
        if min_free_disk > 0 {
            if let Some(free) = self.disk_free_bytes() {
                if free < min_free_disk {
                    return Some(format!(
                        "the disk of {} is almost full ({} free, queue.min_free_disk is {})",
                        self.dir().display(),
                        bytesize::ByteSize(free),
                        bytesize::ByteSize(min_free_disk)
                    ));
                }
            }
        }
        None
    }

    /// About how many more raw bytes of `stream`'s events fit: the room left in the queue, in the stream's
    /// share and (a third of what is free above `min_free_disk`: sled needs two to three times the raw
    /// bytes on disk) on the disk. `u64::MAX` when nothing limits it.
    pub fn room_bytes(&self, stream: &str) -> u64 {
        let min_free_disk = self.admission.min_free_disk.load(Ordering::Relaxed);
        let disk_room = match self.disk_free_bytes() {
            Some(free) if min_free_disk > 0 => free.saturating_sub(min_free_disk) / 3,
            _ => u64::MAX,
        };
        let share = self.share(stream);
        self.max_bytes()
            .saturating_sub(self.depth().bytes)
            .min(share.limit.saturating_sub(share.bytes))
            .min(disk_room)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::event::{event_key, Cursor, IncomingEvent, QueuedEvent};

    /// An event of exactly 100 raw bytes.
    fn event(id: &str, ts: i64) -> IncomingEvent {
        let head = format!("{{\"id\":\"{id}\",\"pad\":\"");
        let raw = format!("{head}{}\"}}", "x".repeat(100 - head.len() - 2));
        assert_eq!(raw.len(), 100);
        IncomingEvent {
            key: event_key(Some(id), &raw),
            raw: raw.into(),
            timestamp_ns: ts,
        }
    }

    fn page(stream: &str, from: usize, n: usize) -> Vec<IncomingEvent> {
        (from..from + n)
            .map(|i| event(&format!("{stream}{i}"), i as i64))
            .collect()
    }

    fn cursor() -> Cursor {
        Cursor {
            watermark_ns: 1,
            updated_at_ms: 1,
        }
    }

    fn read_all(q: &Queue, stream: &str) -> Vec<QueuedEvent> {
        let (batch, _) = q
            .read_stream_batch(stream_tag(stream), None, usize::MAX, usize::MAX, usize::MAX)
            .unwrap();
        batch
    }

    const SHARE_FULL: &str =
        "this stream has its equal share of the queue (queue.max_bytes / streams)";

    #[test]
    fn a_queue_opened_without_limits_admits_everything() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.commit_page("a", &page("a", 0, 50), None).unwrap();
        assert_eq!(q.no_room("a"), None);
        assert_eq!(q.room_bytes("a"), u64::MAX - 5000);
        assert_eq!(
            q.share("a"),
            Share {
                bytes: 5000,
                limit: u64::MAX
            }
        );
    }

    #[test]
    fn backfills_count_toward_the_share_like_polls() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.set_limits(Limits {
            max_bytes: 2000,
            min_free_disk: 0,
            streams: 2,
        });
        // A poll's page (with its cursor) and a backfill's (without): 600 + 400 bytes of a's share of 1000.
        q.commit_page("a", &page("a", 0, 6), Some(cursor()))
            .unwrap();
        assert_eq!(q.no_room("a"), None);
        assert_eq!(q.room_bytes("a"), 400);
        q.commit_page("a", &page("a", 6, 4), None).unwrap();
        assert_eq!(q.share("a").bytes, 1000);
        assert_eq!(q.no_room("a").as_deref(), Some(SHARE_FULL));
        assert_eq!(q.room_bytes("a"), 0);
        // The other stream still has its share, and the queue room that is left.
        assert_eq!(q.no_room("b"), None);
        assert_eq!(q.room_bytes("b"), 1000);
        // Duplicates add nothing.
        q.commit_page("a", &page("a", 0, 10), None).unwrap();
        assert_eq!(q.share("a").bytes, 1000);
        // Acks give the room back.
        let seqs: Vec<u64> = read_all(&q, "a")[..3].iter().map(|e| e.seq).collect();
        q.ack(&seqs).unwrap();
        q.ack(&seqs).unwrap();
        assert_eq!(q.share("a").bytes, 700);
        assert_eq!(q.no_room("a"), None);
        // And the count is the same after a restart.
        drop(q);
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.share("a").bytes, 700);
    }

    #[test]
    fn dead_lettering_frees_the_share_and_a_retry_takes_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.set_limits(Limits {
            max_bytes: 1000,
            min_free_disk: 0,
            streams: 2,
        });
        q.commit_page("a", &page("a", 0, 5), None).unwrap();
        assert_eq!(q.no_room("a").as_deref(), Some(SHARE_FULL));
        for event in read_all(&q, "a") {
            q.dead_letter(&event, "refused").unwrap();
        }
        assert_eq!(q.share("a").bytes, 0);
        assert_eq!(q.no_room("a"), None);
        assert_eq!(q.retry_dead_letters().unwrap(), 5);
        assert_eq!(q.share("a").bytes, 500);
        assert_eq!(q.no_room("a").as_deref(), Some(SHARE_FULL));
        assert_eq!(q.share("b").bytes, 0);
    }

    #[test]
    fn a_full_queue_and_an_almost_full_disk_pause_every_stream() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.set_limits(Limits {
            max_bytes: 500,
            min_free_disk: 0,
            streams: 1,
        });
        q.commit_page("a", &page("a", 0, 5), None).unwrap();
        assert_eq!(
            q.no_room("b").as_deref(),
            Some("queue is full (queue.max_bytes)")
        );
        assert_eq!(q.room_bytes("b"), 0);
        q.set_limits(Limits {
            max_bytes: 10_000,
            min_free_disk: u64::MAX,
            streams: 1,
        });
        if q.disk_free_bytes().is_some() {
            let why = q.no_room("a").unwrap();
            assert!(why.starts_with("the disk of "), "{why}");
            assert!(why.contains(" is almost full ("), "{why}");
            assert!(why.contains("free, queue.min_free_disk is "), "{why}");
            assert_eq!(q.room_bytes("a"), 0);
        }
    }

    /// Random commits (with and without a cursor, with duplicates), acks, dead letters, retries, purges
    /// and reopens of three streams: each stream's share always equals what a model of the queue holds,
    /// and what the persisted counters say.
    #[test]
    fn the_shares_follow_every_path_that_writes_or_removes_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        let streams = ["a", "b", "c"];
        let mut q = Queue::open(dir.path()).unwrap();
        // The model, per stream: the ids ever queued (the dedup index never forgets here), those in the
        // queue, and those dead-lettered.
        let mut seen: Vec<HashSet<String>> = vec![HashSet::new(); 3];
        let mut queued: Vec<HashSet<String>> = vec![HashSet::new(); 3];
        let mut dead: Vec<HashSet<String>> = vec![HashSet::new(); 3];
        let id_of = |raw: &str| raw[7..raw.find("\",").unwrap()].to_string();
        for step in 0..300 {
            let s = rng.usize(..3);
            let stream = streams[s];
            match rng.u8(..10) {
                0..=3 => {
                    let page = page(stream, rng.usize(..200), rng.usize(1..30));
                    let cursor = rng.bool().then(cursor);
                    q.commit_page(stream, &page, cursor).unwrap();
                    for e in &page {
                        let id = id_of(std::str::from_utf8(&e.raw).unwrap());
                        if seen[s].insert(id.clone()) {
                            queued[s].insert(id);
                        }
                    }
                }
                4..=5 => {
                    let events = read_all(&q, stream);
                    let some: Vec<&QueuedEvent> = events.iter().filter(|_| rng.bool()).collect();
                    let seqs: Vec<u64> = some.iter().map(|e| e.seq).collect();
                    q.ack(&seqs).unwrap();
                    for e in some {
                        queued[s].remove(&id_of(&e.raw));
                    }
                }
                6 => {
                    if let Some(e) = read_all(&q, stream).first() {
                        q.dead_letter(e, "refused").unwrap();
                        queued[s].remove(&id_of(&e.raw));
                        dead[s].insert(id_of(&e.raw));
                    }
                }
                7 => {
                    q.retry_dead_letters().unwrap();
                    for (queued, dead) in queued.iter_mut().zip(&mut dead) {
                        queued.extend(dead.drain());
                    }
                }
                8 => {
                    q.purge_dead_letters().unwrap();
                    dead.iter_mut().for_each(|dead| dead.clear());
                }
                _ => {
                    drop(q);
                    q = Queue::open(dir.path()).unwrap();
                }
            }
            let persisted = q.bytes_by_stream().unwrap();
            for (s, stream) in streams.iter().enumerate() {
                let expected = queued[s].len() as u64 * 100;
                assert_eq!(q.share(stream).bytes, expected, "step {step}, {stream}");
                let on_disk = persisted.get(&stream_tag(stream)).copied().unwrap_or(0);
                assert_eq!(on_disk, expected, "step {step}, {stream} on disk");
            }
        }
    }
}

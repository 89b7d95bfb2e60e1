//! Tests of the queue as a whole, through its public methods (and a look at its trees where the layout
//! is the point): commits and dedup, reads, acks, dead letters, reopening, formats of earlier versions.

use std::collections::HashSet;
use std::path::Path;

use super::dedup::ordered_time;
use super::ledger::KEY_SEQ;
use super::open::{existing_segment_size, NEW_QUEUE_SEGMENT_SIZE};
use super::record::{Envelope, CHUNK_MAX_EVENTS, SINGLE_EVENT_VERSION};
use super::*;
use crate::event::{event_key, stream_tag, Cursor, IncomingEvent};

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
        assert_eq!(batch[0].raw.as_bytes(), &page[0].raw);
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
    assert_eq!(all.last().unwrap().raw.as_bytes(), &event("e4", 4).raw);
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
    assert_eq!((batch[0].seq, &*batch[0].raw), (7, raw));
    assert_eq!(batch[0].queued_at_ms, 9);
    assert_eq!(batch[1].seq, 8);
    assert_eq!(q.oldest_queued_at_ms().unwrap(), Some(9));
    q.ack(&[7]).unwrap();
    assert_eq!(q.read_batch(None, 10, 1 << 20).unwrap()[0].seq, 8);
}

/// sled locks a queue per process, so the second open runs in a child process: this same test, run again
/// by the test binary with the folder in `JCDI_TEST_QUEUE_DIR`, which only opens and prints what it got.
#[test]
fn a_second_open_is_refused_clearly() {
    const CHILD_DIR: &str = "JCDI_TEST_QUEUE_DIR";
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        match Queue::open(Path::new(&dir)) {
            Ok(_) => println!("opened"),
            Err(err) => println!("{err}"),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _first = Queue::open(dir.path()).unwrap();
    let second = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "queue::tests::a_second_open_is_refused_clearly",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(out.contains("is in use by another process"), "{out}");
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
fn replaying_the_log_leaves_the_queue_as_it_was_with_a_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    Queue::replay_log(dir.path());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is created where there is no queue"
    );
    {
        let q = Queue::open(dir.path()).unwrap();
        q.commit_page("s", &[event("a", 1), event("b", 2)], Some(cursor(3)))
            .unwrap();
        q.db.flush().unwrap();
    }
    let snapshots = || -> HashSet<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
            .filter(|name| name.starts_with("snap."))
            .collect()
    };
    let before = snapshots();
    // sled lets go of its lock a moment after the queue is dropped; until then replay_log does nothing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while snapshots() == before && std::time::Instant::now() < deadline {
        Queue::replay_log(dir.path());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_ne!(
        snapshots(),
        before,
        "the log was replayed into a new snapshot"
    );
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.read_batch(None, 10, 1 << 20).unwrap().len(), 2);
    assert_eq!(q.cursor("s").unwrap(), Some(cursor(3)));
    // While the queue is open (here, or in another agent): nothing happens, at once.
    Queue::replay_log(dir.path());
    assert_eq!(q.read_batch(None, 10, 1 << 20).unwrap().len(), 2);
    q.commit_page("s", &[event("c", 4)], Some(cursor(5)))
        .unwrap();
    assert_eq!(q.depth().events, 3);
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
    let mut page: Vec<IncomingEvent> = (0..n).map(|i| event(&format!("e{i}"), i as i64)).collect();
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
    let ids: Vec<&[u8]> = batch.iter().map(|e| &e.raw.as_bytes()[..]).collect();
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
    assert_eq!(all_a.last().unwrap().raw.as_bytes(), &page_a[0].raw);
    assert_eq!(all_b.last().unwrap().raw.as_bytes(), &page_b[10].raw);
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

mod reading_batches {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Reading batch after batch from the head gives every event not acknowledged, once, in order and
        /// with its text as queued, whatever the limits and wherever a batch ends within a chunk.
        #[test]
        fn batches_give_every_unacknowledged_event_once_in_order(
            sizes in prop::collection::vec(0usize..600, 1..150),
            acked in prop::collection::vec(any::<bool>(), 150),
            max_events in 1usize..80,
            max_bytes in 1usize..6000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let q = Queue::open(dir.path()).unwrap();
            let page: Vec<IncomingEvent> = sizes
                .iter()
                .enumerate()
                .map(|(i, size)| {
                    let id = format!("e{i}");
                    let raw = format!("{{\"id\":\"{id}\",\"pad\":\"{}é\"}}", "x".repeat(*size));
                    IncomingEvent {
                        key: event_key(Some(&id), &raw),
                        raw: raw.into(),
                        timestamp_ns: i as i64,
                    }
                })
                .collect();
            q.commit_page("s", &page, Some(cursor(1_000))).unwrap();
            let all = q.read_batch(None, usize::MAX, usize::MAX).unwrap();
            prop_assert_eq!(all.len(), page.len());
            let gone: Vec<u64> = all
                .iter()
                .zip(&acked)
                .filter(|(_, a)| **a)
                .map(|(e, _)| e.seq)
                .collect();
            q.ack(&gone).unwrap();
            let expected: Vec<(u64, &[u8])> = all
                .iter()
                .zip(&page)
                .filter(|(e, _)| !gone.contains(&e.seq))
                .map(|(e, p)| (e.seq, &p.raw[..]))
                .collect();

            let mut read: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut after = None;
            loop {
                let batch = q.read_batch(after, max_events, max_bytes).unwrap();
                let Some(last) = batch.last() else { break };
                prop_assert!(batch.len() <= max_events);
                let bytes: usize = batch.iter().map(|e| e.raw.len()).sum();
                prop_assert!(batch.len() == 1 || bytes <= max_bytes, "{} bytes in {} events", bytes, batch.len());
                after = Some(last.seq);
                read.extend(batch.iter().map(|e| (e.seq, e.raw.as_bytes().to_vec())));
            }
            let read: Vec<(u64, &[u8])> = read.iter().map(|(s, r)| (*s, &r[..])).collect();
            prop_assert_eq!(read, expected);
        }
    }
}

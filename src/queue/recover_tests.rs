//! Tests of the delivery checkpoint and of recovery, through the queue's public methods: what the
//! checkpoint file says as events come and go, and what opening a damaged or lost queue gives back.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::clock::now_ns;
use crate::event::{event_key, stream_tag, Cursor, IncomingEvent};

const HOUR: i64 = 3_600_000_000_000;

fn event(id: &str, ts: i64) -> IncomingEvent {
    let raw = format!(
        "{{\"id\":\"{id}\",\"timestamp\":\"x\",\"pad\":\"{}\"}}",
        "p".repeat(200)
    );
    IncomingEvent {
        key: event_key(Some(id), &raw),
        raw: raw.into(),
        timestamp_ns: ts,
    }
}

fn cursor(ns: i64) -> Option<Cursor> {
    Some(Cursor {
        watermark_ns: ns,
        updated_at_ms: 1,
    })
}

fn restore_of(dir: &Path, stream: &str) -> Option<i64> {
    CheckpointFile::read(dir)
        .expect("readable")
        .and_then(|file| file.streams.get(stream).map(|s| s.restore_cursor_ns))
}

fn policy() -> RecoveryPolicy {
    RecoveryPolicy {
        retention: vec![("s".to_string(), Duration::from_secs(90 * 86_400))],
        min_free_disk: 0,
    }
}

/// A queue holding 2,000 events of stream "s" two hours old, none forwarded, cursor at `now - 1h`, and
/// its checkpoint written; dropped. Returns the events' oldest timestamp.
fn queue_with_backlog(dir: &Path) -> i64 {
    let q = Queue::open(dir).expect("open");
    let oldest = now_ns() - 2 * HOUR;
    for page in 0..2 {
        let events: Vec<IncomingEvent> = (0..1000)
            .map(|i| event(&format!("{page}-{i}"), oldest + (page * 1000 + i) as i64))
            .collect();
        q.commit_page("s", &events, cursor(now_ns() - HOUR))
            .expect("commit");
    }
    q.write_checkpoint().expect("checkpoint");
    q.db.flush().expect("flush");
    oldest
}

#[test]
fn the_checkpoint_follows_the_oldest_event_not_yet_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(dir.path()).expect("open");
    q.commit_page("s", &[event("a", 100), event("b", 200)], cursor(1_000))
        .expect("commit");
    assert_eq!(
        restore_of(dir.path(), "s"),
        Some(100),
        "written before the first events were committed"
    );
    q.write_checkpoint().expect("write");
    assert_eq!(restore_of(dir.path(), "s"), Some(100));
    let batch = q
        .read_stream_batch(stream_tag("s"), None, 10, 1 << 20, 100)
        .expect("read")
        .0;
    q.ack(&[batch[0].seq, batch[1].seq]).expect("ack");
    assert!(q.write_checkpoint().expect("write"), "it moved");
    assert_eq!(
        restore_of(dir.path(), "s"),
        Some(1_000),
        "nothing queued: the cursor"
    );
    assert!(
        !q.write_checkpoint().expect("write"),
        "nothing moved: not written again"
    );
}

#[test]
fn events_older_than_the_checkpoint_are_in_it_before_they_are_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Queue::open(dir.path()).expect("open");
    q.commit_page("s", &[event("a", 5_000)], cursor(10_000))
        .expect("commit");
    let first = q
        .read_stream_batch(stream_tag("s"), None, 10, 1 << 20, 100)
        .expect("read")
        .0;
    q.ack(&[first[0].seq]).expect("ack");
    q.write_checkpoint().expect("write");
    assert_eq!(restore_of(dir.path(), "s"), Some(10_000));
    // A late event (or a backfill) older than the file's restore point: the file says so at once, with no
    // periodic write in between.
    q.commit_page("s", &[event("late", 7_000)], None)
        .expect("commit");
    assert_eq!(restore_of(dir.path(), "s"), Some(7_000));
    // Dead letters put back are covered too.
    let late = q
        .read_stream_batch(stream_tag("s"), None, 10, 1 << 20, 100)
        .expect("read")
        .0;
    q.dead_letter(&late[0], "too big").expect("dead letter");
    q.write_checkpoint().expect("write");
    assert_eq!(restore_of(dir.path(), "s"), Some(10_000));
    assert_eq!(q.retry_dead_letters().expect("retry"), 1);
    assert_eq!(restore_of(dir.path(), "s"), Some(7_000));
}

#[test]
fn a_queue_from_before_checkpoints_gets_one_from_its_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oldest = queue_with_backlog(dir.path());
    std::fs::remove_file(dir.path().join(checkpoint::FILE_NAME)).expect("remove");
    std::thread::sleep(Duration::from_millis(200));
    let q = Queue::open(dir.path()).expect("reopen");
    assert!(q.write_checkpoint().expect("write"));
    assert_eq!(restore_of(dir.path(), "s"), Some(oldest));
}

#[test]
fn a_deleted_database_gets_the_checkpoints_cursors_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oldest = queue_with_backlog(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(dir.path().join("db")).expect("remove db");
    let opened = Queue::open_or_recover(dir.path(), &policy()).expect("open");
    let recovery = opened.recovery.expect("a recovery");
    assert!(recovery.reason.contains("missing"), "{}", recovery.reason);
    assert_eq!(
        opened
            .queue
            .cursor("s")
            .expect("cursor")
            .map(|c| c.watermark_ns),
        Some(oldest),
        "collection starts again at the oldest event not delivered"
    );
    assert_eq!(opened.queue.checkpoint_file().recoveries_total, 1);
    drop(opened.queue);
    std::thread::sleep(Duration::from_millis(200));
    // Opened again: nothing is lost any more, so nothing is recovered twice.
    let again = Queue::open_or_recover(dir.path(), &policy()).expect("open");
    assert!(again.recovery.is_none());
    assert_eq!(again.queue.checkpoint_file().recoveries_total, 1);
}

#[test]
fn a_damaged_database_is_set_aside_and_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oldest = queue_with_backlog(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    // The first block of the log overwritten: sled 0.34 either panics or finds nothing (both seen).
    let mut db = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("db"))
        .expect("db");
    db.seek(SeekFrom::Start(0)).expect("seek");
    db.write_all(&[0xA5; 4096]).expect("write");
    drop(db);
    let opened = Queue::open_or_recover(dir.path(), &policy()).expect("open");
    let recovery = opened.recovery.expect("a recovery");
    assert_eq!(
        opened
            .queue
            .cursor("s")
            .expect("cursor")
            .map(|c| c.watermark_ns),
        Some(oldest)
    );
    if !recovery.moved_to.is_empty() {
        assert!(
            Path::new(&recovery.moved_to).join("db").exists(),
            "the damaged copy is kept"
        );
    }
    assert_eq!(recovery.collect_again_from.len(), 1);
}

#[test]
fn a_damaged_database_without_a_checkpoint_starts_afresh_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db"), vec![0xA5; 8192]).expect("garbage");
    std::fs::write(
        dir.path().join("conf"),
        b"segment_size: 1048576\nuse_compression: false\nversion: 0.34\nvQ\xff\xff",
    )
    .expect("conf");
    match Queue::open_or_recover(dir.path(), &policy()) {
        Ok(opened) => {
            if let Some(recovery) = opened.recovery {
                assert!(recovery.collect_again_from.is_empty());
                assert!(opened.queue.cursor("s").expect("cursor").is_none());
            }
        }
        Err(err) => panic!("a damaged queue without a checkpoint must still open: {err}"),
    }
}

#[test]
fn recovery_never_goes_back_further_than_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oldest = queue_with_backlog(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(dir.path().join("db")).expect("remove db");
    let short = RecoveryPolicy {
        retention: vec![("s".to_string(), Duration::from_secs(3_600))],
        min_free_disk: 0,
    };
    let opened = Queue::open_or_recover(dir.path(), &short).expect("open");
    let restored = opened
        .queue
        .cursor("s")
        .expect("cursor")
        .expect("some")
        .watermark_ns;
    assert!(restored > oldest, "clamped to the retention");
    assert!(restored > now_ns() - 2 * HOUR);
}

#[test]
fn recovering_while_running_moves_the_damaged_files_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oldest = queue_with_backlog(dir.path());
    std::thread::sleep(Duration::from_millis(200));
    let opened =
        Queue::recover_damaged(dir.path(), "a record is damaged", &policy()).expect("recover");
    let recovery = opened.recovery.expect("a recovery");
    assert!(Path::new(&recovery.moved_to).join("db").exists());
    assert_eq!(opened.queue.depth().events, 0, "a fresh queue");
    assert_eq!(
        opened
            .queue
            .cursor("s")
            .expect("cursor")
            .map(|c| c.watermark_ns),
        Some(oldest)
    );
}

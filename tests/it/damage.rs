//! A damaged queue, through the real binary: with the intake down, events older than the next start's
//! `initial_lookback` are queued (so a fresh start would never find them again); the queue's files are then
//! damaged, at rest (the agent stopped) or under the running agent; the agent is started again with the
//! intake back. Every event must arrive; duplicates are counted, not forbidden.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use jcdi_forwarder::admin::ask_agent;
use jcdi_forwarder::standin::{ApiEvent, EventFactory};

use crate::support::*;

/// How the queue's files are damaged.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// `db` cut to half its length.
    Truncated,
    /// A few 4 KiB blocks of `db` overwritten with garbage, the first one included.
    BlocksOverwritten,
    /// The last 64 KiB of `db` zeroed.
    TailZeroed,
    /// `conf` deleted.
    ConfLost,
    /// Every snapshot file replaced by garbage (one made up when there is none).
    SnapshotGarbage,
    /// `db` deleted.
    DbDeleted,
}

impl Damage {
    fn apply(self, queue_dir: &Path) {
        let db = queue_dir.join("db");
        let len = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .expect("db opens")
        };
        match self {
            Damage::Truncated => open().set_len(len / 2).expect("truncated"),
            Damage::BlocksOverwritten => {
                let mut file = open();
                for at in [0, len / 3, 2 * len / 3] {
                    file.seek(SeekFrom::Start(at & !4095)).expect("seek");
                    file.write_all(&[0xA5; 4096]).expect("garbage written");
                }
            }
            Damage::TailZeroed => {
                let mut file = open();
                file.seek(SeekFrom::Start(len.saturating_sub(65_536)))
                    .expect("seek");
                file.write_all(&vec![0; 65_536.min(len as usize)])
                    .expect("zeroes written");
            }
            Damage::ConfLost => std::fs::remove_file(queue_dir.join("conf")).expect("conf removed"),
            Damage::SnapshotGarbage => {
                let mut snapshots: Vec<PathBuf> = std::fs::read_dir(queue_dir)
                    .expect("queue dir")
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("snap."))
                    })
                    .collect();
                if snapshots.is_empty() {
                    snapshots.push(queue_dir.join("snap.0000000000100000"));
                }
                for snapshot in snapshots {
                    std::fs::write(snapshot, vec![0x5A; 3000]).expect("garbage snapshot");
                }
            }
            Damage::DbDeleted => std::fs::remove_file(&db).expect("db removed"),
        }
    }
}

/// Events of the last 2 to 1 hours: inside the first start's lookback (3 h), outside the second's (10 min).
fn old_events(seed: u64) -> Vec<ApiEvent> {
    let now = now_ns();
    EventFactory::new(seed).mix(2_000, now - 2 * 3600 * SECOND, now - 3600 * SECOND)
}

async fn damaged_queue_loses_nothing(damage: Damage, under_the_running_agent: bool) {
    let h = Harness::new().await;
    let events = old_events(damage as u64 + 100 * u64::from(under_the_running_agent));
    h.api.add_events(events.clone());
    h.intake.set_outage(true);
    let queue_dir = h.dir.path().join("queue");
    let log = h.dir.path().join("agent.log");
    let first = h.write_config(&h.builder().batch_max_events(200));
    let mut agent = binary()
        .agent(&first, &log)
        .log_level("info")
        .spawn()
        .expect("the binary starts");
    let all_queued = poll_until_async(&h, events.len() as u64).await;
    assert!(all_queued, "the events are queued:\n{}", agent.log_tail(30));
    if under_the_running_agent {
        damage.apply(&queue_dir);
        // Let it run on the damaged files for a moment (it may find the damage itself), then kill it.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        agent.kill_9().expect("killed");
    } else {
        let stopped = agent.stop(Duration::from_secs(30)).await.expect("stops");
        assert!(stopped.success(), "{stopped:?}");
        damage.apply(&queue_dir);
    }

    // A start that would not find the events by itself: they are older than its lookback.
    h.intake.set_outage(false);
    let second = h.write_config(
        &h.builder()
            .batch_max_events(200)
            .initial_lookback(Duration::from_secs(600)),
    );
    let mut agent = binary()
        .agent(&second, &log)
        .log_level("info")
        .spawn()
        .expect("the binary starts again");
    let arrived = wait_until(LONG, || missing(&h.intake, &events).is_empty()).await;
    if !arrived {
        panic!(
            "{damage:?} ({}): {} events missing; log, newest first:\n{}",
            if under_the_running_agent {
                "running"
            } else {
                "at rest"
            },
            missing(&h.intake, &events).len(),
            agent.log_tail(40)
        );
    }
    assert!(
        agent.exited().is_none(),
        "the agent keeps running:\n{}",
        agent.log_tail(20)
    );
    let stopped = agent.stop(Duration::from_secs(30)).await.expect("stops");
    assert!(stopped.success(), "{stopped:?}");
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !log_text.contains("RUST_BACKTRACE"),
        "a panic is one log line, not the default hook's text:\n{log_text}"
    );
    let rebuilt = log_text.contains("was rebuilt");
    println!(
        "{damage:?} ({}): {} events, {} duplicates, queue rebuilt: {rebuilt}",
        if under_the_running_agent {
            "running"
        } else {
            "at rest"
        },
        events.len(),
        duplicates(&h.intake)
    );
}

/// Waits until the running agent has queued `expected` events.
async fn poll_until_async(h: &Harness, expected: u64) -> bool {
    let deadline = tokio::time::Instant::now() + LONG;
    while tokio::time::Instant::now() < deadline {
        if queued_events(h.admin).await == Some(expected) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

macro_rules! damage_tests {
    ($($name:ident: $damage:expr, $running:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            damaged_queue_loses_nothing($damage, $running).await;
        }
    )*};
}

damage_tests! {
    truncated_db_at_rest: Damage::Truncated, false;
    truncated_db_while_running: Damage::Truncated, true;
    overwritten_blocks_at_rest: Damage::BlocksOverwritten, false;
    overwritten_blocks_while_running: Damage::BlocksOverwritten, true;
    zeroed_tail_at_rest: Damage::TailZeroed, false;
    zeroed_tail_while_running: Damage::TailZeroed, true;
    lost_conf_at_rest: Damage::ConfLost, false;
    lost_conf_while_running: Damage::ConfLost, true;
    garbage_snapshot_at_rest: Damage::SnapshotGarbage, false;
    garbage_snapshot_while_running: Damage::SnapshotGarbage, true;
    deleted_db_at_rest: Damage::DbDeleted, false;
    deleted_db_while_running: Damage::DbDeleted, true;
}

/// After a rebuild, `status` and `/metrics` say so, and the damaged copy is where the log line says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_shows_in_status_and_metrics_and_keeps_the_damaged_copy() {
    let h = Harness::new().await;
    let events = old_events(7);
    h.api.add_events(events.clone());
    h.intake.set_outage(true);
    let queue_dir = h.dir.path().join("queue");
    let log = h.dir.path().join("agent.log");
    let config = h.write_config(&h.builder());
    let mut agent = binary().agent(&config, &log).spawn().expect("starts");
    assert!(poll_until_async(&h, events.len() as u64).await);
    agent.stop(Duration::from_secs(30)).await.expect("stops");
    Damage::BlocksOverwritten.apply(&queue_dir);
    h.intake.set_outage(false);
    let mut agent = binary().agent(&config, &log).spawn().expect("starts again");
    assert!(wait_until(LONG, || missing(&h.intake, &events).is_empty()).await);
    let status = binary()
        .command()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&status.stdout);
    let (_, metrics) = ask_agent(h.admin, Method::GET, "/metrics", None)
        .await
        .expect("asks")
        .expect("answers");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    agent.stop(Duration::from_secs(30)).await.expect("stops");
    let log_text = std::fs::read_to_string(&log).expect("log");
    let line = log_text
        .lines()
        .find(|l| l.contains("was rebuilt"))
        .unwrap_or_else(|| panic!("one line says the queue was rebuilt:\n{log_text}"));
    assert!(line.contains("collecting again"), "{line}");
    assert!(text.contains("queue recoveries: 1"), "{text}");
    assert!(
        metrics.contains("jcdi_forwarder_queue_recoveries_total 1"),
        "{metrics}"
    );
    // The copy named in the line exists (when there was anything left to keep).
    if let Some(at) = line.find("kept in ") {
        let copy = line[at + "kept in ".len()..]
            .split_whitespace()
            .next()
            .expect("a path")
            .trim_end_matches(['"', '.']);
        assert!(Path::new(copy).is_dir(), "{copy} in: {line}");
    }
}

//! Power cuts, through the real binary: the queue lives on powercut-fs (tools/powercut-fs), a FUSE
//! filesystem that forgets every write not made durable with `fsync` (and may tear the last one) when the
//! power is cut. The agent runs against the stand-ins; the power is cut at random moments (while it polls,
//! while it forwards, while it starts and perhaps rebuilds its queue), the agent killed with it, the
//! filesystem mounted again and the agent started again. Every event must arrive; duplicates are counted.
//!
//! The events are older than the `initial_lookback` of every start after the first: what the queue lost,
//! only its delivery checkpoint can find again.

use std::path::Path;
use std::time::Duration;

use jcdi_forwarder::standin::{EventFactory, IntakeFault};
use powercut_fs::{MetadataDurability, Mounted, Options, PowerCutFs, Tear};

use crate::support::*;

fn mount(backing: &Path, mountpoint: &Path, metadata: MetadataDurability) -> Mounted {
    PowerCutFs::mount(
        backing,
        mountpoint,
        Options {
            metadata,
            ..Options::default()
        },
    )
    .expect("powercut-fs mounts (root and /dev/fuse are needed)")
}

async fn power_cuts_lose_nothing(metadata: MetadataDurability, seed: u64) {
    println!("random seed: {seed} ({metadata:?})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(seed).mix(6_000, now - 2 * 3600 * SECOND, now - 3600 * SECOND);
    h.api.add_events(events.clone());
    let backing = h.dir.path().join("disk");
    let mountpoint = h.dir.path().join("mnt");
    std::fs::create_dir_all(&backing).expect("backing");
    std::fs::create_dir_all(&mountpoint).expect("mountpoint");
    let log = h.dir.path().join("agent.log");
    let queue_dir = mountpoint.join("queue");
    let builder = h
        .builder()
        .data_dir(&queue_dir)
        .page_size(250)
        .batch_max_events(100);

    // First start: everything is queued (the intake is down), then the power goes.
    let mut disk = mount(&backing, &mountpoint, metadata);
    h.intake.set_outage(true);
    let first = h.write_config(&builder);
    let mut agent = binary().agent(&first, &log).spawn().expect("starts");
    let deadline = tokio::time::Instant::now() + LONG;
    while queued_events(h.admin).await != Some(events.len() as u64) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events are queued:\n{}",
            agent.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(rng.u64(0..1_500))).await;
    disk.cut_power_with(Tear::RandomPrefix).expect("power cut");
    let _ = agent.kill_9();
    drop(disk);

    // Then starts that would not find the events by themselves, cut at random moments; the intake goes up
    // and down (slow at times, so that a cut lands in the middle of a send).
    // Any free port at each start: a port free once may be taken between two starts.
    let later = h.write_config(
        &builder
            .initial_lookback(Duration::from_secs(600))
            .set("api.listen", "127.0.0.1:0"),
    );
    let mut cuts = 1;
    for round in 0..6 {
        h.intake.set_outage(round % 3 == 0);
        if round % 3 != 0 {
            for _ in 0..20 {
                h.intake
                    .push_fault(IntakeFault::Delay(Duration::from_millis(60)));
            }
        }
        disk = mount(&backing, &mountpoint, metadata);
        let mut agent = binary().agent(&later, &log).spawn().expect("starts");
        tokio::time::sleep(Duration::from_millis(rng.u64(50..2_500))).await;
        let tear = if rng.bool() {
            Tear::RandomPrefix
        } else {
            Tear::None
        };
        let report = disk.cut_power_with(tear).expect("power cut");
        let _ = agent.kill_9();
        drop(disk);
        cuts += 1;
        println!(
            "round {round}: {} of {} events arrived; {report:?}",
            events.len() - missing(&h.intake, &events).len(),
            events.len()
        );
    }

    // The power stays on.
    h.intake.set_outage(false);
    let _disk = mount(&backing, &mountpoint, metadata);
    let starts = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("agent started")
            .count()
    };
    let started_before = starts(&log);
    let mut agent = binary().agent(&later, &log).spawn().expect("starts");
    // Up (its signal handler installed) before it is asked to stop.
    assert!(
        wait_until(LONG, || starts(&log) > started_before).await,
        "the agent starts:\n{}",
        agent.log_tail(30)
    );
    let arrived = wait_until(Duration::from_secs(120), || {
        missing(&h.intake, &events).is_empty()
    })
    .await;
    if !arrived {
        panic!(
            "{} of {} events missing after {cuts} power cuts; log, newest first:\n{}",
            missing(&h.intake, &events).len(),
            events.len(),
            agent.log_tail(60)
        );
    }
    let stopped = agent.stop(Duration::from_secs(30)).await.expect("stops");
    assert!(stopped.success(), "{stopped:?}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "{metadata:?}: {} events, {} duplicates after {cuts} power cuts, {} queue rebuilds",
        events.len(),
        duplicates(&h.intake),
        log_text.matches("was rebuilt").count()
    );
}

fn seed() -> u64 {
    std::env::var("JCDI_POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// Names and renames durable at once, data only at `fsync` (roughly ext4 with `data=ordered`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse (CI runs it as root)"]
async fn power_cuts_lose_nothing_when_names_are_durable_at_once() {
    power_cuts_lose_nothing(MetadataDurability::Immediate, seed()).await;
}

/// Names and renames durable only once their folder is synced too (the strictest POSIX reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse (CI runs it as root)"]
async fn power_cuts_lose_nothing_when_names_need_a_folder_sync() {
    power_cuts_lose_nothing(MetadataDurability::OnDirSync, seed()).await;
}

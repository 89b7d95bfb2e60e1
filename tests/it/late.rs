//! The late check against the stand-ins: events JumpCloud indexes late are collected when they are late by
//! at most `overlap`, at several delays and in awkward places (one millisecond shared by many events, on
//! both sides of a slice boundary); a slice that grew by one costs one re-read of that slice; an API
//! refusing the histogram makes every poll re-read the window as before, said once in the log; `status`
//! shows what collecting costs.

use std::io::Write;
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use jcdi_forwarder::metrics::Reading;
use jcdi_forwarder::standin::{ApiEvent, ApiOptions, EventFactory, IntakeOptions};

const MS: i64 = 1_000_000;

fn at_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns as u64)
}

/// `event`, indexed `delay_ns` after its timestamp.
fn indexed_after(mut event: ApiEvent, delay_ns: i64) -> ApiEvent {
    event.visible_at = Some(at_ns(event.timestamp_ns + delay_ns));
    event
}

async fn harness_with(api: ApiOptions) -> Harness {
    Harness::with(api, IntakeOptions::default()).await
}

fn reading(agent: &InProcessAgent) -> Reading {
    agent.metrics.stream_reading("default")
}

/// Waits for `polls` more completed polls.
async fn more_polls(agent: &InProcessAgent, polls: u64) {
    let from = agent.metrics.snapshot().polls_completed;
    assert!(
        wait_until(LONG, || agent.metrics.snapshot().polls_completed
            >= from + polls)
        .await,
        "the agent keeps polling"
    );
}

/// What the agent logged, for the tests that look at a message (the agent runs in this process).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

fn lines_logged_with(needle: &str) -> usize {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_indexed_late_by_up_to_the_overlap_are_collected() {
    let h = Harness::new().await;
    let mut factory = EventFactory::new(31);
    let now = now_ns();
    let history = factory.mix(300, now - 300 * SECOND, now - 2 * SECOND);
    h.api.add_events(history.clone());
    let config = h.config_with(|b| b.overlap(Duration::from_secs(10)));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &history, LONG)
        .await
        .expect("every event arrives");

    // Events of the next seconds, each service (timestamps to the second, millisecond and nanosecond),
    // indexed at once or late by up to the overlap (10 s), and some later than that.
    let t0 = now_ns();
    let mut within = Vec::new();
    let mut beyond = Vec::new();
    for (i, delay_ms) in [0, 300, 1_000, 2_500, 4_000, 6_000, 7_500, 9_000, 9_700]
        .iter()
        .cycle()
        .take(120)
        .enumerate()
    {
        let service = ["sso", "directory", "radius", "ldap", "systems", "mdm"][i % 6];
        let stamp = t0 + (i as i64) * 25 * MS;
        within.push(indexed_after(factory.event(service, stamp), delay_ms * MS));
    }
    for (i, delay_s) in [12, 15].iter().cycle().take(10).enumerate() {
        let stamp = t0 + (i as i64) * 200 * MS;
        beyond.push(indexed_after(factory.event("sso", stamp), delay_s * SECOND));
    }
    h.api.add_events(within.iter().chain(&beyond).cloned());
    wait_all_arrived(&h.intake, &within, LONG)
        .await
        .expect("every event arrives");
    // Until the latest event was visible for a few polls: whatever comes of the ones beyond the overlap
    // (not guaranteed), nothing is sent twice.
    let latest = beyond
        .iter()
        .filter_map(|e| e.visible_at)
        .max()
        .expect("late events");
    assert!(wait_until(LONG, || SystemTime::now() > latest).await);
    more_polls(&agent, 3).await;
    let reading = reading(&agent);
    agent.stop().await.expect("the agent stops");

    assert_eq!(duplicates(&h.intake), 0);
    assert_eq!(reading.late_check_fallbacks, 0, "{reading:?}");
    assert!(reading.late > 0, "the late check found them: {reading:?}");
    assert!(h.api.interval_requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sharing_a_millisecond_on_both_sides_of_a_slice_boundary_are_collected() {
    let h = Harness::new().await;
    let mut factory = EventFactory::new(32);
    // A whole second 20 s ago: slices are 1 s wide (overlap 60 s), so it is a slice boundary.
    let boundary = (now_ns() / SECOND - 20) * SECOND;
    let background = factory.mix(100, boundary - 10 * SECOND, boundary + 10 * SECOND);
    // 160 events in the last millisecond before the boundary, 160 in the first one after it, and a few on
    // the boundary itself: nanosecond timestamps (sso), pages of 100, so pages end inside them.
    let mut crowd = Vec::new();
    for i in 0..160 {
        crowd.push(factory.event("sso", boundary - MS + i * 1_000 + 7));
        crowd.push(factory.event("sso", boundary + i * 1_000 + 3));
    }
    crowd.extend((0..5).map(|_| factory.event("sso", boundary)));
    // Half of them are indexed at once, half once the cursor has passed them.
    let (on_time, late): (Vec<_>, Vec<_>) =
        crowd.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let on_time: Vec<ApiEvent> = on_time.into_iter().map(|(_, e)| e).collect();
    let late: Vec<ApiEvent> = late.into_iter().map(|(_, e)| e).collect();
    h.api.add_events(background.iter().chain(&on_time).cloned());

    let config = h.config();
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    let first: Vec<_> = background.iter().chain(&on_time).cloned().collect();
    wait_all_arrived(&h.intake, &first, LONG)
        .await
        .expect("every event arrives");
    more_polls(&agent, 2).await;
    let before = reading(&agent);
    h.api.add_events(late.clone());
    wait_all_arrived(&h.intake, &late, LONG)
        .await
        .expect("every event arrives");
    more_polls(&agent, 2).await;
    let after = reading(&agent);
    agent.stop().await.expect("the agent stops");

    assert_eq!(duplicates(&h.intake), 0);
    assert_eq!(h.intake.received_count(), first.len() + late.len());
    assert_eq!(after.late - before.late, late.len() as u64, "{after:?}");
    assert_eq!(after.late_check_fallbacks, 0);
    // Only the two slices on either side of the boundary were read again, not the minute of overlap.
    let slices = background
        .iter()
        .chain(&on_time)
        .chain(&late)
        .filter(|e| (boundary - SECOND..boundary + SECOND).contains(&e.timestamp_ns))
        .count() as u64;
    assert!(
        after.read - before.read <= slices,
        "read {} events again for {} in the two slices",
        after.read - before.read,
        slices
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_that_grew_by_one_yields_its_missing_event_reading_the_slice_at_most_once() {
    let h = Harness::new().await;
    let mut factory = EventFactory::new(33);
    let now = now_ns();
    // A quiet second (10 events) and a busy one (400 events), both 25 s ago, and a few events around.
    let quiet = (now / SECOND - 26) * SECOND;
    let busy = quiet + SECOND;
    let mut events = factory.mix(50, now - 50 * SECOND, quiet - SECOND);
    events.extend((0..10).map(|i| factory.event("sso", quiet + i * 90 * MS + 11)));
    events.extend((0..400).map(|i| factory.event("sso", busy + i * 2 * MS + 7)));
    h.api.add_events(events.clone());
    let config = h.config_with(|b| b.overlap(Duration::from_secs(120)));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    // Steady state: polls that find nothing new read nothing.
    more_polls(&agent, 2).await;
    let served = h.api.events_served();
    more_polls(&agent, 2).await;
    assert_eq!(
        h.api.events_served(),
        served,
        "nothing late, nothing read again"
    );

    // One event of the quiet second indexed now, long after the cursor passed it: the slice is small, it
    // is read again whole, once.
    let (before, counts) = (reading(&agent), h.api.count_requests());
    let missing = factory.event("sso", quiet + 500 * MS + 123);
    h.api.add_events([missing.clone()]);
    wait_all_arrived(&h.intake, std::slice::from_ref(&missing), LONG)
        .await
        .expect("every event arrives");
    more_polls(&agent, 3).await;
    let after = reading(&agent);
    assert_eq!(after.queued - before.queued, 1);
    assert_eq!(after.late - before.late, 1);
    assert_eq!(after.read - before.read, 11, "the quiet slice, read once");
    assert_eq!(h.api.count_requests(), counts, "no need to count halves");

    // One more in the busy second: its halves are counted down to a few events, and only those are read.
    let before = after;
    let missing = factory.event("sso", busy + 301 * MS + 5);
    h.api.add_events([missing.clone()]);
    wait_all_arrived(&h.intake, std::slice::from_ref(&missing), LONG)
        .await
        .expect("every event arrives");
    more_polls(&agent, 3).await;
    let after = reading(&agent);
    // `status` shows the cost: events read per event queued.
    let status = jcdi_forwarder::admin::status(&queue, &config, Some(&agent.metrics));
    let shown = jcdi_forwarder::ops::render_status(&status, &config);
    let counted = h.api.count_requests() - counts;
    agent.stop().await.expect("the agent stops");

    assert_eq!(after.queued - before.queued, 1);
    assert_eq!(after.late - before.late, 1);
    let read = after.read - before.read;
    assert!(
        (1..=32).contains(&read),
        "read {read} events of the busy slice's 401 to find the one missing"
    );
    assert!(counted > 0 && counted <= 16, "{counted} counts");
    assert_eq!(duplicates(&h.intake), 0);
    assert!(shown.contains("read per event queued"), "{shown}");
    assert!(shown.contains("; 2 found indexed late"), "{shown}");
    assert_eq!(status.streams[0].reading, Some(after));
}

async fn refused_histogram_falls_back_to_reading_the_window_again(status: u16) {
    capture_logs();
    let h = harness_with(ApiOptions {
        refuse_aggregates: Some(status),
        ..ApiOptions::default()
    })
    .await;
    let mut factory = EventFactory::new(34 + u64::from(status));
    let now = now_ns();
    let history = factory.mix(100, now - 120 * SECOND, now - 2 * SECOND);
    h.api.add_events(history.clone());
    let config = h.config_with(|b| b.overlap(Duration::from_secs(10)));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &history, LONG)
        .await
        .expect("every event arrives");
    let t0 = now_ns();
    let late: Vec<_> = (0..20)
        .map(|i| indexed_after(factory.event("sso", t0 + i * 50 * MS), 4 * SECOND))
        .collect();
    h.api.add_events(late.clone());
    wait_all_arrived(&h.intake, &late, LONG)
        .await
        .expect("every event arrives");
    more_polls(&agent, 3).await;
    let metrics = agent.metrics.clone();
    agent.stop().await.expect("the agent stops");
    let reading = metrics.stream_reading("default");
    let polls = metrics.snapshot().polls_completed;

    assert_eq!(duplicates(&h.intake), 0);
    // Every poll but the first (no cursor yet) fell back (and maybe the one the stop interrupted); the
    // histogram was asked for once.
    assert!(
        (polls - 1..=polls).contains(&reading.late_check_fallbacks),
        "{polls} polls: {reading:?}"
    );
    assert_eq!(h.api.interval_requests(), 1);
    assert_eq!(reading.late, 0);
    assert_eq!(
        lines_logged_with(&format!("answered {status} to .../events/interval")),
        1,
        "said once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_without_the_histogram_is_read_as_before() {
    refused_histogram_falls_back_to_reading_the_window_again(404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_not_allowed_the_histogram_is_read_as_before() {
    refused_histogram_falls_back_to_reading_the_window_again(403).await;
}

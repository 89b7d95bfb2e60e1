//! The pipeline end to end, in-process, against the stand-ins: cursor guarantees, faults of both services,
//! dead letters and configuration errors.

use std::time::{Duration, SystemTime};

use crate::support::*;
use jcdi_forwarder::standin::{ApiFault, EventFactory, IntakeFault, IntakeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_bursts_and_raw_bytes_arrive_exactly_once() {
    let h = Harness::new().await;
    let now = now_ns();
    let mut factory = EventFactory::new(1);
    let mut events = factory.mix(1200, now - 2 * 3600 * SECOND, now - 120 * SECOND);
    // 450 events in one second, 150 of them in one millisecond: page boundaries fall inside both.
    let second = now - 3600 * SECOND;
    events.extend((0..300).map(|i| factory.event("directory", second + i * 3_000_000)));
    events.extend((0..150).map(|_| factory.event("sso", second + 999_000_000)));
    h.api.add_events(events.clone());
    assert!(
        events.iter().any(|e| e.raw.contains("\\u003c")),
        "the mix carries Go escapes"
    );
    assert!(
        events.iter().any(|e| !e.raw.contains("\"id\"")),
        "the mix carries events without id"
    );

    // Pages of 100 all along (no catch-up pages), so that page boundaries fall inside the bursts.
    let config = h.config_with(|b| b.set("jumpcloud.catch_up_page_size", 100));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    // Let a few more polls re-read the overlap window: nothing may be sent twice.
    let polls = agent.metrics.snapshot().polls_completed;
    assert!(
        wait_until(LONG, || agent.metrics.snapshot().polls_completed
            >= polls + 2)
        .await
    );
    agent.stop().await.expect("the agent stops cleanly");

    assert_eq!(
        duplicates(&h.intake),
        0,
        "a clean run sends every event once"
    );
    assert_eq!(h.intake.received_count(), events.len());
    assert!(h.api.requests() >= 17, "paged in pages of 100");
    assert_eq!(queue.depth().events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_second_events_split_across_polls_are_not_lost() {
    let h = Harness::new().await;
    let mut factory = EventFactory::new(2);
    let second = now_ns() - 20 * SECOND;
    let first_half: Vec<_> = (0..120)
        .map(|i| factory.event("radius", second + i))
        .collect();
    h.api.add_events(first_half.clone());
    let config = h.config();
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &first_half, LONG)
        .await
        .expect("every event arrives");
    // More events of that same second show up after the cursor passed it (the official connector, which
    // rounds its checkpoint up to the next second, loses exactly these).
    let second_half: Vec<_> = (0..80)
        .map(|i| factory.event("radius", second + 500 + i))
        .collect();
    h.api.add_events(second_half.clone());
    wait_all_arrived(&h.intake, &second_half, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(duplicates(&h.intake), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_indexed_and_future_events_arrive_and_the_cursor_stays_in_the_present() {
    let h = Harness::new().await;
    let now = now_ns();
    let mut factory = EventFactory::new(3);
    let on_time = factory.mix(50, now - 600 * SECOND, now - 60 * SECOND);
    // Stamped 40 s ago but indexed only 3 s from now: inside the 60 s overlap.
    let visible_at = SystemTime::now() + Duration::from_secs(3);
    let late: Vec<_> = (0..30)
        .map(|i| {
            let mut e = factory.event("sso", now - 40 * SECOND + i * 1_000);
            e.visible_at = Some(visible_at);
            e
        })
        .collect();
    // A device clock two days ahead.
    let future: Vec<_> = (0..5)
        .map(|i| factory.event("mdm", now + 2 * 86_400 * SECOND + i))
        .collect();
    h.api
        .add_events(on_time.iter().chain(&late).chain(&future).cloned());

    let config = h.config();
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    let everything: Vec<_> = on_time
        .iter()
        .chain(&late)
        .chain(&future)
        .cloned()
        .collect();
    wait_all_arrived(&h.intake, &everything, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");

    let cursor = queue
        .cursor("default")
        .expect("readable")
        .expect("committed");
    assert!(
        cursor.watermark_ns <= now_ns(),
        "future timestamps must not push the cursor ahead of the clock"
    );
    assert!(
        cursor.watermark_ns >= now - 60 * SECOND,
        "the cursor advanced"
    );
    assert_eq!(duplicates(&h.intake), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_are_retried_and_advance_nothing() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(4).mix(450, now - 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    for fault in [
        ApiFault::TornBody,
        ApiFault::Status {
            status: 429,
            body: "{\"message\":\"slow down\"}".into(),
            retry_after: Some(1),
        },
        ApiFault::FullPageWithoutCursor,
        ApiFault::Status {
            status: 503,
            body: "{\"message\":\"unavailable\"}".into(),
            retry_after: None,
        },
        ApiFault::CloseConnection,
        ApiFault::Status {
            status: 500,
            body: "oops".into(),
            retry_after: None,
        },
    ] {
        h.api.push_fault(fault);
    }
    let config = h.config();
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, Duration::from_secs(120))
        .await
        .expect("every event arrives");
    let m = agent.metrics.snapshot();
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(m.api_requests_failed, 6, "each fault was seen once: {m:?}");
    assert_eq!(h.api.pending_faults(), 0);
    assert_eq!(duplicates(&h.intake), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_faults_and_an_outage_lose_nothing() {
    // A body limit of 60 KB makes the intake answer 413 to full batches: they must be split.
    let h = Harness::with_intake(IntakeOptions {
        max_body_bytes: 60 * 1024,
        ..IntakeOptions::default()
    })
    .await;
    let now = now_ns();
    let events = EventFactory::new(5).mix(600, now - 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    for fault in [
        IntakeFault::Status {
            status: 429,
            retry_after: Some(1),
        },
        IntakeFault::Status {
            status: 502,
            retry_after: None,
        },
        IntakeFault::CloseConnection,
        IntakeFault::Status {
            status: 422,
            retry_after: None,
        },
    ] {
        h.intake.push_fault(fault);
    }
    let config = h.config_with(|b| {
        b.batch_max_events(200)
            .set("sekoia.batch_max_bytes", "1MiB")
    });
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    // An outage once some events went through.
    assert!(wait_until(LONG, || h.intake.received_count() > 0).await);
    h.intake.set_outage(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.intake.set_outage(false);
    wait_all_arrived(&h.intake, &events, Duration::from_secs(120))
        .await
        .expect("every event arrives");
    let m = agent.metrics.snapshot();
    agent.stop().await.expect("the agent stops cleanly");
    assert!(m.intake_requests_failed >= 5, "{m:?}");
    assert_eq!(m.events_dead_lettered, 0);
    assert_eq!(queue.depth().events, 0);
    assert_eq!(
        duplicates(&h.intake),
        0,
        "every failure was refused whole, so nothing was sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_event_is_dead_lettered_and_the_rest_flows() {
    let h = Harness::new().await;
    let now = now_ns();
    let mut factory = EventFactory::new(6);
    let mut events = factory.mix(100, now - 3600 * SECOND, now - 1800 * SECOND);
    let big = factory.big_event(now - 1700 * SECOND, 300 * 1024);
    events.extend(factory.mix(100, now - 1600 * SECOND, now - 60 * SECOND));
    let mut all = events.clone();
    all.push(big.clone());
    h.api.add_events(all);
    let config = h.config();
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    assert!(wait_until(LONG, || agent.metrics.snapshot().events_dead_lettered == 1).await);
    agent.stop().await.expect("the agent stops cleanly");
    let letters = queue.dead_letters().expect("readable");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].raw, big.raw, "kept byte for byte");
    assert!(
        letters[0].reason.contains("over the intake's limit"),
        "{}",
        letters[0].reason
    );
    assert!(!h.intake.received().contains(&big.raw), "never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_api_key_is_reported_and_queued_events_still_flow() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(7).mix(150, now - 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    let config = h.config();
    let queue = h.open_queue(&config).await;
    // Collect while the intake is down, then revoke the key and bring the intake back.
    h.intake.set_outage(true);
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || queue.depth().events == 150).await);
    h.api.set_api_key("another-key");
    assert!(
        wait_until(LONG, || agent.metrics.snapshot().last_poll_error.is_some()).await,
        "the poller reports the rejected key"
    );
    h.intake.set_outage(false);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    let error = agent.metrics.snapshot().last_poll_error.expect("an error");
    agent.stop().await.expect("the agent stops cleanly");
    assert!(
        error.starts_with("JumpCloud rejected the API key (401 Unauthorized"),
        "{error}"
    );
    assert!(
        error.contains("jumpcloud.api_key"),
        "names the setting: {error}"
    );
    assert!(!error.contains(API_KEY), "never shows the key: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_intake_key_is_reported_and_loses_nothing() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(8).mix(120, now - 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    let config = h.config();
    let queue = h.open_queue(&config).await;
    h.intake.set_intake_key("the-real-key");
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || agent.metrics.snapshot().last_send_error.is_some()).await);
    assert!(
        wait_until(LONG, || queue.depth().events == 120).await,
        "everything stays queued"
    );
    let error = agent.metrics.snapshot().last_send_error.expect("an error");
    agent.stop().await.expect("the agent stops cleanly");
    assert!(
        error.starts_with("Sekoia.io refused the intake key (401 Unauthorized)"),
        "{error}"
    );
    assert!(error.contains("sekoia.intake_key"), "{error}");
    assert!(!error.contains(INTAKE_KEY), "{error}");
    assert_eq!(h.intake.received_count(), 0);

    // Fixed key, restarted agent: everything arrives.
    h.intake.set_intake_key(INTAKE_KEY);
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pauses_polling_and_drops_nothing() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(9).mix(600, now - 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    let config = h.config_with(|b| b.queue_max_bytes("50KiB"));
    let queue = h.open_queue(&config).await;
    h.intake.set_outage(true);
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || queue.depth().bytes >= 50 * 1024).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = queue.depth();
    assert!(held.events < 600, "polling paused at the limit: {held:?}");
    assert!(agent.metrics.snapshot().polls_paused_queue_full >= 1);
    h.intake.set_outage(false);
    wait_all_arrived(&h.intake, &events, Duration::from_secs(120))
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
}

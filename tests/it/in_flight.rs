//! Catching up: several batches in flight (`sekoia.max_in_flight`), large pages after a full one or from
//! the first request of a poll far behind (`jumpcloud.catch_up_page_size`), and a first start cut short in
//! the middle of its first page, in-process against the stand-ins.

use std::time::Duration;

use crate::support::*;
use jcdi_forwarder::standin::{
    ApiEvent, ApiFault, ApiOptions, ApiStandIn, EventFactory, IntakeFault,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_batches_in_flight_deliver_everything_once_through_faults() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(21).mix(3000, now - 2 * 3600 * SECOND, now - 120 * SECOND);
    h.api.add_events(events.clone());
    // Slow answers first, so that the later batches overtake them, then failures of every kind.
    for fault in [
        IntakeFault::Delay(Duration::from_millis(400)),
        IntakeFault::Delay(Duration::from_millis(300)),
        IntakeFault::Status {
            status: 503,
            retry_after: None,
        },
        IntakeFault::CloseConnection,
        IntakeFault::Delay(Duration::from_millis(200)),
        IntakeFault::Status {
            status: 429,
            retry_after: Some(1),
        },
    ] {
        h.intake.push_fault(fault);
    }
    let config = h.config_with(|b| b.max_in_flight(4).batch_max_events(50));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, Duration::from_secs(120))
        .await
        .expect("every event arrives");
    let m = agent.metrics.snapshot();
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(h.intake.pending_faults(), 0);
    assert!(m.intake_requests_failed >= 3, "{m:?}");
    assert_eq!(queue.depth().events, 0);
    assert_eq!(
        duplicates(&h.intake),
        0,
        "failed requests were refused whole: nothing is sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_sent_together_up_to_the_limit() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(22).mix(1000, now - 3600 * SECOND, now - 120 * SECOND);
    h.api.add_events(events.clone());
    for _ in 0..3 {
        h.intake
            .push_fault(IntakeFault::Delay(Duration::from_secs(5)));
    }
    let config = h.config_with(|b| b.max_in_flight(3).batch_max_events(100));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    // Three requests are open before the first answer comes back.
    assert!(
        wait_until(Duration::from_secs(4), || h.intake.requests() >= 3).await,
        "requests sent while the first is unanswered: {}",
        h.intake.requests()
    );
    // The poller may still be reading pages (a slow machine): every event it has committed so far is
    // still queued, since no answer has come back. Pages are counted once committed, so reading the
    // count first and the queue second can only find more in the queue, never less.
    let queued = agent.metrics.snapshot().events_queued;
    let depth = queue.depth().events;
    assert_eq!(h.intake.accepted_batches(), 0, "no answer yet");
    assert_eq!(agent.metrics.snapshot().events_forwarded, 0);
    assert!(queued >= 300, "three batches of 100 were sent: {queued}");
    assert!(
        depth >= queued,
        "nothing acknowledged before a 2xx: {depth} in the queue of {queued} queued"
    );
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(duplicates(&h.intake), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_while_the_intake_refuses() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(23).mix(800, now - 3600 * SECOND, now - 120 * SECOND);
    h.api.add_events(events.clone());
    h.intake.set_outage(true);
    let config = h.config_with(|b| b.max_in_flight(4).batch_max_events(50));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || queue.depth().events == 800).await);
    // Several rounds of retries of several batches, all answered 503.
    assert!(wait_until(LONG, || h.intake.requests() >= 12).await);
    assert_eq!(queue.depth().events, 800);
    assert_eq!(agent.metrics.snapshot().events_forwarded, 0);
    h.intake.set_outage(false);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(queue.depth().events, 0);
    assert_eq!(duplicates(&h.intake), 0);
}

/// Collects `events` with `page_size` 100, `catch_up_page_size` 1000 and `lookback`, until every one has
/// arrived (once); the page size each events request asked for.
async fn page_sizes_asked(events: Vec<ApiEvent>, lookback: Duration) -> Vec<usize> {
    let h = Harness::new().await;
    h.api.add_events(events.clone());
    let config = h.config_with(|b| {
        b.set("jumpcloud.catch_up_page_size", 1000)
            .initial_lookback(lookback)
    });
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    let limits = h.api.limits_asked();
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(duplicates(&h.intake), 0);
    limits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_switches_to_catch_up_pages() {
    let now = now_ns();
    // A poll that starts less than a minute behind (here a first start looking back 50 s) asks for
    // `page_size` first: it cannot know that more than a page is waiting.
    let events = EventFactory::new(24).mix(5000, now - 40 * SECOND, now - 10 * SECOND);
    let limits = page_sizes_asked(events, Duration::from_secs(50)).await;
    // 100 events first; once that page is full, 1000 a page: 1 + 5 requests instead of 50.
    assert_eq!(limits[..6], [100, 1000, 1000, 1000, 1000, 1000]);
    // Later polls (one a second) start about a second behind: `page_size` again.
    assert!(limits[6..].iter().all(|limit| *limit == 100), "{limits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_far_behind_asks_for_catch_up_pages_at_once() {
    let now = now_ns();
    // A first start looking back 3 hours: far behind, so catch-up pages from the first request.
    let events = EventFactory::new(25).mix(2500, now - 2 * 3600 * SECOND, now - 120 * SECOND);
    let limits = page_sizes_asked(events, Duration::from_secs(3 * 3600)).await;
    assert_eq!(limits[..3], [1000, 1000, 1000], "{limits:?}");
    assert!(limits[3..].iter().all(|limit| *limit == 100), "{limits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_cut_short_keeps_its_window() {
    // A first start reads a big first page, whose first part is queued before the page's cursor is
    // committed. Every answer is cut in half here, so the page never completes: the agent stops with part
    // of the page queued. Started again with a much shorter lookback, it must still collect the rest:
    // the first start's window was committed before anything was read.
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(26).mix(2500, now - 2 * 3600 * SECOND, now - 3600 * SECOND);
    h.api.add_events(events.clone());
    for _ in 0..1000 {
        h.api.push_fault(ApiFault::TornBody);
    }
    h.intake.set_outage(true);
    let config = h.config();
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    assert!(
        wait_until(LONG, || queue.depth().events >= 1000).await,
        "a part of the torn page is queued"
    );
    agent.stop().await.expect("the agent stops cleanly");
    assert!(queue.depth().events < events.len() as u64);
    drop(queue);

    // The same events at an API that answers well; a lookback of 10 minutes finds none of them.
    let api = ApiStandIn::start(ApiOptions {
        api_key: API_KEY.into(),
        ..ApiOptions::default()
    })
    .await
    .expect("API stand-in");
    api.add_events(events.clone());
    h.intake.set_outage(false);
    let config = h.config_with(|b| {
        b.set("jumpcloud.base_url", api.base_url())
            .initial_lookback(Duration::from_secs(600))
    });
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    let arrived = wait_all_arrived(&h.intake, &events, LONG).await;
    agent.stop().await.expect("the agent stops cleanly");
    arrived.expect("every event arrives");
    api.shutdown();
}

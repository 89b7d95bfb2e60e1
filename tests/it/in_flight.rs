//! Catching up: several batches in flight (`sekoia.max_in_flight`) and large pages after a full one
//! (`jumpcloud.catch_up_page_size`), in-process against the stand-ins.

use std::time::Duration;

use crate::support::*;
use jcdi_forwarder::standin::{EventFactory, IntakeFault};

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
    assert_eq!(h.intake.accepted_batches(), 0);
    assert_eq!(
        queue.depth().events,
        1000,
        "nothing acknowledged before a 2xx"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_switches_to_catch_up_pages() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(24).mix(5000, now - 2 * 3600 * SECOND, now - 120 * SECOND);
    h.api.add_events(events.clone());
    // 100 events first; once that page is full, 1000 a page: 1 + 5 requests instead of 50.
    let config = h.config_with(|b| b.set("jumpcloud.catch_up_page_size", 1000));
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    let requests = h.api.requests();
    agent.stop().await.expect("the agent stops cleanly");
    // Later polls (one a second) add a request each; 50 would mean pages of 100 all along.
    assert!(requests < 20, "{requests} API requests for 5000 events");
    assert_eq!(duplicates(&h.intake), 0);
}

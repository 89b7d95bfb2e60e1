//! The request pace adapts: an API that answers 429 with `Retry-After` when asked too fast slows the agent
//! down (the pace falls below its ceiling, in `/metrics` and `status`), and nothing is lost.

use jcdi_forwarder::standin::{ApiOptions, EventFactory, IntakeOptions, RateLimit};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_slows_the_pace_and_loses_nothing() {
    // The API allows 4 requests per second (bursts of 2), and says "come back in 1 s" beyond that; the
    // agent's ceiling is the default, 10 requests per second.
    let api = ApiOptions {
        rate_limit: Some(RateLimit {
            per_second: 4.0,
            burst: 2,
            retry_after: Some(1),
        }),
        ..ApiOptions::default()
    };
    let h = Harness::with(api, IntakeOptions::default()).await;
    let now = now_ns();
    let events = EventFactory::new(11).mix(3_000, now - 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    let config = h.config_with(|b| {
        b.page_size(100)
            .set("jumpcloud.catch_up_page_size", 100)
            .remove("jumpcloud.min_request_interval")
            .remove("jumpcloud.max_requests_per_second")
    });
    assert_eq!(config.streams[0].jumpcloud.request_ceiling(), 10.0);
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    assert!(
        wait_until(LONG, || h.api.rate_limited() > 0).await,
        "the API throttles"
    );
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives through the throttling");
    let reading = agent.metrics.stream_reading("default");
    assert!(
        reading.pace < 10.0,
        "the pace fell below the ceiling after {} refusals: {}",
        h.api.rate_limited(),
        reading.pace
    );
    println!(
        "{} events, {} requests answered 429, pace now {:.2} requests/s, {} duplicates",
        events.len(),
        h.api.rate_limited(),
        reading.pace,
        duplicates(&h.intake)
    );
    agent.stop().await.expect("stops");
}

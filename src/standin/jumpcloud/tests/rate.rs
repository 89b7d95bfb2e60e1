//! The rate limit: 429 with `Retry-After` beyond the allowed rate, on every endpoint, without using up a
//! queued fault; and the count of 429s given.
//!
//! The rates used here refill one token in a thousand seconds, so that no test depends on how fast the
//! machine runs; the refill itself is tested in `rate.rs` with synthetic instants.

use super::*;

fn limited(burst: u32, retry_after: Option<u64>) -> ApiOptions {
    ApiOptions {
        rate_limit: Some(RateLimit {
            per_second: 0.001,
            burst,
            retry_after,
        }),
        ..ApiOptions::default()
    }
}

#[tokio::test]
async fn requests_beyond_the_burst_get_429_with_retry_after() {
    let api = ApiStandIn::start(limited(3, Some(4))).await.unwrap();
    let now = now_ns_test();
    api.add_events(EventFactory::new(3).mix(5, now - 60_000_000_000, now - 1_000_000_000));
    let body = serde_json::json!({"service": ["all"], "start_time": an_hour_ago()});

    for _ in 0..3 {
        let reply = events(&api, body.clone()).await;
        assert_eq!(reply.status, 200);
        assert_eq!(elements(&reply).len(), 5);
    }
    api.push_fault(ApiFault::Status {
        status: 503,
        body: String::new(),
        retry_after: None,
    });
    let refused = events(&api, body.clone()).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("Retry-After"), Some("4"));
    assert_eq!(refused.body_text(), r#"{"message":"Too Many Requests"}"#);
    assert!(refused.header("X-Request-Id").is_some());
    assert_eq!(api.pending_faults(), 1, "a refused request uses no fault");

    // Count and interval requests share the same limit, and are refused before their body is looked at.
    let count = post(&api, COUNT_PATH, &[KEY], &body.to_string())
        .await
        .unwrap();
    assert_eq!(count.status, 429);
    let interval = post(&api, INTERVAL_PATH, &[], "not even JSON")
        .await
        .unwrap();
    assert_eq!(interval.status, 429);

    assert_eq!(api.rate_limited(), 3);
    assert_eq!(
        api.requests(),
        4,
        "rate-limited events requests are requests"
    );
    assert_eq!(api.count_requests(), 1);
    assert_eq!(api.interval_requests(), 1);
    assert_eq!(api.events_served(), 15);
}

#[tokio::test]
async fn retry_after_can_be_left_out_and_429_faults_are_not_counted() {
    let api = ApiStandIn::start(limited(1, None)).await.unwrap();
    let body = serde_json::json!({"service": ["all"], "start_time": an_hour_ago()});
    api.push_fault(ApiFault::Status {
        status: 429,
        body: String::new(),
        retry_after: Some(1),
    });
    let faulted = events(&api, body.clone()).await;
    assert_eq!(faulted.status, 429);
    assert_eq!(
        api.rate_limited(),
        0,
        "a queued 429 is a fault, not the limit"
    );

    let limited = events(&api, body).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("Retry-After"), None);
    assert_eq!(api.rate_limited(), 1);
}

#[tokio::test]
async fn no_limit_by_default() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let body = serde_json::json!({"service": ["all"], "start_time": an_hour_ago()});
    for _ in 0..50 {
        assert_eq!(events(&api, body.clone()).await.status, 200);
    }
    assert_eq!(api.rate_limited(), 0);
}

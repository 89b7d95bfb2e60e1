//! Injected faults, in order, one answer each; and shutdown.

use super::*;
use std::time::Instant;

#[tokio::test]
async fn faults_replace_one_answer_each_in_order() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let now = now_ns_test();
    api.add_events(EventFactory::new(9).mix(10, now - 60_000_000_000, now - 1_000_000_000));
    let query = || serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "limit": 4});

    api.push_fault(ApiFault::Status {
        status: 429,
        body: r#"{"message":"Too Many Requests"}"#.to_string(),
        retry_after: Some(7),
    });
    api.push_fault(ApiFault::Status {
        status: 503,
        body: String::new(),
        retry_after: None,
    });
    api.push_fault(ApiFault::TornBody);
    api.push_fault(ApiFault::FullPageWithoutCursor);
    api.push_fault(ApiFault::CloseConnection);
    api.push_fault(ApiFault::Delay(Duration::from_millis(150)));
    assert_eq!(api.pending_faults(), 6);

    let limited = events(&api, query()).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("Retry-After"), Some("7"));
    assert_eq!(limited.body_text(), r#"{"message":"Too Many Requests"}"#);

    let unavailable = events(&api, query()).await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.header("Retry-After"), None);

    let torn = events(&api, query()).await;
    assert_eq!(torn.status, 200);
    assert_eq!(torn.header("X-Result-Count"), Some("4"));
    assert!(torn.header("X-Search_after").is_some());
    assert_eq!(
        torn.header("Content-Length"),
        Some(torn.body.len().to_string().as_str())
    );
    assert!(serde_json::from_slice::<Vec<&RawValue>>(&torn.body).is_err());
    assert!(torn.body.starts_with(b"[{"));

    let no_cursor = events(&api, query()).await;
    assert_eq!(no_cursor.header("X-Result-Count"), Some("4"));
    assert_eq!(no_cursor.header("X-Limit"), Some("4"));
    assert_eq!(no_cursor.header("X-Search_after"), None);
    assert_eq!(elements(&no_cursor).len(), 4);

    let dropped = post(&api, EVENTS_PATH, &[KEY], &query().to_string()).await;
    assert!(dropped.is_none(), "connection closed without an answer");

    let started = Instant::now();
    let delayed = events(&api, query()).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(delayed.status, 200);
    assert_eq!(elements(&delayed).len(), 4);

    let normal = events(&api, query()).await;
    assert_eq!(normal.status, 200);
    assert_eq!(api.pending_faults(), 0);
    assert_eq!(api.requests(), 7);
}

#[tokio::test]
async fn full_page_without_cursor_looks_full_even_with_few_events() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let now = now_ns_test();
    api.add_events(EventFactory::new(2).mix(2, now - 60_000_000_000, now - 1_000_000_000));
    api.push_fault(ApiFault::FullPageWithoutCursor);
    let reply = events(
        &api,
        serde_json::json!({"service": ["all"], "start_time": an_hour_ago()}),
    )
    .await;
    assert_eq!(reply.header("X-Result-Count"), Some("2"));
    assert_eq!(reply.header("X-Limit"), Some("2"));
    assert_eq!(reply.header("X-Search_after"), None);
}

#[tokio::test]
async fn fault_status_comes_before_auth() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    api.push_fault(ApiFault::Status {
        status: 500,
        body: "oops".to_string(),
        retry_after: None,
    });
    let reply = post(&api, EVENTS_PATH, &[], "garbage").await.unwrap();
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body_text(), "oops");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let addr = api.local_addr();
    api.shutdown();
    // The accept loop notices at its next poll: give it a moment.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused);
}

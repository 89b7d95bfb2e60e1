//! Pages read as they arrive: a large page's events are queued, and forwarded, in parts while the rest of
//! its answer is still coming; an answer cut off after some parts loses nothing, queues nothing twice and
//! does not move the cursor.

use std::sync::Arc;

use jcdi_forwarder::harness::wait_until;
use tokio::sync::Notify;

use crate::support::scripted::*;

/// The `start_time` and `search_after` of a query the agent sent.
fn start_of(query: &str) -> (String, Option<String>) {
    let query: serde_json::Value = serde_json::from_str(query).expect("queries are JSON");
    (
        query["start_time"].as_str().unwrap_or_default().to_string(),
        query.get("search_after").map(|v| v.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_page_is_queued_in_parts_while_it_arrives_and_a_cut_answer_loses_nothing() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let events: Vec<String> = (0..3000)
        .map(|i| event(&format!("part-{i:04}"), 2))
        .collect();
    let Reply::Bytes(whole) = events_page(&events, "req-whole") else {
        unreachable!("events_page is plain bytes")
    };
    // The same answer, held after its first 2,500 events (two parts and a half), then cut off.
    let last_sent = &events[2499];
    let held_at = whole
        .windows(last_sent.len())
        .position(|w| w == last_sent.as_bytes())
        .expect("the event is in the answer")
        + last_sent.len();
    let release = Arc::new(Notify::new());
    // The first poll finds nothing (the cursor is set); the second gets the held answer, then, asked
    // again, the whole page.
    api.push(page(b"[]".to_vec(), &[]));
    api.push(Reply::Held {
        first: whole[..held_at].to_vec(),
        release: release.clone(),
        rest: None,
    });
    api.push(Reply::Bytes(whole));

    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_text(dir.path(), &api.base_url(), &intake, "", "");
    let mut agent = Agent::start(dir.path(), &config, &[]);

    // While the answer is held, its first parts are queued and reach the intake.
    let parts_arrived = wait_until(LONG, || intake.received().len() >= 2000).await;
    assert!(
        parts_arrived,
        "the first parts of a page held mid-answer never reached the intake (got {}):\n{}",
        intake.received().len(),
        agent.log()
    );
    assert_eq!(
        api.queries().len(),
        2,
        "still reading the second poll's answer"
    );
    assert_eq!(api.pending(), 1, "the whole page was not asked for yet");

    // Cut off: the page is asked again from the same place, and every event arrives exactly once.
    release.notify_one();
    assert_received_exactly(&intake, &events).await;
    let queries = api.queries();
    assert!(
        queries.len() >= 3,
        "the cut page was asked again: {queries:?}"
    );
    assert_eq!(
        start_of(&queries[2]),
        start_of(&queries[1]),
        "the cursor did not move for a page cut off"
    );
    let log = agent.stop().await;
    assert!(
        log.contains("did not answer"),
        "the cut answer is logged as a failed request:\n{log}"
    );
}

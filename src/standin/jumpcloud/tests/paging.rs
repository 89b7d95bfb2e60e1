//! Paging with `search_after`, sort order, visibility and filters.

use super::*;
use std::collections::HashSet;

#[tokio::test]
async fn paging_returns_every_event_once_byte_for_byte() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let now = now_ns_test();
    let added = EventFactory::new(7).mix(1200, now - 1_800_000_000_000, now - 1_000_000_000);
    api.add_events(added.clone());
    assert_eq!(api.event_count(), 1200);

    let (pulled, pages) = pull_all(&api, 500, "ASC").await;
    assert_eq!(pages, 3);
    assert_eq!(pulled.len(), 1200);
    let expected: HashSet<&str> = added.iter().map(|event| event.raw.as_str()).collect();
    let got: HashSet<&str> = pulled.iter().map(String::as_str).collect();
    assert_eq!(got, expected, "every raw text comes back unchanged, once");
    // Ascending by millisecond.
    let ms: Vec<i64> = pulled
        .iter()
        .map(|raw| ApiEvent::from_raw(raw.clone()).unwrap().timestamp_ns / 1_000_000)
        .collect();
    assert!(ms.windows(2).all(|pair| pair[0] <= pair[1]));

    let (descending, _) = pull_all(&api, 700, "DESC").await;
    let mut reversed = pulled.clone();
    reversed.reverse();
    assert_eq!(descending, reversed);
    assert_eq!(api.requests(), 3 + 2);
}

#[tokio::test]
async fn last_page_keeps_its_cursor_and_empty_page_has_none() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let now = now_ns_test();
    api.add_events(EventFactory::new(1).mix(3, now - 10_000_000_000, now - 1_000_000_000));
    let reply = events(
        &api,
        serde_json::json!({"service": ["all"], "start_time": an_hour_ago()}),
    )
    .await;
    assert_eq!(reply.header("X-Result-Count"), Some("3"));
    assert_eq!(reply.header("X-Limit"), Some("1000"));
    assert_eq!(reply.header("X-Sort"), Some("ASC"));
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert!(reply.header("X-Request-Id").is_some());
    let cursor: serde_json::Value =
        serde_json::from_str(reply.header("X-Search_after").unwrap()).unwrap();
    // The header name is spelled as the real API spells it.
    assert!(reply
        .headers
        .iter()
        .any(|(name, _)| name == "X-Search_after"));

    let after = events(
        &api,
        serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "search_after": cursor}),
    )
    .await;
    assert_eq!(after.body, b"[]");
    assert_eq!(after.header("X-Result-Count"), Some("0"));
    assert_eq!(after.header("X-Search_after"), None);
}

#[tokio::test]
async fn same_millisecond_events_follow_doc_id_order() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let base = (now_ns_test() - 60_000_000_000) / 1_000_000 * 1_000_000;
    let mut factory = EventFactory::new(3);
    // Nanosecond timestamps decreasing within one millisecond.
    let added: Vec<ApiEvent> = (0..30)
        .map(|i| factory.event("sso", base + 999_000 - i * 1000))
        .collect();
    api.add_events(added.clone());

    let mut keys = Vec::new();
    let mut raws = Vec::new();
    let mut cursor: Option<serde_json::Value> = None;
    for _ in 0..30 {
        let mut body =
            serde_json::json!({"service": ["sso"], "start_time": an_hour_ago(), "limit": 1});
        if let Some(cursor) = &cursor {
            body["search_after"] = cursor.clone();
        }
        let reply = events(&api, body).await;
        let page = elements(&reply);
        assert_eq!(page.len(), 1);
        raws.push(page[0].clone());
        let key: (i64, String) =
            serde_json::from_str(reply.header("X-Search_after").unwrap()).unwrap();
        assert_eq!(key.0, base / 1_000_000);
        assert_eq!(key.1.len(), 20);
        cursor = Some(serde_json::json!([key.0, key.1]));
        keys.push(key.1);
    }
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "doc ids ascend within the millisecond");
    let distinct: HashSet<&String> = raws.iter().collect();
    assert_eq!(distinct.len(), 30);
    let mut by_ns = added.clone();
    by_ns.sort_by_key(|event| event.timestamp_ns);
    let by_ns: Vec<String> = by_ns.into_iter().map(|event| event.raw).collect();
    assert_ne!(raws, by_ns, "the order is not the nanosecond order");
}

#[tokio::test]
async fn visible_at_hides_events_until_then() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let now = now_ns_test();
    let mut factory = EventFactory::new(5);
    let mut late = factory.event("directory", now - 30_000_000_000);
    late.visible_at = Some(SystemTime::now() + Duration::from_millis(300));
    let mut hidden = factory.event("directory", now - 20_000_000_000);
    hidden.visible_at = Some(SystemTime::now() + Duration::from_secs(3600));
    let mut past = factory.event("directory", now - 10_000_000_000);
    past.visible_at = Some(SystemTime::now() - Duration::from_secs(1));
    api.add_events([late.clone(), hidden, past.clone()]);

    let query = serde_json::json!({"service": ["directory"], "start_time": an_hour_ago()});
    let first = elements(&events(&api, query.clone()).await);
    assert_eq!(first, vec![past.raw.clone()]);
    let count = post(&api, COUNT_PATH, &[KEY], &query.to_string())
        .await
        .unwrap();
    assert_eq!(count.body_text(), "{\"count\":1}");

    tokio::time::sleep(Duration::from_millis(350)).await;
    let second = elements(&events(&api, query).await);
    assert_eq!(second, vec![late.raw, past.raw]);
}

#[tokio::test]
async fn filters_by_service_and_time_range() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let base = (now_ns_test() - 600_000_000_000) / 1_000_000_000 * 1_000_000_000;
    let mut factory = EventFactory::new(11);
    let at = |s: i64| base + s * 1_000_000_000;
    api.add_events([
        factory.event("radius", at(0)),
        factory.event("radius", at(1)),
        factory.event("sso", at(1) + 123_456),
        factory.event("radius", at(2)),
    ]);
    let reply = events(
        &api,
        serde_json::json!({
            "service": ["radius"], "start_time": format_timestamp(at(1)), "end_time": format_timestamp(at(2)),
        }),
    )
    .await;
    let page = elements(&reply);
    assert_eq!(
        page.len(),
        1,
        "start inclusive, end exclusive, other services left out"
    );
    assert_eq!(
        ApiEvent::from_raw(page[0].clone()).unwrap().timestamp_ns,
        at(1)
    );

    let body =
        serde_json::json!({"service": ["radius", "sso"], "start_time": format_timestamp(at(1))});
    let count = post(&api, COUNT_PATH, &[KEY], &body.to_string())
        .await
        .unwrap();
    assert_eq!(count.status, 200);
    assert_eq!(count.body_text(), "{\"count\":3}");
    assert_eq!(api.requests(), 1, "count requests are not events requests");
}

#[tokio::test]
async fn with_events_per_org_each_organization_reads_only_its_own_events() {
    let api = ApiStandIn::start(ApiOptions {
        events_per_org: true,
        ..ApiOptions::default()
    })
    .await
    .unwrap();
    let now = now_ns_test();
    let mut factory = EventFactory::new(3);
    let acme = factory.mix(3, now - 1_800_000_000_000, now - 1_000_000_000);
    let globex = factory.mix(2, now - 1_800_000_000_000, now - 1_000_000_000);
    let common = factory.mix(1, now - 1_800_000_000_000, now - 1_000_000_000);
    api.add_org_events("acme", acme.clone());
    api.add_org_events("globex", globex.clone());
    api.add_events(common.clone());
    assert_eq!(api.event_count(), 6);

    let body = serde_json::json!({"service": ["all"], "start_time": an_hour_ago()}).to_string();
    let read = |org: Option<&'static str>| {
        let body = body.clone();
        let api = api.clone();
        async move {
            let mut headers = vec![KEY];
            headers.extend(org.map(|org| ("x-org-id", org)));
            let page = post(&api, EVENTS_PATH, &headers, &body).await.unwrap();
            assert_eq!(page.status, 200, "{}", page.body_text());
            let count = post(&api, COUNT_PATH, &headers, &body).await.unwrap();
            let count: serde_json::Value = serde_json::from_slice(&count.body).unwrap();
            let mut with_interval: serde_json::Value = serde_json::from_str(&body).unwrap();
            with_interval["interval_unit"] = "h".into();
            with_interval["interval_value"] = "1".into();
            let histogram = post(&api, INTERVAL_PATH, &headers, &with_interval.to_string())
                .await
                .unwrap();
            let histogram: serde_json::Value = serde_json::from_slice(&histogram.body).unwrap();
            let in_buckets: u64 = histogram["buckets"]
                .as_array()
                .map(|buckets| buckets.iter().filter_map(|b| b["doc_count"].as_u64()).sum())
                .unwrap_or(0);
            let mut raws = elements(&page);
            raws.sort();
            (raws, count["count"].as_u64(), in_buckets)
        }
    };
    let raws = |events: &[ApiEvent]| {
        let mut raws: Vec<String> = events.iter().map(|event| event.raw.clone()).collect();
        raws.sort();
        raws
    };
    assert_eq!(read(Some("acme")).await, (raws(&acme), Some(3), 3));
    assert_eq!(read(Some("globex")).await, (raws(&globex), Some(2), 2));
    assert_eq!(read(Some("initech")).await, (Vec::new(), Some(0), 0));
    assert_eq!(read(None).await, (raws(&common), Some(1), 1));
}

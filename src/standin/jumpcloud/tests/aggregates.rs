//! `/events/count` and `/events/interval`: the same selection as `/events` (filters, visibility), the
//! date histogram's buckets, refusals, and the option that makes both endpoints refuse.

use super::*;

const HOUR_NS: i64 = 3_600_000_000_000;
const MINUTE_NS: i64 = 60_000_000_000;

/// A whole hour (UTC) some hours ago, in nanoseconds.
fn past_hour(hours_ago: i64) -> i64 {
    let now = now_ns_test();
    (now - hours_ago * HOUR_NS).div_euclid(HOUR_NS) * HOUR_NS
}

async fn answer(api: &ApiStandIn, path: &str, body: &serde_json::Value) -> Reply {
    post(api, path, &[KEY], &body.to_string())
        .await
        .expect("an answer")
}

async fn count(api: &ApiStandIn, body: &serde_json::Value) -> u64 {
    let reply = answer(api, COUNT_PATH, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body_text());
    let value: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    value["count"].as_u64().expect("a count")
}

/// The buckets of an interval answer as (key, key_as_string, doc_count).
async fn buckets(api: &ApiStandIn, body: &serde_json::Value) -> Vec<(i64, String, u64)> {
    let reply = answer(api, INTERVAL_PATH, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body_text());
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert!(reply.header("X-Request-Id").is_some());
    let value: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    value["buckets"]
        .as_array()
        .expect("a buckets array")
        .iter()
        .map(|bucket| {
            (
                bucket["key"].as_i64().expect("key"),
                bucket["key_as_string"]
                    .as_str()
                    .expect("key_as_string")
                    .to_string(),
                bucket["doc_count"].as_u64().expect("doc_count"),
            )
        })
        .collect()
}

fn with_interval(mut body: serde_json::Value, unit: &str, value: &str) -> serde_json::Value {
    body["interval_unit"] = unit.into();
    body["interval_value"] = value.into();
    body
}

#[tokio::test]
async fn interval_buckets_by_hour_and_agrees_with_count_and_events() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let base = past_hour(5);
    let mut factory = EventFactory::new(21);
    let mut hidden = factory.event("sso", base + 2 * HOUR_NS + 7 * MINUTE_NS);
    hidden.visible_at = Some(SystemTime::now() + Duration::from_secs(3600));
    let mut alone_hidden = factory.event("sso", base + 4 * HOUR_NS);
    alone_hidden.visible_at = Some(SystemTime::now() + Duration::from_secs(3600));
    api.add_events([
        factory.event("directory", base + 10 * MINUTE_NS),
        factory.event("sso", base + 11 * MINUTE_NS + 123_456_789),
        factory.event("radius", base + 59 * MINUTE_NS),
        // Nothing in the second hour.
        factory.event("sso", base + 2 * HOUR_NS),
        factory.event("radius", base + 2 * HOUR_NS + 5 * MINUTE_NS),
        factory.event("directory", base + 2 * HOUR_NS + 6 * MINUTE_NS),
        hidden,
        alone_hidden,
    ]);
    let start = format_timestamp(base - HOUR_NS);
    let all = serde_json::json!({"service": ["all"], "start_time": start});

    let hours = buckets(&api, &with_interval(all.clone(), "h", "1")).await;
    let base_ms = base / 1_000_000;
    assert_eq!(
        hours,
        vec![
            (base_ms, format_timestamp(base).replace('Z', ".000Z"), 3),
            (
                base_ms + 3_600_000,
                format_timestamp(base + HOUR_NS).replace('Z', ".000Z"),
                0
            ),
            (
                base_ms + 7_200_000,
                format_timestamp(base + 2 * HOUR_NS).replace('Z', ".000Z"),
                3
            ),
        ],
        "empty buckets between non-empty ones are listed; invisible events are not counted"
    );
    assert!(hours[0].1.ends_with(":00:00.000Z"), "{}", hours[0].1);
    let total: u64 = hours.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, count(&api, &all).await);
    assert_eq!(
        total as usize,
        elements(&events(&api, all.clone()).await).len()
    );

    // Thirty minutes: the same events, finer buckets, still consecutive.
    let halves = buckets(&api, &with_interval(all.clone(), "m", "30")).await;
    let counts: Vec<u64> = halves.iter().map(|(_, _, n)| *n).collect();
    assert_eq!(counts, [2, 1, 0, 0, 3]);
    assert!(halves
        .windows(2)
        .all(|pair| pair[1].0 - pair[0].0 == 1_800_000));

    // Filters are the ones /events honours: service and end_time (exclusive).
    let radius = serde_json::json!({"service": ["radius"], "start_time": start});
    let radius_hours = buckets(&api, &with_interval(radius.clone(), "h", "1")).await;
    assert_eq!(
        radius_hours.iter().map(|(_, _, n)| *n).collect::<Vec<_>>(),
        [1, 0, 1]
    );
    assert_eq!(count(&api, &radius).await, 2);
    let until = serde_json::json!({
        "service": ["all"], "start_time": start,
        "end_time": format_timestamp(base + 2 * HOUR_NS + 5 * MINUTE_NS),
    });
    let until_hours = buckets(&api, &with_interval(until.clone(), "h", "1")).await;
    assert_eq!(
        until_hours.iter().map(|(_, _, n)| *n).collect::<Vec<_>>(),
        [3, 0, 1]
    );
    assert_eq!(count(&api, &until).await, 4);

    // Paging fields are accepted and ignored, as by /events/count.
    let mut paged = with_interval(all.clone(), "h", "1");
    paged["limit"] = 1.into();
    paged["search_after"] = serde_json::json!([base_ms + 7_200_000, "zzzzzzzzzzzzzzzzzzzz"]);
    assert_eq!(buckets(&api, &paged).await, hours);

    // Days and weeks hold everything in one bucket at midnight (a Monday for weeks), unless the events
    // straddle it.
    let days = buckets(&api, &with_interval(all.clone(), "d", "1")).await;
    assert_eq!(days.iter().map(|(_, _, n)| n).sum::<u64>(), 6);
    assert!(days
        .iter()
        .all(|(key, text, _)| key % 86_400_000 == 0 && text.ends_with("T00:00:00.000Z")));
    let weeks = buckets(&api, &with_interval(all.clone(), "w", "1")).await;
    for (key, _, _) in &weeks {
        let day = chrono::DateTime::from_timestamp_millis(*key).unwrap();
        assert_eq!(chrono::Datelike::weekday(&day), chrono::Weekday::Mon);
    }

    assert_eq!(api.count_requests(), 3);
    assert_eq!(api.interval_requests(), 7);
}

#[tokio::test]
async fn interval_of_nothing_is_an_empty_list() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let body = with_interval(
        serde_json::json!({"service": ["all"], "start_time": an_hour_ago()}),
        "s",
        "1",
    );
    let reply = answer(&api, INTERVAL_PATH, &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), r#"{"buckets":[]}"#);
}

#[tokio::test]
async fn interval_refuses_bad_units_values_and_filters_with_400() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let base = past_hour(30);
    let mut factory = EventFactory::new(4);
    api.add_events([
        factory.event("sso", base),
        factory.event("sso", base + 20 * HOUR_NS),
    ]);
    let filters = serde_json::json!({"service": ["all"], "start_time": format_timestamp(base)});
    let cases = [
        (
            with_interval(filters.clone(), "y", "1"),
            "invalid interval_unit \"y\"",
        ),
        (
            with_interval(filters.clone(), "", "1"),
            "invalid interval_unit",
        ),
        (with_interval(filters.clone(), "h", "0"), "positive integer"),
        (
            with_interval(filters.clone(), "h", "one"),
            "positive integer",
        ),
        (
            serde_json::json!({"service": ["all"], "start_time": format_timestamp(base), "interval_value": "1"}),
            "interval_unit is required",
        ),
        (
            serde_json::json!({"service": ["all"], "start_time": format_timestamp(base), "interval_unit": "h"}),
            "interval_value is required",
        ),
        // The filters are checked as for /events.
        (
            with_interval(
                serde_json::json!({"start_time": format_timestamp(base)}),
                "h",
                "1",
            ),
            "service is required",
        ),
        (
            with_interval(
                serde_json::json!({"service": ["nope"], "start_time": format_timestamp(base)}),
                "h",
                "1",
            ),
            "invalid service",
        ),
        // 20 hours in seconds is 72,001 buckets: more than Elasticsearch allows.
        (with_interval(filters.clone(), "s", "1"), "too many buckets"),
    ];
    for (body, needle) in cases {
        let reply = answer(&api, INTERVAL_PATH, &body).await;
        assert_eq!(reply.status, 400, "{body}");
        let message: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
        let message = message["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }
    // The same range in minutes is fine.
    let minutes = buckets(&api, &with_interval(filters, "m", "1")).await;
    assert_eq!(minutes.len(), 20 * 60 + 1);
    // Count refuses bad filters alike.
    let reply = answer(&api, COUNT_PATH, &serde_json::json!({"service": ["all"]})).await;
    assert_eq!(reply.status, 400);
    assert!(reply.body_text().contains("start_time is required"));
    // Unauthenticated requests get 401 like /events.
    let reply = post(&api, INTERVAL_PATH, &[], "{}").await.unwrap();
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn refused_aggregates_answer_404_before_auth_or_403_after_it() {
    let now = now_ns_test();
    let body = serde_json::json!({"service": ["all"], "start_time": an_hour_ago()});
    let interval = with_interval(body.clone(), "h", "1");

    let missing = ApiStandIn::start(ApiOptions {
        refuse_aggregates: Some(404),
        ..ApiOptions::default()
    })
    .await
    .unwrap();
    missing.add_events(EventFactory::new(1).mix(5, now - 60_000_000_000, now - 1_000_000_000));
    for path in [COUNT_PATH, INTERVAL_PATH] {
        for headers in [&[KEY][..], &[][..]] {
            let reply = post(&missing, path, headers, &interval.to_string())
                .await
                .unwrap();
            assert_eq!(reply.status, 404, "{path}");
            assert_eq!(reply.body_text(), r#"{"message":"Not Found"}"#);
        }
    }
    assert_eq!(elements(&events(&missing, body.clone()).await).len(), 5);
    assert_eq!(missing.count_requests(), 2);
    assert_eq!(missing.interval_requests(), 2);
    assert_eq!(missing.requests(), 1);

    let forbidden = ApiStandIn::start(ApiOptions {
        refuse_aggregates: Some(403),
        ..ApiOptions::default()
    })
    .await
    .unwrap();
    for path in [COUNT_PATH, INTERVAL_PATH] {
        let reply = post(&forbidden, path, &[KEY], &interval.to_string())
            .await
            .unwrap();
        assert_eq!(reply.status, 403, "{path}");
        assert_eq!(reply.body_text(), r#"{"message":"Forbidden"}"#);
        assert!(reply.header("X-Request-Id").is_some());
        let unauthenticated = post(&forbidden, path, &[], &interval.to_string())
            .await
            .unwrap();
        assert_eq!(unauthenticated.status, 401, "{path}");
    }
    assert_eq!(events(&forbidden, body).await.status, 200);
}

//! Requests refused: authentication, method, path, invalid bodies; and the silent `limit` fallback.

use super::*;

#[tokio::test]
async fn auth_failures() {
    let options = ApiOptions {
        org_id: Some("641b3db57090821c0b2f8183".to_string()),
        ..ApiOptions::default()
    };
    let api = ApiStandIn::start(options).await.unwrap();
    let body = serde_json::json!({"service": ["all"], "start_time": an_hour_ago()}).to_string();
    let org = ("x-org-id", "641b3db57090821c0b2f8183");

    let ok = post(&api, EVENTS_PATH, &[KEY, org], &body).await.unwrap();
    assert_eq!(ok.status, 200);

    let no_key = post(&api, EVENTS_PATH, &[org], &body).await.unwrap();
    assert_eq!(no_key.status, 401);
    assert_eq!(no_key.body_text(), r#"{"message":"Unauthorized"}"#);
    let bad_key = post(&api, EVENTS_PATH, &[("x-api-key", "nope"), org], &body)
        .await
        .unwrap();
    assert_eq!(bad_key.status, 401);

    let no_org = post(&api, EVENTS_PATH, &[KEY], &body).await.unwrap();
    assert_eq!(no_org.status, 401);
    assert!(no_org.body_text().contains("org"), "{}", no_org.body_text());
    let bad_org = post(&api, EVENTS_PATH, &[KEY, ("x-org-id", "other")], &body)
        .await
        .unwrap();
    assert_eq!(bad_org.status, 401);
    assert!(bad_org.body_text().contains("org"));

    api.set_api_key("rotated");
    let revoked = post(&api, EVENTS_PATH, &[KEY, org], &body).await.unwrap();
    assert_eq!(revoked.status, 401);
    let rotated = post(&api, EVENTS_PATH, &[("x-api-key", "rotated"), org], &body)
        .await
        .unwrap();
    assert_eq!(rotated.status, 200);

    let get = send(api.local_addr(), "GET", EVENTS_PATH, &[KEY, org], b"")
        .await
        .unwrap();
    assert_eq!(get.status, 405);
    let elsewhere = post(&api, "/insights/directory/v2/events", &[KEY, org], &body)
        .await
        .unwrap();
    assert_eq!(elsewhere.status, 404);
}

#[tokio::test]
async fn refuses_bad_requests_with_400() {
    let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
    let start = an_hour_ago();
    let cases = [
        ("not json at all".to_string(), "invalid request body"),
        ("[1,2]".to_string(), "JSON object"),
        (serde_json::json!({"start_time": an_hour_ago()}).to_string(), "service is required"),
        (serde_json::json!({"service": "all", "start_time": an_hour_ago()}).to_string(), "service"),
        (serde_json::json!({"service": ["x"], "start_time": an_hour_ago()}).to_string(), "invalid service \"x\"; valid: all, directory"),
        (serde_json::json!({"service": ["all"]}).to_string(), "start_time is required"),
        (serde_json::json!({"service": ["all"], "start_time": "yesterday"}).to_string(), "RFC 3339"),
        (
            serde_json::json!({"service": ["all"], "start_time": format_timestamp(now_ns_test() + 3_600_000_000_000)}).to_string(),
            "future",
        ),
        (
            serde_json::json!({"service": ["all"], "start_time": start, "end_time": start}).to_string(),
            "Start Time not after End Time",
        ),
        (serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "search_after": "abc"}).to_string(), "search_after"),
        (serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "search_after": [1]}).to_string(), "search_after"),
        (serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "sort": "UP"}).to_string(), "sort"),
    ];
    for (body, needle) in cases {
        let reply = post(&api, EVENTS_PATH, &[KEY], &body).await.unwrap();
        assert_eq!(reply.status, 400, "{body}");
        let message: serde_json::Value =
            serde_json::from_slice(&reply.body).expect("JSON error body");
        let message = message["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(needle), "{body}: {message}");
    }
    // Invalid limits fall back to 1000 silently.
    for limit in [
        serde_json::json!(0),
        serde_json::json!(10001),
        serde_json::json!("50"),
        serde_json::json!(-3),
    ] {
        let reply = events(
            &api,
            serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "limit": limit}),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("X-Limit"), Some("1000"), "limit {limit}");
    }
    let reply = events(
        &api,
        serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "limit": 10000}),
    )
    .await;
    assert_eq!(reply.header("X-Limit"), Some("10000"));
}

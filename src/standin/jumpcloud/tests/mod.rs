//! The API stand-in's tests, through HTTP as a client sees it: helpers here, cases by theme in the
//! children (paging and filters, requests refused, faults, count and interval, rate limit).

mod aggregates;
mod faults;
mod paging;
mod rate;
mod requests;

use super::handler::{COUNT_PATH, EVENTS_PATH, INTERVAL_PATH};
use super::query::now_ns;
use super::*;
use crate::standin::data::{format_timestamp, EventFactory};
use crate::standin::test_http::{send, Reply};
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime};

const KEY: (&str, &str) = ("x-api-key", "demo-api-key");

fn now_ns_test() -> i64 {
    now_ns(SystemTime::now())
}

async fn post(api: &ApiStandIn, path: &str, headers: &[(&str, &str)], body: &str) -> Option<Reply> {
    send(api.local_addr(), "POST", path, headers, body.as_bytes()).await
}

async fn events(api: &ApiStandIn, body: serde_json::Value) -> Reply {
    post(api, EVENTS_PATH, &[KEY], &body.to_string())
        .await
        .expect("an answer")
}

/// The array elements of a page, as raw texts.
fn elements(reply: &Reply) -> Vec<String> {
    let items: Vec<&RawValue> = serde_json::from_slice(&reply.body).expect("a JSON array");
    items.iter().map(|item| item.get().to_string()).collect()
}

fn an_hour_ago() -> String {
    format_timestamp(now_ns_test() - 3_600_000_000_000)
}

/// Pulls everything with `search_after` paging; returns the elements and the number of pages.
async fn pull_all(api: &ApiStandIn, limit: usize, sort: &str) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut cursor: Option<serde_json::Value> = None;
    let mut pages = 0;
    loop {
        let mut body = serde_json::json!({
            "service": ["all"], "start_time": an_hour_ago(), "limit": limit, "sort": sort,
        });
        if let Some(cursor) = &cursor {
            body["search_after"] = cursor.clone();
        }
        let reply = events(api, body).await;
        assert_eq!(reply.status, 200, "{}", reply.body_text());
        pages += 1;
        let page = elements(&reply);
        assert_eq!(
            reply.header("X-Result-Count"),
            Some(page.len().to_string().as_str())
        );
        assert_eq!(reply.header("X-Limit"), Some(limit.to_string().as_str()));
        all.extend(page.iter().cloned());
        if page.len() < limit {
            break;
        }
        let header = reply
            .header("X-Search_after")
            .expect("a cursor on a full page");
        cursor = Some(serde_json::from_str(header).expect("cursor is JSON"));
    }
    (all, pages)
}

//! Answers the stand-in's HTTP requests: routing, the order of checks (rate limit, fault, body, refused
//! endpoint, auth, query), and the JumpCloud paging headers of a page.
//!
//! Invariants it keeps:
//! - the request body is always read before answering, so a client still writing it never sees a reset;
//! - every answer on a known path carries an `X-Request-Id`;
//! - a page's `X-Result-Count` is the number of elements in its body, and `X-Search_after` (when present)
//!   is the sort key of its last element.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::faults::{spoil_page, status_answer};
use super::histogram::{histogram, parse_interval};
use super::query::{count_events, parse_body, parse_query, select_page, Page, Query, Refusal};
use super::{ApiFault, Shared};
use crate::standin::{
    json_answer, message_answer, read_body, status_or_500, Answer, Body, BodyError, DropConnection,
};

pub(super) const EVENTS_PATH: &str = "/insights/directory/v1/events";
pub(super) const COUNT_PATH: &str = "/insights/directory/v1/events/count";
pub(super) const INTERVAL_PATH: &str = "/insights/directory/v1/events/interval";

/// Request bodies are small JSON objects; anything larger than this is refused.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Checks `x-api-key` and, when configured, `x-org-id`.
fn check_auth(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    let unauthorized = |message: &str| (StatusCode::UNAUTHORIZED, message.to_string());
    let given_key = headers.get("x-api-key").map(HeaderValue::as_bytes);
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let (Some(token), Some(tokens)) = (bearer, &shared.options.tokens) {
        if !tokens.is_valid(token) {
            tokens.note_refused();
            return Err(unauthorized("Unauthorized: invalid or expired token"));
        }
        if headers.get("x-org-id").is_none() {
            return Err(unauthorized(
                "Unauthorized: header x-org-id is required with a service account",
            ));
        }
    } else {
        let key_ok = {
            let state = shared.lock();
            given_key == Some(state.api_key.as_bytes())
        };
        if !key_ok {
            return Err(unauthorized("Unauthorized"));
        }
    }
    if let Some(org_id) = &shared.options.org_id {
        match headers.get("x-org-id") {
            None => return Err(unauthorized(
                "Unauthorized: header x-org-id is required: this key manages several organizations",
            )),
            Some(given) if given.as_bytes() != org_id.as_bytes() => {
                return Err(unauthorized(
                    "Unauthorized: x-org-id is not an organization this key may read",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn request_id(shared: &Shared) -> String {
    crate::standin::uuid_text(&mut shared.lock().rng)
}

fn with_request_id(mut response: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The endpoints served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoint {
    Events,
    Count,
    Interval,
}

pub(super) async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let endpoint = match request.uri().path() {
        EVENTS_PATH => Endpoint::Events,
        COUNT_PATH => Endpoint::Count,
        INTERVAL_PATH => Endpoint::Interval,
        _ => return Ok(message_answer(StatusCode::NOT_FOUND, "Not Found")),
    };
    let id = request_id(&shared);
    if request.method() != Method::POST {
        let mut answer = message_answer(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        answer
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(with_request_id(answer, &id));
    }

    let counter = match endpoint {
        Endpoint::Events => &shared.requests,
        Endpoint::Count => &shared.count_requests,
        Endpoint::Interval => &shared.interval_requests,
    };
    counter.fetch_add(1, Ordering::Relaxed);

    // The rate limit comes first, as at a gateway: a refused request reaches nothing, not even a fault.
    // `limited` is `Some(retry_after)` when the request is refused.
    let (limited, fault) = {
        let mut state = shared.lock();
        let limited = state.bucket.as_mut().and_then(|bucket| {
            let refused = !bucket.take(Instant::now());
            refused.then(|| bucket.retry_after())
        });
        let fault = match (limited, endpoint) {
            (None, Endpoint::Events) => state.faults.pop_front(),
            _ => None,
        };
        (limited, fault)
    };

    let (parts, body) = request.into_parts();
    // Read the body before any answer, so that a client still writing it never sees a reset.
    let body = read_body(body, MAX_REQUEST_BYTES).await;

    if let Some(retry_after) = limited {
        shared.rate_limited.fetch_add(1, Ordering::Relaxed);
        let answer = status_answer(429, r#"{"message":"Too Many Requests"}"#, retry_after);
        return Ok(with_request_id(answer, &id));
    }

    match &fault {
        Some(ApiFault::Status {
            status,
            body,
            retry_after,
        }) => {
            let answer = status_answer(*status, body, *retry_after);
            return Ok(with_request_id(answer, &id));
        }
        Some(ApiFault::CloseConnection) => return Err(DropConnection),
        Some(ApiFault::Delay(delay)) => tokio::time::sleep(*delay).await,
        _ => {}
    }

    let body = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let answer = message_answer(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
            return Ok(with_request_id(answer, &id));
        }
        Err(BodyError::Broken) => return Err(DropConnection),
    };

    let refused = match endpoint {
        Endpoint::Events => None,
        Endpoint::Count | Endpoint::Interval => shared.options.refuse_aggregates,
    };
    // A missing endpoint is missing whoever asks: 404 comes before authentication.
    if refused == Some(404) {
        let answer = message_answer(StatusCode::NOT_FOUND, "Not Found");
        return Ok(with_request_id(answer, &id));
    }

    if let Err((status, message)) = check_auth(&shared, &parts.headers) {
        return Ok(with_request_id(message_answer(status, &message), &id));
    }

    if let Some(status) = refused {
        let status = status_or_500(status);
        let answer = message_answer(status, status.canonical_reason().unwrap_or("Refused"));
        return Ok(with_request_id(answer, &id));
    }

    let now = SystemTime::now();
    let per_org = shared.options.events_per_org;
    let org_id = parts.headers.get("x-org-id").map(HeaderValue::as_bytes);
    let parsed = parse_body(&body)
        .and_then(|object| Ok((parse_query(&object, shared.options.max_limit, now)?, object)));
    let (query, object) = match parsed {
        Ok(parsed) => parsed,
        Err((status, message)) => {
            return Ok(with_request_id(message_answer(status, &message), &id))
        }
    };

    let answer = match endpoint {
        Endpoint::Events => {
            let page = {
                let mut state = shared.lock();
                state.limits.push(query.limit);
                select_page(state.events_of(per_org, org_id), &query, now)
            };
            shared
                .served
                .fetch_add(page.raws.len() as u64, Ordering::Relaxed);
            page_answer(page, &query, fault.as_ref())
        }
        Endpoint::Count => {
            let count = count_events(shared.lock().events_of(per_org, org_id), &query, now);
            json_answer(StatusCode::OK, format!("{{\"count\":{count}}}"))
        }
        Endpoint::Interval => {
            let buckets = parse_interval(&object).and_then(|interval| {
                histogram(
                    shared.lock().events_of(per_org, org_id),
                    &query,
                    interval,
                    now,
                )
            });
            match buckets {
                Ok(body) => json_answer(StatusCode::OK, body),
                Err((status, message)) => message_answer(status, &message),
            }
        }
    };
    Ok(with_request_id(answer, &id))
}

/// Builds the 200 answer of an events request, possibly spoiled by a fault.
fn page_answer(page: Page, query: &Query, fault: Option<&ApiFault>) -> Response<Body> {
    let total: usize = page.raws.iter().map(Bytes::len).sum();
    let mut body = Vec::with_capacity(total + page.raws.len() + 2);
    body.push(b'[');
    for (index, raw) in page.raws.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(raw);
    }
    body.push(b']');

    let count = page.raws.len();
    let mut limit = query.limit;
    let mut cursor = page.last.as_ref().map(|(ms, id)| {
        // Doc ids only hold URL-safe base64 characters: no JSON escaping is needed.
        format!("[{ms},\"{id}\"]")
    });
    spoil_page(fault, count, &mut body, &mut limit, &mut cursor);

    let mut answer = json_answer(StatusCode::OK, body);
    let headers = answer.headers_mut();
    headers.insert("x-result-count", HeaderValue::from(count));
    headers.insert("x-limit", HeaderValue::from(limit));
    headers.insert("x-sort", HeaderValue::from_static(query.sort.as_str()));
    if let Some(cursor) = cursor {
        if let Ok(value) = HeaderValue::from_str(&cursor) {
            headers.insert("x-search_after", value);
        }
    }
    answer
}

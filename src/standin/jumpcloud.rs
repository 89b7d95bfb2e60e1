//! Stand-in of JumpCloud's Directory Insights API: `POST /insights/directory/v1/events` and `.../events/count`.
//!
//! It owns the stored events, the queue of faults to inject, and the API key. Invariants it keeps:
//! - events are kept sorted by (timestamp in milliseconds, doc id), the sort key the real API (Elasticsearch)
//!   pages on; within one millisecond the order is the doc id's, not the nanosecond timestamp's;
//! - every stored event has a doc id (20 characters, like an Elasticsearch `_id`) unique within its
//!   millisecond, so sort keys are unique and `search_after` never skips nor repeats an event;
//! - an answer's array elements are the events' raw texts byte for byte;
//! - each queued fault replaces the answer to exactly one events request (count requests take none).
//!
//! The time range is compared at millisecond precision, as Elasticsearch does for a `date` field:
//! `start_time` and `end_time` are truncated to the millisecond, so every event of the start millisecond is
//! returned even if its nanosecond timestamp is a little before `start_time`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::DateTime;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;

use super::{
    json_answer, message_answer, read_body, status_or_500, Answer, Body, BodyError, DropConnection,
    Server,
};

const EVENTS_PATH: &str = "/insights/directory/v1/events";
const COUNT_PATH: &str = "/insights/directory/v1/events/count";

/// The `limit` used when a request gives none or an invalid one (capped by `max_limit`).
const DEFAULT_LIMIT: usize = 1000;

/// Request bodies are small JSON objects; anything larger than this is refused.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Service names the real API accepts (besides `"all"`), from jumpcloud-api.md.
pub const VALID_SERVICES: &[&str] = &[
    "directory",
    "sso",
    "radius",
    "ldap",
    "systems",
    "mdm",
    "password_manager",
    "software",
    "alerts",
    "access_management",
    "asset_management",
    "object_storage",
    "saas_app_management",
    "notifications",
    "reports",
];

/// Characters of an Elasticsearch-like `_id` (URL-safe base64).
const DOC_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const DOC_ID_LEN: usize = 20;

/// A handle on a running stand-in; clones share the same server. The server stops when `shutdown` is called
/// or when the last clone is dropped.
#[derive(Clone)]
pub struct ApiStandIn {
    inner: Arc<Inner>,
}

struct Inner {
    server: Server,
    shared: Arc<Shared>,
}

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// The only `x-api-key` accepted.
    pub api_key: String,
    /// When set, `x-org-id` must carry exactly this value (as with a multi-tenant key).
    pub org_id: Option<String>,
    /// The largest `limit` honoured; a larger one falls back to the default silently.
    pub max_limit: usize,
    /// When set, `Authorization: Bearer <token>` from this token stand-in is accepted instead of the API
    /// key (a service account); `x-org-id` is then required, as JumpCloud requires it.
    pub tokens: Option<super::TokenStandIn>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            api_key: "demo-api-key".to_string(),
            org_id: None,
            max_limit: 10000,
            tokens: None,
        }
    }
}

/// One event as the stand-in serves it.
#[derive(Clone, Debug)]
pub struct ApiEvent {
    /// The JSON text served, byte for byte.
    pub raw: String,
    /// The event's `timestamp`, in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The event's `service`, used to filter.
    pub service: String,
    /// Until this moment the event is not served at all (imitates late indexing); `None`: visible at once.
    pub visible_at: Option<SystemTime>,
}

impl ApiEvent {
    /// Reads `timestamp` (RFC 3339, any precision) and `service` from the raw JSON text; visible_at None.
    pub fn from_raw(raw: impl Into<String>) -> Result<ApiEvent, String> {
        #[derive(Deserialize)]
        struct Fields {
            timestamp: Option<String>,
            service: Option<String>,
        }
        let raw = raw.into();
        let fields: Fields = serde_json::from_str(&raw)
            .map_err(|error| format!("event is not a JSON object: {error}"))?;
        let timestamp = fields
            .timestamp
            .ok_or_else(|| "event has no string field \"timestamp\"".to_string())?;
        let service = fields
            .service
            .ok_or_else(|| "event has no string field \"service\"".to_string())?;
        let timestamp_ns = parse_time_ns(&timestamp)
            .ok_or_else(|| format!("event timestamp {timestamp:?} is not an RFC 3339 time"))?;
        Ok(ApiEvent {
            raw,
            timestamp_ns,
            service,
            visible_at: None,
        })
    }
}

/// What to answer instead of the normal answer, once.
#[derive(Clone, Debug)]
pub enum ApiFault {
    /// Answered instead of the normal answer (`Retry-After` in seconds when given).
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// 200 with the normal headers, but the JSON body cut in the middle (Content-Length matches the cut body,
    /// so the client sees a complete HTTP answer whose JSON does not parse).
    TornBody,
    /// A full page (count == limit) with no X-Search_after header. When fewer events than the limit are
    /// available, `X-Limit` reports the number returned so that the page still looks full.
    FullPageWithoutCursor,
    /// Drop the connection without answering (the request body is read first).
    CloseConnection,
    /// Answer normally after this delay.
    Delay(Duration),
}

/// The sort key: (timestamp in milliseconds, doc id).
type SortKey = (i64, String);

struct Stored {
    raw: Bytes,
    service: String,
    visible_at: Option<SystemTime>,
}

struct Shared {
    options: ApiOptions,
    state: Mutex<State>,
    requests: AtomicU64,
    /// Events sent in answers to events requests (a benchmark's progress meter).
    served: AtomicU64,
}

struct State {
    api_key: String,
    events: BTreeMap<SortKey, Stored>,
    faults: VecDeque<ApiFault>,
    rng: fastrand::Rng,
}

impl Shared {
    /// A poisoned lock only means a test panicked elsewhere; the data is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ApiStandIn {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start(options: ApiOptions) -> std::io::Result<ApiStandIn> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                api_key: options.api_key.clone(),
                events: BTreeMap::new(),
                faults: VecDeque::new(),
                rng: fastrand::Rng::new(),
            }),
            options,
            requests: AtomicU64::new(0),
            served: AtomicU64::new(0),
        });
        let for_server = shared.clone();
        let server = Server::start(move |request| handle(for_server.clone(), request)).await?;
        Ok(ApiStandIn {
            inner: Arc::new(Inner { server, shared }),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.inner.server.base_url()
    }

    /// The address the stand-in listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.inner.server.addr()
    }

    /// Stores events; each gets a fresh doc id. Order of insertion does not matter.
    pub fn add_events(&self, events: impl IntoIterator<Item = ApiEvent>) {
        let mut state = self.inner.shared.lock();
        let state = &mut *state;
        for event in events {
            let ms = event.timestamp_ns.div_euclid(1_000_000);
            // 120 random bits make a collision practically impossible, but the key must be unique: check.
            let key = loop {
                let key = (ms, doc_id(&mut state.rng));
                if !state.events.contains_key(&key) {
                    break key;
                }
            };
            state.events.insert(
                key,
                Stored {
                    raw: Bytes::from(event.raw),
                    service: event.service,
                    visible_at: event.visible_at,
                },
            );
        }
    }

    /// FIFO; each fault replaces the answer to ONE later events request.
    pub fn push_fault(&self, fault: ApiFault) {
        self.inner.shared.lock().faults.push_back(fault);
    }

    /// Faults queued and not used yet.
    pub fn pending_faults(&self) -> usize {
        self.inner.shared.lock().faults.len()
    }

    /// Replaces the accepted API key, e.g. to revoke a key during a test.
    pub fn set_api_key(&self, key: &str) {
        self.inner.shared.lock().api_key = key.to_string();
    }

    /// Events requests received (including faulted ones); count requests are not included.
    pub fn requests(&self) -> u64 {
        self.inner.shared.requests.load(Ordering::Relaxed)
    }

    /// Events sent in the answers to events requests, repeats included (faulted answers count what they
    /// carried before the fault spoiled them).
    pub fn events_served(&self) -> u64 {
        self.inner.shared.served.load(Ordering::Relaxed)
    }

    /// Events stored, visible or not.
    pub fn event_count(&self) -> usize {
        self.inner.shared.lock().events.len()
    }

    /// Stops accepting connections; in-flight answers may finish.
    pub fn shutdown(&self) {
        self.inner.server.shutdown();
    }
}

/// A random 20-character id in the URL-safe base64 alphabet, like an Elasticsearch auto-generated `_id`.
fn doc_id(rng: &mut fastrand::Rng) -> String {
    (0..DOC_ID_LEN)
        .map(|_| char::from(DOC_ID_ALPHABET[rng.usize(..DOC_ID_ALPHABET.len())]))
        .collect()
}

/// Parses an RFC 3339 time into nanoseconds since the epoch.
fn parse_time_ns(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()?
        .timestamp_nanos_opt()
}

fn now_ns(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sort {
    Asc,
    Desc,
}

impl Sort {
    fn as_str(self) -> &'static str {
        match self {
            Sort::Asc => "ASC",
            Sort::Desc => "DESC",
        }
    }
}

/// A validated events (or count) request.
#[derive(Debug)]
struct Query {
    /// `None` means all services.
    services: Option<Vec<String>>,
    start_ms: i64,
    end_ms: Option<i64>,
    limit: usize,
    sort: Sort,
    search_after: Option<SortKey>,
}

/// Why a request is refused: status and message.
type Refusal = (StatusCode, String);

fn bad_request(message: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, message.into())
}

fn parse_query(body: &[u8], max_limit: usize, now: SystemTime) -> Result<Query, Refusal> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| bad_request(format!("invalid request body: {error}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad_request("invalid request body: expected a JSON object"))?;

    let services = match object.get("service") {
        None | Some(Value::Null) => return Err(bad_request("service is required")),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| bad_request("service must be an array of strings"))?;
                if name != "all" && !VALID_SERVICES.contains(&name) {
                    return Err(bad_request(format!(
                        "invalid service {name:?}; valid: all, {}",
                        VALID_SERVICES.join(", ")
                    )));
                }
                names.push(name.to_string());
            }
            names
        }
        Some(_) => return Err(bad_request("service must be a non-empty array of strings")),
    };
    let services = if services.iter().any(|name| name == "all") {
        None
    } else {
        Some(services)
    };

    let start_ns = match object.get("start_time") {
        None | Some(Value::Null) => return Err(bad_request("start_time is required")),
        Some(Value::String(text)) => parse_time_ns(text)
            .ok_or_else(|| bad_request(format!("start_time {text:?} is not an RFC 3339 time")))?,
        Some(_) => return Err(bad_request("start_time must be an RFC 3339 string")),
    };
    if start_ns > now_ns(now) {
        return Err(bad_request("start_time is in the future"));
    }

    let end_ns = match object.get("end_time") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            parse_time_ns(text)
                .ok_or_else(|| bad_request(format!("end_time {text:?} is not an RFC 3339 time")))?,
        ),
        Some(_) => return Err(bad_request("end_time must be an RFC 3339 string")),
    };
    if let Some(end_ns) = end_ns {
        if end_ns <= start_ns {
            return Err(bad_request(
                "Start Time not after End Time: end_time must be after start_time",
            ));
        }
    }

    // The real API silently replaces an invalid limit by its default: imitate, never refuse.
    let fallback = DEFAULT_LIMIT.min(max_limit).max(1);
    let limit = match object.get("limit").and_then(Value::as_u64) {
        Some(limit) if limit >= 1 && limit <= max_limit as u64 => limit as usize,
        _ => fallback,
    };

    let sort = match object.get("sort") {
        None | Some(Value::Null) => Sort::Asc,
        Some(Value::String(text)) if text.eq_ignore_ascii_case("ASC") => Sort::Asc,
        Some(Value::String(text)) if text.eq_ignore_ascii_case("DESC") => Sort::Desc,
        Some(_) => return Err(bad_request("sort must be \"ASC\" or \"DESC\"")),
    };

    let search_after = match object.get("search_after") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::Number(ms), Value::String(id)] => match ms.as_i64() {
                Some(ms) => Some((ms, id.clone())),
                None => {
                    return Err(bad_request(
                        "search_after: first element must be an integer",
                    ))
                }
            },
            _ => {
                return Err(bad_request(
                    "search_after must be copied from X-Search_after: [<ms>, \"<id>\"]",
                ))
            }
        },
        Some(_) => return Err(bad_request("search_after must be an array")),
    };

    Ok(Query {
        services,
        start_ms: start_ns.div_euclid(1_000_000),
        end_ms: end_ns.map(|ns| ns.div_euclid(1_000_000)),
        limit,
        sort,
        search_after,
    })
}

/// The bounds of the key range a query covers, or `None` when it is empty. `BTreeMap::range` panics on an
/// inverted range, so emptiness is decided here first.
fn key_range(query: &Query, paged: bool) -> Option<(Bound<SortKey>, Bound<SortKey>)> {
    // The empty string sorts before every doc id, so (ms, "") is the first key of a millisecond.
    let mut lower = Bound::Included((query.start_ms, String::new()));
    let mut upper = match query.end_ms {
        Some(end_ms) => Bound::Excluded((end_ms, String::new())),
        None => Bound::Unbounded,
    };
    if let (true, Some(after)) = (paged, &query.search_after) {
        match query.sort {
            Sort::Asc => {
                if *after >= (query.start_ms, String::new()) {
                    lower = Bound::Excluded(after.clone());
                }
            }
            Sort::Desc => {
                let tighter = match &upper {
                    Bound::Excluded(end) => after < end,
                    _ => true,
                };
                if tighter {
                    upper = Bound::Excluded(after.clone());
                }
            }
        }
    }
    let (low, low_excluded) = match &lower {
        Bound::Included(key) => (key, false),
        Bound::Excluded(key) => (key, true),
        Bound::Unbounded => return Some((lower, upper)),
    };
    let nonempty = match &upper {
        Bound::Unbounded => true,
        Bound::Excluded(high) => low < high,
        Bound::Included(high) => low < high || (low == high && !low_excluded),
    };
    nonempty.then_some((lower, upper))
}

fn matches(stored: &Stored, services: &Option<Vec<String>>, now: SystemTime) -> bool {
    let visible = match stored.visible_at {
        Some(at) => at <= now,
        None => true,
    };
    let wanted = match services {
        None => true,
        Some(names) => names.contains(&stored.service),
    };
    visible && wanted
}

/// One page: the raw texts and the sort key of the last one.
struct Page {
    raws: Vec<Bytes>,
    last: Option<SortKey>,
}

fn select_page(state: &State, query: &Query, now: SystemTime) -> Page {
    let mut page = Page {
        raws: Vec::new(),
        last: None,
    };
    let Some(range) = key_range(query, true) else {
        return page;
    };
    let iter = state.events.range(range);
    let mut push = |(key, stored): (&SortKey, &Stored)| {
        if page.raws.len() >= query.limit {
            return false;
        }
        if matches(stored, &query.services, now) {
            // Cloning `Bytes` only bumps a reference count: the big copy happens outside the lock.
            page.raws.push(stored.raw.clone());
            page.last = Some(key.clone());
        }
        page.raws.len() < query.limit
    };
    match query.sort {
        Sort::Asc => {
            for entry in iter {
                if !push(entry) {
                    break;
                }
            }
        }
        Sort::Desc => {
            for entry in iter.rev() {
                if !push(entry) {
                    break;
                }
            }
        }
    }
    page
}

fn count_events(state: &State, query: &Query, now: SystemTime) -> usize {
    match key_range(query, false) {
        Some(range) => state
            .events
            .range(range)
            .filter(|(_, stored)| matches(stored, &query.services, now))
            .count(),
        None => 0,
    }
}

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
    super::uuid_text(&mut shared.lock().rng)
}

fn with_request_id(mut response: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    let is_count = match path {
        EVENTS_PATH => false,
        COUNT_PATH => true,
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

    let fault = if is_count {
        None
    } else {
        shared.requests.fetch_add(1, Ordering::Relaxed);
        shared.lock().faults.pop_front()
    };

    let (parts, body) = request.into_parts();
    // Read the body before any answer, so that a client still writing it never sees a reset.
    let body = read_body(body, MAX_REQUEST_BYTES).await;

    match &fault {
        Some(ApiFault::Status {
            status,
            body,
            retry_after,
        }) => {
            let mut answer = json_answer(status_or_500(*status), body.clone());
            if let Some(seconds) = retry_after {
                answer
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(*seconds));
            }
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

    if let Err((status, message)) = check_auth(&shared, &parts.headers) {
        return Ok(with_request_id(message_answer(status, &message), &id));
    }

    let now = SystemTime::now();
    let query = match parse_query(&body, shared.options.max_limit, now) {
        Ok(query) => query,
        Err((status, message)) => {
            return Ok(with_request_id(message_answer(status, &message), &id))
        }
    };

    if is_count {
        let count = count_events(&shared.lock(), &query, now);
        let answer = json_answer(StatusCode::OK, format!("{{\"count\":{count}}}"));
        return Ok(with_request_id(answer, &id));
    }

    let page = select_page(&shared.lock(), &query, now);
    shared
        .served
        .fetch_add(page.raws.len() as u64, Ordering::Relaxed);
    Ok(with_request_id(
        page_answer(page, &query, fault.as_ref()),
        &id,
    ))
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
    match fault {
        Some(ApiFault::TornBody) => body.truncate(body.len() / 2),
        Some(ApiFault::FullPageWithoutCursor) => {
            cursor = None;
            limit = limit.min(count);
        }
        _ => {}
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::events::{format_timestamp, EventFactory};
    use crate::standin::test_http::{send, Reply};
    use serde_json::value::RawValue;
    use std::collections::HashSet;
    use std::time::Instant;

    const KEY: (&str, &str) = ("x-api-key", "demo-api-key");

    fn now_ns_test() -> i64 {
        now_ns(SystemTime::now())
    }

    async fn post(
        api: &ApiStandIn,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<Reply> {
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

        let body = serde_json::json!({"service": ["radius", "sso"], "start_time": format_timestamp(at(1))});
        let count = post(&api, COUNT_PATH, &[KEY], &body.to_string())
            .await
            .unwrap();
        assert_eq!(count.status, 200);
        assert_eq!(count.body_text(), "{\"count\":3}");
        assert_eq!(api.requests(), 1, "count requests are not events requests");
    }

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
            let reply = events(&api, serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "limit": limit})).await;
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

    #[tokio::test]
    async fn faults_replace_one_answer_each_in_order() {
        let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
        let now = now_ns_test();
        api.add_events(EventFactory::new(9).mix(10, now - 60_000_000_000, now - 1_000_000_000));
        let query =
            || serde_json::json!({"service": ["all"], "start_time": an_hour_ago(), "limit": 4});

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

    #[test]
    fn from_raw_reads_timestamp_and_service() {
        let event = ApiEvent::from_raw(
            r#"{"event_type":"sso_auth","service":"sso","id":"648b1e56c0b7fd51eb1d0938","timestamp":"2023-06-15T14:21:10.34334445Z"}"#,
        )
        .unwrap();
        assert_eq!(event.service, "sso");
        assert_eq!(event.timestamp_ns, 1_686_838_870_343_344_450);
        assert!(event.visible_at.is_none());
        let radius =
            ApiEvent::from_raw(r#"{"service":"radius","timestamp":"2023-06-15T15:16:41Z"}"#)
                .unwrap();
        assert_eq!(radius.timestamp_ns, 1_686_842_201_000_000_000);
        assert!(ApiEvent::from_raw("{").is_err());
        assert!(ApiEvent::from_raw(r#"{"service":"sso"}"#).is_err());
        assert!(ApiEvent::from_raw(r#"{"service":"sso","timestamp":"soon"}"#).is_err());
    }

    #[test]
    fn key_range_never_inverts() {
        let query = |search_after: Option<SortKey>, sort| Query {
            services: None,
            start_ms: 100,
            end_ms: Some(200),
            limit: 10,
            sort,
            search_after,
        };
        assert!(key_range(&query(Some((300, "a".into())), Sort::Asc), true).is_none());
        assert!(key_range(&query(Some((50, "a".into())), Sort::Desc), true).is_none());
        assert!(key_range(&query(Some((150, "a".into())), Sort::Asc), true).is_some());
        // Every case must be safe to hand to BTreeMap::range.
        let map: BTreeMap<SortKey, ()> = BTreeMap::new();
        for ms in [0, 100, 150, 199, 200, 300] {
            for sort in [Sort::Asc, Sort::Desc] {
                if let Some(range) = key_range(&query(Some((ms, String::new())), sort), true) {
                    assert_eq!(map.range(range).count(), 0);
                }
            }
        }
    }
}

#[cfg(test)]
mod throughput {
    //! Run with `cargo test --release --lib standin::jumpcloud::throughput -- --ignored --nocapture`.
    use super::*;
    use crate::standin::events::{format_timestamp, EventFactory};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measures throughput on a million events; run by hand in release"]
    async fn pull_a_million_events() {
        let api = ApiStandIn::start(ApiOptions::default()).await.unwrap();
        let now = now_ns(SystemTime::now());
        let started = std::time::Instant::now();
        let events =
            EventFactory::new(1).mix(1_000_000, now - 86_400_000_000_000, now - 1_000_000_000);
        println!("generated in {:?}", started.elapsed());
        let started = std::time::Instant::now();
        api.add_events(events);
        println!("added in {:?}", started.elapsed());

        // One keep-alive connection, as an agent would use.
        let mut stream = tokio::net::TcpStream::connect(api.local_addr())
            .await
            .unwrap();
        let start_time = format_timestamp(now - 2 * 86_400_000_000_000);
        let mut cursor: Option<String> = None;
        let (mut total, mut bytes, mut pages) = (0usize, 0usize, 0usize);
        let started = std::time::Instant::now();
        let mut buffer = Vec::new();
        loop {
            let body = match &cursor {
                Some(cursor) => format!(
                    r#"{{"service":["all"],"start_time":"{start_time}","limit":10000,"search_after":{cursor}}}"#
                ),
                None => {
                    format!(r#"{{"service":["all"],"start_time":"{start_time}","limit":10000}}"#)
                }
            };
            let request = format!(
                "POST {EVENTS_PATH} HTTP/1.1\r\nHost: x\r\nx-api-key: demo-api-key\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            // Read the head, then exactly Content-Length bytes.
            buffer.clear();
            let head_end = loop {
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
            let header = |name: &str| {
                head.lines().find_map(|line| {
                    line.strip_prefix(name)
                        .map(|v| v.trim_start_matches(':').trim().to_string())
                })
            };
            let length: usize = header("Content-Length").unwrap().parse().unwrap();
            while buffer.len() < head_end + length {
                let mut chunk = vec![0u8; 1 << 20];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buffer.extend_from_slice(&chunk[..n]);
            }
            let count: usize = header("X-Result-Count").unwrap().parse().unwrap();
            total += count;
            bytes += length;
            pages += 1;
            if count < 10000 {
                break;
            }
            cursor = header("X-Search_after");
        }
        let elapsed = started.elapsed();
        println!(
            "pulled {total} events ({} MB) in {pages} pages in {elapsed:?}: {:.0} events/s",
            bytes / 1_000_000,
            total as f64 / elapsed.as_secs_f64()
        );
        assert_eq!(total, 1_000_000);
    }
}

//! Stand-in of JumpCloud's Directory Insights API: `POST /insights/directory/v1/events`, `.../events/count`
//! and `.../events/interval`.
//!
//! This module owns the running stand-in's handle and state: the stored events, the queue of faults to
//! inject, the rate limiter and the API key; `query` decides what a request selects, `histogram` buckets
//! it, `handler` answers requests, `faults` spoils answers on demand, `rate` refuses requests that come too
//! fast. Invariants it keeps:
//! - events are kept sorted by (timestamp in milliseconds, doc id), the sort key the real API (Elasticsearch)
//!   pages on; within one millisecond the order is the doc id's, not the nanosecond timestamp's;
//! - every stored event has a doc id (20 characters, like an Elasticsearch `_id`) unique within its
//!   millisecond, so sort keys are unique and `search_after` never skips nor repeats an event;
//! - an answer's array elements are the events' raw texts byte for byte;
//! - with `ApiOptions::events_per_org`, a request sees only the events added for its `x-org-id`
//!   (`ApiStandIn::add_org_events`), and one without `x-org-id` only those added with `add_events`;
//! - each queued fault replaces the answer to exactly one events request (count and interval requests take
//!   none, nor does a request refused by the rate limit);
//! - `/events`, `/events/count` and `/events/interval` select events with the same code, so for one body
//!   they agree on which events exist (visibility included).
//!
//! The time range is compared at millisecond precision, as Elasticsearch does for a `date` field:
//! `start_time` and `end_time` are truncated to the millisecond, so every event of the start millisecond is
//! returned even if its nanosecond timestamp is a little before `start_time`.

mod faults;
mod handler;
mod histogram;
mod query;
mod rate;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::Server;
use query::{SortKey, Stored};
use rate::TokenBucket;

pub use super::data::ApiEvent;
pub use faults::ApiFault;
pub use query::VALID_SERVICES;
pub use rate::RateLimit;

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
    /// When set, `/events/count` and `/events/interval` answer this status instead of their result, to
    /// test a client's fallback: 404 (an API without these endpoints) is answered before authentication,
    /// any other status (403: a key not allowed to use them) after it. `/events` is not affected.
    pub refuse_aggregates: Option<u16>,
    /// When set, requests to any of the three endpoints that come faster than this get 429 (counted by
    /// `ApiStandIn::rate_limited`); `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// When set, each organization has its own events, as behind a multi-tenant key: a request sees only
    /// those added for its `x-org-id` with `ApiStandIn::add_org_events` (none for an organization never
    /// given any), and a request without `x-org-id` those added with `add_events`. When unset, every
    /// request sees the events of `add_events`, whatever its `x-org-id`.
    pub events_per_org: bool,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            api_key: "demo-api-key".to_string(),
            org_id: None,
            max_limit: 10000,
            tokens: None,
            refuse_aggregates: None,
            rate_limit: None,
            events_per_org: false,
        }
    }
}

struct Shared {
    options: ApiOptions,
    state: Mutex<State>,
    requests: AtomicU64,
    /// Events sent in answers to events requests (a benchmark's progress meter).
    served: AtomicU64,
    count_requests: AtomicU64,
    interval_requests: AtomicU64,
    /// Requests answered 429 by the rate limiter (not by a queued `ApiFault::Status`).
    rate_limited: AtomicU64,
}

struct State {
    api_key: String,
    events: BTreeMap<SortKey, Stored>,
    /// The events of each organization, by `x-org-id` (used with `ApiOptions::events_per_org` only).
    orgs: HashMap<String, BTreeMap<SortKey, Stored>>,
    faults: VecDeque<ApiFault>,
    rng: fastrand::Rng,
    /// Present when `ApiOptions::rate_limit` is set.
    bucket: Option<TokenBucket>,
    /// The `limit` of each events request answered with a page, in order.
    limits: Vec<usize>,
}

/// What an organization given no events sees.
static NO_EVENTS: BTreeMap<SortKey, Stored> = BTreeMap::new();

impl State {
    /// The events a request with this `x-org-id` may see (see `ApiOptions::events_per_org`).
    fn events_of(&self, per_org: bool, org_id: Option<&[u8]>) -> &BTreeMap<SortKey, Stored> {
        match (per_org, org_id) {
            (true, Some(org_id)) => std::str::from_utf8(org_id)
                .ok()
                .and_then(|org_id| self.orgs.get(org_id))
                .unwrap_or(&NO_EVENTS),
            _ => &self.events,
        }
    }
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
                orgs: HashMap::new(),
                faults: VecDeque::new(),
                limits: Vec::new(),
                rng: fastrand::Rng::new(),
                bucket: options
                    .rate_limit
                    .clone()
                    .map(|limit| TokenBucket::new(limit, Instant::now())),
            }),
            options,
            requests: AtomicU64::new(0),
            served: AtomicU64::new(0),
            count_requests: AtomicU64::new(0),
            interval_requests: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        });
        let for_server = shared.clone();
        let server =
            Server::start(move |request| handler::handle(for_server.clone(), request)).await?;
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
        store(&mut state.events, &mut state.rng, events);
    }

    /// Stores events of the organization `org_id`, seen only by requests with that `x-org-id` when
    /// `ApiOptions::events_per_org` is set (never seen otherwise).
    pub fn add_org_events(&self, org_id: &str, events: impl IntoIterator<Item = ApiEvent>) {
        let mut state = self.inner.shared.lock();
        let state = &mut *state;
        let org = state.orgs.entry(org_id.to_string()).or_default();
        store(org, &mut state.rng, events);
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

    /// Events requests received (including faulted and rate-limited ones); count and interval requests
    /// are not included.
    pub fn requests(&self) -> u64 {
        self.inner.shared.requests.load(Ordering::Relaxed)
    }

    /// `POST .../events/count` requests received, whatever their answer.
    pub fn count_requests(&self) -> u64 {
        self.inner.shared.count_requests.load(Ordering::Relaxed)
    }

    /// `POST .../events/interval` requests received, whatever their answer.
    pub fn interval_requests(&self) -> u64 {
        self.inner.shared.interval_requests.load(Ordering::Relaxed)
    }

    /// The `limit` (page size) each events request answered with a page asked for, in order.
    pub fn limits_asked(&self) -> Vec<usize> {
        self.inner.shared.lock().limits.clone()
    }

    /// Requests answered 429 because they came faster than `ApiOptions::rate_limit` allows.
    pub fn rate_limited(&self) -> u64 {
        self.inner.shared.rate_limited.load(Ordering::Relaxed)
    }

    /// Events sent in the answers to events requests, repeats included (faulted answers count what they
    /// carried before the fault spoiled them).
    pub fn events_served(&self) -> u64 {
        self.inner.shared.served.load(Ordering::Relaxed)
    }

    /// Events stored, visible or not (every organization's included).
    pub fn event_count(&self) -> usize {
        let state = self.inner.shared.lock();
        state.events.len() + state.orgs.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Stops accepting connections; in-flight answers may finish.
    pub fn shutdown(&self) {
        self.inner.server.shutdown();
    }
}

/// Adds `events` to `events_map`; each gets a doc id unique within its millisecond there.
fn store(
    events_map: &mut BTreeMap<SortKey, Stored>,
    rng: &mut fastrand::Rng,
    events: impl IntoIterator<Item = ApiEvent>,
) {
    for event in events {
        let ms = event.timestamp_ns.div_euclid(1_000_000);
        // 120 random bits make a collision practically impossible, but the key must be unique: check.
        let key = loop {
            let key = (ms, doc_id(rng));
            if !events_map.contains_key(&key) {
                break key;
            }
        };
        events_map.insert(
            key,
            Stored {
                raw: Bytes::from(event.raw),
                service: event.service,
                visible_at: event.visible_at,
            },
        );
    }
}

/// A random 20-character id in the URL-safe base64 alphabet, like an Elasticsearch auto-generated `_id`.
fn doc_id(rng: &mut fastrand::Rng) -> String {
    (0..DOC_ID_LEN)
        .map(|_| char::from(DOC_ID_ALPHABET[rng.usize(..DOC_ID_ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod throughput;

//! One request to JumpCloud's Directory Insights API and the page it returns.
//!
//! Invariants:
//! - Each event's bytes are kept exactly as received (see [`page`](super::page)), and only JSON objects
//!   are events: nothing else is ever queued, so nothing that is not an event is ever sent as one.
//! - An unusable answer (not a JSON array, inconsistent headers, or elements that are not objects) is asked
//!   again with backoff, up to [`UNUSABLE_TRIES`] times, each time logged with what was wrong. Then:
//!   - a JSON array whose only fault is elements that are not objects is used: its events are collected
//!     and collection goes on with its real `X-Search_after`; the other elements are kept in the
//!     dead-letter store (with the reason, the request id and the query) and logged;
//!   - anything else is kept in the dead-letter store once and is a [`FetchError::Transient`]: nothing is
//!     advanced, and the poll asks again with backoff (never skipping a page it could not read).
//! - An answer larger than `max_response_bytes` is refused unread (by its `Content-Length`) or cut off where
//!   it passes the limit: a [`FetchError::Rejected`] that names the setting.
//! - 400/401/403 are [`FetchError::Rejected`] with a message that names the likely cause and the setting to fix.
//! - A service account's request that gets 401 is sent once more with a new token before it counts as
//!   rejected (the token may have been revoked or expired early).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{JumpcloudAuth, JumpcloudConfig};
use crate::event::IncomingEvent;
use crate::http::{HttpClient, HttpError, Response, Streaming};
use crate::queue::{QueueError, KEPT_ANSWER_MAX_BYTES};
use crate::retry::{Backoffs, RetryConfig};

pub use super::error::FetchError;
use super::oauth::TokenSource;
use super::page::{self, Judged, PageReader};
pub use super::recorder::Recorder;
use super::recorder::Unusable;
use super::scan::SpareBlocks;

pub const EVENTS_PATH: &str = "/insights/directory/v1/events";

/// How many times one request is asked while its answer is unusable, before it is given up on (kept in
/// the dead-letter store; see the module's invariants).
pub const UNUSABLE_TRIES: u32 = 5;

/// The request body; `search_after` is the previous page's header, copied verbatim.
#[derive(Clone, Debug, Serialize)]
pub struct EventsQuery<'a> {
    pub service: &'a [String],
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    pub limit: u32,
    pub sort: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_after: Option<&'a RawValue>,
}

/// One page of events.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<IncomingEvent>,
    /// True when the server may hold more events after this page (`X-Result-Count == X-Limit`).
    pub full: bool,
    /// The `X-Search_after` header, for the next request of the same poll.
    pub search_after: Option<Box<RawValue>>,
    pub request_id: Option<String>,
}

/// Where [`ApiClient::fetch_streamed`] hands the parts of a page read before its end.
pub trait PartSink: Send {
    /// Takes a part: events as received, to be queued without moving the cursor.
    fn part(
        &mut self,
        events: Vec<IncomingEvent>,
    ) -> impl std::future::Future<Output = Result<(), QueueError>> + Send;
}

/// Keeps the parts, for [`ApiClient::fetch`].
struct Collect(Vec<IncomingEvent>);

impl PartSink for Collect {
    async fn part(&mut self, events: Vec<IncomingEvent>) -> Result<(), QueueError> {
        self.0.extend(events);
        Ok(())
    }
}

/// Talks to one JumpCloud endpoint with one key or service account.
#[derive(Clone)]
pub struct ApiClient {
    http: HttpClient,
    url: String,
    /// `x-api-key` (API keys) and `x-org-id`.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The service account's tokens, when it authenticates with one.
    tokens: Option<Arc<TokenSource>>,
    /// The section to fix in messages (`jumpcloud`, `streams.acme`).
    section: String,
    timeout: Duration,
    /// The backoff between tries of an unusable answer, and the least time between two requests.
    retry: RetryConfig,
    min_request_interval: Duration,
    max_response_bytes: u64,
    recorder: Recorder,
    /// The buffers pages are read into, kept from one page to the next while they follow one another.
    blocks: Arc<SpareBlocks>,
}

impl ApiClient {
    pub fn new(http: HttpClient, config: &JumpcloudConfig) -> Result<ApiClient, String> {
        let section = &config.section;
        let mut headers = Vec::new();
        let mut tokens = None;
        match &config.auth {
            JumpcloudAuth::ApiKey(api_key) => {
                let mut key = HeaderValue::from_str(api_key.expose()).map_err(|_| {
                    format!("{section}.api_key has characters a header cannot carry")
                })?;
                key.set_sensitive(true);
                headers.push((HeaderName::from_static("x-api-key"), key));
            }
            JumpcloudAuth::ServiceAccount {
                client_id,
                client_secret,
                token_url,
            } => {
                tokens = Some(Arc::new(TokenSource::new(
                    http.clone(),
                    client_id,
                    client_secret,
                    token_url,
                    section,
                    config.request_timeout,
                )?));
            }
            JumpcloudAuth::Missing => {
                return Err(format!(
                    "{section} has no api_key nor client_id/client_secret"
                ))
            }
        }
        if let Some(org) = &config.org_id {
            let org = HeaderValue::from_str(org).map_err(|_| {
                format!("{section}.org_id = {org:?} has characters a header cannot carry")
            })?;
            headers.push((HeaderName::from_static("x-org-id"), org));
        }
        Ok(ApiClient {
            http,
            url: format!("{}{EVENTS_PATH}", config.base_url),
            headers,
            tokens,
            section: section.clone(),
            timeout: config.request_timeout,
            retry: config.retry,
            min_request_interval: config.min_request_interval,
            max_response_bytes: config.max_response_bytes,
            recorder: Recorder::default(),
            blocks: Arc::default(),
        })
    }

    /// This client reads pages into the buffers `blocks` keeps, shared with the other clients given it
    /// (an agent's streams): what is kept does not grow with the number of streams.
    pub fn sharing_blocks(mut self, blocks: Arc<SpareBlocks>) -> ApiClient {
        self.blocks = blocks;
        self
    }

    /// This client reports to `recorder`: its unusable answers are kept, its events without a timestamp
    /// counted under its stream.
    pub fn recording(mut self, recorder: Recorder) -> ApiClient {
        self.recorder = recorder;
        self
    }

    /// Sends one query and returns the page, checked for completeness; an unusable answer is asked again
    /// (see the module's invariants). The whole page is held in memory: see [`ApiClient::fetch_streamed`].
    pub async fn fetch(&self, query: &EventsQuery<'_>, now_ns: i64) -> Result<Page, FetchError> {
        let mut collected = Collect(Vec::new());
        let mut page = self.fetch_streamed(query, now_ns, &mut collected).await?;
        collected.0.append(&mut page.events);
        page.events = collected.0;
        Ok(page)
    }

    /// [`ApiClient::fetch`] that hands the page's events to `early` in parts
    /// ([`page::PART_EVENTS`]) while the rest of the answer is still coming, so that memory does not grow
    /// with the page size; the returned page holds the events after the last part. Parts are handed out
    /// before the answer is known to be usable: they are events as received (each a valid JSON object),
    /// to be queued without moving the cursor; an answer asked again hands its events out again.
    pub async fn fetch_streamed(
        &self,
        query: &EventsQuery<'_>,
        now_ns: i64,
        early: &mut impl PartSink,
    ) -> Result<Page, FetchError> {
        let body = Bytes::from(
            serde_json::to_vec(query).map_err(|err| FetchError::Transient {
                reason: format!("cannot encode the query: {err}"),
                retry_after: None,
            })?,
        );
        let mut backoffs = Backoffs::new(self.retry);
        let mut tries = 0;
        let mut last_problem: Option<String> = None;
        loop {
            tries += 1;
            let asked = Instant::now();
            let mut answer = self.post(&self.url, body.clone()).await?;
            let request_id = answer
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if !answer.status.is_success() {
                let response = answer
                    .read_all()
                    .await
                    .map_err(|err| self.unanswered(&self.url, err))?;
                return Err(classify_failure(
                    &response,
                    &self.url,
                    request_id.as_deref(),
                    &self.section,
                    self.tokens.is_some(),
                ));
            }
            let mut reader = PageReader::with_blocks(
                &answer.headers,
                now_ns,
                KEPT_ANSWER_MAX_BYTES,
                self.blocks.take(),
            );
            while !reader.faulty() {
                let Some(piece) = answer
                    .next_piece()
                    .await
                    .map_err(|err| self.unanswered(&self.url, err))?
                else {
                    break;
                };
                reader.push(&piece);
                if let Some(part) = reader.take_part() {
                    let queueing = Instant::now();
                    early.part(part).await?;
                    answer.paused(queueing.elapsed());
                }
            }
            let (judged, head, blocks) = reader.finish_with_blocks();
            // A full page is followed at once by the next one (catching up), which reads into the same
            // buffers; after the last, the next page is a poll interval away and they are let go.
            match &judged {
                Ok(page) if page.full => self.blocks.keep(blocks),
                _ => self.blocks.release(),
            }
            let problem = match judged {
                Ok(page) if page.not_events.is_none() => {
                    // A page of events and nothing else.
                    self.recorder.usable();
                    return Ok(self.page(page, request_id));
                }
                Ok(page)
                    if page
                        .not_events
                        .as_ref()
                        .is_some_and(|(_, values)| self.recorder.seen_aside(values)) =>
                {
                    // Values already given up on and kept (the overlap window reads pages again).
                    tracing::debug!(stream = %self.recorder.stream(), "values that are not events, already kept, set aside again");
                    self.recorder.usable();
                    return Ok(self.page(page, request_id));
                }
                Ok(ref page) => format!(
                    "{} of its values are not events (JSON objects)",
                    page.not_events.as_ref().map_or(0, |(count, _)| *count)
                ),
                Err(ref unusable) => unusable.0.clone(),
            };
            let request = request_id.as_deref().unwrap_or("-");
            if tries < UNUSABLE_TRIES {
                let wait = backoffs.transient_wait(None).max(self.min_request_interval);
                // Each new problem is logged; the same one asked again only at debug level.
                if last_problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(stream = %self.recorder.stream(), request_id = request, retry_in = ?wait,
                        "JumpCloud sent an unusable page ({problem}): asking again (try {tries} of {UNUSABLE_TRIES})");
                } else {
                    tracing::debug!(stream = %self.recorder.stream(), request_id = request, retry_in = ?wait,
                        "JumpCloud sent an unusable page again ({problem}): asking again (try {tries} of {UNUSABLE_TRIES})");
                }
                self.recorder.asked_again(asked.elapsed());
                last_problem = Some(problem);
                tokio::time::sleep(wait).await;
                continue;
            }
            return self
                .give_up(
                    judged,
                    &problem,
                    &body,
                    (&head.bytes(), head.received),
                    request_id,
                )
                .await;
        }
    }

    /// [`ApiClient::post`], with the whole answer read (small answers: counts, histograms, errors).
    async fn post_whole(&self, url: &str, body: Bytes) -> Result<Response, FetchError> {
        self.post(url, body)
            .await?
            .read_all()
            .await
            .map_err(|err| self.unanswered(url, err))
    }

    /// The request failed before a status or while its body was read.
    fn unanswered(&self, url: &str, err: HttpError) -> FetchError {
        match err {
            HttpError::TooLarge { .. } => FetchError::Rejected(format!(
                "JumpCloud's answer to {url} is larger than {section}.max_response_bytes ({err}): \
                 if its pages really are this large, raise {section}.max_response_bytes, or lower \
                 {section}.page_size and {section}.catch_up_page_size",
                section = self.section
            )),
            err => FetchError::Transient {
                reason: format!("JumpCloud API at {url} did not answer: {err}"),
                retry_after: None,
            },
        }
    }

    /// After [`UNUSABLE_TRIES`] unusable answers to one request: uses the page when only values that are
    /// not events are wrong (they are kept), else keeps the answer and fails (the poll asks again later).
    async fn give_up(
        &self,
        judged: Result<Judged, page::Unusable>,
        problem: &str,
        query: &[u8],
        (answer, answer_bytes): (&[u8], u64),
        request_id: Option<String>,
    ) -> Result<Page, FetchError> {
        let request = request_id.as_deref().unwrap_or("-");
        match judged {
            Ok(mut page) => {
                let (count, values) = page.not_events.take().unwrap_or_default();
                let kept = self
                    .recorder
                    .keep(
                        Unusable {
                            reason: problem,
                            request_id: request_id.as_deref(),
                            query,
                            body: values.as_bytes(),
                            total_bytes: values.len() as u64,
                        },
                        true,
                    )
                    .await;
                tracing::warn!(stream = %self.recorder.stream(), request_id = request, not_events = count,
                    events = page.events.len(),
                    "JumpCloud's page held {count} values that are not events (JSON objects), {UNUSABLE_TRIES} \
                     times in a row: they are never sent; {kept}; the page's events are collected and \
                     collection goes on");
                self.recorder.usable();
                Ok(self.page(page, request_id))
            }
            Err(_) => {
                let kept = self
                    .recorder
                    .keep(
                        Unusable {
                            reason: problem,
                            request_id: request_id.as_deref(),
                            query,
                            body: answer,
                            total_bytes: answer_bytes,
                        },
                        false,
                    )
                    .await;
                Err(FetchError::Transient {
                    reason: format!(
                        "JumpCloud sent an unusable page ({problem}), {UNUSABLE_TRIES} times in a row for the \
                         same request (last request id {request}): {kept}; nothing is skipped, asking again"
                    ),
                    retry_after: None,
                })
            }
        }
    }

    fn page(&self, judged: Judged, request_id: Option<String>) -> Page {
        self.recorder.untimed(&judged.untimed);
        Page {
            events: judged.events,
            full: judged.full,
            search_after: judged.search_after,
            request_id,
        }
    }

    /// POSTs `body` with the stream's credentials; the answer's body is still to read. A service account's
    /// request refused with 401 is sent once more with a new token.
    async fn post(&self, url: &str, body: Bytes) -> Result<Streaming, FetchError> {
        let mut renewed = false;
        loop {
            let mut headers = self.headers.clone();
            let bearer = match &self.tokens {
                Some(tokens) => {
                    let bearer = tokens.bearer().await?;
                    headers.push((http::header::AUTHORIZATION, bearer.clone()));
                    Some(bearer)
                }
                None => None,
            };
            let response = self
                .http
                .post_streamed(
                    url,
                    "application/json",
                    &headers,
                    body.clone(),
                    self.timeout,
                    self.max_response_bytes,
                )
                .await
                .map_err(|err| self.unanswered(url, err))?;
            match (&self.tokens, bearer) {
                (Some(tokens), Some(bearer))
                    if response.status == StatusCode::UNAUTHORIZED && !renewed =>
                {
                    tracing::info!(section = %self.section, "JumpCloud refused the service account's token (401): getting a new one");
                    tokens.refused(&bearer).await;
                    renewed = true;
                }
                _ => return Ok(response),
            }
        }
    }
}

impl ApiClient {
    /// How many events match `query` (`POST .../events/count`), for progress and backfill sizing.
    pub async fn count(&self, query: &EventsQuery<'_>) -> Result<u64, FetchError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let body = serde_json::to_vec(query).map_err(|err| FetchError::Transient {
            reason: format!("cannot encode the query: {err}"),
            retry_after: None,
        })?;
        let url = format!("{}/count", self.url);
        let response = self.post_whole(&url, Bytes::from(body)).await?;
        if !response.status.is_success() {
            let request_id = response.header("x-request-id").map(str::to_string);
            return Err(classify_failure(
                &response,
                &url,
                request_id.as_deref(),
                &self.section,
                self.tokens.is_some(),
            ));
        }
        serde_json::from_slice::<Count>(&response.body)
            .map(|c| c.count)
            .map_err(|err| FetchError::Transient {
                reason: format!("JumpCloud sent an unusable count: {err}"),
                retry_after: None,
            })
    }
}

fn classify_failure(
    response: &Response,
    url: &str,
    request_id: Option<&str>,
    section: &str,
    service_account: bool,
) -> FetchError {
    let status = response.status;
    let said = response.body_excerpt();
    let request = request_id
        .map(|id| format!(", request id {id}"))
        .unwrap_or_default();
    let credential = if service_account {
        format!("{section}.client_id and {section}.client_secret (is the service account still allowed to read Directory Insights?)")
    } else if section == "jumpcloud" {
        "jumpcloud.api_key (JUMPCLOUD_API_KEY)".to_string()
    } else {
        format!("{section}.api_key")
    };
    let reason = match status {
        StatusCode::UNAUTHORIZED => format!(
            "JumpCloud rejected the {} (401 Unauthorized{request}): check {credential} and, for a \
             multi-tenant key, {section}.org_id; the server said: {said}",
            if service_account { "service account's token" } else { "API key" }
        ),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            return FetchError::Throttled {
                reason: format!(
                    "JumpCloud asks for fewer requests ({status}{request}): slowing down; the server said: {said}"
                ),
                retry_after: response.retry_after(),
            }
        }
        StatusCode::FORBIDDEN if says_blocked(&said) => {
            return FetchError::Throttled {
                reason: format!(
                    "JumpCloud blocked the caller for a while (403 Forbidden{request}): slowing down; the \
                     server said: {said}"
                ),
                retry_after: response.retry_after(),
            }
        }
        StatusCode::FORBIDDEN => format!(
            "JumpCloud refused access (403 Forbidden{request}): the credentials must be an administrator's, and \
             {section}.org_id must name an organization they manage; the server said: {said}"
        ),
        StatusCode::BAD_REQUEST => format!(
            "JumpCloud refused the query (400 Bad Request{request}): check {section}.services (a misspelt \
             service name?), {section}.org_id and the clock of this host; the server said: {said}"
        ),
        _ => {
            return FetchError::Transient {
                reason: format!("JumpCloud API answered {status} for {url}{request}: {said}"),
                retry_after: response.retry_after(),
            }
        }
    };
    FetchError::Rejected(reason)
}

/// Whether a 403's body says the caller is throttled rather than not allowed (rate limiting in front of
/// the API answers 403 with such words).
fn says_blocked(said: &str) -> bool {
    let said = said.to_ascii_lowercase();
    [
        "rate limit",
        "too many requests",
        "throttl",
        "temporarily blocked",
    ]
    .iter()
    .any(|words| said.contains(words))
}

// The late check's requests (`source::late`): a date histogram of a window, and the count of a range.

/// The body of `POST .../events/interval`: the filters of `/events` and the width of the buckets.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalQuery<'a> {
    pub service: &'a [String],
    pub start_time: String,
    pub end_time: String,
    /// One of `s m h d w`.
    pub interval_unit: &'static str,
    /// A positive integer, written as a string (as JumpCloud wants it).
    pub interval_value: String,
}

/// One bucket of a histogram: the events from `key_ms` (its start, epoch milliseconds) for one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub key_ms: i64,
    pub doc_count: u64,
}

/// Why a count or histogram request gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// 400, 403 or 404: this API (or this key) does not offer the request; asking again will not help soon.
    #[error("JumpCloud answered {status} to .../events{path}: {said}")]
    Refused {
        status: u16,
        path: &'static str,
        said: String,
    },
    /// Anything else (401, 429, 5xx, no answer, an unusable body): it may work next time.
    #[error(transparent)]
    Failed(#[from] FetchError),
}

impl ApiClient {
    /// How many events each interval of the query's window holds (`POST .../events/interval`), as the
    /// API lists them: ascending keys; intervals it does not list hold none.
    pub async fn interval(&self, query: &IntervalQuery<'_>) -> Result<Vec<Bucket>, AggregateError> {
        #[derive(Deserialize)]
        struct Answer {
            buckets: Vec<RawBucket>,
        }
        #[derive(Deserialize)]
        struct RawBucket {
            // Elasticsearch writes the key as an integer; a float (1.7e12) is read too.
            key: serde_json::Number,
            doc_count: u64,
        }
        let body = self.aggregate("/interval", query).await?;
        let unusable = |what: String| {
            AggregateError::Failed(FetchError::Transient {
                reason: format!("JumpCloud sent an unusable histogram ({what})"),
                retry_after: None,
            })
        };
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|err| unusable(err.to_string()))?;
        answer
            .buckets
            .into_iter()
            .map(|bucket| {
                let key_ms = bucket
                    .key
                    .as_i64()
                    .or_else(|| bucket.key.as_f64().map(|f| f as i64))
                    .ok_or_else(|| unusable(format!("bucket key {}", bucket.key)))?;
                Ok(Bucket {
                    key_ms,
                    doc_count: bucket.doc_count,
                })
            })
            .collect()
    }

    /// How many events the query selects (`POST .../events/count`), telling a refusal (400/403/404) from
    /// a passing failure.
    pub async fn count_range(&self, query: &EventsQuery<'_>) -> Result<u64, AggregateError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let body = self.aggregate("/count", query).await?;
        serde_json::from_slice::<Count>(&body)
            .map(|c| c.count)
            .map_err(|err| {
                AggregateError::Failed(FetchError::Transient {
                    reason: format!("JumpCloud sent an unusable count: {err}"),
                    retry_after: None,
                })
            })
    }

    /// POSTs `query` to `EVENTS_PATH + path` and returns the body of a 2xx answer.
    async fn aggregate(
        &self,
        path: &'static str,
        query: &impl Serialize,
    ) -> Result<Bytes, AggregateError> {
        let body = serde_json::to_vec(query).map_err(|err| FetchError::Transient {
            reason: format!("cannot encode the query: {err}"),
            retry_after: None,
        })?;
        let url = format!("{}{path}", self.url);
        let response = self.post_whole(&url, Bytes::from(body)).await?;
        let status = response.status;
        if status.is_success() {
            return Ok(response.body);
        }
        if matches!(status.as_u16(), 400 | 403 | 404) {
            return Err(AggregateError::Refused {
                status: status.as_u16(),
                path,
                said: response.body_excerpt(),
            });
        }
        let request_id = response.header("x-request-id").map(str::to_string);
        Err(AggregateError::Failed(classify_failure(
            &response,
            &url,
            request_id.as_deref(),
            &self.section,
            self.tokens.is_some(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{format_rfc3339_ns, now_ns};
    use crate::config::Config;
    use crate::standin::{ApiOptions, ApiStandIn, EventFactory};

    #[tokio::test]
    async fn read_buffers_are_kept_while_pages_follow_one_another_and_let_go_after_the_last() {
        let api = ApiStandIn::start(ApiOptions::default())
            .await
            .expect("stand-in");
        let now = now_ns();
        let hour = 3_600_000_000_000;
        api.add_events(EventFactory::new(7).mix(3000, now - hour, now - 1_000_000_000));
        let text = format!(
            "[jumpcloud]\nbase_url = \"{}\"\napi_key = \"demo-api-key\"\n[sekoia]\nintake_key = \"i\"\n",
            api.base_url()
        );
        let config = Config::parse(&text, "t", &|_| None).expect("valid").config;
        let blocks = Arc::new(SpareBlocks::default());
        let http = HttpClient::new(Duration::from_secs(5)).expect("client");
        let client = ApiClient::new(http, &config.streams[0].jumpcloud)
            .expect("client")
            .sharing_blocks(blocks.clone());
        let services = vec!["all".to_string()];
        let query = |search_after| EventsQuery {
            service: &services,
            start_time: format_rfc3339_ns(now - 2 * hour),
            end_time: None,
            limit: 2000,
            sort: "ASC",
            search_after,
        };

        let first = client.fetch(&query(None), now).await.expect("a page");
        assert!(first.full);
        assert_eq!(first.events.len(), 2000);
        assert!(
            !blocks.is_empty(),
            "a full page's buffers are kept for the next page"
        );
        let second = client
            .fetch(&query(first.search_after.as_deref()), now)
            .await
            .expect("the rest");
        assert!(!second.full);
        assert_eq!(second.events.len(), 1000);
        assert!(blocks.is_empty(), "the last page's buffers are let go");
        // The events of both pages are whole and distinct: reading into kept buffers changed none.
        let ids: std::collections::HashSet<_> = first
            .events
            .iter()
            .chain(&second.events)
            .map(|event| {
                serde_json::from_slice::<serde_json::Value>(&event.raw).expect("an event is JSON");
                event.key
            })
            .collect();
        assert_eq!(ids.len(), 3000);
    }
}

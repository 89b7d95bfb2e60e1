//! One request to JumpCloud's Directory Insights API and the page it returns.
//!
//! Invariants:
//! - Each event's bytes are kept exactly as received (the array elements are sliced, never re-serialized),
//!   so `\u003c` stays `\u003c`.
//! - A page is accepted only if it is complete and consistent: valid JSON, as many events as
//!   `X-Result-Count` says, and a `X-Search_after` cursor when the page is full. Anything else is a
//!   [`FetchError::Transient`] and nothing is advanced.
//! - 400/401/403 are [`FetchError::Rejected`] with a message that names the likely cause and the setting to fix.
//! - A service account's request that gets 401 is sent once more with a new token before it counts as
//!   rejected (the token may have been revoked or expired early).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{JumpcloudAuth, JumpcloudConfig};
use crate::event::IncomingEvent;
use crate::http::{HttpClient, HttpError, Response};

pub use super::error::FetchError;
use super::oauth::TokenSource;

pub const EVENTS_PATH: &str = "/insights/directory/v1/events";

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
        })
    }

    /// Sends one query and returns the page, checked for completeness.
    pub async fn fetch(&self, query: &EventsQuery<'_>, now_ns: i64) -> Result<Page, FetchError> {
        let body = Bytes::from(
            serde_json::to_vec(query).map_err(|err| FetchError::Transient {
                reason: format!("cannot encode the query: {err}"),
                retry_after: None,
            })?,
        );
        let response = self.post(&self.url, body).await?;
        let request_id = response.header("x-request-id").map(str::to_string);
        if !response.status.is_success() {
            return Err(classify_failure(
                &response,
                &self.url,
                request_id.as_deref(),
                &self.section,
                self.tokens.is_some(),
            ));
        }
        parse_page(&response, now_ns).map(|(events, full, search_after)| Page {
            events,
            full,
            search_after,
            request_id,
        })
    }

    /// POSTs `body` with the stream's credentials. A service account's request refused with 401 is sent
    /// once more with a new token.
    async fn post(&self, url: &str, body: Bytes) -> Result<Response, FetchError> {
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
                .post_json(url, &headers, body.clone(), self.timeout)
                .await
                .map_err(|err: HttpError| FetchError::Transient {
                    reason: format!("JumpCloud API at {url} did not answer: {err}"),
                    retry_after: None,
                })?;
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
        let response = self.post(&url, Bytes::from(body)).await?;
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

type ParsedPage = (Vec<IncomingEvent>, bool, Option<Box<RawValue>>);

fn parse_page(response: &Response, now_ns: i64) -> Result<ParsedPage, FetchError> {
    let torn = |what: String| FetchError::Transient {
        reason: format!("JumpCloud sent an unusable page ({what}); asking again"),
        retry_after: None,
    };
    let elements: Vec<&RawValue> = serde_json::from_slice(&response.body)
        .map_err(|err| torn(format!("not a JSON array of events: {err}")))?;
    let header_number = |name: &str| {
        response
            .header(name)
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let count = header_number("x-result-count").unwrap_or(elements.len());
    if count != elements.len() {
        return Err(torn(format!(
            "X-Result-Count says {count}, the body holds {}",
            elements.len()
        )));
    }
    let full = header_number("x-limit").is_some_and(|limit| count >= limit && count > 0);
    let search_after = match response.header("x-search_after") {
        Some(text) if !text.trim().is_empty() => Some(
            RawValue::from_string(text.trim().to_string())
                .map_err(|err| torn(format!("X-Search_after is not JSON: {err}")))?,
        ),
        _ => None,
    };
    if full && search_after.is_none() {
        return Err(torn("a full page without X-Search_after".to_string()));
    }
    let events = elements
        .into_iter()
        .map(|element| {
            let text = element.get();
            // The element borrows from the body: share the body's buffer instead of copying the text.
            IncomingEvent::from_shared(text, response.body.slice_ref(text.as_bytes()), now_ns)
        })
        .collect();
    Ok((events, full, search_after))
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
        let response = self.post(&url, Bytes::from(body)).await?;
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

//! The source: a poller per JumpCloud stream, which pulls Directory Insights events page by page and
//! commits each page to the queue together with its cursor.
//!
//! The cursor is a *watermark*: every event with a timestamp below it, indexed by the time it was read, is
//! queued. Each poll starts at `watermark - overlap`, so events JumpCloud indexes up to `overlap` after
//! their timestamp are still read; the queue's dedup drops what was read before.
//!
//! Invariants:
//! - The watermark never passes the time the poll started (device clocks ahead produce future timestamps:
//!   those events are delivered, but they do not move the cursor into the future).
//! - Within a poll, after a full page the watermark moves only to the page's last millisecond (events of the
//!   same instant may continue on the next page); after the last page it moves to the poll's start time.
//! - Nothing moves unless the page it covers is queued with it (one transaction). The commit is flushed
//!   before the next request: a commit lost in a crash takes its cursor with it, and is simply read again.
//! - After a full page the rest of the poll asks for `catch_up_page_size` events per request (the
//!   `search_after` cursor does not depend on the page size).
//! - When the queue is over its size limit, polling pauses; nothing is dropped.

pub mod api;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use tokio::sync::Notify;

use crate::config::{JumpcloudConfig, RetryConfig};
use crate::metrics::Metrics;
use crate::queue::{now_ms, Cursor, Queue, QueueError};
use crate::shutdown::Shutdown;
use api::{ApiClient, EventsQuery, FetchError};

/// Dedup entries are kept this long beyond the overlap window, as a margin for clock differences.
const DEDUP_MARGIN: Duration = Duration::from_secs(3600);

/// Polls one stream until shutdown.
pub struct Poller {
    pub stream: String,
    pub config: JumpcloudConfig,
    pub api: ApiClient,
    pub queue: Queue,
    pub max_queue_bytes: u64,
    pub metrics: Arc<Metrics>,
    /// Woken after each commit, so the forwarder need not poll the queue.
    pub forwarder_wake: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(
        "JumpCloud sent a full page with the same X-Search_after as the page before; asking again"
    )]
    StuckCursor,
    #[error("shutting down")]
    Shutdown,
}

impl Poller {
    pub async fn run(self, shutdown: Shutdown) {
        let mut retry = transient_backoff(self.config.retry);
        let mut rejected = rejected_backoff();
        let mut paused = false;
        let mut last_request: Option<Instant> = None;
        while !shutdown.is_triggered() {
            if self.queue.depth().bytes >= self.max_queue_bytes {
                if !paused {
                    tracing::warn!(
                        stream = %self.stream,
                        queued_bytes = self.queue.depth().bytes,
                        limit = self.max_queue_bytes,
                        "queue is full (queue.max_bytes): polling paused until the forwarder drains it; \
                         nothing is dropped (JumpCloud keeps events for 90 days)"
                    );
                    paused = true;
                    Metrics::add(&self.metrics.polls_paused_queue_full, 1);
                }
                if !shutdown.sleep(Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
            if paused {
                tracing::info!(stream = %self.stream, "queue below its limit again: polling resumes");
                paused = false;
            }
            let wait = match self.poll_once(&shutdown, &mut last_request).await {
                Ok(()) => {
                    retry.reset();
                    rejected.reset();
                    Metrics::set_error(&self.metrics.last_poll_error, None);
                    Metrics::add(&self.metrics.polls_completed, 1);
                    self.config.poll_interval
                }
                Err(PollError::Shutdown) => break,
                Err(PollError::Fetch(FetchError::Rejected(reason))) => {
                    let wait = rejected.next_backoff().unwrap_or(Duration::from_secs(600));
                    tracing::error!(stream = %self.stream, retry_in = ?wait, "{reason}; events already queued are still forwarded");
                    Metrics::set_error(&self.metrics.last_poll_error, Some(reason));
                    wait
                }
                Err(err) => {
                    let hinted = match &err {
                        PollError::Fetch(FetchError::Transient { retry_after, .. }) => *retry_after,
                        _ => None,
                    };
                    let wait = retry.next_backoff().unwrap_or(Duration::from_secs(60));
                    let wait = hinted.map_or(wait, |hint| hint.max(wait));
                    let reason = err.to_string();
                    tracing::warn!(stream = %self.stream, retry_in = ?wait, "poll failed: {reason}");
                    Metrics::set_error(&self.metrics.last_poll_error, Some(reason));
                    wait
                }
            };
            if !shutdown.sleep(wait).await {
                break;
            }
        }
        tracing::debug!(stream = %self.stream, "poller stopped");
    }

    /// One poll: from `watermark - overlap` to the end, page by page, committing each page.
    async fn poll_once(
        &self,
        shutdown: &Shutdown,
        last_request: &mut Option<Instant>,
    ) -> Result<(), PollError> {
        let poll_started_ns = now_ns();
        let stored = self.queue.cursor(&self.stream)?;
        let start_ns = match stored {
            Some(cursor) => cursor.watermark_ns - self.config.overlap.as_nanos() as i64,
            None => poll_started_ns - self.config.initial_lookback.as_nanos() as i64,
        };
        let mut watermark = stored.map_or(start_ns, |c| c.watermark_ns);
        let start_time = api::format_timestamp(start_ns);
        let mut search_after: Option<Box<serde_json::value::RawValue>> = None;
        // After a full page more is waiting: ask for the API's largest pages for the rest of this poll.
        let mut limit = self.config.page_size;
        loop {
            if let Some(at) = last_request {
                let next = *at + self.config.min_request_interval;
                if next > Instant::now() && !shutdown.sleep(next - Instant::now()).await {
                    return Err(PollError::Shutdown);
                }
            }
            *last_request = Some(Instant::now());
            let query = EventsQuery {
                service: &self.config.services,
                start_time: start_time.clone(),
                end_time: None,
                limit,
                sort: "ASC",
                search_after: search_after.as_deref(),
            };
            let fetched = tokio::select! {
                page = self.api.fetch(&query, poll_started_ns) => page,
                // Abandoning a request loses nothing: its page was not committed, the cursor did not move.
                _ = shutdown.wait() => return Err(PollError::Shutdown),
            };
            let page = match fetched {
                Ok(page) => {
                    Metrics::add(&self.metrics.api_requests_ok, 1);
                    page
                }
                Err(err) => {
                    Metrics::add(&self.metrics.api_requests_failed, 1);
                    return Err(err.into());
                }
            };
            let polled = page.events.len() as u64;
            watermark = if page.full {
                let last_ms = page
                    .events
                    .iter()
                    .map(|e| e.timestamp_ns)
                    .max()
                    .map_or(watermark, |ns| ns.div_euclid(1_000_000) * 1_000_000);
                watermark.max(last_ms.min(poll_started_ns))
            } else {
                watermark.max(poll_started_ns)
            };
            let cursor = Cursor {
                watermark_ns: watermark,
                updated_at_ms: now_ms(),
            };
            let queue = self.queue.clone();
            let stream = self.stream.clone();
            let events = page.events;
            let outcome =
                tokio::task::spawn_blocking(move || queue.commit_page(&stream, &events, cursor))
                    .await
                    .map_err(|err| QueueError::Damaged(format!("commit task failed: {err}")))??;
            self.queue.flush().await?;
            Metrics::add(&self.metrics.events_polled, polled);
            Metrics::add(&self.metrics.events_queued, outcome.queued);
            Metrics::add(&self.metrics.events_deduplicated, outcome.duplicates);
            if outcome.queued > 0 {
                self.forwarder_wake.notify_one();
            }
            tracing::debug!(
                stream = %self.stream,
                polled,
                queued = outcome.queued,
                duplicates = outcome.duplicates,
                request_id = page.request_id.as_deref().unwrap_or("-"),
                "page committed"
            );
            if !page.full {
                break;
            }
            let next = page.search_after;
            if next.as_ref().map(|n| n.get()) == search_after.as_ref().map(|s| s.get()) {
                return Err(PollError::StuckCursor);
            }
            search_after = next;
            limit = limit.max(self.config.catch_up_page_size);
            if self.queue.depth().bytes >= self.max_queue_bytes || shutdown.is_triggered() {
                // The committed cursor lets the next poll resume here.
                return Ok(());
            }
        }
        self.prune(watermark).await?;
        Ok(())
    }

    /// Forgets dedup entries too old to be read again.
    async fn prune(&self, watermark_ns: i64) -> Result<(), QueueError> {
        let cutoff = watermark_ns - (self.config.overlap + DEDUP_MARGIN).as_nanos() as i64;
        let queue = self.queue.clone();
        let stream = self.stream.clone();
        tokio::task::spawn_blocking(move || {
            while queue.prune_dedup(&stream, cutoff, 10_000)? == 10_000 {}
            Ok(())
        })
        .await
        .map_err(|err| QueueError::Damaged(format!("prune task failed: {err}")))?
    }
}

/// Backoff for passing failures: from `retry.initial` doubling to `retry.max`, jittered, never giving up
/// (`backoff`'s default gives up after 15 minutes: `max_elapsed_time` must be `None`).
pub(crate) fn transient_backoff(retry: RetryConfig) -> ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(retry.initial)
        .with_max_interval(retry.max)
        .with_multiplier(2.0)
        .with_randomization_factor(0.3)
        .with_max_elapsed_time(None)
        .build()
}

/// Backoff for configuration errors: 30 s doubling to 10 min, so a fixed key is noticed soon enough.
pub(crate) fn rejected_backoff() -> ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_secs(30))
        .with_max_interval(Duration::from_secs(600))
        .with_multiplier(2.0)
        .with_randomization_factor(0.2)
        .with_max_elapsed_time(None)
        .build()
}

pub(crate) fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

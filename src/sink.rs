//! The sink: the forwarder, which drains the queue to the Sekoia.io HTTP intake (`POST {intake_url}/batch`).
//!
//! Invariants:
//! - Read a batch from the head, send it, and only after a 2xx for that exact batch remove it (at-least-once;
//!   never pop-then-send).
//! - Transient failures (timeouts, resets, 422, 429, 5xx) are retried forever with capped, jittered
//!   exponential backoff, honouring `Retry-After`. Configuration failures (400, 401, 403, 404) are reported
//!   clearly and retried slowly; the events stay queued.
//! - 413 splits the batch in two; a single event the intake will never take (over 250 KiB, or refused alone
//!   with 413) is moved to the dead-letter tree, logged and counted, and never blocks the rest.
//! - Events are sent in queue order. A forwarder sends only its own stream's events, with that stream's
//!   intake key and URL: every batch has one destination, and a destination that refuses its key stalls
//!   only its own stream.

use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use bytes::Bytes;
use http::StatusCode;
use tokio::sync::Notify;

use crate::config::{SekoiaConfig, INTAKE_MAX_EVENT_BYTES};
use crate::http::HttpClient;
use crate::metrics::{Metrics, Outcome, RepeatFilter};
use crate::queue::{Queue, QueueError, QueuedEvent};
use crate::share::StreamShare;
use crate::shutdown::Shutdown;
use crate::source::{rejected_backoff, transient_backoff};

/// How long the queue's storage may keep failing before the agent stops to be restarted.
pub const STORAGE_GIVE_UP: Duration = Duration::from_secs(60);

/// How long an in-flight request may finish after shutdown is asked for, before it is abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// At most this many queued records are examined per read, so that reading past another stream's backlog
/// never blocks for long.
const MAX_SCAN: usize = 20_000;

/// The stream a forwarder serves.
pub struct StreamRoute {
    /// For logs and metrics labels.
    pub name: String,
    /// [`crate::queue::stream_tag`] of the name: the queued events it marks are this forwarder's.
    pub tag: u32,
    pub share: Arc<StreamShare>,
}

/// Forwards one stream's queued events to its intake until shutdown.
pub struct Forwarder {
    pub stream: StreamRoute,
    pub config: SekoiaConfig,
    pub http: HttpClient,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    /// Woken by the pollers when they queue events.
    pub wake: Arc<Notify>,
}

/// What the intake made of one request.
enum SendOutcome {
    Accepted,
    TooLarge,
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Rejected(String),
}

impl Forwarder {
    pub async fn run(self, shutdown: Shutdown) {
        let mut storage_retry = transient_backoff(self.config.retry);
        let mut storage_failing_since: Option<std::time::Instant> = None;
        // Every event of this stream up to here was sent or dead-lettered (see `read_stream_batch`).
        let mut position: Option<u64> = None;
        while !shutdown.is_triggered() {
            match self.forward_next_batch(&shutdown, &mut position).await {
                Ok(Some(_)) => {
                    storage_retry.reset();
                    storage_failing_since = None;
                }
                Ok(None) => {
                    storage_failing_since = None;
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Err(ForwardError::Stopped) => break,
                Err(ForwardError::Queue(err)) => {
                    let since = *storage_failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > STORAGE_GIVE_UP {
                        // sled stays in error after some failures (a full disk): only reopening it
                        // recovers. Ending this task stops the agent with an error, and the service
                        // manager restarts it; everything queued is still on disk.
                        tracing::error!(
                            stream = %self.stream.name,
                            "the queue's storage has failed for over {STORAGE_GIVE_UP:?} ({err}): stopping the \
                             agent so that it restarts and reopens the queue"
                        );
                        break;
                    }
                    let wait = storage_retry
                        .next_backoff()
                        .unwrap_or(Duration::from_secs(60));
                    tracing::error!(retry_in = ?wait, "cannot read or update the queue: {err}");
                    if !shutdown.sleep(wait).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!(stream = %self.stream.name, "forwarder stopped");
    }

    /// Sends this stream's next batch after `position`; `Ok(None)` when it has nothing queued.
    async fn forward_next_batch(
        &self,
        shutdown: &Shutdown,
        position: &mut Option<u64>,
    ) -> Result<Option<usize>, ForwardError> {
        let queue = self.queue.clone();
        let (max_events, max_bytes) = (self.config.batch_max_events, self.config.batch_max_bytes);
        let (tag, after) = (self.stream.tag, *position);
        let (batch, examined) = tokio::task::spawn_blocking(move || {
            queue.read_stream_batch(tag, after, max_events, max_bytes, MAX_SCAN)
        })
        .await
        .map_err(|err| QueueError::Damaged(format!("read task failed: {err}")))??;
        if batch.is_empty() {
            // Only other streams' events so far: look further at once.
            let moved = examined != *position;
            *position = examined;
            return Ok(moved.then_some(0));
        }
        let count = batch.len();
        let (oversize, sendable): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|event| event.raw.len() > INTAKE_MAX_EVENT_BYTES);
        for event in &oversize {
            self.dead_letter(
                event,
                &format!(
                    "the event is {} bytes, over the intake's limit of {INTAKE_MAX_EVENT_BYTES} bytes",
                    event.raw.len()
                ),
            )
            .await?;
        }
        if !sendable.is_empty() {
            self.deliver(sendable, shutdown).await?;
        }
        *position = examined;
        Ok(Some(count))
    }

    /// Delivers a batch, splitting it on 413, until every event is acknowledged or dead-lettered.
    async fn deliver(
        &self,
        batch: Vec<QueuedEvent>,
        shutdown: &Shutdown,
    ) -> Result<(), ForwardError> {
        let mut pending = vec![batch];
        let mut retry = transient_backoff(self.config.retry);
        let mut rejected = rejected_backoff();
        let mut repeats = RepeatFilter::default();
        while let Some(chunk) = pending.pop() {
            loop {
                let outcome = self.send(&chunk, shutdown).await?;
                match outcome {
                    SendOutcome::Accepted => {
                        let seqs: Vec<u64> = chunk.iter().map(|e| e.seq).collect();
                        let queue = self.queue.clone();
                        tokio::task::spawn_blocking(move || queue.ack(&seqs))
                            .await
                            .map_err(|err| {
                                QueueError::Damaged(format!("ack task failed: {err}"))
                            })??;
                        // Not needed for safety (a lost ack only means a resend), but it keeps the
                        // duplicates after a crash down to the batch in flight.
                        self.queue.flush().await?;
                        self.stream
                            .share
                            .remove(chunk.iter().map(|e| e.raw.len() as u64).sum());
                        self.metrics
                            .send_succeeded(&self.stream.name, chunk.len() as u64);
                        repeats.reset();
                        retry.reset();
                        rejected.reset();
                        break;
                    }
                    SendOutcome::TooLarge if chunk.len() == 1 => {
                        self.dead_letter(
                            &chunk[0],
                            "the intake refused the event alone with 413 (too large)",
                        )
                        .await?;
                        break;
                    }
                    SendOutcome::TooLarge => {
                        tracing::info!(
                            events = chunk.len(),
                            "the intake said 413: splitting the batch in two"
                        );
                        let mut first = chunk;
                        let second = first.split_off(first.len() / 2);
                        // Last pushed is sent first: keep queue order.
                        pending.push(second);
                        pending.push(first);
                        break;
                    }
                    SendOutcome::Transient {
                        reason,
                        retry_after,
                    } => {
                        let wait = retry.next_backoff().unwrap_or(Duration::from_secs(60));
                        let wait = retry_after.map_or(wait, |hint| hint.max(wait));
                        if let Some(held_back) = repeats.check(&reason) {
                            tracing::warn!(stream = %self.stream.name, events = chunk.len(), retry_in = ?wait, repeats = held_back, "sending failed, will retry: {reason}");
                        }
                        self.metrics.send_failed(&self.stream.name, &reason);
                        if !shutdown.sleep(wait).await {
                            return Err(ForwardError::Stopped);
                        }
                    }
                    SendOutcome::Rejected(reason) => {
                        let wait = rejected.next_backoff().unwrap_or(Duration::from_secs(600));
                        if let Some(held_back) = repeats.check(&reason) {
                            tracing::error!(
                                stream = %self.stream.name,
                                queued_events = self.queue.depth().events,
                                retry_in = ?wait,
                                repeats = held_back,
                                "{reason}; every event stays queued until it is fixed"
                            );
                        }
                        self.metrics.send_failed(&self.stream.name, &reason);
                        if !shutdown.sleep(wait).await {
                            return Err(ForwardError::Stopped);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One request; on shutdown it may finish within [`SHUTDOWN_GRACE`], then it is abandoned (its events
    /// stay queued and are sent again at the next start).
    async fn send(
        &self,
        chunk: &[QueuedEvent],
        shutdown: &Shutdown,
    ) -> Result<SendOutcome, ForwardError> {
        let body = batch_body(self.config.intake_key.expose(), chunk);
        let url = format!("{}/batch", self.config.intake_url);
        let request = self
            .http
            .post_json(&url, &[], body, self.config.request_timeout);
        tokio::pin!(request);
        let asked = std::time::Instant::now();
        let result = tokio::select! {
            result = &mut request => result,
            _ = shutdown.wait() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut request).await {
                Ok(result) => result,
                Err(_) => return Err(ForwardError::Stopped),
            },
        };
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                self.metrics
                    .intake_request(&self.stream.name, Outcome::Retry, asked.elapsed());
                return Ok(SendOutcome::Transient {
                    reason: format!("Sekoia.io intake at {url} did not answer: {err}"),
                    retry_after: None,
                });
            }
        };
        let status = response.status;
        let said = response.body_excerpt();
        let outcome = match status {
            s if s.is_success() => SendOutcome::Accepted,
            StatusCode::PAYLOAD_TOO_LARGE => SendOutcome::TooLarge,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SendOutcome::Rejected(format!(
                "Sekoia.io refused the intake key ({status}): check {}; the intake said: {said}",
                self.key_setting()
            )),
            StatusCode::NOT_FOUND => SendOutcome::Rejected(format!(
                "Sekoia.io answered 404 for {url}: check {}.intake_url (or region; for example \"https://intake.sekoia.io\"); the intake said: {said}",
                self.config.section
            )),
            StatusCode::BAD_REQUEST => SendOutcome::Rejected(format!(
                "Sekoia.io refused the batch (400 Bad Request): check {} and {}.intake_url; the intake said: {said}",
                self.key_setting(),
                self.config.section
            )),
            _ => SendOutcome::Transient {
                reason: format!("Sekoia.io intake answered {status}: {said}"),
                retry_after: response.retry_after(),
            },
        };
        let label = match &outcome {
            SendOutcome::Accepted => Outcome::Ok,
            SendOutcome::TooLarge => Outcome::TooLarge,
            SendOutcome::Transient { .. } => Outcome::Retry,
            SendOutcome::Rejected(_) => Outcome::Rejected,
        };
        self.metrics
            .intake_request(&self.stream.name, label, asked.elapsed());
        Ok(outcome)
    }

    /// The setting that holds this destination's key, for messages.
    fn key_setting(&self) -> String {
        if self.config.section == "sekoia" {
            "sekoia.intake_key (SEKOIA_INTAKE_KEY)".to_string()
        } else {
            format!("{}.intake_key", self.config.section)
        }
    }

    async fn dead_letter(&self, event: &QueuedEvent, reason: &str) -> Result<(), ForwardError> {
        tracing::warn!(
            stream = %self.stream.name,
            seq = event.seq,
            bytes = event.raw.len(),
            "event moved to the dead-letter store and kept there, never sent: {reason}"
        );
        let queue = self.queue.clone();
        let bytes = event.raw.len() as u64;
        let event = event.clone();
        let reason = reason.to_string();
        tokio::task::spawn_blocking(move || queue.dead_letter(&event, &reason))
            .await
            .map_err(|err| QueueError::Damaged(format!("dead-letter task failed: {err}")))??;
        self.stream.share.remove(bytes);
        self.metrics.dead_lettered(&self.stream.name);
        Ok(())
    }
}

#[derive(Debug)]
enum ForwardError {
    Stopped,
    Queue(QueueError),
}

impl From<QueueError> for ForwardError {
    fn from(err: QueueError) -> Self {
        ForwardError::Queue(err)
    }
}

/// `{"intake_key": "...", "jsons": ["<raw event>", ...]}`, each raw event as one JSON string.
pub fn batch_body(intake_key: &str, events: &[QueuedEvent]) -> Bytes {
    let size: usize = events.iter().map(|e| e.raw.len() + 8).sum();
    let mut body = Vec::with_capacity(size + intake_key.len() + 32);
    body.extend_from_slice(b"{\"intake_key\":");
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, intake_key);
    body.extend_from_slice(b",\"jsons\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let _ = serde_json::to_writer(&mut body, &event.raw);
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

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
//! - Up to `sekoia.max_in_flight` batches are sent at once: each is read after the one before it (queue order),
//!   retried on its own and acknowledged on its own 2xx, so batches may arrive (and be acknowledged) a little
//!   out of order, never before being sent. With 1, events are sent strictly in queue order.
//! - A batch whose delivery ends without acknowledging (a storage error, shutdown) is read again from the head
//!   once the batches in flight are done: nothing read is ever skipped.

use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use bytes::Bytes;
use http::StatusCode;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::{SekoiaConfig, INTAKE_MAX_EVENT_BYTES};
use crate::http::HttpClient;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError, QueuedEvent};
use crate::shutdown::Shutdown;
use crate::source::{rejected_backoff, transient_backoff};

/// How long an in-flight request may finish after shutdown is asked for, before it is abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Forwards the queue to one intake until shutdown.
pub struct Forwarder {
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
        let this = Arc::new(self);
        let max_in_flight = this.config.max_in_flight.max(1);
        let mut in_flight: JoinSet<Result<(), ForwardError>> = JoinSet::new();
        // The last sequence handed to a delivery; the next batch is read after it. `None`: from the head.
        let mut last_read: Option<u64> = None;
        let mut storage_retry = transient_backoff(this.config.retry);
        let mut stopping = false;
        while !stopping && !shutdown.is_triggered() {
            // Fill the window with the batches that follow the ones in flight.
            let mut queue_empty = false;
            let mut storage_error = None;
            while in_flight.len() < max_in_flight {
                match this.read_next_batch(last_read).await {
                    Ok(batch) if batch.is_empty() => {
                        queue_empty = true;
                        break;
                    }
                    Ok(batch) => {
                        storage_retry.reset();
                        last_read = batch.last().map(|event| event.seq);
                        let forwarder = this.clone();
                        let shutdown = shutdown.clone();
                        in_flight.spawn(async move { forwarder.forward(batch, &shutdown).await });
                    }
                    Err(err) => {
                        storage_error = Some(err);
                        break;
                    }
                }
            }
            if in_flight.is_empty() {
                // Everything read so far was acknowledged or dead-lettered, or failed and is still queued:
                // read from the head again, which also retries whatever a failed delivery left behind.
                last_read = None;
                if let Some(err) = storage_error {
                    if !this.storage_wait(&mut storage_retry, err, &shutdown).await {
                        break;
                    }
                } else if queue_empty {
                    tokio::select! {
                        _ = this.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                continue;
            }
            // Wait for a delivery to end, or for new events when the window is not full.
            let ended = tokio::select! {
                ended = in_flight.join_next() => ended,
                _ = this.wake.notified(), if queue_empty => None,
                _ = shutdown.wait() => None,
            };
            match ended {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(ForwardError::Stopped))) => stopping = true,
                Some(Ok(Err(ForwardError::Queue(err)))) => {
                    // Let the others end, then start again from the head (see above).
                    while let Some(other) = in_flight.join_next().await {
                        if let Ok(Err(ForwardError::Stopped)) = other {
                            stopping = true;
                        }
                    }
                    last_read = None;
                    if !stopping && !this.storage_wait(&mut storage_retry, err, &shutdown).await {
                        break;
                    }
                }
                Some(Err(err)) => {
                    tracing::error!("a delivery task failed: {err}; its events stay queued");
                    while in_flight.join_next().await.is_some() {}
                    last_read = None;
                }
            }
        }
        // Deliveries finish or abandon their request within their grace period.
        while in_flight.join_next().await.is_some() {}
        tracing::debug!("forwarder stopped");
    }

    /// Logs a storage error and waits before the next try; false when shutdown came first.
    async fn storage_wait(
        &self,
        retry: &mut backoff::ExponentialBackoff,
        err: QueueError,
        shutdown: &Shutdown,
    ) -> bool {
        let wait = retry.next_backoff().unwrap_or(Duration::from_secs(60));
        tracing::error!(retry_in = ?wait, "cannot read or update the queue: {err}");
        shutdown.sleep(wait).await
    }

    /// Reads the batch that follows `after` (from the head when `None`).
    async fn read_next_batch(&self, after: Option<u64>) -> Result<Vec<QueuedEvent>, QueueError> {
        let queue = self.queue.clone();
        let (max_events, max_bytes) = (self.config.batch_max_events, self.config.batch_max_bytes);
        tokio::task::spawn_blocking(move || queue.read_batch(after, max_events, max_bytes))
            .await
            .map_err(|err| QueueError::Damaged(format!("read task failed: {err}")))?
    }

    /// Dead-letters the oversize events of a batch and delivers the rest.
    async fn forward(
        &self,
        batch: Vec<QueuedEvent>,
        shutdown: &Shutdown,
    ) -> Result<(), ForwardError> {
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
        Ok(())
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
        while let Some(chunk) = pending.pop() {
            loop {
                let outcome = self.send(&chunk, shutdown).await?;
                match outcome {
                    SendOutcome::Accepted => {
                        Metrics::add(&self.metrics.intake_requests_ok, 1);
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
                        Metrics::add(&self.metrics.events_forwarded, chunk.len() as u64);
                        Metrics::set_error(&self.metrics.last_send_error, None);
                        retry.reset();
                        rejected.reset();
                        break;
                    }
                    SendOutcome::TooLarge if chunk.len() == 1 => {
                        Metrics::add(&self.metrics.intake_requests_failed, 1);
                        self.dead_letter(
                            &chunk[0],
                            "the intake refused the event alone with 413 (too large)",
                        )
                        .await?;
                        break;
                    }
                    SendOutcome::TooLarge => {
                        Metrics::add(&self.metrics.intake_requests_failed, 1);
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
                        Metrics::add(&self.metrics.intake_requests_failed, 1);
                        let wait = retry.next_backoff().unwrap_or(Duration::from_secs(60));
                        let wait = retry_after.map_or(wait, |hint| hint.max(wait));
                        tracing::warn!(events = chunk.len(), retry_in = ?wait, "sending failed, will retry: {reason}");
                        Metrics::set_error(&self.metrics.last_send_error, Some(reason));
                        if !shutdown.sleep(wait).await {
                            return Err(ForwardError::Stopped);
                        }
                    }
                    SendOutcome::Rejected(reason) => {
                        Metrics::add(&self.metrics.intake_requests_failed, 1);
                        let wait = rejected.next_backoff().unwrap_or(Duration::from_secs(600));
                        tracing::error!(
                            queued_events = self.queue.depth().events,
                            retry_in = ?wait,
                            "{reason}; every event stays queued until it is fixed"
                        );
                        Metrics::set_error(&self.metrics.last_send_error, Some(reason));
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
                return Ok(SendOutcome::Transient {
                    reason: format!("Sekoia.io intake at {url} did not answer: {err}"),
                    retry_after: None,
                })
            }
        };
        let status = response.status;
        let said = response.body_excerpt();
        Ok(match status {
            s if s.is_success() => SendOutcome::Accepted,
            StatusCode::PAYLOAD_TOO_LARGE => SendOutcome::TooLarge,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SendOutcome::Rejected(format!(
                "Sekoia.io refused the intake key ({status}): check sekoia.intake_key (SEKOIA_INTAKE_KEY); the intake said: {said}"
            )),
            StatusCode::NOT_FOUND => SendOutcome::Rejected(format!(
                "Sekoia.io answered 404 for {url}: check sekoia.intake_url (for example \"https://intake.sekoia.io\"); the intake said: {said}"
            )),
            StatusCode::BAD_REQUEST => SendOutcome::Rejected(format!(
                "Sekoia.io refused the batch (400 Bad Request): check sekoia.intake_key and sekoia.intake_url; the intake said: {said}"
            )),
            _ => SendOutcome::Transient {
                reason: format!("Sekoia.io intake answered {status}: {said}"),
                retry_after: response.retry_after(),
            },
        })
    }

    async fn dead_letter(&self, event: &QueuedEvent, reason: &str) -> Result<(), ForwardError> {
        tracing::warn!(
            seq = event.seq,
            bytes = event.raw.len(),
            "event moved to the dead-letter store and kept there, never sent: {reason}"
        );
        let queue = self.queue.clone();
        let event = event.clone();
        let reason = reason.to_string();
        tokio::task::spawn_blocking(move || queue.dead_letter(&event, &reason))
            .await
            .map_err(|err| QueueError::Damaged(format!("dead-letter task failed: {err}")))??;
        Metrics::add(&self.metrics.events_dead_lettered, 1);
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

//! The sink: the forwarder, which drains the queue to the Sekoia.io HTTP intake (`POST {intake_url}/batch`).
//!
//! Invariants:
//! - Read a batch from the head, send it, and only after a 2xx for that exact batch remove it (at-least-once;
//!   never pop-then-send).
//! - Sending one batch (the request, backoff, 413 split, which events are dead letters) is
//!   [`crate::delivery`]'s, shared with `ship`: transient failures are retried forever, configuration
//!   failures slowly, and the events stay queued meanwhile. Here an accepted event is acknowledged in the
//!   queue (and flushed), and a dead letter (over 250 KiB, or refused alone with 413) is moved to the
//!   dead-letter tree, logged and counted; it never blocks the rest.
//! - A forwarder sends only its own stream's events, with that stream's intake key and URL: every batch has
//!   one destination, and a destination that refuses its key stalls only its own stream.
//! - Up to `sekoia.max_in_flight` batches of a stream are sent at once: each is read after the one before it
//!   (queue order), retried on its own and acknowledged on its own 2xx, so batches may arrive (and be
//!   acknowledged) a little out of order, never before being sent. With 1, a stream's events are sent
//!   strictly in queue order.
//! - The forwarder's position (where it reads from after a failure) moves past a batch only once that batch
//!   and every batch read before it are acknowledged or dead-lettered. A batch whose delivery ends without
//!   that (a storage error, shutdown) is read again from that position once the batches in flight are done:
//!   nothing read is ever skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::SekoiaConfig;
pub use crate::delivery::batch_body;
use crate::delivery::{DeliverError, Intake, Settle};
use crate::event::QueuedEvent;
use crate::http::HttpClient;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};
use crate::retry::{Backoffs, StorageFailures, STORAGE_GIVE_UP};
use crate::shutdown::Shutdown;

/// At most this many queued records are examined per read, so that reading past another stream's backlog
/// never blocks for long.
const MAX_SCAN: usize = 20_000;

/// The stream a forwarder serves.
pub struct StreamRoute {
    /// For logs and metrics labels.
    pub name: String,
    /// [`crate::queue::stream_tag`] of the name: the queued events it marks are this forwarder's.
    pub tag: u32,
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

/// A batch read and handed to a delivery, in reading order.
struct Read {
    id: u64,
    /// What `read_stream_batch` examined for it: once this batch and every one before it are done, every
    /// event of the stream up to here is acknowledged or dead-lettered.
    examined: Option<u64>,
    done: bool,
}

/// The batches in flight and the position they leave behind.
#[derive(Default)]
struct Window {
    reads: VecDeque<Read>,
    /// Every event of this stream up to here was sent or dead-lettered (see `read_stream_batch`).
    done_upto: Option<u64>,
    next_id: u64,
}

impl Window {
    fn push(&mut self, examined: Option<u64>, done: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.reads.push_back(Read { id, examined, done });
        self.advance();
        id
    }

    fn finished(&mut self, id: u64) {
        if let Some(read) = self.reads.iter_mut().find(|read| read.id == id) {
            read.done = true;
        }
        self.advance();
    }

    fn advance(&mut self) {
        while self.reads.front().is_some_and(|read| read.done) {
            if let Some(read) = self.reads.pop_front() {
                self.done_upto = read.examined;
            }
        }
    }

    /// Forgets the batches that did not end well: they are read again from `done_upto`.
    fn restart(&mut self) -> Option<u64> {
        self.reads.clear();
        self.done_upto
    }
}

type Delivery = (u64, Result<(), ForwardError>);

impl Forwarder {
    pub async fn run(self, shutdown: Shutdown) {
        let this = Arc::new(self);
        let max_in_flight = this.config.max_in_flight.max(1);
        let mut in_flight: JoinSet<Delivery> = JoinSet::new();
        let mut window = Window::default();
        // Where the next batch is read from: after the last batch handed to a delivery.
        let mut last_read: Option<u64> = None;
        let mut storage_retry = Backoffs::new(this.config.retry);
        let mut storage_failures = StorageFailures::default();
        let mut stopping = false;
        while !stopping && !shutdown.is_triggered() {
            // Fill the window with the batches that follow the ones in flight.
            let mut queue_empty = false;
            let mut storage_error = None;
            while in_flight.len() < max_in_flight && !shutdown.is_triggered() {
                match this.read_next_batch(last_read).await {
                    Ok((batch, examined)) if batch.is_empty() => {
                        if examined == last_read {
                            queue_empty = true;
                            break;
                        }
                        // Only other streams' events so far: look further at once.
                        window.push(examined, true);
                        last_read = examined;
                    }
                    Ok((batch, examined)) => {
                        storage_retry.reset();
                        storage_failures.reset();
                        last_read = examined;
                        let id = window.push(examined, false);
                        let forwarder = this.clone();
                        let shutdown = shutdown.clone();
                        in_flight
                            .spawn(async move { (id, forwarder.forward(batch, &shutdown).await) });
                    }
                    Err(err) => {
                        storage_error = Some(err);
                        break;
                    }
                }
            }
            if in_flight.is_empty() {
                // Everything read so far was acknowledged or dead-lettered: the window is empty and
                // `last_read` is where it ends.
                if let Some(err) = storage_error {
                    if !this
                        .storage_wait(&mut storage_retry, &mut storage_failures, err, &shutdown)
                        .await
                    {
                        break;
                    }
                } else if queue_empty {
                    crate::delivery::forwarding_idle();
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
                None => {}
                Some(Ok((id, Ok(())))) => window.finished(id),
                Some(Ok((_, Err(ForwardError::Stopped)))) => stopping = true,
                Some(Ok((_, Err(ForwardError::Queue(err))))) => {
                    // Let the others end, then read again from the position they leave (see above).
                    while let Some(other) = in_flight.join_next().await {
                        match other {
                            Ok((id, Ok(()))) => window.finished(id),
                            Ok((_, Err(ForwardError::Stopped))) => stopping = true,
                            Ok((_, Err(ForwardError::Queue(_)))) | Err(_) => {}
                        }
                    }
                    last_read = window.restart();
                    if !stopping
                        && !this
                            .storage_wait(&mut storage_retry, &mut storage_failures, err, &shutdown)
                            .await
                    {
                        break;
                    }
                }
                Some(Err(err)) => {
                    tracing::error!(stream = %this.stream.name, "a delivery task failed: {err}; its events stay queued");
                    while let Some(other) = in_flight.join_next().await {
                        if let Ok((id, Ok(()))) = other {
                            window.finished(id);
                        }
                    }
                    last_read = window.restart();
                }
            }
        }
        // Deliveries finish or abandon their request within their grace period.
        while in_flight.join_next().await.is_some() {}
        tracing::debug!(stream = %this.stream.name, "forwarder stopped");
    }

    /// Logs a storage error and waits before the next try; false when shutdown came first, or when the
    /// storage has failed for longer than [`STORAGE_GIVE_UP`]: sled stays in error after some failures (a
    /// full disk) and only reopening it recovers, so the forwarder ends, which stops the agent with an
    /// error for the service manager to restart it. Everything queued is still on disk.
    async fn storage_wait(
        &self,
        retry: &mut Backoffs,
        failures: &mut StorageFailures,
        err: QueueError,
        shutdown: &Shutdown,
    ) -> bool {
        if failures.failed_too_long() {
            tracing::error!(
                stream = %self.stream.name,
                "the queue's storage has failed for over {STORAGE_GIVE_UP:?} ({err}): stopping the agent so \
                 that it restarts and reopens the queue"
            );
            return false;
        }
        let wait = retry.transient_wait(None);
        tracing::error!(stream = %self.stream.name, retry_in = ?wait, "cannot read or update the queue: {err}");
        shutdown.sleep(wait).await
    }

    /// Reads this stream's batch that follows `after` (from the head when `None`), with how far it looked.
    async fn read_next_batch(
        &self,
        after: Option<u64>,
    ) -> Result<(Vec<QueuedEvent>, Option<u64>), QueueError> {
        let (max_events, max_bytes) = (self.config.batch_max_events, self.config.batch_max_bytes);
        let tag = self.stream.tag;
        self.queue
            .run_blocking(move |queue| {
                queue.read_stream_batch(tag, after, max_events, max_bytes, MAX_SCAN)
            })
            .await
    }

    /// Delivers a batch to this stream's intake until every event is acknowledged or dead-lettered.
    async fn forward(
        &self,
        batch: Vec<QueuedEvent>,
        shutdown: &Shutdown,
    ) -> Result<(), ForwardError> {
        let intake = Intake {
            stream: &self.stream.name,
            config: &self.config,
            http: &self.http,
            metrics: &self.metrics,
        };
        let mut settle = InQueue {
            queue: &self.queue,
            stream: &self.stream.name,
        };
        intake
            .deliver(batch, &mut settle, shutdown)
            .await
            .map_err(|err| match err {
                DeliverError::Stopped => ForwardError::Stopped,
                DeliverError::Settle(err) => ForwardError::Queue(err),
            })
    }
}

/// Settles a stream's events in the queue: acknowledged events leave it, dead letters move to its
/// dead-letter tree.
struct InQueue<'a> {
    queue: &'a Queue,
    stream: &'a str,
}

impl Settle<QueuedEvent> for InQueue<'_> {
    type Error = QueueError;

    async fn accepted(&mut self, events: &[QueuedEvent]) -> Result<(), QueueError> {
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        self.queue
            .run_blocking(move |queue| queue.ack(&seqs))
            .await?;
        // Not needed for safety (a lost ack only means a resend), but it keeps the duplicates after a
        // crash down to the batch in flight.
        self.queue.flush().await
    }

    async fn dead_letter(&mut self, event: QueuedEvent, reason: &str) -> Result<(), QueueError> {
        tracing::warn!(
            stream = %self.stream,
            seq = event.seq,
            bytes = event.raw.len(),
            "event moved to the dead-letter store and kept there, never sent: {reason}"
        );
        let reason = reason.to_string();
        // Moved, not copied: an event over the intake's limit may be large.
        self.queue
            .run_blocking(move |queue| queue.dead_letter(&event, &reason))
            .await
    }

    fn waiting(&self) -> u64 {
        self.queue.depth().events
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_moves_only_past_batches_done_in_reading_order() {
        let mut window = Window::default();
        let first = window.push(Some(9), false);
        window.push(Some(20), true); // other streams' records only
        let third = window.push(Some(29), false);
        assert_eq!(window.done_upto, None);
        window.finished(third);
        assert_eq!(window.done_upto, None, "the first batch is still in flight");
        window.finished(first);
        assert_eq!(window.done_upto, Some(29));
        let failed = window.push(Some(39), false);
        let after = window.push(Some(49), false);
        window.finished(after);
        assert_eq!(
            window.restart(),
            Some(29),
            "read again from before the failed batch"
        );
        window.finished(failed);
        assert_eq!(
            window.done_upto,
            Some(29),
            "a forgotten batch moves nothing"
        );
    }
}

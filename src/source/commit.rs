//! How a poller's pages reach the queue: a page is read in parts ([`page::PART_EVENTS`]); every part but
//! the last is queued while the rest of the answer is still being read ([`EarlyParts`]), and the last part
//! goes with the cursor ([`Committer::commit`]).
//!
//! Invariants:
//! - A part's commit runs while the next part is read, but commits of one page never overlap: a part waits
//!   for the one before it, and the page's last part (with the cursor) waits for every part before it
//!   ([`EarlyParts::settle`]). So the cursor is committed after every event it covers.
//! - Every commit that queued events is flushed, early parts included. The cursor would not need it (sled
//!   writes its log in order, so a cursor that survives a crash has its parts before it), but sled holds
//!   unflushed writes in its buffers: without these flushes a catch-up peaked 2 MB higher (BENCHMARKS.md).
//!   A first start commits its cursor before its first page, so that a page cut short resumes from the
//!   same window (`Poller::commit_start`).
//!
//! [`page::PART_EVENTS`]: super::page::PART_EVENTS

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::api::PartSink;
use crate::event::{Cursor, IncomingEvent};
use crate::metrics::Metrics;
use crate::queue::{CommitOutcome, Queue, QueueError};

/// What one stream's commits need, cloned so that a part's commit can run on its own.
#[derive(Clone)]
pub(super) struct Committer {
    pub stream: String,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    /// Woken after each commit that queued events, so the forwarder need not poll the queue.
    pub forwarder_wake: Arc<Notify>,
}

impl Committer {
    /// Commits events (with the cursor, when the page moves it), flushes when it queued any, counts them
    /// and wakes the forwarder. (An idle stream's poll moves only its cursor: no flush, one fsync less per
    /// stream and poll; sled writes the cursor within 500 ms anyway.)
    pub async fn commit(
        &self,
        events: Vec<IncomingEvent>,
        cursor: Option<Cursor>,
        request_id: Option<&str>,
    ) -> Result<CommitOutcome, QueueError> {
        let polled = events.len() as u64;
        let stream = self.stream.clone();
        let outcome = self
            .queue
            .run_blocking(move |queue| queue.commit_page(&stream, &events, cursor))
            .await?;
        if outcome.queued > 0 {
            self.queue.flush().await?;
        }
        self.metrics
            .page_committed(&self.stream, polled, outcome.queued, outcome.duplicates);
        if outcome.queued > 0 {
            self.forwarder_wake.notify_one();
        }
        tracing::debug!(
            stream = %self.stream,
            polled,
            queued = outcome.queued,
            duplicates = outcome.duplicates,
            request_id = request_id.unwrap_or("-"),
            "page committed"
        );
        Ok(outcome)
    }
}

/// Queues the parts of a page handed out before its end ([`ApiClient::fetch_streamed`]), without moving
/// the cursor, each while the next is read; adds up what the page held.
///
/// [`ApiClient::fetch_streamed`]: super::api::ApiClient::fetch_streamed
pub(super) struct EarlyParts {
    committer: Committer,
    pub read: PageRead,
    /// Events the parts settled so far added to the queue.
    queued: u64,
    /// The commit of the part before, still running.
    pending: Option<JoinHandle<Result<CommitOutcome, QueueError>>>,
}

impl EarlyParts {
    pub fn new(committer: Committer) -> EarlyParts {
        EarlyParts {
            committer,
            read: PageRead::default(),
            queued: 0,
            pending: None,
        }
    }

    /// Waits for the parts' commits; the events they added to the queue.
    pub async fn settle(&mut self) -> Result<u64, QueueError> {
        if let Some(pending) = self.pending.take() {
            let outcome = pending.await.map_err(|err| {
                if err.is_panic() {
                    QueueError::Panicked(format!("committing a part of a page: {err}"))
                } else {
                    QueueError::Cancelled
                }
            })??;
            self.queued += outcome.queued;
        }
        Ok(self.queued)
    }
}

impl PartSink for EarlyParts {
    async fn part(&mut self, events: Vec<IncomingEvent>) -> Result<(), QueueError> {
        self.read.add(&events);
        self.settle().await?;
        let committer = self.committer.clone();
        self.pending = Some(tokio::spawn(async move {
            committer.commit(events, None, None).await
        }));
        Ok(())
    }
}

/// What a page held, over its parts.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PageRead {
    pub events: u64,
    pub bytes: u64,
    pub last_event_ns: Option<i64>,
}

impl PageRead {
    /// Adds `events`; returns the total so far.
    pub fn add(&mut self, events: &[IncomingEvent]) -> PageRead {
        self.events += events.len() as u64;
        self.bytes += events.iter().map(|e| e.raw.len() as u64).sum::<u64>();
        let last = events.iter().map(|e| e.timestamp_ns).max();
        self.last_event_ns = self.last_event_ns.max(last);
        *self
    }

    /// The raw bytes of its events, on average (1 when it held none).
    pub fn average_bytes(&self) -> u64 {
        (self.bytes / self.events.max(1)).max(1)
    }
}

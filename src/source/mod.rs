//! The source: a poller per JumpCloud stream, which pulls Directory Insights events page by page and
//! commits each page to the queue together with its cursor.
//!
//! The cursor is a *watermark*: every event with a timestamp below it, indexed by the time it was read, is
//! queued. Events JumpCloud indexes up to `overlap` after their timestamp are still collected: before each
//! poll reads forward (from where the last forward read ended, at or after the watermark), the late check
//! ([`late`]) compares JumpCloud's counts of the window behind it, from `watermark - overlap` on, with the
//! queue's dedup index and reads again only the slices that differ. When it cannot (the API refuses or
//! fails the histogram), the poll starts at `watermark - overlap` and reads the whole window again, as
//! before; the queue's dedup drops what was read before. The first poll (no cursor yet) commits
//! `now - initial_lookback` as its cursor, then reads forward from there.
//!
//! Invariants:
//! - The watermark never passes the time the poll started (device clocks ahead produce future timestamps:
//!   those events are delivered, but they do not move the cursor into the future).
//! - Within a poll, after a full page the watermark moves only to the page's last millisecond (events of the
//!   same instant may continue on the next page); after the last page it moves to the poll's start time.
//! - Nothing moves unless the page it covers is queued with it (one transaction). A large page is read as it
//!   arrives and queued in parts ([`api::ApiClient::fetch_streamed`], [`commit`]), each flushed, the cursor
//!   with the last once every part before it is queued: memory does not grow with the page size, and a page
//!   cut off or refused midway leaves the cursor where it was (its parts are known to the dedup index when it
//!   is read again). Each commit that queued events is flushed before the next request: a commit lost in a
//!   crash takes its cursor with it, and is simply read again. A commit that queued nothing (an empty page,
//!   or only events already queued) moves only the cursor and is left to sled's own flush, within 500 ms:
//!   lost in a crash, the same window is read again and holds nothing new.
//! - After a full page the rest of the poll asks for `catch_up_page_size` events per request (the
//!   `search_after` cursor does not depend on the page size); so does a poll that starts far behind
//!   (`Poller::far_behind`), from its first request. Each stream uses its own settings.
//! - Requests are paced ([`pacing`]): at most `max_requests_per_second` in any second.
//! - When the queue has no room for this stream ([`Queue::no_room`]: its size limit, the stream's share, the
//!   disk reserve), polling pauses; nothing is dropped.

pub mod api;
pub mod backfill;
mod commit;
mod error;
mod late;
pub mod oauth;
mod pacing;
mod page;
mod paging;
mod recorder;
mod scan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::clock::{format_rfc3339_ns, now_ms, now_ns};
use crate::config::JumpcloudConfig;
use crate::event::{Cursor, IncomingEvent};
use crate::metrics::{Metrics, Outcome};
use crate::queue::{CommitOutcome, Queue, QueueError};
use crate::retry::{Backoffs, RepeatFilter, StorageFailures, STORAGE_GIVE_UP};
use crate::shutdown::Shutdown;
use api::{ApiClient, EventsQuery, FetchError, PartSink};
use commit::{Committer, EarlyParts};
pub use late::LateCheck;
use late::LateStart;
use pacing::Pacer;
use paging::{next_watermark, Paging};
pub use scan::SpareBlocks;

/// Dedup entries are kept this long beyond the overlap window, as a margin for clock differences.
const DEDUP_MARGIN: Duration = Duration::from_secs(3600);

/// Polls one stream until shutdown.
pub struct Poller {
    pub stream: String,
    pub config: JumpcloudConfig,
    pub api: ApiClient,
    /// Also the judge of whether this stream may queue more ([`Queue::no_room`]).
    pub queue: Queue,
    /// How long event ids are remembered (`queue.dedup_window`).
    pub dedup_window: Duration,
    pub metrics: Arc<Metrics>,
    /// Woken after each commit, so the forwarder need not poll the queue.
    pub forwarder_wake: Arc<Notify>,
    /// What the late check remembers between polls.
    pub late: LateCheck,
    /// Turns to read a page, shared by every stream of the agent ([`READS_IN_FLIGHT`]).
    pub reading: Arc<Semaphore>,
    /// Added once to the wait after the first poll that succeeds ([`poll_phase`]).
    pub phase: Duration,
}

/// Where in its poll interval stream `index` of `count` polls: an even share of the interval, so that the
/// streams of one agent, which all poll at once when it starts, then poll one after another. All at once,
/// 500 streams read, hold and commit 500 pages in the same second of every minute; spread, a few at a
/// time. The first stream's phase is zero: an agent with one stream polls as it always did.
pub fn poll_phase(interval: Duration, index: usize, count: usize) -> Duration {
    if count <= 1 {
        return Duration::ZERO;
    }
    interval.mul_f64((index % count) as f64 / count as f64)
}

/// How many pages the agent's streams read at once. A page being read holds up to two parts of events (one
/// being read, one committed) and a transaction (a few MiB); without a limit, hundreds of streams polling at
/// the same moment (every one catching up after a start) held them all at once: 963 MB for 500 streams with
/// 2,000 events each waiting (BENCHMARKS.md, "Many streams"). Waiting for the pace does not hold a turn, so a
/// turn is only held while a request is answered and its page queued; 16 keeps 500 streams of steady polling
/// (about 8 requests/s in all with the defaults) far from waiting on each other.
pub const READS_IN_FLIGHT: usize = 16;

/// Creates the turns to share between an agent's pollers.
pub fn reading_turns() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(READS_IN_FLIGHT))
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
        let mut backoffs = Backoffs::new(self.config.retry);
        let mut paused = false;
        let mut repeats = RepeatFilter::default();
        let ceiling = self.config.request_ceiling();
        // `min_request_interval` promises a least time between two requests, not a count per second.
        let mut pacer = if self.config.min_request_interval.is_zero() {
            Pacer::new(ceiling)
        } else {
            Pacer::spaced(ceiling)
        };
        self.metrics.api_pace(&self.stream, pacer.rate());
        let mut storage = StorageFailures::default();
        let mut phase = self.phase;
        // The average size of the events the stream read last (for the first page of a poll far behind).
        let mut event_bytes = ASSUMED_EVENT_BYTES;
        while !shutdown.is_triggered() {
            if let Some(why) = self.queue.no_room(&self.stream) {
                if !paused {
                    let share = self.queue.share(&self.stream);
                    tracing::warn!(
                        stream = %self.stream,
                        queued_bytes = self.queue.depth().bytes,
                        limit = self.queue.max_bytes(),
                        stream_bytes = share.bytes,
                        stream_limit = share.limit,
                        "{why}: polling paused until the forwarder drains the queue; nothing is dropped \
                         (JumpCloud keeps events for 90 days)"
                    );
                    paused = true;
                    self.metrics.poll_paused(&self.stream);
                }
                if !shutdown.sleep(Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
            if paused {
                tracing::info!(stream = %self.stream, "room in the queue again: polling resumes");
                paused = false;
            }
            let wait = match self
                .poll_once(&shutdown, &mut pacer, &mut event_bytes)
                .await
            {
                Ok(()) => {
                    backoffs.reset();
                    storage.reset();
                    self.metrics.poll_succeeded(&self.stream);
                    repeats.reset();
                    self.config.poll_interval + std::mem::take(&mut phase)
                }
                Err(PollError::Shutdown) => break,
                Err(PollError::Fetch(FetchError::Rejected(reason))) => {
                    let wait = backoffs.rejected_wait();
                    if let Some(held_back) = repeats.check(&reason) {
                        tracing::error!(stream = %self.stream, retry_in = ?wait, repeats = held_back, "{reason}; events already queued are still forwarded");
                    }
                    self.metrics.poll_failed(&self.stream, &reason);
                    wait
                }
                Err(PollError::Queue(err)) if storage.failed_too_long() => {
                    tracing::error!(
                        stream = %self.stream,
                        "the queue's storage has failed for over {STORAGE_GIVE_UP:?} ({err}): stopping the \
                         agent so that it restarts and reopens the queue"
                    );
                    break;
                }
                Err(err) => {
                    let hinted = match &err {
                        PollError::Fetch(fetch) => fetch.retry_after(),
                        _ => None,
                    };
                    let wait = backoffs.transient_wait(hinted);
                    let reason = err.to_string();
                    if let Some(held_back) = repeats.check(&reason) {
                        tracing::warn!(stream = %self.stream, retry_in = ?wait, repeats = held_back, "poll failed: {reason}");
                    }
                    self.metrics.poll_failed(&self.stream, &reason);
                    wait
                }
            };
            if !shutdown.sleep(wait).await {
                break;
            }
        }
        tracing::debug!(stream = %self.stream, "poller stopped");
    }

    /// One poll: the late check, then from the watermark (or `watermark - overlap` when the late check
    /// could not run) to the end, page by page, committing each page.
    async fn poll_once(
        &self,
        shutdown: &Shutdown,
        pacer: &mut Pacer,
        event_bytes: &mut u64,
    ) -> Result<(), PollError> {
        let poll_started_ns = now_ns();
        let stored = self.queue.cursor(&self.stream)?;
        let start_ns = match stored {
            // The late check reads again what was indexed late behind the watermark, and says where to start.
            Some(cursor) => match self
                .late_check(shutdown, pacer, cursor.watermark_ns, poll_started_ns)
                .await?
            {
                LateStart::At(start_ns) => start_ns,
                LateStart::Paused => return Ok(()),
            },
            None => {
                // A first start: the window begins `initial_lookback` before now, a point that moves with
                // the clock. It is committed before the first page, whose parts are queued before its
                // cursor: a crash between them would otherwise restart from a later window's start,
                // past events that were never queued.
                let start_ns = poll_started_ns - self.config.initial_lookback.as_nanos() as i64;
                self.commit_start(start_ns).await?;
                start_ns
            }
        };
        let mut watermark = stored.map_or(start_ns, |c| c.watermark_ns);
        let start_time = format_rfc3339_ns(start_ns);
        let mut paging = Paging::default();
        // After a full page more is waiting: ask for bigger pages for the rest of this poll (`catch_up_limit`).
        // A poll that starts far behind asks for them from its first request.
        let behind = Duration::from_nanos(poll_started_ns.saturating_sub(watermark).max(0) as u64);
        let mut limit = if behind > self.far_behind() {
            self.catch_up_limit(*event_bytes)
        } else {
            self.config.page_size
        };
        loop {
            let query = EventsQuery {
                service: &self.config.services,
                start_time: start_time.clone(),
                end_time: None,
                limit,
                sort: "ASC",
                search_after: paging.search_after(),
            };
            let mut early = EarlyParts::new(self.committer());
            let (page, _turn) = self
                .fetch_paced(shutdown, pacer, &query, poll_started_ns, &mut early)
                .await?;
            early.settle().await?;
            let read = early.read.add(&page.events);
            if read.events > 0 {
                *event_bytes = read.average_bytes();
            }
            watermark = next_watermark(watermark, page.full, read.last_event_ns, poll_started_ns);
            let cursor = Cursor {
                watermark_ns: watermark,
                updated_at_ms: now_ms(),
            };
            // The cursor goes with the page's last events: every part before them is queued already.
            self.commit(page.events, Some(cursor), page.request_id.as_deref())
                .await?;
            if !paging
                .advance(page.full, page.search_after)
                .map_err(|_| PollError::StuckCursor)?
            {
                break;
            }
            limit = self.catch_up_limit(read.average_bytes());
            if self.queue.no_room(&self.stream).is_some() || shutdown.is_triggered() {
                // The committed cursor lets the next poll resume here.
                return Ok(());
            }
        }
        // The next late check covers what this read went past; the next forward read starts there.
        self.late.forward_done(watermark, now_ns());
        self.prune(watermark).await?;
        Ok(())
    }

    /// Waits until the stream's pace allows its next request (the late check's requests share it).
    async fn wait_turn(&self, shutdown: &Shutdown, pacer: &mut Pacer) -> Result<(), PollError> {
        let delay = pacer.delay(Instant::now());
        if !delay.is_zero() && !shutdown.sleep(delay).await {
            return Err(PollError::Shutdown);
        }
        pacer.sent(Instant::now());
        Ok(())
    }

    /// Asks for one page when the pace allows, records the request, and adapts the pace: a throttled
    /// answer slows it down and the same page is asked again once the pace allows (the cursor did not
    /// move). A page's events before its last part are queued by `early` while it is read.
    async fn fetch_paced(
        &self,
        shutdown: &Shutdown,
        pacer: &mut Pacer,
        query: &EventsQuery<'_>,
        now_ns: i64,
        early: &mut impl PartSink,
    ) -> Result<(api::Page, OwnedSemaphorePermit), PollError> {
        loop {
            self.wait_turn(shutdown, pacer).await?;
            // The caller holds the turn until the page is queued.
            let turn = tokio::select! {
                turn = self.reading.clone().acquire_owned() => turn.map_err(|_| PollError::Shutdown)?,
                _ = shutdown.wait() => return Err(PollError::Shutdown),
            };
            let asked = Instant::now();
            let fetched = tokio::select! {
                page = self.api.fetch_streamed(query, now_ns, early) => page,
                // Abandoning a request loses nothing: the cursor did not move (parts already queued are
                // known to the dedup index when the page is read again).
                _ = shutdown.wait() => return Err(PollError::Shutdown),
            };
            self.metrics
                .api_request(&self.stream, outcome_of(&fetched), asked.elapsed());
            match fetched {
                Ok(page) => {
                    pacer.answered();
                    self.metrics.api_pace(&self.stream, pacer.rate());
                    return Ok((page, turn));
                }
                Err(FetchError::Throttled {
                    reason,
                    retry_after,
                }) => self.throttled(pacer, &reason, retry_after),
                // A storage failure is the queue's, handled as any (StorageFailures), not the API's.
                Err(FetchError::Queue(err)) => return Err(err.into()),
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// JumpCloud asked for fewer requests: halve the pace (and hold off for its `Retry-After`).
    fn throttled(&self, pacer: &mut Pacer, reason: &str, retry_after: Option<Duration>) {
        pacer.throttled(Instant::now(), retry_after);
        self.metrics.api_pace(&self.stream, pacer.rate());
        tracing::info!(
            stream = %self.stream,
            requests_per_second = pacer.rate(),
            retry_after = ?retry_after,
            "{reason}"
        );
    }

    /// Commits a page's last events, with the cursor when the page moves it ([`Committer::commit`]).
    async fn commit(
        &self,
        events: Vec<IncomingEvent>,
        cursor: Option<Cursor>,
        request_id: Option<&str>,
    ) -> Result<CommitOutcome, QueueError> {
        self.committer().commit(events, cursor, request_id).await
    }

    /// What this stream's commits need, cloned.
    fn committer(&self) -> Committer {
        Committer {
            stream: self.stream.clone(),
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
            forwarder_wake: self.forwarder_wake.clone(),
        }
    }

    /// How far behind the present a poll must start (from its watermark, or from `initial_lookback` on a
    /// first start) to ask for catch-up pages from its first request: twice the poll interval, and at
    /// least [`FAR_BEHIND_MIN`]. A stream that keeps up starts each poll about one interval behind.
    fn far_behind(&self) -> Duration {
        (self.config.poll_interval * 2).max(FAR_BEHIND_MIN)
    }

    /// Commits (and flushes) a first start's cursor at `start_ns`, before anything is read.
    async fn commit_start(&self, start_ns: i64) -> Result<(), QueueError> {
        let stream = self.stream.clone();
        let cursor = Cursor {
            watermark_ns: start_ns,
            updated_at_ms: now_ms(),
        };
        self.queue
            .run_blocking(move |queue| queue.commit_page(&stream, &[], Some(cursor)))
            .await?;
        self.queue.flush().await
    }

    /// The page size after a full page: `catch_up_page_size`, but no more events than the room the queue
    /// has left for this stream ([`Queue::room_bytes`]) is likely to hold (judged by the size of the page
    /// just read, `event_bytes` on average), and never less than `page_size`. So a stream overshoots its
    /// share by at most one ordinary page, as with `page_size` alone, and one stream's catch-up cannot
    /// fill the others' room.
    fn catch_up_limit(&self, event_bytes: u64) -> u32 {
        let catch_up = self.config.catch_up_page_size.max(self.config.page_size);
        let room = self.queue.room_bytes(&self.stream);
        let average = event_bytes.max(1);
        let fits = u32::try_from(room / average).unwrap_or(u32::MAX);
        fits.clamp(self.config.page_size, catch_up)
    }

    /// Forgets dedup entries too old to be read again: older than the overlap window (plus a margin)
    /// and than `queue.dedup_window`.
    async fn prune(&self, watermark_ns: i64) -> Result<(), QueueError> {
        let keep = (self.config.overlap + DEDUP_MARGIN).max(self.dedup_window);
        let cutoff = watermark_ns.saturating_sub(keep.as_nanos() as i64);
        let stream = self.stream.clone();
        self.queue
            .run_blocking(move |queue| {
                while queue.prune_dedup(&stream, cutoff, 10_000)? >= 10_000 {}
                Ok(())
            })
            .await
    }
}

/// A poll that starts less than this behind asks for `page_size` events first (see `Poller::far_behind`).
const FAR_BEHIND_MIN: Duration = Duration::from_secs(60);

/// Until a page has been read, a catch-up page is sized as if each event took this many bytes. JumpCloud's
/// events take about 0.5 to 3 KB: assuming more errs towards smaller pages when the queue has little room.
const ASSUMED_EVENT_BYTES: u64 = 4096;

/// How a request ended, for the request counter.
fn outcome_of<T>(fetched: &Result<T, FetchError>) -> Outcome {
    match fetched {
        // The API answered; the queue failed to take a part of the page.
        Ok(_) | Err(FetchError::Queue(_)) => Outcome::Ok,
        Err(FetchError::Rejected(_)) => Outcome::Rejected,
        Err(FetchError::Transient { .. } | FetchError::Throttled { .. }) => Outcome::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::poll_phase;
    use std::time::Duration;

    #[test]
    fn streams_poll_at_even_shares_of_the_interval() {
        let minute = Duration::from_secs(60);
        assert_eq!(poll_phase(minute, 0, 1), Duration::ZERO);
        let phases: Vec<Duration> = (0..4).map(|i| poll_phase(minute, i, 4)).collect();
        assert_eq!(
            phases,
            [0, 15, 30, 45].map(Duration::from_secs).to_vec(),
            "four streams a quarter of the interval apart, the first one at once"
        );
        let many: Vec<Duration> = (0..500).map(|i| poll_phase(minute, i, 500)).collect();
        assert!(many.windows(2).all(|w| w[0] < w[1] && w[1] < minute));
    }
}

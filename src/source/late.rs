//! The late check: collecting what JumpCloud indexed late, behind the cursor, without reading the whole
//! overlap window again on every poll.
//!
//! Each poll, with the cursor (watermark) at W, splits time at a point F >= W: the late check covers
//! `[W - overlap, F)` and the forward read starts at F. F is the start of the second in which the previous
//! poll's forward read ended, when it ended with this very cursor (known in memory:
//! [`LateCheck::forward_done`]), else W (after a restart, or a poll cut short). The late check asks `/events/interval` how many events JumpCloud holds
//! in each slice of its window, asks the queue's dedup index how many of them this stream already queued
//! ([`Queue::dedup_counts`](crate::queue::Queue::dedup_counts)), and reads again only the slices where
//! the two differ, with `/events` restricted to the slice, through the same commit as any page (the dedup
//! index drops what is known; the cursor does not move). When few of a slice's many events are missing
//! (one late event in a busy second), the slice is halved with `/events/count` until the parts that
//! differ are small, and only those are read (at most [`COUNTS_PER_POLL`] counts per poll).
//!
//! Why this keeps the guarantee (every event indexed at most `overlap` after its timestamp is collected),
//! whatever F: take an event stamped t, visible from v <= t + overlap, and the first poll that starts
//! after v (its late check and its forward read both come after v). The poll before it started at or
//! before v, and the watermark W is that start (it never passes the start of the poll that moved it), so
//! W <= v <= t + overlap: t >= W - overlap. If t < F, the late check counts the event and reads its
//! slice again unless we hold it; if t >= F, the forward read reads it.
//!
//! Why F and not W: W is the start of the previous poll, before its late check; starting the forward
//! read at W would read again every event stamped while that late check ran (its requests are paced):
//! with 2-second polls that was 0.7 more event read per event queued (BENCHMARKS.md, "Late check").
//!
//! Invariants:
//! - The window is cut at whole milliseconds, `[floor(W - overlap), floor(F))`, the precision at which
//!   JumpCloud compares times and starts its buckets; the forward read starts at `floor(F)`, so the
//!   events of F's own millisecond are read by it whatever precision the API compares at.
//! - Slices are cut where the API's buckets start and end (whatever their alignment), so the API's count
//!   and ours always cover the same milliseconds. An event belongs to the millisecond its nanosecond
//!   timestamp falls in, on both sides.
//! - A slice is read again when the API's count differs from what we know of it: the dedup index's count
//!   or, once the slice was read again in full, the API's count at that time. So a count that reading
//!   cannot change (smaller than ours: events without a readable timestamp are filed under the time they
//!   were read; larger: two events with one identity) costs one re-read per change, not one per poll.
//! - Every stale part ends read again whole or found complete by a fresh count of it: a count that cannot
//!   be had (or the poll's counts spent) means reading the part whole, never skipping it.
//! - Never skipped: when the histogram cannot be had (refused, failing, unusable) the poll falls back to
//!   reading the whole window again from `W - overlap`, as before, and counts it (`late_check_fallbacks`).
//!   A refusal (400/403/404: an API or a key without the endpoint) is logged once and asked again after
//!   [`ASK_AGAIN_AFTER_REFUSAL`]; meanwhile every poll falls back.
//! - A failure while reading a slice fails the poll (retried with backoff); the next poll checks again.
//!   A poll stopped by a full queue ends before its forward read; the cursor has not moved.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::api::{AggregateError, Bucket, EventsQuery, FetchError, IntervalQuery};
use super::commit::EarlyParts;
use super::pacing::Pacer;
use super::paging::Paging;
use super::{PollError, Poller};
use crate::clock::format_rfc3339_ns;
use crate::metrics::Outcome;
use crate::shutdown::Shutdown;

const MS: i64 = 1_000_000;
const SECOND: i64 = 1_000_000_000;

/// At most this many slices per window: a window of up to 1000 s (the default 10-minute overlap and the
/// last poll's read) has 1-second slices, the finest the API offers; a longer one wider slices.
const MAX_SLICES: u64 = 1000;

/// A stale part holding at most this many events is read again whole rather than split.
const LEAF_EVENTS: u64 = 16;

/// At most this many `/events/count` requests per poll for splitting stale parts (8 halvings: a slice of
/// 4000 events narrowed to 16 for one missing event); past them, stale parts are read whole. Fewer when
/// requests are paced so that they would take over a quarter of the poll interval.
const COUNTS_PER_POLL: u32 = 16;

/// After the API refused the histogram, polls re-read the whole window for this long before asking again.
pub const ASK_AGAIN_AFTER_REFUSAL: Duration = Duration::from_secs(3600);

/// The late check's memory, one per stream.
#[derive(Debug, Default)]
pub struct LateCheck {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the API last refused the histogram.
    refused_at: Option<Instant>,
    refusal_logged: bool,
    /// The last attempt failed (logged once per streak).
    failing: bool,
    /// Slices read again in full (`lo_ms`, `hi_ms`) → the API's count for them then.
    reread: HashMap<(i64, i64), u64>,
    /// The cursor after the last complete forward read, and when that read ended.
    read_until: Option<(i64, i64)>,
}

/// A part of the window, in milliseconds, and how many events the API counts in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slice {
    lo_ms: i64,
    hi_ms: i64,
    api: u64,
}

/// What the late check decided for one poll.
pub(super) enum LateStart {
    /// Start the forward read here.
    At(i64),
    /// The queue has no room for this stream: end the poll (the next one checks again).
    Paused,
}

impl LateCheck {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slices of `slices` to read again, adjacent ones merged (fewer requests, the same events).
    fn stale(&self, slices: &[Slice], ours: &[u64]) -> Vec<Range<usize>> {
        let state = self.state();
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for (i, (slice, ours)) in slices.iter().zip(ours).enumerate() {
            let known = state
                .reread
                .get(&(slice.lo_ms, slice.hi_ms))
                .copied()
                .unwrap_or(*ours);
            if slice.api == known {
                continue;
            }
            match ranges.last_mut() {
                Some(range) if range.end == i => range.end = i + 1,
                _ => ranges.push(i..i + 1),
            }
        }
        ranges
    }

    /// `slices` were read again in full, after the API counted what they say.
    fn remember(&self, slices: &[Slice]) {
        let mut state = self.state();
        for slice in slices {
            state.reread.insert((slice.lo_ms, slice.hi_ms), slice.api);
        }
    }

    /// The last poll's forward read ended at `at_ns` with the cursor at `watermark_ns`: everything visible
    /// then from the watermark on was read. The next late check reaches the whole second before that, and
    /// the next forward read starts there: the events of the second the read ended in are read forward
    /// again rather than counted, because that second usually gains more (radius events are stamped to
    /// the second, so they land behind a read made later in their second; indexing takes a moment).
    pub(super) fn forward_done(&self, watermark_ns: i64, at_ns: i64) {
        let second = at_ns.div_euclid(SECOND) * SECOND;
        self.state().read_until = Some((watermark_ns, second));
    }

    /// Where the late window of a poll starting with the cursor at `watermark_ns` ends: where the last
    /// forward read ended if it ended with this cursor (the cursor stays at the start of the poll that
    /// moved it, for the guarantee), else the watermark (after a restart, or a poll cut short).
    fn read_until(&self, watermark_ns: i64) -> i64 {
        match self.state().read_until {
            Some((watermark, at_ns)) if watermark == watermark_ns && at_ns > watermark_ns => at_ns,
            _ => watermark_ns,
        }
    }

    /// Forgets the slices that ended before `start_ms` (out of every later window).
    fn forget_before(&self, start_ms: i64) {
        self.state()
            .reread
            .retain(|(_, hi_ms), _| *hi_ms > start_ms);
    }

    /// True while a refusal is recent: no histogram is asked for.
    fn refused_recently(&self) -> bool {
        self.state()
            .refused_at
            .is_some_and(|at| at.elapsed() < ASK_AGAIN_AFTER_REFUSAL)
    }

    fn refused(&self, stream: &str, overlap: Duration, err: &AggregateError) {
        let mut state = self.state();
        state.refused_at = Some(Instant::now());
        if !state.refusal_logged {
            state.refusal_logged = true;
            tracing::warn!(
                stream,
                "{err}: the late check cannot run, so every poll reads the last {} again (jumpcloud.overlap) \
                 as before, which costs more requests but loses nothing; asking again in {}",
                humantime::format_duration(overlap),
                humantime::format_duration(ASK_AGAIN_AFTER_REFUSAL),
            );
        }
    }

    fn failed(&self, stream: &str, overlap: Duration, why: &str) {
        let mut state = self.state();
        if !state.failing {
            state.failing = true;
            tracing::info!(
                stream,
                "the late check failed ({why}): this poll reads the last {} again instead, and the next \
                 poll checks again",
                humantime::format_duration(overlap),
            );
        }
    }

    fn answered(&self, stream: &str) {
        let mut state = self.state();
        if state.refused_at.take().is_some() || state.failing {
            tracing::info!(stream, "the late check works again");
        }
        state.failing = false;
        state.refusal_logged = false;
    }
}

/// Cuts `[start_ms, end_ms)` where the buckets (each `width_ms` wide from its key) begin and end; what no
/// bucket covers holds no event. An error when the buckets overlap, go backwards or count events outside
/// the window: such an answer cannot be compared with ours.
fn slices(
    buckets: &[Bucket],
    width_ms: i64,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<Slice>, String> {
    let mut slices = Vec::with_capacity(buckets.len() + 2);
    let mut at = start_ms;
    for bucket in buckets {
        let lo_ms = bucket.key_ms.max(start_ms);
        let hi_ms = bucket.key_ms.saturating_add(width_ms).min(end_ms);
        if hi_ms <= lo_ms {
            if bucket.doc_count > 0 {
                return Err(format!(
                    "a bucket at {} ms outside the window counts {} events",
                    bucket.key_ms, bucket.doc_count
                ));
            }
            continue;
        }
        if lo_ms < at {
            return Err(format!(
                "the bucket at {} ms overlaps the one before",
                bucket.key_ms
            ));
        }
        if lo_ms > at {
            slices.push(Slice {
                lo_ms: at,
                hi_ms: lo_ms,
                api: 0,
            });
        }
        slices.push(Slice {
            lo_ms,
            hi_ms,
            api: bucket.doc_count,
        });
        at = hi_ms;
    }
    if at < end_ms {
        slices.push(Slice {
            lo_ms: at,
            hi_ms: end_ms,
            api: 0,
        });
    }
    Ok(slices)
}

/// A stale part of the window being brought up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    lo_ms: i64,
    hi_ms: i64,
    /// The API's count when it was last asked.
    api: u64,
    /// The dedup index's count.
    ours: u64,
    /// Known stale whatever the counts say (a range of slices judged by a remembered count).
    forced: bool,
}

/// What to do with a [`Part`].
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Complete: we hold what the API counts.
    Skip,
    /// Read it again whole.
    Read,
    /// Count both halves, split here.
    Split(i64),
}

impl Part {
    fn step(&self, counts_left: u32) -> Step {
        if self.api == self.ours && !self.forced {
            return Step::Skip;
        }
        // More of ours than the API counts: events we filed elsewhere than the API does (no readable
        // timestamp); the counts of halves would not say which are missing. Read.
        if self.api <= self.ours {
            return Step::Read;
        }
        let missing = self.api - self.ours;
        // Splitting pays when few of many are missing: two small requests save reading half the part.
        if self.api <= LEAF_EVENTS
            || missing * 4 >= self.api
            || self.hi_ms - self.lo_ms < 2
            || counts_left < 2
        {
            return Step::Read;
        }
        Step::Split(self.lo_ms + (self.hi_ms - self.lo_ms) / 2)
    }
}

fn aggregate_outcome<T>(answer: &Result<T, AggregateError>) -> Outcome {
    match answer {
        Ok(_) => Outcome::Ok,
        Err(AggregateError::Refused { .. } | AggregateError::Failed(FetchError::Rejected(_))) => {
            Outcome::Rejected
        }
        Err(AggregateError::Failed(
            FetchError::Transient { .. } | FetchError::Throttled { .. } | FetchError::Queue(_),
        )) => Outcome::Retry,
    }
}

/// How many counts a poll may spend splitting stale parts: [`COUNTS_PER_POLL`], or fewer if, paced at
/// the stream's request ceiling, they would take more than a quarter of `poll_interval` (each count delays
/// the forward read, and so every event's delivery).
fn count_budget(poll_interval: Duration, requests_per_second: f64) -> u32 {
    let pace =
        Duration::from_secs_f64(1.0 / requests_per_second.max(0.01)).max(Duration::from_millis(10));
    let fits = (poll_interval / 4).as_secs_f64() / pace.as_secs_f64();
    (fits as u32).min(COUNTS_PER_POLL)
}

/// The histogram's bucket width for a window: whole seconds, at most [`MAX_SLICES`] buckets.
fn slice_seconds(window: Duration) -> u64 {
    window.as_secs().div_ceil(MAX_SLICES).max(1)
}

impl Poller {
    /// Runs the late check behind `watermark_ns` (see the module's documentation) and says where this
    /// poll's forward read starts: `floor(F)` after a successful check, `watermark - overlap` (a full
    /// re-read, as before) when the check could not run.
    pub(super) async fn late_check(
        &self,
        shutdown: &Shutdown,
        pacer: &mut Pacer,
        watermark_ns: i64,
        poll_started_ns: i64,
    ) -> Result<LateStart, PollError> {
        let overlap = self.config.overlap;
        let fallback_ns = watermark_ns.saturating_sub(overlap.as_nanos() as i64);
        if overlap.as_nanos() < MS as u128 {
            // No overlap: nothing behind the watermark to check.
            return Ok(LateStart::At(watermark_ns));
        }
        let start_ms = fallback_ns.div_euclid(MS);
        let end_ms = self.late.read_until(watermark_ns).div_euclid(MS);
        let fall_back = || {
            self.metrics.late_check_fell_back(&self.stream);
            Ok(LateStart::At(fallback_ns))
        };
        // A clock set back since the last poll: the API refuses a window in the future.
        if end_ms * MS > poll_started_ns || self.late.refused_recently() {
            return fall_back();
        }
        let seconds = slice_seconds(Duration::from_millis((end_ms - start_ms) as u64));
        let query = IntervalQuery {
            service: &self.config.services,
            start_time: format_rfc3339_ns(start_ms * MS),
            end_time: format_rfc3339_ns(end_ms * MS),
            interval_unit: "s",
            interval_value: seconds.to_string(),
        };
        self.wait_turn(shutdown, pacer).await?;
        let asked = Instant::now();
        let answer = tokio::select! {
            answer = self.api.interval(&query) => answer,
            _ = shutdown.wait() => return Err(PollError::Shutdown),
        };
        self.metrics
            .api_request(&self.stream, aggregate_outcome(&answer), asked.elapsed());
        let buckets = match answer {
            Ok(buckets) => buckets,
            Err(err @ AggregateError::Refused { .. }) => {
                self.late.refused(&self.stream, overlap, &err);
                return fall_back();
            }
            Err(AggregateError::Failed(err)) => {
                if let FetchError::Throttled {
                    reason,
                    retry_after,
                } = &err
                {
                    self.throttled(pacer, reason, *retry_after);
                }
                self.late.failed(&self.stream, overlap, &err.to_string());
                return fall_back();
            }
        };
        let slices = match slices(&buckets, seconds as i64 * 1000, start_ms, end_ms) {
            Ok(slices) => slices,
            Err(why) => {
                self.late.failed(
                    &self.stream,
                    overlap,
                    &format!("JumpCloud sent an unusable histogram: {why}"),
                );
                return fall_back();
            }
        };
        self.late.answered(&self.stream);
        self.late.forget_before(start_ms);

        let mut bounds: Vec<i64> = slices.iter().map(|slice| slice.lo_ms * MS).collect();
        bounds.push(end_ms * MS);
        let stream = self.stream.clone();
        let ours = self
            .queue
            .run_blocking(move |queue| queue.dedup_counts(&stream, &bounds))
            .await?;
        let mut counts_left =
            count_budget(self.config.poll_interval, self.config.request_ceiling());
        for range in self.late.stale(&slices, &ours) {
            if shutdown.is_triggered() {
                return Err(PollError::Shutdown);
            }
            if self.queue.no_room(&self.stream).is_some() {
                return Ok(LateStart::Paused);
            }
            let stale = Part {
                lo_ms: slices[range.start].lo_ms,
                hi_ms: slices[range.end - 1].hi_ms,
                api: slices[range.clone()].iter().map(|slice| slice.api).sum(),
                ours: ours[range.clone()].iter().sum(),
                forced: true,
            };
            let done = self
                .bring_up_to_date(shutdown, pacer, stale, &mut counts_left, poll_started_ns)
                .await?;
            if !done {
                return Ok(LateStart::Paused);
            }
            self.late.remember(&slices[range]);
        }
        Ok(LateStart::At(end_ms * MS))
    }

    /// Brings a stale part of the window up to date: reads it again whole or, when a few of many events
    /// are missing, counts its two halves (`/events/count`) and goes on with those whose count differs
    /// from ours, until the parts are small ([`LEAF_EVENTS`]) or the poll's counts are spent. Every part
    /// is either read again whole or found complete, so afterwards we hold every event the API counted.
    /// Returns false when it stopped because the queue has no room for this stream.
    async fn bring_up_to_date(
        &self,
        shutdown: &Shutdown,
        pacer: &mut Pacer,
        stale: Part,
        counts_left: &mut u32,
        poll_started_ns: i64,
    ) -> Result<bool, PollError> {
        let mut todo = vec![stale];
        while let Some(part) = todo.pop() {
            match part.step(*counts_left) {
                Step::Skip => {}
                Step::Read => {
                    if !self
                        .read_again(shutdown, pacer, part.lo_ms, part.hi_ms, poll_started_ns)
                        .await?
                    {
                        return Ok(false);
                    }
                }
                Step::Split(mid_ms) => {
                    *counts_left -= 2;
                    let left = self.count(shutdown, pacer, part.lo_ms, mid_ms).await?;
                    let right = self.count(shutdown, pacer, mid_ms, part.hi_ms).await?;
                    let (Some(left), Some(right)) = (left, right) else {
                        // Without counts, read the part whole; no more counting this poll.
                        *counts_left = 0;
                        todo.push(Part {
                            forced: true,
                            ..part
                        });
                        continue;
                    };
                    let bounds = [part.lo_ms * MS, mid_ms * MS, part.hi_ms * MS];
                    let stream = self.stream.clone();
                    let ours = self
                        .queue
                        .run_blocking(move |queue| queue.dedup_counts(&stream, &bounds))
                        .await?;
                    // Left last, so that it is done first: parts are read in time order.
                    todo.push(Part {
                        lo_ms: mid_ms,
                        hi_ms: part.hi_ms,
                        api: right,
                        ours: ours[1],
                        forced: false,
                    });
                    todo.push(Part {
                        lo_ms: part.lo_ms,
                        hi_ms: mid_ms,
                        api: left,
                        ours: ours[0],
                        forced: false,
                    });
                }
            }
        }
        Ok(true)
    }

    /// How many events the API holds in `[lo_ms, hi_ms)`; `None` when it would not say (the caller then
    /// reads the part whole).
    async fn count(
        &self,
        shutdown: &Shutdown,
        pacer: &mut Pacer,
        lo_ms: i64,
        hi_ms: i64,
    ) -> Result<Option<u64>, PollError> {
        let query = EventsQuery {
            service: &self.config.services,
            start_time: format_rfc3339_ns(lo_ms * MS),
            end_time: Some(format_rfc3339_ns(hi_ms * MS)),
            limit: 1,
            sort: "ASC",
            search_after: None,
        };
        self.wait_turn(shutdown, pacer).await?;
        let asked = Instant::now();
        let answer = tokio::select! {
            answer = self.api.count_range(&query) => answer,
            _ = shutdown.wait() => return Err(PollError::Shutdown),
        };
        self.metrics
            .api_request(&self.stream, aggregate_outcome(&answer), asked.elapsed());
        match answer {
            Ok(count) => Ok(Some(count)),
            Err(err) => {
                tracing::debug!(stream = %self.stream, "late check: no count ({err}); reading the part whole");
                Ok(None)
            }
        }
    }

    /// Reads `[lo_ms, hi_ms)` again, page by page, committing each page without moving the cursor.
    /// Returns false when it stopped early because the queue has no room for this stream.
    async fn read_again(
        &self,
        shutdown: &Shutdown,
        pacer: &mut Pacer,
        lo_ms: i64,
        hi_ms: i64,
        poll_started_ns: i64,
    ) -> Result<bool, PollError> {
        let mut paging = Paging::default();
        let mut limit = self.config.page_size;
        loop {
            let query = EventsQuery {
                service: &self.config.services,
                start_time: format_rfc3339_ns(lo_ms * MS),
                end_time: Some(format_rfc3339_ns(hi_ms * MS)),
                limit,
                sort: "ASC",
                search_after: paging.search_after(),
            };
            let mut early = EarlyParts::new(self.committer());
            let (page, turn) = self
                .fetch_paced(shutdown, pacer, &query, poll_started_ns, &mut early)
                .await?;
            let early_queued = early.settle().await?;
            let read = early.read.add(&page.events);
            let committed = self
                .commit(page.events, None, page.request_id.as_deref())
                .await?;
            drop(turn);
            let queued = early_queued + committed.queued;
            self.metrics.late_events(&self.stream, queued);
            tracing::debug!(
                stream = %self.stream,
                from = %format_rfc3339_ns(lo_ms * MS),
                to = %format_rfc3339_ns(hi_ms * MS),
                polled = read.events,
                queued,
                "late check: slice read again"
            );
            if !paging
                .advance(page.full, page.search_after)
                .map_err(|_| PollError::StuckCursor)?
            {
                return Ok(true);
            }
            limit = self.catch_up_limit(read.average_bytes());
            if self.queue.no_room(&self.stream).is_some() {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The late check: collecting what JumpCloud indexed late, behind the cursor, without reading the whole
//! overlap window again on every poll.
//!
//! A poll's forward read starts at the watermark W. Before it, the late check covers `[W - overlap, W)`: one
//! `/events/interval` request says how many events JumpCloud holds in each slice of that window, the
//! queue's dedup index says how many of them this stream already queued ([`Queue::dedup_counts`]), and
//! only the slices where the two differ are read again, with `/events` restricted to the slice, through the
//! same commit as any page (the dedup index drops what is known; the cursor does not move).
//!
//! Why this keeps the guarantee (every event indexed at most `overlap` after its timestamp is collected):
//! take an event stamped t and visible from v <= t + overlap, and the first poll whose late check starts
//! after v. If t >= that poll's watermark W, its forward read sees the event. Otherwise
//! t < W <= the start of the poll before < v <= t + overlap: t lies in `[W - overlap, W)`, the histogram
//! counts the event, and its slice is read again unless we already hold it.
//!
//! Invariants:
//! - The window is cut at whole milliseconds, `[floor(W - overlap), floor(W))`, the precision at which
//!   JumpCloud compares times and starts its buckets; the forward read then starts at `floor(W)`, so the
//!   events of W's own millisecond are read by it whatever precision the API compares at.
//! - Slices are cut where the API's buckets start and end (whatever their alignment), so the API's count
//!   and ours always cover the same milliseconds. An event belongs to the millisecond its nanosecond
//!   timestamp falls in, on both sides.
//! - A slice is read again when the API's count differs from what we know of it: the dedup index's count
//!   or, once the slice was read again in full, the API's count at that time. So a count that reading
//!   cannot change (smaller than ours: events without a readable timestamp are filed under the time they
//!   were read; larger: two events with one identity) costs one re-read per change, not one per poll.
//! - Never skipped: when the histogram cannot be had (refused, failing, unusable) the poll falls back to
//!   re-reading the whole window as before, and counts it (`late_check_fallbacks`). A refusal
//!   (400/403/404: an API or a key without the endpoint) is logged once and asked again after
//!   [`ASK_AGAIN_AFTER_REFUSAL`]; meanwhile every poll falls back.
//! - A failure while reading a slice fails the poll (retried with backoff); the next poll checks again.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::api::{AggregateError, Bucket, EventsQuery, FetchError, IntervalQuery};
use super::pacing::Pacer;
use super::paging::Paging;
use super::{PollError, Poller};
use crate::clock::format_rfc3339_ns;
use crate::metrics::Outcome;
use crate::shutdown::Shutdown;

const MS: i64 = 1_000_000;

/// At most this many slices per window: the histogram of a 10-minute overlap has 1-second slices (the
/// finest the API offers), a longer overlap wider ones.
const MAX_SLICES: u64 = 600;

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

/// The histogram's bucket width for an overlap: whole seconds, at most [`MAX_SLICES`] buckets.
fn slice_seconds(overlap: Duration) -> u64 {
    overlap.as_secs().div_ceil(MAX_SLICES).max(1)
}

impl Poller {
    /// Runs the late check behind `watermark_ns` (see the module's documentation) and says where this
    /// poll's forward read starts: `floor(watermark)` after a successful check, `watermark - overlap` (a
    /// full re-read, as before) when the check could not run.
    pub(super) async fn late_check(
        &self,
        shutdown: &Shutdown,
        pacer: &mut Pacer,
        watermark_ns: i64,
        poll_started_ns: i64,
    ) -> Result<LateStart, PollError> {
        let overlap = self.config.overlap;
        let fallback_ns = watermark_ns.saturating_sub(overlap.as_nanos() as i64);
        let start_ms = fallback_ns.div_euclid(MS);
        let end_ms = watermark_ns.div_euclid(MS);
        if end_ms <= start_ms {
            // No overlap: nothing behind the watermark to check.
            return Ok(LateStart::At(watermark_ns));
        }
        let fall_back = || {
            self.metrics.late_check_fell_back(&self.stream);
            Ok(LateStart::At(fallback_ns))
        };
        // A clock set back since the last poll: the API refuses a window in the future.
        if end_ms * MS > poll_started_ns || self.late.refused_recently() {
            return fall_back();
        }
        let seconds = slice_seconds(overlap);
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
        let outcome = match &answer {
            Ok(_) => Outcome::Ok,
            Err(
                AggregateError::Refused { .. } | AggregateError::Failed(FetchError::Rejected(_)),
            ) => Outcome::Rejected,
            Err(AggregateError::Failed(
                FetchError::Transient { .. } | FetchError::Throttled { .. },
            )) => Outcome::Retry,
        };
        self.metrics
            .api_request(&self.stream, outcome, asked.elapsed());
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
        for range in self.late.stale(&slices, &ours) {
            if shutdown.is_triggered() {
                return Err(PollError::Shutdown);
            }
            if self.queue.no_room(&self.stream).is_some() {
                return Ok(LateStart::Paused);
            }
            let (lo_ms, hi_ms) = (slices[range.start].lo_ms, slices[range.end - 1].hi_ms);
            if !self
                .read_again(shutdown, pacer, lo_ms, hi_ms, poll_started_ns)
                .await?
            {
                return Ok(LateStart::Paused);
            }
            self.late.remember(&slices[range]);
        }
        Ok(LateStart::At(end_ms * MS))
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
            let page = self
                .fetch_paced(shutdown, pacer, &query, poll_started_ns)
                .await?;
            let polled = page.events.len() as u64;
            let polled_bytes: u64 = page.events.iter().map(|e| e.raw.len() as u64).sum();
            let committed = self
                .commit(page.events, None, page.request_id.as_deref())
                .await?;
            self.metrics.late_events(&self.stream, committed.queued);
            tracing::debug!(
                stream = %self.stream,
                from = %format_rfc3339_ns(lo_ms * MS),
                to = %format_rfc3339_ns(hi_ms * MS),
                polled,
                queued = committed.queued,
                "late check: slice read again"
            );
            if !paging
                .advance(page.full, page.search_after)
                .map_err(|_| PollError::StuckCursor)?
            {
                return Ok(true);
            }
            limit = self.catch_up_limit(polled, polled_bytes);
            if self.queue.no_room(&self.stream).is_some() {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(key_ms: i64, doc_count: u64) -> Bucket {
        Bucket { key_ms, doc_count }
    }

    fn slice(lo_ms: i64, hi_ms: i64, api: u64) -> Slice {
        Slice { lo_ms, hi_ms, api }
    }

    #[test]
    fn slices_follow_the_buckets_clipped_to_the_window() {
        // A window of [1500, 4200) ms, 1-second buckets aligned on the second.
        let buckets = [bucket(1000, 3), bucket(2000, 0), bucket(3000, 7)];
        assert_eq!(
            slices(&buckets, 1000, 1500, 4200).unwrap(),
            vec![
                slice(1500, 2000, 3),
                slice(2000, 3000, 0),
                slice(3000, 4000, 7),
                slice(4000, 4200, 0)
            ]
        );
        // Nothing listed: one empty slice; gaps between listed buckets are empty slices.
        assert_eq!(
            slices(&[], 1000, 1500, 4200).unwrap(),
            vec![slice(1500, 4200, 0)]
        );
        assert_eq!(
            slices(&[bucket(2000, 1), bucket(4000, 2)], 1000, 1500, 4200).unwrap(),
            vec![
                slice(1500, 2000, 0),
                slice(2000, 3000, 1),
                slice(3000, 4000, 0),
                slice(4000, 4200, 2)
            ]
        );
        // Buckets aligned elsewhere (an offset of 250 ms) are followed too.
        assert_eq!(
            slices(&[bucket(1250, 4), bucket(2250, 5)], 1000, 1500, 3000).unwrap(),
            vec![slice(1500, 2250, 4), slice(2250, 3000, 5)]
        );
    }

    #[test]
    fn answers_that_cannot_be_compared_are_refused() {
        assert!(slices(&[bucket(3000, 1), bucket(2000, 1)], 1000, 1500, 4200).is_err());
        assert!(slices(&[bucket(2000, 1), bucket(2500, 1)], 1000, 1500, 4200).is_err());
        assert!(slices(&[bucket(9000, 1)], 1000, 1500, 4200).is_err());
        // An empty bucket outside the window is harmless.
        assert!(slices(&[bucket(9000, 0)], 1000, 1500, 4200).is_ok());
    }

    #[test]
    fn stale_slices_are_those_whose_count_moved_merged_when_adjacent() {
        let check = LateCheck::default();
        let slices = [
            slice(0, 1000, 5),
            slice(1000, 2000, 6),
            slice(2000, 3000, 4),
            slice(3000, 4000, 2),
            slice(4000, 5000, 9),
        ];
        // Grown, grown, same, smaller, same.
        assert_eq!(check.stale(&slices, &[4, 5, 4, 3, 9]), vec![0..2, 3..4]);
        // Once read again in full, a slice is judged by the API's count at that time.
        check.remember(&slices[0..2]);
        check.remember(&slices[3..4]);
        assert_eq!(
            check.stale(&slices, &[4, 5, 4, 3, 9]),
            Vec::<Range<usize>>::new()
        );
        let grown = [
            slice(0, 1000, 5),
            slice(1000, 2000, 7),
            slice(2000, 3000, 4),
            slice(3000, 4000, 3),
        ];
        assert_eq!(check.stale(&grown, &[5, 6, 4, 3]), vec![1..2, 3..4]);
        // Forgotten once out of the window.
        check.forget_before(2000);
        assert_eq!(check.stale(&slices[..1], &[4]), vec![0..1]);
        assert_eq!(check.stale(&slices[3..4], &[3]), Vec::<Range<usize>>::new());
    }

    #[test]
    fn slice_width_grows_with_the_overlap() {
        assert_eq!(slice_seconds(Duration::from_secs(600)), 1);
        assert_eq!(slice_seconds(Duration::from_secs(60)), 1);
        assert_eq!(slice_seconds(Duration::from_secs(601)), 2);
        assert_eq!(slice_seconds(Duration::from_secs(86_400)), 144);
        assert_eq!(slice_seconds(Duration::ZERO), 1);
    }
}

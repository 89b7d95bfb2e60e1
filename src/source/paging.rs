//! What a poll or a backfill needs between two pages of one query: JumpCloud's `search_after` cursor, and
//! the poller's watermark step.
//!
//! Invariants:
//! - A full page whose `X-Search_after` repeats the previous one is an error ([`Stuck`]): asking again
//!   with it would loop forever on the same page.
//! - The watermark never goes back, never passes the time the poll started, and after a full page stops at
//!   the page's last millisecond (more events of that millisecond may follow on the next page).

use serde_json::value::RawValue;

/// The `search_after` cursor of a query in progress.
#[derive(Default)]
pub struct Paging {
    search_after: Option<Box<RawValue>>,
}

/// A full page came with the same `X-Search_after` as the page before it.
#[derive(Debug, PartialEq, Eq)]
pub struct Stuck;

impl Paging {
    /// The value to send with the next request (`None` for the first page).
    pub fn search_after(&self) -> Option<&RawValue> {
        self.search_after.as_deref()
    }

    /// Takes the answer's `X-Search_after`; `Ok(true)` when another page follows (the page was full).
    pub fn advance(&mut self, full: bool, next: Option<Box<RawValue>>) -> Result<bool, Stuck> {
        if !full {
            return Ok(false);
        }
        if next.as_ref().map(|n| n.get()) == self.search_after.as_ref().map(|s| s.get()) {
            return Err(Stuck);
        }
        self.search_after = next;
        Ok(true)
    }
}

/// The watermark after a page was committed: every event below it, indexed by the time it was read, is
/// queued. `last_event_ns` is the latest timestamp of the page, `poll_started_ns` when the poll began.
pub fn next_watermark(
    watermark_ns: i64,
    full: bool,
    last_event_ns: Option<i64>,
    poll_started_ns: i64,
) -> i64 {
    if !full {
        // The last page: everything indexed before the poll started has been read.
        return watermark_ns.max(poll_started_ns);
    }
    let last_ms = last_event_ns.map_or(watermark_ns, |ns| ns.div_euclid(1_000_000) * 1_000_000);
    watermark_ns.max(last_ms.min(poll_started_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn a_full_page_moves_to_its_last_millisecond() {
        assert_eq!(
            next_watermark(0, true, Some(5 * MS + 123), 100 * MS),
            5 * MS
        );
        // Before the epoch the millisecond is rounded down too, not towards zero.
        assert_eq!(next_watermark(-10 * MS, true, Some(-MS - 1), 0), -2 * MS);
    }

    #[test]
    fn never_past_the_start_of_the_poll() {
        // A device clock ahead of ours stamps events in the future.
        assert_eq!(next_watermark(0, true, Some(500 * MS), 100 * MS), 100 * MS);
    }

    #[test]
    fn never_backwards() {
        assert_eq!(
            next_watermark(50 * MS, true, Some(10 * MS), 100 * MS),
            50 * MS
        );
        assert_eq!(next_watermark(50 * MS, true, None, 100 * MS), 50 * MS);
        assert_eq!(next_watermark(150 * MS, false, None, 100 * MS), 150 * MS);
    }

    #[test]
    fn the_last_page_moves_to_the_start_of_the_poll() {
        assert_eq!(
            next_watermark(5 * MS, false, Some(7 * MS), 100 * MS),
            100 * MS
        );
    }

    fn raw(text: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(text.to_string()).expect("json"))
    }

    #[test]
    fn paging_follows_the_cursor_and_stops_when_stuck() {
        let mut paging = Paging::default();
        assert!(paging.search_after().is_none());
        assert_eq!(paging.advance(true, raw("[1,\"a\"]")), Ok(true));
        assert_eq!(paging.search_after().map(|r| r.get()), Some("[1,\"a\"]"));
        assert_eq!(paging.advance(true, raw("[2,\"b\"]")), Ok(true));
        assert_eq!(paging.advance(true, raw("[2,\"b\"]")), Err(Stuck));
        assert_eq!(paging.advance(false, None), Ok(false));
    }
}

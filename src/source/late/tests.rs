//! Tests of the late check's decisions: slices from a histogram, which are stale, how a stale part is
//! narrowed, the budgets.

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

fn part(api: u64, ours: u64, forced: bool) -> Part {
    Part {
        lo_ms: 0,
        hi_ms: 1000,
        api,
        ours,
        forced,
    }
}

#[test]
fn few_missing_of_many_are_narrowed_by_halves_the_rest_read_whole() {
    assert_eq!(part(100, 100, false).step(16), Step::Skip);
    assert_eq!(part(100, 99, false).step(16), Step::Split(500));
    // Small parts, many missing, no counts left, a single millisecond: read.
    assert_eq!(part(16, 15, false).step(16), Step::Read);
    assert_eq!(part(100, 75, false).step(16), Step::Read);
    assert_eq!(part(100, 99, false).step(1), Step::Read);
    let one_ms = Part {
        hi_ms: 1,
        ..part(100, 99, false)
    };
    assert_eq!(one_ms.step(16), Step::Read);
    // Fewer than ours, or judged stale by a remembered count: read whole, never skipped.
    assert_eq!(part(90, 100, false).step(16), Step::Read);
    assert_eq!(part(100, 100, true).step(16), Step::Read);
    assert_eq!(part(100, 99, true).step(16), Step::Split(500));
}

#[test]
fn counting_takes_at_most_a_quarter_of_the_poll_interval() {
    let s = Duration::from_secs;
    // Paced at 2 requests/s (an old min_request_interval of 500ms) and at the default 10.
    assert_eq!(count_budget(s(60), 2.0), 16);
    assert_eq!(count_budget(s(10), 2.0), 5);
    assert_eq!(count_budget(s(2), 2.0), 1);
    assert_eq!(count_budget(s(1), 100.0), 16);
    assert_eq!(count_budget(s(2), 10.0), 5);
}

#[test]
fn slice_width_grows_with_the_window() {
    assert_eq!(slice_seconds(Duration::from_secs(600)), 1);
    assert_eq!(slice_seconds(Duration::from_secs(1000)), 1);
    assert_eq!(slice_seconds(Duration::from_secs(60)), 1);
    assert_eq!(slice_seconds(Duration::from_millis(1_000_001)), 1);
    assert_eq!(slice_seconds(Duration::from_secs(1001)), 2);
    assert_eq!(slice_seconds(Duration::from_secs(86_400)), 87);
    assert_eq!(slice_seconds(Duration::ZERO), 1);
}

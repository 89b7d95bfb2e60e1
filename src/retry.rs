//! How the agent waits after a failure: jittered exponential backoff that never gives up, merged with the
//! server's `Retry-After`; how often a repeated failure is logged; and when failing storage means the
//! process should stop so that the service manager restarts it.
//!
//! A leaf: it imports nothing of the crate, and everyone may import it.
//!
//! Invariants:
//! - No backoff here ever gives up (`backoff`'s default stops after 15 minutes: `max_elapsed_time` is
//!   `None`). Events are never dropped because retrying took long.
//! - A `Retry-After` hint only ever lengthens a wait, never shortens it below the backoff.

use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;

/// The bounds of the backoff for passing failures (`retry_initial`, `retry_max` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max: Duration,
}

/// How long storage may keep failing before the process stops: sled stays in error after some failures
/// (a full disk) and only reopening it recovers, so the agent ends with an error for the service manager
/// to restart it. Everything queued is still on disk.
pub const STORAGE_GIVE_UP: Duration = Duration::from_secs(60);

/// The two backoffs of a component that talks to a server: one for passing failures (429, 5xx, timeouts),
/// one for configuration errors (a bad key), which are retried slowly until someone fixes them.
pub struct Backoffs {
    transient: ExponentialBackoff,
    rejected: ExponentialBackoff,
}

impl Backoffs {
    pub fn new(retry: RetryConfig) -> Backoffs {
        Backoffs {
            transient: exponential(retry.initial, retry.max, 0.3),
            // 30 s doubling to 10 min, so that a fixed key is noticed soon enough.
            rejected: exponential(Duration::from_secs(30), Duration::from_secs(600), 0.2),
        }
    }

    /// The wait before retrying a passing failure: the next backoff, or the server's hint when longer.
    pub fn transient_wait(&mut self, retry_after: Option<Duration>) -> Duration {
        let wait = self
            .transient
            .next_backoff()
            .unwrap_or(self.transient.max_interval);
        retry_after.map_or(wait, |hint| hint.max(wait))
    }

    /// The wait before retrying after a configuration error.
    pub fn rejected_wait(&mut self) -> Duration {
        self.rejected
            .next_backoff()
            .unwrap_or(self.rejected.max_interval)
    }

    /// After a success: the next failure waits the initial interval again.
    pub fn reset(&mut self) {
        self.transient.reset();
        self.rejected.reset();
    }
}

fn exponential(initial: Duration, max: Duration, jitter: f64) -> ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(initial)
        .with_max_interval(max)
        .with_multiplier(2.0)
        .with_randomization_factor(jitter)
        .with_max_elapsed_time(None)
        .build()
}

/// Tracks how long storage has been failing without a success in between.
#[derive(Default)]
pub struct StorageFailures {
    since: Option<Instant>,
}

impl StorageFailures {
    /// Records a failure; true when failures have lasted longer than [`STORAGE_GIVE_UP`].
    pub fn failed_too_long(&mut self) -> bool {
        self.since.get_or_insert_with(Instant::now).elapsed() > STORAGE_GIVE_UP
    }

    pub fn reset(&mut self) {
        self.since = None;
    }
}

/// Counts repeats of the same message so that a failure retried every second is logged once per
/// [`RepeatFilter::EVERY`], with the number of repeats, rather than thousands of times.
#[derive(Default)]
pub struct RepeatFilter {
    last: Option<(String, Instant)>,
    repeats: u64,
}

impl RepeatFilter {
    pub const EVERY: Duration = Duration::from_secs(300);

    /// Whether to log `message` now, and how many identical messages were held back before it.
    pub fn check(&mut self, message: &str) -> Option<u64> {
        match &self.last {
            Some((last, at)) if last == message && at.elapsed() < Self::EVERY => {
                self.repeats += 1;
                None
            }
            _ => {
                self.last = Some((message.to_string(), Instant::now()));
                Some(std::mem::take(&mut self.repeats))
            }
        }
    }

    pub fn reset(&mut self) {
        self.last = None;
        self.repeats = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn transient_waits_grow_to_the_cap_and_never_end() {
        let mut backoffs = Backoffs::new(config(100, 1_000));
        let waits: Vec<Duration> = (0..200).map(|_| backoffs.transient_wait(None)).collect();
        assert!(waits[0] <= Duration::from_millis(130), "{:?}", waits[0]);
        // Jitter is ±30 % around an interval capped at the maximum.
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(1_300)));
        assert!(waits[150..]
            .iter()
            .all(|w| *w >= Duration::from_millis(700)));
        backoffs.reset();
        assert!(backoffs.transient_wait(None) <= Duration::from_millis(130));
    }

    #[test]
    fn retry_after_only_lengthens_a_wait() {
        let mut backoffs = Backoffs::new(config(100, 1_000));
        assert_eq!(
            backoffs.transient_wait(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        let wait = backoffs.transient_wait(Some(Duration::from_millis(1)));
        assert!(wait >= Duration::from_millis(140), "{wait:?}");
    }

    #[test]
    fn rejected_waits_start_at_half_a_minute() {
        let mut backoffs = Backoffs::new(config(100, 1_000));
        let first = backoffs.rejected_wait();
        assert!(first >= Duration::from_secs(24) && first <= Duration::from_secs(36));
    }

    #[test]
    fn storage_failures_give_up_only_after_a_long_time() {
        let mut failures = StorageFailures::default();
        assert!(!failures.failed_too_long());
        assert!(!failures.failed_too_long());
        failures.reset();
        assert!(!failures.failed_too_long());
    }

    #[test]
    fn a_repeated_message_is_logged_once_with_its_count() {
        let mut filter = RepeatFilter::default();
        assert_eq!(filter.check("boom"), Some(0));
        assert_eq!(filter.check("boom"), None);
        assert_eq!(filter.check("boom"), None);
        assert_eq!(filter.check("other"), Some(2));
        filter.reset();
        assert_eq!(filter.check("other"), Some(0));
    }
}

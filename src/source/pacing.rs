//! How fast one API key may send requests: as fast as the API answers, up to a polite ceiling, slowing
//! down multiplicatively when the API says it is overloaded (429, 503, a 403 that says the caller is
//! blocked) and recovering additively, the way TCP shares a link (AIMD).
//!
//! Invariants:
//! - The pace never exceeds the ceiling (`jumpcloud.max_requests_per_second`, and `min_request_interval`
//!   when it is set), and never falls below [`MIN_RATE`]: a throttled agent keeps asking, slowly.
//! - A `Retry-After` is honoured: no request leaves before it has passed.
//! - Time is passed in, never read here, so the behaviour is tested without waiting.

use std::time::{Duration, Instant};

/// The slowest pace after repeated throttling: one request every 30 s.
pub const MIN_RATE: f64 = 1.0 / 30.0;

/// The pace of one stream's requests.
#[derive(Debug)]
pub struct Pacer {
    /// Requests per second allowed now.
    rate: f64,
    ceiling: f64,
    /// When the last request left.
    last: Option<Instant>,
    /// No request before this (a `Retry-After`).
    hold_until: Option<Instant>,
}

impl Pacer {
    /// A pacer allowing at most `ceiling` requests per second (at least [`MIN_RATE`]).
    pub fn new(ceiling: f64) -> Pacer {
        let ceiling = if ceiling.is_finite() {
            ceiling.max(MIN_RATE)
        } else {
            MIN_RATE
        };
        Pacer {
            rate: ceiling,
            ceiling,
            last: None,
            hold_until: None,
        }
    }

    /// How long to wait, from `now`, before the next request may leave.
    pub fn delay(&self, now: Instant) -> Duration {
        let paced = self
            .last
            .map(|last| last + Duration::from_secs_f64(1.0 / self.rate));
        let ready = match (paced, self.hold_until) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        ready.saturating_duration_since(now)
    }

    /// A request leaves at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// The API answered normally: recover a twentieth of the ceiling, up to it.
    pub fn answered(&mut self) {
        self.rate = (self.rate + self.ceiling / 20.0).min(self.ceiling);
    }

    /// The API said it is overloaded: halve the pace, and hold off until `retry_after` has passed.
    pub fn throttled(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.rate = (self.rate / 2.0).max(MIN_RATE);
        if let Some(wait) = retry_after {
            let until = now + wait;
            self.hold_until = Some(self.hold_until.map_or(until, |held| held.max(until)));
        }
    }

    /// Requests per second allowed now.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_spaced_by_the_ceiling() {
        let start = Instant::now();
        let mut pacer = Pacer::new(10.0);
        assert_eq!(
            pacer.delay(start),
            Duration::ZERO,
            "the first request goes at once"
        );
        pacer.sent(start);
        assert_eq!(pacer.delay(start), Duration::from_millis(100));
        assert_eq!(
            pacer.delay(start + Duration::from_millis(30)),
            Duration::from_millis(70)
        );
        assert_eq!(pacer.delay(start + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn throttling_halves_the_pace_and_answers_restore_it_gradually() {
        let now = Instant::now();
        let mut pacer = Pacer::new(10.0);
        pacer.throttled(now, None);
        assert_eq!(pacer.rate(), 5.0);
        pacer.throttled(now, None);
        assert_eq!(pacer.rate(), 2.5);
        pacer.answered();
        assert_eq!(pacer.rate(), 3.0);
        for _ in 0..100 {
            pacer.answered();
        }
        assert_eq!(pacer.rate(), 10.0, "never above the ceiling");
        for _ in 0..100 {
            pacer.throttled(now, None);
        }
        assert_eq!(pacer.rate(), MIN_RATE, "never below the floor");
    }

    #[test]
    fn retry_after_holds_every_request_until_it_has_passed() {
        let now = Instant::now();
        let mut pacer = Pacer::new(10.0);
        pacer.sent(now);
        pacer.throttled(now, Some(Duration::from_secs(3)));
        assert_eq!(pacer.delay(now), Duration::from_secs(3));
        // A shorter hint later does not shorten the hold.
        pacer.throttled(now, Some(Duration::from_secs(1)));
        assert_eq!(
            pacer.delay(now + Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        assert_eq!(pacer.delay(now + Duration::from_secs(4)), Duration::ZERO);
    }

    #[test]
    fn odd_ceilings_are_made_safe() {
        assert_eq!(Pacer::new(0.0).rate(), MIN_RATE);
        assert_eq!(Pacer::new(f64::NAN).rate(), MIN_RATE);
        assert_eq!(Pacer::new(f64::INFINITY).rate(), MIN_RATE);
    }
}

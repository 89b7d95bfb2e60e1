//! How fast one API key may send requests: as fast as the API answers, up to a polite ceiling, slowing
//! down multiplicatively when the API says it is overloaded (429, 503, a 403 that says the caller is
//! blocked) and recovering additively, the way TCP shares a link (AIMD).
//!
//! The ceiling is a count over a window, not a fixed gap: at a pace of 10 requests a second, at most 10
//! requests leave in any one second. A page that took longer than a tenth of a second to read does not
//! cost the catch-up its time, since the next one may go as soon as the window allows; with a fixed gap
//! every slow page slipped the pace and the slips added up (10.2 s for 100 requests instead of 10).
//! Requests are sequential (each page's cursor comes from the one before), so the window never lets
//! a burst of parallel requests out.
//!
//! Invariants:
//! - The pace never exceeds the ceiling: at a pace of `r` requests a second, at most `k = floor(r)`
//!   (at least 1) requests leave in any `k / r` seconds. With `min_request_interval` set
//!   ([`Pacer::spaced`]) every two requests are at least `1 / r` apart, as that setting promises.
//! - The pace never falls below [`MIN_RATE`]: a throttled agent keeps asking, slowly.
//! - A `Retry-After` is honoured: no request leaves before it has passed.
//! - Time is passed in, never read here, so the behaviour is tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The slowest pace after repeated throttling: one request every 30 s.
pub const MIN_RATE: f64 = 1.0 / 30.0;

/// The most requests one window counts (the ceiling's configured maximum).
const MAX_WINDOW: usize = 100;

/// The pace of one stream's requests.
#[derive(Debug)]
pub struct Pacer {
    /// Requests per second allowed now.
    rate: f64,
    ceiling: f64,
    /// Every two requests at least `1 / rate` apart (`min_request_interval`), not a count per window.
    spaced: bool,
    /// When the last requests left, the oldest first (as many as a window counts).
    sent: VecDeque<Instant>,
    /// No request before this (a `Retry-After`).
    hold_until: Option<Instant>,
}

impl Pacer {
    /// A pacer allowing at most `ceiling` requests in any second (at least [`MIN_RATE`] a second).
    pub fn new(ceiling: f64) -> Pacer {
        let ceiling = if ceiling.is_finite() {
            ceiling.max(MIN_RATE)
        } else {
            MIN_RATE
        };
        Pacer {
            rate: ceiling,
            ceiling,
            spaced: false,
            sent: VecDeque::new(),
            hold_until: None,
        }
    }

    /// A pacer keeping every two requests at least `1 / ceiling` seconds apart.
    pub fn spaced(ceiling: f64) -> Pacer {
        Pacer {
            spaced: true,
            ..Pacer::new(ceiling)
        }
    }

    /// How many requests the window counts at the pace now.
    fn window_requests(&self) -> usize {
        if self.spaced {
            1
        } else {
            (self.rate.floor() as usize).clamp(1, MAX_WINDOW)
        }
    }

    /// How long to wait, from `now`, before the next request may leave.
    pub fn delay(&self, now: Instant) -> Duration {
        let window = self.window_requests();
        // The window's oldest request: the next one may leave once it is `window / rate` old.
        let paced = self
            .sent
            .len()
            .checked_sub(window)
            .and_then(|oldest| self.sent.get(oldest))
            .map(|oldest| *oldest + Duration::from_secs_f64(window as f64 / self.rate));
        let ready = match (paced, self.hold_until) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        ready.saturating_duration_since(now)
    }

    /// A request leaves at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.sent.push_back(now);
        while self.sent.len() > MAX_WINDOW.min(self.ceiling.floor().max(1.0) as usize) {
            self.sent.pop_front();
        }
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

    /// Sends `requests` requests one after another, each as soon as the pacer allows and the one before
    /// it has taken its time (`took(i)`); returns when each left.
    fn send_all(
        pacer: &mut Pacer,
        requests: usize,
        took: impl Fn(usize) -> Duration,
    ) -> Vec<Instant> {
        let mut now = Instant::now();
        let mut times = Vec::new();
        for i in 0..requests {
            now += pacer.delay(now);
            pacer.sent(now);
            times.push(now);
            now += took(i);
        }
        times
    }

    /// The most requests that left within any `window` (a half-open interval starting at a request).
    fn most_in_any(times: &[Instant], window: Duration) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t < times[i] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn at_most_the_ceiling_leaves_in_any_second() {
        let start = Instant::now();
        let mut pacer = Pacer::new(10.0);
        assert_eq!(
            pacer.delay(start),
            Duration::ZERO,
            "the first request goes at once"
        );
        // An API that answers at once: ten requests, then the eleventh a second after the first.
        let times = send_all(&mut pacer, 30, |_| Duration::ZERO);
        assert_eq!(most_in_any(&times, Duration::from_secs(1)), 10);
        assert_eq!(
            times[9], times[0],
            "the first ten go as fast as the API answers"
        );
        assert_eq!(times[10] - times[0], Duration::from_secs(1));
        assert_eq!(
            times[29] - times[0],
            Duration::from_secs(2) + (times[9] - times[0])
        );
    }

    #[test]
    fn a_slow_page_does_not_slip_the_pace() {
        // Pages that take 80 ms, but every fifth 150 ms (94 ms on average): spaced by a fixed 100 ms gap,
        // 100 requests take 20 × (4 × 0.1 + 0.15) = 11 s; the window lets the fast ones make up for the
        // slow, as the ceiling allows.
        let took = |i: usize| Duration::from_millis(if i % 5 == 4 { 150 } else { 80 });
        let mut pacer = Pacer::new(10.0);
        let times = send_all(&mut pacer, 101, took);
        assert!(most_in_any(&times, Duration::from_secs(1)) <= 10);
        let span = times[100] - times[0];
        assert!(
            span <= Duration::from_millis(10_001),
            "100 intervals took {span:?}, the ceiling allows 10 s"
        );
        let mut fixed_gap = Pacer::spaced(10.0);
        let fixed = send_all(&mut fixed_gap, 101, took);
        assert!(fixed[100] - fixed[0] >= Duration::from_millis(10_900));
    }

    #[test]
    fn min_request_interval_keeps_every_two_requests_apart() {
        let start = Instant::now();
        let mut pacer = Pacer::spaced(2.0);
        pacer.sent(start);
        assert_eq!(pacer.delay(start), Duration::from_millis(500));
        assert_eq!(
            pacer.delay(start + Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        let times = send_all(&mut pacer, 10, |_| Duration::ZERO);
        assert!(times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(500)));
    }

    #[test]
    fn a_throttled_pace_counts_fewer_requests_in_its_window() {
        let mut pacer = Pacer::new(10.0);
        let before = send_all(&mut pacer, 10, |_| Duration::from_millis(100));
        let now = *before.last().expect("sent");
        pacer.throttled(now, None);
        assert_eq!(pacer.rate(), 5.0);
        let mut after = before.clone();
        let mut at = now;
        for _ in 0..20 {
            at += pacer.delay(at);
            pacer.sent(at);
            after.push(at);
        }
        assert!(
            most_in_any(&after[10..], Duration::from_secs(1)) <= 5,
            "at most 5 a second once halved"
        );
        // A pace below one a second spaces every request by its interval.
        for _ in 0..3 {
            pacer.throttled(at, None);
        }
        assert_eq!(pacer.rate(), 0.625);
        assert_eq!(pacer.delay(at), Duration::from_secs_f64(1.0 / 0.625));
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

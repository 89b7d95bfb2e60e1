//! Rate limiting of the API stand-in: a token bucket that makes it answer 429 when requests come faster
//! than allowed, as an API gateway would.
//!
//! Invariants it keeps:
//! - after a quiet period at most `burst` requests pass at once, then at most `per_second` per second on
//!   average; the bucket never holds more than `burst` tokens;
//! - a refused request takes no token, so a client that waits as it is told is served;
//! - the time is the caller's (`Instant`s passed in), so the arithmetic is tested without sleeping.

use std::time::Instant;

/// How fast the API stand-in lets requests through (`ApiOptions::rate_limit`).
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second: the sustained rate allowed. Zero (or not a finite positive number) adds
    /// none: only the first `burst` requests are ever served.
    pub per_second: f64,
    /// The bucket's size: how many requests may come at once after a quiet period (at least 1 is used).
    pub burst: u32,
    /// The `Retry-After` value, in seconds, sent with each 429; `None` sends none (whether the real API
    /// sends one is not documented).
    pub retry_after: Option<u64>,
}

/// The token bucket that applies a `RateLimit`.
#[derive(Debug)]
pub(super) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        let tokens = f64::from(limit.burst.max(1));
        TokenBucket {
            limit,
            tokens,
            refilled_at: now,
        }
    }

    /// Takes a token for a request arriving at `now`: `true` when it may be served, `false` when it must
    /// get 429.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let rate = self.limit.per_second;
        if rate.is_finite() && rate > 0.0 {
            // A request seen out of order (an earlier `now`) adds nothing rather than removing tokens.
            let elapsed = now
                .saturating_duration_since(self.refilled_at)
                .as_secs_f64();
            let capacity = f64::from(self.limit.burst.max(1));
            self.tokens = (self.tokens + elapsed * rate).min(capacity);
        }
        self.refilled_at = self.refilled_at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The `Retry-After` seconds to send with a 429.
    pub(super) fn retry_after(&self) -> Option<u64> {
        self.limit.retry_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            retry_after: Some(2),
        }
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit(2.0, 3), start);
        let passed = (0..5).filter(|_| bucket.take(start)).count();
        assert_eq!(passed, 3, "the burst, then nothing at the same instant");
        // 2 per second: one token every 500 ms.
        assert!(!bucket.take(start + Duration::from_millis(400)));
        assert!(bucket.take(start + Duration::from_millis(510)));
        assert!(!bucket.take(start + Duration::from_millis(600)));
        // A long quiet period refills the bucket to its size, no more.
        let later = start + Duration::from_secs(60);
        let passed = (0..10).filter(|_| bucket.take(later)).count();
        assert_eq!(passed, 3);
        assert_eq!(bucket.retry_after(), Some(2));
    }

    #[test]
    fn refused_requests_take_no_token() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit(1.0, 1), start);
        assert!(bucket.take(start));
        for step in 1..10 {
            assert!(!bucket.take(start + Duration::from_millis(step * 90)));
        }
        assert!(bucket.take(start + Duration::from_millis(1010)));
    }

    #[test]
    fn zero_rate_serves_the_burst_only_and_zero_burst_means_one() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit(0.0, 0), start);
        assert!(bucket.take(start));
        assert!(!bucket.take(start + Duration::from_secs(3600)));
        let mut bucket = TokenBucket::new(limit(f64::NAN, 2), start);
        assert!(bucket.take(start) && bucket.take(start));
        assert!(!bucket.take(start + Duration::from_secs(3600)));
    }
}

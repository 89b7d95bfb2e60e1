//! Each stream's share of the queue, so that several JumpCloud organizations share one queue fairly.
//!
//! With several streams, each may hold at most `queue.max_bytes / streams` of queued events: a noisy
//! organization, or one whose intake refuses its key, pauses its own polling at its share, and the others
//! keep polling and forwarding. Nothing is dropped: a paused stream resumes where its cursor stopped.
//!
//! Invariants: the poller adds what it queued (after the commit), the stream's forwarder removes what left
//! the queue (after the ack or the dead-letter move); the count starts from a scan of the queue at start-up.
//! It is kept in memory only: it is a throttle, never a source of truth.

use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes one stream has in the queue and the most it may have.
#[derive(Debug)]
pub struct StreamShare {
    limit: u64,
    used: AtomicU64,
}

impl StreamShare {
    pub fn new(limit: u64, used: u64) -> StreamShare {
        StreamShare {
            limit,
            used: AtomicU64::new(used),
        }
    }

    /// A share as large as the whole queue (a single stream).
    pub fn unlimited() -> StreamShare {
        StreamShare::new(u64::MAX, 0)
    }

    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn remove(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// True when the stream must stop polling until its forwarder drains some of its events.
    pub fn is_full(&self) -> bool {
        self.used() >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_drains() {
        let share = StreamShare::new(100, 40);
        share.add(60);
        assert!(share.is_full());
        share.remove(30);
        assert!(!share.is_full());
        share.remove(1000);
        assert_eq!(share.used(), 0);
        assert!(!StreamShare::unlimited().is_full());
    }
}

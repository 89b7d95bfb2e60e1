//! Internal metrics: counters named after what they count, shared by the pipeline's parts and read by the
//! demo's progress line, `status` and the tests.
//!
//! Invariants: counters only grow; `events_polled == events_queued + events_deduplicated` once a page is
//! committed (both are added after the commit, never before).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters of one agent.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_polled: AtomicU64,
    pub events_queued: AtomicU64,
    pub events_deduplicated: AtomicU64,
    pub events_forwarded: AtomicU64,
    pub events_dead_lettered: AtomicU64,
    pub api_requests_ok: AtomicU64,
    pub api_requests_failed: AtomicU64,
    pub intake_requests_ok: AtomicU64,
    pub intake_requests_failed: AtomicU64,
    pub polls_completed: AtomicU64,
    pub polls_paused_queue_full: AtomicU64,
    /// The last error of the poller, as shown to the user (never holds a secret).
    pub last_poll_error: Mutex<Option<String>>,
    /// The last error of the forwarder, as shown to the user (never holds a secret).
    pub last_send_error: Mutex<Option<String>>,
}

/// A copy of the counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub events_polled: u64,
    pub events_queued: u64,
    pub events_deduplicated: u64,
    pub events_forwarded: u64,
    pub events_dead_lettered: u64,
    pub api_requests_ok: u64,
    pub api_requests_failed: u64,
    pub intake_requests_ok: u64,
    pub intake_requests_failed: u64,
    pub polls_completed: u64,
    pub polls_paused_queue_full: u64,
    pub last_poll_error: Option<String>,
    pub last_send_error: Option<String>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_error(slot: &Mutex<Option<String>>, error: Option<String>) {
        if let Ok(mut slot) = slot.lock() {
            *slot = error;
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let text = |slot: &Mutex<Option<String>>| slot.lock().ok().and_then(|s| s.clone());
        Snapshot {
            events_polled: get(&self.events_polled),
            events_queued: get(&self.events_queued),
            events_deduplicated: get(&self.events_deduplicated),
            events_forwarded: get(&self.events_forwarded),
            events_dead_lettered: get(&self.events_dead_lettered),
            api_requests_ok: get(&self.api_requests_ok),
            api_requests_failed: get(&self.api_requests_failed),
            intake_requests_ok: get(&self.intake_requests_ok),
            intake_requests_failed: get(&self.intake_requests_failed),
            polls_completed: get(&self.polls_completed),
            polls_paused_queue_full: get(&self.polls_paused_queue_full),
            last_poll_error: text(&self.last_poll_error),
            last_send_error: text(&self.last_send_error),
        }
    }
}

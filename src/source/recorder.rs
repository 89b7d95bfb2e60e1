//! What a stream's API client reports beyond its pages: the answers that were not events, kept in the
//! dead-letter store for inspection; the events without a usable timestamp, counted; the requests asked
//! again, counted.
//!
//! Invariants:
//! - An unusable answer is kept once per run of failures (until a usable page comes), however many times
//!   it is asked again: the log keeps saying so, the store does not fill with copies.
//! - Values that are not events, set aside from a page that is used, are kept once: the same values read
//!   again (the overlap window reads pages again) are recognised ([`Recorder::seen_aside`]) and not asked
//!   again nor kept again.
//! - Events without a usable timestamp are counted for every page, and logged once per stream (with an
//!   example id), not once per page.
//! - Failing to keep an answer is logged, never fatal: collection goes on as it would have.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now_ms;
use crate::metrics::{Metrics, Outcome};
use crate::queue::{KeptAnswer, Queue};

use super::page::Untimed;

/// Where one stream's API client reports. Cheap to clone; clones share the once-only flags.
#[derive(Clone, Default)]
pub struct Recorder {
    /// The stream's queue and metrics; `None` for a client that keeps nothing (a check, a test).
    sinks: Option<Arc<Sinks>>,
    flags: Arc<Flags>,
}

struct Sinks {
    queue: Queue,
    metrics: Arc<Metrics>,
    stream: String,
}

/// How many sets of values set aside are remembered.
const REMEMBERED_ASIDE: usize = 64;

#[derive(Default)]
struct Flags {
    untimed_logged: AtomicBool,
    /// An unusable answer was kept since the last usable page.
    kept_in_this_run: AtomicBool,
    /// Hashes of the latest sets of values set aside (and kept), newest last.
    aside: Mutex<VecDeque<u64>>,
}

/// An answer to keep, as the API client saw it.
pub struct Unusable<'a> {
    pub reason: &'a str,
    pub request_id: Option<&'a str>,
    pub query: &'a [u8],
    /// The answer's first bytes (all of it, when small).
    pub body: &'a [u8],
    /// The answer's size.
    pub total_bytes: u64,
}

impl Recorder {
    /// Reports to `stream`'s metrics, and keeps its unusable answers in `queue`.
    pub fn new(queue: Queue, metrics: Arc<Metrics>, stream: &str) -> Recorder {
        Recorder {
            sinks: Some(Arc::new(Sinks {
                queue,
                metrics,
                stream: stream.to_string(),
            })),
            flags: Arc::default(),
        }
    }

    /// The stream's name, for logs.
    pub fn stream(&self) -> &str {
        self.sinks.as_ref().map_or("-", |s| s.stream.as_str())
    }

    /// A usable page came: the next unusable answer is kept again.
    pub fn usable(&self) {
        self.flags.kept_in_this_run.store(false, Ordering::Relaxed);
    }

    /// Whether these values that are not events (a page's, as a JSON array) were set aside and kept
    /// already.
    pub fn seen_aside(&self, values: &str) -> bool {
        let hash = xxhash_rust::xxh3::xxh3_64(values.as_bytes());
        self.remembered(|aside| aside.contains(&hash))
    }

    fn remember_aside(&self, values: &[u8]) {
        let hash = xxhash_rust::xxh3::xxh3_64(values);
        self.remembered(|aside| {
            if aside.len() >= REMEMBERED_ASIDE {
                aside.pop_front();
            }
            aside.push_back(hash);
        });
    }

    fn remembered<R>(&self, f: impl FnOnce(&mut VecDeque<u64>) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the hashes are still consistent.
        let mut aside = self
            .flags
            .aside
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut aside)
    }

    /// A request answered unusably is asked again.
    pub fn asked_again(&self, elapsed: Duration) {
        if let Some(sinks) = &self.sinks {
            sinks
                .metrics
                .api_request(&sinks.stream, Outcome::Retry, elapsed);
        }
    }

    /// Counts a page's events without a usable timestamp; logs the first of the stream.
    pub fn untimed(&self, untimed: &Untimed) {
        if untimed.count == 0 {
            return;
        }
        if let Some(sinks) = &self.sinks {
            sinks
                .metrics
                .events_without_timestamp(&sinks.stream, untimed.count);
        }
        if !self.flags.untimed_logged.swap(true, Ordering::Relaxed) {
            let example = match &untimed.example_id {
                Some(id) => format!("for example the event with id {id:?}"),
                None => "none of them with an id".to_string(),
            };
            tracing::warn!(
                stream = %self.stream(),
                events = untimed.count,
                "JumpCloud sent events without a usable timestamp ({example}): they are delivered, filed \
                 under the time they were read; jcdi_forwarder_events_without_timestamp_total counts them \
                 (this is logged once)"
            );
        }
    }

    /// Keeps an unusable answer in the dead-letter store, unless one was kept since the last usable page.
    /// `aside`: the answer is the values set aside from a page that is used, kept whatever came before
    /// (and remembered, see [`Recorder::seen_aside`]). Returns what the log should say about it.
    pub async fn keep(&self, answer: Unusable<'_>, aside: bool) -> String {
        if aside {
            self.remember_aside(answer.body);
        }
        let Some(sinks) = &self.sinks else {
            return "not kept (no queue)".to_string();
        };
        if !aside && self.flags.kept_in_this_run.swap(true, Ordering::Relaxed) {
            return "its bytes were kept in the dead-letter store when it was first given up on"
                .to_string();
        }
        let kept = KeptAnswer {
            id: 0,
            stream: sinks.stream.clone(),
            kept_at_ms: now_ms(),
            reason: answer.reason.to_string(),
            request_id: answer.request_id.map(str::to_string),
            query: String::from_utf8_lossy(answer.query).into_owned(),
            total_bytes: answer.total_bytes,
            raw: answer.body[..answer.body.len().min(crate::queue::KEPT_ANSWER_MAX_BYTES)].to_vec(),
        };
        match sinks
            .queue
            .run_blocking(move |queue| queue.keep_answer(&kept))
            .await
        {
            Ok(id) => format!(
                "its bytes are kept in the dead-letter store as #{id} (`jcdi-forwarder dead-letter list`)"
            ),
            Err(err) => {
                self.flags.kept_in_this_run.store(false, Ordering::Relaxed);
                format!("its bytes could not be kept in the dead-letter store: {err}")
            }
        }
    }
}

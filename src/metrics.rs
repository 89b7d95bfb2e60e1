//! Internal metrics and health: counters named after what they count, per-stream where there are several
//! streams, exposed in the Prometheus/OpenMetrics text format (`jcdi_forwarder_<name>_<unit>[_total]`) by
//! the local endpoint ([`crate::admin`]), and read by `status`, the demo and the tests.
//!
//! `events_polled` is what was read from the API and `events_queued` what was new: their ratio, per stream
//! ([`Reading`], shown by `status`), is what collecting costs (1.0 when nothing is read twice). There is no
//! separate "events read" counter: it would be `events_polled` again.
//!
//! Invariants:
//! - Counters only grow; `events_polled == events_queued + events_deduplicated` for every stream once a
//!   page is committed (all three are added together, after the commit).
//! - Labels have low cardinality: stream names (from the configuration), outcomes and components only.
//! - The last error texts never hold a secret (the pipeline never puts one in an error).
//! - Gauges describing the queue are computed when read ([`Metrics::encode`]), never cached.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    stream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// How a request ended, for the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx with a usable answer.
    Ok,
    /// A failure worth retrying soon (timeouts, resets, 429, 5xx, unusable pages).
    Retry,
    /// A configuration error (bad key, bad URL, bad service name).
    Rejected,
    /// The intake said 413: the batch is split.
    TooLarge,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Rejected => "rejected",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// The queue's state, read when metrics or status are asked for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueueView {
    pub events: u64,
    pub bytes: u64,
    pub limit_bytes: u64,
    pub oldest_age_seconds: Option<f64>,
    pub dead_letters: u64,
    pub disk_bytes: u64,
    /// Free space on the queue's filesystem, and the least polling needs (`queue.min_free_disk`).
    pub disk_free_bytes: Option<u64>,
    pub min_free_disk: u64,
    /// Per stream: the cursor's watermark (seconds since the epoch).
    pub cursors: BTreeMap<String, f64>,
    /// How many times the queue was rebuilt from the delivery checkpoint, ever, and the last time, told.
    #[serde(default)]
    pub recoveries_total: u64,
    #[serde(default)]
    pub last_recovery: Option<String>,
}

/// What one stream's poller and forwarder have been doing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamState {
    pub last_poll_ok_ms: Option<u64>,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub failing_since: Option<Instant>,
    pub failing_for_seconds: Option<u64>,
    pub last_send_ok_ms: Option<u64>,
    pub last_send_error: Option<String>,
    #[serde(skip)]
    pub send_failing_since: Option<Instant>,
}

#[derive(Default)]
struct State {
    streams: BTreeMap<String, StreamState>,
}

/// The counters and state of one agent.
pub struct Metrics {
    registry: Registry,
    events_polled: Family<StreamLabel, Counter>,
    events_queued: Family<StreamLabel, Counter>,
    events_deduplicated: Family<StreamLabel, Counter>,
    events_forwarded: Family<StreamLabel, Counter>,
    events_dead_lettered: Family<StreamLabel, Counter>,
    events_without_timestamp: Family<StreamLabel, Counter>,
    polls_completed: Family<StreamLabel, Counter>,
    polls_paused_queue_full: Family<StreamLabel, Counter>,
    late_events: Family<StreamLabel, Counter>,
    late_check_fallbacks: Family<StreamLabel, Counter>,
    api_requests: Family<RequestLabels, Counter>,
    api_request_duration: Family<StreamLabel, Histogram>,
    intake_requests: Family<RequestLabels, Counter>,
    intake_request_duration: Family<StreamLabel, Histogram>,
    retries: Family<ComponentLabel, Counter>,
    queue_events: Gauge,
    queue_bytes: Gauge,
    queue_limit_bytes: Gauge,
    queue_oldest_age: Gauge<f64, AtomicU64>,
    queue_disk_bytes: Gauge,
    disk_free_bytes: Gauge,
    dead_letter_events: Gauge,
    queue_recoveries: Counter,
    cursor_timestamp: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    collection_lag: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    api_pace: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    state: Mutex<State>,
}

/// Totals at one instant (all streams added up), for the demo, `status` and the tests.
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

/// What one stream read from the API and how much of it was new, since the agent started, and its pace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The requests per second the stream allows itself now (`api_pace_requests_per_second`).
    #[serde(default)]
    pub pace: f64,
    /// Events read from the API (`events_polled`), repeats included.
    pub read: u64,
    /// Events new to the queue (`events_queued`).
    pub queued: u64,
    /// Of those queued, how many the late check found (`late_events`).
    pub late: u64,
    /// Polls that re-read the whole overlap window (`late_check_fallbacks`).
    pub late_check_fallbacks: u64,
}

impl Reading {
    /// Events read per event queued; `None` before anything was queued.
    pub fn read_per_queued(&self) -> Option<f64> {
        (self.queued > 0).then(|| self.read as f64 / self.queued as f64)
    }
}

/// Whether the agent is collecting and forwarding normally.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub reasons: Vec<String>,
    /// Rebuilds of the queue from the delivery checkpoint, ever (they do not make the agent unhealthy:
    /// it collects again what was not delivered), and the last one, told.
    #[serde(default)]
    pub queue_recoveries_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_queue_recovery: Option<String>,
}

fn latency_buckets() -> Histogram {
    // 5 ms to about 40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("jcdi_forwarder");
        let m = Metrics {
            events_polled: Family::default(),
            events_queued: Family::default(),
            events_deduplicated: Family::default(),
            events_forwarded: Family::default(),
            events_dead_lettered: Family::default(),
            events_without_timestamp: Family::default(),
            polls_completed: Family::default(),
            polls_paused_queue_full: Family::default(),
            late_events: Family::default(),
            late_check_fallbacks: Family::default(),
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(latency_buckets),
            intake_requests: Family::default(),
            intake_request_duration: Family::new_with_constructor(latency_buckets),
            retries: Family::default(),
            queue_events: Gauge::default(),
            queue_bytes: Gauge::default(),
            queue_limit_bytes: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            queue_disk_bytes: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            dead_letter_events: Gauge::default(),
            queue_recoveries: Counter::default(),
            cursor_timestamp: Family::default(),
            collection_lag: Family::default(),
            api_pace: Family::default(),
            state: Mutex::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "events_polled",
            "Events read from JumpCloud",
            m.events_polled.clone(),
        );
        r.register(
            "events_queued",
            "Events written to the queue (new ones)",
            m.events_queued.clone(),
        );
        r.register(
            "events_deduplicated",
            "Events read again and recognised as already queued or sent",
            m.events_deduplicated.clone(),
        );
        r.register(
            "events_forwarded",
            "Events the intake accepted (2xx)",
            m.events_forwarded.clone(),
        );
        r.register(
            "events_dead_lettered",
            "Events moved to the dead-letter store (never sent, kept on disk)",
            m.events_dead_lettered.clone(),
        );
        r.register(
            "events_without_timestamp",
            "Events read without a usable timestamp (delivered, filed under the time they were read; counted again when read again)",
            m.events_without_timestamp.clone(),
        );
        r.register(
            "polls_completed",
            "Polls that read every page",
            m.polls_completed.clone(),
        );
        r.register(
            "polls_paused_queue_full",
            "Times polling paused because the queue reached queue.max_bytes",
            m.polls_paused_queue_full.clone(),
        );
        r.register(
            "late_events",
            "Events queued by the late check: JumpCloud indexed them after the cursor had passed them",
            m.late_events.clone(),
        );
        r.register(
            "late_check_fallbacks",
            "Polls that re-read the whole overlap window because the late check could not run",
            m.late_check_fallbacks.clone(),
        );
        r.register(
            "api_requests",
            "Requests to the JumpCloud API by outcome",
            m.api_requests.clone(),
        );
        r.register_with_unit(
            "api_request_duration",
            "Time of JumpCloud API requests",
            Unit::Seconds,
            m.api_request_duration.clone(),
        );
        r.register(
            "intake_requests",
            "Requests to the Sekoia.io intake by outcome",
            m.intake_requests.clone(),
        );
        r.register_with_unit(
            "intake_request_duration",
            "Time of Sekoia.io intake requests",
            Unit::Seconds,
            m.intake_request_duration.clone(),
        );
        r.register(
            "retries",
            "Retries after a failure, by component",
            m.retries.clone(),
        );
        r.register(
            "queue_events",
            "Events waiting in the queue",
            m.queue_events.clone(),
        );
        r.register_with_unit(
            "queue",
            "Raw bytes waiting in the queue",
            Unit::Bytes,
            m.queue_bytes.clone(),
        );
        r.register_with_unit(
            "queue_limit",
            "queue.max_bytes: polling pauses at this size",
            Unit::Bytes,
            m.queue_limit_bytes.clone(),
        );
        r.register_with_unit(
            "queue_oldest_event_age",
            "Time the oldest queued event has waited",
            Unit::Seconds,
            m.queue_oldest_age.clone(),
        );
        r.register_with_unit(
            "queue_disk",
            "Disk space the queue's database occupies",
            Unit::Bytes,
            m.queue_disk_bytes.clone(),
        );
        r.register_with_unit(
            "disk_free",
            "Free space on the queue's filesystem",
            Unit::Bytes,
            m.disk_free_bytes.clone(),
        );
        r.register(
            "dead_letter_events",
            "Events kept in the dead-letter store",
            m.dead_letter_events.clone(),
        );
        r.register(
            "queue_recoveries",
            "Times the queue's database was found damaged or lost and rebuilt from the delivery \
             checkpoint (kept across restarts)",
            m.queue_recoveries.clone(),
        );
        r.register_with_unit(
            "cursor_timestamp",
            "The stream's cursor: events before it are collected",
            Unit::Seconds,
            m.cursor_timestamp.clone(),
        );
        r.register_with_unit(
            "collection_lag",
            "How far the stream's cursor is behind the clock",
            Unit::Seconds,
            m.collection_lag.clone(),
        );
        r.register(
            "api_pace_requests_per_second",
            "The requests per second the stream allows itself now: the ceiling (jumpcloud.max_requests_per_second), \
             or less after JumpCloud asked for fewer",
            m.api_pace.clone(),
        );
        r.register(
            "build",
            "The agent's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics { registry, ..m }
    }

    fn stream(stream: &str) -> StreamLabel {
        StreamLabel {
            stream: stream.to_string(),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }

    fn with_stream(&self, stream: &str, f: impl FnOnce(&mut StreamState)) {
        self.with_state(|s| f(s.streams.entry(stream.to_string()).or_default()));
    }

    /// A page was committed: `polled` events read, `queued` new, `duplicates` already known.
    pub fn page_committed(&self, stream: &str, polled: u64, queued: u64, duplicates: u64) {
        let label = Metrics::stream(stream);
        self.events_polled.get_or_create(&label).inc_by(polled);
        self.events_queued.get_or_create(&label).inc_by(queued);
        self.events_deduplicated
            .get_or_create(&label)
            .inc_by(duplicates);
    }

    /// The late check re-read a slice that had grown and queued `queued` events from it.
    pub fn late_events(&self, stream: &str, queued: u64) {
        self.late_events
            .get_or_create(&Metrics::stream(stream))
            .inc_by(queued);
    }

    /// The late check could not run: this poll re-reads the whole overlap window.
    pub fn late_check_fell_back(&self, stream: &str) {
        self.late_check_fallbacks
            .get_or_create(&Metrics::stream(stream))
            .inc();
    }

    /// One stream's events read from the API and queued (new) since the agent started.
    pub fn stream_reading(&self, stream: &str) -> Reading {
        let label = Metrics::stream(stream);
        Reading {
            read: self.events_polled.get_or_create(&label).get(),
            queued: self.events_queued.get_or_create(&label).get(),
            late: self.late_events.get_or_create(&label).get(),
            late_check_fallbacks: self.late_check_fallbacks.get_or_create(&label).get(),
            pace: self.api_pace.get_or_create(&label).get(),
        }
    }

    /// `count` events of `stream` came without a usable `timestamp`.
    pub fn events_without_timestamp(&self, stream: &str, count: u64) {
        self.events_without_timestamp
            .get_or_create(&Metrics::stream(stream))
            .inc_by(count);
    }

    /// The stream's request pace now: the requests per second it allows itself (below the ceiling after
    /// JumpCloud asked for fewer).
    pub fn api_pace(&self, stream: &str, requests_per_second: f64) {
        self.api_pace
            .get_or_create(&Metrics::stream(stream))
            .set(requests_per_second);
    }

    pub fn api_request(&self, stream: &str, outcome: Outcome, elapsed: Duration) {
        self.api_requests
            .get_or_create(&RequestLabels {
                stream: stream.to_string(),
                outcome: outcome.label(),
            })
            .inc();
        self.api_request_duration
            .get_or_create(&Metrics::stream(stream))
            .observe(elapsed.as_secs_f64());
    }

    /// A poll read every page.
    pub fn poll_succeeded(&self, stream: &str) {
        self.polls_completed
            .get_or_create(&Metrics::stream(stream))
            .inc();
        let now = crate::clock::now_ms();
        self.with_stream(stream, |state| {
            state.last_poll_ok_ms = Some(now);
            state.last_error = None;
            state.failing_since = None;
        });
    }

    /// A poll failed; it will be retried.
    pub fn poll_failed(&self, stream: &str, reason: &str) {
        self.retries
            .get_or_create(&ComponentLabel {
                component: "poller",
            })
            .inc();
        self.with_stream(stream, |state| {
            state.last_error = Some(reason.to_string());
            state.failing_since.get_or_insert_with(Instant::now);
        });
    }

    pub fn poll_paused(&self, stream: &str) {
        self.polls_paused_queue_full
            .get_or_create(&Metrics::stream(stream))
            .inc();
    }

    pub fn intake_request(&self, stream: &str, outcome: Outcome, elapsed: Duration) {
        self.intake_requests
            .get_or_create(&RequestLabels {
                stream: stream.to_string(),
                outcome: outcome.label(),
            })
            .inc();
        self.intake_request_duration
            .get_or_create(&Metrics::stream(stream))
            .observe(elapsed.as_secs_f64());
    }

    /// The intake accepted `events` events of `stream`.
    pub fn send_succeeded(&self, stream: &str, events: u64) {
        self.events_forwarded
            .get_or_create(&Metrics::stream(stream))
            .inc_by(events);
        let now = crate::clock::now_ms();
        self.with_stream(stream, |state| {
            state.last_send_ok_ms = Some(now);
            state.last_send_error = None;
            state.send_failing_since = None;
        });
    }

    /// A send of `stream`'s events failed; it will be retried.
    pub fn send_failed(&self, stream: &str, reason: &str) {
        self.retries
            .get_or_create(&ComponentLabel {
                component: "forwarder",
            })
            .inc();
        self.with_stream(stream, |state| {
            state.last_send_error = Some(reason.to_string());
            state.send_failing_since.get_or_insert_with(Instant::now);
        });
    }

    pub fn dead_lettered(&self, stream: &str) {
        self.events_dead_lettered
            .get_or_create(&Metrics::stream(stream))
            .inc();
    }

    /// Totals over every stream.
    pub fn snapshot(&self) -> Snapshot {
        let (mut streams, last_poll_error, last_send_error) = self.with_state(|s| {
            (
                s.streams.keys().cloned().collect::<Vec<_>>(),
                s.streams.values().find_map(|st| st.last_error.clone()),
                s.streams.values().find_map(|st| st.last_send_error.clone()),
            )
        });
        let mut snap = Snapshot {
            last_poll_error,
            last_send_error,
            ..Snapshot::default()
        };
        if streams.is_empty() {
            streams.push(crate::event::DEFAULT_STREAM.to_string());
        }
        for stream in &streams {
            let label = Metrics::stream(stream);
            snap.events_polled += self.events_polled.get_or_create(&label).get();
            snap.events_queued += self.events_queued.get_or_create(&label).get();
            snap.events_deduplicated += self.events_deduplicated.get_or_create(&label).get();
            snap.events_forwarded += self.events_forwarded.get_or_create(&label).get();
            snap.events_dead_lettered += self.events_dead_lettered.get_or_create(&label).get();
            snap.polls_completed += self.polls_completed.get_or_create(&label).get();
            snap.polls_paused_queue_full +=
                self.polls_paused_queue_full.get_or_create(&label).get();
            let count = |family: &Family<RequestLabels, Counter>, outcome: Outcome| {
                family
                    .get_or_create(&RequestLabels {
                        stream: stream.clone(),
                        outcome: outcome.label(),
                    })
                    .get()
            };
            snap.api_requests_ok += count(&self.api_requests, Outcome::Ok);
            snap.intake_requests_ok += count(&self.intake_requests, Outcome::Ok);
            for failed in [Outcome::Retry, Outcome::Rejected, Outcome::TooLarge] {
                snap.api_requests_failed += count(&self.api_requests, failed);
                snap.intake_requests_failed += count(&self.intake_requests, failed);
            }
        }
        snap
    }

    /// Each stream's state, with how long it has been failing.
    pub fn states(&self) -> BTreeMap<String, StreamState> {
        self.with_state(|s| {
            let mut streams = s.streams.clone();
            for state in streams.values_mut() {
                state.failing_for_seconds = state
                    .failing_since
                    .or(state.send_failing_since)
                    .map(|t| t.elapsed().as_secs());
            }
            streams
        })
    }

    /// Healthy unless a stream's poller or forwarder has been failing for longer than `threshold`, or the
    /// queue is full.
    pub fn health(&self, threshold: Duration, queue: &QueueView) -> Health {
        let mut reasons = Vec::new();
        self.with_state(|s| {
            for (stream, state) in &s.streams {
                let failures = [
                    ("polling", state.failing_since, &state.last_error),
                    (
                        "forwarding",
                        state.send_failing_since,
                        &state.last_send_error,
                    ),
                ];
                for (what, since, error) in failures {
                    let Some(since) = since.filter(|since| since.elapsed() > threshold) else {
                        continue;
                    };
                    reasons.push(format!(
                        "stream {stream}: {what} has failed for {} s: {}",
                        since.elapsed().as_secs(),
                        error.as_deref().unwrap_or("unknown error")
                    ));
                }
            }
        });
        if let Some(free) = queue
            .disk_free_bytes
            .filter(|free| *free < queue.min_free_disk)
        {
            reasons.push(format!(
                "the queue's disk is almost full ({free} bytes free, under queue.min_free_disk = {}): \
                 polling is paused until there is room",
                queue.min_free_disk
            ));
        }
        if queue.limit_bytes > 0 && queue.bytes >= queue.limit_bytes {
            reasons.push(format!(
                "the queue is full ({} of {} bytes): polling is paused until the intake drains it",
                queue.bytes, queue.limit_bytes
            ));
        }
        Health {
            ok: reasons.is_empty(),
            reasons,
            queue_recoveries_total: queue.recoveries_total,
            last_queue_recovery: queue.last_recovery.clone(),
        }
    }

    /// The OpenMetrics text of every metric, with the queue's gauges set from `queue`.
    pub fn encode(&self, queue: &QueueView) -> String {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_events.set(as_i64(queue.events));
        self.queue_bytes.set(as_i64(queue.bytes));
        self.queue_limit_bytes.set(as_i64(queue.limit_bytes));
        self.queue_oldest_age
            .set(queue.oldest_age_seconds.unwrap_or(0.0));
        self.queue_disk_bytes.set(as_i64(queue.disk_bytes));
        self.disk_free_bytes
            .set(as_i64(queue.disk_free_bytes.unwrap_or(0)));
        self.dead_letter_events.set(as_i64(queue.dead_letters));
        // The total is kept in the checkpoint file: the counter follows it, so a recovery at start-up
        // (before anything scraped this process) still shows as an increase.
        let counted = self.queue_recoveries.get();
        if queue.recoveries_total > counted {
            self.queue_recoveries
                .inc_by(queue.recoveries_total - counted);
        }
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        for (stream, watermark) in &queue.cursors {
            let label = Metrics::stream(stream);
            self.cursor_timestamp.get_or_create(&label).set(*watermark);
            self.collection_lag
                .get_or_create(&label)
                .set((now - watermark).max(0.0));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_conventional_names() {
        let m = Metrics::new();
        m.page_committed("default", 10, 7, 3);
        m.api_request("default", Outcome::Ok, Duration::from_millis(20));
        let text = m.encode(&QueueView {
            events: 7,
            limit_bytes: 100,
            ..QueueView::default()
        });
        for line in [
            "jcdi_forwarder_events_polled_total{stream=\"default\"} 10",
            "jcdi_forwarder_events_queued_total{stream=\"default\"} 7",
            "jcdi_forwarder_events_deduplicated_total{stream=\"default\"} 3",
            "jcdi_forwarder_queue_events 7",
            "jcdi_forwarder_queue_limit_bytes 100",
            "jcdi_forwarder_build_info{version=\"",
            "jcdi_forwarder_api_requests_total{stream=\"default\",outcome=\"ok\"} 1",
            "jcdi_forwarder_api_request_duration_seconds_bucket{",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn late_check_counters_and_the_reading_per_stream() {
        let m = Metrics::new();
        assert_eq!(m.stream_reading("a").read_per_queued(), None);
        m.page_committed("a", 120, 100, 20);
        m.page_committed("b", 5, 5, 0);
        m.late_events("a", 3);
        m.late_check_fell_back("a");
        m.api_pace("a", 2.5);
        let a = m.stream_reading("a");
        assert_eq!(
            a,
            Reading {
                read: 120,
                queued: 100,
                late: 3,
                late_check_fallbacks: 1,
                pace: 2.5,
            }
        );
        assert_eq!(a.read_per_queued(), Some(1.2));
        let text = m.encode(&QueueView::default());
        for line in [
            "jcdi_forwarder_late_events_total{stream=\"a\"} 3",
            "jcdi_forwarder_late_check_fallbacks_total{stream=\"a\"} 1",
            "jcdi_forwarder_api_pace_requests_per_second{stream=\"a\"} 2.5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn health_turns_bad_after_the_threshold_and_back() {
        let m = Metrics::new();
        let queue = QueueView::default();
        assert!(m.health(Duration::ZERO, &queue).ok);
        m.send_failed("default", "intake down");
        std::thread::sleep(Duration::from_millis(5));
        let health = m.health(Duration::ZERO, &queue);
        assert!(!health.ok);
        assert!(
            health.reasons[0].contains("intake down"),
            "{:?}",
            health.reasons
        );
        assert!(
            m.health(Duration::from_secs(3600), &queue).ok,
            "under the threshold"
        );
        m.send_succeeded("default", 1);
        assert!(m.health(Duration::ZERO, &queue).ok);
        let full = QueueView {
            bytes: 10,
            limit_bytes: 10,
            ..QueueView::default()
        };
        assert!(!m.health(Duration::ZERO, &full).ok);
    }
}

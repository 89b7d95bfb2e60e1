//! Stand-in of Sekoia.io's HTTP intake: `POST /batch`.
//!
//! It owns what was accepted (the event strings, in arrival order, duplicates kept), the queue of faults
//! to inject, the outage switch and the intake key. Invariants it keeps:
//! - a request is accepted whole or not at all: a refused request (size, key, JSON, fault, outage) records
//!   nothing, an accepted one records every element in order and answers one event id per element;
//! - each queued fault replaces the answer to exactly one `POST /batch` request; while in outage, requests
//!   get 503 and no fault is used;
//! - `requests()` counts every `POST /batch`, whatever the answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::Notify;

use super::{
    json_answer, message_answer, read_body, status_or_500, Answer, BodyError, DropConnection,
    Server,
};

const BATCH_PATH: &str = "/batch";

/// A handle on a running stand-in; clones share the same server. The server stops when `shutdown` is called
/// or when the last clone is dropped.
#[derive(Clone)]
pub struct IntakeStandIn {
    inner: Arc<Inner>,
}

struct Inner {
    server: Server,
    shared: Arc<Shared>,
}

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct IntakeOptions {
    /// The only `intake_key` accepted.
    pub intake_key: String,
    /// Longest accepted event string, in bytes (UTF-8, after JSON unescaping).
    pub max_event_bytes: usize,
    /// Longest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Keep the accepted strings for `received()`. Benchmarks set it to false: only counts are kept.
    pub keep_events: bool,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        IntakeOptions {
            intake_key: "demo-intake-key".to_string(),
            max_event_bytes: 250 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            keep_events: true,
        }
    }
}

/// What to answer instead of the normal answer, once.
#[derive(Clone, Debug)]
pub enum IntakeFault {
    /// Answered instead of the normal answer (`Retry-After` in seconds when given); nothing is recorded.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Drop the connection without answering (after reading the body); nothing is recorded.
    CloseConnection,
    /// Answer normally after this delay.
    Delay(Duration),
}

struct Shared {
    options: IntakeOptions,
    state: Mutex<State>,
    outage: AtomicBool,
    requests: AtomicU64,
    accepted_batches: AtomicU64,
    received_count: AtomicUsize,
    /// Woken after every accepted batch, for `wait_received`.
    accepted: Notify,
}

struct State {
    intake_key: String,
    received: Vec<String>,
    faults: VecDeque<IntakeFault>,
    rng: fastrand::Rng,
}

impl Shared {
    /// A poisoned lock only means a test panicked elsewhere; the data is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl IntakeStandIn {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start(options: IntakeOptions) -> std::io::Result<IntakeStandIn> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                intake_key: options.intake_key.clone(),
                received: Vec::new(),
                faults: VecDeque::new(),
                rng: fastrand::Rng::new(),
            }),
            options,
            outage: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            accepted_batches: AtomicU64::new(0),
            received_count: AtomicUsize::new(0),
            accepted: Notify::new(),
        });
        let for_server = shared.clone();
        let server = Server::start(move |request| handle(for_server.clone(), request)).await?;
        Ok(IntakeStandIn {
            inner: Arc::new(Inner { server, shared }),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash; the endpoint is `{base_url}/batch`.
    pub fn base_url(&self) -> String {
        self.inner.server.base_url()
    }

    /// The address the stand-in listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.inner.server.addr()
    }

    /// FIFO, one request each.
    pub fn push_fault(&self, fault: IntakeFault) {
        self.inner.shared.lock().faults.push_back(fault);
    }

    /// Faults queued and not used yet.
    pub fn pending_faults(&self) -> usize {
        self.inner.shared.lock().faults.len()
    }

    /// While down, every request gets 503 (no Retry-After).
    pub fn set_outage(&self, down: bool) {
        self.inner.shared.outage.store(down, Ordering::SeqCst);
    }

    /// Replaces the accepted intake key.
    pub fn set_intake_key(&self, key: &str) {
        self.inner.shared.lock().intake_key = key.to_string();
    }

    /// Every accepted event string, arrival order, duplicates kept (empty when `keep_events` is false).
    pub fn received(&self) -> Vec<String> {
        self.inner.shared.lock().received.clone()
    }

    /// The accepted event strings from position `from` on: lets a test check progress without copying
    /// everything again.
    pub fn received_from(&self, from: usize) -> Vec<String> {
        let state = self.inner.shared.lock();
        state
            .received
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    /// Runs `inspect` on the accepted event strings without copying them (the lock is held meanwhile:
    /// keep it short, and do not call the stand-in from inside).
    pub fn with_received<R>(&self, inspect: impl FnOnce(&[String]) -> R) -> R {
        inspect(&self.inner.shared.lock().received)
    }

    /// Number of accepted event strings (counted even when `keep_events` is false).
    pub fn received_count(&self) -> usize {
        self.inner.shared.received_count.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` events were accepted, or `timeout` passed; true when reached.
    pub async fn wait_received(&self, count: usize, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let reached = async {
            loop {
                // Register before checking, so that a batch accepted in between is not missed.
                let notified = shared.accepted.notified();
                if shared.received_count.load(Ordering::SeqCst) >= count {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, reached).await.is_ok()
    }

    /// Requests answered 200.
    pub fn accepted_batches(&self) -> u64 {
        self.inner.shared.accepted_batches.load(Ordering::SeqCst)
    }

    /// All `POST /batch` requests, whatever the answer.
    pub fn requests(&self) -> u64 {
        self.inner.shared.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting connections; in-flight answers may finish.
    pub fn shutdown(&self) {
        self.inner.server.shutdown();
    }
}

#[derive(Deserialize)]
struct Batch {
    intake_key: Option<String>,
    jsons: Vec<String>,
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    if request.uri().path() != BATCH_PATH {
        return Ok(message_answer(StatusCode::NOT_FOUND, "Not Found"));
    }
    if request.method() != Method::POST {
        let mut answer = message_answer(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        answer
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(answer);
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);

    // Read the whole body before any answer, so that a client still writing it never sees a reset.
    let body = read_body(request.into_body(), shared.options.max_body_bytes).await;

    if shared.outage.load(Ordering::SeqCst) {
        return Ok(message_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
        ));
    }
    let fault = shared.lock().faults.pop_front();
    match fault {
        Some(IntakeFault::Status {
            status,
            retry_after,
        }) => {
            let status = status_or_500(status);
            let mut answer = message_answer(
                status,
                status.canonical_reason().unwrap_or("stand-in fault"),
            );
            if let Some(seconds) = retry_after {
                answer
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            return Ok(answer);
        }
        Some(IntakeFault::CloseConnection) => return Err(DropConnection),
        Some(IntakeFault::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }

    let body = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let message = format!(
                "request body larger than {} bytes",
                shared.options.max_body_bytes
            );
            return Ok(message_answer(StatusCode::PAYLOAD_TOO_LARGE, &message));
        }
        Err(BodyError::Broken) => return Err(DropConnection),
    };

    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(error) => {
            let message = format!("invalid body: expected {{\"intake_key\": string, \"jsons\": [string, ...]}}: {error}");
            return Ok(message_answer(StatusCode::BAD_REQUEST, &message));
        }
    };

    let key_ok = {
        let state = shared.lock();
        batch.intake_key.as_deref() == Some(state.intake_key.as_str())
    };
    if !key_ok {
        return Ok(message_answer(
            StatusCode::UNAUTHORIZED,
            "invalid intake key",
        ));
    }

    if let Some((index, event)) = batch
        .jsons
        .iter()
        .enumerate()
        .find(|(_, event)| event.len() > shared.options.max_event_bytes)
    {
        let message = format!(
            "event {index} is {} bytes, more than the limit of {} bytes",
            event.len(),
            shared.options.max_event_bytes
        );
        return Ok(message_answer(StatusCode::PAYLOAD_TOO_LARGE, &message));
    }

    let count = batch.jsons.len();
    let ids = {
        let mut state = shared.lock();
        let ids: Vec<String> = (0..count)
            .map(|_| super::uuid_text(&mut state.rng))
            .collect();
        if shared.options.keep_events {
            state.received.extend(batch.jsons);
        }
        // Counted under the lock so that `received_count` never runs ahead of `received`.
        shared.received_count.fetch_add(count, Ordering::SeqCst);
        shared.accepted_batches.fetch_add(1, Ordering::SeqCst);
        ids
    };
    shared.accepted.notify_waiters();

    let answer = serde_json::json!({ "received": true, "event_ids": ids });
    Ok(json_answer(StatusCode::OK, answer.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::test_http::{send, Reply};
    use std::time::Instant;

    fn batch(key: &str, events: &[&str]) -> String {
        serde_json::json!({ "intake_key": key, "jsons": events }).to_string()
    }

    async fn post(intake: &IntakeStandIn, body: &str) -> Option<Reply> {
        let headers = [("Content-Type", "application/json")];
        send(
            intake.local_addr(),
            "POST",
            BATCH_PATH,
            &headers,
            body.as_bytes(),
        )
        .await
    }

    const EVENT_A: &str =
        r#"{"service":"sso","ua":"a \u003cb\u003e \u0026 c","name":"José Müller"}"#;
    const EVENT_B: &str = r#"{"service":"ldap","operation_number":3}"#;

    #[tokio::test]
    async fn records_accepted_events_in_order_with_one_id_each() {
        let intake = IntakeStandIn::start(IntakeOptions::default())
            .await
            .unwrap();
        let reply = post(&intake, &batch("demo-intake-key", &[EVENT_A, EVENT_B]))
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body_text());
        let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer["received"], true);
        let ids = answer["event_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0].as_str().unwrap().len(), 36);

        // A duplicate is kept: the stand-in records what arrives, as the real intake does.
        let again = post(&intake, &batch("demo-intake-key", &[EVENT_A]))
            .await
            .unwrap();
        assert_eq!(again.status, 200);
        assert_eq!(intake.received(), vec![EVENT_A, EVENT_B, EVENT_A]);
        assert_eq!(intake.received_from(2), vec![EVENT_A]);
        assert_eq!(intake.received_from(9), Vec::<String>::new());
        assert_eq!(intake.with_received(|events| events.len()), 3);
        assert_eq!(intake.received_count(), 3);
        assert_eq!(intake.accepted_batches(), 2);
        assert_eq!(intake.requests(), 2);
        assert!(intake.wait_received(3, Duration::from_millis(10)).await);
        assert!(!intake.wait_received(4, Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn refuses_bad_key_bad_json_and_wrong_paths() {
        let intake = IntakeStandIn::start(IntakeOptions::default())
            .await
            .unwrap();
        let bad_key = post(&intake, &batch("wrong", &[EVENT_A])).await.unwrap();
        assert_eq!(bad_key.status, 401);
        assert_eq!(bad_key.body_text(), r#"{"message":"invalid intake key"}"#);
        let no_key = post(&intake, r#"{"jsons":["{}"]}"#).await.unwrap();
        assert_eq!(no_key.status, 401);

        for garbage in [
            "",
            "nonsense",
            "{\"intake_key\":\"demo-intake-key\"}",
            "{\"intake_key\":\"demo-intake-key\",\"jsons\":[{}]}",
        ] {
            let reply = post(&intake, garbage).await.unwrap();
            assert_eq!(reply.status, 400, "{garbage:?}");
        }

        intake.set_intake_key("rotated");
        assert_eq!(
            post(&intake, &batch("demo-intake-key", &[EVENT_A]))
                .await
                .unwrap()
                .status,
            401
        );
        assert_eq!(
            post(&intake, &batch("rotated", &[EVENT_A]))
                .await
                .unwrap()
                .status,
            200
        );

        let elsewhere = send(intake.local_addr(), "POST", "/jsons", &[], b"{}")
            .await
            .unwrap();
        assert_eq!(elsewhere.status, 404);
        let get = send(intake.local_addr(), "GET", BATCH_PATH, &[], b"")
            .await
            .unwrap();
        assert_eq!(get.status, 405);
        assert_eq!(
            intake.requests(),
            8,
            "every POST /batch counts, not the others"
        );
        assert_eq!(intake.received_count(), 1);
    }

    #[tokio::test]
    async fn refuses_oversize_body_or_event_whole() {
        let options = IntakeOptions {
            max_event_bytes: 100,
            max_body_bytes: 4096,
            ..IntakeOptions::default()
        };
        let intake = IntakeStandIn::start(options).await.unwrap();
        let big_event = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100));
        let reply = post(&intake, &batch("demo-intake-key", &[EVENT_B, &big_event]))
            .await
            .unwrap();
        assert_eq!(reply.status, 413);
        assert!(
            reply.body_text().contains("event 1"),
            "{}",
            reply.body_text()
        );

        let exactly = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100 - 10));
        assert_eq!(exactly.len(), 100);
        assert_eq!(
            post(&intake, &batch("demo-intake-key", &[&exactly]))
                .await
                .unwrap()
                .status,
            200
        );

        // Much larger than the body limit: the client still gets the 413, not a reset.
        let many: Vec<&str> = vec![EVENT_B; 10_000];
        let reply = post(&intake, &batch("demo-intake-key", &many))
            .await
            .unwrap();
        assert_eq!(reply.status, 413);
        assert_eq!(intake.received(), vec![exactly]);
        assert_eq!(intake.accepted_batches(), 1);
    }

    #[tokio::test]
    async fn outage_answers_503_without_using_faults() {
        let intake = IntakeStandIn::start(IntakeOptions::default())
            .await
            .unwrap();
        intake.push_fault(IntakeFault::Status {
            status: 429,
            retry_after: Some(2),
        });
        intake.set_outage(true);
        for _ in 0..3 {
            let reply = post(&intake, &batch("demo-intake-key", &[EVENT_A]))
                .await
                .unwrap();
            assert_eq!(reply.status, 503);
            assert_eq!(reply.header("Retry-After"), None);
        }
        intake.set_outage(false);
        assert_eq!(intake.pending_faults(), 1);
        assert_eq!(
            post(&intake, &batch("demo-intake-key", &[EVENT_A]))
                .await
                .unwrap()
                .status,
            429
        );
        assert_eq!(
            post(&intake, &batch("demo-intake-key", &[EVENT_A]))
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(intake.received_count(), 1);
        assert_eq!(intake.requests(), 5);
    }

    #[tokio::test]
    async fn faults_replace_one_answer_each_in_order() {
        let intake = IntakeStandIn::start(IntakeOptions::default())
            .await
            .unwrap();
        intake.push_fault(IntakeFault::Status {
            status: 429,
            retry_after: Some(3),
        });
        intake.push_fault(IntakeFault::Status {
            status: 502,
            retry_after: None,
        });
        intake.push_fault(IntakeFault::CloseConnection);
        intake.push_fault(IntakeFault::Delay(Duration::from_millis(150)));
        let body = batch("demo-intake-key", &[EVENT_A]);

        let limited = post(&intake, &body).await.unwrap();
        assert_eq!(limited.status, 429);
        assert_eq!(limited.header("Retry-After"), Some("3"));
        let bad_gateway = post(&intake, &body).await.unwrap();
        assert_eq!(bad_gateway.status, 502);
        assert!(
            post(&intake, &body).await.is_none(),
            "connection dropped without an answer"
        );
        assert_eq!(
            intake.received_count(),
            0,
            "faulted requests record nothing"
        );

        let started = Instant::now();
        let delayed = post(&intake, &body).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(delayed.status, 200);
        assert_eq!(intake.received(), vec![EVENT_A]);
        assert_eq!(intake.requests(), 4);
        assert_eq!(intake.accepted_batches(), 1);
    }

    #[tokio::test]
    async fn counting_only_mode_keeps_no_strings() {
        let options = IntakeOptions {
            keep_events: false,
            ..IntakeOptions::default()
        };
        let intake = IntakeStandIn::start(options).await.unwrap();
        let reply = post(&intake, &batch("demo-intake-key", &[EVENT_A, EVENT_B]))
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(intake.received_count(), 2);
        assert!(intake.received().is_empty());
    }

    #[tokio::test]
    async fn wait_received_wakes_on_a_later_batch() {
        let intake = IntakeStandIn::start(IntakeOptions::default())
            .await
            .unwrap();
        let waiter = {
            let intake = intake.clone();
            tokio::spawn(async move { intake.wait_received(2, Duration::from_secs(5)).await })
        };
        post(&intake, &batch("demo-intake-key", &[EVENT_A]))
            .await
            .unwrap();
        post(&intake, &batch("demo-intake-key", &[EVENT_B]))
            .await
            .unwrap();
        assert!(waiter.await.unwrap());
    }
}

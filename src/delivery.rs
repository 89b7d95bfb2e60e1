//! Delivering one batch of raw events to one Sekoia.io intake (`POST {intake_url}/batch`): the request,
//! what each answer means, the 413 split, the backoff and the dead letters. Shared by the forwarder
//! ([`crate::sink`]), whose events leave the queue, and `ship` ([`crate::outbox`]), whose events come from
//! bundle files: what "done" means for an event is the caller's, through [`Settle`].
//!
//! Invariants:
//! - An event is settled as accepted only after a 2xx for a request that held it (never before sending).
//! - Transient failures (timeouts, resets, 422, 429, 5xx) are retried forever with capped, jittered
//!   exponential backoff, honouring `Retry-After`. Configuration failures (400, 401, 403, 404) are reported
//!   clearly and retried slowly; the events wait.
//! - An event over [`INTAKE_MAX_EVENT_BYTES`] is never sent: it is dead-lettered first. 413 splits a batch in
//!   two, the first half sent first; an event refused alone with 413 is dead-lettered. A dead letter never
//!   blocks the rest.
//! - On shutdown a request in flight may finish within [`SHUTDOWN_GRACE`], then it is abandoned; its events
//!   are not settled (they are sent again later).
//! - No secret reaches a message: the intake key goes only into the request body.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use crate::config::{SekoiaConfig, INTAKE_MAX_EVENT_BYTES};
use crate::escape;
use crate::http::HttpClient;
use crate::metrics::{Metrics, Outcome};
use crate::retry::{Backoffs, RepeatFilter};
use crate::shutdown::Shutdown;

/// How long an in-flight request may finish after shutdown is asked for, before it is abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An event to send: its raw JSON text, sent as one string of the batch.
pub trait Payload {
    fn raw(&self) -> &str;
}

impl Payload for crate::event::QueuedEvent {
    fn raw(&self) -> &str {
        &self.raw
    }
}

/// What becomes of the events a delivery settles: acknowledged in the queue, or recorded as the progress
/// of a bundle. Each call must be durable enough for its caller's promise before it returns.
pub trait Settle<E>: Send {
    type Error: Send;

    /// The intake answered 2xx to a request holding exactly `events`.
    fn accepted(&mut self, events: &[E]) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// `event` will never be accepted (`reason` says why): keep it aside, never send it again.
    fn dead_letter(
        &mut self,
        event: E,
        reason: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// How many events wait behind this batch, for the message about a refused key.
    fn waiting(&self) -> u64;
}

/// Why a delivery ended before every event was settled.
#[derive(Debug)]
pub enum DeliverError<E> {
    /// Shutdown came first; the events not settled are sent again later.
    Stopped,
    /// Settling failed (the queue's storage, the progress file).
    Settle(E),
}

/// One stream's intake, borrowed from whoever owns the client and the settings.
pub struct Intake<'a> {
    /// For logs and metrics labels.
    pub stream: &'a str,
    pub config: &'a SekoiaConfig,
    pub http: &'a HttpClient,
    pub metrics: &'a Metrics,
}

/// What the intake made of one request.
enum SendOutcome {
    Accepted,
    TooLarge,
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Rejected(String),
}

impl Intake<'_> {
    /// Dead-letters the oversize events of `batch`, then sends the rest, splitting on 413, until every
    /// event is settled (accepted or dead-lettered).
    pub async fn deliver<E, S>(
        &self,
        batch: Vec<E>,
        settle: &mut S,
        shutdown: &Shutdown,
    ) -> Result<(), DeliverError<S::Error>>
    where
        E: Payload + Send + Sync,
        S: Settle<E>,
    {
        let (oversize, sendable): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|event| event.raw().len() > INTAKE_MAX_EVENT_BYTES);
        for event in oversize {
            let reason = format!(
                "the event is {} bytes, over the intake's limit of {INTAKE_MAX_EVENT_BYTES} bytes",
                event.raw().len()
            );
            self.dead_letter(settle, event, &reason).await?;
        }
        if sendable.is_empty() {
            return Ok(());
        }
        let mut pending = vec![sendable];
        let mut backoffs = Backoffs::new(self.config.retry);
        let mut repeats = RepeatFilter::default();
        while let Some(chunk) = pending.pop() {
            loop {
                match self.send(&chunk, shutdown).await? {
                    SendOutcome::Accepted => {
                        settle
                            .accepted(&chunk)
                            .await
                            .map_err(DeliverError::Settle)?;
                        self.metrics.send_succeeded(self.stream, chunk.len() as u64);
                        repeats.reset();
                        backoffs.reset();
                        break;
                    }
                    SendOutcome::TooLarge if chunk.len() == 1 => {
                        let reason = "the intake refused the event alone with 413 (too large)";
                        if let Some(event) = chunk.into_iter().next() {
                            self.dead_letter(settle, event, reason).await?;
                        }
                        break;
                    }
                    SendOutcome::TooLarge => {
                        tracing::info!(
                            events = chunk.len(),
                            "the intake said 413: splitting the batch in two"
                        );
                        let mut first = chunk;
                        let second = first.split_off(first.len() / 2);
                        // Last pushed is sent first: keep the order.
                        pending.push(second);
                        pending.push(first);
                        break;
                    }
                    SendOutcome::Transient {
                        reason,
                        retry_after,
                    } => {
                        let wait = backoffs.transient_wait(retry_after);
                        if let Some(held_back) = repeats.check(&reason) {
                            tracing::warn!(stream = %self.stream, events = chunk.len(), retry_in = ?wait, repeats = held_back, "sending failed, will retry: {reason}");
                        }
                        self.metrics.send_failed(self.stream, &reason);
                        if !shutdown.sleep(wait).await {
                            return Err(DeliverError::Stopped);
                        }
                    }
                    SendOutcome::Rejected(reason) => {
                        let wait = backoffs.rejected_wait();
                        if let Some(held_back) = repeats.check(&reason) {
                            tracing::error!(
                                stream = %self.stream,
                                queued_events = settle.waiting(),
                                retry_in = ?wait,
                                repeats = held_back,
                                "{reason}; every event stays queued until it is fixed"
                            );
                        }
                        self.metrics.send_failed(self.stream, &reason);
                        if !shutdown.sleep(wait).await {
                            return Err(DeliverError::Stopped);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn dead_letter<E, S>(
        &self,
        settle: &mut S,
        event: E,
        reason: &str,
    ) -> Result<(), DeliverError<S::Error>>
    where
        E: Payload + Send + Sync,
        S: Settle<E>,
    {
        settle
            .dead_letter(event, reason)
            .await
            .map_err(DeliverError::Settle)?;
        self.metrics.dead_lettered(self.stream);
        Ok(())
    }

    /// One request; on shutdown it may finish within [`SHUTDOWN_GRACE`], then it is abandoned.
    async fn send<E: Payload, X>(
        &self,
        chunk: &[E],
        shutdown: &Shutdown,
    ) -> Result<SendOutcome, DeliverError<X>> {
        let buffer = Arc::new(batch_body_in(
            SPARE_BODIES.take(),
            self.config.intake_key.expose(),
            chunk,
        ));
        let body = Bytes::from_owner(BodyBuffer(buffer.clone()));
        let url = format!("{}/batch", self.config.intake_url);
        let asked = std::time::Instant::now();
        let result = {
            let request = self
                .http
                .post_json(&url, &[], body, self.config.request_timeout);
            tokio::pin!(request);
            tokio::select! {
                result = &mut request => result,
                _ = shutdown.wait() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut request).await {
                    Ok(result) => result,
                    Err(_) => return Err(DeliverError::Stopped),
                },
            }
        };
        // The request is over: the client let go of the body (unless a connection still holds it, in
        // which case the buffer is freed with it).
        SPARE_BODIES.give(buffer);
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                self.metrics
                    .intake_request(self.stream, Outcome::Retry, asked.elapsed());
                return Ok(SendOutcome::Transient {
                    reason: format!("Sekoia.io intake at {url} did not answer: {err}"),
                    retry_after: None,
                });
            }
        };
        let status = response.status;
        // Only a refusal's body is quoted: a success's (an id per event) is not read.
        let said = || response.body_excerpt();
        let outcome = match status {
            s if s.is_success() => SendOutcome::Accepted,
            StatusCode::PAYLOAD_TOO_LARGE => SendOutcome::TooLarge,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SendOutcome::Rejected(format!(
                "Sekoia.io refused the intake key ({status}): check {}; the intake said: {}",
                self.key_setting(),
                said()
            )),
            StatusCode::NOT_FOUND => SendOutcome::Rejected(format!(
                "Sekoia.io answered 404 for {url}: check {}.intake_url (or region; for example \"https://intake.sekoia.io\"); the intake said: {}",
                self.config.section,
                said()
            )),
            StatusCode::BAD_REQUEST => SendOutcome::Rejected(format!(
                "Sekoia.io refused the batch (400 Bad Request): check {} and {}.intake_url; the intake said: {}",
                self.key_setting(),
                self.config.section,
                said()
            )),
            _ => SendOutcome::Transient {
                reason: format!("Sekoia.io intake answered {status}: {}", said()),
                retry_after: response.retry_after(),
            },
        };
        let label = match &outcome {
            SendOutcome::Accepted => Outcome::Ok,
            SendOutcome::TooLarge => Outcome::TooLarge,
            SendOutcome::Transient { .. } => Outcome::Retry,
            SendOutcome::Rejected(_) => Outcome::Rejected,
        };
        self.metrics
            .intake_request(self.stream, label, asked.elapsed());
        Ok(outcome)
    }

    /// The setting that holds this destination's key, for messages.
    fn key_setting(&self) -> String {
        if self.config.section == "sekoia" {
            "sekoia.intake_key (SEKOIA_INTAKE_KEY)".to_string()
        } else {
            format!("{}.intake_key", self.config.section)
        }
    }
}

/// `{"intake_key": "...", "jsons": ["<raw event>", ...]}`, each raw event as one JSON string.
///
/// Escaping the events is one of the agent's largest costs, JumpCloud's events having a quote every seven
/// bytes or so: [`crate::escape`] writes them a block at a time.
pub fn batch_body<E: Payload>(intake_key: &str, events: &[E]) -> Bytes {
    Bytes::from(batch_body_in(Vec::new(), intake_key, events))
}

/// [`batch_body`], written over the bytes of `body` (a buffer of an earlier request, reused as it is:
/// zeroing a megabyte again took about 1 % of the agent's CPU when catching up).
fn batch_body_in<E: Payload>(mut body: Vec<u8>, intake_key: &str, events: &[E]) -> Vec<u8> {
    // Escaping adds a backslash before every quote: about a sixth more for JumpCloud's events. Reserving
    // a quarter more, plus the room the escaper writes ahead into, avoids growing (copying) a body of
    // megabytes half way.
    let size: usize = events.iter().map(|e| e.raw().len() * 5 / 4 + 3).sum();
    let needed = size + escape::ROOM + intake_key.len() + 32;
    body.reserve(needed.saturating_sub(body.len()));
    {
        let mut writer = escape::Writer::over(&mut body);
        writer.raw(b"{\"intake_key\":");
        writer.string(intake_key);
        writer.raw(b",\"jsons\":[");
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                writer.raw(b",");
            }
            writer.string(event.raw());
        }
        writer.raw(b"]}");
    }
    body
}

/// A body's buffer, shared by the request's [`Bytes`] ([`Bytes::from_owner`]) and the forwarder, which
/// takes it back whole once the request is over: as it was, with no copy (turning a [`Bytes`] back into
/// a `Vec` moves its bytes).
struct BodyBuffer(Arc<Vec<u8>>);

impl AsRef<[u8]> for BodyBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The buffers of bodies already sent, for the next ones: a body of a thousand events takes over a
/// megabyte, which the allocator serves with a fresh `mmap` (its threshold is 256 KiB, see
/// [`crate::allocator`]) that the kernel must map and zero page by page, then unmaps at `free`. Writing the
/// next body in the same buffer saves that: a fifth of the agent's page faults when catching up.
///
/// One set for the whole process, not one per stream: with hundreds of streams, what it keeps stays
/// [`SpareBodies::MAX_KEPT`] buffers of at most [`SpareBodies::MAX_BYTES`].
struct SpareBodies(Mutex<Spare>);

struct Spare {
    buffers: Vec<Vec<u8>>,
    /// When a body was last given back: buffers kept long after it are let go.
    last_given: Option<Instant>,
}

static SPARE_BODIES: SpareBodies = SpareBodies(Mutex::new(Spare {
    buffers: Vec::new(),
    last_given: None,
}));

/// How long the buffers of sent bodies are kept once no body is sent any more.
const SPARE_BODIES_KEPT_IDLE: Duration = Duration::from_secs(10);

/// Called by a forwarder with nothing to send: once no body has been sent for a while, the buffers kept
/// for the next bodies are let go, so that an agent at rest does not hold the memory of its last batches.
pub fn forwarding_idle() {
    SPARE_BODIES.let_go_when_unused(SPARE_BODIES_KEPT_IDLE);
}

impl SpareBodies {
    /// As many as the forwarder sends at once by default (`sekoia.max_in_flight`).
    const MAX_KEPT: usize = 2;
    /// A default batch's body (`batch_max_bytes`, escaped) fits; a larger buffer is let go.
    const MAX_BYTES: usize = 8 * 1024 * 1024;

    /// A buffer to write a body in: a kept one, or a new (empty) one.
    fn take(&self) -> Vec<u8> {
        self.spare().buffers.pop().unwrap_or_default()
    }

    /// Keeps the buffer of a body once sent, if nothing else holds it and there is room. Its bytes stay:
    /// the next body is written over them.
    fn give(&self, buffer: Arc<Vec<u8>>) {
        let Ok(buffer) = Arc::try_unwrap(buffer) else {
            return;
        };
        let mut spare = self.spare();
        spare.last_given = Some(Instant::now());
        if buffer.capacity() <= Self::MAX_BYTES && spare.buffers.len() < Self::MAX_KEPT {
            spare.buffers.push(buffer);
        }
    }

    /// Lets the kept buffers go when no body was given back for `idle`.
    fn let_go_when_unused(&self, idle: Duration) {
        let mut spare = self.spare();
        if spare.last_given.is_none_or(|at| at.elapsed() >= idle) {
            spare.buffers = Vec::new();
        }
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Payload for String {
        fn raw(&self) -> &str {
            self
        }
    }

    proptest! {
        /// The body is what serde_json writes for the same key and events, byte for byte: control
        /// characters, quotes, backslashes and any Unicode, at any length and alignment.
        #[test]
        fn the_body_is_what_serde_json_writes(
            key in ".{0,40}",
            events in prop::collection::vec(
                prop_oneof![".{0,200}", "[\\x00-\\x7f]{0,100}", "[\"\\\\{}:a ]{0,300}"], 0..12),
            earlier in prop::collection::vec(any::<u8>(), 0..500),
        ) {
            let body = batch_body(&key, &events);
            let expected = serde_json::to_vec(&serde_json::json!({"intake_key": key, "jsons": events}))
                .expect("serializable");
            prop_assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&expected));
            // Written over the bytes of an earlier body, longer or shorter, it is the same.
            let again = batch_body_in(earlier, &key, &events);
            prop_assert_eq!(&again[..], &body[..]);
        }
    }

    #[test]
    fn a_sent_body_lends_its_buffer_to_the_next_unless_something_still_holds_it() {
        let spare = SpareBodies(Mutex::new(Spare {
            buffers: Vec::new(),
            last_given: None,
        }));
        let events = vec!["{\"id\":\"a\"}".to_string(); 100];
        let body = Arc::new(batch_body_in(spare.take(), "key", &events));
        let held = Bytes::from_owner(BodyBuffer(body.clone()));
        spare.give(body);
        assert!(
            spare.take().capacity() == 0,
            "a body still held elsewhere is not reused"
        );
        drop(held);
        let body = Arc::new(batch_body_in(spare.take(), "key", &events));
        let sent = Bytes::from_owner(BodyBuffer(body.clone()));
        let address = sent.as_ptr();
        drop(sent);
        spare.give(body);
        let reused = spare.take();
        assert_eq!(reused.as_ptr(), address, "the same buffer comes back");
        assert!(reused.capacity() >= events.len() * 12);
        let next = batch_body_in(reused, "key", &events[..1]);
        assert_eq!(next.as_ptr(), address);
        assert_eq!(
            &next[..],
            &br#"{"intake_key":"key","jsons":["{\"id\":\"a\"}"]}"#[..],
            "written over the longer body before it, and only what was written is kept"
        );

        for _ in 0..SpareBodies::MAX_KEPT + 2 {
            spare.give(Arc::new(batch_body_in(Vec::new(), "key", &events)));
        }
        assert_eq!(
            spare.spare().buffers.len(),
            SpareBodies::MAX_KEPT,
            "only so many are kept"
        );
        spare.let_go_when_unused(Duration::from_secs(3600));
        assert_eq!(
            spare.spare().buffers.len(),
            SpareBodies::MAX_KEPT,
            "kept while bodies are being sent"
        );
        spare.let_go_when_unused(Duration::ZERO);
        assert!(
            spare.spare().buffers.is_empty(),
            "let go once none was sent for the time given"
        );
        spare.give(Arc::new(vec![0u8; SpareBodies::MAX_BYTES + 1]));
        assert!(
            spare.spare().buffers.is_empty(),
            "a very large buffer is let go"
        );
    }
}

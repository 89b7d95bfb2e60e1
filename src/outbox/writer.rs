//! The outbox writer: on a host that sends nothing, it drains one stream's queued events into sealed
//! bundle files in `[outbox] dir`, in place of the forwarder.
//!
//! Invariants:
//! - An event leaves the queue only once the bundle holding it is complete and durable (written under a
//!   temporary name, synced, renamed, folder synced): all of a bundle's events are acknowledged in one
//!   transaction after that, never before.
//! - A bundle holds one stream's events in queue order, at most `max_bundle_events`; it is sealed when
//!   full, or when no more events are waiting and its oldest one has waited `max_bundle_age` in the queue.
//! - After a crash between the rename and the acknowledgement, the bundle left in the folder is recognised
//!   at start (same stream, same sequence range, the same events byte for byte) and its events leave the
//!   queue: they are not bundled twice. A file is never replaced by other events: names carry the hash of
//!   the content. Temporary files left by a crash are removed at start.
//! - A bundle that cannot be written (full disk, permissions) is retried with backoff, forever; its events
//!   stay queued. A queue that keeps failing ends the writer, as it ends a forwarder (the agent restarts).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::bundle::{self, Builder, EXTENSION};
use super::durable;
use crate::clock::{now_ms, now_ns};
use crate::config::{OutboxConfig, RetryConfig};
use crate::event::QueuedEvent;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};
use crate::retry::{Backoffs, StorageFailures, STORAGE_GIVE_UP};
use crate::shutdown::Shutdown;
use crate::sink::StreamRoute;

/// A bundle is sealed before its raw content passes this, whatever `max_bundle_events` says.
const MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;
/// Raw bytes read from the queue at once.
const READ_BYTES: usize = 4 * 1024 * 1024;
/// Queued records examined per read (as the forwarder).
const MAX_SCAN: usize = 20_000;

/// Drains one stream into bundles until shutdown.
pub struct BundleWriter {
    pub stream: StreamRoute,
    pub config: OutboxConfig,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    /// Woken by the poller when it queues events.
    pub wake: Arc<Notify>,
}

/// What stopped a bundle.
enum Failure {
    /// The outbox folder (or compression): retried with backoff.
    Outbox(String),
    /// The queue's storage.
    Queue(QueueError),
}

impl From<QueueError> for Failure {
    fn from(err: QueueError) -> Self {
        Failure::Queue(err)
    }
}

/// The bundle being filled, and where reading resumes if it is dropped.
struct Pending {
    builder: Builder,
    /// The position before its first event.
    start: Option<u64>,
}

impl BundleWriter {
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoffs = Backoffs::new(RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        });
        let mut storage = StorageFailures::default();
        loop {
            match self.recover().await {
                Ok(()) => break,
                Err(failure) => {
                    if !self
                        .failed(failure, &mut backoffs, &mut storage, &shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        }
        // Every event of the stream up to here is acknowledged or in `pending`.
        let mut last_read: Option<u64> = None;
        let mut pending: Option<Pending> = None;
        while !shutdown.is_triggered() {
            match self.step(&mut last_read, &mut pending).await {
                Ok(Step::More) => {}
                Ok(Step::Sealed) => {
                    backoffs.reset();
                    storage.reset();
                }
                Ok(Step::Wait(wait)) => {
                    storage.reset();
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Err(failure) => {
                    // Read the dropped bundle's events again.
                    if let Some(dropped) = pending.take() {
                        last_read = dropped.start;
                    }
                    if !self
                        .failed(failure, &mut backoffs, &mut storage, &shutdown)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        // A bundle not sealed yet is dropped: its events are still queued.
        tracing::debug!(stream = %self.stream.name, "outbox writer stopped");
    }

    /// Reads what follows, and seals the bundle when it is full or due.
    async fn step(
        &self,
        last_read: &mut Option<u64>,
        pending: &mut Option<Pending>,
    ) -> Result<Step, Failure> {
        let max_events = self.config.max_bundle_events;
        let filled = pending.as_ref().map_or(0, |p| p.builder.len());
        let (batch, examined) = self.read(*last_read, max_events - filled).await?;
        let caught_up = batch.is_empty() && examined == *last_read;
        if !batch.is_empty() {
            if pending.is_none() {
                *pending = Some(Pending {
                    builder: Builder::new(&self.stream.name).map_err(compression)?,
                    start: *last_read,
                });
            }
            if let Some(p) = pending.as_mut() {
                for event in &batch {
                    p.builder.push(event).map_err(compression)?;
                }
            }
        }
        *last_read = examined;
        let Some(p) = pending.as_ref() else {
            return Ok(if caught_up {
                Step::Wait(Duration::from_secs(1))
            } else {
                Step::More
            });
        };
        let full = p.builder.len() >= max_events || p.builder.content_bytes() >= MAX_BUNDLE_BYTES;
        let waited =
            Duration::from_millis(now_ms().saturating_sub(p.builder.oldest_queued_at_ms()));
        if full || (caught_up && waited >= self.config.max_bundle_age) {
            if let Some(p) = pending.take() {
                if let Err(failure) = self.seal(p.builder).await {
                    *last_read = p.start;
                    return Err(failure);
                }
            }
            return Ok(Step::Sealed);
        }
        Ok(if caught_up {
            let due = self.config.max_bundle_age.saturating_sub(waited);
            Step::Wait(due.clamp(Duration::from_millis(10), Duration::from_secs(1)))
        } else {
            Step::More
        })
    }

    async fn read(
        &self,
        after: Option<u64>,
        max_events: usize,
    ) -> Result<(Vec<QueuedEvent>, Option<u64>), QueueError> {
        let tag = self.stream.tag;
        self.queue
            .run_blocking(move |queue| {
                queue.read_stream_batch(tag, after, max_events, READ_BYTES, MAX_SCAN)
            })
            .await
    }

    /// Writes the bundle durably, then acknowledges its events.
    async fn seal(&self, builder: Builder) -> Result<(), Failure> {
        let dir = self.config.dir.clone();
        let key = self.config.hmac_key.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let sealed = builder
                .seal(key.as_ref().map(|k| k.expose().as_bytes()), now_ns())
                .map_err(compression)?;
            durable::write_atomic(&dir, &sealed.file_name(), &sealed.bytes).map_err(|err| {
                Failure::Outbox(format!(
                    "cannot write the bundle {} into {}: {err}",
                    sealed.file_name(),
                    dir.display()
                ))
            })?;
            Ok::<_, Failure>(sealed)
        })
        .await
        .map_err(|err| Failure::Outbox(format!("writing a bundle failed: {err}")))??;
        let events = sealed.seqs.len() as u64;
        let seqs = sealed.seqs;
        self.queue
            .run_blocking(move |queue| queue.ack(&seqs))
            .await?;
        self.queue.flush().await?;
        self.metrics.send_succeeded(&self.stream.name, events);
        tracing::info!(
            stream = %self.stream.name,
            bundle = %format!("{}{EXTENSION}", sealed.manifest.id),
            events,
            bytes = sealed.bytes.len(),
            "bundle sealed"
        );
        Ok(())
    }

    /// At start: creates the folder, removes temporary files a crash left, and lets the events of a bundle
    /// written just before a crash (and not yet acknowledged) leave the queue.
    async fn recover(&self) -> Result<(), Failure> {
        let dir = self.config.dir.clone();
        let stream = self.stream.name.clone();
        let candidates = tokio::task::spawn_blocking(move || bundles_of(&dir, &stream))
            .await
            .map_err(|err| Failure::Outbox(format!("reading the outbox failed: {err}")))?
            .map_err(|err| {
                Failure::Outbox(format!(
                    "cannot use the outbox folder {}: {err} (create it, or give the agent's user write access)",
                    self.config.dir.display()
                ))
            })?;
        if candidates.is_empty() {
            return Ok(());
        }
        let tag = self.stream.tag;
        let (head, _) = self
            .queue
            .run_blocking(move |queue| queue.read_stream_batch(tag, None, 1, 1, usize::MAX))
            .await?;
        let Some(head) = head.first().map(|e| e.seq) else {
            return Ok(());
        };
        for (name, first, last) in candidates {
            if last < head {
                continue;
            }
            self.recover_one(&name, first, last).await?;
        }
        Ok(())
    }

    /// Acknowledges the queued events of `name` if they are exactly its events.
    async fn recover_one(&self, name: &str, first: u64, last: u64) -> Result<(), Failure> {
        let path = self.config.dir.join(name);
        let key = self.config.hmac_key.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|err| err.to_string())?;
            bundle::open(&bytes, key.as_ref().map(|k| k.expose().as_bytes()))
                .map_err(|problem| problem.to_string())
        })
        .await
        .map_err(|err| Failure::Outbox(err.to_string()))?;
        let opened = match opened {
            Ok(opened) => opened,
            Err(problem) => {
                tracing::warn!(stream = %self.stream.name, bundle = name, "a bundle in the outbox cannot be read back ({problem}); it is left as it is");
                return Ok(());
            }
        };
        let tag = self.stream.tag;
        let count = opened.events.len();
        let (queued, _) = self
            .queue
            .run_blocking(move |queue| {
                queue.read_stream_batch(
                    tag,
                    first.checked_sub(1),
                    count + 1,
                    usize::MAX,
                    usize::MAX,
                )
            })
            .await?;
        let queued: Vec<QueuedEvent> = queued.into_iter().filter(|e| e.seq <= last).collect();
        if queued.is_empty() {
            return Ok(());
        }
        let same = queued.len() == count
            && queued
                .iter()
                .zip(&opened.events)
                .all(|(q, raw)| q.raw == *raw);
        if !same {
            tracing::warn!(stream = %self.stream.name, bundle = name, "a bundle in the outbox covers queued events but holds others (a queue started anew?); the queued events go into a bundle of their own");
            return Ok(());
        }
        let seqs: Vec<u64> = queued.iter().map(|e| e.seq).collect();
        self.queue
            .run_blocking(move |queue| queue.ack(&seqs))
            .await?;
        self.queue.flush().await?;
        self.metrics.send_succeeded(&self.stream.name, count as u64);
        tracing::info!(stream = %self.stream.name, bundle = name, events = count, "a bundle sealed just before the agent stopped was found whole: its events leave the queue now");
        Ok(())
    }

    /// Logs a failure and waits before the next try; false when shutdown came first, or when the queue has
    /// failed for longer than [`STORAGE_GIVE_UP`].
    async fn failed(
        &self,
        failure: Failure,
        backoffs: &mut Backoffs,
        storage: &mut StorageFailures,
        shutdown: &Shutdown,
    ) -> bool {
        let wait = backoffs.transient_wait(None);
        let reason = match failure {
            Failure::Outbox(reason) => reason,
            Failure::Queue(err) => {
                if storage.failed_too_long() {
                    tracing::error!(stream = %self.stream.name, "the queue's storage has failed for over {STORAGE_GIVE_UP:?} ({err}): stopping the agent so that it restarts and reopens the queue");
                    return false;
                }
                format!("cannot read or update the queue: {err}")
            }
        };
        tracing::error!(stream = %self.stream.name, retry_in = ?wait, "{reason}; the events stay queued");
        self.metrics.send_failed(&self.stream.name, &reason);
        shutdown.sleep(wait).await
    }
}

enum Step {
    /// Read again at once.
    More,
    /// A bundle was sealed.
    Sealed,
    /// Nothing more to read for now.
    Wait(Duration),
}

fn compression(err: std::io::Error) -> Failure {
    Failure::Outbox(format!("compressing a bundle failed: {err}"))
}

/// Creates `dir` if needed, removes the temporary files a crash left there, and lists the bundles of
/// `stream` in it (name, first and last sequence number), in sequence order.
fn bundles_of(dir: &Path, stream: &str) -> std::io::Result<Vec<(String, u64, u64)>> {
    std::fs::create_dir_all(dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if durable::is_tmp_name(&name) && name.contains(EXTENSION) {
            std::fs::remove_file(entry.path())?;
            continue;
        }
        if let Some((of, first, last)) = bundle::parse_file_name(&name) {
            if of == stream {
                found.push((name.clone(), first, last));
            }
        }
    }
    found.sort_by_key(|(_, first, _)| *first);
    Ok(found)
}

/// The sealed bundles in `dir` and their total size (for `status`); none when it cannot be read.
pub fn waiting(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| bundle::parse_file_name(&e.file_name().to_string_lossy()).is_some())
        .fold((0, 0), |(count, bytes), e| {
            (count + 1, bytes + e.metadata().map_or(0, |m| m.len()))
        })
}

/// Checks that the outbox folder exists or can be created, and is writable (for `validate`).
pub fn check_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|err| {
        format!(
            "outbox.dir = {:?}: cannot create it: {err} (create it, or give the agent's user write access)",
            dir.display().to_string()
        )
    })?;
    tempfile::tempfile_in(dir).map(drop).map_err(|err| {
        format!(
            "outbox.dir = {:?}: not writable: {err} (give the agent's user write access)",
            dir.display().to_string()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::event::{stream_tag, IncomingEvent};

    const KEY: &str = "writer-test-key-0123456789";

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bundle_sealed_just_before_a_crash_is_not_sealed_again() {
        let dir = tempfile::tempdir().expect("dir");
        let outbox = dir.path().join("outbox");
        std::fs::create_dir(&outbox).expect("outbox");
        let queue = Queue::open(&dir.path().join("queue")).expect("queue");
        let events: Vec<IncomingEvent> = (0..30)
            .map(|i| {
                let raw = format!(r#"{{"id":"e{i}","timestamp":"2026-01-01T00:00:{i:02}Z"}}"#);
                IncomingEvent::from_text(&raw, 0)
            })
            .collect();
        queue.commit_page("default", &events, None).expect("queued");
        // The crash: a bundle of the first 15 events (sealed by age) is on disk, renamed, and they are
        // still queued; a temporary file of the next one is left half written. Sealed again, they would go
        // into a bundle of 20 with the next 5.
        let tag = stream_tag("default");
        let (first, _) = queue
            .read_stream_batch(tag, None, 15, usize::MAX, usize::MAX)
            .expect("read");
        let mut builder = Builder::new("default").expect("builder");
        for event in &first {
            builder.push(event).expect("pushed");
        }
        let sealed = builder
            .seal(Some(KEY.as_bytes()), now_ns())
            .expect("sealed");
        std::fs::write(outbox.join(sealed.file_name()), &sealed.bytes).expect("written");
        let leftover = durable::tmp_name("default-x-y-z.jcdi-bundle");
        std::fs::write(outbox.join(&leftover), b"half").expect("written");

        let metrics = Arc::new(Metrics::default());
        let writer = BundleWriter {
            stream: StreamRoute {
                name: "default".to_string(),
                tag,
            },
            config: OutboxConfig {
                dir: outbox.clone(),
                max_bundle_events: 20,
                max_bundle_age: Duration::from_millis(50),
                hmac_key: Some(Secret::new(KEY)),
            },
            queue: queue.clone(),
            metrics: metrics.clone(),
            wake: Arc::new(Notify::new()),
        };
        let (trigger, shutdown) = crate::shutdown::channel();
        let running = tokio::spawn(writer.run(shutdown));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while queue.depth().events > 0 || names(&outbox).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never drained"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        trigger.trigger();
        running.await.expect("writer ended");

        let found = names(&outbox);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(!found.contains(&leftover), "temporary files are removed");
        assert_eq!(
            std::fs::read(outbox.join(sealed.file_name())).expect("read"),
            sealed.bytes,
            "the bundle found is left as it was"
        );
        let mut all = Vec::new();
        for name in &found {
            let bytes = std::fs::read(outbox.join(name)).expect("read");
            all.extend(
                bundle::open(&bytes, Some(KEY.as_bytes()))
                    .expect("opens")
                    .events,
            );
        }
        let expected: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8(e.raw.to_vec()).expect("text"))
            .collect();
        assert_eq!(all, expected, "every event once, in order");
        assert_eq!(metrics.snapshot().events_forwarded, 30);
    }
}

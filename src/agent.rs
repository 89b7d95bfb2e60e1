//! The agent: wires the pipeline (source → queue → sink) for one configuration and runs it until shutdown.
//!
//! Each stream gets its own poller and its own forwarder (or, with `[outbox]`, its own bundle writer) (its own HTTP clients, with its sections' proxy
//! and CA settings), sharing the one queue: a stream that fails (revoked key, unreachable intake) stalls
//! only itself, and with several streams each may fill only its equal share of the queue (the queue's
//! [`Limits`]).
//!
//! Invariants: on shutdown the pollers stop first (an in-flight API request is abandoned: nothing was
//! committed for it), the forwarder finishes or abandons its request within its grace period, and the queue
//! is flushed before [`run`] returns. Every part is given [`STOP_DEADLINE`] at most.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::admin::AdminState;
use crate::config::Config;
use crate::event::stream_tag;
use crate::http::HttpClient;
use crate::metrics::Metrics;
use crate::outbox::writer::BundleWriter;
use crate::queue::{Limits, Queue, RecoveryPolicy};
use crate::retry::RepeatFilter;
use crate::shutdown::Shutdown;
use crate::sink::{Forwarder, StreamRoute};
use crate::source::api::{ApiClient, Recorder};
use crate::source::{poll_phase, Poller};

/// The longest a clean stop may take (the packaged unit's `TimeoutStopSec` is longer).
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the delivery checkpoint file is brought up to date (when it moved).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The pipeline stopped because the queue's database is damaged: the caller rebuilds the queue
/// ([`recover_queue`]) and runs the pipeline again.
#[derive(Debug, thiserror::Error)]
#[error("the queue is damaged: {0}")]
pub struct QueueDamaged(pub String);

/// What rebuilding the queue needs to know of the configuration.
fn recovery_policy(config: &Config) -> RecoveryPolicy {
    RecoveryPolicy {
        retention: config
            .streams
            .iter()
            .map(|s| (s.name.clone(), s.jumpcloud.retention))
            .collect(),
        min_free_disk: config.queue.min_free_disk,
    }
}

/// Opens the queue in the configured folder (creating it), on a blocking thread. A damaged queue is set
/// aside and rebuilt from the delivery checkpoint (see [`Queue::open_or_recover`]).
pub async fn open_queue(config: &Config) -> anyhow::Result<Queue> {
    let dir = config.data_dir.clone();
    let create = dir.clone();
    tokio::task::spawn_blocking(move || {
        // 0700 when created here: the queue holds personal data (see crate::privacy).
        crate::privacy::create_data_dir(&create).map_err(|err| {
            anyhow::anyhow!(
                "cannot create data_dir {}: {err} (create it, or give the agent's user write access)",
                create.display()
            )
        })
    })
    .await??;
    let policy = recovery_policy(config);
    let opened =
        tokio::task::spawn_blocking(move || Queue::open_or_recover(&dir, &policy)).await??;
    Ok(opened.queue)
}

/// Rebuilds the queue after the pipeline stopped on damage (every handle of the damaged queue is gone).
pub async fn recover_queue(config: &Config, reason: String) -> anyhow::Result<Queue> {
    let dir = config.data_dir.clone();
    let policy = recovery_policy(config);
    let opened =
        tokio::task::spawn_blocking(move || Queue::recover_damaged(&dir, &reason, &policy))
            .await??;
    Ok(opened.queue)
}

/// Runs the pipeline until `shutdown` is triggered.
pub async fn run(
    config: &Config,
    queue: Queue,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // Events no configured stream will send.
    let usage = queue.run_blocking(|queue| queue.bytes_by_stream()).await?;
    let tags: Vec<u32> = config.streams.iter().map(|s| stream_tag(&s.name)).collect();
    let orphaned: u64 = usage
        .iter()
        .filter(|(tag, _)| !tags.contains(tag))
        .map(|(_, bytes)| bytes)
        .sum();
    if orphaned > 0 {
        tracing::warn!(
            bytes = orphaned,
            "the queue holds events of streams that are no longer configured: they stay queued, unsent, until \
             a stream of the same name is configured again (the single [jumpcloud] form is the stream \"default\")"
        );
    }
    let depth = queue.depth();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        queued_events = depth.events,
        queued_bytes = depth.bytes,
        dead_letters = queue.dead_letter_count(),
        streams = config.streams.len(),
        "agent started"
    );
    if config.streams.is_empty() {
        return Err(anyhow::anyhow!("the configuration has no stream"));
    }
    queue.set_limits(Limits {
        max_bytes: config.queue.max_bytes,
        min_free_disk: config.queue.min_free_disk,
        streams: config.streams.len() as u64,
    });
    let mut tasks = tokio::task::JoinSet::new();
    // One set of turns to read pages for all the streams: memory does not grow with their number.
    let reading = crate::source::reading_turns();
    // And one set of buffers to read them into, kept while pages follow one another.
    let blocks = Arc::new(crate::source::SpareBlocks::default());
    let mut stream_apis = Vec::new();
    let count = config.streams.len();
    for (index, (stream, tag)) in config.streams.iter().zip(tags).enumerate() {
        let api_http = HttpClient::for_transport(CONNECT_TIMEOUT, &stream.jumpcloud.transport)
            .map_err(anyhow::Error::msg)?;
        let api = ApiClient::new(api_http, &stream.jumpcloud)
            .map_err(anyhow::Error::msg)?
            .recording(Recorder::new(queue.clone(), metrics.clone(), &stream.name))
            .sharing_blocks(blocks.clone());
        stream_apis.push((stream.name.clone(), api.clone()));
        let wake = Arc::new(Notify::new());
        let (intake, destination) = match &config.outbox {
            Some(outbox) => ("-".to_string(), format!("outbox {}", outbox.dir.display())),
            None => (
                stream.sekoia.intake_url.clone(),
                stream.sekoia.section.clone(),
            ),
        };
        tracing::info!(
            stream = %stream.name,
            api = %stream.jumpcloud.base_url,
            org_id = stream.jumpcloud.org_id.as_deref().unwrap_or("-"),
            %intake,
            %destination,
            "stream configured"
        );
        let poller = Poller {
            stream: stream.name.clone(),
            config: stream.jumpcloud.clone(),
            api,
            queue: queue.clone(),
            dedup_window: config.queue.dedup_window,
            metrics: metrics.clone(),
            forwarder_wake: wake.clone(),
            late: Default::default(),
            reading: reading.clone(),
            phase: poll_phase(stream.jumpcloud.poll_interval, index, count),
        };
        let route = StreamRoute {
            name: stream.name.clone(),
            tag,
        };
        tasks.spawn(poller.run(shutdown.clone()));
        if let Some(outbox) = &config.outbox {
            // Nothing is sent from here: the events go into sealed bundles.
            let writer = BundleWriter {
                stream: route,
                config: outbox.clone(),
                queue: queue.clone(),
                metrics: metrics.clone(),
                wake,
            };
            tasks.spawn(writer.run(shutdown.clone()));
        } else {
            let forwarder = Forwarder {
                stream: route,
                config: stream.sekoia.clone(),
                http: HttpClient::for_transport(CONNECT_TIMEOUT, &stream.sekoia.transport)
                    .map_err(anyhow::Error::msg)?,
                queue: queue.clone(),
                metrics: metrics.clone(),
                wake,
            };
            tasks.spawn(forwarder.run(shutdown.clone()));
        }
    }
    if let Some(listen) = config.api.listen {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|err| {
            anyhow::anyhow!(
                "cannot listen on {listen} for metrics and status: {err} (another agent running? \
                 set [api] listen to a free port, or enabled = false)"
            )
        })?;
        // Port 0 picks a free port (the demo uses it): log the real one.
        let listen = listener.local_addr().unwrap_or(listen);
        tracing::info!(%listen, "metrics on http://{listen}/metrics, health on /health, status on /status");
        let state = Arc::new(AdminState {
            config: config.clone(),
            queue: queue.clone(),
            metrics: metrics.clone(),
            apis: stream_apis,
            shutdown: shutdown.clone(),
            backfill: Mutex::new(None),
        });
        tasks.spawn(crate::admin::serve(listener, state));
    }

    // The parts run until shutdown; one that ends before it has failed (a bug): stop the rest, flush,
    // and exit with an error so that the service manager restarts the agent.
    tasks.spawn(keep_checkpoint(queue.clone(), shutdown.clone()));
    let mut failure = None;
    let mut damaged = None;
    tokio::select! {
        _ = shutdown.wait() => {}
        reason = queue.damaged() => {
            tracing::error!("the queue is damaged ({reason}): stopping the pipeline to rebuild it");
            damaged = Some(reason);
            tasks.abort_all();
        }
        Some(ended) = tasks.join_next() => {
            // A task that saw the shutdown first may end before this select notices it: not a failure.
            if !shutdown.is_triggered() {
                failure = Some(match ended {
                Ok(()) => "a pipeline task ended on its own".to_string(),
                    Err(err) => format!("a pipeline task failed: {err}"),
                });
                tasks.abort_all();
            }
        }
    }
    let stopping = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_DEADLINE, stopping).await.is_err() {
        tracing::warn!(
            "a task did not stop within {STOP_DEADLINE:?}; abandoning it (its events stay queued)"
        );
        tasks.abort_all();
    }
    // A queue whose storage failed (a full disk) may never finish a flush: do not hang on it. What was not
    // flushed is polled or sent again after the restart.
    match tokio::time::timeout(STOP_DEADLINE, queue.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!("the final flush of the queue failed: {err}"),
        Err(_) => {
            tracing::error!("the final flush of the queue did not finish within {STOP_DEADLINE:?}")
        }
    }
    let depth = queue.depth();
    tracing::info!(
        queued_events = depth.events,
        queued_bytes = depth.bytes,
        "agent stopped; queue flushed"
    );
    // What was acknowledged until now moves the checkpoint: a rebuild then collects less again.
    if let Err(err) = queue.run_blocking(|queue| queue.write_checkpoint()).await {
        tracing::error!("the last update of the delivery checkpoint failed: {err}");
    }
    if let Some(reason) = damaged {
        return Err(QueueDamaged(reason).into());
    }
    match failure {
        Some(failure) => Err(anyhow::anyhow!(failure)),
        None => Ok(()),
    }
}

/// Brings the delivery checkpoint file up to date every [`CHECKPOINT_EVERY`] until shutdown. A failure is
/// logged and tried again: the file only lags behind (older), which is safe.
async fn keep_checkpoint(queue: Queue, shutdown: Shutdown) {
    let mut repeats = RepeatFilter::default();
    while shutdown.sleep(CHECKPOINT_EVERY).await {
        match queue.run_blocking(|queue| queue.write_checkpoint()).await {
            Ok(_) => repeats.reset(),
            Err(err) => {
                if let Some(held_back) = repeats.check(&err.to_string()) {
                    tracing::warn!(
                        repeats = held_back,
                        "cannot update the delivery checkpoint: {err}"
                    );
                }
            }
        }
    }
}

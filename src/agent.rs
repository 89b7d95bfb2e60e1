//! The agent: wires the pipeline (source → queue → sink) for one configuration and runs it until shutdown.
//!
//! Invariants: on shutdown the pollers stop first (an in-flight API request is abandoned: nothing was
//! committed for it), the forwarder finishes or abandons its request within its grace period, and the queue
//! is flushed before [`run`] returns. Every part is given [`STOP_DEADLINE`] at most.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Config;
use crate::http::HttpClient;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sink::Forwarder;
use crate::source::api::ApiClient;
use crate::source::Poller;

/// The longest a clean stop may take (the packaged unit's `TimeoutStopSec` is longer).
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The name of the stream of the `[jumpcloud]` section (cursor and dedup scope).
pub const DEFAULT_STREAM: &str = "default";

/// Opens the queue in the configured folder (creating it), on a blocking thread.
pub async fn open_queue(config: &Config) -> anyhow::Result<Queue> {
    let dir = config.data_dir.clone();
    let queue = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|err| {
            anyhow::anyhow!("cannot create data_dir {}: {err} (create it, or give the agent's user write access)", dir.display())
        })?;
        Queue::open(&dir).map_err(anyhow::Error::from)
    })
    .await??;
    Ok(queue)
}

/// Runs the pipeline until `shutdown` is triggered.
pub async fn run(
    config: &Config,
    queue: Queue,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let http = HttpClient::new(CONNECT_TIMEOUT).map_err(anyhow::Error::msg)?;
    let api = ApiClient::new(http.clone(), &config.jumpcloud).map_err(anyhow::Error::msg)?;
    let wake = Arc::new(Notify::new());
    let depth = queue.depth();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        queued_events = depth.events,
        queued_bytes = depth.bytes,
        dead_letters = queue.dead_letter_count(),
        api = %config.jumpcloud.base_url,
        intake = %config.sekoia.intake_url,
        "agent started"
    );
    let poller = Poller {
        stream: DEFAULT_STREAM.to_string(),
        config: config.jumpcloud.clone(),
        api,
        queue: queue.clone(),
        max_queue_bytes: config.queue.max_bytes,
        metrics: metrics.clone(),
        forwarder_wake: wake.clone(),
    };
    let forwarder = Forwarder {
        config: config.sekoia.clone(),
        http,
        queue: queue.clone(),
        metrics,
        wake,
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(poller.run(shutdown.clone()));
    tasks.spawn(forwarder.run(shutdown.clone()));

    // The parts run until shutdown; one that ends before it has failed (a bug): stop the rest, flush,
    // and exit with an error so that the service manager restarts the agent.
    let mut failure = None;
    tokio::select! {
        _ = shutdown.wait() => {}
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
    queue.flush().await?;
    let depth = queue.depth();
    tracing::info!(
        queued_events = depth.events,
        queued_bytes = depth.bytes,
        "agent stopped; queue flushed"
    );
    match failure {
        Some(failure) => Err(anyhow::anyhow!(failure)),
        None => Ok(()),
    }
}

//! The agent: wires the pipeline (source → queue → sink) for one configuration and runs it until shutdown.
//!
//! Invariants: on shutdown the pollers stop first (an in-flight API request is abandoned: nothing was
//! committed for it), the forwarder finishes or abandons its request within its grace period, and the queue
//! is flushed before [`run`] returns. Every part is given [`STOP_DEADLINE`] at most.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::admin::AdminState;
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
    let admin_api = api.clone();
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
        dedup_window: config.queue.dedup_window,
        metrics: metrics.clone(),
        forwarder_wake: wake.clone(),
    };
    let forwarder = Forwarder {
        config: config.sekoia.clone(),
        http,
        queue: queue.clone(),
        metrics: metrics.clone(),
        wake,
    };
    let mut tasks = tokio::task::JoinSet::new();
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
            api: admin_api,
            shutdown: shutdown.clone(),
            backfill: Mutex::new(None),
        });
        tasks.spawn(crate::admin::serve(listener, state));
    }
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

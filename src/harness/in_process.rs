//! [`InProcessAgent`]: the agent run as a task of the caller's tokio runtime ([`crate::agent::run`]), with its
//! metrics at hand, as `demo` and the in-process tests run it.
//!
//! Invariant: [`InProcessAgent::stop`] returns only once the agent has stopped (queue flushed) or its
//! deadline has passed, and says which.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::shutdown::{self, ShutdownTrigger};

/// How long [`InProcessAgent::stop`] waits: the agent's own stop deadline, and some.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// The agent running in this process.
pub struct InProcessAgent {
    pub metrics: Arc<Metrics>,
    trigger: ShutdownTrigger,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl InProcessAgent {
    /// Starts the agent on `queue` (a clone: the caller keeps its handle to look at the queue). Must be
    /// called within a tokio runtime.
    pub fn start(config: &Config, queue: &Queue) -> InProcessAgent {
        let metrics = Arc::new(Metrics::default());
        let (trigger, shutdown) = shutdown::channel();
        let (config, queue, m) = (config.clone(), queue.clone(), metrics.clone());
        let handle =
            tokio::spawn(async move { crate::agent::run(&config, queue, m, shutdown).await });
        InProcessAgent {
            metrics,
            trigger,
            handle,
        }
    }

    /// Asks the agent to stop and waits for it; an error if it ran into one or did not stop in time.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        tokio::time::timeout(STOP_WAIT, self.handle)
            .await
            .map_err(|_| anyhow::anyhow!("the agent did not stop within {STOP_WAIT:?}"))?
            .context("the agent's task failed")?
    }
}

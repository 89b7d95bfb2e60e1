//! The shutdown signal every long-running task listens to.
//!
//! Invariant: once triggered it stays triggered; a dropped trigger counts as triggered, so no task can
//! wait forever on a signal nobody can send.

use std::time::Duration;

use tokio::sync::watch;

/// Held by whoever decides to stop (the signal handler, the demo, a test).
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Handed to each task; cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new, untriggered signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the shutdown is triggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger was dropped: treat it as a shutdown.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `duration`; returns false if the shutdown came first.
    pub async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = self.wait() => false,
        }
    }
}

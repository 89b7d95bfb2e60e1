//! The one boundary between async code and the queue's blocking storage: sled reads and writes files and
//! waits for locks, so tasks call the queue through [`Queue::run_blocking`] (and open it with
//! [`Queue::open_async`]), which run it on tokio's blocking threads.
//!
//! Invariants:
//! - A panic in the blocking call (sled panics on some damage it finds) is reported as
//!   [`QueueError::Panicked`], with the panic's message: never as a damaged record, never lost, never
//!   taking the calling task down with it.
//! - A call the runtime dropped before it ran (the runtime shutting down) is [`QueueError::Cancelled`]:
//!   nothing was done, and nothing is damaged.
//! - The first damage a call meets ([`QueueError::is_damage`]) is remembered and announced
//!   ([`Queue::damaged`]): the agent stops its pipeline and rebuilds the queue rather than retrying a
//!   database that cannot be trusted.

use std::any::Any;
use std::path::Path;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::{Queue, QueueError};

impl Queue {
    /// Runs `call` with this queue on a blocking thread and returns its result; a panic in it is
    /// [`QueueError::Panicked`].
    pub async fn run_blocking<T, F>(&self, call: F) -> Result<T, QueueError>
    where
        F: FnOnce(&Queue) -> Result<T, QueueError> + Send + 'static,
        T: Send + 'static,
    {
        let queue = self.clone();
        let result = blocking(move || call(&queue)).await;
        if let Err(err) = &result {
            if err.is_damage() {
                self.damage.report(err.to_string());
            }
        }
        result
    }

    /// Waits until a call through [`Queue::run_blocking`] met damage, and returns what it was.
    pub async fn damaged(&self) -> String {
        loop {
            let notified = self.damage.notify.notified();
            if let Some(reason) = self.damage.reason() {
                return reason;
            }
            notified.await;
        }
    }

    /// [`Queue::open`] on a blocking thread; a panic while opening is [`QueueError::Panicked`].
    pub async fn open_async(dir: &Path) -> Result<Queue, QueueError> {
        let dir = dir.to_path_buf();
        blocking(move || Queue::open(&dir)).await
    }
}

/// The first damage met, and who waits for it.
#[derive(Default)]
pub(super) struct Damage {
    reason: Mutex<Option<String>>,
    notify: Notify,
}

impl Damage {
    fn report(&self, reason: String) {
        let mut slot = self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
            self.notify.notify_waiters();
        }
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

async fn blocking<T, F>(call: F) -> Result<T, QueueError>
where
    F: FnOnce() -> Result<T, QueueError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(QueueError::Panicked(panic_message(err.into_panic()))),
        Err(_) => Err(QueueError::Cancelled),
    }
}

/// The message a panic was raised with (`panic!` gives a `&str` or a `String`).
pub(super) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&str>() {
            Ok(message) => message.to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_pass_through_and_a_panic_is_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open_async(dir.path()).await.unwrap();
        let depth = queue.run_blocking(|q| Ok(q.depth())).await.unwrap();
        assert_eq!(depth.events, 0);
        let err = queue
            .run_blocking(|_| Err::<(), _>(QueueError::Damaged("record #3".into())))
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::Damaged(_)), "{err}");

        let seq = 7;
        let err = queue
            .run_blocking(move |_| -> Result<(), QueueError> { panic!("node {seq} is torn") })
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::Panicked(_)), "{err}");
        assert!(err.to_string().contains("node 7 is torn"), "{err}");
        assert!(err.is_damage());
        let err = queue
            .run_blocking(|_| -> Result<(), QueueError> { std::panic::panic_any(3u8) })
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("a panic without a message"),
            "{err}"
        );
        // The queue still works after a panic in a call.
        assert_eq!(queue.run_blocking(|q| Ok(q.depth())).await.unwrap(), depth);
    }
}

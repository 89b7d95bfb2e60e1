//! Making the queue's writes durable: [`Queue::flush`], sled's flush, taken in turns.
//!
//! Why in turns: sled 0.34's `flush_async` runs on sled's own thread pool, and a flush holds sled's
//! concurrency-control read lock while it waits for the log to be written, which another task of that same
//! pool does. Once a transaction waits for the write lock, new readers wait too (writers go first). With
//! many flushes at once (an agent with 500 streams, each committing its page and flushing), every thread
//! of the pool ended up holding a flush or waiting for the lock, the task that writes the log found no
//! thread, and the agent hung for good: no more polls, no answer on its local endpoint, no exit on SIGTERM
//! (the final flush timed out, then the runtime waited for its blocked threads). This is sled issue #1308,
//! fixed in sled's main branch but never released. One flush at a time leaves the pool its other threads.
//! Flushes asked for while one runs are merged into the next: 500 streams committing at once cost a few
//! flushes, not 500.
//!
//! Invariants:
//! - When [`Queue::flush`] returns `Ok`, every write made before it was called is durable: it returns
//!   early only when a flush that started after the call succeeded.
//! - At most one sled flush of the queue runs at a time, even when a caller stops waiting (a timeout at
//!   shutdown): the flush runs in a task of its own, which holds the turn until sled is done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Queue, QueueError};

/// Whose turn it is to flush, and what the last flush covered.
#[derive(Default)]
pub(super) struct FlushTurns {
    /// Calls of [`Queue::flush`] so far: each call's number is its ticket.
    asked: AtomicU64,
    /// The turn to flush; inside, the highest ticket the last successful flush covers.
    covered: Arc<tokio::sync::Mutex<u64>>,
}

impl Queue {
    /// Makes every write so far survive the death of the process (sled's flush; see the README on power
    /// loss). Callers that ask while a flush runs share the next one.
    pub async fn flush(&self) -> Result<(), QueueError> {
        let turns = &self.flush_turns;
        // The writes of this caller are done before its ticket is taken (SeqCst orders them).
        let ticket = turns.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = turns.covered.clone().lock_owned().await;
        if *covered >= ticket {
            return Ok(());
        }
        // Every ticket taken so far belongs to writes already done: the flush starting now covers them.
        let asked = turns.asked.load(Ordering::SeqCst);
        let db = self.db.clone();
        let flush = tokio::spawn(async move {
            db.flush_async().await?;
            *covered = asked;
            Ok::<(), sled::Error>(())
        });
        match flush.await {
            Ok(result) => Ok(result?),
            Err(err) if err.is_panic() => Err(QueueError::Panicked(
                super::blocking::panic_message(err.into_panic()),
            )),
            Err(_) => Err(QueueError::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::{event_key, Cursor, IncomingEvent};

    /// What the agent does with 500 streams polling at once: each commits a page in a transaction, on
    /// the agent's few blocking threads, then flushes. Before flushes took turns this hung within the
    /// first rounds (every time here); the timeout only turns a hang into a failure.
    #[test]
    fn many_streams_committing_and_flushing_at_once_do_not_hang() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let (streams, rounds) = (500, 4);
        let finished = runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for stream in 0..streams {
                let queue = queue.clone();
                tasks.spawn(async move {
                    for round in 1..=rounds {
                        let raw = format!("{{\"id\":\"{stream}-{round}\"}}");
                        let page = vec![IncomingEvent {
                            key: event_key(None, &raw),
                            raw: raw.into(),
                            timestamp_ns: round,
                        }];
                        let name = format!("s{stream}");
                        let cursor = Cursor {
                            watermark_ns: round,
                            updated_at_ms: 1,
                        };
                        queue
                            .run_blocking(move |q| q.commit_page(&name, &page, Some(cursor)))
                            .await
                            .expect("committed");
                        queue.flush().await.expect("flushed");
                    }
                });
            }
            let all = async {
                while let Some(ended) = tasks.join_next().await {
                    ended.expect("a stream's task ended");
                }
            };
            tokio::time::timeout(Duration::from_secs(300), all)
                .await
                .is_ok()
        });
        if !finished {
            // Its threads are stuck in sled: do not wait for them.
            runtime.shutdown_background();
            panic!("the commits and flushes of {streams} streams hung");
        }
        assert_eq!(queue.depth().events, streams as u64 * rounds as u64);
        for stream in [0, streams - 1] {
            let cursor = queue.cursor(&format!("s{stream}")).unwrap();
            assert_eq!(cursor.map(|c| c.watermark_ns), Some(rounds));
        }
    }
}

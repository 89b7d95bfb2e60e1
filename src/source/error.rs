//! How a request to JumpCloud (or to its token endpoint) failed, as the poller needs to know it: worth
//! retrying soon, a sign to slow down, or a configuration problem someone must fix.
//!
//! Invariant: a message never holds a key, a token or a secret (callers build them from status lines and
//! setting names only).

use std::time::Duration;

use crate::queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Worth retrying soon with backoff (429, 5xx, timeouts, torn or inconsistent pages).
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// JumpCloud asks for fewer requests (429, 503, a 403 that says the caller is blocked): the stream's
    /// pace slows down, and the same request is asked again once it allows (never before `retry_after`).
    #[error("{reason}")]
    Throttled {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// A configuration problem (bad key, bad service name, wrong org): retried slowly until fixed.
    #[error("{0}")]
    Rejected(String),
    /// The queue could not take a part of a page while it was being read: a storage failure, handled
    /// as the poller handles any (the page's cursor did not move).
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl FetchError {
    /// The server's `Retry-After`, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Transient { retry_after, .. }
            | FetchError::Throttled { retry_after, .. } => *retry_after,
            FetchError::Rejected(_) | FetchError::Queue(_) => None,
        }
    }
}

//! How a request to JumpCloud (or to its token endpoint) failed, as the poller needs to know it: worth
//! retrying soon, or a configuration problem someone must fix.
//!
//! Invariant: a message never holds a key, a token or a secret (callers build them from status lines and
//! setting names only).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Worth retrying soon with backoff (429, 5xx, timeouts, torn or inconsistent pages).
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// A configuration problem (bad key, bad service name, wrong org): retried slowly until fixed.
    #[error("{0}")]
    Rejected(String),
}

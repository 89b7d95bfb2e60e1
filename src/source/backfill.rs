//! Backfill: re-collects a past window of one stream into the queue, deduplicated against what was
//! already queued or sent, without moving the stream's cursor.
//!
//! Invariants: the window must lie within JumpCloud's retention (refused otherwise, with the reason);
//! each page is committed before the next is asked for, so an interrupted backfill can simply be run again;
//! passing failures are retried with backoff, configuration errors end the backfill with the reason.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::{ApiClient, EventsQuery, FetchError};
use super::paging::Paging;
use crate::clock::{format_rfc3339_ns, now_ns};
use crate::config::JumpcloudConfig;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::retry::Backoffs;
use crate::shutdown::Shutdown;

/// How far a backfill got.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// Events JumpCloud holds in the window (from `/events/count`), if it said.
    pub total: Option<u64>,
    pub polled: u64,
    pub queued: u64,
    pub duplicates: u64,
    pub done: bool,
    pub error: Option<String>,
}

/// Checks a window against the clock and JumpCloud's retention; returns it in nanoseconds.
pub fn check_window(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    retention: Duration,
) -> Result<(i64, i64), String> {
    let now = chrono::Utc::now();
    let oldest = now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(90));
    if from >= to {
        return Err(format!("--from {from} must be before --to {to}"));
    }
    if from < oldest {
        return Err(format!(
            "--from {} is older than JumpCloud's retention ({} days: nothing before {} exists any more); \
             start at {} or later (jumpcloud.retention sets the retention of your plan)",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            retention.as_secs() / 86_400,
            oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
    }
    if from > now {
        return Err(format!("--from {from} is in the future"));
    }
    let to = to.min(now);
    let ns = |t: chrono::DateTime<chrono::Utc>| t.timestamp_nanos_opt().ok_or("date out of range");
    Ok((ns(from)?, ns(to)?))
}

/// Re-collects `[from_ns, to_ns)` of `stream` into the queue, reporting progress to `report`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    api: &ApiClient,
    queue: &Queue,
    config: &JumpcloudConfig,
    stream: &str,
    from_ns: i64,
    to_ns: i64,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
    report: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<Progress, String> {
    let start_time = format_rfc3339_ns(from_ns);
    let end_time = Some(format_rfc3339_ns(to_ns));
    let mut progress = Progress::default();
    let mut backoffs = Backoffs::new(config.retry);
    let count_query = EventsQuery {
        service: &config.services,
        start_time: start_time.clone(),
        end_time: end_time.clone(),
        limit: config.page_size,
        sort: "ASC",
        search_after: None,
    };
    progress.total = api.count(&count_query).await.ok();
    report(&progress);
    let mut paging = Paging::default();
    loop {
        if shutdown.is_triggered() {
            return Err("interrupted; run the same backfill again to finish it".to_string());
        }
        let query = EventsQuery {
            search_after: paging.search_after(),
            ..count_query.clone()
        };
        let page = match api.fetch(&query, now_ns()).await {
            Ok(page) => page,
            Err(FetchError::Rejected(reason)) => return Err(reason),
            Err(
                err @ (FetchError::Transient { .. }
                | FetchError::Throttled { .. }
                | FetchError::Queue(_)),
            ) => {
                let wait = backoffs.transient_wait(err.retry_after());
                tracing::warn!(retry_in = ?wait, "backfill: {err}");
                if !shutdown.sleep(wait).await {
                    return Err("interrupted; run the same backfill again to finish it".to_string());
                }
                continue;
            }
        };
        backoffs.reset();
        let polled = page.events.len() as u64;
        let (stream2, events) = (stream.to_string(), page.events);
        let outcome = queue
            .run_blocking(move |queue| queue.commit_page(&stream2, &events, None))
            .await
            .map_err(|err| err.to_string())?;
        queue.flush().await.map_err(|err| err.to_string())?;
        metrics.page_committed(stream, polled, outcome.queued, outcome.duplicates);
        progress.polled += polled;
        progress.queued += outcome.queued;
        progress.duplicates += outcome.duplicates;
        report(&progress);
        match paging.advance(page.full, page.search_after) {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => {
                return Err(
                    "JumpCloud sent the same X-Search_after twice; stopping the backfill"
                        .to_string(),
                )
            }
        }
        // The stream's request ceiling (a backfill runs beside the poller, which has its own pace).
        let turn = Duration::from_secs_f64(1.0 / config.request_ceiling());
        if !shutdown.sleep(turn).await {
            return Err("interrupted; run the same backfill again to finish it".to_string());
        }
    }
    progress.done = true;
    report(&progress);
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_outside_retention_are_refused() {
        let now = chrono::Utc::now();
        let ninety = Duration::from_secs(90 * 86_400);
        let err = check_window(now - chrono::Duration::days(100), now, ninety).unwrap_err();
        assert!(
            err.contains("older than JumpCloud's retention (90 days"),
            "{err}"
        );
        assert!(check_window(now, now - chrono::Duration::hours(1), ninety).is_err());
        let (from, to) = check_window(
            now - chrono::Duration::days(2),
            now + chrono::Duration::days(1),
            ninety,
        )
        .unwrap();
        assert!(to <= now_ns() && from < to, "the end is capped at now");
    }
}

//! Opening the queue whatever state its database is in: a damaged database (it cannot be opened, reports
//! corruption, or panics inside sled) is set aside and a fresh queue rebuilt from the delivery checkpoint;
//! a database that lost what the checkpoint records (deleted, or rolled back to nothing) gets the
//! checkpoint's cursors back. Either way the streams collect again from JumpCloud what was not delivered.
//!
//! Invariants:
//! - Only damage leads to a rebuild ([`QueueError::is_damage`]): a queue locked by another process, on a
//!   full disk or refused by permissions is reported as it is, and its files are not touched.
//! - Nothing is deleted: the damaged files are moved aside ([`aside`]), and the oldest copies give way
//!   only to the limit of copies and to the disk reserve, each with a log line.
//! - A recovery is recorded in the checkpoint file (its count survives restarts) and logged in one error
//!   line that says what happened, where the damaged copy is, and from when each stream collects again;
//!   when that is older than JumpCloud's retention, the line says which window cannot be collected.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use super::aside;
use super::checkpoint::{CheckpointFile, Recovery};
use super::{Queue, QueueError};
use crate::clock::{format_rfc3339_ns, now_ms, now_ns};
use crate::event::{stream_tag, Cursor};

/// What a recovery needs to know of the configuration.
#[derive(Clone, Debug, Default)]
pub struct RecoveryPolicy {
    /// Each configured stream with JumpCloud's retention for it: a stream cannot collect again further
    /// back than that.
    pub retention: Vec<(String, Duration)>,
    /// `queue.min_free_disk`: damaged copies give way below it.
    pub min_free_disk: u64,
}

/// A queue, opened, and the recovery it took if it took one.
pub struct Opened {
    pub queue: Queue,
    pub recovery: Option<Recovery>,
}

impl Queue {
    /// Opens the queue in `dir`; if its database is damaged, sets it aside and rebuilds the queue from the
    /// delivery checkpoint; if it lost the streams the checkpoint records, puts their cursors back.
    pub fn open_or_recover(dir: &Path, policy: &RecoveryPolicy) -> Result<Opened, QueueError> {
        let checkpoint = read_checkpoint(dir);
        let had_database = aside::has_database(dir);
        let opened = match std::panic::catch_unwind(AssertUnwindSafe(|| Queue::open(dir))) {
            Ok(opened) => opened,
            Err(panic) => Err(QueueError::Panicked(super::blocking::panic_message(panic))),
        };
        match opened {
            Ok(queue) => {
                let lost = lost_streams(&queue, checkpoint.as_ref())?;
                if lost.is_empty() {
                    return Ok(Opened {
                        queue,
                        recovery: None,
                    });
                }
                let reason = if had_database {
                    "the queue's database holds none of what the delivery checkpoint records (it was \
                     emptied or rolled back)"
                } else {
                    "the queue's database is missing (data_dir/db was deleted)"
                };
                let checkpoint = checkpoint.unwrap_or_default();
                let recovery = restore(&queue, &checkpoint, &lost, reason, "", policy)?;
                Ok(Opened {
                    queue,
                    recovery: Some(recovery),
                })
            }
            Err(err) if err.is_damage() => {
                Queue::rebuild(dir, &err.to_string(), checkpoint.as_ref(), policy)
            }
            Err(err) => Err(err),
        }
    }

    /// Sets the damaged database in `dir` aside (it must no longer be in use by this process: every clone
    /// of its queue dropped) and rebuilds the queue from the delivery checkpoint, after `reason` was found
    /// while the agent ran.
    pub fn recover_damaged(
        dir: &Path,
        reason: &str,
        policy: &RecoveryPolicy,
    ) -> Result<Opened, QueueError> {
        let checkpoint = read_checkpoint(dir);
        Queue::rebuild(dir, reason, checkpoint.as_ref(), policy)
    }

    fn rebuild(
        dir: &Path,
        reason: &str,
        checkpoint: Option<&CheckpointFile>,
        policy: &RecoveryPolicy,
    ) -> Result<Opened, QueueError> {
        let io = |what: &str, err: std::io::Error| QueueError::Checkpoint {
            dir: dir.display().to_string(),
            source: std::io::Error::new(err.kind(), format!("{what}: {err}")),
        };
        let moved =
            aside::move_aside(dir).map_err(|err| io("cannot move the damaged queue aside", err))?;
        let free = || fs4::available_space(dir).ok();
        aside::prune_copies(dir, policy.min_free_disk, free);
        let queue = Queue::open(dir)?;
        let checkpoint = checkpoint.cloned().unwrap_or_default();
        let streams: Vec<String> = checkpoint.streams.keys().cloned().collect();
        let moved_to = moved.map(|p| p.display().to_string()).unwrap_or_default();
        let recovery = restore(&queue, &checkpoint, &streams, reason, &moved_to, policy)?;
        Ok(Opened {
            queue,
            recovery: Some(recovery),
        })
    }
}

/// The checkpoint file of `dir`; one that cannot be read counts as none, with a warning.
fn read_checkpoint(dir: &Path) -> Option<CheckpointFile> {
    CheckpointFile::read(dir).unwrap_or_else(|err| {
        tracing::warn!("{err}: recovering without it");
        None
    })
}

/// The streams the checkpoint records that the queue knows nothing of: no cursor and nothing queued.
fn lost_streams(
    queue: &Queue,
    checkpoint: Option<&CheckpointFile>,
) -> Result<Vec<String>, QueueError> {
    let Some(checkpoint) = checkpoint else {
        return Ok(Vec::new());
    };
    let mut lost = Vec::new();
    for name in checkpoint.streams.keys() {
        if queue.cursor(name)?.is_none() && queue.ledger.stream_bytes(stream_tag(name)) == 0 {
            lost.push(name.clone());
        }
    }
    Ok(lost)
}

/// Puts back the cursors of `streams` from the checkpoint, records the recovery, and says so.
fn restore(
    queue: &Queue,
    checkpoint: &CheckpointFile,
    streams: &[String],
    reason: &str,
    moved_to: &str,
    policy: &RecoveryPolicy,
) -> Result<Recovery, QueueError> {
    let now = now_ns();
    let mut collect_again_from = BTreeMap::new();
    let mut beyond_retention = Vec::new();
    for name in streams {
        let Some(stream) = checkpoint.streams.get(name) else {
            continue;
        };
        let mut restore_ns = stream.restore_cursor_ns;
        if let Some((_, retention)) = policy.retention.iter().find(|(n, _)| n == name) {
            let oldest_kept = now.saturating_sub(retention.as_nanos().min(i64::MAX as u128) as i64);
            if restore_ns < oldest_kept {
                beyond_retention.push(format!(
                    "stream {name}: events from {} to {} are beyond JumpCloud's retention and cannot be \
                     collected again",
                    format_rfc3339_ns(restore_ns),
                    format_rfc3339_ns(oldest_kept)
                ));
                restore_ns = oldest_kept;
            }
        }
        let cursor = Cursor {
            watermark_ns: restore_ns,
            updated_at_ms: now_ms(),
        };
        queue.commit_page(name, &[], Some(cursor))?;
        queue.checkpoints().restored(name, restore_ns);
        collect_again_from.insert(name.clone(), format_rfc3339_ns(restore_ns));
    }
    let recovery = Recovery {
        at: format_rfc3339_ns(now),
        reason: reason.to_string(),
        moved_to: moved_to.to_string(),
        collect_again_from,
    };
    queue
        .checkpoints()
        .record_recovery(recovery.clone())
        .map_err(|source| queue.checkpoint_error(source))?;
    let windows: Vec<String> = recovery
        .collect_again_from
        .iter()
        .map(|(name, from)| format!("{name} from {from}"))
        .collect();
    let kept = if moved_to.is_empty() {
        String::new()
    } else {
        format!("; the damaged files are kept in {moved_to}")
    };
    let windows = if windows.is_empty() {
        "no delivery checkpoint was found, so each stream starts again from jumpcloud.initial_lookback"
            .to_string()
    } else {
        format!(
            "collecting again (less each stream's overlap): {}",
            windows.join(", ")
        )
    };
    tracing::error!(
        recoveries_total = queue.checkpoints().file().recoveries_total,
        "the queue in {} was damaged ({reason}) and was rebuilt: {windows}; events already delivered \
         will arrive again as duplicates, none is lost{kept}",
        queue.dir().display()
    );
    for line in beyond_retention {
        tracing::error!("{line}: the checkpoint is older than the retention (the agent was stopped, or its queue full, for that long)");
    }
    Ok(recovery)
}

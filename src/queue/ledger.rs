//! The queue's ledger: the persisted counters of the `meta` tree (the next sequence number, events and
//! bytes in and out, dead letters, the last ack, each stream's bytes in and out) and their copies in memory.
//!
//! Invariants:
//! - Queue depth comes from these counters (`in` written by the commits and dead-letter retries, `out` by
//!   acks and dead-lettering, each in the same transaction as the change it counts), never from
//!   `Tree::len()`, which scans. A stream's bytes in the queue are likewise its `stats/stream_in/<tag>`
//!   minus its `stats/stream_out/<tag>`; an ack or dead-letter counts only the bytes of the events it newly
//!   marks in a chunk.
//! - Every persisted counter only grows. The copies in memory are raised to the totals a transaction wrote
//!   (`fetch_max`), so concurrent transactions may report theirs in any order and the copies never run
//!   ahead of the disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Tree;

use super::QueueError;

pub(super) const KEY_SEQ: &[u8] = b"seq";
pub(super) const KEY_IN: &[u8] = b"stats/in";
pub(super) const KEY_OUT: &[u8] = b"stats/out";
/// (events ever dead-lettered, events since retried or purged): the store holds the difference.
pub(super) const KEY_DEAD: &[u8] = b"stats/dead";
pub(super) const KEY_LAST_ACK: &[u8] = b"stats/last_ack_ms";
/// Per stream (followed by the 4-byte tag): raw bytes ever queued, and ever removed (sent, dead-lettered).
const STREAM_IN: &[u8] = b"stats/stream_in/";
const STREAM_OUT: &[u8] = b"stats/stream_out/";

/// Depth of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    pub events: u64,
    pub bytes: u64,
}

/// Which of a stream's two byte counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flow {
    /// Bytes queued (committed or retried from the dead letters).
    In,
    /// Bytes gone (acknowledged or dead-lettered).
    Out,
}

impl Flow {
    fn prefix(self) -> &'static [u8] {
        match self {
            Flow::In => STREAM_IN,
            Flow::Out => STREAM_OUT,
        }
    }
}

/// A stream's byte counter as a transaction left it.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamTotal {
    flow: Flow,
    tag: u32,
    total: u64,
}

/// The counters in memory: read at open, raised after each transaction that changed them.
#[derive(Default)]
pub(super) struct Ledger {
    in_events: AtomicU64,
    in_bytes: AtomicU64,
    out_events: AtomicU64,
    out_bytes: AtomicU64,
    dead_in: AtomicU64,
    dead_out: AtomicU64,
    /// Stream tag → (bytes in, bytes out).
    streams: Mutex<HashMap<u32, (u64, u64)>>,
}

impl Ledger {
    /// Reads the persisted counters (a handful of keys, one per stream: no scan of the events).
    pub(super) fn load(meta: &Tree) -> Result<Ledger, QueueError> {
        let ledger = Ledger::default();
        let (in_events, in_bytes) = read_pair(meta.get(KEY_IN)?);
        let (out_events, out_bytes) = read_pair(meta.get(KEY_OUT)?);
        let (dead_in, dead_out) = read_pair(meta.get(KEY_DEAD)?);
        ledger.raise_in(in_events, in_bytes);
        ledger.raise_out(out_events, out_bytes);
        ledger.raise_dead(dead_in, dead_out);
        let mut totals = Vec::new();
        for flow in [Flow::In, Flow::Out] {
            for (tag, total) in stream_counters(meta, flow)? {
                totals.push(StreamTotal { flow, tag, total });
            }
        }
        ledger.raise_streams(&totals);
        Ok(ledger)
    }

    pub(super) fn raise_in(&self, events: u64, bytes: u64) {
        self.in_events.fetch_max(events, Ordering::Relaxed);
        self.in_bytes.fetch_max(bytes, Ordering::Relaxed);
    }

    pub(super) fn raise_out(&self, events: u64, bytes: u64) {
        self.out_events.fetch_max(events, Ordering::Relaxed);
        self.out_bytes.fetch_max(bytes, Ordering::Relaxed);
    }

    pub(super) fn raise_dead(&self, dead_in: u64, dead_out: u64) {
        self.dead_in.fetch_max(dead_in, Ordering::Relaxed);
        self.dead_out.fetch_max(dead_out, Ordering::Relaxed);
    }

    pub(super) fn raise_streams(&self, totals: &[StreamTotal]) {
        if totals.is_empty() {
            return;
        }
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for total in totals {
            let (in_bytes, out_bytes) = streams.entry(total.tag).or_default();
            let counter = match total.flow {
                Flow::In => in_bytes,
                Flow::Out => out_bytes,
            };
            *counter = (*counter).max(total.total);
        }
    }

    pub(super) fn depth(&self) -> Depth {
        Depth {
            events: self
                .in_events
                .load(Ordering::Relaxed)
                .saturating_sub(self.out_events.load(Ordering::Relaxed)),
            bytes: self
                .in_bytes
                .load(Ordering::Relaxed)
                .saturating_sub(self.out_bytes.load(Ordering::Relaxed)),
        }
    }

    pub(super) fn dead_letters(&self) -> u64 {
        self.dead_in
            .load(Ordering::Relaxed)
            .saturating_sub(self.dead_out.load(Ordering::Relaxed))
    }

    /// The raw bytes of stream `tag` in the queue.
    pub(super) fn stream_bytes(&self, tag: u32) -> u64 {
        let streams = self
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        streams.get(&tag).map_or(0, |(in_bytes, out_bytes)| {
            in_bytes.saturating_sub(*out_bytes)
        })
    }
}

/// The raw bytes queued per stream tag, from the persisted per-stream counters (streams with none left out).
pub(super) fn bytes_by_stream(meta: &Tree) -> Result<HashMap<u32, u64>, QueueError> {
    let mut usage = HashMap::new();
    for (flow, sign) in [(Flow::In, 1i128), (Flow::Out, -1i128)] {
        for (tag, total) in stream_counters(meta, flow)? {
            *usage.entry(tag).or_insert(0i128) += sign * i128::from(total);
        }
    }
    Ok(usage
        .into_iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(tag, bytes)| (tag, u64::try_from(bytes).unwrap_or(0)))
        .collect())
}

/// Every stream's counter of one flow: (tag, total). Keys that are not a prefix and a 4-byte tag are skipped.
fn stream_counters(meta: &Tree, flow: Flow) -> Result<Vec<(u32, u64)>, QueueError> {
    let prefix = flow.prefix();
    let mut counters = Vec::new();
    for entry in meta.scan_prefix(prefix) {
        let (key, value) = entry?;
        let Ok(tag) = <[u8; 4]>::try_from(&key[prefix.len()..]) else {
            continue;
        };
        counters.push((u32::from_be_bytes(tag), read_u64(Some(value))));
    }
    Ok(counters)
}

/// Adds `bytes` to one stream's monotonic in- or out-counter (`stats/stream_in/<tag>`,
/// `stats/stream_out/<tag>`), inside a transaction. Returns the new total, for [`Ledger::raise_streams`]
/// once the transaction is committed (None when nothing was added).
pub(super) fn add_stream_bytes(
    meta_tx: &TransactionalTree,
    flow: Flow,
    tag: u32,
    bytes: u64,
) -> Result<Option<StreamTotal>, ConflictableTransactionError<QueueError>> {
    if bytes == 0 {
        return Ok(None);
    }
    let mut key = flow.prefix().to_vec();
    key.extend_from_slice(&tag.to_be_bytes());
    let total = read_u64(meta_tx.get(&key)?) + bytes;
    meta_tx.insert(key, &total.to_be_bytes()[..])?;
    Ok(Some(StreamTotal { flow, tag, total }))
}

pub(super) fn read_u64(value: Option<sled::IVec>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map_or(0, u64::from_be_bytes)
}

pub(super) fn read_pair(value: Option<sled::IVec>) -> (u64, u64) {
    match value {
        Some(v) if v.len() == 16 => {
            let mut a = [0u8; 8];
            let mut b = [0u8; 8];
            a.copy_from_slice(&v[..8]);
            b.copy_from_slice(&v[8..]);
            (u64::from_be_bytes(a), u64::from_be_bytes(b))
        }
        _ => (0, 0),
    }
}

pub(super) fn pair_bytes(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_back_what_was_written_and_odd_values_read_as_zero() {
        let pair = pair_bytes(7, u64::MAX - 1);
        assert_eq!(read_pair(Some(pair[..].into())), (7, u64::MAX - 1));
        assert_eq!(read_pair(Some((&pair[..8]).into())), (0, 0));
        assert_eq!(read_pair(None), (0, 0));
        assert_eq!(read_u64(Some((&9u64.to_be_bytes()[..]).into())), 9);
        assert_eq!(read_u64(Some((&[1u8, 2][..]).into())), 0);
    }

    #[test]
    fn the_copies_in_memory_never_go_back() {
        let ledger = Ledger::default();
        ledger.raise_in(10, 1000);
        ledger.raise_in(8, 800); // an older transaction reporting late
        ledger.raise_out(3, 300);
        assert_eq!(
            ledger.depth(),
            Depth {
                events: 7,
                bytes: 700
            }
        );
        let total = |flow, total| StreamTotal {
            flow,
            tag: 1,
            total,
        };
        ledger.raise_streams(&[total(Flow::In, 500), total(Flow::Out, 100)]);
        ledger.raise_streams(&[total(Flow::In, 400), total(Flow::Out, 50)]);
        assert_eq!(ledger.stream_bytes(1), 400);
        assert_eq!(ledger.stream_bytes(2), 0);
        ledger.raise_streams(&[total(Flow::Out, 600)]);
        assert_eq!(ledger.stream_bytes(1), 0, "never below zero");
    }
}

//! Acknowledgements: how events leave the queue. The `acked` tree maps a chunk's key to the bitmap of its
//! events already acknowledged or dead-lettered.
//!
//! Invariants:
//! - An event leaves the queue only through [`Queue::ack`] (after the intake said 2xx) or
//!   [`Queue::dead_letter`] (moved, in one transaction), which set its bit in `acked`; a chunk is removed,
//!   with its bitmap, only when every bit is set. Nothing is ever dropped.
//! - Marking an event already marked (or of a chunk already removed) counts nothing: acks may be repeated,
//!   and the `out` counters count each event once.

use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};

use super::ledger::{
    add_stream_bytes, pair_bytes, read_pair, read_u64, Flow, KEY_LAST_ACK, KEY_OUT,
};
use super::record::{chunk_header, decode_chunk};
use super::{Queue, QueueError};
use crate::clock::now_ms;

impl Queue {
    /// Removes events the intake acknowledged. Sequences already gone are skipped (and not counted twice).
    pub fn ack(&self, seqs: &[u64]) -> Result<(), QueueError> {
        let now = now_ms();
        let groups = self.locate(seqs)?;
        let (totals, streams, removed) = (&self.events, &self.acked, &self.meta).transaction(
            |(events_tx, acked_tx, meta_tx)| {
                let (mut out_events, mut out_bytes) = read_pair(meta_tx.get(KEY_OUT)?);
                // A batch is of one stream (and so is a chunk), but nothing here depends on it.
                let mut by_stream: Vec<(u32, u64)> = Vec::new();
                let mut removed = Vec::new();
                for (first, indexes) in &groups {
                    let gone = mark_gone(events_tx, acked_tx, *first, indexes)?;
                    removed.push((gone.stream, *first, gone.bytes));
                    out_events += gone.events;
                    out_bytes += gone.bytes;
                    match by_stream.iter_mut().find(|(t, _)| *t == gone.stream) {
                        Some((_, bytes)) => *bytes += gone.bytes,
                        None => by_stream.push((gone.stream, gone.bytes)),
                    }
                }
                meta_tx.insert(KEY_OUT, &pair_bytes(out_events, out_bytes)[..])?;
                let mut streams = Vec::new();
                for (tag, bytes) in &by_stream {
                    streams.extend(add_stream_bytes(meta_tx, Flow::Out, *tag, *bytes)?);
                }
                meta_tx.insert(KEY_LAST_ACK, &now.to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<QueueError>>((
                    (out_events, out_bytes),
                    streams,
                    removed,
                ))
            },
        )?;
        self.ledger.raise_out(totals.0, totals.1);
        self.ledger.raise_streams(&streams);
        self.removed(&removed);
        Ok(())
    }

    /// Tells the checkpoint which chunks lost which bytes: (stream tag, chunk key, bytes).
    pub(super) fn removed(&self, removed: &[(u32, u64, u64)]) {
        let mut checkpoints = self.checkpoints();
        for &(tag, key, bytes) in removed.iter().filter(|(_, _, bytes)| *bytes > 0) {
            checkpoints.removed(tag, key, bytes, self.ledger.stream_bytes(tag));
        }
    }

    /// Groups sequence numbers by the chunk that holds them: (chunk key, indexes in the chunk). Sequences in
    /// no chunk (already gone) are left out. Done outside transactions, which cannot iterate; it stays right
    /// inside them because chunk keys never change (a chunk only goes away, which the transaction sees).
    pub(super) fn locate(&self, seqs: &[u64]) -> Result<Vec<(u64, Vec<usize>)>, QueueError> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut groups: Vec<(u64, u64, Vec<usize>)> = Vec::new();
        for seq in sorted {
            if let Some((first, end, indexes)) = groups.last_mut() {
                if seq < *end {
                    indexes.push((seq - *first) as usize);
                    continue;
                }
            }
            let Some(entry) = self.events.range(..=seq.to_be_bytes()).next_back() else {
                continue;
            };
            let (key, value) = entry?;
            let first = read_u64(Some(key));
            let end = first + chunk_header(first, &value)?.count;
            if seq < end {
                groups.push((first, end, vec![(seq - first) as usize]));
            }
        }
        Ok(groups
            .into_iter()
            .map(|(first, _, indexes)| (first, indexes))
            .collect())
    }
}

/// What [`mark_gone`] removed from one chunk.
#[derive(Default)]
pub(super) struct Gone {
    pub(super) stream: u32,
    pub(super) events: u64,
    pub(super) bytes: u64,
}

/// Marks events of the chunk at `first` as gone (inside a transaction) and removes the chunk with its
/// bitmap once every event is gone. Returns the events and raw bytes newly marked, with the chunk's stream
/// (events already marked, or a chunk already removed, count nothing).
pub(super) fn mark_gone(
    events_tx: &TransactionalTree,
    acked_tx: &TransactionalTree,
    first: u64,
    indexes: &[usize],
) -> Result<Gone, ConflictableTransactionError<QueueError>> {
    let key = first.to_be_bytes();
    let Some(value) = events_tx.get(&key[..])? else {
        return Ok(Gone::default());
    };
    let header = chunk_header(first, &value).map_err(ConflictableTransactionError::Abort)?;
    let len = usize::try_from(header.count).unwrap_or(usize::MAX);
    let stored_bits = acked_tx.get(&key[..])?;
    let none_gone_before = stored_bits.is_none();
    let mut bits = stored_bits.map(|bits| bits.to_vec()).unwrap_or_default();
    bits.resize(len.div_ceil(8), 0);
    let mut marked = Vec::with_capacity(indexes.len());
    for &index in indexes {
        if index < len && !bit(&bits, index) {
            bits[index / 8] |= 1 << (index % 8);
            marked.push(index);
        }
    }
    let gone: u32 = bits.iter().map(|byte| byte.count_ones()).sum();
    let all_gone = gone as usize >= len;
    // The whole chunk goes at once (the usual case: batches hold whole chunks): a compressed chunk's
    // header says how many raw bytes it holds, and its events need not be decompressed.
    let whole = none_gone_before && all_gone;
    let bytes = match whole.then_some(header.raw_bytes).flatten() {
        Some(bytes) => bytes,
        None if marked.is_empty() => 0,
        None => {
            let mut scratch = Vec::new();
            let chunk = decode_chunk(first, &value, &mut scratch)
                .map_err(ConflictableTransactionError::Abort)?;
            marked
                .iter()
                .filter_map(|&index| chunk.events.get(index))
                .map(|event| event.raw.len() as u64)
                .sum()
        }
    };
    if all_gone {
        events_tx.remove(&key[..])?;
        acked_tx.remove(&key[..])?;
    } else if !marked.is_empty() {
        acked_tx.insert(&key[..], bits)?;
    }
    Ok(Gone {
        stream: header.stream,
        events: marked.len() as u64,
        bytes,
    })
}

/// Whether bit `index` of a chunk's bitmap is set.
pub(super) fn bit(bits: &[u8], index: usize) -> bool {
    bits.get(index / 8)
        .is_some_and(|byte| byte & (1 << (index % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::bit;

    #[test]
    fn bits_are_read_little_end_first_and_missing_bytes_are_unset() {
        let bits = [0b0000_0101u8, 0b1000_0000];
        let set: Vec<usize> = (0..24).filter(|i| bit(&bits, *i)).collect();
        assert_eq!(set, vec![0, 2, 15]);
    }
}

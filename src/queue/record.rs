//! The record format of the `events` tree: what one stored value holds and how it is read and written.
//!
//! A record is stored under the sequence number of its first event (u64, big-endian). Format 2 (today's) is
//! a [`Chunk`]: up to [`CHUNK_MAX_EVENTS`] consecutive events of one stream, raw bytes as received; event
//! `i` of the chunk at key `k` has sequence number `k + i`. Format 1 was an [`Envelope`]: one event.
//!
//! Why chunks: sled 0.34 copies and merges a tree node on every insert and remove, so its cost is per
//! operation, not per byte; one record per event made those copies most of the agent's CPU (BENCHMARKS.md).
//!
//! Invariants:
//! - Every record starts with its version byte; a record of an unknown version is refused, never misread.
//!   Format 1 records are read (and acknowledged) as chunks of one, so old queues need no migration.
//! - A chunk holds one stream's events (its tag is in the header), so a reader of one stream skips the
//!   others' chunks whole from [`chunk_header`], without decoding their events.
//! - A chunk is written once, whole, and never rewritten: its key and event count never change (what is
//!   gone of it is kept in its bitmap, by `acks`), so a key found outside a transaction stays valid inside.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::QueueError;

/// The version of the on-disk record layout; records of an unknown version are refused, not misread.
pub(super) const FORMAT_VERSION: u8 = 2;
/// Records written before chunks: one [`Envelope`] per event. Read (and acknowledged) as chunks of one.
pub(super) const SINGLE_EVENT_VERSION: u8 = 1;

/// At most this many events in one chunk, and about this many raw bytes. sled keeps up to 16 entries in a
/// leaf node and holds a whole node in memory while it is cached, so the chunk size sets the size of the
/// nodes that memory is made of. sled's cache has 256 shards that each keep their latest node whatever the
/// capacity, and evict only after 64 accesses of their own: what stays resident is a few hundred recent
/// leaves. Chunks of 64 KiB made 1 MiB leaves and 175 MB of RSS with a backlog of a million events; 8 KiB
/// chunks keep leaves near 100 KiB and that RSS under 64 MB, for about one CPU second per million events
/// more than 16 KiB chunks (BENCHMARKS.md, "Memory" and "Dedup records").
/// Chunks written with other limits are read all the same: only new chunks are cut to this size.
pub(super) const CHUNK_MAX_EVENTS: usize = 8;
const CHUNK_MAX_BYTES: usize = 8 * 1024;

/// The record of format 1: one event.
#[derive(Serialize, Deserialize)]
pub(super) struct Envelope<'a> {
    pub(super) version: u8,
    pub(super) stream: u32,
    pub(super) timestamp_ns: i64,
    pub(super) queued_at_ms: u64,
    #[serde(borrow)]
    pub(super) raw: &'a str,
}

/// The record of format 2: consecutive events of one page, borrowed from the stored bytes when read.
#[derive(Serialize, Deserialize)]
pub(super) struct Chunk<'a> {
    pub(super) version: u8,
    pub(super) stream: u32,
    pub(super) queued_at_ms: u64,
    #[serde(borrow)]
    pub(super) events: Vec<ChunkEvent<'a>>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ChunkEvent<'a> {
    pub(super) timestamp_ns: i64,
    /// Bytes, not `str`: reading a chunk checks UTF-8 only for the events it returns.
    #[serde(borrow, with = "serde_bytes")]
    pub(super) raw: &'a [u8],
}

/// Reads a stored record as a chunk, borrowing the raw bytes; a format 1 record is a chunk of one.
pub(super) fn decode_chunk(first: u64, value: &[u8]) -> Result<Chunk<'_>, QueueError> {
    let damaged = |err: bincode::Error| QueueError::Damaged(format!("record #{first}: {err}"));
    match value.first() {
        Some(&FORMAT_VERSION) => bincode::deserialize(value).map_err(damaged),
        Some(&SINGLE_EVENT_VERSION) => {
            let envelope: Envelope = bincode::deserialize(value).map_err(damaged)?;
            Ok(Chunk {
                version: SINGLE_EVENT_VERSION,
                stream: envelope.stream,
                queued_at_ms: envelope.queued_at_ms,
                events: vec![ChunkEvent {
                    timestamp_ns: envelope.timestamp_ns,
                    raw: envelope.raw.as_bytes(),
                }],
            })
        }
        Some(version) => Err(QueueError::Damaged(format!(
            "record #{first} has format {version}, this version reads {SINGLE_EVENT_VERSION} and {FORMAT_VERSION}"
        ))),
        None => Err(QueueError::Damaged(format!("record #{first} is empty"))),
    }
}

/// The fixed start of a stored record: enough to skip another stream's chunk without decoding its events.
pub(super) struct ChunkHeader {
    pub(super) stream: u32,
    /// How many events the record holds (acknowledged ones included).
    pub(super) count: u64,
}

/// Reads a record's stream and event count (bincode writes a chunk's version, stream, queued_at_ms, then
/// the length of its events as a u64, before any event; trailing bytes are allowed).
pub(super) fn chunk_header(first: u64, value: &[u8]) -> Result<ChunkHeader, QueueError> {
    #[derive(Deserialize)]
    struct Header {
        version: u8,
        stream: u32,
        _queued_at_ms: u64,
        count: u64,
    }
    match value.first() {
        Some(&FORMAT_VERSION) => {
            let header: Header = bincode::deserialize(value)
                .map_err(|err| QueueError::Damaged(format!("record #{first}: {err}")))?;
            debug_assert_eq!(header.version, FORMAT_VERSION);
            Ok(ChunkHeader {
                stream: header.stream,
                count: header.count,
            })
        }
        _ => {
            let chunk = decode_chunk(first, value)?;
            Ok(ChunkHeader {
                stream: chunk.stream,
                count: chunk.events.len() as u64,
            })
        }
    }
}

/// Cuts events into chunks and stores them (inside a transaction) under consecutive sequence numbers: a
/// chunk is closed when it is full or when the next event is of another stream.
pub(super) struct ChunkWriter<'a> {
    chunk: Chunk<'a>,
    bytes: usize,
    next_seq: u64,
}

impl<'a> ChunkWriter<'a> {
    /// A writer whose first chunk goes at `next_seq`, its events queued at `queued_at_ms`.
    pub(super) fn new(next_seq: u64, queued_at_ms: u64) -> ChunkWriter<'a> {
        ChunkWriter {
            chunk: Chunk {
                version: FORMAT_VERSION,
                stream: 0,
                queued_at_ms,
                events: Vec::with_capacity(CHUNK_MAX_EVENTS),
            },
            bytes: 0,
            next_seq,
        }
    }

    pub(super) fn push(
        &mut self,
        events_tx: &TransactionalTree,
        stream: u32,
        timestamp_ns: i64,
        raw: &'a [u8],
    ) -> Result<(), ConflictableTransactionError<QueueError>> {
        if !self.chunk.events.is_empty()
            && (self.chunk.stream != stream
                || self.chunk.events.len() >= CHUNK_MAX_EVENTS
                || self.bytes >= CHUNK_MAX_BYTES)
        {
            self.write(events_tx)?;
        }
        self.chunk.stream = stream;
        self.chunk.events.push(ChunkEvent { timestamp_ns, raw });
        self.bytes += raw.len();
        Ok(())
    }

    /// Stores what is left and returns the next free sequence number.
    pub(super) fn finish(
        mut self,
        events_tx: &TransactionalTree,
    ) -> Result<u64, ConflictableTransactionError<QueueError>> {
        if !self.chunk.events.is_empty() {
            self.write(events_tx)?;
        }
        Ok(self.next_seq)
    }

    fn write(
        &mut self,
        events_tx: &TransactionalTree,
    ) -> Result<(), ConflictableTransactionError<QueueError>> {
        let record = bincode::serialize(&self.chunk).map_err(|err| {
            ConflictableTransactionError::Abort(QueueError::Damaged(format!(
                "cannot encode events: {err}"
            )))
        })?;
        events_tx.insert(&self.next_seq.to_be_bytes()[..], record)?;
        self.next_seq += self.chunk.events.len() as u64;
        self.chunk.events.clear();
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_bytes(stream: u32, raws: &[&str]) -> Vec<u8> {
        bincode::serialize(&Chunk {
            version: FORMAT_VERSION,
            stream,
            queued_at_ms: 42,
            events: raws
                .iter()
                .enumerate()
                .map(|(i, raw)| ChunkEvent {
                    timestamp_ns: i as i64,
                    raw: raw.as_bytes(),
                })
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn the_header_agrees_with_the_whole_record() {
        for raws in [&[][..], &["a"][..], &["{}", "xyz", "", "é"][..]] {
            let value = chunk_bytes(7, raws);
            let header = chunk_header(3, &value).unwrap();
            let chunk = decode_chunk(3, &value).unwrap();
            assert_eq!((header.stream, header.count), (7, raws.len() as u64));
            assert_eq!(chunk.events.len(), raws.len());
            assert_eq!(chunk.queued_at_ms, 42);
            let read: Vec<&[u8]> = chunk.events.iter().map(|e| e.raw).collect();
            let written: Vec<&[u8]> = raws.iter().map(|r| r.as_bytes()).collect();
            assert_eq!(read, written);
        }
    }

    #[test]
    fn a_record_of_format_1_is_a_chunk_of_one() {
        let value = bincode::serialize(&Envelope {
            version: SINGLE_EVENT_VERSION,
            stream: 9,
            timestamp_ns: -4,
            queued_at_ms: 5,
            raw: "{\"id\":1}",
        })
        .unwrap();
        let header = chunk_header(0, &value).unwrap();
        assert_eq!((header.stream, header.count), (9, 1));
        let chunk = decode_chunk(0, &value).unwrap();
        assert_eq!(chunk.queued_at_ms, 5);
        assert_eq!(chunk.events[0].timestamp_ns, -4);
        assert_eq!(chunk.events[0].raw, b"{\"id\":1}");
    }

    #[test]
    fn unknown_and_empty_records_are_refused_not_misread() {
        let mut value = chunk_bytes(1, &["a"]);
        value[0] = 3;
        let err = decode_chunk(11, &value).err().unwrap().to_string();
        assert!(err.contains("record #11 has format 3"), "{err}");
        assert!(chunk_header(11, &value).is_err());
        assert!(decode_chunk(12, &[]).is_err());
        let truncated = &chunk_bytes(1, &["abcdef"])[..20];
        assert!(decode_chunk(13, truncated).is_err());
    }
}

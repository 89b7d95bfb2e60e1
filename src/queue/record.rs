//! The record format of the `events` tree: what one stored value holds and how it is read and written.
//!
//! A record is stored under the sequence number of its first event (u64, big-endian). Format 3 (today's) is
//! a [`Chunk`] whose events are compressed together (lz4, [`Packed`]): up to [`CHUNK_MAX_EVENTS`]
//! consecutive events of one stream, raw bytes as received; event `i` of the chunk at key `k` has sequence
//! number `k + i`. Format 2 was the same chunk uncompressed, format 1 an [`Envelope`]: one event.
//!
//! Why chunks: sled 0.34 copies and merges a tree node on every insert and remove, so its cost is per
//! operation, not per byte; one record per event made those copies most of the agent's CPU (BENCHMARKS.md).
//! Why compressed: sled then copies every stored byte about four times (into its log, then with the leaf
//! on each split and consolidation of an append-only tree), into fresh log buffers that are page-faulted
//! in: the copies and the faults were most of what was left of its cost, and JumpCloud's events, JSON
//! with the same keys over and over, shrink several times.
//!
//! Invariants:
//! - Every record starts with its version byte; a record of an unknown version is refused, never misread.
//!   Records of formats 1 and 2 are read (and acknowledged) as they are, so old queues need no migration.
//! - Decompressing never allocates more than lz4 can expand the stored bytes to: a damaged length is
//!   refused as damage, not an allocation of gigabytes.
//! - A chunk holds one stream's events (its tag is in the header), so a reader of one stream skips the
//!   others' chunks whole from [`chunk_header`], without decoding their events.
//! - A chunk is written once, whole, and never rewritten: its key and event count never change (what is
//!   gone of it is kept in its bitmap, by `acks`), so a key found outside a transaction stays valid inside.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::QueueError;

/// The version of the on-disk record layout written today; records of an unknown version are refused, not
/// misread.
pub(super) const FORMAT_VERSION: u8 = 3;
/// Chunks written before compression: read as they are.
pub(super) const UNPACKED_VERSION: u8 = 2;
/// Records written before chunks: one [`Envelope`] per event. Read (and acknowledged) as chunks of one.
pub(super) const SINGLE_EVENT_VERSION: u8 = 1;

/// At most this many events in one chunk, and about this many raw bytes (before compression). sled keeps
/// up to 16 entries in a leaf node and holds a whole node in memory while it is cached, so the stored
/// chunk size sets the size of the nodes that memory is made of; and every sled operation (insert,
/// acknowledgement, removal, the node splits and merges they cause) is paid per chunk, not per byte.
/// Uncompressed chunks of 64 KiB once made 1 MiB leaves and 175 MB of RSS with a backlog of a million
/// events, under a cache that did not hold to its capacity (BENCHMARKS.md, "Memory"). Compressed (to about
/// a sixth) and with the cache bounded (`vendor/sled`, JCDI-FORWARDER.md item 3), 64 events or 64 KiB make
/// leaves near 170 KiB; against 32, they cost less CPU per event queued and forwarded for the same RSS
/// (BENCHMARKS.md, "Chunks of 64 events"). 128 saved nothing more.
/// Chunks written with other limits are read all the same: only new chunks are cut to this size.
pub(super) const CHUNK_MAX_EVENTS: usize = 64;
const CHUNK_MAX_BYTES: usize = 64 * 1024;
/// lz4 expands a block at most about 255 times: a stored length beyond that is damage.
const LZ4_MAX_RATIO: usize = 255;

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

/// In the bincode of `Vec<ChunkEvent>`: the list's length (a u64)...
const EVENTS_LIST_LENGTH: usize = 8;
/// ...then for each event its timestamp (an i64) and its length (a u64) before its raw bytes.
const EVENT_FIXED_BYTES: usize = 16;

/// The record of format 3: a chunk's header as in format 2, then its events (the bincode of
/// `Vec<ChunkEvent>`) compressed as one lz4 block.
#[derive(Serialize, Deserialize)]
struct Packed<'a> {
    version: u8,
    stream: u32,
    queued_at_ms: u64,
    /// How many events the block holds: where format 2 has the length of its list, so that
    /// [`chunk_header`] reads both alike.
    count: u64,
    /// The length of the block once decompressed.
    unpacked_len: u64,
    #[serde(borrow, with = "serde_bytes")]
    events: &'a [u8],
}

/// A chunk as stored today: format 3, its events compressed.
#[cfg(test)]
pub(super) fn encode_chunk(chunk: &Chunk) -> Result<Vec<u8>, bincode::Error> {
    let mut buffers = EncodeBuffers::default();
    encode_chunk_into(chunk, &mut buffers)?;
    Ok(buffers.record)
}

/// The buffers a chunk is encoded in, kept from one chunk to the next: a commit writes several chunks, and
/// fresh buffers of their size cost an allocation each, and lz4's output a zeroing.
#[derive(Default)]
pub(super) struct EncodeBuffers {
    events: Vec<u8>,
    compressed: Vec<u8>,
    record: Vec<u8>,
}

/// [`encode_chunk`] into `buffers`: the record is `buffers.record`.
fn encode_chunk_into(chunk: &Chunk, buffers: &mut EncodeBuffers) -> Result<(), bincode::Error> {
    buffers.events.clear();
    bincode::serialize_into(&mut buffers.events, &chunk.events)?;
    let lz4_error = |err: std::io::Error| bincode::ErrorKind::Custom(format!("lz4: {err}"));
    let room = lz4::block::compress_bound(buffers.events.len()).map_err(lz4_error)?;
    if buffers.compressed.len() < room {
        buffers.compressed.resize(room, 0);
    }
    let compressed =
        lz4::block::compress_to_buffer(&buffers.events, None, false, &mut buffers.compressed)
            .map_err(lz4_error)?;
    buffers.record.clear();
    bincode::serialize_into(
        &mut buffers.record,
        &Packed {
            version: FORMAT_VERSION,
            stream: chunk.stream,
            queued_at_ms: chunk.queued_at_ms,
            count: chunk.events.len() as u64,
            unpacked_len: buffers.events.len() as u64,
            events: &buffers.compressed[..compressed],
        },
    )
}

/// Reads a stored record as a chunk; a format 1 record is a chunk of one. The raw bytes are borrowed from
/// `value`, or from `scratch` where the events were compressed.
pub(super) fn decode_chunk<'a>(
    first: u64,
    value: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<Chunk<'a>, QueueError> {
    let damaged = |err: bincode::Error| QueueError::Damaged(format!("record #{first}: {err}"));
    match value.first() {
        Some(&FORMAT_VERSION) => {
            let packed: Packed = bincode::deserialize(value).map_err(damaged)?;
            let len = usize::try_from(packed.unpacked_len).unwrap_or(usize::MAX);
            if len > packed.events.len().saturating_mul(LZ4_MAX_RATIO) + 16 {
                return Err(QueueError::Damaged(format!(
                    "record #{first} says its events take {len} bytes, more than its {} can hold",
                    packed.events.len()
                )));
            }
            // lz4 decompresses at most `max` bytes, whatever the stored bytes say.
            let Ok(max) = i32::try_from(len) else {
                return Err(QueueError::Damaged(format!(
                    "record #{first} says its events take {len} bytes, more than an lz4 block holds"
                )));
            };
            // Only grown when too small: what it held is written over, and `written` must be `len`.
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            scratch.truncate(len);
            match lz4::block::decompress_to_buffer(packed.events, Some(max), scratch) {
                Ok(written) if written == len => {}
                Ok(written) => {
                    return Err(QueueError::Damaged(format!(
                        "record #{first}: its events take {written} bytes, not {len}"
                    )))
                }
                Err(err) => return Err(QueueError::Damaged(format!("record #{first}: {err}"))),
            }
            let scratch: &'a Vec<u8> = scratch;
            let events: Vec<ChunkEvent> = bincode::deserialize(scratch).map_err(damaged)?;
            if events.len() as u64 != packed.count {
                return Err(QueueError::Damaged(format!(
                    "record #{first} holds {} events, its header says {}",
                    events.len(),
                    packed.count
                )));
            }
            // Nothing may follow the events: their size is what `ChunkHeader::raw_bytes` counts on.
            let encoded: usize = EVENTS_LIST_LENGTH
                + events
                    .iter()
                    .map(|e| EVENT_FIXED_BYTES + e.raw.len())
                    .sum::<usize>();
            if encoded != len {
                return Err(QueueError::Damaged(format!(
                    "record #{first}: its events take {encoded} bytes of the {len} it holds"
                )));
            }
            Ok(Chunk {
                version: FORMAT_VERSION,
                stream: packed.stream,
                queued_at_ms: packed.queued_at_ms,
                events,
            })
        }
        Some(&UNPACKED_VERSION) => bincode::deserialize(value).map_err(damaged),
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
            "record #{first} has format {version}, this version reads {SINGLE_EVENT_VERSION} to {FORMAT_VERSION}"
        ))),
        None => Err(QueueError::Damaged(format!("record #{first} is empty"))),
    }
}

/// The fixed start of a stored record: enough to skip another stream's chunk without decoding its events.
pub(super) struct ChunkHeader {
    pub(super) stream: u32,
    /// How many events the record holds (acknowledged ones included).
    pub(super) count: u64,
    /// The raw bytes of all its events, when the header tells them without decompressing (format 3):
    /// they are the bincode of `Vec<ChunkEvent>`, so `unpacked_len` less the list's length and each
    /// event's timestamp and length. `None` for the other formats, or a header that does not add up
    /// (decoding the record then reports the damage).
    pub(super) raw_bytes: Option<u64>,
}

/// Reads a record's stream and event count without decoding its events (formats 2 and 3 start with the
/// version, stream and queued_at_ms, then the number of events as a u64: format 2's list length, format
/// 3's `count`; trailing bytes are allowed).
pub(super) fn chunk_header(first: u64, value: &[u8]) -> Result<ChunkHeader, QueueError> {
    /// The fixed start of formats 2 and 3 (`unpacked_len` is format 3's only).
    #[derive(Deserialize)]
    struct Header {
        version: u8,
        stream: u32,
        _queued_at_ms: u64,
        count: u64,
    }
    #[derive(Deserialize)]
    struct PackedHeader {
        header: Header,
        unpacked_len: u64,
    }
    let damaged = |err: bincode::Error| QueueError::Damaged(format!("record #{first}: {err}"));
    match value.first() {
        Some(&(FORMAT_VERSION | UNPACKED_VERSION)) => {
            let header: Header = bincode::deserialize(value).map_err(damaged)?;
            debug_assert!(matches!(header.version, FORMAT_VERSION | UNPACKED_VERSION));
            // A format 3 record cut within `unpacked_len` still has a header; decoding it says the rest.
            let raw_bytes = (header.version == FORMAT_VERSION)
                .then(|| bincode::deserialize::<PackedHeader>(value).ok())
                .flatten()
                .and_then(|packed| {
                    packed
                        .unpacked_len
                        .checked_sub(EVENTS_LIST_LENGTH as u64)?
                        .checked_sub(packed.header.count.checked_mul(EVENT_FIXED_BYTES as u64)?)
                });
            Ok(ChunkHeader {
                stream: header.stream,
                count: header.count,
                raw_bytes,
            })
        }
        _ => {
            let mut scratch = Vec::new();
            let chunk = decode_chunk(first, value, &mut scratch)?;
            Ok(ChunkHeader {
                stream: chunk.stream,
                count: chunk.events.len() as u64,
                raw_bytes: None,
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
    buffers: EncodeBuffers,
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
            buffers: EncodeBuffers::default(),
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
        encode_chunk_into(&self.chunk, &mut self.buffers).map_err(|err| {
            ConflictableTransactionError::Abort(QueueError::Damaged(format!(
                "cannot encode events: {err}"
            )))
        })?;
        events_tx.insert(&self.next_seq.to_be_bytes()[..], &self.buffers.record[..])?;
        self.next_seq += self.chunk.events.len() as u64;
        self.chunk.events.clear();
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(stream: u32, raws: &[&'static str]) -> Chunk<'static> {
        Chunk {
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
        }
    }

    /// A record as format 2 (before compression) wrote it.
    fn unpacked_bytes(stream: u32, raws: &[&'static str]) -> Vec<u8> {
        let mut chunk = chunk(stream, raws);
        chunk.version = UNPACKED_VERSION;
        bincode::serialize(&chunk).unwrap()
    }

    #[test]
    fn the_header_agrees_with_the_whole_record_in_both_chunk_formats() {
        for raws in [&[][..], &["a"][..], &["{}", "xyz", "", "é"][..]] {
            for value in [
                unpacked_bytes(7, raws),
                encode_chunk(&chunk(7, raws)).unwrap(),
            ] {
                let header = chunk_header(3, &value).unwrap();
                let mut scratch = Vec::new();
                let chunk = decode_chunk(3, &value, &mut scratch).unwrap();
                assert_eq!((header.stream, header.count), (7, raws.len() as u64));
                assert_eq!(chunk.events.len(), raws.len());
                assert_eq!(chunk.queued_at_ms, 42);
                let read: Vec<&[u8]> = chunk.events.iter().map(|e| e.raw).collect();
                let written: Vec<&[u8]> = raws.iter().map(|r| r.as_bytes()).collect();
                assert_eq!(read, written);
            }
        }
    }

    #[test]
    fn buffers_reused_from_chunk_to_chunk_keep_nothing_of_the_last() {
        // Encoded one after the other in the same buffers, then decoded one after the other in the same
        // scratch: the larger first, so that stale bytes would show in the smaller.
        let large: Vec<String> = (0..40)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 7)))
            .collect();
        let small = ["{\"a\":1}", "{}"];
        let large: Vec<&str> = large.iter().map(String::as_str).collect();
        let mut buffers = EncodeBuffers::default();
        let mut records = Vec::new();
        for raws in [&large[..], &small[..], &large[..5]] {
            let events = raws
                .iter()
                .map(|raw| ChunkEvent {
                    timestamp_ns: 9,
                    raw: raw.as_bytes(),
                })
                .collect();
            let chunk = Chunk {
                version: FORMAT_VERSION,
                stream: 3,
                queued_at_ms: 1,
                events,
            };
            encode_chunk_into(&chunk, &mut buffers).unwrap();
            assert_eq!(
                buffers.record,
                encode_chunk(&chunk).unwrap(),
                "as fresh buffers encode it"
            );
            records.push((raws, buffers.record.clone()));
        }
        let mut scratch = Vec::new();
        for (raws, record) in &records {
            let chunk = decode_chunk(0, record, &mut scratch).unwrap();
            let read: Vec<&[u8]> = chunk.events.iter().map(|e| e.raw).collect();
            let written: Vec<&[u8]> = raws.iter().map(|r| r.as_bytes()).collect();
            assert_eq!(read, written);
        }
    }

    #[test]
    fn events_are_stored_compressed() {
        let event = r#"{"id":"5f1b2c3d4e5f6a7b8c9d0e1f","event_type":"user_login_attempt","service":"directory","success":true}"#;
        let raws = [event; CHUNK_MAX_EVENTS];
        let raw_bytes: usize = raws.iter().map(|r| r.len()).sum();
        let stored = encode_chunk(&chunk(1, &raws)).unwrap();
        assert_eq!(stored[0], FORMAT_VERSION);
        assert!(
            stored.len() * 4 < raw_bytes,
            "{} bytes stored for {raw_bytes} bytes of events",
            stored.len()
        );
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
        let mut scratch = Vec::new();
        let chunk = decode_chunk(0, &value, &mut scratch).unwrap();
        assert_eq!(chunk.queued_at_ms, 5);
        assert_eq!(chunk.events[0].timestamp_ns, -4);
        assert_eq!(chunk.events[0].raw, b"{\"id\":1}");
    }

    #[test]
    fn unknown_and_empty_records_are_refused_not_misread() {
        let mut value = encode_chunk(&chunk(1, &["a"])).unwrap();
        value[0] = FORMAT_VERSION + 1;
        let err = decode_chunk(11, &value, &mut Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("record #11 has format 4"), "{err}");
        assert!(chunk_header(11, &value).is_err());
        assert!(decode_chunk(12, &[], &mut Vec::new()).is_err());
        for value in [
            unpacked_bytes(1, &["abcdef"]),
            encode_chunk(&chunk(1, &["abcdef"])).unwrap(),
        ] {
            assert!(decode_chunk(13, &value[..20], &mut Vec::new()).is_err());
        }
    }

    /// A format 3 record as versions before the lz4 library wrote it: `events` compressed by lz4_flex,
    /// with the header given.
    fn packed_by_lz4_flex(stream: u32, count: usize, unpacked_len: u64, events: &[u8]) -> Vec<u8> {
        bincode::serialize(&Packed {
            version: FORMAT_VERSION,
            stream,
            queued_at_ms: 42,
            count: count as u64,
            unpacked_len,
            events: &lz4_flex::block::compress(events),
        })
        .unwrap()
    }

    #[test]
    fn bytes_after_a_compressed_chunks_events_are_damage() {
        let raws = ["{}", "abc"];
        let mut events = bincode::serialize(&chunk(3, &raws).events).unwrap();
        events.extend_from_slice(b"xyz");
        let value = packed_by_lz4_flex(3, raws.len(), events.len() as u64, &events);
        let mut scratch = Vec::new();
        let err = decode_chunk(5, &value, &mut scratch)
            .err()
            .expect("refused");
        assert!(matches!(err, QueueError::Damaged(_)), "{err}");
        assert!(err.to_string().contains("record #5"), "{err}");
    }

    #[test]
    fn a_damaged_length_is_refused_before_anything_is_allocated() {
        let events = bincode::serialize(&chunk(1, &["{}"]).events).unwrap();
        let value = packed_by_lz4_flex(1, 1, u64::MAX / 2, &events);
        let mut scratch = Vec::new();
        let err = decode_chunk(5, &value, &mut scratch).err().unwrap();
        assert!(err.is_damage(), "{err}");
        assert!(err.to_string().contains("record #5"), "{err}");
        assert_eq!(scratch.capacity(), 0);
    }

    proptest! {
        /// Chunks written by earlier versions, compressed by lz4_flex rather than the lz4 library, read
        /// the same: both write lz4's block format.
        #[test]
        fn chunks_compressed_by_lz4_flex_read_the_same(
            raws in prop::collection::vec(".{0,300}", 1..CHUNK_MAX_EVENTS),
            repeat in 0usize..4,
        ) {
            // Repeated events too: matches that reach far back.
            let raws: Vec<&'static str> = raws
                .into_iter()
                .map(|r| &*Box::leak(r.repeat(repeat + 1).into_boxed_str()))
                .collect();
            let events = bincode::serialize(&chunk(3, &raws).events).unwrap();
            let value = packed_by_lz4_flex(3, raws.len(), events.len() as u64, &events);
            let mut scratch = Vec::new();
            let read = decode_chunk(3, &value, &mut scratch).unwrap();
            let read: Vec<&[u8]> = read.events.iter().map(|e| e.raw).collect();
            let written: Vec<&[u8]> = raws.iter().map(|r| r.as_bytes()).collect();
            prop_assert_eq!(read, written);
            // And what this version writes, lz4_flex reads: a downgrade reads it too.
            let ours = encode_chunk(&chunk(3, &raws)).unwrap();
            let packed: Packed = bincode::deserialize(&ours).unwrap();
            let unpacked = lz4_flex::block::decompress(packed.events, events.len()).unwrap();
            prop_assert_eq!(unpacked, events);
        }

        /// The raw bytes of a compressed chunk's events are known from its header.
        #[test]
        fn the_header_of_a_compressed_chunk_tells_its_raw_bytes(raws in prop::collection::vec(".{0,300}", 1..40)) {
            let raws: Vec<&'static str> = raws.into_iter().map(|r| &*Box::leak(r.into_boxed_str())).collect();
            let raw_bytes: usize = raws.iter().map(|r| r.len()).sum();
            let value = encode_chunk(&chunk(3, &raws)).unwrap();
            prop_assert_eq!(chunk_header(3, &value).unwrap().raw_bytes, Some(raw_bytes as u64));
            prop_assert_eq!(chunk_header(3, &unpacked_bytes(3, &raws)).unwrap().raw_bytes, None, "only format 3 says it");
        }

        /// Whatever damage does to a stored chunk, reading it never panics nor allocates without bound,
        /// and what is read agrees with the header. (Bytes changed in place are sled's to detect: its log
        /// entries carry a CRC; like format 2, a record holds no checksum of its own.)
        #[test]
        fn damaged_chunks_never_panic_and_agree_with_their_header(
            raws in prop::collection::vec("[ -~]{0,40}", 1..12),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let raws: Vec<&'static str> = raws.into_iter().map(|r| &*Box::leak(r.into_boxed_str())).collect();
            let mut value = encode_chunk(&chunk(3, &raws)).unwrap();
            for (at, mask) in flips {
                let at = at.index(value.len());
                value[at] ^= mask;
            }
            for value in [&value[..], &value[..cut.index(value.len())]] {
                let mut scratch = Vec::new();
                if let Ok(read) = decode_chunk(9, value, &mut scratch) {
                    let header = chunk_header(9, value).unwrap();
                    prop_assert_eq!(header.count, read.events.len() as u64);
                    if value[0] == FORMAT_VERSION {
                        let raw_bytes: usize = read.events.iter().map(|e| e.raw.len()).sum();
                        prop_assert_eq!(header.raw_bytes, Some(raw_bytes as u64));
                    }
                    prop_assert!(scratch.len() <= value.len() * LZ4_MAX_RATIO + 16);
                }
            }
        }
    }
}

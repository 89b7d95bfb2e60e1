//! The bundle file format, version 1 (documented in docs/outbox.md): one POSIX tar file
//! `<id>.jcdi-bundle` holding, in this order,
//! - `manifest.json`: the [`Manifest`] (stream, sequence range, count, earliest and latest timestamps,
//!   size and SHA-256 of the content);
//! - `manifest.json.sha256`: the SHA-256 of the exact bytes of `manifest.json`, in lowercase hex (so that a
//!   damaged manifest is told apart from a valid one, `sha256sum` style);
//! - `manifest.json.hmac`, only when a key is configured: the HMAC-SHA256 of the exact bytes of
//!   `manifest.json`, in lowercase hex; since the manifest holds the content's SHA-256, it covers all;
//! - `events.ndjson.zst`: the content, a zstd frame of the raw events byte for byte, each followed by `\n`.
//!
//! The id is `<stream>-<first seq>-<last seq>-<first 12 hex digits of the SHA-256>`: the same events give
//! the same name, other events another one, so a bundle rewritten after a crash replaces itself and never
//! another.
//!
//! Invariants: [`open`] checks everything before returning any event (a bundle is shipped whole or not at
//! all); it never panics on what a file holds and never inflates more than the manifest declares; a
//! refusal names the check that failed. A signature is compared in constant time.

use std::io::Read;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::format_rfc3339_ns;
use crate::event::QueuedEvent;

/// The file name extension of a sealed bundle.
pub const EXTENSION: &str = ".jcdi-bundle";
/// `format` in every manifest.
pub const FORMAT: &str = "jcdi-bundle";
/// The version this code writes, and the only one it reads.
pub const VERSION: u32 = 1;

const MANIFEST: &str = "manifest.json";
const MANIFEST_SUM: &str = "manifest.json.sha256";
const SIGNATURE: &str = "manifest.json.hmac";
const CONTENT: &str = "events.ndjson.zst";

/// A manifest larger than this is not one of ours.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// The most content a bundle may declare (a bundle holds at most 100,000 events).
const MAX_CONTENT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// What `manifest.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`]; a reader refuses versions it does not know.
    pub version: u32,
    /// The bundle's identity (its file name without [`EXTENSION`]); `ship` records its progress under it.
    pub id: String,
    /// The stream (JumpCloud organization) the events were collected for: it picks the destination.
    pub stream: String,
    /// Queue sequence numbers of the first and last event (informative: other streams' events may lie
    /// between them).
    pub first_seq: u64,
    pub last_seq: u64,
    /// How many events the content holds.
    pub events: u64,
    /// The earliest and latest event timestamps (RFC 3339).
    pub first_timestamp: String,
    pub last_timestamp: String,
    /// The member holding the events, and how it is compressed.
    pub content: String,
    pub compression: String,
    /// Size of the content once decompressed, in bytes.
    pub content_bytes: u64,
    /// SHA-256 of the content once decompressed, lowercase hex.
    pub sha256: String,
    /// Events whose raw text holds line breaks (JSON allows them between tokens; JumpCloud sends none):
    /// `[index, lines]` pairs, so that such an event is read back whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multiline: Vec<(u64, u64)>,
    /// When the bundle was sealed (RFC 3339), and by what.
    pub created: String,
    pub producer: String,
}

/// The events of one bundle being built: compressed and hashed as they come.
pub struct Builder {
    stream: String,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    sha: Sha256,
    events: u64,
    content_bytes: u64,
    seqs: Vec<u64>,
    min_ts: i64,
    max_ts: i64,
    multiline: Vec<(u64, u64)>,
    oldest_queued_at_ms: u64,
}

/// A sealed bundle, ready to be written.
pub struct Sealed {
    pub manifest: Manifest,
    /// The whole file.
    pub bytes: Vec<u8>,
    /// The queue sequence numbers of its events.
    pub seqs: Vec<u64>,
}

impl Sealed {
    pub fn file_name(&self) -> String {
        format!("{}{EXTENSION}", self.manifest.id)
    }
}

impl Builder {
    pub fn new(stream: &str) -> std::io::Result<Builder> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
        // zstd's own checksum tells a damaged frame apart from a wrong SHA-256 in the manifest.
        encoder.include_checksum(true)?;
        Ok(Builder {
            stream: stream.to_string(),
            encoder,
            sha: Sha256::new(),
            events: 0,
            content_bytes: 0,
            seqs: Vec::new(),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            multiline: Vec::new(),
            oldest_queued_at_ms: u64::MAX,
        })
    }

    /// Appends one event (its raw bytes, then `\n`).
    pub fn push(&mut self, event: &QueuedEvent) -> std::io::Result<()> {
        use std::io::Write;
        let raw: &[u8] = event.raw.as_ref();
        let breaks = raw.iter().filter(|b| **b == b'\n').count() as u64;
        if breaks > 0 {
            self.multiline.push((self.events, breaks + 1));
        }
        for part in [raw, b"\n"] {
            self.encoder.write_all(part)?;
            self.sha.update(part);
        }
        self.events += 1;
        self.content_bytes += raw.len() as u64 + 1;
        self.seqs.push(event.seq);
        self.min_ts = self.min_ts.min(event.timestamp_ns);
        self.max_ts = self.max_ts.max(event.timestamp_ns);
        self.oldest_queued_at_ms = self.oldest_queued_at_ms.min(event.queued_at_ms);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The raw bytes so far (with the line ends).
    pub fn content_bytes(&self) -> u64 {
        self.content_bytes
    }

    /// When the longest-waiting event was queued (milliseconds since the epoch); `u64::MAX` when empty.
    pub fn oldest_queued_at_ms(&self) -> u64 {
        self.oldest_queued_at_ms
    }

    /// Seals the bundle: finishes the content, writes the manifest (signed with `key` when given) and puts
    /// the members in one tar file. `created_ns`: the time of sealing.
    pub fn seal(self, key: Option<&[u8]>, created_ns: i64) -> std::io::Result<Sealed> {
        let (Some(&first_seq), Some(&last_seq)) = (self.seqs.first(), self.seqs.last()) else {
            return Err(std::io::Error::other("an empty bundle is never sealed"));
        };
        let compressed = self.encoder.finish()?;
        let sha256 = hex(&self.sha.finalize());
        let manifest = Manifest {
            format: FORMAT.to_string(),
            version: VERSION,
            id: format!(
                "{}-{first_seq:020}-{last_seq:020}-{}",
                self.stream,
                &sha256[..12]
            ),
            stream: self.stream,
            first_seq,
            last_seq,
            events: self.events,
            first_timestamp: format_rfc3339_ns(self.min_ts),
            last_timestamp: format_rfc3339_ns(self.max_ts),
            content: CONTENT.to_string(),
            compression: "zstd".to_string(),
            content_bytes: self.content_bytes,
            sha256,
            multiline: self.multiline,
            created: format_rfc3339_ns(created_ns),
            producer: concat!("jcdi-forwarder ", env!("CARGO_PKG_VERSION")).to_string(),
        };
        let mut manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        manifest_bytes.push(b'\n');
        let mtime = u64::try_from(created_ns / 1_000_000_000).unwrap_or(0);
        let mut tar = tar::Builder::new(Vec::with_capacity(compressed.len() + 4096));
        append(&mut tar, MANIFEST, &manifest_bytes, mtime)?;
        let sum = format!("{}\n", hex(&Sha256::digest(&manifest_bytes)));
        append(&mut tar, MANIFEST_SUM, sum.as_bytes(), mtime)?;
        if let Some(key) = key {
            let signature = format!("{}\n", hex(&sign(key, &manifest_bytes)));
            append(&mut tar, SIGNATURE, signature.as_bytes(), mtime)?;
        }
        append(&mut tar, CONTENT, &compressed, mtime)?;
        Ok(Sealed {
            manifest,
            bytes: tar.into_inner()?,
            seqs: self.seqs,
        })
    }
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    data: &[u8],
    mtime: u64,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    tar.append_data(&mut header, name, data)
}

fn sign(key: &[u8], manifest: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(manifest);
    mac.finalize().into_bytes().to_vec()
}

/// The stream and sequence range a bundle's file name tells, if it is the name of a bundle.
pub fn parse_file_name(name: &str) -> Option<(&str, u64, u64)> {
    let id = name.strip_suffix(EXTENSION)?;
    let mut parts = id.rsplitn(4, '-');
    let (_sha, last, first, stream) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some((stream, first.parse().ok()?, last.parse().ok()?))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A bundle whose checks passed: its manifest, and its events in order.
#[derive(Debug)]
pub struct Opened {
    pub manifest: Manifest,
    pub events: Vec<String>,
}

/// Why a bundle cannot be shipped.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// The bundle is damaged, truncated, tampered with or not a bundle: it will never pass.
    Refused { check: &'static str, detail: String },
    /// The bundle is signed and no key is configured to check it: nothing is wrong with the bundle.
    Unverifiable,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Refused { check, detail } => write!(f, "{check} check failed: {detail}"),
            Problem::Unverifiable => f.write_str(
                "the bundle is signed, and this configuration has no key to check it: set [outbox] hmac_key \
                 (the collecting host's key) in the configuration of ship",
            ),
        }
    }
}

fn refuse(check: &'static str, detail: impl Into<String>) -> Problem {
    Problem::Refused {
        check,
        detail: detail.into(),
    }
}

/// Reads and checks a whole bundle file: its container, its signature (required when `key` is given), its
/// manifest, the decompressed content's size, SHA-256, event count and text.
pub fn open(file: &[u8], key: Option<&[u8]>) -> Result<Opened, Problem> {
    let members = members(file)?;
    let [(first, manifest_bytes), rest @ ..] = members.as_slice() else {
        return Err(refuse(
            "container",
            "the file holds no member (empty or not a tar file)",
        ));
    };
    if first != MANIFEST {
        return Err(refuse(
            "container",
            format!("the first member is {first:?}, not {MANIFEST}"),
        ));
    }
    let rest = match rest {
        [(name, sum), rest @ ..] if name == MANIFEST_SUM => {
            let sum = std::str::from_utf8(sum).unwrap_or_default().trim();
            let actual = hex(&Sha256::digest(manifest_bytes));
            if sum != actual {
                return Err(refuse(
                    "manifest sha256",
                    format!("{MANIFEST} has the SHA-256 {actual}, {MANIFEST_SUM} says {sum:?}"),
                ));
            }
            rest
        }
        _ => {
            return Err(refuse(
                "container",
                format!("{MANIFEST_SUM} does not follow {MANIFEST}"),
            ))
        }
    };
    let (signature, rest) = match rest {
        [(name, signature), rest @ ..] if name == SIGNATURE => (Some(signature), rest),
        _ => (None, rest),
    };
    let compressed = match rest {
        [(name, content)] if name == CONTENT => content,
        [] => {
            return Err(refuse(
                "container",
                format!("the bundle ends before its {CONTENT} member (truncated)"),
            ))
        }
        [(name, _), ..] => {
            return Err(refuse(
                "container",
                format!("unexpected member {name:?} where {CONTENT} alone was expected"),
            ))
        }
    };
    match (key, signature) {
        (Some(key), Some(signature)) => {
            let Some(signature) = std::str::from_utf8(signature).ok().and_then(unhex) else {
                return Err(refuse("signature", format!("{SIGNATURE} is not a hex HMAC-SHA256")));
            };
            let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
            mac.update(manifest_bytes);
            if mac.verify_slice(&signature).is_err() {
                return Err(refuse(
                    "signature",
                    "the HMAC of the manifest does not match the key: the bundle was changed after it was \
                     sealed, or the collecting host uses another key",
                ));
            }
        }
        (Some(_), None) => {
            return Err(refuse(
                "signature",
                format!(
                    "the bundle is not signed ({SIGNATURE} is missing), and this configuration accepts only \
                     signed bundles ([outbox] hmac_key)"
                ),
            ))
        }
        (None, Some(_)) => return Err(Problem::Unverifiable),
        (None, None) => {}
    }
    let manifest: Manifest = serde_json::from_slice(manifest_bytes).map_err(|err| {
        refuse(
            "manifest",
            format!("{MANIFEST} is not a bundle manifest: {err}"),
        )
    })?;
    check_manifest(&manifest)?;
    let content = inflate(compressed, manifest.content_bytes)?;
    let sha256 = hex(&Sha256::digest(&content));
    if sha256 != manifest.sha256 {
        return Err(refuse(
            "sha256",
            format!(
                "the content's SHA-256 is {sha256}, the manifest says {}",
                manifest.sha256
            ),
        ));
    }
    let events = split(content, &manifest)?;
    Ok(Opened { manifest, events })
}

/// The members of a tar file, in order, each read whole.
fn members(file: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Problem> {
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|err| refuse("container", format!("not a tar file: {err}")))?;
    let mut members = Vec::new();
    for entry in entries {
        let mut entry =
            entry.map_err(|err| refuse("container", format!("a tar header is damaged: {err}")))?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".to_string());
        let size = entry.size();
        if name == MANIFEST && size > MAX_MANIFEST_BYTES {
            return Err(refuse(
                "container",
                format!("{MANIFEST} is {size} bytes: not a manifest"),
            ));
        }
        if size > file.len() as u64 {
            return Err(refuse(
                "container",
                format!(
                    "{name} should be {size} bytes and the file is only {} (truncated)",
                    file.len()
                ),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|err| refuse("container", format!("cannot read {name}: {err}")))?;
        if data.len() as u64 != size {
            return Err(refuse(
                "container",
                format!(
                    "{name} holds {} of its {size} bytes (truncated)",
                    data.len()
                ),
            ));
        }
        members.push((name, data));
        if members.len() > 4 {
            return Err(refuse("container", "more members than a bundle has"));
        }
    }
    Ok(members)
}

fn check_manifest(m: &Manifest) -> Result<(), Problem> {
    if m.format != FORMAT {
        return Err(refuse(
            "manifest",
            format!("format is {:?}, not {FORMAT:?}", m.format),
        ));
    }
    if m.version != VERSION {
        return Err(refuse(
            "version",
            format!(
                "the bundle is of version {}, and this jcdi-forwarder reads version {VERSION}: ship it with \
                 a jcdi-forwarder as recent as the collecting host's",
                m.version
            ),
        ));
    }
    if m.content != CONTENT || m.compression != "zstd" {
        return Err(refuse(
            "manifest",
            format!(
                "content {:?} compressed with {:?} is not what version 1 holds",
                m.content, m.compression
            ),
        ));
    }
    let valid_stream = !m.stream.is_empty()
        && m.stream.len() <= 64
        && m.stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_stream {
        return Err(refuse(
            "manifest",
            format!("stream {:?} is not a stream name", m.stream),
        ));
    }
    let hex_sum = m.sha256.len() == 64
        && m.sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_sum {
        return Err(refuse("manifest", "sha256 is not 64 lowercase hex digits"));
    }
    if m.events == 0 || m.first_seq > m.last_seq || m.content_bytes > MAX_CONTENT_BYTES {
        return Err(refuse(
            "manifest",
            "events, first_seq, last_seq or content_bytes are out of range",
        ));
    }
    let expected_id = format!(
        "{}-{:020}-{:020}-{}",
        m.stream,
        m.first_seq,
        m.last_seq,
        m.sha256.get(..12).unwrap_or_default()
    );
    if m.id != expected_id {
        return Err(refuse(
            "manifest",
            format!("id {:?} does not match its fields", m.id),
        ));
    }
    Ok(())
}

/// Decompresses the content, refusing more than the manifest declares.
fn inflate(compressed: &[u8], declared: u64) -> Result<Vec<u8>, Problem> {
    let decoder = zstd::stream::read::Decoder::new(compressed)
        .map_err(|err| refuse("compression", err.to_string()))?;
    let mut content = Vec::with_capacity(declared.min(64 * 1024 * 1024) as usize);
    decoder
        .take(declared + 1)
        .read_to_end(&mut content)
        .map_err(|err| {
            refuse(
                "compression",
                format!("the zstd content is damaged or truncated: {err}"),
            )
        })?;
    if content.len() as u64 != declared {
        return Err(refuse(
            "size",
            format!(
                "the content is {} bytes once decompressed, the manifest says {declared}",
                content.len()
            ),
        ));
    }
    Ok(content)
}

/// Cuts the content into its events, checking their count and text.
fn split(content: Vec<u8>, m: &Manifest) -> Result<Vec<String>, Problem> {
    let text = String::from_utf8(content)
        .map_err(|err| refuse("content", format!("the content is not UTF-8 text: {err}")))?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err(refuse(
            "content",
            "the content does not end with a line end",
        ));
    };
    let mut lines = body.split('\n');
    let mut multiline = m.multiline.iter().peekable();
    let mut events = Vec::with_capacity(m.events.min(1_000_000) as usize);
    for index in 0..m.events {
        let count = match multiline.peek() {
            Some((at, lines)) if *at == index => {
                multiline.next();
                *lines
            }
            _ => 1,
        };
        let mut event = String::new();
        for line in 0..count {
            let Some(part) = lines.next() else {
                return Err(refuse(
                    "count",
                    format!(
                        "the content ends at event {index} of the {} the manifest counts",
                        m.events
                    ),
                ));
            };
            if line > 0 {
                event.push('\n');
            }
            event.push_str(part);
        }
        events.push(event);
    }
    if lines.next().is_some() || multiline.next().is_some() {
        return Err(refuse(
            "count",
            format!(
                "the content holds more than the {} events the manifest counts",
                m.events
            ),
        ));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, raw: &str) -> QueuedEvent {
        QueuedEvent {
            seq,
            stream: 0,
            timestamp_ns: 1_700_000_000_000_000_000 + seq as i64,
            queued_at_ms: 5,
            raw: raw.into(),
        }
    }

    fn sealed(key: Option<&[u8]>, raws: &[&str]) -> Sealed {
        let mut builder = Builder::new("acme").expect("builder");
        for (i, raw) in raws.iter().enumerate() {
            builder.push(&event(10 + 2 * i as u64, raw)).expect("push");
        }
        builder
            .seal(key, 1_700_000_000_000_000_000)
            .expect("sealed")
    }

    const RAWS: &[&str] = &[
        r#"{"id":"a","n":1}"#,
        "{\"id\":\"b\",\n \"n\": 2}",
        r#"{"id":"c"}"#,
    ];

    #[test]
    fn a_sealed_bundle_opens_to_its_events_byte_for_byte() {
        let bundle = sealed(None, RAWS);
        assert_eq!(
            bundle.file_name(),
            format!(
                "acme-{:020}-{:020}-{}.jcdi-bundle",
                10,
                14,
                &bundle.manifest.sha256[..12]
            )
        );
        assert_eq!(bundle.seqs, vec![10, 12, 14]);
        assert_eq!(parse_file_name(&bundle.file_name()), Some(("acme", 10, 14)));
        assert_eq!(
            parse_file_name("a-b-1-2-x.jcdi-bundle"),
            Some(("a-b", 1, 2))
        );
        assert_eq!(parse_file_name("a-1-2.jcdi-bundle"), None);
        let opened = open(&bundle.bytes, None).expect("opens");
        assert_eq!(opened.events, RAWS);
        assert_eq!(opened.manifest, bundle.manifest);
        assert_eq!(opened.manifest.events, 3);
        assert_eq!(opened.manifest.multiline, vec![(1, 2)]);
        assert_eq!(
            opened.manifest.first_timestamp,
            "2023-11-14T22:13:20.000000010Z"
        );
        // The same events make the same bundle name.
        assert_eq!(sealed(None, RAWS).manifest.id, bundle.manifest.id);
        assert_ne!(sealed(None, &RAWS[..2]).manifest.id, bundle.manifest.id);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let bundle = sealed(None, RAWS);
        for at in 0..bundle.bytes.len() {
            let mut bytes = bundle.bytes.clone();
            bytes[at] ^= 0x20;
            match open(&bytes, None) {
                // Only tar padding is checked by nothing: what the bundle says must then be intact.
                Ok(opened) => {
                    assert_eq!(opened.events, RAWS, "flip at {at}");
                    assert_eq!(opened.manifest, bundle.manifest, "flip at {at}");
                }
                Err(Problem::Refused { .. }) => {}
                Err(other) => panic!("flip at {at}: {other}"),
            }
        }
    }

    #[test]
    fn a_truncated_bundle_is_refused_at_every_length_that_loses_events() {
        let bundle = sealed(Some(b"k"), RAWS);
        for len in 0..bundle.bytes.len() {
            if let Ok(opened) = open(&bundle.bytes[..len], Some(b"k")) {
                assert_eq!(
                    opened.events, RAWS,
                    "cut at {len}: only tar padding may be lost"
                );
            }
        }
        let err = open(&bundle.bytes[..bundle.bytes.len() / 2], Some(b"k")).expect_err("refused");
        assert!(
            matches!(
                err,
                Problem::Refused {
                    check: "container",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn with_a_key_a_rewritten_bundle_with_a_fresh_checksum_is_refused() {
        let key = b"0123456789abcdef";
        let bundle = sealed(Some(key), RAWS);
        assert_eq!(open(&bundle.bytes, Some(key)).expect("opens").events, RAWS);
        // Forge: other events, a manifest whose checksum, size and id match them, the old signature.
        let forged_events = sealed(None, &[r#"{"id":"a","n":666}"#, RAWS[1], RAWS[2]]);
        let mut parts = members(&bundle.bytes).expect("members");
        let forged = members(&forged_events.bytes).expect("members");
        parts[0].1 = forged[0].1.clone();
        parts[1].1 = forged[1].1.clone();
        parts[3].1 = forged[2].1.clone();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in &parts {
            append(&mut tar, name, data, 0).expect("append");
        }
        let forged_file = tar.into_inner().expect("tar");
        assert!(
            open(&forged_file, None).is_err(),
            "signed: unverifiable without the key"
        );
        let err = open(&forged_file, Some(key)).expect_err("refused");
        assert!(
            matches!(
                err,
                Problem::Refused {
                    check: "signature",
                    ..
                }
            ),
            "{err}"
        );
        // Another key, or no signature at all, is refused too.
        let err = open(&bundle.bytes, Some(b"another key")).expect_err("refused");
        assert!(
            matches!(
                err,
                Problem::Refused {
                    check: "signature",
                    ..
                }
            ),
            "{err}"
        );
        let unsigned = sealed(None, RAWS);
        let err = open(&unsigned.bytes, Some(key)).expect_err("refused");
        assert!(
            matches!(
                err,
                Problem::Refused {
                    check: "signature",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            open(&bundle.bytes, None).expect_err("held"),
            Problem::Unverifiable
        );
    }

    #[test]
    fn the_content_must_match_the_manifest() {
        let bundle = sealed(None, RAWS);
        let mut parts = members(&bundle.bytes).expect("members");
        let other = sealed(None, &RAWS[..2]);
        parts[2].1 = members(&other.bytes).expect("members")[2].1.clone();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in &parts {
            append(&mut tar, name, data, 0).expect("append");
        }
        let err = open(&tar.into_inner().expect("tar"), None).expect_err("refused");
        assert!(
            matches!(err, Problem::Refused { check: "size", .. }),
            "{err}"
        );
        let err = open(b"not a bundle at all", None).expect_err("refused");
        assert!(
            matches!(
                err,
                Problem::Refused {
                    check: "container",
                    ..
                }
            ),
            "{err}"
        );
    }
}

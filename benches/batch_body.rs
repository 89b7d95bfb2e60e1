//! Batch body benchmark (criterion): writing the `POST /batch` body of 1,000 realistic ~1 KB events, each
//! escaped into one JSON string, as the forwarder does for every batch.
//!
//! - `escape`: the forwarder's [`batch_body`] (`src/escape.rs`);
//! - `serde_json`: the same body written with serde_json's escaper, as the forwarder did before (kept here
//!   as the reference the figure in BENCHMARKS.md is compared with).
//!
//! `cargo bench --bench batch_body`; throughput is reported in events (elements) per second.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jcdi_forwarder::event::QueuedEvent;
use jcdi_forwarder::sink::batch_body;
use jcdi_forwarder::standin::EventFactory;

const BATCH: usize = 1000;
const SECOND: i64 = 1_000_000_000;

fn events() -> Vec<QueuedEvent> {
    let from = jcdi_forwarder::clock::now_ns() - 3600 * SECOND;
    EventFactory::new(7)
        .mix(BATCH, from, from + 60 * SECOND)
        .into_iter()
        .enumerate()
        .map(|(seq, event)| QueuedEvent {
            seq: seq as u64,
            stream: 0,
            timestamp_ns: from,
            queued_at_ms: 0,
            raw: event.raw.into(),
        })
        .collect()
}

/// The body as the forwarder wrote it before, with serde_json's escaper.
fn serde_body(intake_key: &str, events: &[QueuedEvent]) -> Vec<u8> {
    let size: usize = events.iter().map(|e| e.raw.len() * 5 / 4 + 3).sum();
    let mut body = Vec::with_capacity(size + intake_key.len() + 32);
    body.extend_from_slice(b"{\"intake_key\":");
    serde_json::to_writer(&mut body, intake_key).expect("a Vec takes any write");
    body.extend_from_slice(b",\"jsons\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &*event.raw).expect("a Vec takes any write");
    }
    body.extend_from_slice(b"]}");
    body
}

fn bodies(c: &mut Criterion) {
    let events = events();
    assert_eq!(
        batch_body("key", &events)[..],
        serde_body("key", &events)[..],
        "both write the same body"
    );
    let mut group = c.benchmark_group("batch_body");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("escape", |b| b.iter(|| batch_body("key", &events)));
    group.bench_function("serde_json", |b| b.iter(|| serde_body("key", &events)));
    group.finish();
}

criterion_group!(benches, bodies);
criterion_main!(benches);

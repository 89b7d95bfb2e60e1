//! Reading events benchmark (criterion): finding each event's `id`, `timestamp` and end in 1,000
//! realistic ~1 KB events laid out as in a page, as the poller does for every event it receives.
//!
//! - `probe`: the poller's reader ([`jcdi_forwarder::probe::read_object`], `src/probe.rs`);
//! - `serde_json`: serde_json reading the same two fields and skipping the rest, the reference the probe
//!   must agree with.
//!
//! `cargo bench --bench read_events`; throughput is reported in events (elements) per second.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jcdi_forwarder::probe::read_object;
use jcdi_forwarder::standin::EventFactory;
use serde::Deserialize;

const EVENTS: usize = 1000;
const SECOND: i64 = 1_000_000_000;

/// The events of a page, one after the other as in its array.
fn page() -> (Vec<u8>, Vec<usize>) {
    let from = jcdi_forwarder::clock::now_ns() - 3600 * SECOND;
    let mut page = Vec::new();
    let mut starts = Vec::new();
    for event in EventFactory::new(7).mix(EVENTS, from, from + 60 * SECOND) {
        starts.push(page.len());
        page.extend_from_slice(event.raw.as_bytes());
        page.push(b',');
    }
    (page, starts)
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(borrow)]
    timestamp: Option<&'a str>,
}

fn read(c: &mut Criterion) {
    let (page, starts) = page();
    for &start in &starts {
        let probed = read_object(&page[start..]).expect("the probe reads a generated event");
        let mut reader = serde_json::Deserializer::from_slice(&page[start..]).into_iter::<Fields>();
        let fields = reader.next().expect("an object").expect("JSON");
        assert_eq!(probed.len, reader.byte_offset());
        assert_eq!((probed.id, probed.timestamp), (fields.id, fields.timestamp));
    }
    let mut group = c.benchmark_group("read_events");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("probe", |b| {
        b.iter(|| {
            starts
                .iter()
                .map(|&start| read_object(&page[start..]).map_or(0, |found| found.len))
                .sum::<usize>()
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            starts
                .iter()
                .map(|&start| {
                    let mut reader =
                        serde_json::Deserializer::from_slice(&page[start..]).into_iter::<Fields>();
                    reader.next().map_or(0, |_| reader.byte_offset())
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, read);
criterion_main!(benches);

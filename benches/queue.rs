//! Queue benchmark (criterion): what the poller and the forwarder ask of sled, page by page.
//!
//! - `enqueue`: one page of 1000 realistic ~1 KB events (new ids, so each dedup look-up misses and writes)
//!   committed with its cursor (`Queue::commit_page`), then the flush the poller does after each page.
//! - `enqueue_duplicates`: the same page polled again (the overlap window): dedup look-ups only.
//! - `drain`: the forwarder's cycle for 1000 events: `read_batch` from the head, `ack`, flush.
//!
//! `cargo bench --bench queue`; throughput is reported in events (elements) per second.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use jcdi_forwarder::event::{Cursor, IncomingEvent};
use jcdi_forwarder::queue::Queue;
use jcdi_forwarder::standin::EventFactory;

const PAGE: usize = 1000;
const SECOND: i64 = 1_000_000_000;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Makes pages of new events, as the poller would hand them over.
struct Pages {
    factory: EventFactory,
    next_ns: i64,
}

impl Pages {
    fn new() -> Pages {
        Pages {
            factory: EventFactory::new(11),
            next_ns: jcdi_forwarder::clock::now_ns() - 24 * 3600 * SECOND,
        }
    }

    fn page(&mut self) -> (Vec<IncomingEvent>, Cursor) {
        let from = self.next_ns;
        self.next_ns += SECOND;
        let events = self
            .factory
            .mix(PAGE, from, self.next_ns)
            .into_iter()
            .map(|event| IncomingEvent::from_text(&event.raw, from))
            .collect();
        let cursor = Cursor {
            watermark_ns: from,
            updated_at_ms: 0,
        };
        (events, cursor)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn enqueue(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = Queue::open(dir.path()).expect("queue");
    let mut pages = Pages::new();
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(PAGE as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("enqueue", |b| {
        b.iter_batched(
            || pages.page(),
            |(events, cursor)| {
                let outcome = queue
                    .commit_page("bench", &events, Some(cursor))
                    .expect("commit");
                assert_eq!(outcome.queued, PAGE as u64);
                rt.block_on(queue.flush()).expect("flush");
            },
            BatchSize::PerIteration,
        )
    });

    let (seen, cursor) = pages.page();
    queue
        .commit_page("bench", &seen, Some(cursor))
        .expect("commit");
    group.bench_function("enqueue_duplicates", |b| {
        b.iter(|| {
            let outcome = queue
                .commit_page("bench", &seen, Some(cursor))
                .expect("commit");
            assert_eq!(outcome.duplicates, PAGE as u64);
            rt.block_on(queue.flush()).expect("flush");
        })
    });
    group.finish();
}

fn drain(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = Queue::open(dir.path()).expect("queue");
    let mut pages = Pages::new();
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(PAGE as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("drain", |b| {
        b.iter_custom(|iterations| {
            // Fill (untimed) with as many pages as the batches to drain.
            for _ in 0..iterations {
                let (events, cursor) = pages.page();
                queue
                    .commit_page("bench", &events, Some(cursor))
                    .expect("commit");
            }
            rt.block_on(queue.flush()).expect("flush");
            let started = Instant::now();
            for _ in 0..iterations {
                let batch = queue.read_batch(None, PAGE, BATCH_BYTES).expect("read");
                assert_eq!(batch.len(), PAGE);
                let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
                queue.ack(&seqs).expect("ack");
                rt.block_on(queue.flush()).expect("flush");
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, enqueue, drain);
criterion_main!(benches);

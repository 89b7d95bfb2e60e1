//! Throughput of the normalizer over a realistic mix: the ten published
//! sample events, cycled. Two views: `normalize` alone (parse + build the
//! document) and `normalize_stream` (also serializing each document as a line),
//! plus a reference: a bare `serde_json::Value` parse of the same events.

use std::path::PathBuf;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use jcdi_forwarder::normalize::{normalize, normalize_stream};

fn sample_raws() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/normalize");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("sample folder {} missing: {e}", dir.display()))
        .map(|e| e.expect("folder entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let sample: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).expect("read sample"))
                    .expect("sample JSON");
            sample["raw"].as_str().expect("raw").to_owned()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let raws = sample_raws();
    let mut group = c.benchmark_group("normalize");

    group.throughput(Throughput::Elements(raws.len() as u64));
    group.bench_function("samples_cycled", |b| {
        b.iter(|| {
            for raw in &raws {
                black_box(normalize(black_box(raw)).expect("sample normalizes"));
            }
        })
    });

    // Reference point, not part of the normalizer: parsing the same events
    // into a `serde_json::Value` and nothing more.
    group.bench_function("reference_value_parse", |b| {
        b.iter(|| {
            for raw in &raws {
                black_box(
                    serde_json::from_str::<serde_json::Value>(black_box(raw))
                        .expect("sample is JSON"),
                );
            }
        })
    });

    let lines = 10_000;
    let input: String = (0..lines)
        .map(|i| raws[i % raws.len()].as_str())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let mut out = Vec::with_capacity(input.len() * 2);
    group.throughput(Throughput::Elements(lines as u64));
    group.bench_function("stream_10k_lines", |b| {
        b.iter(|| {
            out.clear();
            let stats = normalize_stream(input.as_bytes(), "bench", &mut out, &mut std::io::sink())
                .expect("in-memory I/O");
            black_box(stats)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Late-event benchmark: how many events the agent reads from JumpCloud per event it queues, in steady
//! state, while events arrive steadily and some of them are indexed late.
//!
//! The agent runs in this process (`agent::run`) between the built-in stand-ins on 127.0.0.1. A producer
//! adds events stamped with the current time, `--rate` per second, each visible to the API only after its
//! indexing delay:
//! - a fraction `--late` is indexed late by a delay drawn uniformly in (0, overlap);
//! - a fraction `--beyond` later than the overlap, uniformly in (overlap, 2 × overlap) (not guaranteed to
//!   be collected: counted apart);
//! - the others after a delay drawn uniformly in [0, `--delay`] (the API's usual indexing delay).
//!
//! After `--warmup` (the first poll, and one overlap for the window to fill) the counters are read; again
//! after `--measure`: events read (`events_polled`) per event queued over that span is the figure. Then
//! production stops, the latest events are given time to appear, and every event indexed within the
//! overlap must have reached the intake (the run fails otherwise).
//!
//! `--mode check` measures the late check; `--mode overlap` makes the stand-in refuse the histogram (404),
//! so that every poll reads the whole overlap window again: the behaviour before the late check.
//! `--mode both` runs one then the other.
//!
//! `cargo bench --bench late -- [--mode check|overlap|both] [--rate N] [--poll 2s] [--overlap 20s]
//! [--warmup 30s] [--measure 120s] [--spans 1] [--late 0.01] [--beyond 0.001] [--delay 0ms] [--seed N]`.
//! `--spans N` measures N consecutive spans of `--measure` each and prints each span's figure and their
//! min/median/max (one warm-up for all of them).
//! Nothing here asserts a timing: it measures and prints.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jcdi_forwarder::config::Config;
use jcdi_forwarder::metrics::{Metrics, Reading};
use jcdi_forwarder::standin::{
    ApiEvent, ApiOptions, ApiStandIn, EventFactory, IntakeOptions, IntakeStandIn,
};

const API_KEY: &str = "bench-api-key";
const INTAKE_KEY: &str = "bench-intake-key";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Check,
    Overlap,
}

#[derive(Clone, Debug)]
struct Args {
    modes: Vec<Mode>,
    rate: f64,
    poll: Duration,
    overlap: Duration,
    warmup: Duration,
    measure: Duration,
    late: f64,
    beyond: f64,
    delay: Duration,
    spans: u32,
    seed: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench late -- [--mode check|overlap|both] [--rate N] [--poll 2s] \
         [--overlap 20s] [--warmup 30s] [--measure 120s] [--spans 1] [--late 0.01] [--beyond 0.001] [--delay 0ms] \
         [--seed N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        modes: vec![Mode::Overlap, Mode::Check],
        rate: 100.0,
        poll: Duration::from_secs(2),
        overlap: Duration::from_secs(20),
        warmup: Duration::from_secs(30),
        measure: Duration::from_secs(120),
        late: 0.01,
        beyond: 0.001,
        delay: Duration::ZERO,
        spans: 1,
        seed: 1,
    };
    // `cargo test --all-targets` runs this target without `--bench`, in a debug build: keep that run short,
    // so the test suite only checks that the bench works.
    if !std::env::args().any(|arg| arg == "--bench") {
        args.warmup = Duration::from_secs(5);
        args.measure = Duration::from_secs(5);
        args.overlap = Duration::from_secs(5);
        args.poll = Duration::from_secs(1);
        args.rate = 20.0;
    }
    let duration = |text: String| humantime::parse_duration(&text).unwrap_or_else(|_| usage());
    let number = |text: String| text.parse::<f64>().unwrap_or_else(|_| usage());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--bench" => {}
            "--mode" => {
                args.modes = match value().as_str() {
                    "check" => vec![Mode::Check],
                    "overlap" => vec![Mode::Overlap],
                    "both" => vec![Mode::Overlap, Mode::Check],
                    _ => usage(),
                }
            }
            "--rate" => args.rate = number(value()),
            "--poll" => args.poll = duration(value()),
            "--overlap" => args.overlap = duration(value()),
            "--warmup" => args.warmup = duration(value()),
            "--measure" => args.measure = duration(value()),
            "--late" => args.late = number(value()),
            "--beyond" => args.beyond = number(value()),
            "--delay" => args.delay = duration(value()),
            "--spans" => args.spans = number(value()) as u32,
            "--seed" => args.seed = number(value()) as u64,
            _ => usage(),
        }
    }
    if args.rate <= 0.0 || args.late + args.beyond > 1.0 || args.spans == 0 {
        usage()
    }
    args
}

fn main() {
    let args = parse_args();
    // `RUST_LOG=jcdi_forwarder=debug` shows what each poll read (the late check's slices among them).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "late bench: {} events/s, poll {}, overlap {}, {:.2}% late within the overlap, {:.2}% beyond it, \
         usual delay up to {}; warm-up {}, measured {}",
        args.rate,
        humantime::format_duration(args.poll),
        humantime::format_duration(args.overlap),
        args.late * 100.0,
        args.beyond * 100.0,
        humantime::format_duration(args.delay),
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.measure),
    );
    let mut failed = false;
    for mode in args.modes.clone() {
        let result = runtime.block_on(run(&args, mode));
        let name = match mode {
            Mode::Check => "check",
            Mode::Overlap => "overlap",
        };
        for (index, span) in result.spans.iter().enumerate() {
            println!(
                "{name:<8} span {}: read/queued {:.3} ({} read, {} queued in steady state); {} polls (one every \
                 {:.1} s), per poll: {:.2} events requests, {:.2} histogram and {:.2} count requests; {} late \
                 events found by the late check, {} polls fell back",
                index + 1,
                span.ratio(),
                span.read,
                span.queued,
                span.polls,
                args.measure.as_secs_f64() / span.polls.max(1) as f64,
                span.events_requests as f64 / span.polls.max(1) as f64,
                span.interval_requests as f64 / span.polls.max(1) as f64,
                span.count_requests as f64 / span.polls.max(1) as f64,
                span.late,
                span.fallbacks,
            );
        }
        let mut ratios: Vec<f64> = result.spans.iter().map(SpanResult::ratio).collect();
        ratios.sort_by(f64::total_cmp);
        if let (Some(min), Some(max)) = (ratios.first(), ratios.last()) {
            println!(
                "{name:<8} read/queued min/median/max {min:.3} / {:.3} / {max:.3} over {} spans; within the \
                 overlap: {} of {} collected; beyond it: {} of {}",
                ratios[ratios.len() / 2],
                ratios.len(),
                result.within_collected,
                result.within,
                result.beyond_collected,
                result.beyond,
            );
        }
        failed |= result.within_collected != result.within;
    }
    if failed {
        eprintln!("FAILED: events indexed within the overlap were not collected");
        std::process::exit(1);
    }
}

struct Snapshot {
    reading: Reading,
    polls: u64,
    events_requests: u64,
    interval_requests: u64,
    count_requests: u64,
}

/// What one measured span saw: the difference of two snapshots.
struct SpanResult {
    read: u64,
    queued: u64,
    late: u64,
    fallbacks: u64,
    polls: u64,
    events_requests: u64,
    interval_requests: u64,
    count_requests: u64,
}

impl SpanResult {
    fn between(start: &Snapshot, end: &Snapshot) -> SpanResult {
        SpanResult {
            read: end.reading.read - start.reading.read,
            queued: end.reading.queued - start.reading.queued,
            late: end.reading.late - start.reading.late,
            fallbacks: end.reading.late_check_fallbacks - start.reading.late_check_fallbacks,
            polls: end.polls - start.polls,
            events_requests: end.events_requests - start.events_requests,
            interval_requests: end.interval_requests - start.interval_requests,
            count_requests: end.count_requests - start.count_requests,
        }
    }

    fn ratio(&self) -> f64 {
        self.read as f64 / self.queued.max(1) as f64
    }
}

struct RunResult {
    spans: Vec<SpanResult>,
    within: usize,
    within_collected: usize,
    beyond: usize,
    beyond_collected: usize,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().expect("in range")
}

fn at_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns as u64)
}

fn ns(duration: Duration) -> i64 {
    duration.as_nanos() as i64
}

async fn run(args: &Args, mode: Mode) -> RunResult {
    let api = ApiStandIn::start(ApiOptions {
        api_key: API_KEY.into(),
        refuse_aggregates: (mode == Mode::Overlap).then_some(404),
        ..ApiOptions::default()
    })
    .await
    .expect("API stand-in");
    let intake = IntakeStandIn::start(IntakeOptions {
        intake_key: INTAKE_KEY.into(),
        ..IntakeOptions::default()
    })
    .await
    .expect("intake stand-in");
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "data_dir = {:?}\n[jumpcloud]\nbase_url = \"{}\"\napi_key = \"{API_KEY}\"\npoll_interval = \"{}\"\n\
         overlap = \"{}\"\ninitial_lookback = \"1m\"\n[sekoia]\nintake_url = \"{}\"\nintake_key = \"{INTAKE_KEY}\"\n\
         [api]\nenabled = false\n",
        dir.path().join("queue").display().to_string(),
        api.base_url(),
        humantime::format_duration(args.poll),
        humantime::format_duration(args.overlap),
        intake.base_url(),
    );
    let config: Config = Config::parse(&text, "bench", &|_| None)
        .expect("bench config is valid")
        .config;
    let queue = jcdi_forwarder::agent::open_queue(&config)
        .await
        .expect("queue");
    let metrics = Arc::new(Metrics::default());
    let (trigger, shutdown) = jcdi_forwarder::shutdown::channel();
    let agent = {
        let (config, queue, metrics) = (config.clone(), queue.clone(), metrics.clone());
        tokio::spawn(
            async move { jcdi_forwarder::agent::run(&config, queue, metrics, shutdown).await },
        )
    };

    // Produce until the end of the measured span, every 100 ms.
    let mut factory = EventFactory::new(args.seed);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let mut within: Vec<ApiEvent> = Vec::new();
    let mut beyond: Vec<ApiEvent> = Vec::new();
    let started = Instant::now();
    let mut last_ns = now_ns();
    let mut owed = 0.0;
    // One snapshot at the end of the warm-up and one at the end of each span.
    let mut marks: Vec<Snapshot> = Vec::new();
    let overlap_ns = ns(args.overlap);
    let snapshot = || Snapshot {
        reading: metrics.stream_reading("default"),
        polls: metrics.snapshot().polls_completed,
        events_requests: api.requests(),
        interval_requests: api.interval_requests(),
        count_requests: api.count_requests(),
    };
    let end = args.warmup + args.measure * args.spans;
    while started.elapsed() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next_mark = args.warmup + args.measure * marks.len() as u32;
        if marks.len() <= args.spans as usize && started.elapsed() >= next_mark {
            marks.push(snapshot());
        }
        let now = now_ns();
        owed += args.rate * (now - last_ns) as f64 / 1e9;
        let count = owed.floor() as usize;
        owed -= count as f64;
        let mut batch = factory.mix(count, last_ns, now);
        last_ns = now;
        for event in &mut batch {
            let draw = rng.f64();
            let (delay_ns, guaranteed) = if draw < args.late {
                ((rng.f64() * overlap_ns as f64) as i64, true)
            } else if draw < args.late + args.beyond {
                (
                    overlap_ns + (rng.f64() * overlap_ns as f64) as i64 + 1,
                    false,
                )
            } else {
                ((rng.f64() * ns(args.delay) as f64) as i64, true)
            };
            event.visible_at = Some(at_ns(event.timestamp_ns + delay_ns));
            if guaranteed {
                within.push(event.clone());
            } else {
                beyond.push(event.clone());
            }
        }
        api.add_events(batch);
    }
    if marks.len() <= args.spans as usize {
        marks.push(snapshot());
    }
    let spans: Vec<SpanResult> = marks
        .windows(2)
        .map(|pair| SpanResult::between(&pair[0], &pair[1]))
        .collect();

    // Let every event indexed within the overlap appear, and a few polls pick it up.
    let latest = within
        .iter()
        .filter_map(|e| e.visible_at)
        .max()
        .unwrap_or_else(SystemTime::now);
    while SystemTime::now() < latest {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + args.poll * 5 + Duration::from_secs(30);
    let collected = |events: &[ApiEvent]| {
        intake.with_received(|got| {
            let got: HashSet<&str> = got.iter().map(String::as_str).collect();
            events
                .iter()
                .filter(|e| got.contains(e.raw.as_str()))
                .count()
        })
    };
    while collected(&within) < within.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let result = RunResult {
        spans,
        within: within.len(),
        within_collected: collected(&within),
        beyond: beyond.len(),
        beyond_collected: collected(&beyond),
    };
    trigger.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
    api.shutdown();
    intake.shutdown();
    result
}

//! Many-streams benchmark (one organization per stream): what one agent holds and spends with N
//! `[[streams]]`, idle and with events arriving steadily. The release binary (`jcdi-forwarder run`) runs as
//! a child process between the built-in stand-ins of JumpCloud and Sekoia.io, served by this process on
//! 127.0.0.1; the API stand-in keeps each organization's events apart (`ApiOptions::events_per_org`), and
//! each stream reads its own organization (`org_id`) with the one API key, as with a multi-tenant key.
//!
//! The configuration is the defaults, as a user has them: only the URLs, the keys, `data_dir`, the local
//! endpoint's port (so that a bench never collides with an agent on the default one) and the `[[streams]]`
//! entries (`name`, `org_id`) are set: the default poll interval is 60 s.
//!
//! Two scenarios, each run `--runs` times (a fresh agent, queue and stand-ins per run):
//! - idle: nothing to collect. Once the first poll of every stream has completed (the agent's
//!   `polls_completed` counters) and half a poll interval has passed (30 s), the agent is watched for
//!   `--measure` (default 120 s: two poll intervals, so the span holds exactly two rounds of polls, all
//!   streams polling together): RSS (VmRSS, and VmHWM, the peak since it started), threads, open file
//!   descriptors (sockets included; the most seen, sampled every second), CPU seconds per minute (utime +
//!   stime from `/proc/<pid>/stat`);
//! - steady: the same while `--rate` events per second (all streams together, spread evenly over the
//!   organizations) arrive, stamped with the current time; plus the events per second that reached the
//!   intake during the span, and CPU seconds per million of them.
//!
//! `--backlog N` puts N events per organization in the API before the agent starts (stamped over the hour
//! before): the first poll of every stream is then a catch-up of all of them at once, and the time to the
//! first poll of every stream and the peak RSS say what that costs.
//!
//! At the end of each run the agent gets SIGTERM; the time it takes to exit is reported (it must exit
//! within 60 s, cleanly, or the run reports the end of its log).
//!
//! `cargo bench --bench streams -- [--streams N] [--runs R] [--rate EVENTS_PER_S] [--measure SECONDS]
//! [--backlog EVENTS_PER_ORG] [--only idle|steady] [--quick] [--binary PATH]`. `--quick` (also what `cargo test --all-targets` runs,
//! without `--bench`): 20 streams, 100 events/s, one run, 1 s to settle, 5 s spans. The agent gets a clean
//! environment, plus glibc's allocator variables of the bench's (`GLIBC_TUNABLES`, `MALLOC_*`) if set, as
//! in the e2e bench. Nothing here asserts a timing: it measures and prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use jcdi_forwarder::admin::ask_agent;
use jcdi_forwarder::clock::now_ns;
use jcdi_forwarder::harness::measure::{
    allocator_environment, cpu_seconds, free_local_addr, load_average, open_files, spawn_agent,
    status_field, summary,
};
use jcdi_forwarder::harness::{AgentProcess, ConfigBuilder};
use jcdi_forwarder::standin::{ApiOptions, ApiStandIn, EventFactory, IntakeOptions, IntakeStandIn};

const API_KEY: &str = "bench-api-key";
const INTAKE_KEY: &str = "bench-intake-key";
/// How long the agent may take to exit after SIGTERM before the run gives up and kills it.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// Between the first poll of every stream and the span: half the default poll interval, so that the
/// span's edges fall between two rounds of polls.
const SETTLE: Duration = Duration::from_secs(30);
/// How often the producer adds events.
const PRODUCER_TICK: Duration = Duration::from_millis(100);

struct Args {
    streams: usize,
    runs: usize,
    /// Events per second, all streams together (steady).
    rate: u64,
    /// Events per organization waiting before the agent starts.
    backlog: usize,
    measure: Duration,
    settle: Duration,
    idle: bool,
    steady: bool,
    binary: PathBuf,
    /// What the agent gets of the bench's environment (see `allocator_environment`).
    agent_env: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench streams -- [--streams N] [--runs R] [--rate EVENTS_PER_S] \
         [--measure SECONDS] [--backlog EVENTS_PER_ORG] [--only idle|steady] [--quick] [--binary PATH]"
    );
    std::process::exit(2)
}

fn quick(args: &mut Args) {
    args.streams = 20;
    args.runs = 1;
    args.rate = 100;
    args.measure = Duration::from_secs(5);
    args.settle = Duration::from_secs(1);
}

fn parse_args() -> Args {
    let mut args = Args {
        streams: 500,
        runs: 3,
        rate: 500,
        backlog: 0,
        measure: Duration::from_secs(120),
        settle: SETTLE,
        idle: true,
        steady: true,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jcdi-forwarder")),
        agent_env: allocator_environment(),
    };
    // `cargo test --all-targets` runs this target without `--bench`, in a debug build: keep that run
    // to the quick size, so the test suite only checks that the bench works.
    if !std::env::args().any(|arg| arg == "--bench") {
        quick(&mut args);
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            // Cargo passes --bench to every bench target.
            "--bench" => {}
            "--quick" => quick(&mut args),
            "--streams" => args.streams = value().parse().unwrap_or_else(|_| usage()),
            "--runs" => args.runs = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => args.rate = value().parse().unwrap_or_else(|_| usage()),
            "--backlog" => args.backlog = value().parse().unwrap_or_else(|_| usage()),
            "--measure" => {
                args.measure = Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            "--binary" => args.binary = PathBuf::from(value()),
            "--only" => match value().as_str() {
                "idle" => args.steady = false,
                "steady" => args.idle = false,
                _ => usage(),
            },
            _ => usage(),
        }
    }
    if args.streams == 0 || args.runs == 0 || args.measure.is_zero() || args.rate == 0 {
        usage()
    }
    args
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench(args));
}

async fn bench(args: Args) {
    let environment: Vec<String> = args
        .agent_env
        .iter()
        .map(|(name, value)| format!("{name}={value:?} (inherited)"))
        .collect();
    println!(
        "streams bench: {} streams (one organization each), {} events per organization waiting at \
         the start, default configuration, binary {}, agent environment: {}, load average {}",
        args.streams,
        args.backlog,
        args.binary.display(),
        if environment.is_empty() {
            "nothing set".to_string()
        } else {
            environment.join(", ")
        },
        load_average()
    );
    if args.idle {
        let runs = runs(&args, None).await;
        println!(
            "\nidle, {} streams, {} runs, {} s each (min / median / max):",
            args.streams,
            runs.len(),
            args.measure.as_secs()
        );
        print_common(&runs);
        println!();
    }
    if args.steady {
        let runs = runs(&args, Some(args.rate)).await;
        println!(
            "\nsteady, {} streams, {} events/s in all, {} runs, {} s each (min / median / max):",
            args.streams,
            args.rate,
            runs.len(),
            args.measure.as_secs()
        );
        print_common(&runs);
        summary(
            "events/s reaching the intake",
            runs.iter().map(|r| r.events_per_second),
        );
        summary(
            "agent CPU s per million events",
            // Runs in which no event arrived have no figure (see `runs`).
            runs.iter()
                .map(|r| r.cpu_per_million)
                .filter(|cpu| !cpu.is_nan()),
        );
        println!();
    }
}

async fn runs(args: &Args, rate: Option<u64>) -> Vec<Sample> {
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let sample = one_run(args, rate).await;
        println!(
            "{} run {run}: first poll of every stream after {:.1} s; {:.0} s later, over {:.0} s: RSS {:.1} MB \
             (at most {:.1}), peak RSS since start {:.1} MB, {} threads (at most {}), {} open files (at most {}), \
             CPU {:.2} s per minute{}; stopped {:.2} s after SIGTERM ({}); load {}",
            if rate.is_some() { "steady" } else { "idle" },
            sample.first_polls,
            args.settle.as_secs_f64(),
            sample.span,
            sample.rss_mb,
            sample.max_rss_mb,
            sample.hwm_mb,
            sample.threads,
            sample.max_threads,
            sample.open_files,
            sample.max_files,
            sample.cpu_per_minute,
            if rate.is_some() && sample.cpu_per_million.is_nan() {
                // The quick size's span is shorter than the default poll interval (60 s): no stream
                // polls twice within it.
                format!(
                    ", no event reached the intake ({} produced in the span, which is shorter than a \
                     poll interval): no CPU figure per event",
                    sample.produced
                )
            } else if rate.is_some() {
                format!(
                    ", {:.0} events/s reached the intake ({} produced in the span), {:.2} CPU s per \
                     million events",
                    sample.events_per_second, sample.produced, sample.cpu_per_million
                )
            } else {
                String::new()
            },
            sample.stop_seconds,
            sample.exit,
            load_average()
        );
        samples.push(sample);
    }
    samples
}

fn print_common(runs: &[Sample]) {
    summary(
        "seconds to the first poll of every stream",
        runs.iter().map(|r| r.first_polls),
    );
    summary("RSS (VmRSS) at the end, MB", runs.iter().map(|r| r.rss_mb));
    summary(
        "RSS at most during the span, MB",
        runs.iter().map(|r| r.max_rss_mb),
    );
    summary(
        "peak RSS since start (VmHWM), MB",
        runs.iter().map(|r| r.hwm_mb),
    );
    summary("threads", runs.iter().map(|r| r.threads as f64));
    summary(
        "threads at most during the span",
        runs.iter().map(|r| r.max_threads as f64),
    );
    summary(
        "open files at the end",
        runs.iter().map(|r| r.open_files as f64),
    );
    summary(
        "open files at most during the span",
        runs.iter().map(|r| r.max_files as f64),
    );
    summary(
        "agent CPU s per minute",
        runs.iter().map(|r| r.cpu_per_minute),
    );
    summary(
        "seconds from SIGTERM to exit",
        runs.iter().map(|r| r.stop_seconds),
    );
}

/// What one run measured.
struct Sample {
    first_polls: f64,
    span: f64,
    rss_mb: f64,
    max_rss_mb: f64,
    hwm_mb: f64,
    threads: u64,
    max_threads: u64,
    open_files: usize,
    max_files: usize,
    cpu_per_minute: f64,
    events_per_second: f64,
    produced: u64,
    cpu_per_million: f64,
    stop_seconds: f64,
    exit: String,
}

/// The `x-org-id` of organization `index` (24 hexadecimal digits, as JumpCloud's).
fn org_id(index: usize) -> String {
    format!("{:024x}", 0x5f00_0000 + index)
}

async fn one_run(args: &Args, rate: Option<u64>) -> Sample {
    let api = ApiStandIn::start(ApiOptions {
        api_key: API_KEY.into(),
        events_per_org: true,
        ..ApiOptions::default()
    })
    .await
    .expect("API stand-in");
    let intake = IntakeStandIn::start(IntakeOptions {
        intake_key: INTAKE_KEY.into(),
        keep_events: false,
        ..IntakeOptions::default()
    })
    .await
    .expect("intake stand-in");
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = free_local_addr();
    let orgs: Vec<String> = (0..args.streams).map(org_id).collect();
    let config = write_config(dir.path(), &api, &intake, listen, &orgs);

    if args.backlog > 0 {
        let mut factory = EventFactory::new(17);
        let now = now_ns();
        for org in &orgs {
            api.add_org_events(
                org,
                factory.mix(args.backlog, now - 3600 * 1_000_000_000, now),
            );
        }
    }
    let stop_producing = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = rate.map(|rate| {
        tokio::spawn(produce(
            api.clone(),
            orgs.clone(),
            rate,
            stop_producing.clone(),
            produced.clone(),
        ))
    });

    let started = Instant::now();
    let mut agent = spawn_agent(&args.binary, &args.agent_env, &config, dir.path());
    let pid = agent.id();
    // The first polls: 500 streams start together, each paced on its own; allow a generous time.
    let deadline = started + Duration::from_secs(60 + args.streams as u64 / 5);
    loop {
        let polled = streams_polled(listen).await;
        if polled >= args.streams {
            break;
        }
        if let Some(status) = agent.exited() {
            panic!(
                "the agent exited ({status}) before every stream polled; its log:\n{}",
                agent.log_tail(30)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "only {polled} of {} streams completed a poll in time; the agent's last log lines:\n{}",
                args.streams,
                agent.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_polls = started.elapsed().as_secs_f64();
    tokio::time::sleep(args.settle).await;

    // The span: only /proc is read (the agent's endpoint is not asked: that would cost it CPU).
    let cpu_before = cpu_seconds(pid);
    let received_before = intake.received_count();
    let produced_before = produced.load(Ordering::Relaxed);
    let span_started = Instant::now();
    let (mut max_rss, mut max_threads, mut max_files) = (0, 0, 0);
    while span_started.elapsed() < args.measure {
        tokio::time::sleep(Duration::from_secs(1).min(args.measure)).await;
        if let Some(status) = agent.exited() {
            panic!(
                "the agent exited ({status}) while measured; its log:\n{}",
                agent.log_tail(30)
            );
        }
        max_rss = max_rss.max(status_field(pid, "VmRSS:"));
        max_threads = max_threads.max(status_field(pid, "Threads:"));
        max_files = max_files.max(open_files(pid));
    }
    let span = span_started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let received = intake.received_count() - received_before;
    let produced_in_span = produced.load(Ordering::Relaxed) - produced_before;
    let rss_mb = status_field(pid, "VmRSS:") as f64 / 1024.0;
    let hwm_mb = status_field(pid, "VmHWM:") as f64 / 1024.0;
    let threads = status_field(pid, "Threads:");
    let open_files = open_files(pid);
    stop_producing.store(true, Ordering::Relaxed);
    if let Some(producer) = producer {
        let _ = producer.await;
    }

    let (stop_seconds, exit) = stop(&mut agent).await;
    Sample {
        first_polls,
        span,
        rss_mb,
        max_rss_mb: max_rss.max(1) as f64 / 1024.0,
        hwm_mb,
        threads,
        max_threads,
        open_files,
        max_files,
        cpu_per_minute: cpu * 60.0 / span,
        events_per_second: received as f64 / span,
        produced: produced_in_span,
        cpu_per_million: if received == 0 {
            f64::NAN
        } else {
            cpu * 1e6 / received as f64
        },
        stop_seconds,
        exit,
    }
}

/// The configuration: the defaults, plus the URLs, keys, `data_dir`, the local endpoint's port and one
/// `[[streams]]` entry per organization (sent to `[sekoia]` with its intake key).
fn write_config(
    dir: &Path,
    api: &ApiStandIn,
    intake: &IntakeStandIn,
    listen: SocketAddr,
    orgs: &[String],
) -> PathBuf {
    let mut config = ConfigBuilder::new(&dir.join("queue"))
        .jumpcloud(&api.base_url(), API_KEY)
        .sekoia(&intake.base_url(), INTAKE_KEY)
        .set("api.listen", listen.to_string());
    for (index, org) in orgs.iter().enumerate() {
        config = config.stream([
            ("name", format!("org-{index:04}").into()),
            ("org_id", org.as_str().into()),
        ]);
    }
    let path = dir.join("config.toml");
    config.write(&path).expect("config written");
    path
}

/// Adds `rate` events per second, stamped with the current time and dealt to the organizations in turn,
/// until told to stop.
async fn produce(
    api: ApiStandIn,
    orgs: Vec<String>,
    rate: u64,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) {
    let mut factory = EventFactory::new(13);
    let started = Instant::now();
    let mut last_ns = now_ns();
    let mut count: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(PRODUCER_TICK).await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let now = now_ns();
        let events = factory.mix((due - count) as usize, last_ns, now);
        last_ns = now;
        let mut by_org: Vec<Vec<_>> = vec![Vec::new(); orgs.len()];
        for event in events {
            by_org[(count % orgs.len() as u64) as usize].push(event);
            count += 1;
        }
        for (org, events) in orgs.iter().zip(by_org) {
            if !events.is_empty() {
                api.add_org_events(org, events);
            }
        }
        produced.store(count, Ordering::Relaxed);
    }
}

/// How many streams have completed at least one poll, from the agent's metrics (0 until it answers).
async fn streams_polled(listen: SocketAddr) -> usize {
    let Ok(Some((status, body))) = ask_agent(listen, Method::GET, "/metrics", None).await else {
        return 0;
    };
    if status != http::StatusCode::OK {
        return 0;
    }
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| line.starts_with("jcdi_forwarder_polls_completed_total{"))
        .filter(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .is_some_and(|value| value >= 1.0)
        })
        .count()
}

/// SIGTERM, then waits for the exit: the seconds it took and how it ended. Past [`STOP_WAIT`] the agent
/// is killed and the end of its log printed.
async fn stop(agent: &mut AgentProcess) -> (f64, String) {
    let asked = Instant::now();
    if let Err(err) = agent.terminate() {
        return (0.0, format!("SIGTERM failed: {err}"));
    }
    match agent.wait_exit(STOP_WAIT).await {
        Some(status) => {
            let seconds = asked.elapsed().as_secs_f64();
            if !status.success() {
                eprintln!(
                    "the agent exited with {status} after SIGTERM; its last log lines, newest first:\n{}",
                    agent.log_tail(30)
                );
            }
            (seconds, status.to_string())
        }
        None => {
            let _ = agent.kill_9();
            eprintln!(
                "the agent did not stop within {STOP_WAIT:?} of SIGTERM; its last log lines, newest first:\n{}",
                agent.log_tail(30)
            );
            (asked.elapsed().as_secs_f64(), "killed: no exit".into())
        }
    }
}

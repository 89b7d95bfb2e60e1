//! End-to-end benchmark: the release binary (`jcdi-forwarder run`) as a child process between the built-in
//! stand-ins of JumpCloud and Sekoia.io, served by this process on 127.0.0.1.
//!
//! The agent runs alone in its process so that its CPU time (`/proc/<pid>/stat` utime + stime) and memory
//! (`/proc/<pid>/status` VmHWM, VmRSS) are its own; the stand-ins' work is reported apart.
//!
//! Two scenarios:
//! - throughput: N events from the API stand-in to the intake stand-in: events/s, CPU s per million, peak RSS,
//!   and how many events requests it took (their pace bounds the events/s: see `pace_bound`);
//! - backlog: the intake is down while N events are polled into the queue: RSS and disk with the backlog, the
//!   on-disk size against the raw bytes; then `kill -9`, intake back, restart: time to the first forwarded
//!   batch and the drain rate.
//!
//! `cargo bench --bench e2e -- [--events N] [--runs R] [--quick] [--only throughput|backlog]
//! [--set section.key=value]...`. Cargo builds the binary with the bench profile (= release settings) and
//! passes its path in `CARGO_BIN_EXE_jcdi-forwarder`; `--binary PATH` picks another one. Nothing here
//! asserts a timing: it measures and prints. The agent is run through `jcdi_forwarder::harness` with a clean
//! environment: it gets the variables the packaged systemd unit sets (its allocator settings), unless the
//! same variables are set for the bench, which then pass on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use jcdi_forwarder::admin::ask_agent;
use jcdi_forwarder::clock::now_ns;
use jcdi_forwarder::config::Config;
use jcdi_forwarder::harness::measure::{
    allocator_environment, cpu_seconds, free_local_addr, load_average, minor_faults,
    self_cpu_seconds, spawn_agent, status_field, summary,
};
use jcdi_forwarder::harness::{AgentProcess, ConfigBuilder};
use jcdi_forwarder::standin::{ApiOptions, ApiStandIn, EventFactory, IntakeOptions, IntakeStandIn};

const API_KEY: &str = "bench-api-key";
const INTAKE_KEY: &str = "bench-intake-key";
const SECOND: i64 = 1_000_000_000;

struct Args {
    events: usize,
    runs: usize,
    throughput: bool,
    backlog: bool,
    binary: PathBuf,
    /// `section.key` → TOML value, replacing the bench's defaults.
    overrides: Vec<(String, toml::Value)>,
    /// What the agent gets of the bench's environment (see `allocator_environment`).
    agent_env: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench e2e -- [--events N] [--runs R] [--quick] \
         [--only throughput|backlog] [--set section.key=value]... [--binary PATH]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        events: 1_000_000,
        runs: 3,
        throughput: true,
        backlog: true,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_jcdi-forwarder")),
        overrides: Vec::new(),
        agent_env: allocator_environment(),
    };
    // `cargo test --all-targets` runs this target without `--bench`, in a debug build: keep that run
    // to the quick size, so the test suite only checks that the bench works.
    if !std::env::args().any(|arg| arg == "--bench") {
        args.events = 20_000;
        args.runs = 1;
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            // Cargo passes --bench to every bench target.
            "--bench" => {}
            "--quick" => {
                args.events = 20_000;
                args.runs = 1;
            }
            "--events" => args.events = value().parse().unwrap_or_else(|_| usage()),
            "--runs" => args.runs = value().parse().unwrap_or_else(|_| usage()),
            "--binary" => args.binary = PathBuf::from(value()),
            "--only" => match value().as_str() {
                "throughput" => args.backlog = false,
                "backlog" => args.throughput = false,
                _ => usage(),
            },
            "--set" => {
                let text = value();
                let Some((path, toml_value)) = text.split_once('=') else {
                    usage()
                };
                if !path.contains('.') {
                    usage()
                }
                // A value as it would stand in the file: `100`, `"1s"`, `["sso"]`.
                let parsed: Result<toml::Table, _> = format!("v = {}", toml_value.trim()).parse();
                let Some(parsed) = parsed.ok().and_then(|mut table| table.remove("v")) else {
                    eprintln!("--set {text}: the value is not a TOML value (quote strings)");
                    usage()
                };
                args.overrides.push((path.trim().to_string(), parsed));
            }
            _ => usage(),
        }
    }
    if args.events == 0 || args.runs == 0 {
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
    println!(
        "e2e bench: {} events, binary {}, load average {}",
        args.events,
        args.binary.display(),
        load_average()
    );
    let environment: Vec<String> = allocator_environment()
        .into_iter()
        .map(|(name, value)| format!("{name}={value:?} (inherited)"))
        .collect();
    println!(
        "agent environment: {}",
        if environment.is_empty() {
            "nothing set".to_string()
        } else {
            environment.join(", ")
        }
    );
    let generating = Instant::now();
    let now = now_ns();
    let events = EventFactory::new(7).mix(args.events, now - 2 * 3600 * SECOND, now - 120 * SECOND);
    let raw_bytes: u64 = events.iter().map(|e| e.raw.len() as u64).sum();
    let api = ApiStandIn::start(ApiOptions {
        api_key: API_KEY.into(),
        ..ApiOptions::default()
    })
    .await
    .expect("API stand-in");
    // The one stand-in serves every run: each run has a new queue, so it reads everything from the start.
    api.add_events(events);
    println!(
        "generated {} events, {:.1} MB raw, mean {} bytes, in {:.1?}",
        args.events,
        raw_bytes as f64 / 1e6,
        raw_bytes / args.events as u64,
        generating.elapsed()
    );
    let bench = Bench {
        args,
        api,
        raw_bytes,
        bench_start_cpu: self_cpu_seconds(),
    };
    if bench.args.throughput {
        bench.throughput().await;
    }
    if bench.args.backlog {
        bench.backlog().await;
    }
}

struct Bench {
    args: Args,
    api: ApiStandIn,
    raw_bytes: u64,
    bench_start_cpu: f64,
}

struct Run {
    seconds: f64,
    events_per_second: f64,
    cpu_per_million: f64,
    faults_per_event: f64,
    peak_rss_mb: f64,
    first_batch: f64,
    duplicates: i64,
    disk_mb: f64,
}

impl Bench {
    async fn throughput(&self) {
        let n = self.args.events;
        let mut runs = Vec::new();
        for run in 1..=self.args.runs {
            let intake = start_intake().await;
            let dir = tempfile::tempdir().expect("temp dir");
            let config = self.write_config(dir.path(), &intake, free_local_addr());
            let bench_cpu = self_cpu_seconds();
            let requests_before = self.api.requests();
            let started = Instant::now();
            let mut agent =
                spawn_agent(&self.args.binary, &self.args.agent_env, &config, dir.path());
            let pid = agent.id();
            let mut first_batch = None;
            let deadline = started + Duration::from_secs(60 + n as u64 / 2_000);
            wait_for(
                &mut agent,
                deadline,
                "the events did not all arrive in time",
                Duration::from_millis(5),
                || {
                    if first_batch.is_none() && intake.accepted_batches() > 0 {
                        first_batch = Some(started.elapsed());
                    }
                    intake.received_count() >= n
                },
            )
            .await;
            let seconds = started.elapsed().as_secs_f64();
            let cpu = cpu_seconds(pid);
            let faults = minor_faults(pid);
            let peak = status_field(pid, "VmHWM:") as f64 / 1024.0;
            let disk = disk_usage(&dir.path().join("queue"));
            terminate(&mut agent).await;
            let requests = self.api.requests() - requests_before;
            let result = Run {
                seconds,
                events_per_second: n as f64 / seconds,
                cpu_per_million: cpu * 1e6 / n as f64,
                faults_per_event: faults as f64 / n as f64,
                peak_rss_mb: peak,
                first_batch: first_batch.map_or(seconds, |d| d.as_secs_f64()),
                duplicates: intake.received_count() as i64 - n as i64,
                disk_mb: disk as f64 / 1e6,
            };
            println!(
                "run {run}: {:.2} s, {:.0} events/s, agent CPU {:.2} s ({:.2} s per million events), \
                 {:.3} page faults per event, peak RSS {:.1} MB, first batch after {:.2} s, {} duplicates, queue on disk {:.1} MB \
                 (stand-ins used {:.2} CPU s), load {}\n  {}",
                result.seconds,
                result.events_per_second,
                cpu,
                result.cpu_per_million,
                result.faults_per_event,
                result.peak_rss_mb,
                result.first_batch,
                result.duplicates,
                result.disk_mb,
                self_cpu_seconds() - bench_cpu,
                load_average(),
                pace_bound(n, requests, &config)
            );
            runs.push(result);
        }
        println!(
            "\nthroughput, {n} events, {} runs (min / median / max):",
            runs.len()
        );
        summary(
            "events/s end to end",
            runs.iter().map(|r| r.events_per_second),
        );
        summary(
            "agent CPU s per million events",
            runs.iter().map(|r| r.cpu_per_million),
        );
        summary(
            "agent page faults per event (minor)",
            runs.iter().map(|r| r.faults_per_event),
        );
        summary(
            "agent peak RSS (VmHWM), MB",
            runs.iter().map(|r| r.peak_rss_mb),
        );
        summary(
            "seconds to the first forwarded batch",
            runs.iter().map(|r| r.first_batch),
        );
        summary(
            "queue on disk at the end, MB",
            runs.iter().map(|r| r.disk_mb),
        );
        println!();
    }

    async fn backlog(&self) {
        let n = self.args.events;
        let intake = start_intake().await;
        intake.set_outage(true);
        let dir = tempfile::tempdir().expect("temp dir");
        let listen = free_local_addr();
        let config = self.write_config(dir.path(), &intake, listen);
        let queue_dir = dir.path().join("queue");

        // 1. Intake down: everything is polled into the queue.
        let served_before = self.api.events_served();
        let started = Instant::now();
        let mut agent = spawn_agent(&self.args.binary, &self.args.agent_env, &config, dir.path());
        let pid = agent.id();
        let deadline = started + Duration::from_secs(60 + n as u64 / 2_000);
        wait_for(
            &mut agent,
            deadline,
            "the backlog was not polled in time",
            Duration::from_millis(5),
            || self.api.events_served() >= served_before + n as u64,
        )
        .await;
        // Served is not yet queued: the agent's status says when the last page is committed.
        while queued_events(listen).await < n as u64 {
            if Instant::now() > deadline || agent.exited().is_some() {
                panic!(
                    "the backlog was not queued in time:\n{}",
                    agent.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let queued_in = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid);
        // Let a second of idle pass (the forwarder keeps retrying the intake) and look at memory again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = status_field(pid, "VmRSS:") as f64 / 1024.0;
        let hwm = status_field(pid, "VmHWM:") as f64 / 1024.0;
        let disk = disk_usage(&queue_dir);
        println!(
            "backlog: {n} events ({:.1} MB raw) queued in {queued_in:.2} s ({:.0} events/s, CPU {:.2} s, \
             {:.2} s per million); with the backlog: RSS {rss:.1} MB, peak RSS {hwm:.1} MB; \
             queue on disk {:.1} MB = {:.2}x the raw bytes; load {}",
            self.raw_bytes as f64 / 1e6,
            n as f64 / queued_in,
            cpu,
            cpu * 1e6 / n as f64,
            disk as f64 / 1e6,
            disk as f64 / self.raw_bytes as f64,
            load_average()
        );

        // 2. kill -9, the intake comes back, restart.
        let _ = agent.kill_9();
        let disk_after_kill = disk_usage(&queue_dir);
        intake.set_outage(false);
        let received_before = intake.received_count();
        let restarted = Instant::now();
        let mut agent = spawn_agent(&self.args.binary, &self.args.agent_env, &config, dir.path());
        let pid = agent.id();
        let deadline = restarted + Duration::from_secs(60 + n as u64 / 2_000);
        wait_for(
            &mut agent,
            deadline,
            "nothing forwarded after the restart",
            Duration::from_millis(1),
            || intake.accepted_batches() > 0,
        )
        .await;
        let first_batch = restarted.elapsed().as_secs_f64();
        wait_for(
            &mut agent,
            deadline,
            "the backlog did not drain in time",
            Duration::from_millis(5),
            || intake.received_count() >= received_before + n,
        )
        .await;
        let drained_in = restarted.elapsed().as_secs_f64();
        let drain_cpu = cpu_seconds(pid);
        let drain_hwm = status_field(pid, "VmHWM:") as f64 / 1024.0;
        let disk_drained = disk_usage(&queue_dir);
        terminate(&mut agent).await;
        println!(
            "restart after kill -9 with the backlog (disk {:.1} MB): first batch forwarded after \
             {first_batch:.3} s; drained in {drained_in:.2} s ({:.0} events/s, CPU {drain_cpu:.2} s, \
             {:.2} s per million, peak RSS {drain_hwm:.1} MB); queue on disk after the drain {:.1} MB; \
             {} duplicates; load {}",
            disk_after_kill as f64 / 1e6,
            n as f64 / drained_in,
            drain_cpu * 1e6 / n as f64,
            disk_drained as f64 / 1e6,
            intake.received_count() as i64 - (received_before + n) as i64,
            load_average()
        );
        println!(
            "bench process (stand-ins, generator) CPU: {:.1} s",
            self_cpu_seconds() - self.bench_start_cpu
        );
    }

    /// The agent's configuration: the defaults, as a user has them: only the URLs, the keys and
    /// `data_dir` are set (and the local endpoint's port, so that a bench never collides with an agent on
    /// the default one), plus the `--set` overrides of an experiment.
    fn write_config(&self, dir: &Path, intake: &IntakeStandIn, listen: SocketAddr) -> PathBuf {
        let mut config = ConfigBuilder::new(&dir.join("queue"))
            .jumpcloud(&self.api.base_url(), API_KEY)
            .sekoia(&intake.base_url(), INTAKE_KEY)
            .set("api.listen", listen.to_string());
        for (path, value) in &self.args.overrides {
            config = config.set(path, value.clone());
        }
        let path = dir.join("config.toml");
        config.write(&path).expect("config written");
        path
    }
}

/// What the API's pace allows. At a ceiling of `c` requests a second, at most `k = floor(c)` leave in any
/// `k / c` seconds (`source::pacing`; one at a time, `1 / c` apart, when `min_request_interval` is set),
/// so the last of `requests` leaves at least `floor((requests - 1) / k) * k / c` seconds after the first.
fn pace_bound(events: usize, requests: u64, config: &Path) -> String {
    let pace = Config::load(config).ok().and_then(|loaded| {
        loaded.config.streams.first().map(|s| {
            let ceiling = s.jumpcloud.request_ceiling();
            let window = if s.jumpcloud.min_request_interval.is_zero() {
                ceiling.floor().max(1.0) as u64
            } else {
                1
            };
            (ceiling, window)
        })
    });
    match pace {
        Some((ceiling, window)) if requests > 1 => {
            let floor = ((requests - 1) / window * window) as f64 / ceiling;
            format!(
                "{requests} events requests at most {window} in any {:.2} s: the last leaves at least {floor:.2} s \
                 after the first, so the pace allows at most {:.0} events/s end to end",
                window as f64 / ceiling,
                events as f64 / floor
            )
        }
        _ => format!("{requests} events requests"),
    }
}

async fn start_intake() -> IntakeStandIn {
    IntakeStandIn::start(IntakeOptions {
        intake_key: INTAKE_KEY.into(),
        keep_events: false,
        ..IntakeOptions::default()
    })
    .await
    .expect("intake stand-in")
}

/// The events the agent at `listen` has queued (0 until it answers).
async fn queued_events(listen: SocketAddr) -> u64 {
    let Ok(Some((status, body))) = ask_agent(listen, Method::GET, "/status", None).await else {
        return 0;
    };
    if status != http::StatusCode::OK {
        return 0;
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|status| status["queue"]["events"].as_u64())
        .unwrap_or(0)
}

/// Checks `done` every `every` until it holds; fails the bench, with the agent's log, if the agent exits
/// or `deadline` passes first.
async fn wait_for(
    agent: &mut AgentProcess,
    deadline: Instant,
    what: &str,
    every: Duration,
    done: impl FnMut() -> bool,
) {
    if let Err(err) = agent.wait_for(deadline, every, what, done).await {
        panic!("{err:#}");
    }
}

/// SIGTERM (a clean stop), then waits.
async fn terminate(agent: &mut AgentProcess) {
    if let Err(err) = agent.stop(Duration::from_secs(30)).await {
        eprintln!("{err:#}");
    }
}

/// Bytes allocated on disk under `dir` (blocks, not apparent sizes: sled's files may be sparse).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

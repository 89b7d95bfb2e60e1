//! Shared test harness: both stand-ins on 127.0.0.1, a temporary queue folder, and the agent run in-process
//! (or the binary run as a child) against them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jcdi_forwarder::config::Config;
use jcdi_forwarder::metrics::Metrics;
use jcdi_forwarder::queue::Queue;
use jcdi_forwarder::shutdown::{self, ShutdownTrigger};
use jcdi_forwarder::standin::{ApiEvent, ApiOptions, ApiStandIn, IntakeOptions, IntakeStandIn};
use tokio::task::JoinHandle;

pub const SECOND: i64 = 1_000_000_000;
pub const API_KEY: &str = "test-api-key-3f9a";
pub const INTAKE_KEY: &str = "test-intake-key-77c1";

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().expect("in range")
}

pub struct Harness {
    pub api: ApiStandIn,
    pub intake: IntakeStandIn,
    pub dir: tempfile::TempDir,
    /// Where the agent's metrics/health/status endpoint listens.
    pub admin: std::net::SocketAddr,
}

/// A port that was free a moment ago (tests run in parallel: never use the fixed default port).
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_intake(IntakeOptions::default()).await
    }

    pub async fn with_intake(intake: IntakeOptions) -> Harness {
        let api = ApiStandIn::start(ApiOptions {
            api_key: API_KEY.into(),
            ..ApiOptions::default()
        })
        .await
        .expect("API stand-in");
        let intake = IntakeStandIn::start(IntakeOptions {
            intake_key: INTAKE_KEY.into(),
            ..intake
        })
        .await
        .expect("intake stand-in");
        Harness {
            api,
            intake,
            dir: tempfile::tempdir().expect("temp dir"),
            admin: free_local_addr(),
        }
    }

    /// A configuration for the stand-ins; `extra` lines are appended to `[jumpcloud]` (before) and
    /// `[sekoia]` (after the separator `---`).
    pub fn config_text(&self, jumpcloud_extra: &str, sekoia_extra: &str) -> String {
        let mut jumpcloud = HashMap::from([
            ("poll_interval", "\"1s\"".to_string()),
            ("page_size", "100".to_string()),
            ("initial_lookback", "\"3h\"".to_string()),
            ("overlap", "\"60s\"".to_string()),
            ("min_request_interval", "\"0s\"".to_string()),
            ("retry_initial", "\"100ms\"".to_string()),
            ("retry_max", "\"1s\"".to_string()),
        ]);
        for line in jumpcloud_extra.lines().filter(|l| !l.trim().is_empty()) {
            if let Some((key, value)) = line.split_once('=') {
                jumpcloud.insert(leak(key.trim()), value.trim().to_string());
            }
        }
        let jumpcloud: String = jumpcloud
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        format!(
            "data_dir = {:?}\n[jumpcloud]\nbase_url = \"{}\"\napi_key = \"${{JC_KEY:-{API_KEY}}}\"\n{jumpcloud}\
             [sekoia]\nintake_url = \"{}\"\nintake_key = \"${{SK_KEY:-{INTAKE_KEY}}}\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n{sekoia_extra}\n[api]\nlisten = \"{}\"\n",
            self.dir.path().join("queue").display().to_string(),
            self.api.base_url(),
            self.intake.base_url(),
            self.admin,
        )
    }

    pub fn config(&self, jumpcloud_extra: &str, sekoia_extra: &str) -> Config {
        Config::parse(
            &self.config_text(jumpcloud_extra, sekoia_extra),
            "test",
            &|_| None,
        )
        .expect("test config is valid")
        .config
    }

    pub async fn open_queue(&self, config: &Config) -> Queue {
        jcdi_forwarder::agent::open_queue(config)
            .await
            .expect("queue opens")
    }
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_string().into_boxed_str())
}

/// The agent running in-process.
pub struct RunningAgent {
    pub metrics: Arc<Metrics>,
    trigger: ShutdownTrigger,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    pub fn start(config: &Config, queue: &Queue) -> RunningAgent {
        let metrics = Arc::new(Metrics::default());
        let (trigger, shutdown) = shutdown::channel();
        let (config, queue, m) = (config.clone(), queue.clone(), metrics.clone());
        let handle =
            tokio::spawn(
                async move { jcdi_forwarder::agent::run(&config, queue, m, shutdown).await },
            );
        RunningAgent {
            metrics,
            trigger,
            handle,
        }
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("the agent stops within its deadline")
            .expect("agent task")
            .expect("agent ran without error");
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the intake holds every expected event; panics with what is missing otherwise.
pub async fn wait_all_arrived(intake: &IntakeStandIn, expected: &[ApiEvent], timeout: Duration) {
    let arrived = wait_until(timeout, || {
        intake.received_count() >= expected.len() && missing(intake, expected).is_empty()
    })
    .await;
    if !arrived {
        let missing = missing(intake, expected);
        panic!(
            "{} of {} events never reached the intake; first missing: {:?}",
            missing.len(),
            expected.len(),
            missing.first().map(|raw| &raw[..raw.len().min(200)])
        );
    }
}

/// The raw texts of `expected` that the intake has not received byte for byte.
pub fn missing(intake: &IntakeStandIn, expected: &[ApiEvent]) -> Vec<String> {
    intake.with_received(|got| {
        let got: std::collections::HashSet<&str> = got.iter().map(String::as_str).collect();
        expected
            .iter()
            .filter(|e| !got.contains(e.raw.as_str()))
            .map(|e| e.raw.clone())
            .collect()
    })
}

/// How many received strings are repeats.
pub fn duplicates(intake: &IntakeStandIn) -> usize {
    intake.with_received(|got| {
        let unique: std::collections::HashSet<&String> = got.iter().collect();
        got.len() - unique.len()
    })
}

//! Test-only support on top of `jcdi_forwarder::harness`: the keys the stand-ins accept, the binary under
//! test, and [`Harness`], a test bed (both stand-ins, a temporary folder, a free port for the local endpoint)
//! whose configuration polls and retries fast.

pub mod network;
pub mod scripted;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jcdi_forwarder::config::Config;
use jcdi_forwarder::harness::{Binary, ConfigBuilder, StandIns};
use jcdi_forwarder::queue::Queue;
use jcdi_forwarder::standin::{ApiOptions, IntakeOptions};

pub use jcdi_forwarder::clock::now_ns;
pub use jcdi_forwarder::harness::{
    duplicates, missing, wait_all_arrived, wait_until, InProcessAgent,
};

pub const SECOND: i64 = 1_000_000_000;
pub const API_KEY: &str = "test-api-key-3f9a";
pub const INTAKE_KEY: &str = "test-intake-key-77c1";
/// How long a test waits for something that should happen within seconds.
pub const LONG: Duration = Duration::from_secs(60);

/// The binary cargo built for these tests.
pub fn binary() -> Binary {
    Binary::new(env!("CARGO_BIN_EXE_jcdi-forwarder"))
}

/// A port that was free a moment ago (tests run in parallel: never use the fixed default port).
pub fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// Both stand-ins (accepting [`API_KEY`] and [`INTAKE_KEY`]), a temporary folder and the local endpoint's
/// address. The stand-ins are reached through it: `h.api`, `h.intake`.
pub struct Harness {
    stand_ins: StandIns,
    pub dir: tempfile::TempDir,
    /// Where the agent's metrics/health/status endpoint listens.
    pub admin: SocketAddr,
}

impl std::ops::Deref for Harness {
    type Target = StandIns;

    fn deref(&self) -> &StandIns {
        &self.stand_ins
    }
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_intake(IntakeOptions::default()).await
    }

    pub async fn with_intake(intake: IntakeOptions) -> Harness {
        Harness::with(ApiOptions::default(), intake).await
    }

    /// Both stand-ins with options of the test's (the keys are set here).
    pub async fn with(api: ApiOptions, intake: IntakeOptions) -> Harness {
        let api = ApiOptions {
            api_key: API_KEY.into(),
            ..api
        };
        let intake = IntakeOptions {
            intake_key: INTAKE_KEY.into(),
            ..intake
        };
        Harness {
            stand_ins: StandIns::start(api, intake).await.expect("stand-ins"),
            dir: tempfile::tempdir().expect("temp dir"),
            admin: free_local_addr(),
        }
    }

    /// The test configuration: queue in the temporary folder, fast polling and retries, the local endpoint
    /// on [`Harness::admin`]. The keys can be replaced through the environment of a binary run (`JC_KEY`,
    /// `SK_KEY`).
    pub fn builder(&self) -> ConfigBuilder {
        self.stand_ins
            .config(&self.dir.path().join("queue"))
            .set("jumpcloud.api_key", format!("${{JC_KEY:-{API_KEY}}}"))
            .set("sekoia.intake_key", format!("${{SK_KEY:-{INTAKE_KEY}}}"))
            .poll_interval(Duration::from_secs(1))
            .page_size(100)
            .initial_lookback(Duration::from_secs(3 * 3600))
            .overlap(Duration::from_secs(60))
            .min_request_interval(Duration::ZERO)
            // The stand-in has no rate limit: the tests ask at the highest ceiling allowed.
            .set("jumpcloud.max_requests_per_second", 100)
            .api_retry(Duration::from_millis(100), Duration::from_secs(1))
            .intake_retry(Duration::from_millis(100), Duration::from_secs(1))
            .admin_listen(self.admin)
    }

    /// The test configuration, parsed.
    pub fn config(&self) -> Config {
        self.config_with(|builder| builder)
    }

    /// The test configuration with some settings changed, parsed.
    pub fn config_with(&self, change: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Config {
        change(self.builder())
            .parse()
            .expect("test config is valid")
    }

    /// Writes `builder`'s configuration to `config.toml` in the temporary folder; its path.
    pub fn write_config(&self, builder: &ConfigBuilder) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        builder.write(&path).expect("config written");
        path
    }

    pub async fn open_queue(&self, config: &Config) -> Queue {
        jcdi_forwarder::agent::open_queue(config)
            .await
            .expect("queue opens")
    }
}

/// How many events the agent whose local endpoint is `admin` has queued (from its status), once it
/// answers.
pub async fn queued_events(admin: SocketAddr) -> Option<u64> {
    let (status, body) =
        jcdi_forwarder::admin::ask_agent(admin, http::Method::GET, "/status", None)
            .await
            .ok()??;
    if status != 200 {
        return None;
    }
    let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
    status["queue"]["events"].as_u64()
}

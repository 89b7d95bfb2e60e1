//! The one harness that the integration tests, `demo` and the end-to-end bench share: start the stand-ins
//! ([`StandIns`]), build a configuration ([`ConfigBuilder`]), run the agent, as the binary
//! ([`Binary`], [`AgentProcess`]) or in-process ([`InProcessAgent`]), wait with a deadline ([`wait_until`])
//! and report what arrived ([`missing`], [`duplicates`], [`Arrival`]).
//!
//! It is part of the library (and so of the binary) because `demo` uses it; it asserts nothing: each failure
//! is an error that the caller turns into a test failure or an exit code. Everything listens on and talks
//! to 127.0.0.1 only, and a child process gets only the environment it is given.

mod arrival;
mod config;
mod in_process;
pub mod measure;
mod process;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::standin::{ApiOptions, ApiStandIn, IntakeOptions, IntakeStandIn};

pub use arrival::{duplicates, missing, wait_all_arrived, Arrival};
pub use config::{duration_value, path_value, ConfigBuilder};
pub use in_process::InProcessAgent;
pub use process::{AgentCommand, AgentProcess, Binary};

/// How often [`wait_until`] checks its condition.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// Checks `condition` every 50 ms until it holds or `timeout` passes; whether it held.
pub async fn wait_until(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    poll_until(Instant::now() + timeout, WAIT_STEP, condition).await
}

/// Checks `condition` every `every` until it holds or `deadline` passes; whether it held. It is checked
/// once more at the deadline, so that a slow check never loses the last chance.
pub async fn poll_until(
    deadline: Instant,
    every: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Both stand-ins, on 127.0.0.1, and the keys they accept.
pub struct StandIns {
    pub api: ApiStandIn,
    pub intake: IntakeStandIn,
    api_key: String,
    intake_key: String,
}

impl StandIns {
    pub async fn start(api: ApiOptions, intake: IntakeOptions) -> anyhow::Result<StandIns> {
        let api_key = api.api_key.clone();
        let intake_key = intake.intake_key.clone();
        let api = ApiStandIn::start(api)
            .await
            .context("starting the JumpCloud stand-in")?;
        let intake = IntakeStandIn::start(intake)
            .await
            .context("starting the intake stand-in")?;
        Ok(StandIns {
            api,
            intake,
            api_key,
            intake_key,
        })
    }

    /// A configuration with its queue in `data_dir` that polls this API and forwards to this intake, with
    /// the keys they accept.
    pub fn config(&self, data_dir: &Path) -> ConfigBuilder {
        ConfigBuilder::new(data_dir)
            .jumpcloud(&self.api.base_url(), &self.api_key)
            .sekoia(&self.intake.base_url(), &self.intake_key)
    }
}

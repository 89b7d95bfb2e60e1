//! The agent's binary as a child process: [`Binary`] makes commands for it, [`AgentCommand`] describes one
//! `jcdi-forwarder run` and [`AgentProcess`] is one running, its stderr in a log file.
//!
//! Invariants: a child gets only what it is given (`env_clear`, a minimal `PATH`, then the variables the
//! caller names), so that the caller's environment (`RUST_LOG`, proxies, `JCDI_FORWARDER_*`) never changes
//! what is tested or measured; an [`AgentProcess`] dropped while its child runs kills (SIGKILL) and reaps
//! it, so that a failing test leaves no agent behind. Signals go through `rustix` (no `unsafe` here).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The `PATH` a child gets: enough for the binary, which runs no other program.
const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The agent's binary.
#[derive(Debug, Clone)]
pub struct Binary {
    path: PathBuf,
}

impl Binary {
    /// Integration tests pass `env!("CARGO_BIN_EXE_jcdi-forwarder")`; the benches may pass another build.
    pub fn new(path: impl Into<PathBuf>) -> Binary {
        Binary { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command for the binary with a clean environment (a minimal `PATH` only) and stdin from /dev/null.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command
            .env_clear()
            .env("PATH", CHILD_PATH)
            .stdin(Stdio::null());
        command
    }

    /// `jcdi-forwarder run --config CONFIG`, stderr appended to `log` (kept across restarts).
    pub fn agent(&self, config: &Path, log: &Path) -> AgentCommand {
        AgentCommand {
            binary: self.clone(),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            log_level: None,
            env: Vec::new(),
        }
    }
}

/// How to start the agent; reusable, to start it again after a kill.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    binary: Binary,
    config: PathBuf,
    log: PathBuf,
    log_level: Option<String>,
    env: Vec<(OsString, OsString)>,
}

impl AgentCommand {
    /// `--log-level LEVEL` (the binary's default otherwise).
    pub fn log_level(mut self, level: &str) -> AgentCommand {
        self.log_level = Some(level.to_string());
        self
    }

    /// One variable of the agent's environment.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> AgentCommand {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts the agent.
    pub fn spawn(&self) -> anyhow::Result<AgentProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open the agent's log {}", self.log.display()))?;
        let mut command = self.binary.command();
        if let Some(level) = &self.log_level {
            command.args(["--log-level", level]);
        }
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.path.display()))?;
        Ok(AgentProcess {
            child,
            log: self.log.clone(),
        })
    }
}

/// A running agent (or one that has exited and not been dropped yet).
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has exited (reaped then), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, then waits for it: a crash, as far as the agent can tell.
    pub fn kill_9(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        self.child.kill()?;
        self.child.wait()
    }

    /// Sends SIGTERM (a clean stop) and returns at once.
    pub fn terminate(&self) -> std::io::Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("the child's process id is not a valid pid"))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        Ok(())
    }

    /// Waits up to `timeout` for it to exit; its status if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        super::wait_until(timeout, || {
            status = self.exited();
            status.is_some()
        })
        .await;
        status
    }

    /// SIGTERM, then waits up to `deadline` for it to exit. Past the deadline it is killed (SIGKILL) and the
    /// answer is an error with the end of its log.
    pub async fn stop(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        self.terminate()
            .context("cannot send SIGTERM to the agent")?;
        match self.wait_exit(deadline).await {
            Some(status) => Ok(status),
            None => {
                let _ = self.kill_9();
                anyhow::bail!(
                    "the agent did not stop within {deadline:?} of SIGTERM; its last log lines, newest first:\n{}",
                    self.log_tail(30)
                )
            }
        }
    }

    /// Checks `done` every `every` until it holds. An error, with the end of the agent's log, if the agent
    /// exits first or `deadline` passes (the agent is then killed); `what` says what was awaited.
    pub async fn wait_for(
        &mut self,
        deadline: Instant,
        every: Duration,
        what: &str,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let mut exited = None;
        let held = super::poll_until(deadline, every, || {
            if done() {
                return true;
            }
            exited = self.exited();
            exited.is_some()
        })
        .await;
        if let Some(status) = exited {
            anyhow::bail!(
                "{what}: the agent exited ({status}); its log:\n{}",
                self.log()
            );
        }
        if !held {
            let _ = self.kill_9();
            anyhow::bail!(
                "{what}; the agent's last log lines, newest first:\n{}",
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Everything it wrote on stderr so far (the log file is shared with earlier runs of the same command).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, newest first.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.join("\n")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.kill_9();
    }
}

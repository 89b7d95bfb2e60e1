//! A scripted JumpCloud for tests that need exact bytes on the wire (each request gets the next queued
//! answer, then empty pages), the agent binary run against it, and the checks those tests share. Everything
//! listens on 127.0.0.1.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jcdi_forwarder::harness::{wait_until, AgentProcess};
use jcdi_forwarder::standin::{IntakeOptions, IntakeStandIn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::binary;

pub const API_KEY: &str = "hostile-api-key-5e1f";
pub const INTAKE_KEY: &str = "hostile-intake-key-0b7a";
pub const LONG: Duration = Duration::from_secs(60);

// A scripted JumpCloud: each request gets the next queued answer, or an empty page when none is queued.

/// One answer, as raw bytes on the wire; the connection is closed after it.
#[derive(Clone)]
pub enum Reply {
    Bytes(Vec<u8>),
    /// Sent one byte per `Duration`.
    Drip(Vec<u8>, Duration),
    /// `first` is sent, then nothing until `release` is notified; then `rest`, or the connection is
    /// closed there when it is `None` (an answer cut off).
    Held {
        first: Vec<u8>,
        release: Arc<tokio::sync::Notify>,
        rest: Option<Vec<u8>>,
    },
}

#[derive(Default)]
pub struct Script {
    replies: Mutex<VecDeque<Reply>>,
    /// The body of every request, in order.
    queries: Mutex<Vec<String>>,
}

pub struct ScriptedApi {
    pub addr: SocketAddr,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedApi {
    pub async fn start() -> ScriptedApi {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let script = Arc::new(Script::default());
        let shared = script.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, shared.clone()));
            }
        });
        ScriptedApi { addr, script, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, reply: Reply) {
        self.script.replies.lock().expect("lock").push_back(reply);
    }

    pub fn push_times(&self, reply: Reply, times: usize) {
        for _ in 0..times {
            self.push(reply.clone());
        }
    }

    pub fn pending(&self) -> usize {
        self.script.replies.lock().expect("lock").len()
    }

    pub fn queries(&self) -> Vec<String> {
        self.script.queries.lock().expect("lock").clone()
    }
}

async fn answer(mut stream: TcpStream, script: Arc<Script>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_lowercase();
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = head[end..].to_vec();
    while body.len() < length {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        body.extend_from_slice(&buf[..n]);
    }
    // The late check's count and histogram requests are not part of any script: this API does not offer
    // them (the agent then re-reads its overlap window, as documented).
    let request_line = text.lines().next().unwrap_or_default();
    if request_line.contains("/events/count") || request_line.contains("/events/interval") {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        let _ = stream.shutdown().await;
        return;
    }
    script
        .queries
        .lock()
        .expect("lock")
        .push(String::from_utf8_lossy(&body).to_string());
    let reply = script
        .replies
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or_else(|| page(b"[]".to_vec(), &[]));
    match reply {
        Reply::Bytes(bytes) => {
            let _ = stream.write_all(&bytes).await;
        }
        Reply::Drip(bytes, every) => {
            for byte in bytes {
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        }
        Reply::Held {
            first,
            release,
            rest,
        } => {
            if stream.write_all(&first).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
            release.notified().await;
            if let Some(rest) = rest {
                let _ = stream.write_all(&rest).await;
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// A 200 answer with `body`, its length, and `headers`.
pub fn page(body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        bytes.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&body);
    Reply::Bytes(bytes)
}

pub fn events_page(events: &[String], request_id: &str) -> Reply {
    page(
        format!("[{}]", events.join(",")).into_bytes(),
        &[("X-Request-Id", request_id)],
    )
}

/// An event of `minutes` ago, as JumpCloud writes one.
pub fn event(id: &str, minutes: i64) -> String {
    let at = chrono::Utc::now() - chrono::Duration::minutes(minutes);
    format!(
        "{{\"id\":\"{id}\",\"timestamp\":\"{}\",\"service\":\"directory\",\"event_type\":\"user_login\",\"initiated_by\":{{\"username\":\"jdoe\"}}}}",
        at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
}

// ---------------------------------------------------------------------------------------------------------
// The binary.

/// The agent binary as these tests run it (on the shared harness), with its configuration file.
pub struct Agent {
    pub process: AgentProcess,
    pub config: PathBuf,
}

/// The configuration of a test: fast polling and retries; `jumpcloud` lines are added to `[jumpcloud]`,
/// `rest` after `[sekoia]`.
pub fn config_text(
    dir: &Path,
    base_url: &str,
    intake: &IntakeStandIn,
    jumpcloud: &str,
    rest: &str,
) -> String {
    format!(
        "data_dir = {:?}\n\
         [jumpcloud]\nbase_url = \"{base_url}\"\napi_key = \"{API_KEY}\"\npoll_interval = \"1s\"\npage_size = 100\n\
         initial_lookback = \"1h\"\noverlap = \"60s\"\nmin_request_interval = \"0s\"\nretry_initial = \"100ms\"\n\
         retry_max = \"500ms\"\n{jumpcloud}\n\
         [sekoia]\nintake_url = \"{}\"\nintake_key = \"{INTAKE_KEY}\"\nretry_initial = \"100ms\"\nretry_max = \"500ms\"\n\
         {rest}\n",
        dir.join("queue").display().to_string(),
        intake.base_url(),
    )
}

impl Agent {
    /// Runs `jcdi-forwarder run` with `config` written in `dir`, and `env` (the harness starts it with a
    /// clean environment: the proxy variables of this process are not passed on).
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Agent {
        let config = if config.contains("[api]") {
            config.to_string()
        } else {
            format!("{config}\n[api]\nenabled = false\n")
        };
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).expect("config written");
        let mut command = binary().agent(&config_path, &dir.join("agent.log"));
        for (name, value) in env {
            command = command.env(name, value);
        }
        Agent {
            process: command.spawn().expect("the binary starts"),
            config: config_path,
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub async fn wait_log(&self, needle: &str) -> String {
        let found = wait_until(LONG, || self.log().contains(needle)).await;
        let log = self.log();
        assert!(found, "the log never said {needle:?}:\n{log}");
        log
    }

    /// A field of `/proc/<pid>/status`, in kB.
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))
            .expect("the agent's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| {
                rest.trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// SIGTERM, then the log.
    pub async fn stop(&mut self) -> String {
        let status = self
            .process
            .stop(LONG)
            .await
            .expect("SIGTERM stops the agent");
        assert!(
            status.success(),
            "SIGTERM gives exit 0: {status:?}\n{}",
            self.log()
        );
        self.log()
    }

    /// `dead-letter export -` once stopped: one JSON object per dead letter.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        let output = binary()
            .command()
            .args(["dead-letter", "export", "-", "--config"])
            .arg(&self.config)
            .output()
            .expect("dead-letter export runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    }
}

pub async fn intake() -> IntakeStandIn {
    IntakeStandIn::start(IntakeOptions {
        intake_key: INTAKE_KEY.to_string(),
        ..IntakeOptions::default()
    })
    .await
    .expect("intake stand-in")
}

/// Waits until the intake holds `expected` (byte for byte), then checks it holds nothing else.
pub async fn assert_received_exactly(intake: &IntakeStandIn, expected: &[String]) {
    let arrived = wait_until(LONG, || {
        let got = intake.received();
        expected.iter().all(|e| got.contains(e))
    })
    .await;
    // Anything else would have come with them: the pages were read before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = intake.received();
    assert!(arrived, "missing events; the intake got {got:?}");
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut expected_sorted = expected.to_vec();
    expected_sorted.sort();
    assert_eq!(
        got_sorted, expected_sorted,
        "the intake got exactly the events"
    );
}

//! Hostile and malformed answers, through the binary: a JumpCloud that answers things that are not pages
//! of events, pages too large, events without timestamps; a proxy that refuses the tunnel; a certificate
//! for other names. Each test asserts the log, what reached the intake stand-in, and what was kept.
//!
//! Self-contained: the JumpCloud side is a scripted server here (it answers exactly the bytes a test
//! queues, then empty pages), the intake is the crate's stand-in, everything on 127.0.0.1.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jcdi_forwarder::harness::{wait_until, AgentProcess};
use jcdi_forwarder::standin::{IntakeOptions, IntakeStandIn};

use crate::support::binary;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const API_KEY: &str = "hostile-api-key-5e1f";
const INTAKE_KEY: &str = "hostile-intake-key-0b7a";
const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------
// A scripted JumpCloud: each request gets the next queued answer, or an empty page when none is queued.

/// One answer, as raw bytes on the wire; the connection is closed after it.
#[derive(Clone)]
enum Reply {
    Bytes(Vec<u8>),
    /// Sent one byte per `Duration`.
    Drip(Vec<u8>, Duration),
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    /// The body of every request, in order.
    queries: Mutex<Vec<String>>,
}

struct ScriptedApi {
    addr: SocketAddr,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedApi {
    async fn start() -> ScriptedApi {
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

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn push(&self, reply: Reply) {
        self.script.replies.lock().expect("lock").push_back(reply);
    }

    fn push_times(&self, reply: Reply, times: usize) {
        for _ in 0..times {
            self.push(reply.clone());
        }
    }

    fn pending(&self) -> usize {
        self.script.replies.lock().expect("lock").len()
    }

    fn queries(&self) -> Vec<String> {
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
    }
    let _ = stream.shutdown().await;
}

/// A 200 answer with `body`, its length, and `headers`.
fn page(body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
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

fn events_page(events: &[String], request_id: &str) -> Reply {
    page(
        format!("[{}]", events.join(",")).into_bytes(),
        &[("X-Request-Id", request_id)],
    )
}

/// An event of `minutes` ago, as JumpCloud writes one.
fn event(id: &str, minutes: i64) -> String {
    let at = chrono::Utc::now() - chrono::Duration::minutes(minutes);
    format!(
        "{{\"id\":\"{id}\",\"timestamp\":\"{}\",\"service\":\"directory\",\"event_type\":\"user_login\",\"initiated_by\":{{\"username\":\"jdoe\"}}}}",
        at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
}

// ---------------------------------------------------------------------------------------------------------
// The binary.

/// The agent binary as these tests run it (on the shared harness), with its configuration file.
struct Agent {
    process: AgentProcess,
    config: PathBuf,
}

/// The configuration of a test: fast polling and retries; `jumpcloud` lines are added to `[jumpcloud]`,
/// `rest` after `[sekoia]`.
fn config_text(
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
    fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Agent {
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

    fn log(&self) -> String {
        self.process.log()
    }

    async fn wait_log(&self, needle: &str) -> String {
        let found = wait_until(LONG, || self.log().contains(needle)).await;
        let log = self.log();
        assert!(found, "the log never said {needle:?}:\n{log}");
        log
    }

    /// A field of `/proc/<pid>/status`, in kB.
    fn status_kb(&self, field: &str) -> u64 {
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
    async fn stop(&mut self) -> String {
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
    fn dead_letters(&self) -> Vec<serde_json::Value> {
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

async fn intake() -> IntakeStandIn {
    IntakeStandIn::start(IntakeOptions {
        intake_key: INTAKE_KEY.to_string(),
        ..IntakeOptions::default()
    })
    .await
    .expect("intake stand-in")
}

/// Waits until the intake holds `expected` (byte for byte), then checks it holds nothing else.
async fn assert_received_exactly(intake: &IntakeStandIn, expected: &[String]) {
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

// ---------------------------------------------------------------------------------------------------------
// Pages that are not pages of events.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_are_not_events_are_never_sent_and_are_kept() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let e1 = event("mixed-1", 30);
    let e2 = event("plain-2", 20);
    // The issue's page, as many times as the agent asks; then the same values among an event (read again
    // through the overlap window, say); then a plain page.
    api.push_times(
        page(
            br#"[1,"two",null,[3]]"#.to_vec(),
            &[("X-Request-Id", "req-only")],
        ),
        5,
    );
    api.push(events_page(
        &[
            e1.clone(),
            "1".into(),
            "\"two\"".into(),
            "null".into(),
            "[3]".into(),
        ],
        "req-mixed",
    ));
    api.push(events_page(std::slice::from_ref(&e2), "req-plain"));
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Agent::start(
        dir.path(),
        &config_text(dir.path(), &api.base_url(), &intake, "", ""),
        &[],
    );
    assert_received_exactly(&intake, &[e1, e2]).await;
    let log = agent.stop().await;
    assert!(
        log.contains(
            "JumpCloud sent an unusable page (4 of its values are not events (JSON objects)): asking again (try 1 of 5)"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "JumpCloud's page held 4 values that are not events (JSON objects), 5 times in a row: they are never \
             sent; its bytes are kept in the dead-letter store as #"
        ) && log.contains("the page's events are collected and collection goes on"),
        "{log}"
    );
    assert_eq!(
        log.matches("values that are not events (JSON objects), 5 times")
            .count(),
        1,
        "kept once: {log}"
    );
    let queries = api.queries();
    assert!(queries.len() >= 7, "{queries:?}");
    assert!(
        queries[1..5].iter().all(|q| *q == queries[0]),
        "the same request asked again: {queries:?}"
    );
    let letters = agent.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]["event"],
        serde_json::json!([1, "two", null, [3]])
    );
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "not an event, kept for inspection and never sent: 4 of its values are not events"
        ) && reason.contains("request id req-only")
            && reason.contains("query {\"service\":[\"all\"]"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_answers_are_asked_again_kept_once_and_nothing_is_lost() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let html =
        b"<html><head><title>502 Bad Gateway</title></head><body>upstream down</body></html>"
            .to_vec();
    let html_page = |id: &str| {
        page(
            html.clone(),
            &[("Content-Type", "text/html"), ("X-Request-Id", id)],
        )
    };
    // One request answered four different ways, then HTML until it is given up on, twice.
    api.push(html_page("req-html-1"));
    api.push(page(
        b"[{\"id\":\"\xff\xfe\"}]".to_vec(),
        &[("X-Request-Id", "req-utf8")],
    ));
    api.push(page(
        format!("[{}]", event("cursor", 40)).into_bytes(),
        &[
            ("X-Limit", "1"),
            ("X-Result-Count", "1"),
            ("X-Search_after", "[17,\"abc"),
            ("X-Request-Id", "req-cursor"),
        ],
    ));
    api.push(page(
        b"{\"message\":\"internal error\"}".to_vec(),
        &[("X-Request-Id", "req-object")],
    ));
    api.push(html_page("req-html-5"));
    api.push_times(html_page("req-html-again"), 5);
    let (e3, e4) = (event("after-3", 10), event("after-4", 9));
    api.push(events_page(&[e3.clone(), e4.clone()], "req-good"));
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Agent::start(
        dir.path(),
        &config_text(dir.path(), &api.base_url(), &intake, "", ""),
        &[],
    );
    assert_received_exactly(&intake, &[e3, e4]).await;
    let log = agent.stop().await;
    let html_problem = format!(
        "HTML or XML, not JSON: expected value at line 1 column 1; {} bytes, Content-Type \"text/html\"",
        html.len()
    );
    for said in [
        format!("JumpCloud sent an unusable page ({html_problem}): asking again (try 1 of 5)"),
        "JumpCloud sent an unusable page (not UTF-8 text: invalid unicode code point at line 1 column 9; 13 bytes".to_string(),
        "JumpCloud sent an unusable page (X-Search_after is not JSON: ".to_string(),
        "JumpCloud sent an unusable page (a JSON object, not an array of events: ".to_string(),
        format!(
            "poll failed: JumpCloud sent an unusable page ({html_problem}), 5 times in a row for the same request \
             (last request id req-html-5): its bytes are kept in the dead-letter store as #"
        ),
        "(last request id req-html-again): its bytes were kept in the dead-letter store when it was first given \
         up on; nothing is skipped, asking again"
            .to_string(),
    ] {
        assert!(log.contains(&said), "the log never said {said:?}:\n{log}");
    }
    let letters = agent.dead_letters();
    assert_eq!(
        letters.len(),
        1,
        "kept once for the whole run of failures: {letters:?}"
    );
    assert_eq!(
        letters[0]["event"].as_str().map(str::as_bytes),
        Some(&html[..])
    );
    assert!(letters[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("request id req-html-5")));
    assert!(!log.contains(API_KEY) && !log.contains(INTAKE_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_transports_are_retried_and_nothing_is_lost() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    // A Content-Length that lies (more than is sent), a server that drips a byte a second, 60 KB of headers.
    api.push(Reply::Bytes(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n[{\"id\":\"cut".to_vec(),
    ));
    let Reply::Bytes(slow) = page(b"[]".to_vec(), &[]) else {
        unreachable!()
    };
    api.push(Reply::Drip(slow, Duration::from_secs(1)));
    let padding: Vec<(String, String)> = (0..600)
        .map(|n| (format!("X-Pad-{n}"), "x".repeat(90)))
        .collect();
    let padding: Vec<(&str, &str)> = padding
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    api.push(page(b"[]".to_vec(), &padding));
    let e5 = event("after-5", 5);
    api.push(events_page(std::slice::from_ref(&e5), "req-good"));
    let dir = tempfile::tempdir().expect("dir");
    let config = config_text(
        dir.path(),
        &api.base_url(),
        &intake,
        "request_timeout = \"2s\"",
        "",
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    assert_received_exactly(&intake, &[e5]).await;
    let log = agent.stop().await;
    let url = format!(
        "JumpCloud API at {}/insights/directory/v1/events did not answer: ",
        api.base_url()
    );
    for said in [
        format!("{url}the answer was cut off or unreadable: "),
        format!("{url}no answer within 2s"),
        format!("{url}client error (SendRequest): message head is too large"),
    ] {
        assert!(log.contains(&said), "the log never said {said:?}:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Size.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_response_bytes_is_refused_naming_the_setting() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let big = format!("[{}]", event(&"x".repeat(2 * 1024 * 1024), 5));
    api.push(page(big.clone().into_bytes(), &[]));
    let dir = tempfile::tempdir().expect("dir");
    let config = config_text(
        dir.path(),
        &api.base_url(),
        &intake,
        "max_response_bytes = \"1MiB\"",
        "",
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    let expected = format!(
        "JumpCloud's answer to {}/insights/directory/v1/events is larger than jumpcloud.max_response_bytes (the \
         answer announces {} bytes (Content-Length), over the limit of 1048576 bytes: not read): if its pages \
         really are this large, raise jumpcloud.max_response_bytes, or lower jumpcloud.page_size and \
         jumpcloud.catch_up_page_size",
        api.base_url(),
        big.len()
    );
    let log = agent.wait_log(&expected).await;
    let log = log
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_default()
        .to_string();
    assert!(log.contains("ERROR"), "a configuration error: {log}");
    agent.stop().await;
    assert_eq!(intake.received_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_event_costs_a_small_multiple_of_its_size() {
    const PAD: usize = 64 * 1024 * 1024;
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Agent::start(
        dir.path(),
        &config_text(dir.path(), &api.base_url(), &intake, "", ""),
        &[],
    );
    // The agent at rest, having polled: what it holds without the answer.
    assert!(
        wait_until(LONG, || api.queries().len() >= 2).await,
        "the agent polls"
    );
    let resting = agent.status_kb("VmHWM");
    let huge = format!(
        "{{\"id\":\"huge\",\"timestamp\":\"{}\",\"pad\":\"{}\"}}",
        (chrono::Utc::now() - chrono::Duration::minutes(3)).format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        "x".repeat(PAD)
    );
    let small = event("small", 3);
    let body = format!("[{huge},{small}]");
    let answer_kb = body.len() as u64 / 1024;
    api.push(page(body.into_bytes(), &[("X-Request-Id", "req-huge")]));
    drop(huge);
    assert_received_exactly(&intake, &[small]).await;
    agent
        .wait_log("event moved to the dead-letter store and kept there, never sent: the event is ")
        .await;
    let peak = agent.status_kb("VmHWM");
    let log = agent.stop().await;
    // Measured: about 4 answers (the answer read once, the queue's copy of the event and sled's, the event
    // read back from the queue and its dead letter). 5 leaves room for the allocator.
    assert!(
        peak.saturating_sub(resting) <= 5 * answer_kb,
        "one answer of {answer_kb} kB took {} kB beyond the {resting} kB at rest (over 5 times its size)\n{log}",
        peak - resting
    );
    assert!(api.pending() == 0);
}

// ---------------------------------------------------------------------------------------------------------
// Events without a timestamp.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_a_timestamp_are_delivered_counted_and_logged_once() {
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let untimed = [
        "{\"id\":\"no-time-1\",\"service\":\"sso\"}".to_string(),
        "{\"id\":\"no-time-2\",\"timestamp\":\"yesterday\"}".to_string(),
        "{\"id\":\"no-time-3\",\"timestamp\":null}".to_string(),
    ];
    let timed = event("timed", 4);
    api.push(events_page(
        &[untimed[0].clone(), timed.clone(), untimed[1].clone()],
        "req-a",
    ));
    api.push(events_page(&[untimed[2].clone()], "req-b"));
    let dir = tempfile::tempdir().expect("dir");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = config_text(
        dir.path(),
        &api.base_url(),
        &intake,
        "",
        &format!("[api]\nlisten = \"{admin}\"\n"),
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    let mut expected = untimed.to_vec();
    expected.push(timed);
    assert_received_exactly(&intake, &expected).await;
    let metrics = scrape(admin);
    let log = agent.stop().await;
    assert!(
        metrics.contains("jcdi_forwarder_events_without_timestamp_total{stream=\"default\"} 3"),
        "{metrics}"
    );
    let said = "JumpCloud sent events without a usable timestamp (for example the event with id \"no-time-1\"): \
                they are delivered, filed under the time they were read; \
                jcdi_forwarder_events_without_timestamp_total counts them (this is logged once)";
    assert_eq!(log.matches(said).count(), 1, "logged once: {log}");
}

/// `GET /metrics` of the agent's endpoint.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("asked");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("answer");
    text
}

// ---------------------------------------------------------------------------------------------------------
// A proxy that refuses.

/// A proxy stand-in that answers every CONNECT with `status_line` (and a body, as real proxies do), and
/// records the requests it got.
struct RefusingProxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefusingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RefusingProxy {
    async fn start(status_line: &'static str) -> RefusingProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&head).to_string());
                    let body = "<html><body>Access denied</body></html>";
                    let answer = format!(
                        "{status_line}\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\nWWW-Authenticate: Basic realm=\"tinyproxy\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RefusingProxy {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_answers_401_to_connect_names_the_credentials() {
    let proxy = RefusingProxy::start("HTTP/1.0 401 Unauthorized").await;
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let dir = tempfile::tempdir().expect("dir");
    let proxy_line = format!("proxy = \"http://agent:wr0ng-pass@{}\"", proxy.addr);
    let config = config_text(dir.path(), &api.base_url(), &intake, &proxy_line, "");
    let mut agent = Agent::start(dir.path(), &config, &[]);
    let expected = format!(
        "the proxy http://***@{} asks for credentials (401 Unauthorized) and refused those of the user \"agent\" \
         in jumpcloud.proxy: check the user and password there",
        proxy.addr
    );
    agent.wait_log(&expected).await;
    let log = agent.stop().await;
    assert!(!log.contains("wr0ng-pass"), "{log}");
    assert!(
        !log.contains("NO_PROXY") && !log.contains("allow-list"),
        "{log}"
    );
    let requests = proxy.requests();
    assert!(
        requests[0].starts_with(&format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n", api.addr))
            && requests[0].contains("Proxy-Authorization: Basic "),
        "{requests:?}"
    );
    assert!(api.queries().is_empty(), "nothing reached JumpCloud");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_of_the_environment_that_refuses_the_tunnel_names_the_allow_list_and_no_proxy() {
    let proxy = RefusingProxy::start("HTTP/1.1 403 Forbidden").await;
    let (api, intake) = (ScriptedApi::start().await, intake().await);
    let dir = tempfile::tempdir().expect("dir");
    let config = config_text(dir.path(), &api.base_url(), &intake, "", "");
    let proxy_url = format!("http://{}", proxy.addr);
    let mut agent = Agent::start(dir.path(), &config, &[("HTTP_PROXY", &proxy_url)]);
    let expected = format!(
        "the proxy http://{0} refused to open a tunnel (CONNECT) to {1} (403 Forbidden): ask for {1} to be \
         allowed through it (its allow-list), or list 127.0.0.1 in NO_PROXY if it must be reached directly",
        proxy.addr, api.addr
    );
    agent.wait_log(&expected).await;
    agent.stop().await;
    assert!(api.queries().is_empty(), "nothing reached JumpCloud");
}

// ---------------------------------------------------------------------------------------------------------
// A certificate for other names.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_other_names_lists_the_names_it_covers() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hostile test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![
        "other.example".to_string(),
        "*.other.example".to_string(),
    ])
    .expect("leaf params")
    .signed_by(&leaf_key, &ca, &ca_key)
    .expect("leaf certificate");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let front = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // The client refuses the certificate: the handshake ends there.
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    let intake = intake().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("CA written");
    let config = config_text(
        dir.path(),
        &format!("https://localhost:{port}"),
        &intake,
        &format!("ca_file = {:?}", ca_file.display().to_string()),
        "",
    );
    let mut agent = Agent::start(dir.path(), &config, &[]);
    agent
        .wait_log(
            "the TLS certificate of localhost is not valid for the name localhost: it covers \"other.example\", \
             \"*.other.example\"; check the URL (base_url, intake_url or region) of jumpcloud",
        )
        .await;
    agent.stop().await;
    front.abort();
}

//! What the operator's tools see of the agent, run as a separate process (the binary, as packaged) against
//! the stand-ins on 127.0.0.1:
//! - every metric the shipped alert rules and Grafana dashboard use is one the agent exports;
//! - a real Prometheus (Debian's `prometheus`), scraping the agent through an intake outage with the shipped
//!   rules, fires the forwarding alert and clears it once the intake is back (ignored unless asked for:
//!   it needs the prometheus binary, which .ci/run installs);
//! - the queue is private whatever the umask of the shell that starts the agent, and `validate` warns
//!   about a data_dir others can open.
//!
//! Self-contained: no shared harness module, paths from CARGO_MANIFEST_DIR.

use crate::support::binary;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jcdi_forwarder::standin::{ApiOptions, ApiStandIn, EventFactory, IntakeOptions, IntakeStandIn};

const API_KEY: &str = "monitoring-api-key-5d21";
const INTAKE_KEY: &str = "monitoring-intake-key-8e0b";
const SECOND_NS: i64 = 1_000_000_000;
/// The longest any wait below lasts before the test fails with what it saw (not a timing assertion:
/// everything normally happens within seconds).
const PATIENCE: Duration = Duration::from_secs(120);

fn monitoring_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/monitoring")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Both stand-ins on a runtime of their own (the test's thread makes blocking calls), a temporary folder
/// and a configuration for the agent.
struct World {
    /// Never read: held so that the stand-ins keep serving on it until the test ends.
    _runtime: tokio::runtime::Runtime,
    api: ApiStandIn,
    intake: IntakeStandIn,
    dir: tempfile::TempDir,
    admin: SocketAddr,
}

impl World {
    fn new(events: usize) -> World {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (api, intake) = runtime.block_on(async {
            let api = ApiStandIn::start(ApiOptions {
                api_key: API_KEY.into(),
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
            (api, intake)
        });
        let now = chrono::Utc::now().timestamp_nanos_opt().expect("in range");
        api.add_events(EventFactory::new(17).mix(
            events,
            now - 3600 * SECOND_NS,
            now - 30 * SECOND_NS,
        ));
        World {
            _runtime: runtime,
            api,
            intake,
            dir: tempfile::tempdir().expect("temp dir"),
            admin: free_local_addr(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    /// Writes the agent's configuration, `extra` tables at the end, and returns its path.
    fn write_config(&self, extra: &str) -> PathBuf {
        let text = format!(
            "data_dir = {data_dir:?}\n\
             [jumpcloud]\nbase_url = {api:?}\napi_key = {API_KEY:?}\npoll_interval = \"1s\"\npage_size = 100\n\
             initial_lookback = \"3h\"\noverlap = \"60s\"\nmin_request_interval = \"0s\"\n\
             retry_initial = \"100ms\"\nretry_max = \"1s\"\n\
             [sekoia]\nintake_url = {intake:?}\nintake_key = {INTAKE_KEY:?}\n\
             retry_initial = \"100ms\"\nretry_max = \"1s\"\n\
             [api]\nlisten = \"{admin}\"\n{extra}\n",
            data_dir = self.data_dir().display().to_string(),
            api = self.api.base_url(),
            intake = self.intake.base_url(),
            admin = self.admin,
        );
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).expect("config written");
        path
    }

    /// Starts `jcdi-forwarder run` under `umask` (through sh, which sets it the way a login shell does).
    fn start_agent(&self, umask: &str, extra_config: &str) -> Process {
        let config = self.write_config(extra_config);
        let log = self.dir.path().join("agent.log");
        Process::spawn(
            "agent",
            Command::new("sh")
                .arg("-c")
                .arg(format!("umask {umask} && exec \"$0\" run --config \"$1\""))
                .arg(binary().path())
                .arg(&config)
                .env_remove("JCDI_FORWARDER_CONFIG"),
            &log,
        )
    }

    /// Waits until the agent's endpoint answers /metrics; returns the text.
    fn wait_for_metrics(&self, agent: &mut Process) -> String {
        wait_for(PATIENCE, "the agent's /metrics", || {
            agent.assert_running();
            http_get(self.admin, "/metrics")
                .filter(|(status, _)| *status == 200)
                .map(|(_, body)| body)
        })
    }

    fn wait_all_forwarded(&self, agent: &mut Process, count: usize) {
        wait_for(PATIENCE, "every event at the intake", || {
            agent.assert_running();
            (self.intake.received_count() >= count).then_some(())
        });
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The runtime, dropped after this, ends its threads.
        self.api.shutdown();
        self.intake.shutdown();
    }
}

/// A child process that is killed when the test ends, whatever happens; its output goes to a log file that
/// failures print.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Process {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name,
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// SIGTERM, as systemd stops the agent, then waits for a clean exit.
    fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {}", self.child.id());
        let status = wait_for(PATIENCE, "the agent to stop", || {
            self.child.try_wait().expect("wait")
        });
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.name,
            self.log()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// Runs every query of the dashboard (its variables set to match all) against the Prometheus at `listen`:
/// each must be valid PromQL for it. Returns those that have no data.
fn empty_dashboard_queries(listen: SocketAddr) -> Vec<String> {
    let mut empty = Vec::new();
    for query in dashboard_queries() {
        let promql = query
            .replace("$__rate_interval", "20s")
            .replace("$instance", ".*")
            .replace("$stream", ".*");
        let (status, body) = http_get(
            listen,
            &format!("/api/v1/query?query={}", percent_encode(&promql)),
        )
        .expect("Prometheus answers");
        assert_eq!(status, 200, "{promql}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["status"], "success", "{promql}: {body}");
        if answer["data"]["result"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            empty.push(promql);
        }
    }
    empty
}

/// Calls `probe` every 100 ms until it returns something or `patience` runs out (then fails, naming `what`).
fn wait_for<T>(patience: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET (no chunked answers, the connection closes at the end): the status and the body,
/// or None when nothing listens yet.
fn http_get(addr: SocketAddr, path_and_query: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `jcdi_forwarder_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("jcdi_forwarder_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The sample names the exposition can hold, from its `# TYPE` lines: what a query may name.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(family), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_count", "_sum"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{family}{suffix}"));
        }
    }
    names
}

/// The PromQL of the dashboard: every `expr` of its panels.
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let path = monitoring_file("jcdi-forwarder.dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut queries = Vec::new();
    walk(&dashboard, &mut queries);
    queries
}

/// The metric names of the rules' expressions and of the dashboard's queries and variables.
fn used_metric_names() -> BTreeSet<String> {
    let rules = read(&monitoring_file("jcdi-forwarder.rules.yml"));
    let expressions: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = metric_names(&expressions);
    for query in dashboard_queries() {
        names.extend(metric_names(&query));
    }
    let dashboard = read(&monitoring_file("jcdi-forwarder.dashboard.json"));
    // The template variables' label_values(...) queries.
    for line in dashboard.lines().filter(|l| l.contains("\"definition\"")) {
        names.extend(metric_names(line));
    }
    names
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    // prometheus-client leaves out a labelled family until its first sample: the run goes through every
    // path the rules watch (failed sends, a full queue that pauses polling, a dead letter).
    let world = World::new(300);
    let now = chrono::Utc::now().timestamp_nanos_opt().expect("in range");
    world
        .api
        .add_events([EventFactory::new(18).big_event(now - 120 * SECOND_NS, 300 * 1024)]);
    world.intake.set_outage(true);
    let mut agent = world.start_agent("077", "[queue]\nmax_bytes = \"50KiB\"");
    let has = |text: &str, family: &str| text.contains(&format!("{family}{{"));
    let text = wait_for(PATIENCE, "retries and a pause in /metrics", || {
        let text = world.wait_for_metrics(&mut agent);
        (has(&text, "jcdi_forwarder_polls_paused_queue_full_total")
            && has(&text, "jcdi_forwarder_retries_total"))
        .then_some(text)
    });
    assert_eq!(world.intake.received_count(), 0, "{text}");
    world.intake.set_outage(false);
    world.wait_all_forwarded(&mut agent, 300);
    let exposition = wait_for(PATIENCE, "a dead letter in /metrics", || {
        let text = world.wait_for_metrics(&mut agent);
        has(&text, "jcdi_forwarder_events_dead_lettered_total").then_some(text)
    });
    let exported = exported_names(&exposition);
    let used = used_metric_names();
    // The extraction itself works: names from the rules, the dashboard's panels and its variables.
    for name in [
        "jcdi_forwarder_intake_requests_total",
        "jcdi_forwarder_intake_request_duration_seconds_bucket",
        "jcdi_forwarder_build_info",
    ] {
        assert!(
            used.contains(name),
            "{name} not found in the rules or dashboard: {used:?}"
        );
    }
    assert!(
        exported.contains("jcdi_forwarder_events_forwarded_total"),
        "the exposition's TYPE lines were not understood:\n{exposition}"
    );
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the rules or the dashboard but not exported by the agent: {missing:?}\nexported: {exported:?}"
    );
    agent.stop();
}

#[test]
fn the_queue_is_private_whatever_the_umask() {
    let world = World::new(200);
    let mut agent = world.start_agent("022", "");
    world.wait_all_forwarded(&mut agent, 200);
    world.wait_for_metrics(&mut agent);
    agent.stop();

    let data_dir = world.data_dir();
    let mut seen = Vec::new();
    let mut exposed = Vec::new();
    let mut stack = vec![data_dir.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("readable");
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        if mode & 0o077 != 0 {
            exposed.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("listable") {
                stack.push(entry.expect("entry").path());
            }
        } else {
            seen.push(path.clone());
        }
    }
    assert!(
        seen.iter().any(|p| p.ends_with("db")) && seen.len() >= 2,
        "the queue's files were not found: {seen:?}"
    );
    assert!(
        exposed.is_empty(),
        "readable or writable by group or others under umask 022: {exposed:?}"
    );
    let dir_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&data_dir).expect("exists").permissions(),
    ) & 0o777;
    assert_eq!(dir_mode, 0o700, "data_dir");
}

#[test]
fn validate_creates_a_private_data_dir_and_warns_about_an_open_one() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new(0);
    let config = world.write_config("");
    let validate = || {
        Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$0\" validate --config \"$1\"")
            .arg(binary().path())
            .arg(&config)
            .env_remove("JCDI_FORWARDER_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("validate runs")
    };
    let first = validate();
    let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(first.status.success(), "{stderr}");
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        mode(&world.data_dir()),
        0o700,
        "created by validate under umask 022"
    );
    assert!(!stderr.contains("open to other users"), "{stderr}");

    std::fs::set_permissions(world.data_dir(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let second = validate();
    let stderr = String::from_utf8_lossy(&second.stderr).into_owned();
    assert!(
        second.status.success(),
        "a warning, not a problem: {stderr}"
    );
    assert!(
        stderr.contains("warning") && stderr.contains("open to other users (mode 755)"),
        "{stderr}"
    );
    assert!(stderr.contains("chmod o-rwx"), "{stderr}");
    assert_eq!(mode(&world.data_dir()), 0o755, "validate changes no mode");
}

/// The shipped rules with every `for:`, range and offset shortened to seconds, so that an alert fires and
/// clears within a test; the expressions and thresholds stay the shipped ones.
fn fast_rules(rules: &str) -> String {
    let mut out = String::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if let Some(duration) = trimmed.strip_prefix("for: ") {
            assert!(!duration.is_empty());
            out.push_str(&line[..line.len() - trimmed.len()]);
            out.push_str("for: 2s\n");
            continue;
        }
        out.push_str(&shorten_durations(line));
        out.push('\n');
    }
    out
}

/// `[10m]` → `[20s]` and `offset 1h` → `offset 20s` in one line.
fn shorten_durations(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    loop {
        let range = rest.find('[');
        let offset = rest.find("offset ");
        match (range, offset) {
            (Some(at), o) if o.is_none_or(|o| at < o) => {
                let Some(close) = rest[at..].find(']') else {
                    out.push_str(rest);
                    break;
                };
                out.push_str(&rest[..at]);
                out.push_str("[20s]");
                rest = &rest[at + close + 1..];
            }
            (_, Some(at)) => {
                let start = at + "offset ".len();
                let end = rest[start..]
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .map_or(rest.len(), |e| start + e);
                out.push_str(&rest[..at]);
                out.push_str("offset 20s");
                rest = &rest[end..];
            }
            _ => {
                out.push_str(rest);
                break;
            }
        }
    }
    out
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// The alerts Prometheus reports (name, state, labels).
fn alerts(prometheus: SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = http_get(prometheus, "/api/v1/alerts").expect("Prometheus answers");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    answer["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn firing<'a>(alerts: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .collect()
}

#[test]
#[ignore = "needs prometheus (apt-get install prometheus; .ci/run installs it and runs this test)"]
fn prometheus_fires_the_forwarding_alert_during_an_intake_outage_and_clears_it() {
    let Some(prometheus_bin) = find_program("prometheus") else {
        panic!("prometheus is not installed: apt-get install prometheus (.ci/run does)");
    };
    let world = World::new(500);
    world.intake.set_outage(true);
    let mut agent = world.start_agent("077", "");
    world.wait_for_metrics(&mut agent);

    let dir = world.dir.path();
    let rules = fast_rules(&read(&monitoring_file("jcdi-forwarder.rules.yml")));
    std::fs::write(dir.join("rules.yml"), &rules).expect("rules written");
    let listen = free_local_addr();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: jcdi-forwarder\n    static_configs:\n      - targets: [\"{}\"]\n",
            world.admin
        ),
    )
    .expect("config written");
    let mut prometheus = Process::spawn(
        "prometheus",
        Command::new(prometheus_bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn"),
        &dir.join("prometheus.log"),
    );
    wait_for(PATIENCE, "Prometheus to be ready", || {
        prometheus.assert_running();
        http_get(listen, "/-/ready").filter(|(status, _)| *status == 200)
    });
    // The rules loaded as shipped (all of them, none broken by the shortening).
    let (_, groups) = http_get(listen, "/api/v1/rules").expect("rules");
    let groups: serde_json::Value = serde_json::from_str(&groups).expect("JSON");
    let loaded = groups["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, rules.matches("- alert: ").count(), "{groups}");

    // The outage: the forwarding alert fires for the stream, and the agent is not reported down.
    let alert = wait_for(PATIENCE, "JcdiForwarderForwardingFailing to fire", || {
        prometheus.assert_running();
        agent.assert_running();
        firing(&alerts(listen), "JcdiForwarderForwardingFailing")
            .first()
            .map(|a| (*a).clone())
    });
    assert_eq!(alert["labels"]["stream"], "default", "{alert}");
    assert_eq!(alert["labels"]["job"], "jcdi-forwarder", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert!(
        alert["annotations"]["runbook"]
            .as_str()
            .is_some_and(|r| r.contains("Common problems")),
        "{alert}"
    );
    let now = alerts(listen);
    assert!(firing(&now, "JcdiForwarderDown").is_empty(), "{now:?}");
    assert!(
        firing(&now, "JcdiForwarderCollectionFailing").is_empty(),
        "{now:?}"
    );
    assert_eq!(
        world.intake.received_count(),
        0,
        "nothing passes the outage"
    );

    // The intake is back: everything arrives and the alert clears.
    world.intake.set_outage(false);
    world.wait_all_forwarded(&mut agent, 500);
    wait_for(PATIENCE, "JcdiForwarderForwardingFailing to clear", || {
        prometheus.assert_running();
        firing(&alerts(listen), "JcdiForwarderForwardingFailing")
            .is_empty()
            .then_some(())
    });

    // Every dashboard query is valid PromQL for this Prometheus, and those about the run have data. The
    // forwarding counters exist from the first event forwarded, after the outage: a rate needs two of
    // Prometheus's scrapes of them, which may come after the alert cleared, so the data is waited for.
    let expected = [
        "jcdi_forwarder_events_forwarded_total",
        "jcdi_forwarder_intake_requests_total",
    ];
    let lacking = |empty: &[String]| -> Vec<&str> {
        expected
            .into_iter()
            .filter(|name| empty.iter().any(|q| q.contains(name)))
            .collect()
    };
    let deadline = Instant::now() + PATIENCE;
    let mut empty = empty_dashboard_queries(listen);
    while !lacking(&empty).is_empty() && Instant::now() < deadline {
        prometheus.assert_running();
        std::thread::sleep(Duration::from_millis(500));
        empty = empty_dashboard_queries(listen);
    }
    assert!(
        lacking(&empty).is_empty(),
        "no data for {:?}: {empty:?}",
        lacking(&empty)
    );
    agent.stop();
    drop(prometheus);
}

#[test]
fn the_fast_rules_keep_the_expressions() {
    let shipped = read(&monitoring_file("jcdi-forwarder.rules.yml"));
    let fast = fast_rules(&shipped);
    assert_eq!(fast.lines().count(), shipped.lines().count());
    assert!(!fast.contains("[10m]") && !fast.contains("offset 1h") && !fast.contains("for: 5m"));
    assert_eq!(
        shorten_durations("increase(x[1h]) > 0 or (x > 0 unless x offset 1h)"),
        "increase(x[20s]) > 0 or (x > 0 unless x offset 20s)"
    );
    assert_eq!(metric_names(&fast), metric_names(&shipped));
}

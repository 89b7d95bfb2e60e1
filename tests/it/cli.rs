//! The binary as a user runs it: `validate`, `--help`, bad credentials, and a clean stop on SIGTERM.

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::support::*;
use jcdi_forwarder::harness::ConfigBuilder;
use jcdi_forwarder::standin::EventFactory;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn validate_lists_every_problem_of_a_broken_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
data_dir = "/tmp/jcdi-validate-test"
[jumpcloud]
api_key = "${JCDI_TEST_UNSET_VARIABLE}"
page_size = 0
poll_interval = "often"
sevices = ["sso"]
[sekoia]
intake_key = ""
batch_max_bytes = "100GiB"
"#,
    )
    .expect("written");
    let output = binary()
        .command()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("6 problems found"), "{all}");
    for expected in [
        "jumpcloud.api_key uses ${JCDI_TEST_UNSET_VARIABLE}, but the environment variable JCDI_TEST_UNSET_VARIABLE is not set",
        "jumpcloud.page_size = 0 is out of range: use 1 to 10000",
        "jumpcloud.poll_interval = \"often\" is not a duration",
        "jumpcloud.sevices is not a known key (did you mean \"services\"?)",
        "sekoia.intake_key is empty: set SEKOIA_INTAKE_KEY",
        "sekoia.batch_max_bytes = 107374182400 bytes is out of range",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(
        all.contains(&path.display().to_string()),
        "names the file: {all}"
    );
}

#[test]
fn validate_accepts_a_good_config_and_checks_the_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("good.toml");
    let data = dir.path().join("queue");
    ConfigBuilder::new(&data)
        .set("jumpcloud.api_key", "${JK}")
        .set("sekoia.intake_key", "${SK}")
        .write(&path)
        .expect("written");
    let output = binary()
        .command()
        .args(["validate", "--config"])
        .arg(&path)
        .env("JK", "jumpcloud-secret-value")
        .env("SK", "sekoia-secret-value")
        .output()
        .expect("runs");
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("valid"), "{all}");
    assert!(!all.contains("secret-value"), "no secret printed: {all}");
    assert!(data.is_dir(), "the data folder was created");

    // A data folder that cannot be created is a problem of its own.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").expect("written");
    ConfigBuilder::new(&blocker.join("queue"))
        .set("jumpcloud.api_key", "a")
        .set("sekoia.intake_key", "b")
        .write(&path)
        .expect("written");
    let output = binary()
        .command()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.contains("data_dir = ") && all.contains("cannot create it"),
        "{all}"
    );
}

#[test]
fn validate_summarises_every_stream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("streams.toml");
    std::fs::write(
        &path,
        format!(
            r#"data_dir = {:?}
[jumpcloud]
api_key = "k"
[sekoia]
intake_key = "i"
[sekoia.eu]
region = "fra2"
intake_key = "e"
[[streams]]
name = "acme"
org_id = "a1"
poll_interval = "30s"
[[streams]]
name = "globex"
region = "eu"
services = ["sso"]
destination = "eu"
"#,
            dir.path().join("queue").display().to_string()
        ),
    )
    .expect("written");
    let output = binary()
        .command()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("valid. 2 streams, queue in "), "{all}");
    assert!(
        all.contains(
            "  - acme: polls https://api.jumpcloud.com (org a1, services all) every 30s, \
             forwards to https://intake.sekoia.io/batch"
        ),
        "{all}"
    );
    assert!(
        all.contains(
            "  - globex: polls https://api.eu.jumpcloud.com (services sso) every 60s, \
             forwards to https://intake.fra2.sekoia.io/api/v1/intake-http/batch"
        ),
        "{all}"
    );
}

#[test]
fn help_and_version() {
    let help = binary().command().arg("--help").output().expect("runs");
    let all = text(&help);
    assert!(help.status.success());
    for command in ["run", "validate", "demo"] {
        assert!(all.contains(command), "{all}");
    }
    let version = binary().command().arg("--version").output().expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("jcdi-forwarder {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Runs the binary against the stand-ins until `ready`, then sends SIGTERM; returns its stderr.
async fn run_until(h: &Harness, env: &[(&str, &str)], ready: impl Fn() -> bool) -> String {
    let config = h.write_config(&h.builder());
    let mut command = binary().agent(&config, &h.dir.path().join("stderr.log"));
    for (name, value) in env {
        command = command.env(name, value);
    }
    let mut agent = command.spawn().expect("starts");
    assert!(
        wait_until(Duration::from_secs(30), ready).await,
        "the agent got going"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = agent
        .stop(Duration::from_secs(10))
        .await
        .expect("stops within its deadline");
    assert!(status.success(), "SIGTERM gives exit 0: {status:?}");
    agent.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_api_key_gives_one_clear_error_and_no_secret() {
    let h = Harness::new().await;
    let wrong = "wrong-api-key-0d1e";
    let log = run_until(&h, &[("JC_KEY", wrong)], || h.api.requests() >= 1).await;
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one clear error: {log}");
    assert!(
        errors[0].contains("JumpCloud rejected the API key (401 Unauthorized")
            && errors[0].contains("check jumpcloud.api_key (JUMPCLOUD_API_KEY)"),
        "{log}"
    );
    assert!(
        !log.contains(wrong) && !log.contains(API_KEY) && !log.contains(INTAKE_KEY),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_intake_key_gives_one_clear_error_keeps_the_events_and_no_secret() {
    let h = Harness::new().await;
    let now = now_ns();
    h.api
        .add_events(EventFactory::new(11).mix(50, now - 600 * SECOND, now - 60 * SECOND));
    let wrong = "wrong-intake-key-9a8b";
    let log = run_until(&h, &[("SK_KEY", wrong)], || h.intake.requests() >= 1).await;
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one clear error: {log}");
    assert!(
        errors[0].contains("Sekoia.io refused the intake key (401 Unauthorized)")
            && errors[0].contains("check sekoia.intake_key (SEKOIA_INTAKE_KEY)")
            && errors[0].contains("every event stays queued"),
        "{log}"
    );
    assert!(
        !log.contains(wrong) && !log.contains(API_KEY) && !log.contains(INTAKE_KEY),
        "{log}"
    );
    assert!(
        log.contains("agent stopped; queue flushed queued_events=50"),
        "{log}"
    );
    assert_eq!(h.intake.received_count(), 0);
}

#[test]
fn normalize_subcommand_streams_documents_and_reports_bad_lines() {
    use std::io::Write;
    let sample: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/vectors/normalize/sso_auth_success.json"),
        )
        .expect("sample vector present in tests/vectors"),
    )
    .expect("sample is JSON");
    let raw = sample["raw"].as_str().expect("raw text");
    let mut child = binary()
        .command()
        .arg("normalize")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{raw}\nnot json\n{raw}").expect("written");
    drop(stdin);
    let output = child.wait_with_output().expect("finishes");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a skipped line sets the exit code"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let docs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a document"))
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0], sample["expected"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("<stdin>:2:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_without_secrets() {
    let h = Harness::new().await;
    let wrong = "wrong-api-key-json-5c2d";
    let log = run_until(
        &h,
        &[("JC_KEY", wrong), ("JCDI_FORWARDER_LOG_FORMAT", "json")],
        || h.api.requests() >= 1,
    )
    .await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "ERROR"
        && l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("JumpCloud rejected the API key"))));
    assert!(!log.contains(wrong) && !log.contains(API_KEY) && !log.contains(INTAKE_KEY));
}

/// The allocator's settings are the binary's own: run with a clean environment (by hand, in a container),
/// it runs with them; an operator's own `glibc.malloc.*` tunables are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_settles_its_allocator_whoever_starts_it() {
    let h = Harness::new().await;
    let config = h.write_config(&h.builder());
    let environ_of = |agent: &jcdi_forwarder::harness::AgentProcess| {
        std::fs::read(format!("/proc/{}/environ", agent.id())).unwrap_or_default()
    };
    let has =
        |environ: &[u8], entry: &str| environ.split(|b| *b == 0).any(|e| e == entry.as_bytes());
    // glibc's loader splits GLIBC_TUNABLES in place at its colons: /proc shows the first setting as the
    // variable's value.
    let ours = jcdi_forwarder::allocator::TUNABLES
        .split(':')
        .next()
        .expect("a setting");
    for (given, expected) in [
        (None, format!("GLIBC_TUNABLES={ours}")),
        (
            Some("glibc.malloc.arena_max=8"),
            "GLIBC_TUNABLES=glibc.malloc.arena_max=8".to_string(),
        ),
    ] {
        let log = h.dir.path().join(format!("agent-{}.log", given.is_some()));
        let mut command = binary().agent(&config, &log);
        if let Some(tunables) = given {
            command = command.env("GLIBC_TUNABLES", tunables);
        }
        let mut agent = command.spawn().expect("starts");
        let up = wait_until(LONG, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("agent started"))
        })
        .await;
        assert!(up, "{}", agent.log_tail(20));
        let environ = environ_of(&agent);
        // Started again or not, the process has the binary's name (what `ps`, `pgrep` and `top` show).
        let name =
            std::fs::read_to_string(format!("/proc/{}/comm", agent.id())).unwrap_or_default();
        agent.stop(Duration::from_secs(30)).await.expect("stops");
        if cfg!(target_os = "linux") {
            assert_eq!(name.trim_end(), "jcdi-forwarder");
        }
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            let shown = String::from_utf8_lossy(&environ).into_owned();
            assert!(has(&environ, &expected), "{expected} in {shown:?}");
            let settled = has(&environ, "JCDI_FORWARDER_ALLOCATOR_SETTLED=1");
            assert_eq!(
                settled,
                given.is_none(),
                "started again only when needed: {shown:?}"
            );
        }
    }
}

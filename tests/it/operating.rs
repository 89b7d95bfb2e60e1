//! Operating the agent: metrics, health, status, dead letters and backfill, through the local endpoint
//! and the binary's subcommands.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use crate::support::*;
use http::Method;
use jcdi_forwarder::admin::ask_agent;
use jcdi_forwarder::config::Config;
use jcdi_forwarder::harness::ConfigBuilder;
use jcdi_forwarder::standin::{EventFactory, IntakeOptions, IntakeStandIn};

/// The test configuration with pages of 100 all along (no catch-up pages): the request counts below are
/// counted in pages of 100.
fn operating(h: &Harness) -> ConfigBuilder {
    h.builder().set("jumpcloud.catch_up_page_size", 100)
}

/// [`operating`] with some settings changed, written to `config.toml`: parsed, and its path.
fn config_with(
    h: &Harness,
    change: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> (Config, std::path::PathBuf) {
    let builder = change(operating(h));
    let path = h.write_config(&builder);
    (builder.parse().expect("valid"), path)
}

/// Runs a subcommand of the binary with `--config path`.
fn cli(path: &std::path::Path, args: &[&str]) -> Output {
    binary()
        .command()
        .args(args)
        .arg("--config")
        .arg(path)
        .output()
        .expect("runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of every sample line of the metrics text, by its name and labels.
async fn scrape(h: &Harness) -> HashMap<String, f64> {
    let mut answer = None;
    for _ in 0..100 {
        answer = ask_agent(h.admin, Method::GET, "/metrics", None)
            .await
            .expect("endpoint answers");
        if answer.is_some() {
            break;
        }
        // The agent starts listening a moment after it is spawned.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = answer.expect("endpoint listens");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_consistently_during_a_run() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(21).mix(700, now - 3600 * SECOND, now - 30 * SECOND);
    h.api.add_events(events.clone());
    let (config, _) = config_with(&h, |b| b);
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    let mut seen_polls = 0.0;
    // Scrape while it runs: the counters must agree at every scrape.
    for _ in 0..200 {
        let m = scrape(&h).await;
        let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
        let polled = get("jcdi_forwarder_events_polled_total{stream=\"default\"}");
        let queued = get("jcdi_forwarder_events_queued_total{stream=\"default\"}");
        let dedup = get("jcdi_forwarder_events_deduplicated_total{stream=\"default\"}");
        assert_eq!(polled, queued + dedup, "polled = queued + deduplicated");
        assert!(get("jcdi_forwarder_events_forwarded_total{stream=\"default\"}") <= queued);
        seen_polls = get("jcdi_forwarder_polls_completed_total{stream=\"default\"}");
        if h.intake.received_count() == events.len() && seen_polls >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_polls >= 2.0);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    // Let the forwarder count the last batch.
    assert!(wait_until(LONG, || agent.metrics.snapshot().events_forwarded == 700).await);
    let m = scrape(&h).await;
    assert_eq!(
        m["jcdi_forwarder_events_forwarded_total{stream=\"default\"}"],
        h.intake.received_count() as f64
    );
    assert_eq!(
        m["jcdi_forwarder_events_queued_total{stream=\"default\"}"],
        700.0
    );
    assert_eq!(m["jcdi_forwarder_queue_events"], 0.0);
    assert!(m["jcdi_forwarder_api_requests_total{stream=\"default\",outcome=\"ok\"}"] >= 7.0);
    assert!(m["jcdi_forwarder_collection_lag_seconds{stream=\"default\"}"] < 3600.0);
    assert!(m
        .keys()
        .any(|k| k.starts_with("jcdi_forwarder_build_info{version=")));
    assert!(
        m.contains_key("jcdi_forwarder_intake_request_duration_seconds_count{stream=\"default\"}")
    );
    agent.stop().await.expect("the agent stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_during_a_long_intake_outage_and_back() {
    let h = Harness::new().await;
    let now = now_ns();
    h.api
        .add_events(EventFactory::new(22).mix(50, now - 600 * SECOND, now - 30 * SECOND));
    let (config, _) = config_with(&h, |b| b.set("api.unhealthy_after", "1s"));
    let queue = h.open_queue(&config).await;
    let health = || async {
        let (status, body) = ask_agent(h.admin, Method::GET, "/health", None)
            .await
            .expect("answers")
            .expect("listens");
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    };
    h.intake.set_outage(true);
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || h.intake.requests() >= 1).await);
    let mut unhealthy = None;
    for _ in 0..100 {
        let (status, body) = health().await;
        if status == 503 {
            unhealthy = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = unhealthy.expect("503 after the threshold");
    assert!(
        body.contains("\"ok\":false") && body.contains("forwarding has failed"),
        "{body}"
    );
    h.intake.set_outage(false);
    assert!(wait_until(LONG, || h.intake.received_count() == 50).await);
    // The agent handles the intake's answer a moment after the intake recorded the events.
    let mut healthy = None;
    for _ in 0..100 {
        let (status, body) = health().await;
        if status == 200 {
            healthy = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = healthy.expect("200 again once the intake accepts");
    assert!(body.contains("\"ok\":true"), "{body}");
    agent.stop().await.expect("the agent stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_running_and_stopped() {
    let h = Harness::new().await;
    let now = now_ns();
    h.api
        .add_events(EventFactory::new(23).mix(40, now - 600 * SECOND, now - 30 * SECOND));
    let (config, path) = config_with(&h, |b| b);
    let queue = h.open_queue(&config).await;
    h.intake.set_intake_key("another-key");
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || queue.depth().events == 40).await);
    assert!(wait_until(LONG, || agent.metrics.snapshot().last_send_error.is_some()).await);

    let running = cli(&path, &["status"]);
    let text = stdout(&running);
    assert!(
        running.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&running.stderr)
    );
    assert!(text.contains("agent running (answered on"), "{text}");
    assert!(text.contains("queue: 40 events"), "{text}");
    assert!(text.contains("stream default: cursor 20"), "{text}");
    assert!(text.contains("Sekoia.io refused the intake key"), "{text}");
    assert!(!text.contains(INTAKE_KEY), "{text}");

    let json = cli(&path, &["status", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(value["agent_running"], true);
    assert_eq!(value["queue"]["events"], 40);
    assert_eq!(value["streams"][0]["name"], "default");

    agent.stop().await.expect("the agent stops cleanly");
    drop(queue);
    let stopped = cli(&path, &["status"]);
    let text = stdout(&stopped);
    assert!(
        stopped.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    assert!(text.contains("agent not running (read from"), "{text}");
    assert!(text.contains("queue: 40 events"), "{text}");
    assert!(text.contains("last successful send never"), "{text}");
    assert!(text.contains("dead letters: 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_export_retry_and_purge() {
    // The intake refuses events over 3,000 bytes: a 5,000-byte event is refused alone with 413.
    let h = Harness::with_intake(IntakeOptions {
        max_event_bytes: 3000,
        ..IntakeOptions::default()
    })
    .await;
    let now = now_ns();
    let mut factory = EventFactory::new(24);
    let events = factory.mix(60, now - 600 * SECOND, now - 60 * SECOND);
    let big = factory.big_event(now - 300 * SECOND, 5000);
    h.api
        .add_events(events.iter().cloned().chain([big.clone()]));
    let (config, path) = config_with(&h, |b| b);
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &events, LONG)
        .await
        .expect("every event arrives");
    assert!(wait_until(LONG, || queue.dead_letter_count() == 1).await);
    // Listed through the running agent.
    let listed = cli(&path, &["dead-letter", "list"]);
    assert!(
        stdout(&listed).contains("refused the event alone with 413"),
        "{}",
        stdout(&listed)
    );
    agent.stop().await.expect("the agent stops cleanly");
    drop(queue);

    // Stopped: export, then retry towards an intake that accepts it.
    let export = h.dir.path().join("dead.ndjson");
    let out = cli(
        &path,
        &["dead-letter", "export", export.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = std::fs::read_to_string(&export).expect("written");
    let line: serde_json::Value = serde_json::from_str(exported.trim()).expect("one JSON line");
    assert!(
        line["reason"].as_str().is_some_and(|r| r.contains("413")),
        "{line}"
    );
    assert!(
        exported.contains(&format!("\"event\":{}}}", big.raw)),
        "the event is exported byte for byte"
    );

    let refused = cli(&path, &["dead-letter", "purge"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "no --yes and no terminal: refused"
    );
    let retried = cli(&path, &["dead-letter", "retry"]);
    assert!(
        stdout(&retried).contains("1 dead letters put back"),
        "{}",
        stdout(&retried)
    );

    let roomy = IntakeStandIn::start(IntakeOptions {
        intake_key: INTAKE_KEY.into(),
        ..IntakeOptions::default()
    })
    .await
    .expect("intake");
    let config = operating(&h)
        .set("sekoia.intake_url", roomy.base_url())
        .parse()
        .expect("valid");
    let queue = h.open_queue(&config).await;
    assert_eq!(queue.dead_letter_count(), 0);
    let agent = InProcessAgent::start(&config, &queue);
    assert!(wait_until(LONG, || roomy.received().contains(&big.raw)).await);
    agent.stop().await.expect("the agent stops cleanly");

    // Purge with --yes (nothing left now: says so).
    drop(queue);
    let purge = cli(&path, &["dead-letter", "purge", "--yes"]);
    assert!(
        stdout(&purge).contains("no dead letters"),
        "{}",
        stdout(&purge)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_sends_nothing_twice_and_recovers_a_missed_window() {
    let h = Harness::new().await;
    let now = now_ns();
    let mut factory = EventFactory::new(25);
    // Collected normally (within the 3 h initial lookback)...
    let recent = factory.mix(150, now - 2 * 3600 * SECOND, now - 60 * SECOND);
    // ...and missed: older than the first poll's start.
    let missed = factory.mix(120, now - 6 * 3600 * SECOND, now - 4 * 3600 * SECOND);
    h.api.add_events(recent.iter().chain(&missed).cloned());
    let (config, path) = config_with(&h, |b| b);
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &recent, LONG)
        .await
        .expect("every event arrives");
    assert!(
        missing(&h.intake, &missed).len() == missed.len(),
        "the old window was missed"
    );

    // Through the running agent: the window already forwarded queues nothing.
    let again = cli(&path, &["backfill", "--from", "150m", "--to", "0s"]);
    let text = stdout(&again);
    assert!(
        again.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        text.contains("150 events read, 0 queued, 150 already queued or sent"),
        "{text}"
    );
    agent.stop().await.expect("the agent stops cleanly");
    drop(queue);

    // Stopped: the missed window is collected here, and forwarded at the next start.
    let recovered = cli(&path, &["backfill", "--from", "7h", "--to", "3h"]);
    let text = stdout(&recovered);
    assert!(
        recovered.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&recovered.stderr)
    );
    assert!(text.contains("120 events read, 120 queued"), "{text}");
    let queue = h.open_queue(&config).await;
    let agent = InProcessAgent::start(&config, &queue);
    wait_all_arrived(&h.intake, &missed, LONG)
        .await
        .expect("every event arrives");
    agent.stop().await.expect("the agent stops cleanly");
    assert_eq!(duplicates(&h.intake), 0, "no event was sent twice");
    drop(queue);

    let refused = cli(&path, &["backfill", "--from", "100d"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("older than JumpCloud's retention (90 days"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

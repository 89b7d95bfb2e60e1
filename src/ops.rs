//! Operating commands: `status`, `dead-letter`, `backfill`.
//!
//! sled lets one process open a queue, so each command first asks the running agent over its local
//! endpoint ([`crate::admin`]) and only when nothing answers there opens the queue itself.
//!
//! Invariants: destroying data (purge) asks for confirmation unless `--yes`; opening the queue as another
//! user than its owner is refused (files sled creates would then be unreadable by the service).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use http::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};

use crate::admin::{self, Status};
use crate::config::Config;
use crate::metrics::Reading;
use crate::queue::Queue;
use crate::source::backfill::{self, Progress};

/// What `dead-letter` does.
#[derive(clap::Subcommand, Debug)]
pub enum DeadLetterAction {
    /// One line per dead letter: sequence, when, size, reason.
    List,
    /// Write every dead letter as one JSON object per line (`-` for stdout).
    Export { file: std::path::PathBuf },
    /// Put every dead letter back at the tail of the queue, to be sent again.
    Retry,
    /// Delete every dead letter for good (asks first; --yes does not).
    Purge {
        #[arg(long)]
        yes: bool,
    },
}

/// Where a command's data comes from.
enum Target {
    Agent(std::net::SocketAddr),
    Local(Queue),
}

/// The running agent if its endpoint answers, else the queue on disk.
async fn reach(config: &Config) -> anyhow::Result<Target> {
    let mut agent_error = None;
    if let Some(addr) = config.api.listen.filter(|a| a.port() != 0) {
        match admin::ask_agent(addr, Method::GET, "/health", None).await {
            Ok(Some(_)) => return Ok(Target::Agent(addr)),
            Ok(None) => {}
            Err(err) => agent_error = Some(err),
        }
    }
    check_owner(&config.data_dir)?;
    match crate::agent::open_queue(config).await {
        Ok(queue) => Ok(Target::Local(queue)),
        Err(err) => match agent_error {
            Some(agent) => bail!("{err:#}; and the agent's endpoint did not answer: {agent}"),
            None => Err(err),
        },
    }
}

/// Refuses to open a queue owned by another user (typically root running a command on the service's
/// queue): sled would create files the service then cannot read.
fn check_owner(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let me = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|uid| uid.parse::<u32>().ok())
        });
    match me {
        Some(uid) if uid != meta.uid() => bail!(
            "{} belongs to uid {}, and this command runs as uid {uid}: run it as the agent's user \
             (sudo -u jcdi-forwarder jcdi-forwarder ...), or start the agent so that it answers",
            dir.display(),
            meta.uid()
        ),
        _ => Ok(()),
    }
}

async fn agent_json<T: serde::de::DeserializeOwned>(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<T> {
    let (status, body) = admin::ask_agent(addr, method, path, body)
        .await
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("the agent at {addr} stopped answering"))?;
    if !status.is_success() {
        bail!(
            "the agent answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).context("the agent's answer is not what this version expects")
}

/// `status [--json]`.
pub async fn status(config: Config, json: bool) -> anyhow::Result<()> {
    let status: Status = match reach(&config).await? {
        Target::Agent(addr) => agent_json(addr, Method::GET, "/status", None).await?,
        Target::Local(queue) => admin::status(&queue, &config, None),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_status(&status, &config));
    }
    Ok(())
}

fn seconds(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.max(0.0) as u64)).to_string()
}

/// The human form of [`Status`].
pub fn render_status(s: &Status, config: &Config) -> String {
    let mut out = String::new();
    let source = match (s.agent_running, config.api.listen) {
        (true, Some(addr)) => format!("agent running (answered on {addr})"),
        _ => format!("agent not running (read from {})", s.data_dir),
    };
    out.push_str(&format!("jcdi-forwarder {}: {source}\n", s.version));
    if let Some(health) = &s.health {
        if health.ok {
            out.push_str("health: ok\n");
        } else {
            out.push_str("health: UNHEALTHY\n");
            for reason in &health.reasons {
                out.push_str(&format!("  - {reason}\n"));
            }
        }
    }
    if s.streams.is_empty() {
        out.push_str("streams: none has polled yet\n");
    }
    for stream in &s.streams {
        out.push_str(&format!(
            "stream {}: cursor {} (lag {}), last successful poll {}\n",
            stream.name,
            stream.cursor.as_deref().unwrap_or("none"),
            stream.lag_seconds.map_or("-".to_string(), seconds),
            stream.last_poll_ok.as_deref().unwrap_or("never"),
        ));
        if let Some(reading) = stream.reading.filter(|r| r.read > 0) {
            out.push_str(&format!("  {}\n", render_reading(&reading)));
        }
        if let Some(error) = &stream.last_error {
            out.push_str(&format!("  last poll error: {error}\n"));
        }
        if s.streams.len() > 1 {
            out.push_str(&format!(
                "  last successful send {}\n",
                stream.last_send_ok.as_deref().unwrap_or("never")
            ));
        }
        if let Some(error) = &stream.last_send_error {
            out.push_str(&format!("  last send error: {error}\n"));
        }
    }
    let q = &s.queue;
    out.push_str(&format!(
        "queue: {} events, {} (limit {}), oldest waiting {}; {} on disk\n",
        q.events,
        bytesize::ByteSize(q.bytes),
        bytesize::ByteSize(q.limit_bytes),
        q.oldest_age_seconds.map_or("-".to_string(), seconds),
        bytesize::ByteSize(q.disk_bytes),
    ));
    match &s.outbox {
        Some(outbox) => out.push_str(&format!(
            "outbox: {} bundles ({}) in {} waiting to be carried away; last bundle sealed {}\n",
            outbox.bundles,
            bytesize::ByteSize(outbox.bytes),
            outbox.dir,
            s.last_send_ok.as_deref().unwrap_or("never")
        )),
        None => out.push_str(&format!(
            "forwarder: last successful send {}\n",
            s.last_send_ok.as_deref().unwrap_or("never")
        )),
    }
    out.push_str(&format!("dead letters: {}", q.dead_letters));
    if q.dead_letters > 0 {
        out.push_str(" (see `jcdi-forwarder dead-letter list`)");
    }
    out.push('\n');
    if q.recoveries_total > 0 {
        out.push_str(&format!(
            "queue recoveries: {} (last {})\n",
            q.recoveries_total,
            q.last_recovery.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// One stream's cost of collecting: events read from the API per event queued, since the agent started.
fn render_reading(r: &Reading) -> String {
    let ratio = r
        .read_per_queued()
        .map_or("nothing new yet".to_string(), |ratio| {
            format!("{ratio:.2} read per event queued")
        });
    let mut line = format!(
        "read {} events from JumpCloud, {} new: {ratio}",
        r.read, r.queued
    );
    if r.late > 0 {
        line.push_str(&format!("; {} found indexed late", r.late));
    }
    if r.late_check_fallbacks > 0 {
        line.push_str(&format!(
            "; {} polls read the whole overlap again (the late check could not run)",
            r.late_check_fallbacks
        ));
    }
    if r.pace > 0.0 {
        line.push_str(&format!("; pace {:.1} requests/s", r.pace));
    }
    line
}

/// `dead-letter list|export|retry|purge`.
pub async fn dead_letter(config: Config, action: DeadLetterAction) -> anyhow::Result<()> {
    let target = reach(&config).await?;
    match action {
        DeadLetterAction::List | DeadLetterAction::Export { .. } => {
            let lines = match &target {
                Target::Agent(addr) => {
                    let (status, body) =
                        admin::ask_agent(*addr, Method::GET, "/dead-letters", None)
                            .await
                            .map_err(anyhow::Error::msg)?
                            .ok_or_else(|| anyhow::anyhow!("the agent stopped answering"))?;
                    if status != StatusCode::OK {
                        bail!(
                            "the agent answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                    String::from_utf8_lossy(&body)
                        .lines()
                        .map(str::to_string)
                        .collect()
                }
                Target::Local(queue) => queue
                    .dead_letters()?
                    .iter()
                    .map(admin::dead_letter_line)
                    .collect::<Vec<_>>(),
            };
            match action {
                DeadLetterAction::Export { file } => export(&lines, &file),
                _ => {
                    list(&lines);
                    Ok(())
                }
            }
        }
        DeadLetterAction::Retry => {
            let retried = match &target {
                Target::Agent(addr) => {
                    let answer: serde_json::Value =
                        agent_json(*addr, Method::POST, "/dead-letters/retry", None).await?;
                    answer["retried"].as_u64().unwrap_or(0)
                }
                Target::Local(queue) => {
                    let n = queue.retry_dead_letters()?;
                    queue.flush().await?;
                    n
                }
            };
            println!("{retried} dead letters put back at the tail of the queue; the forwarder sends them next");
            Ok(())
        }
        DeadLetterAction::Purge { yes } => {
            let count = match &target {
                Target::Agent(addr) => {
                    let status: Status = agent_json(*addr, Method::GET, "/status", None).await?;
                    status.queue.dead_letters
                }
                Target::Local(queue) => queue.dead_letter_count(),
            };
            if count == 0 {
                println!("no dead letters");
                return Ok(());
            }
            if !yes && !confirm(&format!(
                "Delete {count} dead letters for good? They were never sent. (export them first with `dead-letter export FILE`)"
            ))? {
                bail!("nothing deleted");
            }
            let purged = match &target {
                Target::Agent(addr) => {
                    let answer: serde_json::Value =
                        agent_json(*addr, Method::POST, "/dead-letters/purge", None).await?;
                    answer["purged"].as_u64().unwrap_or(0)
                }
                Target::Local(queue) => {
                    let n = queue.purge_dead_letters()?;
                    queue.flush().await?;
                    n
                }
            };
            println!("{purged} dead letters deleted");
            Ok(())
        }
    }
}

fn list(lines: &[String]) {
    if lines.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:>10}  {:<20}  {:>9}  reason",
        "seq", "dead since", "bytes"
    );
    for line in lines {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        println!(
            "{:>10}  {:<20}  {:>9}  {}",
            value["seq"],
            value["dead_at"].as_str().unwrap_or("?"),
            value["event"].to_string().len(),
            value["reason"].as_str().unwrap_or("?")
        );
    }
}

fn export(lines: &[String], file: &std::path::Path) -> anyhow::Result<()> {
    let to_stdout = file.as_os_str() == "-";
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(file)
                .with_context(|| format!("cannot create {}", file.display()))?,
        ))
    };
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("exporting [{bar:30}] {pos}/{len} dead letters")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for line in lines {
        writeln!(out, "{line}")?;
        bar.inc(1);
    }
    out.flush()?;
    bar.finish_and_clear();
    if !to_stdout {
        eprintln!("{} dead letters written to {}", lines.len(), file.display());
    }
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to delete without confirmation: stdin is not a terminal (add --yes)");
    }
    eprint!("{question}\nType yes to confirm: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// Reads `2026-11-20T00:00:00Z` or a duration ago such as `48h`.
fn parse_time(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    match humantime::parse_duration(text.trim()) {
        Ok(ago) => Ok(chrono::Utc::now() - chrono::Duration::from_std(ago)?),
        Err(_) => bail!(
            "{text:?} is neither an RFC 3339 time (2026-11-20T00:00:00Z) nor a duration ago (48h)"
        ),
    }
}

/// `backfill --from T [--to T]`.
pub async fn backfill(
    config: Config,
    stream: Option<String>,
    from: String,
    to: Option<String>,
) -> anyhow::Result<()> {
    let stream = config
        .pick_stream(stream.as_deref())
        .map_err(anyhow::Error::msg)?
        .clone();
    let from = parse_time(&from).context("--from")?;
    let to = match to {
        Some(to) => parse_time(&to).context("--to")?,
        None => chrono::Utc::now(),
    };
    let (from_ns, to_ns) =
        backfill::check_window(from, to, stream.jumpcloud.retention).map_err(anyhow::Error::msg)?;
    if from < chrono::Utc::now() - chrono::Duration::from_std(config.queue.dedup_window)? {
        eprintln!(
            "note: the window starts before queue.dedup_window ({}): events older than that which were \
             already forwarded will be sent again",
            humantime::format_duration(config.queue.dedup_window)
        );
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "backfill [{bar:30}] {pos}/{len} events ({per_sec}, ETA {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let show = |progress: &Progress| {
        if let Some(total) = progress.total {
            bar.set_length(total.max(progress.polled));
        }
        bar.set_position(progress.polled);
        bar.set_message(format!(
            "{} new, {} already known",
            progress.queued, progress.duplicates
        ));
    };
    let target = reach(&config).await?;
    let ran_here = matches!(target, Target::Local(_));
    let progress = match target {
        Target::Agent(addr) => {
            let body = serde_json::json!({
                "from": from.to_rfc3339(),
                "to": to.to_rfc3339(),
                "stream": stream.name,
            })
            .to_string();
            let _: serde_json::Value =
                agent_json(addr, Method::POST, "/backfill", Some(body)).await?;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let progress: Progress = agent_json(addr, Method::GET, "/backfill", None).await?;
                show(&progress);
                if let Some(error) = &progress.error {
                    bar.abandon();
                    bail!("backfill failed: {error}");
                }
                if progress.done {
                    break progress;
                }
            }
        }
        Target::Local(queue) => {
            let http = crate::http::HttpClient::for_transport(
                Duration::from_secs(10),
                &stream.jumpcloud.transport,
            )
            .map_err(anyhow::Error::msg)?;
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
            let api = crate::source::api::ApiClient::new(http, &stream.jumpcloud)
                .map_err(anyhow::Error::msg)?
                .recording(crate::source::api::Recorder::new(
                    queue.clone(),
                    metrics.clone(),
                    &stream.name,
                ));
            let (trigger, shutdown) = crate::shutdown::channel();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                trigger.trigger();
            });
            let result = backfill::run(
                &api,
                &queue,
                &stream.jumpcloud,
                &stream.name,
                from_ns,
                to_ns,
                &metrics,
                &shutdown,
                &show,
            )
            .await;
            queue.flush().await?;
            match result {
                Ok(progress) => progress,
                Err(err) => {
                    bar.abandon();
                    bail!("backfill failed: {err}");
                }
            }
        }
    };
    bar.finish_and_clear();
    println!(
        "backfill done: {} events read, {} queued, {} already queued or sent",
        progress.polled, progress.queued, progress.duplicates
    );
    if ran_here && progress.queued > 0 {
        println!("the agent forwards them when it starts (systemctl start jcdi-forwarder)");
    }
    Ok(())
}

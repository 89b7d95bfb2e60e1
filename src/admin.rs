//! The local HTTP endpoint (`[api] listen`, 127.0.0.1:9464 by default) and the status model.
//!
//! Routes: `GET /metrics` (OpenMetrics text), `GET /health` (200 `{"ok":true,...}` or 503 with the reasons),
//! `GET /status` (JSON [`Status`]), and the admin actions the CLI uses while the agent holds the queue
//! (sled allows one process per database): `GET /dead-letters` (NDJSON), `POST /dead-letters/retry`,
//! `POST /dead-letters/purge`, `POST /backfill` and `GET /backfill`.
//!
//! Invariants: admin actions (POST) are refused unless they come from a loopback address, whatever
//! `listen` is; nothing here ever returns a secret; a slow or broken client cannot stop the agent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::config::{Config, StreamConfig};
use crate::metrics::{Health, Metrics, QueueView, Reading};
use crate::queue::{DeadLetter, Queue};
use crate::shutdown::Shutdown;
use crate::source::api::ApiClient;
use crate::source::backfill;

/// Everything the endpoint needs from the running agent.
pub struct AdminState {
    pub config: Config,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    /// Each stream's API client, for backfills.
    pub apis: Vec<(String, ApiClient)>,
    pub shutdown: Shutdown,
    pub backfill: Mutex<Option<backfill::Progress>>,
}

/// What `status` shows, whether it comes from the running agent or from the queue on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub agent_running: bool,
    pub version: String,
    pub data_dir: String,
    pub queue: QueueView,
    pub streams: Vec<StreamStatus>,
    pub last_send_ok: Option<String>,
    pub last_send_error: Option<String>,
    pub health: Option<Health>,
    /// With `[outbox]`: the sealed bundles still in its folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
}

/// The outbox folder in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub dir: String,
    /// Bundles in the folder (not yet carried away).
    pub bundles: u64,
    pub bytes: u64,
}

/// One stream in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamStatus {
    pub name: String,
    pub cursor: Option<String>,
    pub lag_seconds: Option<f64>,
    pub last_poll_ok: Option<String>,
    pub last_error: Option<String>,
    pub failing_for_seconds: Option<u64>,
    pub last_send_ok: Option<String>,
    pub last_send_error: Option<String>,
    /// Events read from the API and queued since the agent started (absent when it is not running, or
    /// from an agent of a version before it was shown).
    #[serde(default)]
    pub reading: Option<Reading>,
}

/// The queue's gauges, read now.
pub fn queue_view(queue: &Queue, config: &Config) -> QueueView {
    let depth = queue.depth();
    let oldest_age_seconds = queue
        .oldest_queued_at_ms()
        .ok()
        .flatten()
        .map(|at| now_ms().saturating_sub(at) as f64 / 1000.0);
    let cursors = queue
        .cursors()
        .unwrap_or_default()
        .into_iter()
        .map(|(name, cursor)| (name, cursor.watermark_ns as f64 / 1e9))
        .collect();
    let checkpoint = queue.checkpoint_file();
    QueueView {
        events: depth.events,
        bytes: depth.bytes,
        limit_bytes: config.queue.max_bytes,
        oldest_age_seconds,
        dead_letters: queue.dead_letter_count(),
        disk_bytes: queue.disk_bytes(),
        disk_free_bytes: queue.disk_free_bytes(),
        min_free_disk: config.queue.min_free_disk,
        cursors,
        recoveries_total: checkpoint.recoveries_total,
        last_recovery: checkpoint.recoveries.last().map(|r| r.describe()),
    }
}

fn time_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The status from the queue, and from the live metrics when the agent is this process.
pub fn status(queue: &Queue, config: &Config, live: Option<&Metrics>) -> Status {
    let view = queue_view(queue, config);
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let cursors = queue.cursors().unwrap_or_default();
    let states = live.map(Metrics::states).unwrap_or_default();
    let mut names: Vec<String> = cursors.iter().map(|(name, _)| name.clone()).collect();
    names.extend(states.keys().cloned());
    names.sort();
    names.dedup();
    let streams = names
        .into_iter()
        .map(|name| {
            let cursor = cursors.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
            let state = states.get(&name).cloned().unwrap_or_default();
            StreamStatus {
                cursor: cursor.map(|c| crate::clock::format_rfc3339_ns(c.watermark_ns)),
                lag_seconds: cursor.map(|c| (now - c.watermark_ns as f64 / 1e9).max(0.0)),
                // Stopped: the last page commit is the last successful poll we know of.
                last_poll_ok: state
                    .last_poll_ok_ms
                    .or(cursor.map(|c| c.updated_at_ms))
                    .map(time_ms),
                last_error: state.last_error,
                failing_for_seconds: state.failing_for_seconds,
                last_send_ok: state.last_send_ok_ms.map(time_ms),
                last_send_error: state.last_send_error,
                reading: live.map(|metrics| metrics.stream_reading(&name)),
                name,
            }
        })
        .collect();
    // Across streams: the latest success, and any current error.
    let last_send_ok = states
        .values()
        .filter_map(|s| s.last_send_ok_ms)
        .max()
        .or_else(|| queue.last_ack_ms().ok().flatten())
        .map(time_ms);
    let last_send_error = states.values().find_map(|s| s.last_send_error.clone());
    let health = live.map(|metrics| metrics.health(config.api.unhealthy_after, &view));
    Status {
        agent_running: live.is_some(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: config.data_dir.display().to_string(),
        queue: view,
        streams,
        last_send_ok,
        last_send_error,
        health,
        outbox: config.outbox.as_ref().map(|outbox| {
            let (bundles, bytes) = crate::outbox::writer::waiting(&outbox.dir);
            OutboxStatus {
                dir: outbox.dir.display().to_string(),
                bundles,
                bytes,
            }
        }),
    }
}

/// One dead letter as exported: metadata and the event itself (as JSON when it is JSON).
pub fn dead_letter_line(letter: &DeadLetter) -> String {
    let event = serde_json::value::RawValue::from_string(letter.raw.clone())
        .map(|raw| serde_json::to_string(&raw).unwrap_or_default())
        .unwrap_or_else(|_| serde_json::to_string(&letter.raw).unwrap_or_default());
    format!(
        "{{\"seq\":{},\"dead_at\":{:?},\"reason\":{},\"event\":{}}}",
        letter.seq,
        time_ms(letter.dead_at_ms),
        serde_json::to_string(&letter.reason).unwrap_or_default(),
        event
    )
}

/// Serves the endpoint until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    let shutdown = state.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("metrics endpoint: accept failed: {err}");
                    if !shutdown.sleep(Duration::from_millis(100)).await { break; }
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&state, request, peer).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(300), connection).await;
        });
    }
}

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    answer(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

#[derive(Deserialize)]
struct BackfillRequest {
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    /// Required when there are several streams.
    #[serde(default)]
    stream: Option<String>,
}

async fn route(
    state: &Arc<AdminState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if method == Method::POST && !peer.ip().is_loopback() {
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "admin actions are accepted from this host only"}),
        );
    }
    match (method, path.as_str()) {
        (Method::GET, "/metrics") => {
            let text = state
                .metrics
                .encode(&queue_view(&state.queue, &state.config));
            answer(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        (Method::GET, "/health") => {
            let health = state.metrics.health(
                state.config.api.unhealthy_after,
                &queue_view(&state.queue, &state.config),
            );
            let status = if health.ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &health)
        }
        (Method::GET, "/status") => json(
            StatusCode::OK,
            &status(&state.queue, &state.config, Some(&state.metrics)),
        ),
        (Method::GET, "/dead-letters") => match state.queue.dead_letters() {
            Ok(letters) => {
                let mut body = String::new();
                for letter in &letters {
                    body.push_str(&dead_letter_line(letter));
                    body.push('\n');
                }
                answer(StatusCode::OK, "application/x-ndjson", body)
            }
            Err(err) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": err.to_string()}),
            ),
        },
        (Method::POST, "/dead-letters/retry") => match state.queue.retry_dead_letters() {
            Ok(n) => json(StatusCode::OK, &serde_json::json!({"retried": n})),
            Err(err) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": err.to_string()}),
            ),
        },
        (Method::POST, "/dead-letters/purge") => match state.queue.purge_dead_letters() {
            Ok(n) => json(StatusCode::OK, &serde_json::json!({"purged": n})),
            Err(err) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": err.to_string()}),
            ),
        },
        (Method::GET, "/backfill") => match state.backfill.lock().ok().and_then(|b| b.clone()) {
            Some(progress) => json(StatusCode::OK, &progress),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no backfill has run"}),
            ),
        },
        (Method::POST, "/backfill") => start_backfill(state, request).await,
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "no such endpoint"}),
        ),
    }
}

async fn start_backfill(
    state: &Arc<AdminState>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": err.to_string()}),
            )
        }
    };
    let wanted: BackfillRequest = match serde_json::from_slice(&body) {
        Ok(wanted) => wanted,
        Err(err) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": format!("expected {{\"from\": RFC 3339, \"to\": RFC 3339}}: {err}")}),
            )
        }
    };
    let (stream, from_ns, to_ns) = match check_backfill(
        &state.config,
        wanted.stream.as_deref(),
        wanted.from,
        wanted.to,
    ) {
        Ok(checked) => checked,
        Err(err) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": err})),
    };
    let target = match state.apis.iter().find(|(name, _)| *name == stream.name) {
        Some((_, api)) => (stream.clone(), api.clone()),
        None => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "unknown stream"}),
            )
        }
    };
    {
        let Ok(mut current) = state.backfill.lock() else {
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": "state lock"}),
            );
        };
        if current
            .as_ref()
            .is_some_and(|p| !p.done && p.error.is_none())
        {
            return json(
                StatusCode::CONFLICT,
                &serde_json::json!({"error": "a backfill is already running"}),
            );
        }
        *current = Some(backfill::Progress::default());
    }
    let task_state = state.clone();
    tokio::spawn(async move {
        let (stream, api) = target;
        let s = &task_state;
        let report = |progress: &backfill::Progress| {
            if let Ok(mut current) = s.backfill.lock() {
                *current = Some(progress.clone());
            }
        };
        let result = backfill::run(
            &api,
            &s.queue,
            &stream.jumpcloud,
            &stream.name,
            from_ns,
            to_ns,
            &s.metrics,
            &s.shutdown,
            &report,
        )
        .await;
        if let Err(err) = result {
            tracing::error!("backfill failed: {err}");
            if let Ok(mut current) = s.backfill.lock() {
                if let Some(progress) = current.as_mut() {
                    progress.error = Some(err);
                }
            }
        }
    });
    json(StatusCode::ACCEPTED, &serde_json::json!({"started": true}))
}

/// Checks a backfill of `stream` (the one named, or the only one) over `from..to`: the stream is picked
/// first, so that the window is checked against the retention of the stream the backfill runs on. Returns
/// that stream and the window in nanoseconds.
pub fn check_backfill<'a>(
    config: &'a Config,
    stream: Option<&str>,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<(&'a StreamConfig, i64, i64), String> {
    let stream = config.pick_stream(stream)?;
    let (from_ns, to_ns) = backfill::check_window(from, to, stream.jumpcloud.retention)?;
    Ok((stream, from_ns, to_ns))
}

/// A request to the running agent's endpoint: `Ok(None)` when nothing listens there.
pub async fn ask_agent(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Option<(StatusCode, Bytes)>, String> {
    let exchange = async {
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
            Err(err) => return Err(format!("cannot reach the agent at {addr}: {err}")),
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|err| format!("the agent at {addr} did not answer: {err}"))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|err| err.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| format!("the agent at {addr} did not answer: {err}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("the agent's answer was cut off: {err}"))?
            .to_bytes();
        Ok(Some((status, body)))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("the agent at {addr} did not answer within 10 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpClient;
    use crate::standin::{ApiOptions, ApiStandIn};

    /// Three streams whose retentions differ; the first is neither the longest nor the shortest.
    fn three_retentions(base_url: &str) -> Config {
        let text = format!(
            r#"
[jumpcloud]
base_url = "{base_url}"
api_key = "demo-api-key"
min_request_interval = "0s"
[sekoia]
intake_key = "i"
[api]
enabled = false
[[streams]]
name = "fifteen"
retention = "15d"
[[streams]]
name = "thirty"
retention = "30d"
[[streams]]
name = "ten"
retention = "10d"
"#
        );
        Config::parse(&text, "t", &|_| None).expect("valid").config
    }

    async fn post_backfill(addr: SocketAddr, stream: &str, days_ago: i64) -> (StatusCode, String) {
        let now = chrono::Utc::now();
        let body = serde_json::json!({
            "from": (now - chrono::Duration::days(days_ago)).to_rfc3339(),
            "to": now.to_rfc3339(),
            "stream": stream,
        });
        let (status, body) = ask_agent(addr, Method::POST, "/backfill", Some(body.to_string()))
            .await
            .expect("the endpoint answers")
            .expect("the endpoint listens");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_backfill_window_is_checked_against_the_retention_of_its_own_stream() {
        let jumpcloud = ApiStandIn::start(ApiOptions::default())
            .await
            .expect("stand-in");
        let config = three_retentions(&jumpcloud.base_url());
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = Queue::open(dir.path()).expect("queue");
        let apis = config
            .streams
            .iter()
            .map(|stream| {
                let http = HttpClient::new(Duration::from_secs(5)).expect("client");
                let api = ApiClient::new(http, &stream.jumpcloud).expect("api client");
                (stream.name.clone(), api)
            })
            .collect();
        let (trigger, shutdown) = crate::shutdown::channel();
        let state = Arc::new(AdminState {
            config,
            queue,
            metrics: Arc::new(Metrics::new()),
            apis,
            shutdown,
            backfill: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(listener, state));

        // 12 days ago is within the first stream's 15 days, but not within the 10 days of "ten".
        let (status, said) = post_backfill(addr, "ten", 12).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{said}");
        assert!(
            said.contains("older than JumpCloud's retention (10 days"),
            "{said}"
        );

        // 20 days ago is beyond the first stream's 15 days, but within the 30 days of "thirty".
        let (status, said) = post_backfill(addr, "thirty", 20).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{said}");
        let progress = loop {
            let (status, body) = ask_agent(addr, Method::GET, "/backfill", None)
                .await
                .expect("the endpoint answers")
                .expect("the endpoint listens");
            assert_eq!(status, StatusCode::OK);
            let progress: backfill::Progress = serde_json::from_slice(&body).expect("progress");
            if progress.done || progress.error.is_some() {
                break progress;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(progress.error, None, "the backfill ran to its end");
        assert!(jumpcloud.requests() >= 1, "it asked JumpCloud");
        trigger.trigger();
        server.await.expect("the endpoint stops");
    }
}

//! The outbound HTTP client of the pollers and the forwarders: hyper 1 over rustls (the `ring` provider
//! only), system trust roots plus an optional `ca_file`, an optional HTTP proxy (CONNECT tunnel, basic
//! auth), a connect timeout and a deadline on every request. One client serves one destination section.
//!
//! Invariants:
//! - Every request has a deadline (`hyper_util`'s client has none of its own) and a cap on the answer's size;
//!   an answer is read into one buffer (sized from its `Content-Length`), never collected in pieces and
//!   copied, and one that announces more than the cap is refused unread.
//! - Only the headers the caller passes are sent; secrets go in exactly the header the API needs. Proxy
//!   credentials go only in the CONNECT request's `Proxy-Authorization`, never to the destination, and
//!   messages show proxies without them.
//! - TLS verification cannot be turned off. A certificate failure says which host, what is wrong with its
//!   certificate, and which setting (`<section>.ca_file`) fixes it ([`tls`]).
//! - A proxy's refusal says what it answered and what to fix ([`proxy`]).
//! - Requests go through the proxy with CONNECT whatever the destination's scheme: the proxy never sees a
//!   request, a header or a key, only the host and port to reach.

mod proxy;
mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{load_ca_file, Transport};
use proxy::ProxyConnector;
pub use tls::describe_tls_error;

/// Answers larger than this are refused, unless the caller sets its own limit ([`HttpClient::post_capped`]).
pub const MAX_RESPONSE_BYTES: u64 = 512 * 1024 * 1024;

/// What the agent says it is; never carries a secret.
pub const AGENT_USER_AGENT: &str = concat!("jcdi-forwarder/", env!("CARGO_PKG_VERSION"));

/// A failure before any HTTP status came back; always worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("the answer was cut off or unreadable: {0}")]
    Body(String),
    #[error("bad request built: {0}")]
    Request(String),
    /// The answer is larger than the caller's limit: refused unread (by its `Content-Length`) or cut
    /// where it passed the limit.
    #[error("{}", too_large_text(*.limit, *.declared))]
    TooLarge { limit: u64, declared: Option<u64> },
}

fn too_large_text(limit: u64, declared: Option<u64>) -> String {
    match declared {
        Some(length) if length > limit => format!(
            "the answer announces {length} bytes (Content-Length), over the limit of {limit} bytes: not read"
        ),
        _ => format!("the answer passed the limit of {limit} bytes: the rest was not read"),
    }
}

/// An answer with its body read in full.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// A header as text, if present and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After` in seconds, when the server sent one as a number.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    /// The body as text for error messages, cut to a readable length.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        let mut excerpt: String = text.chars().take(300).collect();
        if excerpt.len() < text.len() {
            excerpt.push('…');
        }
        excerpt
    }
}

/// A pooled HTTPS (and, for loopback stand-ins, HTTP) client for one destination section. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<ProxyConnector>, Full<Bytes>>,
    /// The section whose settings fix this client's transport (`jumpcloud`, `sekoia.acme`), for messages.
    section: Arc<str>,
}

/// The TLS settings for `transport`: the system's roots and its `ca_file`. Built once per `ca_file` and
/// shared (cloning a `ClientConfig` shares its verifier): an agent with hundreds of streams parses the
/// system's certificates once, not twice per stream.
fn tls_config(transport: &Transport) -> Result<rustls::ClientConfig, String> {
    static BUILT: OnceLock<Mutex<HashMap<Option<PathBuf>, rustls::ClientConfig>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let key = transport.ca_file.clone();
    if let Some(config) = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
    {
        return Ok(config.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!(error = %err, "could not load some system CA certificates");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = &transport.ca_file {
        let certs =
            load_ca_file(path).map_err(|why| format!("{}.ca_file {why}", transport.section))?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "{}.ca_file = {:?}: none of its {ignored} certificates can be used as a CA",
                transport.section,
                path.display().to_string()
            ));
        }
        tracing::debug!(ca_file = %path.display(), added, ignored, "extra CA certificates trusted");
    }
    if roots.is_empty() {
        tracing::warn!(
            section = %transport.section,
            "no trusted CA certificate at all (no system roots, no ca_file): every https connection will fail"
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS set-up failed: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key, config.clone());
    Ok(config)
}

/// The most a connection reads from its socket at once (hyper's default is about 408 KiB). hyper grows a
/// connection's read buffer while an answer streams in and allocates a new one whenever the previous one is
/// still held by a piece of the body on its way to the reader. Buffers this size stay below the
/// allocator's mmap threshold ([`crate::allocator::TUNABLES`]): they are reused from the heap instead of
/// being mapped, faulted in page by page and unmapped for every piece of a large page of events.
const READ_BUFFER_MAX: usize = 128 * 1024;

impl HttpClient {
    /// Direct connections, system roots only.
    pub fn new(connect_timeout: Duration) -> Result<HttpClient, String> {
        HttpClient::for_transport(connect_timeout, &Transport::direct())
    }

    /// A client that trusts the system's roots and `transport.ca_file`, and goes through its proxy.
    pub fn for_transport(
        connect_timeout: Duration,
        transport: &Transport,
    ) -> Result<HttpClient, String> {
        let tls = tls_config(transport)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let connector = ProxyConnector::new(http, &transport.proxy, &transport.section);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http1_max_buf_size(READ_BUFFER_MAX)
            .build(https);
        Ok(HttpClient {
            client,
            section: Arc::from(transport.section.as_str()),
        })
    }

    /// POSTs a JSON body and reads the whole answer, within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        self.post(url, "application/json", headers, body, timeout)
            .await
    }

    /// POSTs a body of `content_type` and reads the whole answer, within `timeout`.
    pub async fn post(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        self.post_capped(
            url,
            content_type,
            headers,
            body,
            timeout,
            MAX_RESPONSE_BYTES,
        )
        .await
    }

    /// [`HttpClient::post`] that refuses an answer larger than `max_bytes` ([`HttpError::TooLarge`]),
    /// without reading it when its `Content-Length` says so. The answer is read into one buffer: its
    /// size, plus at most one frame, is all the memory it takes.
    pub async fn post_capped(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Response, HttpError> {
        self.post_streamed(url, content_type, headers, body, timeout, max_bytes)
            .await?
            .read_all()
            .await
    }

    /// POSTs a body and returns the answer's status and headers, with its body still to read piece by
    /// piece ([`Streaming`]): the request, the head and every piece must come within `timeout`, not
    /// counting the time the caller spends between pieces ([`Streaming::paused`]). An answer that
    /// announces more than `max_bytes` is refused unread; one that sends more is cut off there.
    pub async fn post_streamed(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Streaming, HttpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, content_type)
            .header(USER_AGENT, AGENT_USER_AGENT);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|err| HttpError::Request(err.to_string()))?;
        let host = request.uri().host().unwrap_or("?").to_string();
        let response = tokio::time::timeout_at(deadline, self.client.request(request))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
            .map_err(|err| {
                HttpError::Transport(describe_client_error(&err, &host, &self.section))
            })?;
        let (parts, body) = response.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(length) = declared.filter(|&length| length > max_bytes) {
            return Err(HttpError::TooLarge {
                limit: max_bytes,
                declared: Some(length),
            });
        }
        Ok(Streaming {
            status: parts.status,
            headers: parts.headers,
            body,
            declared,
            max_bytes,
            received: 0,
            timeout,
            deadline,
        })
    }
}

/// An answer whose body is read piece by piece, within the request's deadline and size cap.
pub struct Streaming {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    declared: Option<u64>,
    max_bytes: u64,
    received: u64,
    timeout: Duration,
    deadline: tokio::time::Instant,
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let frame = tokio::time::timeout_at(self.deadline, self.body.frame())
                .await
                .map_err(|_| HttpError::Timeout(self.timeout))?;
            let Some(frame) = frame else {
                return Ok(None);
            };
            let frame = frame.map_err(|err| HttpError::Body(proxy::chain(&err)))?;
            // Trailers are not data: skip them.
            if let Ok(data) = frame.into_data() {
                self.received += data.len() as u64;
                if self.received > self.max_bytes {
                    return Err(HttpError::TooLarge {
                        limit: self.max_bytes,
                        declared: self.declared,
                    });
                }
                return Ok(Some(data));
            }
        }
    }

    /// The caller spent `spent` on the pieces read (queueing them, say): that time does not count
    /// against the request's deadline.
    pub fn paused(&mut self, spent: Duration) {
        self.deadline += spent;
    }

    /// Reads the rest of the body into one buffer (sized from `Content-Length` when there is one: memory
    /// the server never fills is never touched).
    pub async fn read_all(mut self) -> Result<Response, HttpError> {
        let mut buffer =
            BytesMut::with_capacity(self.declared.unwrap_or(0).min(self.max_bytes) as usize);
        while let Some(piece) = self.next_piece().await? {
            buffer.extend_from_slice(&piece);
        }
        Ok(Response {
            status: self.status,
            headers: self.headers,
            body: buffer.freeze(),
        })
    }
}

/// hyper's client errors hide the cause (refused, DNS, TLS, proxy) in the source chain: show the whole
/// chain, and turn a certificate failure into a message that says what to do.
fn describe_client_error(
    err: &hyper_util::client::legacy::Error,
    host: &str,
    section: &str,
) -> String {
    if let Some(tls) = tls::find_tls_error(err) {
        return describe_tls_error(tls, host, section);
    }
    proxy::chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `answer` (raw bytes) to every connection on 127.0.0.1; returns the URL.
    async fn serve(answer: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        format!("http://{addr}/")
    }

    async fn ask(answer: Vec<u8>, max_bytes: u64) -> Result<Response, HttpError> {
        let url = serve(answer).await;
        let client = HttpClient::new(Duration::from_secs(5)).expect("client");
        client
            .post_capped(
                &url,
                "application/json",
                &[],
                Bytes::new(),
                Duration::from_secs(10),
                max_bytes,
            )
            .await
    }

    fn chunked(body: &[u8]) -> Vec<u8> {
        let mut answer =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for piece in body.chunks(64 * 1024) {
            answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            answer.extend_from_slice(piece);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        answer
    }

    #[tokio::test]
    async fn answers_over_the_cap_are_refused_with_or_without_a_length() {
        let body = vec![b'x'; 300 * 1024];
        let mut announced = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        announced.extend_from_slice(&body);
        match ask(announced.clone(), 100 * 1024).await {
            Err(err @ HttpError::TooLarge { declared: Some(307_200), limit: 102_400 }) => assert_eq!(
                err.to_string(),
                "the answer announces 307200 bytes (Content-Length), over the limit of 102400 bytes: not read"
            ),
            other => panic!("{other:?}"),
        }
        match ask(chunked(&body), 100 * 1024).await {
            Err(err @ HttpError::TooLarge { declared: None, .. }) => assert_eq!(
                err.to_string(),
                "the answer passed the limit of 102400 bytes: the rest was not read"
            ),
            other => panic!("{other:?}"),
        }
        for answer in [announced, chunked(&body)] {
            let response = ask(answer, 300 * 1024).await.expect("at the cap exactly");
            assert_eq!(response.body.len(), body.len());
        }
    }
}

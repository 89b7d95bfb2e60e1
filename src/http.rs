//! The outbound HTTP client of the pollers and the forwarders: hyper 1 over rustls (the `ring` provider
//! only), system trust roots plus an optional `ca_file`, an optional HTTP proxy (CONNECT tunnel, basic
//! auth), a connect timeout and a deadline on every request. One client serves one destination section.
//!
//! Invariants:
//! - Every request has a deadline (`hyper_util`'s client has none of its own) and a cap on the answer's size.
//! - Only the headers the caller passes are sent; secrets go in exactly the header the API needs. Proxy
//!   credentials go only in the CONNECT request's `Proxy-Authorization`, never to the destination, and
//!   messages show proxies without them.
//! - TLS verification cannot be turned off. A certificate failure says which host, what is wrong with its
//!   certificate, and which setting (`<section>.ca_file`) fixes it.
//! - Requests go through the proxy with CONNECT whatever the destination's scheme: the proxy never sees a
//!   request, a header or a key, only the host and port to reach.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use crate::config::{load_ca_file, redact_url, ProxyConfig, Transport};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Answers larger than this are refused (a page of 10,000 events of a few KB each fits easily).
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

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
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS set-up failed: {err}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let route = match &transport.proxy {
            ProxyConfig::Direct => None,
            ProxyConfig::Url(url) => Some(Matcher::builder().all(url.expose().to_string()).build()),
            ProxyConfig::Environment {
                http,
                https,
                no_proxy,
            } => Some(
                Matcher::builder()
                    .http(
                        http.as_ref()
                            .map_or(String::new(), |u| u.expose().to_string()),
                    )
                    .https(
                        https
                            .as_ref()
                            .map_or(String::new(), |u| u.expose().to_string()),
                    )
                    .no(no_proxy.clone())
                    .build(),
            ),
        };
        let connector = ProxyConnector {
            direct: http,
            route: route.map(Arc::new),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
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
        let exchange = async {
            let response = self.client.request(request).await.map_err(|err| {
                HttpError::Transport(describe_client_error(&err, &host, &self.section))
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|err| HttpError::Body(err.to_string()))?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }
}

/// Connects directly, or through the proxy the matcher picks for the destination (CONNECT tunnel).
#[derive(Clone)]
struct ProxyConnector {
    direct: HttpConnector,
    /// `None`: always direct.
    route: Option<Arc<Matcher>>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio::net::TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for ProxyConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let intercept = self
            .route
            .as_ref()
            .and_then(|matcher| matcher.intercept(&destination));
        let mut direct = self.direct.clone();
        match intercept {
            None => Box::pin(async move { direct.call(destination).await.map_err(BoxError::from) }),
            Some(proxy) => {
                // The matcher's URI carries no credentials; they are in the basic-auth header.
                let shown = redact_url(&proxy.uri().to_string())
                    .trim_end_matches('/')
                    .to_string();
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let target = format!(
                    "{}:{}",
                    destination.host().unwrap_or("?"),
                    destination
                        .port_u16()
                        .unwrap_or(match destination.scheme_str() {
                            Some("http") => 80,
                            _ => 443,
                        })
                );
                // The tunnel takes its port from the destination, 443 when it has none: give it the
                // scheme's port explicitly, so that plain-http destinations get 80.
                let destination =
                    match format!("{}://{target}", destination.scheme_str().unwrap_or("https"))
                        .parse::<Uri>()
                    {
                        Ok(uri) => uri,
                        Err(_) => destination,
                    };
                Box::pin(async move {
                    tunnel
                        .call(destination)
                        .await
                        .map_err(|err| BoxError::from(describe_tunnel_error(&err, &shown, &target)))
                })
            }
        }
    }
}

/// hyper-util's `TunnelError` is not exported: it is read through its `Display` text, which names the case.
fn describe_tunnel_error(
    err: &(dyn std::error::Error + 'static),
    proxy: &str,
    target: &str,
) -> String {
    let text = err.to_string();
    if text.contains("proxy authorization required") {
        format!(
            "the proxy {proxy} asks for credentials (407 Proxy Authentication Required): give them in the \
             proxy URL, proxy = \"http://user:password@host:port\" (or in HTTPS_PROXY), or check them"
        )
    } else if text.contains("unsuccessful") {
        format!(
            "the proxy {proxy} refused to open a tunnel (CONNECT) to {target}: ask for {target} to be \
             allowed through it, or list the host in NO_PROXY if it must be reached directly"
        )
    } else if text.contains("failed to create underlying connection") {
        let cause = err.source().map(chain).unwrap_or_default();
        format!("cannot connect to the proxy {proxy}: {cause}")
    } else {
        format!(
            "the proxy {proxy} broke the tunnel to {target}: {}",
            chain(err)
        )
    }
}

/// An error and its causes, joined with `: `.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// The rustls error somewhere in an error's chain. hyper-rustls nests it in `io::Error`s, whose `source()`
/// skips the error they wrap: look inside each with `get_ref`.
fn find_tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    fn inside_io(io: &std::io::Error) -> Option<&rustls::Error> {
        let inner = io.get_ref()?;
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner.downcast_ref::<std::io::Error>().and_then(inside_io)
    }
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e.downcast_ref::<std::io::Error>().and_then(inside_io) {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// What a TLS failure means for the user: which host, what is wrong, and which setting fixes it.
pub fn describe_tls_error(err: &rustls::Error, host: &str, section: &str) -> String {
    use rustls::CertificateError as C;
    let setting = if section.is_empty() {
        "ca_file".to_string()
    } else {
        format!("{section}.ca_file")
    };
    let fix = format!(
        "if {host} (or a TLS-inspecting proxy on the way) uses a private or corporate CA, save that CA's \
         certificate as PEM and set {setting} = \"/path/to/ca.pem\" (TLS verification cannot be turned off)"
    );
    match err {
        rustls::Error::InvalidCertificate(problem) => match problem {
            C::UnknownIssuer => format!(
                "the TLS certificate of {host} is signed by a CA this host does not trust (unknown issuer): {fix}"
            ),
            C::BadSignature => format!(
                "the TLS certificate of {host} has a bad signature (not signed by the CA it names): {fix}"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the TLS certificate of {host} is not valid for the name {host}: check the URL (base_url, \
                 intake_url or region) of {}; a CA file cannot fix a name mismatch",
                if section.is_empty() { "this destination" } else { section }
            ),
            C::Expired | C::ExpiredContext { .. } => format!(
                "the TLS certificate of {host} has expired (or this host's clock is wrong): the server's \
                 certificate must be renewed; check the clock of this host"
            ),
            C::NotValidYet | C::NotValidYetContext { .. } => format!(
                "the TLS certificate of {host} is not valid yet: check the clock of this host"
            ),
            other => format!("the TLS certificate of {host} was refused ({other:?}): {fix}"),
        },
        other => format!("the TLS handshake with {host} failed: {other}"),
    }
}

/// hyper's client errors hide the cause (refused, DNS, TLS, proxy) in the source chain: show the whole
/// chain, and turn a certificate failure into a message that says what to do.
fn describe_client_error(
    err: &hyper_util::client::legacy::Error,
    host: &str,
    section: &str,
) -> String {
    if let Some(tls) = find_tls_error(err) {
        return describe_tls_error(tls, host, section);
    }
    chain(err)
}

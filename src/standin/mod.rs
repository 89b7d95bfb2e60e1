//! Built-in stand-ins of JumpCloud's Directory Insights API and of Sekoia.io's HTTP intake, served on 127.0.0.1.
//!
//! This module owns the HTTP plumbing both stand-ins share: binding a listener on 127.0.0.1 with a port the
//! OS picks, serving HTTP/1.1 connections with hyper on the current tokio runtime, reading request bodies
//! with a size cap, and stopping. Invariants it keeps:
//! - nothing ever binds another address than 127.0.0.1, and nothing here connects anywhere;
//! - a handler never panics on what a client sends: it answers 4xx, or asks to drop the connection;
//! - after `shutdown` (or when the last handle of a stand-in is dropped) no new connection is accepted and
//!   open keep-alive connections are closed once their in-flight answer is written.

pub mod data;
pub mod intake;
pub mod jumpcloud;
pub mod oauth;

pub use data::EventFactory;
pub use intake::{IntakeFault, IntakeOptions, IntakeStandIn};
pub use jumpcloud::{ApiEvent, ApiFault, ApiOptions, ApiStandIn, RateLimit};
pub use oauth::{TokenOptions, TokenStandIn};

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The body type of every answer the stand-ins give: they always know the whole body up front.
pub(crate) type Body = Full<Bytes>;

/// What a handler returns: an answer, or `Err(DropConnection)` to close the connection without answering
/// (hyper closes an HTTP/1 connection when its service fails, and writes nothing).
pub(crate) type Answer = Result<Response<Body>, DropConnection>;

/// The error a handler returns to make the connection close without an answer.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stand-in fault: connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

/// A running listener. Dropping it stops the server, so a stand-in whose handles are all gone does not
/// keep serving until the runtime ends.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Server {
    /// Binds 127.0.0.1:0 and serves every connection with `handler` on the current tokio runtime.
    pub(crate) async fn start<H, F>(handler: H) -> std::io::Result<Server>
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::new(handler), stop_rx));
        Ok(Server { addr, stop })
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop<H, F>(listener: TcpListener, handler: Arc<H>, mut stop: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Small answers (errors, empty pages) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, handler.clone(), stop.clone()));
                }
                Err(error) => {
                    // Typically "too many open files": wait a little instead of spinning.
                    tracing::debug!(%error, "stand-in accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Returns once the server is told to stop, or once its `Server` is gone, which means the same.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across another await (it is not `Send`): drop it here.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn serve_connection<H, F>(
    stream: tokio::net::TcpStream,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let service = service_fn(move |request| handler(request));
    let mut builder = http1::Builder::new();
    // The real JumpCloud API spells its header `X-Search_after`; title case reproduces that on the wire.
    builder.timer(TokioTimer::new()).title_case_headers(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "stand-in connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    /// Longer than the limit. The body was still read to its end so that the client, which may be blocked
    /// writing it, gets the 413 instead of a connection reset.
    TooLarge,
    /// The client went away or sent broken framing.
    Broken,
}

/// Reads a whole request body, keeping at most `limit` bytes.
pub(crate) async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut kept = BytesMut::new();
    let mut too_large = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if too_large || kept.len() + data.len() > limit {
                too_large = true;
                kept = BytesMut::new();
            } else {
                kept.extend_from_slice(&data);
            }
        }
    }
    if too_large {
        Err(BodyError::TooLarge)
    } else {
        Ok(kept.freeze())
    }
}

/// An answer with a JSON body.
pub(crate) fn json_answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An answer whose body is `{"message": ...}`, with the message correctly escaped whatever it holds.
pub(crate) fn message_answer(status: StatusCode, message: &str) -> Response<Body> {
    json_answer(
        status,
        serde_json::json!({ "message": message }).to_string(),
    )
}

/// A status code given by a test, or 500 when it is not a valid HTTP status.
pub(crate) fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Random lower-case UUID text (version 4 layout), as used for request and event ids.
pub(crate) fn uuid_text(rng: &mut fastrand::Rng) -> String {
    let value = rng.u128(..);
    let value = (value & !(0xF << 76)) | (0x4 << 76); // version 4
    let value = (value & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
                                                      // Written digit by digit: `format!` twice per id showed in the event generator's profile.
    const DIGITS: &[u8] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    for index in 0..32 {
        if matches!(index, 8 | 12 | 16 | 20) {
            text.push('-');
        }
        let nibble = (value >> (124 - 4 * index)) & 0xF;
        text.push(char::from(DIGITS[nibble as usize]));
    }
    text
}

#[cfg(test)]
pub(crate) mod test_http {
    //! A tiny HTTP/1.1 client over a raw TCP stream, for the stand-ins' own tests: it sees exactly what is on
    //! the wire (including a dropped connection or a body cut short), which a full client would hide.

    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[derive(Debug)]
    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Reply {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }

        pub fn body_text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Sends one request with `Connection: close` and reads the answer; `None` when the server closed the
    /// connection without answering.
    pub async fn send(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Reply> {
        let mut stream = TcpStream::connect(addr).await.expect("connect to stand-in");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        // The server may answer (or hang up) before reading everything: ignore write errors.
        let _ = stream.write_all(&request).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        parse(&raw)
    }

    fn parse(raw: &[u8]) -> Option<Reply> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_string(), value.trim().to_string()))
            })
            .collect();
        Some(Reply {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        })
    }
}

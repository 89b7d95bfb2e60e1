//! The proxy side of the outbound client: which destinations go through which proxy (the `proxy` setting,
//! or the environment's variables with `NO_PROXY`), the CONNECT tunnel, and what a proxy's refusal means.
//!
//! Invariants:
//! - Proxy credentials go only in the CONNECT request's `Proxy-Authorization`, never to the destination.
//! - A proxy is shown as [`redact_url`] shows it (`http://***@host:port` when its URL has credentials);
//!   a message about refused credentials names the user, never the password.
//! - A refused tunnel names what the proxy answered (status and reason) and the likely fix: the
//!   credentials for 401/407, the proxy's allow-list for 403. `NO_PROXY` is suggested only for a proxy
//!   that comes from the environment, the only place it applies.
//! - Nothing the proxy sends is trusted beyond its status line: its reason is cut short and stripped of
//!   control characters before it reaches a message, and an answer that is not HTTP is refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::{redact_url, ProxyConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most a proxy's answer to CONNECT may hold before the tunnel starts.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// Connects directly, or through the proxy the matcher picks for the destination (CONNECT tunnel).
#[derive(Clone)]
pub(super) struct ProxyConnector {
    direct: HttpConnector,
    /// `None`: always direct.
    route: Option<Arc<Route>>,
}

struct Route {
    matcher: Matcher,
    /// How to speak of the proxy of `http://` destinations, and of `https://` ones.
    http: Option<Shown>,
    https: Option<Shown>,
    /// A proxy from the environment, where `NO_PROXY` applies (the `proxy` setting ignores it).
    from_environment: bool,
    /// The section whose `proxy` setting this is, for messages (`jumpcloud`, `sekoia.acme`).
    section: String,
}

/// A proxy as messages speak of it.
struct Shown {
    /// Its URL without the password ([`redact_url`]).
    url: String,
    /// The user of its URL, when it has credentials.
    user: Option<String>,
}

impl Shown {
    fn of(url: &str) -> Shown {
        let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = &authority[..authority.find('/').unwrap_or(authority.len())];
        let user = authority
            .rfind('@')
            .map(|at| &authority[..at])
            .map(|userinfo| userinfo.split_once(':').map_or(userinfo, |(user, _)| user))
            .map(str::to_string);
        Shown {
            url: redact_url(url).trim_end_matches('/').to_string(),
            user,
        }
    }
}

impl ProxyConnector {
    pub(super) fn new(direct: HttpConnector, proxy: &ProxyConfig, section: &str) -> ProxyConnector {
        let route = match proxy {
            ProxyConfig::Direct => None,
            ProxyConfig::Url(url) => Some(Route {
                matcher: Matcher::builder().all(url.expose().to_string()).build(),
                http: Some(Shown::of(url.expose())),
                https: Some(Shown::of(url.expose())),
                from_environment: false,
                section: section.to_string(),
            }),
            ProxyConfig::Environment {
                http,
                https,
                no_proxy,
            } => Some(Route {
                matcher: Matcher::builder()
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
                http: http.as_ref().map(|u| Shown::of(u.expose())),
                https: https.as_ref().map(|u| Shown::of(u.expose())),
                from_environment: true,
                section: section.to_string(),
            }),
        };
        ProxyConnector {
            direct,
            route: route.map(Arc::new),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let mut direct = self.direct.clone();
        let Some(route) = self.route.clone() else {
            return Box::pin(async move { direct.call(destination).await.map_err(BoxError::from) });
        };
        let Some(proxy) = route.matcher.intercept(&destination) else {
            return Box::pin(async move { direct.call(destination).await.map_err(BoxError::from) });
        };
        let plain = destination.scheme_str() == Some("http");
        let host = destination.host().unwrap_or("?").to_string();
        let target = format!(
            "{host}:{}",
            destination
                .port_u16()
                .unwrap_or(if plain { 80 } else { 443 })
        );
        let proxy_uri = proxy.uri().clone();
        let auth = proxy.basic_auth().cloned();
        Box::pin(async move {
            let shown = if plain { &route.http } else { &route.https };
            let fallback = Shown::of(&proxy_uri.to_string());
            let shown = shown.as_ref().unwrap_or(&fallback);
            let setting = if route.from_environment {
                if plain {
                    "HTTP_PROXY (or ALL_PROXY)".to_string()
                } else {
                    "HTTPS_PROXY (or ALL_PROXY)".to_string()
                }
            } else {
                format!("{}.proxy", route.section)
            };
            let about = About {
                proxy: shown,
                setting: &setting,
                target: &target,
                host: &host,
                from_environment: route.from_environment,
            };
            tunnel(&mut direct, proxy_uri, auth.as_ref(), &target)
                .await
                .map_err(|failure| BoxError::from(about.describe(&failure)))
        })
    }
}

/// How opening a tunnel failed.
#[derive(Debug)]
enum Failure {
    /// The proxy could not be reached.
    Connect(BoxError),
    Io(std::io::Error),
    /// The proxy answered CONNECT with another status than 2xx.
    Refused {
        status: u16,
        reason: String,
    },
    /// The proxy closed the connection before answering in full.
    Closed,
    /// The answer was not an HTTP status line and headers, or carried more.
    NotHttp(String),
}

/// Asks the proxy to open a tunnel to `target` (`host:port`) and returns the connection once it is open.
async fn tunnel(
    direct: &mut HttpConnector,
    proxy: Uri,
    auth: Option<&HeaderValue>,
    target: &str,
) -> Result<TokioIo<TcpStream>, Failure> {
    let mut io = direct
        .call(proxy)
        .await
        .map_err(|err| Failure::Connect(err.into()))?;
    let stream = io.inner_mut();
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = auth {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(auth.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await.map_err(Failure::Io)?;
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await.map_err(Failure::Io)?;
        if n == 0 {
            return Err(Failure::Closed);
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if answer.len() > MAX_CONNECT_ANSWER {
            return Err(Failure::NotHttp(format!(
                "an answer of over {MAX_CONNECT_ANSWER} bytes without the end of its headers"
            )));
        }
    };
    let (status, reason) = status_line(&answer)?;
    if !(200..300).contains(&status) {
        return Err(Failure::Refused { status, reason });
    }
    if answer.len() > end {
        // The destination speaks only once the client has (TLS, HTTP): bytes already here are not its.
        return Err(Failure::NotHttp(
            "data after its answer, before the tunnel was used".to_string(),
        ));
    }
    Ok(io)
}

/// The status code and reason of an answer's first line (`HTTP/1.1 407 Proxy Authentication Required`).
fn status_line(answer: &[u8]) -> Result<(u16, String), Failure> {
    let line = answer
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .strip_suffix(b"\r")
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|code| {
        (code.len() == 3)
            .then(|| code.parse::<u16>().ok())
            .flatten()
    });
    match status {
        Some(status) if version.starts_with("HTTP/1.") && status >= 100 => {
            Ok((status, printable(parts.next().unwrap_or_default())))
        }
        _ => Err(Failure::NotHttp(format!("{:?}", printable(&line)))),
    }
}

/// Text from the proxy as a message may quote it: printable ASCII only, at most 100 characters.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect::<String>()
        .trim()
        .to_string()
}

/// What a message says about one tunnel.
struct About<'a> {
    proxy: &'a Shown,
    /// Where the proxy's URL is set (`jumpcloud.proxy`, `HTTPS_PROXY (or ALL_PROXY)`).
    setting: &'a str,
    /// `host:port`.
    target: &'a str,
    host: &'a str,
    from_environment: bool,
}

impl About<'_> {
    fn describe(&self, failure: &Failure) -> String {
        let proxy = &self.proxy.url;
        let (target, setting) = (self.target, self.setting);
        match failure {
            Failure::Connect(err) => format!("cannot connect to the proxy {proxy}: {}", chain(&**err)),
            Failure::Io(err) => format!("the proxy {proxy} broke the connection while opening a tunnel to {target}: {err}"),
            Failure::Closed => format!(
                "the proxy {proxy} closed the connection without answering the request for a tunnel (CONNECT) to {target}"
            ),
            Failure::NotHttp(what) => format!(
                "the proxy {proxy} did not answer the request for a tunnel (CONNECT) to {target} as an HTTP proxy does (it sent {what}): check {setting}: is it the address of an HTTP proxy?"
            ),
            Failure::Refused { status, reason } => {
                let answered = if reason.is_empty() {
                    status.to_string()
                } else {
                    format!("{status} {reason}")
                };
                self.refused(*status, &answered)
            }
        }
    }

    fn refused(&self, status: u16, answered: &str) -> String {
        let proxy = &self.proxy.url;
        let (target, host, setting) = (self.target, self.host, self.setting);
        let directly = if self.from_environment {
            format!(", or list {host} in NO_PROXY if it must be reached directly")
        } else {
            String::new()
        };
        match (status, &self.proxy.user) {
            (401 | 407, Some(user)) => format!(
                "the proxy {proxy} asks for credentials ({answered}) and refused those of the user {user:?} \
                 in {setting}: check the user and password there (percent-encode special characters in \
                 them, for example @ as %40)"
            ),
            (401 | 407, None) => format!(
                "the proxy {proxy} asks for credentials ({answered}): give them in {setting}, as \
                 \"http://user:password@host:port\""
            ),
            (403, _) => format!(
                "the proxy {proxy} refused to open a tunnel (CONNECT) to {target} ({answered}): ask for \
                 {target} to be allowed through it (its allow-list){}{directly}",
                self.proxy
                    .user
                    .as_ref()
                    .map(|user| format!(" for the user {user:?}"))
                    .unwrap_or_default()
            ),
            (500..=599, _) => format!(
                "the proxy {proxy} could not open a tunnel (CONNECT) to {target} ({answered}): it could not \
                 reach {host}, or it is failing; check the host name, and that the proxy may reach it{directly}"
            ),
            _ => format!(
                "the proxy {proxy} refused to open a tunnel (CONNECT) to {target} ({answered}): check {setting} \
                 (is it the right proxy?), and ask for {target} to be allowed through it{directly}"
            ),
        }
    }
}

/// An error and its causes, joined with `: `.
pub(super) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn about<'a>(proxy: &'a Shown, from_environment: bool) -> About<'a> {
        About {
            proxy,
            setting: if from_environment {
                "HTTPS_PROXY (or ALL_PROXY)"
            } else {
                "jumpcloud.proxy"
            },
            target: "api.jumpcloud.com:443",
            host: "api.jumpcloud.com",
            from_environment,
        }
    }

    fn refused(status: u16, reason: &str) -> Failure {
        Failure::Refused {
            status,
            reason: reason.to_string(),
        }
    }

    #[test]
    fn proxies_are_shown_without_their_password() {
        let shown = Shown::of("http://agent:s3cret@proxy.corp:3128");
        assert_eq!(shown.url, "http://***@proxy.corp:3128");
        assert_eq!(shown.user.as_deref(), Some("agent"));
        let shown = Shown::of("http://proxy.corp:3128/");
        assert_eq!(shown.url, "http://proxy.corp:3128");
        assert_eq!(shown.user, None);
    }

    #[test]
    fn refusals_name_the_answer_and_the_likely_fix() {
        let with_user = Shown::of("http://agent:s3cret@proxy.corp:3128");
        let text = about(&with_user, false).describe(&refused(401, "Unauthorized"));
        assert_eq!(
            text,
            "the proxy http://***@proxy.corp:3128 asks for credentials (401 Unauthorized) and refused those \
             of the user \"agent\" in jumpcloud.proxy: check the user and password there (percent-encode \
             special characters in them, for example @ as %40)"
        );
        let anonymous = Shown::of("http://proxy.corp:3128");
        let text = about(&anonymous, true).describe(&refused(407, "Proxy Authentication Required"));
        assert!(
            text.contains("asks for credentials (407 Proxy Authentication Required): give them in HTTPS_PROXY (or ALL_PROXY)"),
            "{text}"
        );
        let text = about(&anonymous, false).describe(&refused(403, "Filtered"));
        assert!(
            text.contains("(403 Filtered): ask for api.jumpcloud.com:443 to be allowed through it (its allow-list)"),
            "{text}"
        );
        assert!(
            !text.contains("NO_PROXY"),
            "NO_PROXY does not apply to the proxy setting: {text}"
        );
        let text = about(&anonymous, true).describe(&refused(403, "Filtered"));
        assert!(
            text.ends_with("or list api.jumpcloud.com in NO_PROXY if it must be reached directly"),
            "{text}"
        );
        let text = about(&anonymous, false).describe(&refused(502, "Bad Gateway"));
        assert!(
            text.contains(
                "could not open a tunnel (CONNECT) to api.jumpcloud.com:443 (502 Bad Gateway)"
            ),
            "{text}"
        );
        for text in [
            about(&with_user, true).describe(&refused(407, "x")),
            about(&with_user, true).describe(&refused(403, "x")),
        ] {
            assert!(
                !text.contains("s3cret") && !text.contains("agent:"),
                "{text}"
            );
        }
    }

    #[test]
    fn status_lines_are_read_strictly_and_quoted_safely() {
        assert_eq!(
            status_line(b"HTTP/1.0 401 Unauthorized\r\n\r\n").unwrap(),
            (401, "Unauthorized".to_string())
        );
        assert_eq!(
            status_line(b"HTTP/1.1 200\r\n\r\n").unwrap(),
            (200, String::new())
        );
        let (_, reason) = status_line(b"HTTP/1.1 403 No\x1b[31m way\r\n\r\n").unwrap();
        assert_eq!(reason, "No[31m way");
        for garbage in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(matches!(status_line(garbage), Err(Failure::NotHttp(_))));
        }
    }
}

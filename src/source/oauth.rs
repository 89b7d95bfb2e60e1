//! Service accounts: OAuth2 client credentials for the JumpCloud API (`grant_type=client_credentials`,
//! `scope=api`, HTTP Basic `client_id:client_secret` at the token URL), giving a bearer token.
//!
//! Invariants:
//! - One token per service account is cached and shared by its requests; it is replaced before it expires
//!   (a margin of a quarter of its lifetime, at most 60 s) and whenever the API answers 401 with it.
//! - At most one token request is in flight per service account (the cache lock is held across it).
//! - The client secret and the tokens are [`Secret`]s and sensitive header values: never logged, never in
//!   an error message. A refused secret (400/401 at the token URL) is a configuration error.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;

use crate::config::Secret;
use crate::http::HttpClient;

use super::error::FetchError;

/// Assumed when the token endpoint does not say how long its token lives (JumpCloud does not document it):
/// a 401 renews the token anyway.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// Fetches and caches the bearer token of one service account.
pub struct TokenSource {
    http: HttpClient,
    token_url: String,
    /// `Basic base64(client_id:client_secret)`, marked sensitive.
    basic: HeaderValue,
    /// The section to fix, for messages (`jumpcloud`, `streams.acme`).
    section: String,
    timeout: Duration,
    cached: tokio::sync::Mutex<Option<Token>>,
}

struct Token {
    header: HeaderValue,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

impl TokenSource {
    pub fn new(
        http: HttpClient,
        client_id: &str,
        client_secret: &Secret,
        token_url: &str,
        section: &str,
        timeout: Duration,
    ) -> Result<TokenSource, String> {
        // RFC 6749 §2.3.1: both parts are form-encoded before the Basic encoding.
        let pair = format!(
            "{}:{}",
            form_encode(client_id),
            form_encode(client_secret.expose())
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        let mut basic = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| format!("{section}.client_id cannot be sent in a header"))?;
        basic.set_sensitive(true);
        Ok(TokenSource {
            http,
            token_url: token_url.to_string(),
            basic,
            section: section.to_string(),
            timeout,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The `Authorization: Bearer …` header value: the cached token while it is fresh, else a new one.
    pub async fn bearer(&self) -> Result<HeaderValue, FetchError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.renew_at {
                return Ok(token.header.clone());
            }
            tracing::debug!(section = %self.section, "service account token about to expire: renewing it");
        }
        let token = self.request_token().await?;
        let header = token.header.clone();
        *cached = Some(token);
        Ok(header)
    }

    /// Forgets `used` after the API refused it, so that the next [`TokenSource::bearer`] asks for a new one
    /// (unless another request already replaced it).
    pub async fn refused(&self, used: &HeaderValue) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|token| token.header == *used) {
            *cached = None;
        }
    }

    async fn request_token(&self) -> Result<Token, FetchError> {
        let started = Instant::now();
        let headers: [(HeaderName, HeaderValue); 1] = [(AUTHORIZATION, self.basic.clone())];
        let response = self
            .http
            .post(
                &self.token_url,
                "application/x-www-form-urlencoded",
                &headers,
                Bytes::from_static(b"grant_type=client_credentials&scope=api"),
                self.timeout,
            )
            .await
            .map_err(|err| FetchError::Transient {
                reason: format!(
                    "the service account's token URL {} did not answer: {err}",
                    self.token_url
                ),
                retry_after: None,
            })?;
        let status = response.status;
        if matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(FetchError::Rejected(format!(
                "JumpCloud's token URL {} refused the service account ({status}): check {section}.client_id \
                 and {section}.client_secret (a deleted service account, or a rotated secret?); the server said: {}",
                self.token_url,
                response.body_excerpt(),
                section = self.section,
            )));
        }
        if !status.is_success() {
            return Err(FetchError::Transient {
                reason: format!(
                    "the service account's token URL {} answered {status}: {}",
                    self.token_url,
                    response.body_excerpt()
                ),
                retry_after: response.retry_after(),
            });
        }
        // The body holds the token: never quote it in a message.
        let answer: TokenAnswer =
            serde_json::from_slice(&response.body).map_err(|err| FetchError::Transient {
                reason: format!(
                    "the token URL {} answered 200 without a usable token ({} at line {}, column {})",
                    self.token_url,
                    classify(&err),
                    err.line(),
                    err.column()
                ),
                retry_after: None,
            })?;
        if let Some(kind) = &answer.token_type {
            if !kind.eq_ignore_ascii_case("bearer") {
                tracing::warn!(token_type = %kind, "the token URL gave a token that is not of type bearer; using it as one");
            }
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token.trim()))
            .map_err(|_| FetchError::Transient {
            reason: format!(
                "the token URL {} gave a token that cannot be sent in a header",
                self.token_url
            ),
            retry_after: None,
        })?;
        header.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map_or(ASSUMED_LIFETIME, Duration::from_secs);
        let margin = (lifetime / 4).min(MAX_MARGIN);
        tracing::debug!(section = %self.section, ?lifetime, "service account token obtained");
        Ok(Token {
            header,
            renew_at: started + lifetime - margin,
        })
    }
}

/// A serde error's category only: its text could quote the body, which holds the token.
fn classify(err: &serde_json::Error) -> &'static str {
    match err.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "no access_token",
        serde_json::error::Category::Eof => "cut off",
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("abc-1.2_3"), "abc-1.2_3");
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let http = HttpClient::new(Duration::from_secs(1)).expect("client");
        let source = TokenSource::new(
            http,
            "id",
            &Secret::new("hunter2"),
            "http://127.0.0.1:1/token",
            "jumpcloud",
            Duration::from_secs(1),
        )
        .expect("source");
        assert!(!format!("{:?}", source.basic).contains("aHVudGVy"));
    }
}

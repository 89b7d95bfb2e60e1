//! A stand-in of JumpCloud's OAuth2 token endpoint for service accounts (`POST /oauth2/token`, client
//! credentials in HTTP Basic, `grant_type=client_credentials`), served on 127.0.0.1.
//!
//! It issues random bearer tokens with a lifetime the test chooses, and tells the API stand-in
//! ([`super::ApiOptions::tokens`]) which tokens are valid, so that tests can expire or revoke them.
//! Invariants: a token is valid from its issue until its lifetime ends or [`TokenStandIn::revoke_all`];
//! wrong client credentials get 401 `invalid_client`, a wrong grant 400 `unsupported_grant_type`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::{json_answer, read_body, Answer, Server};

pub const TOKEN_PATH: &str = "/oauth2/token";

/// How the token stand-in behaves.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    pub client_id: String,
    pub client_secret: String,
    /// The `expires_in` of every token issued.
    pub lifetime: Duration,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            client_id: "demo-client".to_string(),
            client_secret: "demo-secret".to_string(),
            lifetime: Duration::from_secs(3600),
        }
    }
}

/// A handle on a running token stand-in; clones share it.
#[derive(Clone)]
pub struct TokenStandIn {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStandIn")
            .field("addr", &self.inner.server.addr())
            .finish()
    }
}

struct Inner {
    server: Server,
    shared: Arc<Shared>,
}

struct Shared {
    options: TokenOptions,
    /// Valid tokens and when each stops being valid.
    tokens: Mutex<Vec<(String, Instant)>>,
    issued: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn tokens(&self) -> MutexGuard<'_, Vec<(String, Instant)>> {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TokenStandIn {
    pub async fn start(options: TokenOptions) -> std::io::Result<TokenStandIn> {
        let shared = Arc::new(Shared {
            options,
            tokens: Mutex::new(Vec::new()),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let for_server = shared.clone();
        let server = Server::start(move |request| handle(for_server.clone(), request)).await?;
        Ok(TokenStandIn {
            inner: Arc::new(Inner { server, shared }),
        })
    }

    /// `http://127.0.0.1:PORT/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.inner.server.base_url())
    }

    /// Whether `token` was issued here, is not expired and was not revoked.
    pub fn is_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        self.inner
            .shared
            .tokens()
            .iter()
            .any(|(issued, until)| issued == token && now < *until)
    }

    /// Makes every token issued so far invalid (new ones are still issued).
    pub fn revoke_all(&self) {
        self.inner.shared.tokens().clear();
    }

    /// Tokens issued.
    pub fn issued(&self) -> u64 {
        self.inner.shared.issued.load(Ordering::Relaxed)
    }

    /// Bearer tokens the API stand-in refused (expired, revoked or unknown).
    pub fn refused(&self) -> u64 {
        self.inner.shared.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn note_refused(&self) {
        self.inner.shared.refused.fetch_add(1, Ordering::Relaxed);
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let error = |status: StatusCode, code: &str| {
        json_answer(status, serde_json::json!({ "error": code }).to_string())
    };
    if request.uri().path() != TOKEN_PATH {
        return Ok(error(StatusCode::NOT_FOUND, "not_found"));
    }
    if request.method() != Method::POST {
        return Ok(error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request"));
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            shared.options.client_id, shared.options.client_secret
        ))
    );
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    let body = match read_body(request.into_body(), 64 * 1024).await {
        Ok(body) => body,
        Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "invalid_request")),
    };
    if !authorized {
        return Ok(error(StatusCode::UNAUTHORIZED, "invalid_client"));
    }
    let form = String::from_utf8_lossy(&body);
    if !form
        .split('&')
        .any(|pair| pair == "grant_type=client_credentials")
    {
        return Ok(error(StatusCode::BAD_REQUEST, "unsupported_grant_type"));
    }
    let token = format!(
        "tok-{}-{:016x}",
        shared.issued.fetch_add(1, Ordering::Relaxed) + 1,
        fastrand::u64(..)
    );
    let lifetime = shared.options.lifetime;
    shared
        .tokens()
        .push((token.clone(), Instant::now() + lifetime));
    Ok(json_answer(
        StatusCode::OK,
        serde_json::json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime.as_secs(),
            "scope": "api",
        })
        .to_string(),
    ))
}

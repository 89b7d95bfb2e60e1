//! The rules and defaults of a JumpCloud section (`[jumpcloud]`, or the JumpCloud keys of a `[[streams]]`
//! table): region or base URL, API key or service account, services, polling pace, retention, transport.
//!
//! Invariants: a stream's table inherits every key it does not set from `[jumpcloud]`, and a value is
//! warned about only where it is written (so an inherited small value is warned about once); exactly one
//! way to authenticate is accepted (an API key, or a service account with its `org_id`); the defaults are
//! those JumpCloud documents (90-day retention, pages of up to 10000 events).

use std::collections::BTreeSet;
use std::time::Duration;

use super::reader::{Reader, Section};
use super::{
    JumpcloudAuth, JumpcloudConfig, RetryConfig, Transport, DEFAULT_TOKEN_URL, JUMPCLOUD_REGIONS,
};

/// The keys a JumpCloud section may hold.
const JUMPCLOUD_KEYS: &[&str] = &[
    "region",
    "base_url",
    "api_key",
    "api_key_file",
    "client_id",
    "client_secret",
    "client_secret_file",
    "token_url",
    "org_id",
    "services",
    "poll_interval",
    "page_size",
    "catch_up_page_size",
    "initial_lookback",
    "overlap",
    "min_request_interval",
    "max_requests_per_second",
    "request_timeout",
    "retry_initial",
    "retry_max",
    "proxy",
    "ca_file",
    "retention",
    "max_response_bytes",
];

/// The default `max_response_bytes`: a full page of 10,000 events of 25 KiB each (real events are a few KiB,
/// and the intake takes none over 250 KiB), so that no real page comes near it.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// The least `max_response_bytes` accepted: below it, ordinary pages would be refused.
const MIN_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

impl Reader<'_> {
    /// Reads a JumpCloud section. `base` gives the values of keys it does not set (the `[jumpcloud]` section
    /// for a stream); checks of small values run only on the keys the section sets, so that an inherited
    /// value is warned about once. `extra_keys` are the other keys this table may hold.
    pub(super) fn jumpcloud(
        &mut self,
        s: &mut Section,
        base: Option<&JumpcloudConfig>,
        auth_required: bool,
        extra_keys: &[&str],
    ) -> JumpcloudConfig {
        let defaults = JumpcloudConfig {
            section: s.name.clone(),
            base_url: JUMPCLOUD_REGIONS[0].1.to_string(),
            auth: JumpcloudAuth::Missing,
            org_id: None,
            services: vec!["all".to_string()],
            poll_interval: Duration::from_secs(60),
            page_size: 1000,
            // The API's largest page, as JumpCloud's own exporter uses: pages are read and queued in parts
            // as they arrive, so memory does not grow with the page size (BENCHMARKS.md, "Defaults").
            catch_up_page_size: 10_000,
            initial_lookback: Duration::from_secs(24 * 3600),
            overlap: Duration::from_secs(600),
            min_request_interval: Duration::ZERO,
            max_requests_per_second: 10,
            request_timeout: Duration::from_secs(60),
            retry: RetryConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            transport: Transport::direct(),
            retention: Duration::from_secs(90 * 86_400),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        };
        let base = base.unwrap_or(&defaults);
        let region_url = self.string(s, "region").and_then(|region| {
            match JUMPCLOUD_REGIONS.iter().find(|(name, _)| *name == region.trim()) {
                Some((_, url)) => Some(url.to_string()),
                None => {
                    let known: Vec<&str> = JUMPCLOUD_REGIONS.iter().map(|(name, _)| *name).collect();
                    self.problem(
                        s,
                        "region",
                        &format!(
                            "= {region:?} is not a JumpCloud region: use one of {} (or set base_url)",
                            known.join(", ")
                        ),
                    );
                    None
                }
            }
        });
        let base_url = match (self.url_opt(s, "base_url"), region_url) {
            (Some(url), Some(_)) => {
                self.warn(s, "region", "is ignored: base_url is set and wins");
                url
            }
            (Some(url), None) | (None, Some(url)) => url,
            (None, None) => base.base_url.clone(),
        };
        let variable = (s.name == "jumpcloud").then_some("JUMPCLOUD_API_KEY");
        let auth = self.auth(s, &base.auth, variable);
        let auth_reported = ["api_key", "client_id", "client_secret"]
            .iter()
            .any(|key| self.problems.iter().any(|p| p.starts_with(&s.key(key))));
        if auth_required && auth == JumpcloudAuth::Missing && !auth_reported {
            self.problem(
                s,
                "api_key",
                &format!(
                    "is missing: add api_key = \"${{{var}}}\" and set {var} in the environment (or \
                     api_key_file = \"PATH\"; or client_id and client_secret for a service account)",
                    var = variable.unwrap_or("JUMPCLOUD_API_KEY")
                ),
            );
        }
        let org_id = match self.string(s, "org_id") {
            Some(org) if org.trim().is_empty() => None,
            Some(org) => Some(org.trim().to_string()),
            None => base.org_id.clone(),
        };
        if matches!(auth, JumpcloudAuth::ServiceAccount { .. }) && org_id.is_none() {
            self.problem(
                s,
                "org_id",
                "is missing: a service account (client_id) must name the organization it reads (JumpCloud \
                 then requires x-org-id)",
            );
        }
        let services = self.services(s, &base.services);
        let poll_set = s.has("poll_interval");
        let poll_interval = self.duration(s, "poll_interval", base.poll_interval);
        if poll_interval < Duration::from_secs(1) {
            self.problem(s, "poll_interval", "must be at least \"1s\"");
        } else if poll_set && poll_interval < Duration::from_secs(10) {
            self.warn(
                s,
                "poll_interval",
                "is under 10s: fine for tests, but JumpCloud asks for few requests per key",
            );
        }
        let page_size = match self.integer(s, "page_size") {
            None => base.page_size,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                self.problem(
                    s,
                    "page_size",
                    &format!("= {n} is out of range: use 1 to 10000"),
                );
                base.page_size
            }
        };
        let catch_up_page_size = match self.integer(s, "catch_up_page_size") {
            None => base.catch_up_page_size,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                self.problem(
                    s,
                    "catch_up_page_size",
                    &format!("= {n} is out of range: use 1 to 10000"),
                );
                base.catch_up_page_size
            }
        };
        let initial_lookback = self.duration(s, "initial_lookback", base.initial_lookback);
        if initial_lookback > Duration::from_secs(90 * 24 * 3600) {
            self.warn(
                s,
                "initial_lookback",
                "is longer than JumpCloud's 90-day retention: older events no longer exist",
            );
        }
        let overlap_set = s.has("overlap");
        let overlap = self.duration(s, "overlap", base.overlap);
        if overlap_set && overlap < Duration::from_secs(60) {
            self.warn(
                s,
                "overlap",
                "is under 60s: events that JumpCloud indexes later than this after their timestamp can be missed",
            );
        }
        let min_request_interval =
            self.duration(s, "min_request_interval", base.min_request_interval);
        let max_requests_per_second = match self.integer(s, "max_requests_per_second") {
            None => base.max_requests_per_second,
            Some(n) if (1..=100).contains(&n) => n as u32,
            Some(n) => {
                self.problem(
                    s,
                    "max_requests_per_second",
                    &format!("= {n} is out of range: use 1 to 100"),
                );
                base.max_requests_per_second
            }
        };
        let request_timeout = self.duration(s, "request_timeout", base.request_timeout);
        if request_timeout.is_zero() {
            self.problem(
                s,
                "request_timeout",
                "must be more than 0 (for example \"60s\")",
            );
        }
        let retry = self.retry(s, base.retry);
        let retention = self.duration(s, "retention", base.retention);
        let max_response_bytes = match self.size(s, "max_response_bytes") {
            None => base.max_response_bytes,
            Some(n) if n >= MIN_MAX_RESPONSE_BYTES => n,
            Some(n) => {
                self.problem(
                    s,
                    "max_response_bytes",
                    &format!(
                        "= {n} bytes is too small: use at least \"1MiB\" (the default, \"256MiB\", fits a \
                         full page of 10000 large events)"
                    ),
                );
                base.max_response_bytes
            }
        };
        let transport = self.transport(s, base);
        let mut known = JUMPCLOUD_KEYS.to_vec();
        known.extend_from_slice(extra_keys);
        self.unknown_keys(s, &known);
        JumpcloudConfig {
            section: s.name.clone(),
            base_url,
            auth,
            org_id,
            services,
            poll_interval,
            page_size,
            catch_up_page_size,
            initial_lookback,
            overlap,
            min_request_interval,
            max_requests_per_second,
            request_timeout,
            retry,
            transport,
            retention,
            max_response_bytes,
        }
    }

    /// The API key, or the service account's client credentials, or what `base` has when neither is set.
    fn auth(
        &mut self,
        s: &mut Section,
        base: &JumpcloudAuth,
        variable: Option<&str>,
    ) -> JumpcloudAuth {
        let api_key = self.secret(s, "api_key", variable, false);
        let client_id = self
            .string(s, "client_id")
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty());
        let client_secret = self.secret(s, "client_secret", None, false);
        let token_url = self.url_opt(s, "token_url");
        match (api_key, client_id, client_secret) {
            (Some(key), None, None) => {
                if token_url.is_some() {
                    self.warn(s, "token_url", "is ignored: it serves service accounts (client_id), and this section uses api_key");
                }
                JumpcloudAuth::ApiKey(key)
            }
            (Some(_), _, _) => {
                self.problem(
                    s,
                    "api_key",
                    "and client_id/client_secret are both set: use an API key or a service account, not both",
                );
                JumpcloudAuth::Missing
            }
            (None, Some(client_id), Some(client_secret)) => JumpcloudAuth::ServiceAccount {
                client_id,
                client_secret,
                token_url: token_url.unwrap_or_else(|| match base {
                    JumpcloudAuth::ServiceAccount { token_url, .. } => token_url.clone(),
                    _ => DEFAULT_TOKEN_URL.to_string(),
                }),
            },
            (None, Some(_), None) => {
                self.problem(
                    s,
                    "client_secret",
                    "is missing: a service account needs client_secret (or client_secret_file) with client_id",
                );
                JumpcloudAuth::Missing
            }
            (None, None, Some(_)) => {
                self.problem(
                    s,
                    "client_id",
                    "is missing: a service account needs client_id with client_secret",
                );
                JumpcloudAuth::Missing
            }
            (None, None, None) => match (base, token_url) {
                (
                    JumpcloudAuth::ServiceAccount {
                        client_id,
                        client_secret,
                        ..
                    },
                    Some(token_url),
                ) => JumpcloudAuth::ServiceAccount {
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    token_url,
                },
                (base, _) => base.clone(),
            },
        }
    }

    fn services(&mut self, s: &mut Section, default: &[String]) -> Vec<String> {
        let default = default.to_vec();
        let Some(value) = s.table.remove("services") else {
            return default;
        };
        let Some(items) = value.as_array() else {
            self.problem(
                s,
                "services",
                "must be a list of names, for example [\"all\"] or [\"directory\", \"sso\"]",
            );
            return default;
        };
        let mut services = Vec::new();
        for item in items {
            match item.as_str() {
                Some(name) if !name.trim().is_empty() => {
                    if let Some(name) = self.expand(s, "services", name) {
                        services.push(name.trim().to_string());
                    }
                }
                _ => self.problem(
                    s,
                    "services",
                    &format!("has {item}, which is not a service name"),
                ),
            }
        }
        if services.is_empty() {
            self.problem(
                s,
                "services",
                "is empty: use [\"all\"] or a list such as [\"directory\", \"sso\"]",
            );
            return default;
        }
        if services.len() > 1 && services.iter().any(|name| name == "all") {
            self.problem(
                s,
                "services",
                "mixes \"all\" with other names: use [\"all\"] alone, or list the services",
            );
        }
        let unique: BTreeSet<&String> = services.iter().collect();
        if unique.len() != services.len() {
            self.warn(s, "services", "lists a service twice");
        }
        services
    }

    fn transport(&mut self, s: &mut Section, base: &JumpcloudConfig) -> Transport {
        let own = base.section == s.name;
        self.transport_of(s, &base.transport, own)
    }
}

//! Configuration: the model every other module reads (this file), and how it is made from a TOML file
//! (the child modules).
//!
//! Two forms: the single-stream form (`[jumpcloud]` + `[sekoia]`, one stream named `"default"`), and the
//! several-stream form (`[[streams]]`, each inheriting what it does not set from `[jumpcloud]`, and sent to
//! `[sekoia]` or a named destination `[sekoia.<name>]`). Both end as a list of [`StreamConfig`].
//!
//! A third form sends nowhere: `[outbox]` instead of `[sekoia]` seals every stream's events into bundle files
//! ([`OutboxConfig`]), which `jcdi-forwarder ship` sends from another host with a configuration of its own
//! that holds only `[sekoia]` (and `[sekoia.<stream>]`) and the bundles' key ([`ShipConfig`]).
//!
//! Entry points: [`Config::load`] (a file, `${VAR}` from the process environment),
//! [`Config::load_without_secrets`] (a file, for commands that never use the secrets) and
//! [`Config::parse`] (text, with the environment given as a function: what tests use). These three keep
//! their signatures: tools and tests build configurations through them.
//!
//! What to poll and where to send live only in [`Config::streams`] (find one with [`Config::stream`], or
//! [`Config::pick_stream`] for a command that works on one stream): `[jumpcloud]` and `[sekoia]` are
//! defaults the streams inherit, never read on their own.
//!
//! The files: `load` (the entry points and the top level of a file), `reader` (the TOML table reader:
//! typed values, unknown keys with "did you mean" hints), `env` (`${VAR}` expansion, [`Secret`], secrets
//! from files), `jumpcloud`, `sekoia`, `streams`, `local` (`[queue]`, `[api]`): the rules and defaults of
//! each section, `outbox` (`[outbox]` and the form of `ship`'s file), `network` (proxies and CA files: the helpers `http` uses).
//!
//! Invariants:
//! - Every problem in a file is reported at once, each naming the file, the key and what to do about it
//!   ([`ConfigErrors`]); a typo in a key name is an error, never silently ignored.
//! - Every key that has a sensible default may be omitted; small values (a 1 s poll interval, a zero overlap)
//!   are accepted with a warning, never refused, so test and lab set-ups keep working.
//! - Secrets (keys, client secrets, proxy URLs, which may carry credentials) are held in [`Secret`], whose
//!   `Debug` and `Display` never show the value; messages show proxies without their credentials.
//! - The process environment is read only through the `env` function given to [`Config::parse`] (`${VAR}`
//!   and the proxy variables alike), so tests never depend on, nor change, the real environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod env;
mod jumpcloud;
mod load;
mod local;
mod network;
mod outbox;
mod reader;
mod sekoia;
mod streams;
#[cfg(test)]
mod tests;

pub use crate::retry::RetryConfig;
pub use env::{expand_env, Secret};
pub use load::check_data_dir;
pub use network::{check_proxy_url, load_ca_file, redact_url};
pub use outbox::is_ship_form;

/// The default location of the sled queue, matching the packages' `StateDirectory=`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/jcdi-forwarder";
/// The largest event the Sekoia.io intake accepts; larger ones are dead-lettered, never sent.
pub const INTAKE_MAX_EVENT_BYTES: usize = 250 * 1024;
/// JumpCloud's OAuth2 token endpoint for service accounts.
pub const DEFAULT_TOKEN_URL: &str = "https://admin-oauth.id.jumpcloud.com/oauth2/token";

/// JumpCloud regions (`region = "..."` in a JumpCloud section) and their API hosts.
pub const JUMPCLOUD_REGIONS: &[(&str, &str)] = &[
    ("us", "https://api.jumpcloud.com"),
    ("eu", "https://api.eu.jumpcloud.com"),
    ("in", "https://api.in.jumpcloud.com"),
];

/// Sekoia.io regions (`region = "..."` in a Sekoia.io section).
pub const SEKOIA_REGIONS: &[&str] = &["fra1", "fra2", "mco1", "uae1", "usa1"];

/// The intake base URL of a Sekoia.io region: FRA1 has its own host, the others share one pattern.
pub fn sekoia_region_url(region: &str) -> String {
    if region == "fra1" {
        "https://intake.sekoia.io".to_string()
    } else {
        format!("https://intake.{region}.sekoia.io/api/v1/intake-http")
    }
}

/// The whole configuration of one agent.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the queue (a sled database) lives.
    pub data_dir: PathBuf,
    pub queue: QueueConfig,
    /// Every stream, in file order; never empty after a successful parse. The only place the JumpCloud and
    /// Sekoia.io settings live: `[jumpcloud]` and `[sekoia]` are defaults the streams inherit, and in the
    /// single-section form they make the one stream named `"default"`.
    pub streams: Vec<StreamConfig>,
    pub api: ApiConfig,
    /// `[outbox]`: every stream's events are sealed into bundle files instead of being sent; each
    /// stream's `sekoia` settings are then defaults, never used.
    pub outbox: Option<OutboxConfig>,
}

impl Config {
    /// The stream named `name`, if there is one.
    pub fn stream(&self, name: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|stream| stream.name == name)
    }

    /// The stream a command that works on one stream (a backfill) is for: the one named, or, when no name
    /// is given, the only one. The error lists the streams' names.
    pub fn pick_stream(&self, name: Option<&str>) -> Result<&StreamConfig, String> {
        let names = || {
            self.streams
                .iter()
                .map(|stream| stream.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (name, self.streams.as_slice()) {
            (Some(name), _) => self.stream(name).ok_or_else(|| {
                format!("no stream is named {name:?}; the streams are: {}", names())
            }),
            (None, [only]) => Ok(only),
            (None, _) => Err(format!(
                "there are several streams: name one with --stream ({})",
                names()
            )),
        }
    }
}

/// The `[api]` section: the local HTTP endpoint for metrics, health, status and admin actions.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `None` when turned off (`enabled = false`).
    pub listen: Option<std::net::SocketAddr>,
    /// `/health` turns 503 when a poller or the forwarder has been failing for longer than this.
    pub unhealthy_after: Duration,
}

/// One JumpCloud organization polled into the queue, and the intake its events go to.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Names the cursor, the dedup scope and the metrics label; `"default"` in the single-section form.
    pub name: String,
    pub jumpcloud: JumpcloudConfig,
    pub sekoia: SekoiaConfig,
}

/// The `[jumpcloud]` section (or one stream): where and how to poll Directory Insights.
#[derive(Clone, Debug)]
pub struct JumpcloudConfig {
    /// Where these settings were written (`jumpcloud`, `streams.acme`), so that messages name the key to fix.
    pub section: String,
    /// Without a trailing slash, e.g. `https://api.jumpcloud.com`.
    pub base_url: String,
    pub auth: JumpcloudAuth,
    pub org_id: Option<String>,
    pub services: Vec<String>,
    pub poll_interval: Duration,
    pub page_size: u32,
    /// The page size after a full page (a backlog is waiting): the API's largest, so catching up takes few
    /// requests.
    pub catch_up_page_size: u32,
    pub initial_lookback: Duration,
    pub overlap: Duration,
    /// The least time between two requests of one stream, when set (zero: only
    /// `max_requests_per_second` paces the requests). Kept for configurations written before the pacing
    /// adapted; the slower of the two wins.
    pub min_request_interval: Duration,
    /// The ceiling of the stream's request rate; the pace adapts below it when JumpCloud throttles.
    pub max_requests_per_second: u32,
    pub request_timeout: Duration,
    pub retry: RetryConfig,
    pub transport: Transport,
    /// How long JumpCloud keeps events (90 days; 15 on the lowest plan): backfills cannot reach further.
    pub retention: Duration,
    /// The largest answer read from the API; a larger one is refused unread.
    pub max_response_bytes: u64,
}

impl JumpcloudConfig {
    /// The most requests per second the stream may send: `max_requests_per_second`, or fewer when
    /// `min_request_interval` asks for it.
    pub fn request_ceiling(&self) -> f64 {
        let ceiling = f64::from(self.max_requests_per_second.max(1));
        if self.min_request_interval.is_zero() {
            ceiling
        } else {
            ceiling.min(1.0 / self.min_request_interval.as_secs_f64())
        }
    }
}

/// How a stream authenticates to JumpCloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JumpcloudAuth {
    /// `x-api-key` (an administrator's key, or an MSP key with `org_id`).
    ApiKey(Secret),
    /// OAuth2 client credentials; the bearer token is fetched from `token_url` and refreshed.
    ServiceAccount {
        client_id: String,
        client_secret: Secret,
        token_url: String,
    },
    /// Not configured (only in `[jumpcloud]` of the several-stream form, where each stream sets its own).
    Missing,
}

/// The `[sekoia]` section (or a `[sekoia.<name>]` destination): where and how to forward.
#[derive(Clone, Debug)]
pub struct SekoiaConfig {
    /// Where these settings were written (`sekoia`, `sekoia.acme`), for messages.
    pub section: String,
    /// Without a trailing slash; `/batch` is appended.
    pub intake_url: String,
    pub intake_key: Secret,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    /// Batches of one stream sent at once (each acknowledged on its own 2xx).
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub retry: RetryConfig,
    pub transport: Transport,
}

/// How to reach one destination: the proxy and the extra trusted CAs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transport {
    pub proxy: ProxyConfig,
    /// A PEM bundle trusted in addition to the system's roots (a corporate or TLS-inspecting CA).
    pub ca_file: Option<PathBuf>,
    /// The section whose `ca_file` and `proxy` fix this transport (`jumpcloud`, `sekoia.acme`).
    pub section: String,
}

impl Transport {
    /// Direct connections, system roots only (the stand-ins' own tools, unit tests).
    pub fn direct() -> Transport {
        Transport {
            proxy: ProxyConfig::Direct,
            ca_file: None,
            section: String::new(),
        }
    }
}

/// Which proxy, if any, requests go through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProxyConfig {
    /// From `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` (upper or lower case), read when the
    /// configuration is loaded. Each proxy URL may carry credentials.
    Environment {
        http: Option<Secret>,
        https: Option<Secret>,
        no_proxy: String,
    },
    /// `proxy = "http://user:pass@host:port"`: every request of the section goes through it.
    Url(Secret),
    /// `proxy = "none"`: direct, whatever the environment says.
    Direct,
}

/// The `[outbox]` section: where sealed bundles are written, and when a bundle is sealed.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// The folder the bundles are written to (created if missing).
    pub dir: PathBuf,
    /// A bundle is sealed when it holds this many events...
    pub max_bundle_events: usize,
    /// ...or when its oldest event has waited this long in the queue and no more are coming.
    pub max_bundle_age: Duration,
    /// Signs each bundle's manifest (HMAC-SHA256); `ship` must hold the same key.
    pub hmac_key: Option<Secret>,
}

/// The configuration of `jcdi-forwarder ship`: where each stream's bundles are sent, and the key that
/// checks them. Nothing about JumpCloud or a queue.
#[derive(Clone, Debug)]
pub struct ShipConfig {
    /// `[sekoia]`: the destination of every stream without a section of its own. Its `intake_key` is empty
    /// when it is not set, which is allowed when named sections exist (such streams then have none).
    pub sekoia: SekoiaConfig,
    /// `[sekoia.<stream>]`: a stream's own destination, by stream name (inheriting from `[sekoia]`).
    pub streams: std::collections::BTreeMap<String, SekoiaConfig>,
    /// `[outbox] hmac_key`: when set, a bundle must carry a matching signature.
    pub hmac_key: Option<Secret>,
}

impl ShipConfig {
    /// Where the bundles of `stream` go: its own section, else `[sekoia]` when that has a key.
    pub fn destination(&self, stream: &str) -> Option<&SekoiaConfig> {
        self.streams
            .get(stream)
            .or((!self.sekoia.intake_key.expose().is_empty()).then_some(&self.sekoia))
    }
}

/// The `[queue]` section.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// When the queued events reach this many bytes, polling pauses; nothing is dropped. With several
    /// streams, each stream may hold at most its equal share of it (so that one stalled or noisy
    /// organization cannot fill the queue for the others).
    pub max_bytes: u64,
    /// How long event ids are remembered for deduplication (at least `overlap` plus an hour is kept
    /// whatever this says). A backfill within this window sends nothing twice.
    pub dedup_window: Duration,
    /// While the queue's filesystem has less free space than this and events wait to be forwarded,
    /// polling pauses: a full disk must never stop the forwarder from draining (0 turns it off).
    pub min_free_disk: u64,
}

/// Every problem found in one configuration file.
#[derive(Debug)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(
            f,
            "{}: {} problem{} found:",
            self.file,
            count,
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A configuration that parsed (an agent's, or `ship`'s), with the warnings about values that work but are
/// unusual.
#[derive(Debug)]
pub struct Loaded<C = Config> {
    pub config: C,
    pub warnings: Vec<String>,
}

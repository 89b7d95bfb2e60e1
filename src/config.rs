//! Configuration: reads the TOML file, resolves `${VAR}` / `${VAR:-default}` from the environment, reads
//! `*_file` secrets, applies defaults and region presets, and checks every value.
//!
//! Two forms: the single-stream form (`[jumpcloud]` + `[sekoia]`, one stream named `"default"`), and the
//! several-stream form (`[[streams]]`, each inheriting what it does not set from `[jumpcloud]`, and sent to
//! `[sekoia]` or a named destination `[sekoia.<name>]`). Both end as a list of [`StreamConfig`].
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::event::DEFAULT_STREAM;
pub use crate::retry::RetryConfig;

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
    /// The first stream's JumpCloud settings (in the single-section form, the only stream), for summaries
    /// and single-stream tools. The pipeline uses [`Config::streams`].
    pub jumpcloud: JumpcloudConfig,
    /// The first stream's destination, like `jumpcloud`.
    pub sekoia: SekoiaConfig,
    pub queue: QueueConfig,
    /// Every stream, in file order; never empty after a successful parse.
    pub streams: Vec<StreamConfig>,
    pub api: ApiConfig,
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
    /// The least time between two requests of one stream (JumpCloud asks for about 1–2 requests/s per key).
    pub min_request_interval: Duration,
    pub request_timeout: Duration,
    pub retry: RetryConfig,
    pub transport: Transport,
    /// How long JumpCloud keeps events (90 days; 15 on the lowest plan): backfills cannot reach further.
    pub retention: Duration,
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

/// A secret value (API key, intake key, client secret, proxy URL). It is printed as `***` everywhere.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one header or body field that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
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

/// A configuration that parsed, with the warnings about values that work but are unusual.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and checks the file at `path`, resolving `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
        let (text, file) = read_file(path)?;
        Config::parse(&text, &file, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::load`], for commands that never use the secrets (`status`, `dead-letter`): an unset
    /// variable is not an error there, so they work without the service's environment file.
    pub fn load_without_secrets(path: &Path) -> Result<Loaded, ConfigErrors> {
        let (text, file) = read_file(path)?;
        Config::parse(&text, &file, &|name| {
            Some(std::env::var(name).unwrap_or_else(|_| "unset".to_string()))
        })
    }

    /// Parses configuration text; `env` resolves `${VAR}` references. `file` names the source in messages.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigErrors> {
        let table: toml::Table = text.parse().map_err(|err: toml::de::Error| ConfigErrors {
            file: file.to_string(),
            problems: vec![format!("not valid TOML: {}", err.to_string().trim())],
        })?;
        let mut reader = Reader {
            env,
            problems: Vec::new(),
            warnings: Vec::new(),
            env_proxy: None,
        };
        let config = reader.config(table);
        if reader.problems.is_empty() {
            Ok(Loaded {
                config,
                warnings: reader.warnings,
            })
        } else {
            Err(ConfigErrors {
                file: file.to_string(),
                problems: reader.problems,
            })
        }
    }
}

fn read_file(path: &Path) -> Result<(String, String), ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(err) => Err(ConfigErrors {
            file,
            problems: vec![format!(
                "cannot read the file: {err} (pass the right path with --config)"
            )],
        }),
    }
}

/// Checks that the data folder exists or can be created, and is writable (for `validate`).
pub fn check_data_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|err| {
        format!(
            "data_dir = {:?}: cannot create it: {err} (create it, or give the agent's user write access)",
            dir.display().to_string()
        )
    })?;
    tempfile::tempfile_in(dir).map(drop).map_err(|err| {
        format!(
            "data_dir = {:?}: not writable: {err} (give the agent's user write access)",
            dir.display().to_string()
        )
    })
}

/// Walks the TOML tables, taking known keys and recording problems as it goes.
struct Reader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
    warnings: Vec<String>,
    /// The proxy settings of the environment, read (and checked) once, when a section first needs them.
    env_proxy: Option<ProxyConfig>,
}

/// One table being read; whatever is left in it at the end is an unknown key.
struct Section {
    name: String,
    table: toml::Table,
}

impl Section {
    fn new(name: impl Into<String>, table: toml::Table) -> Section {
        Section {
            name: name.into(),
            table,
        }
    }

    fn key(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }
}

const TOP_KEYS: &[&str] = &["data_dir", "jumpcloud", "sekoia", "queue", "streams", "api"];

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
    "request_timeout",
    "retry_initial",
    "retry_max",
    "proxy",
    "ca_file",
    "retention",
];

const SEKOIA_KEYS: &[&str] = &[
    "region",
    "intake_url",
    "intake_key",
    "intake_key_file",
    "batch_max_events",
    "batch_max_bytes",
    "max_in_flight",
    "request_timeout",
    "retry_initial",
    "retry_max",
    "proxy",
    "ca_file",
];

/// Keys of a `[[streams]]` table besides the JumpCloud ones.
const STREAM_KEYS: &[&str] = &["name", "destination", "intake_key", "intake_key_file"];

impl Reader<'_> {
    fn config(&mut self, table: toml::Table) -> Config {
        let mut top = Section::new("", table);
        let data_dir = self
            .string(&mut top, "data_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let streams_value = top.table.remove("streams");
        let several = streams_value.is_some();
        let mut jumpcloud = self.section(&mut top, "jumpcloud", !several);
        let mut sekoia = self.section(&mut top, "sekoia", !several);
        let mut queue = self.section(&mut top, "queue", false);
        let mut api = self.section(&mut top, "api", false);
        self.unknown_keys(&top, TOP_KEYS);

        // Named destinations are the sub-tables of [sekoia]; what remains are its own keys.
        let named: Vec<(String, toml::Table)> = {
            let names: Vec<String> = sekoia
                .table
                .iter()
                .filter(|(_, value)| value.is_table())
                .map(|(name, _)| name.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|name| match sekoia.table.remove(&name) {
                    Some(toml::Value::Table(table)) => Some((name, table)),
                    _ => None,
                })
                .collect()
        };
        let jumpcloud = self.jumpcloud(&mut jumpcloud, None, !several, &[]);
        let sekoia = self.sekoia(&mut sekoia, None, !several);
        let streams = if let Some(value) = streams_value {
            let mut destinations = BTreeMap::new();
            for (name, table) in named {
                let mut section = Section::new(format!("sekoia.{name}"), table);
                if !valid_name(&name) {
                    self.problems.push(format!(
                        "[sekoia.{name}]: a destination name may hold only letters, digits, '-' and '_'"
                    ));
                }
                let destination = self.sekoia(&mut section, Some(&sekoia), true);
                destinations.insert(name, destination);
            }
            let streams = self.streams(value, &jumpcloud, &sekoia, &destinations);
            let used: BTreeSet<&str> = streams
                .iter()
                .filter_map(|stream| stream.sekoia.section.strip_prefix("sekoia."))
                .collect();
            for name in destinations.keys() {
                if !used.contains(name.as_str()) {
                    self.warnings.push(format!(
                        "[sekoia.{name}] is not the destination of any stream (streams name it with destination = {name:?})"
                    ));
                }
            }
            streams
        } else {
            for (name, _) in named {
                self.problems.push(format!(
                    "[sekoia.{name}] is a named destination, used only by [[streams]]: add [[streams]] tables \
                     (see docs/configuration-network.md), or remove it"
                ));
            }
            vec![StreamConfig {
                name: DEFAULT_STREAM.to_string(),
                jumpcloud: jumpcloud.clone(),
                sekoia: sekoia.clone(),
            }]
        };

        let max_bytes = self
            .size(&mut queue, "max_bytes")
            .unwrap_or(10 * 1024 * 1024 * 1024);
        if max_bytes == 0 {
            self.problem(
                &queue,
                "max_bytes",
                "must be more than 0 (for example \"10GiB\")",
            );
        }
        let dedup_window =
            self.duration(&mut queue, "dedup_window", Duration::from_secs(7 * 86_400));
        let min_free_disk = self
            .size(&mut queue, "min_free_disk")
            .unwrap_or(256 * 1024 * 1024);
        self.unknown_keys(&queue, &["max_bytes", "dedup_window", "min_free_disk"]);
        let api = self.api(&mut api);
        let (first_jumpcloud, first_sekoia) = match streams.first() {
            Some(first) => (first.jumpcloud.clone(), first.sekoia.clone()),
            None => (jumpcloud, sekoia),
        };
        Config {
            data_dir,
            jumpcloud: first_jumpcloud,
            sekoia: first_sekoia,
            queue: QueueConfig {
                max_bytes,
                dedup_window,
                min_free_disk,
            },
            api,
            streams,
        }
    }

    fn api(&mut self, s: &mut Section) -> ApiConfig {
        let enabled = match s.table.remove("enabled") {
            None => true,
            Some(toml::Value::Boolean(enabled)) => enabled,
            Some(other) => {
                self.problem(s, "enabled", &format!("= {other} must be true or false"));
                true
            }
        };
        let text = self
            .string(s, "listen")
            .unwrap_or_else(|| "127.0.0.1:9464".to_string());
        let listen = match text.trim().parse::<std::net::SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    self.warn(
                        s,
                        "listen",
                        "is not a loopback address: metrics and status are then reachable from the network \
                         (admin actions are still refused to other hosts)",
                    );
                }
                Some(addr)
            }
            Err(_) => {
                self.problem(
                    s,
                    "listen",
                    &format!("= {text:?} is not an address and port such as \"127.0.0.1:9464\""),
                );
                None
            }
        };
        let unhealthy_after = self.duration(s, "unhealthy_after", Duration::from_secs(300));
        self.unknown_keys(s, &["enabled", "listen", "unhealthy_after"]);
        ApiConfig {
            listen: listen.filter(|_| enabled),
            unhealthy_after,
        }
    }

    /// Reads `[[streams]]`: each table inherits what it does not set from `[jumpcloud]`, and is sent to a
    /// named destination, or to `[sekoia]` with its own intake key.
    fn streams(
        &mut self,
        value: toml::Value,
        jumpcloud: &JumpcloudConfig,
        sekoia: &SekoiaConfig,
        destinations: &BTreeMap<String, SekoiaConfig>,
    ) -> Vec<StreamConfig> {
        let toml::Value::Array(items) = value else {
            self.problems.push(
                "streams must be a list of tables: write each stream as [[streams]] with name = \"...\""
                    .to_string(),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.problems.push(
                "streams is empty: add at least one [[streams]] table, or use the [jumpcloud] form"
                    .to_string(),
            );
        }
        let mut streams: Vec<StreamConfig> = Vec::new();
        let mut names = BTreeSet::new();
        for (index, item) in items.into_iter().enumerate() {
            let toml::Value::Table(table) = item else {
                self.problems.push(format!(
                    "streams[{index}] must be a table: write it as [[streams]] followed by its keys"
                ));
                continue;
            };
            let mut s = Section::new(format!("streams[{index}]"), table);
            let name = match self.string(&mut s, "name") {
                Some(name) if valid_name(&name) => name,
                Some(name) => {
                    self.problem(
                        &s,
                        "name",
                        &format!(
                            "= {name:?} may hold only letters, digits, '-' and '_' (at most 64)"
                        ),
                    );
                    format!("#{index}")
                }
                None => {
                    if !self.problems.iter().any(|p| p.starts_with(&s.key("name"))) {
                        self.problem(
                            &s,
                            "name",
                            "is missing: each stream needs a unique name (it keys the stream's cursor; \
                             name = \"default\" keeps the cursor of the [jumpcloud] form)",
                        );
                    }
                    format!("#{index}")
                }
            };
            s.name = format!("streams.{name}");
            if !names.insert(name.clone()) {
                self.problems.push(format!(
                    "{} is used by two streams: each stream needs its own name (it keys its cursor)",
                    s.key("name")
                ));
            }
            let destination = self.string(&mut s, "destination");
            let own_key = self.secret(&mut s, "intake_key", None, false);
            let mut config = self.jumpcloud(&mut s, Some(jumpcloud), true, STREAM_KEYS);
            config.section = s.name.clone();
            let sekoia = match (destination, own_key) {
                (Some(_), Some(_)) => {
                    self.problem(
                        &s,
                        "destination",
                        "and intake_key are both set: name a [sekoia.<name>] destination, or give the stream \
                         its own intake_key, not both",
                    );
                    sekoia.clone()
                }
                (Some(destination), None) => match destinations.get(&destination) {
                    Some(found) => found.clone(),
                    None => {
                        let known: Vec<&str> = destinations.keys().map(String::as_str).collect();
                        self.problem(
                            &s,
                            "destination",
                            &format!(
                                "= {destination:?} names no [sekoia.{destination}] section (defined: {})",
                                if known.is_empty() { "none".to_string() } else { known.join(", ") }
                            ),
                        );
                        sekoia.clone()
                    }
                },
                (None, Some(key)) => SekoiaConfig {
                    section: s.name.clone(),
                    intake_key: key,
                    ..sekoia.clone()
                },
                (None, None) => {
                    if sekoia.intake_key.expose().is_empty() {
                        self.problem(
                            &s,
                            "destination",
                            "is missing: set destination = \"<name>\" of a [sekoia.<name>] section, or \
                             intake_key (or intake_key_file) for this stream",
                        );
                    }
                    sekoia.clone()
                }
            };
            streams.push(StreamConfig {
                name,
                jumpcloud: config,
                sekoia,
            });
        }
        // The same organization polled twice is collected twice: almost surely a copy-paste slip.
        let mut seen: BTreeMap<(String, String), &str> = BTreeMap::new();
        for stream in &streams {
            if let Some(org) = &stream.jumpcloud.org_id {
                let key = (stream.jumpcloud.base_url.clone(), org.clone());
                if let Some(other) = seen.insert(key, &stream.name) {
                    self.warnings.push(format!(
                        "streams.{}.org_id is also the org_id of stream {other:?}: that organization is collected twice",
                        stream.name
                    ));
                }
            }
        }
        streams
    }

    /// Reads a JumpCloud section. `base` gives the values of keys it does not set (the `[jumpcloud]` section
    /// for a stream); checks of small values run only on the keys the section sets, so that an inherited
    /// value is warned about once. `extra_keys` are the other keys this table may hold.
    fn jumpcloud(
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
            catch_up_page_size: 1000,
            initial_lookback: Duration::from_secs(24 * 3600),
            overlap: Duration::from_secs(600),
            min_request_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(60),
            retry: RetryConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            transport: Transport::direct(),
            retention: Duration::from_secs(90 * 86_400),
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
            request_timeout,
            retry,
            transport,
            retention,
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

    /// Reads a Sekoia.io section; `base` gives the values of keys it does not set (`[sekoia]` for a named
    /// destination).
    fn sekoia(
        &mut self,
        s: &mut Section,
        base: Option<&SekoiaConfig>,
        key_required: bool,
    ) -> SekoiaConfig {
        let defaults = SekoiaConfig {
            section: s.name.clone(),
            intake_url: sekoia_region_url("fra1"),
            intake_key: Secret::new(""),
            batch_max_events: 1000,
            batch_max_bytes: 4 * 1024 * 1024,
            max_in_flight: 2,
            request_timeout: Duration::from_secs(30),
            retry: RetryConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            transport: Transport::direct(),
        };
        let base = base.unwrap_or(&defaults);
        let region_url = self.string(s, "region").and_then(|region| {
            let region = region.trim().to_ascii_lowercase();
            if SEKOIA_REGIONS.contains(&region.as_str()) {
                Some(sekoia_region_url(&region))
            } else {
                self.problem(
                    s,
                    "region",
                    &format!(
                        "= {region:?} is not a known Sekoia.io region: use one of {}, or set intake_url",
                        SEKOIA_REGIONS.join(", ")
                    ),
                );
                None
            }
        });
        let intake_url = match (self.url_opt(s, "intake_url"), region_url) {
            (Some(url), Some(_)) => {
                self.warn(s, "region", "is ignored: intake_url is set and wins");
                url
            }
            (Some(url), None) | (None, Some(url)) => url,
            (None, None) => base.intake_url.clone(),
        };
        let variable = (s.name == "sekoia").then_some("SEKOIA_INTAKE_KEY");
        let intake_key = match self.secret(s, "intake_key", variable, key_required) {
            Some(key) => key,
            None => base.intake_key.clone(),
        };
        let batch_max_events = match self.integer(s, "batch_max_events") {
            None => base.batch_max_events,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    s,
                    "batch_max_events",
                    &format!("= {n} is out of range: use 1 to 100000"),
                );
                base.batch_max_events
            }
        };
        let batch_max_bytes = self
            .size(s, "batch_max_bytes")
            .unwrap_or(base.batch_max_bytes as u64);
        if batch_max_bytes < INTAKE_MAX_EVENT_BYTES as u64 || batch_max_bytes > 9 * 1024 * 1024 {
            self.problem(
                s,
                "batch_max_bytes",
                &format!(
                    "= {batch_max_bytes} bytes is out of range: use \"250KiB\" to \"9MiB\" (the intake refuses requests over 10 MiB)"
                ),
            );
        }
        let max_in_flight = match self.integer(s, "max_in_flight") {
            None => base.max_in_flight,
            Some(n) if (1..=16).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    s,
                    "max_in_flight",
                    &format!("= {n} is out of range: use 1 to 16"),
                );
                base.max_in_flight
            }
        };
        let request_timeout = self.duration(s, "request_timeout", base.request_timeout);
        if request_timeout.is_zero() {
            self.problem(
                s,
                "request_timeout",
                "must be more than 0 (for example \"30s\")",
            );
        }
        let retry = self.retry(s, base.retry);
        let transport = self.transport_of(s, &base.transport, base.section == s.name);
        self.unknown_keys(s, SEKOIA_KEYS);
        SekoiaConfig {
            section: s.name.clone(),
            intake_url,
            intake_key,
            batch_max_events,
            batch_max_bytes: batch_max_bytes as usize,
            max_in_flight,
            request_timeout,
            retry,
            transport,
        }
    }

    fn retry(&mut self, s: &mut Section, base: RetryConfig) -> RetryConfig {
        let initial = self.duration(s, "retry_initial", base.initial);
        let max = self.duration(s, "retry_max", base.max);
        if initial.is_zero() {
            self.problem(
                s,
                "retry_initial",
                "must be more than 0 (for example \"1s\")",
            );
        }
        if max < initial {
            self.problem(s, "retry_max", "must not be shorter than retry_initial");
        }
        RetryConfig { initial, max }
    }

    fn transport(&mut self, s: &mut Section, base: &JumpcloudConfig) -> Transport {
        let own = base.section == s.name;
        self.transport_of(s, &base.transport, own)
    }

    /// `proxy` and `ca_file` of a section, else those of `base`; a section without a base of its own
    /// (`own`) takes the proxy from the environment.
    fn transport_of(&mut self, s: &mut Section, base: &Transport, own: bool) -> Transport {
        let proxy = match self.string(s, "proxy") {
            Some(text) => match text.trim() {
                "" | "none" | "direct" => ProxyConfig::Direct,
                url => match check_proxy_url(url) {
                    Ok(url) => ProxyConfig::Url(Secret::new(url)),
                    Err(why) => {
                        self.problem(s, "proxy", &format!("= {:?} {why}", redact_url(url)));
                        ProxyConfig::Direct
                    }
                },
            },
            None if own => self.environment_proxy(),
            None => base.proxy.clone(),
        };
        let ca_set = s.has("ca_file");
        let ca_file = match self.string(s, "ca_file") {
            Some(path) if path.trim().is_empty() => None,
            Some(path) => {
                let path = PathBuf::from(path.trim());
                match load_ca_file(&path) {
                    Ok(_) => Some(path),
                    Err(why) => {
                        self.problem(s, "ca_file", &why);
                        None
                    }
                }
            }
            None if own => None,
            None => base.ca_file.clone(),
        };
        // The setting to fix is where the value was written, or the section itself when it inherits none.
        let section = if !ca_set && !own && base.ca_file.is_some() {
            base.section.clone()
        } else {
            s.name.clone()
        };
        Transport {
            proxy,
            ca_file,
            section,
        }
    }

    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, upper case first then lower case, as curl
    /// reads them. A proxy URL that cannot be used is a problem: silently going direct would fail later
    /// with a less clear message.
    fn environment_proxy(&mut self) -> ProxyConfig {
        if let Some(proxy) = &self.env_proxy {
            return proxy.clone();
        }
        let read = |reader: &mut Self, names: [&str; 2]| -> Option<Secret> {
            let (name, value) = names.iter().find_map(|name| {
                (reader.env)(name)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (*name, value))
            })?;
            match check_proxy_url(value.trim()) {
                Ok(url) => Some(Secret::new(url)),
                Err(why) => {
                    reader.problems.push(format!(
                        "the environment variable {name} = {:?} {why}",
                        redact_url(value.trim())
                    ));
                    None
                }
            }
        };
        let all = read(self, ["ALL_PROXY", "all_proxy"]);
        let https = read(self, ["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone());
        let http = read(self, ["HTTP_PROXY", "http_proxy"]).or(all);
        let no_proxy = ["NO_PROXY", "no_proxy"]
            .iter()
            .find_map(|name| (self.env)(name))
            .unwrap_or_default();
        let proxy = if https.is_none() && http.is_none() {
            ProxyConfig::Direct
        } else {
            ProxyConfig::Environment {
                http,
                https,
                no_proxy,
            }
        };
        self.env_proxy = Some(proxy.clone());
        proxy
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

    fn section(&mut self, top: &mut Section, name: &'static str, required: bool) -> Section {
        match top.table.remove(name) {
            Some(toml::Value::Table(table)) => Section::new(name, table),
            Some(_) => {
                self.problems
                    .push(format!("{name} must be a table: write it as [{name}]"));
                Section::new(name, toml::Table::new())
            }
            None => {
                if required {
                    self.problems.push(format!(
                        "[{name}] section is missing (see the README's configuration reference)"
                    ));
                }
                Section::new(name, toml::Table::new())
            }
        }
    }

    fn unknown_keys(&mut self, s: &Section, known: &[&str]) {
        for key in s.table.keys() {
            let hint = closest(key, known)
                .map(|k| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            self.problems.push(format!(
                "{} is not a known key{hint}; known keys here: {}",
                s.key(key),
                known.join(", ")
            ));
        }
    }

    fn problem(&mut self, s: &Section, key: &str, what: &str) {
        self.problems.push(format!("{} {what}", s.key(key)));
    }

    fn warn(&mut self, s: &Section, key: &str, what: &str) {
        self.warnings.push(format!("{} {what}", s.key(key)));
    }

    /// Takes a string value and resolves `${VAR}` in it.
    fn string(&mut self, s: &mut Section, key: &str) -> Option<String> {
        let value = s.table.remove(key)?;
        match value {
            toml::Value::String(text) => self.expand(s, key, &text),
            other => {
                self.problem(s, key, &format!("must be a string in quotes, not {other}"));
                None
            }
        }
    }

    /// A secret from `key` (with `${VAR}`) or from the file named by `key_file`. `None` when neither is
    /// set (a problem when `required`); an empty value is always a problem. `variable` names the usual
    /// environment variable, for the hint.
    fn secret(
        &mut self,
        s: &mut Section,
        key: &str,
        variable: Option<&str>,
        required: bool,
    ) -> Option<Secret> {
        let file_key = format!("{key}_file");
        let inline = self.string(s, key);
        let from_file = self.string(s, &file_key);
        let value = match (inline, from_file) {
            (Some(_), Some(_)) => {
                self.problem(s, key, &format!("and {file_key} are both set: keep one"));
                return None;
            }
            (Some(value), None) => value,
            (None, Some(path)) => self.read_secret_file(s, &file_key, Path::new(path.trim()))?,
            (None, None) => {
                let already = self
                    .problems
                    .iter()
                    .any(|p| p.starts_with(&s.key(key)) || p.starts_with(&s.key(&file_key)));
                if required && !already {
                    let var = variable.unwrap_or("VARIABLE");
                    self.problem(
                        s,
                        key,
                        &format!("is missing: add {key} = \"${{{var}}}\" and set {var} in the environment (or {file_key} = \"PATH\")"),
                    );
                }
                return None;
            }
        };
        let value = value.trim();
        if value.is_empty() {
            let hint = match variable {
                Some(var) => format!(
                    "set {var} (for the service, in /etc/jcdi-forwarder/jcdi-forwarder.env)"
                ),
                None => "check the variable or file it comes from".to_string(),
            };
            self.problem(s, key, &format!("is empty: {hint}"));
            return None;
        }
        Some(Secret(value.to_string()))
    }

    /// Reads a secret file (trailing newline removed). A file others may read is a warning: the secret is
    /// then as exposed as if it were written in the configuration.
    fn read_secret_file(&mut self, s: &Section, key: &str, path: &Path) -> Option<String> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(mode) = loose_mode(path) {
                    self.warn(
                        s,
                        key,
                        &format!(
                            "= {shown:?} is readable by group or others (mode {mode:o}): chmod 600 it, owned by \
                             the agent's user (or use systemd's LoadCredential=)"
                        ),
                    );
                }
                Some(text)
            }
            Err(err) => {
                self.problem(
                    s,
                    key,
                    &format!("= {shown:?} cannot be read: {err} (check the path and that the agent's user may read it)"),
                );
                None
            }
        }
    }

    /// An http(s) URL without trailing slash, checked; `None` when the key is absent.
    fn url_opt(&mut self, s: &mut Section, key: &str) -> Option<String> {
        let url = self.string(s, key)?;
        let url = url.trim().trim_end_matches('/').to_string();
        match url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http") | Some("https"))
                    && uri.host().is_some() =>
            {
                let loopback = matches!(
                    uri.host(),
                    Some("127.0.0.1") | Some("localhost") | Some("[::1]")
                );
                if uri.scheme_str() == Some("http") && !loopback {
                    self.warn(
                        s,
                        key,
                        "uses plain http: the key would cross the network unencrypted; use https",
                    );
                }
                if uri.query().is_some() {
                    self.problem(s, key, &format!("= {url:?} must not have a query string"));
                }
            }
            _ => self.problem(
                s,
                key,
                &format!("= {url:?} is not an http(s) URL (for example \"https://…\")"),
            ),
        }
        Some(url)
    }

    fn integer(&mut self, s: &mut Section, key: &str) -> Option<i64> {
        match s.table.remove(key)? {
            toml::Value::Integer(n) => Some(n),
            toml::Value::String(text) => {
                let text = self.expand(s, key, &text)?;
                match text.trim().parse::<i64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.problem(s, key, &format!("= {text:?} is not a whole number"));
                        None
                    }
                }
            }
            other => {
                self.problem(s, key, &format!("= {other} is not a whole number"));
                None
            }
        }
    }

    fn duration(&mut self, s: &mut Section, key: &str, default: Duration) -> Duration {
        let Some(value) = s.table.remove(key) else {
            return default;
        };
        let text = match value {
            toml::Value::String(text) => match self.expand(s, key, &text) {
                Some(text) => text,
                None => return default,
            },
            // A bare number is taken as seconds, as many agents do.
            toml::Value::Integer(n) if n >= 0 => return Duration::from_secs(n as u64),
            other => {
                self.problem(
                    s,
                    key,
                    &format!(
                        "= {other} is not a duration: write it like \"60s\", \"10m\" or \"24h\""
                    ),
                );
                return default;
            }
        };
        match humantime::parse_duration(text.trim()) {
            Ok(duration) => duration,
            Err(err) => {
                self.problem(
                    s,
                    key,
                    &format!("= {text:?} is not a duration ({err}): write it like \"60s\", \"10m\" or \"24h\""),
                );
                default
            }
        }
    }

    fn size(&mut self, s: &mut Section, key: &str) -> Option<u64> {
        let value = s.table.remove(key)?;
        let text = match value {
            toml::Value::String(text) => self.expand(s, key, &text)?,
            toml::Value::Integer(n) if n >= 0 => return Some(n as u64),
            other => {
                self.problem(
                    s,
                    key,
                    &format!("= {other} is not a size: write it like \"4MiB\" or \"10GiB\""),
                );
                return None;
            }
        };
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(size) => Some(size.as_u64()),
            Err(_) => {
                self.problem(
                    s,
                    key,
                    &format!("= {text:?} is not a size: write it like \"4MiB\" or \"10GiB\""),
                );
                None
            }
        }
    }

    /// Resolves `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. A missing variable is a problem.
    fn expand(&mut self, s: &Section, key: &str, text: &str) -> Option<String> {
        match expand_env(text, self.env) {
            Ok(value) => Some(value),
            Err(err) => {
                self.problem(s, key, &err);
                None
            }
        }
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` with values from `env`.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("has an unclosed ${{ in {text:?}: write ${{VAR}}"));
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                return Err(format!(
                    "has ${{{inner}}}, which is not a valid variable name"
                ));
            }
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "uses ${{{name}}}, but the environment variable {name} is not set: set it, or write ${{{name}:-default}}"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A name usable as a stream or destination name: it keys cursors and labels metrics.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a proxy URL and returns it with a scheme (`host:3128` means `http://host:3128`, as curl reads it).
/// Only plain-http proxies are supported: the tunnel they open (CONNECT) still carries TLS end to end.
pub fn check_proxy_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let uri: http::Uri = full.parse().map_err(|_| {
        "is not a proxy URL: write it like \"http://proxy.example.com:3128\"".to_string()
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "uses https://: a proxy reached over TLS is not supported; use http:// (the \
                        tunnel through it still carries TLS end to end)"
                    .to_string(),
            )
        }
        Some(other) => {
            return Err(format!(
                "uses {other}://: only HTTP proxies (CONNECT) are supported; write http://host:port"
            ))
        }
        None => {}
    }
    let host_ok = uri
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
        .is_some_and(|host_port| !host_port.is_empty() && !host_port.starts_with(':'));
    if !host_ok {
        return Err("has no host: write it like \"http://proxy.example.com:3128\"".to_string());
    }
    Ok(full)
}

/// A URL as it may be shown: without the `user:password@` part.
pub fn redact_url(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => text.to_string(),
    }
}

/// Reads a PEM bundle of CA certificates; an error says what is wrong with it, for `ca_file`.
pub fn load_ca_file(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let shown = path.display().to_string();
    let iter = rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|err| {
        format!("= {shown:?} cannot be read: {err} (a PEM file of CA certificates is expected)")
    })?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|err| format!("= {shown:?} is not a valid PEM bundle: {err}"))?;
    if certs.is_empty() {
        return Err(format!(
            "= {shown:?} holds no certificate: a PEM file with \"-----BEGIN CERTIFICATE-----\" blocks is expected"
        ));
    }
    Ok(certs)
}

/// The file's mode when group or others may read it.
#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_path: &Path) -> Option<u32> {
    None
}

/// The known key nearest to a misspelt one, if any is near enough to be a likely typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2.max(key.len() / 4))
        .min()
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "JUMPCLOUD_API_KEY" => Some("jc-secret".into()),
            "SEKOIA_INTAKE_KEY" => Some("sk-secret".into()),
            _ => None,
        }
    }

    const ISSUE_FORM: &str = r#"
data_dir = "/var/lib/jcdi-forwarder"

[jumpcloud]
base_url = "https://api.jumpcloud.com"
api_key = "${JUMPCLOUD_API_KEY}"
org_id = "abc"
services = ["all"]
poll_interval = "60s"
page_size = 1000
initial_lookback = "24h"
overlap = "10m"

[sekoia]
intake_url = "https://intake.sekoia.io"
intake_key = "${SEKOIA_INTAKE_KEY}"
batch_max_events = 1000
batch_max_bytes = "4MiB"

[queue]
max_bytes = "10GiB"
"#;

    #[test]
    fn the_documented_form_parses() {
        let loaded = Config::parse(ISSUE_FORM, "c.toml", &env).expect("valid");
        let c = loaded.config;
        assert_eq!(
            c.jumpcloud.auth,
            JumpcloudAuth::ApiKey(Secret::new("jc-secret"))
        );
        assert_eq!(c.streams.len(), 1);
        assert_eq!(c.streams[0].name, DEFAULT_STREAM);
        assert_eq!(c.jumpcloud.org_id.as_deref(), Some("abc"));
        assert_eq!(c.jumpcloud.overlap, Duration::from_secs(600));
        assert_eq!(c.sekoia.batch_max_bytes, 4 * 1024 * 1024);
        assert_eq!(c.queue.max_bytes, 10 * 1024 * 1024 * 1024);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn only_the_keys_are_required() {
        let text = "[jumpcloud]\napi_key = \"a\"\n[sekoia]\nintake_key = \"b\"\n";
        let c = Config::parse(text, "c.toml", &env).expect("valid").config;
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.jumpcloud.services, vec!["all".to_string()]);
        assert_eq!(c.jumpcloud.page_size, 1000);
        assert_eq!(c.jumpcloud.catch_up_page_size, 1000);
        assert_eq!(c.sekoia.max_in_flight, 2);
        assert_eq!(c.sekoia.intake_url, "https://intake.sekoia.io");
    }

    #[test]
    fn catch_up_pages_and_batches_in_flight_per_stream_and_destination() {
        let text = r#"
[jumpcloud]
catch_up_page_size = 3000
[sekoia]
intake_key = "k"
max_in_flight = 4
[sekoia.other]
intake_key = "o"
max_in_flight = 1
[[streams]]
name = "a"
api_key = "a"
[[streams]]
name = "b"
api_key = "b"
catch_up_page_size = 500
destination = "other"
"#;
        let c = Config::parse(text, "c.toml", &env).expect("valid").config;
        let (a, b) = (&c.streams[0], &c.streams[1]);
        assert_eq!(
            a.jumpcloud.catch_up_page_size, 3000,
            "inherited from [jumpcloud]"
        );
        assert_eq!(b.jumpcloud.catch_up_page_size, 500);
        assert_eq!(a.sekoia.max_in_flight, 4);
        assert_eq!(b.sekoia.max_in_flight, 1);
        let bad = "[jumpcloud]\napi_key = \"a\"\n[sekoia]\nintake_key = \"b\"\n[sekoia.x]\nmax_in_flight = 0\n\
                   [[streams]]\nname = \"s\"\napi_key = \"c\"\ncatch_up_page_size = 10001\ndestination = \"x\"\n";
        let all = Config::parse(bad, "c.toml", &env)
            .expect_err("invalid")
            .to_string();
        assert!(
            all.contains("sekoia.x.max_in_flight = 0 is out of range: use 1 to 16"),
            "{all}"
        );
        assert!(
            all.contains("streams.s.catch_up_page_size = 10001 is out of range: use 1 to 10000"),
            "{all}"
        );
    }

    #[test]
    fn small_test_values_are_accepted_with_warnings() {
        let text = "[jumpcloud]\napi_key = \"a\"\npoll_interval = \"1s\"\noverlap = \"0s\"\n[sekoia]\nintake_key = \"b\"\n";
        let loaded = Config::parse(text, "c.toml", &env).expect("valid");
        assert_eq!(
            loaded.config.jumpcloud.poll_interval,
            Duration::from_secs(1)
        );
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = r#"
data_dr = "/tmp/x"
[jumpcloud]
api_key = "${NOPE}"
page_size = 20000
catch_up_page_size = 0
poll_interval = "soon"
services = []
[sekoia]
intake_url = "ftp://x"
max_in_flight = 17
[queue]
max_bytes = "lots"
"#;
        let err = Config::parse(text, "c.toml", &env).expect_err("invalid");
        let all = err.to_string();
        for needle in [
            "data_dr is not a known key (did you mean \"data_dir\"?)",
            "jumpcloud.api_key uses ${NOPE}, but the environment variable NOPE is not set",
            "jumpcloud.page_size = 20000 is out of range",
            "jumpcloud.catch_up_page_size = 0 is out of range",
            "sekoia.max_in_flight = 17 is out of range",
            "jumpcloud.poll_interval = \"soon\" is not a duration",
            "jumpcloud.services is empty",
            "sekoia.intake_url = \"ftp://x\" is not an http(s) URL",
            "sekoia.intake_key is missing",
            "queue.max_bytes = \"lots\" is not a size",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 10, "{all}");
    }

    #[test]
    fn env_expansion() {
        let e = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(expand_env("x${A}y", &e).unwrap(), "x1y");
        assert_eq!(expand_env("${B:-two}", &e).unwrap(), "two");
        assert_eq!(expand_env("$$5 $x", &e).unwrap(), "$5 $x");
        assert!(expand_env("${B}", &e).is_err());
        assert!(expand_env("${A", &e).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}

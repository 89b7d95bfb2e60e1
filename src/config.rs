//! Configuration: reads the TOML file, resolves `${VAR}` / `${VAR:-default}` from the environment, applies
//! defaults, and checks every value.
//!
//! Invariants:
//! - Every problem in a file is reported at once, each naming the file, the key and what to do about it
//!   ([`ConfigErrors`]); a typo in a key name is an error, never silently ignored.
//! - Every key that has a sensible default may be omitted; small values (a 1 s poll interval, a zero overlap)
//!   are accepted with a warning, never refused, so test and lab set-ups keep working.
//! - Secrets are held in [`Secret`], whose `Debug` and `Display` never show the value.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default location of the sled queue, matching the packages' `StateDirectory=`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/jcdi-forwarder";
/// The largest event the Sekoia.io intake accepts; larger ones are dead-lettered, never sent.
pub const INTAKE_MAX_EVENT_BYTES: usize = 250 * 1024;

/// The whole configuration of one agent.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the queue (a sled database) lives.
    pub data_dir: PathBuf,
    pub jumpcloud: JumpcloudConfig,
    pub sekoia: SekoiaConfig,
    pub queue: QueueConfig,
}

/// The `[jumpcloud]` section: where and how to poll Directory Insights.
#[derive(Clone, Debug)]
pub struct JumpcloudConfig {
    /// Without a trailing slash, e.g. `https://api.jumpcloud.com`.
    pub base_url: String,
    pub api_key: Secret,
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
}

/// The `[sekoia]` section: where and how to forward.
#[derive(Clone, Debug)]
pub struct SekoiaConfig {
    /// Without a trailing slash; `/batch` is appended.
    pub intake_url: String,
    pub intake_key: Secret,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    /// Batches sent at once (each acknowledged on its own 2xx).
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub retry: RetryConfig,
}

/// Backoff between retries of passing failures: starts at `initial`, doubles (jittered) up to `max`, and
/// never gives up. Configuration errors (bad key) are retried on a slower schedule of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max: Duration,
}

/// The `[queue]` section.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// When the queued events reach this many bytes, polling pauses; nothing is dropped.
    pub max_bytes: u64,
}

/// A secret value (API key, intake key). It is printed as `***` everywhere.
#[derive(Clone, PartialEq, Eq)]
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
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigErrors {
            file: file.clone(),
            problems: vec![format!(
                "cannot read the file: {err} (pass the right path with --config)"
            )],
        })?;
        Config::parse(&text, &file, &|name| std::env::var(name).ok())
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
}

/// One table being read; whatever is left in it at the end is an unknown key.
struct Section {
    name: &'static str,
    table: toml::Table,
}

impl Section {
    fn key(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }
}

const TOP_KEYS: &[&str] = &["data_dir", "jumpcloud", "sekoia", "queue"];

impl Reader<'_> {
    fn config(&mut self, table: toml::Table) -> Config {
        let mut top = Section { name: "", table };
        let data_dir = self
            .string(&mut top, "data_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut jumpcloud = self.section(&mut top, "jumpcloud", true);
        let mut sekoia = self.section(&mut top, "sekoia", true);
        let mut queue = self.section(&mut top, "queue", false);
        self.unknown_keys(&top, TOP_KEYS);

        let jumpcloud = self.jumpcloud(&mut jumpcloud);
        let sekoia = self.sekoia(&mut sekoia);
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
        self.unknown_keys(&queue, &["max_bytes"]);
        Config {
            data_dir,
            jumpcloud,
            sekoia,
            queue: QueueConfig { max_bytes },
        }
    }

    fn jumpcloud(&mut self, s: &mut Section) -> JumpcloudConfig {
        const KEYS: &[&str] = &[
            "base_url",
            "api_key",
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
        ];
        let base_url = self.url(s, "base_url", "https://api.jumpcloud.com");
        let api_key = self.secret(s, "api_key", "JUMPCLOUD_API_KEY");
        let org_id = self.string(s, "org_id").filter(|org| !org.is_empty());
        let services = self.services(s);
        let poll_interval = self.duration(s, "poll_interval", Duration::from_secs(60));
        if poll_interval < Duration::from_secs(1) {
            self.problem(s, "poll_interval", "must be at least \"1s\"");
        } else if poll_interval < Duration::from_secs(10) {
            self.warn(
                s,
                "poll_interval",
                "is under 10s: fine for tests, but JumpCloud asks for few requests per key",
            );
        }
        let page_size = match self.integer(s, "page_size") {
            None => 1000,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                self.problem(
                    s,
                    "page_size",
                    &format!("= {n} is out of range: use 1 to 10000"),
                );
                1000
            }
        };
        let catch_up_page_size = match self.integer(s, "catch_up_page_size") {
            None => 10_000,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                self.problem(
                    s,
                    "catch_up_page_size",
                    &format!("= {n} is out of range: use 1 to 10000"),
                );
                10_000
            }
        };
        let initial_lookback = self.duration(s, "initial_lookback", Duration::from_secs(24 * 3600));
        if initial_lookback > Duration::from_secs(90 * 24 * 3600) {
            self.warn(
                s,
                "initial_lookback",
                "is longer than JumpCloud's 90-day retention: older events no longer exist",
            );
        }
        let overlap = self.duration(s, "overlap", Duration::from_secs(600));
        if overlap < Duration::from_secs(60) {
            self.warn(
                s,
                "overlap",
                "is under 60s: events that JumpCloud indexes later than this after their timestamp can be missed",
            );
        }
        let min_request_interval =
            self.duration(s, "min_request_interval", Duration::from_millis(500));
        let request_timeout = self.duration(s, "request_timeout", Duration::from_secs(60));
        if request_timeout.is_zero() {
            self.problem(
                s,
                "request_timeout",
                "must be more than 0 (for example \"60s\")",
            );
        }
        let retry = self.retry(s);
        self.unknown_keys(s, KEYS);
        JumpcloudConfig {
            base_url,
            api_key,
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
        }
    }

    fn sekoia(&mut self, s: &mut Section) -> SekoiaConfig {
        const KEYS: &[&str] = &[
            "intake_url",
            "intake_key",
            "batch_max_events",
            "batch_max_bytes",
            "max_in_flight",
            "request_timeout",
            "retry_initial",
            "retry_max",
        ];
        let intake_url = self.url(s, "intake_url", "https://intake.sekoia.io");
        let intake_key = self.secret(s, "intake_key", "SEKOIA_INTAKE_KEY");
        let batch_max_events = match self.integer(s, "batch_max_events") {
            None => 1000,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    s,
                    "batch_max_events",
                    &format!("= {n} is out of range: use 1 to 100000"),
                );
                1000
            }
        };
        let batch_max_bytes = self.size(s, "batch_max_bytes").unwrap_or(4 * 1024 * 1024);
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
            None => 2,
            Some(n) if (1..=16).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    s,
                    "max_in_flight",
                    &format!("= {n} is out of range: use 1 to 16"),
                );
                2
            }
        };
        let request_timeout = self.duration(s, "request_timeout", Duration::from_secs(30));
        if request_timeout.is_zero() {
            self.problem(
                s,
                "request_timeout",
                "must be more than 0 (for example \"30s\")",
            );
        }
        let retry = self.retry(s);
        self.unknown_keys(s, KEYS);
        SekoiaConfig {
            intake_url,
            intake_key,
            batch_max_events,
            batch_max_bytes: batch_max_bytes as usize,
            max_in_flight,
            request_timeout,
            retry,
        }
    }

    fn retry(&mut self, s: &mut Section) -> RetryConfig {
        let initial = self.duration(s, "retry_initial", Duration::from_secs(1));
        let max = self.duration(s, "retry_max", Duration::from_secs(60));
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

    fn services(&mut self, s: &mut Section) -> Vec<String> {
        let default = vec!["all".to_string()];
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
            Some(toml::Value::Table(table)) => Section { name, table },
            Some(_) => {
                self.problems
                    .push(format!("{name} must be a table: write it as [{name}]"));
                Section {
                    name,
                    table: toml::Table::new(),
                }
            }
            None => {
                if required {
                    self.problems.push(format!(
                        "[{name}] section is missing (see the README's configuration reference)"
                    ));
                }
                Section {
                    name,
                    table: toml::Table::new(),
                }
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

    fn secret(&mut self, s: &mut Section, key: &str, variable: &str) -> Secret {
        match self.string(s, key) {
            Some(value) if !value.trim().is_empty() => Secret(value.trim().to_string()),
            Some(_) => {
                self.problem(
                    s,
                    key,
                    &format!("is empty: set {variable} (for the service, in /etc/jcdi-forwarder/jcdi-forwarder.env)"),
                );
                Secret(String::new())
            }
            None => {
                if !self.problems.iter().any(|p| p.starts_with(&s.key(key))) {
                    self.problem(
                        s,
                        key,
                        &format!("is missing: add {key} = \"${{{variable}}}\" and set {variable} in the environment"),
                    );
                }
                Secret(String::new())
            }
        }
    }

    fn url(&mut self, s: &mut Section, key: &str, default: &str) -> String {
        let url = self.string(s, key).unwrap_or_else(|| default.to_string());
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
                &format!("= {url:?} is not an http(s) URL (for example {default:?})"),
            ),
        }
        url
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
            toml::Value::Integer(n) if n > 0 => return Some(n as u64),
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
        assert_eq!(c.jumpcloud.api_key.expose(), "jc-secret");
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
        assert_eq!(c.jumpcloud.catch_up_page_size, 10_000);
        assert_eq!(c.sekoia.max_in_flight, 2);
        assert_eq!(c.sekoia.intake_url, "https://intake.sekoia.io");
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

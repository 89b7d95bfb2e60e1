//! The TOML table reader: takes known keys out of a table as typed values (strings with `${VAR}`, whole
//! numbers, durations, sizes, URLs, secrets, retry settings) and records a problem or a warning for each
//! value it cannot use, naming the key; whatever is left in a table at the end is an unknown key, reported
//! with the nearest known key as a "did you mean" hint.
//!
//! Invariants: reading never stops at the first problem (a bad value gives the default, so that every
//! problem of a file is found in one pass); a problem never quotes a secret's value; the environment is
//! read only through `Reader::env`.

use std::path::Path;
use std::time::Duration;

use super::env::{expand_env, loose_mode};
use super::{ProxyConfig, RetryConfig, Secret};

/// Walks the TOML tables, taking known keys and recording problems as it goes.
pub(super) struct Reader<'a> {
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<String>,
    pub(super) warnings: Vec<String>,
    /// The proxy settings of the environment, read (and checked) once, when a section first needs them.
    pub(super) env_proxy: Option<ProxyConfig>,
}

/// One table being read; whatever is left in it at the end is an unknown key.
pub(super) struct Section {
    pub(super) name: String,
    pub(super) table: toml::Table,
}

impl Section {
    pub(super) fn new(name: impl Into<String>, table: toml::Table) -> Section {
        Section {
            name: name.into(),
            table,
        }
    }

    pub(super) fn key(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }
}

impl<'a> Reader<'a> {
    pub(super) fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Reader<'a> {
        Reader {
            env,
            problems: Vec::new(),
            warnings: Vec::new(),
            env_proxy: None,
        }
    }
}

impl Reader<'_> {
    pub(super) fn retry(&mut self, s: &mut Section, base: RetryConfig) -> RetryConfig {
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

    pub(super) fn section(
        &mut self,
        top: &mut Section,
        name: &'static str,
        required: bool,
    ) -> Section {
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

    pub(super) fn unknown_keys(&mut self, s: &Section, known: &[&str]) {
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

    pub(super) fn problem(&mut self, s: &Section, key: &str, what: &str) {
        self.problems.push(format!("{} {what}", s.key(key)));
    }

    pub(super) fn warn(&mut self, s: &Section, key: &str, what: &str) {
        self.warnings.push(format!("{} {what}", s.key(key)));
    }

    /// Takes a string value and resolves `${VAR}` in it.
    pub(super) fn string(&mut self, s: &mut Section, key: &str) -> Option<String> {
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
    pub(super) fn secret(
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
        Some(Secret::new(value))
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
    pub(super) fn url_opt(&mut self, s: &mut Section, key: &str) -> Option<String> {
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

    pub(super) fn integer(&mut self, s: &mut Section, key: &str) -> Option<i64> {
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

    pub(super) fn duration(&mut self, s: &mut Section, key: &str, default: Duration) -> Duration {
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

    pub(super) fn size(&mut self, s: &mut Section, key: &str) -> Option<u64> {
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
    pub(super) fn expand(&mut self, s: &Section, key: &str, text: &str) -> Option<String> {
        match expand_env(text, self.env) {
            Ok(value) => Some(value),
            Err(err) => {
                self.problem(s, key, &err);
                None
            }
        }
    }
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

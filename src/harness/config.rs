//! [`ConfigBuilder`]: the agent's configuration file built with typed calls and rendered by the `toml` crate,
//! so that tests, `demo` and the benches never format TOML by hand.
//!
//! Invariants: the text rendered is valid TOML whatever the values hold (paths, keys and URLs are quoted and
//! escaped by the `toml` crate); a key set twice keeps its last value; nothing is judged here: [`Config::parse`]
//! stays the one place that says whether a configuration is valid.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use toml::{Table, Value};

use crate::config::{Config, ConfigErrors, Loaded};

/// A configuration under construction: a TOML table, set key by key.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    table: Table,
}

impl ConfigBuilder {
    /// Nothing set, not even `data_dir` (for configurations that are checked, never run).
    pub fn empty() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// A configuration whose queue lives in `data_dir`.
    pub fn new(data_dir: &Path) -> ConfigBuilder {
        ConfigBuilder::empty().data_dir(data_dir)
    }

    /// Where the queue lives.
    pub fn data_dir(self, dir: &Path) -> ConfigBuilder {
        self.set("data_dir", path_value(dir))
    }

    /// The JumpCloud API to poll (`[jumpcloud]`): its base URL and API key. The key may be a `${VAR}`
    /// reference, resolved when the text is parsed.
    pub fn jumpcloud(self, base_url: &str, api_key: &str) -> ConfigBuilder {
        self.set("jumpcloud.base_url", base_url)
            .set("jumpcloud.api_key", api_key)
    }

    /// The intake to forward to (`[sekoia]`): its URL and intake key (or a `${VAR}` reference).
    pub fn sekoia(self, intake_url: &str, intake_key: &str) -> ConfigBuilder {
        self.set("sekoia.intake_url", intake_url)
            .set("sekoia.intake_key", intake_key)
    }

    pub fn poll_interval(self, every: Duration) -> ConfigBuilder {
        self.set("jumpcloud.poll_interval", duration_value(every))
    }

    pub fn page_size(self, events: u32) -> ConfigBuilder {
        self.set("jumpcloud.page_size", events)
    }

    pub fn initial_lookback(self, window: Duration) -> ConfigBuilder {
        self.set("jumpcloud.initial_lookback", duration_value(window))
    }

    pub fn overlap(self, window: Duration) -> ConfigBuilder {
        self.set("jumpcloud.overlap", duration_value(window))
    }

    pub fn min_request_interval(self, interval: Duration) -> ConfigBuilder {
        self.set("jumpcloud.min_request_interval", duration_value(interval))
    }

    /// The poller's retry delays (`jumpcloud.retry_initial`, `jumpcloud.retry_max`).
    pub fn api_retry(self, initial: Duration, max: Duration) -> ConfigBuilder {
        self.set("jumpcloud.retry_initial", duration_value(initial))
            .set("jumpcloud.retry_max", duration_value(max))
    }

    /// The forwarder's retry delays (`sekoia.retry_initial`, `sekoia.retry_max`).
    pub fn intake_retry(self, initial: Duration, max: Duration) -> ConfigBuilder {
        self.set("sekoia.retry_initial", duration_value(initial))
            .set("sekoia.retry_max", duration_value(max))
    }

    pub fn batch_max_events(self, events: u32) -> ConfigBuilder {
        self.set("sekoia.batch_max_events", events)
    }

    pub fn max_in_flight(self, batches: u32) -> ConfigBuilder {
        self.set("sekoia.max_in_flight", batches)
    }

    /// `queue.max_bytes`, as the file spells sizes (`"50KiB"`, `"1GiB"`).
    pub fn queue_max_bytes(self, size: &str) -> ConfigBuilder {
        self.set("queue.max_bytes", size)
    }

    /// Where the local metrics/health/status endpoint listens (`127.0.0.1:0`: any free port).
    pub fn admin_listen(self, addr: SocketAddr) -> ConfigBuilder {
        self.set("api.listen", addr.to_string())
    }

    /// No local endpoint at all.
    pub fn admin_disabled(self) -> ConfigBuilder {
        self.set("api.enabled", false)
    }

    /// Appends one `[[streams]]` entry with these keys.
    pub fn stream<'a>(mut self, keys: impl IntoIterator<Item = (&'a str, Value)>) -> ConfigBuilder {
        let entry: Table = keys
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        let streams = self
            .table
            .entry("streams")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !streams.is_array() {
            *streams = Value::Array(Vec::new());
        }
        if let Value::Array(entries) = streams {
            entries.push(Value::Table(entry));
        }
        self
    }

    /// Sets any key, by its dotted path (`"sekoia.acme.intake_url"`, `"queue.min_free_disk"`): the escape
    /// hatch for what has no typed call. Tables on the way are created (a value in their place is replaced).
    pub fn set(mut self, key_path: &str, value: impl Into<Value>) -> ConfigBuilder {
        let (parents, key) = split(key_path);
        table_at(&mut self.table, &parents).insert(key.to_string(), value.into());
        self
    }

    /// Removes a key set before, by its dotted path (nothing happens if it is not set).
    pub fn remove(mut self, key_path: &str) -> ConfigBuilder {
        let (parents, key) = split(key_path);
        table_at(&mut self.table, &parents).remove(key);
        self
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        // A table of strings, numbers, booleans, arrays and tables always serializes.
        toml::to_string(&self.table).unwrap_or_default()
    }

    /// Writes the text to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.render())
            .with_context(|| format!("cannot write the configuration to {}", path.display()))
    }

    /// Parses the text as the agent would, with an empty environment (`${VAR:-default}` takes its default).
    pub fn parse(&self) -> anyhow::Result<Config> {
        Ok(self.parse_with_env(&|_| None)?.config)
    }

    /// Parses the text as the agent would, resolving `${VAR}` with `env`; the warnings come along.
    pub fn parse_with_env(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigErrors> {
        Config::parse(&self.render(), "harness", env)
    }
}

/// A duration as the configuration file spells it (`"100ms"`, `"1m"`, `"3h"`).
pub fn duration_value(value: Duration) -> Value {
    Value::String(humantime::format_duration(value).to_string())
}

/// A path as a TOML string (the configuration holds paths as text).
pub fn path_value(value: &Path) -> Value {
    Value::String(value.to_string_lossy().into_owned())
}

fn split(key_path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = key_path.split('.').collect();
    let key = parts.pop().unwrap_or_default();
    (parts, key)
}

fn table_at<'t>(mut table: &'t mut Table, parents: &[&str]) -> &'t mut Table {
    for name in parents {
        let slot = table
            .entry(name.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !slot.is_table() {
            *slot = Value::Table(Table::new());
        }
        table = match slot {
            Value::Table(inner) => inner,
            _ => unreachable!("made a table just above"),
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_nested_tables_render_in_place() {
        let text = ConfigBuilder::new(Path::new("/tmp/a \"quoted\" dir\\x"))
            .jumpcloud("http://127.0.0.1:1", "${KEY:-k\"ey}")
            .poll_interval(Duration::from_millis(1500))
            .page_size(100)
            .set("sekoia.acme.intake_key", "line\nbreak")
            .sekoia("http://127.0.0.1:2", "i")
            .stream([("name", "acme".into()), ("destination", "acme".into())])
            .render();
        let table: Table = text.parse().expect("valid TOML");
        assert_eq!(table["data_dir"].as_str(), Some("/tmp/a \"quoted\" dir\\x"));
        assert_eq!(
            table["jumpcloud"]["api_key"].as_str(),
            Some("${KEY:-k\"ey}")
        );
        assert_eq!(
            table["jumpcloud"]["poll_interval"].as_str(),
            Some("1s 500ms")
        );
        assert_eq!(table["jumpcloud"]["page_size"].as_integer(), Some(100));
        assert_eq!(
            table["sekoia"]["acme"]["intake_key"].as_str(),
            Some("line\nbreak")
        );
        assert_eq!(
            table["sekoia"]["intake_url"].as_str(),
            Some("http://127.0.0.1:2")
        );
        assert_eq!(table["streams"][0]["name"].as_str(), Some("acme"));
    }

    #[test]
    fn set_replaces_and_remove_removes() {
        let builder = ConfigBuilder::empty()
            .set("jumpcloud.page_size", 10)
            .set("jumpcloud.page_size", 20)
            .set("jumpcloud.region", "eu")
            .remove("jumpcloud.region")
            .remove("nowhere.at_all");
        let table: Table = builder.render().parse().expect("valid TOML");
        assert_eq!(table["jumpcloud"]["page_size"].as_integer(), Some(20));
        assert!(table["jumpcloud"].get("region").is_none());
        assert!(table["nowhere"].as_table().is_some_and(Table::is_empty));
    }

    #[test]
    fn a_built_configuration_parses_as_the_agent_reads_it() {
        let config = ConfigBuilder::new(Path::new("/tmp/jcdi-harness-test"))
            .jumpcloud("http://127.0.0.1:9", "${JC:-api}")
            .sekoia("http://127.0.0.1:10", "intake")
            .overlap(Duration::from_secs(60))
            .admin_disabled()
            .parse()
            .expect("valid");
        assert_eq!(config.data_dir, Path::new("/tmp/jcdi-harness-test"));
        assert_eq!(config.streams.len(), 1);
        assert_eq!(config.streams[0].sekoia.intake_url, "http://127.0.0.1:10");
    }
}

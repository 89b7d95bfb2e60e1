//! How the two forms of a file become the list of streams: the single-section form (one stream named
//! `"default"`), or `[[streams]]` tables, each inheriting from `[jumpcloud]` and sent to `[sekoia]` with its
//! own intake key or to a named destination `[sekoia.<name>]`.
//!
//! Invariants: stream names are unique and usable as cursor keys and metric labels (letters, digits, `-`,
//! `_`, at most 64); every stream has exactly one destination; a named destination is used only by
//! `[[streams]]` (an unused one is a warning, one in the single-section form a problem).

use std::collections::{BTreeMap, BTreeSet};

use super::reader::{Reader, Section};
use super::{JumpcloudConfig, SekoiaConfig, StreamConfig};
use crate::event::DEFAULT_STREAM;

/// Keys of a `[[streams]]` table besides the JumpCloud ones.
const STREAM_KEYS: &[&str] = &["name", "destination", "intake_key", "intake_key_file"];

/// Takes the named destinations out of `[sekoia]`: its sub-tables. What remains are its own keys.
pub(super) fn named_destinations(sekoia: &mut Section) -> Vec<(String, toml::Table)> {
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
}

impl Reader<'_> {
    /// Every stream of the file: those of `[[streams]]` (`value`) with the `named` destinations, or the
    /// one stream of the single-section form. `jumpcloud` and `sekoia` are the sections already read;
    /// `to_outbox`: the events go into bundles, so no stream names a destination.
    pub(super) fn stream_list(
        &mut self,
        value: Option<toml::Value>,
        named: Vec<(String, toml::Table)>,
        jumpcloud: &JumpcloudConfig,
        sekoia: &SekoiaConfig,
        to_outbox: bool,
    ) -> Vec<StreamConfig> {
        if let Some(value) = value {
            let mut destinations = BTreeMap::new();
            for (name, table) in named {
                let mut section = Section::new(format!("sekoia.{name}"), table);
                if !valid_name(&name) {
                    self.problems.push(format!(
                        "[sekoia.{name}]: a destination name may hold only letters, digits, '-' and '_'"
                    ));
                }
                let destination = self.sekoia(&mut section, Some(sekoia), true);
                destinations.insert(name, destination);
            }
            let streams = self.streams(value, jumpcloud, sekoia, &destinations, to_outbox);
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
        to_outbox: bool,
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
            if to_outbox && (destination.is_some() || own_key.is_some()) {
                let key = if destination.is_some() {
                    "destination"
                } else {
                    "intake_key"
                };
                self.problem(
                    &s,
                    key,
                    "is for sending from here: with [outbox] every stream's events go into bundles, and \
                     the stream's intake key goes in [sekoia.<stream>] of the shipping host's configuration",
                );
            }
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
                    if sekoia.intake_key.expose().is_empty() && !to_outbox {
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
}

/// A name usable as a stream or destination name: it keys cursors and labels metrics.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

//! The air-gap sections: `[outbox]` of an agent's file (where bundles are sealed, how often, with which
//! key), and the whole file of `jcdi-forwarder ship` ([`ShipConfig`]): `[sekoia]`, `[sekoia.<stream>]` and
//! `[outbox] hmac_key`.
//!
//! Invariants: `[outbox] dir` is required; a bundle key is a [`Secret`] like the other keys (inline with
//! `${VAR}`, or `hmac_key_file`); a ship file holds nothing of the agent's (a `[jumpcloud]` there is a
//! problem, not silently ignored), and every stream it can ship to has an intake key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::read_file;
use super::reader::{Reader, Section};
use super::streams::{named_destinations, valid_name};
use super::{ConfigErrors, Loaded, OutboxConfig, Secret, ShipConfig};

/// The keys of `[outbox]` in an agent's file.
const OUTBOX_KEYS: &[&str] = &[
    "dir",
    "max_bundle_events",
    "max_bundle_age",
    "hmac_key",
    "hmac_key_file",
];

/// The keys of `[outbox]` in a ship file.
const SHIP_OUTBOX_KEYS: &[&str] = &["hmac_key", "hmac_key_file"];

/// The sections of an agent's file that a ship file must not hold.
const AGENT_ONLY: &[&str] = &["data_dir", "jumpcloud", "streams", "queue", "api"];

/// The usual environment variable of the bundle key, for hints.
const KEY_VARIABLE: &str = "OUTBOX_HMAC_KEY";

/// Whether the file at `path` is in the form of `ship` (a `[sekoia]` without `[jumpcloud]` nor
/// `[[streams]]`) rather than an agent's. False when it cannot be read or parsed: loading it as an agent's
/// file then says what is wrong.
pub fn is_ship_form(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    table.contains_key("sekoia")
        && !table.contains_key("jumpcloud")
        && !table.contains_key("streams")
}

impl ShipConfig {
    /// Reads and checks a ship file, resolving `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Loaded<ShipConfig>, ConfigErrors> {
        let (text, file) = read_file(path)?;
        ShipConfig::parse(&text, &file, &|name| std::env::var(name).ok())
    }

    /// Parses the text of a ship file; `env` resolves `${VAR}` references.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded<ShipConfig>, ConfigErrors> {
        super::load::parse_with(text, file, env, |reader, table| reader.ship(table))
    }
}

impl Reader<'_> {
    /// The `[outbox]` section of an agent's file.
    pub(super) fn outbox(&mut self, s: &mut Section) -> OutboxConfig {
        let dir = match self.string(s, "dir") {
            Some(dir) if !dir.trim().is_empty() => PathBuf::from(dir.trim()),
            Some(_) => {
                self.problem(s, "dir", "is empty: name the folder bundles are written to");
                PathBuf::new()
            }
            None => {
                if !self.problems.iter().any(|p| p.starts_with(&s.key("dir"))) {
                    self.problem(
                        s,
                        "dir",
                        "is missing: name the folder sealed bundles are written to, for example \
                         dir = \"/srv/jcdi-outbox\"",
                    );
                }
                PathBuf::new()
            }
        };
        let max_bundle_events = match self.integer(s, "max_bundle_events") {
            None => 10_000,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    s,
                    "max_bundle_events",
                    &format!("= {n} is out of range: use 1 to 100000"),
                );
                10_000
            }
        };
        let max_bundle_age = self.duration(s, "max_bundle_age", Duration::from_secs(300));
        if max_bundle_age.is_zero() {
            self.problem(
                s,
                "max_bundle_age",
                "must be more than 0 (for example \"5m\")",
            );
        }
        let hmac_key = self.bundle_key(s);
        self.unknown_keys(s, OUTBOX_KEYS);
        OutboxConfig {
            dir,
            max_bundle_events,
            max_bundle_age,
            hmac_key,
        }
    }

    /// `hmac_key` or `hmac_key_file`; a short key works, with a warning.
    fn bundle_key(&mut self, s: &mut Section) -> Option<Secret> {
        let key = self.secret(s, "hmac_key", Some(KEY_VARIABLE), false)?;
        if key.expose().len() < 16 {
            self.warn(
                s,
                "hmac_key",
                "is shorter than 16 characters: a short key is easy to guess; use for example the output \
                 of `openssl rand -hex 32`",
            );
        }
        Some(key)
    }

    /// A whole ship file.
    fn ship(&mut self, table: toml::Table) -> ShipConfig {
        let mut top = Section::new("", table);
        for key in AGENT_ONLY {
            if top.table.remove(*key).is_some() {
                self.problems.push(format!(
                    "{key} belongs to the collecting agent's configuration: a configuration of `ship` holds \
                     only [sekoia] (with [sekoia.<stream>]) and [outbox] hmac_key"
                ));
            }
        }
        let mut sekoia = self.section(&mut top, "sekoia", true);
        let mut outbox = self.section(&mut top, "outbox", false);
        self.unknown_keys(&top, &["sekoia", "outbox"]);
        let named = named_destinations(&mut sekoia);
        let sekoia = self.sekoia(&mut sekoia, None, named.is_empty());
        let mut streams = BTreeMap::new();
        for (name, table) in named {
            if !valid_name(&name) {
                self.problems.push(format!(
                    "[sekoia.{name}]: a stream name may hold only letters, digits, '-' and '_'"
                ));
            }
            let mut section = Section::new(format!("sekoia.{name}"), table);
            let key_required = sekoia.intake_key.expose().is_empty();
            let destination = self.sekoia(&mut section, Some(&sekoia), key_required);
            streams.insert(name, destination);
        }
        for key in ["dir", "max_bundle_events", "max_bundle_age"] {
            if outbox.table.remove(key).is_some() {
                self.problem(
                    &outbox,
                    key,
                    "is for the collecting agent: `ship` takes the folder on its command line, and only \
                     hmac_key belongs here",
                );
            }
        }
        let hmac_key = self.bundle_key(&mut outbox);
        self.unknown_keys(&outbox, SHIP_OUTBOX_KEYS);
        ShipConfig {
            sekoia,
            streams,
            hmac_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "OUTBOX_HMAC_KEY").then(|| "0123456789abcdef0123".to_string())
    }

    #[test]
    fn an_outbox_replaces_sekoia_in_both_forms() {
        let single = "[jumpcloud]\napi_key = \"a\"\n[outbox]\ndir = \"/srv/o\"\nhmac_key = \"${OUTBOX_HMAC_KEY}\"\n";
        let c = Config::parse(single, "c.toml", &env).expect("valid").config;
        let outbox = c.outbox.expect("outbox");
        assert_eq!(outbox.dir, PathBuf::from("/srv/o"));
        assert_eq!(outbox.max_bundle_events, 10_000);
        assert_eq!(outbox.max_bundle_age, Duration::from_secs(300));
        assert_eq!(
            outbox.hmac_key.as_ref().map(Secret::expose),
            Some("0123456789abcdef0123")
        );
        assert_eq!(c.streams.len(), 1);

        let several = "[outbox]\ndir = \"o\"\nmax_bundle_events = 50\nmax_bundle_age = \"10s\"\n\
                       [[streams]]\nname = \"a\"\napi_key = \"x\"\n[[streams]]\nname = \"b\"\napi_key = \"y\"\n";
        let c = Config::parse(several, "c.toml", &env)
            .expect("valid")
            .config;
        assert_eq!(c.streams.len(), 2);
        let outbox = c.outbox.expect("outbox");
        assert_eq!(outbox.max_bundle_events, 50);
        assert!(outbox.hmac_key.is_none());
    }

    #[test]
    fn outbox_problems_are_listed_with_their_keys() {
        let text = "[jumpcloud]\napi_key = \"a\"\n[sekoia]\nintake_key = \"k\"\n[outbox]\nmax_bundle_events = 0\n\
                    max_bundle_age = \"0s\"\nhmac_kye = \"x\"\n";
        let err = Config::parse(text, "c.toml", &env).expect_err("invalid");
        let all = err.problems.join("\n");
        for needle in [
            "[outbox] and [sekoia] are both set",
            "outbox.dir is missing",
            "outbox.max_bundle_events = 0 is out of range",
            "outbox.max_bundle_age must be more than 0",
            "outbox.hmac_kye is not a known key (did you mean \"hmac_key\"?)",
        ] {
            assert!(all.contains(needle), "{needle:?} not in:\n{all}");
        }
        let stream_key = "[outbox]\ndir = \"o\"\n[[streams]]\nname = \"a\"\napi_key = \"x\"\nintake_key = \"k\"\n";
        let err = Config::parse(stream_key, "c.toml", &env).expect_err("invalid");
        assert!(
            err.problems[0].starts_with("streams.a.intake_key is for sending from here"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn a_ship_file_needs_only_sekoia() {
        let text = "[sekoia]\nintake_url = \"http://127.0.0.1:9\"\nintake_key = \"k\"\n\
                    [sekoia.acme]\nintake_key = \"acme-key\"\n[outbox]\nhmac_key_file = \"/nonexistent/key\"\n";
        let err = ShipConfig::parse(text, "ship.toml", &env).expect_err("the key file is missing");
        assert!(err.problems[0].starts_with("outbox.hmac_key_file"), "{err}");

        let text = "[sekoia]\nintake_url = \"http://127.0.0.1:9\"\nintake_key = \"k\"\nbatch_max_events = 10\n\
                    [sekoia.acme]\nintake_key = \"acme-key\"\n[outbox]\nhmac_key = \"${OUTBOX_HMAC_KEY}\"\n";
        let loaded = ShipConfig::parse(text, "ship.toml", &env).expect("valid");
        let ship = loaded.config;
        let acme = ship.destination("acme").expect("acme");
        assert_eq!(acme.intake_key.expose(), "acme-key");
        assert_eq!(acme.batch_max_events, 10, "inherited from [sekoia]");
        assert_eq!(acme.intake_url, "http://127.0.0.1:9");
        assert_eq!(
            ship.destination("other").map(|s| s.section.as_str()),
            Some("sekoia")
        );
        assert!(ship.hmac_key.is_some());
        assert!(
            !format!("{ship:?}").contains("acme-key"),
            "secrets never print"
        );
    }

    #[test]
    fn a_ship_file_refuses_what_belongs_to_the_agent() {
        let text = "data_dir = \"/q\"\n[jumpcloud]\napi_key = \"a\"\n[sekoia]\n[sekoia.acme]\n\
                    [outbox]\ndir = \"/srv/o\"\nhmac_key = \"short\"\n";
        let err = ShipConfig::parse(text, "ship.toml", &env).expect_err("invalid");
        let all = err.problems.join("\n");
        for needle in [
            "data_dir belongs to the collecting agent's configuration",
            "jumpcloud belongs to the collecting agent's configuration",
            "sekoia.acme.intake_key is missing",
            "outbox.dir is for the collecting agent",
        ] {
            assert!(all.contains(needle), "{needle:?} not in:\n{all}");
        }
        // Named sections alone: streams without one have no destination.
        let text = "[sekoia]\n[sekoia.acme]\nintake_key = \"a\"\n[outbox]\nhmac_key = \"short\"\n";
        let loaded = ShipConfig::parse(text, "ship.toml", &env).expect("valid");
        assert!(loaded.config.destination("other").is_none());
        assert!(loaded.warnings[0].starts_with("outbox.hmac_key is shorter"));
    }

    #[test]
    fn the_form_of_a_file_is_told_by_its_sections() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("written");
            path
        };
        assert!(is_ship_form(&write(
            "s.toml",
            "[sekoia]\nintake_key = \"k\"\n"
        )));
        assert!(!is_ship_form(&write(
            "a.toml",
            "[jumpcloud]\napi_key = \"a\"\n[sekoia]\nintake_key = \"k\"\n"
        )));
        assert!(!is_ship_form(&write("b.toml", "[[streams]]\n[sekoia]\n")));
        assert!(!is_ship_form(&write("c.toml", "not toml [")));
        assert!(!is_ship_form(&dir.path().join("missing.toml")));
    }
}

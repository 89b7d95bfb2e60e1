//! The entry points ([`Config::load`], [`Config::load_without_secrets`], [`Config::parse`]) and the top level
//! of a file: which sections there are, in which form, and the order they are read in.
//!
//! Invariants: a file that cannot be read or is not TOML is one problem; otherwise every section is read
//! to the end and every problem returned at once ([`ConfigErrors`]), or the configuration with its
//! warnings ([`Loaded`]); a successful parse has at least one stream.

use std::path::{Path, PathBuf};

use super::reader::{Reader, Section};
use super::streams::named_destinations;
use super::{Config, ConfigErrors, Loaded, DEFAULT_DATA_DIR};

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
        parse_with(text, file, env, |reader, table| reader.config(table))
    }
}

pub(super) fn read_file(path: &Path) -> Result<(String, String), ConfigErrors> {
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

/// The keys of the top level of a file.
const TOP_KEYS: &[&str] = &[
    "data_dir",
    "jumpcloud",
    "sekoia",
    "queue",
    "streams",
    "api",
    "outbox",
];

impl Reader<'_> {
    /// Reads a whole file. The order of reading is the order of the problems in messages.
    fn config(&mut self, table: toml::Table) -> Config {
        let mut top = Section::new("", table);
        let data_dir = self
            .string(&mut top, "data_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let streams_value = top.table.remove("streams");
        let several = streams_value.is_some();
        // With [outbox], nothing is sent from here: [sekoia] belongs to the shipping host's file.
        let to_outbox = top.has("outbox");
        if to_outbox && top.has("sekoia") {
            self.problems.push(
                "[outbox] and [sekoia] are both set: [outbox] seals every stream's events into bundle files, \
                 [sekoia] sends them to the intake from here; keep one (the intake keys of an outbox go in \
                 the configuration of `jcdi-forwarder ship`, see docs/outbox.md)"
                    .to_string(),
            );
        }
        let mut jumpcloud = self.section(&mut top, "jumpcloud", !several);
        let mut sekoia = self.section(&mut top, "sekoia", !several && !to_outbox);
        let mut queue = self.section(&mut top, "queue", false);
        let mut api = self.section(&mut top, "api", false);
        let mut outbox = self.section(&mut top, "outbox", false);
        self.unknown_keys(&top, TOP_KEYS);

        let named = named_destinations(&mut sekoia);
        let jumpcloud = self.jumpcloud(&mut jumpcloud, None, !several, &[]);
        let sekoia = self.sekoia(&mut sekoia, None, !several && !to_outbox);
        let streams = self.stream_list(streams_value, named, &jumpcloud, &sekoia, to_outbox);
        let queue = self.queue(&mut queue);
        let api = self.api(&mut api);
        let outbox = to_outbox.then(|| self.outbox(&mut outbox));
        Config {
            data_dir,
            queue,
            api,
            streams,
            outbox,
        }
    }
}

/// Parses `text` into a table and reads it with `read` (the agent's form or `ship`'s): every problem is
/// collected, and the result is the configuration with its warnings, or all the problems at once.
pub(super) fn parse_with<'e, T>(
    text: &str,
    file: &str,
    env: &'e dyn Fn(&str) -> Option<String>,
    read: impl FnOnce(&mut Reader<'e>, toml::Table) -> T,
) -> Result<Loaded<T>, ConfigErrors> {
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| ConfigErrors {
        file: file.to_string(),
        problems: vec![format!("not valid TOML: {}", err.to_string().trim())],
    })?;
    let mut reader = Reader::new(env);
    let config = read(&mut reader, table);
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

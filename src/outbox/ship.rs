//! `jcdi-forwarder ship`: sends every bundle of a folder to the intake of its stream, from a host that
//! reaches Sekoia.io, with the forwarder's batching, backoff, 413 split and dead letters
//! ([`crate::delivery`]).
//!
//! The folder's layout: bundles (`*.jcdi-bundle`) at the top; `shipped/` (bundles sent, unless `--delete`),
//! `rejected/` (bundles refused), `dead-letters/` (events the intake will never take, one file each) and
//! `.ship-state/` (the progress of each bundle, and the lock that keeps a second `ship` out).
//!
//! Invariants:
//! - A bundle is checked whole ([`super::bundle::open`]) before any of its events is sent: a damaged,
//!   truncated or tampered bundle sends nothing; it is moved to `rejected/` with a message naming the file
//!   and the check that failed, and the other bundles still go.
//! - A bundle's events are sent in order, one batch at a time; after each 2xx the number of events settled
//!   from its start is written durably to its progress file, and a restart resumes there: a `kill -9`
//!   resends at most the batch in flight.
//! - A bundle whose progress says it is complete is never sent again, whatever its file is named: running
//!   `ship` again, or receiving the same bundle twice, sends nothing twice. Progress records are kept.
//! - A bundle is moved to `shipped/` (or deleted) only once its progress says every event is settled.
//! - Files whose name starts with `.` (temporary names of transfer tools and of this agent) are never read;
//!   with `--watch`, a file that changed within the last [`SETTLE`] is left for the next scan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::bundle::{self, Manifest, Problem, EXTENSION};
use super::durable;
use crate::config::ShipConfig;
use crate::delivery::{DeliverError, Intake, Payload, Settle};
use crate::http::HttpClient;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

pub const SHIPPED: &str = "shipped";
pub const REJECTED: &str = "rejected";
pub const DEAD_LETTERS: &str = "dead-letters";
pub const STATE: &str = ".ship-state";

/// With `--watch`, a file modified more recently than this may still be arriving.
pub const SETTLE: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How `ship` runs.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// The folder of bundles.
    pub dir: PathBuf,
    /// Delete shipped bundles instead of moving them to `shipped/`.
    pub delete: bool,
    /// Keep shipping bundles as they appear, until shutdown.
    pub watch: bool,
    /// With `watch`: how often the folder is looked at.
    pub interval: Duration,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Bundles sent whole by this run.
    pub shipped: u64,
    /// Events the intake accepted in this run (a resumed bundle counts only what was left).
    pub events: u64,
    /// Bundles found complete already (sent by an earlier run), put away without sending.
    pub already_shipped: u64,
    /// Events put in `dead-letters/` by this run.
    pub dead_letters: u64,
    /// Bundles refused and moved to `rejected/`: `file: reason`.
    pub refused: Vec<String>,
    /// Bundles left in place (no destination, or no key to check their signature): `file: reason`.
    pub held: Vec<String>,
    /// Shutdown came before every bundle was shipped (without `--watch`).
    pub interrupted: bool,
}

impl Report {
    /// The summary printed at the end.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "shipped {} bundle{} ({} events); {} already shipped; {} dead letter{}; {} refused; {} held",
            self.shipped,
            if self.shipped == 1 { "" } else { "s" },
            self.events,
            self.already_shipped,
            self.dead_letters,
            if self.dead_letters == 1 { "" } else { "s" },
            self.refused.len(),
            self.held.len(),
        );
        for line in &self.refused {
            text.push_str(&format!("\n  refused: {line}"));
        }
        for line in &self.held {
            text.push_str(&format!("\n  held: {line}"));
        }
        text
    }
}

/// Ships the bundles of `options.dir` (once, or until shutdown with `watch`).
pub async fn run(
    config: &ShipConfig,
    options: &ShipOptions,
    shutdown: Shutdown,
) -> anyhow::Result<Report> {
    let shipper = Shipper::new(config, options)?;
    let _lock = shipper.lock()?;
    let mut report = Report::default();
    // Held bundles already reported (by name and modification time), so that `--watch` says it once.
    let mut reported: BTreeSet<(String, Option<SystemTime>)> = BTreeSet::new();
    loop {
        for name in shipper.list()? {
            if shutdown.is_triggered() {
                break;
            }
            let outcome = shipper.ship_file(&name, &shutdown).await?;
            match outcome {
                Outcome::Shipped { events } => {
                    report.shipped += 1;
                    report.events += events;
                }
                Outcome::AlreadyShipped => report.already_shipped += 1,
                Outcome::Refused(reason) => report.refused.push(format!("{name}: {reason}")),
                Outcome::Held(reason) => {
                    let key = (name.clone(), modified(&shipper.dir.join(&name)));
                    if reported.insert(key) {
                        tracing::error!(bundle = %name, "{reason}; the bundle stays in the folder");
                        report.held.push(format!("{name}: {reason}"));
                    }
                }
                Outcome::Arriving => {}
                Outcome::Stopped => break,
            }
        }
        report.dead_letters = shipper
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed);
        if !options.watch {
            report.interrupted = shutdown.is_triggered() && !shipper.list()?.is_empty();
            break;
        }
        if !shutdown.sleep(options.interval).await {
            break;
        }
    }
    Ok(report)
}

/// What became of one file.
enum Outcome {
    Shipped {
        events: u64,
    },
    AlreadyShipped,
    Refused(String),
    Held(String),
    /// `--watch`: the file may still be arriving; looked at again at the next scan.
    Arriving,
    Stopped,
}

struct Shipper<'a> {
    config: &'a ShipConfig,
    dir: PathBuf,
    watch: bool,
    delete: bool,
    key: Option<Vec<u8>>,
    /// One client per destination section.
    clients: HashMap<String, HttpClient>,
    metrics: Arc<Metrics>,
    dead_letters: Arc<std::sync::atomic::AtomicU64>,
}

impl<'a> Shipper<'a> {
    fn new(config: &'a ShipConfig, options: &ShipOptions) -> anyhow::Result<Shipper<'a>> {
        let dir = options.dir.clone();
        if !dir.is_dir() {
            bail!(
                "{} is not a folder: name the folder the bundles are in",
                dir.display()
            );
        }
        for sub in [SHIPPED, REJECTED, DEAD_LETTERS, STATE] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| {
                format!(
                    "cannot create {}: ship needs to write in the bundles' folder",
                    dir.join(sub).display()
                )
            })?;
        }
        let mut clients = HashMap::new();
        for sekoia in std::iter::once(&config.sekoia).chain(config.streams.values()) {
            let client = HttpClient::for_transport(CONNECT_TIMEOUT, &sekoia.transport)
                .map_err(anyhow::Error::msg)?;
            clients.insert(sekoia.section.clone(), client);
        }
        Ok(Shipper {
            config,
            dir,
            watch: options.watch,
            delete: options.delete,
            key: config
                .hmac_key
                .as_ref()
                .map(|k| k.expose().as_bytes().to_vec()),
            clients,
            metrics: Arc::new(Metrics::default()),
            dead_letters: Arc::default(),
        })
    }

    /// Keeps a second `ship` off this folder while this one runs.
    fn lock(&self) -> anyhow::Result<std::fs::File> {
        let path = self.dir.join(STATE).join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if fs4::FileExt::try_lock(&file).is_err() {
            bail!(
                "another `jcdi-forwarder ship` is working on {}: only one may at a time",
                self.dir.display()
            );
        }
        Ok(file)
    }

    /// The bundles in the folder, in name order (per stream, sequence order).
    fn list(&self) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(EXTENSION) {
                continue;
            }
            if entry.file_type()?.is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    async fn ship_file(&self, name: &str, shutdown: &Shutdown) -> anyhow::Result<Outcome> {
        let path = self.dir.join(name);
        let before = modified(&path);
        if self.watch && before.is_some_and(recent) {
            return Ok(Outcome::Arriving);
        }
        let key = self.key.clone();
        let read_path = path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            std::fs::read(&read_path).map(|bytes| bundle::open(&bytes, key.as_deref()))
        })
        .await?;
        let opened = match opened {
            // Gone meanwhile (another tool took it): nothing to do.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Arriving),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
            Ok(Ok(opened)) => opened,
            Ok(Err(Problem::Unverifiable)) => {
                return Ok(Outcome::Held(Problem::Unverifiable.to_string()))
            }
            Ok(Err(problem)) => {
                if self.watch && modified(&path) != before {
                    return Ok(Outcome::Arriving);
                }
                let target = durable::free_name(&self.dir.join(REJECTED), name);
                durable::move_into(&path, &self.dir.join(REJECTED), &target)
                    .with_context(|| format!("cannot move {} to {REJECTED}/", path.display()))?;
                tracing::error!(bundle = %name, "bundle refused, nothing of it was sent: {problem}; moved to {REJECTED}/{target}");
                return Ok(Outcome::Refused(problem.to_string()));
            }
        };
        let manifest = opened.manifest;
        let Some(destination) = self.config.destination(&manifest.stream) else {
            return Ok(Outcome::Held(format!(
                "no destination for stream {:?}: add [sekoia.{}] with its intake_key to the configuration \
                 (or an intake_key in [sekoia])",
                manifest.stream, manifest.stream
            )));
        };
        let mut progress = Progress::load(&self.dir, &manifest, self.dead_letters.clone());
        if progress.record.done >= manifest.events {
            self.put_away(&path, name)?;
            tracing::info!(bundle = %name, "already shipped (by an earlier run): nothing sent again");
            return Ok(Outcome::AlreadyShipped);
        }
        let resumed_at = progress.record.done;
        if resumed_at > 0 {
            tracing::info!(bundle = %name, events_done = resumed_at, "resuming an interrupted bundle");
        }
        let client = self
            .clients
            .get(&destination.section)
            .context("no client for the destination (a bug)")?;
        let intake = Intake {
            stream: &manifest.stream,
            config: destination,
            http: client,
            metrics: &self.metrics,
        };
        let mut events: Vec<BundleEvent> = opened
            .events
            .into_iter()
            .enumerate()
            .skip(resumed_at as usize)
            .map(|(index, raw)| BundleEvent { index, raw })
            .collect();
        let mut sent = 0;
        while !events.is_empty() {
            let mut bytes = 0;
            let count = events
                .iter()
                .take(destination.batch_max_events)
                .take_while(|e| {
                    bytes += e.raw.len();
                    bytes <= destination.batch_max_bytes
                })
                .count()
                .max(1);
            let rest = events.split_off(count);
            let batch = std::mem::replace(&mut events, rest);
            let before = progress.accepted;
            match intake.deliver(batch, &mut progress, shutdown).await {
                Ok(()) => sent += progress.accepted - before,
                Err(DeliverError::Stopped) => return Ok(Outcome::Stopped),
                Err(DeliverError::Settle(err)) => bail!("{name}: {err}"),
            }
        }
        self.put_away(&path, name)?;
        tracing::info!(bundle = %name, stream = %manifest.stream, events = sent, intake = %destination.intake_url, "bundle shipped");
        Ok(Outcome::Shipped { events: sent })
    }

    /// Moves a bundle whose every event is settled to `shipped/`, or deletes it.
    fn put_away(&self, path: &Path, name: &str) -> anyhow::Result<()> {
        if self.delete {
            durable::remove(path).with_context(|| format!("cannot delete {}", path.display()))
        } else {
            let shipped = self.dir.join(SHIPPED);
            let target = durable::free_name(&shipped, name);
            durable::move_into(path, &shipped, &target)
                .map(drop)
                .with_context(|| format!("cannot move {} to {SHIPPED}/", path.display()))
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn recent(time: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(time)
        .map_or(true, |age| age < SETTLE)
}

/// One event of a bundle: its place in the bundle, and its raw text.
struct BundleEvent {
    index: usize,
    raw: String,
}

impl Payload for BundleEvent {
    fn raw(&self) -> &str {
        &self.raw
    }
}

/// What `.ship-state/<id>.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    id: String,
    sha256: String,
    events: u64,
    /// Events settled from the start of the bundle (accepted or dead-lettered).
    done: u64,
}

/// A bundle's progress: settled events are recorded durably as the contiguous count from its start.
struct Progress {
    dir: PathBuf,
    record: Record,
    stream: String,
    /// Settled events past `done` (a dead letter settled before the events before it).
    ahead: BTreeSet<u64>,
    /// Events accepted by the intake in this run.
    accepted: u64,
    dead_letters: Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    /// The recorded progress of the bundle, or none (a record of another bundle with the same id is not
    /// trusted).
    fn load(
        dir: &Path,
        manifest: &Manifest,
        dead_letters: Arc<std::sync::atomic::AtomicU64>,
    ) -> Progress {
        let fresh = Record {
            id: manifest.id.clone(),
            sha256: manifest.sha256.clone(),
            events: manifest.events,
            done: 0,
        };
        let path = dir.join(STATE).join(format!("{}.json", manifest.id));
        let record = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .filter(|r| r.sha256 == fresh.sha256 && r.events == fresh.events)
            .unwrap_or(fresh);
        Progress {
            dir: dir.to_path_buf(),
            record,
            stream: manifest.stream.clone(),
            ahead: BTreeSet::new(),
            accepted: 0,
            dead_letters,
        }
    }

    /// Moves `done` past the settled events and writes it durably.
    async fn settled(&mut self, indexes: impl Iterator<Item = u64>) -> Result<(), String> {
        self.ahead.extend(indexes);
        let before = self.record.done;
        while self.ahead.remove(&self.record.done) {
            self.record.done += 1;
        }
        if self.record.done == before {
            return Ok(());
        }
        let dir = self.dir.join(STATE);
        let name = format!("{}.json", self.record.id);
        let bytes = serde_json::to_vec(&self.record).map_err(|err| err.to_string())?;
        tokio::task::spawn_blocking(move || durable::write_atomic(&dir, &name, &bytes))
            .await
            .map_err(|err| err.to_string())?
            .map(drop)
            .map_err(|err| format!("cannot record the progress in {STATE}/: {err}"))
    }
}

impl Settle<BundleEvent> for Progress {
    type Error = String;

    async fn accepted(&mut self, events: &[BundleEvent]) -> Result<(), String> {
        self.accepted += events.len() as u64;
        self.settled(events.iter().map(|e| e.index as u64)).await
    }

    async fn dead_letter(&mut self, event: BundleEvent, reason: &str) -> Result<(), String> {
        tracing::warn!(
            stream = %self.stream,
            bundle = %self.record.id,
            index = event.index,
            bytes = event.raw.len(),
            "event put in {DEAD_LETTERS}/ and never sent: {reason}"
        );
        let mut line = BTreeMap::new();
        line.insert("bundle", serde_json::Value::from(self.record.id.clone()));
        line.insert("stream", self.stream.clone().into());
        line.insert("index", (event.index as u64).into());
        line.insert("reason", reason.into());
        line.insert("event", event.raw.clone().into());
        let mut bytes = serde_json::to_vec(&line).map_err(|err| err.to_string())?;
        bytes.push(b'\n');
        let dir = self.dir.join(DEAD_LETTERS);
        // One file per event, named after it: writing it again after a crash replaces it.
        let name = format!("{}.{:06}.json", self.record.id, event.index);
        tokio::task::spawn_blocking(move || durable::write_atomic(&dir, &name, &bytes))
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| format!("cannot write a dead letter in {DEAD_LETTERS}/: {err}"))?;
        self.dead_letters
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.settled(std::iter::once(event.index as u64)).await
    }

    fn waiting(&self) -> u64 {
        self.record.events - self.record.done
    }
}

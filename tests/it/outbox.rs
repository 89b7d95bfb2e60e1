//! Air-gapped sites through the real binary, against the stand-ins: an agent with `[outbox]` seals the
//! events into bundle files without any intake configured; `ship`, with a configuration of its own, sends a
//! copy of the folder to the intake. Also `kill -9` of both, damaged and tampered bundles, and `--watch`.

use crate::support::binary;
use jcdi_forwarder::clock::now_ns;
use jcdi_forwarder::harness::wait_until;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use jcdi_forwarder::outbox::bundle;
use jcdi_forwarder::standin::{
    ApiEvent, ApiOptions, ApiStandIn, EventFactory, IntakeFault, IntakeOptions, IntakeStandIn,
};

const SECOND: i64 = 1_000_000_000;
const API_KEY: &str = "outbox-api-key-51d2";
const INTAKE_KEY: &str = "outbox-intake-key-9e07";
const BUNDLE_KEY: &str = "outbox-bundle-key-0f1e2d3c4b5a6978";

/// The collecting side: an API stand-in with `count` events, and a configuration writing to an outbox.
struct Site {
    api: ApiStandIn,
    events: Vec<ApiEvent>,
    dir: tempfile::TempDir,
}

impl Site {
    async fn new(count: usize, seed: u64) -> Site {
        let api = ApiStandIn::start(ApiOptions {
            api_key: API_KEY.into(),
            ..ApiOptions::default()
        })
        .await
        .expect("API stand-in");
        let now = now_ns();
        let events = EventFactory::new(seed).mix(count, now - 2 * 3600 * SECOND, now - 60 * SECOND);
        api.add_events(events.clone());
        Site {
            api,
            events,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// The collecting agent's configuration: no [sekoia] at all, so nothing can reach an intake.
    fn config(&self, bundle_events: usize, page_size: usize) -> PathBuf {
        let text = format!(
            "data_dir = {:?}\n\
             [jumpcloud]\nbase_url = \"{}\"\napi_key = \"{API_KEY}\"\npoll_interval = \"1s\"\npage_size = {page_size}\n\
             catch_up_page_size = {page_size}\ninitial_lookback = \"3h\"\noverlap = \"60s\"\n\
             min_request_interval = \"0s\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n\
             [outbox]\ndir = {:?}\nmax_bundle_events = {bundle_events}\nmax_bundle_age = \"1s\"\n\
             hmac_key = \"${{TEST_OUTBOX_KEY:-{BUNDLE_KEY}}}\"\n\
             [api]\nenabled = false\n",
            self.dir.path().join("queue").display().to_string(),
            self.api.base_url(),
            self.outbox().display().to_string(),
        );
        let path = self.dir.path().join("collect.toml");
        std::fs::write(&path, text).expect("config written");
        path
    }
}

/// The connected side: an intake stand-in and a configuration of `ship`.
struct Connected {
    intake: IntakeStandIn,
    dir: tempfile::TempDir,
}

impl Connected {
    async fn new() -> Connected {
        let intake = IntakeStandIn::start(IntakeOptions {
            intake_key: INTAKE_KEY.into(),
            ..IntakeOptions::default()
        })
        .await
        .expect("intake stand-in");
        let connected = Connected {
            intake,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir(connected.bundles()).expect("bundles folder");
        connected
    }

    /// Where bundles arrive on this host.
    fn bundles(&self) -> PathBuf {
        self.dir.path().join("incoming")
    }

    fn config(&self, key: Option<&str>, batch_max_events: usize) -> PathBuf {
        let mut text = format!(
            "[sekoia]\nintake_url = \"{}\"\nintake_key = \"{INTAKE_KEY}\"\nbatch_max_events = {batch_max_events}\n\
             retry_initial = \"100ms\"\nretry_max = \"1s\"\n",
            self.intake.base_url()
        );
        if let Some(key) = key {
            text.push_str(&format!("[outbox]\nhmac_key = \"{key}\"\n"));
        }
        let path = self.dir.path().join("ship.toml");
        std::fs::write(&path, text).expect("config written");
        path
    }

    fn ship_command(&self, config: &Path, extra: &[&str]) -> Command {
        let mut command = binary().command();
        command
            .args(["--log-level", "info", "ship", "--config"])
            .arg(config)
            .args(extra)
            .arg(self.bundles())
            .stdin(Stdio::null());
        command
    }

    /// Runs `ship` to its end.
    fn ship(&self, config: &Path, extra: &[&str]) -> Output {
        self.ship_command(config, extra)
            .output()
            .expect("ship runs")
    }
}

fn start_agent(config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .expect("log file");
    binary()
        .command()
        .args(["--log-level", "info", "run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the agent starts")
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("reaped");
    assert!(status.success(), "SIGTERM gives a clean exit: {status:?}");
}

fn kill_9(child: &mut Child) {
    child.kill().expect("SIGKILL delivered");
    child.wait().expect("reaped");
}

/// The bundles in `dir` (not its temporary files), by name.
fn bundle_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.') && name.ends_with(bundle::EXTENSION))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every event of every bundle in `dir`, each bundle checked with the key.
fn bundled_events(dir: &Path) -> Vec<String> {
    bundle_names(dir)
        .iter()
        .flat_map(|name| {
            let bytes = std::fs::read(dir.join(name)).expect("bundle read");
            bundle::open(&bytes, Some(BUNDLE_KEY.as_bytes()))
                .unwrap_or_else(|problem| panic!("{name} as sealed does not open: {problem}"))
                .events
        })
        .collect()
}

fn missing<'a>(expected: &'a [ApiEvent], got: &[String]) -> Vec<&'a str> {
    let got: HashSet<&str> = got.iter().map(String::as_str).collect();
    expected
        .iter()
        .map(|e| e.raw.as_str())
        .filter(|raw| !got.contains(raw))
        .collect()
}

fn duplicates(got: &[String]) -> usize {
    got.len() - got.iter().collect::<HashSet<_>>().len()
}

/// Copies the finished bundles of `from` into `to` as a transfer tool would: under a dot-name, renamed.
fn transfer(from: &Path, to: &Path) -> usize {
    let names = bundle_names(from);
    for name in &names {
        let tmp = to.join(format!(".{name}.part"));
        std::fs::copy(from.join(name), &tmp).expect("copied");
        std::fs::rename(&tmp, to.join(name)).expect("renamed");
    }
    names.len()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Collects every event of `site` into its outbox with a clean run of the agent.
async fn collect_all(site: &Site, config: &Path) {
    let log = config.with_extension("log");
    let started = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("agent started")
            .count()
    };
    let before = started();
    let mut agent = start_agent(config);
    // Stopped once it runs: every event may be sealed already (by the agents killed before it), and a
    // SIGTERM before the agent has started (while it starts itself again with its allocator settings)
    // ends it by the signal, which `stop` does not take for a clean exit.
    let running = wait_until(Duration::from_secs(60), || started() > before).await;
    assert!(
        running,
        "the agent did not start; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let sealed = wait_until(Duration::from_secs(120), || {
        missing(&site.events, &bundled_events(&site.outbox())).is_empty()
    })
    .await;
    stop(&mut agent);
    assert!(
        sealed,
        "not every event was sealed into a bundle; agent log:\n{}",
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_collected_into_an_outbox_are_shipped_byte_for_byte_once() {
    let site = Site::new(2_500, 15).await;
    let collect = site.config(400, 500);
    let validated = binary()
        .command()
        .args(["validate", "--config"])
        .arg(&collect)
        .output()
        .expect("validate runs");
    assert!(validated.status.success(), "{}", stderr(&validated));
    let said = String::from_utf8_lossy(&validated.stdout);
    assert!(said.contains("seals bundles into"), "{said}");

    collect_all(&site, &collect).await;
    let bundled = bundled_events(&site.outbox());
    assert_eq!(
        duplicates(&bundled),
        0,
        "a clean run bundles every event once"
    );
    assert_eq!(bundled.len(), site.events.len());
    let names = bundle_names(&site.outbox());
    assert!(names.len() >= 7, "bundles of at most 400 events: {names:?}");
    let status = binary()
        .command()
        .args(["status", "--config"])
        .arg(&collect)
        .output()
        .expect("status runs");
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains(&format!("outbox: {} bundles", names.len())),
        "{said}{}",
        stderr(&status)
    );

    let there = Connected::new().await;
    let config = there.config(Some(BUNDLE_KEY), 300);
    let validated = binary()
        .command()
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("validate runs");
    assert!(validated.status.success(), "{}", stderr(&validated));
    assert!(String::from_utf8_lossy(&validated.stdout).contains("valid configuration of `ship`"));

    assert_eq!(transfer(&site.outbox(), &there.bundles()), names.len());
    let shipped = there.ship(&config, &[]);
    assert!(
        shipped.status.success(),
        "ship failed: {}",
        stderr(&shipped)
    );
    let received = there.intake.received();
    assert!(missing(&site.events, &received).is_empty());
    assert_eq!(duplicates(&received), 0);
    assert_eq!(received.len(), site.events.len());
    assert!(bundle_names(&there.bundles()).is_empty());
    assert_eq!(bundle_names(&there.bundles().join("shipped")), names);

    // Again: nothing is left to send. The same bundles delivered a second time are not sent either.
    let requests = there.intake.requests();
    let again = there.ship(&config, &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    transfer(&site.outbox(), &there.bundles());
    let redelivered = there.ship(&config, &[]);
    assert!(redelivered.status.success(), "{}", stderr(&redelivered));
    assert!(
        String::from_utf8_lossy(&redelivered.stdout).contains(&format!(
            "shipped 0 bundles (0 events); {} already shipped",
            names.len()
        )),
        "{}",
        String::from_utf8_lossy(&redelivered.stdout)
    );
    assert_eq!(there.intake.requests(), requests, "nothing was sent twice");
    assert_eq!(there.intake.received_count(), site.events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_sealing_and_while_shipping_loses_nothing() {
    let seed = std::env::var("JCDI_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("random seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let site = Site::new(5_000, 16).await;
    // Small bundles and pages: the kills land while bundles are being written.
    let collect = site.config(100, 100);
    let mut kills = 0;
    for round in 0..6 {
        let mut agent = start_agent(&collect);
        tokio::time::sleep(Duration::from_millis(rng.u64(150..1200))).await;
        assert!(
            agent.try_wait().expect("status").is_none(),
            "the agent exited on its own in round {round}"
        );
        kill_9(&mut agent);
        kills += 1;
        // A bundle is either whole and valid, or not there at all.
        let _ = bundled_events(&site.outbox());
    }
    collect_all(&site, &collect).await;
    let bundled = bundled_events(&site.outbox());
    let sealed_duplicates = duplicates(&bundled);
    println!(
        "{} events sealed into {} bundles after {kills} kills; {sealed_duplicates} sealed twice",
        bundled.len(),
        bundle_names(&site.outbox()).len()
    );
    assert!(missing(&site.events, &bundled).is_empty());
    // Only pages re-read after a lost commit can bring an event twice; a bundle's events are never
    // sealed twice (a bundle found at start lets its events go).
    assert!(
        sealed_duplicates < site.events.len() / 10,
        "{sealed_duplicates}"
    );

    let there = Connected::new().await;
    let config = there.config(Some(BUNDLE_KEY), 50);
    transfer(&site.outbox(), &there.bundles());
    let mut ship_kills = 0;
    for round in 0..5 {
        // The intake is slow, so that a kill lands while a batch is in flight.
        for _ in 0..30 {
            there
                .intake
                .push_fault(IntakeFault::Delay(Duration::from_millis(40)));
        }
        let mut ship = there
            .ship_command(&config, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ship starts");
        tokio::time::sleep(Duration::from_millis(rng.u64(100..900))).await;
        if ship.try_wait().expect("status").is_some() {
            println!("ship ended before the kill in round {round}");
            break;
        }
        kill_9(&mut ship);
        ship_kills += 1;
    }
    let finished = there.ship(&config, &[]);
    assert!(finished.status.success(), "{}", stderr(&finished));
    let received = there.intake.received();
    let shipped_duplicates = duplicates(&received);
    println!(
        "{} received after {ship_kills} kills of ship: {shipped_duplicates} duplicates",
        received.len()
    );
    assert!(missing(&site.events, &received).is_empty());
    // Sealed duplicates arrive twice too; beyond them, at most the batch in flight per kill.
    assert!(
        shipped_duplicates <= sealed_duplicates + ship_kills * 50,
        "{shipped_duplicates} duplicates"
    );
    assert!(bundle_names(&there.bundles().join("rejected")).is_empty());
    assert!(bundle_names(&there.bundles()).is_empty());
}

/// Seals `raws` into a bundle in `dir` with the library; returns its file name.
fn seal(dir: &Path, stream: &str, first_seq: u64, raws: &[String], key: Option<&[u8]>) -> String {
    let mut builder = bundle::Builder::new(stream).expect("builder");
    for (i, raw) in raws.iter().enumerate() {
        builder
            .push(&jcdi_forwarder::event::QueuedEvent {
                seq: first_seq + i as u64,
                stream: 0,
                timestamp_ns: now_ns(),
                queued_at_ms: 0,
                raw: raw.clone().into(),
            })
            .expect("pushed");
    }
    let sealed = builder.seal(key, now_ns()).expect("sealed");
    std::fs::write(dir.join(sealed.file_name()), &sealed.bytes).expect("written");
    sealed.file_name()
}

/// The members of a tar file.
fn members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .expect("tar")
        .map(|entry| {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
            (name, data)
        })
        .collect()
}

/// Where the middle of the compressed events lies in a bundle file.
fn content_offset(bytes: &[u8]) -> usize {
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().expect("tar");
    for entry in entries {
        let entry = entry.expect("entry");
        if entry.path().expect("path").ends_with("events.ndjson.zst") {
            return (entry.raw_file_position() + entry.size() / 2) as usize;
        }
    }
    panic!("no events member")
}

fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, data.as_slice())
            .expect("appended");
    }
    tar.into_inner().expect("tar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_truncated_and_tampered_bundles_are_refused_and_the_rest_ship() {
    let there = Connected::new().await;
    let dir = there.bundles();
    let key = Some(BUNDLE_KEY.as_bytes());
    let mut factory = EventFactory::new(17);
    let now = now_ns();
    let mut batch = |n| -> Vec<String> {
        factory
            .mix(n, now - 3600 * SECOND, now)
            .into_iter()
            .map(|e| e.raw)
            .collect()
    };
    let good: Vec<Vec<String>> = (0..3).map(|_| batch(120)).collect();
    for (i, raws) in good.iter().enumerate() {
        seal(&dir, "default", 1_000 * i as u64, raws, key);
    }
    // A flipped byte in the middle of the compressed events.
    let flipped = seal(&dir, "default", 10_000, &batch(100), key);
    let mut bytes = std::fs::read(dir.join(&flipped)).expect("read");
    let at = content_offset(&bytes);
    bytes[at] ^= 0x01;
    std::fs::write(dir.join(&flipped), bytes).expect("written");
    // A bundle cut short.
    let truncated = seal(&dir, "default", 20_000, &batch(100), key);
    let bytes = std::fs::read(dir.join(&truncated)).expect("read");
    std::fs::write(dir.join(&truncated), &bytes[..bytes.len() * 2 / 3]).expect("written");
    // Changed content with every checksum recomputed (and a fitting name), the old signature kept.
    let original = batch(100);
    let signed = seal(&dir, "default", 30_000, &original, key);
    let mut changed = original.clone();
    changed[3] = changed[3].replacen('a', "b", 1);
    let scratch = tempfile::tempdir().expect("scratch");
    let forged_source = seal(scratch.path(), "default", 30_000, &changed, None);
    let mut parts = members(&std::fs::read(dir.join(&signed)).expect("read"));
    let forged = members(&std::fs::read(scratch.path().join(&forged_source)).expect("read"));
    assert_eq!(parts.len(), 4, "manifest, its sum, signature, events");
    parts[0] = forged[0].clone();
    parts[1] = forged[1].clone();
    parts[3] = forged[2].clone();
    std::fs::remove_file(dir.join(&signed)).expect("removed");
    let tampered = forged_source.clone();
    std::fs::write(dir.join(&tampered), tar_of(&parts)).expect("written");

    let config = there.config(Some(BUNDLE_KEY), 1000);
    let output = there.ship(&config, &[]);
    let err = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(3),
        "refusals give exit status 3: {err}"
    );
    for (file, check) in [
        (&flipped, "check failed"),
        (&truncated, "container check failed"),
        (&tampered, "signature check failed"),
    ] {
        assert!(
            err.lines()
                .any(|line| line.contains(file.as_str()) && line.contains(check)),
            "no line names {file} and {check:?}:\n{err}"
        );
        assert!(dir.join("rejected").join(file).exists(), "{file} rejected");
    }
    let received = there.intake.received();
    let expected: Vec<String> = good.concat();
    assert_eq!(
        received, expected,
        "the good bundles, in order, and nothing else"
    );
    assert_eq!(bundle_names(&dir.join("shipped")).len(), 3);
    assert!(bundle_names(&dir).is_empty());
    assert!(
        !err.contains(BUNDLE_KEY) && !err.contains(INTAKE_KEY),
        "no secret in messages"
    );

    // Without a key, a signed bundle is held (not refused); a damaged one is still refused.
    let unsigned_config = there.config(None, 1000);
    let held = seal(&dir, "default", 40_000, &batch(10), key);
    let output = there.ship(&unsigned_config, &[]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no key to check it"),
        "{}",
        stderr(&output)
    );
    assert!(dir.join(&held).exists(), "a held bundle stays where it is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_watch_ships_bundles_as_they_appear_and_deletes_them() {
    let there = Connected::new().await;
    let dir = there.bundles();
    let config = there.config(None, 1000);
    let mut watch = there
        .ship_command(&config, &["--watch", "--interval", "200ms", "--delete"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ship starts");
    let mut factory = EventFactory::new(18);
    let now = now_ns();
    let mut expected = Vec::new();
    let scratch = tempfile::tempdir().expect("scratch");
    for round in 0..3u64 {
        let raws: Vec<String> = factory
            .mix(50, now - 3600 * SECOND, now)
            .into_iter()
            .map(|e| e.raw)
            .collect();
        let name = seal(scratch.path(), "default", round * 100, &raws, None);
        std::fs::rename(scratch.path().join(&name), dir.join(&name)).expect("moved in");
        expected.extend(raws);
        let count = expected.len();
        assert!(
            wait_until(Duration::from_secs(30), || there.intake.received_count()
                >= count)
            .await,
            "bundle {round} was not shipped"
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || bundle_names(&dir).is_empty()).await,
        "shipped bundles are deleted"
    );
    stop(&mut watch);
    assert_eq!(there.intake.received(), expected);
    assert!(bundle_names(&dir.join("shipped")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_splits_on_413_and_keeps_what_the_intake_never_takes_as_dead_letters() {
    let there = Connected::new().await;
    let dir = there.bundles();
    let mut factory = EventFactory::new(19);
    let now = now_ns();
    let mut raws: Vec<String> = factory
        .mix(40, now - 3600 * SECOND, now)
        .into_iter()
        .map(|e| e.raw)
        .collect();
    let big = factory.big_event(now, 300 * 1024).raw;
    raws.insert(17, big.clone());
    let name = seal(&dir, "default", 0, &raws, None);
    there.intake.push_fault(IntakeFault::Status {
        status: 413,
        retry_after: None,
    });
    let output = there.ship(&there.config(None, 1000), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let expected: Vec<String> = raws.iter().filter(|raw| **raw != big).cloned().collect();
    assert_eq!(there.intake.received(), expected, "in order, split in two");
    let letters: Vec<_> = std::fs::read_dir(dir.join("dead-letters"))
        .expect("dead letters")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&letters[0]).expect("read")).expect("json");
    assert_eq!(letter["event"].as_str(), Some(big.as_str()));
    assert_eq!(letter["index"], 17);
    assert!(dir.join("shipped").join(&name).exists());
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 dead letter;"));
}

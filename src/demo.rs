//! `jcdi-forwarder demo`: the whole pipeline against built-in stand-ins of JumpCloud and Sekoia.io on
//! 127.0.0.1, in a temporary folder, with live progress and a summary that proves every event arrived.
//!
//! It exercises what matters: several services, paging, a burst of events in one second, events indexed
//! late, timestamps in the future, events without an id, an event too large for the intake, and an intake
//! outage in the middle of the run. It ends with exit code 0 only if every forwardable event reached the
//! intake byte for byte and the oversize one is in the dead-letter store.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::harness::{self, Arrival, ConfigBuilder, InProcessAgent, StandIns};
use crate::standin::{ApiOptions, EventFactory, IntakeOptions};

const SECOND: i64 = 1_000_000_000;
const DEADLINE: Duration = Duration::from_secs(180);

/// Runs the demo with `event_count` events and an intake outage of `outage_seconds`.
pub async fn run(event_count: usize, outage_seconds: u64) -> anyhow::Result<()> {
    let stand_ins = StandIns::start(ApiOptions::default(), IntakeOptions::default()).await?;
    let (api, intake) = (&stand_ins.api, &stand_ins.intake);
    let data = tempfile::tempdir().context("creating a temporary folder")?;

    let now = crate::clock::now_ns();
    let mut factory = EventFactory::new(2026);
    let mut events = factory.mix(
        event_count.max(100),
        now - 2 * 3600 * SECOND,
        now - 5 * 60 * SECOND,
    );
    let burst_second = now - 30 * 60 * SECOND;
    let burst: Vec<_> = (0..1500)
        .map(|i| factory.event("directory", burst_second + i * 600_000))
        .collect();
    let visible_later = SystemTime::now() + Duration::from_secs(5);
    let late: Vec<_> = (0..200)
        .map(|i| {
            let mut event = factory.event("sso", now - 3 * 60 * SECOND + i * 1_000_000);
            event.visible_at = Some(visible_later);
            event
        })
        .collect();
    let future: Vec<_> = (0..3)
        .map(|i| factory.event("mdm", now + (i + 1) * 3600 * SECOND))
        .collect();
    let oversize = factory.big_event(now - 60 * SECOND, 300 * 1024);
    let without_id = events.iter().filter(|e| !e.raw.contains("\"id\":")).count();
    events.extend(burst.iter().cloned());
    events.extend(late.iter().cloned());
    events.extend(future.iter().cloned());
    // Everything but the oversize event must reach the intake.
    let expected = events.clone();
    events.push(oversize.clone());
    api.add_events(events);

    println!("jcdi-forwarder demo");
    println!(
        "  JumpCloud stand-in: {}  (holds {} events)",
        api.base_url(),
        api.event_count()
    );
    println!("  Sekoia.io stand-in: {}", intake.base_url());
    println!("  queue: {}", data.path().display());
    println!(
        "  in the mix: {} events in one second, {} indexed 5 s late, {} stamped in the future, {} without an id (LDAP), \
         1 of 300 KiB (over the intake's limit), and a {outage_seconds} s intake outage",
        burst.len(),
        late.len(),
        future.len(),
        without_id
    );
    println!();

    let config = demo_config(&stand_ins, data.path()).parse()?;
    let queue = crate::agent::open_queue(&config).await?;
    let agent = InProcessAgent::start(&config, &queue);

    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut outage: Option<Instant> = None;
    let mut outage_done = outage_seconds == 0;
    let mut last_line = Instant::now();
    let arrived = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = agent.metrics.snapshot();
        if !outage_done && outage.is_none() && m.events_forwarded as usize >= expected.len() / 4 {
            intake.set_outage(true);
            outage = Some(Instant::now());
        }
        if let Some(since) = outage {
            if !outage_done && since.elapsed() >= Duration::from_secs(outage_seconds) {
                intake.set_outage(false);
                outage_done = true;
            }
        }
        let depth = queue.depth();
        let line = format!(
            "  {:>5.1}s  polled {:>6}  queued {:>6}  deduplicated {:>5}  forwarded {:>6}  waiting {:>6}  dead-lettered {}  intake {}",
            started.elapsed().as_secs_f64(),
            m.events_polled,
            m.events_queued,
            m.events_deduplicated,
            m.events_forwarded,
            depth.events,
            m.events_dead_lettered,
            if outage.is_some() && !outage_done { "DOWN" } else { "up" },
        );
        if tty {
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            println!("{line}");
            last_line = Instant::now();
        }
        let all_in = intake.received_count() >= expected.len()
            && outage_done
            && harness::missing(intake, &expected).is_empty();
        if all_in && m.events_dead_lettered >= 1 {
            if tty {
                println!();
            }
            break true;
        }
        if started.elapsed() > DEADLINE {
            println!();
            break false;
        }
    };
    let metrics = agent.metrics.clone();
    agent.stop().await?;
    let m = metrics.snapshot();

    let arrival = Arrival::of(intake, &expected);
    let missing = arrival.missing;
    let dead = queue.dead_letters()?;
    let oversize_kept = dead.iter().any(|letter| letter.raw == oversize.raw);
    println!();
    println!("Summary");
    println!(
        "  events at the JumpCloud stand-in:        {}",
        expected.len() + 1
    );
    println!(
        "  API requests: {} ok, {} failed;  intake requests: {} ok, {} failed (the outage)",
        m.api_requests_ok, m.api_requests_failed, m.intake_requests_ok, m.intake_requests_failed
    );
    println!(
        "  received by the intake stand-in:         {} strings, {} unique, {} duplicates",
        arrival.received,
        arrival.unique,
        arrival.duplicates()
    );
    println!("  forwardable events missing at the intake: {missing}");
    println!(
        "  oversize event kept in the dead-letter store: {}",
        if oversize_kept { "yes" } else { "NO" }
    );
    if arrived && missing == 0 && oversize_kept {
        println!(
            "  => every one of the {} forwardable events arrived, byte for byte, in {:.1} s.",
            expected.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    } else {
        anyhow::bail!(
            "the demo did not complete: {missing} events missing, oversize kept: {oversize_kept}"
        )
    }
}

/// The demo's configuration: large pages, a long overlap (for the events indexed late), a gentle request
/// rate, and the local endpoint on any free port.
fn demo_config(stand_ins: &StandIns, data_dir: &std::path::Path) -> ConfigBuilder {
    stand_ins
        .config(data_dir)
        .set("jumpcloud.services", vec!["all"])
        .poll_interval(Duration::from_secs(1))
        .page_size(1000)
        .initial_lookback(Duration::from_secs(3 * 3600))
        .overlap(Duration::from_secs(600))
        .min_request_interval(Duration::from_millis(50))
        .batch_max_events(1000)
        .queue_max_bytes("1GiB")
        .set("api.listen", "127.0.0.1:0")
}

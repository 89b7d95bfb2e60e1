//! `kill -9` of the real binary at random moments, while polling and while forwarding, restarted each time:
//! every event must arrive byte for byte; duplicates are allowed (at-least-once) and counted.

use std::process::Command;
use std::time::Duration;

use crate::support::*;
use jcdi_forwarder::standin::{EventFactory, IntakeFault};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_nothing() {
    let h = Harness::new().await;
    let now = now_ns();
    let events = EventFactory::new(42).mix(12_000, now - 2 * 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    let config_path = h.write_config(
        &h.builder()
            .page_size(400)
            .min_request_interval(Duration::from_millis(20))
            .batch_max_events(250)
            // Any free port at each start: a port free once may be taken by another test's connection
            // between two restarts, and an agent that cannot listen exits.
            .set("api.listen", "127.0.0.1:0"),
    );
    // Every run appends to the same log.
    let agent_command = binary()
        .agent(&config_path, &config_path.with_extension("log"))
        .log_level("info");

    let seed = std::env::var("JCDI_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("random seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    for round in 0..8 {
        // Every other round the intake is slow, so that the kill lands in the middle of a send.
        if round % 2 == 1 {
            for _ in 0..4 {
                h.intake
                    .push_fault(IntakeFault::Delay(Duration::from_millis(150)));
            }
        }
        let mut agent = agent_command.spawn().expect("the binary starts");
        tokio::time::sleep(Duration::from_millis(rng.u64(100..1200))).await;
        if agent.exited().is_some() {
            panic!(
                "the agent exited on its own in round {round}; its last log lines, newest first:\n{}",
                agent.log_tail(30)
            );
        }
        agent.kill_9().expect("SIGKILL delivered");
        kills += 1;
    }
    let polled_before_last_start = h.intake.received_count();
    println!("after {kills} kills: {polled_before_last_start} strings received so far");

    let requests_before = h.api.requests();
    let mut agent = agent_command.spawn().expect("the binary starts");
    // Wait for the last agent to be up (it polls) so that SIGTERM finds its handler installed.
    assert!(
        wait_until(Duration::from_secs(30), || h.api.requests()
            > requests_before)
        .await
    );
    let arrived = wait_until(Duration::from_secs(120), || {
        missing(&h.intake, &events).is_empty()
    })
    .await;
    if !arrived {
        let _ = agent.kill_9();
        let _ = Command::new("cp")
            .arg("-a")
            .arg(h.dir.path())
            .arg("/tmp/crashdb")
            .status();
        println!(
            "agent log (last lines, newest first):\n{}",
            agent.log_tail(60)
        );
        wait_all_arrived(&h.intake, &events, Duration::ZERO)
            .await
            .expect("every event arrives");
    }
    let status = agent
        .stop(Duration::from_secs(30))
        .await
        .expect("SIGTERM stops the agent");
    assert!(status.success(), "SIGTERM gives a clean exit: {status:?}");

    let duplicates = duplicates(&h.intake);
    println!(
        "{} events, {} received, {duplicates} duplicates after {kills} kills",
        events.len(),
        h.intake.received_count()
    );
    assert!(missing(&h.intake, &events).is_empty());
    // At-least-once: duplicates come only from batches in flight at a kill (and pages re-read after a lost
    // commit); they stay far below the total.
    assert!(duplicates < events.len() / 2, "{duplicates} duplicates");
}

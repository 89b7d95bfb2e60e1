//! A full disk: the queue lives on a small tmpfs that something else fills. The agent must pause polling
//! before sled runs out of space (a full disk stops sled from writing acks and even from reopening),
//! say why on /health and in its log, lose nothing, and carry on by itself once there is room again.
//!
//! Mounting a tmpfs needs root: the test is ignored unless asked for (`cargo test --test it -- --ignored`, as
//! CI does when it runs as root), and then fails if it cannot mount one.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use jcdi_forwarder::standin::EventFactory;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn a_full_disk_pauses_polling_loses_nothing_and_recovers() {
    let h = Harness::new().await;
    let disk = h.dir.path().join("disk");
    let _tmpfs = Tmpfs::mount(disk.clone(), "64m").expect("a tmpfs mounted (needs root)");
    let now = now_ns();
    let events = EventFactory::new(31).mix(8000, now - 2 * 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    // Something else fills the disk: 4 MiB stay free, under the agent's 6 MiB reserve.
    let ballast = disk.join("ballast");
    std::fs::write(&ballast, vec![0u8; 60 * 1024 * 1024]).expect("ballast written");
    let config = h.write_config(
        &h.builder()
            .page_size(500)
            .data_dir(&disk.join("queue"))
            .set("queue.min_free_disk", "6MiB"),
    );
    let mut agent = binary()
        .agent(&config, &h.dir.path().join("agent.log"))
        .spawn()
        .expect("starts");

    // Polling pauses (nothing read from JumpCloud), and /health says why.
    let mut health = String::new();
    for _ in 0..100 {
        if let Ok(Some((status, body))) =
            jcdi_forwarder::admin::ask_agent(h.admin, http::Method::GET, "/health", None).await
        {
            if status == 503 {
                health = String::from_utf8_lossy(&body).into_owned();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(health.contains("disk is almost full"), "health: {health:?}");
    assert_eq!(h.api.requests(), 0, "no polling while the disk is short");

    // Room again: everything arrives, with no restart needed.
    std::fs::remove_file(&ballast).expect("ballast removed");
    let arrived = wait_until(Duration::from_secs(120), || {
        missing(&h.intake, &events).is_empty()
    })
    .await;
    let exited = agent.exited().is_some();
    let stopped = agent.stop(Duration::from_secs(15)).await.is_ok();
    let log_text = agent.log();
    assert!(stopped, "SIGTERM stops the agent");
    assert!(
        arrived && !exited,
        "{} events missing (agent exited: {exited}); log:\n{}",
        missing(&h.intake, &events).len(),
        log_text
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log_text.contains("almost full"),
        "the pause is logged: {log_text}"
    );
}

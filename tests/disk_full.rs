//! A full disk: the queue lives on a small tmpfs that something else fills. The agent must pause polling
//! before sled runs out of space (a full disk stops sled from writing acks and even from reopening),
//! say why on /health and in its log, lose nothing, and carry on by itself once there is room again.
//!
//! Mounting a tmpfs needs root (CI runs as root); elsewhere the test says so and checks nothing else.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
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

fn start(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_jcdi-forwarder"))
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_polling_loses_nothing_and_recovers() {
    let h = Harness::new().await;
    let disk = h.dir.path().join("disk");
    let Some(_tmpfs) = Tmpfs::mount(disk.clone(), "64m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let now = now_ns();
    let events = EventFactory::new(31).mix(8000, now - 2 * 3600 * SECOND, now - 60 * SECOND);
    h.api.add_events(events.clone());
    // Something else fills the disk: 4 MiB stay free, under the agent's 6 MiB reserve.
    let ballast = disk.join("ballast");
    std::fs::write(&ballast, vec![0u8; 60 * 1024 * 1024]).expect("ballast written");
    let config = h.dir.path().join("config.toml");
    let text = h
        .config_text("page_size = 500", "")
        .replace(
            &format!(
                "data_dir = {:?}",
                h.dir.path().join("queue").display().to_string()
            ),
            &format!("data_dir = {:?}", disk.join("queue").display().to_string()),
        )
        .replace("[sekoia]", "[queue]\nmin_free_disk = \"6MiB\"\n[sekoia]");
    std::fs::write(&config, text).expect("config");
    let log = h.dir.path().join("agent.log");
    let mut child = start(&config, &log);

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
    let exited = child.try_wait().expect("status").is_some();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let stopped = wait_until(Duration::from_secs(15), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    if !stopped {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
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

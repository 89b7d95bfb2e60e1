//! The sections about the agent's own machine: `[queue]` (size limit, dedup window, free disk) and `[api]`
//! (the local endpoint).
//!
//! Invariants: the queue limit is never 0; the endpoint listens on loopback unless told otherwise (another
//! address is a warning), and `enabled = false` turns it off.

use std::time::Duration;

use super::reader::{Reader, Section};
use super::{ApiConfig, QueueConfig};

impl Reader<'_> {
    /// The `[queue]` section.
    pub(super) fn queue(&mut self, queue: &mut Section) -> QueueConfig {
        let max_bytes = self
            .size(queue, "max_bytes")
            .unwrap_or(10 * 1024 * 1024 * 1024);
        if max_bytes == 0 {
            self.problem(
                queue,
                "max_bytes",
                "must be more than 0 (for example \"10GiB\")",
            );
        }
        let dedup_window = self.duration(queue, "dedup_window", Duration::from_secs(7 * 86_400));
        let min_free_disk = self
            .size(queue, "min_free_disk")
            .unwrap_or(256 * 1024 * 1024);
        self.unknown_keys(queue, &["max_bytes", "dedup_window", "min_free_disk"]);
        QueueConfig {
            max_bytes,
            dedup_window,
            min_free_disk,
        }
    }

    /// The `[api]` section.
    pub(super) fn api(&mut self, s: &mut Section) -> ApiConfig {
        let enabled = match s.table.remove("enabled") {
            None => true,
            Some(toml::Value::Boolean(enabled)) => enabled,
            Some(other) => {
                self.problem(s, "enabled", &format!("= {other} must be true or false"));
                true
            }
        };
        let text = self
            .string(s, "listen")
            .unwrap_or_else(|| "127.0.0.1:9464".to_string());
        let listen = match text.trim().parse::<std::net::SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    self.warn(
                        s,
                        "listen",
                        "is not a loopback address: metrics and status are then reachable from the network \
                         (admin actions are still refused to other hosts)",
                    );
                }
                Some(addr)
            }
            Err(_) => {
                self.problem(
                    s,
                    "listen",
                    &format!("= {text:?} is not an address and port such as \"127.0.0.1:9464\""),
                );
                None
            }
        };
        let unhealthy_after = self.duration(s, "unhealthy_after", Duration::from_secs(300));
        self.unknown_keys(s, &["enabled", "listen", "unhealthy_after"]);
        ApiConfig {
            listen: listen.filter(|_| enabled),
            unhealthy_after,
        }
    }
}

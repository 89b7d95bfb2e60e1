//! The rules and defaults of a Sekoia.io section (`[sekoia]`, or a named destination `[sekoia.<name>]`):
//! region or intake URL, intake key, batch limits, requests in flight, transport.
//!
//! Invariants: a named destination inherits every key it does not set from `[sekoia]`; a batch can never
//! exceed what the intake accepts (at most 9 MiB, at least one largest event, [`INTAKE_MAX_EVENT_BYTES`]).

use std::time::Duration;

use super::reader::{Reader, Section};
use super::{
    sekoia_region_url, RetryConfig, Secret, SekoiaConfig, Transport, INTAKE_MAX_EVENT_BYTES,
    SEKOIA_REGIONS,
};

/// The keys a Sekoia.io section may hold.
const SEKOIA_KEYS: &[&str] = &[
    "region",
    "intake_url",
    "intake_key",
    "intake_key_file",
    "batch_max_events",
    "batch_max_bytes",
    "max_in_flight",
    "request_timeout",
    "retry_initial",
    "retry_max",
    "proxy",
    "ca_file",
];

impl Reader<'_> {
    /// Reads a Sekoia.io section; `base` gives the values of keys it does not set (`[sekoia]` for a named
    /// destination).
    pub(super) fn sekoia(
        &mut self,
        s: &mut Section,
        base: Option<&SekoiaConfig>,
        key_required: bool,
    ) -> SekoiaConfig {
        let defaults = SekoiaConfig {
            section: s.name.clone(),
            intake_url: sekoia_region_url("fra1"),
            intake_key: Secret::new(""),
            batch_max_events: 1000,
            batch_max_bytes: 4 * 1024 * 1024,
            max_in_flight: 2,
            request_timeout: Duration::from_secs(30),
            retry: RetryConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            transport: Transport::direct(),
        };
        let base = base.unwrap_or(&defaults);
        let region_url = self.string(s, "region").and_then(|region| {
            let region = region.trim().to_ascii_lowercase();
            if SEKOIA_REGIONS.contains(&region.as_str()) {
                Some(sekoia_region_url(&region))
            } else {
                self.problem(
                    s,
                    "region",
                    &format!(
                        "= {region:?} is not a known Sekoia.io region: use one of {}, or set intake_url",
                        SEKOIA_REGIONS.join(", ")
                    ),
                );
                None
            }
        });
        let intake_url = match (self.url_opt(s, "intake_url"), region_url) {
            (Some(url), Some(_)) => {
                self.warn(s, "region", "is ignored: intake_url is set and wins");
                url
            }
            (Some(url), None) | (None, Some(url)) => url,
            (None, None) => base.intake_url.clone(),
        };
        let variable = (s.name == "sekoia").then_some("SEKOIA_INTAKE_KEY");
        let intake_key = match self.secret(s, "intake_key", variable, key_required) {
            Some(key) => key,
            None => base.intake_key.clone(),
        };
        let batch_max_events = match self.integer(s, "batch_max_events") {
            None => base.batch_max_events,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    s,
                    "batch_max_events",
                    &format!("= {n} is out of range: use 1 to 100000"),
                );
                base.batch_max_events
            }
        };
        let batch_max_bytes = self
            .size(s, "batch_max_bytes")
            .unwrap_or(base.batch_max_bytes as u64);
        if batch_max_bytes < INTAKE_MAX_EVENT_BYTES as u64 || batch_max_bytes > 9 * 1024 * 1024 {
            self.problem(
                s,
                "batch_max_bytes",
                &format!(
                    "= {batch_max_bytes} bytes is out of range: use \"250KiB\" to \"9MiB\" (the intake refuses requests over 10 MiB)"
                ),
            );
        }
        let max_in_flight = match self.integer(s, "max_in_flight") {
            None => base.max_in_flight,
            Some(n) if (1..=16).contains(&n) => n as usize,
            Some(n) => {
                self.problem(
                    s,
                    "max_in_flight",
                    &format!("= {n} is out of range: use 1 to 16"),
                );
                base.max_in_flight
            }
        };
        let request_timeout = self.duration(s, "request_timeout", base.request_timeout);
        if request_timeout.is_zero() {
            self.problem(
                s,
                "request_timeout",
                "must be more than 0 (for example \"30s\")",
            );
        }
        let retry = self.retry(s, base.retry);
        let transport = self.transport_of(s, &base.transport, base.section == s.name);
        self.unknown_keys(s, SEKOIA_KEYS);
        SekoiaConfig {
            section: s.name.clone(),
            intake_url,
            intake_key,
            batch_max_events,
            batch_max_bytes: batch_max_bytes as usize,
            max_in_flight,
            request_timeout,
            retry,
            transport,
        }
    }
}

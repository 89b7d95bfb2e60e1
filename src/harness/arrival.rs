//! What reached the intake stand-in, against what the JumpCloud stand-in served: the events missing (compared
//! byte for byte) and the duplicates (at-least-once delivery allows them; a clean run has none).
//!
//! The intake stand-in must keep what it receives (`IntakeOptions::keep_events`, the default).

use std::collections::HashSet;
use std::time::Duration;

use crate::standin::{ApiEvent, IntakeStandIn};

/// The raw texts of `expected` that the intake has not received byte for byte.
pub fn missing(intake: &IntakeStandIn, expected: &[ApiEvent]) -> Vec<String> {
    intake.with_received(|got| {
        let got: HashSet<&str> = got.iter().map(String::as_str).collect();
        expected
            .iter()
            .filter(|e| !got.contains(e.raw.as_str()))
            .map(|e| e.raw.clone())
            .collect()
    })
}

/// How many received strings are repeats of one received before.
pub fn duplicates(intake: &IntakeStandIn) -> usize {
    intake.with_received(|got| {
        let unique: HashSet<&String> = got.iter().collect();
        got.len() - unique.len()
    })
}

/// Waits up to `timeout` for the intake to hold every expected event; an error saying how many are missing
/// (and the start of the first) otherwise.
pub async fn wait_all_arrived(
    intake: &IntakeStandIn,
    expected: &[ApiEvent],
    timeout: Duration,
) -> anyhow::Result<()> {
    let arrived = super::wait_until(timeout, || {
        intake.received_count() >= expected.len() && missing(intake, expected).is_empty()
    })
    .await;
    if arrived {
        return Ok(());
    }
    let missing = missing(intake, expected);
    anyhow::bail!(
        "{} of {} events never reached the intake; first missing: {:?}",
        missing.len(),
        expected.len(),
        missing
            .first()
            .map(|raw| raw.chars().take(200).collect::<String>())
    )
}

/// A count of what arrived, for a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Events expected at the intake.
    pub expected: usize,
    /// Strings the intake received, repeats included.
    pub received: usize,
    /// Distinct strings the intake received.
    pub unique: usize,
    /// Expected events never received.
    pub missing: usize,
}

impl Arrival {
    pub fn of(intake: &IntakeStandIn, expected: &[ApiEvent]) -> Arrival {
        let (received, unique) = intake.with_received(|got| {
            let unique: HashSet<&String> = got.iter().collect();
            (got.len(), unique.len())
        });
        Arrival {
            expected: expected.len(),
            received,
            unique,
            missing: missing(intake, expected).len(),
        }
    }

    pub fn duplicates(&self) -> usize {
        self.received - self.unique
    }

    /// Every expected event arrived.
    pub fn complete(&self) -> bool {
        self.missing == 0
    }
}

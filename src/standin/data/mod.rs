//! The data side of the stand-ins: Directory Insights events as the API stand-in serves them, the factory
//! that makes realistic ones, its fixed tables, and the Go-style JSON writer they are written with.
//!
//! Invariants it keeps: nothing here knows about HTTP or about the servers (`jumpcloud` depends on this
//! module, never the other way round), and every text made here is what a real JumpCloud answer could carry.

mod event;
mod factory;
mod fixtures;
mod gojson;

pub use event::ApiEvent;
pub use factory::{EventFactory, SERVICES};
pub use gojson::format_timestamp;

pub(crate) use event::parse_time_ns;

#[cfg(test)]
mod tests;

//! ECS normalization of JumpCloud Directory Insights events, reproducing the
//! Sekoia.io "Jumpcloud Directory Insights" intake format, and the
//! `jcdi-forwarder normalize [FILE...]` subcommand built on it.
//!
//! This module owns the mapping rules (see `docs/normalize.md`), the
//! line-oriented stream driver and the subcommand's exit codes. It does not
//! own the command-line parser: the main CLI calls [`run_cli`].
//!
//! The raw event is parsed once, into borrowed structs that only keep the
//! fields the format reads; everything else is skipped without being built.
//! Every field reader is lenient: a field of an unexpected JSON type is
//! treated as absent instead of failing the whole event, because Sekoia's
//! template-based parser behaves that way and one odd field should not cost
//! the user the event.
//!
//! Files: `parse` reads the raw event, `document` maps it to the ECS
//! document, `python_str` (with its table `printable`) renders change
//! values as the format's Python templates do, `stream` drives
//! line-oriented input and the subcommand.

mod document;
mod parse;
mod printable;
mod python_str;
mod stream;

use serde_json::Value;

pub use stream::{normalize_stream, run_cli, StreamStats};

/// Why a raw event could not be normalized.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    /// The text is not JSON at all (syntax error, truncation, trailing data,
    /// nesting deeper than serde_json's recursion limit).
    #[error("not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The text is valid JSON but not an object, e.g. an array or a number.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
}

/// Turns one raw Directory Insights event (JSON text) into the normalized ECS document.
///
/// The document's `message` is `raw` itself, unchanged.
pub fn normalize(raw: &str) -> Result<Value, NormalizeError> {
    let event = document::prepare(raw)?;
    // Serializing these structs into a `Value` cannot fail: every map key
    // is a string and every number finite.
    Ok(serde_json::to_value(document::build(raw, &event))
        .expect("document structs always serialize"))
}

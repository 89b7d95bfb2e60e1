//! The line-oriented stream driver and the `normalize` subcommand with its
//! exit codes.
//!
//! Invariants: one output line per good input line, in input order; a bad
//! line (not UTF-8, not a JSON object) costs that line only and is reported
//! with its source and line number; blank lines are ignored; the stream
//! never flushes `out` (its caller owns the buffering).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::document::{build, prepare};

/// What [`normalize_stream`] did with its input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Normalized documents written.
    pub written: u64,
    /// Non-blank lines skipped because they were not a JSON object (or not UTF-8).
    pub skipped: u64,
}

/// Normalizes one raw event per line from `input` into one JSON document per
/// line on `out`, in input order. Blank lines are ignored. A bad line is
/// reported on `err` as `SOURCE:LINE: skipped: REASON` and skipped.
///
/// `out` is not flushed: the caller owns its buffering. An `Err` is an I/O
/// failure reading `input` or writing `out`/`err`; processing stops there.
pub fn normalize_stream(
    mut input: impl BufRead,
    source: &str,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<StreamStats> {
    let mut stats = StreamStats::default();
    let mut line = Vec::with_capacity(4096);
    let mut line_no: u64 = 0;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(stats);
        }
        line_no += 1;
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        // Read bytes, not `String` lines: one line of invalid UTF-8 must
        // cost that line only, not abort the whole file.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                writeln!(err, "{source}:{line_no}: skipped: not valid UTF-8: {e}")?;
                stats.skipped += 1;
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match prepare(text) {
            Ok(event) => {
                serde_json::to_writer(&mut *out, &build(text, &event))?;
                out.write_all(b"\n")?;
                stats.written += 1;
            }
            Err(e) => {
                writeln!(err, "{source}:{line_no}: skipped: {e}")?;
                stats.skipped += 1;
            }
        }
    }
}

/// The `normalize` subcommand: reads raw events, one JSON document per line, from `files` (stdin when empty),
/// writes one normalized document per line to stdout in order; a bad line gets a clear message on stderr naming
/// the file and line number and is skipped; exit code 0 when every line was good, 1 when some were skipped,
/// 2 when a file could not be opened (the others are still processed). Blank lines are ignored.
///
/// `-` among `files` also means stdin. A read error in the middle of a file
/// counts like a file that could not be opened (exit code 2). When stdout is
/// closed early (`| head`), processing stops quietly.
pub fn run_cli(files: &[PathBuf]) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let mut any_skipped = false;
    let mut any_failed = false;

    let stdin_only = [PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    for path in files {
        let result = if path == Path::new("-") {
            normalize_stream(io::stdin().lock(), "<stdin>", &mut out, &mut err)
        } else {
            match File::open(path) {
                Ok(file) => normalize_stream(
                    BufReader::with_capacity(64 * 1024, file),
                    &path.display().to_string(),
                    &mut out,
                    &mut err,
                ),
                Err(e) => {
                    // Best effort: if stderr itself is gone there is no one to tell.
                    let _ = writeln!(err, "{}: cannot open: {e}", path.display());
                    any_failed = true;
                    continue;
                }
            }
        };
        match result {
            Ok(stats) => any_skipped |= stats.skipped > 0,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                return exit_code(any_failed, any_skipped)
            }
            Err(e) => {
                let _ = writeln!(err, "{}: stopped: {e}", path.display());
                any_failed = true;
            }
        }
    }
    if let Err(e) = out.flush() {
        if e.kind() != io::ErrorKind::BrokenPipe {
            let _ = writeln!(err, "cannot write to stdout: {e}");
            any_failed = true;
        }
    }
    exit_code(any_failed, any_skipped)
}

fn exit_code(any_failed: bool, any_skipped: bool) -> ExitCode {
    if any_failed {
        ExitCode::from(2)
    } else if any_skipped {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

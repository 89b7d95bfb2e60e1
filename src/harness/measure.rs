//! What the benches share: how they start the agent (with a clean environment), what they read about a
//! process and how they print it (`/proc` fields: memory, threads, open files, CPU time; the load
//! average; min / median / max lines). Linux only, like the benches; a field that cannot be read is 0, so
//! that a bench prints instead of failing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::{AgentProcess, Binary};

/// Prints `what: min / median / max` of `values` (nothing when there are none).
pub fn summary(what: &str, values: impl Iterator<Item = f64>) {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return;
    }
    values.sort_by(f64::total_cmp);
    let median = if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    println!(
        "  {what}: {} / {} / {}",
        round(values[0]),
        round(median),
        round(values[values.len() - 1])
    );
}

fn round(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` in kB; `Threads:`); 0 when unreadable.
pub fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The process's open file descriptors (sockets included).
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// utime + stime of this process, in seconds.
pub fn self_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/self/stat")
}

/// The minor page faults of a process so far (pages the kernel had to map and zero for it: each fresh
/// `mmap`ed buffer costs one per 4 KiB it touches); 0 when unreadable.
pub fn minor_faults(pid: u32) -> u64 {
    // minflt is field 10 of the whole line, 8 after the name.
    stat_fields(&format!("/proc/{pid}/stat"), 7..8)
}

fn stat_cpu_seconds(path: &str) -> f64 {
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    stat_fields(path, 11..13) as f64 / clock_ticks()
}

/// The sum of the numeric fields `range` of a `/proc/.../stat` line, counted after the command name.
fn stat_fields(path: &str, range: std::ops::Range<usize>) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let Some(rest) = text.rfind(')').map(|at| &text[at + 1..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields
        .get(range)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` says them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A port on 127.0.0.1 that was free a moment ago (for the agent's local endpoint).
pub fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// The variables of the bench's own environment that pass on to the agent: glibc's allocator settings
/// (`GLIBC_TUNABLES`, `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`...), for experiments (the binary sets
/// its own unless given some: `jcdi_forwarder::allocator`). Nothing else does: by default the agent runs
/// with a clean environment, as a user would start it.
pub fn allocator_environment() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(name, _)| name == "GLIBC_TUNABLES" || name.starts_with("MALLOC_"))
        .collect()
}

/// Starts `binary` as the agent with `config`, its log in `dir`, with `env` only (see
/// [`allocator_environment`]).
pub fn spawn_agent(
    binary: &Path,
    env: &[(String, String)],
    config: &Path,
    dir: &Path,
) -> AgentProcess {
    let mut command = Binary::new(binary)
        .agent(config, &dir.join("agent.log"))
        .log_level("warn");
    for (name, value) in env {
        command = command.env(name, value);
    }
    command.spawn().unwrap_or_else(|err| {
        panic!("{err:#} (build it with `cargo build --release`, or pass --binary)")
    })
}

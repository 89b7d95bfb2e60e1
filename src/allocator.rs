//! The memory allocator's settings are the program's choice, not its service manager's: run by systemd,
//! by hand or in a container, the agent holds the same memory.
//!
//! With glibc's defaults, large transient buffers (pages being read, batch bodies, sled's log buffers) are
//! served from the heap arenas, which keep what they freed, and a host with more cores gets more arenas.
//! Two arenas and an mmap threshold of 256 KiB hold the agent near 30 MB while it catches up, against
//! about 39 MB with glibc's defaults, for 5–10 % more CPU (BENCHMARKS.md, "sled's cache bounded"; before
//! sled's cache was bounded, 60 against 90–100 MB with a backlog, "Memory"). glibc reads those settings only
//! from `GLIBC_TUNABLES` when a process starts, and setting them from inside (`mallopt`) takes `unsafe`
//! FFI, which this project does not write: so the binary starts itself again, once, with them set.
//!
//! Invariants:
//! - At most one re-execution: the second image finds its marker and goes on.
//! - An operator's own `glibc.malloc.*` tunables win: they are left as they are.
//! - Nothing is lost if the re-execution fails (no `/proc`, a seccomp filter): the agent goes on with
//!   glibc's defaults. Other C libraries (a static musl build) are left alone.
//! - The process keeps its PID, name, arguments and environment (plus the two variables).
//! - What the first image does before starting again (the caller's `before_restart`: for `run`, the
//!   queue's log replayed, four times faster with glibc's defaults) is only ever a head start: the second
//!   image needs none of it and does it again if it was not done.

/// What the agent sets: two arenas, and buffers of 256 KiB or more from `mmap` (returned at `free`).
pub const TUNABLES: &str = "glibc.malloc.mmap_threshold=262144:glibc.malloc.arena_max=2";
/// Set in the environment of the re-executed image.
const MARKER: &str = "JCDI_FORWARDER_ALLOCATOR_SETTLED";

/// Starts the program again with [`TUNABLES`] when glibc runs it without them; returns when it does not
/// (already settled, the operator chose, not glibc, or the re-execution failed). `before_restart` runs
/// first, only when the program is about to start again: work that is cheaper with glibc's defaults
/// (the queue's log replayed, `Queue::replay_log`).
pub fn settle(before_restart: impl FnOnce()) {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || std::env::var_os(MARKER).is_some() {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.") {
        return;
    }
    let tunables = if current.is_empty() {
        TUNABLES.to_string()
    } else {
        format!("{current}:{TUNABLES}")
    };
    before_restart();
    reexec(&tunables);
}

#[cfg(unix)]
fn reexec(tunables: &str) {
    use std::os::unix::process::CommandExt;
    let mut args: Vec<_> = std::env::args_os().collect();
    if args.is_empty() {
        return;
    }
    let argv0 = args.remove(0);
    // The file is started by its path rather than as `/proc/self/exe`: the kernel names a process after
    // the file it runs, and `ps`, `top`, `pgrep jcdi-forwarder` or `killall` would see "exe". The link is
    // the fallback, for a file no longer at its path (replaced by an upgrade: the path then names another
    // file, and the kernel's link says "(deleted)").
    let by_path = std::env::current_exe().ok().filter(|path| path.is_file());
    for program in by_path.into_iter().chain(Some("/proc/self/exe".into())) {
        // exec only returns on failure.
        let _failed = std::process::Command::new(program)
            .arg0(&argv0)
            .args(&args)
            .env("GLIBC_TUNABLES", tunables)
            .env(MARKER, "1")
            .exec();
    }
}

#[cfg(not(unix))]
fn reexec(_tunables: &str) {}

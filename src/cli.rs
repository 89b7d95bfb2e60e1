//! The command line: `run`, `validate`, `demo`, `normalize`, `status`, `dead-letter`, `backfill`, `ship`. Parses arguments, sets up logging on stderr,
//! and turns outcomes into exit codes (0 success, 1 failure, 2 usage; `ship`: 3 when bundles were refused).
//!
//! Invariant: no secret reaches a log line, an error message or `--help` (secrets live only in the
//! configuration file or the environment, never in arguments). Every command that writes the queue (or
//! exports from it) runs under a private umask ([`crate::privacy`]).
//!
//! The man pages and shell completions are generated from this definition by the hidden
//! `jcdi-forwarder generate` ([`generate`]), so they list exactly what `--help` lists.

mod generate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::QueueDamaged;
use crate::config::{check_data_dir, is_ship_form, Config, ShipConfig};
use crate::event::DEFAULT_STREAM;
use crate::metrics::Metrics;
use crate::ops::DeadLetterAction;
use crate::queue::Queue;

const DEFAULT_CONFIG: &str = "/etc/jcdi-forwarder/config.toml";

#[derive(Parser, Debug)]
#[command(
    name = "jcdi-forwarder",
    version,
    about = "Collects JumpCloud Directory Insights events into a durable local queue and forwards them to the Sekoia.io intake, losing none.",
    after_help = "Start with `jcdi-forwarder demo`: it runs the whole pipeline against built-in stand-ins of both services, no credentials needed."
)]
pub struct Cli {
    /// Log level or filter (for example info, debug, jcdi_forwarder=debug); RUST_LOG is used when unset.
    #[arg(long, global = true, env = "JCDI_FORWARDER_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "JCDI_FORWARDER_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent in the foreground until SIGTERM or Ctrl-C (logs on stderr).
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "JCDI_FORWARDER_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration offline and list every problem found (exit 0 when valid, 1 otherwise). Knows
    /// the agent's files and those of `ship` (a [sekoia] without [jumpcloud]).
    Validate {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "JCDI_FORWARDER_CONFIG")]
        config: PathBuf,
    },
    /// Run the real pipeline against built-in stand-ins of JumpCloud and Sekoia.io on 127.0.0.1, in a
    /// temporary folder, and prove that every event arrived.
    Demo {
        /// How many events the JumpCloud stand-in holds.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Seconds the intake stand-in is down in the middle of the run.
        #[arg(long, default_value_t = 3)]
        outage_seconds: u64,
    },
    /// Normalize raw events (one JSON document per line, from FILEs or stdin) to the ECS documents
    /// Sekoia.io's "Jumpcloud Directory Insights" format produces, one per line on stdout.
    Normalize {
        /// Files of raw events; stdin when none (or `-`).
        files: Vec<PathBuf>,
    },
    /// Show per stream the cursor and lag, the last successful poll and send, the queue, the dead letters
    /// and the last errors. Asks the running agent, else reads the queue on disk.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "JCDI_FORWARDER_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List, export, retry or purge the events the intake will never accept (kept on disk).
    DeadLetter {
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "JCDI_FORWARDER_CONFIG", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Re-collect a past window into the queue (deduplicated), e.g. after a misconfiguration. Runs in the
    /// agent when it is running, else here (the agent forwards the events when it starts).
    Backfill {
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "JCDI_FORWARDER_CONFIG")]
        config: PathBuf,
        /// Start of the window: an RFC 3339 time (2026-11-20T00:00:00Z) or a duration ago (48h).
        #[arg(long)]
        from: String,
        /// End of the window (same forms); now when omitted.
        #[arg(long)]
        to: Option<String>,
        /// The stream to backfill; needed when there are several `[[streams]]`.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Send every bundle of an outbox folder (sealed by an agent with [outbox]) to the intake of its stream,
    /// from a host that reaches Sekoia.io. Shipped bundles go to DIR/shipped/, refused ones to
    /// DIR/rejected/ (exit status 3). Interrupted, it resumes where it stopped.
    Ship {
        /// The configuration of ship: [sekoia], [sekoia.<stream>], [outbox] hmac_key.
        #[arg(
            long,
            short,
            default_value = "/etc/jcdi-forwarder/ship.toml",
            env = "JCDI_FORWARDER_SHIP_CONFIG"
        )]
        config: PathBuf,
        /// The folder of bundles.
        dir: PathBuf,
        /// Delete each bundle once shipped, instead of moving it to DIR/shipped/.
        #[arg(long)]
        delete: bool,
        /// Keep shipping bundles as they appear, until SIGTERM or Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// With --watch: how often the folder is looked at.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    crate::allocator::settle(replay_queue_log);
    // `generate` (man pages, completions) is not a subcommand of Cli, so that no page or completion
    // offers it (clap_complete completes hidden subcommands too).
    if let Some(code) = generate::main_if_asked() {
        return code;
    }
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref(), cli.log_format);
    // A panic (sled panics on some damage it finds: the queue is then rebuilt) is one log line in the
    // agent's format, not the default hook's text on stderr.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%location, "internal error (a panic): {payload}");
    }));
    // Before anything is created: the queue, its checkpoint, recovered copies and dead-letter exports hold
    // personal data. (`normalize` writes only to stdout.)
    if !matches!(cli.command, Command::Normalize { .. }) {
        crate::privacy::restrict_umask();
    }
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config } => run(&config),
        Command::Demo {
            events,
            outage_seconds,
        } => with_runtime(|| crate::demo::run(events, outage_seconds)),
        Command::Normalize { files } => crate::normalize::run_cli(&files),
        Command::Status { config, json } => {
            with_config(Config::load_without_secrets(&config), |c| {
                with_runtime(|| crate::ops::status(c, json))
            })
        }
        Command::DeadLetter { config, action } => {
            with_config(Config::load_without_secrets(&config), |c| {
                with_runtime(|| crate::ops::dead_letter(c, action))
            })
        }
        Command::Backfill {
            config,
            from,
            to,
            stream,
        } => with_config(Config::load(&config), |c| {
            with_runtime(|| crate::ops::backfill(c, stream, from, to))
        }),
        Command::Ship {
            config,
            dir,
            delete,
            watch,
            interval,
        } => ship(
            &config,
            crate::outbox::ship::ShipOptions {
                dir,
                delete,
                watch,
                interval,
            },
        ),
    }
}

fn init_logging(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn validate(path: &std::path::Path) -> ExitCode {
    if is_ship_form(path) {
        return validate_ship(path);
    }
    let mut problems = Vec::new();
    let loaded = match Config::load(path) {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            problems = errors.problems;
            None
        }
    };
    if let Some(loaded) = &loaded {
        for warning in &loaded.warnings {
            eprintln!("{}: warning: {warning}", path.display());
        }
        if let Some(warning) = crate::privacy::exposure(&loaded.config.data_dir) {
            eprintln!("{}: warning: {warning}", path.display());
        }
        if let Err(problem) = check_data_dir(&loaded.config.data_dir) {
            problems.push(problem);
        }
        if let Some(outbox) = &loaded.config.outbox {
            if let Err(problem) = crate::outbox::writer::check_dir(&outbox.dir) {
                problems.push(problem);
            }
        }
    }
    if !problems.is_empty() {
        let count = problems.len();
        eprintln!(
            "{}: {count} problem{} found:",
            path.display(),
            if count == 1 { "" } else { "s" }
        );
        for problem in problems {
            eprintln!("  - {problem}");
        }
        return ExitCode::from(1);
    }
    if let Some(loaded) = loaded {
        print!("{}", summary(path, &loaded.config));
    }
    ExitCode::SUCCESS
}

/// What `validate` prints for a valid configuration: every stream, then the queue.
fn summary(path: &std::path::Path, c: &Config) -> String {
    let queue = format!(
        "queue in {} (limit {})",
        c.data_dir.display(),
        bytesize::ByteSize(c.queue.max_bytes)
    );
    let sends = |stream: &crate::config::StreamConfig| match &c.outbox {
        Some(outbox) => format!("seals bundles into {}", outbox.dir.display()),
        None => format!("forwards to {}/batch", stream.sekoia.intake_url),
    };
    match c.streams.as_slice() {
        // The single-section form: one line, as it always was.
        [only] if only.name == DEFAULT_STREAM => format!(
            "{}: valid. Polls {} (services {}) every {:?}, {}, {queue}.\n",
            path.display(),
            only.jumpcloud.base_url,
            only.jumpcloud.services.join(","),
            only.jumpcloud.poll_interval,
            sends(only),
        ),
        streams => {
            let count = streams.len();
            let mut text = format!(
                "{}: valid. {count} stream{}, {queue}:\n",
                path.display(),
                if count == 1 { "" } else { "s" }
            );
            for stream in streams {
                let org = match &stream.jumpcloud.org_id {
                    Some(org) => format!("org {org}, "),
                    None => String::new(),
                };
                text.push_str(&format!(
                    "  - {}: polls {} ({org}services {}) every {:?}, {}\n",
                    stream.name,
                    stream.jumpcloud.base_url,
                    stream.jumpcloud.services.join(","),
                    stream.jumpcloud.poll_interval,
                    sends(stream),
                ));
            }
            text
        }
    }
}

/// `validate` of a configuration of `ship`.
fn validate_ship(path: &std::path::Path) -> ExitCode {
    match ShipConfig::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            print!("{}", ship_summary(path, &loaded.config));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(1)
        }
    }
}

/// What `validate` prints for a valid configuration of `ship`.
fn ship_summary(path: &std::path::Path, c: &ShipConfig) -> String {
    let mut text = format!("{}: valid configuration of `ship`:\n", path.display());
    let others = if c.streams.is_empty() {
        "every stream"
    } else {
        "every other stream"
    };
    for (stream, sekoia) in &c.streams {
        text.push_str(&format!(
            "  - bundles of stream {stream} go to {}/batch\n",
            sekoia.intake_url
        ));
    }
    if c.destination("").is_some() {
        text.push_str(&format!(
            "  - bundles of {others} go to {}/batch\n",
            c.sekoia.intake_url
        ));
    } else {
        text.push_str(&format!(
            "  - bundles of {others} are held (no intake_key in [sekoia])\n"
        ));
    }
    text.push_str(match c.hmac_key {
        Some(_) => "  - only bundles signed with [outbox] hmac_key are shipped\n",
        None => "  - signatures are not checked (no [outbox] hmac_key); signed bundles are held\n",
    });
    text
}

/// `ship`: exit 0 when every bundle was shipped, 3 when some were refused or held, 1 on failure or when
/// interrupted before the end (without --watch).
fn ship(path: &std::path::Path, options: crate::outbox::ship::ShipOptions) -> ExitCode {
    let config = match ShipConfig::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("{}: {warning}", path.display());
            }
            loaded.config
        }
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(1);
        }
    };
    let report = block_on(|| async move {
        let (trigger, shutdown) = crate::shutdown::channel();
        let stop = stop_requested();
        tokio::spawn(async move {
            stop.await;
            tracing::info!("stop requested: finishing the request in flight");
            trigger.trigger();
        });
        crate::outbox::ship::run(&config, &options, shutdown).await
    });
    match report {
        Err(code) => code,
        Ok(report) => {
            println!("{}", report.summary());
            if report.interrupted {
                eprintln!("interrupted: run ship again to send the rest (progress is kept)");
                ExitCode::from(1)
            } else if !report.refused.is_empty() || !report.held.is_empty() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// Runs `command` with a loaded configuration, or prints every problem.
fn with_config(
    loaded: Result<crate::config::Loaded, crate::config::ConfigErrors>,
    command: impl FnOnce(Config) -> ExitCode,
) -> ExitCode {
    match loaded {
        Ok(loaded) => command(loaded.config),
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(1)
        }
    }
}

/// Before the process starts itself again with its allocator settings ([`crate::allocator`]): for `run`,
/// the queue's log is replayed with glibc's defaults, four times faster (see [`Queue::replay_log`]).
/// Silent: logging is not set up yet, and whatever is wrong (the command line, the configuration, the
/// queue) is found and reported by the process that follows.
fn replay_queue_log() {
    let Ok(cli) = Cli::try_parse() else {
        return;
    };
    let Command::Run { config } = &cli.command else {
        return;
    };
    let Ok(loaded) = Config::load(config) else {
        return;
    };
    // Files sled creates (a snapshot) are the agent's, as after the restart.
    crate::privacy::restrict_umask();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    Queue::replay_log(&loaded.config.data_dir);
    std::panic::set_hook(hook);
}

fn run(path: &std::path::Path) -> ExitCode {
    let loaded = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(1);
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    if let Some(warning) = crate::privacy::exposure(&loaded.config.data_dir) {
        tracing::warn!("{}: {warning}", path.display());
    }
    let config = loaded.config;
    with_runtime(|| async move {
        let stop = stop_requested();
        let mut queue = crate::agent::open_queue(&config).await?;
        let (trigger, shutdown) = crate::shutdown::channel();
        tokio::spawn(async move {
            stop.await;
            tracing::info!("stop requested: stopping polling, finishing the request in flight, flushing the queue");
            trigger.trigger();
        });
        let metrics = Arc::new(Metrics::default());
        loop {
            match crate::agent::run(&config, queue, metrics.clone(), shutdown.clone()).await {
                // Damage found while running: set the database aside, rebuild the queue from the delivery
                // checkpoint and go on, in this same process (no restart loop for the service manager).
                // Rebuilt even when stopping: the next start might open the damaged database without
                // noticing, until it read the damaged part again.
                Err(err) => match err.downcast::<QueueDamaged>() {
                    Ok(QueueDamaged(reason)) => {
                        queue = crate::agent::recover_queue(&config, reason).await?;
                        if shutdown.is_triggered() {
                            return Ok(());
                        }
                    }
                    Err(err) => return Err(err),
                },
                Ok(()) => return Ok(()),
            }
        }
    })
}

/// Runs an async main on a multi-threaded runtime and maps its result to an exit code.
pub(crate) fn with_runtime<F, Fut>(main: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    match block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Runs an async main on a multi-threaded runtime; an error is printed and becomes exit code 1.
fn block_on<T, F, Fut>(main: F) -> Result<T, ExitCode>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    // Queue work runs on blocking threads; tokio allows 512 of them, and each thread that allocates gets
    // a glibc arena of its own that keeps its freed memory: a handful is plenty and keeps RSS down.
    // The async tasks (reading pages, writing batch bodies) get half the cores, at least one, instead of
    // tokio's one worker per core: the other half of the agent's work (compressing and storing events,
    // sled's writes) runs on those blocking threads and sled's own. On two cores, one worker instead of
    // two spared the wake-ups between them: 2-3 % less CPU and 1.5 MB less RSS catching up, at the same
    // pace (BENCHMARKS.md, "One async worker per two cores").
    let workers = std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return Err(ExitCode::from(1));
        }
    };
    runtime.block_on(main()).map_err(|err| {
        tracing::error!("{err:#}");
        eprintln!("error: {err:#}");
        ExitCode::from(1)
    })
}

/// SIGTERM (systemd) or SIGINT (Ctrl-C). The handlers are installed when this is called, not when the
/// future is first polled: a stop asked for while the agent opens its queue is then kept, not fatal.
fn stop_requested() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let interrupt = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt => {}
            }
            return;
        }
        let _ = interrupt.await;
    }
}

//! The man pages and shell completions, generated from the command-line definition ([`super::Cli`]) so that
//! they cannot drift from `--help`: `jcdi-forwarder generate man|completions --out DIR`, run by
//! packaging/build.sh (the packages install what it writes).
//!
//! Invariants:
//! - `generate` is parsed here, before and apart from [`super::Cli`]: neither `--help`, the pages nor the
//!   completions offer it (clap_complete would complete a hidden subcommand).
//! - jcdi-forwarder.1 lists every subcommand `--help` lists (the same iterator, hidden ones left out), and
//!   each of them but `help` has its own page, jcdi-forwarder-NAME.1 (nested ones too:
//!   jcdi-forwarder-dead-letter-list.1).
//! - The output depends only on the definition, the version and the date: `SOURCE_DATE_EPOCH`'s when set
//!   (packaging/build.sh sets it to the Debian changelog's), so that a rebuild gives the same bytes.
//! - The sections that are not about arguments (FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES) are written
//!   here, next to the definition, and name only what the packages install.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, ValueEnum};
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

use super::Cli;

const NAME: &str = "jcdi-forwarder";
const MANUAL: &str = "User Commands";

/// `jcdi-forwarder generate`: the packaging's command.
#[derive(Parser, Debug)]
#[command(
    name = "jcdi-forwarder generate",
    bin_name = "jcdi-forwarder generate",
    about = "Write the man pages or the shell completions generated from the command line (for packaging)"
)]
struct Generate {
    what: Generated,
    /// The folder to write into (created when missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Generated {
    /// jcdi-forwarder.1 and one page per subcommand (jcdi-forwarder-run.1, ...).
    Man,
    /// bash/jcdi-forwarder, zsh/_jcdi-forwarder and fish/jcdi-forwarder.fish.
    Completions,
}

/// When the first argument is `generate`, runs it and returns its exit code.
pub(super) fn main_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != "generate" {
        return None;
    }
    // "generate" stands where clap expects the program's name.
    let Generate { what, out } = Generate::parse_from(std::env::args_os().skip(1));
    let written = match what {
        Generated::Man => man_pages(&out),
        Generated::Completions => completions(&out),
    };
    Some(match written {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: cannot write into {}: {err}", out.display());
            ExitCode::from(1)
        }
    })
}

/// Writes jcdi-forwarder.1 and one page per subcommand into `out`; returns the files written.
pub fn man_pages(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();

    let mut main = Cli::command();
    main.build();
    let path = out.join(format!("{NAME}.1"));
    std::fs::write(&path, main_page(&main)?)?;
    written.push(path);

    // The subcommands' pages, as clap_mangen names them; `help` has none (its text is in every page).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut stack: Vec<clap::Command> = visible_subcommands(&cmd).cloned().collect();
    while let Some(sub) = stack.pop() {
        stack.extend(visible_subcommands(&sub).cloned());
        let man = Man::new(sub).manual(MANUAL).source(source()).date(date());
        let path = out.join(man.get_filename());
        let mut page = Vec::new();
        man.render(&mut page)?;
        std::fs::write(&path, page)?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}

/// Writes the bash, zsh and fish completions into `out/<shell>/`, named as each shell's completion folder
/// expects; returns the files written.
pub fn completions(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (shell, file) in [
        (Shell::Bash, NAME.to_string()),
        (Shell::Zsh, format!("_{NAME}")),
        (Shell::Fish, format!("{NAME}.fish")),
    ] {
        let dir = out.join(shell.to_string());
        std::fs::create_dir_all(&dir)?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), NAME, &mut script);
        let path = dir.join(file);
        std::fs::write(&path, script)?;
        written.push(path);
    }
    Ok(written)
}

/// The pages' footer: the package and its version (a subcommand has no version of its own).
fn source() -> String {
    format!("{NAME} {}", env!("CARGO_PKG_VERSION"))
}

/// The pages' date (YYYY-MM-DD): `SOURCE_DATE_EPOCH` when set and valid, else today. (Never empty:
/// clap_mangen would then shift the footer's fields.)
fn date() -> String {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|epoch| epoch.trim().parse::<i64>().ok())
        .and_then(|epoch| chrono::DateTime::from_timestamp(epoch, 0))
        .unwrap_or_else(chrono::Utc::now)
        .format("%Y-%m-%d")
        .to_string()
}

fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|sub| !sub.is_hide_set())
}

/// jcdi-forwarder.1: clap_mangen's sections for the arguments, a COMMANDS list, and the sections about the
/// installed files.
fn main_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .manual(MANUAL)
        .source(source())
        .date(date());
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut part = |render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        render(&mut buf).map(|()| parts.push(buf))
    };
    part(&|w| man.render_title(w))?;
    part(&|w| man.render_name_section(w))?;
    part(&|w| man.render_synopsis_section(w))?;
    part(&|w| description_section(cmd).to_writer(w))?;
    part(&|w| man.render_options_section(w))?;
    part(&|w| commands_section(cmd).to_writer(w))?;
    part(&|w| reference_sections(cmd).to_writer(w))?;
    part(&|w| man.render_version_section(w))?;

    // Each part starts with roff's preamble (a string definition): keep the first one only.
    let preamble = Roff::default().render().into_bytes();
    let mut page = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        let body = match part.strip_prefix(preamble.as_slice()) {
            Some(body) if i > 0 => body.to_vec(),
            _ => part,
        };
        page.extend(body);
    }
    Ok(page)
}

/// What the agent does and how it keeps events, then the `--help` closing line.
fn description_section(cmd: &clap::Command) -> Roff {
    let mut roff = Roff::default();
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([
        bold(NAME),
        roman(
            " polls the JumpCloud Directory Insights API, keeps the events in a durable queue under the \
             configured data_dir and forwards them in batches to the Sekoia.io HTTP intake. Events stay in \
             the queue until the intake has accepted them; the ones it will never accept are kept as dead \
             letters. A local endpoint (127.0.0.1:9464 by default) serves /metrics, /health and /status.",
        ),
    ]);
    if let Some(text) = cmd.get_after_help() {
        roff.control("PP", []);
        roff.text([roman(text.to_string())]);
    }
    roff
}

/// Every subcommand `--help` lists, with its one-line help and its own page.
fn commands_section(cmd: &clap::Command) -> Roff {
    let mut roff = Roff::default();
    roff.control("SH", ["COMMANDS"]);
    for sub in visible_subcommands(cmd) {
        let name = sub.get_name();
        roff.control("TP", []);
        roff.text([bold(format!("{NAME} {name}"))]);
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        roff.text([roman(format!("{about}."))]);
        if name != "help" {
            roff.control("br", []);
            roff.text([roman("See "), bold(format!("{NAME}-{name}")), roman("(1).")]);
        }
    }
    roff
}

/// FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES and SEE ALSO.
fn reference_sections(cmd: &clap::Command) -> Roff {
    let mut roff = Roff::default();
    let entry = |roff: &mut Roff, term: clap_mangen::roff::Inline, text: &str| {
        roff.control("TP", []);
        roff.text([term]);
        roff.text([roman(text)]);
    };

    roff.control("SH", ["FILES"]);
    for (path, text) in [
        (
            "/etc/jcdi-forwarder/config.toml",
            "The configuration (a commented example is installed); check it with \"jcdi-forwarder validate\".",
        ),
        (
            "/etc/jcdi-forwarder/jcdi-forwarder.env",
            "JUMPCLOUD_API_KEY and SEKOIA_INTAKE_KEY, read by the systemd unit (mode 0600).",
        ),
        (
            "/var/lib/jcdi-forwarder",
            "The queue (data_dir): events not yet accepted by the intake, the dead letters and the cursors. \
             It holds user names, e-mail and IP addresses: the agent creates it 0700 and its files 0600.",
        ),
        (
            "/usr/lib/systemd/system/jcdi-forwarder.service",
            "The systemd unit. Logs go to the journal: journalctl -u jcdi-forwarder.",
        ),
        (
            "/usr/share/jcdi-forwarder/prometheus/jcdi-forwarder.rules.yml",
            "Prometheus alert rules for the metrics served on /metrics.",
        ),
        (
            "/usr/share/jcdi-forwarder/grafana/jcdi-forwarder.json",
            "A Grafana dashboard of the same metrics.",
        ),
    ] {
        entry(&mut roff, italic(path), text);
    }

    roff.control("SH", ["ENVIRONMENT"]);
    // The options' variables come from the definition; the keys are referenced by the shipped config.
    let mut variables: Vec<(String, String)> = Vec::new();
    let mut args: Vec<&clap::Arg> = cmd.get_arguments().collect();
    args.extend(cmd.get_subcommands().flat_map(|sub| sub.get_arguments()));
    for arg in args {
        let (Some(var), Some(help)) = (arg.get_env(), arg.get_help()) else {
            continue;
        };
        let var = var.to_string_lossy().into_owned();
        if !variables.iter().any(|(known, _)| *known == var) {
            variables.push((var, help.to_string()));
        }
    }
    variables.push((
        "RUST_LOG".into(),
        "The log filter when --log-level is not given.".into(),
    ));
    variables.push((
        "JUMPCLOUD_API_KEY, SEKOIA_INTAKE_KEY".into(),
        "The keys, as the installed config.toml refers to them (${VAR}); never passed as arguments.".into(),
    ));
    for (var, help) in &variables {
        entry(&mut roff, bold(var.as_str()), help);
    }

    roff.control("SH", ["EXIT STATUS"]);
    for (code, text) in [
        ("0", "Success (for validate: the configuration is valid)."),
        ("1", "Failure: every problem is printed on standard error."),
        ("2", "Usage error (unknown option or subcommand)."),
    ] {
        entry(&mut roff, bold(code), text);
    }

    roff.control("SH", ["EXAMPLES"]);
    roff.text([roman(
        "Check the installed configuration with the service's environment, then start the service:",
    )]);
    roff.control("PP", []);
    roff.control("nf", []);
    roff.control("RS", []);
    for line in [
        "set -a; . /etc/jcdi-forwarder/jcdi-forwarder.env; set +a",
        "jcdi-forwarder validate --config /etc/jcdi-forwarder/config.toml",
        "systemctl enable --now jcdi-forwarder",
        "sudo -u jcdi-forwarder jcdi-forwarder status",
    ] {
        roff.text([roman(line)]);
    }
    roff.control("RE", []);
    roff.control("fi", []);

    roff.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for sub in visible_subcommands(cmd).filter(|sub| sub.get_name() != "help") {
        refs.push(bold(format!("{NAME}-{}", sub.get_name())));
        refs.push(roman("(1), "));
    }
    for page in ["systemctl", "journalctl"] {
        refs.push(bold(page));
        refs.push(roman("(1), "));
    }
    refs.push(italic("/usr/share/doc/jcdi-forwarder/README.md"));
    roff.text(refs);
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_text(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect("page written")
    }

    #[test]
    fn the_main_page_lists_every_visible_subcommand_and_each_has_a_page() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = man_pages(dir.path()).expect("written");
        let main = page_text(dir.path(), "jcdi-forwarder.1");
        let mut cmd = Cli::command();
        cmd.build();
        for sub in visible_subcommands(&cmd) {
            let name = sub.get_name();
            let escaped = name.replace('-', "\\-");
            assert!(
                main.contains(&format!("jcdi\\-forwarder {escaped}")),
                "{name} not in COMMANDS:\n{main}"
            );
            if name != "help" {
                assert!(
                    written.contains(&dir.path().join(format!("jcdi-forwarder-{name}.1"))),
                    "no page for {name}: {written:?}"
                );
            }
        }
        assert!(
            !main.contains("generate"),
            "the hidden command leaked:\n{main}"
        );
        assert!(written.contains(&dir.path().join("jcdi-forwarder-dead-letter-list.1")));
        assert_eq!(
            main.matches(".ie \\n(.g").count(),
            1,
            "one roff preamble:\n{main}"
        );
        for section in [
            "COMMANDS",
            "FILES",
            "ENVIRONMENT",
            "EXIT STATUS",
            "EXAMPLES",
        ] {
            assert!(
                main.contains(&format!(".SH \"{section}\""))
                    || main.contains(&format!(".SH {section}")),
                "{section}:\n{main}"
            );
        }
        assert!(main.contains("JCDI_FORWARDER_CONFIG"), "{main}");
    }

    #[test]
    fn completions_cover_the_subcommands_but_not_the_hidden_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = completions(dir.path()).expect("written");
        assert_eq!(written.len(), 3);
        for file in written {
            let script = std::fs::read_to_string(&file).expect("readable");
            for name in ["backfill", "dead-letter", "status", "validate"] {
                assert!(
                    script.contains(name),
                    "{name} missing from {}",
                    file.display()
                );
            }
            assert!(
                !script.contains("generate"),
                "{} completes the hidden command",
                file.display()
            );
        }
    }
}

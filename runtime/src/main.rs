//! `strata-runtime`: a runc-compatible subset over [`strata_runtime::Runtime`].
//!
//! One process per command, single-threaded, as libcontainer's forking requires.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use strata_runtime::{CreateOptions, ExecOptions, ExecOutcome, Runtime};

#[derive(Parser)]
#[command(
    name = "strata-runtime",
    version,
    about = "OCI container runtime (runc-compatible subset)"
)]
struct Cli {
    /// Directory holding container state.
    #[arg(long, global = true, default_value = "/run/strata-runtime")]
    root: PathBuf,
    /// Runtime log file (accepted for runc compatibility; logs go to stderr when absent).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Runtime log format (accepted for runc compatibility; always text).
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container from a bundle; its process waits for `start`.
    Create {
        /// Bundle directory holding config.json.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the init process id to this file.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Append the container's stdout and stderr to this file (strata extension).
        #[arg(long = "output")]
        output: Option<PathBuf>,
        id: String,
    },
    /// Start the user process of a created container.
    Start { id: String },
    /// Create, start, wait for the process and delete; exits with its status.
    Run {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Append the container's stdout and stderr to this file (strata extension).
        #[arg(long = "output")]
        output: Option<PathBuf>,
        id: String,
    },
    /// Run a further process in a running container; exits with its status.
    ///
    /// `exec [OPTIONS] ID CMD [ARGS...]` or `exec --process process.json ID`.
    Exec {
        /// A runtime-spec process JSON describing the whole process.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Set an environment variable (KEY=VALUE); repeatable.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// UID[:GID] to run as (numeric); the container's user by default.
        #[arg(short, long)]
        user: Option<String>,
        /// Additional group id; repeatable.
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// Allocate a terminal: not supported, refused.
        #[arg(short, long)]
        tty: bool,
        /// Start the process and return without waiting.
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Kill the process after this many seconds (strata extension).
        #[arg(long)]
        timeout: Option<u64>,
        /// Write how the process ended as JSON here (strata extension, for `Helper`).
        #[arg(long = "status-file", hide = true)]
        status_file: Option<PathBuf>,
        id: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print the OCI state of a container as JSON.
    State { id: String },
    /// Send a signal (TERM, KILL, SIGUSR1, 9, ...) to the container's init process.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
        /// Signal every process in the container, not only init.
        #[arg(short, long)]
        all: bool,
    },
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Delete a stopped or created container and everything made for it.
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    if let Err(e) = strata_runtime::failpoint::init_from_env() {
        eprintln!("strata-runtime: {e}");
        return ExitCode::from(1);
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("strata-runtime: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    // A plain level unless STRATA_RUNTIME_LOG asks for directives: building an
    // EnvFilter costs more than the rest of a `start`.
    if let Ok(directives) = std::env::var("STRATA_RUNTIME_LOG") {
        let filter = tracing_subscriber::EnvFilter::new(directives);
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        b.init();
        return;
    }
    // Our own warnings show (the runtime spec asks for a logged warning when a
    // capability cannot be granted); libcontainer's do not unless --debug: its
    // container init logs through the same subscriber into the container's stderr.
    let filter = if cli.debug {
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::DEBUG)
    } else {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::ERROR)
            .with_target("strata_runtime", tracing::Level::WARN)
    };
    let file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    // Only the text format is implemented; `--log-format json` is accepted so that
    // callers written for runc work, and logs stay text.
    let layer = match file {
        Some(f) => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(BoxMakeWriter::new(std::sync::Mutex::new(f))),
        None => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(BoxMakeWriter::new(std::io::stderr)),
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
}

fn run(cli: Cli) -> Result<u8> {
    let rt = Runtime::new(&cli.root).with_context(|| format!("opening root {:?}", cli.root))?;
    match cli.cmd {
        Command::Create {
            bundle,
            pid_file,
            output,
            id,
        } => {
            let opts = CreateOptions {
                pid_file,
                log_file: output,
            };
            rt.create(&id, &bundle, &opts)
                .with_context(|| format!("creating container {id}"))?;
        }
        Command::Start { id } => rt
            .start(&id)
            .with_context(|| format!("starting container {id}"))?,
        Command::Run {
            bundle,
            pid_file,
            output,
            id,
        } => {
            let opts = CreateOptions {
                pid_file,
                log_file: output,
            };
            let code = rt
                .run(&id, &bundle, &opts)
                .with_context(|| format!("running container {id}"))?;
            return Ok(u8::try_from(code).unwrap_or(255));
        }
        Command::Exec {
            process,
            env,
            cwd,
            user,
            additional_gids,
            tty,
            detach,
            pid_file,
            timeout,
            status_file,
            id,
            command,
        } => {
            let user = user.as_deref().map(parse_user).transpose()?;
            let opts = ExecOptions {
                process,
                args: command,
                env,
                cwd,
                user,
                additional_gids,
                tty,
                detach,
                pid_file,
                timeout: timeout.map(std::time::Duration::from_secs),
            };
            let outcome = rt
                .exec(&id, &opts)
                .with_context(|| format!("exec in container {id}"))?;
            if let Some(path) = status_file {
                std::fs::write(&path, serde_json::to_vec(&outcome)?)
                    .with_context(|| format!("writing {path:?}"))?;
            }
            return Ok(match outcome {
                ExecOutcome::Exited(code) => u8::try_from(code).unwrap_or(255),
                ExecOutcome::Detached(_) => 0,
                ExecOutcome::TimedOut => {
                    eprintln!("strata-runtime: exec in container {id} timed out, killed");
                    137
                }
            });
        }
        Command::State { id } => {
            let s = rt
                .state(&id)
                .with_context(|| format!("state of container {id}"))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Command::Kill { id, signal, all } => rt
            .kill(&id, &signal, all)
            .with_context(|| format!("killing container {id}"))?,
        Command::Pause { id } => rt
            .pause(&id)
            .with_context(|| format!("pausing container {id}"))?,
        Command::Resume { id } => rt
            .resume(&id)
            .with_context(|| format!("resuming container {id}"))?,
        Command::Delete { force, id } => rt
            .delete(&id, force)
            .with_context(|| format!("deleting container {id}"))?,
        Command::List { quiet, format } => {
            let all = rt.list()?;
            if quiet {
                for s in &all {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                println!(
                    "{:<24} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for s in &all {
                    println!(
                        "{:<24} {:<8} {:<10} {:<40} {}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(0)
}

/// `UID[:GID]`, numeric as runc takes it.
fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let num = |v: &str| {
        v.parse::<u32>()
            .with_context(|| format!("--user {s:?}: {v:?} is not a numeric id"))
    };
    Ok((num(uid)?, gid.map(num).transpose()?))
}

//! volctl: kubectl-like CLI over the embedded store, plus node inspection.
//!
//! One module per verb (`apply`, `get`, `describe`, `delete`, `up`/`down`, `logs`, `exec`); `table` renders kubectl's
//! columns and `resource` resolves names like "pvc". The store does all the deciding:
//! validation, defaulting and admission happen there, so volctl and the control loops
//! see the same rules.

#![forbid(unsafe_code)]

mod apply;
mod cluster;
mod container_ref;
mod delete;
mod describe;
mod doctor;
mod exec;
mod get;
mod image;
mod in_flight;
mod logs;
mod node_inspect;
mod resource;
mod table;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_store::EmbeddedStore;

/// kubectl-like access to the Strata store.
#[derive(Debug, Parser)]
#[command(name = "volctl", version, about, propagate_version = true)]
pub struct Cli {
    /// State directory holding the store (store.db); accepted before or after the verb.
    #[arg(
        long,
        global = true,
        env = "STRATA_STATE_DIR",
        default_value = "/var/lib/strata"
    )]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Apply(apply::Args),
    Get(get::Args),
    Describe(describe::Args),
    Delete(delete::Args),
    Up(up::UpArgs),
    Down(up::DownArgs),
    Image(image::Args),
    Logs(logs::Args),
    Exec(exec::Args),
    /// List the volumes of the node's pools: database rows and the pools' own metadata
    /// records, with their data, loop devices, staging and publish mounts and condition;
    /// with --kubeconfig or --in-cluster also the PV, claim and pods of each, the volumes
    /// no PV names and the PVs of this node whose volume is missing.
    Volumes(node_inspect::VolumesArgs),
    /// List the snapshots of the node's pools.
    Snapshots(node_inspect::ListArgs),
    Pools(node_inspect::PoolsArgs),
    Doctor(doctor::Args),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        match self.command {
            Command::Up(args) => return up::up(&self.state_dir, args).await,
            Command::Down(args) => return up::down(&self.state_dir, args).await,
            Command::Image(args) => return image::run(&self.state_dir, args).await,
            Command::Volumes(args) => return node_inspect::volumes(&self.state_dir, args).await,
            Command::Snapshots(args) => return node_inspect::snapshots(&self.state_dir, args),
            Command::Pools(args) => return node_inspect::pools(&self.state_dir, args),
            Command::Doctor(args) => return doctor::run(&self.state_dir, args).await,
            _ => {}
        }
        // Only apply may start a new store: reading from a mistyped --state-dir must say so
        // rather than show an empty cluster.
        let db = self.state_dir.join("store.db");
        if !matches!(self.command, Command::Apply(_)) && !db.exists() {
            anyhow::bail!(
                "no store in {} ({} does not exist); check --state-dir or STRATA_STATE_DIR",
                self.state_dir.display(),
                db.display()
            );
        }
        let options = strata_store::StoreOptions {
            component: "volctl".into(),
            ..Default::default()
        };
        let store = EmbeddedStore::open_with(&self.state_dir, options)
            .with_context(|| format!("opening the store in {}", self.state_dir.display()))?;
        match self.command {
            Command::Apply(args) => apply::run(&store, args).await,
            Command::Get(args) => get::run(&store, args).await,
            Command::Describe(args) => describe::run(&store, args).await,
            Command::Delete(args) => delete::run(&store, args).await,
            Command::Logs(args) => logs::run(&store, &self.state_dir, args).await,
            Command::Exec(args) => exec::run(&store, &self.state_dir, args).await,
            Command::Up(_)
            | Command::Down(_)
            | Command::Image(_)
            | Command::Volumes(_)
            | Command::Snapshots(_)
            | Command::Pools(_)
            | Command::Doctor(_) => {
                unreachable!("handled above")
            }
        }
    }
}

/// Entry point of the binary: errors go to stderr as one line with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        // `volctl get pv | head -1`: a closed pipe ends the output, it is no failure.
        Err(err)
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        // `volctl exec`: the command's own status, already explained by its output.
        Err(err) if err.downcast_ref::<exec::ExitWith>().is_some() => {
            ExitCode::from(err.downcast_ref::<exec::ExitWith>().map_or(1, |e| e.0))
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<node_inspect::BadInput>().is_some() {
                // Usage errors exit as clap's do.
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

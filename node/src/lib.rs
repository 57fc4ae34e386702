//! The node agent `strata-node`: runs the volume manager and the pod runner for the pods
//! the store places on this node (`spec.nodeName`).
//!
//! Knows flags, the store, the volume manager (`strata-volumes`) and the pod runner
//! ([`runner`]), which drives containers through `strata-runtime`.

#![deny(unsafe_code)]

pub mod layout;
pub mod runner;
#[allow(unsafe_code)] // registering a pidfd with tokio; ioctls bringing lo up
mod sys;

use std::path::PathBuf;

use strata_store::EmbeddedStore;
use strata_volumes::manager::{Config, VolumeManager};

/// The kubelet of one node: prepares every volume of the pods placed on NODE under
/// STATE-DIR/pods/<uid>/volumes (keeping Secret and ConfigMap volumes current, refreshing
/// service account tokens), runs their containers from the image store in
/// STATE-DIR/images with restarts and back-off, writes pod status back, and stops
/// containers and tears volumes down when pods are deleted. Containers keep running
/// across a restart of strata-node, which adopts them.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "strata-node", version)]
pub struct Args {
    /// State directory: the embedded store (store.db), the node's token key and the pod
    /// volume directories.
    #[arg(long, env = "STRATA_STATE_DIR", default_value = "/var/lib/strata")]
    pub state_dir: PathBuf,

    /// This node's name: pods with this spec.nodeName are served.
    #[arg(long)]
    pub node_id: String,

    /// The CSI driver's endpoint, unix:///PATH; without it PVC volumes fail to mount.
    #[arg(long)]
    pub csi_endpoint: Option<String>,

    /// `iss` of the service account tokens this node signs.
    #[arg(long, default_value = strata_volumes::token::DEFAULT_ISSUER)]
    pub issuer: String,

    /// On SIGTERM, stop every container and tear down every pod's volumes (unpublish,
    /// unstage, unmount) before exiting; the whole shutdown (work in flight, containers,
    /// volumes) takes at most about this many seconds. The pods stay in the store and are
    /// set up again at the next start. `volctl down` uses it so nothing stays mounted.
    #[arg(long, value_name = "SECONDS")]
    pub release_on_exit: Option<u64>,

    /// The `strata-runtime` binary that runs containers; default: next to this
    /// executable, else found on PATH.
    #[arg(long)]
    pub runtime_binary: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --{flag}: {reason}")]
    InvalidFlag { flag: &'static str, reason: String },
    #[error("opening the store")]
    Store(#[source] strata_store::Error),
    #[error("volume manager")]
    Volumes(#[source] strata_volumes::Error),
    #[error("releasing pod volumes on exit (still failing after {secs}s)")]
    Release {
        secs: u64,
        #[source]
        source: strata_volumes::Error,
    },
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("opening the image store and runtime root: {0}")]
    Engine(String),
    #[error("pod runner")]
    Runner(#[source] runner::Error),
}

/// `--runtime-binary`, else `strata-runtime` beside our own executable, else PATH's.
fn runtime_binary(arg: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = arg {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("strata-runtime")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("strata-runtime"))
}

impl Args {
    fn check(&self) -> Result<(), Error> {
        let id = &self.node_id;
        let ok = !id.is_empty()
            && id.len() <= 253
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && id.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(Error::InvalidFlag {
                flag: "node-id",
                reason: format!("{id:?} is not a DNS subdomain name"),
            });
        }
        if let Some(ep) = &self.csi_endpoint
            && !ep
                .strip_prefix("unix://")
                .is_some_and(|p| p.starts_with('/'))
        {
            return Err(Error::InvalidFlag {
                flag: "csi-endpoint",
                reason: format!("{ep:?} is not unix:///ABSOLUTE/PATH"),
            });
        }
        if !self.state_dir.is_absolute() {
            return Err(Error::InvalidFlag {
                flag: "state-dir",
                reason: "must be an absolute path".into(),
            });
        }
        Ok(())
    }
}

/// Opens the store and runs the volume manager and the pod runner until `shutdown`
/// resolves; both drain their tasks before this returns.
pub async fn run(args: Args, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    args.check()?;
    let options = strata_store::StoreOptions::controller("strata-node");
    let store = EmbeddedStore::open_with(&args.state_dir, options).map_err(Error::Store)?;
    let manager = VolumeManager::new(
        store.clone(),
        Config {
            state_dir: args.state_dir.clone(),
            node_name: args.node_id.clone(),
            csi_endpoint: args.csi_endpoint.clone(),
            issuer: args.issuer.clone(),
            clock: std::time::SystemTime::now,
        },
    )
    .map_err(Error::Volumes)?;
    // Volumes are set up only for pods the runner has placed and admitted (a pod naming
    // this node that does not fit it is rejected before any volume is mounted).
    manager.require_admission();
    let budget = args.release_on_exit.map(ShutdownBudget::new);
    if let Some(b) = &budget {
        manager.set_drain_timeout(b.drain);
    }
    // The Node object pods are placed against (labels, taints); a user may edit it.
    if let Err(e) = runner::placement::register(&store, &args.node_id).await {
        tracing::warn!(node = %args.node_id, error = %e, "registering the Node object");
    }
    let engine = runner::Engine::new(
        &args.state_dir,
        &runtime_binary(args.runtime_binary.as_ref()),
    )
    .map_err(Error::Engine)?;
    let runner = runner::Runner::new(store, manager.clone(), engine, args.node_id.clone());
    tracing::info!(node = %args.node_id, state_dir = %args.state_dir.display(), "volume manager starting");
    tracing::info!("pod runner starting");
    // One stop for both halves: a signal, or either of them ending (with an error).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let volumes = async {
        let r = manager.run(stopped(stop_rx.clone())).await;
        let _ = stop_tx.send(true);
        r
    };
    let pods = async {
        let r = runner.run(stopped(stop_rx.clone())).await;
        let _ = stop_tx.send(true);
        r
    };
    let signal = async {
        tokio::select! {
            _ = shutdown => {}
            _ = stopped(stop_rx.clone()) => {}
        }
        let _ = stop_tx.send(true);
        tokio::time::Instant::now()
    };
    // Bursts (pods starting, the volume manager's resync of every pod each minute) free
    // most of what they allocate; hand it back soon after. A trim costs a few ms.
    let trim = async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let _ = tokio::task::spawn_blocking(sys::release_free_heap).await;
                }
                _ = stopped(stop_rx.clone()) => break,
            }
        }
    };
    let (v, p, stopping, ()) = tokio::join!(volumes, pods, signal, trim);
    v.map_err(Error::Volumes)?;
    p.map_err(Error::Runner)?;
    if let Some(b) = budget {
        let deadline = stopping + b.total;
        // Containers first: their rootfs holds bind mounts of the volumes.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        runner.stop_all(b.stop_grace(left)).await;
        release(&manager, b.total.as_secs(), deadline).await?;
    }
    Ok(())
}

/// How `--release-on-exit SECS` is shared out, so that the whole shutdown fits in SECS
/// (volctl kills the node some time after that): the volume work in flight may take a
/// quarter of it (at most the usual 30 s), stopping containers at most half of what is
/// left (at most 30 s), and releasing the volumes the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShutdownBudget {
    total: std::time::Duration,
    drain: std::time::Duration,
}

impl ShutdownBudget {
    const MAX_PHASE: std::time::Duration = std::time::Duration::from_secs(30);

    fn new(secs: u64) -> ShutdownBudget {
        let total = std::time::Duration::from_secs(secs);
        ShutdownBudget {
            total,
            drain: (total / 4).min(Self::MAX_PHASE),
        }
    }

    /// The containers' grace (TERM to KILL) when `left` of the budget remains.
    fn stop_grace(&self, left: std::time::Duration) -> std::time::Duration {
        (left / 2).min(Self::MAX_PHASE)
    }
}

/// Retries `release_all` until it succeeds or `deadline` passes (it is tried at least
/// once): a CSI call can meet an operation still in flight from the run loop ("already
/// in flight"), which settles.
async fn release(
    manager: &VolumeManager<EmbeddedStore>,
    secs: u64,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match manager.release_all().await {
            Ok(()) => {
                tracing::info!("released every pod's volumes");
                return Ok(());
            }
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Release { secs, source });
            }
            Err(e) => {
                tracing::warn!(error = %e, "releasing pod volumes; retrying");
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ShutdownBudget;
    use std::time::Duration;

    #[test]
    fn shutdown_phases_fit_the_release_budget() {
        for secs in [0, 1, 10, 60, 120, 600] {
            let b = ShutdownBudget::new(secs);
            let total = Duration::from_secs(secs);
            assert!(b.drain <= total / 4 && b.drain <= Duration::from_secs(30));
            // The worst case: draining took all of its share.
            let left = total - b.drain;
            let stop = b.stop_grace(left);
            assert!(b.drain + stop <= total, "{secs}: {b:?} then {stop:?}");
            assert!(stop <= Duration::from_secs(30));
        }
        // volctl's 60 s: 15 s of drain, at most 22.5 s for containers, the rest releasing.
        let b = ShutdownBudget::new(60);
        assert_eq!(b.drain, Duration::from_secs(15));
        assert_eq!(
            b.stop_grace(Duration::from_secs(45)),
            Duration::from_millis(22_500)
        );
    }
}

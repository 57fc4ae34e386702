//! The volume manager: the pods placed on this node (desired state, from the store)
//! against the pod volume directories and mountinfo (actual state). Level-triggered and
//! idempotent: every sync computes what should exist and makes it so, so a restart simply
//! syncs again, keeping what is right and cleaning what is stale.
//!
//! Live updates: one watch each on Pods, Secrets, ConfigMaps and PVCs feeds a local object
//! cache; a Secret or ConfigMap change re-projects every volume that reads it at once (no
//! sync period, unlike the kubelet's 60-90 s, k8s-semantics §2.8). Objects seen as `immutable` are not
//! re-projected (k8s-semantics §2.9). Tokens are refreshed on their own timer (§2.5). A claim that is
//! created, bound or marked NodeResizePending, or a volume that appears, re-syncs every
//! pod here that uses the claim at once, through the PVC and PV watches.
//!
//! Each volume of a pod is set up on its own: one failing (an unbound claim) leaves the
//! others in place, and the pod is retried every 5 s until all are. Syncs and tear-downs
//! of one pod UID are serialised, and a sync checks under that lock that the pod is still
//! desired: a deleted, finished or torn-down UID is never set up again.
//!
//! The code splits by job: `desired` (which pods should have volumes, tombstones),
//! `locks` (one lock per pod UID), `cache` (Secrets and ConfigMaps), `tokens` (service
//! account tokens), `projected` (API-data volumes and their re-projection), `pvc`
//! (claims: CSI, hostPath and local PVs, node expansion), `pod` (one pod's set-up and
//! tear-down), `reconcile` (full passes over the node), `events` (the watches and the
//! run loop) and `tasks` (the work in flight, which `run` drains before it returns).

mod cache;
mod desired;
mod events;
mod locks;
mod pod;
mod projected;
mod pvc;
mod reconcile;
mod tasks;
mod tokens;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use strata_store::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strata_store::meta;
use strata_store::{Object, Store};
use tokio::sync::Notify;

use crate::csi_volume::CsiNode;
use crate::error::{Error, Result};
use crate::handoff::{self, ContainerVolumes, PreparedVolume};
use crate::layout;
use crate::projection::TokenKey;
use crate::token::{IssuedToken, TokenIssuer};

use cache::ObjKey;
pub use cache::{CachedObject, ObjectKind};
use desired::Desired;
use tasks::Tasks;

/// How the manager is set up.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub node_name: String,
    /// `unix:///path` of the CSI driver's socket; PVC volumes fail without it.
    pub csi_endpoint: Option<String>,
    /// `iss` of service account tokens.
    pub issuer: String,
    /// The wall clock for token issue and refresh decisions (tests move it forward).
    pub clock: fn() -> SystemTime,
}

#[derive(Debug, Default, Clone)]
struct PodEntry {
    pod: Option<Pod>,
    prepared: BTreeMap<String, PreparedVolume>,
    /// Immutable objects this pod's volumes were built from: never re-projected.
    immutable: BTreeSet<(ObjectKind, String)>,
    /// Volumes whose last setup failed, with the reason.
    errors: BTreeMap<String, String>,
}

struct Inner<S> {
    store: S,
    cfg: Config,
    issuer: TokenIssuer,
    csi: tokio::sync::Mutex<Option<CsiNode>>,
    allocatable: BTreeMap<String, Quantity>,
    secrets: RwLock<HashMap<ObjKey, Secret>>,
    config_maps: RwLock<HashMap<ObjKey, ConfigMap>>,
    pods: Mutex<BTreeMap<String, PodEntry>>,
    desired: Mutex<Desired>,
    tokens: Mutex<HashMap<(String, TokenKey), IssuedToken>>,
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    token_wake: Notify,
    periods: Mutex<Periods>,
    /// Set-ups, tear-downs and re-projections in flight; `run` drains them on its way out.
    tasks: Arc<Tasks>,
    /// Per pod UID, counts the set-ups that left it with every volume ready (see
    /// [`VolumeManager::watch_ready`]); an entry goes with the pod's tear-down.
    ready: Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
}

/// How often `run` retries failed volumes and does a full reconcile, and how long it
/// waits for work in flight when it stops.
#[derive(Debug, Clone, Copy)]
struct Periods {
    retry: Duration,
    resync: Duration,
    drain: Duration,
}

/// The volume manager; cheap to clone.
pub struct VolumeManager<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for VolumeManager<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn store_err(e: strata_store::Error) -> Error {
    Error::Store(e.to_string())
}

/// (namespace, name): the cache's key.
fn key_of<K: Object>(obj: &K) -> ObjKey {
    let m = obj.metadata();
    (meta::namespace(m).to_owned(), meta::name(m).to_owned())
}

/// The node's allocatable amounts for limits a container leaves unset (k8s-semantics §2.4).
fn host_allocatable(state_dir: &Path) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    out.insert("cpu".into(), Quantity(cpus.to_string()));
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo")
        && let Some(kb) = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        out.insert("memory".into(), Quantity((kb * 1024).to_string()));
    }
    if let Ok(st) = nix::sys::statvfs::statvfs(state_dir) {
        let bytes = st.blocks() * st.fragment_size();
        out.insert("ephemeral-storage".into(), Quantity(bytes.to_string()));
    }
    out
}

/// The pod is placed here and not finished: its volumes should exist.
pub fn wants_volumes(pod: &Pod, node: &str) -> bool {
    meta::pod_node_name(pod) == Some(node)
        && !matches!(meta::pod_phase(pod), "Succeeded" | "Failed")
        && pod.metadata.uid.is_some()
}

impl<S: Store> VolumeManager<S> {
    /// Opens the node's token key (creating it on first start) and prepares the state dir.
    pub fn new(store: S, cfg: Config) -> Result<Self> {
        std::fs::create_dir_all(layout::pods_dir(&cfg.state_dir)).map_err(|source| Error::Fs {
            op: "create directory",
            path: layout::pods_dir(&cfg.state_dir),
            source,
        })?;
        let issuer = TokenIssuer::open(&cfg.state_dir, &cfg.issuer)?;
        let allocatable = host_allocatable(&cfg.state_dir);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                cfg,
                issuer,
                csi: tokio::sync::Mutex::new(None),
                allocatable,
                secrets: RwLock::default(),
                config_maps: RwLock::default(),
                pods: Mutex::default(),
                desired: Mutex::default(),
                tokens: Mutex::default(),
                pod_locks: Mutex::default(),
                token_wake: Notify::new(),
                periods: Mutex::new(Periods {
                    retry: Duration::from_secs(5),
                    resync: Duration::from_secs(60),
                    drain: Duration::from_secs(30),
                }),
                tasks: Arc::default(),
                ready: Mutex::default(),
            }),
        })
    }

    /// Sets how often `run` retries pods whose volumes failed (default 5 s) and lists all
    /// pods for a full reconcile (default 60 s). Takes effect when `run` starts. Tests set
    /// long periods to show that a change arrives through a watch, not a retry.
    pub fn set_periods(&self, retry: Duration, resync: Duration) {
        let mut periods = self.inner.periods.lock().expect("lock");
        periods.retry = retry;
        periods.resync = resync;
    }

    /// Sets how long `run`, once told to stop, waits for the set-ups, tear-downs and
    /// re-projections in flight (default 30 s); what still runs then is logged and left
    /// to die with the process.
    pub fn set_drain_timeout(&self, timeout: Duration) {
        self.inner.periods.lock().expect("lock").drain = timeout;
    }

    /// Runs `fut` as tracked work (see `tasks`) and waits for it. Dropping the returned
    /// future does not stop the work.
    async fn tracked<T, F>(&self, what: String, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.inner.tasks.spawn(what.clone(), fut);
        handle
            .await
            .map_err(|source| Error::TaskPanicked { what, source })?
    }

    /// Starts `fut` as tracked work in the background.
    fn spawn_tracked<F>(&self, what: String, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.inner.tasks.spawn(what, fut));
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn token_issuer(&self) -> &TokenIssuer {
        &self.inner.issuer
    }

    /// The mounts and devices to hand the runtime for one container of a synced pod;
    /// `env` is the container's resolved environment (`NAME=value`), for subPathExpr.
    pub fn container_volumes(
        &self,
        pod_uid: &str,
        container: &str,
        env: &[String],
    ) -> Result<ContainerVolumes> {
        let (pod, prepared) = {
            let pods = self.inner.pods.lock().expect("lock");
            let e = pods.get(pod_uid).ok_or_else(|| Error::InvalidArgument {
                field: "pod",
                reason: format!("pod {pod_uid} has not been synced"),
            })?;
            (
                e.pod.clone().expect("synced pods keep their spec"),
                e.prepared.clone(),
            )
        };
        handoff::container_volumes(&self.inner.cfg.state_dir, &pod, container, &prepared, env)
    }

    /// Changes each time a set-up leaves pod `pod_uid` with all its volumes ready, whoever
    /// asked for it (a claim bound, a retry, a watch event): the pod's worker wakes on it
    /// and asks [`Self::pod_ready`] instead of polling `sync_pod`. One per pod, so that a
    /// pod becoming ready wakes its own worker, not every waiting one.
    pub fn watch_ready(&self, pod_uid: &str) -> tokio::sync::watch::Receiver<u64> {
        self.inner
            .ready
            .lock()
            .expect("lock")
            .entry(pod_uid.to_owned())
            .or_insert_with(|| tokio::sync::watch::Sender::new(0))
            .subscribe()
    }

    /// Wakes [`Self::watch_ready`]'s receivers of `pod_uid`.
    fn tell_ready(&self, pod_uid: &str) {
        if let Some(tx) = self.inner.ready.lock().expect("lock").get(pod_uid) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Forgets `pod_uid`'s [`Self::watch_ready`] channel (its volumes are torn down).
    fn forget_ready(&self, pod_uid: &str) {
        self.inner.ready.lock().expect("lock").remove(pod_uid);
    }

    /// Whether pod `pod_uid`'s last set-up left every volume ready (and it has not been
    /// torn down since): [`Self::container_volumes`] then has all of them.
    pub fn pod_ready(&self, pod_uid: &str) -> bool {
        self.inner
            .pods
            .lock()
            .expect("lock")
            .get(pod_uid)
            .is_some_and(|e| e.pod.is_some() && e.errors.is_empty())
    }

    /// The last setup errors of a pod's volumes, by volume name.
    pub fn volume_errors(&self, pod_uid: &str) -> BTreeMap<String, String> {
        self.inner
            .pods
            .lock()
            .expect("lock")
            .get(pod_uid)
            .map(|e| e.errors.clone())
            .unwrap_or_default()
    }
}

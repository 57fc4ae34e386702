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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use strata_store::k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount, Volume,
};
use strata_store::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strata_store::{EventType, Object, Store, WatchEvent};
use tokio::sync::{Notify, mpsc};

use crate::api_volume;
use crate::atomic_writer::WriteOutcome;
use crate::csi_volume::{self, CsiNode, CsiVolume};
use crate::dirfd;
use crate::empty_dir::{self, Medium};
use crate::error::{Error, Result, blocking};
use crate::handoff::{self, ContainerVolumes, PreparedVolume};
use crate::host_path;
use crate::layout;
use crate::mount;
use crate::projection::{self, Inputs, Kind, References, TokenKey};
use crate::token::{self, IssuedToken, TokenIssuer, TokenRequest};

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

/// Which API-data object a watch event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Secret,
    ConfigMap,
}

type ObjKey = (String, String); // namespace, name

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
}

/// Which pods should have volumes, as the Pod watch (and `run`'s lists) last said, and
/// which were deleted or torn down. Every sync checks this under the pod's lock right
/// before it sets anything up, so a queued retry or a sync racing a deletion can never
/// re-create volumes of a pod that is gone.
#[derive(Debug, Default)]
struct Desired {
    /// By UID: pods placed here that are not finished.
    pods: HashMap<String, Pod>,
    /// By UID: pods deleted, finished or torn down, and since when. UIDs are never reused
    /// and a finished pod never runs again, so a UID here is never set up again.
    gone: HashMap<String, Instant>,
}

/// How long a tombstone outlives the pod: far longer than any sync that could still
/// carry the pod's object (syncs are bounded by store and driver timeouts).
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// How often `run` retries failed volumes and does a full reconcile.
#[derive(Debug, Clone, Copy)]
struct Periods {
    retry: Duration,
    resync: Duration,
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

fn rv_of<K: Object>(obj: &K) -> u64 {
    obj.metadata()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn key_of<K: Object>(obj: &K) -> ObjKey {
    let m = obj.metadata();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
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
    let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    on_node && !matches!(phase, Some("Succeeded") | Some("Failed")) && pod.metadata.uid.is_some()
}

/// The reference an Event about `pod` names.
pub fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
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
                }),
            }),
        })
    }

    /// Sets how often `run` retries pods whose volumes failed (default 5 s) and lists all
    /// pods for a full reconcile (default 60 s). Takes effect when `run` starts. Tests set
    /// long periods to show that a change arrives through a watch, not a retry.
    pub fn set_periods(&self, retry: Duration, resync: Duration) {
        *self.inner.periods.lock().expect("lock") = Periods { retry, resync };
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn token_issuer(&self) -> &TokenIssuer {
        &self.inner.issuer
    }

    async fn csi(&self) -> Result<CsiNode> {
        let mut guard = self.inner.csi.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let endpoint =
            self.inner
                .cfg
                .csi_endpoint
                .as_deref()
                .ok_or_else(|| Error::InvalidArgument {
                    field: "csi-endpoint",
                    reason: "PVC volumes need a CSI driver, and none is configured".into(),
                })?;
        let c = CsiNode::connect(endpoint).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    fn pod_lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .pod_locks
            .lock()
            .expect("lock")
            .entry(uid.to_owned())
            .or_default()
            .clone()
    }

    /// Drops the pod's lock from the map unless another task still holds or waits on it.
    fn release_pod_lock(&self, uid: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.inner.pod_locks.lock().expect("lock");
        // Ours and the map's: nobody else queued behind it.
        if locks.get(uid).is_some_and(|l| Arc::ptr_eq(l, lock)) && Arc::strong_count(lock) <= 2 {
            locks.remove(uid);
        }
    }

    /// Marks a pod as gone for good: no sync sets it up again.
    fn mark_gone(&self, uid: &str) {
        let mut d = self.inner.desired.lock().expect("lock");
        d.pods.remove(uid);
        d.gone.insert(uid.to_owned(), Instant::now());
    }

    /// The version of `pod` to set up now, or None when it must not be set up: deleted,
    /// finished or torn down since the caller got it. The watch's copy wins when newer.
    fn current_pod(&self, pod: &Pod) -> Option<Pod> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let d = self.inner.desired.lock().expect("lock");
        if d.gone.contains_key(uid) {
            return None;
        }
        let pod = match d.pods.get(uid) {
            Some(cached) if rv_of(cached) > rv_of(pod) => cached.clone(),
            _ => pod.clone(),
        };
        wants_volumes(&pod, &self.inner.cfg.node_name).then_some(pod)
    }

    /// Takes a Pod watch event (or a listed pod) into the desired set. Returns whether the
    /// pod should have volumes.
    fn observe_pod(&self, pod: &Pod, deleted: bool) -> bool {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = &self.inner.cfg.node_name;
        let mut d = self.inner.desired.lock().expect("lock");
        if !deleted && wants_volumes(pod, node) {
            if d.gone.contains_key(&uid) {
                return false;
            }
            if d.pods.get(&uid).is_none_or(|old| rv_of(old) <= rv_of(pod)) {
                d.pods.insert(uid, pod.clone());
            }
            return true;
        }
        d.pods.remove(&uid);
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        // Placed here and deleted or finished: never again. (A pod not placed yet may
        // still be, so it gets no tombstone.)
        if on_node || deleted {
            d.gone.insert(uid, Instant::now());
        }
        false
    }

    /// Pods that should have volumes and use claim `ns/name`, from the watch's desired set
    /// and from the pods synced so far.
    fn claim_users(&self, ns: &str, name: &str) -> Vec<Pod> {
        let uses = |p: &Pod| {
            p.metadata.namespace.as_deref() == Some(ns)
                && p.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == name)
                    })
        };
        let mut out: BTreeMap<String, Pod> = BTreeMap::new();
        for p in self.inner.desired.lock().expect("lock").pods.values() {
            if uses(p) {
                out.insert(p.metadata.uid.clone().unwrap_or_default(), p.clone());
            }
        }
        for e in self.inner.pods.lock().expect("lock").values() {
            if let Some(p) = &e.pod
                && uses(p)
            {
                out.entry(p.metadata.uid.clone().unwrap_or_default())
                    .or_insert_with(|| p.clone());
            }
        }
        out.into_values().collect()
    }

    /// Re-syncs every pod using claim `ns/name`, each in its own task, at once.
    fn resync_claim_users(&self, ns: &str, name: &str) {
        for pod in self.claim_users(ns, name) {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.sync_pod(&pod).await;
            });
        }
    }

    /// Puts an object into the cache unless the cache already holds a newer version.
    fn cache_object(&self, kind: ObjectKind, obj: CachedObject) {
        match (kind, obj) {
            (ObjectKind::Secret, CachedObject::Secret(s)) => {
                let mut map = self.inner.secrets.write().expect("lock");
                let k = key_of(&s);
                if map.get(&k).is_none_or(|old| rv_of(old) <= rv_of(&s)) {
                    map.insert(k, s);
                }
            }
            (ObjectKind::ConfigMap, CachedObject::ConfigMap(c)) => {
                let mut map = self.inner.config_maps.write().expect("lock");
                let k = key_of(&c);
                if map.get(&k).is_none_or(|old| rv_of(old) <= rv_of(&c)) {
                    map.insert(k, c);
                }
            }
            _ => {}
        }
    }

    /// Fetches referenced objects missing from the cache (a pod can be synced before the
    /// watch has delivered them). NotFound leaves them absent.
    async fn fill_cache(&self, ns: &str, refs: &References) -> Result<()> {
        for name in &refs.secrets {
            let have = self
                .inner
                .secrets
                .read()
                .expect("lock")
                .contains_key(&(ns.to_owned(), name.clone()));
            if !have {
                match self.inner.store.get::<Secret>(ns, name).await {
                    Ok(s) => self.cache_object(ObjectKind::Secret, CachedObject::Secret(s)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        for name in &refs.config_maps {
            let have = self
                .inner
                .config_maps
                .read()
                .expect("lock")
                .contains_key(&(ns.to_owned(), name.clone()));
            if !have {
                match self.inner.store.get::<ConfigMap>(ns, name).await {
                    Ok(c) => self.cache_object(ObjectKind::ConfigMap, CachedObject::ConfigMap(c)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        Ok(())
    }

    /// A token for the pod, from the cache while it needs no refresh (k8s-semantics §2.5).
    async fn token_for(&self, pod: &Pod, key: &TokenKey) -> Result<String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = (self.inner.cfg.clock)();
        let cached = self
            .inner
            .tokens
            .lock()
            .expect("lock")
            .get(&(uid.clone(), key.clone()))
            .cloned();
        if let Some(tok) = &cached
            && !token::requires_refresh(tok, now, token::jitter_secs())
        {
            return Ok(tok.token.clone());
        }
        match self.issue_token(pod, key, now).await {
            Ok(tok) => {
                let text = tok.token.clone();
                self.inner
                    .tokens
                    .lock()
                    .expect("lock")
                    .insert((uid, key.clone()), tok);
                self.inner.token_wake.notify_one();
                Ok(text)
            }
            // A failed refresh keeps using the cached token until it expires.
            Err(e) => match cached {
                Some(tok)
                    if tok.expires_at
                        > now
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0) =>
                {
                    tracing::warn!(error = %e, "token refresh failed; keeping the current token");
                    Ok(tok.token)
                }
                _ => Err(e),
            },
        }
    }

    async fn issue_token(&self, pod: &Pod, key: &TokenKey, now: SystemTime) -> Result<IssuedToken> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let sa_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        // TokenRequest needs the service account to exist, as upstream.
        let sa: ServiceAccount = self.inner.store.get(&ns, &sa_name).await.map_err(|e| {
            if e.is_not_found() {
                Error::Token(format!("service account {ns}/{sa_name} not found"))
            } else {
                store_err(e)
            }
        })?;
        let req = TokenRequest {
            namespace: ns,
            service_account_name: sa_name,
            service_account_uid: sa.metadata.uid.unwrap_or_default(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            node_name: self.inner.cfg.node_name.clone(),
            node_uid: None,
            audiences: if key.audience.is_empty() {
                Vec::new()
            } else {
                vec![key.audience.clone()]
            },
            expiration_seconds: key.expiration_seconds,
        };
        self.inner.issuer.issue(&req, now)
    }

    /// Builds and writes one API-data volume. Returns the immutable objects it used.
    async fn set_up_api_volume(
        &self,
        pod: &Pod,
        volume: &Volume,
        kind: Kind,
    ) -> Result<(PreparedVolume, BTreeSet<(ObjectKind, String)>)> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let refs = projection::references(volume)?;
        self.fill_cache(&ns, &refs).await?;
        let mut tokens = BTreeMap::new();
        for key in &refs.tokens {
            tokens.insert(key.clone(), self.token_for(pod, key).await?);
        }
        let mut immutable = BTreeSet::new();
        let secrets: BTreeMap<String, Secret> = {
            let cache = self.inner.secrets.read().expect("lock");
            refs.secrets
                .iter()
                .filter_map(|n| {
                    cache
                        .get(&(ns.clone(), n.clone()))
                        .map(|s| (n.clone(), s.clone()))
                })
                .collect()
        };
        let config_maps: BTreeMap<String, ConfigMap> = {
            let cache = self.inner.config_maps.read().expect("lock");
            refs.config_maps
                .iter()
                .filter_map(|n| {
                    cache
                        .get(&(ns.clone(), n.clone()))
                        .map(|c| (n.clone(), c.clone()))
                })
                .collect()
        };
        for (n, s) in &secrets {
            if s.immutable == Some(true) {
                immutable.insert((ObjectKind::Secret, n.clone()));
            }
        }
        for (n, c) in &config_maps {
            if c.immutable == Some(true) {
                immutable.insert((ObjectKind::ConfigMap, n.clone()));
            }
        }
        let payload = projection::build(
            volume,
            &Inputs {
                pod,
                secrets: &secrets,
                config_maps: &config_maps,
                tokens: &tokens,
                node_allocatable: &self.inner.allocatable,
            },
        )?;
        let dir = layout::volume_dir(
            &self.inner.cfg.state_dir,
            &uid,
            kind.plugin_dir(),
            &volume.name,
        );
        let fs_group = projection::fs_group(pod);
        let d = dir.clone();
        let nested = handoff::nested_mount_points(pod, &volume.name);
        let outcome =
            blocking(move || api_volume::set_up(&d, kind, &payload, fs_group, &nested)).await?;
        if let WriteOutcome::Written { version } = &outcome {
            tracing::debug!(volume = %volume.name, %version, "projected");
        }
        Ok((
            PreparedVolume {
                path: dir,
                read_only: true,
                block: false,
            },
            immutable,
        ))
    }

    async fn set_up_pvc(&self, pod: &Pod, volume: &Volume) -> Result<PreparedVolume> {
        let src = volume.persistent_volume_claim.as_ref().expect("checked");
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pvc: PersistentVolumeClaim = self
            .inner
            .store
            .get(&ns, &src.claim_name)
            .await
            .map_err(store_err)?;
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| {
                !n.is_empty()
                    && pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            })
            .ok_or_else(|| Error::InvalidArgument {
                field: "persistentVolumeClaim",
                reason: format!("claim {ns}/{} is not bound yet", src.claim_name),
            })?;
        let pv: PersistentVolume = self
            .inner
            .store
            .get("", &pv_name)
            .await
            .map_err(store_err)?;
        let spec = pv.spec.as_ref().ok_or_else(|| Error::InvalidArgument {
            field: "persistentVolume",
            reason: format!("{pv_name} has no spec"),
        })?;
        let read_only = src.read_only.unwrap_or(false);
        if let Some(hp) = &spec.host_path {
            // The container binds the node's path itself, as for an inline hostPath.
            let path = PathBuf::from(&hp.path);
            let (p, t) = (path.clone(), hp.type_.clone());
            blocking(move || host_path::check(&p, t.as_deref())).await?;
            return Ok(PreparedVolume {
                path,
                read_only,
                block: false,
            });
        }
        if let Some(local) = &spec.local {
            if spec.volume_mode.as_deref() == Some("Block") {
                return Err(Error::InvalidArgument {
                    field: "persistentVolume.spec.volumeMode",
                    reason: format!("{pv_name}: local volumes in Block mode are not supported"),
                });
            }
            let target = layout::volume_dir(
                &self.inner.cfg.state_dir,
                &uid,
                "kubernetes.io~local-volume",
                &pv_name,
            );
            let (s, t) = (PathBuf::from(&local.path), target.clone());
            blocking(move || host_path::bind_local(&s, &t)).await?;
            return Ok(PreparedVolume {
                path: target,
                read_only,
                block: false,
            });
        }
        let csi_src = spec.csi.as_ref().ok_or_else(|| Error::InvalidArgument {
            field: "persistentVolume",
            reason: format!(
                "{pv_name} is not a CSI, hostPath or local volume; no other kind is supported"
            ),
        })?;
        let csi = self.csi().await?;
        if csi_src.driver != csi.driver() {
            return Err(Error::InvalidArgument {
                field: "persistentVolume.spec.csi.driver",
                reason: format!(
                    "{pv_name} needs driver {:?}; this node runs {:?}",
                    csi_src.driver,
                    csi.driver()
                ),
            });
        }
        let secret_data =
            |r: &Option<strata_store::k8s_openapi::api::core::v1::SecretReference>| {
                let store = self.inner.store.clone();
                let r = r.clone();
                async move {
                    let Some(r) = r else {
                        return Ok(BTreeMap::new());
                    };
                    let s: Secret = store
                        .get(
                            r.namespace.as_deref().unwrap_or_default(),
                            r.name.as_deref().unwrap_or_default(),
                        )
                        .await
                        .map_err(store_err)?;
                    Ok::<_, Error>(
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .collect(),
                    )
                }
            };
        let read_only = read_only || csi_src.read_only.unwrap_or(false);
        let v = CsiVolume {
            pv_name: pv_name.clone(),
            volume_handle: csi_src.volume_handle.clone(),
            block: spec.volume_mode.as_deref() == Some("Block"),
            fs_type: csi_src.fs_type.clone().unwrap_or_default(),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            access_mode: csi_volume::access_mode(
                spec.access_modes.as_deref().unwrap_or_default(),
                csi.single_node_multi_writer(),
            ),
            read_only,
            volume_context: csi_src.volume_attributes.clone().unwrap_or_default(),
            stage_secrets: secret_data(&csi_src.node_stage_secret_ref).await?,
            publish_secrets: secret_data(&csi_src.node_publish_secret_ref).await?,
            fs_group: None,
        };
        // fsGroupPolicy ReadWriteOnceWithFSType (the default without a CSIDriver object):
        // only filesystem volumes with an fsType and one single-node writable mode.
        let modes = spec.access_modes.as_deref().unwrap_or_default();
        let single_writer =
            modes.len() == 1 && matches!(modes[0].as_str(), "ReadWriteOnce" | "ReadWriteOncePod");
        let mut v = v;
        if !v.block && !v.fs_type.is_empty() && single_writer {
            v.fs_group = projection::fs_group(pod);
        }
        let target = csi.set_up(&self.inner.cfg.state_dir, &uid, &v).await?;
        self.expand_if_pending(&csi, &uid, &pvc, &pv, &v).await?;
        Ok(PreparedVolume {
            path: target,
            read_only,
            block: v.block,
        })
    }

    /// NodeExpandVolume when the claim says node expansion is pending, then records the
    /// new capacity in the claim's status and clears the pending mark.
    async fn expand_if_pending(
        &self,
        csi: &CsiNode,
        pod_uid: &str,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
        v: &CsiVolume,
    ) -> Result<()> {
        let pending = pvc
            .status
            .as_ref()
            .and_then(|s| s.allocated_resource_statuses.as_ref())
            .and_then(|m| m.get("storage"))
            .is_some_and(|s| s == "NodeResizePending");
        if !pending {
            return Ok(());
        }
        let want = pv
            .spec
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .cloned()
            .ok_or_else(|| Error::InvalidArgument {
                field: "persistentVolume.spec.capacity",
                reason: "no storage capacity".into(),
            })?;
        let bytes = strata_store::quantity::parse(&want.0)
            .ok()
            .and_then(|q| i64::try_from(q.ceil_units()).ok())
            .ok_or_else(|| Error::InvalidArgument {
                field: "persistentVolume.spec.capacity",
                reason: format!("{:?} is not a size", want.0),
            })?;
        csi.expand(&self.inner.cfg.state_dir, pod_uid, v, bytes)
            .await?;
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        for _ in 0..5 {
            let mut cur: PersistentVolumeClaim =
                self.inner.store.get(&ns, &name).await.map_err(store_err)?;
            let status = cur.status.get_or_insert_with(Default::default);
            if let Some(m) = status.allocated_resource_statuses.as_mut() {
                m.remove("storage");
            }
            status
                .capacity
                .get_or_insert_with(Default::default)
                .insert("storage".into(), want.clone());
            match self.inner.store.update_status(&cur).await {
                Ok(_) => {
                    tracing::info!(pvc = %format!("{ns}/{name}"), size = %want.0, "expanded on the node");
                    return Ok(());
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(Error::Store(format!(
            "updating {ns}/{name} status: conflict after retries"
        )))
    }

    /// Sets up every volume of `pod` (idempotent). Volumes that fail are reported together
    /// and retried by the next sync; the others are set up regardless. A pod deleted,
    /// finished or torn down (checked under the pod's lock, after any tear-down in flight)
    /// gets nothing and `Error::PodGone`; the newest copy the Pod watch delivered is used.
    #[tracing::instrument(skip_all, fields(pod = %pod.metadata.name.as_deref().unwrap_or_default()))]
    pub async fn sync_pod(&self, pod: &Pod) -> Result<BTreeMap<String, PreparedVolume>> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !layout::valid_component(&uid) {
            return Err(Error::InvalidArgument {
                field: "metadata.uid",
                reason: format!("{uid:?} cannot name a directory"),
            });
        }
        let lock = self.pod_lock(&uid);
        let guard = lock.lock().await;
        // Checked under the pod's lock, right before setting up: a tear-down that ran
        // while this sync was queued (or a deletion seen meanwhile) wins.
        let Some(pod) = self.current_pod(pod) else {
            drop(guard);
            self.release_pod_lock(&uid, &lock);
            tracing::debug!("pod is gone or finished; nothing set up");
            return Err(Error::PodGone { uid });
        };
        let pod = &pod;
        let _guard = guard;
        let mut prepared = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut immutable = BTreeSet::new();
        for volume in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            match self.set_up_volume(pod, volume).await {
                Ok((p, imm)) => {
                    prepared.insert(volume.name.clone(), p);
                    immutable.extend(imm);
                }
                Err(e) => {
                    errors.insert(volume.name.clone(), e.to_string());
                }
            }
        }
        let first_ready = {
            let mut pods = self.inner.pods.lock().expect("lock");
            let entry = pods.entry(uid).or_default();
            let was_ready = entry.pod.is_some() && entry.errors.is_empty();
            entry.pod = Some(pod.clone());
            entry.prepared.extend(prepared.clone());
            entry.immutable = immutable;
            entry.errors = errors.clone();
            !was_ready && errors.is_empty()
        };
        if errors.is_empty() {
            if first_ready {
                tracing::info!(volumes = prepared.len(), "all volumes set up");
            }
            return Ok(prepared);
        }
        let message = errors
            .iter()
            .map(|(v, e)| format!("volume {v:?}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(%message, "setting up volumes failed");
        if let Err(e) = self
            .inner
            .store
            .record_event(&pod_ref(pod), EventType::Warning, "FailedMount", &message)
            .await
        {
            tracing::warn!(error = %e, "recording FailedMount event");
        }
        Err(Error::Projection {
            volume: pod.metadata.name.clone().unwrap_or_default(),
            errors: errors
                .into_iter()
                .map(|(v, e)| format!("{v}: {e}"))
                .collect(),
        })
    }

    async fn set_up_volume(
        &self,
        pod: &Pod,
        volume: &Volume,
    ) -> Result<(PreparedVolume, BTreeSet<(ObjectKind, String)>)> {
        if !layout::valid_component(&volume.name) {
            return Err(Error::InvalidArgument {
                field: "volumes.name",
                reason: format!("{:?} cannot name a directory", volume.name),
            });
        }
        if let Some(kind) = Kind::of(volume) {
            return self.set_up_api_volume(pod, volume, kind).await;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(src) = &volume.empty_dir {
            let medium = Medium::of(src)?;
            let dir = layout::volume_dir(
                &self.inner.cfg.state_dir,
                &uid,
                "kubernetes.io~empty-dir",
                &volume.name,
            );
            let fs_group = projection::fs_group(pod);
            let d = dir.clone();
            blocking(move || empty_dir::set_up(&d, medium, fs_group)).await?;
            return Ok((
                PreparedVolume {
                    path: dir,
                    read_only: false,
                    block: false,
                },
                BTreeSet::new(),
            ));
        }
        if volume.persistent_volume_claim.is_some() {
            return Ok((self.set_up_pvc(pod, volume).await?, BTreeSet::new()));
        }
        if let Some(hp) = &volume.host_path {
            let path = PathBuf::from(&hp.path);
            let (p, t) = (path.clone(), hp.type_.clone());
            blocking(move || host_path::check(&p, t.as_deref())).await?;
            return Ok((
                PreparedVolume {
                    path,
                    read_only: false,
                    block: false,
                },
                BTreeSet::new(),
            ));
        }
        Err(Error::InvalidArgument {
            field: "volumes",
            reason: format!(
                "volume {:?}: this volume type is not supported",
                volume.name
            ),
        })
    }

    /// Tears down everything of a pod: CSI volumes through the driver, then our own
    /// mounts, then the directory. Never deletes through a mount that is still there.
    #[tracing::instrument(skip_all, fields(pod_uid = %uid))]
    pub async fn tear_down_pod(&self, uid: &str) -> Result<()> {
        if !layout::valid_component(uid) {
            return Err(Error::InvalidArgument {
                field: "pod uid",
                reason: format!("{uid:?} cannot name a directory"),
            });
        }
        // Tombstoned before taking the lock: syncs queued behind us find it and set
        // nothing up; a sync holding the lock now finishes first and is undone here.
        self.mark_gone(uid);
        let lock = self.pod_lock(uid);
        let guard = lock.lock().await;
        let state = self.inner.cfg.state_dir.clone();
        let pod_dir = layout::pod_dir(&state, uid);
        // subPath binds first: they pin what they show of the volumes below.
        let sub = layout::subpath_dir(&state, uid);
        blocking(move || mount::unmount_below(&sub)).await?;
        let csi_dir = pod_dir.join("volumes/kubernetes.io~csi");
        let has_csi = {
            let d = csi_dir.clone();
            blocking(move || csi_volume::read_vol_data_dirs(&d)).await?
        };
        if !has_csi.is_empty() {
            self.csi().await?.tear_down_pod(&state, uid).await?;
        }
        let d = pod_dir.clone();
        blocking(move || {
            mount::unmount_below(&d)?;
            if mount::mountinfo()?
                .iter()
                .any(|m| m.mount_point.starts_with(&d))
            {
                return Err(Error::CorruptVolume {
                    path: d.clone(),
                    reason: "mounts remain below the pod directory".into(),
                });
            }
            let pods = layout::pods_dir(&state);
            let fd = dirfd::open_dir(&pods)?;
            dirfd::remove_all_at(
                std::os::fd::AsFd::as_fd(&fd),
                std::ffi::OsStr::new(d.file_name().unwrap_or_default()),
                &pods,
            )
        })
        .await?;
        self.inner.pods.lock().expect("lock").remove(uid);
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .retain(|(p, _), _| p != uid);
        drop(guard);
        self.release_pod_lock(uid, &lock);
        tracing::info!("volumes torn down");
        Ok(())
    }

    /// Tears down the volumes of every pod on disk and unstages every CSI volume, leaving
    /// the pods in the store: for a node that stops and takes its mounts with it (`volctl
    /// down`). The next start sets them up again from the store. Call after `run` returned.
    pub async fn release_all(&self) -> Result<()> {
        let mut first_err = None;
        for uid in self.pods_on_disk()? {
            if let Err(e) = self.tear_down_pod(&uid).await {
                tracing::warn!(pod_uid = %uid, error = %e, "releasing a pod's volumes");
                first_err.get_or_insert(e);
            }
        }
        if self.inner.cfg.csi_endpoint.is_some() {
            let unstaged = match self.csi().await {
                Ok(csi) => csi.unstage_orphans(&self.inner.cfg.state_dir).await,
                Err(e) => Err(e),
            };
            if let Err(e) = unstaged {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The pod uids that have a directory on disk.
    pub fn pods_on_disk(&self) -> Result<Vec<String>> {
        let dir = layout::pods_dir(&self.inner.cfg.state_dir);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|source| Error::Fs {
            op: "read directory",
            path: dir.clone(),
            source,
        })? {
            let e = e.map_err(|source| Error::Fs {
                op: "read directory",
                path: dir.clone(),
                source,
            })?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// One level-triggered pass: sets up every desired pod, tears down every pod directory
    /// that no desired pod owns, and unstages CSI volumes nobody publishes.
    ///
    /// Desired are the pods of `pods` placed here and not finished, and the pods the Pod
    /// watch has delivered since (a list can be older than the watch), less every pod seen
    /// deleted, finished or torn down (a list can also be older than a deletion).
    pub async fn reconcile(&self, pods: &[Pod]) -> Result<()> {
        let node = self.inner.cfg.node_name.clone();
        let desired: BTreeMap<String, Pod> = {
            let mut d = self.inner.desired.lock().expect("lock");
            d.gone.retain(|_, since| since.elapsed() < TOMBSTONE_TTL);
            let mut out: BTreeMap<String, Pod> = d
                .pods
                .iter()
                .map(|(uid, p)| (uid.clone(), p.clone()))
                .collect();
            for p in pods.iter().filter(|p| wants_volumes(p, &node)) {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if d.gone.contains_key(&uid) {
                    continue;
                }
                if out.get(&uid).is_none_or(|old| rv_of(old) <= rv_of(p)) {
                    out.insert(uid, p.clone());
                }
            }
            out
        };
        let mut first_err = None;
        for uid in self.pods_on_disk()? {
            if !desired.contains_key(&uid)
                && let Err(e) = self.tear_down_pod(&uid).await
            {
                tracing::warn!(pod_uid = %uid, error = %e, "tearing down a stale pod");
                first_err.get_or_insert(e);
            }
        }
        // Pods known in memory but gone from the store (no directory was left).
        let known: Vec<String> = self
            .inner
            .pods
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        for uid in known {
            if !desired.contains_key(&uid) {
                self.inner.pods.lock().expect("lock").remove(&uid);
            }
        }
        let syncs = desired.values().map(|p| self.sync_pod(p));
        for r in futures::future::join_all(syncs).await {
            match r {
                // Deleted while this pass ran; its tear-down is the Pod watch's.
                Ok(_) | Err(Error::PodGone { .. }) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if self.inner.cfg.csi_endpoint.is_some() {
            match self.csi().await {
                Ok(csi) => {
                    if let Err(e) = csi.unstage_orphans(&self.inner.cfg.state_dir).await {
                        first_err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Drops from the desired set the pods a full list no longer has although it is newer
    /// than what the watch delivered of them: deleted during a watch gap.
    fn forget_unlisted(&self, listed: &[Pod], list_rv: u64) {
        let have: BTreeSet<&str> = listed
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let mut d = self.inner.desired.lock().expect("lock");
        let missing: Vec<String> = d
            .pods
            .iter()
            .filter(|(uid, p)| !have.contains(uid.as_str()) && rv_of(*p) <= list_rv)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in missing {
            d.pods.remove(&uid);
            d.gone.insert(uid, Instant::now());
        }
    }

    /// Pods (uid) whose volumes read `name` of `kind` in `ns`, skipping those that used an
    /// immutable version of it.
    fn affected_pods(&self, kind: ObjectKind, ns: &str, name: &str) -> Vec<Pod> {
        let pods = self.inner.pods.lock().expect("lock");
        pods.values()
            .filter_map(|e| e.pod.as_ref().map(|p| (e, p)))
            .filter(|(_, p)| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|(e, _)| !e.immutable.contains(&(kind, name.to_owned())))
            .filter(|(_, p)| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|v| {
                        projection::references(v).is_ok_and(|r| match kind {
                            ObjectKind::Secret => r.secrets.contains(name),
                            ObjectKind::ConfigMap => r.config_maps.contains(name),
                        })
                    })
            })
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Re-projects the volumes of `pod` that read `name` of `kind`.
    async fn reproject_pod(&self, pod: &Pod, kind: ObjectKind, name: &str) -> Result<()> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let lock = self.pod_lock(&uid);
        let _guard = lock.lock().await;
        // The pod may have been torn down while we waited for the lock.
        if !self.inner.pods.lock().expect("lock").contains_key(&uid)
            || self.current_pod(pod).is_none()
        {
            return Ok(());
        }
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(vk) = Kind::of(v) else { continue };
            let reads = projection::references(v).is_ok_and(|r| match kind {
                ObjectKind::Secret => r.secrets.contains(name),
                ObjectKind::ConfigMap => r.config_maps.contains(name),
            });
            if !reads {
                continue;
            }
            match self.set_up_api_volume(pod, v, vk).await {
                Ok(_) => {
                    if let Some(e) = self.inner.pods.lock().expect("lock").get_mut(&uid) {
                        e.errors.remove(&v.name);
                    }
                }
                Err(e) => {
                    // Content stays as it was; the error is reported, not acted on.
                    tracing::warn!(volume = %v.name, error = %e, "re-projecting failed");
                    if let Some(entry) = self.inner.pods.lock().expect("lock").get_mut(&uid) {
                        entry.errors.insert(v.name.clone(), e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes a changed Secret or ConfigMap into the cache and re-projects every volume
    /// that reads it, all pods at once. Returns how many pods were re-projected.
    pub async fn object_changed(&self, kind: ObjectKind, obj: CachedObject) -> usize {
        let (ns, name) = match &obj {
            CachedObject::Secret(s) => key_of(s),
            CachedObject::ConfigMap(c) => key_of(c),
        };
        self.cache_object(kind, obj);
        let pods = self.affected_pods(kind, &ns, &name);
        let n = pods.len();
        let jobs = pods.iter().map(|p| self.reproject_pod(p, kind, &name));
        futures::future::join_all(jobs).await;
        n
    }

    /// Re-syncs the pods holding a token that needs a refresh; returns when the next
    /// refresh is due.
    pub async fn refresh_tokens(&self) -> Option<SystemTime> {
        let now = (self.inner.cfg.clock)();
        let due: BTreeSet<String> = self
            .inner
            .tokens
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, t)| token::requires_refresh(t, now, token::jitter_secs()))
            .map(|((uid, _), _)| uid.clone())
            .collect();
        let pods: Vec<Pod> = {
            let map = self.inner.pods.lock().expect("lock");
            due.iter()
                .filter_map(|u| map.get(u).and_then(|e| e.pod.clone()))
                .collect()
        };
        for pod in pods {
            if let Err(e) = self.sync_pod(&pod).await {
                tracing::warn!(error = %e, "token refresh sync failed");
            }
        }
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .values()
            .map(token::refresh_at)
            .min()
    }

    /// The mounts and devices to hand the runtime for one container of a synced pod.
    pub fn container_volumes(&self, pod_uid: &str, container: &str) -> Result<ContainerVolumes> {
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
        handoff::container_volumes(&self.inner.cfg.state_dir, &pod, container, &prepared)
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

    /// Runs until `shutdown` resolves: lists, reconciles (this is also the restart path),
    /// then follows the watches.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let store = self.inner.store.clone();
        let secrets = store.list::<Secret>(None, None).await.map_err(store_err)?;
        let cms = store
            .list::<ConfigMap>(None, None)
            .await
            .map_err(store_err)?;
        for s in secrets.items {
            self.cache_object(ObjectKind::Secret, CachedObject::Secret(s));
        }
        for c in cms.items {
            self.cache_object(ObjectKind::ConfigMap, CachedObject::ConfigMap(c));
        }
        let pods = store.list::<Pod>(None, None).await.map_err(store_err)?;
        for p in &pods.items {
            self.observe_pod(p, false);
        }
        let pvcs_rv = store
            .list::<PersistentVolumeClaim>(None, None)
            .await
            .map_err(store_err)?
            .resource_version;
        let pvs_rv = store
            .list::<PersistentVolume>(None, None)
            .await
            .map_err(store_err)?
            .resource_version;
        if let Err(e) = self.reconcile(&pods.items).await {
            tracing::warn!(error = %e, "initial reconcile had errors; retrying them");
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(watch_loop::<S, Secret>(
            store.clone(),
            secrets.resource_version,
            tx.clone(),
            Msg::Secret,
        ));
        tasks.spawn(watch_loop::<S, ConfigMap>(
            store.clone(),
            cms.resource_version,
            tx.clone(),
            Msg::ConfigMap,
        ));
        tasks.spawn(watch_loop::<S, Pod>(
            store.clone(),
            pods.resource_version,
            tx.clone(),
            |e| Msg::Pod(Box::new(e)),
        ));
        tasks.spawn(watch_loop::<S, PersistentVolumeClaim>(
            store.clone(),
            pvcs_rv,
            tx.clone(),
            Msg::Claim,
        ));
        tasks.spawn(watch_loop::<S, PersistentVolume>(
            store.clone(),
            pvs_rv,
            tx.clone(),
            Msg::Volume,
        ));
        drop(tx);

        let me = self.clone();
        tasks.spawn(async move {
            loop {
                let next = me.refresh_tokens().await;
                let wait = next
                    .and_then(|t| t.duration_since((me.inner.cfg.clock)()).ok())
                    .unwrap_or(Duration::from_secs(3600))
                    .max(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = me.inner.token_wake.notified() => {}
                }
            }
        });

        let periods = *self.inner.periods.lock().expect("lock");
        let mut retry =
            tokio::time::interval_at(tokio::time::Instant::now() + periods.retry, periods.retry);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + periods.resync, periods.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                }
                _ = resync.tick() => {
                    // A full level-triggered pass now and then, for anything a watch
                    // gap could have hidden (a re-listed watch replays no deletions).
                    let me = self.clone();
                    tokio::spawn(async move {
                        match me.inner.store.list::<Pod>(None, None).await {
                            Ok(list) => {
                                me.forget_unlisted(&list.items, list.resource_version);
                                let _ = me.reconcile(&list.items).await;
                            }
                            Err(e) => tracing::warn!(error = %e, "listing pods"),
                        }
                    });
                }
                _ = retry.tick() => {
                    // Level-triggered retry of pods whose volumes failed (claim not bound
                    // yet, secret missing, driver down).
                    // A torn-down pod is no longer here; one torn down after this
                    // snapshot is caught by sync_pod's check under the pod's lock.
                    let failed: Vec<Pod> = self.inner.pods.lock().expect("lock").values()
                        .filter(|e| !e.errors.is_empty())
                        .filter_map(|e| e.pod.clone())
                        .collect();
                    for pod in failed {
                        let me = self.clone();
                        tokio::spawn(async move { let _ = me.sync_pod(&pod).await; });
                    }
                }
            }
        }
        tasks.abort_all();
        Ok(())
    }

    fn handle(&self, msg: Msg) {
        let me = self.clone();
        match msg {
            Msg::Secret(ev) => {
                let (WatchEvent::Added(s) | WatchEvent::Modified(s)) = ev else {
                    return;
                };
                tokio::spawn(async move {
                    me.object_changed(ObjectKind::Secret, CachedObject::Secret(s))
                        .await;
                });
            }
            Msg::ConfigMap(ev) => {
                let (WatchEvent::Added(c) | WatchEvent::Modified(c)) = ev else {
                    return;
                };
                tokio::spawn(async move {
                    me.object_changed(ObjectKind::ConfigMap, CachedObject::ConfigMap(c))
                        .await;
                });
            }
            Msg::Pod(ev) => {
                let (pod, gone) = match *ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => (p, false),
                    WatchEvent::Deleted(p) => (p, true),
                };
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                // A sync of a desired pod may be running (its first, not known yet, no
                // directory yet): the tear-down queues behind it and undoes it.
                let known = self.inner.pods.lock().expect("lock").contains_key(&uid)
                    || self
                        .inner
                        .desired
                        .lock()
                        .expect("lock")
                        .pods
                        .contains_key(&uid);
                // Recorded here, in watch order, before any task runs: a sync queued
                // earlier finds the pod gone.
                let want = self.observe_pod(&pod, gone);
                if want {
                    tokio::spawn(async move {
                        let _ = me.sync_pod(&pod).await;
                    });
                } else if known || layout::pod_dir(&me.inner.cfg.state_dir, &uid).exists() {
                    tokio::spawn(async move {
                        if let Err(e) = me.tear_down_pod(&uid).await {
                            tracing::warn!(pod_uid = %uid, error = %e, "tear down failed");
                        }
                    });
                }
            }
            // A claim created, bound, resized (NodeResizePending) or a volume appearing:
            // every pod here that uses the claim is re-synced now, not at the next retry.
            Msg::Claim(ev) => {
                let (WatchEvent::Added(pvc) | WatchEvent::Modified(pvc)) = ev else {
                    return;
                };
                let ns = pvc.metadata.namespace.clone().unwrap_or_default();
                let name = pvc.metadata.name.clone().unwrap_or_default();
                self.resync_claim_users(&ns, &name);
            }
            Msg::Volume(ev) => {
                let (WatchEvent::Added(pv) | WatchEvent::Modified(pv)) = ev else {
                    return;
                };
                let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
                    return;
                };
                self.resync_claim_users(
                    claim.namespace.as_deref().unwrap_or_default(),
                    claim.name.as_deref().unwrap_or_default(),
                );
            }
        }
    }
}

/// A Secret or ConfigMap for the cache.
#[derive(Debug, Clone)]
pub enum CachedObject {
    Secret(Secret),
    ConfigMap(ConfigMap),
}

// Messages live for one channel hop; boxing each would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Secret(WatchEvent<Secret>),
    ConfigMap(WatchEvent<ConfigMap>),
    Pod(Box<WatchEvent<Pod>>),
    Claim(WatchEvent<PersistentVolumeClaim>),
    Volume(WatchEvent<PersistentVolume>),
}

/// Follows one kind's watch forever; on a compacted history (Gone) or a broken stream it
/// lists again and replays the list as Modified events, so nothing stays missed.
async fn watch_loop<S: Store, K: Object>(
    store: S,
    mut rv: u64,
    tx: mpsc::UnboundedSender<Msg>,
    wrap: fn(WatchEvent<K>) -> Msg,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.watch::<K>(None, rv).await {
            Ok(mut stream) => {
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            rv = rv.max(rv_of(ev.object()));
                            backoff = Duration::from_millis(100);
                            if tx.send(wrap(ev)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(kind = K::KIND, error = %e, "watch broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(kind = K::KIND, error = %e, "watch failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        match store.list::<K>(None, None).await {
            Ok(list) => {
                rv = list.resource_version;
                for obj in list.items {
                    if tx.send(wrap(WatchEvent::Modified(obj))).is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(kind = K::KIND, error = %e, "re-list failed"),
        }
    }
}

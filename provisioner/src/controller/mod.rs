//! The control loops against any [`Store`]: informers (list + watch) feed one cache and
//! enqueue keys; one work queue per loop; workers apply the pure decisions of the other
//! modules. Level-triggered: every sync reads the current state, so a lost wake-up costs
//! nothing but time, and a restart re-lists and re-syncs everything.

mod binder;
pub mod cache;
mod capacity;
mod informer;
mod namespace;
mod provision;
pub mod queue;
mod secrets;
mod snapshot;
mod statefulset;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_store::Store;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::binder::{Event, EventType};
use crate::error::{Error, Result, chain};
use crate::meta;
use crate::metrics::Metrics;
use crate::provision::csi::CsiClient;
use crate::provision::request::DriverInfo;
use crate::provision::retry::Backoff;
use cache::Cache;
pub use capacity::CapacityConfig;
use queue::WorkQueue;
use status::Found;
pub use status::LoopStatus;

/// Tunables; the defaults are external-provisioner's where it has one.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node (`--node-id`): the topology offered to the driver and the standalone
    /// placement target for pods without a node.
    pub node_id: String,
    /// fs_type when the class names none (`--default-fstype`).
    pub default_fs_type: String,
    /// Concurrent CreateVolume/DeleteVolume calls (`--worker-threads`).
    pub provision_workers: usize,
    pub retry_start: Duration,
    pub retry_max: Duration,
    /// Per CSI call (`--timeout`).
    pub csi_timeout: Duration,
    /// How long workers get to finish the item they hold on shutdown.
    pub shutdown_grace: Duration,
    /// Every object is synced again this often (`--resync-period`), as the
    /// controller-manager's PV binder resyncs every 15 s: the safety net for a wake-up
    /// between objects that no watch event carries. Zero turns it off.
    pub resync: Duration,
    /// Per-node mode (external-provisioner's `--node-deployment`), for a cluster whose
    /// kube-controller-manager binds and collects: only provisioning (claims whose selected
    /// node is `node_id`), deletion and expansion (volumes pinned to `node_id`) run.
    pub per_node: bool,
    /// Per-node mode only: publish CSIStorageCapacity objects for this node
    /// (`--enable-capacity`); None publishes nothing.
    pub capacity: Option<CapacityConfig>,
}

impl Config {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            default_fs_type: "ext4".into(),
            provision_workers: 16,
            retry_start: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            csi_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            resync: Duration::from_secs(15),
            per_node: false,
            capacity: None,
        }
    }
}

pub(crate) struct Queues {
    pub claims: Arc<WorkQueue>,
    pub volumes: Arc<WorkQueue>,
    pub provision: Arc<WorkQueue>,
    pub delete: Arc<WorkQueue>,
    pub expand: Arc<WorkQueue>,
    pub sets: Arc<WorkQueue>,
    pub gc: Arc<WorkQueue>,
    pub placement: Arc<WorkQueue>,
    pub namespaces: Arc<WorkQueue>,
    pub capacity: Arc<WorkQueue>,
    pub snapshots: Arc<WorkQueue>,
    pub contents: Arc<WorkQueue>,
}

impl Queues {
    fn all(&self) -> [&Arc<WorkQueue>; 12] {
        [
            &self.claims,
            &self.volumes,
            &self.provision,
            &self.delete,
            &self.expand,
            &self.sets,
            &self.gc,
            &self.placement,
            &self.namespaces,
            &self.capacity,
            &self.snapshots,
            &self.contents,
        ]
    }
}

/// What a sync asks of its queue.
pub(crate) enum Requeue {
    Done,
    /// Try again after the key's next backoff delay.
    Backoff,
    /// Try again after this long (e.g. a slower infeasible retry).
    After(Duration),
}

pub(crate) struct Controller<S: Store> {
    pub store: S,
    pub csi: CsiClient,
    /// The driver once it has answered, and the loops' liveness.
    pub status: Arc<LoopStatus>,
    pub metrics: Metrics,
    pub config: Config,
    pub cache: Mutex<Cache>,
    pub queues: Queues,
    backoff: Mutex<HashMap<(&'static str, String), Backoff>>,
    /// Claims not to provision before the given instant (after a failure).
    pub provision_holds: Mutex<HashMap<String, std::time::Instant>>,
}

impl<S: Store> Controller<S> {
    fn new(store: S, csi: CsiClient, config: Config) -> Self {
        Controller {
            store,
            csi,
            status: Arc::default(),
            metrics: Metrics::default(),
            config,
            cache: Mutex::new(Cache::default()),
            queues: Queues {
                claims: WorkQueue::new("claims"),
                volumes: WorkQueue::new("volumes"),
                provision: WorkQueue::new("provision"),
                delete: WorkQueue::new("delete"),
                expand: WorkQueue::new("expand"),
                sets: WorkQueue::new("statefulsets"),
                gc: WorkQueue::new("gc"),
                placement: WorkQueue::new("placement"),
                namespaces: WorkQueue::new("namespaces"),
                capacity: WorkQueue::new("capacity"),
                snapshots: WorkQueue::new("snapshots"),
                contents: WorkQueue::new("snapshotcontents"),
            },
            backoff: Mutex::default(),
            provision_holds: Mutex::default(),
        }
    }

    /// The driver's answers. The loops that need them start only once it has answered,
    /// so the error is a safety net, not a state they wait in.
    pub(crate) fn found(&self) -> Result<Found> {
        self.status.found().ok_or(Error::DriverUnknown)
    }

    pub fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn record(&self, e: &Event) {
        let t = match e.type_ {
            EventType::Normal => strata_store::EventType::Normal,
            EventType::Warning => strata_store::EventType::Warning,
        };
        if let Err(err) = self
            .store
            .record_event(&e.involved, t, e.reason, &e.message)
            .await
        {
            // Events are advisory; a failure to record one never fails the sync.
            warn!(reason = e.reason, error = %chain(&err), "recording event failed");
        }
    }

    pub(crate) fn next_backoff(&self, queue: &'static str, key: &str) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((queue, key.to_string()))
            .or_insert_with(|| Backoff::new(self.config.retry_start, self.config.retry_max))
            .next_delay()
    }

    fn forget(&self, queue: &'static str, key: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(queue, key.to_string()));
    }
}

/// A running set of loops; [`Running::shutdown`] stops them gracefully.
pub struct Running {
    stop: watch::Sender<bool>,
    queues: Vec<Arc<WorkQueue>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// Workers that need the driver, started by `finder` once it answers.
    driver_workers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    finder: tokio::task::JoinHandle<()>,
    informers: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
    status: Arc<LoopStatus>,
    metrics: Metrics,
}

impl Running {
    /// Whether the driver has answered and the loops are alive.
    pub fn status(&self) -> &Arc<LoopStatus> {
        &self.status
    }

    /// The driver, waiting until it answers.
    pub async fn driver(&self) -> DriverInfo {
        self.status.driver_found().await
    }

    /// Registers the loops' metrics (provisioning outcomes, queue depths, driver and
    /// loop state) in `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics
            .register(registry, Arc::clone(&self.status), self.queues.clone());
    }

    /// Stops taking work, lets every worker finish the item it holds (an in-flight CSI call
    /// completes or times out), then stops the informers. What was not done is redone after a
    /// restart: CreateVolume is idempotent by name.
    pub async fn shutdown(self) {
        self.status.stopping();
        // Still waiting for the driver: stop waiting (no worker of its own started yet).
        self.finder.abort();
        let _ = self.finder.await;
        for q in &self.queues {
            q.shut_down();
        }
        let mut workers = self.workers;
        workers.append(
            &mut self
                .driver_workers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let all = futures::future::join_all(workers);
        if tokio::time::timeout(self.grace, all).await.is_err() {
            warn!("workers did not finish within the shutdown grace period");
        }
        let _ = self.stop.send(true);
        for h in self.informers {
            h.abort();
            let _ = h.await;
        }
        info!("control loops stopped");
    }
}

/// Asks the driver who it is, retrying until it answers (it may start after us).
pub async fn wait_for_driver(csi: &CsiClient, deadline: Option<Duration>) -> Result<DriverInfo> {
    let start = std::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut reports = WaitReports::new(start, Duration::from_secs(30));
    loop {
        match csi.driver_info().await {
            Ok(info) => return Ok(info),
            Err(e) => {
                if deadline.is_some_and(|d| start.elapsed() >= d) {
                    return Err(Error::Csi(e));
                }
                match reports.due(std::time::Instant::now()) {
                    Some(Report::First) => info!(error = %e, "waiting for the CSI driver"),
                    Some(Report::Again) => {
                        warn!(waited_s = start.elapsed().as_secs(), error = %e, "still waiting for the CSI driver")
                    }
                    None => debug!(error = %e, "driver not answering yet"),
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Report {
    First,
    Again,
}

/// When a provisioner waiting for its driver says so: at the first failed attempt, then
/// every `every`, so one started before the driver (or against a wrong socket) is never
/// silent while its loops do not run.
struct WaitReports {
    next: std::time::Instant,
    every: Duration,
    first: bool,
}

impl WaitReports {
    fn new(start: std::time::Instant, every: Duration) -> Self {
        WaitReports {
            next: start,
            every,
            first: true,
        }
    }

    fn due(&mut self, now: std::time::Instant) -> Option<Report> {
        if now < self.next {
            return None;
        }
        self.next = now + self.every;
        let first = std::mem::replace(&mut self.first, false);
        Some(if first { Report::First } else { Report::Again })
    }
}

/// Starts every loop against `store`, talking to the driver at `csi`. Returns once the
/// informers have listed: the binder, StatefulSet, placement and GC loops run at once;
/// provisioning, deletion and expansion start when the driver answers (it may start
/// after us), which is logged, and until then their work waits in their queues.
pub async fn start<S: Store>(store: S, csi: CsiClient, config: Config) -> Result<Running> {
    let ctl = Arc::new(Controller::new(store, csi, config.clone()));
    let status = Arc::clone(&ctl.status);
    let (stop, stop_rx) = watch::channel(false);
    let mut informers = informer::start_all(&ctl, stop_rx.clone()).await?;
    if let Some(cap) = config.capacity.as_ref().filter(|_| config.per_node) {
        informers.push(capacity::spawn_poll(&ctl, cap.poll, stop_rx.clone()));
    }
    if !config.resync.is_zero() {
        informers.push(spawn_resync(&ctl, config.resync, stop_rx));
    }
    for h in &informers {
        status.track("informer", h.abort_handle());
    }

    let mut workers = Vec::new();
    let q = &ctl.queues;
    // In a cluster the binder, StatefulSet, placement, GC and namespace loops are the
    // controller-manager's and the scheduler's; their queues then have no workers.
    if !config.per_node {
        // syncClaim and syncVolume are not re-entrant: one worker each, which takes every
        // key queued at once and writes their plans in one store call.
        workers.push(spawn_batch_worker(
            &ctl,
            &q.claims,
            BINDER_BATCH,
            |c, keys| Box::pin(async move { c.sync_claims(keys).await }),
        ));
        workers.push(spawn_batch_worker(
            &ctl,
            &q.volumes,
            BINDER_BATCH,
            |c, keys| Box::pin(async move { c.sync_volumes(keys).await }),
        ));
        workers.push(spawn_worker(&ctl, &q.sets, |c, k| {
            Box::pin(async move { c.sync_set(&k).await })
        }));
        workers.push(spawn_worker(&ctl, &q.gc, |c, k| {
            Box::pin(async move { c.collect(&k).await })
        }));
        workers.push(spawn_worker(&ctl, &q.placement, |c, k| {
            Box::pin(async move { c.place(&k).await })
        }));
        workers.push(spawn_worker(&ctl, &q.namespaces, |c, k| {
            Box::pin(async move { c.sync_namespace(&k).await })
        }));
    }

    let driver_workers = Arc::new(Mutex::new(Vec::new()));
    let finder = tokio::spawn({
        let ctl = Arc::clone(&ctl);
        let driver_workers = Arc::clone(&driver_workers);
        async move {
            let info = match wait_for_driver(&ctl.csi, None).await {
                Ok(info) => info,
                // Without a deadline it only returns with an answer; were that to change,
                // say so rather than wait in silence.
                Err(e) => {
                    warn!(error = %chain(&e), "gave up waiting for the CSI driver");
                    return;
                }
            };
            info!(driver = %info.name, topology = info.accessibility_constraints, expand = info.expand_volume, "driver found: provisioning, deletion and expansion start");
            let identity = format!(
                "{}-{}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0),
                std::process::id(),
                info.name
            );
            ctl.status.set_driver(Found { info, identity });
            let mut started = Vec::new();
            let q = &ctl.queues;
            for _ in 0..ctl.config.provision_workers.max(1) {
                started.push(spawn_worker(&ctl, &q.provision, |c, k| {
                    Box::pin(async move { c.provision(&k).await })
                }));
                started.push(spawn_worker(&ctl, &q.delete, |c, k| {
                    Box::pin(async move { c.delete(&k).await })
                }));
            }
            started.push(spawn_worker(&ctl, &q.expand, |c, k| {
                Box::pin(async move { c.expand(&k).await })
            }));
            if ctl.config.per_node && ctl.config.capacity.is_some() {
                started.push(spawn_worker(&ctl, &q.capacity, |c, _| {
                    Box::pin(async move { c.sync_capacity().await })
                }));
            }
            // The snapshot-controller and csi-snapshotter are a cluster's own in per-node
            // mode; their queues then stay empty.
            if !ctl.config.per_node {
                started.push(spawn_worker(&ctl, &q.snapshots, |c, k| {
                    Box::pin(async move { c.sync_snapshot(&k).await })
                }));
                for _ in 0..ctl.config.provision_workers.clamp(1, 4) {
                    started.push(spawn_worker(&ctl, &q.contents, |c, k| {
                        Box::pin(async move { c.sync_content(&k).await })
                    }));
                }
            }
            driver_workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(started);
        }
    });
    Ok(Running {
        stop,
        queues: q.all().into_iter().cloned().collect(),
        workers,
        driver_workers,
        finder,
        informers,
        grace: config.shutdown_grace,
        metrics: ctl.metrics.clone(),
        status,
    })
}

impl<S: Store> Controller<S> {
    /// Queues every cached object for the loops that act on it. Level-triggered syncs make
    /// this cheap when nothing changed: each decides from the cache and writes nothing.
    pub(crate) fn resync_all(&self) {
        let c = self.cache();
        let q = &self.queues;
        for k in c.claims.keys() {
            q.claims.add(k.clone());
            q.provision.add(k.clone());
            q.expand.add(k.clone());
        }
        for pv in c.volumes.iter() {
            let name = meta::name(&pv.metadata);
            q.volumes.add(name.to_string());
            q.delete.add(name.to_string());
        }
        for k in c.sets.keys() {
            q.sets.add(k.clone());
        }
        for k in c.pods.keys() {
            q.placement.add(k.clone());
        }
        for ns in &c.terminating_namespaces {
            q.namespaces.add(ns.clone());
        }
        for k in c.snapshots.keys() {
            q.snapshots.add(k.clone());
        }
        for k in c.contents.keys() {
            q.contents.add(k.clone());
        }
    }
}

fn spawn_resync<S: Store>(
    ctl: &Arc<Controller<S>>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ctl = Arc::clone(ctl);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            debug!("periodic resync");
            ctl.resync_all();
        }
    })
}

/// Keys the binder's workers take at once, at most: one store transaction's worth of
/// plans (a bind is four writes), small enough that other writers wait little for it.
const BINDER_BATCH: usize = 256;

type SyncFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Requeue>> + Send>>;
type BatchFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(String, Result<Requeue>)>> + Send>>;

fn spawn_worker<S: Store>(
    ctl: &Arc<Controller<S>>,
    queue: &Arc<WorkQueue>,
    sync: fn(Arc<Controller<S>>, String) -> SyncFuture,
) -> tokio::task::JoinHandle<()> {
    let (ctl, queue) = (Arc::clone(ctl), Arc::clone(queue));
    spawn_tracked(&ctl.status.clone(), queue.name, async move {
        while let Some(key) = queue.next().await {
            let span = tracing::debug_span!("sync", queue = queue.name, key = %key);
            let result =
                tracing::Instrument::instrument(sync(Arc::clone(&ctl), key.clone()), span).await;
            finish(&ctl, &queue, &key, result);
        }
    })
}

/// Spawns a queue's worker loop, tracked by the health status under the queue's name.
fn spawn_tracked(
    status: &LoopStatus,
    name: &'static str,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let handle = tokio::spawn(work);
    status.track(name, handle.abort_handle());
    handle
}

/// A worker that takes up to `max` queued keys at once and syncs them together; each key
/// then gets its own result, handled as [`spawn_worker`] handles one.
fn spawn_batch_worker<S: Store>(
    ctl: &Arc<Controller<S>>,
    queue: &Arc<WorkQueue>,
    max: usize,
    sync: fn(Arc<Controller<S>>, Vec<String>) -> BatchFuture,
) -> tokio::task::JoinHandle<()> {
    let (ctl, queue) = (Arc::clone(ctl), Arc::clone(queue));
    spawn_tracked(&ctl.status.clone(), queue.name, async move {
        while let Some(keys) = queue.next_batch(max).await {
            let span = tracing::debug_span!("sync", queue = queue.name, keys = keys.len());
            let mut held: std::collections::HashSet<String> = keys.iter().cloned().collect();
            let results = tracing::Instrument::instrument(sync(Arc::clone(&ctl), keys), span).await;
            for (key, result) in results {
                if held.remove(&key) {
                    finish(&ctl, &queue, &key, result);
                }
            }
            // A key the sync gave no result for (it must not happen) is not left held.
            for key in held {
                queue.done(&key);
            }
        }
    })
}

/// What a worker does with a key's result, then the key is done.
fn finish<S: Store>(
    ctl: &Controller<S>,
    queue: &Arc<WorkQueue>,
    key: &str,
    result: Result<Requeue>,
) {
    match result {
        Ok(Requeue::Done) => ctl.forget(queue.name, key),
        Ok(Requeue::Backoff) => queue.add_after(key.to_string(), ctl.next_backoff(queue.name, key)),
        Ok(Requeue::After(d)) => queue.add_after(key.to_string(), d),
        Err(e) if e.is_conflict() => {
            // Someone wrote first; the write helpers put the stored version in the
            // cache, so sync again right away on fresh data.
            debug!(queue = queue.name, key = %key, "conflict, retrying");
            queue.add(key.to_string());
        }
        Err(e) => {
            warn!(queue = queue.name, key = %key, error = %chain(&e), "sync failed");
            queue.add_after(key.to_string(), ctl.next_backoff(queue.name, key));
        }
    }
    queue.done(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_the_driver_is_reported_at_once_then_periodically() {
        let t0 = std::time::Instant::now();
        let every = Duration::from_secs(30);
        let mut r = WaitReports::new(t0, every);
        assert_eq!(r.due(t0), Some(Report::First));
        assert_eq!(r.due(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.due(t0 + Duration::from_secs(29)), None);
        assert_eq!(r.due(t0 + every), Some(Report::Again));
        assert_eq!(r.due(t0 + every + Duration::from_secs(1)), None);
        assert_eq!(r.due(t0 + every * 3), Some(Report::Again));
    }

    #[tokio::test]
    async fn waiting_for_a_missing_driver_ends_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}/csi.sock", dir.path().display());
        let csi = CsiClient::new(&endpoint, Duration::from_secs(1)).unwrap();
        let r = wait_for_driver(&csi, Some(Duration::from_millis(200))).await;
        assert!(matches!(r, Err(Error::Csi(_))), "{r:?}");
    }
    use crate::binder::testutil::{claim, volume};
    use crate::k8s_openapi::api::core::v1::Pod;

    #[tokio::test]
    async fn resync_queues_every_cached_object_for_its_loops() {
        let dir = tempfile::tempdir().unwrap();
        let store = strata_store::EmbeddedStore::open(dir.path()).unwrap();
        let csi = CsiClient::new("unix:///nonexistent.sock", Duration::from_secs(1)).unwrap();
        let ctl = Controller::new(store, csi, Config::new("n"));
        {
            let mut c = ctl.cache();
            c.put_claim(claim("a", "1Gi", &["ReadWriteOnce"]));
            c.put_claim(claim("b", "1Gi", &["ReadWriteOnce"]));
            c.put_volume(volume("v", "1Gi", &["ReadWriteOnce"]));
            let mut pod = Pod::default();
            pod.metadata.name = Some("p".into());
            pod.metadata.namespace = Some("default".into());
            c.put_pod(pod);
        }
        assert!(ctl.queues.all().iter().all(|q| q.is_empty()));
        ctl.resync_all();
        let q = &ctl.queues;
        assert_eq!(
            (q.claims.len(), q.provision.len(), q.expand.len()),
            (2, 2, 2)
        );
        assert_eq!((q.volumes.len(), q.delete.len()), (1, 1));
        assert_eq!(q.placement.len(), 1);
        assert!(q.sets.is_empty() && q.gc.is_empty());
    }
}

//! The pod runner: the kubelet's container side for the pods placed on this node.
//!
//! One worker task per pod ([`pod::Worker`]) owns that pod's containers; this module
//! follows the Pod watch, hands each worker the newest copy of its pod, and on start
//! adopts what an earlier strata-node left in the runtime (running containers keep
//! running, leftovers of pods that are gone are removed). Containers run through the
//! `strata-runtime` helper binary, because libcontainer forks and must not run inside
//! this multi-threaded process.

mod backoff;
pub mod container;
mod env;
mod exit;
pub mod infra;
pub mod placement;
mod pod;
mod probe;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use strata_runtime::State;
use strata_store::k8s_openapi::api::core::v1::Pod;
use strata_store::{Store, WatchEvent, meta};
use strata_volumes::manager::VolumeManager;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use container::Engine;
pub use pod::NODE_SHUTDOWN;
use pod::{Shared, Worker};

use crate::layout;

/// Exit statuses recorded for runs stopped with the node: killed by SIGTERM, by SIGKILL.
const SIGTERM_EXIT: i32 = 128 + 15;
const SIGKILL_EXIT: i32 = 128 + 9;

/// Holds a deleted pod until its containers are stopped and its volumes torn down.
pub const FINALIZER: &str = "strata.io/pod-runner";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing pods")]
    List(#[source] strata_store::Error),
    #[error("becoming the subreaper of containers")]
    Subreaper(#[source] strata_runtime::Error),
}

pub struct Runner<S: Store> {
    shared: Arc<Shared<S>>,
}

/// Pods placed on this node, and pods placed nowhere yet: standalone, this node is the
/// only one, so its pod workers place them (see `placement`).
fn mine(pod: &Pod, node: &str) -> bool {
    meta::pod_node_name(pod).is_none_or(|n| n == node) && pod.metadata.uid.is_some()
}

fn uid_of(pod: &Pod) -> String {
    meta::uid(&pod.metadata).to_owned()
}

struct Workers<S: Store> {
    shared: Arc<Shared<S>>,
    senders: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    /// Pods finalized by their worker: a late event never starts them again.
    done: HashSet<String>,
    tasks: JoinSet<String>,
    stop: watch::Receiver<bool>,
}

impl<S: Store> Workers<S> {
    fn spawn(&mut self, pod: Pod, adopted: Vec<(String, Option<State>)>) {
        let uid = uid_of(&pod);
        let pod = Arc::new(pod);
        let (tx, rx) = watch::channel(Some(pod.clone()));
        self.senders.insert(uid.clone(), tx);
        let mut worker = Worker::new(self.shared.clone(), pod);
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            if !adopted.is_empty() {
                worker.adopt(adopted).await;
            }
            worker.run(rx, stop).await;
            uid
        });
    }

    fn event(&mut self, ev: WatchEvent<Pod>, node: &str) {
        match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                let uid = uid_of(&p);
                if let Some(tx) = self.senders.get(&uid) {
                    let _ = tx.send(Some(Arc::new(p)));
                } else if mine(&p, node) && !self.done.contains(&uid) {
                    self.spawn(p, Vec::new());
                }
            }
            WatchEvent::Deleted(p) => {
                if let Some(tx) = self.senders.get(&uid_of(&p)) {
                    let _ = tx.send(None);
                }
            }
        }
    }
}

impl<S: Store> Runner<S> {
    pub fn new(store: S, volumes: VolumeManager<S>, engine: Engine, node: String) -> Runner<S> {
        Runner {
            shared: Arc::new(Shared {
                store,
                volumes,
                engine,
                node,
            }),
        }
    }

    /// Runs until `shutdown` resolves. Containers keep running after it: the next
    /// strata-node adopts them.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        strata_runtime::become_subreaper().map_err(Error::Subreaper)?;
        let store = &self.shared.store;
        let node = self.shared.node.clone();
        let list = store.list::<Pod>(None, None).await.map_err(Error::List)?;
        let engine = self.shared.engine.clone();
        let inventory = tokio::task::spawn_blocking(move || engine.inventory())
            .await
            .expect("inventory task panicked")
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "listing the runtime's containers");
                Vec::new()
            });
        let mut by_pod: BTreeMap<String, Vec<(String, Option<State>)>> = BTreeMap::new();
        for (id, state) in inventory {
            if let Some((uid, _, _)) = layout::parse_container_id(&id) {
                by_pod.entry(uid.to_string()).or_default().push((id, state));
            }
        }
        let (stop_tx, stop) = watch::channel(false);
        let mut workers = Workers {
            shared: self.shared.clone(),
            senders: HashMap::new(),
            done: HashSet::new(),
            tasks: JoinSet::new(),
            stop,
        };
        for pod in list.items.iter().filter(|p| mine(p, &node)) {
            let adopted = by_pod.remove(&uid_of(pod)).unwrap_or_default();
            workers.spawn(pod.clone(), adopted);
        }
        self.remove_orphans(by_pod, &list.items).await;

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watch = JoinSet::new();
        watch.spawn(watch_pods(store.clone(), list.resource_version, tx));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                ev = rx.recv() => match ev {
                    Some(ev) => workers.event(ev, &node),
                    None => break,
                },
                Some(done) = workers.tasks.join_next(), if !workers.tasks.is_empty() => {
                    match done {
                        Ok(uid) => {
                            workers.senders.remove(&uid);
                            workers.done.insert(uid);
                        }
                        Err(e) => tracing::error!(error = %e, "a pod worker failed"),
                    }
                }
            }
        }
        // Every task is drained: workers stop where they are (their containers run on).
        watch.abort_all();
        let _ = stop_tx.send(true);
        while workers.tasks.join_next().await.is_some() {}
        while watch.join_next().await.is_some() {}
        Ok(())
    }

    /// Stops every container of the runner (TERM, then KILL once `grace` has passed) and
    /// removes them, leaving the pods in the store: for a node going down with its mounts
    /// (`--release-on-exit`). Call after `run` returned; the next start runs them again.
    pub async fn stop_all(&self, grace: std::time::Duration) {
        let engine = self.shared.engine.clone();
        let stopped = tokio::task::spawn_blocking(move || {
            let ours = |all: Vec<(String, Option<State>)>| -> Vec<(String, String, bool)> {
                all.into_iter()
                    .filter_map(|(id, st)| {
                        let (uid, _, _) = layout::parse_container_id(&id)?;
                        let running = st.is_some_and(|s| s.status == "running");
                        Some((uid.to_string(), id, running))
                    })
                    .collect()
            };
            let inventory = || engine.inventory().map(ours).unwrap_or_default();
            let mut stopped = HashMap::new();
            for (_, id, running) in inventory() {
                if running {
                    if let Err(e) = engine.signal(&id, "TERM") {
                        tracing::debug!(id, error = %e, "TERM");
                    }
                    stopped.insert(id, SIGTERM_EXIT);
                }
            }
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline && inventory().iter().any(|c| c.2) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            for (uid, id, running) in inventory() {
                // Still running after the grace period: removing it kills it.
                if running {
                    stopped.insert(id.clone(), SIGKILL_EXIT);
                }
                match engine.remove(&uid, &id) {
                    Ok(()) => tracing::info!(id, "container stopped and removed"),
                    Err(e) => tracing::warn!(id, error = %e, "removing a container on exit"),
                }
            }
            // The pods' namespaces go with their containers; the next start makes new ones.
            let infras: Vec<infra::Infra> = infra::all(&engine.state_dir)
                .into_iter()
                .map(|(uid, i)| {
                    tracing::info!(
                        pod_uid = uid,
                        pid = i.pid,
                        "stopping the pod's infra process"
                    );
                    i
                })
                .collect();
            infra::stop_all(&infras);
            stopped
        })
        .await
        .expect("stopping containers panicked");
        self.record_stopped(&stopped).await;
    }

    /// Writes the runs stopped with the node into their pods' statuses (terminated, not
    /// ready), so that nothing reads a stopped run as running while the node is down or
    /// before the next start has written its own status: `volctl exec` would otherwise
    /// pick a container that is gone. `stopped` maps container ids to the exit status
    /// their signal gives. The next start runs them again (see [`pod::NODE_SHUTDOWN`]).
    async fn record_stopped(&self, stopped: &HashMap<String, i32>) {
        if stopped.is_empty() {
            return;
        }
        let store = &self.shared.store;
        let pods = match store.list::<Pod>(None, None).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing pods to record their stopped containers");
                return;
            }
        };
        let mut batches = Vec::new();
        for mut pod in pods.into_iter().filter(|p| mine(p, &self.shared.node)) {
            if !pod::mark_stopped(&mut pod, stopped) {
                continue;
            }
            let mut b = strata_store::Batch::new();
            if b.update_status(&pod).is_ok() {
                batches.push(b);
            }
        }
        let n = batches.len();
        match store.write_batches(batches).await {
            Ok(outcomes) => {
                for e in outcomes.into_iter().filter_map(|o| o.failed) {
                    tracing::warn!(error = %e.1, "recording a pod's stopped containers");
                }
                tracing::info!(pods = n, "recorded the containers stopped with the node");
            }
            Err(e) => tracing::warn!(error = %e, "recording the containers stopped with the node"),
        }
    }

    /// Containers and rootfs of pods no longer placed here or no longer in the store
    /// (deleted while strata-node was down): removed; their volumes go with the volume
    /// manager's reconcile.
    async fn remove_orphans(
        &self,
        orphans: BTreeMap<String, Vec<(String, Option<State>)>>,
        pods: &[Pod],
    ) {
        let known: HashSet<String> = pods.iter().map(uid_of).collect();
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || {
            for (uid, ids) in orphans {
                for (id, _) in ids {
                    tracing::info!(id, "removing the container of a pod that is gone");
                    if let Err(e) = engine.remove(&uid, &id) {
                        tracing::warn!(id, error = %e, "removing an orphaned container");
                    }
                }
            }
            // Logs and bundles of pods the store no longer has.
            let state = engine.state_dir.clone();
            if let Ok(entries) = std::fs::read_dir(layout::runner_dir(&state)) {
                for e in entries.flatten() {
                    let uid = e.file_name().to_string_lossy().into_owned();
                    if !known.contains(&uid) {
                        if let Some(i) = infra::find(&state, &uid) {
                            infra::stop(&i);
                        }
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            if let Ok(entries) = std::fs::read_dir(layout::logs_dir(&state)) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let uid = name.rsplit('_').next().unwrap_or_default();
                    if !known.contains(uid) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        })
        .await
        .expect("orphan removal panicked");
    }
}

/// Follows the Pod watch; after a broken or compacted watch it lists again and replays
/// the list (and a deletion for every pod it no longer has).
async fn watch_pods<S: Store>(
    store: S,
    mut rv: u64,
    tx: tokio::sync::mpsc::UnboundedSender<WatchEvent<Pod>>,
) {
    // Uids only: a deletion found by a re-list needs nothing else of the pod.
    let mut seen: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.watch::<Pod>(None, rv).await {
            Ok(mut stream) => {
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            let p = ev.object();
                            rv = rv.max(meta::resource_version(&p.metadata));
                            match &ev {
                                WatchEvent::Deleted(p) => {
                                    seen.remove(&uid_of(p));
                                }
                                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                                    seen.insert(uid_of(p));
                                }
                            }
                            backoff = Duration::from_millis(100);
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "pod watch broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        match store.list::<Pod>(None, None).await {
            Ok(list) => {
                rv = list.resource_version;
                let listed: HashSet<String> = list.items.iter().map(uid_of).collect();
                let gone: Vec<String> = seen.difference(&listed).cloned().collect();
                for uid in gone {
                    seen.remove(&uid);
                    let mut p = Pod::default();
                    p.metadata.uid = Some(uid);
                    if tx.send(WatchEvent::Deleted(p)).is_err() {
                        return;
                    }
                }
                for p in list.items {
                    seen.insert(uid_of(&p));
                    if tx.send(WatchEvent::Modified(p)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "re-listing pods"),
        }
    }
}

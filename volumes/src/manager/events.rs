//! The run loop: lists, reconciles, then follows one watch each on Secrets, ConfigMaps,
//! Pods, PVCs and PVs, retries failed pods and does a full reconcile now and then.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use strata_store::k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use strata_store::meta;
use strata_store::{Object, Store, WatchEvent};
use tokio::sync::mpsc;

use super::{CachedObject, ObjectKind, VolumeManager, store_err};
use crate::error::Result;
use crate::layout;

impl<S: Store> VolumeManager<S> {
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
        let mut loops = tokio::task::JoinSet::new();
        loops.spawn(watch_loop::<S, Secret>(
            store.clone(),
            secrets.resource_version,
            tx.clone(),
            Msg::Secret,
        ));
        loops.spawn(watch_loop::<S, ConfigMap>(
            store.clone(),
            cms.resource_version,
            tx.clone(),
            Msg::ConfigMap,
        ));
        loops.spawn(watch_loop::<S, Pod>(
            store.clone(),
            pods.resource_version,
            tx.clone(),
            |e| Msg::Pod(Box::new(e)),
        ));
        loops.spawn(watch_loop::<S, PersistentVolumeClaim>(
            store.clone(),
            pvcs_rv,
            tx.clone(),
            Msg::Claim,
        ));
        loops.spawn(watch_loop::<S, PersistentVolume>(
            store.clone(),
            pvs_rv,
            tx.clone(),
            Msg::Volume,
        ));
        drop(tx);

        let me = self.clone();
        loops.spawn(async move {
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
                    self.spawn_tracked("resync every pod".into(), async move {
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
                        let what = format!("retry pod {}", meta::key(&pod.metadata));
                        self.spawn_tracked(what, async move { let _ = me.set_up_pod(&pod).await; });
                    }
                }
            }
        }
        // The loops only wait, forward and start tracked work, which runs on by itself.
        loops.abort_all();
        while loops.join_next().await.is_some() {}
        let left = self.inner.tasks.drain(periods.drain).await;
        if left.is_empty() {
            tracing::debug!("no volume work left in flight");
        } else {
            tracing::warn!(
                abandoned = ?left,
                timeout = ?periods.drain,
                "stopping with volume work still in flight"
            );
        }
        Ok(())
    }

    fn handle(&self, msg: Msg) {
        let me = self.clone();
        match msg {
            Msg::Secret(ev) => {
                let (WatchEvent::Added(s) | WatchEvent::Modified(s)) = ev else {
                    return;
                };
                let what = format!("Secret {} changed", meta::key(&s.metadata));
                self.spawn_tracked(what, async move {
                    me.object_changed(ObjectKind::Secret, CachedObject::Secret(s))
                        .await;
                });
            }
            Msg::ConfigMap(ev) => {
                let (WatchEvent::Added(c) | WatchEvent::Modified(c)) = ev else {
                    return;
                };
                let what = format!("ConfigMap {} changed", meta::key(&c.metadata));
                self.spawn_tracked(what, async move {
                    me.object_changed(ObjectKind::ConfigMap, CachedObject::ConfigMap(c))
                        .await;
                });
            }
            Msg::Pod(ev) => {
                let (pod, gone) = match *ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => (p, false),
                    WatchEvent::Deleted(p) => (p, true),
                };
                let uid = meta::uid(&pod.metadata).to_owned();
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
                    let what = format!("set up pod {}", meta::key(&pod.metadata));
                    self.spawn_tracked(what, async move {
                        let _ = me.set_up_pod(&pod).await;
                    });
                } else if known || layout::pod_dir(&me.inner.cfg.state_dir, &uid).exists() {
                    let what = format!("tear down pod {}", meta::key(&pod.metadata));
                    self.spawn_tracked(what, async move {
                        if let Err(e) = me.tear_down_now(&uid, super::pod::Keep::Nothing).await {
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
                let ns = meta::namespace(&pvc.metadata).to_owned();
                let name = meta::name(&pvc.metadata).to_owned();
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
                out.insert(meta::uid(&p.metadata).to_owned(), p.clone());
            }
        }
        for e in self.inner.pods.lock().expect("lock").values() {
            if let Some(p) = &e.pod
                && uses(p)
            {
                out.entry(meta::uid(&p.metadata).to_owned())
                    .or_insert_with(|| p.clone());
            }
        }
        out.into_values().collect()
    }

    /// Re-syncs every pod using claim `ns/name`, each in its own task, at once.
    fn resync_claim_users(&self, ns: &str, name: &str) {
        for pod in self.claim_users(ns, name) {
            let me = self.clone();
            let what = format!(
                "set up pod {} (claim {ns}/{name})",
                meta::key(&pod.metadata)
            );
            self.spawn_tracked(what, async move {
                let _ = me.set_up_pod(&pod).await;
            });
        }
    }
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
                            rv = rv.max(meta::resource_version(ev.object().metadata()));
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

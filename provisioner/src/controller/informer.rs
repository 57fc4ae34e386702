//! List + watch per kind. The first list fills the cache before any worker starts, so no
//! loop decides on a partial view; afterwards every change arrives through the watch at once.
//! Each handler also queues the objects that wait on the one that changed (claim -> named
//! PV, PV -> claimRef, claim -> class, pod -> claim, StatefulSet -> pods), and a periodic
//! resync (`Config::resync`) re-queues everything as the safety net. A watch that falls
//! behind the store's history (`Gone`) re-lists.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use strata_store::{Object, Store, WatchEvent};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::Controller;
use super::cache::key;
use crate::error::{Result, chain};
use crate::k8s_openapi::api::apps::v1::StatefulSet;
use crate::k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use crate::k8s_openapi::api::storage::v1::StorageClass;
use crate::meta;

/// How one kind enters the cache and which queues hear of it.
pub(super) trait Informed: Object {
    /// The cache's current objects of this kind (to find deletions missed across a re-list).
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self>;
    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, initial: bool);
}

pub(super) async fn start_all<S: Store>(
    ctl: &Arc<Controller<S>>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    // Classes first, then volumes, then claims: the claim syncs queued by the claim list then
    // see every class and volume.
    let mut handles = Vec::new();
    handles.push(start::<S, StorageClass>(ctl, stop.clone()).await?);
    handles.push(start::<S, PersistentVolume>(ctl, stop.clone()).await?);
    handles.push(start::<S, PersistentVolumeClaim>(ctl, stop.clone()).await?);
    handles.push(start::<S, Pod>(ctl, stop.clone()).await?);
    handles.push(start::<S, StatefulSet>(ctl, stop.clone()).await?);
    handles.push(start::<S, Namespace>(ctl, stop.clone()).await?);
    handles.extend(super::snapshot::start_informers(ctl, stop).await?);
    Ok(handles)
}

async fn list_into<S: Store, K: Informed>(ctl: &Controller<S>) -> Result<u64> {
    let list = ctl.store.list::<K>(None, None).await?;
    let listed: HashSet<String> = list.items.iter().map(|o| key(o.metadata())).collect();
    for gone in K::cached(ctl)
        .into_iter()
        .filter(|o| !listed.contains(&key(o.metadata())))
    {
        K::handle(ctl, WatchEvent::Deleted(gone), false);
    }
    for item in list.items {
        K::handle(ctl, WatchEvent::Added(item), true);
    }
    Ok(list.resource_version)
}

pub(super) async fn start<S: Store, K: Informed>(
    ctl: &Arc<Controller<S>>,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut rv = list_into::<S, K>(ctl).await?;
    let ctl = Arc::clone(ctl);
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                s = ctl.store.watch::<K>(None, rv) => s,
                _ = stop.changed() => return,
            };
            match stream {
                Ok(mut stream) => loop {
                    let next = tokio::select! {
                        n = stream.next() => n,
                        _ = stop.changed() => return,
                    };
                    match next {
                        Some(Ok(ev)) => {
                            debug!(kind = K::KIND, event = ev.type_name(), name = %key(ev.object().metadata()), rv = meta::resource_version(ev.object().metadata()), "watch event");
                            rv = rv.max(meta::resource_version(ev.object().metadata()));
                            K::handle(&ctl, ev, false);
                        }
                        Some(Err(e)) => {
                            debug!(kind = K::KIND, error = %chain(&e), "watch ended, re-listing");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => warn!(kind = K::KIND, error = %chain(&e), "watch failed"),
            }
            // Re-list: the history may have been compacted, or the stream broke.
            loop {
                match list_into::<S, K>(&ctl).await {
                    Ok(v) => {
                        rv = v;
                        break;
                    }
                    Err(e) => {
                        warn!(kind = K::KIND, error = %chain(&e), "list failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
        }
    }))
}

impl Informed for StorageClass {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().classes.values().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, initial: bool) {
        let mut c = ctl.cache();
        let ev_class = ev.object().clone();
        match ev {
            WatchEvent::Deleted(sc) => c.drop_class(
                meta::name(&sc.metadata),
                meta::resource_version(&sc.metadata),
            ),
            WatchEvent::Added(sc) | WatchEvent::Modified(sc) => {
                c.put_class(sc);
            }
        }
        // Its capacity object appears, changes or goes with it.
        ctl.capacity_changed();
        if !initial {
            // A class appearing, changing or going may unblock (or stall, with an event)
            // the claims of that class, pending claims and the pods placing them.
            let class = meta::name(&ev_class.metadata).to_string();
            for (k, _) in c.claims_waiting_on_class(&class) {
                ctl.queues.claims.add(k.clone());
                ctl.queues.provision.add(k.clone());
                ctl.queues.expand.add(k.clone());
            }
            enqueue_pods_with_pending_claims(ctl, &c);
        }
    }
}

/// Placement of a pod waits on its unbound claims, which wait on classes and free volumes.
fn enqueue_pods_with_pending_claims<S: Store>(ctl: &Controller<S>, c: &super::cache::Cache) {
    for (pk, pod) in &c.pods {
        let ns = meta::namespace(&pod.metadata);
        let waits = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .any(|src| {
                c.claims
                    .get(&format!("{ns}/{}", src.claim_name))
                    .is_some_and(|pvc| meta::claim_volume_name(pvc).is_empty())
            });
        if waits {
            ctl.queues.placement.add(pk.clone());
        }
    }
}

impl Informed for PersistentVolume {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().volumes.iter().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, initial: bool) {
        let mut c = ctl.cache();
        let name = meta::name(&ev.object().metadata).to_string();
        let claim_key = meta::volume_claim_ref(ev.object()).map(|r| {
            format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default()
            )
        });
        let unbound = claim_key.is_none();
        match ev {
            WatchEvent::Deleted(pv) => {
                c.drop_volume(&name, meta::resource_version(&pv.metadata));
            }
            WatchEvent::Added(pv) | WatchEvent::Modified(pv) => c.put_volume(pv),
        }
        ctl.queues.volumes.add(name.clone());
        ctl.queues.delete.add(name.clone());
        // Claims naming this volume in spec.volumeName wait for it to appear (and go Lost
        // when it goes).
        for k in c.claims_naming(&name) {
            ctl.queues.claims.add(k.clone());
        }
        if let Some(k) = claim_key {
            ctl.queues.claims.add(k.clone());
            ctl.queues.expand.add(k);
        }
        if unbound && !initial {
            // A free volume may satisfy a pending claim now (upstream waits for its 15 s
            // resync here).
            for (k, pvc) in &c.claims {
                if meta::claim_volume_name(pvc).is_empty() {
                    ctl.queues.claims.add(k.clone());
                }
            }
            enqueue_pods_with_pending_claims(ctl, &c);
        }
    }
}

impl Informed for PersistentVolumeClaim {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().claims.values().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, _initial: bool) {
        let mut c = ctl.cache();
        let k = key(&ev.object().metadata);
        let ns = meta::namespace(&ev.object().metadata).to_string();
        let volume = meta::claim_volume_name(ev.object()).to_string();
        match ev {
            WatchEvent::Deleted(pvc) => {
                c.drop_claim(&k, meta::resource_version(&pvc.metadata));
                if !volume.is_empty() {
                    ctl.queues.volumes.add(volume.clone());
                }
                wake_terminating_namespace(ctl, &c, &ns);
            }
            WatchEvent::Added(pvc) | WatchEvent::Modified(pvc) => {
                super::snapshot::claim_changed(ctl, &c, &pvc);
                c.put_claim(pvc);
                ctl.queues.gc.add(format!("PersistentVolumeClaim/{k}"));
            }
        }
        ctl.queues.claims.add(k.clone());
        ctl.queues.provision.add(k.clone());
        ctl.queues.expand.add(k.clone());
        if !volume.is_empty() {
            ctl.queues.volumes.add(volume);
        }
        // Volumes pre-bound to this claim by claimRef wait for it to appear (and are
        // released when it goes).
        let claim_name = k
            .split_once('/')
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        for pv in c.volumes.reserved_for(&ns, &claim_name) {
            ctl.queues.volumes.add(pv);
        }
        // Sets wait for a claim being deleted to go; pods wait for their claims to appear.
        for pod in c.pods_using_claim(&ns, &claim_name) {
            ctl.queues.placement.add(key(&pod.metadata));
        }
        let prefix = format!("{ns}/");
        for sk in c
            .sets
            .range(prefix.clone()..)
            .take_while(|(sk, _)| sk.starts_with(&prefix))
            .map(|(sk, _)| sk)
        {
            ctl.queues.sets.add(sk.clone());
        }
    }
}

impl Informed for Pod {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().pods.values().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, _initial: bool) {
        let mut c = ctl.cache();
        let k = key(&ev.object().metadata);
        let ns = meta::namespace(&ev.object().metadata).to_string();
        let deleted = matches!(ev, WatchEvent::Deleted(_));
        let pod = ev.object().clone();
        match ev {
            WatchEvent::Deleted(p) => {
                c.drop_pod(&k, meta::resource_version(&p.metadata));
                wake_terminating_namespace(ctl, &c, &ns);
            }
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                c.put_pod(p);
                ctl.queues.placement.add(k.clone());
                ctl.queues.gc.add(format!("Pod/{k}"));
            }
        }
        for r in pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.kind == "StatefulSet")
        {
            ctl.queues.sets.add(format!("{ns}/{}", r.name));
        }
        // Claims it uses: pvc-protection and the WaitForPodScheduled event depend on it.
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(src) = &v.persistent_volume_claim {
                ctl.queues.claims.add(format!("{ns}/{}", src.claim_name));
            }
        }
        if deleted {
            // Claims it owned (whenScaled=Delete) are now orphans.
            let uid = meta::uid(&pod.metadata);
            for (ck, claim) in &c.claims {
                if claim
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid)
                {
                    ctl.queues.gc.add(format!("PersistentVolumeClaim/{ck}"));
                }
            }
        }
    }
}

impl Informed for StatefulSet {
    fn cached<S: Store>(ctl: &Controller<S>) -> Vec<Self> {
        ctl.cache().sets.values().cloned().collect()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, _initial: bool) {
        let mut c = ctl.cache();
        let k = key(&ev.object().metadata);
        match ev {
            WatchEvent::Deleted(set) => {
                c.drop_set(&k, meta::resource_version(&set.metadata));
                // Its pods and (whenDeleted=Delete) claims are orphans now.
                let uid = meta::uid(&set.metadata);
                let owned = |refs: &Option<
                    Vec<crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
                >| { refs.iter().flatten().any(|r| r.uid == uid) };
                for (pk, p) in &c.pods {
                    if owned(&p.metadata.owner_references) {
                        ctl.queues.gc.add(format!("Pod/{pk}"));
                    }
                }
                for (ck, claim) in &c.claims {
                    if owned(&claim.metadata.owner_references) {
                        ctl.queues.gc.add(format!("PersistentVolumeClaim/{ck}"));
                    }
                }
            }
            WatchEvent::Added(set) | WatchEvent::Modified(set) => {
                c.put_set(set);
                ctl.queues.sets.add(k);
            }
        }
    }
}

/// A namespace being emptied waits for its pods and claims to go.
fn wake_terminating_namespace<S: Store>(ctl: &Controller<S>, c: &super::cache::Cache, ns: &str) {
    if c.terminating_namespaces.contains(ns) {
        ctl.queues.namespaces.add(ns.to_string());
    }
}

impl Informed for Namespace {
    fn cached<S: Store>(_ctl: &Controller<S>) -> Vec<Self> {
        // Only the names of terminating ones are kept; a namespace removed while the
        // watch was down is dropped by its next sync (NotFound).
        Vec::new()
    }

    fn handle<S: Store>(ctl: &Controller<S>, ev: WatchEvent<Self>, _initial: bool) {
        let name = meta::name(&ev.object().metadata).to_string();
        let mut c = ctl.cache();
        match ev {
            WatchEvent::Deleted(_) => {
                c.terminating_namespaces.remove(&name);
            }
            WatchEvent::Added(ns) | WatchEvent::Modified(ns) => {
                if crate::namespace::is_ours_to_empty(&ns) {
                    c.terminating_namespaces.insert(name.clone());
                    ctl.queues.namespaces.add(name);
                }
            }
        }
    }
}

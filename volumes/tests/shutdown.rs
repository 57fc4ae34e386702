//! Stopping the volume manager while a pod's set-up is in flight: `run` returns only
//! after that set-up has finished, so the volume it was writing is complete, and a
//! caller that stops waiting for `sync_pod` does not cut the set-up short either.
//! Root: projected volumes are tmpfs mounts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod, ServiceAccount};
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use strata_store::{
    Deleted, EmbeddedStore, EventType, Object, ObjectList, Preconditions, Result, Store,
    WatchStream,
};
use strata_volumes::atomic_writer::read_snapshot;
use strata_volumes::manager::VolumeManager;
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(60);

/// Holds every ServiceAccount read until opened. A projected token needs one, so a
/// set-up waits there, in flight, for as long as the test wants.
struct Gate {
    /// Set when a read reached the gate.
    entered: watch::Sender<bool>,
    open: watch::Sender<bool>,
}

/// The embedded store behind a [`Gate`].
#[derive(Clone)]
struct GatedStore {
    inner: EmbeddedStore,
    gate: Arc<Gate>,
}

impl Store for GatedStore {
    async fn get<K: Object>(&self, namespace: &str, name: &str) -> Result<K> {
        if K::KIND == <ServiceAccount as strata_store::k8s_openapi::Resource>::KIND {
            self.gate.entered.send_replace(true);
            let mut open = self.gate.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
        }
        self.inner.get(namespace, name).await
    }

    async fn list<K: Object>(
        &self,
        namespace: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> Result<ObjectList<K>> {
        self.inner.list(namespace, selector).await
    }

    async fn create<K: Object>(&self, obj: &K) -> Result<K> {
        self.inner.create(obj).await
    }

    async fn update<K: Object>(&self, obj: &K) -> Result<K> {
        self.inner.update(obj).await
    }

    async fn update_status<K: Object>(&self, obj: &K) -> Result<K> {
        self.inner.update_status(obj).await
    }

    async fn delete<K: Object>(
        &self,
        namespace: &str,
        name: &str,
        preconditions: Preconditions,
    ) -> Result<Deleted<K>> {
        self.inner.delete(namespace, name, preconditions).await
    }

    async fn watch<K: Object>(
        &self,
        namespace: Option<&str>,
        from_resource_version: u64,
    ) -> Result<WatchStream<K>> {
        self.inner.watch(namespace, from_resource_version).await
    }

    async fn finalize_namespace(&self, ns: &Namespace) -> Result<Namespace> {
        self.inner.finalize_namespace(ns).await
    }

    async fn record_event(
        &self,
        involved: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        self.inner
            .record_event(involved, type_, reason, message)
            .await
    }
}

fn token_pod(name: &str) -> Pod {
    obj(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [{"name": "tok", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"configMap": {"name": "cfg"}}
            ]}}]
        }
    }))
}

async fn gated(state: &std::path::Path) -> (GatedStore, VolumeManager<GatedStore>) {
    let inner = store(state).await;
    seed(&inner).await;
    let gate = Arc::new(Gate {
        entered: watch::Sender::new(false),
        open: watch::Sender::new(false),
    });
    let store = GatedStore { inner, gate };
    let mgr = VolumeManager::new(
        store.clone(),
        strata_volumes::manager::Config {
            state_dir: state.join("node"),
            node_name: NODE.into(),
            csi_endpoint: None,
            issuer: strata_volumes::token::DEFAULT_ISSUER.into(),
            clock: std::time::SystemTime::now,
        },
    )
    .unwrap();
    (store, mgr)
}

/// The projected volume is whole: `..data` names a complete version with both sources.
fn assert_complete(state: &std::path::Path, uid: &str) {
    let dir = vol(state, uid, "kubernetes.io~projected", "tok");
    let snap = read_snapshot(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(snap.files.contains_key("token"), "{:?}", snap.files.keys());
    assert_eq!(snap.files["a"], b"1");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "..data_tmp"),
        "a half-made write remains: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_after_the_set_up_in_flight_has_finished() {
    if !testkit::require_root("run_returns_after_the_set_up_in_flight_has_finished") {
        return;
    }
    let state = StateDir::new("strata-vm-shutdown");
    let (store, mgr) = gated(state.path()).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gate = store.gate.clone();
    let run = {
        let mgr = mgr.clone();
        tokio::spawn(async move {
            mgr.run(async move {
                let _ = stop_rx.await;
                // Told to stop while the set-up waits at the gate: it goes on from here,
                // after `run` has decided to return.
                gate.open.send_replace(true);
            })
            .await
        })
    };
    // A first pod, with no token, is set up: `run` has listed and reconciled, so the
    // next pod comes through the Pod watch (a set-up inside the initial reconcile
    // would hold `run` before it ever looks at `shutdown`).
    let marker: Pod = obj(json!({
        "metadata": {"name": "marker", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "busybox"}],
                 "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}
    }));
    let marker = store.create(&marker).await.unwrap();
    let cfg = vol(
        state.path(),
        marker.metadata.uid.as_deref().unwrap(),
        "kubernetes.io~configmap",
        "cfg",
    );
    testkit::wait_for("the first pod's volume", DEADLINE, || {
        read_snapshot(&cfg).ok()
    });
    let pod = store.create(&token_pod("tok-0")).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    // The Pod watch started the set-up; it now waits for its service account.
    let mut entered = store.gate.entered.subscribe();
    tokio::time::timeout(DEADLINE, entered.wait_for(|e| *e))
        .await
        .expect("the set-up reaches the gate")
        .unwrap();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("run returns")
        .unwrap()
        .unwrap();
    assert_complete(state.path(), &uid);
    assert!(mgr.volume_errors(&uid).is_empty());

    mgr.tear_down_pod(&uid).await.unwrap();
    let pod_dir = strata_volumes::layout::pod_dir(&state.path().join("node"), &uid);
    assert!(!pod_dir.exists() && mounts_below(&pod_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_caller_goes_away_still_finishes() {
    if !testkit::require_root("a_sync_whose_caller_goes_away_still_finishes") {
        return;
    }
    let state = StateDir::new("strata-vm-dropped");
    let (store, mgr) = gated(state.path()).await;
    let pod = store.create(&token_pod("tok-1")).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    {
        // The caller gives up (its future is dropped) while the set-up waits at the gate.
        let sync = mgr.sync_pod(&pod);
        tokio::pin!(sync);
        let mut entered = store.gate.entered.subscribe();
        tokio::select! {
            _ = &mut sync => panic!("the set-up cannot finish before the gate opens"),
            r = entered.wait_for(|e| *e) => { r.unwrap(); }
        }
    }
    store.gate.open.send_replace(true);
    testkit::wait_for("the abandoned set-up completes", DEADLINE, || {
        read_snapshot(&vol(state.path(), &uid, "kubernetes.io~projected", "tok"))
            .ok()
            .filter(|s| s.files.contains_key("token"))
    });
    assert_complete(state.path(), &uid);
    mgr.tear_down_pod(&uid).await.unwrap();
    let pod_dir = strata_volumes::layout::pod_dir(&state.path().join("node"), &uid);
    assert!(!pod_dir.exists() && mounts_below(&pod_dir).is_empty());
}

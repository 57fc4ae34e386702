//! Deleting a namespace deletes its objects (their finalizers respected), then the
//! namespace (k8s-semantics §7.3). Resync off: pod and claim deletions must wake the
//! namespace controller. Root only (the harness runs a real driver on a loop-backed pool).

use std::time::Duration;

use serde_json::json;
use strata_provisioner::k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod,
};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::{Deleted, Preconditions, Store};

mod common;

use common::*;

fn condition<'a>(ns: &'a Namespace, type_: &str) -> Option<(&'a str, &'a str)> {
    ns.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.message.as_deref().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_empties_it_then_removes_it() {
    if !testkit::require_root("deleting_a_namespace_empties_it_then_removes_it") {
        return;
    }
    let mut h = Harness::start_with(&[], |c| c.resync = Duration::ZERO).await;
    h.apply::<Namespace>(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    let mut c = claim("data", Some("fast"), "32Mi");
    c["metadata"]["namespace"] = json!("team");
    h.apply::<PersistentVolumeClaim>(c).await;
    h.apply::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "team"}, "data": {"a": "1"}}))
        .await;
    // A pod that uses the claim and is held by a finalizer (a node agent's, say).
    h.apply::<Pod>(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "team", "finalizers": ["example.com/hold"]},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}))
        .await;
    let pv = eventually("claim team/data Bound", || async {
        let c: PersistentVolumeClaim = h.store.get("team", "data").await.ok()?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then(|| c.spec?.volume_name)?
    })
    .await;
    assert_eq!(images(&h.pool), 1);

    let deleted = h
        .store
        .delete::<Namespace>("", "team", Preconditions::default())
        .await
        .unwrap();
    assert!(matches!(deleted, Deleted::Pending(_)));
    // The config map goes at once; the pod waits for its finalizer, the claim for the pod.
    gone::<ConfigMap>(&h.store, "team", "cfg").await;
    let ns = eventually("conditions naming what is left", || async {
        let ns: Namespace = h.store.get("", "team").await.ok()?;
        let (status, _) = condition(&ns, "NamespaceFinalizersRemaining")?;
        (status == "True").then_some(ns)
    })
    .await;
    let (_, content) = condition(&ns, "NamespaceContentRemaining").unwrap();
    assert!(
        content.contains("pods has 1 resource instances")
            && content.contains("persistentvolumeclaims has 1 resource instances"),
        "{content}"
    );
    let (_, finalizers) = condition(&ns, "NamespaceFinalizersRemaining").unwrap();
    assert!(
        finalizers.contains("example.com/hold in 1 resource instances")
            && finalizers.contains("kubernetes.io/pvc-protection in 1 resource instances"),
        "{finalizers}"
    );
    assert_eq!(
        ns.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminating")
    );
    let err = h
        .apply_err::<ConfigMap>(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "late", "namespace": "team"}}))
        .await;
    assert!(err.contains("because it is being terminated"), "{err}");

    // The node agent lets go of the pod: the claim, its volume and the namespace follow.
    let mut pod: Pod = h.store.get("team", "app").await.unwrap();
    pod.metadata.finalizers = None;
    h.store.update(&pod).await.unwrap();
    gone::<PersistentVolumeClaim>(&h.store, "team", "data").await;
    gone::<PersistentVolume>(&h.store, "", &pv).await;
    gone::<Namespace>(&h.store, "", "team").await;
    eventually("the volume's image deleted", || async {
        (images(&h.pool) == 0).then_some(())
    })
    .await;
    h.stop().await;
}

//! Per-node mode (`--kubeconfig`/`--in-cluster`, `Config::per_node`): the loops run against
//! the embedded store here, the decisions are the same as against an API server. Only this
//! node's claims are provisioned; binding is left to the cluster.

mod common;

use serde_json::json;
use strata_provisioner::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::Store;

use common::*;

fn placed(name: &str, node: &str) -> serde_json::Value {
    let mut c = claim(name, Some("late"), "32Mi");
    // What kube-controller-manager and the scheduler set in a cluster.
    c["metadata"]["annotations"] = json!({
        "volume.kubernetes.io/storage-provisioner": DRIVER,
        "volume.kubernetes.io/selected-node": node,
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_only_this_nodes_claims_and_never_binds() {
    if !testkit::require_root("provisions_only_this_nodes_claims_and_never_binds") {
        return;
    }
    let mut h = Harness::start_with(&[], |c| c.per_node = true).await;
    h.apply::<StorageClass>(class("late", "WaitForFirstConsumer", true))
        .await;
    let mine: PersistentVolumeClaim = h.apply(placed("mine", NODE)).await;
    let _theirs: PersistentVolumeClaim = h.apply(placed("theirs", "other-node")).await;
    // A static pair the binder would bind in standalone mode.
    h.apply::<PersistentVolume>(json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "static"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain",
                 "csi": {"driver": DRIVER, "volumeHandle": "by-hand"}}
    }))
    .await;
    h.apply::<PersistentVolumeClaim>(claim("static-claim", Some(""), "1Gi"))
        .await;

    let pv_name = format!("pvc-{}", mine.metadata.uid.clone().unwrap());
    let pv: PersistentVolume = eventually("the PV of this node's claim", || async {
        h.store.get::<PersistentVolume>("", &pv_name).await.ok()
    })
    .await;
    let claim_ref = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!(
        claim_ref.name.as_deref(),
        Some("mine"),
        "pre-bound to its claim"
    );
    // Let the loops run a few more rounds: nothing else may happen.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(images(&h.pool), 1, "no volume for another node's claim");
    for name in ["mine", "theirs", "static-claim"] {
        let c: PersistentVolumeClaim = h.store.get("default", name).await.unwrap();
        assert_ne!(
            c.status.and_then(|s| s.phase).as_deref(),
            Some("Bound"),
            "{name}: binding is the cluster's"
        );
    }
    let theirs: PersistentVolumeClaim = h.store.get("default", "theirs").await.unwrap();
    assert!(theirs.spec.unwrap().volume_name.is_none());
    h.stop().await;
}

#[test]
fn a_missing_kubeconfig_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-provisioner"))
        .args([
            "--csi-endpoint",
            "unix:///nonexistent/csi.sock",
            "--node-id",
            "n1",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .expect("run strata-provisioner");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting to the API server") && err.contains("/nonexistent/kubeconfig"),
        "{err}"
    );
}

//! Per-node mode (`--kubeconfig`/`--in-cluster`, `Config::per_node`): the loops run against
//! the embedded store here, the decisions are the same as against an API server. Only this
//! node's claims are provisioned; binding is left to the cluster.

mod common;

use serde_json::json;
use strata_provisioner::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use strata_provisioner::k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_published_and_an_immediate_claim_is_taken_and_provisioned_here() {
    if !testkit::require_root(
        "capacity_is_published_and_an_immediate_claim_is_taken_and_provisioned_here",
    ) {
        return;
    }
    let mut h = Harness::start_with(&[], |c| {
        c.per_node = true;
        c.capacity = Some(strata_provisioner::CapacityConfig {
            namespace: "default".into(),
            owner: None,
            poll: std::time::Duration::from_secs(3600),
            immediate_step: std::time::Duration::from_secs(1),
        });
    })
    .await;
    // The class appearing triggers a round (the poll is an hour away after the first).
    h.apply::<StorageClass>(class("now", "Immediate", false))
        .await;
    let published: CSIStorageCapacity =
        eventually("this node's capacity for the class", || async {
            let list = h
                .store
                .list::<CSIStorageCapacity>(Some("default"), None)
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|c| c.storage_class_name == "now")
        })
        .await;
    let bytes =
        |q: &Option<
            strata_provisioner::k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >| { strata_provisioner::quantity::bytes_of(q.as_ref().expect("set")).unwrap() };
    // The driver's GetCapacity for the 512 MiB pool, as the driver answers it.
    let cap = bytes(&published.capacity);
    assert!(cap > 256 << 20 && cap <= 512 << 20, "{cap}");
    assert!(bytes(&published.maximum_volume_size) <= cap);
    assert_eq!(
        published.node_topology.unwrap().match_labels.unwrap()["topology.strata.io/node"],
        NODE
    );

    // An Immediate claim as kube-controller-manager leaves it: the provisioner annotation,
    // no node. The only fitting node takes it and provisions.
    let mut c = claim("imm", Some("now"), "32Mi");
    c["metadata"]["annotations"] = json!({"volume.kubernetes.io/storage-provisioner": DRIVER});
    let imm: PersistentVolumeClaim = h.apply(c).await;
    let pv_name = format!("pvc-{}", imm.metadata.uid.clone().unwrap());
    let pv: PersistentVolume = eventually("the PV of the Immediate claim", || async {
        h.store.get::<PersistentVolume>("", &pv_name).await.ok()
    })
    .await;
    assert!(strata_provisioner::provision::node::volume_is_on(&pv, NODE));
    let taken: PersistentVolumeClaim = h.store.get("default", "imm").await.unwrap();
    assert_eq!(
        taken.metadata.annotations.unwrap()["volume.kubernetes.io/selected-node"],
        NODE
    );

    // The class going takes its capacity object with it.
    h.store
        .delete::<StorageClass>("", "now", Default::default())
        .await
        .unwrap();
    eventually("the capacity object deleted", || async {
        let list = h
            .store
            .list::<CSIStorageCapacity>(Some("default"), None)
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
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

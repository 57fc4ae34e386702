//! Every loop that waits on another object is woken when that object appears, changes or
//! goes. The periodic resync is off here, so each test fails if its edge is missed.
//! Root only (the harness runs a real driver on a loop-backed pool).

use std::time::Duration;

use serde_json::json;
use strata_provisioner::k8s_openapi::api::apps::v1::StatefulSet;
use strata_provisioner::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod,
};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::{Preconditions, Store};

mod common;

use common::*;

async fn harness() -> Harness {
    Harness::start_with(&[], |c| c.resync = Duration::ZERO).await
}

/// Lets the loops sync what was just written before the object it waits on appears. Too
/// short a pause could only make a test pass without exercising its edge, never fail it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn static_pv(name: &str, claim_ref: Option<&str>) -> serde_json::Value {
    let mut spec = json!({
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
        "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
        "hostPath": {"path": "/tmp"}
    });
    if let Some(c) = claim_ref {
        spec["claimRef"] = json!({"namespace": "default", "name": c});
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_naming_a_volume_created_later_binds() {
    if !testkit::require_root("claim_naming_a_volume_created_later_binds") {
        return;
    }
    let mut h = harness().await;
    let mut c = claim("named", Some(""), "1Gi");
    c["spec"]["volumeName"] = json!("later");
    h.apply::<PersistentVolumeClaim>(c).await;
    settle().await;
    h.apply::<PersistentVolume>(static_pv("later", None)).await;
    let c = bound_claim(&h.store, "named").await;
    assert_eq!(c.spec.unwrap().volume_name.as_deref(), Some("later"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_reserved_for_a_claim_created_later_binds() {
    if !testkit::require_root("volume_reserved_for_a_claim_created_later_binds") {
        return;
    }
    let mut h = harness().await;
    h.apply::<PersistentVolume>(static_pv("reserved", Some("late")))
        .await;
    eventually("reserved Available", || async {
        let v: PersistentVolume = h.store.get("", "reserved").await.ok()?;
        (v.status?.phase.as_deref() == Some("Available")).then_some(())
    })
    .await;
    h.apply::<PersistentVolumeClaim>(claim("late", Some(""), "1Gi"))
        .await;
    bound_claim(&h.store, "late").await;
    eventually("reserved Bound", || async {
        let v: PersistentVolume = h.store.get("", "reserved").await.ok()?;
        (v.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    // The claim going releases the volume it named.
    h.store
        .delete::<PersistentVolumeClaim>("default", "late", Preconditions::default())
        .await
        .unwrap();
    eventually("reserved Released", || async {
        let v: PersistentVolume = h.store.get("", "reserved").await.ok()?;
        (v.status?.phase.as_deref() == Some("Released")).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_of_a_class_created_later_is_provisioned() {
    if !testkit::require_root("claim_of_a_class_created_later_is_provisioned") {
        return;
    }
    let mut h = harness().await;
    h.apply::<PersistentVolumeClaim>(claim("early", Some("later"), "32Mi"))
        .await;
    settle().await;
    h.apply::<StorageClass>(class("later", "Immediate", false))
        .await;
    bound_claim(&h.store, "early").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_whose_claim_appears_later_gets_it_placed() {
    if !testkit::require_root("pod_whose_claim_appears_later_gets_it_placed") {
        return;
    }
    let mut h = harness().await;
    h.apply::<StorageClass>(class("wffc", "WaitForFirstConsumer", false))
        .await;
    h.apply::<Pod>(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "consumer", "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "awaited"}}]
        }
    }))
    .await;
    settle().await;
    h.apply::<PersistentVolumeClaim>(claim("awaited", Some("wffc"), "32Mi"))
        .await;
    let c = bound_claim(&h.store, "awaited").await;
    assert_eq!(
        c.metadata.annotations.unwrap()["volume.kubernetes.io/selected-node"],
        NODE
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_recreates_a_deleted_pod_with_its_claim() {
    if !testkit::require_root("statefulset_recreates_a_deleted_pod_with_its_claim") {
        return;
    }
    let mut h = harness().await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    h.apply::<StatefulSet>(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                         "resources": {"requests": {"storage": "32Mi"}}}
            }]
        }
    }))
    .await;
    let first: Pod = eventually("web-0 created", || async {
        h.store.get::<Pod>("default", "web-0").await.ok()
    })
    .await;
    bound_claim(&h.store, "data-web-0").await;
    h.store
        .delete::<Pod>("default", "web-0", Preconditions::default())
        .await
        .unwrap();
    let second: Pod = eventually("web-0 recreated", || async {
        let p: Pod = h.store.get("default", "web-0").await.ok()?;
        (p.metadata.uid != first.metadata.uid).then_some(p)
    })
    .await;
    let volumes = second.spec.unwrap().volumes.unwrap();
    assert!(volumes.iter().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == "data-web-0")
    }));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_after_the_class_was_deleted_says_why_nothing_happens() {
    if !testkit::require_root("resize_after_the_class_was_deleted_says_why_nothing_happens") {
        return;
    }
    let mut h = harness().await;
    h.apply::<StorageClass>(class("grow", "Immediate", true))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("big", Some("grow"), "32Mi"))
        .await;
    let mut c = bound_claim(&h.store, "big").await;
    h.store
        .delete::<StorageClass>("", "grow", Preconditions::default())
        .await
        .unwrap();
    settle().await;
    c.spec
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .requests = Some(
        [(
            "storage".to_string(),
            strata_provisioner::k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "64Mi".into(),
            ),
        )]
        .into(),
    );
    h.store.update(&c).await.unwrap();
    eventually("VolumeResizeFailed naming the deleted class", || async {
        has_event(
            &h.store,
            "big",
            "VolumeResizeFailed",
            "\"grow\" does not exist",
        )
        .await
        .then_some(())
    })
    .await;
    h.stop().await;
}

//! VolumeSnapshots end to end: the snapshot loops in-process against an embedded store and
//! a real `strata-csi` on a loop-backed pool (image backend). Root only.

use serde_json::json;
use strata_provisioner::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::snapshot::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};
use strata_store::{EmbeddedStore, Preconditions, Store};

mod common;

use common::*;

const AS_SOURCE: &str = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection";
const BOUND: &str = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
const CONTENT: &str = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
const PVC_AS_SOURCE: &str = "snapshot.storage.kubernetes.io/pvc-as-source-protection";

fn snapshot_class(name: &str, policy: &str, default: bool) -> serde_json::Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": name, "annotations": {"snapshot.storage.kubernetes.io/is-default-class": default.to_string()}},
        "driver": DRIVER, "deletionPolicy": policy
    })
}

fn snapshot(name: &str, claim: &str, class: Option<&str>) -> serde_json::Value {
    let mut v = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"source": {"persistentVolumeClaimName": claim}}
    });
    if let Some(c) = class {
        v["spec"]["volumeSnapshotClassName"] = json!(c);
    }
    v
}

/// A claim of class `fast` with a data source (`dataSource`, or `dataSourceRef` when it
/// names a namespace).
fn claim_from(
    name: &str,
    size: &str,
    kind: &str,
    source: &str,
    ns: Option<&str>,
) -> serde_json::Value {
    let mut v = claim(name, Some("fast"), size);
    let group = if kind == "VolumeSnapshot" {
        json!("snapshot.storage.k8s.io")
    } else {
        serde_json::Value::Null
    };
    match ns {
        None => v["spec"]["dataSource"] = json!({"apiGroup": group, "kind": kind, "name": source}),
        Some(ns) => {
            v["spec"]["dataSourceRef"] =
                json!({"apiGroup": group, "kind": kind, "name": source, "namespace": ns})
        }
    }
    v
}

async fn ready(store: &EmbeddedStore, name: &str) -> VolumeSnapshot {
    eventually(&format!("snapshot {name} ready"), || async {
        let s: VolumeSnapshot = store.get("default", name).await.ok()?;
        (s.status.as_ref()?.ready_to_use == Some(true)).then_some(s)
    })
    .await
}

fn snapshot_files(h: &Harness) -> usize {
    h.pool
        .files()
        .iter()
        .filter(|p| {
            p.strip_prefix(h.pool.path())
                .is_ok_and(|r| r.starts_with("snapshots"))
        })
        .count()
}

fn volume_files(h: &Harness) -> usize {
    h.pool
        .files()
        .iter()
        .filter(|p| {
            p.strip_prefix(h.pool.path())
                .is_ok_and(|r| r.starts_with("volumes"))
        })
        .count()
}

fn finalizers(
    m: &strata_provisioner::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<String> {
    m.finalizers.clone().unwrap_or_default()
}

async fn delete<K: strata_store::Object>(store: &EmbeddedStore, ns: &str, name: &str) {
    store
        .delete::<K>(ns, name, Preconditions::default())
        .await
        .expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_clone_and_follow_their_deletion_policy() {
    if !testkit::require_root("snapshots_restore_clone_and_follow_their_deletion_policy") {
        return;
    }
    let mut h = Harness::start().await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    h.apply::<VolumeSnapshotClass>(snapshot_class("snaps", "Delete", true))
        .await;
    h.apply::<VolumeSnapshotClass>(snapshot_class("keep", "Retain", false))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("src", Some("fast"), "32Mi"))
        .await;
    bound_claim(&h.store, "src").await;

    // Dynamic, default class: the class is written down, a content is made and bound, the
    // driver cuts the snapshot, the status says ready with the source's size.
    h.apply::<VolumeSnapshot>(snapshot("s1", "src", None)).await;
    let s1 = ready(&h.store, "s1").await;
    assert_eq!(s1.spec.volume_snapshot_class_name.as_deref(), Some("snaps"));
    let st = s1.status.clone().unwrap();
    let content_name = format!("snapcontent-{}", s1.metadata.uid.as_deref().unwrap());
    assert_eq!(
        st.bound_volume_snapshot_content_name.as_deref(),
        Some(content_name.as_str())
    );
    assert_eq!(st.restore_size.as_ref().unwrap().0, "32Mi");
    assert!(st.creation_time.is_some() && st.error.is_none(), "{st:?}");
    let f = finalizers(&s1.metadata);
    assert!(
        f.iter().any(|x| x == AS_SOURCE) && f.iter().any(|x| x == BOUND),
        "{f:?}"
    );
    let content: VolumeSnapshotContent = h.store.get("", &content_name).await.unwrap();
    assert!(finalizers(&content.metadata).iter().any(|x| x == CONTENT));
    assert_eq!(content.spec.deletion_policy, "Delete");
    assert!(content.status.as_ref().unwrap().snapshot_handle.is_some());
    assert_eq!(snapshot_files(&h), 1);
    // The event is recorded after the status write the wait above saw.
    eventually("SnapshotReady event", || async {
        has_event_on(
            &h.store,
            "VolumeSnapshot",
            "s1",
            "SnapshotReady",
            "is ready to use",
        )
        .await
        .then_some(())
    })
    .await;
    // The claim was protected while the snapshot was taken, and is released once it is ready.
    eventually("pvc-as-source finalizer removed", || async {
        let c: PersistentVolumeClaim = h.store.get("default", "src").await.ok()?;
        (!finalizers(&c.metadata).iter().any(|x| x == PVC_AS_SOURCE)).then_some(())
    })
    .await;

    // Restore and clone: new claims bound to new volumes.
    let volumes = volume_files(&h);
    h.apply::<PersistentVolumeClaim>(claim_from("restored", "32Mi", "VolumeSnapshot", "s1", None))
        .await;
    h.apply::<PersistentVolumeClaim>(claim_from(
        "cloned",
        "64Mi",
        "PersistentVolumeClaim",
        "src",
        None,
    ))
    .await;
    bound_claim(&h.store, "restored").await;
    let cloned = bound_claim(&h.store, "cloned").await;
    assert_eq!(volume_files(&h), volumes + 2);
    assert_eq!(
        cloned.status.as_ref().unwrap().capacity.as_ref().unwrap()["storage"].0,
        "64Mi",
        "a clone may be bigger than its source"
    );
    let src: PersistentVolumeClaim = h.store.get("default", "src").await.unwrap();
    assert!(
        !finalizers(&src.metadata)
            .iter()
            .any(|x| x.contains("cloning-protection")),
        "the cloning finalizer goes once the clone is made"
    );

    // Retain: deleting the snapshot leaves its content and the storage snapshot.
    h.apply::<VolumeSnapshot>(snapshot("kept", "src", Some("keep")))
        .await;
    let kept = ready(&h.store, "kept").await;
    let kept_content = kept
        .status
        .unwrap()
        .bound_volume_snapshot_content_name
        .unwrap();
    assert!(
        !finalizers(&kept.metadata).iter().any(|x| x == BOUND),
        "no bound finalizer with Retain"
    );
    assert_eq!(snapshot_files(&h), 2);
    delete::<VolumeSnapshot>(&h.store, "default", "kept").await;
    gone::<VolumeSnapshot>(&h.store, "default", "kept").await;
    let retained: VolumeSnapshotContent = h.store.get("", &kept_content).await.unwrap();
    assert!(retained.metadata.deletion_timestamp.is_none());
    let handle = retained.status.unwrap().snapshot_handle.unwrap();

    // The retained snapshot, pre-provisioned again: a content naming its handle binds to a
    // snapshot naming the content, and restores.
    h.apply::<VolumeSnapshotContent>(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": "pre"},
        "spec": {"deletionPolicy": "Delete", "driver": DRIVER, "source": {"snapshotHandle": handle},
                 "volumeSnapshotRef": {"name": "pre-snap", "namespace": "default"}}
    }))
    .await;
    h.apply::<VolumeSnapshot>(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "pre-snap", "namespace": "default"},
        "spec": {"source": {"volumeSnapshotContentName": "pre"}}
    }))
    .await;
    let pre = ready(&h.store, "pre-snap").await;
    assert_eq!(
        pre.status
            .as_ref()
            .unwrap()
            .restore_size
            .as_ref()
            .unwrap()
            .0,
        "32Mi"
    );
    let bound: VolumeSnapshotContent = h.store.get("", "pre").await.unwrap();
    assert_eq!(
        bound.spec.volume_snapshot_ref.uid, pre.metadata.uid,
        "bound to the snapshot"
    );
    h.apply::<PersistentVolumeClaim>(claim_from(
        "from-pre",
        "32Mi",
        "VolumeSnapshot",
        "pre-snap",
        None,
    ))
    .await;
    bound_claim(&h.store, "from-pre").await;
    // The retained content itself goes without touching the storage snapshot (Retain).
    delete::<VolumeSnapshotContent>(&h.store, "", &kept_content).await;
    gone::<VolumeSnapshotContent>(&h.store, "", &kept_content).await;
    assert_eq!(snapshot_files(&h), 2);

    // Delete: the snapshot takes its content and the storage snapshot with it.
    delete::<VolumeSnapshot>(&h.store, "default", "s1").await;
    gone::<VolumeSnapshot>(&h.store, "default", "s1").await;
    gone::<VolumeSnapshotContent>(&h.store, "", &content_name).await;
    delete::<VolumeSnapshot>(&h.store, "default", "pre-snap").await;
    gone::<VolumeSnapshotContent>(&h.store, "", "pre").await;
    eventually("storage snapshots deleted", || async {
        (snapshot_files(&h) == 0).then_some(())
    })
    .await;
    // The restored and cloned volumes do not depend on their sources.
    for c in ["restored", "cloned", "from-pre"] {
        let pvc = bound_claim(&h.store, c).await;
        let pv: PersistentVolume = h
            .store
            .get("", pvc.spec.unwrap().volume_name.as_deref().unwrap())
            .await
            .unwrap();
        assert!(pv.metadata.deletion_timestamp.is_none());
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_and_restore_requests_are_reported_and_lose_nothing() {
    if !testkit::require_root("bad_snapshot_and_restore_requests_are_reported_and_lose_nothing") {
        return;
    }
    let mut h = Harness::start().await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    h.apply::<StorageClass>(class("slow", "Immediate", false))
        .await;
    h.apply::<VolumeSnapshotClass>(snapshot_class("snaps", "Delete", true))
        .await;

    // A snapshot of a claim that does not exist: an error in its status and an event, no
    // content; the claim appearing later makes it.
    h.apply::<VolumeSnapshot>(snapshot("early", "later", Some("snaps")))
        .await;
    eventually("error on the snapshot", || async {
        let s: VolumeSnapshot = h.store.get("default", "early").await.ok()?;
        let msg = s.status?.error?.message?;
        msg.contains("PersistentVolumeClaim \"later\" not found")
            .then_some(())
    })
    .await;
    eventually("SnapshotContentCreationFailed event", || async {
        has_event_on(
            &h.store,
            "VolumeSnapshot",
            "early",
            "SnapshotContentCreationFailed",
            "not found",
        )
        .await
        .then_some(())
    })
    .await;
    let contents = h
        .store
        .list::<VolumeSnapshotContent>(None, None)
        .await
        .unwrap();
    assert!(contents.items.is_empty());
    h.apply::<PersistentVolumeClaim>(claim("later", Some("fast"), "32Mi"))
        .await;
    bound_claim(&h.store, "later").await;
    let early = ready(&h.store, "early").await;
    assert!(
        early.status.unwrap().error.is_none(),
        "the error is cleared once ready"
    );

    // A restore smaller than the snapshot, a cross-namespace clone, a clone into another
    // class: each stays Pending with the reason in an event, and no volume is made.
    let volumes = volume_files(&h);
    h.apply::<PersistentVolumeClaim>(claim_from("small", "16Mi", "VolumeSnapshot", "early", None))
        .await;
    h.apply::<PersistentVolumeClaim>(claim_from(
        "far",
        "32Mi",
        "PersistentVolumeClaim",
        "later",
        Some("other"),
    ))
    .await;
    let mut other_class = claim_from(
        "other-class",
        "32Mi",
        "PersistentVolumeClaim",
        "later",
        None,
    );
    other_class["spec"]["storageClassName"] = json!("slow");
    h.apply::<PersistentVolumeClaim>(other_class).await;
    for (c, needle) in [
        ("small", "less than the size 33554432"),
        ("far", "cross-namespace data sources are not supported"),
        ("other-class", "same storage class"),
    ] {
        eventually(&format!("{c}: ProvisioningFailed {needle:?}"), || async {
            has_event(&h.store, c, "ProvisioningFailed", needle)
                .await
                .then_some(())
        })
        .await;
        let pvc: PersistentVolumeClaim = h.store.get("default", c).await.unwrap();
        assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Pending"));
    }
    assert_eq!(volume_files(&h), volumes, "nothing was provisioned");

    // The snapshot a pending claim restores from is held until that claim goes.
    delete::<VolumeSnapshot>(&h.store, "default", "early").await;
    eventually("deletion pending event", || async {
        has_event_on(
            &h.store,
            "VolumeSnapshot",
            "early",
            "SnapshotDeletePending",
            "small",
        )
        .await
        .then_some(())
    })
    .await;
    let held: VolumeSnapshot = h.store.get("default", "early").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(snapshot_files(&h), 1, "the storage snapshot is still there");
    delete::<PersistentVolumeClaim>(&h.store, "default", "small").await;
    gone::<VolumeSnapshot>(&h.store, "default", "early").await;
    eventually("storage snapshot deleted", || async {
        (snapshot_files(&h) == 0).then_some(())
    })
    .await;
    // The source claim was never lost along the way.
    bound_claim(&h.store, "later").await;
    h.stop().await;
}

//! End to end: the control loops in-process against an embedded store, talking to a real
//! `strata-csi` on a loop-backed ext4 pool. Root only (the pool is a loop device).

use serde_json::json;
use strata_provisioner::k8s_openapi::api::apps::v1::StatefulSet;
use strata_provisioner::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod,
};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::{Preconditions, Store};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_claims_bind_and_scale_down_deletes_them() {
    if !testkit::require_root("statefulset_claims_bind_and_scale_down_deletes_them") {
        return;
    }
    let mut h = Harness::start().await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    let set: StatefulSet = h
        .apply(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 3,
                "serviceName": "web",
                // No pod runner here to make pods Ready: do not wait for it.
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "web"}},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Delete"},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data", "labels": {"tier": "db"}},
                    "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}}
                }]
            }
        }))
        .await;
    let mut volumes = Vec::new();
    for o in 0..3 {
        let c = bound_claim(&h.store, &format!("data-web-{o}")).await;
        let labels = c.metadata.labels.clone().unwrap();
        assert_eq!(
            (labels["app"].as_str(), labels["tier"].as_str()),
            ("web", "db"),
            "template labels merged with the selector"
        );
        let pv_name = c.spec.as_ref().unwrap().volume_name.clone().unwrap();
        let pv: PersistentVolume = h.store.get("", &pv_name).await.unwrap();
        assert_eq!(
            pv_name,
            format!("pvc-{}", c.metadata.uid.as_deref().unwrap())
        );
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(spec.csi.as_ref().unwrap().driver, DRIVER);
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        let affinity = serde_json::to_string(&spec.node_affinity).unwrap();
        assert!(
            affinity.contains("topology.strata.io/node") && affinity.contains(NODE),
            "{affinity}"
        );
        assert_eq!(
            pv.metadata.annotations.as_ref().unwrap()["pv.kubernetes.io/provisioned-by"],
            DRIVER
        );
        let pod: Pod = h.store.get("default", &format!("web-{o}")).await.unwrap();
        let vol = &pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            format!("data-web-{o}")
        );
        volumes.push(pv_name);
    }
    assert_eq!(images(&h.pool), 3, "three volumes on the pool");
    let events = h
        .store
        .events_for("PersistentVolumeClaim", "default", "data-web-0")
        .await
        .unwrap();
    let reasons: Vec<_> = events.iter().filter_map(|e| e.reason.clone()).collect();
    for r in [
        "ExternalProvisioning",
        "Provisioning",
        "ProvisioningSucceeded",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "missing event {r}: {reasons:?}"
        );
    }

    // Scale down to 1 with whenScaled=Delete: pods, claims, PVs and backing volumes of
    // ordinals 1 and 2 go; ordinal 0 stays.
    let mut set: StatefulSet = h.store.get("default", "web").await.unwrap_or(set);
    set.spec.replicas = Some(1);
    h.store.update(&set).await.unwrap();
    for o in [1, 2] {
        gone::<Pod>(&h.store, "default", &format!("web-{o}")).await;
        gone::<PersistentVolumeClaim>(&h.store, "default", &format!("data-web-{o}")).await;
        gone::<PersistentVolume>(&h.store, "", &volumes[o]).await;
    }
    eventually("backing volumes deleted", || async {
        (images(&h.pool) == 1).then_some(())
    })
    .await;
    bound_claim(&h.store, "data-web-0").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pv_prebound_by_claim_ref_binds_and_retain_keeps_it() {
    if !testkit::require_root("static_pv_prebound_by_claim_ref_binds_and_retain_keeps_it") {
        return;
    }
    let mut h = Harness::start().await;
    // A decoy that would match on size: the claimRef reservation must win.
    for (name, size, claim_ref) in [("decoy", "1Gi", None), ("reserved", "2Gi", Some("mine"))] {
        let mut spec = json!({
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": "/tmp"}
        });
        if let Some(c) = claim_ref {
            spec["claimRef"] = json!({"namespace": "default", "name": c});
        }
        h.apply::<PersistentVolume>(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec})).await;
    }
    // Both PVs must be in the loops' cache before the claim arrives: PVs and claims come
    // through separate watches (as separate informers upstream), so a claim seen first
    // could take the decoy, in Kubernetes too. Available means the volume sync has run.
    for pv in ["decoy", "reserved"] {
        eventually(&format!("{pv} Available"), || async {
            let v: PersistentVolume = h.store.get("", pv).await.ok()?;
            (v.status?.phase.as_deref() == Some("Available")).then_some(())
        })
        .await;
    }
    h.apply::<PersistentVolumeClaim>(claim("mine", Some(""), "1Gi"))
        .await;
    let c = bound_claim(&h.store, "mine").await;
    assert_eq!(
        c.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("reserved")
    );
    assert_eq!(
        c.status.as_ref().unwrap().capacity.as_ref().unwrap()["storage"].0,
        "2Gi"
    );
    let pv: PersistentVolume = h.store.get("", "reserved").await.unwrap();
    assert_eq!(pv.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
    assert!(
        !pv.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("pv.kubernetes.io/bound-by-controller"),
        "pre-bound by the user: no bound-by-controller"
    );
    assert_eq!(pv.spec.unwrap().claim_ref.unwrap().uid, c.metadata.uid);

    // Deleting the claim releases the PV; Retain keeps it with the stale claimRef.
    h.store
        .delete::<PersistentVolumeClaim>("default", "mine", Preconditions::default())
        .await
        .unwrap();
    gone::<PersistentVolumeClaim>(&h.store, "default", "mine").await;
    eventually("PV Released", || async {
        let pv: PersistentVolume = h.store.get("", "reserved").await.ok()?;
        (pv.status?.phase.as_deref() == Some("Released")).then_some(())
    })
    .await;
    // A new claim with the same name is not bound to it (old UID in claimRef).
    h.apply::<PersistentVolumeClaim>(claim("mine", Some(""), "2Gi"))
        .await;
    let pending = eventually("new claim synced", || async {
        let c: PersistentVolumeClaim = h.store.get("default", "mine").await.ok()?;
        let evs = h
            .store
            .events_for("PersistentVolumeClaim", "default", "mine")
            .await
            .ok()?;
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("FailedBinding"))
            .then_some(c)
    })
    .await;
    assert!(pending.spec.unwrap().volume_name.is_none());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expansion_grows_the_pv_and_reports_the_resize() {
    if !testkit::require_root("expansion_grows_the_pv_and_reports_the_resize") {
        return;
    }
    let mut h = Harness::start().await;
    h.apply::<StorageClass>(class("grow", "Immediate", true))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("data", Some("grow"), "32Mi"))
        .await;
    let mut c = bound_claim(&h.store, "data").await;
    let pv_name = c.spec.as_ref().unwrap().volume_name.clone().unwrap();
    c.spec
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .requests
        .as_mut()
        .unwrap()
        .insert(
            "storage".into(),
            strata_provisioner::k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "64Mi".into(),
            ),
        );
    h.store.update(&c).await.unwrap();
    eventually("PV grown to 64Mi", || async {
        let pv: PersistentVolume = h.store.get("", &pv_name).await.ok()?;
        (pv.spec?.capacity?["storage"].0 == "64Mi").then_some(())
    })
    .await;
    let c = eventually("claim resize recorded", || async {
        let c: PersistentVolumeClaim = h.store.get("default", "data").await.ok()?;
        let st = c.status.clone()?;
        let allocated = st.allocated_resources.as_ref()?.get("storage")?.0.clone();
        let pending = st
            .conditions
            .iter()
            .flatten()
            .any(|x| x.type_ == "FileSystemResizePending");
        let done = st.capacity.as_ref()?.get("storage")?.0 == "64Mi";
        (allocated == "64Mi" && (pending || done)).then_some(c)
    })
    .await;
    let st = c.status.unwrap();
    if st
        .conditions
        .iter()
        .flatten()
        .any(|x| x.type_ == "FileSystemResizePending")
    {
        assert_eq!(
            st.capacity.unwrap()["storage"].0,
            "32Mi",
            "the node step has not run: capacity unchanged"
        );
        assert_eq!(
            st.allocated_resource_statuses.unwrap()["storage"],
            "NodeResizePending"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_first_consumer_places_on_the_pod_node() {
    if !testkit::require_root("wait_for_first_consumer_places_on_the_pod_node") {
        return;
    }
    let mut h = Harness::start().await;
    h.apply::<StorageClass>(class("local", "WaitForFirstConsumer", false))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("later", Some("local"), "32Mi"))
        .await;
    eventually("WaitForFirstConsumer event", || async {
        let evs = h
            .store
            .events_for("PersistentVolumeClaim", "default", "later")
            .await
            .ok()?;
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("WaitForFirstConsumer"))
            .then_some(())
    })
    .await;
    let c: PersistentVolumeClaim = h.store.get("default", "later").await.unwrap();
    assert!(
        c.spec.unwrap().volume_name.is_none(),
        "no volume before a consumer exists"
    );
    assert_eq!(images(&h.pool), 0);
    h.apply::<Pod>(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "consumer", "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "later"}}]
        }
    }))
    .await;
    let c = bound_claim(&h.store, "later").await;
    assert_eq!(
        c.metadata.annotations.unwrap()["volume.kubernetes.io/selected-node"],
        NODE
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_crash_during_create_volume_is_retried_with_the_same_name() {
    if !testkit::require_root("driver_crash_during_create_volume_is_retried_with_the_same_name") {
        return;
    }
    // The driver aborts inside CreateVolume after writing the image file: the provisioner
    // sees UNAVAILABLE, keeps retrying the same call, and once the driver is back the
    // retry (same name, pvc-<uid>) adopts that volume instead of making a second one.
    let mut h = Harness::start_with_failpoints(&["create_volume:after_file"]).await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("crash", Some("fast"), "32Mi"))
        .await;
    eventually("ProvisioningFailed after the crash", || async {
        has_event(&h.store, "crash", "ProvisioningFailed", "CreateVolume")
            .await
            .then_some(())
    })
    .await;
    // The failpoint aborted the driver; its exit may trail the dropped connection a little.
    testkit::wait_for("the driver to exit at the failpoint", DEADLINE, || {
        h.driver.try_wait()
    });
    h.driver.restart(&[]).await;
    let c = bound_claim(&h.store, "crash").await;
    let pv: PersistentVolume = h
        .store
        .get("", c.spec.as_ref().unwrap().volume_name.as_deref().unwrap())
        .await
        .unwrap();
    assert!(pv.spec.unwrap().csi.is_some());
    assert_eq!(
        images(&h.pool),
        1,
        "one volume: the retry reused the crashed call's name"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprovisionable_claims_get_provisioning_failed_and_nothing_is_created() {
    if !testkit::require_root(
        "unprovisionable_claims_get_provisioning_failed_and_nothing_is_created",
    ) {
        return;
    }
    let mut h = Harness::start().await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    let mut selector = claim("picky", Some("fast"), "32Mi");
    selector["spec"]["selector"] = json!({"matchLabels": {"tier": "gold"}});
    h.apply::<PersistentVolumeClaim>(selector).await;
    let mut both = claim("both", Some("fast"), "32Mi");
    both["spec"]["accessModes"] = json!(["ReadWriteOnce", "ReadOnlyMany"]);
    h.apply::<PersistentVolumeClaim>(both).await;
    eventually("selector refused", || async {
        has_event(
            &h.store,
            "picky",
            "ProvisioningFailed",
            "claim Selector is not supported",
        )
        .await
        .then_some(())
    })
    .await;
    eventually("RWO+ROX refused", || async {
        has_event(
            &h.store,
            "both",
            "ProvisioningFailed",
            "ReadOnlyMany and ReadWriteOnce",
        )
        .await
        .then_some(())
    })
    .await;
    assert_eq!(images(&h.pool), 0, "nothing was created for refused claims");
    assert!(
        h.store
            .list::<PersistentVolume>(None, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_protection_holds_a_claim_while_a_scheduled_pod_uses_it() {
    if !testkit::require_root("pvc_protection_holds_a_claim_while_a_scheduled_pod_uses_it") {
        return;
    }
    let mut h = Harness::start().await;
    h.apply::<StorageClass>(class("fast", "Immediate", false))
        .await;
    h.apply::<PersistentVolumeClaim>(claim("held", Some("fast"), "32Mi"))
        .await;
    let c = bound_claim(&h.store, "held").await;
    let pv_name = c.spec.unwrap().volume_name.unwrap();
    h.apply::<Pod>(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "user", "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "held"}}]
        },
        "status": {"phase": "Succeeded"}
    }))
    .await;
    h.store
        .delete::<PersistentVolumeClaim>("default", "held", Preconditions::default())
        .await
        .unwrap();
    // The claim's sync on its deletion must keep the finalizer: a scheduled pod object (even a
    // finished one) still references it. The binder has one FIFO worker, so once a claim
    // created after the deletion is Bound, the deletion has been synced.
    h.apply::<PersistentVolumeClaim>(claim("marker", Some("fast"), "32Mi"))
        .await;
    bound_claim(&h.store, "marker").await;
    let held: PersistentVolumeClaim = h.store.get("default", "held").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        held.metadata
            .finalizers
            .unwrap()
            .iter()
            .any(|f| f == "kubernetes.io/pvc-protection")
    );
    let pv: PersistentVolume = h.store.get("", &pv_name).await.unwrap();
    assert_eq!(
        pv.status.unwrap().phase.as_deref(),
        Some("Bound"),
        "the volume stays bound meanwhile"
    );
    h.store
        .delete::<Pod>("default", "user", Preconditions::default())
        .await
        .unwrap();
    gone::<PersistentVolumeClaim>(&h.store, "default", "held").await;
    gone::<PersistentVolume>(&h.store, "", &pv_name).await;
    eventually("backing volume deleted", || async {
        (images(&h.pool) == 1).then_some(())
    })
    .await;
    h.stop().await;
}

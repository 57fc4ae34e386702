//! Store semantics through the public interface, on a real SQLite file in a temp dir.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use strata_store::k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, VolumeResourceRequirements,
};
use strata_store::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use strata_store::{
    Deleted, EmbeddedStore, EventType, Preconditions, Store, StoreOptions, WatchEvent,
};

mod common;
use common::open;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: (!ns.is_empty()).then(|| ns.into()),
        ..Default::default()
    }
}

fn claim(name: &str, size: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta("default", name),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn volume(name: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: meta("", name),
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
            ..Default::default()
        }),
        status: None,
    }
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut m = meta("default", name);
    m.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    ConfigMap {
        metadata: m,
        data: Some(BTreeMap::from([("k".into(), "v".into())])),
        ..Default::default()
    }
}

fn rv(m: &ObjectMeta) -> u64 {
    m.resource_version.as_deref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn create_sets_server_fields_and_rejects_duplicates() {
    let (_dir, store) = open();
    let created = store.create(&claim("data", "1Gi")).await.unwrap();
    let m = &created.metadata;
    assert!(m.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(m.creation_timestamp.is_some());
    assert_eq!(m.generation, Some(1));
    assert!(rv(m) > 0);
    let err = store.create(&claim("data", "1Gi")).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    let got: PersistentVolumeClaim = store.get("default", "data").await.unwrap();
    assert_eq!(got, created);
    let err = store
        .get::<PersistentVolumeClaim>("default", "nope")
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn update_is_compare_and_swap() {
    let (_dir, store) = open();
    let created = store.create(&config_map("cm", &[])).await.unwrap();
    let mut first = created.clone();
    first.data = Some(BTreeMap::from([("k".into(), "first".into())]));
    let updated = store.update(&first).await.unwrap();
    assert!(rv(&updated.metadata) > rv(&created.metadata));
    let mut stale = created.clone();
    stale.data = Some(BTreeMap::from([("k".into(), "stale".into())]));
    let err = store.update(&stale).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let got: ConfigMap = store.get("default", "cm").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "first");
}

#[tokio::test]
async fn watch_from_old_version_sees_every_event_in_order() {
    let (_dir, store) = open();
    let start = store
        .list::<ConfigMap>(None, None)
        .await
        .unwrap()
        .resource_version;
    let mut cm = store.create(&config_map("w", &[])).await.unwrap();
    for i in 0..5 {
        cm.data = Some(BTreeMap::from([("k".into(), i.to_string())]));
        cm = store.update(&cm).await.unwrap();
    }
    store
        .delete::<ConfigMap>("default", "w", Preconditions::default())
        .await
        .unwrap();
    let mut watch = store
        .watch::<ConfigMap>(Some("default"), start)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..7 {
        let ev = watch.next().await.unwrap().unwrap();
        seen.push((ev.type_name(), rv(&ev.object().metadata)));
    }
    assert_eq!(seen[0].0, "ADDED");
    assert!(seen[1..6].iter().all(|e| e.0 == "MODIFIED"));
    assert_eq!(seen[6].0, "DELETED");
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "in order: {seen:?}"
    );
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (_dir, store) = open();
    let created = store.create(&claim("held", "1Gi")).await.unwrap();
    assert_eq!(
        created.metadata.finalizers.as_deref(),
        Some(&["kubernetes.io/pvc-protection".to_string()][..])
    );
    let pending = store
        .delete::<PersistentVolumeClaim>("default", "held", Preconditions::default())
        .await
        .unwrap();
    let Deleted::Pending(obj) = pending else {
        panic!("finalizer must hold the claim")
    };
    assert!(obj.metadata.deletion_timestamp.is_some());
    let mut obj: PersistentVolumeClaim = store.get("default", "held").await.unwrap();
    obj.metadata.finalizers = Some(vec![]);
    store.update(&obj).await.unwrap();
    let err = store
        .get::<PersistentVolumeClaim>("default", "held")
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let (_dir, store) = open();
    let created = store.create(&volume("pv1")).await.unwrap();
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(
        created
            .spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Retain")
    );
    let mut changed = created.clone();
    changed.status.as_mut().unwrap().phase = Some("Available".into());
    changed.spec.as_mut().unwrap().mount_options = Some(vec!["noatime".into()]);
    let updated = store.update(&changed).await.unwrap();
    assert_eq!(
        updated.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(updated.metadata.generation, Some(2));
    let mut status = updated.clone();
    status.status.as_mut().unwrap().phase = Some("Available".into());
    status.spec.as_mut().unwrap().mount_options = None;
    let after = store.update_status(&status).await.unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().phase.as_deref(),
        Some("Available")
    );
    assert_eq!(
        after
            .spec
            .as_ref()
            .unwrap()
            .mount_options
            .as_deref()
            .map(<[_]>::len),
        Some(1)
    );
    assert_eq!(after.metadata.generation, Some(2));
    assert!(
        after
            .status
            .as_ref()
            .unwrap()
            .last_phase_transition_time
            .is_some()
    );
    let _ = PersistentVolumeClaimStatus::default();
}

#[tokio::test]
async fn list_by_label_selector() {
    let (_dir, store) = open();
    store
        .create(&config_map("a", &[("app", "web"), ("tier", "fe")]))
        .await
        .unwrap();
    store
        .create(&config_map("b", &[("app", "db")]))
        .await
        .unwrap();
    store.create(&config_map("c", &[])).await.unwrap();
    let sel = LabelSelector {
        match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
        match_expressions: None,
    };
    let names = |l: Vec<ConfigMap>| -> Vec<String> {
        l.into_iter().map(|c| c.metadata.name.unwrap()).collect()
    };
    assert_eq!(
        names(store.list(Some("default"), Some(&sel)).await.unwrap().items),
        ["a"]
    );
    let sel = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: "NotIn".into(),
            values: Some(vec!["web".into()]),
        }]),
    };
    assert_eq!(
        names(store.list(None, Some(&sel)).await.unwrap().items),
        ["b", "c"]
    );
}

#[tokio::test]
async fn events_aggregate() {
    let (_dir, store) = open();
    let pvc = store.create(&claim("ev", "1Gi")).await.unwrap();
    let involved = ObjectReference {
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some("default".into()),
        name: Some("ev".into()),
        uid: pvc.metadata.uid.clone(),
        api_version: Some("v1".into()),
        ..Default::default()
    };
    for _ in 0..3 {
        store
            .record_event(
                &involved,
                EventType::Normal,
                "Provisioning",
                "External provisioner is provisioning volume",
            )
            .await
            .unwrap();
    }
    store
        .record_event(&involved, EventType::Warning, "ProvisioningFailed", "boom")
        .await
        .unwrap();
    let events = store
        .events_for("PersistentVolumeClaim", "default", "ev")
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let prov = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("Provisioning"))
        .unwrap();
    assert_eq!(prov.count, Some(3));
    assert!(prov.first_timestamp.is_some() && prov.last_timestamp.is_some());
    let _ = (
        StorageClass::default(),
        StoreOptions::default(),
        Duration::ZERO,
        WatchEvent::Added(1),
    );
}

#[tokio::test]
async fn events_are_listed_in_the_order_they_happened() {
    let (_dir, store) = open();
    let pvc = store.create(&claim("ord", "1Gi")).await.unwrap();
    let involved = ObjectReference {
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some("default".into()),
        name: Some("ord".into()),
        uid: pvc.metadata.uid.clone(),
        ..Default::default()
    };
    // Within one second names (hashes) would order these at random.
    let reasons = ["Zeta", "Alpha", "Mid", "Beta", "Alpha"];
    for r in reasons {
        store
            .record_event(&involved, EventType::Normal, r, "m")
            .await
            .unwrap();
    }
    let got: Vec<String> = store
        .events_for("PersistentVolumeClaim", "default", "ord")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.reason.unwrap())
        .collect();
    // The repeated Alpha moved to the end (its lastTimestamp is the newest).
    assert_eq!(got, ["Zeta", "Mid", "Beta", "Alpha"]);
}

#[tokio::test]
async fn expired_events_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        StoreOptions {
            event_ttl: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    let involved = ObjectReference {
        kind: Some("PersistentVolume".into()),
        name: Some("pv1".into()),
        ..Default::default()
    };
    store
        .record_event(&involved, EventType::Normal, "First", "one")
        .await
        .unwrap();
    assert_eq!(
        store
            .events_for("PersistentVolume", "", "pv1")
            .await
            .unwrap()
            .len(),
        1
    );
    store
        .record_event(&involved, EventType::Normal, "Second", "two")
        .await
        .unwrap();
    let events = store
        .events_for("PersistentVolume", "", "pv1")
        .await
        .unwrap();
    let reasons: Vec<_> = events.iter().map(|e| e.reason.clone().unwrap()).collect();
    assert_eq!(
        reasons,
        ["Second"],
        "with a zero TTL the older event is gone"
    );
    // Events of cluster-scoped objects live in "default".
    assert_eq!(events[0].metadata.namespace.as_deref(), Some("default"));
}

#[test]
fn database_is_private_and_symlinks_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    drop(
        rt.block_on(async { EmbeddedStore::open(dir.path()) })
            .unwrap(),
    );
    let mode = std::fs::metadata(dir.path().join("store.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A store.db planted as a symlink to another file is not followed.
    let evil = tempfile::tempdir().unwrap();
    let target = evil.path().join("elsewhere");
    std::fs::write(&target, b"not a database").unwrap();
    std::os::unix::fs::symlink(&target, evil.path().join("store.db")).unwrap();
    let err = EmbeddedStore::open(evil.path()).unwrap_err();
    assert!(err.to_string().contains("store.db"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"not a database");
}

//! Defaulting, admission and update validation as the API server applies them.

use std::collections::BTreeMap;

use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret,
};
use strata_store::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strata_store::kinds::KindRef;
use strata_store::{EmbeddedStore, Preconditions, Store, StoreOptions};

mod common;
use common::{from_json, open};

fn class(name: &str, default: bool) -> StorageClass {
    from_json(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name, "annotations": {"storageclass.kubernetes.io/is-default-class": default.to_string()}},
        "provisioner": "local.csi.strata.io",
    }))
}

fn claim(name: &str, class: Option<&str>) -> PersistentVolumeClaim {
    let mut v = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    if let Some(c) = class {
        v["spec"]["storageClassName"] = json!(c);
    }
    from_json(v)
}

#[tokio::test]
async fn storage_class_defaults_and_immutability() {
    let (_dir, store) = open();
    let sc = store.create(&class("fast", false)).await.unwrap();
    assert_eq!(sc.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(sc.volume_binding_mode.as_deref(), Some("Immediate"));
    let mut changed = sc.clone();
    changed.provisioner = "other.example.com".into();
    let err = store.update(&changed).await.unwrap_err();
    assert!(
        err.is_invalid() && err.to_string().starts_with("provisioner"),
        "{err}"
    );
    let mut changed = sc.clone();
    changed.parameters = Some(BTreeMap::from([("a".into(), "b".into())]));
    assert!(store.update(&changed).await.unwrap_err().is_invalid());
    // Other fields may change.
    let mut changed = sc.clone();
    changed.allow_volume_expansion = Some(true);
    store.update(&changed).await.unwrap();
}

#[tokio::test]
async fn default_class_admission_newest_wins_and_empty_means_none() {
    let (_dir, store) = open();
    // No default class: the claim stays without one.
    let c = store.create(&claim("before", None)).await.unwrap();
    assert_eq!(c.spec.unwrap().storage_class_name, None);
    store.create(&class("b-default", true)).await.unwrap();
    store.create(&class("a-default", true)).await.unwrap();
    store.create(&class("plain", false)).await.unwrap();
    let c = store.create(&claim("nil", None)).await.unwrap();
    // Both defaults were created within the same second: the tie goes to the name.
    let name = c.spec.unwrap().storage_class_name.unwrap();
    assert!(name == "a-default" || name == "b-default", "{name}");
    let c = store.create(&claim("empty", Some(""))).await.unwrap();
    assert_eq!(c.spec.unwrap().storage_class_name.as_deref(), Some(""));
    let c = store
        .create(&claim("explicit", Some("plain")))
        .await
        .unwrap();
    assert_eq!(
        c.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("plain")
    );
    assert_eq!(c.spec.unwrap().volume_mode.as_deref(), Some("Filesystem"));
    assert_eq!(
        c.metadata.finalizers.unwrap(),
        ["kubernetes.io/pvc-protection"]
    );
}

#[tokio::test]
async fn pv_protection_and_defaults() {
    let (_dir, store) = open();
    let pv: PersistentVolume = from_json(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv1"},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}, "hostPath": {"path": "/tmp"}},
        "status": {"phase": "Bound"},
    }));
    let pv = store.create(&pv).await.unwrap();
    assert_eq!(
        pv.metadata.finalizers.as_deref().unwrap(),
        ["kubernetes.io/pv-protection"]
    );
    assert_eq!(
        pv.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending"),
        "status is reset on create"
    );
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    let mut moved = pv.clone();
    moved
        .spec
        .as_mut()
        .unwrap()
        .host_path
        .as_mut()
        .unwrap()
        .path = "/etc".into();
    let err = store.update(&moved).await.unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}

#[tokio::test]
async fn claim_spec_immutable_after_binding_except_growth() {
    let (_dir, store) = open();
    let c = store.create(&claim("grow", Some(""))).await.unwrap();
    // The binder's writes: volumeName on the pending claim, then status.
    let mut bound = c.clone();
    bound.spec.as_mut().unwrap().volume_name = Some("pv1".into());
    let bound = store.update(&bound).await.unwrap();
    let mut status = bound.clone();
    status.status = Some(from_json(
        json!({"phase": "Bound", "capacity": {"storage": "1Gi"}}),
    ));
    let bound = store.update_status(&status).await.unwrap();
    let set_size = |c: &PersistentVolumeClaim, s: &str| {
        let mut c = c.clone();
        c.spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests = Some(BTreeMap::from([(
            "storage".into(),
            strata_store::k8s_openapi::apimachinery::pkg::api::resource::Quantity(s.into()),
        )]));
        c
    };
    let grown = store.update(&set_size(&bound, "2Gi")).await.unwrap();
    assert_eq!(grown.metadata.generation, Some(3));
    let err = store.update(&set_size(&grown, "512Mi")).await.unwrap_err();
    assert!(err.to_string().contains("can not be less than"), "{err}");
    let mut modes = grown.clone();
    modes.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
    let err = store.update(&modes).await.unwrap_err();
    assert!(err.to_string().contains("spec is immutable"), "{err}");
}

#[tokio::test]
async fn immutable_config_maps_and_secrets() {
    let (_dir, store) = open();
    let cm: ConfigMap = from_json(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "frozen"}, "data": {"a": "1"}, "immutable": true}));
    let cm = store.create(&cm).await.unwrap();
    let mut changed = cm.clone();
    changed.data = Some(BTreeMap::from([("a".into(), "2".into())]));
    let err = store.update(&changed).await.unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
    let mut unfrozen = cm.clone();
    unfrozen.immutable = Some(false);
    assert!(store.update(&unfrozen).await.is_err());
    // Metadata may still change, and deletion works.
    let mut labelled = cm.clone();
    labelled.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
    store.update(&labelled).await.unwrap();
    store
        .delete::<ConfigMap>("default", "frozen", Preconditions::default())
        .await
        .unwrap();

    let secret: Secret = from_json(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}, "immutable": true}));
    let secret = store.create(&secret).await.unwrap();
    assert_eq!(secret.string_data, None, "stringData is folded into data");
    assert_eq!(secret.data.as_ref().unwrap()["password"].0, b"hunter2");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let mut changed = secret.clone();
    changed.data = None;
    assert!(store.update(&changed).await.is_err());
}

#[tokio::test]
async fn names_namespaces_and_generate_name() {
    let (_dir, store) = open();
    for bad in ["Bad", "a/b", "..", "-x", "x_y"] {
        let err = store.create(&claim(bad, None)).await.unwrap_err();
        assert!(err.is_invalid(), "{bad}: {err}");
    }
    let mut generated = claim("", None);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("data-".into());
    let a = store.create(&generated).await.unwrap();
    let b = store.create(&generated).await.unwrap();
    let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(a.starts_with("data-") && a.len() == 10 && a != b, "{a} {b}");
    // A cluster-scoped object may not name a namespace.
    let mut sc = class("ns", false);
    sc.metadata.namespace = Some("default".into());
    assert!(store.create(&sc).await.unwrap_err().is_invalid());
    // A namespaced object without one lands in "default".
    let mut c = claim("nons", None);
    c.metadata.namespace = None;
    let c = store.create(&c).await.unwrap();
    assert_eq!(c.metadata.namespace.as_deref(), Some("default"));
    // resourceVersion may not be set on create.
    let mut with_rv = claim("rv", None);
    with_rv.metadata.resource_version = Some("5".into());
    assert!(store.create(&with_rv).await.unwrap_err().is_invalid());
    let _ = ObjectMeta::default();
}

#[tokio::test]
async fn deletion_rules() {
    let (_dir, store) = open();
    let c = store.create(&claim("del", None)).await.unwrap();
    let wrong_uid = Preconditions {
        uid: Some("nope".into()),
        resource_version: None,
    };
    assert!(
        store
            .delete::<PersistentVolumeClaim>("default", "del", wrong_uid)
            .await
            .unwrap_err()
            .is_conflict()
    );
    let stale_rv = Preconditions {
        uid: None,
        resource_version: Some("0".into()),
    };
    assert!(
        store
            .delete::<PersistentVolumeClaim>("default", "del", stale_rv)
            .await
            .unwrap_err()
            .is_conflict()
    );
    let right = Preconditions {
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
    };
    let pending = store
        .delete::<PersistentVolumeClaim>("default", "del", right)
        .await
        .unwrap();
    assert!(!pending.is_gone());
    let first = pending.into_object();
    // A second delete is idempotent: same deletionTimestamp, no new version.
    let again = store
        .delete::<PersistentVolumeClaim>("default", "del", Preconditions::default())
        .await
        .unwrap()
        .into_object();
    assert_eq!(
        again.metadata.deletion_timestamp,
        first.metadata.deletion_timestamp
    );
    assert_eq!(
        again.metadata.resource_version,
        first.metadata.resource_version
    );
    // No new finalizers once deleting.
    let mut more = again.clone();
    more.metadata
        .finalizers
        .as_mut()
        .unwrap()
        .push("example.com/extra".into());
    assert!(store.update(&more).await.unwrap_err().is_invalid());
    // Removing the last finalizer removes the object.
    let mut none = again.clone();
    none.metadata.finalizers = None;
    store.update(&none).await.unwrap();
    assert!(
        store
            .get::<PersistentVolumeClaim>("default", "del")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        store
            .delete::<PersistentVolumeClaim>("default", "del", Preconditions::default())
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn no_op_update_keeps_the_version_and_status_update_ignores_spec() {
    let (_dir, store) = open();
    let c = store.create(&claim("noop", Some(""))).await.unwrap();
    let same = store.update(&c).await.unwrap();
    assert_eq!(same.metadata.resource_version, c.metadata.resource_version);
    let mut both = c.clone();
    both.spec.as_mut().unwrap().volume_name = Some("pv9".into());
    both.status = Some(from_json(json!({"phase": "Lost"})));
    let after = store.update_status(&both).await.unwrap();
    assert_eq!(after.spec.as_ref().unwrap().volume_name, None);
    assert_eq!(
        after.status.as_ref().unwrap().phase.as_deref(),
        Some("Lost")
    );
    assert_eq!(after.metadata.generation, Some(1));
}

#[tokio::test]
async fn watch_gone_after_compaction_and_quiet_kinds_keep_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        StoreOptions {
            watch_history: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let quiet_from = store
        .list::<StorageClass>(None, None)
        .await
        .unwrap()
        .resource_version;
    let mut quiet = store.watch::<StorageClass>(None, quiet_from).await.unwrap();
    let mut cm: ConfigMap =
        from_json(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "busy"}}));
    cm = store.create(&cm).await.unwrap();
    for i in 0..40 {
        cm.data = Some(BTreeMap::from([("i".into(), i.to_string())]));
        cm = store.update(&cm).await.unwrap();
    }
    let err = match store.watch::<ConfigMap>(None, 1).await {
        Err(e) => e,
        Ok(_) => panic!("history before the bound must be gone"),
    };
    assert!(err.is_gone(), "{err}");
    // A recent version still works.
    let recent: u64 = cm.metadata.resource_version.unwrap().parse().unwrap();
    assert!(store.watch::<ConfigMap>(None, recent - 3).await.is_ok());
    // The StorageClass watch was idle through all of it and still delivers, not Gone.
    let sc = store.create(&class("late", false)).await.unwrap();
    use futures::StreamExt as _;
    let ev = tokio::time::timeout(std::time::Duration::from_secs(60), quiet.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.object().metadata.uid, sc.metadata.uid);
}

#[tokio::test]
async fn dynamic_values_follow_the_same_rules() {
    let (_dir, store) = open();
    let kind = strata_store::kinds::lookup("pvc").unwrap().kind_ref;
    assert_eq!(kind, KindRef::of::<PersistentVolumeClaim>());
    let v = store
        .create_value(kind, json!({"metadata": {"name": "dyn"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
        .await
        .unwrap();
    assert_eq!(v["kind"], "PersistentVolumeClaim");
    assert_eq!(
        v["metadata"]["finalizers"][0],
        "kubernetes.io/pvc-protection"
    );
    let err = store
        .create_value(kind, json!({"metadata": {"name": "bad"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "-1"}}}}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("greater than zero"), "{err}");
    // Dynamic writes are decoded into the typed struct first: nothing undecodable is stored.
    let err = store
        .create_value(kind, json!({"metadata": {"name": "odd"}, "spec": {"accessModes": ["ReadWriteOnce"], "bogus": 1, "resources": {"requests": {"storage": "1Gi"}}}}))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "spec.bogus: unknown field");
    let err = store
        .create_value(
            kind,
            json!({"metadata": {"name": "odd"}, "spec": {"accessModes": "ReadWriteOnce"}}),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.accessModes: invalid type"),
        "{err}"
    );
    // "" lists every namespace of a namespaced kind.
    let all = store.list_values(kind, Some(""), None).await.unwrap();
    assert_eq!(all.items.len(), 1);
}

#[tokio::test]
async fn snapshot_kinds_apply_and_are_validated_as_their_crds() {
    use strata_store::apply::{Outcome, parse_manifests};
    use strata_store::snapshot::{VolumeSnapshot, VolumeSnapshotContent};
    let (_dir, store) = open();
    let manifest = "
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: snaps}
driver: local.csi.strata.io
deletionPolicy: Delete
parameters: {a: b}
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: s1}
spec:
  volumeSnapshotClassName: snaps
  source: {persistentVolumeClaimName: data}
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotContent
metadata: {name: pre}
spec:
  deletionPolicy: Retain
  driver: local.csi.strata.io
  source: {snapshotHandle: h1}
  volumeSnapshotRef: {name: s2, namespace: default}
status: {readyToUse: true}
";
    let applied = store
        .apply(parse_manifests(manifest, "default").unwrap())
        .await
        .unwrap();
    assert!(applied.iter().all(|a| a.outcome == Outcome::Created));
    let again = store
        .apply(parse_manifests(manifest, "default").unwrap())
        .await
        .unwrap();
    assert!(
        again.iter().all(|a| a.outcome == Outcome::Unchanged),
        "{again:?}"
    );
    let content: VolumeSnapshotContent = store.get("", "pre").await.unwrap();
    assert!(
        content.status.is_none(),
        "status is a subresource: dropped on create"
    );

    // Exactly one source, on both kinds; the class needs a known policy.
    let bad = [
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: s3}\nspec: {source: {}}",
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: s3}\nspec: {source: {persistentVolumeClaimName: a, volumeSnapshotContentName: b}}",
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: s3}\nspec: {volumeSnapshotClassName: '', source: {persistentVolumeClaimName: a}}",
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotContent\nmetadata: {name: c}\nspec: {deletionPolicy: Delete, driver: d, source: {volumeHandle: v, snapshotHandle: h}, volumeSnapshotRef: {name: s, namespace: default}}",
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotContent\nmetadata: {name: c}\nspec: {deletionPolicy: Delete, driver: d, source: {snapshotHandle: h}, volumeSnapshotRef: {name: s}}",
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: c}\ndriver: d\ndeletionPolicy: Keep",
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: c}\ndriver: d\ndeletionPolicy: Delete\nparamters: {}",
    ];
    let rv = store.revision().await.unwrap();
    for doc in bad {
        let err = match parse_manifests(doc, "default") {
            Err(e) => e,
            Ok(m) => store.apply(m).await.unwrap_err(),
        };
        let inner = match &err {
            strata_store::Error::Document { source, .. } => source.as_ref(),
            e => e,
        };
        assert!(inner.is_invalid(), "{doc}: {err}");
    }
    assert_eq!(
        store.revision().await.unwrap(),
        rv,
        "refusals wrote nothing"
    );

    // The source is immutable; the status subresource may change.
    let mut s: VolumeSnapshot = store.get("default", "s1").await.unwrap();
    s.spec.source.persistent_volume_claim_name = Some("other".into());
    let err = store.update(&s).await.unwrap_err();
    assert!(
        err.is_invalid()
            && err
                .to_string()
                .contains("persistentVolumeClaimName is immutable"),
        "{err}"
    );
    let mut s: VolumeSnapshot = store.get("default", "s1").await.unwrap();
    s.status = Some(Default::default());
    s.status.as_mut().unwrap().ready_to_use = Some(false);
    let s = store.update_status(&s).await.unwrap();
    assert_eq!(s.status.unwrap().ready_to_use, Some(false));
}

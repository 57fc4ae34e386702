//! Manifest apply through the store: all documents or none, idempotent re-apply.

use strata_store::Store;
use strata_store::apply::{Outcome, parse_manifests};
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};

mod common;
use common::open;

const MANIFEST: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}
provisioner: local.csi.strata.io
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, labels: {app: web}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: apps}
data: {a: \"1\", b: \"2\"}
";

#[tokio::test]
async fn multi_document_apply_is_idempotent() {
    let (_dir, store) = open();
    let applied = store
        .apply(parse_manifests(MANIFEST, "default").unwrap())
        .await
        .unwrap();
    assert!(applied.iter().all(|a| a.outcome == Outcome::Created));
    // The claim created in the same transaction as the class got it as default.
    let pvc: PersistentVolumeClaim = store.get("default", "data").await.unwrap();
    assert_eq!(
        pvc.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("local")
    );
    let rv = store.revision().await.unwrap();
    let again = store
        .apply(parse_manifests(MANIFEST, "default").unwrap())
        .await
        .unwrap();
    assert!(
        again.iter().all(|a| a.outcome == Outcome::Unchanged),
        "{again:?}"
    );
    assert_eq!(
        store.revision().await.unwrap(),
        rv,
        "a re-apply writes nothing"
    );
    // A changed manifest updates in place and removes what it no longer sets.
    let changed = MANIFEST.replace("data: {a: \"1\", b: \"2\"}", "data: {a: \"9\"}");
    let out = store
        .apply(parse_manifests(&changed, "default").unwrap())
        .await
        .unwrap();
    assert_eq!(out[3].outcome, Outcome::Configured);
    let cm: ConfigMap = store.get("apps", "cfg").await.unwrap();
    assert_eq!(
        cm.data.unwrap().into_iter().collect::<Vec<_>>(),
        [("a".to_string(), "9".to_string())]
    );
    // Status and finalizers set by others survive an apply.
    let mut status = pvc.clone();
    status.status.as_mut().unwrap().phase = Some("Bound".into());
    store.update_status(&status).await.unwrap();
    store
        .apply(parse_manifests(MANIFEST, "default").unwrap())
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = store.get("default", "data").await.unwrap();
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(
        pvc.metadata.finalizers.unwrap(),
        ["kubernetes.io/pvc-protection"]
    );
}

#[tokio::test]
async fn an_invalid_document_stores_nothing() {
    let (_dir, store) = open();
    let rv = store.revision().await.unwrap();
    let bad = format!(
        "{MANIFEST}---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: bad}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 10Gx}}}}\n"
    );
    let err = parse_manifests(&bad, "default").unwrap_err();
    let text = anyhow_like(&err);
    assert_eq!(
        text,
        "document 5 (PersistentVolumeClaim bad): spec.resources.requests.storage: invalid quantity \"10Gx\""
    );
    assert_eq!(store.revision().await.unwrap(), rv);
}

#[tokio::test]
async fn a_write_error_rolls_back_the_whole_apply() {
    let (_dir, store) = open();
    store
        .apply(parse_manifests(MANIFEST, "default").unwrap())
        .await
        .unwrap();
    let rv = store.revision().await.unwrap();
    // New ConfigMap first, then an immutable StorageClass field change: neither lands.
    let docs = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: new}}\n---\n{}",
        MANIFEST.replace("local.csi.strata.io", "other.csi.strata.io")
    );
    let err = store
        .apply(parse_manifests(&docs, "default").unwrap())
        .await
        .unwrap_err();
    assert!(
        anyhow_like(&err).starts_with("document 3 (StorageClass local): provisioner: Forbidden"),
        "{}",
        anyhow_like(&err)
    );
    assert_eq!(store.revision().await.unwrap(), rv);
    assert!(
        store
            .get::<ConfigMap>("default", "new")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

fn anyhow_like(e: &dyn std::error::Error) -> String {
    strata_report::chain(e)
}

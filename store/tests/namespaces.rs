//! Namespaces as objects (k8s-semantics §7): the initial three, NamespaceLifecycle
//! admission, two-step deletion through `spec.finalizers`, and the migration that gives
//! objects written before namespaces existed a namespace.

use std::path::Path;

use strata_store::apply::{Outcome, parse_manifests};
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference};
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strata_store::{
    Deleted, EmbeddedStore, EventType, INITIAL_NAMESPACES, Preconditions, SCHEMA_VERSION, Store,
};

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).unwrap()
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn config_map(ns: &str, name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn spec_finalizers(ns: &Namespace) -> Vec<String> {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
}

fn phase(ns: &Namespace) -> &str {
    ns.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

#[tokio::test]
async fn the_initial_namespaces_exist_from_the_start_and_opening_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let list = store.list::<Namespace>(None, None).await.unwrap();
    let mut names: Vec<&str> = list
        .items
        .iter()
        .map(|n| n.metadata.name.as_deref().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["default", "kube-public", "kube-system"]);
    for ns in &list.items {
        assert_eq!(phase(ns), "Active");
        assert_eq!(spec_finalizers(ns), ["kubernetes"]);
        let name = ns.metadata.name.as_deref().unwrap();
        assert_eq!(
            ns.metadata.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            name
        );
    }
    let rv = store.revision().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.revision().await.unwrap(),
        rv,
        "no write on a second open"
    );
    assert_eq!(
        store
            .list::<Namespace>(None, None)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rv = store.revision().await.unwrap();
    let err = store.create(&config_map("nope", "c")).await.unwrap_err();
    assert_eq!(err.to_string(), "namespaces \"nope\" not found");
    assert!(!err.is_not_found(), "the object itself was never there");
    assert_eq!(store.revision().await.unwrap(), rv);
    // Events, too, need their namespace.
    let involved = ObjectReference {
        kind: Some("ConfigMap".into()),
        namespace: Some("nope".into()),
        name: Some("c".into()),
        ..Default::default()
    };
    let err = store
        .record_event(&involved, EventType::Normal, "Test", "hello")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "namespaces \"nope\" not found");
    // Once the namespace exists, the same create works.
    store.create(&namespace("nope")).await.unwrap();
    store.create(&config_map("nope", "c")).await.unwrap();
}

#[tokio::test]
async fn deleting_a_namespace_terminates_it_until_it_is_finalized() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let created = store.create(&namespace("apps")).await.unwrap();
    assert_eq!(spec_finalizers(&created), ["kubernetes"]);
    store.create(&config_map("apps", "kept")).await.unwrap();

    let pending = match store
        .delete::<Namespace>("", "apps", Preconditions::default())
        .await
        .unwrap()
    {
        Deleted::Pending(ns) => ns,
        Deleted::Gone(_) => panic!("the kubernetes finalizer holds it"),
    };
    assert_eq!(phase(&pending), "Terminating");
    assert!(pending.metadata.deletion_timestamp.is_some());

    // No new content while it terminates; what is there can still change.
    let err = store.create(&config_map("apps", "new")).await.unwrap_err();
    assert!(err.is_forbidden());
    assert_eq!(
        err.to_string(),
        "configmaps \"new\" is forbidden: unable to create new content in namespace apps because it is being terminated"
    );
    let mut kept: ConfigMap = store.get("apps", "kept").await.unwrap();
    kept.data = Some([("k".to_string(), "v".to_string())].into());
    store.update(&kept).await.unwrap();

    // A plain update cannot drop the finalizer (only the finalize subresource can), nor
    // the name label.
    let mut ns: Namespace = store.get("", "apps").await.unwrap();
    ns.spec.as_mut().unwrap().finalizers = Some(vec![]);
    ns.metadata.labels = None;
    let ns = store.update(&ns).await.unwrap();
    assert_eq!(spec_finalizers(&ns), ["kubernetes"]);
    assert_eq!(
        ns.metadata.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
        "apps"
    );
    // Deleting again while it terminates changes nothing.
    let again = store
        .delete::<Namespace>("", "apps", Preconditions::default())
        .await
        .unwrap();
    assert!(!again.is_gone());

    let mut ns: Namespace = store.get("", "apps").await.unwrap();
    ns.spec.as_mut().unwrap().finalizers = Some(vec![]);
    store.finalize_namespace(&ns).await.unwrap();
    let err = store.get::<Namespace>("", "apps").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn another_finalizer_keeps_a_finalized_namespace_until_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ns = namespace("held");
    ns.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    store.create(&ns).await.unwrap();
    store
        .delete::<Namespace>("", "held", Preconditions::default())
        .await
        .unwrap();
    let mut ns: Namespace = store.get("", "held").await.unwrap();
    ns.spec.as_mut().unwrap().finalizers = None;
    let ns = store.finalize_namespace(&ns).await.unwrap();
    assert!(spec_finalizers(&ns).is_empty());
    let mut ns: Namespace = store.get("", "held").await.unwrap();
    assert_eq!(phase(&ns), "Terminating");
    ns.metadata.finalizers = None;
    store.update(&ns).await.unwrap();
    assert!(
        store
            .get::<Namespace>("", "held")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn the_initial_namespaces_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for name in INITIAL_NAMESPACES {
        let err = store
            .delete::<Namespace>("", name, Preconditions::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted")
        );
        let ns: Namespace = store.get("", name).await.unwrap();
        assert_eq!(phase(&ns), "Active");
        assert!(ns.metadata.deletion_timestamp.is_none());
    }
}

#[tokio::test]
async fn one_apply_creates_a_namespace_and_its_content_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let manifest = "
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: team}
data: {a: \"1\"}
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
";
    let applied = store
        .apply(parse_manifests(manifest, "default").unwrap())
        .await
        .unwrap();
    let order: Vec<(&str, Outcome)> = applied.iter().map(|a| (a.kind.kind(), a.outcome)).collect();
    assert_eq!(
        order,
        [
            ("Namespace", Outcome::Created),
            ("ConfigMap", Outcome::Created)
        ]
    );
    store.get::<ConfigMap>("team", "cfg").await.unwrap();
    // Re-applying the same file changes nothing, the server-set finalizer included.
    let again = store
        .apply(parse_manifests(manifest, "default").unwrap())
        .await
        .unwrap();
    assert!(again.iter().all(|a| a.outcome == Outcome::Unchanged));
    // Content in a namespace the file does not create is refused, all or nothing.
    let bad = "
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: team}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: lost, namespace: elsewhere}
";
    let err = store
        .apply(parse_manifests(bad, "default").unwrap())
        .await
        .unwrap_err();
    assert!(
        strata_report::chain(&err).contains("namespaces \"elsewhere\" not found"),
        "{}",
        strata_report::chain(&err)
    );
    assert!(
        store
            .get::<ConfigMap>("team", "other")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn objects_written_before_namespaces_existed_get_their_namespace_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    {
        let store = open(dir.path());
        store.create(&namespace("legacy")).await.unwrap();
        store.create(&config_map("legacy", "old")).await.unwrap();
    }
    // Make the file what format 2 left: the objects, no Namespace objects.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("DELETE FROM objects WHERE kind = 'Namespace'", [])
            .unwrap();
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema'", [])
            .unwrap();
    }
    let store = open(dir.path());
    let schema: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(schema, SCHEMA_VERSION as i64);
    let mut names: Vec<String> = store
        .list::<Namespace>(None, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["default", "kube-public", "kube-system", "legacy"]);
    store.get::<ConfigMap>("legacy", "old").await.unwrap();
}

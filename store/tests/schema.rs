//! The store database's format version: a file written before versions were checked opens
//! and is migrated, a newer one is refused naming both versions.

use std::path::Path;

use strata_store::k8s_openapi::api::apps::v1::StatefulSet;
use strata_store::k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Secret,
};
use strata_store::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::{EmbeddedStore, SCHEMA_VERSION, Store};

/// `volctl apply -f examples/quickstart.yaml -f examples/static-pv.yaml` into an empty state
/// dir by the build before format versions were checked (schema 1); see fixtures/README.md.
const FIXTURE_V1: &str = "tests/fixtures/store-v1.db";
/// The same command by the build that made namespaces objects (schema 3).
const FIXTURE_V3: &str = "tests/fixtures/store-v3.db";

fn copy_fixture(dir: &Path) {
    copy(FIXTURE_V1, dir);
}

fn copy(fixture: &str, dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture);
    std::fs::copy(&src, dir.join("store.db")).expect("copy fixture");
}

fn schema_of(db: &Path) -> (i64, bool) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let v = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let index = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'watch_log_by_kind_ns')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (v, index)
}

#[tokio::test]
async fn a_version_1_database_opens_migrated_with_every_object() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    assert_eq!(schema_of(&dir.path().join("store.db")), (1, false));
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        schema_of(&dir.path().join("store.db")),
        (SCHEMA_VERSION as i64, true)
    );
    let sc: StorageClass = store.get("", "strata-local").await.unwrap();
    assert_eq!(sc.provisioner, "local.csi.strata.io");
    store
        .get::<ConfigMap>("default", "hello-config")
        .await
        .unwrap();
    store
        .get::<Secret>("default", "hello-secret")
        .await
        .unwrap();
    store.get::<StatefulSet>("default", "hello").await.unwrap();
    store
        .get::<PersistentVolume>("", "static-data")
        .await
        .unwrap();
    let claim: PersistentVolumeClaim = store.get("default", "static-claim").await.unwrap();
    // Namespaces became objects (format 3): the initial ones exist after the upgrade.
    let namespaces = store.list::<Namespace>(None, None).await.unwrap().items;
    assert_eq!(namespaces.len(), 3, "default, kube-system, kube-public");
    // The history is intact and the revision goes on from where the old file left it.
    let rv: u64 = claim.metadata.resource_version.unwrap().parse().unwrap();
    assert!(store.watch::<ConfigMap>(None, 0).await.is_ok());
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("after-upgrade".into());
    cm.metadata.namespace = Some("default".into());
    let new = store.create(&cm).await.unwrap();
    let new_rv: u64 = new.metadata.resource_version.unwrap().parse().unwrap();
    assert!(new_rv > rv);
    drop(store);
    // Opening again (already current) changes nothing.
    EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        schema_of(&dir.path().join("store.db")),
        (SCHEMA_VERSION as i64, true)
    );
}

#[tokio::test]
async fn a_version_3_database_opens_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    copy(FIXTURE_V3, dir.path());
    assert_eq!(schema_of(&dir.path().join("store.db")), (3, true));
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        schema_of(&dir.path().join("store.db")),
        (SCHEMA_VERSION as i64, true)
    );
    store.get::<StatefulSet>("default", "hello").await.unwrap();
    store
        .get::<PersistentVolumeClaim>("default", "static-claim")
        .await
        .unwrap();
    let ns: Namespace = store.get("", "kube-system").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(store.revision().await.unwrap(), 9, "opening wrote nothing");
}

#[test]
fn a_newer_database_is_refused_naming_both_versions_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedStore::open(dir.path()).unwrap());
    let db = dir.path().join("store.db");
    let newer = SCHEMA_VERSION as i64 + 1;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE meta SET value = ?1 WHERE key = 'schema'", [newer])
        .unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("version {newer}"))
            && err.contains(&format!("version {SCHEMA_VERSION}")),
        "{err}"
    );
    assert_eq!(schema_of(&db).0, newer, "the newer file is not touched");
}

//! A write in another process wakes a watcher here through the notify file, not a timer.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt as _;
use strata_store::k8s_openapi::api::core::v1::ConfigMap;
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strata_store::{EmbeddedStore, Store, StoreOptions, WatchEvent};

const CHILD_DIR: &str = "STRATA_STORE_TEST_CHILD_DIR";
const CHILD_NAME: &str = "STRATA_STORE_TEST_CHILD_NAME";

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("from".into(), "child".into())])),
        ..Default::default()
    }
}

/// Not a test of its own: the body of the child process the tests below spawn (this same
/// test binary, filtered to this function). Without the variables it has nothing to do.
#[test]
fn child_writer() {
    let (Some(dir), Some(name)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_NAME).ok())
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(std::path::Path::new(&dir)).unwrap();
        store.create(&cm(&name)).await.unwrap();
    });
}

fn spawn_child_writer(dir: &std::path::Path, name: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--test-threads=1", "--nocapture"])
        .env(CHILD_DIR, dir)
        .env(CHILD_NAME, name)
        // The child's own test summary would read like ours; its stderr still shows failures.
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "child writer failed: {status}");
}

fn never_recheck() -> StoreOptions {
    // The safety re-check is pushed far out, so only a real wake-up can deliver in time.
    StoreOptions {
        watch_recheck: Duration::from_secs(3600),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_another_process_wakes_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(dir.path(), never_recheck()).unwrap();
    let from = store
        .list::<ConfigMap>(None, None)
        .await
        .unwrap()
        .resource_version;
    let mut watch = store
        .watch::<ConfigMap>(Some("default"), from)
        .await
        .unwrap();
    let path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || spawn_child_writer(&path, "from-child"))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("the watcher must be woken by the other process's commit")
        .unwrap()
        .unwrap();
    let WatchEvent::Added(obj) = ev else {
        panic!("expected ADDED, got {ev:?}")
    };
    assert_eq!(obj.metadata.name.as_deref(), Some("from-child"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_handle_on_the_same_file_wakes_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let watcher = EmbeddedStore::open_with(dir.path(), never_recheck()).unwrap();
    let writer = EmbeddedStore::open(dir.path()).unwrap();
    let mut watch = watcher.watch::<ConfigMap>(None, 0).await.unwrap();
    // The watch is already waiting when the write happens.
    let pending = tokio::spawn(async move { watch.next().await });
    writer.create(&cm("second-handle")).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("woken by the other handle's commit")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.object().metadata.name.as_deref(), Some("second-handle"));
    // Both handles see the same state.
    let got: ConfigMap = watcher.get("default", "second-handle").await.unwrap();
    assert_eq!(got.metadata.uid, ev.into_object().metadata.uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_handles_than_inotify_instances() {
    // The per-user inotify instance limit is 128 by default: handles of one process on one
    // store share a listener, so opening more than that still works.
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<EmbeddedStore> = (0..140)
        .map(|_| EmbeddedStore::open_with(dir.path(), never_recheck()).unwrap())
        .collect();
    let mut watch = handles[0].watch::<ConfigMap>(None, 0).await.unwrap();
    handles[139].create(&cm("many")).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("woken")
        .unwrap()
        .unwrap();
    assert_eq!(ev.object().metadata.name.as_deref(), Some("many"));
}

//! Durable acknowledgements: a write is answered only after a WAL sync that started after
//! its commit (group commit), and concurrent writers share those syncs.

use std::collections::BTreeMap;

use strata_store::k8s_openapi::api::core::v1::ConfigMap;
use strata_store::{EmbeddedStore, Store};

fn cm(name: String) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name);
    c.metadata.namespace = Some("default".into());
    c.data = Some(BTreeMap::from([("k".into(), "v".into())]));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_was_synced_and_concurrent_writes_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.durability_stats(), (0, 0));
    store.create(&cm("one".into())).await.unwrap();
    let (durable, syncs) = store.durability_stats();
    assert_eq!(
        (durable, syncs),
        (1, 1),
        "the reply came after its own sync"
    );

    // Reads and no-op writes need no sync.
    let got: ConfigMap = store.get("default", "one").await.unwrap();
    store.update(&got).await.unwrap();
    assert_eq!(store.durability_stats(), (1, 1));

    let writers: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create(&cm(format!("c-{i}"))).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let (durable, syncs) = store.durability_stats();
    assert_eq!(durable, 65, "every acknowledged write is covered by a sync");
    assert!((2..=65).contains(&syncs), "{syncs} syncs");
}

#[test]
fn a_misspelt_failpoint_is_refused_at_open() {
    // Run in a child so the variable cannot leak into other tests of this binary.
    if std::env::var_os("STORE_FAILPOINT_CHILD").is_some() {
        let dir = tempfile::tempdir().unwrap();
        let err = EmbeddedStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("write:no-such-step"), "{err}");
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_misspelt_failpoint_is_refused_at_open"])
        .env("STORE_FAILPOINT_CHILD", "1")
        .env(strata_store::failpoint::ENV, "write:no-such-step")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A control loop's handle does not wait for a sync per write: its writes return at commit
/// and a background sync covers them soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_writes_return_at_commit_and_share_one_background_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = strata_store::StoreOptions::controller("test");
    // Long enough that no background sync can run while the writes below do.
    options.durability = strata_store::Durability::Ordered {
        within: std::time::Duration::from_secs(30),
    };
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
    for i in 0..20 {
        store.create(&cm(format!("o-{i}"))).await.unwrap();
    }
    assert_eq!(
        store.durability_stats(),
        (0, 0),
        "ordered writes waited for syncs"
    );

    let mut options = strata_store::StoreOptions::controller("test");
    options.durability = strata_store::Durability::Ordered {
        within: std::time::Duration::from_millis(20),
    };
    let quick = EmbeddedStore::open_with(dir.path(), options).unwrap();
    for i in 0..20 {
        quick.create(&cm(format!("q-{i}"))).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while quick.durability_stats().1 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no background sync after the writes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

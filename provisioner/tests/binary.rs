//! The `strata-provisioner` binary: runs against the state dir a user's volctl writes to,
//! stops gracefully on SIGTERM, picks up where it left off after a restart, and garbage
//! collects a deleted StatefulSet's pods and (whenDeleted=Delete) claims.

use serde_json::json;
use strata_provisioner::k8s_openapi::api::apps::v1::StatefulSet;
use strata_provisioner::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod,
};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::{EmbeddedStore, Object, Preconditions, Store};
use testkit::{DriverConfig, DriverProcess, LoopPool};

mod common;

use common::{Provisioner, csi_binary, eventually};

const NODE: &str = "node-bin";

async fn create<K: Object>(store: &EmbeddedStore, v: serde_json::Value) -> K {
    store
        .create(&serde_json::from_value::<K>(v).expect("json"))
        .await
        .expect("create")
}

async fn bound(store: &EmbeddedStore, name: &str) -> PersistentVolumeClaim {
    eventually(&format!("{name} Bound"), || async {
        let c: PersistentVolumeClaim = store.get("default", name).await.ok()?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(c)
    })
    .await
}

async fn gone<K: Object + std::fmt::Debug>(store: &EmbeddedStore, ns: &str, name: &str) {
    let last = format!("{:?}", store.get::<K>(ns, name).await.ok());
    eventually(&format!("{} {name} gone (was {last})", K::KIND), || async {
        matches!(store.get::<K>(ns, name).await, Err(e) if e.is_not_found()).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_survives_sigterm_and_restart_and_collects_a_deleted_set() {
    if !testkit::require_root("binary_survives_sigterm_and_restart_and_collects_a_deleted_set") {
        return;
    }
    let pool = LoopPool::ext4(512 << 20);
    let driver =
        DriverProcess::start(DriverConfig::new(csi_binary(), NODE).pool("main", pool.path())).await;
    let state = tempfile::tempdir().expect("state");
    let store = EmbeddedStore::open(state.path()).expect("store");
    let log = state.path().join("provisioner.log");

    create::<StorageClass>(&store, json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "std", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "local.csi.strata.io"
    }))
    .await;
    create::<StatefulSet>(&store, json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}}}]
        }
    }))
    .await;

    let mut p = Provisioner::spawn(state.path(), &driver.endpoint(), NODE, log.clone(), &[]);
    for o in 0..2 {
        let c = bound(&store, &format!("data-db-{o}")).await;
        assert_eq!(
            c.spec.unwrap().storage_class_name.as_deref(),
            Some("std"),
            "default class filled in"
        );
    }
    assert!(p.terminate().success(), "graceful exit on SIGTERM");

    // Work that arrives while it is down is done after the restart (list + resync).
    create::<PersistentVolumeClaim>(&store, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "later", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}}
    }))
    .await;
    let mut p = Provisioner::spawn(state.path(), &driver.endpoint(), NODE, log, &[]);
    bound(&store, "later").await;
    assert_eq!(pool.files().len(), 3);

    // Deleting the set: its pods go (no kube GC here, ours does it), and whenDeleted=Delete
    // takes the claims, their PVs and the backing volumes with them. "later" stays.
    let pvs: Vec<String> = {
        let mut v = Vec::new();
        for o in 0..2 {
            let c: PersistentVolumeClaim =
                store.get("default", &format!("data-db-{o}")).await.unwrap();
            v.push(c.spec.unwrap().volume_name.unwrap());
        }
        v
    };
    store
        .delete::<StatefulSet>("default", "db", Preconditions::default())
        .await
        .unwrap();
    for (o, pv) in pvs.iter().enumerate() {
        gone::<Pod>(&store, "default", &format!("db-{o}")).await;
        gone::<PersistentVolumeClaim>(&store, "default", &format!("data-db-{o}")).await;
        gone::<PersistentVolume>(&store, "", pv).await;
    }
    eventually("two backing volumes deleted", || async {
        (pool.files().len() == 1).then_some(())
    })
    .await;
    bound(&store, "later").await;
    assert!(p.terminate().success());
    drop(driver);
}

async fn scrape(addr: std::net::SocketAddr, path: &'static str) -> strata_metrics::scrape::Reply {
    tokio::task::spawn_blocking(move || strata_metrics::scrape::request(addr, "GET", path))
        .await
        .expect("scrape task")
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

async fn samples(addr: std::net::SocketAddr) -> strata_metrics::scrape::Samples {
    let r = scrape(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    strata_metrics::scrape::parse(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
}

/// Issue 12 §6 and §4: started before its driver, the provisioner says it waits, binds a
/// static claim meanwhile and stays healthy; once the driver listens it provisions, and
/// `/metrics` counts the outcomes by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_before_the_driver_answers_then_provisions_and_reports_metrics() {
    if !testkit::require_root("binds_before_the_driver_answers_then_provisions_and_reports_metrics")
    {
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let store = EmbeddedStore::open(state.path()).expect("store");
    let log = state.path().join("provisioner.log");
    // Nothing listens here until the driver is started and linked in below.
    let socket = state.path().join("csi.sock");
    let endpoint = format!("unix://{}", socket.display());
    let p = Provisioner::spawn(
        state.path(),
        &endpoint,
        NODE,
        log.clone(),
        &["--metrics-address", "127.0.0.1:0"],
    );
    let addr = eventually("the metrics address in the log", || async {
        strata_metrics::scrape::address_from_log(&std::fs::read_to_string(&log).ok()?)
    })
    .await;

    create::<PersistentVolume>(
        &store,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "static-pv"},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "csi": {"driver": "local.csi.strata.io", "volumeHandle": "made-by-hand"}
            }
        }),
    )
    .await;
    create::<PersistentVolumeClaim>(&store, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "static", "namespace": "default"},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    let c = bound(&store, "static").await;
    assert_eq!(c.spec.unwrap().volume_name.as_deref(), Some("static-pv"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("waiting for the CSI driver"), "{text}");
    let health = scrape(addr, "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains("driver: waiting"), "{}", health.body);
    assert_eq!(
        samples(addr)
            .await
            .value("strata_provisioner_driver_ready", &[]),
        Some(0.0)
    );

    // A dynamic claim now waits; the driver arrives at the socket the provisioner dials.
    create::<StorageClass>(
        &store,
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "std"}, "provisioner": "local.csi.strata.io"
        }),
    )
    .await;
    create::<PersistentVolumeClaim>(&store, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "dynamic", "namespace": "default"},
        "spec": {"storageClassName": "std", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}}
    }))
    .await;
    let pool = LoopPool::ext4(512 << 20);
    let driver =
        DriverProcess::start(DriverConfig::new(csi_binary(), NODE).pool("main", pool.path())).await;
    std::os::unix::fs::symlink(driver.socket(), &socket).expect("link the driver's socket");
    bound(&store, "dynamic").await;
    // More than the pool holds: the driver refuses with RESOURCE_EXHAUSTED.
    create::<PersistentVolumeClaim>(&store, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "huge", "namespace": "default"},
        "spec": {"storageClassName": "std", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Gi"}}}
    }))
    .await;
    let outcome = |s: &strata_metrics::scrape::Samples, result: &str, reason: &str| {
        s.value(
            "strata_provisioner_provisioning_total",
            &[("result", result), ("reason", reason)],
        )
    };
    let s = eventually(
        "a ResourceExhausted provisioning failure counted",
        || async {
            let s = samples(addr).await;
            outcome(&s, "failure", "ResourceExhausted").map(|_| s)
        },
    )
    .await;
    assert_eq!(outcome(&s, "success", "Provisioned"), Some(1.0));
    assert_eq!(s.value("strata_provisioner_driver_ready", &[]), Some(1.0));
    assert_eq!(s.value("strata_provisioner_dead_loops", &[]), Some(0.0));
    assert!(
        s.value("strata_provisioner_queue_depth", &[("queue", "claims")])
            .is_some()
    );
    let health = scrape(addr, "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(
        health.body.contains("driver: local.csi.strata.io"),
        "{}",
        health.body
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("driver found").count(),
        1,
        "logged once:\n{text}"
    );
    let mut p = p;
    assert!(p.terminate().success(), "graceful exit on SIGTERM");
    drop(driver);
}

/// The binder writes the plans of every claim it has at once in one transaction. A crash
/// between two of them (the store's `batch:between-plans` failpoint) commits none: every
/// claim stays unbound and every volume free, with nothing half-bound. Restarted, the
/// binder binds them all, each to a volume of its own. No driver: static binding needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_a_batch_of_binds_commits_none_and_the_restart_binds_all() {
    let state = tempfile::tempdir().expect("state");
    let store = EmbeddedStore::open(state.path()).expect("store");
    for i in 0..3 {
        let mut pv: PersistentVolume = create(&store, json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pv-{i}")},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": format!("/srv/pv-{i}")}
            }
        }))
        .await;
        // Available, as the binder's first sync makes it: its first batch is the binds.
        pv.status.get_or_insert_with(Default::default).phase = Some("Available".into());
        store.update_status(&pv).await.expect("available");
        create::<PersistentVolumeClaim>(&store, json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("c-{i}"), "namespace": "default"},
            "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .await;
    }
    let before = store.revision().await.unwrap();
    let log = state.path().join("provisioner.log");
    let endpoint = format!("unix://{}/no-driver.sock", state.path().display());
    let mut p = Provisioner::spawn_with_env(
        state.path(),
        &endpoint,
        NODE,
        log.clone(),
        &[],
        &[(strata_store::failpoint::ENV, "batch:between-plans")],
    );
    let status = p.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(nix::libc::SIGABRT),
        "stopped at the failpoint: {status:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(store.revision().await.unwrap(), before, "nothing committed");
    for i in 0..3 {
        let c: PersistentVolumeClaim = store.get("default", &format!("c-{i}")).await.unwrap();
        assert!(c.spec.unwrap().volume_name.is_none(), "c-{i} unbound");
        let pv: PersistentVolume = store.get("", &format!("pv-{i}")).await.unwrap();
        assert!(pv.spec.unwrap().claim_ref.is_none(), "pv-{i} free");
    }

    let mut p = Provisioner::spawn(state.path(), &endpoint, NODE, log, &[]);
    let mut volumes = std::collections::BTreeSet::new();
    for i in 0..3 {
        let c = bound(&store, &format!("c-{i}")).await;
        volumes.insert(c.spec.unwrap().volume_name.unwrap());
    }
    assert_eq!(volumes.len(), 3, "a volume each: {volumes:?}");
    assert!(p.terminate().success(), "graceful exit on SIGTERM");
}

//! The `strata-provisioner` binary: runs against the state dir a user's volctl writes to,
//! stops gracefully on SIGTERM, picks up where it left off after a restart, and garbage
//! collects a deleted StatefulSet's pods and (whenDeleted=Delete) claims.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use strata_provisioner::k8s_openapi::api::apps::v1::StatefulSet;
use strata_provisioner::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod,
};
use strata_provisioner::k8s_openapi::api::storage::v1::StorageClass;
use strata_store::{EmbeddedStore, Object, Preconditions, Store};
use testkit::{DriverConfig, DriverProcess, LoopPool};

mod common;

use common::{DEADLINE, csi_binary, eventually};

const NODE: &str = "node-bin";

/// The provisioner process; `Drop` kills it if a test failed half-way.
struct Provisioner {
    child: Child,
    log: PathBuf,
}

impl Provisioner {
    fn spawn(state: &std::path::Path, endpoint: &str, log: PathBuf) -> Provisioner {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_strata-provisioner"))
            .arg("--state-dir")
            .arg(state)
            .args([
                "--csi-endpoint",
                endpoint,
                "--node-id",
                NODE,
                "--retry-interval-start",
                "100",
                "--retry-interval-max",
                "2",
            ])
            .env(
                "RUST_LOG",
                std::env::var("PROVISIONER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn strata-provisioner");
        Provisioner { child, log }
    }

    /// SIGTERM, then the exit status (it must exit by itself, gracefully).
    fn terminate(&mut self) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no exit after SIGTERM:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- strata-provisioner log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

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

    let mut p = Provisioner::spawn(state.path(), &driver.endpoint(), log.clone());
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
    let mut p = Provisioner::spawn(state.path(), &driver.endpoint(), log);
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

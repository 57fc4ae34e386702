//! Fixtures shared by the volume manager's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use strata_store::{EmbeddedStore, Store};
use strata_volumes::manager::{Config, VolumeManager};

pub const NODE: &str = "node-a";

/// A state dir in its own temp dir; Drop unmounts everything below it (deepest first)
/// and detaches loop devices backed there, then removes it.
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn new(name: &str) -> StateDir {
        StateDir(testkit::unique_temp_dir(name))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let (mounts, loops) = testkit::cleanup_under(&self.0);
        if mounts.is_empty() && loops.is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("left {} in place: mounts or loops remain", self.0.display());
        }
    }
}

pub fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

pub async fn store(state: &Path) -> EmbeddedStore {
    EmbeddedStore::open(&state.join("store")).unwrap()
}

pub fn manager(
    store: &EmbeddedStore,
    state: &Path,
    csi: Option<String>,
) -> VolumeManager<EmbeddedStore> {
    VolumeManager::new(
        store.clone(),
        Config {
            state_dir: state.join("node"),
            node_name: NODE.into(),
            csi_endpoint: csi,
            issuer: strata_volumes::token::DEFAULT_ISSUER.into(),
            clock: std::time::SystemTime::now,
        },
    )
    .unwrap()
}

pub async fn seed(store: &EmbeddedStore) {
    let sa: ServiceAccount = obj(json!({"metadata": {"name": "default", "namespace": "default"}}));
    if let Err(e) = store.create(&sa).await {
        assert!(e.is_already_exists(), "{e}");
    }
    let s: Secret = obj(
        json!({"metadata": {"name": "creds", "namespace": "default"},
        "data": {"user": "YWRtaW4=", "pass": "czNjcjN0"}}),
    );
    store.create(&s).await.unwrap();
    let c: ConfigMap = obj(json!({"metadata": {"name": "cfg", "namespace": "default"},
        "data": {"a": "1", "b": "two"}}));
    store.create(&c).await.unwrap();
}

/// A pod on NODE with secret, configMap, projected (token + downward API + configMap)
/// and emptyDir (Memory with a size limit, and disk) volumes.
pub fn api_pod(name: &str) -> Pod {
    obj(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": NODE,
            "containers": [{
                "name": "app", "image": "busybox",
                "volumeMounts": [
                    {"name": "sec", "mountPath": "/etc/sec"},
                    {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": false},
                    {"name": "proj", "mountPath": "/var/run/secrets/x"},
                    {"name": "mem", "mountPath": "/mem"},
                    {"name": "disk", "mountPath": "/disk", "mountPropagation": "HostToContainer"}
                ]
            }],
            "volumes": [
                {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "proj", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "vault", "path": "token"}},
                    {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                    {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "conf/a"}]}}
                ]}},
                {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
                {"name": "disk", "emptyDir": {}}
            ]
        }
    }))
}

pub fn vol(state: &Path, uid: &str, plugin: &str, name: &str) -> PathBuf {
    strata_volumes::layout::volume_dir(&state.join("node"), uid, plugin, name)
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    strata_volumes::mount::mountinfo()
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

pub fn is_tmpfs(path: &Path) -> bool {
    let st = nix::sys::statfs::statfs(path).unwrap();
    st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
}

//! The pod runner's test fixture: `strata-node` as a process over an embedded store in
//! a temp state dir with a busybox image, and helpers to read pod status.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{Event, Pod};
use strata_store::{EmbeddedStore, Preconditions, Store};

pub const NODE: &str = env!("CARGO_BIN_EXE_strata-node");
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `strata-runtime` beside `strata-node` (the workspace builds both).
pub fn runtime_binary() -> PathBuf {
    let p = Path::new(NODE).with_file_name("strata-runtime");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p strata-runtime` first",
        p.display()
    );
    p
}

/// A state dir with a store and a busybox image; kills strata-node, removes every
/// container and unmounts everything beneath the dir when dropped, even on panic.
pub struct Env {
    pub dir: PathBuf,
    pub store: EmbeddedStore,
    node: Option<std::process::Child>,
}

impl Env {
    pub fn new(prefix: &str) -> Env {
        let dir = testkit::unique_temp_dir(prefix);
        let store = EmbeddedStore::open(&dir).unwrap();
        let images = strata_runtime::ImageStore::open(strata_node::layout::images(&dir)).unwrap();
        let tree = dir.join("busybox-tree");
        testkit::busybox_tree(&tree);
        let defaults = strata_runtime::ImageDefaults {
            env: vec!["PATH=/bin".into()],
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        };
        images.build_image("busybox", &[&tree], &defaults).unwrap();
        std::fs::remove_dir_all(&tree).unwrap();
        Env {
            dir,
            store,
            node: None,
        }
    }

    pub fn start_node(&mut self) {
        let child = Command::new(NODE)
            .args(["--node-id", "n1", "--state-dir"])
            .arg(&self.dir)
            .arg("--runtime-binary")
            .arg(runtime_binary())
            .env("RUST_LOG", "info,strata_node=debug")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.node = Some(child);
    }

    pub fn kill_node(&mut self) {
        if let Some(mut c) = self.node.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn runtime_ids(&self) -> Vec<String> {
        let out = Command::new(runtime_binary())
            .arg("--root")
            .arg(strata_node::layout::runtime_root(&self.dir))
            .args(["list", "--quiet"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn runtime_state(&self, id: &str) -> serde_json::Value {
        let out = Command::new(runtime_binary())
            .arg("--root")
            .arg(strata_node::layout::runtime_root(&self.dir))
            .args(["state", id])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(json!(null))
    }

    /// Runs `args` in the running container `id` through `strata-runtime exec`.
    pub fn exec(&self, id: &str, args: &[&str]) -> std::process::Output {
        Command::new(runtime_binary())
            .arg("--root")
            .arg(strata_node::layout::runtime_root(&self.dir))
            .args(["exec", id])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The non-empty content of file `f` in emptyDir `volume` of pod `uid`, once written.
    pub fn empty_dir_file(&self, uid: &str, volume: &str, f: &str) -> String {
        let vol =
            strata_volumes::layout::volume_dir(&self.dir, uid, "kubernetes.io~empty-dir", volume);
        testkit::wait_for(f, DEADLINE, || {
            std::fs::read_to_string(vol.join(f))
                .ok()
                .filter(|s| !s.is_empty())
        })
    }

    pub async fn create(&self, pod: serde_json::Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.store.create(&pod).await.unwrap()
    }

    pub async fn delete(&self, name: &str) {
        let _ = self
            .store
            .delete::<Pod>("default", name, Preconditions::default())
            .await
            .unwrap();
    }

    /// Polls pod `name` until `cond` holds.
    pub async fn wait_pod(&self, name: &str, what: &str, cond: impl Fn(&Pod) -> bool) -> Pod {
        let start = Instant::now();
        loop {
            if let Ok(p) = self.store.get::<Pod>("default", name).await
                && cond(&p)
            {
                return p;
            }
            if start.elapsed() > DEADLINE {
                let p = self.store.get::<Pod>("default", name).await;
                panic!(
                    "timed out waiting for pod {name}: {what}; now: {}",
                    serde_json::to_string_pretty(&p.ok().map(|p| p.status)).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_gone(&self, name: &str) {
        let start = Instant::now();
        while self.store.get::<Pod>("default", name).await.is_ok() {
            assert!(start.elapsed() < DEADLINE, "pod {name} was never removed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn events(&self, pod: &str) -> Vec<(String, String)> {
        self.store
            .list::<Event>(Some("default"), None)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(pod))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_node();
        for id in self.runtime_ids() {
            // A probe's exec the killed node started may still hold the container for a
            // moment: try again before giving up, and say so then.
            for attempt in 0.. {
                let out = Command::new(runtime_binary())
                    .arg("--root")
                    .arg(strata_node::layout::runtime_root(&self.dir))
                    .args(["delete", "--force", &id])
                    .output();
                match out {
                    Ok(o) if o.status.success() => break,
                    _ if attempt < 20 => std::thread::sleep(Duration::from_millis(100)),
                    other => {
                        eprintln!("cleanup: delete --force {id}: {other:?}");
                        break;
                    }
                }
            }
        }
        // The pods' infra processes run in process groups of their own and outlive a
        // killed node: a test that failed before deleting its pods would leave them.
        let infras: Vec<_> = strata_node::runner::infra::all(&self.dir)
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        strata_node::runner::infra::stop_all(&infras);
        let (mounts, loops) = testkit::cleanup_under(&self.dir);
        if mounts.is_empty() && loops.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn status(p: &Pod) -> serde_json::Value {
    serde_json::to_value(p.status.clone().unwrap_or_default()).unwrap()
}

pub fn container(p: &Pod, name: &str) -> serde_json::Value {
    status(p)["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or(json!(null))
}

pub fn ready(p: &Pod) -> bool {
    status(p)["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

pub fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap()
}

pub fn sh_pod(name: &str, script: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "nodeName": "n1",
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script]}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

/// The runtime id of the container's running run, from its status.
pub fn running_id(p: &Pod, name: &str) -> Option<String> {
    let c = container(p, name);
    c["state"]["running"].as_object()?;
    c["containerID"]
        .as_str()?
        .strip_prefix("strata://")
        .map(String::from)
}

//! `strata-node` as a process against an embedded store in a temp dir.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Pod};
use strata_store::{EmbeddedStore, Store};

/// Kills the node process and unmounts what it made, even when the test panics.
struct Node {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (mounts, loops) = testkit::cleanup_under(&self.dir);
        if mounts.is_empty() && loops.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        vec!["--node-id=-bad-", "--state-dir", "/tmp/x"],
        vec!["--node-id", "n1", "--state-dir", "relative"],
        vec![
            "--node-id",
            "n1",
            "--state-dir",
            "/tmp/x",
            "--csi-endpoint",
            "tcp://1.2.3.4:5",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_strata-node"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid --"),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_pods_of_its_node() {
    if !testkit::require_root("serves_the_pods_of_its_node") {
        return;
    }
    let dir = testkit::unique_temp_dir("strata-node");
    let store = EmbeddedStore::open(&dir).unwrap();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg", "namespace": "default"},
        "data": {"k": "v1"}}))
        .unwrap();
    store.create(&cm).await.unwrap();
    let pod = |name: &str, node: &str| -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
            "nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}}),
        )
        .unwrap()
    };
    let mine = store.create(&pod("mine", "n1")).await.unwrap();
    let other = store.create(&pod("other", "n2")).await.unwrap();
    // --release-on-exit: without it a stopped node leaves its pods' processes running
    // for the next start to adopt, as the kubelet does, and this test would leave one.
    let child = Command::new(env!("CARGO_BIN_EXE_strata-node"))
        .args(["--node-id", "n1", "--release-on-exit", "30", "--state-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut node = Node {
        child,
        dir: dir.clone(),
    };
    let file = strata_volumes::layout::volume_dir(
        &dir,
        mine.metadata.uid.as_deref().unwrap(),
        "kubernetes.io~configmap",
        "cfg",
    )
    .join("k");
    let deadline = Duration::from_secs(60);
    testkit::wait_for("the volume of the pod on n1", deadline, || {
        (std::fs::read(&file).ok()? == b"v1").then_some(())
    });
    let mut cm: ConfigMap = store.get("default", "cfg").await.unwrap();
    cm.data.as_mut().unwrap().insert("k".into(), "v2".into());
    store.update(&cm).await.unwrap();
    testkit::wait_for("the update in the volume", deadline, || {
        (std::fs::read(&file).ok()? == b"v2").then_some(())
    });
    let other_dir = strata_volumes::layout::pod_dir(&dir, other.metadata.uid.as_deref().unwrap());
    assert!(!other_dir.exists(), "a pod of another node is not served");
    assert!(
        dir.join(strata_volumes::token::JWKS_FILE).exists(),
        "public key published"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = testkit::wait_for("strata-node to exit", deadline, || {
        node.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
    let infra = format!("pod-infra --uid {}", mine.metadata.uid.as_deref().unwrap());
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&infra))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

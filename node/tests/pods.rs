//! The pod runner end to end: `strata-node` as a process over an embedded store, real
//! containers through `strata-runtime` from a busybox image in the state dir's image
//! store, real volumes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{Event, Pod};
use strata_store::{EmbeddedStore, Preconditions, Store};

const NODE: &str = env!("CARGO_BIN_EXE_strata-node");
const DEADLINE: Duration = Duration::from_secs(60);

/// `strata-runtime` beside `strata-node` (the workspace builds both).
fn runtime_binary() -> PathBuf {
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
struct Env {
    dir: PathBuf,
    store: EmbeddedStore,
    node: Option<std::process::Child>,
}

impl Env {
    fn new(prefix: &str) -> Env {
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

    fn start_node(&mut self) {
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

    fn kill_node(&mut self) {
        if let Some(mut c) = self.node.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn runtime_ids(&self) -> Vec<String> {
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

    fn runtime_state(&self, id: &str) -> serde_json::Value {
        let out = Command::new(runtime_binary())
            .arg("--root")
            .arg(strata_node::layout::runtime_root(&self.dir))
            .args(["state", id])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(json!(null))
    }

    async fn create(&self, pod: serde_json::Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.store.create(&pod).await.unwrap()
    }

    async fn delete(&self, name: &str) {
        let _ = self
            .store
            .delete::<Pod>("default", name, Preconditions::default())
            .await
            .unwrap();
    }

    /// Polls pod `name` until `cond` holds.
    async fn wait_pod(&self, name: &str, what: &str, cond: impl Fn(&Pod) -> bool) -> Pod {
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

    async fn wait_gone(&self, name: &str) {
        let start = Instant::now();
        while self.store.get::<Pod>("default", name).await.is_ok() {
            assert!(start.elapsed() < DEADLINE, "pod {name} was never removed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn events(&self, pod: &str) -> Vec<(String, String)> {
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
            let _ = Command::new(runtime_binary())
                .arg("--root")
                .arg(strata_node::layout::runtime_root(&self.dir))
                .args(["delete", "--force", &id])
                .output();
        }
        let (mounts, loops) = testkit::cleanup_under(&self.dir);
        if mounts.is_empty() && loops.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn status(p: &Pod) -> serde_json::Value {
    serde_json::to_value(p.status.clone().unwrap_or_default()).unwrap()
}

fn container(p: &Pod, name: &str) -> serde_json::Value {
    status(p)["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or(json!(null))
}

fn ready(p: &Pod) -> bool {
    status(p)["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap()
}

fn sh_pod(name: &str, script: &str, extra: serde_json::Value) -> serde_json::Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_with_init_container_volume_and_logs_then_terminates() {
    if !testkit::require_root("pod_runs_with_init_container_volume_and_logs_then_terminates") {
        return;
    }
    let mut env = Env::new("pods-run");
    env.start_node();
    let pod = env
        .create(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
            "nodeName": "n1",
            "hostname": "web-host",
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "seed", "image": "busybox",
                "command": ["sh", "-c", "echo seeded > /data/seed"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "containers": [
                // pid 1 ignores TERM without a handler: only the SIGKILL after the
                // grace period stops this one.
                {"name": "app", "image": "busybox",
                 "command": ["sh", "-c",
                    "cat /data/seed; hostname; cat /etc/hostname > /data/hostname; id -u > /data/uid; echo written > /data/out; exec sleep 1000"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                 "securityContext": {"runAsUser": 1234}},
                {"name": "ro", "image": "busybox",
                 "command": ["sh", "-c",
                    "trap 'exit 0' TERM; touch /data/x 2>/dev/null || echo read-only; while true; do sleep 0.1; done"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}]}
            ]}}))
        .await;
    let uid = uid(&pod);
    let running = env
        .wait_pod("web", "Running and Ready", |p| {
            status(p)["phase"] == "Running" && ready(p)
        })
        .await;
    let s = status(&running);
    assert!(s["startTime"].is_string(), "{s}");
    assert_eq!(
        s["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0,
        "{s}"
    );
    assert_eq!(container(&running, "app")["restartCount"], 0);
    assert!(container(&running, "app")["state"]["running"].is_object());

    // The volume as the host sees it.
    let vol = strata_volumes::layout::volume_dir(&env.dir, &uid, "kubernetes.io~empty-dir", "data");
    let read = |f: &str| std::fs::read_to_string(vol.join(f)).ok();
    let wait_file =
        |f: &'static str| testkit::wait_for(f, DEADLINE, || read(f).filter(|s| !s.is_empty()));
    assert_eq!(wait_file("out"), "written\n");
    assert_eq!(wait_file("hostname"), "web-host\n");
    assert_eq!(wait_file("uid"), "1234\n", "securityContext.runAsUser");
    assert!(!vol.join("x").exists(), "a readOnly mount was written");

    // Logs, one file per run.
    let log = strata_node::layout::container_log(&env.dir, "default", "web", &uid, "app", 0);
    let text = testkit::wait_for("the app's log", DEADLINE, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("web-host"))
    });
    assert!(text.contains("seeded"), "{text}");
    let ro_log = strata_node::layout::container_log(&env.dir, "default", "web", &uid, "ro", 0);
    testkit::wait_for("the ro container's log", DEADLINE, || {
        std::fs::read_to_string(&ro_log)
            .ok()
            .filter(|t| t.contains("read-only"))
    });
    assert_eq!(env.runtime_ids().len(), 2, "{:?}", env.runtime_ids());

    // Deletion: held by the finalizer while the containers stop (TERM, then KILL after
    // the grace period), then the volumes go and the pod object is removed.
    env.delete("web").await;
    env.wait_gone("web").await;
    assert!(env.runtime_ids().is_empty(), "{:?}", env.runtime_ids());
    assert!(!strata_volumes::layout::pod_dir(&env.dir, &uid).exists());
    assert!(testkit::mounts_under(&env.dir).is_empty());
    assert!(
        !strata_node::layout::pod_logs(&env.dir, "default", "web", &uid).exists(),
        "logs are removed with the pod"
    );
    let reasons: Vec<String> = env.events("web").await.into_iter().map(|e| e.0).collect();
    assert!(reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_and_back_off() {
    if !testkit::require_root("restart_policies_and_back_off") {
        return;
    }
    let mut env = Env::new("pods-restart");
    env.start_node();
    env.create(sh_pod("always", "echo run; exit 3", json!({})))
        .await;
    env.create(sh_pod("never", "exit 3", json!({"restartPolicy": "Never"})))
        .await;
    env.create(sh_pod(
        "onfailure",
        "exit 0",
        json!({"restartPolicy": "OnFailure"}),
    ))
    .await;

    // The first restart is immediate; the second crash waits 10 s in CrashLoopBackOff.
    let p = env
        .wait_pod("always", "CrashLoopBackOff", |p| {
            container(p, "c")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await;
    let c = container(&p, "c");
    assert_eq!(c["restartCount"], 1, "{c}");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error", "{c}");
    assert_eq!(status(&p)["phase"], "Running");
    assert!(!ready(&p));
    let pod_uid = uid(&p);
    for run in 0..2 {
        let log =
            strata_node::layout::container_log(&env.dir, "default", "always", &pod_uid, "c", run);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "run\n", "run {run}");
    }

    let p = env
        .wait_pod("never", "Failed", |p| status(p)["phase"] == "Failed")
        .await;
    assert_eq!(container(&p, "c")["state"]["terminated"]["exitCode"], 3);
    assert_eq!(container(&p, "c")["restartCount"], 0);
    let p = env
        .wait_pod("onfailure", "Succeeded", |p| {
            status(p)["phase"] == "Succeeded"
        })
        .await;
    assert_eq!(
        container(&p, "c")["state"]["terminated"]["reason"],
        "Completed"
    );
    // Finished pods keep no container in the runtime.
    for name in ["never", "onfailure"] {
        let p: Pod = env.store.get("default", name).await.unwrap();
        let u = uid(&p);
        assert!(
            !env.runtime_ids().iter().any(|id| id.starts_with(&u)),
            "{name}: {:?}",
            env.runtime_ids()
        );
    }
    for name in ["always", "never", "onfailure"] {
        env.delete(name).await;
    }
    for name in ["always", "never", "onfailure"] {
        env.wait_gone(name).await;
    }
    assert!(env.runtime_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_status_and_events() {
    if !testkit::require_root("bad_input_gives_clear_status_and_events") {
        return;
    }
    let mut env = Env::new("pods-bad");
    env.start_node();
    let mut unknown = sh_pod("unknown-image", "true", json!({}));
    unknown["spec"]["containers"][0]["image"] = json!("registry.example/nothing:1");
    env.create(unknown).await;
    env.create(sh_pod(
        "no-secret",
        "true",
        json!({"volumes": [{"name": "s", "secret": {"secretName": "missing"}}]}),
    ))
    .await;

    let p = env
        .wait_pod("unknown-image", "ErrImagePull", |p| {
            container(p, "c")["state"]["waiting"]["reason"] == "ErrImagePull"
        })
        .await;
    let msg = container(&p, "c")["state"]["waiting"]["message"].to_string();
    assert!(msg.contains("registry.example/nothing:1"), "{msg}");
    assert_eq!(status(&p)["phase"], "Pending");
    let ev = env.events("unknown-image").await;
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Failed" && m.contains("nothing:1")),
        "{ev:?}"
    );

    let p = env
        .wait_pod("no-secret", "waiting on its volume", |p| {
            container(p, "c")["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("missing"))
        })
        .await;
    assert_eq!(status(&p)["phase"], "Pending");
    assert_eq!(
        container(&p, "c")["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    let ev = env.events("no-secret").await;
    assert!(ev.iter().any(|(r, _)| r == "FailedMount"), "{ev:?}");
    assert!(env.runtime_ids().is_empty(), "nothing ran");

    // Both go cleanly, though nothing of them ever ran.
    env.delete("unknown-image").await;
    env.delete("no-secret").await;
    env.wait_gone("unknown-image").await;
    env.wait_gone("no-secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_adopts_running_containers() {
    if !testkit::require_root("a_restarted_node_adopts_running_containers") {
        return;
    }
    let mut env = Env::new("pods-adopt");
    env.start_node();
    env.create(sh_pod(
        "long",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        json!({}),
    ))
    .await;
    let p = env.wait_pod("long", "Running", ready).await;
    let uid = uid(&p);
    let ids = env.runtime_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let pid = env.runtime_state(&ids[0])["pid"].as_i64().unwrap();

    env.kill_node();
    env.start_node();
    // Adopted: same container, same process, no second run.
    let ev_before = env.events("long").await.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = env.wait_pod("long", "still Ready", ready).await;
    assert_eq!(env.runtime_ids(), ids);
    assert_eq!(env.runtime_state(&ids[0])["pid"].as_i64().unwrap(), pid);
    assert_eq!(container(&p, "c")["restartCount"], 0);
    assert_eq!(
        env.events("long").await.len(),
        ev_before,
        "no new Started event"
    );

    // The adopted container's end is still noticed, and it is restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let p = env
        .wait_pod("long", "restarted", |p| {
            container(p, "c")["restartCount"] == 1 && ready(p)
        })
        .await;
    assert_eq!(
        container(&p, "c")["lastState"]["terminated"]["reason"],
        "ContainerStatusUnknown"
    );
    assert_eq!(
        env.runtime_ids(),
        [strata_node::layout::container_id(&uid, "c", 1)]
    );

    // A teardown cut short by kill -9 is finished by the next strata-node.
    env.delete("long").await;
    env.kill_node();
    env.start_node();
    env.wait_gone("long").await;
    assert!(env.runtime_ids().is_empty());
    assert!(!strata_volumes::layout::pod_dir(&env.dir, &uid).exists());
}

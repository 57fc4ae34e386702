//! The pod runner end to end: `strata-node` as a process over an embedded store, real
//! containers through `strata-runtime` from a busybox image in the state dir's image
//! store, real volumes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::Pod;

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

/// `$(NAME)` references, as the kubelet expands them: in env values (envFrom's names and
/// the entries above, never later ones; `$$` escapes), in command and args (the container's
/// whole environment), and in subPathExpr. A subPathExpr with no value fails the start
/// with CreateContainerConfigError and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_references_expand_in_env_command_args_and_sub_path_expr() {
    if !testkit::require_root("dollar_references_expand_in_env_command_args_and_sub_path_expr") {
        return;
    }
    use strata_store::k8s_openapi::api::core::v1::ConfigMap;
    let mut env = Env::new("pods-expand");
    env.start_node();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings", "namespace": "default"},
        "data": {"FROM_CM": "cm-value"}
    }))
    .unwrap();
    env.store.create(&cm).await.unwrap();
    let pod = env
        .create(json!({"metadata": {"name": "expand", "namespace": "default"}, "spec": {
            "nodeName": "n1",
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "c", "image": "busybox",
                "envFrom": [{"configMapRef": {"name": "settings"}}],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "GREETING", "value": "hello $(POD_NAME) from $(FROM_CM)"},
                    {"name": "EARLY", "value": "[$(LATE)]"},
                    {"name": "LATE", "value": "late"},
                    {"name": "ESCAPED", "value": "$$(POD_NAME)"}
                ],
                "command": ["sh", "-c"],
                "args": ["printf '%s|%s|%s|%s\\n' \"$GREETING\" \"$EARLY\" \"$ESCAPED\" '$(LATE)' > /own/env; exec sleep 1000"],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "data", "mountPath": "/own", "subPathExpr": "pods/$(POD_NAME)"}
                ]
            }]}}))
        .await;
    let uid = uid(&pod);
    env.wait_pod("expand", "Running", |p| status(p)["phase"] == "Running")
        .await;
    assert_eq!(
        env.empty_dir_file(&uid, "data", "pods/expand/env"),
        "hello expand from cm-value|[$(LATE)]|$(POD_NAME)|late\n"
    );

    // A subPathExpr naming a variable the container does not have: nothing runs.
    env.create(sh_pod(
        "no-value",
        "exec sleep 1000",
        json!({
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "exec sleep 1000"],
                "volumeMounts": [{"name": "data", "mountPath": "/own", "subPathExpr": "$(NOT_SET)"}]}]
        }),
    ))
    .await;
    let p = env
        .wait_pod("no-value", "CreateContainerConfigError", |p| {
            container(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
        .await;
    let msg = container(&p, "c")["state"]["waiting"]["message"].to_string();
    assert!(msg.contains("missing value for NOT_SET"), "{msg}");
    assert_eq!(env.runtime_ids().len(), 1, "only the first pod runs");

    env.delete("expand").await;
    env.delete("no-value").await;
    env.wait_gone("expand").await;
    env.wait_gone("no-value").await;
}

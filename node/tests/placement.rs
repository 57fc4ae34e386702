//! Placement on this node: nodeSelector, required node affinity and taints against the
//! Node object strata-node registers; an unplaced pod that does not fit stays Pending
//! with a FailedScheduling event and runs once the node is labelled; an unplaced pod
//! that fits is placed here (spec.nodeName) and runs; a pod naming this node that does
//! not fit is rejected (Failed) before any of its volumes is set up.

mod common;

use common::*;
use serde_json::json;
use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::Node;

fn scheduled(p: &strata_store::k8s_openapi::api::core::v1::Pod) -> serde_json::Value {
    status(p)["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
        .unwrap_or(json!(null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_only_where_they_fit() {
    if !testkit::require_root("pods_run_only_where_they_fit") {
        return;
    }
    let mut env = Env::new("placement");
    env.start_node();
    let node: Node = testkit::wait_for("the Node object", DEADLINE, || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(env.store.get::<Node>("", "n1"))).ok()
    });
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "n1");
    assert_eq!(labels["kubernetes.io/os"], "linux");

    let script = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
    let mut picky = sh_pod("picky", script, json!({"nodeSelector": {"disk": "ssd"}}));
    picky["spec"].as_object_mut().unwrap().remove("nodeName");
    env.create(picky).await;
    let mut affinity = sh_pod(
        "unplaced",
        script,
        json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}),
    );
    affinity["spec"].as_object_mut().unwrap().remove("nodeName");
    env.create(affinity).await;

    // Does not fit: Pending, PodScheduled False, an event, and nothing runs.
    let p = env
        .wait_pod("picky", "Unschedulable", |p| {
            scheduled(p)["reason"] == "Unschedulable"
        })
        .await;
    assert_eq!(status(&p)["phase"], "Pending");
    let msg = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.";
    assert_eq!(scheduled(&p)["message"], msg);
    assert!(
        env.events("picky")
            .await
            .iter()
            .any(|(r, m)| r == "FailedScheduling" && m == msg)
    );

    // Unplaced, fits by affinity: placed here and run.
    let p = env.wait_pod("unplaced", "Ready", ready).await;
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    assert!(
        env.events("unplaced")
            .await
            .iter()
            .any(|(r, _)| r == "Scheduled")
    );
    let p: strata_store::k8s_openapi::api::core::v1::Pod =
        env.store.get("default", "picky").await.unwrap();
    assert!(running_id(&p, "c").is_none());
    assert_eq!(env.runtime_ids().len(), 1, "only the pod that fits runs");

    // Taint the node and label it: the label lets "picky" fit; the taint keeps it out
    // until tolerated (a new pod, since tolerations are fixed at creation here).
    let mut n: Node = env.store.get("", "n1").await.unwrap();
    n.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("disk".into(), "ssd".into());
    n.spec.get_or_insert_with(Default::default).taints = Some(vec![
        serde_json::from_value(json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"}))
            .unwrap(),
    ]);
    env.store.update(&n).await.unwrap();
    let p = env
        .wait_pod("picky", "refused by the taint", |p| {
            scheduled(p)["message"]
                .as_str()
                .is_some_and(|m| m.contains("untolerated taint {dedicated: db}"))
        })
        .await;
    assert_eq!(status(&p)["phase"], "Pending");
    env.create(sh_pod(
        "tolerant",
        script,
        json!({"nodeSelector": {"disk": "ssd"},
               "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}),
    ))
    .await;
    env.wait_pod("tolerant", "Ready", ready).await;

    for name in ["picky", "unplaced", "tolerant"] {
        env.delete(name).await;
    }
    for name in ["picky", "unplaced", "tolerant"] {
        env.wait_gone(name).await;
    }
    assert!(env.runtime_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_named_here_that_does_not_fit_is_rejected_before_its_volumes() {
    if !testkit::require_root("a_pod_named_here_that_does_not_fit_is_rejected_before_its_volumes") {
        return;
    }
    let mut env = Env::new("rejected");
    env.start_node();
    testkit::wait_for("the Node object", DEADLINE, || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(env.store.get::<Node>("", "n1"))).ok()
    });
    // Its hostPath volume would create this directory when set up (DirectoryOrCreate),
    // and a tear-down leaves it: it exists if the volume manager ever set the pod up.
    let made = env.dir.join("made-by-set-up");
    let script = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
    env.create(sh_pod(
        "pinned",
        script,
        json!({
            "nodeSelector": {"disk": "hdd"},
            "volumes": [
                {"name": "host", "hostPath": {"path": made.to_str().unwrap(), "type": "DirectoryOrCreate"}},
                {"name": "scratch", "emptyDir": {}}
            ]
        }),
    ))
    .await;
    let p = env
        .wait_pod("pinned", "Failed", |p| status(p)["phase"] == "Failed")
        .await;
    let reason = "NodeAffinity";
    let message =
        "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector";
    assert_eq!(status(&p)["reason"], reason);
    assert_eq!(
        status(&p)["message"],
        format!("Pod was rejected: {message}")
    );
    assert!(
        env.events("pinned")
            .await
            .iter()
            .any(|(r, m)| r == reason && m == message)
    );
    assert!(
        !made.exists(),
        "the rejected pod's hostPath volume was set up"
    );
    assert!(!strata_volumes::layout::pod_dir(&env.dir, &uid(&p)).exists());
    assert!(env.runtime_ids().is_empty());

    // A pod that fits, created after it, runs with its volumes: the node is not stuck.
    env.create(sh_pod(
        "fits",
        script,
        json!({"volumes": [{"name": "host", "hostPath": {"path": made.to_str().unwrap(), "type": "DirectoryOrCreate"}}]}),
    ))
    .await;
    env.wait_pod("fits", "Ready", ready).await;
    assert!(made.is_dir());
    let p: strata_store::k8s_openapi::api::core::v1::Pod =
        env.store.get("default", "pinned").await.unwrap();
    assert_eq!(status(&p)["phase"], "Failed", "a rejection is final");

    for name in ["pinned", "fits"] {
        env.delete(name).await;
    }
    for name in ["pinned", "fits"] {
        env.wait_gone(name).await;
    }
    assert!(env.runtime_ids().is_empty());
}

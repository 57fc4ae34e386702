//! The pod's infra process: containers of one pod share its network, UTS and IPC
//! namespaces (one hostname, one loopback they talk over, reached by httpGet probes);
//! a hostNetwork pod sees the node's interfaces and hostname; nothing is left after.

mod common;

use common::*;
use serde_json::json;

/// Interface names in a /proc/net/dev text.
fn interfaces(netdev: &str) -> Vec<String> {
    let mut v: Vec<String> = netdev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    v.sort();
    v
}

/// Live infra processes of pod `uid`.
fn infra_processes(uid: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("pod-infra") && c.contains(uid))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_hostname_and_loopback() {
    if !testkit::require_root("containers_share_hostname_and_loopback") {
        return;
    }
    let mut env = Env::new("infra-shared");
    env.start_node();
    let mount = json!([{"name": "data", "mountPath": "/data"}]);
    let pod = env
        .create(json!({"metadata": {"name": "duo", "namespace": "default"}, "spec": {
            "nodeName": "n1",
            "hostname": "duo-host",
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [
                {"name": "server", "image": "busybox", "volumeMounts": mount,
                 "command": ["sh", "-c", "hostname > /data/server-host; mkdir -p /www; echo hello-over-lo > /www/index.html; exec httpd -f -p 8080 -h /www"],
                 "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}},
                {"name": "client", "image": "busybox", "volumeMounts": mount,
                 "command": ["sh", "-c", "hostname > /data/client-host; cat /proc/net/dev > /data/netdev; until wget -qO /data/got http://127.0.0.1:8080/index.html; do sleep 0.2; done; trap 'exit 0' TERM; while true; do sleep 0.2; done"]}
            ]}}))
        .await;
    let uid = uid(&pod);
    // Ready only once the httpGet probe reached the server on the pod's loopback.
    env.wait_pod("duo", "Ready", ready).await;
    let read = |f: &str| env.empty_dir_file(&uid, "data", f);
    assert_eq!(
        read("got"),
        "hello-over-lo\n",
        "client reached server over 127.0.0.1"
    );
    assert_eq!(read("server-host"), "duo-host\n");
    assert_eq!(read("client-host"), "duo-host\n");
    assert_eq!(
        interfaces(&read("netdev")),
        ["lo"],
        "the pod's own namespace"
    );
    assert_eq!(infra_processes(&uid).len(), 1);

    // A restarted strata-node finds the infra process again: no container is killed.
    env.kill_node();
    env.start_node();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let p = env.wait_pod("duo", "still Ready", ready).await;
    assert_eq!(container(&p, "server")["restartCount"], 0);
    assert_eq!(infra_processes(&uid).len(), 1);
    let ev = env.events("duo").await;
    assert!(!ev.iter().any(|(r, _)| r == "SandboxChanged"), "{ev:?}");

    env.delete("duo").await;
    env.wait_gone("duo").await;
    assert!(
        infra_processes(&uid).is_empty(),
        "{:?}",
        infra_processes(&uid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_sees_the_node() {
    if !testkit::require_root("host_network_pod_sees_the_node") {
        return;
    }
    let mut env = Env::new("infra-host");
    env.start_node();
    let mut pod = sh_pod(
        "hostnet",
        "cat /proc/net/dev > /data/netdev; hostname > /data/host; trap 'exit 0' TERM; while true; do sleep 0.2; done",
        json!({"hostNetwork": true, "volumes": [{"name": "data", "emptyDir": {}}]}),
    );
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    let pod = env.create(pod).await;
    let uid = uid(&pod);
    env.wait_pod("hostnet", "Ready", ready).await;
    let read = |f: &str| env.empty_dir_file(&uid, "data", f);
    let host_ifaces = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(interfaces(&read("netdev")), host_ifaces);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(read("host"), host_name);
    env.delete("hostnet").await;
    env.wait_gone("hostnet").await;
    assert!(infra_processes(&uid).is_empty());
}

//! The node's own directories as pod volumes, through `volctl up`: the static hostPath PV
//! of examples/static-pv.yaml and a `local` PV, each bound to a claim and used by a real
//! container, whose writes land in the node's directory and outlive the pod.

use strata_e2e::{Strata, examples, wait_for};

fn running(s: &Strata, pod: &str) -> Option<()> {
    let p = s.get("pod", pod)?;
    (p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
}

const LOCAL: &str = r#"
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-data
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: default, name: local-claim}
  local: {path: LOCAL_PATH}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/hostname, operator: In, values: [local]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: local-claim, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: local-writer, namespace: default}
spec:
  nodeName: local
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c", "cat /data/seed > /data/copy; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: local-claim}
"#;

#[test]
fn host_path_and_local_pvs_mount_into_pods() {
    if !testkit::require_root("host_path_and_local_pvs_mount_into_pods") {
        return;
    }
    let s = Strata::up_with_busybox("e2e-hostvol");

    // The example as shipped, with its directory moved into this test's state dir (the
    // type DirectoryOrCreate makes it).
    let host_dir = s.state().join("static-data");
    let example = std::fs::read_to_string(examples().join("static-pv.yaml"))
        .unwrap()
        .replace("/var/lib/strata/static-data", host_dir.to_str().unwrap());
    s.ok_with(&["apply", "-f", "-"], Some(&example));
    wait_for("static-reader running", || running(&s, "static-reader"));
    let visits = wait_for("the container's write on the host", || {
        std::fs::read_to_string(host_dir.join("visits"))
            .ok()
            .filter(|t| !t.is_empty())
    });
    assert!(visits.starts_with("visit at "), "{visits}");
    let logs = wait_for("the pod's log", || {
        Some(s.ok(&["logs", "static-reader"])).filter(|l| !l.is_empty())
    });
    assert_eq!(logs, visits);

    // A local PV: bind-mounted under the pod's directory, unmounted with the pod.
    let local_dir = s.state().join("local-data");
    std::fs::create_dir_all(&local_dir).unwrap();
    std::fs::write(local_dir.join("seed"), "seeded on the node\n").unwrap();
    let manifest = LOCAL.replace("LOCAL_PATH", local_dir.to_str().unwrap());
    s.ok_with(&["apply", "-f", "-"], Some(&manifest));
    wait_for("local-writer running", || running(&s, "local-writer"));
    let uid = s.get("pod", "local-writer").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let target = s
        .state()
        .join("pods")
        .join(&uid)
        .join("volumes/kubernetes.io~local-volume/local-data");
    assert!(
        testkit::mount_at(&target).is_some(),
        "{target:?} not mounted"
    );
    let copy = wait_for("the container's copy", || {
        std::fs::read_to_string(local_dir.join("copy")).ok()
    });
    assert_eq!(copy, "seeded on the node\n");

    s.ok(&["delete", "pod", "local-writer", "--wait", "30"]);
    assert!(testkit::mount_at(&target).is_none(), "still mounted");
    assert_eq!(
        std::fs::read_to_string(local_dir.join("copy")).unwrap(),
        "seeded on the node\n",
        "the data stays on the node"
    );
    assert!(host_dir.join("visits").exists());
    // `down` right after a deletion lets it finish before stopping the node.
    s.ok(&["delete", "pod", "static-reader"]);
    s.ok(&["down"]);
    let pods = s.list("pods");
    assert!(pods.is_empty(), "left Terminating: {pods:?}");
}

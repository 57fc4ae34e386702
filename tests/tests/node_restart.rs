//! A node stop is a reboot for the pods on it: after `volctl down` and `volctl up`, a pod's
//! disk-backed emptyDir has what its containers wrote (as under the kubelet), a Memory one
//! starts empty, and nothing stays mounted in between.

use strata_e2e::{Strata, wait_for};

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: keeper, namespace: default}
spec:
  nodeName: local
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c", "echo run >> /cache/runs; echo run >> /mem/runs; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
      volumeMounts:
        - {name: cache, mountPath: /cache}
        - {name: mem, mountPath: /mem}
  volumes:
    - {name: cache, emptyDir: {}}
    - {name: mem, emptyDir: {medium: Memory}}
"#;

fn runs(s: &Strata, dir: &str) -> Option<usize> {
    let out = s.run_with(
        &["exec", "keeper", "--", "cat", &format!("/{dir}/runs")],
        None,
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
}

#[test]
fn empty_dirs_outlive_a_node_stop_as_they_outlive_a_reboot() {
    if !testkit::require_root("empty_dirs_outlive_a_node_stop_as_they_outlive_a_reboot") {
        return;
    }
    let s = Strata::up_with_busybox("e2e-restart");
    s.ok_with(&["apply", "-f", "-"], Some(POD));
    wait_for("the first run's writes", || {
        (runs(&s, "cache")? == 1 && runs(&s, "mem")? == 1).then_some(())
    });
    let uid = s.get("pod", "keeper").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    s.ok(&["down"]);
    let left = s.leftovers();
    assert!(left.is_empty(), "after down: {left:#?}");
    let cache = s.state().join(format!(
        "pods/{uid}/volumes/kubernetes.io~empty-dir/cache/runs"
    ));
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap(),
        "run\n",
        "the disk emptyDir is kept while the node is down"
    );

    s.ok(&["up", "-d"]);
    wait_for("the run after the restart", || {
        (runs(&s, "cache")? == 2).then_some(())
    });
    assert_eq!(
        runs(&s, "mem"),
        Some(1),
        "a Memory emptyDir starts empty, as after a reboot"
    );
    assert_eq!(
        s.get("pod", "keeper").unwrap()["metadata"]["uid"],
        uid.as_str(),
        "the same pod"
    );

    // Deleting the pod still removes everything of it.
    s.ok(&["delete", "pod", "keeper", "--wait", "30"]);
    assert!(!s.state().join(format!("pods/{uid}")).exists());
    s.ok(&["down"]);
}

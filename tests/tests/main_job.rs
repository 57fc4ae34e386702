//! The README's main job, asserted step by step: `volctl up -d -f examples/quickstart.yaml`
//! on a fresh state dir, claims bound to real volumes, pod volumes populated, a ConfigMap
//! change reaching the pods, `volctl down` leaving nothing behind, `up` again with the same
//! volumes and data, and the StatefulSet deleted with its claims and volumes.

use std::path::PathBuf;

use serde_json::Value;
use strata_e2e::{Strata, examples, wait_for};

const CLAIMS: [&str; 2] = ["data-hello-0", "data-hello-1"];

/// The claim's PV name once it is Bound.
fn bound_volume(s: &Strata, claim: &str) -> Option<String> {
    let pvc = s.get("pvc", claim)?;
    (pvc["status"]["phase"] == "Bound")
        .then(|| pvc["spec"]["volumeName"].as_str().map(String::from))?
}

/// `<state>/pods/<uid>/volumes` of a pod.
fn pod_volumes(s: &Strata, pod: &str) -> Option<PathBuf> {
    let uid = s.get("pod", pod)?["metadata"]["uid"].as_str()?.to_string();
    Some(s.state().join("pods").join(uid).join("volumes"))
}

/// The claim's mount inside the pod's volume dir, once it is really mounted.
fn claim_mount(s: &Strata, pod: &str, pv: &str) -> Option<PathBuf> {
    let dir = pod_volumes(s, pod)?
        .join("kubernetes.io~csi")
        .join(pv)
        .join("mount");
    testkit::mount_at(&dir).is_some().then_some(dir)
}

fn greeting(s: &Strata, pod: &str) -> Option<String> {
    let p = pod_volumes(s, pod)?.join("kubernetes.io~projected/config/greeting");
    std::fs::read_to_string(p).ok()
}

/// Waits until both pods have their claims mounted; returns (pod, pv, mount dir).
fn mounted_claims(s: &Strata) -> Vec<(String, String, PathBuf)> {
    CLAIMS
        .iter()
        .map(|claim| {
            let pod = claim.trim_start_matches("data-").to_string();
            let pv = wait_for(&format!("{claim} bound"), || bound_volume(s, claim));
            let dir = wait_for(&format!("{pv} mounted in {pod}"), || {
                claim_mount(s, &pod, &pv)
            });
            (pod, pv, dir)
        })
        .collect()
}

/// Volume image files in the default pool.
fn pool_images(s: &Strata) -> usize {
    std::fs::read_dir(s.state().join("pools/default/volumes"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until `volctl exec POD -- cat /data/kept` succeeds (the pod's container runs,
/// in its pod's namespaces, on its claim) and returns what it printed.
fn exec_cat_kept(s: &Strata, pod: &str) -> String {
    wait_for(&format!("exec in {pod}"), || {
        let out = s.run_with(&["exec", pod, "--", "cat", "/data/kept"], None);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

/// Pod infra processes (`strata-node pod-infra --uid UID`) of these pods that have not
/// ended: the state dir is not on their command line, so `leftovers` cannot see them.
fn infra_processes(uids: &[String]) -> Vec<String> {
    strata_e2e::processes_where(|cmd| {
        cmd.contains("pod-infra") && uids.iter().any(|u| cmd.contains(u.as_str()))
    })
}

fn assert_nothing_left(s: &Strata, after: &str) {
    let left = s.leftovers();
    assert!(left.is_empty(), "after {after}: {left:#?}");
    assert!(
        !s.state().join("run/up.pid").exists(),
        "after {after}: run/up.pid remains"
    );
}

#[test]
fn quickstart_up_down_up_and_delete() {
    if !testkit::require_root("quickstart_up_down_up_and_delete") {
        return;
    }
    let s = Strata::new("e2e-main");
    let quickstart = examples().join("quickstart.yaml");
    let quickstart = quickstart.to_str().unwrap();

    // A pool that is not there fails before anything starts, and leaves nothing running.
    let err = s.fails(&["up", "-d", "--pool", "x=image:/nonexistent-strata-pool"]);
    assert!(
        err.contains("/nonexistent-strata-pool is not a directory"),
        "{err}"
    );
    assert_nothing_left(&s, "a refused up");

    // As scripts/up does: the examples' image, built from the host's busybox-static.
    s.ok(&["image", "build", "busybox:latest", "--busybox"]);
    let out = s.ok(&["up", "-d", "-f", quickstart]);
    for line in [
        "strata-csi ready",
        "strata-provisioner ready",
        "strata-node ready",
        "statefulset/hello created",
        "strata is up",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    // One instance per state dir; the first one keeps running.
    let err = s.fails(&["up", "-d"]);
    assert!(err.contains("already running"), "{err}");

    // Claims Bound to real volumes: an image file in the pool each, mounted in the pod.
    let mounted = mounted_claims(&s);
    for (pod, pv, dir) in &mounted {
        let v = s.get("pv", pv).expect("the claim's PV");
        assert_eq!(v["spec"]["csi"]["driver"], "local.csi.strata.io", "{v}");
        assert_eq!(v["status"]["phase"], "Bound", "{v}");
        std::fs::write(dir.join("kept"), format!("written into {pod}\n")).unwrap();
    }
    assert_eq!(pool_images(&s), 2, "one image file per claim in the pool");

    // The projected ConfigMap, and a change reaching the running pods.
    for pod in ["hello-0", "hello-1"] {
        wait_for("the greeting projected", || {
            (greeting(&s, pod)?.trim() == "hello from strata").then_some(())
        });
    }
    let changed = std::fs::read_to_string(quickstart)
        .unwrap()
        .replace("hello from strata", "hello again, updated live");
    let out = s.ok_with(&["apply", "-f", "-"], Some(&changed));
    assert!(out.contains("configmap/hello-config configured"), "{out}");
    for pod in ["hello-0", "hello-1"] {
        wait_for("the new greeting in the pod's volume", || {
            (greeting(&s, pod)?.trim() == "hello again, updated live").then_some(())
        });
    }

    // The containers run on their claims.
    for (pod, _, _) in &mounted {
        assert_eq!(exec_cat_kept(&s, pod), format!("written into {pod}\n"));
    }
    let uids: Vec<String> = mounted
        .iter()
        .map(|(pod, _, _)| {
            let p = s.get("pod", pod).expect("pod");
            p["metadata"]["uid"].as_str().expect("uid").to_string()
        })
        .collect();
    assert_eq!(infra_processes(&uids).len(), 2, "one infra process per pod");
    // The README's health check on a healthy node with running pods: nothing to report
    // (the volumes' binds into the containers once showed as stale mounts, and
    // `volctl doctor || (volctl down && ...)` then stopped a healthy node).
    let doctor = s.ok(&["doctor"]);
    assert!(doctor.contains("0 problem(s)"), "{doctor}");

    // down: every process stops, every mount and loop device goes.
    let out = s.ok(&["down"]);
    assert!(out.contains("nothing mounted"), "{out}");
    assert_nothing_left(&s, "down");
    let infra = infra_processes(&uids);
    assert!(infra.is_empty(), "infra processes after down: {infra:?}");
    // The pods stay, their runs recorded as stopped with the node: nothing reads a run
    // that is gone as running (an exec right after the next up once picked it).
    for (pod, _, _) in &mounted {
        let p = s.get("pod", pod).expect("pod");
        let st = &p["status"]["containerStatuses"][0];
        assert_eq!(st["state"]["terminated"]["reason"], "NodeShutdown", "{p}");
        assert_eq!(st["ready"], false, "{p}");
        let err = s.fails(&["exec", pod, "--", "true"]);
        assert!(err.contains("stopped with the node (volctl down)"), "{err}");
    }
    // A second down has nothing to do and says so.
    s.ok(&["down"]);

    // up again without manifests: the same claims on the same volumes, with their data.
    s.ok(&["up", "-d"]);
    let again = mounted_claims(&s);
    for ((pod, pv, _), (pod2, pv2, dir2)) in mounted.iter().zip(&again) {
        assert_eq!((pod, pv), (pod2, pv2));
        let kept = std::fs::read_to_string(dir2.join("kept")).unwrap();
        assert_eq!(kept, format!("written into {pod}\n"));
    }
    wait_for("the changed greeting after a restart", || {
        (greeting(&s, "hello-0")?.trim() == "hello again, updated live").then_some(())
    });
    // ...and their containers run again, in new pod namespaces (those of the first
    // run ended with `down`; an ended one is never joined).
    for (pod, _, _) in &mounted {
        assert_eq!(exec_cat_kept(&s, pod), format!("written into {pod}\n"));
    }
    // The stopped run is the last one of the running run, which counts as a restart.
    for (pod, _, _) in &mounted {
        let p = s.get("pod", pod).expect("pod");
        let st = &p["status"]["containerStatuses"][0];
        assert_eq!(
            st["lastState"]["terminated"]["reason"], "NodeShutdown",
            "{p}"
        );
        assert_eq!(st["restartCount"], 1, "{p}");
    }
    // Nothing killed an infra process: the up found none of the first run's (an ended
    // one not yet reaped by init was once taken for alive, and its pod looped on it).
    let log = std::fs::read_to_string(s.state().join("logs/node.log")).unwrap();
    assert!(
        !log.contains("infra process ended"),
        "the node saw an infra process end:\n{log}"
    );

    // Deleting the set (whenDeleted: Delete) takes its claims and volumes with it.
    // --wait waits for the dependents the garbage collector deletes too: when it
    // returns, the claims and their volumes are gone.
    let out = s.ok(&["delete", "statefulset", "hello", "--wait", "60"]);
    assert!(out.contains("waiting for"), "{out}");
    let (pvcs, pvs) = (s.list("pvc"), s.list("pv"));
    assert!(pvcs.is_empty() && pvs.is_empty(), "{pvcs:?} {pvs:?}");
    assert_eq!(pool_images(&s), 0, "pool images deleted");
    s.ok(&["down"]);
    assert_nothing_left(&s, "the final down");
    let pods: Vec<Value> = s.list("pods");
    assert!(pods.is_empty(), "{pods:?}");
}

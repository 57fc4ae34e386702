//! The volume manager against a real embedded store: API-data volumes, emptyDir, live
//! updates through the store watch, restart, tear-down. Root: tmpfs mounts.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use strata_store::{Preconditions, Store};
use strata_volumes::atomic_writer::read_snapshot;
use strata_volumes::handoff::Propagation;
use strata_volumes::manager::{CachedObject, ObjectKind};

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_volumes_live_updates_and_tear_down() {
    if !testkit::require_root("api_volumes_live_updates_and_tear_down") {
        return;
    }
    let state = StateDir::new("strata-vm-api");
    let store = store(state.path()).await;
    seed(&store).await;
    let pod = store.create(&api_pod("web-0")).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let mgr = manager(&store, state.path(), None);
    let prepared = mgr.sync_pod(&pod).await.unwrap();
    assert_eq!(prepared.len(), 5);

    let sec = vol(state.path(), &uid, "kubernetes.io~secret", "sec");
    let cfg = vol(state.path(), &uid, "kubernetes.io~configmap", "cfg");
    let proj = vol(state.path(), &uid, "kubernetes.io~projected", "proj");
    let mem = vol(state.path(), &uid, "kubernetes.io~empty-dir", "mem");
    let disk = vol(state.path(), &uid, "kubernetes.io~empty-dir", "disk");

    let s = read_snapshot(&sec).unwrap();
    assert_eq!(s.files["user"], b"admin");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(sec.join("user")).unwrap().permissions()
        ) & 0o777,
        0o400
    );
    assert_eq!(read_snapshot(&cfg).unwrap().files["b"], b"two");
    let p = read_snapshot(&proj).unwrap();
    assert_eq!(p.files["labels"], b"app=\"web\"");
    assert_eq!(p.files["conf/a"], b"1");

    // Secret, projected and Memory emptyDir content is on tmpfs; configMap and disk are not.
    assert!(is_tmpfs(&sec) && is_tmpfs(&proj) && is_tmpfs(&mem));
    assert!(!is_tmpfs(&cfg) && !is_tmpfs(&disk));
    // sizeLimit is the tmpfs size, so the kernel enforces it.
    let st = nix::sys::statvfs::statvfs(&mem).unwrap();
    assert_eq!(st.blocks() * st.fragment_size(), 8 << 20);
    let big = vec![0u8; 9 << 20];
    assert!(
        std::fs::write(mem.join("big"), &big).is_err(),
        "writing past sizeLimit must fail"
    );
    let _ = std::fs::remove_file(mem.join("big"));

    // The token verifies with the published key and is bound to this pod.
    let jwks: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            state
                .path()
                .join("node")
                .join(strata_volumes::token::JWKS_FILE),
        )
        .unwrap(),
    )
    .unwrap();
    let token = String::from_utf8(p.files["token"].clone()).unwrap();
    let claims =
        strata_volumes::token::verify(&jwks, &token, Some("vault"), SystemTime::now()).unwrap();
    assert_eq!(claims.sub, "system:serviceaccount:default:default");
    assert_eq!(claims.kubernetes.pod.unwrap().uid, uid);

    // Hand-off: API-data volumes read-only whatever the mount says; emptyDir writable.
    let cv = mgr.container_volumes(&uid, "app", &[]).unwrap();
    let ro: Vec<(&str, bool)> = cv
        .mounts
        .iter()
        .map(|m| (m.destination.as_str(), m.read_only))
        .collect();
    assert_eq!(
        ro,
        vec![
            ("/etc/sec", true),
            ("/etc/cfg", true),
            ("/var/run/secrets/x", true),
            ("/mem", false),
            ("/disk", false)
        ]
    );
    assert_eq!(cv.mounts[4].propagation, Propagation::HostToContainer);
    assert_eq!(cv.mounts[0].source, sec);

    // A second sync changes nothing: same versions, no extra mounts.
    let mounts_before = mounts_below(&state.path().join("node"));
    mgr.sync_pod(&pod).await.unwrap();
    assert_eq!(read_snapshot(&sec).unwrap().version, s.version);
    assert_eq!(mounts_below(&state.path().join("node")), mounts_before);

    // Live: the manager follows the store; a ConfigMap update reaches both volumes.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let mgr = mgr.clone();
        tokio::spawn(async move {
            mgr.run(async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    let mut cm: ConfigMap = store.get("default", "cfg").await.unwrap();
    cm.data.as_mut().unwrap().insert("a".into(), "2".into());
    store.update(&cm).await.unwrap();
    let (cfg2, proj2) = (cfg.clone(), proj.clone());
    testkit::wait_for("configMap change in both volumes", DEADLINE, || {
        let c = read_snapshot(&cfg2).ok()?;
        let p = read_snapshot(&proj2).ok()?;
        (c.files["a"] == b"2" && p.files["conf/a"] == b"2").then_some(())
    });

    // Deleting the pod tears its volumes down: tmpfs unmounted, directory gone.
    store
        .delete::<Pod>("default", "web-0", Preconditions::default())
        .await
        .unwrap();
    let pod_dir = strata_volumes::layout::pod_dir(&state.path().join("node"), &uid);
    testkit::wait_for("pod directory removed", DEADLINE, || {
        (!pod_dir.exists()).then_some(())
    });
    assert!(mounts_below(&pod_dir).is_empty());
    stop_tx.send(()).unwrap();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_objects_are_not_reprojected() {
    if !testkit::require_root("immutable_objects_are_not_reprojected") {
        return;
    }
    let state = StateDir::new("strata-vm-imm");
    let store = store(state.path()).await;
    seed(&store).await;
    let s: Secret = obj(
        json!({"metadata": {"name": "frozen", "namespace": "default"},
        "immutable": true, "data": {"k": "djE="}}),
    );
    store.create(&s).await.unwrap();
    let pod: Pod = obj(
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
        "nodeName": NODE, "containers": [{"name": "c", "image": "busybox", "volumeMounts": [
            {"name": "c", "mountPath": "/etc/c"}, {"name": "f", "mountPath": "/etc/c/frozen/"}]}],
        "volumes": [{"name": "f", "secret": {"secretName": "frozen"}}, {"name": "c", "configMap": {"name": "cfg"}}]}}),
    );
    let pod = store.create(&pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let mgr = manager(&store, state.path(), None);
    mgr.sync_pod(&pod).await.unwrap();
    // Recreated under the same name with new data: running pods keep what they had (k8s-semantics §2.9).
    store
        .delete::<Secret>("default", "frozen", Preconditions::default())
        .await
        .unwrap();
    let s2: Secret = obj(
        json!({"metadata": {"name": "frozen", "namespace": "default"},
        "immutable": true, "data": {"k": "djI="}}),
    );
    let s2 = store.create(&s2).await.unwrap();
    assert_eq!(
        mgr.object_changed(ObjectKind::Secret, CachedObject::Secret(s2))
            .await,
        0
    );
    let f = vol(state.path(), &uid, "kubernetes.io~secret", "f");
    assert_eq!(read_snapshot(&f).unwrap().files["k"], b"v1");
    // A mutable object in the same pod still is.
    let mut cm: ConfigMap = store.get("default", "cfg").await.unwrap();
    cm.data.as_mut().unwrap().insert("b".into(), "three".into());
    let cm = store.update(&cm).await.unwrap();
    assert_eq!(
        mgr.object_changed(ObjectKind::ConfigMap, CachedObject::ConfigMap(cm))
            .await,
        1
    );
    let c = vol(state.path(), &uid, "kubernetes.io~configmap", "c");
    assert_eq!(read_snapshot(&c).unwrap().files["b"], b"three");
    // The nested mount point of "f" is a real directory in "c", kept across re-projection.
    assert!(
        std::fs::symlink_metadata(c.join("frozen"))
            .unwrap()
            .is_dir()
    );
    mgr.tear_down_pod(&uid).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_content_and_are_reported() {
    if !testkit::require_root("failures_keep_content_and_are_reported") {
        return;
    }
    let state = StateDir::new("strata-vm-fail");
    let store = store(state.path()).await;
    seed(&store).await;
    let pod: Pod = obj(
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
        "nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
        "volumes": [
            {"name": "s", "secret": {"secretName": "creds", "items": [{"key": "user", "path": "u"}]}},
            {"name": "missing", "secret": {"secretName": "nope"}},
            {"name": "nfs", "nfs": {"server": "example.invalid", "path": "/x"}}
        ]}}),
    );
    let pod = store.create(&pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let mgr = manager(&store, state.path(), None);
    let err = mgr.sync_pod(&pod).await.unwrap_err();
    let errors = mgr.volume_errors(&uid);
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        vec!["missing", "nfs"],
        "{err}"
    );
    let s = vol(state.path(), &uid, "kubernetes.io~secret", "s");
    assert_eq!(read_snapshot(&s).unwrap().files["u"], b"admin");
    // The key goes away: the volume keeps its last good content (no teardown, k8s#139474).
    let mut sec: Secret = store.get("default", "creds").await.unwrap();
    sec.data.as_mut().unwrap().remove("user");
    let sec = store.update(&sec).await.unwrap();
    mgr.object_changed(ObjectKind::Secret, CachedObject::Secret(sec))
        .await;
    assert_eq!(read_snapshot(&s).unwrap().files["u"], b"admin");
    assert!(mgr.volume_errors(&uid)["s"].contains("references non-existent secret key"));
    // The failure is recorded on the pod as a FailedMount event.
    let events = store.events_for("Pod", "default", "p").await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedMount"))
    );
    mgr.tear_down_pod(&uid).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_what_is_right_and_cleans_what_is_stale() {
    if !testkit::require_root("restart_keeps_what_is_right_and_cleans_what_is_stale") {
        return;
    }
    let state = StateDir::new("strata-vm-restart");
    let store = store(state.path()).await;
    seed(&store).await;
    let p1 = store.create(&api_pod("keep")).await.unwrap();
    let p2 = store.create(&api_pod("stale")).await.unwrap();
    let (u1, u2) = (
        p1.metadata.uid.clone().unwrap(),
        p2.metadata.uid.clone().unwrap(),
    );
    let node_dir = state.path().join("node");
    {
        let a = manager(&store, state.path(), None);
        a.sync_pod(&p1).await.unwrap();
        a.sync_pod(&p2).await.unwrap();
    } // the manager "crashes": nothing is torn down
    let sec1 = vol(state.path(), &u1, "kubernetes.io~secret", "sec");
    let version = read_snapshot(&sec1).unwrap().version;
    let keep_mounts = mounts_below(&strata_volumes::layout::pod_dir(&node_dir, &u1));
    assert_eq!(
        keep_mounts.len(),
        3,
        "secret, projected and Memory emptyDir tmpfs: {keep_mounts:?}"
    );
    // A crash mid-write left a stale ..data_tmp behind.
    std::os::unix::fs::symlink("..gone", sec1.join("..data_tmp")).unwrap();

    store
        .delete::<Pod>("default", "stale", Preconditions::default())
        .await
        .unwrap();
    let pods = store.list::<Pod>(None, None).await.unwrap().items;
    let b = manager(&store, state.path(), None);
    b.reconcile(&pods).await.unwrap();
    assert_eq!(
        mounts_below(&strata_volumes::layout::pod_dir(&node_dir, &u1)),
        keep_mounts,
        "no double mounts"
    );
    assert_eq!(
        read_snapshot(&sec1).unwrap().version,
        version,
        "unchanged content is not rewritten"
    );
    assert!(
        std::fs::symlink_metadata(sec1.join("..data_tmp")).is_err(),
        "stale ..data_tmp healed"
    );
    let stale_dir = strata_volumes::layout::pod_dir(&node_dir, &u2);
    assert!(!stale_dir.exists());
    assert!(mounts_below(&stale_dir).is_empty());
    assert_eq!(b.pods_on_disk().unwrap(), vec![u1.clone()]);
    b.reconcile(&[]).await.unwrap();
    assert!(b.pods_on_disk().unwrap().is_empty());
    assert!(mounts_below(&node_dir.join("pods")).is_empty());
}

static SKEW_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn skewed_clock() -> SystemTime {
    SystemTime::now() + Duration::from_secs(SKEW_SECS.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_after_80_percent_of_their_lifetime() {
    if !testkit::require_root("tokens_are_refreshed_after_80_percent_of_their_lifetime") {
        return;
    }
    let state = StateDir::new("strata-vm-token");
    let store = store(state.path()).await;
    seed(&store).await;
    let pod: Pod = obj(
        json!({"metadata": {"name": "t", "namespace": "default"}, "spec": {
        "nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
        "volumes": [{"name": "tok", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "a", "expirationSeconds": 600, "path": "token"}}]}}]}}),
    );
    let pod = store.create(&pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let mgr = strata_volumes::manager::VolumeManager::new(
        store.clone(),
        strata_volumes::manager::Config {
            state_dir: state.path().join("node"),
            node_name: NODE.into(),
            csi_endpoint: None,
            issuer: strata_volumes::token::DEFAULT_ISSUER.into(),
            clock: skewed_clock,
        },
    )
    .unwrap();
    mgr.sync_pod(&pod).await.unwrap();
    let dir = vol(state.path(), &uid, "kubernetes.io~projected", "tok");
    let read = || String::from_utf8(read_snapshot(&dir).unwrap().files["token"].clone()).unwrap();
    let jwks = mgr.token_issuer().jwks();
    let first = read();
    let c1 = strata_volumes::token::verify(&jwks, &first, Some("a"), skewed_clock()).unwrap();
    assert_eq!(c1.exp - c1.iat, 600);

    // 100 s in: not due; the file stays as it is.
    SKEW_SECS.store(100, std::sync::atomic::Ordering::SeqCst);
    let next = mgr.refresh_tokens().await.unwrap();
    assert_eq!(read(), first);
    let due = next
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(due, c1.iat + 481, "due just after 80 % of 600 s");

    // 490 s in (past 80 %, whatever the jitter): a new token is written.
    SKEW_SECS.store(490, std::sync::atomic::Ordering::SeqCst);
    mgr.refresh_tokens().await.unwrap();
    let second = read();
    assert_ne!(second, first);
    let c2 = strata_volumes::token::verify(&jwks, &second, Some("a"), skewed_clock()).unwrap();
    assert!(c2.iat >= c1.iat + 490);
    assert_eq!(c2.kubernetes.pod.unwrap().uid, uid);
    mgr.tear_down_pod(&uid).await.unwrap();
}

/// A pod with a projected ConfigMap+Secret volume and a claim, as a StatefulSet makes them.
fn claim_pod(name: &str, claim: &str) -> Pod {
    obj(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
        "nodeName": NODE, "containers": [{"name": "c", "image": "busybox", "volumeMounts": [
            {"name": "data", "mountPath": "/data"}, {"name": "config", "mountPath": "/etc/web"}]}],
        "volumes": [
            {"name": "config", "projected": {"sources": [
                {"configMap": {"name": "cfg"}}, {"secret": {"name": "creds"}}]}},
            {"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}),
    )
}

fn unbound_claim(name: &str) -> PersistentVolumeClaim {
    obj(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}},
        "storageClassName": ""}}),
    )
}

/// Waits until the pod's volume `name` reports an error containing `want`.
fn wait_error(mgr: &Manager, uid: &str, name: &str, want: &str) {
    testkit::wait_for(&format!("volume {name} error {want:?}"), DEADLINE, || {
        mgr.volume_errors(uid)
            .get(name)
            .is_some_and(|e| e.contains(want))
            .then_some(())
    });
}

type Manager = strata_volumes::manager::VolumeManager<strata_store::EmbeddedStore>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_volume_changes_resync_pods_through_the_watches() {
    if !testkit::require_root("claim_and_volume_changes_resync_pods_through_the_watches") {
        return;
    }
    let state = StateDir::new("strata-vm-claimwatch");
    let store = store(state.path()).await;
    seed(&store).await;
    // No CSI driver: a bound claim then fails at "no driver configured", which shows the
    // manager got past the claim and the volume. Retries and resyncs are an hour apart,
    // so every step below can only arrive through a watch.
    let mgr = manager(&store, state.path(), None);
    let hour = Duration::from_secs(3600);
    mgr.set_periods(hour, hour);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let mgr = mgr.clone();
        tokio::spawn(async move {
            mgr.run(async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    store.create(&unbound_claim("data-w")).await.unwrap();
    let pod = store.create(&claim_pod("w", "data-w")).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();

    // (a) The unbound claim does not hold back the projected volume.
    wait_error(&mgr, &uid, "data", "is not bound yet");
    let config = vol(state.path(), &uid, "kubernetes.io~projected", "config");
    testkit::wait_for("projected config volume", DEADLINE, || {
        let s = read_snapshot(&config).ok()?;
        (s.files.get("a")? == b"1" && s.files.get("user")? == b"admin").then_some(())
    });
    assert!(is_tmpfs(&config));

    // (b) The claim is bound to a volume that does not exist yet: the claim watch re-syncs.
    let mut pvc: PersistentVolumeClaim = store.get("default", "data-w").await.unwrap();
    pvc.spec.as_mut().unwrap().volume_name = Some("pv-w".into());
    let mut pvc = store.update(&pvc).await.unwrap();
    pvc.status = Some(obj(
        json!({"phase": "Bound", "capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"]}),
    ));
    store.update_status(&pvc).await.unwrap();
    wait_error(&mgr, &uid, "data", "pv-w");
    // The volume appears: the volume watch re-syncs the pod of its claim.
    let pv: PersistentVolume = obj(json!({"metadata": {"name": "pv-w"}, "spec": {
        "capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "csi": {"driver": "local.csi.strata.io", "volumeHandle": "h-w", "fsType": "ext4"},
        "claimRef": {"namespace": "default", "name": "data-w"}}}));
    store.create(&pv).await.unwrap();
    wait_error(&mgr, &uid, "data", "none is configured");

    // A claim created after its pod: the claim watch's Added event re-syncs the pod.
    let late = store.create(&claim_pod("late", "data-late")).await.unwrap();
    let late_uid = late.metadata.uid.clone().unwrap();
    wait_error(&mgr, &late_uid, "data", "not found");
    store.create(&unbound_claim("data-late")).await.unwrap();
    wait_error(&mgr, &late_uid, "data", "is not bound yet");

    for name in ["w", "late"] {
        store
            .delete::<Pod>("default", name, Preconditions::default())
            .await
            .unwrap();
    }
    let pods = state.path().join("node").join("pods");
    testkit::wait_for("pods torn down", DEADLINE, || {
        (mounts_below(&pods).is_empty() && std::fs::read_dir(&pods).ok()?.next().is_none())
            .then_some(())
    });
    stop_tx.send(()).unwrap();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_after_or_racing_a_tear_down_sets_nothing_up() {
    if !testkit::require_root("a_sync_after_or_racing_a_tear_down_sets_nothing_up") {
        return;
    }
    let state = StateDir::new("strata-vm-race");
    let store = store(state.path()).await;
    seed(&store).await;
    let node_dir = state.path().join("node");
    let mgr = manager(&store, state.path(), None);

    // A queued retry that runs after the tear-down (the demo's leak).
    let pod = store.create(&api_pod("gone")).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    mgr.sync_pod(&pod).await.unwrap();
    mgr.tear_down_pod(&uid).await.unwrap();
    let pod_dir = strata_volumes::layout::pod_dir(&node_dir, &uid);
    assert!(
        mgr.sync_pod(&pod).await.is_err(),
        "a torn-down pod is not synced"
    );
    assert!(!pod_dir.exists(), "nothing re-created for a torn-down pod");
    assert!(mounts_below(&pod_dir).is_empty());
    assert!(mgr.volume_errors(&uid).is_empty());

    // Syncs in flight while the tear-down runs: whatever the order, nothing remains.
    for i in 0..5 {
        let pod = store.create(&api_pod(&format!("race-{i}"))).await.unwrap();
        let uid = pod.metadata.uid.clone().unwrap();
        mgr.sync_pod(&pod).await.unwrap();
        let syncs: Vec<_> = (0..4)
            .map(|_| {
                let (mgr, pod) = (mgr.clone(), pod.clone());
                tokio::spawn(async move { mgr.sync_pod(&pod).await })
            })
            .collect();
        let tear = {
            let (mgr, uid) = (mgr.clone(), uid.clone());
            tokio::spawn(async move { mgr.tear_down_pod(&uid).await })
        };
        tear.await.unwrap().unwrap();
        for s in syncs {
            let _ = s.await.unwrap();
        }
        let pod_dir = strata_volumes::layout::pod_dir(&node_dir, &uid);
        assert!(!pod_dir.exists(), "race-{i}: pod directory re-created");
        assert!(mounts_below(&pod_dir).is_empty(), "race-{i}: mounts leaked");
    }

    // A pod deleted from the store while the manager was not looking: the next reconcile
    // unmounts and removes what it had.
    let pod = store.create(&api_pod("stale")).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    mgr.sync_pod(&pod).await.unwrap();
    store
        .delete::<Pod>("default", "stale", Preconditions::default())
        .await
        .unwrap();
    let pods = store.list::<Pod>(None, None).await.unwrap().items;
    mgr.reconcile(&pods).await.unwrap();
    let pod_dir = strata_volumes::layout::pod_dir(&node_dir, &uid);
    assert!(!pod_dir.exists());
    assert!(mounts_below(&node_dir.join("pods")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admission_required_only_admitted_pods_are_set_up() {
    if !testkit::require_root("with_admission_required_only_admitted_pods_are_set_up") {
        return;
    }
    let state = StateDir::new("strata-vm-admit");
    let store = store(state.path()).await;
    seed(&store).await;
    let node_dir = state.path().join("node");
    let mgr = manager(&store, state.path(), None);
    mgr.require_admission();
    let pod = store.create(&api_pod("waits")).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let pod_dir = strata_volumes::layout::pod_dir(&node_dir, &uid);

    // Neither a sync nor a reconcile sets up a pod the node has not admitted.
    assert!(matches!(
        mgr.sync_pod(&pod).await,
        Err(strata_volumes::Error::NotAdmitted { .. })
    ));
    let pods = store.list::<Pod>(None, None).await.unwrap().items;
    mgr.reconcile(&pods).await.unwrap();
    assert!(!pod_dir.exists(), "set up before admission");

    // Admitted: set up, and a reconcile keeps it (it is desired and admitted).
    mgr.admit(&uid);
    assert_eq!(mgr.sync_pod(&pod).await.unwrap().len(), 5);
    mgr.reconcile(&pods).await.unwrap();
    assert!(pod_dir.is_dir());
    mgr.tear_down_pod(&uid).await.unwrap();
    assert!(!pod_dir.exists() && mounts_below(&pod_dir).is_empty());
    // Torn down is gone for good: admitting again changes nothing.
    mgr.admit(&uid);
    assert!(matches!(
        mgr.sync_pod(&pod).await,
        Err(strata_volumes::Error::PodGone { .. })
    ));
}

/// A set-up the manager finishes on its own (here a retry, after the missing Secret
/// appeared) tells whoever waits for the pod's volumes: `watch_ready` changes and
/// `pod_ready` says so, without the waiter calling `sync_pod` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_up_finished_by_a_retry_wakes_watch_ready() {
    if !testkit::require_root("a_set_up_finished_by_a_retry_wakes_watch_ready") {
        return;
    }
    let state = StateDir::new("strata-vm-ready");
    let store = store(state.path()).await;
    seed(&store).await;
    let pod: Pod = obj(
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
        "nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
        "volumes": [
            {"name": "s", "secret": {"secretName": "creds"}},
            {"name": "later", "secret": {"secretName": "later"}}
        ]}}),
    );
    let pod = store.create(&pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let mgr = manager(&store, state.path(), None);
    mgr.set_periods(Duration::from_millis(100), Duration::from_secs(3600));
    let mut ready = mgr.watch_ready(&uid);
    // Another pod's waiter is not woken by this one.
    let other = mgr.watch_ready("another-pod-uid");
    assert!(mgr.sync_pod(&pod).await.is_err());
    assert!(!mgr.pod_ready(&uid));
    assert!(!ready.has_changed().unwrap(), "nothing became ready");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let mgr = mgr.clone();
        tokio::spawn(async move {
            mgr.run(async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    let secret: Secret = obj(
        json!({"metadata": {"name": "later", "namespace": "default"},
        "data": {"k": "dg=="}}),
    );
    store.create(&secret).await.unwrap();
    tokio::time::timeout(DEADLINE, ready.changed())
        .await
        .expect("watch_ready changes when the retry sets the pod up")
        .unwrap();
    assert!(mgr.pod_ready(&uid));
    assert!(!other.has_changed().unwrap(), "another pod's waiter woken");
    assert!(mgr.container_volumes(&uid, "c", &[]).is_ok());
    mgr.tear_down_pod(&uid).await.unwrap();
    assert!(!mgr.pod_ready(&uid), "torn down is not ready");
    stop_tx.send(()).unwrap();
    runner.await.unwrap().unwrap();
}

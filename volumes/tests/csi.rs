//! PVC volumes through a real `strata-csi` process on a loop-backed pool: stage once,
//! publish per pod, node expansion, unpublish/unstage when the last user goes, and the
//! same clean-up after a manager restart.

mod common;

use std::ops::Not;

use common::*;
use csi_proto::{CapacityRange, CreateVolumeRequest, VolumeCapability, volume_capability};
use serde_json::json;
use strata_store::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use strata_store::{EmbeddedStore, Store};
use testkit::{DriverConfig, DriverProcess, LoopPool};

const DRIVER: &str = "local.csi.strata.io";

async fn create_volume(driver: &DriverProcess, name: &str, bytes: i64, fs: &str) -> String {
    let cap = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs.into(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    };
    driver
        .controller()
        .await
        .create_volume(CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap],
            parameters: [
                ("pool".to_string(), "p1".to_string()),
                ("fsType".to_string(), fs.to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// A bound PV/PVC pair for `handle`.
async fn bind(store: &EmbeddedStore, name: &str, handle: &str, size: &str, fs: &str) {
    let pv: PersistentVolume = obj(json!({"metadata": {"name": format!("pv-{name}")}, "spec": {
        "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        // A Secret that exists only when a test makes it: read at expansion alone, as
        // the kubelet reads it, so set-up never waits for it.
        "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": fs,
                "nodeExpandSecretRef": {"name": "expand-creds", "namespace": "default"}},
        "claimRef": {"namespace": "default", "name": name}}}));
    store.create(&pv).await.unwrap();
    let pvc: PersistentVolumeClaim = obj(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}},
        "volumeName": format!("pv-{name}"), "storageClassName": ""}}),
    );
    let mut pvc = store.create(&pvc).await.unwrap();
    pvc.status = Some(obj(
        json!({"phase": "Bound", "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"]}),
    ));
    store.update_status(&pvc).await.unwrap();
}

fn pvc_pod(name: &str, claim: &str, fs_group: Option<i64>) -> Pod {
    let sc = match fs_group {
        Some(g) => json!({"fsGroup": g}),
        None => json!({}),
    };
    obj(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
        "nodeName": NODE, "securityContext": sc,
        "containers": [{"name": "c", "image": "busybox",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "data", "mountPath": "/sub", "subPath": "logs"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}),
    )
}

fn is_mounted(p: &std::path::Path) -> bool {
    strata_volumes::mount::mountinfo()
        .unwrap()
        .iter()
        .any(|m| m.mount_point == p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_stage_publish_expand_unpublish_unstage() {
    let test = "pvc_stage_publish_expand_unpublish_unstage";
    if !testkit::require_root(test) {
        return;
    }
    let bin = testkit::workspace_binary("strata-csi");
    // Dropped last to first: our mounts, then the driver, then the pool's loop devices.
    let pool = LoopPool::dir();
    let driver = DriverProcess::start(DriverConfig::new(bin, NODE).pool("p1", pool.path())).await;
    let state = StateDir::new("strata-vm-csi");
    let store = store(state.path()).await;
    seed(&store).await;

    // xfs grows online; the driver needs ≥ 300 MiB for it.
    let handle = create_volume(&driver, "pvc-1", 320 << 20, "xfs").await;
    bind(&store, "data", &handle, "320Mi", "xfs").await;
    let p1 = store
        .create(&pvc_pod("p1", "data", Some(4242)))
        .await
        .unwrap();
    let p2 = store.create(&pvc_pod("p2", "data", None)).await.unwrap();
    let (u1, u2) = (
        p1.metadata.uid.clone().unwrap(),
        p2.metadata.uid.clone().unwrap(),
    );
    let node_dir = state.path().join("node");
    let mgr = manager(&store, state.path(), Some(driver.endpoint()));

    let v1 = mgr.sync_pod(&p1).await.unwrap();
    let staging = strata_volumes::layout::csi_staging(&node_dir, DRIVER, &handle);
    let t1 = strata_volumes::layout::csi_publish(&node_dir, &u1, "pv-data");
    assert_eq!(v1["data"].path, t1);
    assert!(is_mounted(&staging), "staged at the global path");
    assert!(is_mounted(&t1), "published for p1");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(staging.parent().unwrap())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o750);
    assert!(t1.parent().unwrap().join("vol_data.json").exists());
    std::fs::write(t1.join("hello"), "from p1").unwrap();
    // fsGroup, delegated to the driver as volume_mount_group (it advertises
    // VOLUME_MOUNT_GROUP): the filesystem root joins the group, setgid and group-writable.
    let root = std::fs::metadata(&t1).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&root), 4242);
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&root) & 0o2070, 0o2070);

    // subPath: created inside the volume and bound, never escaping it.
    let cv = mgr.container_volumes(&u1, "c", &[]).unwrap();
    assert_eq!(cv.mounts[0].source, t1);
    assert!(is_mounted(&cv.mounts[1].source));
    assert!(t1.join("logs").is_dir());

    let v2 = mgr.sync_pod(&p2).await.unwrap();
    let t2 = &v2["data"].path;
    assert_eq!(
        std::fs::read_to_string(t2.join("hello")).unwrap(),
        "from p1",
        "same volume, second publish"
    );
    let staged_count = strata_volumes::mount::mountinfo()
        .unwrap()
        .iter()
        .filter(|m| m.mount_point == staging)
        .count();
    assert_eq!(staged_count, 1, "staged once per node");

    // Node expansion when the claim says so.
    let mut ctl = driver.controller().await;
    ctl.controller_expand_volume(csi_proto::ControllerExpandVolumeRequest {
        volume_id: handle.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: 512 << 20,
            limit_bytes: 0,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut pv: PersistentVolume = store.get("", "pv-data").await.unwrap();
    pv.spec.as_mut().unwrap().capacity.as_mut().unwrap().insert(
        "storage".into(),
        strata_store::k8s_openapi::apimachinery::pkg::api::resource::Quantity("512Mi".into()),
    );
    store.update(&pv).await.unwrap();
    let mut pvc: PersistentVolumeClaim = store.get("default", "data").await.unwrap();
    pvc.status.as_mut().unwrap().allocated_resource_statuses = Some(
        [("storage".to_string(), "NodeResizePending".to_string())]
            .into_iter()
            .collect(),
    );
    store.update_status(&pvc).await.unwrap();
    // The PV's node-expand Secret does not exist yet: the expansion waits for it.
    let err = mgr.sync_pod(&p1).await.unwrap_err().to_string();
    assert!(err.contains("expand-creds"), "{err}");
    let pending: PersistentVolumeClaim = store.get("default", "data").await.unwrap();
    assert!(
        pending.status.unwrap().allocated_resource_statuses.unwrap()["storage"]
            == "NodeResizePending",
        "still pending without its Secret"
    );
    let creds: strata_store::k8s_openapi::api::core::v1::Secret = obj(
        json!({"metadata": {"name": "expand-creds", "namespace": "default"},
               "data": {"token": "c2VjcmV0"}}),
    );
    store.create(&creds).await.unwrap();
    mgr.sync_pod(&p1).await.unwrap();
    let pvc: PersistentVolumeClaim = store.get("default", "data").await.unwrap();
    let status = pvc.status.unwrap();
    assert_eq!(status.capacity.unwrap()["storage"].0, "512Mi");
    assert!(
        status
            .allocated_resource_statuses
            .unwrap_or_default()
            .contains_key("storage")
            .not()
    );
    let st = nix::sys::statvfs::statvfs(&t1).unwrap();
    assert!(
        st.blocks() * st.fragment_size() > 400 << 20,
        "filesystem grew"
    );
    // As the kubelet: FileSystemResizeSuccessful on the pod and on the claim.
    let events = store
        .list::<strata_store::k8s_openapi::api::core::v1::Event>(Some("default"), None)
        .await
        .unwrap()
        .items;
    for kind in ["Pod", "PersistentVolumeClaim"] {
        assert!(
            events.iter().any(
                |e| e.reason.as_deref() == Some("FileSystemResizeSuccessful")
                    && e.involved_object.kind.as_deref() == Some(kind)
            ),
            "{kind}: {events:?}"
        );
    }

    // The first user goes: unpublished only. The last: unstaged, staging dir removed.
    mgr.tear_down_pod(&u1).await.unwrap();
    assert!(!is_mounted(&t1) && !t1.exists());
    assert!(is_mounted(&staging));
    mgr.tear_down_pod(&u2).await.unwrap();
    assert!(!is_mounted(staging.as_path()));
    assert!(!staging.parent().unwrap().exists());
    assert!(mounts_below(&node_dir).is_empty());

    // After a restart, a manager that finds a published volume for a pod that no longer
    // exists unpublishes and unstages it from what is on disk.
    let p3 = store.create(&pvc_pod("p3", "data", None)).await.unwrap();
    mgr.sync_pod(&p3).await.unwrap();
    drop(mgr);
    let fresh = manager(&store, state.path(), Some(driver.endpoint()));
    fresh.reconcile(&[]).await.unwrap();
    assert!(
        mounts_below(&node_dir).is_empty(),
        "{:?}",
        mounts_below(&node_dir)
    );
    assert!(!staging.parent().unwrap().exists());
}

/// A resync of a pod whose volume is published makes no CSI call (as the kubelet's
/// reconciler): with the driver gone it still succeeds, and the mount stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_volume_is_not_published_again() {
    let test = "a_published_volume_is_not_published_again";
    if !testkit::require_root(test) {
        return;
    }
    let bin = testkit::workspace_binary("strata-csi");
    let pool = LoopPool::dir();
    let mut driver =
        DriverProcess::start(DriverConfig::new(bin, NODE).pool("p1", pool.path())).await;
    let state = StateDir::new("strata-vm-republish");
    let store = store(state.path()).await;
    seed(&store).await;
    let handle = create_volume(&driver, "pvc-r", 64 << 20, "ext4").await;
    bind(&store, "data", &handle, "64Mi", "ext4").await;
    let pod = store
        .create(&pvc_pod("p1", "data", Some(4242)))
        .await
        .unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let mgr = manager(&store, state.path(), Some(driver.endpoint()));
    let first = mgr.sync_pod(&pod).await.unwrap();
    let target = &first["data"].path;
    assert!(is_mounted(target));

    driver.kill();
    let again = mgr.sync_pod(&pod).await.unwrap();
    assert_eq!(&again["data"].path, target);
    assert!(is_mounted(target), "still published");

    // A publish that is gone is made again (by the driver, which must be back for it).
    driver.restart(&[]).await;
    let mgr = manager(&store, state.path(), Some(driver.endpoint()));
    nix::mount::umount(target.as_path()).unwrap();
    mgr.sync_pod(&pod).await.unwrap();
    assert!(is_mounted(target), "published again");
    mgr.tear_down_pod(&uid).await.unwrap();
    assert!(mounts_below(&state.path().join("node")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_through_csi() {
    let test = "block_volume_through_csi";
    if !testkit::require_root(test) {
        return;
    }
    let bin = testkit::workspace_binary("strata-csi");
    let pool = LoopPool::dir();
    let driver = DriverProcess::start(DriverConfig::new(bin, NODE).pool("p1", pool.path())).await;
    let state = StateDir::new("strata-vm-block");
    let store = store(state.path()).await;
    seed(&store).await;
    let cap = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    };
    let handle = driver
        .controller()
        .await
        .create_volume(CreateVolumeRequest {
            name: "pvc-raw".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 16 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap],
            parameters: [("pool".to_string(), "p1".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let pv: PersistentVolume = obj(json!({"metadata": {"name": "pv-raw"}, "spec": {
        "capacity": {"storage": "16Mi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
        "csi": {"driver": DRIVER, "volumeHandle": handle},
        "claimRef": {"namespace": "default", "name": "raw"}}}));
    store.create(&pv).await.unwrap();
    let pvc: PersistentVolumeClaim = obj(
        json!({"metadata": {"name": "raw", "namespace": "default"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "resources": {"requests": {"storage": "16Mi"}},
        "volumeName": "pv-raw", "storageClassName": ""}}),
    );
    let mut pvc = store.create(&pvc).await.unwrap();
    pvc.status = Some(obj(json!({"phase": "Bound"})));
    store.update_status(&pvc).await.unwrap();
    let pod: Pod = obj(
        json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {
        "nodeName": NODE,
        "containers": [{"name": "c", "image": "busybox", "volumeDevices": [{"name": "raw", "devicePath": "/dev/xvda"}]}],
        "volumes": [{"name": "raw", "persistentVolumeClaim": {"claimName": "raw"}}]}}),
    );
    let pod = store.create(&pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let mgr = manager(&store, state.path(), Some(driver.endpoint()));
    let prepared = mgr.sync_pod(&pod).await.unwrap();
    assert!(prepared["raw"].block);
    let target = &prepared["raw"].path;
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(target)
            .unwrap()
            .file_type()
            .is_block_device(),
        "the target is the device"
    );
    let cv = mgr.container_volumes(&uid, "c", &[]).unwrap();
    assert_eq!(cv.devices.len(), 1);
    assert_eq!(cv.devices[0].device_path, "/dev/xvda");
    assert!(cv.mounts.is_empty());
    mgr.tear_down_pod(&uid).await.unwrap();
    let node_dir = state.path().join("node");
    assert!(
        mounts_below(&node_dir).is_empty(),
        "{:?}",
        mounts_below(&node_dir)
    );
    assert!(
        !strata_volumes::layout::csi_staging(&node_dir, DRIVER, &handle)
            .parent()
            .unwrap()
            .exists()
    );
}

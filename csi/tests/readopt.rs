//! Self-describing volumes: the driver's state database is deleted while volumes,
//! snapshots, a group snapshot, a stage and a publication exist; the restarted driver
//! re-adopts every one of them from the records beside their data (issue 9 §4).

mod common;

use std::collections::BTreeMap;

use common::*;

/// What the CO can see of the driver's objects, for comparing before and after.
async fn inventory(env: &mut Env) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let vols = env
        .list_volumes()
        .await
        .into_iter()
        .filter_map(|e| e.volume)
        .map(|v| {
            let shown = format!(
                "{} bytes, source {:?}, context {:?}",
                v.capacity_bytes,
                v.content_source,
                v.volume_context.iter().collect::<BTreeMap<_, _>>()
            );
            (v.volume_id, shown)
        })
        .collect();
    let snaps = env
        .list_snapshots()
        .await
        .into_iter()
        .map(|s| {
            let shown = format!(
                "of {}, {} bytes, group {:?}, at {:?}",
                s.source_volume_id, s.size_bytes, s.group_snapshot_id, s.creation_time
            );
            (s.snapshot_id, shown)
        })
        .collect();
    (vols, snaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_database_loss_readopts_everything() {
    if !testkit::require_root("state_database_loss_readopts_everything") {
        return;
    }
    let mut env = Env::new(PoolFs::Xfs(512 << 20)).await;
    let a = env.create("ra-a", 32 * MIB).await;
    let b = env.create("ra-b", 32 * MIB).await;
    let snap = env.snapshot("ra-snap", &a.volume_id).await;
    let group = env
        .group
        .create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
            name: "ra-group".into(),
            source_volume_ids: vec![a.volume_id.clone(), b.volume_id.clone()],
            ..Default::default()
        })
        .await
        .expect("CreateVolumeGroupSnapshot")
        .into_inner()
        .group_snapshot
        .expect("group_snapshot");
    let mut restore = create_req("ra-restored", 32 * MIB);
    restore.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = env.create_req(restore).await;
    // An expansion after creation must be what comes back.
    env.ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: b.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 48 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("ControllerExpandVolume");
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let staging = env.stage(&a, "ra-staging", cap.clone()).await;
    let target = env
        .publish(&a, &staging, "ra-pod", cap.clone(), false)
        .await;
    std::fs::write(target.join("payload"), b"still here").unwrap();
    let restored_staging = env
        .stage(&restored, "ra-restored-staging", cap.clone())
        .await;
    let before = inventory(&mut env).await;
    assert_eq!(before.0.len(), 3, "{before:#?}");
    assert_eq!(before.1.len(), 3, "{before:#?}");

    // Lose the database (and its WAL) while the driver is down.
    env.driver.kill();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let p = env.driver.state_dir().join(f);
        if p.exists() {
            std::fs::remove_file(&p).unwrap();
        }
    }
    env.restart(&[]).await;

    assert!(
        env.driver.log_text().contains("re-adopted objects"),
        "the restart must say it re-adopted:\n{}",
        env.driver.log_text()
    );
    let after = inventory(&mut env).await;
    assert_eq!(
        after, before,
        "volumes and snapshots after losing the state database"
    );
    let g = env
        .group
        .get_volume_group_snapshot(GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("GetVolumeGroupSnapshot after re-adoption: {}", show(&s)))
        .into_inner()
        .group_snapshot
        .expect("group_snapshot");
    assert_eq!(g.snapshots.len(), 2, "{g:?}");
    // The publication and both stages came back: stats answer at the target and staging
    // paths, and a volume published there cannot be deleted.
    for (id, path) in [
        (&a.volume_id, &target),
        (&restored.volume_id, &restored_staging),
    ] {
        let stats = env
            .node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: path_str(path),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("NodeGetVolumeStats {}: {}", path.display(), show(&s)))
            .into_inner();
        let abnormal = stats.volume_condition.as_ref().is_some_and(|c| c.abnormal);
        assert!(!abnormal, "{stats:?}");
    }
    let busy = env
        .ctl
        .delete_volume(DeleteVolumeRequest {
            volume_id: a.volume_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        busy.map(|_| ()).unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        std::fs::read(target.join("payload")).unwrap(),
        b"still here"
    );

    // Everything can be taken down through the CSI calls, and nothing is left behind.
    env.unpublish(&a.volume_id, &target).await;
    env.unstage(&a.volume_id, &staging).await;
    env.unstage(&restored.volume_id, &restored_staging).await;
    env.group
        .delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            snapshot_ids: group
                .snapshots
                .iter()
                .map(|s| s.snapshot_id.clone())
                .collect(),
            ..Default::default()
        })
        .await
        .expect("DeleteVolumeGroupSnapshot");
    env.ctl
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("DeleteSnapshot");
    for v in [&a, &b, &restored] {
        env.delete(&v.volume_id).await;
    }
    let left = env.pool.files();
    assert!(left.is_empty(), "left in the pool: {left:?}");
    let records = env.pool.meta_files();
    assert!(records.is_empty(), "metadata records left: {records:?}");
}

/// The disk moves to another node: a driver with another node id and a state database of
/// its own, started on the pool, adopts the volumes and snapshots under the ids the CO
/// knows (they keep naming the node they were made on), serves them for every call, and
/// says so once in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_moved_to_another_node_is_adopted_there() {
    if !testkit::require_root("a_pool_moved_to_another_node_is_adopted_there") {
        return;
    }
    let mut first = Env::new(PoolFs::Xfs(512 << 20)).await;
    let a = first.create("moved-a", 32 * MIB).await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let staging = first.stage(&a, "moved-staging", cap.clone()).await;
    std::fs::write(staging.join("payload"), b"made on node-a").unwrap();
    first.unstage(&a.volume_id, &staging).await;
    let snap = first.snapshot("moved-snap", &a.volume_id).await;
    let before = inventory(&mut first).await;

    // node-a is gone; the disk is attached to node-b, whose driver starts on it.
    let Env { driver, pool, .. } = first;
    drop(driver);
    let config = DriverConfig::new(BIN, "node-b").pool(POOL, pool.path());
    let driver = DriverProcess::start(config).await;
    let mut env = Env::connect(driver, pool).await;
    let log = env.driver.log_text();
    assert!(
        log.contains("adopted objects made on other nodes") && log.contains("node-a"),
        "the start must say where the objects came from:\n{log}"
    );
    let after = inventory(&mut env).await;
    // The same objects by the same ids; only the node they are now on differs.
    let mut moved = before.clone();
    for shown in moved.0.values_mut() {
        *shown = shown.replace("\"node\": \"node-a\"", "\"node\": \"node-b\"");
    }
    assert_eq!(
        after, moved,
        "the same volumes and snapshots, by the same ids"
    );
    let listed = env.list_volumes().await;
    let topo = listed[0].volume.as_ref().unwrap().accessible_topology[0]
        .segments
        .get(TOPOLOGY_KEY)
        .cloned();
    assert_eq!(topo.as_deref(), Some("node-b"), "{listed:?}");

    // CreateVolume by the same name is the same volume; a restore from the moved snapshot
    // works; the moved volume stages with its data, and can be deleted.
    let again = env.create("moved-a", 32 * MIB).await;
    assert_eq!(again.volume_id, a.volume_id);
    let mut restore = create_req("moved-restored", 32 * MIB);
    restore.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = env.create_req(restore).await;
    assert!(restored.volume_id.starts_with("node-b_"), "{restored:?}");
    for v in [&a, &restored] {
        let st = env
            .stage(v, &format!("{}-st", v.volume_id), cap.clone())
            .await;
        assert_eq!(
            std::fs::read(st.join("payload")).unwrap(),
            b"made on node-a",
            "{}",
            v.volume_id
        );
        env.unstage(&v.volume_id, &st).await;
    }
    env.ctl
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("DeleteSnapshot of the moved snapshot");
    for v in [&a, &restored] {
        env.delete(&v.volume_id).await;
    }
    assert!(env.pool.files().is_empty(), "{:?}", env.pool.files());
    assert!(
        env.pool.meta_files().is_empty(),
        "{:?}",
        env.pool.meta_files()
    );
}

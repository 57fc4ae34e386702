//! The `btrfs` backend through the real binary, on a loop-backed btrfs: a subvolume per
//! volume whose qgroup limit is its size, native snapshots, clones and restores, online
//! expansion, stats from qgroup accounting, and refusals that change nothing.

mod common;

use common::tree::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_volumes_are_limited_subvolumes() {
    if !testkit::require_root("btrfs_volumes_are_limited_subvolumes") {
        return;
    }
    let mut env = Env::with_spec(PoolFs::Btrfs(512 << 20), "btrfs:{}").await;
    let size = 32 * MIB;
    let (v, st, t) = published(&mut env, "vol", size).await;
    let subvol = env.pool.path().join("volumes");
    assert_eq!(names(&subvol).len(), 1, "one subvolume");
    let m = mount_at(&t).expect("published mount");
    assert_eq!(m.fs_type, "btrfs");

    // Writes past the size fail; the pool's other space is untouched by the limit.
    assert_limit_enforced(&t.join("big"), size, 1 << 20);

    // Stats are this volume's bytes, not the filesystem's: a neighbour's data does not
    // count, and the total is the limit.
    let (_, st2, t2) = published(&mut env, "neighbour", size).await;
    assert!(write_pattern(&t2.join("n"), 12 << 20, 5).1.is_none());
    assert!(write_pattern(&t.join("own"), 6 << 20, 4).1.is_none());
    let (total, used) = bytes(&stats(&mut env, &v, &t).await);
    assert_eq!(total, size);
    assert!(
        (6 << 20..10 << 20).contains(&used),
        "used {used}: 6 MiB written here, 12 MiB next door"
    );
    std::fs::remove_file(t.join("own")).unwrap();

    assert_expands_while_published(&mut env, &v, &t).await;
    assert_snapshot_restore_clone(&mut env, &v, &t, 2 * size).await;
    assert_block_refused(&mut env, &v).await;

    // A snapshot is read-only.
    let snap = env.snapshot("ro", &v.volume_id).await;
    let snaps = env.pool.path().join("snapshots");
    let only = names(&snaps);
    assert_eq!(only.len(), 1);
    let err = std::fs::write(snaps.join(&only[0]).join("x"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    env.ctl
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(names(&snaps).is_empty(), "snapshot subvolume deleted");

    env.unpublish(&v.volume_id, &t).await;
    env.unstage(&v.volume_id, &st).await;
    assert!(mount_at(&st).is_none());
    env.delete(&v.volume_id).await;
    let vol2 = env.list_volumes().await;
    assert_eq!(vol2.len(), 1, "the neighbour is left");
    let nb = vol2[0].volume.clone().unwrap();
    let t2n = t2.clone();
    env.unpublish(&nb.volume_id, &t2n).await;
    env.unstage(&nb.volume_id, &st2).await;
    env.delete(&nb.volume_id).await;
    assert!(names(&subvol).is_empty(), "subvolumes deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_bad_input_changes_nothing() {
    if !testkit::require_root("btrfs_bad_input_changes_nothing") {
        return;
    }
    // A pool directory that is not on btrfs: the driver refuses to start and creates
    // nothing there.
    let xfs = LoopPool::new(PoolFs::Ext4(64 << 20)).unwrap();
    let before = names(xfs.path());
    assert_pool_refused(
        &format!("p1=btrfs:{}", xfs.path().display()),
        "is not on a btrfs filesystem",
    );
    assert_eq!(names(xfs.path()), before, "pool dir untouched");

    // An unknown pool in CreateVolume: INVALID_ARGUMENT, nothing made.
    let mut env = Env::with_spec(PoolFs::Btrfs(256 << 20), "btrfs:{}").await;
    let mut req = tree_req("lost", 16 * MIB);
    req.parameters.insert("pool".into(), "nope".into());
    let err = env.ctl.create_volume(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", show(&err));
    // An image filesystem asked of a btrfs pool: INVALID_ARGUMENT, nothing made.
    let mut req = tree_req("ext", 16 * MIB);
    req.parameters.insert("fsType".into(), "ext4".into());
    let err = env.ctl.create_volume(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", show(&err));
    assert!(names(&env.pool.path().join("volumes")).is_empty());
    assert!(env.list_volumes().await.is_empty());
}

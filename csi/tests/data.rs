//! Real mkfs, mounts and data through `strata-csi`: sizes enforced, block devices, online
//! growth, snapshot/restore/clone contents, stats, read-only, fsGroup and direct I/O.
//!
//! Everything is observed from outside: files written through the published path, statvfs,
//! mountinfo and the loop devices' sysfs entries.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use common::*;

fn fs_cap(fs: &str) -> VolumeCapability {
    mount_cap(fs, Mode::SingleNodeWriter)
}

/// The smallest volume each filesystem is made on in these tests (xfs needs 300 MiB).
fn size_for(fs: &str) -> i64 {
    if fs == "xfs" { 320 * MIB } else { 64 * MIB }
}

async fn staged_and_published(
    env: &mut Env,
    name: &str,
    fs: &str,
    bytes: i64,
) -> (Volume, std::path::PathBuf, std::path::PathBuf) {
    let v = env.create_fs(name, bytes, fs).await;
    let st = env.stage(&v, &format!("{name}-staging"), fs_cap(fs)).await;
    let t = env.publish(&v, &st, name, fs_cap(fs), false).await;
    (v, st, t)
}

async fn teardown(env: &mut Env, v: &Volume, st: &Path, t: &Path) {
    env.unpublish(&v.volume_id, t).await;
    env.unstage(&v.volume_id, st).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_past_the_size_gives_enospc() {
    if !testkit::require_root("writing_past_the_size_gives_enospc") {
        return;
    }
    let mut env = Env::new(PoolFs::Xfs(1 << 30)).await;
    for fs in ["ext4", "xfs"] {
        let size = size_for(fs);
        let (v, st, t) = staged_and_published(&mut env, &format!("full-{fs}"), fs, size).await;
        let m = mount_at(&t).expect("published mount");
        assert_eq!(m.fs_type, fs, "fsType {fs} made and mounted");
        let (written, err) = write_pattern(&t.join("big"), 2 * size as u64, 1);
        let err =
            err.unwrap_or_else(|| panic!("{fs}: wrote {written} bytes into {size} without error"));
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENOSPC),
            "{fs}: writing past the size must give ENOSPC, got {err}"
        );
        assert!(
            written <= size as u64,
            "{fs}: wrote {written} bytes into a {size}-byte volume"
        );
        // The volume's size is enforced by its filesystem, not the pool: the image uses at
        // most its own size.
        let image = loop_of_mount(&st).expect("loop device behind the staging mount");
        let allocated = std::fs::metadata(&image.backing_file).unwrap().blocks() * 512;
        assert!(
            allocated <= size as u64 + (1 << 20),
            "{fs}: image allocates {allocated} bytes for a {size}-byte volume"
        );
        teardown(&mut env, &v, &st, &t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_is_a_device_that_takes_writes() {
    if !testkit::require_root("block_volume_is_a_device_that_takes_writes") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(256 << 20)).await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let mut req = create_req("blk", 32 * MIB);
    req.volume_capabilities = vec![cap.clone()];
    let v = env.create_req(req).await;
    let st = env.stage(&v, "blk-staging", cap.clone()).await;
    let t = env.publish(&v, &st, "blk", cap.clone(), false).await;
    let md = std::fs::metadata(&t).expect("block target");
    assert!(
        md.file_type().is_block_device(),
        "block volume published as a device node"
    );
    let dev = loop_of_block_file(&t).expect("target is a loop device");
    assert_eq!(
        dev.size_bytes as i64, v.capacity_bytes,
        "device size is the capacity"
    );

    let pattern: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&t)
            .unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&pattern).unwrap();
        f.sync_all().unwrap();
        // Past the end of the device: no space.
        f.seek(SeekFrom::Start(v.capacity_bytes as u64)).unwrap();
        let past = f.write(&pattern[..4096]);
        assert!(
            matches!(past, Ok(0)) || past.is_err(),
            "a write at the end of the device must not succeed: {past:?}"
        );
    }
    env.unpublish(&v.volume_id, &t).await;
    env.unstage(&v.volume_id, &st).await;
    // Stage and publish again: the bytes are on the volume, not in some cache.
    let st = env.stage(&v, "blk-staging", cap.clone()).await;
    let t = env.publish(&v, &st, "blk-2", cap.clone(), false).await;
    let mut back = vec![0u8; pattern.len()];
    let mut f = std::fs::File::open(&t).unwrap();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert!(back == pattern, "block data read back after restage");
    drop(f);
    // Stats of a block volume: its size.
    let r = env
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: path_str(&t),
            staging_target_path: path_str(&st),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeGetVolumeStats on a block target: {}", show(&s)))
        .into_inner();
    let bytes = r
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32);
    assert!(
        bytes.is_some_and(|u| u.total == v.capacity_bytes),
        "block stats total is the device size: {r:?}"
    );

    // Grow the block volume while published: the device the workload holds gets bigger.
    let new_size = v.capacity_bytes + 32 * MIB;
    let r = env
        .ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: new_size,
                limit_bytes: 0,
            }),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("ControllerExpandVolume block: {}", show(&s)))
        .into_inner();
    if r.node_expansion_required {
        env.node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: v.volume_id.clone(),
                volume_path: path_str(&t),
                staging_target_path: path_str(&st),
                capacity_range: Some(CapacityRange {
                    required_bytes: new_size,
                    limit_bytes: 0,
                }),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("NodeExpandVolume block: {}", show(&s)));
    }
    let dev = loop_of_block_file(&t).expect("target is a loop device");
    assert!(
        dev.size_bytes as i64 >= new_size,
        "driver contract: online grow refreshes the loop capacity: device {} < {new_size} (node_expansion_required={})",
        dev.size_bytes,
        r.node_expansion_required
    );
    env.unpublish(&v.volume_id, &t).await;
    env.unstage(&v.volume_id, &st).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_block_publish_refuses_writes() {
    if !testkit::require_root("readonly_block_publish_refuses_writes") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let mut req = create_req("blk-ro", 32 * MIB);
    req.volume_capabilities = vec![cap.clone()];
    let v = env.create_req(req).await;
    let st = env.stage(&v, "blk-ro-staging", cap.clone()).await;
    // A read-only mount does not stop writes to a device node on it: the device itself must
    // refuse them.
    let ro = env.publish(&v, &st, "blk-ro-pod", cap.clone(), true).await;
    let w = std::fs::OpenOptions::new().write(true).open(&ro);
    let refused = match &w {
        Ok(f) => {
            let mut f = f;
            f.write_all(&[0u8; 4096])
                .and_then(|()| f.sync_all())
                .is_err()
        }
        Err(_) => true,
    };
    let opened = format!("{w:?}");
    drop(w);
    env.unpublish(&v.volume_id, &ro).await;
    env.unstage(&v.volume_id, &st).await;
    assert!(
        refused,
        "CSI NodePublishVolume readonly=true: a read-only block publish must refuse writes, \
         but the device opened for write ({opened}) and took a write"
    );
}

/// xfs refuses to mount two filesystems with the same UUID at once, and a snapshot or clone
/// is a byte copy: the copy must be mountable next to its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_copies_mount_next_to_their_source() {
    if !testkit::require_root("xfs_copies_mount_next_to_their_source") {
        return;
    }
    let mut env = Env::new(PoolFs::Xfs(2 << 30)).await;
    let (v, st, t) = staged_and_published(&mut env, "xsrc", "xfs", 320 * MIB).await;
    let (_, err) = write_pattern(&t.join("a"), 1 << 20, 21);
    assert!(err.is_none(), "{err:?}");
    nix::unistd::sync();
    let snap = env.snapshot("xsnap", &v.volume_id).await;
    let source = |snapshot: bool| VolumeContentSource {
        r#type: Some(if snapshot {
            volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            })
        } else {
            volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                volume_id: v.volume_id.clone(),
            })
        }),
    };
    for (name, from_snapshot) in [("xrestored", true), ("xcloned", false)] {
        let mut req = create_req(name, 320 * MIB);
        req.parameters.insert("fsType".into(), "xfs".into());
        req.volume_capabilities = vec![fs_cap("xfs")];
        req.volume_content_source = Some(source(from_snapshot));
        let c = env.create_req(req).await;
        let cst = env.driver.mkdir(&format!("{name}-staging"));
        let r = env
            .node
            .node_stage_volume(stage_req(&c, &cst, fs_cap("xfs")))
            .await;
        assert!(
            r.is_ok(),
            "{name}: an xfs copy must stage while its source is mounted (duplicate UUID): {:?}",
            r.map_err(|s| show(&s)).err()
        );
        assert!(has_pattern(&cst.join("a"), 1 << 20, 21), "{name}: contents");
        env.unstage(&c.volume_id, &cst).await;
    }
    teardown(&mut env, &v, &st, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_while_mounted() {
    if !testkit::require_root("grow_while_mounted") {
        return;
    }
    let mut env = Env::new(PoolFs::Xfs(1 << 30)).await;
    for fs in ["ext4", "xfs"] {
        let size = size_for(fs);
        let (v, st, t) = staged_and_published(&mut env, &format!("grow-{fs}"), fs, size).await;
        let (_, err) = write_pattern(&t.join("before"), 8 << 20, 5);
        assert!(err.is_none(), "{err:?}");
        let total0 = fs_total_bytes(&t);
        let new_size = size + 96 * MIB;
        let r = env
            .ctl
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: v.volume_id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: new_size,
                    limit_bytes: 0,
                }),
                volume_capability: Some(fs_cap(fs)),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{fs}: ControllerExpandVolume: {}", show(&s)))
            .into_inner();
        assert!(r.capacity_bytes >= new_size, "{fs}: {r:?}");
        assert!(
            r.node_expansion_required,
            "{fs}: a mounted filesystem needs node expansion"
        );
        let node_expand = NodeExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            volume_path: path_str(&t),
            staging_target_path: path_str(&st),
            capacity_range: Some(CapacityRange {
                required_bytes: new_size,
                limit_bytes: 0,
            }),
            volume_capability: Some(fs_cap(fs)),
            ..Default::default()
        };
        let r = env.node.node_expand_volume(node_expand.clone()).await;
        let (v, st, t) = if fs == "ext4" && !has_capability(CAP_SYS_RESOURCE) {
            // EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE. Without it the honest answer is
            // FAILED_PRECONDITION ("cannot grow while in use", the CO does not retry), and
            // the filesystem grows offline at the next stage.
            let err = r.expect_err("ext4 cannot grow online without CAP_SYS_RESOURCE");
            assert_eq!(
                err.code(),
                Code::FailedPrecondition,
                "{fs}: CSI NodeExpandVolume: cannot grow while in use → FAILED_PRECONDITION, got {}",
                show(&err)
            );
            eprintln!("grow_while_mounted: no CAP_SYS_RESOURCE here, ext4 grows at restage");
            teardown(&mut env, &v, &st, &t).await;
            let st = env
                .stage(&v, &format!("grow-{fs}-staging"), fs_cap(fs))
                .await;
            let t = env
                .publish(&v, &st, &format!("grow-{fs}"), fs_cap(fs), false)
                .await;
            (v, st, t)
        } else {
            let r = r
                .unwrap_or_else(|s| panic!("{fs}: NodeExpandVolume: {}", show(&s)))
                .into_inner();
            assert!(
                r.capacity_bytes == 0 || r.capacity_bytes >= new_size,
                "{fs}: {r:?}"
            );
            (v, st, t)
        };
        let total1 = fs_total_bytes(&t);
        assert!(
            total1 > total0 + (64 << 20),
            "{fs}: statvfs inside the volume must show the growth: {total0} → {total1}"
        );
        assert!(
            total1 <= new_size as u64,
            "{fs}: filesystem larger than the volume: {total1} > {new_size}"
        );
        let dev = loop_of_mount(&st).expect("loop device");
        assert!(
            dev.size_bytes >= new_size as u64,
            "{fs}: loop device capacity refreshed: {} < {new_size}",
            dev.size_bytes
        );
        assert!(
            has_pattern(&t.join("before"), 8 << 20, 5),
            "{fs}: data kept across growth"
        );
        // And the new space is usable.
        let (_, err) = write_pattern(&t.join("after"), (size as u64) - (16 << 20), 6);
        assert!(err.is_none(), "{fs}: writing into the grown space: {err:?}");
        teardown(&mut env, &v, &st, &t).await;
    }
}

/// Snapshot, write more, restore the snapshot into a new volume: it holds the old contents
/// only. A clone holds the current ones. On a reflink pool (xfs) and a copying one (plain
/// dir on the host filesystem).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_and_clone_contents() {
    if !testkit::require_root("snapshot_restore_and_clone_contents") {
        return;
    }
    for pool in [PoolFs::Xfs(1 << 30), PoolFs::Dir] {
        let mut env = Env::new(pool).await;
        let (v, st, t) = staged_and_published(&mut env, "src", "ext4", 64 * MIB).await;
        let (_, err) = write_pattern(&t.join("a"), 4 << 20, 11);
        assert!(err.is_none(), "{err:?}");
        nix::unistd::sync();
        let snap = env.snapshot("snap-a", &v.volume_id).await;
        assert!(
            snap.ready_to_use,
            "{pool:?}: snapshot cut before CreateSnapshot returns"
        );
        let (_, err) = write_pattern(&t.join("b"), 4 << 20, 12);
        assert!(err.is_none(), "{err:?}");
        std::fs::remove_file(t.join("a")).unwrap();
        let (_, err) = write_pattern(&t.join("a"), 1 << 20, 13);
        assert!(err.is_none(), "{err:?}");
        nix::unistd::sync();

        // Restore, larger than the source: the filesystem is grown by publish time.
        let mut req = create_req("restored", 128 * MIB);
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        let rv = env.create_req(req).await;
        let rst = env.stage(&rv, "restored-staging", snw()).await;
        let rt = env.publish(&rv, &rst, "restored", snw(), false).await;
        assert!(
            has_pattern(&rt.join("a"), 4 << 20, 11),
            "{pool:?}: restored volume holds the snapshot's version of a"
        );
        assert!(
            !rt.join("b").exists(),
            "{pool:?}: restored volume must not hold what was written after the snapshot"
        );
        let total = fs_total_bytes(&rt);
        assert!(
            total > 96 << 20,
            "{pool:?}: a 128 MiB restore of a 64 MiB snapshot has its filesystem grown by publish time ({total} bytes)"
        );

        // Clone: today's contents.
        let mut req = create_req("cloned", 64 * MIB);
        req.volume_content_source = Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(
                volume_content_source::VolumeSource {
                    volume_id: v.volume_id.clone(),
                },
            )),
        });
        let cv = env.create_req(req).await;
        let cst = env.stage(&cv, "cloned-staging", snw()).await;
        let ct = env.publish(&cv, &cst, "cloned", snw(), false).await;
        assert!(
            has_pattern(&ct.join("a"), 1 << 20, 13),
            "{pool:?}: clone has the new a"
        );
        assert!(
            has_pattern(&ct.join("b"), 4 << 20, 12),
            "{pool:?}: clone has b"
        );

        // Writes to the copies do not reach the source.
        let (_, err) = write_pattern(&ct.join("only-in-clone"), 1 << 20, 14);
        assert!(err.is_none(), "{err:?}");
        assert!(
            !t.join("only-in-clone").exists(),
            "{pool:?}: clone is independent"
        );

        for (vol, s, p) in [(&cv, &cst, &ct), (&rv, &rst, &rt), (&v, &st, &t)] {
            teardown(&mut env, vol, s, p).await;
        }
        // A snapshot outlives its source's data changes and its deletion.
        env.delete(&v.volume_id).await;
        // ListSnapshots by id, not GetSnapshot: GET_SNAPSHOT is alpha and off by default.
        let again = env
            .ctl
            .list_snapshots(ListSnapshotsRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("ListSnapshots")
            .into_inner();
        assert_eq!(
            again.entries.len(),
            1,
            "{pool:?}: snapshot kept after its source is deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_stats_and_abnormal_conditions() {
    if !testkit::require_root("volume_stats_and_abnormal_conditions") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let (v, st, t) = staged_and_published(&mut env, "stats", "ext4", 64 * MIB).await;
    let stats = |env: &mut Env, id: String, p: &Path| {
        let req = NodeGetVolumeStatsRequest {
            volume_id: id,
            volume_path: path_str(p),
            staging_target_path: String::new(),
        };
        let mut node = env.node.clone();
        async move { node.node_get_volume_stats(req).await }
    };
    let usage = |r: &NodeGetVolumeStatsResponse, unit: volume_usage::Unit| {
        r.usage
            .iter()
            .find(|u| u.unit == unit as i32)
            .cloned()
            .unwrap_or_else(|| panic!("no {unit:?} usage in {r:?}"))
    };
    let r0 = stats(&mut env, v.volume_id.clone(), &t)
        .await
        .unwrap()
        .into_inner();
    let b0 = usage(&r0, volume_usage::Unit::Bytes);
    let i0 = usage(&r0, volume_usage::Unit::Inodes);
    let sv = statvfs(&t);
    assert_eq!(
        b0.total as u64,
        sv.blocks() * sv.fragment_size(),
        "bytes total is the filesystem's size"
    );
    assert_eq!(
        i0.total as u64,
        sv.files(),
        "inode total is the filesystem's"
    );
    let (_, err) = write_pattern(&t.join("eight-mib"), 8 << 20, 2);
    assert!(err.is_none());
    for i in 0..100 {
        std::fs::write(t.join(format!("small-{i}")), b"x").unwrap();
    }
    nix::unistd::sync();
    let r1 = stats(&mut env, v.volume_id.clone(), &t)
        .await
        .unwrap()
        .into_inner();
    let b1 = usage(&r1, volume_usage::Unit::Bytes);
    let i1 = usage(&r1, volume_usage::Unit::Inodes);
    assert!(
        b1.used >= b0.used + (8 << 20) && b1.available <= b0.available - (8 << 20),
        "bytes used/available follow the data: {b0:?} → {b1:?}"
    );
    assert!(
        i1.used >= i0.used + 100,
        "inodes used follow the files: {i0:?} → {i1:?}"
    );
    assert!(
        r1.volume_condition.as_ref().is_some_and(|c| !c.abnormal),
        "healthy: {:?}",
        r1.volume_condition
    );
    teardown(&mut env, &v, &st, &t).await;

    // Three ways to break a staged volume behind the driver's back.
    let abnormal =
        |r: &Result<csi_proto::tonic::Response<NodeGetVolumeStatsResponse>, Status>| match r {
            Ok(r) => r
                .get_ref()
                .volume_condition
                .as_ref()
                .is_some_and(|c| c.abnormal && !c.message.is_empty()),
            Err(_) => false,
        };
    for how in ["mount", "loop", "backing"] {
        let v = env.create(&format!("broken-{how}"), 32 * MIB).await;
        let st = env.stage(&v, &format!("broken-{how}-staging"), snw()).await;
        let dev = loop_of_mount(&st).expect("loop behind the staging mount");
        match how {
            "mount" => nix::mount::umount2(&st, nix::mount::MntFlags::MNT_DETACH).unwrap(),
            // Detaching a mounted loop device only marks it autoclear; drop the mount too
            // so that the device really goes.
            "loop" => {
                assert!(
                    testkit::detach_loop_if_backed_under(&dev.device, env.pool.path()).unwrap()
                );
                nix::mount::umount2(&st, nix::mount::MntFlags::MNT_DETACH).unwrap();
                let name = dev.name.clone();
                tokio::task::block_in_place(|| {
                    testkit::wait_for("loop device to go", WAIT, || {
                        testkit::LoopDevice::by_name(&name).is_none().then_some(())
                    })
                });
            }
            _ => std::fs::remove_file(&dev.backing_file).unwrap(),
        }
        let r = stats(&mut env, v.volume_id.clone(), &st).await;
        // The driver staged the volume there and knows it: the answer is the abnormal
        // condition (the driver contract), which is what makes a CO report the broken volume.
        assert!(
            abnormal(&r),
            "{how} gone: driver contract: NodeGetVolumeStats reports volume_condition abnormal when \
             the backing file, loop device or mount is gone; got {:?}",
            r.map(|r| r.into_inner()).map_err(|s| show(&s))
        );
        if how == "backing" {
            let g = env
                .ctl
                .controller_get_volume(ControllerGetVolumeRequest {
                    volume_id: v.volume_id.clone(),
                })
                .await
                .map(|r| r.into_inner());
            let cond = g
                .as_ref()
                .ok()
                .and_then(|g| g.status.as_ref())
                .and_then(|s| s.volume_condition.as_ref());
            assert!(
                cond.is_some_and(|c| c.abnormal),
                "backing file gone: ControllerGetVolume must report abnormal, got {g:?}"
            );
        }
        // Whatever is left, unstage cleans it up.
        env.unstage(&v.volume_id, &st).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_publish_refuses_writes() {
    if !testkit::require_root("readonly_publish_refuses_writes") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    // Two publishes of one volume on one node need a multi-writer mode (k8s-semantics §5.6 matrix).
    let cap = mount_cap("ext4", Mode::SingleNodeMultiWriter);
    let mut req = create_req("ro", 32 * MIB);
    req.volume_capabilities = vec![cap.clone()];
    let v = env.create_req(req).await;
    let st = env.stage(&v, "ro-staging", cap.clone()).await;
    let rw = env.publish(&v, &st, "rw", cap.clone(), false).await;
    std::fs::write(rw.join("existing"), b"data").unwrap();
    let ro = env.publish(&v, &st, "ro", cap.clone(), true).await;
    for attempt in [
        std::fs::write(ro.join("new"), b"x").err(),
        std::fs::OpenOptions::new()
            .append(true)
            .open(ro.join("existing"))
            .err(),
        std::fs::create_dir(ro.join("dir")).err(),
    ] {
        let e = attempt.expect("a write through a readonly publish must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "EROFS, got {e}");
    }
    assert_eq!(std::fs::read(ro.join("existing")).unwrap(), b"data");
    // The read-only bind does not make the rw one read-only.
    std::fs::write(rw.join("still-writable"), b"y").expect("rw publish stays writable");
    env.unpublish(&v.volume_id, &ro).await;
    env.unpublish(&v.volume_id, &rw).await;
    env.unstage(&v.volume_id, &st).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_mount_group_gives_group_access() {
    if !testkit::require_root("volume_mount_group_gives_group_access") {
        return;
    }
    const GID: u32 = 4321;
    let mut env = Env::new(PoolFs::Dir).await;
    for fs in ["ext4", "xfs"] {
        let mut cap = fs_cap(fs);
        if let Some(volume_capability::AccessType::Mount(m)) = &mut cap.access_type {
            m.volume_mount_group = GID.to_string();
        }
        let v = env.create_fs(&format!("grp-{fs}"), size_for(fs), fs).await;
        let st = env
            .stage(&v, &format!("grp-{fs}-staging"), cap.clone())
            .await;
        let t = env
            .publish(&v, &st, &format!("grp-{fs}"), cap.clone(), false)
            .await;
        let md = std::fs::metadata(&t).unwrap();
        assert_eq!(md.gid(), GID, "{fs}: volume root owned by the mount group");
        // A process that is only in the group (not the owner, not root) can write.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("echo hello > \"$1/by-group\" && mkdir \"$1/dir-by-group\"")
            .arg("sh")
            .arg(&t)
            .uid(54321)
            .gid(GID)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{fs}: a member of group {GID} must be able to write: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = std::fs::metadata(t.join("by-group")).unwrap();
        assert_eq!(f.gid(), GID, "{fs}: new files belong to the mount group");
        // New files by root land in the group too (setgid directory) and are group-writable
        // for the next pod.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o664)
            .open(t.join("by-root"))
            .unwrap();
        assert_eq!(
            std::fs::metadata(t.join("by-root")).unwrap().gid(),
            GID,
            "{fs}: files made by others inherit the group"
        );
        env.unpublish(&v.volume_id, &t).await;
        env.unstage(&v.volume_id, &st).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_modify_reaches_the_loop_device() {
    if !testkit::require_root("direct_io_modify_reaches_the_loop_device") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let v = env.create("dio", 64 * MIB).await;
    let st = env.stage(&v, "dio-staging", snw()).await;
    let dio = |st: &Path| loop_of_mount(st).expect("loop behind staging").direct_io;
    assert!(!dio(&st), "direct I/O off by default");
    let modify = |value: &str| ControllerModifyVolumeRequest {
        volume_id: v.volume_id.clone(),
        mutable_parameters: params(&[("directIO", value)]),
        ..Default::default()
    };
    env.ctl
        .controller_modify_volume(modify("true"))
        .await
        .unwrap_or_else(|s| panic!("modify directIO=true: {}", show(&s)));
    assert!(
        dio(&st),
        "driver contract: directIO applied at once to a staged volume (/sys/block/loopN/loop/dio)"
    );
    // A refused modify (unknown key next to a valid one) changes nothing.
    let mut bad = modify("false");
    bad.mutable_parameters.insert("bogus".into(), "1".into());
    let r = env.ctl.controller_modify_volume(bad).await;
    assert_eq!(r.map(|_| ()).unwrap_err().code(), Code::InvalidArgument);
    assert!(dio(&st), "a refused modify must not apply its valid part");

    env.unstage(&v.volume_id, &st).await;
    let st = env.stage(&v, "dio-staging", snw()).await;
    assert!(
        dio(&st),
        "driver contract: directIO applied at every later stage"
    );
    env.ctl
        .controller_modify_volume(modify("false"))
        .await
        .unwrap_or_else(|s| panic!("modify directIO=false: {}", show(&s)));
    assert!(!dio(&st), "directIO=false applied at once");
    env.unstage(&v.volume_id, &st).await;

    // Set at creation through mutable_parameters.
    let mut req = create_req("dio-born", 64 * MIB);
    req.mutable_parameters = params(&[("directIO", "true")]);
    let v2 = env.create_req(req).await;
    let st2 = env.stage(&v2, "dio-born-staging", snw()).await;
    assert!(
        dio(&st2),
        "mutable_parameters at CreateVolume apply at stage"
    );
    env.unstage(&v2.volume_id, &st2).await;
}

/// Mounting one ext4 image through two loop devices at once corrupts it. A second stage of
/// a staged volume at another path must fail or reuse the same device, never attach again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_never_attached_twice() {
    if !testkit::require_root("a_volume_is_never_attached_twice") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let v = env.create("twice", 32 * MIB).await;
    let s1 = env.stage(&v, "twice-1", snw()).await;
    let s2 = env.driver.mkdir("twice-2");
    let r = env.node.node_stage_volume(stage_req(&v, &s2, snw())).await;
    let images: Vec<_> = env
        .pool
        .loop_devices()
        .into_iter()
        .map(|l| l.backing_file)
        .collect();
    let mut unique = images.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        images.len(),
        unique.len(),
        "two loop devices on one image ({images:?}); second stage answered {:?}",
        r.as_ref().map(|_| ()).map_err(show)
    );
    if r.is_ok() {
        let (a, b) = (mount_at(&s1).unwrap(), mount_at(&s2).unwrap());
        assert_eq!(a.source, b.source, "both stages must be the same device");
        env.unstage(&v.volume_id, &s2).await;
    }
    env.unstage(&v.volume_id, &s1).await;
}

/// Restarting the driver (an upgrade, a crash loop) must never take a pod's volume away:
/// mounts survive the restart, and the new process takes them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_stay_mounted_across_driver_restarts() {
    if !testkit::require_root("volumes_stay_mounted_across_driver_restarts") {
        return;
    }
    let mut env = Env::new(PoolFs::Dir).await;
    let v = env.create("survivor", 32 * MIB).await;
    let st = env.stage(&v, "survivor-staging", snw()).await;
    let t = env.publish(&v, &st, "survivor", snw(), false).await;
    let (_, err) = write_pattern(&t.join("before"), 1 << 20, 31);
    assert!(err.is_none(), "{err:?}");
    // A graceful stop (SIGTERM) first, then a kill: neither may unmount anything.
    env.driver.signal(nix::sys::signal::Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| env.driver.wait_exit(WAIT));
    assert_eq!(status.code(), Some(0), "SIGTERM → exit 0");
    assert!(
        mount_at(&t).is_some() && mount_at(&st).is_some(),
        "a driver stop must leave staged and published volumes mounted"
    );
    let (_, err) = write_pattern(&t.join("while-down"), 1 << 20, 32);
    assert!(
        err.is_none(),
        "the volume stays writable while the driver is down: {err:?}"
    );
    env.restart(&[]).await;
    env.driver.kill();
    assert!(
        mount_at(&t).is_some(),
        "a driver kill leaves the publish mounted"
    );
    env.restart(&[]).await;
    assert!(
        mount_at(&t).is_some(),
        "start-up must not unmount a live publish"
    );
    // The new process knows the volume: idempotent repeats, stats, then the teardown.
    env.node
        .node_stage_volume(stage_req(&v, &st, snw()))
        .await
        .unwrap_or_else(|s| panic!("stage repeat after restart: {}", show(&s)));
    env.node
        .node_publish_volume(publish_req(&v, &st, &t, snw(), false))
        .await
        .unwrap_or_else(|s| panic!("publish repeat after restart: {}", show(&s)));
    let stacked = testkit::mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == t)
        .count();
    assert_eq!(stacked, 1, "repeats after restart must not stack mounts");
    env.node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: path_str(&t),
            staging_target_path: path_str(&st),
        })
        .await
        .unwrap_or_else(|s| panic!("stats after restart: {}", show(&s)));
    assert!(has_pattern(&t.join("before"), 1 << 20, 31));
    assert!(has_pattern(&t.join("while-down"), 1 << 20, 32));
    env.unpublish(&v.volume_id, &t).await;
    env.unstage(&v.volume_id, &st).await;
    assert!(mount_at(&st).is_none() && !t.exists());
}

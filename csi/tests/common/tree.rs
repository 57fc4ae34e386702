//! Checks shared by the tree backends (`btrfs`, `dir`): volumes that are directories of
//! the pool's filesystem, bind-mounted by the node.

use std::path::{Path, PathBuf};

use super::*;

/// Creates, stages and publishes a tree volume of `bytes`; returns it with its staging
/// and target paths.
pub async fn published(env: &mut Env, name: &str, bytes: i64) -> (Volume, PathBuf, PathBuf) {
    let v = env.create_req(tree_req(name, bytes)).await;
    let st = env.stage(&v, &format!("{name}-staging"), tree_cap()).await;
    let t = env.publish(&v, &st, name, tree_cap(), false).await;
    (v, st, t)
}

pub async fn stats(env: &mut Env, v: &Volume, path: &Path) -> NodeGetVolumeStatsResponse {
    // Quota accounting (btrfs qgroups) is brought up to date at a commit.
    let f = std::fs::File::open(path).unwrap();
    nix::unistd::syncfs(&f).unwrap();
    env.node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: path_str(path),
            staging_target_path: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeGetVolumeStats: {}", show(&s)))
        .into_inner()
}

/// (total, used) bytes of a stats answer.
pub fn bytes(r: &NodeGetVolumeStatsResponse) -> (i64, i64) {
    let u = r
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .expect("bytes usage");
    (u.total, u.used)
}

/// Writing past the volume's size through the published path fails with EDQUOT or
/// ENOSPC, after at most the size (plus `slack`) went in.
pub fn assert_limit_enforced(file: &Path, size: i64, slack: u64) {
    let (written, err) = write_pattern(file, 2 * size as u64, 7);
    let err = err.unwrap_or_else(|| panic!("wrote {written} bytes into {size} without error"));
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT) | Some(libc::ENOSPC)),
        "writing past the size must give EDQUOT or ENOSPC, got {err}"
    );
    assert!(
        written <= size as u64 + slack,
        "wrote {written} bytes into a {size}-byte volume"
    );
    std::fs::remove_file(file).unwrap();
}

/// ControllerExpandVolume on a published tree volume raises its limit at once, with no
/// node step; a write that did not fit before fits now.
pub async fn assert_expands_while_published(env: &mut Env, v: &Volume, target: &Path) {
    let size = v.capacity_bytes;
    let r = env
        .ctl
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 2 * size,
                limit_bytes: 0,
            }),
            volume_capability: Some(tree_cap()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("ControllerExpandVolume: {}", show(&s)))
        .into_inner();
    assert_eq!(r.capacity_bytes, 2 * size);
    assert!(
        !r.node_expansion_required,
        "a raised quota needs no node step"
    );
    let more = target.join("grown");
    let (written, err) = write_pattern(&more, size as u64 * 3 / 2, 3);
    assert!(
        err.is_none(),
        "after expansion {written} bytes then {err:?}"
    );
    assert!(has_pattern(&more, size as u64 * 3 / 2, 3));
    assert_eq!(bytes(&stats(env, v, target).await).0, 2 * size, "new total");
    std::fs::remove_file(&more).unwrap();
}

/// A snapshot keeps the content of its moment; a restore and a clone come back with the
/// content of the snapshot and of the live volume, writable, and independent. `capacity`
/// is the volume's size now (it may have grown since `v` was returned).
pub async fn assert_snapshot_restore_clone(
    env: &mut Env,
    v: &Volume,
    target: &Path,
    capacity: i64,
) {
    let size = 4 << 20;
    assert!(write_pattern(&target.join("a"), size, 1).1.is_none());
    std::fs::create_dir(target.join("sub")).unwrap();
    std::os::unix::fs::symlink("../a", target.join("sub/link")).unwrap();
    let snap = env.snapshot("snap-1", &v.volume_id).await;
    assert!(snap.ready_to_use);
    assert!(write_pattern(&target.join("a"), size, 2).1.is_none());

    let mut req = tree_req("restored", capacity);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = env.create_req(req).await;
    let mut req = tree_req("cloned", capacity);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: v.volume_id.clone(),
            },
        )),
    });
    let cloned = env.create_req(req).await;
    for (vol, seed) in [(&restored, 1), (&cloned, 2)] {
        let name = format!("check-{seed}");
        let st = env.stage(vol, &format!("{name}-staging"), tree_cap()).await;
        let t = env.publish(vol, &st, &name, tree_cap(), false).await;
        assert!(has_pattern(&t.join("a"), size, seed), "content of {name}");
        assert_eq!(
            std::fs::read_link(t.join("sub/link")).unwrap(),
            Path::new("../a"),
            "symlink copied as a symlink"
        );
        // Writable and independent of its source.
        assert!(write_pattern(&t.join("a"), size, 9).1.is_none());
        env.unpublish(&vol.volume_id, &t).await;
        env.unstage(&vol.volume_id, &st).await;
        env.delete(&vol.volume_id).await;
    }
    assert!(has_pattern(&target.join("a"), size, 2), "source untouched");
    std::fs::remove_file(target.join("a")).unwrap();
    std::fs::remove_dir_all(target.join("sub")).unwrap();
    env.ctl
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("DeleteSnapshot: {}", show(&s)));
}

/// Block access to a tree volume is refused with INVALID_ARGUMENT, at creation and at
/// stage, and nothing is left behind.
pub async fn assert_block_refused(env: &mut Env, v: &Volume) {
    let before = env.list_volumes().await.len();
    let mut req = tree_req("blocky", 16 * MIB);
    req.volume_capabilities = vec![block_cap(Mode::SingleNodeWriter)];
    let err = env.ctl.create_volume(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", show(&err));
    assert!(err.message().contains("Block"), "{}", show(&err));
    let staging = env.driver.mkdir("block-staging");
    let err = env
        .node
        .node_stage_volume(stage_req(v, &staging, block_cap(Mode::SingleNodeWriter)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", show(&err));
    assert!(mount_at(&staging).is_none(), "nothing mounted");
    assert_eq!(env.list_volumes().await.len(), before, "nothing created");
}

/// Names of the entries of `dir` (empty when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Starts the binary with one `--pool` and expects it to refuse: exit code non-zero and
/// `expect` in its stderr.
pub fn assert_pool_refused(pool_arg: &str, expect: &str) {
    let dir = testkit::unique_temp_dir("strata-refused");
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--endpoint")
        .arg(format!("unix://{}/csi.sock", dir.display()))
        .args(["--node-id", NODE, "--state-dir"])
        .arg(dir.join("state"))
        .arg("--pool")
        .arg(pool_arg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{pool_arg}: started");
    assert!(
        stderr.contains(expect),
        "{pool_arg}: stderr lacks {expect:?}: {stderr}"
    );
}

//! Crash safety of `strata-csi`: for every failpoint the driver declares
//! (`strata_csi::failpoint::ALL`, so a new one is covered or this test fails), start the
//! driver with it armed, issue the RPC that reaches it (the process aborts mid-way, as a
//! `kill -9` would leave it), restart on the same state dir, retry the same RPC and expect
//! success. Then check that nothing leaked and nothing was lost: pool files, loop devices,
//! mounts and ListVolumes/ListSnapshots match what should exist, data written before is
//! still there, and after deleting everything the pool and the loop/mount tables are clean.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Scenarios run concurrently, each with its own pool, driver and temp dirs.
const PARALLEL: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_failpoint_recovers_without_leaks() {
    if !testkit::require_root("every_failpoint_recovers_without_leaks") {
        return;
    }
    let names: Vec<&'static str> = strata_csi::failpoint::ALL.to_vec();
    assert!(!names.is_empty(), "the driver declares no failpoint");
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut set = tokio::task::JoinSet::new();
    for fp in names.iter().copied() {
        let gate = gate.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            (fp, tokio::spawn(scenario(fp)).await)
        });
    }
    let mut failures = Vec::new();
    let mut passed = 0;
    while let Some(joined) = set.join_next().await {
        let (fp, res) = joined.expect("runner task");
        match res {
            Ok(()) => passed += 1,
            Err(e) => {
                let msg = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_else(|| "cancelled".into());
                failures.push(format!("{fp}: {msg}"));
            }
        }
    }
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} failpoints broke crash safety:\n  - {}",
        failures.len(),
        names.len(),
        failures.join("\n  - ")
    );
    eprintln!("every_failpoint_recovers_without_leaks: {passed} failpoints recovered");
}

/// What should exist after the retried RPC, for the leak checks.
#[derive(Default)]
struct Expect {
    volumes: Vec<String>,
    snapshots: Vec<String>,
    /// Staging paths that must be mounted (one loop device each).
    staged: Vec<PathBuf>,
    /// Target paths that must be mounted.
    published: Vec<PathBuf>,
}

/// The state a scenario builds before arming the failpoint.
struct Prep {
    vol: Volume,
    other: Option<Volume>,
    staging: PathBuf,
    target: PathBuf,
    snapshot: Option<Snapshot>,
}

const DATA: u64 = 2 << 20;

async fn scenario(fp: &'static str) {
    let (rpc, _step) = fp.split_once(':').expect("failpoints are named rpc:step");
    let mut env = Env::new(PoolFs::Ext4(768 << 20)).await;
    let mut prep = Prep {
        vol: env.create("crash-vol", 64 * MIB).await,
        other: None,
        staging: env.driver.mkdir("staging"),
        target: env.target_path("pod"),
        snapshot: None,
    };
    // Build the state the RPC needs, with data where it can be checked afterwards.
    match rpc {
        "create_volume" => {
            env.delete(&prep.vol.volume_id.clone()).await;
        }
        "delete_volume" | "node_stage" => {}
        "controller_expand" | "create_snapshot" => {
            fill(&mut env, &prep.vol.clone(), "before", 1).await;
        }
        "delete_snapshot" => {
            prep.snapshot = Some(env.snapshot("crash-snap", &prep.vol.volume_id).await);
        }
        "group_snapshot" => {
            fill(&mut env, &prep.vol.clone(), "before", 1).await;
            let other = env.create("crash-other", 64 * MIB).await;
            // The first member stays staged, so that the group cut must freeze and thaw it.
            env.node
                .node_stage_volume(stage_req(&other, &prep.staging, snw()))
                .await
                .expect("stage the second member");
            prep.other = Some(other);
        }
        "node_unstage" | "node_publish" => {
            stage_and_write(&mut env, &prep).await;
        }
        "node_unpublish" => {
            stage_and_write(&mut env, &prep).await;
            env.node
                .node_publish_volume(publish_req(
                    &prep.vol,
                    &prep.staging,
                    &prep.target,
                    snw(),
                    false,
                ))
                .await
                .expect("publish before the crash");
        }
        other => panic!("no crash scenario for failpoint rpc {other:?}: add one to crash.rs"),
    }

    // Arm the failpoint and issue the RPC: the driver must die in it.
    let log_mark = env.driver.log_text().len();
    env.restart(&[fp]).await;
    if rpc == "node_unpublish" {
        // Killed right after an acknowledged publish, whose database commit may not have
        // happened yet: start-up must know the publication, from its record.
        assert_publication_known(&env, log_mark, fp);
    }
    let first = call(&mut env, rpc, &prep).await;
    assert!(
        first.is_err(),
        "the RPC returned {first:?} with {fp} armed: the failpoint was not reached"
    );
    let status = tokio::task::block_in_place(|| env.driver.wait_exit(WAIT));
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the driver must die at {fp} (abort), got {status}"
    );
    assert!(
        env.driver.log_text().contains(fp),
        "the abort must be the failpoint's: {fp} not named in the driver's log"
    );

    // Restart clean. Start-up reconciliation alone, before any retry (the CO may never
    // retry), must leave nothing stray: every pool file is a listed volume or snapshot, and
    // every loop device of the pool backs a mount the driver made.
    let log_mark = env.driver.log_text().len();
    env.restart(&[]).await;
    if fp == "node_publish:after_commit" {
        assert_publication_known(&env, log_mark, fp);
    }
    let listed = env.list_volumes().await.len() + env.list_snapshots().await.len();
    let files = env.pool.files();
    assert_eq!(
        files.len(),
        listed,
        "{fp}: after restart, before the retry: pool files vs ListVolumes+ListSnapshots \
         (ARCHITECTURE.md driver durability: start-up reconciles records against pool files): {files:?}"
    );
    // An unmounted autoclear device is released by the kernel a moment after the umount:
    // give it that moment (bounded) before calling it a leak.
    let orphans = || {
        let mounts = testkit::mounts_under(env.driver.dir());
        env.pool
            .loop_devices()
            .into_iter()
            .filter(|l| !mounts.iter().any(|m| Path::new(&m.source) == l.device))
            .collect::<Vec<_>>()
    };
    let settled = tokio::task::block_in_place(|| settle(|| orphans().is_empty()));
    assert!(
        settled,
        "{fp}: after restart, before the retry: loop devices that back no mount \
         (ARCHITECTURE.md driver durability: start-up reconciles loop devices): {:?}",
        orphans()
    );

    // Retry the same RPC.
    let retry = call(&mut env, rpc, &prep).await;
    if let Err(e) = &retry {
        panic!("retrying {rpc} after a crash at {fp} failed: {e}");
    }

    let expect = verify_after_retry(&mut env, rpc, &mut prep).await;
    check_accounted(&env, &expect, fp);
    let live_volumes = env.list_volumes().await;
    let mut got: Vec<_> = live_volumes
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    got.sort();
    let mut want = expect.volumes.clone();
    want.sort();
    assert_eq!(got, want, "{fp}: ListVolumes after recovery");
    let mut got: Vec<_> = env
        .list_snapshots()
        .await
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect();
    got.sort();
    let mut want = expect.snapshots.clone();
    want.sort();
    assert_eq!(got, want, "{fp}: ListSnapshots after recovery");

    // Tear everything down through the driver and check the machine is clean.
    for t in &expect.published {
        env.unpublish(&prep.vol.volume_id, t).await;
    }
    for s in &expect.staged {
        for v in [Some(&prep.vol), prep.other.as_ref()].into_iter().flatten() {
            env.unstage(&v.volume_id, s).await;
        }
    }
    let groups: Vec<String> = {
        let mut g: Vec<_> = env
            .list_snapshots()
            .await
            .into_iter()
            .filter(|s| !s.group_snapshot_id.is_empty())
            .map(|s| s.group_snapshot_id)
            .collect();
        g.sort();
        g.dedup();
        g
    };
    for gid in groups {
        let ids: Vec<_> = env
            .list_snapshots()
            .await
            .into_iter()
            .filter(|s| s.group_snapshot_id == gid)
            .map(|s| s.snapshot_id)
            .collect();
        env.group
            .delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: gid.clone(),
                snapshot_ids: ids,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{fp}: DeleteVolumeGroupSnapshot: {}", show(&s)));
    }
    for s in env.list_snapshots().await {
        env.ctl
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: s.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{fp}: DeleteSnapshot: {}", show(&e)));
    }
    for v in env.list_volumes().await {
        if let Some(v) = v.volume {
            env.delete(&v.volume_id).await;
        }
    }
    assert!(
        env.pool.files().is_empty(),
        "{fp}: pool not empty after deleting everything: {:?}",
        env.pool.files()
    );
    assert!(
        tokio::task::block_in_place(|| settle(|| env.pool.loop_devices().is_empty())),
        "{fp}: loop devices left: {:?}",
        env.pool.loop_devices()
    );
    let mounts = testkit::mounts_under(env.driver.dir());
    assert!(mounts.is_empty(), "{fp}: mounts left: {mounts:?}");
}

/// Stages the volume at the prepared staging path and writes the reference data.
async fn stage_and_write(env: &mut Env, prep: &Prep) {
    env.node
        .node_stage_volume(stage_req(&prep.vol, &prep.staging, snw()))
        .await
        .expect("stage before the crash");
    let (_, err) = write_pattern(&prep.staging.join("before"), DATA, 1);
    assert!(err.is_none(), "write before the crash: {err:?}");
}

/// Stages `vol` somewhere temporary, writes `file` with `seed`, unstages.
async fn fill(env: &mut Env, vol: &Volume, file: &str, seed: u8) {
    let st = env.stage(vol, &format!("fill-{file}-{seed}"), snw()).await;
    let (_, err) = write_pattern(&st.join(file), DATA, seed);
    assert!(err.is_none(), "fill {file}: {err:?}");
    env.unstage(&vol.volume_id, &st).await;
}

/// True when `file` on `vol` holds the pattern (stages it at a scratch path and back).
async fn holds(env: &mut Env, vol: &Volume, file: &str, seed: u8) -> bool {
    let st = env.stage(vol, &format!("check-{file}-{seed}"), snw()).await;
    let ok = has_pattern(&st.join(file), DATA, seed);
    env.unstage(&vol.volume_id, &st).await;
    ok
}

/// The driver started after `log_mark` (a length of its log) took the acknowledged
/// publication for a recorded one, not for a stray mount.
fn assert_publication_known(env: &Env, log_mark: usize, fp: &str) {
    let log = env.driver.log_text();
    let since = log.get(log_mark..).unwrap_or(&log);
    assert!(
        !since.contains("without a publish record"),
        "{fp}: an acknowledged publish was not known after the restart:\n{since}"
    );
}

/// The RPC a failpoint lives in, with fixed arguments so a retry is the same call.
async fn call(env: &mut Env, rpc: &str, prep: &Prep) -> Result<(), String> {
    let vol = &prep.vol;
    let r = match rpc {
        "create_volume" => env
            .ctl
            .create_volume(create_req("crash-vol", 64 * MIB))
            .await
            .map(drop),
        "delete_volume" => env
            .ctl
            .delete_volume(DeleteVolumeRequest {
                volume_id: vol.volume_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "controller_expand" => env
            .ctl
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 128 * MIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(snw()),
                ..Default::default()
            })
            .await
            .map(drop),
        "create_snapshot" => env
            .ctl
            .create_snapshot(CreateSnapshotRequest {
                name: "crash-snap".into(),
                source_volume_id: vol.volume_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "delete_snapshot" => env
            .ctl
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: prep.snapshot.as_ref().unwrap().snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "group_snapshot" => env
            .group
            .create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
                name: "crash-group".into(),
                source_volume_ids: vec![
                    vol.volume_id.clone(),
                    prep.other.as_ref().unwrap().volume_id.clone(),
                ],
                ..Default::default()
            })
            .await
            .map(drop),
        "node_stage" => env
            .node
            .node_stage_volume(stage_req(vol, &prep.staging, snw()))
            .await
            .map(drop),
        "node_unstage" => env
            .node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: vol.volume_id.clone(),
                staging_target_path: path_str(&prep.staging),
            })
            .await
            .map(drop),
        "node_publish" => env
            .node
            .node_publish_volume(publish_req(vol, &prep.staging, &prep.target, snw(), false))
            .await
            .map(drop),
        "node_unpublish" => env
            .node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                target_path: path_str(&prep.target),
            })
            .await
            .map(drop),
        other => panic!("no RPC for failpoint rpc {other:?}"),
    };
    r.map_err(|s| show(&s))
}

/// Checks the retried RPC's effect and the data, and says what must exist now.
async fn verify_after_retry(env: &mut Env, rpc: &str, prep: &mut Prep) -> Expect {
    let vol = prep.vol.clone();
    let mut e = Expect::default();
    match rpc {
        "create_volume" => {
            let v = env.create("crash-vol", 64 * MIB).await;
            // The volume is usable: stage, write, restage, read.
            fill(env, &v, "after", 2).await;
            assert!(
                holds(env, &v, "after", 2).await,
                "data on the recovered volume"
            );
            prep.vol = v.clone();
            e.volumes.push(v.volume_id);
        }
        "delete_volume" => {}
        "controller_expand" => {
            let g = env
                .ctl
                .controller_get_volume(ControllerGetVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                })
                .await
                .expect("ControllerGetVolume")
                .into_inner();
            let cap = g.volume.map(|v| v.capacity_bytes).unwrap_or(0);
            assert!(cap >= 128 * MIB, "capacity after the retried expand: {cap}");
            let st = env.stage(&vol, "grown", snw()).await;
            env.node
                .node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    volume_path: path_str(&st),
                    staging_target_path: path_str(&st),
                    capacity_range: Some(CapacityRange {
                        required_bytes: 128 * MIB,
                        limit_bytes: 0,
                    }),
                    volume_capability: Some(snw()),
                    ..Default::default()
                })
                .await
                .expect("NodeExpandVolume");
            assert!(fs_total_bytes(&st) > 96 << 20, "filesystem grown");
            assert!(
                has_pattern(&st.join("before"), DATA, 1),
                "data kept across the expand"
            );
            env.unstage(&vol.volume_id, &st).await;
            e.volumes.push(vol.volume_id);
        }
        "create_snapshot" => {
            let snap = env.snapshot("crash-snap", &vol.volume_id).await;
            assert!(snap.ready_to_use, "snapshot ready after the retry");
            restore_holds(env, &snap.snapshot_id, "before", 1).await;
            e.volumes.push(vol.volume_id);
            e.snapshots.push(snap.snapshot_id);
        }
        "delete_snapshot" => {
            e.volumes.push(vol.volume_id);
        }
        "group_snapshot" => {
            let other = prep.other.clone().unwrap();
            let g = env
                .group
                .create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
                    name: "crash-group".into(),
                    source_volume_ids: vec![vol.volume_id.clone(), other.volume_id.clone()],
                    ..Default::default()
                })
                .await
                .expect("group snapshot repeat")
                .into_inner()
                .group_snapshot
                .expect("group");
            assert_eq!(g.snapshots.len(), 2, "{g:?}");
            // The staged member must have been thawed: a write must finish.
            assert_not_frozen(&prep.staging);
            let of_vol = g
                .snapshots
                .iter()
                .find(|s| s.source_volume_id == vol.volume_id)
                .expect("member snapshot of the first volume");
            restore_holds(env, &of_vol.snapshot_id.clone(), "before", 1).await;
            e.volumes.extend([vol.volume_id, other.volume_id]);
            e.snapshots
                .extend(g.snapshots.iter().map(|s| s.snapshot_id.clone()));
            e.staged.push(prep.staging.clone());
        }
        "node_stage" => {
            assert!(mount_at(&prep.staging).is_some(), "staged after the retry");
            let (_, err) = write_pattern(&prep.staging.join("after"), DATA, 2);
            assert!(err.is_none(), "{err:?}");
            env.unstage(&vol.volume_id, &prep.staging).await;
            env.node
                .node_stage_volume(stage_req(&vol, &prep.staging, snw()))
                .await
                .expect("stage again");
            assert!(
                has_pattern(&prep.staging.join("after"), DATA, 2),
                "data written after a recovered stage survives a restage (no second mkfs)"
            );
            e.volumes.push(vol.volume_id);
            e.staged.push(prep.staging.clone());
        }
        "node_unstage" => {
            assert!(
                mount_at(&prep.staging).is_none(),
                "unstaged after the retry"
            );
            assert!(
                holds(env, &vol, "before", 1).await,
                "data kept across the unstage"
            );
            e.volumes.push(vol.volume_id);
        }
        "node_publish" => {
            assert!(
                has_pattern(&prep.target.join("before"), DATA, 1),
                "data visible through the recovered publish"
            );
            e.volumes.push(vol.volume_id);
            e.staged.push(prep.staging.clone());
            e.published.push(prep.target.clone());
        }
        "node_unpublish" => {
            assert!(
                !prep.target.exists(),
                "target removed after the retried unpublish"
            );
            assert!(
                has_pattern(&prep.staging.join("before"), DATA, 1),
                "data still on the staged volume"
            );
            e.volumes.push(vol.volume_id);
            e.staged.push(prep.staging.clone());
        }
        other => panic!("no checks for failpoint rpc {other:?}"),
    }
    e
}

/// Restores `snapshot_id` into a scratch volume and checks `file` on it, then deletes it.
async fn restore_holds(env: &mut Env, snapshot_id: &str, file: &str, seed: u8) {
    let mut req = create_req(&format!("restore-{snapshot_id}"), 64 * MIB);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snapshot_id.into(),
            },
        )),
    });
    let r = env.create_req(req).await;
    assert!(
        holds(env, &r, file, seed).await,
        "snapshot {snapshot_id} holds the data written before it"
    );
    env.delete(&r.volume_id).await;
}

/// A write on `dir` must complete: a filesystem left frozen by a crash blocks writers forever.
fn assert_not_frozen(dir: &Path) {
    let file = dir.join("thaw-check");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = write_pattern(&file, 4096, 9);
        let _ = tx.send(r.1.map(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(None) => {}
        Ok(Some(e)) => panic!("write on the staged member failed: {e}"),
        Err(_) => {
            // Thaw it so that cleanup can unmount, then report.
            let _ = std::process::Command::new("fsfreeze")
                .arg("-u")
                .arg(dir)
                .status();
            panic!("the staged member was left frozen after the crash and retry");
        }
    }
}

/// Loop devices and mounts are exactly those that `expect` accounts for, and the pool holds
/// one file per volume and snapshot.
fn check_accounted(env: &Env, expect: &Expect, fp: &str) {
    tokio::task::block_in_place(|| {
        settle(|| env.pool.loop_devices().len() == expect.staged.len());
    });
    let loops = env.pool.loop_devices();
    assert_eq!(
        loops.len(),
        expect.staged.len(),
        "{fp}: loop devices not accounted for: {loops:?}, staged {:?}",
        expect.staged
    );
    let mut mounts: Vec<_> = testkit::mounts_under(env.driver.dir())
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    mounts.sort();
    let mut want: Vec<_> = expect
        .staged
        .iter()
        .chain(expect.published.iter())
        .cloned()
        .collect();
    want.sort();
    assert_eq!(mounts, want, "{fp}: mounts not accounted for");
    let files = env.pool.files();
    assert_eq!(
        files.len(),
        expect.volumes.len() + expect.snapshots.len(),
        "{fp}: stray or missing files in the pool (want one per volume and snapshot): {files:?}"
    );
}

/// A node reboot as the driver sees it: it dies, and meanwhile its mounts and loop devices
/// vanish and an image is lost. At start-up it must report what is broken and let the CO
/// stage and publish the healthy volume again, with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_reboot_like_damage() {
    if !testkit::require_root("restart_after_reboot_like_damage") {
        return;
    }
    let mut env = Env::new(PoolFs::Ext4(512 << 20)).await;
    let a = env.create("reboot-a", 64 * MIB).await;
    let b = env.create("reboot-b", 64 * MIB).await;
    let st = env.stage(&a, "reboot-staging", snw()).await;
    let t = env.publish(&a, &st, "reboot-pod", snw(), false).await;
    let (_, err) = write_pattern(&t.join("data"), DATA, 4);
    assert!(err.is_none(), "{err:?}");
    // b's image: staged once to learn it, then unstaged.
    let bst = env.stage(&b, "reboot-b-staging", snw()).await;
    let b_image = loop_of_mount(&bst).expect("b's loop device").backing_file;
    env.unstage(&b.volume_id, &bst).await;

    env.driver.kill();
    let dev = loop_of_mount(&st).expect("a's loop device");
    for m in [&t, &st] {
        nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let _ = testkit::detach_loop_if_backed_under(&dev.device, env.pool.path());
    tokio::task::block_in_place(|| {
        testkit::wait_for("a's loop device to go", WAIT, || {
            env.pool.loop_devices().is_empty().then_some(())
        })
    });
    std::fs::remove_file(&b_image).unwrap();

    env.restart(&[]).await;
    let g = env
        .ctl
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: b.volume_id.clone(),
        })
        .await
        .map(|r| r.into_inner());
    let cond = g
        .as_ref()
        .ok()
        .and_then(|g| g.status.as_ref())
        .and_then(|s| s.volume_condition.clone());
    assert!(
        cond.as_ref().is_some_and(|c| c.abnormal),
        "ARCHITECTURE.md driver durability: a volume whose image vanished is reported abnormal after restart: {g:?}"
    );
    // The CO stages and publishes a again, as the kubelet does after a reboot.
    env.node
        .node_stage_volume(stage_req(&a, &st, snw()))
        .await
        .unwrap_or_else(|s| panic!("re-stage after reboot: {}", show(&s)));
    env.node
        .node_publish_volume(publish_req(&a, &st, &t, snw(), false))
        .await
        .unwrap_or_else(|s| panic!("re-publish after reboot: {}", show(&s)));
    assert!(
        has_pattern(&t.join("data"), DATA, 4),
        "data back after the reboot"
    );
    assert_eq!(env.pool.loop_devices().len(), 1, "one loop device for a");
    env.unpublish(&a.volume_id, &t).await;
    env.unstage(&a.volume_id, &st).await;
    env.delete(&a.volume_id).await;
    env.delete(&b.volume_id).await;
    assert!(env.pool.files().is_empty(), "{:?}", env.pool.files());
    assert!(env.list_volumes().await.is_empty());
    assert!(env.pool.loop_devices().is_empty());
    assert!(testkit::mounts_under(env.driver.dir()).is_empty());
}

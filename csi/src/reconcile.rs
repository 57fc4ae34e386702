//! Start-up reconciliation: compares the records with the pool files, the loop devices
//! (/sys/block/loop*/loop/backing_file) and the mount table, finishes or rolls back
//! operations a crash interrupted, and reports at warn every difference it leaves alone.
//! It never attaches or mounts anything by itself.

use std::collections::{HashMap, HashSet};

use crate::backend::{DataKind, DataRef};
use crate::driver::Driver;
use crate::error::Result;
use crate::state::{Op, Phase, StagePhase, VolumeBrief};
use crate::sys;

/// What reconciliation did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub rolled_back: Vec<String>,
    pub finished: Vec<String>,
    pub differences: Vec<String>,
}

impl Report {
    fn warn(&mut self, msg: String) {
        tracing::warn!(difference = %msg, "reconcile");
        self.differences.push(msg);
    }
}

/// All of reconciliation, before the driver serves: interrupted operations, stages and
/// publications, then what the pools hold against the records (strays, and each ready
/// volume against its data). The volumes are read once (briefs, no record decoded) and
/// each pool listed once: start-up time grows with the number of volumes.
pub fn run(d: &Driver) -> Result<Report> {
    let volumes = d.store.volume_briefs()?;
    let mut r = before_serving(d, &volumes)?;
    let listed = list_pools(d)?;
    strays(d, &volumes, &listed, &mut r)?;
    ready_volumes(d, &volumes, &listed, &mut r)?;
    if !r.rolled_back.is_empty() || !r.finished.is_empty() {
        tracing::info!(rolled_back = ?r.rolled_back, finished = ?r.finished, "reconciled state after restart");
    }
    Ok(r)
}

/// The names of every pool's volumes and snapshots, listed once (after the roll-backs).
struct Listed {
    volumes: HashMap<String, HashSet<String>>,
    snapshots: HashMap<String, HashSet<String>>,
}

fn list_pools(d: &Driver) -> Result<Listed> {
    let mut l = Listed {
        volumes: HashMap::new(),
        snapshots: HashMap::new(),
    };
    for pool in d.pools.iter() {
        let name = pool.pool().to_string();
        l.volumes.insert(
            name.clone(),
            pool.list(DataKind::Volume)?.into_iter().collect(),
        );
        l.snapshots
            .insert(name, pool.list(DataKind::Snapshot)?.into_iter().collect());
    }
    Ok(l)
}

/// Checks every ready volume against its data: reports one whose data is gone (from the
/// pool's listing, not a lookup per volume) and records an expansion a crash left
/// unrecorded (a size read per volume only where the pool keeps sizes of its own). It
/// runs before the driver serves: run after, it held volume locks that made the CO's
/// retries fail with ABORTED.
fn ready_volumes(
    d: &Driver,
    volumes: &[VolumeBrief],
    listed: &Listed,
    r: &mut Report,
) -> Result<()> {
    for v in volumes {
        if v.phase != Phase::Ready {
            continue;
        }
        // An unconfigured pool was reported before serving.
        let (Some(pool), Some(present)) = (d.pools.get(&v.pool), listed.volumes.get(&v.pool))
        else {
            continue;
        };
        let img = DataRef::volume(&v.data);
        if !present.contains(&v.data) {
            r.warn(format!(
                "volume {} has no image {}",
                v.id,
                pool.path(img).display()
            ));
            continue;
        }
        if !pool.keeps_sizes() {
            continue;
        }
        match pool.size(img)? {
            None => r.warn(format!(
                "volume {} has no image {}",
                v.id,
                pool.path(img).display()
            )),
            Some(size) if size > v.capacity => {
                // ControllerExpandVolume grew the data but crashed before recording.
                let Some(mut v2) = d.store.volume(&v.id)? else {
                    continue;
                };
                v2.capacity = size;
                d.store.write(vec![Op::PutVolume(v2)])?;
                r.finished
                    .push(format!("volume {} expansion to {size}", v.id));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Interrupted operations finished or rolled back, stages and publications checked
/// against loop devices and mounts.
fn before_serving(d: &Driver, volumes: &[VolumeBrief]) -> Result<Report> {
    let mut r = Report::default();

    // A crash during a group snapshot can leave filesystems frozen: thaw every staged
    // mount (FITHAW on a thawed filesystem is a no-op).
    for st in d.store.all_stages()? {
        if !st.block
            && st.phase == StagePhase::Staged
            && sys::mount::stat(&st.staging_path).is_ok_and(|s| s.mount_root)
        {
            let _ = sys::fsfreeze::thaw(&st.staging_path);
        }
    }

    // Groups first: their member snapshots follow them.
    for g in d.store.all_groups()? {
        if g.phase == Phase::Ready {
            continue;
        }
        let mut ops = Vec::new();
        for id in &g.snapshot_ids {
            if let Some(s) = d.store.snapshot(id)? {
                d.pool(&s.pool)?.remove(DataRef::snapshot(&s.data))?;
                ops.push(Op::DelSnapshot(s.id));
            }
        }
        ops.push(Op::DelGroup(g.id.clone()));
        d.store.write(ops)?;
        r.rolled_back
            .push(format!("group snapshot {} ({:?})", g.id, g.phase));
    }

    for s in d.store.all_snapshots()? {
        let Some(pool) = d.pools.get(&s.pool) else {
            r.warn(format!(
                "snapshot {} is in pool {}, which is not configured",
                s.id, s.pool
            ));
            continue;
        };
        let img = DataRef::snapshot(&s.data);
        match s.phase {
            Phase::Creating | Phase::Deleting => {
                pool.remove(img)?;
                d.store.write(vec![Op::DelSnapshot(s.id.clone())])?;
                r.rolled_back
                    .push(format!("snapshot {} ({:?})", s.id, s.phase));
            }
            Phase::Ready => {
                if pool.size(img)?.is_none() {
                    r.warn(format!(
                        "snapshot {} has no image {}",
                        s.id,
                        pool.path(img).display()
                    ));
                }
            }
        }
    }

    for v in volumes.iter() {
        let Some(pool) = d.pools.get(&v.pool) else {
            r.warn(format!(
                "volume {} is in pool {}, which is not configured",
                v.id, v.pool
            ));
            continue;
        };
        let img = DataRef::volume(&v.data);
        match v.phase {
            Phase::Creating => {
                // The CO got no answer and will retry CreateVolume: roll back.
                pool.remove(img)?;
                d.store.write(vec![Op::DelVolume(v.id.clone())])?;
                r.rolled_back.push(format!("volume {} (Creating)", v.id));
            }
            Phase::Deleting => {
                pool.remove(img)?;
                d.store.write(vec![
                    Op::DelVolume(v.id.clone()),
                    Op::DelStage(v.id.clone()),
                ])?;
                r.finished.push(format!("volume {} (Deleting)", v.id));
            }
            // Checked against their data by `ready_volumes`.
            Phase::Ready => {}
        }
    }

    let loops = sys::loopdev::list().map_err(crate::error::Error::io(
        "listing loop devices",
        "/sys/block",
    ))?;
    let mounts = sys::mountinfo::read()
        .map_err(crate::error::Error::io("reading", "/proc/self/mountinfo"))?;

    for st in d.store.all_stages()? {
        let Some(v) = d.store.volume(&st.volume_id)? else {
            d.store.write(vec![Op::DelStage(st.volume_id.clone())])?;
            r.rolled_back
                .push(format!("stage of vanished volume {}", st.volume_id));
            continue;
        };
        let Some(pool) = d.pools.get(&v.pool) else {
            continue;
        };
        let image = pool.path(DataRef::volume(&v.data));
        if pool.layout() == crate::backend::Layout::Tree {
            if st.phase == StagePhase::Staged && crate::driver::bind_of(&st.staging_path, &image) {
                continue;
            }
            if !d.store.publishes_of(&v.id)?.is_empty() {
                r.warn(format!(
                    "volume {} is published but its stage at {} lost its bind mount",
                    v.id,
                    st.staging_path.display()
                ));
                continue;
            }
            d.teardown_stage(&v, &st)?;
            r.rolled_back.push(format!(
                "stage of {} at {} ({:?})",
                v.id,
                st.staging_path.display(),
                st.phase
            ));
            continue;
        }
        let devs: Vec<u32> = loops
            .iter()
            .filter(|b| !b.deleted && b.file == image)
            .map(|b| b.number)
            .collect();
        let mounted = mounts.iter().any(|m| {
            m.mount_point == st.staging_path
                && devs.iter().any(|n| m.source == format!("/dev/loop{n}"))
        });
        let recorded = st.device.as_deref().and_then(sys::loopdev::number_of);
        let intact = match st.phase {
            StagePhase::Staging => false,
            StagePhase::Staged => {
                recorded.is_some_and(|n| devs.contains(&n)) && (st.block || mounted)
            }
        };
        if intact {
            continue;
        }
        // Half-done stage, or a stage whose device or mount vanished (reboot): undo what
        // is left. The CO stages again; nothing is re-attached here.
        let publishes = d.store.publishes_of(&v.id)?;
        if st.phase == StagePhase::Staged && !publishes.is_empty() {
            r.warn(format!(
                "volume {} is published but its stage at {} lost its device or mount",
                v.id,
                st.staging_path.display()
            ));
            continue;
        }
        if !st.block && mounted {
            sys::mount::umount_all(&st.staging_path)
                .map_err(crate::error::Error::io("unmounting", &st.staging_path))?;
        }
        // Only block stages hold plain devices; autoclear ones left by a mount stage went
        // with the crashed process or go with the umount above.
        for n in devs.iter().filter(|_| st.block) {
            sys::loopdev::detach_if_backed_by(*n, &image).map_err(crate::error::Error::io(
                "detaching",
                sys::loopdev::device_path(*n),
            ))?;
        }
        d.store.write(vec![Op::DelStage(v.id.clone())])?;
        if st.phase == StagePhase::Staging {
            r.rolled_back.push(format!(
                "stage of {} at {}",
                v.id,
                st.staging_path.display()
            ));
        } else {
            r.warn(format!(
                "stage of {} at {} had lost its device or mount; forgotten",
                v.id,
                st.staging_path.display()
            ));
        }
    }

    let mut known_targets = HashSet::new();
    for p in d.store.all_publishes()? {
        known_targets.insert(p.target.clone());
        let mounted = mounts.iter().any(|m| m.mount_point == p.target);
        if !mounted {
            d.store
                .write_publication(Op::DelPublish(p.target.clone()))?;
            r.warn(format!(
                "publish of {} at {} had no mount; forgotten",
                p.volume_id,
                p.target.display()
            ));
        }
    }

    // Strays: mounts of our staged devices nobody recorded (a publish that crashed after
    // its mount; the CO's retry adopts it), loop devices on pool files without a stage,
    // and pool files without a record.
    let mut staged_paths = HashSet::new();
    let mut our_devices = HashSet::new();
    for st in d.store.all_stages()? {
        staged_paths.insert(st.staging_path.clone());
        if let Some(dev) = st.device {
            our_devices.insert(dev.to_string_lossy().into_owned());
        }
    }
    for m in &mounts {
        if our_devices.contains(&m.source)
            && !staged_paths.contains(&m.mount_point)
            && !known_targets.contains(&m.mount_point)
        {
            r.warn(format!(
                "{} is mounted at {} without a publish record",
                m.source,
                m.mount_point.display()
            ));
        }
    }
    let staged_volumes: HashSet<String> = d
        .store
        .all_stages()?
        .into_iter()
        .map(|s| s.volume_id)
        .collect();
    // Image paths of the recorded volumes, made only when a loop device is on a pool file.
    let mut owners: Option<HashMap<std::path::PathBuf, &str>> = None;
    for b in &loops {
        let in_pool = d.pools.iter().any(|p| b.file.starts_with(p.root()));
        if !in_pool {
            continue;
        }
        let owners = owners.get_or_insert_with(|| {
            volumes
                .iter()
                .filter_map(|v| {
                    let pool = d.pools.get(&v.pool)?;
                    Some((pool.path(DataRef::volume(&v.data)), v.id.as_str()))
                })
                .collect()
        });
        if owners
            .get(&b.file)
            .is_none_or(|id| !staged_volumes.contains(*id))
        {
            r.warn(format!(
                "/dev/loop{} is attached to {} without a stage record",
                b.number,
                b.file.display()
            ));
        }
    }
    Ok(r)
}

/// Pool data without a record: reported, left alone. Data of volumes rolled back before
/// is gone from the listing, so the records from before them still tell recorded data
/// from strays.
fn strays(d: &Driver, volumes: &[VolumeBrief], listed: &Listed, r: &mut Report) -> Result<()> {
    let mut recorded: HashSet<(DataKind, &str, &str)> = volumes
        .iter()
        .map(|v| (DataKind::Volume, v.pool.as_str(), v.data.as_str()))
        .collect();
    let snapshots = d.store.all_snapshots()?;
    recorded.extend(
        snapshots
            .iter()
            .map(|s| (DataKind::Snapshot, s.pool.as_str(), s.data.as_str())),
    );
    for pool in d.pools.iter() {
        for (kind, names) in [
            (DataKind::Volume, listed.volumes.get(pool.pool())),
            (DataKind::Snapshot, listed.snapshots.get(pool.pool())),
        ] {
            let mut names: Vec<&String> = names.into_iter().flatten().collect();
            names.sort();
            for name in names {
                if !recorded.contains(&(kind, pool.pool(), name.as_str())) {
                    let path = pool.path(DataRef { kind, name });
                    r.warn(format!("{} has no record; left alone", path.display()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ids::{Kind, ObjectId};
    use crate::state::VolumeRecord;

    fn record(name: &str, phase: Phase, capacity: u64) -> VolumeRecord {
        let id = ObjectId::for_name("n1", "p", Kind::Volume, name);
        VolumeRecord {
            id: id.to_string(),
            name: name.into(),
            pool: "p".into(),
            data: id.data_name(),
            capacity,
            fs_type: "ext4".into(),
            parameters: BTreeMap::new(),
            mutable_parameters: BTreeMap::new(),
            direct_io: false,
            source: None,
            created_unix: 0,
            phase,
            ephemeral: None,
        }
    }

    #[test]
    fn half_done_operations_are_finished_or_rolled_back() {
        let pool_dir = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        let d = crate::driver::test_driver(pool_dir.path(), state_dir.path());
        let pool = d.pools.default_pool().clone();
        let creating = record("creating", Phase::Creating, 1 << 20);
        let deleting = record("deleting", Phase::Deleting, 1 << 20);
        let grown = record("grown", Phase::Ready, 1 << 20);
        let lost = record("lost", Phase::Ready, 1 << 20);
        for v in [&creating, &deleting, &grown] {
            pool.create(DataRef::volume(&v.data), 1 << 20, None)
                .unwrap();
        }
        pool.grow(DataRef::volume(&grown.data), 2 << 20).unwrap();
        pool.create(DataRef::volume("vorphan.img"), 1 << 20, None)
            .unwrap();
        d.store
            .write(vec![
                Op::PutVolume(creating.clone()),
                Op::PutVolume(deleting.clone()),
                Op::PutVolume(grown.clone()),
                Op::PutVolume(lost.clone()),
            ])
            .unwrap();

        let r = run(&d).unwrap();
        assert!(d.store.volume(&creating.id).unwrap().is_none());
        assert_eq!(pool.size(DataRef::volume(&creating.data)).unwrap(), None);
        assert!(d.store.volume(&deleting.id).unwrap().is_none());
        assert_eq!(pool.size(DataRef::volume(&deleting.data)).unwrap(), None);
        assert_eq!(
            d.store.volume(&grown.id).unwrap().unwrap().capacity,
            2 << 20
        );
        assert!(
            d.store.volume(&lost.id).unwrap().is_some(),
            "a lost image is reported, not forgotten"
        );
        assert!(
            r.differences.iter().any(|m| m.contains("has no image")),
            "{r:?}"
        );
        assert!(
            r.differences.iter().any(|m| m.contains("vorphan.img")),
            "{r:?}"
        );
        assert!(
            pool.size(DataRef::volume("vorphan.img")).unwrap().is_some(),
            "orphans are left alone"
        );
        assert_eq!(r.rolled_back.len(), 1, "{r:?}");

        // A second run finds nothing more to repair.
        let again = run(&d).unwrap();
        assert!(
            again.rolled_back.is_empty() && again.finished.is_empty(),
            "{again:?}"
        );
    }

    #[test]
    fn an_unenforced_dir_pool_is_checked_from_its_listing() {
        let (pool_dir, state_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut d = crate::driver::test_driver(pool_dir.path(), state_dir.path());
        let pool_root = pool_dir.path().join("dir");
        std::fs::create_dir(&pool_root).unwrap();
        let dir_pool: std::sync::Arc<dyn crate::backend::Backend> = std::sync::Arc::new(
            crate::backend::dir::DirPool::open("p", &pool_root, false).unwrap(),
        );
        d.pools = crate::backend::Pools::new(vec![dir_pool.clone()]);
        assert!(!dir_pool.keeps_sizes());
        let here = record("here", Phase::Ready, 1 << 20);
        let gone = record("gone", Phase::Ready, 1 << 20);
        dir_pool
            .create(DataRef::volume(&here.data), 1 << 20, None)
            .unwrap();
        dir_pool
            .create(DataRef::volume("vstray"), 1 << 20, None)
            .unwrap();
        d.store
            .write(vec![
                Op::PutVolume(here.clone()),
                Op::PutVolume(gone.clone()),
            ])
            .unwrap();
        let r = run(&d).unwrap();
        let missing: Vec<_> = r
            .differences
            .iter()
            .filter(|m| m.contains("has no image"))
            .collect();
        assert_eq!(missing.len(), 1, "{r:?}");
        assert!(missing[0].contains(&gone.id), "{r:?}");
        assert!(
            r.differences
                .iter()
                .any(|m| m.contains("vstray") && m.contains("has no record")),
            "{r:?}"
        );
        assert!(r.finished.is_empty() && r.rolled_back.is_empty(), "{r:?}");
    }
}

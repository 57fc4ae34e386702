//! Snapshots and group snapshots: independent copies of volume images (reflink where the
//! pool filesystem can, else sparse copies), cut while the volumes' filesystems are frozen.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::backend::{DataRef, Source};
use crate::driver::{self, Driver, Lookup};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::{Kind, ObjectId};
use crate::state::{GroupRecord, Op, Phase, SnapshotRecord, StagePhase, VolumeRecord};
use crate::sys;

/// Filesystems frozen (and block devices flushed) for the duration of a cut; thawed on
/// drop, so an error or panic never leaves a filesystem frozen.
pub(crate) struct Quiesced {
    frozen: Vec<PathBuf>,
}

impl Drop for Quiesced {
    fn drop(&mut self) {
        for path in self.frozen.iter().rev() {
            if let Err(e) = sys::fsfreeze::thaw(path) {
                tracing::error!(path = %path.display(), error = %e, "thawing filesystem failed");
            }
        }
    }
}

impl Driver {
    /// Freezes the staged filesystems of `volumes` and flushes staged block devices.
    pub(crate) fn quiesce(&self, volumes: &[VolumeRecord]) -> Result<Quiesced> {
        let mut q = Quiesced { frozen: Vec::new() };
        for v in volumes {
            let Some(st) = self.store.stage(&v.id)? else {
                continue;
            };
            // A tree volume shares the pool's filesystem: freezing it would freeze the
            // pool the copy is written to. btrfs snapshots are atomic anyway; a `dir`
            // copy is as consistent as a copy of a live directory can be.
            if st.phase != StagePhase::Staged || self.is_tree(v)? {
                continue;
            }
            if st.block {
                if let Some(dev) = &st.device {
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .open(dev)
                        .map_err(Error::io("opening", dev))?;
                    f.sync_all().map_err(Error::io("flushing", dev))?;
                }
            } else {
                sys::fsfreeze::freeze(&st.staging_path)
                    .map_err(Error::io("freezing", &st.staging_path))?;
                q.frozen.push(st.staging_path.clone());
            }
        }
        Ok(q)
    }

    fn source_for_snapshot(&self, id: &str) -> Result<VolumeRecord> {
        match self.lookup_volume(id)? {
            Lookup::Found(v) if v.phase == Phase::Ready => Ok(v),
            Lookup::Found(_) | Lookup::Unknown => Err(Error::VolumeNotFound(id.to_string())),
            Lookup::OtherNode(oid) => Err(Error::OtherNode {
                what: "volume",
                id: id.to_string(),
                node: oid.node,
                here: self.node_id.clone(),
            }),
        }
    }

    fn check_space(&self, sources: &[VolumeRecord]) -> Result<()> {
        for v in sources {
            let pool = self.pool(&v.pool)?;
            let used = pool.snapshot_space(DataRef::volume(&v.data))?;
            let free = pool.space()?.free_bytes;
            if used > free {
                return Err(Error::PoolFull {
                    pool: v.pool.clone(),
                    want: used,
                    free,
                });
            }
        }
        Ok(())
    }

    /// CreateSnapshot: same name and source → OK; same name, other source → ALREADY_EXISTS.
    /// Blocks until the snapshot is cut; it is ready at once.
    pub fn create_snapshot(&self, name: &str, source_id: &str) -> Result<SnapshotRecord> {
        let _guard = self
            .locks
            .try_lock([format!("snapname:{name}"), format!("vol:{source_id}")])?;
        if let Some(s) = self.store.snapshot_by_name(name)? {
            if s.source_volume_id != source_id {
                return Err(Error::Incompatible {
                    what: "snapshot",
                    name: name.to_string(),
                    reason: format!("it is a snapshot of {}", s.source_volume_id),
                });
            }
            if s.phase == Phase::Ready {
                return Ok(s);
            }
            self.pool(&s.pool)?.remove(DataRef::snapshot(&s.data))?;
            self.store.write(vec![Op::DelSnapshot(s.id.clone())])?;
        }
        let v = self.source_for_snapshot(source_id)?;
        self.check_space(std::slice::from_ref(&v))?;
        let oid = ObjectId::for_name(&self.node_id, &v.pool, Kind::Snapshot, name);
        let mut rec = SnapshotRecord {
            id: oid.to_string(),
            name: name.to_string(),
            source_volume_id: v.id.clone(),
            pool: v.pool.clone(),
            data: oid.data_name(),
            size: v.capacity,
            created_unix: driver::now_unix(),
            phase: Phase::Creating,
            group_id: None,
        };
        self.store.write(vec![Op::PutSnapshot(rec.clone())])?;
        failpoint::hit("create_snapshot:after_intent");
        if let Err(e) = self.cut(&[(&v, &rec)], false) {
            let _ = self.store.write(vec![Op::DelSnapshot(rec.id.clone())]);
            return Err(e);
        }
        failpoint::hit("create_snapshot:after_copy");
        rec.phase = Phase::Ready;
        self.store.write(vec![Op::PutSnapshot(rec.clone())])?;
        Ok(rec)
    }

    /// Copies each volume image to its snapshot image while all of them are quiesced.
    /// On error, the snapshot images made so far are removed.
    fn cut(&self, pairs: &[(&VolumeRecord, &SnapshotRecord)], group: bool) -> Result<()> {
        let volumes: Vec<VolumeRecord> = pairs.iter().map(|(v, _)| (*v).clone()).collect();
        let mut made: Vec<&SnapshotRecord> = Vec::new();
        let result = (|| {
            let q = self.quiesce(&volumes)?;
            if group {
                failpoint::hit("group_snapshot:after_freeze");
            }
            for (v, s) in pairs {
                let src = Source {
                    pool: self.pool(&v.pool)?.as_ref(),
                    obj: DataRef::volume(&v.data),
                };
                let dst_pool = self.pool(&s.pool)?;
                let img = DataRef::snapshot(&s.data);
                dst_pool.remove(img)?;
                dst_pool.create(img, 0, Some(src))?;
                made.push(s);
            }
            drop(q);
            Ok(())
        })();
        if result.is_err() {
            for s in made {
                if let Ok(p) = self.pool(&s.pool) {
                    let _ = p.remove(DataRef::snapshot(&s.data));
                }
            }
        }
        result
    }

    /// DeleteSnapshot: unknown → OK; a member of a group → INVALID_ARGUMENT.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        let _guard = self.locks.try_lock([format!("snap:{id}")])?;
        let mut s = match self.lookup_snapshot(id)? {
            Lookup::Found(s) => s,
            Lookup::Unknown => return Ok(()),
            Lookup::OtherNode(oid) => {
                return Err(Error::Precondition(format!(
                    "snapshot {id} lives on node {}; delete it there (this is node {})",
                    oid.node, self.node_id
                )));
            }
        };
        if let Some(g) = &s.group_id
            && self.store.group(g)?.is_some()
        {
            return Err(Error::invalid(
                "snapshot_id",
                format!("snapshot belongs to group snapshot {g}; delete the group instead"),
            ));
        }
        s.phase = Phase::Deleting;
        self.store.write(vec![Op::PutSnapshot(s.clone())])?;
        failpoint::hit("delete_snapshot:after_intent");
        self.pool(&s.pool)?.remove(DataRef::snapshot(&s.data))?;
        self.store.write(vec![Op::DelSnapshot(s.id.clone())])?;
        Ok(())
    }

    /// Snapshots of a group, in the group's order.
    pub fn group_members(&self, g: &GroupRecord) -> Result<Vec<SnapshotRecord>> {
        let mut out = Vec::new();
        for id in &g.snapshot_ids {
            match self.store.snapshot(id)? {
                Some(s) => out.push(s),
                None => {
                    return Err(Error::StateCorrupt(format!(
                        "group {} lost member {id}",
                        g.id
                    )));
                }
            }
        }
        Ok(out)
    }

    /// CreateVolumeGroupSnapshot: write-order consistent across all members (their
    /// filesystems are frozen together while the images are copied), or nothing.
    pub fn create_group(
        &self,
        name: &str,
        sources: &[String],
        parameters: &HashMap<String, String>,
    ) -> Result<GroupRecord> {
        if let Some(k) = parameters.keys().next() {
            return Err(Error::invalid(
                "parameters",
                format!("unknown parameter {k:?}"),
            ));
        }
        let mut keys = vec![format!("groupname:{name}")];
        keys.extend(sources.iter().map(|s| format!("vol:{s}")));
        let _guard = self.locks.try_lock(keys)?;
        let params: BTreeMap<String, String> = driver::sorted(parameters);
        if let Some(g) = self.store.group_by_name(name)? {
            let mut a = g.source_volume_ids.clone();
            let mut b = sources.to_vec();
            a.sort();
            b.sort();
            if a != b || g.parameters != params {
                return Err(Error::Incompatible {
                    what: "group snapshot",
                    name: name.to_string(),
                    reason: format!("it holds volumes {:?}", g.source_volume_ids),
                });
            }
            if g.phase == Phase::Ready {
                return Ok(g);
            }
            self.drop_group(g)?;
        }
        let mut volumes = Vec::with_capacity(sources.len());
        for id in sources {
            volumes.push(self.source_for_snapshot(id)?);
        }
        if volumes.len() > 1 {
            for v in &volumes {
                if self.is_tree(v)? {
                    // Consistency across members comes from freezing their filesystems
                    // together, which a tree volume (on the pool's own filesystem) cannot do.
                    return Err(Error::invalid(
                        "source_volume_ids",
                        format!(
                            "volume {} is a directory in pool {}: group snapshots of several volumes need image pools",
                            v.id, v.pool
                        ),
                    ));
                }
            }
        }
        self.check_space(&volumes)?;
        let gid =
            ObjectId::for_name(&self.node_id, &volumes[0].pool, Kind::Group, name).to_string();
        let created = driver::now_unix();
        let mut snaps: Vec<SnapshotRecord> = volumes
            .iter()
            .map(|v| {
                let sname = driver::group_member_name(&gid, &v.id);
                let oid = ObjectId::for_name(&self.node_id, &v.pool, Kind::Snapshot, &sname);
                SnapshotRecord {
                    id: oid.to_string(),
                    name: sname,
                    source_volume_id: v.id.clone(),
                    pool: v.pool.clone(),
                    data: oid.data_name(),
                    size: v.capacity,
                    created_unix: created,
                    phase: Phase::Creating,
                    group_id: Some(gid.clone()),
                }
            })
            .collect();
        let mut g = GroupRecord {
            id: gid.clone(),
            name: name.to_string(),
            source_volume_ids: sources.to_vec(),
            snapshot_ids: snaps.iter().map(|s| s.id.clone()).collect(),
            parameters: params,
            created_unix: created,
            phase: Phase::Creating,
        };
        let mut ops = vec![Op::PutGroup(g.clone())];
        ops.extend(snaps.iter().cloned().map(Op::PutSnapshot));
        self.store.write(ops)?;
        failpoint::hit("group_snapshot:after_intent");
        let pairs: Vec<(&VolumeRecord, &SnapshotRecord)> =
            volumes.iter().zip(snaps.iter()).collect();
        if let Err(e) = self.cut(&pairs, true) {
            // "If it fails before a group id exists, the SP must clean up the partial
            // snapshots itself": cut removed the images, drop the records too.
            let mut ops = vec![Op::DelGroup(gid.clone())];
            ops.extend(snaps.iter().map(|s| Op::DelSnapshot(s.id.clone())));
            let _ = self.store.write(ops);
            return Err(e);
        }
        failpoint::hit("group_snapshot:after_cut");
        g.phase = Phase::Ready;
        for s in &mut snaps {
            s.phase = Phase::Ready;
        }
        let mut ops = vec![Op::PutGroup(g.clone())];
        ops.extend(snaps.into_iter().map(Op::PutSnapshot));
        self.store.write(ops)?;
        Ok(g)
    }

    /// Removes a group's images and records.
    fn drop_group(&self, mut g: GroupRecord) -> Result<()> {
        g.phase = Phase::Deleting;
        self.store.write(vec![Op::PutGroup(g.clone())])?;
        let mut ops = Vec::new();
        for id in &g.snapshot_ids {
            if let Some(s) = self.store.snapshot(id)? {
                self.pool(&s.pool)?.remove(DataRef::snapshot(&s.data))?;
                ops.push(Op::DelSnapshot(s.id));
            }
        }
        ops.push(Op::DelGroup(g.id));
        self.store.write(ops)
    }

    fn check_members(g: &GroupRecord, snapshot_ids: &[String]) -> Result<()> {
        if snapshot_ids.is_empty() {
            return Ok(());
        }
        let mut a = g.snapshot_ids.clone();
        let mut b = snapshot_ids.to_vec();
        a.sort();
        b.sort();
        if a != b {
            return Err(Error::invalid(
                "snapshot_ids",
                "do not match the group snapshot's members",
            ));
        }
        Ok(())
    }

    pub fn lookup_group(&self, id: &str) -> Result<Option<GroupRecord>> {
        match ObjectId::parse(id) {
            // Any node's id: a moved pool's groups are adopted with their ids.
            Some(oid) if oid.kind == Kind::Group => self.store.group(id),
            _ => Ok(None),
        }
    }

    pub fn get_group(
        &self,
        id: &str,
        snapshot_ids: &[String],
    ) -> Result<(GroupRecord, Vec<SnapshotRecord>)> {
        let g = self.lookup_group(id)?.filter(|g| g.phase == Phase::Ready);
        let g = g.ok_or_else(|| Error::GroupSnapshotNotFound(id.to_string()))?;
        Self::check_members(&g, snapshot_ids)?;
        let members = self.group_members(&g)?;
        Ok((g, members))
    }

    pub fn delete_group(&self, id: &str, snapshot_ids: &[String]) -> Result<()> {
        let _guard = self.locks.try_lock([format!("group:{id}")])?;
        let Some(g) = self.lookup_group(id)? else {
            return Ok(());
        };
        Self::check_members(&g, snapshot_ids)?;
        self.drop_group(g)
    }
}

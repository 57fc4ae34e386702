//! Controller-side volume operations: create (empty, from a snapshot, from a volume),
//! delete, expand, modify. Each records its intent before the side effect.

use std::collections::{BTreeMap, HashMap};

use crate::backend::{Access, Backend, DataKind, DataRef, Layout, Source as ObjSource};
use crate::driver::{self, Cap, Driver, Lookup};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::{Kind, ObjectId};
use crate::state::{Op, Phase, Source, StagePhase, VolumeRecord};
use crate::sys;

/// Parameter keys of CreateVolume.
pub const PARAM_POOL: &str = "pool";
pub const PARAM_FS_TYPE: &str = "fsType";
/// The one mutable parameter (ControllerModifyVolume); also accepted at creation.
pub const PARAM_DIRECT_IO: &str = "directIO";
/// Keys the CO reserves for itself; external-provisioner strips them, others may not.
const CO_PREFIX: &str = "csi.storage.k8s.io/";
const CO_FS_TYPE: &str = "csi.storage.k8s.io/fstype";

#[derive(Debug, Clone, Default)]
pub struct CreateArgs {
    pub name: String,
    pub required: u64,
    pub limit: u64,
    pub caps: Vec<Cap>,
    pub parameters: HashMap<String, String>,
    pub mutable_parameters: HashMap<String, String>,
    pub source: Option<Source>,
    pub requisite: Vec<HashMap<String, String>>,
    pub preferred: Vec<HashMap<String, String>>,
    pub ephemeral: Option<String>,
}

fn parse_bool(field: &'static str, v: &str) -> Result<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(Error::invalid(
            field,
            format!("{PARAM_DIRECT_IO} must be \"true\" or \"false\", not {other:?}"),
        )),
    }
}

/// Checks `mutable_parameters` completely before anything is applied.
pub fn parse_mutable(m: &HashMap<String, String>) -> Result<Option<bool>> {
    let mut direct_io = None;
    for (k, v) in m {
        if k == PARAM_DIRECT_IO {
            direct_io = Some(parse_bool("mutable_parameters", v)?);
        } else {
            return Err(Error::invalid(
                "mutable_parameters",
                format!("{k:?} is not a mutable parameter (only {PARAM_DIRECT_IO})"),
            ));
        }
    }
    Ok(direct_io)
}

/// Where a content source lives.
struct SourceObj {
    pool: std::sync::Arc<dyn Backend>,
    kind: DataKind,
    data: String,
}

/// Resolved creation settings.
struct Settings {
    pool: String,
    /// A `dir` or `btrfs` pool: no filesystem of our own, so no minimum size.
    tree: bool,
    fs_type: String,
    direct_io: bool,
    parameters: BTreeMap<String, String>,
    mutable: BTreeMap<String, String>,
}

impl Driver {
    fn settings(&self, a: &CreateArgs) -> Result<Settings> {
        let mut pool = None;
        let mut fs_param = None;
        let mut direct_io = false;
        for (k, v) in &a.parameters {
            match k.as_str() {
                PARAM_POOL => {
                    if self.pools.get(v).is_none() {
                        return Err(Error::invalid(
                            "parameters",
                            format!("pool {v:?} is not configured on this node"),
                        ));
                    }
                    pool = Some(v.clone());
                }
                PARAM_FS_TYPE => match v.as_str() {
                    "ext4" | "xfs" => fs_param = Some(v.clone()),
                    other => {
                        return Err(Error::invalid(
                            "parameters",
                            format!("fsType {other:?}: only ext4 and xfs"),
                        ));
                    }
                },
                PARAM_DIRECT_IO => direct_io = parse_bool("parameters", v)?,
                // external-provisioner turns this into the capability's fs_type and strips
                // it; a CO that passes it through means the same thing.
                CO_FS_TYPE if !a.parameters.contains_key(PARAM_FS_TYPE) => match v.as_str() {
                    "ext4" | "xfs" => fs_param = Some(v.clone()),
                    other => {
                        return Err(Error::invalid(
                            "parameters",
                            format!("{CO_FS_TYPE} {other:?}: only ext4 and xfs"),
                        ));
                    }
                },
                k if k.starts_with(CO_PREFIX) => {}
                other => {
                    return Err(Error::invalid(
                        "parameters",
                        format!("unknown parameter {other:?}"),
                    ));
                }
            }
        }
        if let Some(d) = parse_mutable(&a.mutable_parameters)? {
            direct_io = d;
        }
        let mut cap_fs: Option<&str> = None;
        for c in &a.caps {
            if c.block || c.fs_type.is_empty() {
                continue;
            }
            match cap_fs {
                Some(f) if f != c.fs_type => {
                    return Err(Error::invalid(
                        "volume_capabilities",
                        "capabilities ask for different fs_types",
                    ));
                }
                _ => cap_fs = Some(&c.fs_type),
            }
        }
        let pool = pool.unwrap_or_else(|| self.pools.default_pool().pool().to_string());
        let backend = self.pool(&pool)?;
        if let Access::Tree(trees) = backend.access() {
            let native = trees.fs_type();
            // A tree pool's volumes are directories of the pool's filesystem.
            let kind = backend.kind();
            for asked in [fs_param.as_deref(), cap_fs].into_iter().flatten() {
                if asked != native {
                    return Err(Error::invalid(
                        "parameters",
                        format!(
                            "pool {pool} ({kind}) holds {native} directories; fsType {asked:?} cannot be made there"
                        ),
                    ));
                }
            }
            if a.caps.iter().any(|c| c.block) {
                return Err(Error::invalid(
                    "volume_capabilities",
                    format!(
                        "pool {pool} ({kind}) holds directories; Block access needs an image pool"
                    ),
                ));
            }
            if direct_io {
                return Err(Error::invalid(
                    "parameters",
                    format!(
                        "{PARAM_DIRECT_IO} applies to loop devices; pool {pool} ({kind}) has none"
                    ),
                ));
            }
            fs_param = Some(native.to_string());
        }
        let fs_type = match (fs_param, cap_fs) {
            (Some(p), Some(c)) if p != c => {
                return Err(Error::invalid(
                    "parameters",
                    format!("fsType {p:?} conflicts with the capability's fs_type {c:?}"),
                ));
            }
            (Some(p), _) => p,
            (None, Some(c)) => c.to_string(),
            (None, None) => "ext4".to_string(),
        };
        let mut parameters = BTreeMap::new();
        parameters.insert(PARAM_POOL.to_string(), pool.clone());
        parameters.insert(PARAM_FS_TYPE.to_string(), fs_type.clone());
        if let Some(v) = a.parameters.get(PARAM_DIRECT_IO) {
            parameters.insert(PARAM_DIRECT_IO.to_string(), v.clone());
        }
        Ok(Settings {
            tree: backend.layout() == Layout::Tree,
            pool,
            fs_type,
            direct_io,
            parameters,
            mutable: driver::sorted(&a.mutable_parameters),
        })
    }

    /// Finds the content source, checks it is ready and on this node; returns where it
    /// lives and the smallest size a volume made from it may have.
    fn find_source(&self, src: &Source) -> Result<(SourceObj, u64)> {
        match src {
            Source::Snapshot(id) => match self.lookup_snapshot(id)? {
                Lookup::Found(s) if s.phase == Phase::Ready => Ok((
                    SourceObj {
                        pool: self.pool(&s.pool)?.clone(),
                        kind: DataKind::Snapshot,
                        data: s.data,
                    },
                    s.size,
                )),
                Lookup::Found(_) | Lookup::Unknown => Err(Error::SnapshotNotFound(id.clone())),
                Lookup::OtherNode(oid) => Err(Error::OtherNode {
                    what: "snapshot",
                    id: id.clone(),
                    node: oid.node,
                    here: self.node_id.clone(),
                }),
            },
            Source::Volume(id) => match self.lookup_volume(id)? {
                Lookup::Found(v) if v.phase == Phase::Ready && v.ephemeral.is_none() => Ok((
                    SourceObj {
                        pool: self.pool(&v.pool)?.clone(),
                        kind: DataKind::Volume,
                        data: v.data,
                    },
                    v.capacity,
                )),
                Lookup::Found(_) | Lookup::Unknown => Err(Error::VolumeNotFound(id.clone())),
                Lookup::OtherNode(oid) => Err(Error::OtherNode {
                    what: "volume",
                    id: id.clone(),
                    node: oid.node,
                    here: self.node_id.clone(),
                }),
            },
        }
    }

    /// CreateVolume: "a volume with the same name that is compatible ... → OK with the
    /// same Volume"; otherwise ALREADY_EXISTS.
    pub fn create_volume(&self, a: CreateArgs) -> Result<VolumeRecord> {
        let s = self.settings(&a)?;
        driver::topology_allows(&self.node_id, &a.requisite, &a.preferred)?;
        let id = ObjectId::for_name(&self.node_id, &s.pool, Kind::Volume, &a.name);
        let id_str = id.to_string();
        let mut keys = vec![format!("name:{}", a.name), format!("vol:{id_str}")];
        match &a.source {
            Some(Source::Snapshot(sid)) => keys.push(format!("snap:{sid}")),
            Some(Source::Volume(vid)) => keys.push(format!("vol:{vid}")),
            None => {}
        }
        keys.dedup();
        let _guard = self.locks.try_lock(keys)?;

        if let Some(existing) = self.store.volume_by_name(&a.name)? {
            match existing.phase {
                Phase::Ready => return self.compatible(existing, &a, &s),
                // Left by a failed attempt whose cleanup also failed: redo from scratch.
                Phase::Creating | Phase::Deleting => {
                    self.pool(&existing.pool)?
                        .remove(DataRef::volume(&existing.data))?;
                    self.store.write(vec![Op::DelVolume(existing.id.clone())])?;
                }
            }
        }

        let pool = self.pool(&s.pool)?;
        let (source, floor) = match &a.source {
            Some(src) => {
                let (obj, floor) = self.find_source(src)?;
                pool.accepts_source(obj.pool.as_ref())
                    .map_err(|r| Error::invalid("volume_content_source", r))?;
                (Some(obj), floor)
            }
            None => (None, 0),
        };
        if a.required != 0 && a.required < floor {
            return Err(Error::OutOfRange {
                field: "capacity_range",
                reason: format!(
                    "required_bytes {} is smaller than the source ({floor} bytes)",
                    a.required
                ),
            });
        }
        let min_fs = if s.tree { "" } else { s.fs_type.as_str() };
        let size = driver::pick_size(a.required, a.limit, floor, min_fs)?;
        let space = pool.space()?;
        // A sparse image uses nothing yet, but a volume that can never be filled is a lie:
        // refuse sizes beyond the pool's free space.
        if size > space.free_bytes {
            return Err(Error::PoolFull {
                pool: s.pool.clone(),
                want: size,
                free: space.free_bytes,
            });
        }

        let mut rec = VolumeRecord {
            id: id_str.clone(),
            name: a.name.clone(),
            pool: s.pool.clone(),
            data: id.data_name(),
            capacity: size,
            fs_type: s.fs_type.clone(),
            parameters: s.parameters,
            mutable_parameters: s.mutable,
            direct_io: s.direct_io,
            source: a.source.clone(),
            created_unix: driver::now_unix(),
            phase: Phase::Creating,
            ephemeral: a.ephemeral.clone(),
        };
        // Counted against the pool before the intent is recorded, in one step with the
        // check, so two creates cannot both take the pool's last provisionable bytes.
        let reserved = self
            .store
            .reserve(&s.pool, size, self.provision_limit(&s.pool, &space))?;
        // An empty volume's intent goes into its pool's journal (unflushed, as the
        // database's would be), so the Ready write is the create's only transaction of
        // the state database: a transaction costs ~16 system calls (WAL locks and frames).
        // A volume made from a source keeps the database's intent: its copy may take
        // minutes, and an open journal intent holds the pool's checkpoints back.
        let journal = match &a.source {
            None => self.store.mirror().and_then(|m| m.pool(&s.pool)),
            Some(_) => None,
        };
        let reserved = match journal {
            Some(pm) => {
                pm.intend(&rec.id, &rec.data)?;
                Some(reserved)
            }
            None => {
                self.store
                    .write_reserved(vec![Op::PutVolume(rec.clone())], reserved)?;
                None
            }
        };
        failpoint::hit("create_volume:after_intent");

        let img = DataRef::volume(&rec.data);
        let made = (|| {
            // A file under a Creating record is ours (an earlier attempt crashed).
            pool.remove(img)?;
            // A clone of a staged volume is cut like a snapshot: with its filesystem frozen.
            let _quiet = match &a.source {
                Some(Source::Volume(src)) => match self.store.volume(src)? {
                    Some(sv) => Some(self.quiesce(std::slice::from_ref(&sv))?),
                    None => None,
                },
                _ => None,
            };
            let from = source.as_ref().map(|o| ObjSource {
                pool: o.pool.as_ref(),
                obj: DataRef {
                    kind: o.kind,
                    name: &o.data,
                },
            });
            pool.create(img, size, from)
        })();
        if let Err(e) = made {
            let _ = match journal {
                Some(pm) => pm.abandon(&rec.id),
                None => self.store.write(vec![Op::DelVolume(rec.id.clone())]),
            };
            return Err(e);
        }
        failpoint::hit("create_volume:after_file");
        rec.phase = Phase::Ready;
        let ready = vec![Op::PutVolume(rec.clone())];
        let written = match reserved {
            // No Creating record was written: the volume has none yet.
            Some(r) => self.store.insert_reserved(ready, r),
            None => self.store.write(ready),
        };
        if let Err(e) = written {
            let _ = pool.remove(img);
            if let Some(pm) = journal {
                let _ = pm.abandon(&rec.id);
            }
            return Err(e);
        }
        failpoint::hit("create_volume:after_commit");
        tracing::debug!(volume_id = %rec.id, pool = %rec.pool, size, "created volume");
        Ok(rec)
    }

    fn compatible(&self, v: VolumeRecord, a: &CreateArgs, s: &Settings) -> Result<VolumeRecord> {
        let bad = |reason: String| Error::Incompatible {
            what: "volume",
            name: a.name.clone(),
            reason,
        };
        if a.required != 0 && v.capacity < a.required {
            return Err(bad(format!(
                "it has {} bytes, {} required",
                v.capacity, a.required
            )));
        }
        if a.limit != 0 && v.capacity > a.limit {
            return Err(bad(format!(
                "it has {} bytes, limit is {}",
                v.capacity, a.limit
            )));
        }
        if v.pool != s.pool || v.fs_type != s.fs_type || v.parameters != s.parameters {
            return Err(bad(format!(
                "it was created with parameters {:?}",
                v.parameters
            )));
        }
        if v.mutable_parameters != s.mutable {
            return Err(bad(format!(
                "it was created with mutable_parameters {:?}",
                v.mutable_parameters
            )));
        }
        if v.source != a.source {
            return Err(bad("it was created from another content source".into()));
        }
        if v.ephemeral != a.ephemeral {
            return Err(bad(
                "it is of another lifecycle (ephemeral or persistent)".into()
            ));
        }
        Ok(v)
    }

    /// DeleteVolume: unknown → OK. Snapshots are independent copies, so a volume with
    /// snapshots may go. A staged or published volume is in use → FAILED_PRECONDITION.
    pub fn delete_volume(&self, id: &str) -> Result<()> {
        let _guard = self.locks.try_lock([format!("vol:{id}")])?;
        let v = match self.lookup_volume(id)? {
            Lookup::Found(v) => v,
            Lookup::Unknown => return Ok(()),
            Lookup::OtherNode(oid) => {
                return Err(Error::Precondition(format!(
                    "volume {id} lives on node {}; delete it there (this is node {})",
                    oid.node, self.node_id
                )));
            }
        };
        if self.store.stage(&v.id)?.is_some() {
            return Err(Error::InUse {
                id: id.to_string(),
                reason: "it is staged on this node".into(),
            });
        }
        let pubs = self.store.publishes_of(&v.id)?;
        if let Some(p) = pubs.first() {
            return Err(Error::InUse {
                id: id.to_string(),
                reason: format!("it is published at {}", p.target.display()),
            });
        }
        self.remove_volume(v)
    }

    /// Deletes a volume that is known to be unused.
    pub(crate) fn remove_volume(&self, mut v: VolumeRecord) -> Result<()> {
        v.phase = Phase::Deleting;
        self.store.write(vec![Op::PutVolume(v.clone())])?;
        failpoint::hit("delete_volume:after_intent");
        self.pool(&v.pool)?.remove(DataRef::volume(&v.data))?;
        failpoint::hit("delete_volume:after_unlink");
        self.store.write(vec![Op::DelVolume(v.id.clone())])?;
        tracing::debug!(volume_id = %v.id, "deleted volume");
        Ok(())
    }

    /// ControllerExpandVolume. Returns (capacity, node_expansion_required).
    pub fn expand_volume(
        &self,
        id: &str,
        required: u64,
        limit: u64,
        block_cap: Option<bool>,
    ) -> Result<(u64, bool)> {
        let _guard = self.locks.try_lock([format!("vol:{id}")])?;
        let mut v = self.ready_volume(id)?;
        let stage = self.store.stage(&v.id)?;
        let block = block_cap
            .or(stage.as_ref().map(|s| s.block))
            .unwrap_or(false);
        if limit != 0 && limit < v.capacity {
            return Err(Error::OutOfRange {
                field: "capacity_range",
                reason: format!(
                    "limit_bytes {limit} is below the current size {}; volumes never shrink",
                    v.capacity
                ),
            });
        }
        let target = driver::pick_size(required, limit, 0, "")?;
        if target <= v.capacity {
            // "already ≥ target → SHOULD be OK"
            return Ok((v.capacity, false));
        }
        let pool = self.pool(&v.pool)?;
        let space = pool.space()?;
        let growth = target - v.capacity;
        if growth > space.free_bytes {
            return Err(Error::PoolFull {
                pool: v.pool.clone(),
                want: growth,
                free: space.free_bytes,
            });
        }
        let reserved =
            self.store
                .reserve(&v.pool, growth, self.provision_limit(&v.pool, &space))?;
        pool.grow(DataRef::volume(&v.data), target)?;
        failpoint::hit("controller_expand:after_truncate");
        // Online: an attached loop device learns the new size at once.
        if let Some(st) = &stage
            && st.phase == StagePhase::Staged
            && let Some(n) = self.live_device(&v, st)?
        {
            sys::loopdev::refresh_capacity(n).map_err(Error::io(
                "refreshing loop capacity",
                format!("/dev/loop{n}"),
            ))?;
        }
        v.capacity = target;
        self.store
            .write_reserved(vec![Op::PutVolume(v.clone())], reserved)?;
        // A raised quota needs nothing on the node.
        Ok((target, !block && pool.layout() == Layout::Image))
    }

    /// ControllerModifyVolume: every key is checked before anything is applied.
    pub fn modify_volume(&self, id: &str, mutable: &HashMap<String, String>) -> Result<()> {
        let direct_io = parse_mutable(mutable)?;
        let _guard = self.locks.try_lock([format!("vol:{id}")])?;
        let mut v = self.ready_volume(id)?;
        let Some(direct_io) = direct_io else {
            return Ok(());
        };
        if direct_io && self.is_tree(&v)? {
            return Err(Error::invalid(
                "mutable_parameters",
                format!(
                    "{PARAM_DIRECT_IO} applies to loop devices; pool {} has none",
                    v.pool
                ),
            ));
        }
        if let Some(st) = self.store.stage(&v.id)?
            && st.phase == StagePhase::Staged
            && let Some(n) = self.live_device(&v, &st)?
        {
            sys::loopdev::set_direct_io(n, direct_io).map_err(Error::io(
                "switching direct I/O of",
                format!("/dev/loop{n}"),
            ))?;
        }
        v.direct_io = direct_io;
        v.mutable_parameters
            .insert(PARAM_DIRECT_IO.to_string(), direct_io.to_string());
        self.store.write(vec![Op::PutVolume(v)])?;
        Ok(())
    }

    /// GetCapacity: (available, maximum volume size, minimum volume size). Available is
    /// what a CreateVolume can still get: the pool's provisioning limit less what is
    /// provisioned, and never more than the free space (a single volume must fit there).
    pub fn capacity(
        &self,
        parameters: &HashMap<String, String>,
        caps: &[Cap],
        topology: Option<&HashMap<String, String>>,
    ) -> Result<(u64, u64, u64)> {
        let a = CreateArgs {
            parameters: parameters.clone(),
            caps: caps.to_vec(),
            ..Default::default()
        };
        let s = self.settings(&a)?;
        if let Some(t) = topology
            && driver::topology_allows(&self.node_id, std::slice::from_ref(t), &[]).is_err()
        {
            return Ok((0, 0, 0));
        }
        if caps.iter().any(|c| c.supported().is_err()) {
            return Ok((0, 0, 0));
        }
        let pool = self.pool(&s.pool)?;
        pool.check()?;
        let space = pool.space()?;
        let room = self
            .provision_limit(&s.pool, &space)
            .saturating_sub(self.store.provisioned(&s.pool));
        let avail = room.min(space.free_bytes) / driver::SIZE_UNIT * driver::SIZE_UNIT;
        let min = driver::min_size(if s.tree { "" } else { &s.fs_type });
        Ok((avail, avail, min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::test_driver;

    fn mount_cap(fs: &str) -> Cap {
        Cap {
            block: false,
            fs_type: fs.into(),
            mount_flags: vec![],
            mount_group: String::new(),
            mode: crate::driver::AccessMode::SingleNodeWriter,
        }
    }

    fn args(name: &str, size: u64) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            required: size,
            caps: vec![mount_cap("")],
            ..Default::default()
        }
    }

    #[test]
    fn create_is_idempotent_and_refuses_incompatible_repeats() {
        let (p, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = test_driver(p.path(), s.path());
        let v = d.create_volume(args("pvc-1", 20 << 20)).unwrap();
        assert_eq!(v.capacity, 20 << 20);
        assert_eq!(v.fs_type, "ext4");
        assert_eq!(d.create_volume(args("pvc-1", 20 << 20)).unwrap(), v);
        assert!(matches!(
            d.create_volume(args("pvc-1", 40 << 20)),
            Err(Error::Incompatible { .. })
        ));
        let mut xfs = args("pvc-1", 20 << 20);
        xfs.parameters.insert(PARAM_FS_TYPE.into(), "xfs".into());
        assert!(matches!(
            d.create_volume(xfs),
            Err(Error::Incompatible { .. })
        ));
        d.delete_volume(&v.id).unwrap();
        d.delete_volume(&v.id).unwrap();
        assert!(d.store.volume(&v.id).unwrap().is_none());
    }

    #[test]
    fn parameters_are_checked_before_anything_happens() {
        let (p, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = test_driver(p.path(), s.path());
        let with = |k: &str, v: &str| {
            let mut a = args("x", 20 << 20);
            a.parameters.insert(k.into(), v.into());
            a
        };
        for bad in [
            with("pool", "nope"),
            with("fsType", "ntfs"),
            with("directIO", "yes"),
            with("color", "red"),
        ] {
            assert!(matches!(
                d.create_volume(bad),
                Err(Error::InvalidArgument { .. })
            ));
        }
        let mut conflict = with(PARAM_FS_TYPE, "xfs");
        conflict.caps = vec![mount_cap("ext4")];
        assert!(matches!(
            d.create_volume(conflict),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(d.store.all_volumes().unwrap().is_empty());
        assert!(
            d.pools
                .default_pool()
                .list(crate::backend::DataKind::Volume)
                .unwrap()
                .is_empty()
        );

        // The CO's fstype key stands in for fsType, and the capability's fs_type for both.
        let v = d.create_volume(with(CO_FS_TYPE, "xfs")).unwrap();
        assert_eq!(v.fs_type, "xfs");
        assert_eq!(v.capacity, crate::sys::mkfs::XFS_MIN_BYTES, "xfs minimum");
        let mut by_cap = args("y", 20 << 20);
        by_cap.caps = vec![mount_cap("xfs")];
        assert_eq!(d.create_volume(by_cap).unwrap().fs_type, "xfs");
    }

    #[test]
    fn topology_and_foreign_sources() {
        let (p, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = test_driver(p.path(), s.path());
        let mut a = args("t", 20 << 20);
        a.requisite = vec![HashMap::from([(
            crate::driver::TOPOLOGY_KEY.to_string(),
            "n2".to_string(),
        )])];
        assert!(matches!(d.create_volume(a), Err(Error::Topology(_))));
        let foreign = ObjectId::for_name("n2", "p", Kind::Snapshot, "s").to_string();
        let mut a = args("from-foreign", 20 << 20);
        a.source = Some(Source::Snapshot(foreign));
        assert!(matches!(d.create_volume(a), Err(Error::OtherNode { .. })));
        let missing = ObjectId::for_name("n1", "p", Kind::Snapshot, "s").to_string();
        let mut a = args("from-missing", 20 << 20);
        a.source = Some(Source::Snapshot(missing));
        assert!(matches!(
            d.create_volume(a),
            Err(Error::SnapshotNotFound(_))
        ));
        let mut huge = args("huge", 1 << 50);
        huge.limit = 0;
        assert!(matches!(d.create_volume(huge), Err(Error::PoolFull { .. })));
    }

    #[test]
    fn clone_and_restore_copy_contents_and_honour_sizes() {
        let (p, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = test_driver(p.path(), s.path());
        let src = d.create_volume(args("src", 20 << 20)).unwrap();
        let path = d
            .pools
            .default_pool()
            .path(crate::backend::DataRef::volume(&src.data));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"payload", 4096))
            .unwrap();
        let snap = d.create_snapshot("snap", &src.id).unwrap();
        assert_eq!(d.create_snapshot("snap", &src.id).unwrap(), snap);
        let mut small = args("restore-small", 10 << 20);
        small.source = Some(Source::Snapshot(snap.id.clone()));
        assert!(matches!(
            d.create_volume(small),
            Err(Error::OutOfRange { .. })
        ));
        let mut big = args("restore", 40 << 20);
        big.source = Some(Source::Snapshot(snap.id.clone()));
        let r = d.create_volume(big).unwrap();
        assert_eq!(r.capacity, 40 << 20);
        let rp = d
            .pools
            .default_pool()
            .path(crate::backend::DataRef::volume(&r.data));
        let data = std::fs::read(&rp).unwrap();
        assert_eq!(data.len(), 40 << 20);
        assert_eq!(&data[4096..4103], b"payload");
        // Snapshots are independent copies: the source may go first.
        d.delete_volume(&src.id).unwrap();
        assert!(d.store.snapshot(&snap.id).unwrap().is_some());
        d.delete_snapshot(&snap.id).unwrap();
        d.delete_snapshot(&snap.id).unwrap();
    }

    #[test]
    fn modify_checks_every_key_first() {
        let (p, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = test_driver(p.path(), s.path());
        let v = d.create_volume(args("m", 20 << 20)).unwrap();
        let m = HashMap::from([
            ("directIO".to_string(), "true".to_string()),
            ("iops".to_string(), "5".to_string()),
        ]);
        assert!(matches!(
            d.modify_volume(&v.id, &m),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(
            !d.store.volume(&v.id).unwrap().unwrap().direct_io,
            "nothing applied"
        );
        d.modify_volume(
            &v.id,
            &HashMap::from([("directIO".to_string(), "true".to_string())]),
        )
        .unwrap();
        assert!(d.store.volume(&v.id).unwrap().unwrap().direct_io);
        let (cap, node) = d.expand_volume(&v.id, 30 << 20, 0, None).unwrap();
        assert_eq!((cap, node), (30 << 20, true));
        assert!(matches!(
            d.expand_volume(&v.id, 0, 10 << 20, None),
            Err(Error::OutOfRange { .. })
        ));
    }
}

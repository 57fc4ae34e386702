//! Self-describing pools: every volume, snapshot and group snapshot carries a small JSON
//! record beside its data, under `<pool>/meta/`, so that the pool alone says what it holds.
//!
//! Guarantees:
//! - The record of a ready volume, snapshot or group is on disk (tmp file, fsync, rename,
//!   directory fsync) before the state database commits it as ready, so before the CO is
//!   answered. Power loss can drop the database's last 100 ms (state.rs); it cannot drop
//!   an acknowledged object, whose record start-up re-adopts.
//! - It is removed after the object's data and before the database forgets the object, so
//!   a record without data never describes a live object.
//! - Stages and publications get a record too (`meta/stages`, `meta/publishes`), written
//!   in place without fsync: they describe mounts, which a power loss ends anyway, and
//!   NodePublish stays a few microseconds slower, not a disk flush slower.
//! - If the state database is lost, `adopt` rebuilds its records from these files at
//!   start-up (reconciliation then checks them against the data, loop devices and mounts);
//!   a database that lacks a record for an object whose record and data exist gets it back.
//!
//! It knows only pools (their root directories) and state records, so every backend gets
//! it for free.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, DataRef};
use crate::error::{Error, Result};
use crate::ids::ObjectId;
use crate::state::{
    GroupRecord, Op, Phase, PublishRecord, SnapshotRecord, StageRecord, Store, VolumeRecord,
};
use crate::sys;

/// Format of the files written here; a newer one is left alone, never misread.
pub const META_FORMAT: u32 = 1;
pub const META_DIR: &str = "meta";
pub const TMP_SUFFIX: &str = ".tmp";

/// The kinds of record, one directory each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    Volume,
    Snapshot,
    Group,
    Stage,
    Publish,
}

const CLASSES: [Class; 5] = [
    Class::Volume,
    Class::Snapshot,
    Class::Group,
    Class::Stage,
    Class::Publish,
];

impl Class {
    fn dir(self) -> &'static str {
        match self {
            Class::Volume => "volumes",
            Class::Snapshot => "snapshots",
            Class::Group => "groups",
            Class::Stage => "stages",
            Class::Publish => "publishes",
        }
    }

    /// Whether a write must survive power loss (see the module docs).
    fn durable(self) -> bool {
        matches!(self, Class::Volume | Class::Snapshot | Class::Group)
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    format: u32,
    record: T,
}

/// File name of a stage or publish record: their keys (a CO's path, a volume id) are not
/// all safe file names, so they are hashed.
fn hashed(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut s = String::with_capacity(64 + 5);
    for b in &digest[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str(".json");
    s
}

/// Our ids are `[A-Za-z0-9._-]` and never start with a dot (ids.rs): safe file names.
fn by_id(id: &str) -> String {
    format!("{id}.json")
}

/// The `meta/` directories of one pool, opened beneath its root without following links.
#[derive(Debug)]
pub struct PoolMeta {
    root: PathBuf,
    dirs: HashMap<Class, File>,
}

impl PoolMeta {
    pub fn open(pool: &dyn Backend) -> Result<PoolMeta> {
        let root = pool.root().join(META_DIR);
        let top = sys::fs::open_dir(pool.root()).map_err(Error::io("opening pool", pool.root()))?;
        let meta = sys::fs::ensure_subdir(&top, META_DIR).map_err(Error::io("opening", &root))?;
        let mut dirs = HashMap::new();
        for c in CLASSES {
            let d = sys::fs::ensure_subdir(&meta, c.dir())
                .map_err(Error::io("opening", root.join(c.dir())))?;
            dirs.insert(c, d);
        }
        Ok(PoolMeta { root, dirs })
    }

    fn path(&self, c: Class, name: &str) -> PathBuf {
        self.root.join(c.dir()).join(name)
    }

    /// Replaces `name`. A durable record is replaced atomically (a reader sees the old or
    /// the new one, never a part); a stage or publication record is written in place, one
    /// file operation instead of a temporary file and a rename, because only a lost state
    /// database makes anyone read it, and a record that a crash cut short is skipped then
    /// like any undecodable one: its mount is found by reconciliation as a stray that the
    /// CO's retry adopts, the same as if the crash had come before the record.
    fn put<T: Serialize>(&self, c: Class, name: &str, record: &T) -> Result<()> {
        let dir = &self.dirs[&c];
        let body = serde_json::to_vec(&Envelope {
            format: META_FORMAT,
            record,
        })
        .expect("records are plain data");
        let path = self.path(c, name);
        if !c.durable() {
            let mut f = sys::fs::open_beneath(
                dir,
                name,
                OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY,
                0o600,
            )
            .map_err(Error::io("creating", &path))?;
            return f.write_all(&body).map_err(Error::io("writing", &path));
        }
        let tmp = format!("{name}{TMP_SUFFIX}");
        let mut f = sys::fs::open_beneath(
            dir,
            &tmp,
            OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY,
            0o600,
        )
        .map_err(Error::io("creating", self.path(c, &tmp)))?;
        f.write_all(&body)
            .map_err(Error::io("writing", self.path(c, &tmp)))?;
        sys::fs::sync(&f).map_err(Error::io("fsync", self.path(c, &tmp)))?;
        drop(f);
        nix::fcntl::renameat(dir, tmp.as_str(), dir, name)
            .map_err(|e| Error::io("renaming into", &path)(e.into()))?;
        // The rename itself must reach the disk too.
        dir.sync_all()
            .map_err(Error::io("fsync", self.root.join(c.dir())))?;
        Ok(())
    }

    fn remove(&self, c: Class, name: &str) -> Result<()> {
        sys::fs::unlink_beneath(&self.dirs[&c], name)
            .map(drop)
            .map_err(Error::io("removing", self.path(c, name)))
    }

    fn names(&self, c: Class) -> Result<Vec<String>> {
        let dir = self.root.join(c.dir());
        let mut names = sys::fs::list_names(&dir).map_err(Error::io("listing", &dir))?;
        names.retain(|n| n.ends_with(".json") && !n.starts_with('.'));
        names.sort();
        Ok(names)
    }

    /// Reads one record; a torn, foreign or newer file is reported and skipped (None).
    fn read<T: DeserializeOwned>(&self, c: Class, name: &str) -> Option<T> {
        let path = self.path(c, name);
        let f = match sys::fs::open_beneath(&self.dirs[&c], name, OFlag::O_RDONLY, 0) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading metadata record");
                return None;
            }
        };
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let raw: serde_json::Value = match serde_json::from_reader(std::io::BufReader::new(f)) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "undecodable metadata record");
                return None;
            }
        };
        match serde_json::from_value::<Version>(raw.clone()) {
            Ok(v) if v.format <= META_FORMAT => {}
            Ok(v) => {
                tracing::warn!(path = %path.display(), format = v.format, supported = META_FORMAT,
                    "metadata record of a newer format; left alone");
                return None;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "metadata record without a format");
                return None;
            }
        }
        match serde_json::from_value::<Envelope<T>>(raw) {
            Ok(e) => Some(e.record),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "undecodable metadata record");
                None
            }
        }
    }
}

/// Keeps the pools' records in step with the state database: called by `Store` with the
/// ops of every job before it commits them.
#[derive(Debug)]
pub struct Mirror {
    pools: HashMap<String, PoolMeta>,
}

impl Mirror {
    pub fn open<'a>(
        pools: impl IntoIterator<Item = &'a std::sync::Arc<dyn Backend>>,
    ) -> Result<Mirror> {
        let mut map = HashMap::new();
        for p in pools {
            map.insert(p.pool().to_string(), PoolMeta::open(p.as_ref())?);
        }
        Ok(Mirror { pools: map })
    }

    pub fn pool(&self, name: &str) -> Option<&PoolMeta> {
        self.pools.get(name)
    }

    /// The pool of volume `id`, from this job's ops first, then from the database.
    fn pool_of_volume(&self, store: &Store, ops: &[Op], id: &str) -> Result<Option<String>> {
        for op in ops.iter().rev() {
            if let Op::PutVolume(v) = op
                && v.id == id
            {
                return Ok(Some(v.pool.clone()));
            }
        }
        Ok(store.volume(id)?.map(|v| v.pool))
    }

    /// A group's records go to the pool its id names (that of its first volume).
    fn pool_of_group(id: &str) -> Option<String> {
        ObjectId::parse(id).map(|o| o.pool)
    }

    fn each_pool(&self, c: Class, name: &str) -> Result<()> {
        for p in self.pools.values() {
            p.remove(c, name)?;
        }
        Ok(())
    }

    fn with_pool(
        &self,
        pool: Option<String>,
        f: impl FnOnce(&PoolMeta) -> Result<()>,
    ) -> Result<()> {
        match pool.as_deref().and_then(|p| self.pools.get(p)) {
            Some(pm) => f(pm),
            // A record of an unconfigured pool: nothing to mirror it into.
            None => Ok(()),
        }
    }

    pub fn before_commit(&self, store: &Store, ops: &[Op]) -> Result<()> {
        for op in ops {
            match op {
                Op::PutVolume(v) if v.phase == Phase::Ready => self
                    .with_pool(Some(v.pool.clone()), |pm| {
                        pm.put(Class::Volume, &by_id(&v.id), v)
                    })?,
                Op::PutVolume(_) => {}
                Op::DelVolume(id) => self.each_pool(Class::Volume, &by_id(id))?,
                Op::PutSnapshot(s) if s.phase == Phase::Ready => self
                    .with_pool(Some(s.pool.clone()), |pm| {
                        pm.put(Class::Snapshot, &by_id(&s.id), s)
                    })?,
                Op::PutSnapshot(_) => {}
                Op::DelSnapshot(id) => self.each_pool(Class::Snapshot, &by_id(id))?,
                Op::PutGroup(g) if g.phase == Phase::Ready => self
                    .with_pool(Self::pool_of_group(&g.id), |pm| {
                        pm.put(Class::Group, &by_id(&g.id), g)
                    })?,
                Op::PutGroup(_) => {}
                Op::DelGroup(id) => self.each_pool(Class::Group, &by_id(id))?,
                Op::PutStage(st) => {
                    let pool = self.pool_of_volume(store, ops, &st.volume_id)?;
                    self.with_pool(pool, |pm| pm.put(Class::Stage, &hashed(&st.volume_id), st))?
                }
                Op::DelStage(id) => self.each_pool(Class::Stage, &hashed(id))?,
                Op::PutPublish(p) => {
                    let pool = self.pool_of_volume(store, ops, &p.volume_id)?;
                    let name = hashed(&p.target.to_string_lossy());
                    self.with_pool(pool, |pm| pm.put(Class::Publish, &name, p))?
                }
                Op::DelPublish(t) => {
                    self.each_pool(Class::Publish, &hashed(&t.to_string_lossy()))?
                }
            }
        }
        Ok(())
    }
}

/// A volume or snapshot record, as adoption sees it.
trait Object: Serialize + DeserializeOwned + Clone {
    const CLASS: Class;
    fn id(&self) -> &str;
    fn pool(&self) -> &str;
    fn data(&self) -> DataRef<'_>;
    fn put(self) -> Op;
    /// The record of `id` in the database.
    fn load(store: &Store, id: &str) -> Result<Option<Self>>;
    /// (pool, phase) of every object of this class in the database, by id.
    fn summaries(store: &Store) -> Result<HashMap<String, (String, Phase)>>;
}

impl Object for VolumeRecord {
    const CLASS: Class = Class::Volume;
    fn id(&self) -> &str {
        &self.id
    }
    fn pool(&self) -> &str {
        &self.pool
    }
    fn data(&self) -> DataRef<'_> {
        DataRef::volume(&self.data)
    }
    fn put(self) -> Op {
        Op::PutVolume(self)
    }
    fn load(store: &Store, id: &str) -> Result<Option<Self>> {
        store.volume(id)
    }
    fn summaries(store: &Store) -> Result<HashMap<String, (String, Phase)>> {
        store.volume_summaries()
    }
}

impl Object for SnapshotRecord {
    const CLASS: Class = Class::Snapshot;
    fn id(&self) -> &str {
        &self.id
    }
    fn pool(&self) -> &str {
        &self.pool
    }
    fn data(&self) -> DataRef<'_> {
        DataRef::snapshot(&self.data)
    }
    fn put(self) -> Op {
        Op::PutSnapshot(self)
    }
    fn load(store: &Store, id: &str) -> Result<Option<Self>> {
        store.snapshot(id)
    }
    fn summaries(store: &Store) -> Result<HashMap<String, (String, Phase)>> {
        store.snapshot_summaries()
    }
}

/// Adopts the objects of one class and pool whose database row is missing or still
/// Creating, when their data is there; writes the records of Ready rows that have none.
/// Returns the ids adopted.
fn adopt_objects<T: Object>(
    store: &Store,
    pool: &dyn Backend,
    pm: &PoolMeta,
    db: &HashMap<String, (String, Phase)>,
    ours: &dyn Fn(&str, &str, &Path) -> bool,
    backfilled: &mut usize,
) -> Result<Vec<String>> {
    let what = T::CLASS.dir();
    let mut adopted = Vec::new();
    let mut seen = HashSet::new();
    for name in pm.names(T::CLASS)? {
        let id = name.trim_end_matches(".json");
        seen.insert(id.to_string());
        if db
            .get(id)
            .is_some_and(|(_, phase)| *phase != Phase::Creating)
        {
            continue;
        }
        let path = pm.path(T::CLASS, &name);
        let Some(o) = pm.read::<T>(T::CLASS, &name) else {
            continue;
        };
        if o.id() != id || o.pool() != pool.pool() || !ours(o.id(), what, &path) {
            continue;
        }
        if pool.size(o.data())?.is_none() {
            tracing::warn!(id = %o.id(), path = %path.display(), "{what} record without data; left alone");
            continue;
        }
        adopted.push(o.id().to_string());
        store.write(vec![o.put()])?;
    }
    for (id, (p, phase)) in db {
        if p == pool.pool()
            && *phase == Phase::Ready
            && !seen.contains(id)
            && let Some(o) = T::load(store, id)?
        {
            pm.put(T::CLASS, &by_id(o.id()), &o)?;
            *backfilled += 1;
        }
    }
    Ok(adopted)
}

/// What `adopt` did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub volumes: Vec<String>,
    pub snapshots: Vec<String>,
    pub groups: Vec<String>,
    pub stages: Vec<String>,
    pub publishes: Vec<String>,
    /// Ready objects of the database whose record was missing (written by older
    /// versions) and has been written now.
    pub backfilled: usize,
}

/// Start-up, before reconciliation: brings back into the database every object whose
/// record and data are in a pool but whose database row is missing (a lost or older
/// database) or still says Creating (its Ready commit was lost with the power), and writes
/// the records the database has and the pool lacks.
pub fn adopt(store: &Store, pools: &crate::backend::Pools, node_id: &str) -> Result<Adopted> {
    let mut out = Adopted::default();
    let Some(mirror) = store.mirror() else {
        return Ok(out);
    };
    let ours = |id: &str, what: &str, path: &Path| -> bool {
        match ObjectId::parse(id) {
            Some(o) if o.node == node_id => true,
            Some(o) => {
                tracing::warn!(id, node = %o.node, path = %path.display(),
                    "{what} record of another node's object; left alone");
                false
            }
            None => {
                tracing::warn!(id, path = %path.display(), "{what} record with a malformed id; left alone");
                false
            }
        }
    };
    // Ids, pools and phases only: decoding every record costs start-up time per volume.
    let db_volumes = VolumeRecord::summaries(store)?;
    let db_snaps = SnapshotRecord::summaries(store)?;
    let db_groups: HashSet<String> = store.all_groups()?.into_iter().map(|g| g.id).collect();
    let db_stages: HashSet<String> = store
        .all_stages()?
        .into_iter()
        .map(|s| s.volume_id)
        .collect();
    let db_pubs: HashSet<PathBuf> = store
        .all_publishes()?
        .into_iter()
        .map(|p| p.target)
        .collect();

    for pool in pools.iter() {
        let Some(pm) = mirror.pool(pool.pool()) else {
            continue;
        };
        out.volumes.extend(adopt_objects::<VolumeRecord>(
            store,
            pool.as_ref(),
            pm,
            &db_volumes,
            &ours,
            &mut out.backfilled,
        )?);
        out.snapshots.extend(adopt_objects::<SnapshotRecord>(
            store,
            pool.as_ref(),
            pm,
            &db_snaps,
            &ours,
            &mut out.backfilled,
        )?);

        let mut seen = HashSet::new();
        for name in pm.names(Class::Group)? {
            let id = name.trim_end_matches(".json");
            seen.insert(id.to_string());
            if db_groups.contains(id) {
                continue;
            }
            let path = pm.path(Class::Group, &name);
            let Some(g) = pm.read::<GroupRecord>(Class::Group, &name) else {
                continue;
            };
            if g.id != id || !ours(&g.id, "group snapshot", &path) {
                continue;
            }
            // A group is whole only with all its members.
            let mut whole = true;
            for sid in &g.snapshot_ids {
                whole &= store
                    .snapshot(sid)?
                    .is_some_and(|s| s.phase == Phase::Ready);
            }
            if !whole {
                tracing::warn!(group_id = %g.id, path = %path.display(), "group snapshot record with missing members; left alone");
                continue;
            }
            store.write(vec![Op::PutGroup(g.clone())])?;
            out.groups.push(g.id);
        }
        for g in store.all_groups()? {
            if g.phase == Phase::Ready
                && Mirror::pool_of_group(&g.id).as_deref() == Some(pool.pool())
                && !seen.contains(&g.id)
            {
                pm.put(Class::Group, &by_id(&g.id), &g)?;
                out.backfilled += 1;
            }
        }

        // Stages and publications are node state: adopted only for volumes now known,
        // and reconciliation then checks them against loop devices and mounts.
        for name in pm.names(Class::Stage)? {
            let Some(st) = pm.read::<StageRecord>(Class::Stage, &name) else {
                continue;
            };
            if db_stages.contains(&st.volume_id) || store.volume(&st.volume_id)?.is_none() {
                continue;
            }
            store.write(vec![Op::PutStage(st.clone())])?;
            out.stages.push(st.volume_id);
        }
        for name in pm.names(Class::Publish)? {
            let Some(p) = pm.read::<PublishRecord>(Class::Publish, &name) else {
                continue;
            };
            if db_pubs.contains(&p.target) || store.volume(&p.volume_id)?.is_none() {
                continue;
            }
            store.write(vec![Op::PutPublish(p.clone())])?;
            out.publishes.push(p.target.display().to_string());
        }
    }
    let n = out.volumes.len() + out.snapshots.len() + out.groups.len();
    if n > 0 || !out.stages.is_empty() || !out.publishes.is_empty() {
        tracing::info!(
            volumes = out.volumes.len(),
            snapshots = out.snapshots.len(),
            groups = out.groups.len(),
            stages = out.stages.len(),
            publishes = out.publishes.len(),
            "re-adopted objects from the pools' metadata records"
        );
    }
    if out.backfilled > 0 {
        tracing::info!(
            records = out.backfilled,
            "wrote metadata records the pools lacked"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::test_driver;
    use crate::volumes::CreateArgs;

    fn args(name: &str) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            required: 20 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn records_follow_objects_and_rebuild_a_lost_database() {
        let (p, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = test_driver(p.path(), s.path());
        d.store.set_mirror(Mirror::open(d.pools.iter()).unwrap());
        let v = d.create_volume(args("m-1")).unwrap();
        let gone = d.create_volume(args("m-2")).unwrap();
        let snap = d.create_snapshot("m-snap", &v.id).unwrap();
        d.delete_volume(&gone.id).unwrap();
        let meta = p.path().join("meta");
        assert!(meta.join("volumes").join(by_id(&v.id)).exists());
        assert!(
            !meta.join("volumes").join(by_id(&gone.id)).exists(),
            "removed with its volume"
        );
        assert!(meta.join("snapshots").join(by_id(&snap.id)).exists());
        // Leftovers of an interrupted write and a record of a newer format are skipped.
        std::fs::write(meta.join("volumes/x.json.tmp"), b"{").unwrap();
        std::fs::write(
            meta.join("volumes/n1_p_v00.json"),
            br#"{"format":99,"record":{}}"#,
        )
        .unwrap();

        // The Ready commit lost (power cut): the database still says Creating.
        let mut creating = v.clone();
        creating.phase = Phase::Creating;
        d.store.write(vec![Op::PutVolume(creating)]).unwrap();
        let a = adopt(&d.store, &d.pools, "n1").unwrap();
        assert_eq!(a.volumes, vec![v.id.clone()]);
        assert_eq!(d.store.volume(&v.id).unwrap(), Some(v.clone()));

        // A new, empty database in another state dir gets everything back.
        let s2 = tempfile::tempdir().unwrap();
        let store = Store::open(s2.path()).unwrap();
        store.set_mirror(Mirror::open(d.pools.iter()).unwrap());
        let a = adopt(&store, &d.pools, "n1").unwrap();
        assert_eq!(
            (a.volumes.len(), a.snapshots.len(), a.backfilled),
            (1, 1, 0)
        );
        assert_eq!(store.volume(&v.id).unwrap(), Some(v.clone()));
        assert_eq!(store.snapshot(&snap.id).unwrap(), Some(snap.clone()));
        assert_eq!(store.provisioned("p"), v.capacity);
        // Another node's records are not ours to adopt.
        let s3 = tempfile::tempdir().unwrap();
        let store = Store::open(s3.path()).unwrap();
        store.set_mirror(Mirror::open(d.pools.iter()).unwrap());
        assert_eq!(adopt(&store, &d.pools, "n2").unwrap(), Adopted::default());
        assert!(store.all_volumes().unwrap().is_empty());
    }
}

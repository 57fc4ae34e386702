//! Self-describing pools: every volume, snapshot and group snapshot carries a small JSON
//! record beside its data, under `<pool>/meta/`, so that the pool alone says what it holds.
//!
//! Guarantees:
//! - A ready volume, snapshot or group survives power loss once the state database has
//!   committed it, so before the CO is answered, for the price of one device flush shared
//!   by concurrent writers: its record file is written (tmp file and rename, no flush),
//!   then an entry holding the same record is appended to the pool's journal
//!   (journal.rs: a slot of a preallocated file, `fdatasync`, group commit). Start-up
//!   replays the entries not yet checkpointed: it writes their record files again and
//!   makes an empty volume's missing directory, image or subvolume again (with its quota,
//!   `Backend::grow`); the data of a volume made from a source or of a snapshot was
//!   flushed by the copy itself (`syncfs`, `fsync`, btrfs's transaction) before the entry.
//!   A record larger than a journal slot (a group of many members) is written as before
//!   (tmp file, fsync, rename, directory fsync) and journaled as `Forget`.
//!   Power loss can drop the database's last 100 ms (state.rs); it cannot drop an
//!   acknowledged object, which replay and `adopt` bring back.
//! - A create of an empty volume journals its intent (unflushed) before it makes the
//!   data, instead of committing a Creating record to the database: replay removes the
//!   data and record of an intent that no Put or Del closed (a create cut short), as
//!   reconciliation rolls back a Creating record.
//! - A record is removed after the object's data and before the database forgets the
//!   object, so a record without data never describes a live object. When the journal
//!   still holds the record's entry, a tombstone entry is flushed first, so that replay
//!   cannot make a deleted volume again; otherwise removals are not flushed (as before:
//!   power loss shortly after a delete can bring back the record of an object whose data
//!   is back too).
//! - Stages and publications get a record too (`meta/stages`, `meta/publishes`), written
//!   in place without fsync: they describe mounts, which a power loss ends anyway, and
//!   NodePublish stays a few microseconds slower, not a disk flush slower. Publication
//!   records are slots of one file, `meta/publishes/slots` (slots.rs: one pwrite to write
//!   or clear, no inode made or freed), or files when too large for a slot. A publication's
//!   record is what a killed driver keeps of it: the database commits publications up to
//!   `state::SYNC_INTERVAL` later, and `adopt` puts a record the database lacks or holds
//!   otherwise back in it.
//! - If the state database is lost, `adopt` rebuilds its records from these files at
//!   start-up (reconciliation then checks them against the data, loop devices and mounts);
//!   a database that lacks a record for an object whose record and data exist gets it back.
//!
//! It knows only pools (their root directories) and state records, so every backend gets
//! it for free.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, DataRef};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::ids::ObjectId;
use crate::journal::{self, Journal, Kind};
use crate::slots::{SLOTS_FILE, Slots};
use crate::state::{
    GroupRecord, Op, Phase, PublishRecord, SnapshotRecord, StageRecord, Store, VolumeRecord,
};
use crate::sys;

/// Format of the files written here; a newer one is left alone, never misread.
pub const META_FORMAT: u32 = 1;
pub const META_DIR: &str = "meta";
pub const TMP_SUFFIX: &str = ".tmp";
/// `meta/spare/`: record files of removed objects, kept to be written again (`Spare`).
pub const SPARE_DIR: &str = "spare";
/// Most spare record files a pool keeps; past it, removed records are unlinked.
const SPARE_MAX: usize = 1024;

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

    /// The class's number in journal entries (durable classes only).
    fn code(self) -> u8 {
        match self {
            Class::Volume => 1,
            Class::Snapshot => 2,
            Class::Group => 3,
            Class::Stage => 4,
            Class::Publish => 5,
        }
    }

    fn from_code(c: u8) -> Option<Class> {
        CLASSES.into_iter().find(|k| k.code() == c && k.durable())
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut s = String::with_capacity(32 + 5);
    for b in &digest[..16] {
        s.push(HEX[usize::from(b >> 4)].into());
        s.push(HEX[usize::from(b & 15)].into());
    }
    s.push_str(".json");
    s
}

/// Our ids are `[A-Za-z0-9._-]` and never start with a dot (ids.rs): safe file names.
fn by_id(id: &str) -> String {
    format!("{id}.json")
}

/// Record files of removed volumes, snapshots and groups, renamed into `meta/spare/`
/// (named by a counter) instead of unlinked, and renamed back over a new record's name
/// once it is written into one: a new record then costs no inode allocation and a
/// removal no inode release. On ext4 without a journal, allocating an inode skips every
/// inode freed in the last minutes (`recently_deleted`), reading each one's table
/// block: with volumes created and deleted by the thousand, that was a fifth of
/// CreateVolume's CPU. A spare's content is an old record; nothing reads `spare/`
/// (`adopt`, replay and `volctl node inspect` read the class directories only).
#[derive(Debug)]
struct Spare {
    dir: File,
    path: PathBuf,
    /// (names on hand, next name)
    names: std::sync::Mutex<(Vec<u64>, u64)>,
}

impl Spare {
    fn open(meta: &File, meta_path: &Path) -> Result<Spare> {
        let path = meta_path.join(SPARE_DIR);
        let dir = sys::fs::ensure_subdir(meta, SPARE_DIR).map_err(Error::io("opening", &path))?;
        let names: Vec<u64> = sys::fs::list_names(&path)
            .map_err(Error::io("listing", &path))?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        let next = names.iter().max().map_or(0, |m| m + 1);
        Ok(Spare {
            dir,
            path,
            names: std::sync::Mutex::new((names, next)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u64>, u64)> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A spare file opened for writing, with its name; None when there is none.
    fn take(&self) -> Option<(u64, File)> {
        loop {
            let n = self.lock().0.pop()?;
            let name = n.to_string();
            match sys::fs::open_beneath(&self.dir, &name, OFlag::O_WRONLY, 0) {
                // One name only: a file that is also some record (a rename that power
                // loss left half done) must never be written over.
                Ok(f)
                    if f.metadata().is_ok_and(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.nlink() == 1 && m.is_file()
                    }) =>
                {
                    return Some((n, f));
                }
                Ok(_) => {
                    let _ = sys::fs::unlink_beneath(&self.dir, &name);
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.join(&name).display(), error = %e,
                        "opening a spare record file");
                }
            }
        }
    }

    /// Gives back a spare taken but not used.
    fn put_back(&self, n: u64) {
        self.lock().0.push(n);
    }

    /// Removes `name` from `dir`: renamed in here while there is room, else unlinked.
    /// Returns whether it was there.
    fn give(&self, dir: &File, name: &str) -> std::io::Result<bool> {
        let n = {
            let mut g = self.lock();
            if g.0.len() >= SPARE_MAX {
                None
            } else {
                g.1 += 1;
                Some(g.1 - 1)
            }
        };
        let Some(n) = n else {
            return sys::fs::unlink_beneath(dir, name);
        };
        match nix::fcntl::renameat(dir, name, &self.dir, n.to_string().as_str()) {
            Ok(()) => {
                self.lock().0.push(n);
                Ok(true)
            }
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// The `meta/` directories of one pool, opened beneath its root without following links,
/// and its journal.
#[derive(Debug)]
pub struct PoolMeta {
    root: PathBuf,
    dirs: HashMap<Class, File>,
    spare: Spare,
    journal: Journal,
    /// Publication records (slots.rs).
    publishes: Slots,
}

/// What a replay did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Record files written again.
    pub records: usize,
    /// Record files removed (tombstones).
    pub removed: usize,
    /// Volumes whose data (directory, image, subvolume) was made again.
    pub remade: Vec<String>,
    /// Creates cut short (an intent never closed): their data objects, removed.
    pub undone: Vec<String>,
}

impl PoolMeta {
    /// Opens the pool's `meta/` and replays its journal (see the module docs).
    pub fn open(pool: &dyn Backend) -> Result<PoolMeta> {
        Self::open_replayed(pool).map(|(pm, _)| pm)
    }

    pub fn open_replayed(pool: &dyn Backend) -> Result<(PoolMeta, Replayed)> {
        let root = pool.root().join(META_DIR);
        let top = sys::fs::open_dir(pool.root()).map_err(Error::io("opening pool", pool.root()))?;
        let meta = sys::fs::ensure_subdir(&top, META_DIR).map_err(Error::io("opening", &root))?;
        let mut dirs = HashMap::new();
        for c in CLASSES {
            let d = sys::fs::ensure_subdir(&meta, c.dir())
                .map_err(Error::io("opening", root.join(c.dir())))?;
            dirs.insert(c, d);
        }
        let spare = Spare::open(&meta, &root)?;
        let publishes = open_slots(&dirs[&Class::Publish], &root.join(Class::Publish.dir()))?;
        let (journal, entries) = Journal::open(&meta, &root, top)?;
        let mut pm = PoolMeta {
            root,
            dirs,
            spare,
            journal,
            publishes,
        };
        let replayed = pm.replay(pool, entries)?;
        pm.journal.resume()?;
        if replayed != Replayed::default() {
            tracing::info!(pool = pool.pool(), records = replayed.records, removed = replayed.removed,
                remade = ?replayed.remade, undone = ?replayed.undone, "replayed the pool's metadata journal");
        }
        Ok((pm, replayed))
    }

    /// Applies the entries written since the last checkpoint: the last Put, Del, Forget or
    /// Intent of each record decides (a Used after a Put keeps the volume's data from being
    /// made again). Every step is idempotent, so a crash during the replay only repeats it.
    fn replay(&self, pool: &dyn Backend, entries: Vec<journal::Entry>) -> Result<Replayed> {
        struct Last {
            seq: u64,
            kind: Kind,
            body: Vec<u8>,
            used: bool,
        }
        let mut out = Replayed::default();
        let mut last: HashMap<(u8, String), Last> = HashMap::new();
        for e in entries {
            let key = (e.class, e.name);
            match e.kind {
                Kind::Used => {
                    if let Some(l) = last.get_mut(&key) {
                        l.used = true;
                    } else {
                        // The Put is older than the checkpoint: nothing to replay.
                    }
                }
                Kind::Put => {
                    let used = last
                        .get(&key)
                        .is_some_and(|l| l.kind == Kind::Put && l.used);
                    last.insert(
                        key,
                        Last {
                            seq: e.seq,
                            kind: e.kind,
                            body: e.body,
                            used,
                        },
                    );
                }
                Kind::Del | Kind::Forget | Kind::Intent => {
                    let body = if e.kind == Kind::Intent {
                        e.body
                    } else {
                        Vec::new()
                    };
                    last.insert(
                        key,
                        Last {
                            seq: e.seq,
                            kind: e.kind,
                            body,
                            used: false,
                        },
                    );
                }
            }
        }
        let mut last: Vec<_> = last.into_iter().collect();
        last.sort_by_key(|(_, l)| l.seq);
        for ((class, name), l) in last {
            let Some(c) = Class::from_code(class) else {
                tracing::warn!(class, name = %name, "journal entry of an unknown class; skipped");
                continue;
            };
            if name.contains('/') || name.starts_with('.') || !name.ends_with(".json") {
                tracing::warn!(name = %name, "journal entry with a bad record name; skipped");
                continue;
            }
            match l.kind {
                Kind::Forget | Kind::Used => {}
                Kind::Intent => {
                    // A create that never got its Put: not acknowledged, so undone, data
                    // first (its record, if written, claims the data).
                    if c == Class::Volume {
                        let data = String::from_utf8_lossy(&l.body).into_owned();
                        if pool.remove(DataRef::volume(&data))? {
                            out.undone.push(data);
                        }
                    }
                    if sys::fs::unlink_beneath(&self.dirs[&c], &name)
                        .map_err(Error::io("removing", self.path(c, &name)))?
                    {
                        out.removed += 1;
                    }
                }
                Kind::Del => {
                    if sys::fs::unlink_beneath(&self.dirs[&c], &name)
                        .map_err(Error::io("removing", self.path(c, &name)))?
                    {
                        out.removed += 1;
                    }
                }
                Kind::Put => {
                    if c == Class::Volume && !l.used {
                        match serde_json::from_slice::<Envelope<VolumeRecord>>(&l.body) {
                            Ok(env) => {
                                if self.remake_volume(pool, &env.record)? {
                                    out.remade.push(env.record.id);
                                }
                            }
                            Err(err) => {
                                tracing::warn!(name = %name, error = %err, "undecodable volume record in the journal");
                            }
                        }
                    }
                    self.write_record(c, &name, &l.body, false)?;
                    out.records += 1;
                }
            }
        }
        Ok(out)
    }

    /// A create of volume `id` without a content source is about to make its data object
    /// `data`: the intent is journaled, not flushed (`Kind::Intent`), so that replay
    /// undoes the create unless its Put follows. It stands for the Creating record the
    /// state database would otherwise commit first (a transaction of its own).
    pub fn intend(&self, id: &str, data: &str) -> Result<()> {
        self.journal
            .append(
                Kind::Intent,
                Class::Volume.code(),
                &by_id(id),
                data.as_bytes(),
            )
            .map(drop)
    }

    /// The create of volume `id` gave up after `intend` and removed its data: its record,
    /// if written, goes too, and a Del closes the intent (not flushed: replay of the
    /// intent, or of a flushed Put, then the database's lack of the volume, are what a
    /// power cut leaves, and the CO's retry settles either).
    pub fn abandon(&self, id: &str) -> Result<()> {
        let name = by_id(id);
        self.remove(Class::Volume, &name)?;
        self.journal
            .append(Kind::Del, Class::Volume.code(), &name, b"")
            .map(drop)
    }

    /// A stage of volume `id`: from now on replay must not replace its data (see
    /// `Kind::Used`). Only while the journal still holds its record; not flushed.
    fn staged(&self, id: &str) -> Result<()> {
        let name = by_id(id);
        if self.journal.is_live(Class::Volume.code(), &name) {
            self.journal
                .append(Kind::Used, Class::Volume.code(), &name, b"")?;
        }
        Ok(())
    }

    /// The data of a journaled volume: made again (empty) when missing, and grown to its
    /// size (a quota or length that did not reach the disk). Returns whether it was made.
    fn remake_volume(&self, pool: &dyn Backend, v: &VolumeRecord) -> Result<bool> {
        if v.pool != pool.pool() {
            return Ok(false);
        }
        let data = DataRef::volume(&v.data);
        match pool.size(data)? {
            Some(_) => {
                pool.grow(data, v.capacity)?;
                Ok(false)
            }
            None if v.source.is_none() => {
                tracing::warn!(volume_id = %v.id, path = %pool.path(data).display(),
                    "volume data lost with the power; made again (empty, as it was created)");
                pool.create(data, v.capacity, None)?;
                Ok(true)
            }
            None => {
                tracing::error!(volume_id = %v.id, path = %pool.path(data).display(),
                    "data of a volume made from a content source is missing; left alone");
                Ok(false)
            }
        }
    }

    /// Replaces record file `name` atomically (a spare or tmp file, then a rename).
    /// Without `flush` the journal entry written after it is what survives power loss;
    /// with it (a record too large for a journal slot) the file and the rename are fsynced
    /// here.
    fn write_record(&self, c: Class, name: &str, body: &[u8], flush: bool) -> Result<()> {
        let dir = &self.dirs[&c];
        if let Some((n, f)) = self.spare.take() {
            let spare = n.to_string();
            let spare_path = self.spare.path.join(&spare);
            let written = (|| {
                f.write_all_at(body, 0)
                    .and_then(|()| f.set_len(body.len() as u64))
                    .map_err(Error::io("writing", &spare_path))?;
                if flush {
                    sys::fs::sync(&f).map_err(Error::io("fsync", &spare_path))?;
                }
                Ok::<_, Error>(())
            })();
            drop(f);
            if let Err(e) = written {
                self.spare.put_back(n);
                return Err(e);
            }
            nix::fcntl::renameat(&self.spare.dir, spare.as_str(), dir, name).map_err(|e| {
                self.spare.put_back(n);
                Error::io("renaming into", self.path(c, name))(e.into())
            })?;
            if flush {
                dir.sync_all()
                    .map_err(Error::io("fsync", self.root.join(c.dir())))?;
            }
            return Ok(());
        }
        let tmp = format!("{name}{TMP_SUFFIX}");
        let mut f = sys::fs::open_beneath(
            dir,
            &tmp,
            OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY,
            0o600,
        )
        .map_err(Error::io("creating", self.path(c, &tmp)))?;
        f.write_all(body)
            .map_err(Error::io("writing", self.path(c, &tmp)))?;
        if flush {
            sys::fs::sync(&f).map_err(Error::io("fsync", self.path(c, &tmp)))?;
        }
        drop(f);
        nix::fcntl::renameat(dir, tmp.as_str(), dir, name)
            .map_err(|e| Error::io("renaming into", self.path(c, name))(e.into()))?;
        if flush {
            // The rename itself must reach the disk too.
            dir.sync_all()
                .map_err(Error::io("fsync", self.root.join(c.dir())))?;
        }
        Ok(())
    }

    /// The journal (tests and benchmarks read its flush count).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn path(&self, c: Class, name: &str) -> PathBuf {
        self.root.join(c.dir()).join(name)
    }

    /// Replaces `name`. A durable record is replaced atomically (a reader sees the old or
    /// the new one, never a part) and journaled: the returned entry must be flushed
    /// (`Journal::wait`) before the object is acknowledged. A stage or publication record
    /// is written in place, one file operation instead of a temporary file and a rename,
    /// because only a lost state database makes anyone read it, and a record that a crash
    /// cut short is skipped then like any undecodable one: its mount is found by
    /// reconciliation as a stray that the CO's retry adopts, the same as if the crash had
    /// come before the record.
    fn put<T: Serialize>(&self, c: Class, name: &str, record: &T) -> Result<Option<u64>> {
        let dir = &self.dirs[&c];
        let body = serde_json::to_vec(&Envelope {
            format: META_FORMAT,
            record,
        })
        .expect("records are plain data");
        let path = self.path(c, name);
        if c == Class::Publish {
            return self.put_publication(name, &body).map(|()| None);
        }
        if !c.durable() {
            let mut f = sys::fs::open_beneath(
                dir,
                name,
                OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY,
                0o600,
            )
            .map_err(Error::io("creating", &path))?;
            f.write_all(&body).map_err(Error::io("writing", &path))?;
            return Ok(None);
        }
        if name.len() + body.len() > journal::MAX_PAYLOAD {
            self.write_record(c, name, &body, true)?;
            // An older entry of this record must not replace it at replay.
            return self
                .journal
                .append(Kind::Forget, c.code(), name, b"")
                .map(Some);
        }
        // Record first, entry second: a checkpoint that covers the entry covers the file.
        self.write_record(c, name, &body, false)?;
        if c == Class::Volume {
            failpoint::hit("create_volume:after_record");
        }
        match self.journal.append(Kind::Put, c.code(), name, &body) {
            Ok(seq) => Ok(Some(seq)),
            Err(e) => {
                // Not acknowledged: leave no record that claims the object is ready.
                let _ = sys::fs::unlink_beneath(dir, name);
                Err(e)
            }
        }
    }

    /// Removes record `name`; returns the tombstone entry to flush when the journal still
    /// holds the record (else replay would write it again).
    fn remove_journaled(&self, c: Class, name: &str) -> Result<Option<u64>> {
        self.remove(c, name)?;
        if c.durable() && self.journal.is_live(c.code(), name) {
            return self
                .journal
                .append(Kind::Del, c.code(), name, b"")
                .map(Some);
        }
        Ok(None)
    }

    /// A publication record into its slot, or into a file when it does not fit one. The
    /// old copy goes after the new one is written when a slot replaces a file (the slot
    /// wins at adoption), and before when a file replaces a slot, so that no older copy
    /// can outlive a crash in between.
    fn put_publication(&self, name: &str, body: &[u8]) -> Result<()> {
        let dir = &self.dirs[&Class::Publish];
        let path = self.path(Class::Publish, name);
        if self
            .publishes
            .put(name, body)
            .map_err(Error::io("writing", self.slots_path()))?
        {
            if self.publishes.has_file(name) {
                sys::fs::unlink_beneath(dir, name).map_err(Error::io("removing", &path))?;
                self.publishes.file_written(name, false);
            }
            return Ok(());
        }
        self.publishes
            .clear(name)
            .map_err(Error::io("writing", self.slots_path()))?;
        let mut f = sys::fs::open_beneath(
            dir,
            name,
            OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_WRONLY,
            0o600,
        )
        .map_err(Error::io("creating", &path))?;
        self.publishes.file_written(name, true);
        f.write_all(body).map_err(Error::io("writing", &path))?;
        Ok(())
    }

    fn slots_path(&self) -> PathBuf {
        self.root.join(Class::Publish.dir()).join(SLOTS_FILE)
    }

    /// Every publication record: files, then slots (which win for the same target).
    fn publications(&self) -> Result<Vec<PublishRecord>> {
        let mut out: HashMap<PathBuf, PublishRecord> = HashMap::new();
        for name in self.names(Class::Publish)? {
            if let Some(p) = self.read::<PublishRecord>(Class::Publish, &name) {
                out.insert(p.target.clone(), p);
            }
        }
        let bodies = self
            .publishes
            .bodies()
            .map_err(Error::io("reading", self.slots_path()))?;
        for body in bodies {
            match decode::<PublishRecord>(&body) {
                Ok(p) => {
                    out.insert(p.target.clone(), p);
                }
                Err(e) => {
                    tracing::warn!(path = %self.slots_path().display(), error = %e, "publication record in a slot skipped");
                }
            }
        }
        let mut out: Vec<_> = out.into_values().collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(out)
    }

    fn remove(&self, c: Class, name: &str) -> Result<()> {
        let dir = &self.dirs[&c];
        if c == Class::Publish {
            self.publishes
                .clear(name)
                .map_err(Error::io("writing", self.slots_path()))?;
            if self.publishes.has_file(name) {
                sys::fs::unlink_beneath(dir, name)
                    .map_err(Error::io("removing", self.path(c, name)))?;
                self.publishes.file_written(name, false);
            }
            return Ok(());
        }
        if c.durable() {
            // Written again and again by creates: kept for the next one.
            return self
                .spare
                .give(dir, name)
                .map(drop)
                .map_err(Error::io("removing", self.path(c, name)));
        }
        sys::fs::unlink_beneath(dir, name)
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

/// A record's body as its file holds it; an error for a torn, foreign or newer one.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> std::result::Result<T, String> {
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    let v: Version = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if v.format > META_FORMAT {
        return Err(format!(
            "format {} is newer than this build reads ({META_FORMAT})",
            v.format
        ));
    }
    serde_json::from_slice::<Envelope<T>>(body)
        .map(|e| e.record)
        .map_err(|e| e.to_string())
}

/// Opens (creating) the publication slots file in `dir` and indexes it with the record
/// files beside it.
fn open_slots(dir: &File, path: &Path) -> Result<Slots> {
    let file = sys::fs::open_beneath(dir, SLOTS_FILE, OFlag::O_CREAT | OFlag::O_RDWR, 0o600)
        .map_err(Error::io("opening", path.join(SLOTS_FILE)))?;
    let files = sys::fs::list_names(path)
        .map_err(Error::io("listing", path))?
        .into_iter()
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    Slots::open(file, files, |body| {
        decode::<PublishRecord>(body)
            .ok()
            .map(|p| hashed(&p.target.to_string_lossy()))
    })
    .map_err(Error::io("reading", path.join(SLOTS_FILE)))
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
        store.volume_pool(id)
    }

    /// A group's records go to the pool its id names (that of its first volume).
    fn pool_of_group(id: &str) -> Option<String> {
        ObjectId::parse(id).map(|o| o.pool)
    }

    fn each_pool(&self, c: Class, name: &str, flush: &mut Flush) -> Result<()> {
        for (pool, pm) in &self.pools {
            if let Some(seq) = pm.remove_journaled(c, name)? {
                flush.add(pool, seq);
            }
        }
        Ok(())
    }

    fn with_pool(
        &self,
        pool: Option<String>,
        flush: &mut Flush,
        f: impl FnOnce(&PoolMeta) -> Result<Option<u64>>,
    ) -> Result<()> {
        match pool.as_deref().and_then(|p| self.pools.get_key_value(p)) {
            Some((name, pm)) => {
                if let Some(seq) = f(pm)? {
                    flush.add(name, seq);
                }
                Ok(())
            }
            // A record of an unconfigured pool: nothing to mirror it into.
            None => Ok(()),
        }
    }

    /// Writes the records `ops` change, then flushes each pool's journal once (the
    /// entries of concurrent jobs share the flush): after this the job's durable records
    /// survive power loss, and the database may commit it.
    pub fn before_commit(&self, store: &Store, ops: &[Op]) -> Result<()> {
        let mut flush = Flush::default();
        for op in ops {
            match op {
                Op::PutVolume(v) if v.phase == Phase::Ready => {
                    self.with_pool(Some(v.pool.clone()), &mut flush, |pm| {
                        pm.put(Class::Volume, &by_id(&v.id), v)
                    })?
                }
                Op::PutVolume(_) => {}
                Op::DelVolume(id) => self.each_pool(Class::Volume, &by_id(id), &mut flush)?,
                Op::PutSnapshot(s) if s.phase == Phase::Ready => {
                    self.with_pool(Some(s.pool.clone()), &mut flush, |pm| {
                        pm.put(Class::Snapshot, &by_id(&s.id), s)
                    })?
                }
                Op::PutSnapshot(_) => {}
                Op::DelSnapshot(id) => self.each_pool(Class::Snapshot, &by_id(id), &mut flush)?,
                Op::PutGroup(g) if g.phase == Phase::Ready => {
                    self.with_pool(Self::pool_of_group(&g.id), &mut flush, |pm| {
                        pm.put(Class::Group, &by_id(&g.id), g)
                    })?
                }
                Op::PutGroup(_) => {}
                Op::DelGroup(id) => self.each_pool(Class::Group, &by_id(id), &mut flush)?,
                Op::PutStage(st) => {
                    let pool = self.pool_of_volume(store, ops, &st.volume_id)?;
                    self.with_pool(pool, &mut flush, |pm| {
                        pm.staged(&st.volume_id)?;
                        pm.put(Class::Stage, &hashed(&st.volume_id), st)
                    })?
                }
                Op::DelStage(id) => self.each_pool(Class::Stage, &hashed(id), &mut flush)?,
                Op::PutPublish(p) => {
                    let pool = self.pool_of_volume(store, ops, &p.volume_id)?;
                    let name = hashed(&p.target.to_string_lossy());
                    self.with_pool(pool, &mut flush, |pm| pm.put(Class::Publish, &name, p))?
                }
                Op::DelPublish(t) => {
                    self.each_pool(Class::Publish, &hashed(&t.to_string_lossy()), &mut flush)?
                }
            }
        }
        for (pool, seq) in flush.0 {
            self.pools[&pool].journal.wait(seq)?;
        }
        if ops
            .iter()
            .any(|op| matches!(op, Op::PutVolume(v) if v.phase == Phase::Ready))
        {
            failpoint::hit("create_volume:after_journal");
        }
        Ok(())
    }
}

/// The last journal entry per pool that a job must flush.
#[derive(Default)]
struct Flush(HashMap<String, u64>);

impl Flush {
    fn add(&mut self, pool: &str, seq: u64) {
        let e = self.0.entry(pool.to_string()).or_insert(seq);
        *e = (*e).max(seq);
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
    well_formed: &dyn Fn(&str, &str, &Path) -> bool,
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
        if o.id() != id || o.pool() != pool.pool() || !well_formed(o.id(), what, &path) {
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
            if let Some(seq) = pm.put(T::CLASS, &by_id(o.id()), &o)? {
                pm.journal.wait(seq)?;
            }
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
    /// Of the objects adopted, how many each other node made (a pool moved here).
    pub other_nodes: BTreeMap<String, usize>,
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
    // Another node's ids are adopted too: their pool moved here (or this node was
    // renamed), and the CO still knows the objects by those ids.
    let well_formed = |id: &str, what: &str, path: &Path| -> bool {
        match ObjectId::parse(id) {
            Some(_) => true,
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
    let db_pubs: HashMap<PathBuf, PublishRecord> = store
        .all_publishes()?
        .into_iter()
        .map(|p| (p.target.clone(), p))
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
            &well_formed,
            &mut out.backfilled,
        )?);
        out.snapshots.extend(adopt_objects::<SnapshotRecord>(
            store,
            pool.as_ref(),
            pm,
            &db_snaps,
            &well_formed,
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
            if g.id != id || !well_formed(&g.id, "group snapshot", &path) {
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
                if let Some(seq) = pm.put(Class::Group, &by_id(&g.id), &g)? {
                    pm.journal.wait(seq)?;
                }
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
        for p in pm.publications()? {
            // The database commits publications after their records (state.rs): one that
            // holds another record for the target missed a later change.
            if db_pubs.get(&p.target) == Some(&p) || store.volume(&p.volume_id)?.is_none() {
                continue;
            }
            store.write_publication(Op::PutPublish(p.clone()))?;
            out.publishes.push(p.target.display().to_string());
        }
    }
    // One line for all of another node's objects, not one per object.
    for id in out.volumes.iter().chain(&out.snapshots).chain(&out.groups) {
        if let Some(o) = ObjectId::parse(id)
            && o.node != node_id
        {
            *out.other_nodes.entry(o.node).or_default() += 1;
        }
    }
    if !out.other_nodes.is_empty() {
        tracing::warn!(
            nodes = ?out.other_nodes,
            this_node = node_id,
            "adopted objects made on other nodes: their pool moved here or this node was \
             renamed; their ids keep naming the node they were made on, and the CO must now \
             place them on this node (e.g. PVs with this node's topology)"
        );
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

    /// A test driver on a temporary pool and state dir, with the pools' record mirror on as
    /// the server sets it up. Bind as `(pool, state, driver)`: locals drop in reverse, so
    /// the driver goes before its directories.
    fn mirrored_driver() -> (tempfile::TempDir, tempfile::TempDir, crate::driver::Driver) {
        let (p, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = test_driver(p.path(), s.path());
        d.store.set_mirror(Mirror::open(d.pools.iter()).unwrap());
        (p, s, d)
    }

    /// A publication of `volume_id` at `target`; `args` tells versions apart.
    fn publish_record(volume_id: &str, target: &str, args: &str) -> PublishRecord {
        PublishRecord {
            target: target.into(),
            volume_id: volume_id.into(),
            staging_path: "/s".into(),
            readonly: false,
            block: false,
            access_mode: 1,
            args: args.into(),
            device: None,
        }
    }

    fn args(name: &str) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            required: 20 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn records_follow_objects_and_rebuild_a_lost_database() {
        let (p, _s, d) = mirrored_driver();
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
        // One process at a time owns a pool's journal.
        let pools = d.pools.clone();
        drop(d);

        // A new, empty database in another state dir gets everything back.
        let s2 = tempfile::tempdir().unwrap();
        let store = Store::open(s2.path()).unwrap();
        store.set_mirror(Mirror::open(pools.iter()).unwrap());
        let a = adopt(&store, &pools, "n1").unwrap();
        assert_eq!(
            (a.volumes.len(), a.snapshots.len(), a.backfilled),
            (1, 1, 0)
        );
        assert_eq!(store.volume(&v.id).unwrap(), Some(v.clone()));
        assert_eq!(store.snapshot(&snap.id).unwrap(), Some(snap.clone()));
        assert_eq!(store.provisioned("p"), v.capacity);
        // The pool moved to node n2: its objects are adopted there under their ids.
        drop(store);
        let s3 = tempfile::tempdir().unwrap();
        let store = Store::open(s3.path()).unwrap();
        store.set_mirror(Mirror::open(pools.iter()).unwrap());
        let a = adopt(&store, &pools, "n2").unwrap();
        assert_eq!((a.volumes.len(), a.snapshots.len()), (1, 1));
        assert_eq!(a.other_nodes, BTreeMap::from([("n1".to_string(), 2)]));
        assert_eq!(store.volume(&v.id).unwrap(), Some(v.clone()));
    }

    /// Power loss right after the replies: everything not flushed is gone (here: the
    /// volumes' data and record files, the whole database), a delete's unlink too. The
    /// journal brings back what was acknowledged, and only that.
    #[test]
    fn the_journal_brings_back_acknowledged_creates_after_power_loss() {
        let (p, _s, d) = mirrored_driver();
        d.store
            .mirror()
            .unwrap()
            .pool("p")
            .unwrap()
            .journal()
            .pause_checkpoints();
        let v1 = d.create_volume(args("pl-1")).unwrap();
        let v2 = d.create_volume(args("pl-2")).unwrap();
        let v3 = d.create_volume(args("pl-3")).unwrap();
        let v2_record = std::fs::read(p.path().join("meta/volumes").join(by_id(&v2.id))).unwrap();
        d.delete_volume(&v2.id).unwrap();
        let pools = d.pools.clone();
        drop(d);

        let meta = p.path().join("meta/volumes");
        for v in [&v1, &v3] {
            std::fs::remove_file(pools.get("p").unwrap().path(DataRef::volume(&v.data))).unwrap();
            std::fs::remove_file(meta.join(by_id(&v.id))).unwrap();
        }
        // The deleted volume's unlink did not reach the disk.
        std::fs::write(meta.join(by_id(&v2.id)), &v2_record).unwrap();

        let s2 = tempfile::tempdir().unwrap();
        let store = Store::open(s2.path()).unwrap();
        let (pm, replayed) = PoolMeta::open_replayed(pools.get("p").unwrap().as_ref()).unwrap();
        let mut remade = replayed.remade.clone();
        remade.sort();
        assert_eq!(remade, vec![v1.id.clone(), v3.id.clone()]);
        assert_eq!(
            replayed.removed, 1,
            "the tombstone removes the deleted volume's record"
        );
        drop(pm);
        store.set_mirror(Mirror::open(pools.iter()).unwrap());
        let a = adopt(&store, &pools, "n1").unwrap();
        let mut got = a.volumes.clone();
        got.sort();
        assert_eq!(got, vec![v1.id.clone(), v3.id.clone()]);
        assert_eq!(store.volume(&v1.id).unwrap(), Some(v1.clone()));
        assert_eq!(store.volume(&v2.id).unwrap(), None);
        for v in [&v1, &v3] {
            let data = pools
                .get("p")
                .unwrap()
                .size(DataRef::volume(&v.data))
                .unwrap();
            assert_eq!(data, Some(v.capacity), "{} made again at its size", v.id);
        }

        // After a checkpoint the journal no longer describes them: a later loss of a
        // record file is a loss (the checkpoint's syncfs put it on disk first).
        let m = store.mirror().unwrap().pool("p").unwrap();
        m.journal().checkpoint_now().unwrap();
        drop(store);
        std::fs::remove_file(meta.join(by_id(&v1.id))).unwrap();
        let (_pm, replayed) = PoolMeta::open_replayed(pools.get("p").unwrap().as_ref()).unwrap();
        assert_eq!(replayed, Replayed::default());
    }

    /// Publication records live in the pool's slots file; one too large for a slot is a
    /// file, and a file an older version wrote is adopted, and removed when its
    /// publication is written again or removed.
    #[test]
    fn publication_records_are_slots_and_files_only_when_too_large() {
        let (p, _s, d) = mirrored_driver();
        let v = d.create_volume(args("slot-1")).unwrap();
        let rec = |target: &str, args: &str| publish_record(&v.id, target, args);
        let dir = p.path().join("meta/publishes");
        let files = || {
            let mut n = sys::fs::list_names(&dir).unwrap();
            n.retain(|n| n.ends_with(".json"));
            n.sort();
            n
        };
        let slots_used = || crate::slots::any_used(&std::fs::read(dir.join(SLOTS_FILE)).unwrap());
        d.store
            .write_publication(Op::PutPublish(rec("/t/a", "a")))
            .unwrap();
        assert!(files().is_empty() && slots_used(), "in a slot");
        let big = "x".repeat(crate::slots::SLOT);
        d.store
            .write_publication(Op::PutPublish(rec("/t/a", &big)))
            .unwrap();
        assert_eq!(files(), vec![hashed("/t/a")]);
        assert!(!slots_used(), "moved out of its slot");
        d.store
            .write_publication(Op::PutPublish(rec("/t/a", "small again")))
            .unwrap();
        assert!(files().is_empty() && slots_used());
        let pools = d.pools.clone();
        drop(d);
        // A record file as older versions wrote every publication.
        let old = rec("/t/old", "o");
        let body = serde_json::to_vec(&Envelope {
            format: META_FORMAT,
            record: &old,
        })
        .unwrap();
        std::fs::write(dir.join(hashed("/t/old")), body).unwrap();

        // A lost database gets both back.
        let s2 = tempfile::tempdir().unwrap();
        let store = Store::open(s2.path()).unwrap();
        store.set_mirror(Mirror::open(pools.iter()).unwrap());
        let a = adopt(&store, &pools, "n1").unwrap();
        let mut got = a.publishes.clone();
        got.sort();
        assert_eq!(got, vec!["/t/a".to_string(), "/t/old".to_string()]);
        assert_eq!(
            store.publish(Path::new("/t/a")).unwrap(),
            Some(rec("/t/a", "small again"))
        );
        // Adoption wrote the old one again, into a slot; removing both leaves nothing.
        assert!(files().is_empty());
        store
            .write_publication(Op::DelPublish("/t/old".into()))
            .unwrap();
        store
            .write_publication(Op::DelPublish("/t/a".into()))
            .unwrap();
        assert!(files().is_empty() && !slots_used());
    }

    /// Record names are how a pool finds its stage and publication records again: they
    /// must not change between versions.
    #[test]
    fn record_names_are_stable() {
        assert_eq!(
            hashed("/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv/mount"),
            "6dfc50e0e4de25aec4a876d619dc3ad6.json"
        );
    }

    /// A driver killed before the syncer committed its publication changes: start-up
    /// takes them from the records, also where the database holds an older record.
    #[test]
    fn publications_the_database_missed_are_adopted_from_their_records() {
        let (_p, s, d) = mirrored_driver();
        let v = d.create_volume(args("pub-1")).unwrap();
        let rec = |target: &str, args: &str| publish_record(&v.id, target, args);
        d.store
            .write(vec![Op::PutPublish(rec("/t/a", "old"))])
            .unwrap();
        d.store
            .write(vec![Op::PutPublish(rec("/t/gone", "x"))])
            .unwrap();
        d.store
            .write_publication(Op::PutPublish(rec("/t/a", "new")))
            .unwrap();
        d.store
            .write_publication(Op::PutPublish(rec("/t/b", "b")))
            .unwrap();
        d.store
            .write_publication(Op::DelPublish("/t/gone".into()))
            .unwrap();
        d.store.lose_deferred();
        let pools = d.pools.clone();
        drop(d);

        let store = Store::open(s.path()).unwrap();
        store.set_mirror(Mirror::open(pools.iter()).unwrap());
        let a = adopt(&store, &pools, "n1").unwrap();
        let mut got = a.publishes.clone();
        got.sort();
        assert_eq!(got, vec!["/t/a".to_string(), "/t/b".to_string()]);
        // The deleted one is still in the database: reconciliation forgets it, as no
        // mount is there.
        assert_eq!(
            store.all_publishes().unwrap(),
            vec![rec("/t/a", "new"), rec("/t/b", "b"), rec("/t/gone", "x")]
        );
        drop(store);
        let store = Store::open(s.path()).unwrap();
        assert_eq!(
            store.publish(Path::new("/t/a")).unwrap(),
            Some(rec("/t/a", "new")),
            "committed at close"
        );
    }

    /// Concurrent creates: each acknowledged one is journaled and flushed, and they share
    /// flushes (never more than one per create).
    #[test]
    fn concurrent_creates_are_journaled() {
        let (_p, _s, d) = mirrored_driver();
        let d = std::sync::Arc::new(d);
        d.store
            .mirror()
            .unwrap()
            .pool("p")
            .unwrap()
            .journal()
            .pause_checkpoints();
        let before = d
            .store
            .mirror()
            .unwrap()
            .pool("p")
            .unwrap()
            .journal()
            .flushes();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| d.create_volume(args(&format!("c-{t}-{i}"))).unwrap().id)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ids: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let flushes = d
            .store
            .mirror()
            .unwrap()
            .pool("p")
            .unwrap()
            .journal()
            .flushes()
            - before;
        assert!(flushes <= 40, "{flushes} flushes for 40 creates");
        let pools = d.pools.clone();
        drop(d);
        let (_pm, replayed) = PoolMeta::open_replayed(pools.get("p").unwrap().as_ref()).unwrap();
        assert_eq!(
            replayed.records,
            ids.len(),
            "every create is in the journal"
        );
    }

    /// A removed record's file waits in `meta/spare/` and the next record is written into
    /// it (same inode, old content gone); a spare that is also linked elsewhere is never
    /// written over; spares left by an earlier run are used.
    #[test]
    fn removed_records_are_reused_as_spares() {
        use std::os::unix::fs::MetadataExt;
        let (p, _s, d) = mirrored_driver();
        let meta = p.path().join("meta");
        let spares = || {
            let mut n = sys::fs::list_names(&meta.join(SPARE_DIR)).unwrap();
            n.sort();
            n
        };
        let long = d
            .create_volume(args("spare-1-with-a-name-longer-than-the-next-one"))
            .unwrap();
        let rec = meta.join("volumes").join(by_id(&long.id));
        let ino = std::fs::metadata(&rec).unwrap().ino();
        d.delete_volume(&long.id).unwrap();
        assert!(!rec.exists());
        assert_eq!(spares().len(), 1);
        let spare = meta.join(SPARE_DIR).join(&spares()[0]);
        assert_eq!(std::fs::metadata(&spare).unwrap().ino(), ino);

        let short = d.create_volume(args("spare-2")).unwrap();
        let rec = meta.join("volumes").join(by_id(&short.id));
        assert_eq!(
            std::fs::metadata(&rec).unwrap().ino(),
            ino,
            "the spare reused"
        );
        assert!(spares().is_empty());
        let env: Envelope<VolumeRecord> =
            serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
        assert_eq!(env.record, short, "nothing of the longer record left");

        // A spare with a second name (a rename half done by a power cut) is dropped.
        d.delete_volume(&short.id).unwrap();
        let spare = meta.join(SPARE_DIR).join(&spares()[0]);
        let other = p.path().join("other");
        std::fs::hard_link(&spare, &other).unwrap();
        let before = std::fs::read(&other).unwrap();
        let third = d.create_volume(args("spare-3")).unwrap();
        assert_ne!(
            std::fs::metadata(meta.join("volumes").join(by_id(&third.id)))
                .unwrap()
                .ino(),
            ino
        );
        assert_eq!(std::fs::read(&other).unwrap(), before, "left as it was");
        assert!(spares().is_empty());

        // The next run finds the spares this one left.
        d.delete_volume(&third.id).unwrap();
        let left = spares();
        assert_eq!(left.len(), 1);
        let pools = d.pools.clone();
        drop(d);
        let (pm, _) = PoolMeta::open_replayed(pools.get("p").unwrap().as_ref()).unwrap();
        assert_eq!(pm.spare.lock().0.len(), 1);
        assert!(pm.spare.lock().1 > left[0].parse::<u64>().unwrap());
    }

    /// A create cut short after its journaled intent (data and record made, no Put) is
    /// undone by replay; a finished one, whose Put closed its intent, is not.
    #[test]
    fn replay_undoes_a_create_cut_short_after_its_intent() {
        let (p, _s, d) = mirrored_driver();
        let pm = d.store.mirror().unwrap().pool("p").unwrap();
        pm.journal().pause_checkpoints();
        let pool = d.pools.get("p").unwrap().clone();
        pm.intend("n1_p_vcut", "vcut").unwrap();
        pool.create(DataRef::volume("vcut"), 1 << 20, None).unwrap();
        let record = p.path().join("meta/volumes/n1_p_vcut.json");
        std::fs::write(&record, b"{}").unwrap();
        let done = d.create_volume(args("done")).unwrap();
        assert_eq!(
            pm.journal().open_intents(),
            1,
            "the finished create closed its intent; only the cut one is open"
        );
        drop(d);
        let (_pm, replayed) = PoolMeta::open_replayed(pool.as_ref()).unwrap();
        assert_eq!(replayed.undone, vec!["vcut".to_string()]);
        assert!(pool.size(DataRef::volume("vcut")).unwrap().is_none());
        assert!(!record.exists());
        assert!(pool.size(DataRef::volume(&done.data)).unwrap().is_some());
        assert!(p.path().join("meta/volumes").join(by_id(&done.id)).exists());
    }
}

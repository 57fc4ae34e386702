//! The driver's durable state: an SQLite database in WAL mode under `--state-dir`.
//!
//! Why SQLite (rusqlite, bundled): an ACID store whose commit is one append to its
//! write-ahead log, readers that never block the writer, and a library the workspace
//! already builds for the store crate, so it costs CI no extra compile time. Nothing is
//! ever rewritten in place: a crash leaves either the old or the new state.
//!
//! Durability: a commit is in the WAL (the kernel's page cache) before `write` returns, so
//! a killed or aborted driver never loses an acknowledged operation; that is what the
//! crash tests check. Against power loss the WAL is fdatasync'ed by the syncer at most
//! `SYNC_INTERVAL` after a commit (`synchronous=NORMAL` plus our own flush), so an outage
//! can lose at most that window and never corrupts the database. An fsync per commit
//! (`synchronous=FULL`) costs 0.2-5 ms on this class of disk and would cap CreateVolume
//! far below the hundreds per second the CO expects.
//!
//! Writes are group-committed without a writer thread: a caller queues its job, takes
//! the writer connection and commits every job queued by then in one transaction; a
//! caller whose job a previous holder already committed just collects its result. So a
//! lone write costs no thread hand-off, and concurrent writes share one transaction. Each
//! job runs in its own savepoint, so one failing job does not undo its neighbours. The
//! fdatasync of the WAL and its checkpoints into the database (SQLite's auto-checkpoint
//! is off) run on their own thread, so no commit ever waits for the disk.
//!
//! Reads of the node side (stage and publication records, and volume records by id) are
//! served from an in-memory view, not from SQLite: NodePublish and NodeUnpublish read
//! five records each, and a read transaction costs more than the rest of their CPU. The
//! view is updated by the committing thread right after each transaction commits, with
//! the jobs that succeeded, and never before; a read that misses takes the record from
//! the database under the view's lock, so a concurrent commit cannot be overwritten by
//! the older record it read. Callers that need a record not to change between reading
//! it and writing hold the object's lock (locks.rs), as before.
//!
//! Publication records are not committed by the request (`write_publication`): the
//! pool's metadata record (meta.rs) is written first, as for every job, then the view
//! takes the change at once and the syncer commits the latest change of each target in
//! one transaction, `SYNC_INTERVAL` after the first one waiting (a publish followed by
//! its unpublish meanwhile costs the database nothing). A driver killed before that
//! commit has the metadata records, which start-up re-adopts (`meta::adopt`: a record
//! the database lacks or holds otherwise replaces it), and reconciliation forgets a
//! recorded publication whose mount is gone. `close` commits what waits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::{Arc, Condvar};

use rusqlite::{Connection, OptionalExtension, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Lifecycle of a controller object. `Creating` and `Deleting` are intents recorded
/// before the side effect; reconciliation finishes or rolls them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Creating,
    Ready,
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub name: String,
    pub pool: String,
    /// Name of the volume's data object (image file, directory or subvolume) in the
    /// pool's `volumes/` directory. Stored as `file`, its name in formats 1 and 2.
    #[serde(rename = "file")]
    pub data: String,
    pub capacity: u64,
    pub fs_type: String,
    /// Normalised creation parameters, compared on a repeated CreateVolume.
    pub parameters: BTreeMap<String, String>,
    pub mutable_parameters: BTreeMap<String, String>,
    /// Current `directIO` setting (ControllerModifyVolume).
    pub direct_io: bool,
    pub source: Option<Source>,
    pub created_unix: i64,
    pub phase: Phase,
    /// The CO's volume id for an ephemeral inline volume.
    pub ephemeral: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    pub pool: String,
    /// Name of the snapshot's data object in the pool's `snapshots/` directory. Stored
    /// as `file`, its name in formats 1 and 2.
    #[serde(rename = "file")]
    pub data: String,
    pub size: u64,
    pub created_unix: i64,
    pub phase: Phase,
    pub group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: String,
    pub name: String,
    pub source_volume_ids: Vec<String>,
    pub snapshot_ids: Vec<String>,
    pub parameters: BTreeMap<String, String>,
    pub created_unix: i64,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StagePhase {
    /// Intent: the loop device, filesystem and mount may be partly there.
    Staging,
    Staged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub volume_id: String,
    pub staging_path: PathBuf,
    /// /dev/loopN once known.
    pub device: Option<PathBuf>,
    pub block: bool,
    pub fs_type: String,
    /// Fingerprint of the capability and mount flags, for the idempotency check.
    pub args: String,
    pub phase: StagePhase,
    /// The capability's mount flags, to mount again after an offline resize.
    #[serde(default)]
    pub mount_flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub target: PathBuf,
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub readonly: bool,
    pub block: bool,
    /// The access mode number from the capability.
    pub access_mode: i32,
    /// Fingerprint of every argument except secrets (the "P" of the second-publish matrix).
    pub args: String,
    /// For a read-only block publish: the read-only loop device bound at the target.
    #[serde(default)]
    pub device: Option<PathBuf>,
}

/// What start-up needs of every volume record (the ledger, re-adoption, reconciliation),
/// read with SQLite's json_extract instead of decoding whole records: start-up time grows
/// with the number of volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBrief {
    pub id: String,
    pub pool: String,
    /// The record's `data` (stored as `file`).
    pub data: String,
    pub capacity: u64,
    pub phase: Phase,
}

/// One change; a job is a list of them applied atomically.
#[derive(Debug, Clone)]
pub enum Op {
    PutVolume(VolumeRecord),
    DelVolume(String),
    PutSnapshot(SnapshotRecord),
    DelSnapshot(String),
    PutGroup(GroupRecord),
    DelGroup(String),
    PutStage(StageRecord),
    DelStage(String),
    PutPublish(PublishRecord),
    DelPublish(PathBuf),
}

struct Job {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<()>>,
}

/// Most volume records the view keeps; past it the cache starts again empty (the node
/// side reads the few volumes it has staged, over and over).
const VIEW_VOLUMES_MAX: usize = 16_384;

/// The committed stage and publication records, all of them (a node has as many as it
/// has mounts), and the volume records read by id or written since start-up (see the module docs).
/// Keyed as in the database (and ordered as its `ORDER BY`): stages by volume id,
/// publications by their target as text.
#[derive(Debug, Default)]
struct View {
    stages: BTreeMap<String, StageRecord>,
    publishes: BTreeMap<String, PublishRecord>,
    /// Publication targets by volume id.
    targets: HashMap<String, BTreeSet<String>>,
    volumes: HashMap<String, VolumeRecord>,
}

/// A publication's key: its target as the `publishes` table stores it.
fn target_key(target: &Path) -> String {
    target.to_string_lossy().into_owned()
}

impl View {
    fn put_publish(&mut self, p: PublishRecord) {
        let key = target_key(&p.target);
        if let Some(old) = self.publishes.remove(&key) {
            self.untarget(&old.volume_id, &key);
        }
        self.targets
            .entry(p.volume_id.clone())
            .or_default()
            .insert(key.clone());
        self.publishes.insert(key, p);
    }

    fn untarget(&mut self, volume_id: &str, target: &str) {
        if let Some(t) = self.targets.get_mut(volume_id) {
            t.remove(target);
            if t.is_empty() {
                self.targets.remove(volume_id);
            }
        }
    }

    fn cache_volume(&mut self, v: VolumeRecord) {
        if self.volumes.len() >= VIEW_VOLUMES_MAX && !self.volumes.contains_key(&v.id) {
            self.volumes.clear();
        }
        self.volumes.insert(v.id.clone(), v);
    }

    /// Applies a committed op.
    fn apply(&mut self, op: &Op) {
        match op {
            // Kept: the next write of a volume (a create's Ready after its intent) reads
            // the record it replaces, and a read here saves a query and a decode.
            Op::PutVolume(v) => self.cache_volume(v.clone()),
            Op::DelVolume(id) => {
                self.volumes.remove(id);
            }
            Op::PutStage(s) => {
                self.stages.insert(s.volume_id.clone(), s.clone());
            }
            Op::DelStage(id) => {
                self.stages.remove(id);
            }
            Op::PutPublish(p) => self.put_publish(p.clone()),
            Op::DelPublish(t) => {
                let key = target_key(t);
                if let Some(old) = self.publishes.remove(&key) {
                    self.untarget(&old.volume_id, &key);
                }
            }
            Op::PutSnapshot(_) | Op::DelSnapshot(_) | Op::PutGroup(_) | Op::DelGroup(_) => {}
        }
    }
}

/// Capacity provisioned per pool: the sum of `capacity` over every volume record of the
/// pool, whatever its phase (a Creating or Deleting volume may still hold its image), plus
/// reservations of creates and expansions in flight. Counted from the records at open and
/// kept up to date by every write, so no code path can forget it; snapshots are not
/// provisioned capacity (their copies are checked against free space when cut).
#[derive(Debug, Default)]
struct Ledger {
    pools: std::collections::HashMap<String, u64>,
}

impl Ledger {
    fn add(&mut self, pool: &str, delta: i128) {
        let v = self.pools.entry(pool.to_string()).or_default();
        *v = u64::try_from((*v as i128 + delta).max(0)).unwrap_or(u64::MAX);
    }
}

/// Bytes counted against a pool ahead of the write that records them. Dropped unused, it
/// gives them back; `Store::write_reserved` turns it into the recorded capacity.
#[must_use]
pub struct Reservation<'a> {
    store: &'a Store,
    pool: String,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.store.ledger().add(&self.pool, -(self.bytes as i128));
        }
    }
}

pub struct Store {
    path: PathBuf,
    ledger: Mutex<Ledger>,
    /// The pools' metadata records, written before each job commits (meta.rs).
    mirror: std::sync::OnceLock<crate::meta::Mirror>,
    /// Held for the life of the store: one process owns a state dir, since two writers
    /// reconciling the same pools would undo each other's work.
    _owner: nix::fcntl::Flock<std::fs::File>,
    /// Jobs waiting for the next holder of `writer`; None once closed.
    queue: Mutex<Option<Vec<Job>>>,
    /// The write connection; whoever holds it commits the queue. None once closed.
    writer: Arc<Mutex<Option<Connection>>>,
    /// Publication changes waiting for the syncer (see the module docs); None once
    /// closed. Lock order: `writer`, then `deferred`, then `view`.
    deferred: Arc<Mutex<Option<Deferred>>>,
    reader: Mutex<Connection>,
    /// What the node side reads, in memory (see the module docs). Lock order: `writer`,
    /// then `deferred`, then `view`, then `reader`.
    view: Arc<Mutex<View>>,
    /// Every volume's brief as read at open, for the start-up passes; dropped at the first
    /// write of a volume record and by `startup_done`.
    briefs: Mutex<Option<Arc<Vec<VolumeBrief>>>>,
    syncer: Syncer,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS volumes (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, source TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS snapshots_by_source ON snapshots(source);
CREATE TABLE IF NOT EXISTS groups (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stages (volume_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS publishes (target TEXT PRIMARY KEY, volume_id TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS publishes_by_volume ON publishes(volume_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The format this code writes, kept in `meta` under `format`. Versions:
/// 1. everything before the format was recorded (no `format` row);
/// 2. the `format` row itself; records may carry fields that version 1 lacks, each with
///    a serde default, so version 1 rows decode unchanged.
///
/// Bump it with a new entry in `MIGRATIONS` whenever an older driver could misread what
/// this one writes.
pub const FORMAT_VERSION: u32 = 2;

/// SQL that takes a database from version `n - 1` to `n`, for each `n` after 1. Run in
/// the same transaction as the version update, so a crash leaves the old version whole.
const MIGRATIONS: &[(u32, &str)] = &[(2, "")];

/// Checks the format version and migrates an older database in one transaction. A newer
/// database is refused untouched: this code would not know what its rows mean.
fn migrate(conn: &mut Connection, path: &Path) -> Result<u32> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existed: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'volumes')",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch(SCHEMA)?;
    let found = match tx
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    {
        None if existed => 1,
        None => FORMAT_VERSION,
        Some(v) => v.parse::<u32>().map_err(|_| {
            Error::StateCorrupt(format!(
                "{}: format version {v:?} is not a number",
                path.display()
            ))
        })?,
    };
    if found > FORMAT_VERSION {
        return Err(Error::StateFormat {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > found) {
        tx.execute_batch(sql)?;
        tracing::info!(path = %path.display(), from = to - 1, to, "migrated the state database");
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('format', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [FORMAT_VERSION.to_string()],
    )?;
    tx.commit()?;
    Ok(found)
}

/// The paging queries (ListVolumes, ListSnapshots), by name for the test that checks
/// they stay prepared.
const VOLUMES_AFTER: &str = "SELECT record FROM volumes WHERE id > ?1 ORDER BY id LIMIT ?2";
const SNAPSHOTS_AFTER: &str = "SELECT record FROM snapshots WHERE id > ?1 ORDER BY id LIMIT ?2";
const SNAPSHOTS_OF_AFTER: &str =
    "SELECT record FROM snapshots WHERE source = ?1 AND id > ?2 ORDER BY id LIMIT ?3";

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: commits append to the WAL without fsync; see the module docs.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Plans that never depend on the values bound: otherwise SQLite prepares a cached
    // statement again whenever a parameter it planned by is bound anew (every page of
    // ListVolumes and ListSnapshots, by its LIMIT).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

/// A phase as records store it (its serde name), read without a JSON round trip.
fn phase_named(name: &str) -> std::result::Result<Phase, serde::de::value::Error> {
    use serde::de::IntoDeserializer;
    Phase::deserialize(name.into_deserializer())
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::StateCorrupt(format!("decoding record: {e}")))
}

fn apply(conn: &Connection, op: &Op) -> rusqlite::Result<()> {
    let enc = |v: &dyn erased::Json| v.json();
    match op {
        Op::PutVolume(v) => conn
            .prepare_cached("INSERT INTO volumes (id, name, record) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET name = excluded.name, record = excluded.record")?
            .execute(params![v.id, v.name, enc(v)])
            .map(drop),
        Op::DelVolume(id) => conn.prepare_cached("DELETE FROM volumes WHERE id = ?1")?.execute([id]).map(drop),
        Op::PutSnapshot(s) => conn
            .prepare_cached("INSERT INTO snapshots (id, name, source, record) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO UPDATE SET name = excluded.name, source = excluded.source, record = excluded.record")?
            .execute(params![s.id, s.name, s.source_volume_id, enc(s)])
            .map(drop),
        Op::DelSnapshot(id) => conn.prepare_cached("DELETE FROM snapshots WHERE id = ?1")?.execute([id]).map(drop),
        Op::PutGroup(g) => conn
            .prepare_cached("INSERT INTO groups (id, name, record) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET name = excluded.name, record = excluded.record")?
            .execute(params![g.id, g.name, enc(g)])
            .map(drop),
        Op::DelGroup(id) => conn.prepare_cached("DELETE FROM groups WHERE id = ?1")?.execute([id]).map(drop),
        Op::PutStage(s) => conn
            .prepare_cached("INSERT INTO stages (volume_id, record) VALUES (?1, ?2) ON CONFLICT(volume_id) DO UPDATE SET record = excluded.record")?
            .execute(params![s.volume_id, enc(s)])
            .map(drop),
        Op::DelStage(id) => conn.prepare_cached("DELETE FROM stages WHERE volume_id = ?1")?.execute([id]).map(drop),
        Op::PutPublish(p) => conn
            .prepare_cached("INSERT INTO publishes (target, volume_id, record) VALUES (?1, ?2, ?3) ON CONFLICT(target) DO UPDATE SET volume_id = excluded.volume_id, record = excluded.record")?
            .execute(params![p.target.to_string_lossy(), p.volume_id, enc(p)])
            .map(drop),
        Op::DelPublish(t) => conn
            .prepare_cached("DELETE FROM publishes WHERE target = ?1")?
            .execute([t.to_string_lossy()])
            .map(drop),
    }
}

/// Records serialise infallibly (plain structs of strings and numbers).
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("records are plain data")
        }
    }
}

/// Longest time a commit stays only in the page cache.
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Commits after which the syncer checkpoints the WAL into the database (SQLite's own
/// auto-checkpoint, at 1000 pages, is off: it ran in the committing thread, so every few
/// hundred commits one CreateVolume paid two fsyncs and the page copies). The WAL file
/// keeps its size once grown, so its length cannot tell how much of it is new. What a
/// commit still pays: the first one after a checkpoint restarts the WAL from its
/// beginning, and SQLite fsyncs the new WAL header there (one commit in this many).
const CHECKPOINT_COMMITS: u64 = 1000;

/// fdatasync of the WAL file: makes every commit so far survive power loss.
fn sync_wal(wal: &Path) {
    match std::fs::File::open(wal).and_then(|f| f.sync_data()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %wal.display(), error = %e, "syncing the state WAL"),
    }
}

/// Commits `batch` in one transaction, each job in its own savepoint, applies the jobs
/// that succeeded to `view` once the transaction has committed, and answers each.
fn commit_batch(conn: &mut Connection, view: &Mutex<View>, batch: Vec<Job>) {
    let mut results: Vec<Result<()>> = Vec::with_capacity(batch.len());
    let outcome = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let [job] = batch.as_slice() {
            // A lone job needs no savepoint: the transaction is its own.
            return match job.ops.iter().try_for_each(|op| apply(&tx, op)) {
                Ok(()) => {
                    results.push(Ok(()));
                    tx.commit()
                }
                Err(e) => {
                    results.push(Err(Error::State(e)));
                    tx.rollback()
                }
            };
        }
        for job in &batch {
            let mut sp = tx.unchecked_transaction_savepoint()?;
            let r = job.ops.iter().try_for_each(|op| apply(&sp, op));
            match r {
                Ok(()) => {
                    sp.commit()?;
                    results.push(Ok(()));
                }
                Err(e) => {
                    sp.rollback()?;
                    drop(sp);
                    results.push(Err(Error::State(e)));
                }
            }
        }
        tx.commit()
    })();
    match outcome {
        Ok(()) => {
            {
                let mut view = view.lock().expect("state view lock");
                for (job, r) in batch.iter().zip(&results) {
                    if r.is_ok() {
                        job.ops.iter().for_each(|op| view.apply(op));
                    }
                }
            }
            for (job, r) in batch.into_iter().zip(results) {
                let _ = job.done.send(r);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for job in batch {
                let _ = job
                    .done
                    .send(Err(Error::StateCorrupt(format!("commit failed: {msg}"))));
            }
        }
    }
}

/// Publication changes not yet in the database: the latest op of each target, by its key.
type Deferred = HashMap<String, Op>;

/// The key of a publication op; None for every other op.
fn publication_key(op: &Op) -> Option<String> {
    match op {
        Op::PutPublish(p) => Some(target_key(&p.target)),
        Op::DelPublish(t) => Some(target_key(t)),
        _ => None,
    }
}

/// Commits the waiting publication changes in one transaction (the view has them
/// already) and returns how many there were. On failure they wait again, unless a newer
/// change of the same target came meanwhile.
fn commit_deferred(
    conn: &mut Connection,
    deferred: &Mutex<Option<Deferred>>,
) -> rusqlite::Result<usize> {
    let ops: Vec<(String, Op)> = match deferred.lock().expect("state deferred lock").as_mut() {
        Some(d) => std::mem::take(d).into_iter().collect(),
        None => return Ok(0),
    };
    if ops.is_empty() {
        return Ok(0);
    }
    let r = (|| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (_, op) in &ops {
            apply(&tx, op)?;
        }
        tx.commit()
    })();
    match r {
        Ok(()) => Ok(ops.len()),
        Err(e) => {
            if let Some(d) = deferred.lock().expect("state deferred lock").as_mut() {
                for (key, op) in ops {
                    d.entry(key).or_insert(op);
                }
            }
            Err(e)
        }
    }
}

/// The thread that fdatasyncs the WAL at most `SYNC_INTERVAL` after a commit, apart from
/// the commits themselves, and commits the waiting publication changes
/// `SYNC_INTERVAL` after the first of them.
struct Syncer {
    shared: Arc<SyncShared>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct SyncState {
    /// Commits not yet synced.
    wal_dirty: bool,
    /// When the oldest waiting publication change was queued.
    deferred_since: Option<std::time::Instant>,
    stop: bool,
}

#[derive(Default)]
struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
    /// Commits so far (batches), for the checkpoints.
    commits: std::sync::atomic::AtomicU64,
}

/// What the syncer works on besides the WAL file.
struct SyncTargets {
    wal: PathBuf,
    checkpointer: Connection,
    writer: Arc<Mutex<Option<Connection>>>,
    deferred: Arc<Mutex<Option<Deferred>>>,
}

impl Syncer {
    fn start(targets: SyncTargets) -> std::io::Result<Syncer> {
        let shared = Arc::new(SyncShared::default());
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("state-sync".into())
            .spawn(move || syncer_loop(&s, &targets))?;
        Ok(Syncer {
            shared,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// A commit landed in the WAL. Wakes the syncer only on the first since its last sync.
    fn dirty(&self) {
        self.shared
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.shared.state.lock().expect("syncer lock");
        if !st.wal_dirty {
            st.wal_dirty = true;
            self.shared.wake.notify_one();
        }
    }

    /// A publication change waits. Wakes the syncer only on the first since its last
    /// commit of them.
    fn deferred(&self) {
        let mut st = self.shared.state.lock().expect("syncer lock");
        if st.deferred_since.is_none() {
            st.deferred_since = Some(std::time::Instant::now());
            self.shared.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.shared.state.lock().expect("syncer lock").stop = true;
        self.shared.wake.notify_one();
        if let Some(h) = self.handle.lock().expect("syncer handle lock").take() {
            let _ = h.join();
        }
    }
}

/// Copies the WAL into the database (PASSIVE: never waits for, nor blocks, the writer);
/// the writer then starts the WAL again from its beginning.
fn checkpoint_wal(conn: &Connection, wal: &Path) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(path = %wal.display(), error = %e, "checkpointing the state WAL");
    }
}

fn syncer_loop(shared: &SyncShared, t: &SyncTargets) {
    let mut last = std::time::Instant::now();
    let mut checkpointed = 0;
    let mut failing = false;
    let mut st = shared.state.lock().expect("syncer lock");
    loop {
        if st.stop {
            // Closing the connection checkpoints the WAL into the database and fsyncs it;
            // `close` commits the waiting publication changes before.
            return;
        }
        let wal_due = st.wal_dirty.then_some(last + SYNC_INTERVAL);
        let deferred_due = st.deferred_since.map(|t| t + SYNC_INTERVAL);
        let Some(due) = wal_due.into_iter().chain(deferred_due).min() else {
            st = shared.wake.wait(st).expect("syncer lock");
            continue;
        };
        let now = std::time::Instant::now();
        if now < due {
            st = shared
                .wake
                .wait_timeout(st, due - now)
                .expect("syncer lock")
                .0;
            continue;
        }
        let commit = deferred_due.is_some_and(|d| d <= now);
        if commit {
            st.deferred_since = None;
        }
        // Cleared before the sync: a commit that lands during it marks the WAL again.
        st.wal_dirty = false;
        drop(st);
        let mut retry = false;
        if commit && let Some(conn) = t.writer.lock().expect("state writer lock").as_mut() {
            match commit_deferred(conn, &t.deferred) {
                Ok(n) => {
                    if n > 0 {
                        shared
                            .commits
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if failing {
                        tracing::info!("publication records committed again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "committing publication records; retrying every {SYNC_INTERVAL:?}");
                        failing = true;
                    }
                    retry = true;
                }
            }
        }
        sync_wal(&t.wal);
        let commits = shared.commits.load(std::sync::atomic::Ordering::Relaxed);
        if commits - checkpointed >= CHECKPOINT_COMMITS {
            checkpoint_wal(&t.checkpointer, &t.wal);
            checkpointed = commits;
        }
        last = std::time::Instant::now();
        st = shared.state.lock().expect("syncer lock");
        if retry {
            st.deferred_since.get_or_insert(last);
        }
    }
}

/// rusqlite's savepoint on a shared transaction reference.
trait SavepointExt {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>>;
}

struct Savepoint<'a> {
    conn: &'a Connection,
    done: bool,
}

impl SavepointExt for rusqlite::Transaction<'_> {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>> {
        self.execute_batch("SAVEPOINT job")?;
        Ok(Savepoint {
            conn: self,
            done: false,
        })
    }
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Savepoint<'_> {
    fn commit(&mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.execute_batch("RELEASE job")
    }
    fn rollback(&mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.execute_batch("ROLLBACK TO job; RELEASE job")
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK TO job; RELEASE job");
        }
    }
}

impl Store {
    /// Opens (or creates) `dir/state.db` and starts the WAL syncer thread.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating state dir", dir))?;
        let owner = lock_state_dir(dir)?;
        let path = dir.join("state.db");
        let mut writer = open_conn(&path)?;
        migrate(&mut writer, &path)?;
        // Checkpoints run on the syncer's thread, never in a commit (CHECKPOINT_WAL_BYTES).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let reader = open_conn(&path)?;
        let checkpointer = open_conn(&path)?;
        checkpointer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let writer = Arc::new(Mutex::new(Some(writer)));
        let deferred = Arc::new(Mutex::new(Some(Deferred::new())));
        let syncer = Syncer::start(SyncTargets {
            wal: dir.join("state.db-wal"),
            checkpointer,
            writer: writer.clone(),
            deferred: deferred.clone(),
        })
        .map_err(Error::io("spawning the state syncer", &path))?;
        let store = Store {
            path,
            ledger: Mutex::new(Ledger::default()),
            mirror: std::sync::OnceLock::new(),
            _owner: owner,
            queue: Mutex::new(Some(Vec::new())),
            writer,
            deferred,
            reader: Mutex::new(reader),
            view: Arc::default(),
            briefs: Mutex::new(None),
            syncer,
        };
        {
            let mut view = store.view();
            for s in store.query_all::<StageRecord>("SELECT record FROM stages", &[])? {
                view.stages.insert(s.volume_id.clone(), s);
            }
            for p in store.query_all::<PublishRecord>("SELECT record FROM publishes", &[])? {
                view.put_publish(p);
            }
        }
        // One pass over the volumes, without decoding a record: the ledger now, the
        // briefs for re-adoption and reconciliation next.
        let briefs = store.read_briefs()?;
        {
            let mut ledger = store.ledger();
            for b in &briefs {
                ledger.add(&b.pool, b.capacity as i128);
            }
        }
        *store.briefs.lock().expect("state briefs lock") = Some(Arc::new(briefs));
        Ok(store)
    }

    /// From now on every job's ops are mirrored into the pools' metadata records before
    /// the job commits. Set once, at start-up.
    pub fn set_mirror(&self, mirror: crate::meta::Mirror) {
        if self.mirror.set(mirror).is_err() {
            tracing::warn!("state store mirror set twice; keeping the first");
        }
    }

    pub fn mirror(&self) -> Option<&crate::meta::Mirror> {
        self.mirror.get()
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().expect("state view lock")
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    /// Capacity provisioned in `pool` (volume records and reservations in flight).
    pub fn provisioned(&self, pool: &str) -> u64 {
        self.ledger().pools.get(pool).copied().unwrap_or(0)
    }

    /// Counts `bytes` against `pool` if the pool's provisioned capacity stays within
    /// `limit`; check and count are one step, so concurrent creates cannot both squeeze
    /// into the last free bytes.
    pub fn reserve(&self, pool: &str, bytes: u64, limit: u64) -> Result<Reservation<'_>> {
        let mut ledger = self.ledger();
        let have = ledger.pools.get(pool).copied().unwrap_or(0);
        if have.saturating_add(bytes) > limit {
            return Err(Error::PoolOvercommitted {
                pool: pool.to_string(),
                want: bytes,
                provisioned: have,
                limit,
            });
        }
        ledger.add(pool, bytes as i128);
        Ok(Reservation {
            store: self,
            pool: pool.to_string(),
            bytes,
        })
    }

    /// Per-pool change of provisioned capacity that `ops` make, from the records they
    /// replace (none when `fresh`: see `insert_reserved`). Callers hold the objects'
    /// locks, so the records cannot change meanwhile.
    fn capacity_deltas(&self, ops: &[Op], fresh: bool) -> Result<Vec<(String, i128)>> {
        let mut latest: std::collections::HashMap<&str, Option<(&str, u64)>> =
            std::collections::HashMap::new();
        let mut out: Vec<(String, i128)> = Vec::new();
        let mut add = |pool: &str, d: i128| match out.iter_mut().find(|(p, _)| p == pool) {
            Some((_, v)) => *v += d,
            None => out.push((pool.to_string(), d)),
        };
        for op in ops {
            let (id, new) = match op {
                Op::PutVolume(v) => (v.id.as_str(), Some((v.pool.as_str(), v.capacity))),
                Op::DelVolume(id) => (id.as_str(), None),
                _ => continue,
            };
            let old = match latest.get(id) {
                Some(o) => o.map(|(p, c)| (p.to_string(), c)),
                None if fresh => {
                    debug_assert!(self.volume(id)?.is_none(), "volume {id} is not new");
                    None
                }
                None => self.volume(id)?.map(|v| (v.pool, v.capacity)),
            };
            if let Some((p, c)) = old {
                add(&p, -(c as i128));
            }
            if let Some((p, c)) = new {
                add(p, c as i128);
            }
            latest.insert(id, new);
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `ops`, then commits every queued job unless a previous holder of the
    /// writer already committed this one (group commit), and returns this job's result.
    fn send(&self, ops: Vec<Op>) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.queue
            .lock()
            .expect("state queue lock")
            .as_mut()
            .ok_or(Error::StateClosed)?
            .push(Job { ops, done });
        {
            let mut writer = self.writer.lock().expect("state writer lock");
            let batch = self
                .queue
                .lock()
                .expect("state queue lock")
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            if !batch.is_empty() {
                // `close` drains the queue before it takes the connection, so a job
                // queued before then is never left without one.
                let conn = writer.as_mut().ok_or(Error::StateClosed)?;
                commit_batch(conn, &self.view, batch);
                self.syncer.dirty();
            }
        }
        rx.blocking_recv().map_err(|_| Error::StateClosed)?
    }

    /// Commits `ops` atomically; blocks until they are in the WAL (durable against power
    /// loss within `SYNC_INTERVAL`). Call from blocking threads only.
    pub fn write(&self, ops: Vec<Op>) -> Result<()> {
        self.commit(ops, None, false)
    }

    /// Records a publication change (`PutPublish` or `DelPublish`; any other op is
    /// committed by `write`): its metadata record is written now, the view has it when
    /// this returns, and the syncer commits it to the database (see the module docs).
    pub fn write_publication(&self, op: Op) -> Result<()> {
        let Some(key) = publication_key(&op) else {
            return self.write(vec![op]);
        };
        if let Some(m) = self.mirror.get() {
            m.before_commit(self, std::slice::from_ref(&op))?;
        }
        {
            let mut deferred = self.deferred.lock().expect("state deferred lock");
            let d = deferred.as_mut().ok_or(Error::StateClosed)?;
            self.view().apply(&op);
            d.insert(key, op);
        }
        self.syncer.deferred();
        Ok(())
    }

    /// Like `write`, with the capacity `ops` add already counted by `res`: on success the
    /// reservation becomes the records' capacity, on failure it is given back.
    pub fn write_reserved(&self, ops: Vec<Op>, res: Reservation<'_>) -> Result<()> {
        self.commit(ops, Some(res), false)
    }

    /// Like `write_reserved`, for ops whose volume records are all new: the caller
    /// checked under the volumes' locks that none exists, so the records they replace
    /// are not looked up (a create's query of the database for nothing).
    pub fn insert_reserved(&self, ops: Vec<Op>, res: Reservation<'_>) -> Result<()> {
        self.commit(ops, Some(res), true)
    }

    fn commit(&self, ops: Vec<Op>, mut res: Option<Reservation<'_>>, fresh: bool) -> Result<()> {
        if ops
            .iter()
            .any(|op| matches!(op, Op::PutVolume(_) | Op::DelVolume(_)))
        {
            // Before the write: no reader may take briefs older than the database.
            self.startup_done();
        }
        let deltas = self.capacity_deltas(&ops, fresh)?;
        if let Some(m) = self.mirror.get() {
            m.before_commit(self, &ops)?;
        }
        // A publication written here replaces any change of it still waiting for the
        // syncer, which would otherwise undo it in the database later.
        if let Some(d) = self.deferred.lock().expect("state deferred lock").as_mut() {
            for key in ops.iter().filter_map(publication_key) {
                d.remove(&key);
            }
        }
        self.send(ops)?;
        let mut ledger = self.ledger();
        for (pool, d) in deltas {
            ledger.add(&pool, d);
        }
        if let Some(r) = res.as_mut() {
            // Now counted through the record: the reservation must not give it back.
            ledger.add(&r.pool, -(r.bytes as i128));
            r.bytes = 0;
        }
        Ok(())
    }

    /// Commits the queued jobs and the waiting publication changes, refuses new ones and
    /// closes the write connection (which checkpoints the WAL into the database).
    pub fn close(&self) {
        let mut writer = self.writer.lock().expect("state writer lock");
        let batch = self.queue.lock().expect("state queue lock").take();
        if let (Some(conn), Some(batch)) = (writer.as_mut(), batch)
            && !batch.is_empty()
        {
            commit_batch(conn, &self.view, batch);
        }
        if let Some(conn) = writer.as_mut()
            && let Err(e) = commit_deferred(conn, &self.deferred)
        {
            tracing::error!(error = %e, "committing publication records at close; start-up re-adopts them from the pools' records");
        }
        self.deferred.lock().expect("state deferred lock").take();
        writer.take();
        drop(writer);
        self.syncer.stop();
    }

    fn query_one<T: DeserializeOwned>(&self, sql: &str, key: &str) -> Result<Option<T>> {
        let conn = self.reader.lock().expect("state reader lock");
        let raw: Option<String> = conn
            .prepare_cached(sql)?
            .query_row([key], |r| r.get(0))
            .optional()?;
        raw.map(|s| from_json(&s)).transpose()
    }

    fn query_all<T: DeserializeOwned>(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<T>> {
        let conn = self.reader.lock().expect("state reader lock");
        let mut stmt = conn.prepare_cached(sql)?;
        let rows: Vec<String> = stmt
            .query_map(args, |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        rows.iter().map(|s| from_json(s)).collect()
    }

    /// `f` of the volume's record when the view holds it (no query): None says nothing
    /// about whether it exists.
    pub fn with_volume_in_memory<R>(
        &self,
        id: &str,
        f: impl FnOnce(&VolumeRecord) -> R,
    ) -> Option<R> {
        self.view().volumes.get(id).map(f)
    }

    pub fn volume(&self, id: &str) -> Result<Option<VolumeRecord>> {
        let mut view = self.view();
        if let Some(v) = view.volumes.get(id) {
            return Ok(Some(v.clone()));
        }
        // Read under the view's lock: a commit of this volume meanwhile waits to update
        // the view until this older record is in it.
        let v: Option<VolumeRecord> =
            self.query_one("SELECT record FROM volumes WHERE id = ?1", id)?;
        if let Some(v) = &v {
            view.cache_volume(v.clone());
        }
        Ok(v)
    }

    /// The pool of volume `id`, without a copy of its whole record.
    pub fn volume_pool(&self, id: &str) -> Result<Option<String>> {
        if let Some(v) = self.view().volumes.get(id) {
            return Ok(Some(v.pool.clone()));
        }
        Ok(self.volume(id)?.map(|v| v.pool))
    }

    pub fn volume_by_name(&self, name: &str) -> Result<Option<VolumeRecord>> {
        self.query_one("SELECT record FROM volumes WHERE name = ?1", name)
    }

    /// Volumes with id > `after`, in id order, at most `limit`.
    pub fn volumes_after(&self, after: &str, limit: u32) -> Result<Vec<VolumeRecord>> {
        self.query_all(VOLUMES_AFTER, &[&after, &limit])
    }

    /// (pool, phase) of every volume by id, from the briefs.
    pub fn volume_summaries(&self) -> Result<std::collections::HashMap<String, (String, Phase)>> {
        Ok(self
            .volume_briefs()?
            .iter()
            .map(|b| (b.id.clone(), (b.pool.clone(), b.phase)))
            .collect())
    }

    /// Every volume's brief, in no particular order: the ones read at open while no
    /// volume record has been written since, else read now.
    pub fn volume_briefs(&self) -> Result<Arc<Vec<VolumeBrief>>> {
        if let Some(b) = self.briefs.lock().expect("state briefs lock").as_ref() {
            return Ok(b.clone());
        }
        Ok(Arc::new(self.read_briefs()?))
    }

    /// Forgets the publication changes not yet committed, as a killed driver would.
    #[cfg(test)]
    pub(crate) fn lose_deferred(&self) {
        if let Some(d) = self.deferred.lock().expect("state deferred lock").as_mut() {
            d.clear();
        }
    }

    /// Start-up has read the briefs it needs: the memory they hold is given back.
    pub fn startup_done(&self) {
        self.briefs.lock().expect("state briefs lock").take();
    }

    fn read_briefs(&self) -> Result<Vec<VolumeBrief>> {
        let conn = self.reader.lock().expect("state reader lock");
        let mut stmt = conn.prepare_cached(
            "SELECT id, json_extract(record, '$.pool'), json_extract(record, '$.file'), \
             json_extract(record, '$.capacity'), json_extract(record, '$.phase') FROM volumes",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                VolumeBrief {
                    id: r.get(0)?,
                    pool: r.get(1)?,
                    data: r.get(2)?,
                    capacity: r.get::<_, i64>(3)? as u64,
                    phase: Phase::Ready,
                },
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut b, phase) = row?;
            b.phase = phase_named(&phase)
                .map_err(|e| Error::StateCorrupt(format!("phase of {}: {e}", b.id)))?;
            out.push(b);
        }
        Ok(out)
    }

    /// (pool, phase) of every snapshot by id, read without decoding whole records.
    pub fn snapshot_summaries(&self) -> Result<std::collections::HashMap<String, (String, Phase)>> {
        self.summaries("SELECT id, json_extract(record, '$.pool'), json_extract(record, '$.phase') FROM snapshots")
    }

    fn summaries(&self, sql: &str) -> Result<std::collections::HashMap<String, (String, Phase)>> {
        let conn = self.reader.lock().expect("state reader lock");
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (id, pool, phase) = row?;
            let phase = phase_named(&phase)
                .map_err(|e| Error::StateCorrupt(format!("phase of {id}: {e}")))?;
            out.insert(id, (pool, phase));
        }
        Ok(out)
    }

    pub fn all_volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.query_all("SELECT record FROM volumes ORDER BY id", &[])
    }

    pub fn snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        self.query_one("SELECT record FROM snapshots WHERE id = ?1", id)
    }

    pub fn snapshot_by_name(&self, name: &str) -> Result<Option<SnapshotRecord>> {
        self.query_one("SELECT record FROM snapshots WHERE name = ?1", name)
    }

    pub fn snapshots_after(&self, after: &str, limit: u32) -> Result<Vec<SnapshotRecord>> {
        self.query_all(SNAPSHOTS_AFTER, &[&after, &limit])
    }

    pub fn snapshots_of(
        &self,
        source: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<SnapshotRecord>> {
        self.query_all(SNAPSHOTS_OF_AFTER, &[&source, &after, &limit])
    }

    pub fn all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.query_all("SELECT record FROM snapshots ORDER BY id", &[])
    }

    pub fn group(&self, id: &str) -> Result<Option<GroupRecord>> {
        self.query_one("SELECT record FROM groups WHERE id = ?1", id)
    }

    pub fn group_by_name(&self, name: &str) -> Result<Option<GroupRecord>> {
        self.query_one("SELECT record FROM groups WHERE name = ?1", name)
    }

    pub fn all_groups(&self) -> Result<Vec<GroupRecord>> {
        self.query_all("SELECT record FROM groups ORDER BY id", &[])
    }

    pub fn stage(&self, volume_id: &str) -> Result<Option<StageRecord>> {
        Ok(self.view().stages.get(volume_id).cloned())
    }

    /// Every stage record, by volume id.
    pub fn all_stages(&self) -> Result<Vec<StageRecord>> {
        Ok(self.view().stages.values().cloned().collect())
    }

    pub fn publish(&self, target: &Path) -> Result<Option<PublishRecord>> {
        Ok(self.view().publishes.get(&target_key(target)).cloned())
    }

    /// The publications of a volume, by target.
    pub fn publishes_of(&self, volume_id: &str) -> Result<Vec<PublishRecord>> {
        let view = self.view();
        Ok(view
            .targets
            .get(volume_id)
            .into_iter()
            .flatten()
            .filter_map(|t| view.publishes.get(t).cloned())
            .collect())
    }

    /// Every publication record, by target.
    pub fn all_publishes(&self) -> Result<Vec<PublishRecord>> {
        Ok(self.view().publishes.values().cloned().collect())
    }

    /// A cheap read that proves the database answers (Probe).
    pub fn check(&self) -> Result<()> {
        let conn = self.reader.lock().expect("state reader lock");
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(Error::StateCorrupt(format!("quick_check: {ok}")));
        }
        if self.queue.lock().expect("state queue lock").is_none() {
            return Err(Error::StateClosed);
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Takes `<dir>/lock` with a non-blocking exclusive flock; the kernel drops it when the
/// process dies, so a crash never leaves the state dir locked.
fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(Error::io("opening state lock", &path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => Error::StateInUse(dir.to_path_buf()),
            other => Error::Io {
                op: "locking state dir",
                path: path.clone(),
                source: other.into(),
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(id: &str, name: &str) -> VolumeRecord {
        VolumeRecord {
            id: id.into(),
            name: name.into(),
            pool: "p".into(),
            data: format!("{id}.img"),
            capacity: 1 << 20,
            fs_type: "ext4".into(),
            parameters: BTreeMap::new(),
            mutable_parameters: BTreeMap::new(),
            direct_io: false,
            source: None,
            created_unix: 1,
            phase: Phase::Creating,
            ephemeral: None,
        }
    }

    /// Commits never checkpoint the WAL (no fsync in a commit); the syncer does, once
    /// the WAL is large.
    #[test]
    fn the_syncer_checkpoints_the_wal_not_the_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let db = dir.path().join("state.db");
        let wal = dir.path().join("state.db-wal");
        let conn = s.writer.lock().unwrap();
        let auto: i64 = conn
            .as_ref()
            .unwrap()
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto, 0, "the writer's auto-checkpoint is off");
        drop(conn);
        let before = std::fs::metadata(&db).unwrap().len();
        let n = CHECKPOINT_COMMITS as usize + 1;
        for i in 0..n {
            s.write(vec![Op::PutVolume(vol(&format!("v{i}"), &format!("n{i}")))])
                .unwrap();
        }
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        let grown = (0..200).any(|_| {
            std::thread::sleep(SYNC_INTERVAL / 2);
            std::fs::metadata(&db).unwrap().len() > before
        });
        assert!(grown, "the syncer copied the WAL into the database");
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.all_volumes().unwrap().len(), n);
    }

    #[test]
    fn transitions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.write(vec![Op::PutVolume(vol("a", "na"))]).unwrap();
            let mut v = vol("a", "na");
            v.phase = Phase::Ready;
            s.write(vec![Op::PutVolume(v.clone())]).unwrap();
            s.write(vec![Op::PutVolume(vol("b", "nb"))]).unwrap();
            s.write(vec![Op::DelVolume("b".into())]).unwrap();
            assert_eq!(s.volume("a").unwrap(), Some(v));
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.volume("a").unwrap().unwrap().phase, Phase::Ready);
        assert_eq!(s.volume_by_name("na").unwrap().unwrap().id, "a");
        assert!(s.volume("b").unwrap().is_none());
        s.check().unwrap();
    }

    #[test]
    fn a_failing_job_leaves_others_and_itself_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.write(vec![Op::PutVolume(vol("a", "same"))]).unwrap();
        // Same name, other id: the UNIQUE constraint fails the whole job, including its
        // first op.
        let err = s.write(vec![
            Op::PutVolume(vol("c", "other")),
            Op::PutVolume(vol("b", "same")),
        ]);
        assert!(err.is_err());
        assert!(s.volume("c").unwrap().is_none(), "job must be atomic");
        s.write(vec![Op::PutVolume(vol("d", "nd"))]).unwrap();
        assert!(s.volume("d").unwrap().is_some());
    }

    #[test]
    fn paging_and_concurrent_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        s.write(vec![Op::PutVolume(vol(
                            &format!("v{t:02}{i}"),
                            &format!("n{t}-{i}"),
                        ))])
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut after = String::new();
        let mut seen = 0;
        loop {
            let page = s.volumes_after(&after, 7).unwrap();
            if page.is_empty() {
                break;
            }
            seen += page.len();
            after = page.last().unwrap().id.clone();
        }
        assert_eq!(seen, 160);
    }

    fn stage(volume_id: &str) -> StageRecord {
        StageRecord {
            volume_id: volume_id.into(),
            staging_path: format!("/stage/{volume_id}").into(),
            device: None,
            block: false,
            fs_type: "ext4".into(),
            args: String::new(),
            phase: StagePhase::Staged,
            mount_flags: vec![],
        }
    }

    fn publication(target: &str, volume_id: &str) -> PublishRecord {
        PublishRecord {
            target: target.into(),
            volume_id: volume_id.into(),
            staging_path: format!("/stage/{volume_id}").into(),
            readonly: false,
            block: false,
            access_mode: 1,
            args: String::new(),
            device: None,
        }
    }

    /// What the node side reads, from the in-memory view.
    type Seen = (
        Vec<StageRecord>,
        Vec<PublishRecord>,
        Vec<PublishRecord>,
        Option<StageRecord>,
        Option<PublishRecord>,
        Option<VolumeRecord>,
    );
    fn seen(s: &Store) -> Seen {
        (
            s.all_stages().unwrap(),
            s.all_publishes().unwrap(),
            s.publishes_of("a").unwrap(),
            s.stage("a").unwrap(),
            s.publish(Path::new("/t/a-b")).unwrap(),
            s.volume("a").unwrap(),
        )
    }

    #[test]
    fn the_view_holds_what_committed_and_what_a_reopen_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.write(vec![
            Op::PutVolume(vol("a", "na")),
            Op::PutVolume(vol("b", "nb")),
        ])
        .unwrap();
        assert_eq!(s.volume("a").unwrap().unwrap().capacity, 1 << 20, "cached");
        // A failing job (name taken) changes neither the database nor the view.
        let mut grown = vol("a", "na");
        grown.capacity = 2 << 20;
        let failed = s.write(vec![
            Op::PutVolume(grown.clone()),
            Op::PutStage(stage("a")),
            Op::PutVolume(vol("c", "nb")),
        ]);
        assert!(failed.is_err());
        assert_eq!(s.volume("a").unwrap().unwrap().capacity, 1 << 20);
        assert!(s.stage("a").unwrap().is_none());
        // A committed change of a cached volume is seen at once.
        s.write(vec![Op::PutVolume(grown)]).unwrap();
        assert_eq!(s.volume("a").unwrap().unwrap().capacity, 2 << 20);
        s.write(vec![
            Op::PutStage(stage("a")),
            Op::PutStage(stage("b")),
            // Ordered as text, as the database orders them ('-' < '/').
            Op::PutPublish(publication("/t/a/x", "a")),
            Op::PutPublish(publication("/t/a-b", "a")),
            Op::PutPublish(publication("/t/gone", "a")),
            Op::PutPublish(publication("/t/moved", "a")),
        ])
        .unwrap();
        s.write(vec![
            Op::DelPublish("/t/gone".into()),
            Op::PutPublish(publication("/t/moved", "b")),
            Op::DelStage("b".into()),
        ])
        .unwrap();
        let before = seen(&s);
        let targets: Vec<_> = before.2.iter().map(|p| p.target.clone()).collect();
        assert_eq!(targets, [PathBuf::from("/t/a-b"), PathBuf::from("/t/a/x")]);
        assert_eq!(before.0.len(), 1);
        assert_eq!(before.1.len(), 3);
        assert_eq!(s.publishes_of("b").unwrap().len(), 1);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(seen(&s), before, "the view equals what a reopen reads");
        s.write(vec![Op::DelVolume("a".into())]).unwrap();
        assert!(s.volume("a").unwrap().is_none());
    }

    /// Paging through volumes and snapshots runs the prepared statements, never prepares
    /// them again because a LIMIT or a key was bound anew.
    #[test]
    fn paging_queries_are_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.write(
            (0..5)
                .map(|i| Op::PutVolume(vol(&format!("v{i}"), &format!("n{i}"))))
                .collect(),
        )
        .unwrap();
        for (after, limit) in [("", 2), ("v1", 3), ("v3", 1), ("", 100)] {
            s.volumes_after(after, limit).unwrap();
            s.snapshots_after(after, limit).unwrap();
            s.snapshots_of("v0", after, limit).unwrap();
        }
        let conn = s.reader.lock().unwrap();
        for sql in [VOLUMES_AFTER, SNAPSHOTS_AFTER, SNAPSHOTS_OF_AFTER] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }

    #[test]
    fn briefs_read_at_open_agree_with_the_records_until_a_volume_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = vol("b", "nb");
        b.capacity = 3 << 20;
        {
            let s = Store::open(dir.path()).unwrap();
            s.write(vec![
                Op::PutVolume(vol("a", "na")),
                Op::PutVolume(b.clone()),
            ])
            .unwrap();
            let mut ready = vol("a", "na");
            ready.phase = Phase::Ready;
            s.write(vec![Op::PutVolume(ready)]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let briefs = |s: &Store| {
            let mut v: Vec<VolumeBrief> = s.volume_briefs().unwrap().to_vec();
            v.sort_by(|x, y| x.id.cmp(&y.id));
            v
        };
        let of = |v: &VolumeRecord| VolumeBrief {
            id: v.id.clone(),
            pool: v.pool.clone(),
            data: v.data.clone(),
            capacity: v.capacity,
            phase: v.phase,
        };
        let from_records = |s: &Store| s.all_volumes().unwrap().iter().map(of).collect::<Vec<_>>();
        assert_eq!(briefs(&s), from_records(&s));
        assert_eq!(briefs(&s)[0].phase, Phase::Ready);
        assert_eq!(s.provisioned("p"), (1 << 20) + (3 << 20));
        // A volume write drops the briefs read at open; later reads see it.
        b.capacity = 5 << 20;
        s.write(vec![Op::PutVolume(b.clone()), Op::DelVolume("a".into())])
            .unwrap();
        assert_eq!(briefs(&s), vec![of(&b)]);
        let summaries = s.volume_summaries().unwrap();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries["b"], ("p".to_string(), Phase::Creating));
        s.startup_done();
        assert_eq!(briefs(&s), from_records(&s));
    }

    #[test]
    fn phase_names_are_the_serde_names() {
        for p in [Phase::Creating, Phase::Ready, Phase::Deleting] {
            let name = serde_json::to_value(p).unwrap();
            assert_eq!(phase_named(name.as_str().unwrap()).unwrap(), p);
        }
        assert!(phase_named("Gone").is_err());
    }

    #[test]
    fn data_object_names_are_stored_as_file() {
        // The field's name in formats 1 and 2 (and in the pools' meta records).
        let json = serde_json::to_value(vol("v1", "n1")).unwrap();
        assert_eq!(json["file"], "v1.img");
        assert!(json.get("data").is_none(), "{json}");
        let back: VolumeRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.data, "v1.img");
    }

    #[test]
    fn format_version_is_written_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let db = dir.path().join("state.db");
        let version = |c: &Connection| -> String {
            c.query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .unwrap()
        };
        let conn = Connection::open(&db).unwrap();
        assert_eq!(version(&conn), FORMAT_VERSION.to_string());
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'", [])
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path())
            .err()
            .expect("a newer format must be refused");
        let text = err.to_string();
        assert!(
            matches!(err, Error::StateFormat { found: 99, .. }),
            "{text}"
        );
        assert!(
            text.contains("99") && text.contains(&FORMAT_VERSION.to_string()),
            "{text}"
        );
        let conn = Connection::open(&db).unwrap();
        assert_eq!(version(&conn), "99", "a refused database is left as it was");
    }

    #[test]
    fn provisioned_capacity_follows_every_write_and_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut a = vol("a", "na");
        a.capacity = 100;
        let res = s.reserve("p", 100, 150).unwrap();
        assert_eq!(s.provisioned("p"), 100, "reserved");
        assert!(
            matches!(
                s.reserve("p", 51, 150),
                Err(Error::PoolOvercommitted {
                    provisioned: 100,
                    ..
                })
            ),
            "a reservation counts against the limit at once"
        );
        s.write_reserved(vec![Op::PutVolume(a.clone())], res)
            .unwrap();
        assert_eq!(s.provisioned("p"), 100, "reservation became the record");
        // Growth, a second volume, a failed job (UNIQUE name), a delete.
        a.capacity = 120;
        s.write(vec![Op::PutVolume(a.clone())]).unwrap();
        let mut b = vol("b", "nb");
        b.capacity = 30;
        let res = s.reserve("p", 30, 150).unwrap();
        s.write_reserved(vec![Op::PutVolume(b.clone())], res)
            .unwrap();
        assert_eq!(s.provisioned("p"), 150);
        let mut dup = vol("c", "na");
        dup.capacity = 7;
        let res = s.reserve("p", 7, 1000).unwrap();
        assert!(s.write_reserved(vec![Op::PutVolume(dup)], res).is_err());
        assert_eq!(
            s.provisioned("p"),
            150,
            "a failed write gives its reservation back"
        );
        drop(s.reserve("p", 0, 150).unwrap());
        s.write(vec![
            Op::DelVolume("b".into()),
            Op::DelVolume("nope".into()),
        ])
        .unwrap();
        assert_eq!(s.provisioned("p"), 120);
        assert_eq!(s.provisioned("other"), 0);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.provisioned("p"),
            120,
            "recounted from the records at open"
        );
    }

    /// Publication rows of the database, read apart from the store (and its view).
    fn publication_rows(dir: &Path) -> Vec<(String, String)> {
        let conn = Connection::open(dir.join("state.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT target, json_extract(record, '$.args') FROM publishes ORDER BY target")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn publication_changes_are_seen_at_once_and_committed_by_the_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut changed = publication("/t/1", "a");
        changed.args = "new".into();
        s.write_publication(Op::PutPublish(publication("/t/1", "a")))
            .unwrap();
        s.write_publication(Op::PutPublish(publication("/t/2", "a")))
            .unwrap();
        s.write_publication(Op::DelPublish("/t/2".into())).unwrap();
        s.write_publication(Op::PutPublish(changed.clone()))
            .unwrap();
        assert_eq!(s.publishes_of("a").unwrap(), vec![changed.clone()]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let want = vec![("/t/1".to_string(), "new".to_string())];
        while publication_rows(dir.path()) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "the syncer never committed: {:?}",
                publication_rows(dir.path())
            );
            std::thread::sleep(SYNC_INTERVAL / 4);
        }
        // A change lost before the syncer's commit (a killed driver) leaves the database
        // as it was; one still waiting at close is committed.
        s.write_publication(Op::DelPublish("/t/1".into())).unwrap();
        s.lose_deferred();
        s.write_publication(Op::PutPublish(publication("/t/3", "a")))
            .unwrap();
        drop(s);
        let rows = publication_rows(dir.path());
        assert_eq!(
            rows,
            vec![
                ("/t/1".to_string(), "new".to_string()),
                ("/t/3".to_string(), String::new())
            ]
        );
        // A write of a publication replaces the change of it still waiting.
        let s = Store::open(dir.path()).unwrap();
        s.write_publication(Op::DelPublish("/t/3".into())).unwrap();
        s.write_publication(Op::DelPublish("/t/1".into())).unwrap();
        s.write(vec![Op::PutPublish(publication("/t/3", "b"))])
            .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.all_publishes().unwrap(), vec![publication("/t/3", "b")]);
    }

    #[test]
    fn stages_and_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let st = StageRecord {
            volume_id: "a".into(),
            staging_path: "/s".into(),
            device: None,
            block: false,
            fs_type: "ext4".into(),
            args: "x".into(),
            phase: StagePhase::Staging,
            mount_flags: vec![],
        };
        let p = PublishRecord {
            target: "/t".into(),
            volume_id: "a".into(),
            staging_path: "/s".into(),
            readonly: false,
            block: false,
            access_mode: 1,
            args: "y".into(),
            device: None,
        };
        s.write(vec![Op::PutStage(st.clone()), Op::PutPublish(p.clone())])
            .unwrap();
        assert_eq!(s.stage("a").unwrap(), Some(st));
        assert_eq!(s.publishes_of("a").unwrap(), vec![p.clone()]);
        s.write(vec![Op::DelPublish("/t".into()), Op::DelStage("a".into())])
            .unwrap();
        assert!(s.publish(Path::new("/t")).unwrap().is_none());
        assert!(s.all_stages().unwrap().is_empty());
    }
}

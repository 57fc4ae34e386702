//! Node inspection for `volctl volumes`, `snapshots`, `pools` and `doctor`: what the pools,
//! the driver's state database, the loop devices and the mount table say, side by side,
//! whether or not the driver runs.
//!
//! Guarantees:
//! - Reading changes nothing. Pools are not opened through their backends (opening one
//!   creates its directories and turns btrfs quotas on); the state database is opened
//!   read-only (SQLite's WAL lets a reader in beside the running driver's writer), and the
//!   driver's state lock is not taken, so the driver can start, run and stop meanwhile.
//! - Only [`repair`] changes anything, and only with a [`RepairLock`]: the driver's own
//!   state lock, which it cannot take while we hold it, so no repair races an RPC.
//! - A repair moves data aside (`<pool>/orphaned/`) rather than deleting it; it deletes
//!   only metadata records that describe nothing and temporary files of interrupted writes.
//!
//! The driver records the pools it was started with in `<state-dir>/pools.json`
//! ([`record_pools`]), which is how an inspection finds them when it is not told.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::Layout;
use crate::config::{PoolKind, PoolSpec};
use crate::driver::INTERNAL_PREFIX;
use crate::meta::{META_DIR, META_FORMAT, TMP_SUFFIX};
use crate::state::{
    FORMAT_VERSION, Phase, PublishRecord, SnapshotRecord, StagePhase, StageRecord, VolumeRecord,
};
use crate::sys;
use crate::sys::mountinfo::Mount;

/// File in the driver's state dir naming the pools of its last start.
pub const POOLS_FILE: &str = "pools.json";
/// Where a repair moves pool entries nobody records.
pub const ORPHANED_DIR: &str = "orphaned";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be served as given (unknown pool, malformed flag, missing path).
    #[error("{0}")]
    BadInput(String),
    #[error(
        "the driver (pid {pid}) holds {state}: stop it before repairing, so that no repair races its work"
    )]
    DriverRunning { pid: String, state: PathBuf },
    #[error(
        "{path}: state database format {found} is newer than this build understands ({supported})"
    )]
    StateFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("reading the state database {path}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("decoding {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the caller asked for something impossible (a usage error, exit code 2),
    /// as opposed to a failure while looking.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::BadInput(_) | Error::DriverRunning { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// The `--pool` flag that gives `p`, as strata-csi takes it.
pub fn pool_flag(p: &PoolSpec) -> String {
    let mut s = format!("{}={}:{}", p.name, p.kind.name(), p.path.display());
    if p.overcommit != crate::config::Ratio::ONE {
        s.push_str(&format!(",overcommit={}", p.overcommit));
    }
    if !p.enforce {
        s.push_str(",enforce=false");
    }
    s
}

#[derive(Serialize, Deserialize)]
struct PoolsFile {
    pools: Vec<String>,
}

/// Records the driver's pools in `<state_dir>/pools.json` (tmp file and rename, so a
/// reader sees the old or the new list). Called at every start.
pub fn record_pools(state_dir: &Path, pools: &[PoolSpec]) -> std::io::Result<()> {
    let body = PoolsFile {
        pools: pools.iter().map(pool_flag).collect(),
    };
    let path = state_dir.join(POOLS_FILE);
    let tmp = state_dir.join(format!("{POOLS_FILE}{TMP_SUFFIX}"));
    std::fs::create_dir_all(state_dir)?;
    std::fs::write(&tmp, serde_json::to_vec_pretty(&body).expect("plain data"))?;
    std::fs::rename(&tmp, &path)
}

/// Where the pools of an inspection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolsFrom {
    /// `--pool` flags.
    Flags,
    /// `<state>/pools.json`, written by the driver at its last start.
    Recorded,
    /// `volctl up`'s default image pool.
    Default,
}

/// What to inspect: the driver's state dir and its pools.
#[derive(Debug, Clone)]
pub struct Target {
    pub state_dir: PathBuf,
    pub pools: Vec<PoolSpec>,
    pub pools_from: PoolsFrom,
}

impl Target {
    /// The pools given as flags; else those the driver recorded at its last start; else
    /// `default_pool` (an image pool named `default`) when that directory exists. Every
    /// pool given as a flag must exist.
    pub fn resolve(
        state_dir: &Path,
        flags: Vec<PoolSpec>,
        default_pool: Option<&Path>,
    ) -> Result<Target> {
        let target = |pools, pools_from| Target {
            state_dir: state_dir.to_path_buf(),
            pools,
            pools_from,
        };
        if !flags.is_empty() {
            let mut seen = HashSet::new();
            for p in &flags {
                if !seen.insert(p.name.as_str()) {
                    return Err(Error::BadInput(format!("pool {} given twice", p.name)));
                }
                match std::fs::metadata(&p.path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(Error::BadInput(format!(
                            "pool {}: {} is not a directory",
                            p.name,
                            p.path.display()
                        )));
                    }
                    Err(e) => {
                        return Err(Error::BadInput(format!(
                            "pool {}: {}: {e}",
                            p.name,
                            p.path.display()
                        )));
                    }
                }
            }
            return Ok(target(flags, PoolsFrom::Flags));
        }
        let recorded = state_dir.join(POOLS_FILE);
        match std::fs::read(&recorded) {
            Ok(raw) => {
                let bad = |reason: String| Error::Decode {
                    path: recorded.clone(),
                    reason,
                };
                let file: PoolsFile =
                    serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
                let pools = file
                    .pools
                    .iter()
                    .map(|f| crate::config::parse_pool(f).map_err(|e| bad(format!("{f:?}: {e}"))))
                    .collect::<Result<Vec<_>>>()?;
                return Ok(target(pools, PoolsFrom::Recorded));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("reading", recorded)(e)),
        }
        if let Some(dir) = default_pool.filter(|d| d.is_dir()) {
            let spec = crate::config::parse_pool(&format!("default=image:{}", dir.display()))
                .map_err(Error::BadInput)?;
            return Ok(target(vec![spec], PoolsFrom::Default));
        }
        Err(Error::BadInput(format!(
            "no pools known: {} has no {POOLS_FILE} (the driver writes it when it starts) and there is \
             no default pool; name them with --pool NAME=KIND:PATH as strata-csi was given them",
            state_dir.display()
        )))
    }

    /// Checks that `name` is one of the pools.
    pub fn check_pool(&self, name: &str) -> Result<()> {
        if self.pools.iter().any(|p| p.name == name) {
            return Ok(());
        }
        let known: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        Err(Error::BadInput(format!(
            "unknown pool {name:?}; the pools are: {}",
            known.join(", ")
        )))
    }
}

/// The driver's state database, read in one read transaction.
#[derive(Debug, Default)]
struct Db {
    format: u32,
    volumes: Vec<VolumeRecord>,
    snapshots: Vec<SnapshotRecord>,
    stages: Vec<StageRecord>,
    publishes: Vec<PublishRecord>,
}

fn read_db(state_dir: &Path) -> Result<Option<Db>> {
    use rusqlite::{OpenFlags, OptionalExtension};
    let path = state_dir.join("state.db");
    if !path.exists() {
        return Ok(None);
    }
    let db_err = |source| Error::Db {
        path: path.clone(),
        source,
    };
    let mut conn = rusqlite::Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    let tx = conn.transaction().map_err(db_err)?;
    let has_meta: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let format = if has_meta {
        tx.query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(db_err)?
        .map_or(Ok(1), |v| v.parse::<u32>())
        .map_err(|_| Error::Decode {
            path: path.clone(),
            reason: "format version is not a number".into(),
        })?
    } else {
        1
    };
    if format > FORMAT_VERSION {
        return Err(Error::StateFormat {
            path,
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    fn all<T: DeserializeOwned>(
        tx: &rusqlite::Transaction<'_>,
        table: &str,
        path: &Path,
    ) -> Result<Vec<T>> {
        let db_err = |source| Error::Db {
            path: path.to_path_buf(),
            source,
        };
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [table],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = tx
            .prepare(&format!("SELECT record FROM {table}"))
            .map_err(db_err)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(db_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err)?;
        rows.iter()
            .map(|s| {
                serde_json::from_str(s).map_err(|e| Error::Decode {
                    path: path.to_path_buf(),
                    reason: format!("a {table} row: {e}"),
                })
            })
            .collect()
    }
    Ok(Some(Db {
        format,
        volumes: all(&tx, "volumes", &path)?,
        snapshots: all(&tx, "snapshots", &path)?,
        stages: all(&tx, "stages", &path)?,
        publishes: all(&tx, "publishes", &path)?,
    }))
}

/// The pid holding the flock on `<state_dir>/lock` (the running driver), from /proc/locks.
fn lock_holder(state_dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(state_dir.join("lock")).ok()?;
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; blocked waiters start "->".
        let i = f.iter().position(|x| *x == "FLOCK")?;
        let pid = f.get(i + 3)?;
        // Our own lock (a repair holds it) is not a running driver.
        (f.get(i + 4) == Some(&want.as_str()) && *pid != std::process::id().to_string())
            .then(|| pid.to_string())
    })
}

/// The driver as an inspection sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DriverInfo {
    pub state_dir: PathBuf,
    /// The state database, when there is one.
    pub database: Option<PathBuf>,
    pub database_format: Option<u32>,
    /// Pid of the running driver (the holder of the state lock).
    pub running_pid: Option<String>,
    pub pools_from: PoolsFrom,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub name: String,
    pub backend: String,
    pub path: PathBuf,
    /// The filesystem the pool directory lies on.
    pub filesystem: String,
    pub overcommit: String,
    /// `dir` pools: whether sizes are enforced by project quotas.
    pub enforce: bool,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Sum of the capacities of the pool's volume records.
    pub provisioned_bytes: u64,
    /// Size times overcommit: what the volumes may add up to.
    pub limit_bytes: u64,
    pub volumes: usize,
    pub snapshots: usize,
    pub healthy: bool,
    pub condition: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub backend: String,
    pub phase: String,
    pub capacity_bytes: u64,
    /// Bytes used, from the filesystem, quota or qgroup; None when unknown.
    pub used_bytes: Option<u64>,
    pub fs_type: String,
    /// The backing file, directory or subvolume.
    pub path: PathBuf,
    pub data_present: bool,
    pub in_database: bool,
    pub has_record: bool,
    pub loop_devices: Vec<String>,
    pub staging_path: Option<PathBuf>,
    pub staging_mounted: bool,
    pub published: Vec<PathBuf>,
    pub source: Option<String>,
    pub created_unix: i64,
    pub abnormal: bool,
    pub condition: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub backend: String,
    pub phase: String,
    pub source_volume_id: String,
    pub size_bytes: u64,
    pub path: PathBuf,
    pub data_present: bool,
    pub in_database: bool,
    pub has_record: bool,
    pub group_id: Option<String>,
    pub created_unix: i64,
    pub condition: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Something is wrong; `doctor` exits non-zero while one remains.
    Problem,
    /// Worth knowing, nothing to fix (e.g. work the driver finishes at its next start).
    Note,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The pool directory is missing or unusable.
    Pool,
    /// An entry of `volumes/` or `snapshots/` that no database row and no record describe.
    UnrecordedData,
    /// A metadata record whose data is gone and that the database does not hold.
    OrphanRecord,
    /// A database row of a ready object whose data is gone.
    LostData,
    /// An object described by its record only; the driver re-adopts it at start.
    NotInDatabase,
    /// A create, delete or stage that a stop interrupted, or one in progress.
    Interrupted,
    /// A loop device on a pool file that no stage or publication holds.
    UnownedLoopDevice,
    /// A mount of a pool object at a path no stage or publication names.
    StaleMount,
    /// The same pool object mounted several times on one path.
    DuplicateMount,
    /// A stage or publication record whose mount or device is gone.
    StaleRecord,
    /// A temporary file of a record write that did not finish.
    TempFile,
    /// A record this build does not read (undecodable, newer format, another node's).
    Unreadable,
}

/// What a repair does about a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Unmounts the top mount on the path, `times` times.
    Unmount { path: PathBuf, times: usize },
    /// Detaches loop device `number` if still backed by `backing` (sysfs's text).
    Detach { number: u32, backing: String },
    /// Moves a pool entry into `<pool>/orphaned/`.
    MoveAside { from: PathBuf, to: PathBuf },
    /// Removes a file.
    Remove(PathBuf),
}

impl Action {
    fn order(&self) -> u8 {
        match self {
            Action::Unmount { .. } => 0,
            Action::Detach { .. } => 1,
            Action::MoveAside { .. } => 2,
            Action::Remove(_) => 3,
        }
    }

    fn describe(&self) -> String {
        match self {
            Action::Unmount { path, times: 1 } => format!("unmount {}", path.display()),
            Action::Unmount { path, times } => {
                format!("unmount {} {times} times", path.display())
            }
            Action::Detach { number, .. } => format!("detach /dev/loop{number}"),
            Action::MoveAside { to, .. } => format!("move it to {}", to.display()),
            Action::Remove(p) => format!("remove {}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub pool: Option<String>,
    /// The path, device or id the finding is about.
    pub subject: String,
    pub explanation: String,
    /// What `--repair` does; None when it leaves it (the explanation says what to do).
    pub repair: Option<String>,
    #[serde(skip)]
    action: Option<Action>,
}

/// Everything one inspection found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub driver: DriverInfo,
    pub pools: Vec<PoolInfo>,
    pub volumes: Vec<VolumeInfo>,
    pub snapshots: Vec<SnapshotInfo>,
    pub findings: Vec<Finding>,
}

impl Inspection {
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count()
    }
}

/// A metadata record file of one pool: its path and, when readable, the record.
struct RecordFile<T> {
    path: PathBuf,
    record: Option<T>,
    unreadable: Option<String>,
    /// The slot of a record in a slots file (slots.rs) at `path`: not a file to remove.
    slot: Option<u64>,
}

/// A record file's body; its `format` is checked before (`Version`).
#[derive(Deserialize)]
struct Envelope<T> {
    record: T,
}

fn read_records<T: DeserializeOwned>(dir: &Path, tmp: &mut Vec<PathBuf>) -> Vec<RecordFile<T>> {
    let mut out = Vec::new();
    let Ok(names) = sys::fs::list_names(dir) else {
        return out;
    };
    let mut names = names;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if name.ends_with(TMP_SUFFIX) {
            tmp.push(path);
            continue;
        }
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) => {
                out.push(RecordFile {
                    path,
                    record: None,
                    unreadable: Some(e.to_string()),
                    slot: None,
                });
                continue;
            }
        };
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let (record, unreadable) = match serde_json::from_slice::<Version>(&raw) {
            Ok(v) if v.format > META_FORMAT => (
                None,
                Some(format!(
                    "format {} is newer than this build reads ({META_FORMAT})",
                    v.format
                )),
            ),
            Ok(_) => match serde_json::from_slice::<Envelope<T>>(&raw) {
                Ok(e) => (Some(e.record), None),
                Err(e) => (None, Some(e.to_string())),
            },
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(RecordFile {
            path,
            record,
            unreadable,
            slot: None,
        });
    }
    out
}

/// The records in the used slots of a slots file (slots.rs); none when it is absent.
fn read_slots<T: DeserializeOwned>(path: &Path) -> Vec<RecordFile<T>> {
    let Ok(raw) = std::fs::read(path) else {
        return Vec::new();
    };
    crate::slots::parse(&raw)
        .into_iter()
        .map(|(slot, body)| {
            let (record, unreadable) = match crate::meta::decode::<T>(body) {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e)),
            };
            RecordFile {
                path: path.to_path_buf(),
                record,
                unreadable,
                slot: Some(slot),
            }
        })
        .collect()
}

/// What one pool holds, read without opening its backend.
struct PoolScan {
    spec: PoolSpec,
    root: PathBuf,
    present: bool,
    problem: Option<String>,
    filesystem: String,
    space: Option<sys::fs::Space>,
    volumes: Vec<String>,
    snapshots: Vec<String>,
    meta_volumes: Vec<RecordFile<VolumeRecord>>,
    meta_snapshots: Vec<RecordFile<SnapshotRecord>>,
    meta_stages: Vec<RecordFile<StageRecord>>,
    meta_publishes: Vec<RecordFile<PublishRecord>>,
    tmp_files: Vec<PathBuf>,
    /// `dir` pools with project quotas on.
    quota: Option<sys::quota::Flavor>,
    btrfs_fsid: Option<String>,
    /// The pool's filesystem in the mount table and the pool's path within it.
    mount: Option<((u32, u32), PathBuf)>,
}

/// The pool filesystem's name as the dir backend names it ("dir" when unknown).
fn fs_name(dir: &File) -> String {
    match crate::backend::dir::fs_name(dir) {
        Ok(n) => n.into(),
        Err(e) => format!("unknown ({e})"),
    }
}

fn scan_pool(spec: &PoolSpec, table: &[Mount]) -> PoolScan {
    let mut s = PoolScan {
        spec: spec.clone(),
        root: spec.path.clone(),
        present: false,
        problem: None,
        filesystem: String::new(),
        space: None,
        volumes: Vec::new(),
        snapshots: Vec::new(),
        meta_volumes: Vec::new(),
        meta_snapshots: Vec::new(),
        meta_stages: Vec::new(),
        meta_publishes: Vec::new(),
        tmp_files: Vec::new(),
        quota: None,
        btrfs_fsid: None,
        mount: None,
    };
    let root = match spec.path.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            s.problem = Some(format!("{} is not there: {e}", spec.path.display()));
            return s;
        }
    };
    s.root = root.clone();
    let dir = match sys::fs::open_dir(&root) {
        Ok(d) => d,
        Err(e) => {
            s.problem = Some(format!("{} cannot be opened: {e}", root.display()));
            return s;
        }
    };
    s.present = true;
    s.filesystem = fs_name(&dir);
    s.space = sys::fs::space(&dir).ok();
    let list = |sub: &str| {
        let mut v = sys::fs::list_names(&root.join(sub)).unwrap_or_default();
        v.sort();
        v
    };
    s.volumes = list("volumes");
    s.snapshots = list("snapshots");
    let meta = root.join(META_DIR);
    let mut tmp = Vec::new();
    s.meta_volumes = read_records(&meta.join("volumes"), &mut tmp);
    s.meta_snapshots = read_records(&meta.join("snapshots"), &mut tmp);
    s.meta_stages = read_records(&meta.join("stages"), &mut tmp);
    s.meta_publishes = read_records(&meta.join("publishes"), &mut tmp);
    // Slots are written after files and win over them, as at adoption: last here.
    s.meta_publishes.extend(read_slots(
        &meta.join("publishes").join(crate::slots::SLOTS_FILE),
    ));
    let _groups: Vec<RecordFile<serde_json::Value>> = read_records(&meta.join("groups"), &mut tmp);
    s.tmp_files = tmp;
    match spec.kind {
        PoolKind::Dir if spec.enforce => match sys::quota::flavor(&dir) {
            Ok(Some(f)) if sys::quota::probe(&dir).is_ok() => s.quota = Some(f),
            _ => {
                s.problem = Some(format!(
                    "{} ({}) has no project quotas on: the driver refuses to open this pool \
                     (mount with prjquota, or configure enforce=false)",
                    root.display(),
                    s.filesystem
                ))
            }
        },
        PoolKind::Btrfs => {
            if s.filesystem != "btrfs" {
                s.problem = Some(format!(
                    "{} is on {}, not btrfs: the driver refuses to open this pool",
                    root.display(),
                    s.filesystem
                ));
            } else {
                s.btrfs_fsid = sys::btrfs::fsid(&dir).ok();
            }
        }
        _ => {}
    }
    // The mount the pool lies in: the deepest mount point above it (the last of a stack).
    let mut best: Option<&Mount> = None;
    for m in table {
        if root.starts_with(&m.mount_point)
            && best.is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            })
        {
            best = Some(m);
        }
    }
    if let Some(m) = best {
        let below = root.strip_prefix(&m.mount_point).unwrap_or(Path::new(""));
        s.mount = Some(((m.major, m.minor), m.root.join(below)));
    }
    s
}

/// One object (volume or snapshot) of a pool, gathered from every source.
struct Object {
    path: PathBuf,
    present: bool,
}

/// Mount points in `table` that show the pool object `rel` of `pool`: its loop devices'
/// filesystems and block binds (images), or binds of its directory (trees).
fn mounts_of(pool: &PoolScan, rel: &str, loops: &[u32], table: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in table {
        let ours = if pool.spec.kind.layout() == Layout::Image {
            loops.iter().any(|n| {
                m.source == format!("/dev/loop{n}")
                    || (m.fs_type == "devtmpfs" && m.root == Path::new(&format!("/loop{n}")))
            })
        } else {
            pool.mount
                .as_ref()
                .is_some_and(|(dev, base)| (m.major, m.minor) == *dev && m.root == base.join(rel))
        };
        if ours {
            out.push(m.mount_point.clone());
        }
    }
    out
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Creating => "Creating",
        Phase::Ready => "Ready",
        Phase::Deleting => "Deleting",
    }
}

/// The CO's name, with the driver's internal names made readable.
fn display_name(name: &str) -> String {
    name.strip_prefix(INTERNAL_PREFIX)
        .map_or_else(|| name.to_string(), |n| format!("<{n}>"))
}

fn used_of(pool: &PoolScan, obj: &Object, staging: Option<&Path>) -> Option<u64> {
    if !obj.present {
        return None;
    }
    match pool.spec.kind {
        PoolKind::Image => {
            if let Some(st) = staging
                && sys::mount::stat(st).is_ok_and(|s| s.mount_root)
            {
                let v = nix::sys::statvfs::statvfs(st).ok()?;
                let frsize = v.fragment_size() as u64;
                return Some((v.blocks() as u64 - v.blocks_free() as u64) * frsize);
            }
            let f = File::open(&obj.path).ok()?;
            sys::fs::allocated(&f).ok()
        }
        PoolKind::Dir => {
            let d = sys::fs::open_dir(&obj.path).ok()?;
            if let Some(flavor) = pool.quota {
                let fs = sys::fs::open_dir(&pool.root).ok()?;
                let id = sys::quota::project_id(&d).ok()?;
                return sys::quota::get(&fs, flavor, id).ok().map(|q| q.bytes_used);
            }
            sys::tree::usage(&d).ok().map(|(b, _)| b)
        }
        PoolKind::Btrfs => {
            let d = sys::fs::open_dir(&obj.path).ok()?;
            let id = sys::btrfs::subvolume_id(&d).ok()?;
            let q = sys::btrfs::qgroup(pool.btrfs_fsid.as_deref()?, id).ok()??;
            Some(q.referenced)
        }
    }
}

/// The findings of one inspection, and what it learnt on the way that later checks need.
struct Survey<'a> {
    pools: &'a [PoolScan],
    table: &'a [Mount],
    loops: &'a [sys::loopdev::Backing],
    /// No driver holds the state lock: interrupted work stays interrupted until it starts.
    stopped: bool,
    findings: Vec<Finding>,
    /// (pool index, `volumes/<file>`) of every object some row or record describes.
    described: HashSet<(usize, String)>,
    /// Mount points that a stage or publication record names.
    known_mounts: HashSet<PathBuf>,
    /// Loop devices that a stage or publication record names.
    owned_loops: HashSet<u32>,
    /// Where each pool object is mounted: (pool index, rel, mount points).
    object_mounts: Vec<(usize, String, Vec<PathBuf>)>,
}

/// A volume or snapshot as the database and the pool's records describe it.
struct Described<'a> {
    what: &'static str,
    sub: &'static str,
    id: &'a str,
    name: &'a str,
    data: &'a str,
    phase: Phase,
    in_db: bool,
    /// Its metadata record file, if the pool has one.
    record: Option<&'a Path>,
    /// What the CO does to clear a row whose data is gone.
    delete_rpc: &'static str,
}

impl Survey<'_> {
    fn add(
        &mut self,
        kind: FindingKind,
        severity: Severity,
        pool: &str,
        subject: impl Into<String>,
        explanation: impl Into<String>,
        action: Option<Action>,
    ) {
        self.findings.push(Finding {
            kind,
            severity,
            pool: Some(pool.to_string()),
            subject: subject.into(),
            explanation: explanation.into(),
            repair: action.as_ref().map(Action::describe),
            action,
        });
    }

    fn loops_of(&self, path: &Path) -> Vec<u32> {
        self.loops
            .iter()
            .filter(|b| !b.deleted && b.file == path)
            .map(|b| b.number)
            .collect()
    }

    /// Checks an object's data against its row and record; returns the object, its loop
    /// devices, its mounts and what is abnormal about it.
    fn object(
        &mut self,
        pi: usize,
        d: &Described<'_>,
    ) -> (Object, Vec<u32>, Vec<PathBuf>, Vec<String>) {
        let pool = &self.pools[pi];
        let pool_name = pool.spec.name.clone();
        let rel = format!("{}/{}", d.sub, d.data);
        let entries = if d.sub == "volumes" {
            &pool.volumes
        } else {
            &pool.snapshots
        };
        let obj = Object {
            path: pool.root.join(&rel),
            present: pool.present && entries.iter().any(|n| n == d.data),
        };
        let devs = self.loops_of(&obj.path);
        let mounts = mounts_of(pool, &rel, &devs, self.table);
        let pool_present = pool.present;
        self.described.insert((pi, rel.clone()));
        self.object_mounts.push((pi, rel, mounts.clone()));
        let (id, what, name) = (d.id, d.what, display_name(d.name));
        let mut condition = Vec::new();
        if d.phase != Phase::Ready {
            let phase = phase_name(d.phase).to_lowercase();
            condition.push(if self.stopped {
                format!("{phase} interrupted")
            } else {
                format!("{phase} in progress")
            });
            if d.in_db {
                let outcome = if d.phase == Phase::Deleting {
                    "finishes"
                } else {
                    "rolls back"
                };
                self.add(
                    FindingKind::Interrupted,
                    Severity::Note,
                    &pool_name,
                    id,
                    if self.stopped {
                        format!("{what} {id} is {phase}: interrupted; the driver {outcome} it when it starts")
                    } else {
                        format!("{what} {id} is {phase}: in progress")
                    },
                    None,
                );
            }
        }
        if !obj.present && pool_present {
            condition.push(format!("data missing ({})", obj.path.display()));
            if d.phase == Phase::Ready && d.in_db {
                self.add(
                    FindingKind::LostData,
                    Severity::Problem,
                    &pool_name,
                    id,
                    format!(
                        "the database holds ready {what} {id} ({name}) but its data {} is gone; left: \
                         delete it through the CO ({} clears the row)",
                        obj.path.display(),
                        d.delete_rpc
                    ),
                    None,
                );
            } else if let (false, Some(rec)) = (d.in_db, d.record) {
                self.add(
                    FindingKind::OrphanRecord,
                    Severity::Problem,
                    &pool_name,
                    rec.display().to_string(),
                    format!(
                        "metadata record of {what} {id} ({name}) whose data {} is gone and which the \
                         database does not hold: it describes nothing",
                        obj.path.display()
                    ),
                    Some(Action::Remove(rec.to_path_buf())),
                );
            }
        } else if obj.present && !d.in_db {
            condition.push("not in the database".into());
            self.add(
                FindingKind::NotInDatabase,
                Severity::Note,
                &pool_name,
                id,
                format!(
                    "{what} {id} ({name}) has its data and metadata record but no database row; \
                     the driver re-adopts it when it starts"
                ),
                None,
            );
        }
        (obj, devs, mounts, condition)
    }

    fn stale_record(&mut self, pool: &str, id: &str, what: &str, path: &Path) {
        let redo = if what == "stage" { "stage" } else { "publish" };
        let (severity, explanation) = if self.stopped {
            (
                Severity::Note,
                format!(
                    "the {what} of volume {id} at this path is recorded but not mounted (a reboot or \
                     a crash ends mounts); the driver forgets it when it starts and the CO {redo}s again"
                ),
            )
        } else {
            (
                Severity::Problem,
                format!(
                    "the {what} of volume {id} at this path is recorded but not mounted: something \
                     unmounted it behind the driver's back; left: restart the driver (it forgets the \
                     record) and let the CO {redo} again"
                ),
            )
        };
        self.add(
            FindingKind::StaleRecord,
            severity,
            pool,
            path.display().to_string(),
            explanation,
            None,
        );
    }

    /// Stage and publication records of volumes nobody knows.
    fn node_records<T>(
        &mut self,
        pool: &str,
        records: &[RecordFile<T>],
        known: &BTreeMap<String, (VolumeRecord, bool, Option<PathBuf>)>,
        about: impl Fn(&T) -> (&str, String),
    ) {
        for r in records {
            let Some(rec) = &r.record else { continue };
            let (volume_id, what) = about(rec);
            if known.contains_key(volume_id) {
                continue;
            }
            self.add(
                FindingKind::OrphanRecord,
                Severity::Problem,
                pool,
                r.path.display().to_string(),
                format!("{what} of volume {volume_id}, which neither the database nor a volume record holds"),
                // A slot is cleared by the driver, not removed with its file.
                r.slot.is_none().then(|| Action::Remove(r.path.clone())),
            );
        }
    }

    /// Pool entries no row or record describes, and their mounts.
    fn unrecorded(&mut self) {
        for (pi, p) in self.pools.iter().enumerate() {
            for (sub, entries) in [("volumes", &p.volumes), ("snapshots", &p.snapshots)] {
                for e in entries {
                    let rel = format!("{sub}/{e}");
                    if self.described.contains(&(pi, rel.clone())) {
                        continue;
                    }
                    let from = p.root.join(&rel);
                    let to = p.root.join(ORPHANED_DIR).join(&rel);
                    let devs = self.loops_of(&from);
                    self.object_mounts.push((
                        pi,
                        rel.clone(),
                        mounts_of(p, &rel, &devs, self.table),
                    ));
                    self.add(
                        FindingKind::UnrecordedData,
                        Severity::Problem,
                        &p.spec.name,
                        from.display().to_string(),
                        "pool entry that neither the database nor a metadata record describes \
                         (left by a create that failed before it was recorded, or put there by hand); \
                         the driver never uses or deletes it",
                        Some(Action::MoveAside { from, to }),
                    );
                }
            }
        }
    }

    fn temp_files(&mut self) {
        for p in self.pools {
            for t in &p.tmp_files {
                let (severity, explanation, action) = if self.stopped {
                    (
                        Severity::Problem,
                        "temporary file of a metadata record write that was interrupted (records are \
                         written by rename, so the record itself is whole or absent)",
                        Some(Action::Remove(t.clone())),
                    )
                } else {
                    (
                        Severity::Note,
                        "temporary file of a metadata record write; the driver runs, so it may be a \
                         write in flight",
                        None,
                    )
                };
                self.add(
                    FindingKind::TempFile,
                    severity,
                    &p.spec.name,
                    t.display().to_string(),
                    explanation,
                    action,
                );
            }
        }
    }

    /// Mounts of pool objects that no record names, and stacked duplicates.
    fn mounts(&mut self) {
        let all = std::mem::take(&mut self.object_mounts);
        for (pi, rel, mounts) in &all {
            let name = self.pools[*pi].spec.name.clone();
            let mut counts: BTreeMap<&PathBuf, usize> = BTreeMap::new();
            for m in mounts {
                *counts.entry(m).or_default() += 1;
            }
            for (path, n) in counts {
                if !self.known_mounts.contains(path) {
                    let times = if n > 1 {
                        format!(" {n} times")
                    } else {
                        String::new()
                    };
                    self.add(
                        FindingKind::StaleMount,
                        Severity::Problem,
                        &name,
                        path.display().to_string(),
                        format!(
                            "{rel} of pool {name} is mounted here{times}, but no stage or publication \
                             record names this path (left by a crash mid-operation, or mounted by hand)"
                        ),
                        Some(Action::Unmount { path: path.clone(), times: n }),
                    );
                } else if n > 1 {
                    self.add(
                        FindingKind::DuplicateMount,
                        Severity::Problem,
                        &name,
                        path.display().to_string(),
                        format!(
                            "{rel} of pool {name} is mounted {n} times on this path; one is recorded, \
                             the others hide it"
                        ),
                        Some(Action::Unmount { path: path.clone(), times: n - 1 }),
                    );
                }
            }
        }
        self.object_mounts = all;
    }

    /// Loop devices on pool files that no stage or publication holds.
    fn loop_devices(&mut self) {
        for b in self.loops {
            let Some(p) = self
                .pools
                .iter()
                .find(|p| p.present && b.file.starts_with(&p.root))
            else {
                continue;
            };
            if self.owned_loops.contains(&b.number) && !b.deleted {
                continue;
            }
            let dev = format!("/dev/loop{}", b.number);
            // Mounted at a recorded path: some record holds it after all.
            if self
                .table
                .iter()
                .any(|m| m.source == dev && self.known_mounts.contains(&m.mount_point))
            {
                continue;
            }
            let backing = if b.deleted {
                format!("{} (deleted)", b.file.display())
            } else {
                b.file.display().to_string()
            };
            self.add(
                FindingKind::UnownedLoopDevice,
                Severity::Problem,
                &p.spec.name,
                dev.clone(),
                format!(
                    "{dev} is attached to {backing}, but no stage or publication record holds it \
                     (left by a crash between attach and record, or attached by hand)"
                ),
                Some(Action::Detach {
                    number: b.number,
                    backing,
                }),
            );
        }
    }
}

fn pool_info(p: &PoolScan, provisioned: u64) -> PoolInfo {
    let space = p.space.unwrap_or(sys::fs::Space {
        total_bytes: 0,
        free_bytes: 0,
        total_inodes: 0,
        free_inodes: 0,
    });
    let mut condition = p.problem.clone();
    if condition.is_none() && p.spec.kind == PoolKind::Dir && !p.spec.enforce {
        condition = Some("sizes are not enforced (enforce=false)".into());
    }
    if condition.is_none()
        && p.spec.kind == PoolKind::Btrfs
        && p.btrfs_fsid
            .as_deref()
            .is_none_or(|id| !sys::btrfs::qgroups_dir(id).exists())
    {
        condition = Some("btrfs quotas are off (the driver turns them on at start)".into());
    }
    PoolInfo {
        name: p.spec.name.clone(),
        backend: p.spec.kind.name().into(),
        path: p.root.clone(),
        filesystem: p.filesystem.clone(),
        overcommit: p.spec.overcommit.to_string(),
        enforce: p.spec.enforce,
        size_bytes: space.total_bytes,
        used_bytes: space.total_bytes.saturating_sub(space.free_bytes),
        free_bytes: space.free_bytes,
        provisioned_bytes: provisioned,
        limit_bytes: p.spec.overcommit.of(space.total_bytes),
        volumes: p.volumes.len(),
        snapshots: p.snapshots.len(),
        healthy: condition.is_none(),
        condition: condition.unwrap_or_else(|| "ok".into()),
    }
}

/// Objects of one kind by id: the database's rows, then the records of the pools' that
/// the database lacks. Value: (record, in the database, its metadata record file).
type ById<T> = BTreeMap<String, (T, bool, Option<PathBuf>)>;

fn merge<T: Clone>(
    rows: &[T],
    pools: &[PoolScan],
    records: impl Fn(&PoolScan) -> &[RecordFile<T>],
    key: impl Fn(&T) -> (&str, &str),
    survey: &mut Vec<Finding>,
) -> ById<T> {
    let mut out: ById<T> = rows
        .iter()
        .map(|r| (key(r).0.to_string(), (r.clone(), true, None)))
        .collect();
    for p in pools {
        for r in records(p) {
            let why = match &r.record {
                Some(rec) if key(rec).1 == p.spec.name => {
                    let e = out
                        .entry(key(rec).0.to_string())
                        .or_insert_with(|| (rec.clone(), false, None));
                    e.2 = Some(r.path.clone());
                    continue;
                }
                Some(rec) => format!("it names pool {}", key(rec).1),
                None => r.unreadable.clone().unwrap_or_default(),
            };
            survey.push(Finding {
                kind: FindingKind::Unreadable,
                severity: Severity::Note,
                pool: Some(p.spec.name.clone()),
                subject: r.path.display().to_string(),
                explanation: format!(
                    "metadata record not read ({why}); the driver leaves it alone too"
                ),
                repair: None,
                action: None,
            });
        }
    }
    out
}

/// Looks at everything: the pools, the state database, loop devices and mounts.
pub fn inspect(target: &Target) -> Result<Inspection> {
    let table = sys::mountinfo::read().map_err(io("reading", "/proc/self/mountinfo"))?;
    let loops = sys::loopdev::list().map_err(io("listing loop devices in", "/sys/block"))?;
    let running = lock_holder(&target.state_dir);
    let db = read_db(&target.state_dir)?;
    let pools: Vec<PoolScan> = target.pools.iter().map(|p| scan_pool(p, &table)).collect();
    let driver = DriverInfo {
        state_dir: target.state_dir.clone(),
        database: db.as_ref().map(|_| target.state_dir.join("state.db")),
        database_format: db.as_ref().map(|d| d.format),
        running_pid: running.clone(),
        pools_from: target.pools_from,
    };
    let db = db.unwrap_or_default();
    let mut s = Survey {
        pools: &pools,
        table: &table,
        loops: &loops,
        stopped: running.is_none(),
        findings: Vec::new(),
        described: HashSet::new(),
        known_mounts: HashSet::new(),
        owned_loops: HashSet::new(),
        object_mounts: Vec::new(),
    };
    let pool_index: HashMap<&str, usize> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| (p.spec.name.as_str(), i))
        .collect();
    for p in &pools {
        if let Some(why) = &p.problem {
            s.add(
                FindingKind::Pool,
                Severity::Problem,
                &p.spec.name,
                p.root.display().to_string(),
                why.clone(),
                None,
            );
        }
    }
    let mut unconfigured: BTreeMap<&str, usize> = BTreeMap::new();
    for pool in db
        .volumes
        .iter()
        .map(|v| &v.pool)
        .chain(db.snapshots.iter().map(|s| &s.pool))
    {
        if !pool_index.contains_key(pool.as_str()) {
            *unconfigured.entry(pool).or_default() += 1;
        }
    }
    for (pool, n) in unconfigured {
        s.add(
            FindingKind::Pool,
            Severity::Note,
            pool,
            pool,
            format!(
                "{n} database rows name pool {pool}, which this inspection was not given; pass all \
                 the driver's pools with --pool to see them"
            ),
            None,
        );
    }
    let vols = merge(
        &db.volumes,
        &pools,
        |p| &p.meta_volumes,
        |v| (&v.id, &v.pool),
        &mut s.findings,
    );
    let snaps = merge(
        &db.snapshots,
        &pools,
        |p| &p.meta_snapshots,
        |v| (&v.id, &v.pool),
        &mut s.findings,
    );
    let stages: HashMap<&str, &StageRecord> = db
        .stages
        .iter()
        .map(|st| (st.volume_id.as_str(), st))
        .collect();
    // The database commits a publication up to 100 ms after its record (state.rs), and a
    // driver killed meanwhile re-adopts it from the record at start-up: the record wins,
    // as there. (An unpublish shows here until that commit.)
    let mut merged: BTreeMap<&Path, &PublishRecord> = db
        .publishes
        .iter()
        .map(|p| (p.target.as_path(), p))
        .collect();
    for rec in pools
        .iter()
        .flat_map(|p| &p.meta_publishes)
        .filter_map(|r| r.record.as_ref())
    {
        merged.insert(rec.target.as_path(), rec);
    }
    let mut publishes: HashMap<&str, Vec<&PublishRecord>> = HashMap::new();
    for p in merged.into_values() {
        publishes.entry(p.volume_id.as_str()).or_default().push(p);
        s.known_mounts.insert(p.target.clone());
        s.owned_loops
            .extend(p.device.as_deref().and_then(sys::loopdev::number_of));
    }
    for st in &db.stages {
        s.known_mounts.insert(st.staging_path.clone());
        s.owned_loops
            .extend(st.device.as_deref().and_then(sys::loopdev::number_of));
    }

    let mut volumes = Vec::new();
    for (id, (v, in_db, record)) in &vols {
        let Some(&pi) = pool_index.get(v.pool.as_str()) else {
            continue;
        };
        let (obj, devs, mounts, mut condition) = s.object(
            pi,
            &Described {
                what: "volume",
                sub: "volumes",
                id,
                name: &v.name,
                data: &v.data,
                phase: v.phase,
                in_db: *in_db,
                record: record.as_deref(),
                delete_rpc: "DeleteVolume",
            },
        );
        let pool = &pools[pi];
        let stage = stages.get(id.as_str()).copied();
        let staging_mounted = stage.is_some_and(|st| {
            if st.block {
                st.device
                    .as_deref()
                    .and_then(sys::loopdev::number_of)
                    .is_some_and(|n| devs.contains(&n))
            } else {
                mounts.contains(&st.staging_path)
            }
        });
        if let Some(st) = stage
            && st.phase == StagePhase::Staged
            && !staging_mounted
        {
            condition.push(format!("staging {} not mounted", st.staging_path.display()));
            s.stale_record(&v.pool, id, "stage", &st.staging_path);
        }
        let pubs = publishes.get(id.as_str()).cloned().unwrap_or_default();
        for p in &pubs {
            if !mounts.contains(&p.target) {
                condition.push(format!("publish {} not mounted", p.target.display()));
                s.stale_record(&v.pool, id, "publication", &p.target);
            }
        }
        if pool.spec.kind == PoolKind::Dir && !pool.spec.enforce {
            condition.push("size not enforced (enforce=false)".into());
        }
        let staging_path = stage.map(|st| st.staging_path.clone());
        volumes.push(VolumeInfo {
            id: id.clone(),
            name: display_name(&v.name),
            pool: v.pool.clone(),
            backend: pool.spec.kind.name().into(),
            phase: phase_name(v.phase).into(),
            capacity_bytes: v.capacity,
            used_bytes: used_of(
                pool,
                &obj,
                staging_path.as_deref().filter(|_| staging_mounted),
            ),
            fs_type: v.fs_type.clone(),
            path: obj.path.clone(),
            data_present: obj.present,
            in_database: *in_db,
            has_record: record.is_some(),
            loop_devices: devs.iter().map(|n| format!("/dev/loop{n}")).collect(),
            staging_path,
            staging_mounted,
            published: pubs.iter().map(|p| p.target.clone()).collect(),
            source: v.source.as_ref().map(|src| match src {
                crate::state::Source::Snapshot(x) => format!("snapshot:{x}"),
                crate::state::Source::Volume(x) => format!("volume:{x}"),
            }),
            created_unix: v.created_unix,
            abnormal: !condition.is_empty(),
            condition: if condition.is_empty() {
                "healthy".into()
            } else {
                condition.join("; ")
            },
        });
    }

    let mut snapshots = Vec::new();
    for (id, (sn, in_db, record)) in &snaps {
        let Some(&pi) = pool_index.get(sn.pool.as_str()) else {
            continue;
        };
        let (obj, _, _, condition) = s.object(
            pi,
            &Described {
                what: "snapshot",
                sub: "snapshots",
                id,
                name: &sn.name,
                data: &sn.data,
                phase: sn.phase,
                in_db: *in_db,
                record: record.as_deref(),
                delete_rpc: "DeleteSnapshot",
            },
        );
        snapshots.push(SnapshotInfo {
            id: id.clone(),
            name: display_name(&sn.name),
            pool: sn.pool.clone(),
            backend: pools[pi].spec.kind.name().into(),
            phase: phase_name(sn.phase).into(),
            source_volume_id: sn.source_volume_id.clone(),
            size_bytes: sn.size,
            path: obj.path,
            data_present: obj.present,
            in_database: *in_db,
            has_record: record.is_some(),
            group_id: sn.group_id.clone(),
            created_unix: sn.created_unix,
            condition: if condition.is_empty() {
                "ready".into()
            } else {
                condition.join("; ")
            },
        });
    }

    for p in &pools {
        s.node_records(&p.spec.name, &p.meta_stages, &vols, |st| {
            (st.volume_id.as_str(), "stage record".to_string())
        });
        s.node_records(&p.spec.name, &p.meta_publishes, &vols, |pb| {
            (
                pb.volume_id.as_str(),
                format!("publication record at {}", pb.target.display()),
            )
        });
    }
    s.unrecorded();
    s.temp_files();
    s.mounts();
    s.loop_devices();

    let pools_info = pools
        .iter()
        .map(|p| {
            let provisioned = vols
                .values()
                .filter(|(v, in_db, _)| *in_db && v.pool == p.spec.name)
                .map(|(v, _, _)| v.capacity)
                .sum();
            pool_info(p, provisioned)
        })
        .collect();
    Ok(Inspection {
        driver,
        pools: pools_info,
        volumes,
        snapshots,
        findings: s.findings,
    })
}

/// The driver's state lock, held by a repair so that the driver cannot start meanwhile.
pub struct RepairLock {
    _lock: Option<nix::fcntl::Flock<File>>,
}

impl RepairLock {
    /// Takes `<state_dir>/lock` like the driver does (a state dir that does not exist has
    /// no driver and is not created). Refused while the driver runs.
    pub fn take(state_dir: &Path) -> Result<RepairLock> {
        if !state_dir.is_dir() {
            return Ok(RepairLock { _lock: None });
        }
        let path = state_dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening", &path))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(RepairLock { _lock: Some(l) }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::DriverRunning {
                pid: lock_holder(state_dir).unwrap_or_else(|| "unknown".into()),
                state: state_dir.to_path_buf(),
            }),
            Err((_, e)) => Err(io("locking", &path)(e.into())),
        }
    }
}

/// What a repair did about one finding.
#[derive(Debug, Clone, Serialize)]
pub struct Repaired {
    pub finding: Finding,
    pub done: bool,
    /// What was done, or why it was left.
    pub outcome: String,
}

/// Carries out the repairs of `found`'s findings that have one, in a safe order (mounts,
/// then loop devices, then data moved aside, then files removed). Findings without a
/// repair are not touched.
pub fn repair(found: &Inspection, _lock: &RepairLock) -> Vec<Repaired> {
    let mut todo: Vec<&Finding> = found
        .findings
        .iter()
        .filter(|f| f.action.is_some())
        .collect();
    todo.sort_by_key(|f| f.action.as_ref().map_or(9, Action::order));
    let mut out = Vec::new();
    for f in todo {
        let action = f.action.as_ref().expect("filtered");
        let (done, outcome) = match run(action) {
            Ok(msg) => (true, msg),
            Err(msg) => (false, msg),
        };
        out.push(Repaired {
            finding: f.clone(),
            done,
            outcome,
        });
    }
    out
}

fn run(action: &Action) -> std::result::Result<String, String> {
    match action {
        Action::Unmount { path, times } => {
            for i in 0..*times {
                match sys::mount::umount(path) {
                    Ok(true) => {}
                    Ok(false) => return Err(format!("{} was no longer mounted", path.display())),
                    Err(e) => {
                        return Err(format!(
                            "unmounting {} failed after {i} of {times}: {e} (a process may use it: fuser -vm {})",
                            path.display(),
                            path.display()
                        ));
                    }
                }
            }
            Ok(format!("unmounted {}", path.display()))
        }
        Action::Detach { number, backing } => {
            // `backing` is sysfs's text, " (deleted)" included, which is what the check
            // compares against.
            match sys::loopdev::detach_if_backed_by(*number, Path::new(backing)) {
                Ok(true) => Ok(format!("detached /dev/loop{number}")),
                Ok(false) if sys::loopdev::autoclear(*number) => Err(format!(
                    "/dev/loop{number} detaches by itself when its last user closes it; a process \
                     holds it open (fuser -v /dev/loop{number})"
                )),
                Ok(false) => Err(format!(
                    "/dev/loop{number} is no longer attached to {backing}"
                )),
                Err(e) => Err(format!("detaching /dev/loop{number}: {e}")),
            }
        }
        Action::MoveAside { from, to } => {
            let mut dest = to.clone();
            let mut n = 1;
            while dest.symlink_metadata().is_ok() {
                dest = PathBuf::from(format!("{}.{n}", to.display()));
                n += 1;
            }
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            std::fs::rename(from, &dest)
                .map_err(|e| format!("moving {} to {}: {e}", from.display(), dest.display()))?;
            Ok(format!(
                "moved {} to {} (delete it there once you know it is not needed)",
                from.display(),
                dest.display()
            ))
        }
        Action::Remove(path) => match std::fs::remove_file(path) {
            Ok(()) => Ok(format!("removed {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("{} was already gone", path.display()))
            }
            Err(e) => Err(format!("removing {}: {e}", path.display())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: &str) -> VolumeRecord {
        VolumeRecord {
            id: id.into(),
            name: format!("name-{id}"),
            pool: "p".into(),
            data: format!("{id}.img"),
            capacity: 1 << 20,
            fs_type: "ext4".into(),
            parameters: BTreeMap::new(),
            mutable_parameters: BTreeMap::new(),
            direct_io: false,
            source: None,
            created_unix: 1,
            phase: Phase::Ready,
            ephemeral: None,
        }
    }

    #[test]
    fn the_database_is_read_beside_a_running_driver_and_after_a_clean_stop() {
        use crate::state::{Op, Store};
        let dir = tempfile::tempdir().unwrap();
        assert!(read_db(dir.path()).unwrap().is_none(), "no database yet");
        let store = Store::open(dir.path()).unwrap();
        store.write(vec![Op::PutVolume(volume("a"))]).unwrap();
        // The driver holds its lock and its connections: reading needs neither.
        let db = read_db(dir.path()).unwrap().unwrap();
        assert_eq!((db.format, db.volumes.len()), (FORMAT_VERSION, 1));
        assert_eq!(
            lock_holder(dir.path()),
            None,
            "our own lock is not a driver's"
        );
        store.write(vec![Op::PutVolume(volume("b"))]).unwrap();
        assert_eq!(read_db(dir.path()).unwrap().unwrap().volumes.len(), 2);
        // A clean stop checkpoints the WAL away; a read-only open still works and leaves
        // the database as it was.
        drop(store);
        let before = std::fs::read(dir.path().join("state.db")).unwrap();
        assert_eq!(read_db(dir.path()).unwrap().unwrap().volumes.len(), 2);
        assert_eq!(std::fs::read(dir.path().join("state.db")).unwrap(), before);
        let store = Store::open(dir.path()).expect("the driver starts after a read");
        assert_eq!(store.all_volumes().unwrap().len(), 2);
    }

    #[test]
    fn pool_flags_round_trip() {
        for flag in [
            "a=image:/srv/a",
            "b=btrfs:/srv/b,overcommit=2.5",
            "c=dir:/srv/c,enforce=false",
        ] {
            let spec = crate::config::parse_pool(flag).unwrap();
            assert_eq!(pool_flag(&spec), flag);
        }
    }

    #[test]
    fn pools_are_found_from_flags_the_record_or_the_default() {
        let state = tempfile::tempdir().unwrap();
        let pool = tempfile::tempdir().unwrap();
        let spec =
            crate::config::parse_pool(&format!("fast=image:{}", pool.path().display())).unwrap();
        let err = Target::resolve(state.path(), vec![], None).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        let t = Target::resolve(state.path(), vec![], Some(pool.path())).unwrap();
        assert_eq!(
            (t.pools[0].name.as_str(), t.pools_from),
            ("default", PoolsFrom::Default)
        );
        record_pools(state.path(), std::slice::from_ref(&spec)).unwrap();
        let t = Target::resolve(state.path(), vec![], Some(pool.path())).unwrap();
        assert_eq!(
            (t.pools.clone(), t.pools_from),
            (vec![spec.clone()], PoolsFrom::Recorded)
        );
        assert!(t.check_pool("fast").is_ok());
        assert!(t.check_pool("slow").unwrap_err().is_bad_input());
        let missing = crate::config::parse_pool("x=image:/nonexistent/strata-pool").unwrap();
        let err = Target::resolve(state.path(), vec![missing], None).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("/nonexistent"),
            "{err}"
        );
        let err = Target::resolve(state.path(), vec![spec.clone(), spec], None).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}

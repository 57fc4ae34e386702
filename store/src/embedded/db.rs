//! The SQLite file: schema, connections and the write transaction.
//!
//! One global revision counter (as etcd's) numbers every write; each write also appends a
//! row to `watch_log`, which watches read from. The log is compacted beyond a bound;
//! `compacted` remembers, per kind, the newest dropped entry, so a watch is Gone only when
//! an entry it needs was dropped (a watch on a quiet kind never is), and `meta.compacted`
//! the overall bound.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::failpoint;

/// The format of `store.db` this build writes. Opening checks `meta.schema`: an older file
/// is migrated step by step in the opening transaction, a newer one is refused.
pub const SCHEMA_VERSION: u64 = 3;

/// One step of a migration: SQL, or objects written through the API's own rules.
enum Migration {
    Sql(&'static str),
    Objects(fn(&mut Tx<'_>) -> Result<()>),
}

/// Each migration takes the database from version `i + 1` to `i + 2`.
const MIGRATIONS: &[Migration] = &[
    // 1 -> 2: namespaced watches read the log by (kind, namespace) instead of filtering.
    Migration::Sql(
        "CREATE INDEX IF NOT EXISTS watch_log_by_kind_ns ON watch_log (kind, namespace, resource_version);",
    ),
    // 2 -> 3: namespaces are objects: the initial three, and one per namespace in use.
    Migration::Objects(|tx| {
        let created = super::namespaces::create_missing(tx)?;
        if !created.is_empty() {
            tracing::info!(namespaces = ?created, "namespaces created");
        }
        Ok(())
    }),
];

/// Version 1, as first released; newer versions are reached through `MIGRATIONS`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 1), ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS objects (
    kind             TEXT NOT NULL,
    namespace        TEXT NOT NULL,
    name             TEXT NOT NULL,
    uid              TEXT NOT NULL,
    resource_version INTEGER NOT NULL,
    object           TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watch_log (
    resource_version INTEGER PRIMARY KEY,
    kind             TEXT NOT NULL,
    namespace        TEXT NOT NULL,
    name             TEXT NOT NULL,
    type             TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
    object           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS watch_log_by_kind ON watch_log (kind, resource_version);
CREATE TABLE IF NOT EXISTS compacted (
    kind             TEXT PRIMARY KEY,
    resource_version INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Read connections per handle.
const READERS: usize = 3;

/// What a watch log row says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
    fn parse(s: &str) -> Change {
        match s {
            "ADDED" => Change::Added,
            "DELETED" => Change::Deleted,
            _ => Change::Modified,
        }
    }
}

pub(crate) struct Db {
    pub(crate) path: PathBuf,
    pub(crate) syncer: Arc<Syncer>,
    writer: Mutex<Connection>,
    /// A few read connections, so a long list does not hold up every get.
    readers: Vec<Mutex<Connection>>,
    retain: u64,
}

/// Creates `path` (if missing) readable by its owner only, since the store holds Secrets,
/// and refuses a symlink planted in its place. SQLite gives its -wal and -shm files the
/// database file's mode.
pub(crate) fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map(drop)
        .map_err(|source| Error::Io {
            context: "opening",
            path: path.to_path_buf(),
            source,
        })
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(Error::db("opening the database"))?;
    // Other processes hold write locks for a transaction at a time; wait for them rather
    // than fail.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(Error::db("setting busy_timeout"))?;
    // WAL lets readers in other processes run while one writes. synchronous=NORMAL syncs
    // the WAL at checkpoints, not per commit, and never inside the write lock; a write is
    // acknowledged only after `Syncer::sync` has fdatasync'ed the WAL past its commit
    // (group commit), so an acknowledged write also survives an OS crash.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(Error::db("enabling WAL"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(Error::db("setting synchronous"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(Error::db("setting foreign_keys"))?;
    // Every statement the store runs stays prepared (the default keeps 16, fewer than a
    // write transaction uses, so they would be parsed again and again).
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that never depend on the values bound: otherwise SQLite prepares a cached
    // statement again whenever a parameter it planned by is bound anew (a LIMIT, a string
    // compared by `=` next to an ORDER BY), which every watch's log query did after each
    // commit.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(Error::db("setting the query planner stability guarantee"))?;
    Ok(conn)
}

impl Db {
    pub(crate) fn open(path: &Path, retain: u64) -> Result<Db> {
        create_private(path)?;
        let mut writer = open_connection(path)?;
        migrate(&mut writer, path)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<Result<_>>()?;
        let syncer = Arc::new(Syncer::new(path));
        // The database and its WAL exist now: make their directory entries durable too.
        if let Some(dir) = path.parent() {
            fsync_path(dir, false)?;
        }
        Ok(Db {
            path: path.to_path_buf(),
            syncer,
            writer: Mutex::new(writer),
            readers,
            retain: retain.max(1),
        })
    }
}

/// Creates the schema of a new file, or checks an existing file's format version and
/// migrates it step by step, in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Error::db("creating the schema"))?;
    let has_meta: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )
        .map_err(Error::db("reading the schema version"))?;
    let found = if has_meta {
        meta(&tx, "schema")?
    } else {
        tx.execute_batch(SCHEMA)
            .map_err(Error::db("creating the schema"))?;
        1
    };
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let start = meta(&tx, "revision")?;
    let mut wtx = Tx {
        tx,
        revision: start,
        kinds: BTreeSet::new(),
    };
    for (step, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(found.saturating_sub(1) as usize)
    {
        match migration {
            Migration::Sql(sql) => wtx
                .tx
                .execute_batch(sql)
                .map_err(Error::db("migrating the schema"))?,
            Migration::Objects(f) => f(&mut wtx)?,
        }
        tracing::info!(path = %path.display(), from = step + 1, to = step + 2, "store database migrated");
    }
    let Tx { tx, revision, .. } = wtx;
    if revision != start {
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'revision'",
            params![revision as i64],
        )
        .map_err(Error::db("advancing the revision"))?;
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'schema'",
        params![SCHEMA_VERSION as i64],
    )
    .map_err(Error::db("recording the schema version"))?;
    tx.commit().map_err(Error::db("creating the schema"))
}

impl Db {
    /// Runs `f` in one IMMEDIATE transaction (the write lock is taken up front, so two
    /// processes never deadlock upgrading a read). Returns the result, the revision after
    /// it and the kinds it changed.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<(T, u64, BTreeSet<String>)> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::db("beginning a write"))?;
        let start = meta(&tx, "revision")?;
        let mut wtx = Tx {
            tx,
            revision: start,
            kinds: BTreeSet::new(),
        };
        let out = f(&mut wtx)?;
        let Tx {
            tx,
            revision,
            kinds,
        } = wtx;
        if revision != start {
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'revision'")
                .and_then(|mut s| s.execute(params![revision as i64]))
                .map_err(Error::db("advancing the revision"))?;
            failpoint::hit("write:revision-advanced");
            let compacted = meta(&tx, "compacted")?;
            // Compact in steps of a quarter of the bound so it is not paid on every write.
            if revision.saturating_sub(compacted) > self.retain + self.retain / 4 {
                let upto = revision - self.retain;
                tx.prepare_cached(
                    "INSERT INTO compacted (kind, resource_version)
                     SELECT kind, MAX(resource_version) FROM watch_log
                     WHERE resource_version <= ?1 GROUP BY kind
                     ON CONFLICT (kind) DO UPDATE SET
                       resource_version = max(resource_version, excluded.resource_version)",
                )
                .and_then(|mut s| s.execute(params![upto as i64]))
                .map_err(Error::db("compacting the watch log"))?;
                tx.prepare_cached("DELETE FROM watch_log WHERE resource_version <= ?1")
                    .and_then(|mut s| s.execute(params![upto as i64]))
                    .map_err(Error::db("compacting the watch log"))?;
                tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'compacted'")
                    .and_then(|mut s| s.execute(params![upto as i64]))
                    .map_err(Error::db("compacting the watch log"))?;
                failpoint::hit("write:compacted");
            }
        }
        failpoint::hit("write:before-commit");
        tx.commit().map_err(Error::db("committing"))?;
        failpoint::hit("write:after-commit");
        Ok((out, revision, kinds))
    }

    /// Runs `f` in one read transaction: a consistent snapshot.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Reader<'_>) -> Result<T>) -> Result<T> {
        // Take a free reader if there is one, else wait for the first.
        let mut conn = self
            .readers
            .iter()
            .find_map(|r| r.try_lock().ok())
            .unwrap_or_else(|| self.readers[0].lock().unwrap_or_else(|p| p.into_inner()));
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(Error::db("beginning a read"))?;
        let out = f(&Reader { tx: &tx })?;
        tx.finish().map_err(Error::db("ending a read"))?;
        Ok(out)
    }
}

/// Group commit: makes every commit finished before the call durable with one
/// fdatasync of the WAL shared by all callers waiting at the same time. A caller that
/// arrives while a sync runs waits for the next one (its commit may have missed the
/// running one); one sync then covers every commit that arrived meanwhile.
pub(crate) struct Syncer {
    wal: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Tickets handed out: one per commit waiting to be durable.
    issued: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    running: bool,
    /// Syncs done, for the tests and the benchmark.
    syncs: u64,
}

impl Syncer {
    fn new(db: &Path) -> Syncer {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Syncer {
            wal: PathBuf::from(wal),
            state: Mutex::default(),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once a WAL sync that started after this call has finished. Blocking.
    pub(crate) fn sync(&self) -> Result<()> {
        let mut s = self.lock();
        s.issued += 1;
        let ticket = s.issued;
        loop {
            if s.synced >= ticket {
                return Ok(());
            }
            if s.running {
                s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead a sync for every ticket issued so far: their commits are all done.
            s.running = true;
            let upto = s.issued;
            drop(s);
            failpoint::hit("write:before-sync");
            let r = fsync_path(&self.wal, true);
            s = self.lock();
            s.running = false;
            if r.is_ok() {
                s.synced = s.synced.max(upto);
                s.syncs += 1;
            }
            self.done.notify_all();
            // On an error the waiters try again themselves; this caller reports it.
            r?;
        }
    }

    /// (tickets made durable, syncs done).
    pub(crate) fn stats(&self) -> (u64, u64) {
        let s = self.lock();
        (s.synced, s.syncs)
    }
}

/// The background sync of an ordered handle: a write marks it dirty; at most `within`
/// later one group-commit sync covers every write made meanwhile.
pub(crate) struct Flusher {
    shared: Arc<(Mutex<FlushState>, Condvar)>,
}

#[derive(Default)]
struct FlushState {
    dirty: bool,
    closed: bool,
}

impl Flusher {
    pub(crate) fn spawn(syncer: Arc<Syncer>, within: std::time::Duration) -> Result<Flusher> {
        let shared = Arc::new((Mutex::new(FlushState::default()), Condvar::new()));
        let theirs = shared.clone();
        let wal = syncer.wal.clone();
        std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || flush_loop(&syncer, &theirs, within))
            .map_err(|source| Error::Io {
                context: "starting the store's flush thread",
                path: wal,
                source,
            })?;
        Ok(Flusher { shared })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mark_dirty(&self) {
        let mut s = self.lock();
        if !s.dirty {
            s.dirty = true;
            self.shared.1.notify_all();
        }
    }

    /// The last handle went: sync what is dirty, then the thread ends.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.shared.1.notify_all();
    }
}

fn flush_loop(syncer: &Syncer, shared: &(Mutex<FlushState>, Condvar), within: std::time::Duration) {
    let (state, cv) = shared;
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let mut s = lock();
        while !s.dirty && !s.closed {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if !s.dirty {
            return;
        }
        // Let writes gather for up to `within` (cut short by close), then one sync.
        if !s.closed {
            s = cv
                .wait_timeout_while(s, within, |s| !s.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.dirty = false;
        let closing = s.closed;
        drop(s);
        match syncer.sync() {
            Ok(()) if closing => return,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %strata_report::chain(&e), "background sync of the store failed");
                if closing {
                    return;
                }
                lock().dirty = true;
                std::thread::sleep(within);
            }
        }
    }
}

/// fdatasync (`data`) or fsync of a file or directory by path. A WAL that does not exist
/// is fine: SQLite removes it only after checkpointing it into the synced database.
fn fsync_path(path: &Path, data: bool) -> Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && data => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                context: "opening to sync",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if data {
        file.sync_data()
    } else {
        file.sync_all()
    }
    .map_err(|source| Error::Io {
        context: "syncing",
        path: path.to_path_buf(),
        source,
    })
}

fn meta(conn: &Connection, key: &str) -> Result<u64> {
    let v: i64 = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row(params![key], |r| r.get(0)))
        .map_err(Error::db("reading meta"))?;
    Ok(v as u64)
}

fn decode(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|source| Error::Decode {
        kind: "object".into(),
        source,
    })
}

fn get_object(conn: &Connection, kind: &str, ns: &str, name: &str) -> Result<Option<Value>> {
    let text: Option<String> = conn
        .prepare_cached(
            "SELECT object FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![kind, ns, name], |r| r.get(0))
                .optional()
        })
        .map_err(Error::db("reading an object"))?;
    text.as_deref().map(decode).transpose()
}

fn list_objects(conn: &Connection, kind: &str, ns: Option<&str>) -> Result<Vec<Value>> {
    list_decoded(conn, kind, ns, decode)
}

fn list_decoded<T>(
    conn: &Connection,
    kind: &str,
    ns: Option<&str>,
    decode: fn(&str) -> Result<T>,
) -> Result<Vec<T>> {
    let rows: Vec<String> = match ns {
        Some(ns) => conn
            .prepare_cached("SELECT object FROM objects WHERE kind = ?1 AND namespace = ?2 ORDER BY namespace, name")
            .and_then(|mut s| {
                s.query_map(params![kind, ns], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            }),
        None => conn
            .prepare_cached("SELECT object FROM objects WHERE kind = ?1 ORDER BY namespace, name")
            .and_then(|mut s| {
                s.query_map(params![kind], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            }),
    }
    .map_err(Error::db("listing objects"))?;
    rows.iter().map(|t| decode(t)).collect()
}

/// A consistent read snapshot.
pub(crate) struct Reader<'c> {
    tx: &'c rusqlite::Transaction<'c>,
}

/// One watch log row, its object decoded by the reader's choice of decoder.
pub(crate) struct LogEntry<T> {
    pub(crate) change: Change,
    pub(crate) object: T,
}

/// Decodes a stored object's text as a JSON value.
pub(crate) fn decode_value(text: &str) -> Result<Value> {
    decode(text)
}

impl Reader<'_> {
    pub(crate) fn revision(&self) -> Result<u64> {
        meta(self.tx, "revision")
    }
    pub(crate) fn get(&self, kind: &str, ns: &str, name: &str) -> Result<Option<Value>> {
        get_object(self.tx, kind, ns, name)
    }
    /// The objects of `kind` (in `ns`), each decoded from its stored text by `decode`.
    pub(crate) fn list_decoded<T>(
        &self,
        kind: &str,
        ns: Option<&str>,
        decode: fn(&str) -> Result<T>,
    ) -> Result<Vec<T>> {
        list_decoded(self.tx, kind, ns, decode)
    }

    /// Log entries of `kind` after `from`, at most `limit`, and the revision a caller has
    /// seen everything up to. Gone when entries after `from` were compacted. Each object
    /// is decoded from its stored text by `decode` (straight into a typed struct for a
    /// typed watch, with no JSON value in between).
    pub(crate) fn log_after<T>(
        &self,
        kind: &str,
        ns: Option<&str>,
        from: u64,
        limit: usize,
        decode: fn(&str) -> Result<T>,
    ) -> Result<(Vec<LogEntry<T>>, u64)> {
        let dropped: i64 = self
            .tx
            .prepare_cached("SELECT resource_version FROM compacted WHERE kind = ?1")
            .and_then(|mut s| s.query_row(params![kind], |r| r.get(0)).optional())
            .map_err(Error::db("reading the compaction bound"))?
            .unwrap_or(0);
        if from < dropped as u64 {
            return Err(Error::Gone {
                resource_version: from,
            });
        }
        let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, String, String)> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        };
        let rows: Vec<(i64, String, String)> = match ns {
            Some(ns) => self.tx.prepare_cached(log_query(true)).and_then(|mut s| {
                s.query_map(params![kind, from as i64, ns, limit as i64], map)?
                    .collect()
            }),
            None => self.tx.prepare_cached(log_query(false)).and_then(|mut s| {
                s.query_map(params![kind, from as i64, limit as i64], map)?
                    .collect()
            }),
        }
        .map_err(Error::db("reading the watch log"))?;
        // A short page means nothing newer exists for this kind up to the snapshot's
        // revision, so the caller may move its cursor there (and never falls behind a
        // compaction while its kind is quiet).
        let seen = if rows.len() < limit {
            self.revision()?
        } else {
            rows.last().map_or(from, |r| r.0 as u64)
        };
        let entries = rows
            .into_iter()
            .map(|(_, t, o)| {
                Ok(LogEntry {
                    change: Change::parse(&t),
                    object: decode(&o)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok((entries, seen))
    }
}

/// The watch log query of [`Reader::log_after`], by namespace or not.
fn log_query(by_namespace: bool) -> &'static str {
    if by_namespace {
        "SELECT resource_version, type, object FROM watch_log
         WHERE kind = ?1 AND resource_version > ?2 AND namespace = ?3
         ORDER BY resource_version LIMIT ?4"
    } else {
        "SELECT resource_version, type, object FROM watch_log
         WHERE kind = ?1 AND resource_version > ?2
         ORDER BY resource_version LIMIT ?3"
    }
}

/// A write transaction; every change gets the next revision.
pub(crate) struct Tx<'c> {
    tx: rusqlite::Transaction<'c>,
    revision: u64,
    /// Kinds written, whose watchers are woken after the commit.
    kinds: BTreeSet<String>,
}

impl Tx<'_> {
    pub(crate) fn get(&self, kind: &str, ns: &str, name: &str) -> Result<Option<Value>> {
        get_object(&self.tx, kind, ns, name)
    }
    pub(crate) fn list(&self, kind: &str, ns: Option<&str>) -> Result<Vec<Value>> {
        list_objects(&self.tx, kind, ns)
    }

    /// Every namespace some namespaced object is in.
    pub(crate) fn namespaces_in_use(&self) -> Result<Vec<String>> {
        self.tx
            .prepare_cached("SELECT DISTINCT namespace FROM objects WHERE namespace != ''")
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(Error::db("listing namespaces in use"))
    }

    pub(crate) fn meta_get(&self, key: &str) -> Result<Option<i64>> {
        self.tx
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(Error::db("reading meta"))
    }

    pub(crate) fn meta_set(&self, key: &str, value: i64) -> Result<()> {
        self.tx
            .prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .and_then(|mut s| s.execute(params![key, value]))
            .map_err(Error::db("writing meta"))?;
        Ok(())
    }

    /// Runs `f` so that, when it fails, what it wrote is undone and the transaction's
    /// earlier writes stay (a savepoint). The outer error is one undoing failed: then the
    /// whole transaction must be dropped.
    pub(crate) fn undo_on_error<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Result<T>> {
        // Prepared once per connection: a bind batch runs these a few thousand times.
        let run = |tx: &rusqlite::Transaction<'_>, sql: &str| {
            tx.prepare_cached(sql).and_then(|mut s| s.execute([]))
        };
        run(&self.tx, "SAVEPOINT one_write").map_err(Error::db("beginning a savepoint"))?;
        let (revision, kinds) = (self.revision, self.kinds.clone());
        match f(self) {
            Ok(out) => {
                run(&self.tx, "RELEASE one_write").map_err(Error::db("releasing a savepoint"))?;
                Ok(Ok(out))
            }
            Err(e) => {
                run(&self.tx, "ROLLBACK TO one_write")
                    .and_then(|_| run(&self.tx, "RELEASE one_write"))
                    .map_err(Error::db("rolling back to a savepoint"))?;
                self.revision = revision;
                self.kinds = kinds;
                Ok(Err(e))
            }
        }
    }

    /// Stores `obj` (stamping its resourceVersion) and logs the change.
    pub(crate) fn put(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        obj: &mut Value,
        change: Change,
    ) -> Result<u64> {
        self.revision += 1;
        let rv = self.revision;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let text = obj.to_string();
        self.tx
            .prepare_cached(
                "INSERT INTO objects (kind, namespace, name, uid, resource_version, object)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (kind, namespace, name) DO UPDATE SET
                   uid = excluded.uid, resource_version = excluded.resource_version, object = excluded.object",
            )
            .and_then(|mut s| s.execute(params![kind, ns, name, uid, rv as i64, text]))
            .map_err(Error::db("writing an object"))?;
        failpoint::hit("put:object-written");
        self.log(kind, ns, name, change, &text)?;
        failpoint::hit("put:logged");
        Ok(rv)
    }

    /// Removes the object; its last state (stamped with the deletion's revision) goes to
    /// the log.
    pub(crate) fn remove(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        obj: &mut Value,
    ) -> Result<u64> {
        self.revision += 1;
        let rv = self.revision;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.tx
            .prepare_cached("DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3")
            .and_then(|mut s| s.execute(params![kind, ns, name]))
            .map_err(Error::db("deleting an object"))?;
        failpoint::hit("remove:object-deleted");
        self.log(kind, ns, name, Change::Deleted, &obj.to_string())?;
        Ok(rv)
    }

    fn log(&mut self, kind: &str, ns: &str, name: &str, change: Change, text: &str) -> Result<()> {
        if !self.kinds.contains(kind) {
            self.kinds.insert(kind.to_string());
        }
        self.tx
            .prepare_cached(
                "INSERT INTO watch_log (resource_version, kind, namespace, name, type, object)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    self.revision as i64,
                    kind,
                    ns,
                    name,
                    change.as_str(),
                    text
                ])
            })
            .map_err(Error::db("appending to the watch log"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(db: &Db, sql: &str) -> i64 {
        db.read(|r| {
            r.tx.query_row(sql, [], |row| row.get(0))
                .map_err(Error::db("counting"))
        })
        .unwrap()
    }

    /// Reading the watch log again and again runs the prepared statements, never
    /// prepares them again.
    #[test]
    fn the_watch_log_query_is_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("store.db"), 100).unwrap();
        let obj = || serde_json::json!({"metadata": {"name": "a", "uid": "u"}});
        for _ in 0..3 {
            let from = db.read(|r| r.revision()).unwrap();
            db.write(|tx| tx.put("ConfigMap", "default", "a", &mut obj(), Change::Added))
                .unwrap();
            for ns in [None, Some("default")] {
                let (entries, _) = db
                    .read(|r| r.log_after("ConfigMap", ns, from, 512, decode_value))
                    .unwrap();
                assert_eq!(entries.len(), 1, "after {from}, in {ns:?}");
            }
        }
        // One reader served every read (none ran at the same time).
        let conn = db.readers[0].lock().unwrap();
        for by_ns in [false, true] {
            let stmt = conn.prepare_cached(log_query(by_ns)).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "by namespace: {by_ns}"
            );
        }
    }

    /// A write that fails after it wrote rows leaves none of them, nor its revision,
    /// while the transaction's earlier and later writes are committed.
    #[test]
    fn a_failed_write_in_a_transaction_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("store.db"), 100).unwrap();
        let start = db.read(|r| r.revision()).unwrap();
        let obj = |name: &str| serde_json::json!({"metadata": {"name": name, "uid": "u"}});
        let ((), revision, kinds) = db
            .write(|tx| {
                tx.undo_on_error(|tx| {
                    tx.put("ConfigMap", "default", "a", &mut obj("a"), Change::Added)
                })??;
                let failed = tx.undo_on_error(|tx| {
                    tx.put("Secret", "default", "b", &mut obj("b"), Change::Added)?;
                    Err::<(), _>(Error::invalid("", "refused after writing"))
                })?;
                assert!(failed.is_err());
                tx.undo_on_error(|tx| {
                    tx.put("ConfigMap", "default", "c", &mut obj("c"), Change::Added)
                })??;
                Ok(())
            })
            .unwrap();
        assert_eq!(revision, start + 2, "the undone write's version is reused");
        assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["ConfigMap"]);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM objects WHERE kind = 'Secret'"),
            0
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM watch_log WHERE kind = 'Secret'"),
            0
        );
        assert_eq!(
            count(&db, "SELECT MAX(resource_version) FROM watch_log"),
            (start + 2) as i64
        );
        assert_eq!(
            count(&db, "SELECT resource_version FROM objects WHERE name = 'c'"),
            (start + 2) as i64
        );
    }
}

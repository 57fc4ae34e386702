//! The embedded backend: one SQLite file, `<state-dir>/store.db`, shared by processes.
//!
//! SQLite rather than redb: redb takes an exclusive lock on its file, so volctl could not
//! open the store while strata-provisioner and strata-node run. SQLite in WAL mode lets
//! several processes read while one writes, and every write is one ACID transaction.

mod db;
pub(crate) mod namespaces;
mod notify;
pub(crate) mod ops;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;
use tokio::sync::watch;

pub use self::db::SCHEMA_VERSION;
use self::db::{Change, Db, Flusher, Tx};
pub use self::namespaces::{
    FINALIZER_KUBERNETES as NAMESPACE_FINALIZER, INITIAL as INITIAL_NAMESPACES,
};
use self::notify::{Channels, Notifier};
use self::ops::Part;
use crate::api::{
    Deleted, EventType, Object, ObjectList, Preconditions, Store, WatchEvent, WatchStream,
};
use crate::batch::{Batch, BatchOutcome};
use crate::error::{Error, Result};
use crate::kinds::KindRef;
use crate::selector;

/// Log rows a watch reads per query.
const PAGE: usize = 512;

/// Tunables of an [`EmbeddedStore`] handle.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Watch log entries kept; a watch from an older version gets `Error::Gone`. The
    /// bound is shared by every process, whichever writes last applies it.
    pub watch_history: u64,
    /// `source.component` of the events this handle records.
    pub component: String,
    /// How often an idle watch re-reads the log without a wake-up: a safety net for a
    /// lost inotify event, not the means of delivery.
    pub watch_recheck: Duration,
    /// Events not seen again for this long are removed (the API server's `--event-ttl`).
    pub event_ttl: Duration,
    /// When a write of this handle returns relative to its WAL sync.
    pub durability: Durability,
}

/// When a write returns relative to the sync that makes it survive an OS crash.
///
/// Either way the store after a crash is a prefix of its commits: SQLite replays the WAL
/// up to the first frame that did not reach the disk, so a lost write takes every later
/// one with it, never an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// After a sync covering it (group commit): for writes someone is told are done —
    /// `volctl apply`, `delete`, an API call.
    #[default]
    Acknowledged,
    /// After the commit; a background sync covers it within `within`, as does the next
    /// acknowledged write of any process. For control loops: losing the tail of their
    /// writes is the same as having stopped a moment earlier, and they redo it from what
    /// the store holds (every side effect they cause is idempotent by name). A loop that
    /// writes one object after another would otherwise wait for one disk flush per write.
    Ordered { within: Duration },
}

impl StoreOptions {
    /// A control loop's handle: its events name `component` and its writes are
    /// [`Durability::Ordered`], synced in the background within 100 ms.
    pub fn controller(component: &str) -> StoreOptions {
        StoreOptions {
            component: component.into(),
            durability: Durability::Ordered {
                within: Duration::from_millis(100),
            },
            ..StoreOptions::default()
        }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            watch_history: 100_000,
            component: "strata".into(),
            watch_recheck: Duration::from_secs(5),
            event_ttl: Duration::from_secs(3600),
            durability: Durability::Acknowledged,
        }
    }
}

/// A handle on the store in a state dir. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    db: Db,
    notifier: Notifier,
    /// Shared with the other handles of this process on the same store; None only while
    /// dropping.
    channels: Option<Arc<Channels>>,
    options: StoreOptions,
    host: String,
    state_dir: PathBuf,
    /// The background sync of a handle with [`Durability::Ordered`].
    flusher: Option<Flusher>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Drop the only strong sender, then wake the listener thread so it sees that and ends.
        // Let go of the channels, then wake the listener so that, if this was the last
        // handle, it sees that and ends.
        self.channels = None;
        self.notifier.touch_close();
        if let Some(flusher) = &self.flusher {
            flusher.close();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("state_dir", &self.inner.state_dir)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn channels(&self) -> &Channels {
        self.channels
            .as_deref()
            .expect("channels are only taken in drop")
    }

    /// A write transaction, durable when this returns; then every watcher in every
    /// process is woken.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let (out, revision, kinds) = self.db.write(f)?;
        if !kinds.is_empty() {
            match &self.flusher {
                None => self.db.syncer.sync()?,
                Some(flusher) => flusher.mark_dirty(),
            }
        }
        for kind in &kinds {
            self.notifier.touch(kind, revision);
            self.channels().wake(Some(kind));
        }
        Ok(out)
    }
}

fn to_value<K: Object>(obj: &K) -> Result<Value> {
    serde_json::to_value(obj).map_err(|source| Error::Decode {
        kind: K::KIND.into(),
        source,
    })
}

fn from_value<K: Object>(v: Value) -> Result<K> {
    serde_json::from_value(v).map_err(|source| Error::Decode {
        kind: K::KIND.into(),
        source,
    })
}

fn from_text<K: Object>(text: &str) -> Result<K> {
    serde_json::from_str(text).map_err(|source| Error::Decode {
        kind: K::KIND.into(),
        source,
    })
}

fn labels_of(v: &Value) -> Option<std::collections::BTreeMap<String, String>> {
    v.get("metadata")?
        .get("labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
}

impl EmbeddedStore {
    /// Opens (creating if needed) `<state_dir>/store.db`.
    pub fn open(state_dir: &Path) -> Result<EmbeddedStore> {
        EmbeddedStore::open_with(state_dir, StoreOptions::default())
    }

    pub fn open_with(state_dir: &Path, options: StoreOptions) -> Result<EmbeddedStore> {
        crate::failpoint::init()?;
        std::fs::create_dir_all(state_dir).map_err(|source| Error::Io {
            context: "creating the state dir",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let db = Db::open(&state_dir.join("store.db"), options.watch_history)?;
        let notifier = Notifier::open(&state_dir.join("store.notify.d"))?;
        let channels = notify::channels_for(notifier.dir())?;
        let flusher = match options.durability {
            Durability::Acknowledged => None,
            Durability::Ordered { within } => Some(Flusher::spawn(db.syncer.clone(), within)?),
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                notifier,
                channels: Some(channels),
                options,
                host,
                state_dir: state_dir.to_path_buf(),
                flusher,
            }),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    pub fn database_path(&self) -> &Path {
        &self.inner.db.path
    }

    /// Group commit counters of this handle's process: (writes made durable, WAL syncs).
    /// Fewer syncs than writes means concurrent writes shared them.
    pub fn durability_stats(&self) -> (u64, u64) {
        self.inner.db.syncer.stats()
    }

    /// Runs blocking SQLite work on the blocking pool, keeping the caller's span.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&inner)))
            .await
            .map_err(Error::Blocking)?
    }

    /// The newest resourceVersion in the store.
    pub async fn revision(&self) -> Result<u64> {
        self.blocking(|inner| inner.db.read(|r| r.revision())).await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(kind = kind.kind, namespace, name))]
    pub async fn get_value(&self, kind: KindRef, namespace: &str, name: &str) -> Result<Value> {
        let ns = if kind.namespaced && namespace.is_empty() {
            "default".to_string()
        } else {
            namespace.to_string()
        };
        let name = name.to_string();
        self.blocking(move |inner| {
            inner
                .db
                .read(|r| r.get(kind.kind, &ns, &name))?
                .ok_or(Error::NotFound {
                    kind: kind.kind.into(),
                    namespace: ns,
                    name,
                })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(kind = kind.kind, namespace = ?namespace))]
    pub async fn list_values(
        &self,
        kind: KindRef,
        namespace: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> Result<ObjectList<Value>> {
        self.list_mapped(kind, namespace, selector, db::decode_value, labels_of)
            .await
    }

    /// Lists, decoding each item from its stored text with `decode` on the blocking pool:
    /// decoding thousands of objects would otherwise hold up an async worker.
    async fn list_mapped<T: Send + 'static>(
        &self,
        kind: KindRef,
        namespace: Option<&str>,
        selector: Option<&LabelSelector>,
        decode: fn(&str) -> Result<T>,
        labels: fn(&T) -> Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<ObjectList<T>> {
        if let Some(sel) = selector {
            selector::validate(sel)?;
        }
        // As in the API's paths, "" for a namespaced kind means every namespace.
        let ns = if kind.namespaced {
            namespace.filter(|n| !n.is_empty()).map(str::to_string)
        } else {
            Some(String::new())
        };
        let selector = selector.cloned();
        self.blocking(move |inner| {
            let (items, resource_version) = inner.db.read(|r| {
                Ok((
                    r.list_decoded(kind.kind, ns.as_deref(), decode)?,
                    r.revision()?,
                ))
            })?;
            let items = items
                .into_iter()
                .filter(|v| {
                    selector
                        .as_ref()
                        .is_none_or(|sel| selector::matches(sel, labels(v).as_ref()))
                })
                .collect();
            Ok(ObjectList {
                items,
                resource_version,
            })
        })
        .await
    }

    /// Creates an object given as JSON (see [`Store::create`]). The JSON is checked against the
    /// kind's typed struct first, so the store never holds what a typed reader cannot decode.
    pub async fn create_value(&self, kind: KindRef, obj: Value) -> Result<Value> {
        let info = crate::kinds::registered(kind)
            .ok_or_else(|| Error::UnknownKind(format!("{}/{}", kind.api_version, kind.kind)))?;
        self.blocking(move |inner| {
            let obj = info.canonicalize(obj)?;
            inner.write(|tx| ops::create(tx, kind, obj))
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(kind = kind.kind))]
    async fn create_raw(&self, kind: KindRef, obj: Value) -> Result<Value> {
        self.blocking(move |inner| inner.write(|tx| ops::create(tx, kind, obj)))
            .await
    }

    /// Updates an object given as JSON (see [`Store::update`]). The JSON is checked against the
    /// kind's typed struct first, so the store never holds what a typed reader cannot decode.
    pub async fn update_value(&self, kind: KindRef, obj: Value) -> Result<Value> {
        let info = crate::kinds::registered(kind)
            .ok_or_else(|| Error::UnknownKind(format!("{}/{}", kind.api_version, kind.kind)))?;
        self.blocking(move |inner| {
            let obj = info.canonicalize(obj)?;
            inner.write(|tx| ops::update(tx, kind, obj, Part::Main))
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(kind = kind.kind))]
    async fn update_raw(&self, kind: KindRef, obj: Value) -> Result<Value> {
        self.blocking(move |inner| inner.write(|tx| ops::update(tx, kind, obj, Part::Main)))
            .await
    }

    /// Updates the status of an object given as JSON (see [`Store::update_status`]). The JSON is checked against the
    /// kind's typed struct first, so the store never holds what a typed reader cannot decode.
    pub async fn update_status_value(&self, kind: KindRef, obj: Value) -> Result<Value> {
        let info = crate::kinds::registered(kind)
            .ok_or_else(|| Error::UnknownKind(format!("{}/{}", kind.api_version, kind.kind)))?;
        self.blocking(move |inner| {
            let obj = info.canonicalize(obj)?;
            inner.write(|tx| ops::update(tx, kind, obj, Part::Status))
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(kind = kind.kind))]
    async fn update_status_raw(&self, kind: KindRef, obj: Value) -> Result<Value> {
        self.blocking(move |inner| inner.write(|tx| ops::update(tx, kind, obj, Part::Status)))
            .await
    }

    /// A namespace's `finalize` subresource: sets `spec.finalizers` from `obj` (nothing
    /// else); a terminating namespace left with no finalizers is removed.
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"))]
    pub async fn finalize_namespace_value(&self, obj: Value) -> Result<Value> {
        let kind = KindRef::of::<Namespace>();
        self.blocking(move |inner| inner.write(|tx| ops::update(tx, kind, obj, Part::Finalize)))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(kind = kind.kind, namespace, name))]
    pub async fn delete_value(
        &self,
        kind: KindRef,
        namespace: &str,
        name: &str,
        preconditions: Preconditions,
    ) -> Result<Deleted<Value>> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.blocking(move |inner| {
            inner.write(|tx| ops::delete(tx, kind, &ns, &name, &preconditions))
        })
        .await
    }

    /// Every change of `kind` after `from`, in order (see [`Store::watch`]).
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(kind = kind.kind, from))]
    pub async fn watch_values(
        &self,
        kind: KindRef,
        namespace: Option<&str>,
        from: u64,
    ) -> Result<WatchStream<Value>> {
        self.watch_decoded(kind, namespace, from, db::decode_value)
            .await
    }

    /// A watch whose objects `decode` makes from the stored text, on the blocking pool.
    async fn watch_decoded<T: Send + 'static>(
        &self,
        kind: KindRef,
        namespace: Option<&str>,
        from: u64,
        decode: fn(&str) -> Result<T>,
    ) -> Result<WatchStream<T>> {
        let ns = if kind.namespaced {
            namespace.filter(|n| !n.is_empty()).map(str::to_string)
        } else {
            None
        };
        // Subscribe before the first read, so a commit after it cannot go unnoticed.
        let rx = self.inner.channels().subscribe(kind.kind);
        let mut state = WatchState {
            store: self.clone(),
            kind,
            ns,
            cursor: from,
            buf: VecDeque::new(),
            rx,
            done: false,
            decode,
        };
        state.fetch().await?;
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move { st.next().await.map(|item| (item, st)) },
        )))
    }

    /// The events about one object, oldest first, as `describe` shows them.
    pub async fn events_for(&self, kind: &str, namespace: &str, name: &str) -> Result<Vec<Event>> {
        let ns = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        let list = self
            .list_values(KindRef::of::<Event>(), Some(ns), None)
            .await?;
        let mut events: Vec<Event> = list
            .items
            .into_iter()
            .map(from_value::<Event>)
            .collect::<Result<_>>()?;
        events.retain(|e| {
            e.involved_object.kind.as_deref() == Some(kind)
                && e.involved_object.name.as_deref() == Some(name)
        });
        // Timestamps have whole seconds; within one second the resourceVersion (the order
        // the store wrote them, a repeat moving its event to the end) decides.
        events.sort_by_cached_key(|e| {
            (
                e.last_timestamp.clone(),
                e.metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
            )
        });
        Ok(events)
    }
}

struct WatchState<T> {
    store: EmbeddedStore,
    kind: KindRef,
    ns: Option<String>,
    cursor: u64,
    buf: VecDeque<WatchEvent<T>>,
    rx: watch::Receiver<u64>,
    done: bool,
    decode: fn(&str) -> Result<T>,
}

impl<T: Send + 'static> WatchState<T> {
    async fn fetch(&mut self) -> Result<()> {
        let (kind, ns, from, decode) = (self.kind.kind, self.ns.clone(), self.cursor, self.decode);
        let (entries, seen) = self
            .store
            .blocking(move |inner| {
                inner
                    .db
                    .read(|r| r.log_after(kind, ns.as_deref(), from, PAGE, decode))
            })
            .await?;
        self.cursor = seen.max(self.cursor);
        self.buf.extend(entries.into_iter().map(|e| match e.change {
            Change::Added => WatchEvent::Added(e.object),
            Change::Modified => WatchEvent::Modified(e.object),
            Change::Deleted => WatchEvent::Deleted(e.object),
        }));
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<WatchEvent<T>>> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            // Mark the current wake-up seen before reading, so a commit racing the read
            // wakes the wait below.
            self.rx.borrow_and_update();
            if let Err(err) = self.fetch().await {
                self.done = true;
                return Some(Err(err));
            }
            if self.buf.is_empty() {
                let recheck = self.store.inner.options.watch_recheck;
                let _ = tokio::time::timeout(recheck, self.rx.changed()).await;
            }
        }
    }
}

impl Store for EmbeddedStore {
    async fn get<K: Object>(&self, namespace: &str, name: &str) -> Result<K> {
        from_value(self.get_value(K::kind_ref(), namespace, name).await?)
    }

    async fn list<K: Object>(
        &self,
        namespace: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> Result<ObjectList<K>> {
        self.list_mapped(
            K::kind_ref(),
            namespace,
            selector,
            from_text::<K>,
            |o: &K| o.metadata().labels.clone(),
        )
        .await
    }

    async fn create<K: Object>(&self, obj: &K) -> Result<K> {
        from_value(self.create_raw(K::kind_ref(), to_value(obj)?).await?)
    }

    async fn update<K: Object>(&self, obj: &K) -> Result<K> {
        from_value(self.update_raw(K::kind_ref(), to_value(obj)?).await?)
    }

    async fn update_status<K: Object>(&self, obj: &K) -> Result<K> {
        from_value(
            self.update_status_raw(K::kind_ref(), to_value(obj)?)
                .await?,
        )
    }

    async fn delete<K: Object>(
        &self,
        namespace: &str,
        name: &str,
        preconditions: Preconditions,
    ) -> Result<Deleted<K>> {
        Ok(
            match self
                .delete_value(K::kind_ref(), namespace, name, preconditions)
                .await?
            {
                Deleted::Pending(v) => Deleted::Pending(from_value(v)?),
                Deleted::Gone(v) => Deleted::Gone(from_value(v)?),
            },
        )
    }

    async fn watch<K: Object>(
        &self,
        namespace: Option<&str>,
        from_resource_version: u64,
    ) -> Result<WatchStream<K>> {
        // Straight from the stored text into the typed object: a JSON value in between
        // cost as much again, for every event of every watcher.
        self.watch_decoded(
            K::kind_ref(),
            namespace,
            from_resource_version,
            from_text::<K>,
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(writes = batch.len()))]
    async fn write_batch(&self, batch: Batch<Self>) -> BatchOutcome {
        match self.write_batches(vec![batch]).await {
            Ok(mut outcomes) => outcomes.pop().unwrap_or_default(),
            // Nothing was committed.
            Err(e) => BatchOutcome {
                written: Vec::new(),
                failed: Some((0, e)),
            },
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(batches = batches.len()))]
    async fn write_batches(&self, batches: Vec<Batch<Self>>) -> Result<Vec<BatchOutcome>> {
        let batches: Vec<Vec<_>> = batches
            .into_iter()
            .map(|b| {
                b.into_writes()
                    .into_iter()
                    .map(|w| (w.kind, w.op, w.object))
                    .collect()
            })
            .collect();
        if batches.iter().all(Vec::is_empty) {
            return Ok(batches.iter().map(|_| BatchOutcome::default()).collect());
        }
        self.blocking(move |inner| inner.write(|tx| ops::update_batches(tx, batches)))
            .await
    }

    async fn finalize_namespace(&self, ns: &Namespace) -> Result<Namespace> {
        from_value(self.finalize_namespace_value(to_value(ns)?).await?)
    }

    async fn record_event(
        &self,
        involved: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let involved = serde_json::to_value(involved).map_err(|source| Error::Decode {
            kind: "ObjectReference".into(),
            source,
        })?;
        let (reason, message) = (reason.to_string(), message.to_string());
        self.blocking(move |inner| {
            let (component, host) = (inner.options.component.clone(), inner.host.clone());
            inner.write(|tx| {
                ops::record_event(
                    tx,
                    ops::EventSpec {
                        involved,
                        type_: type_.as_str(),
                        reason: &reason,
                        message: &message,
                        component: &component,
                        host: &host,
                        ttl: inner.options.event_ttl,
                    },
                )
            })
        })
        .await
        .map(drop)
    }
}

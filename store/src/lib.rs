//! API objects (k8s-openapi types) and the narrow store interface the control loops use.
//!
//! The control loops (binder, provisioner, StatefulSet, volume manager) are written once
//! against [`Store`]. [`EmbeddedStore`] keeps every object in one SQLite file under the state
//! dir, shared by several processes, with a Kubernetes-like resourceVersion, watch history,
//! defaulting and admission. This crate knows nothing of CSI, mounts or pods actually running.
//!
//! # Storage layout
//!
//! `<state-dir>/store.db` (SQLite, WAL, mode 0600) holds:
//! - `objects (kind, namespace, name, uid, resource_version, object)`: the current JSON of
//!   every object, canonical (decoded into its k8s-openapi struct and back);
//! - `watch_log (resource_version PK, kind, namespace, name, type, object)`: one row per
//!   write (ADDED/MODIFIED/DELETED), read by watches, compacted beyond
//!   [`StoreOptions::watch_history`] rows;
//! - `compacted (kind PK, resource_version)`: per kind, the newest log row dropped, so a
//!   watch is `Gone` only when it really missed something;
//! - `meta (key PK, value)`: `revision` (the one global resourceVersion counter, as etcd's
//!   revision), `compacted`, `schema` (the format version, checked at open: older files
//!   are migrated, newer ones refused; see `SCHEMA_VERSION`), `events_pruned`.
//!
//! Every write is one IMMEDIATE transaction, acknowledged only after a group-commit
//! fdatasync of the WAL (one sync shared by concurrent writers). Then the writer rewrites
//! `<state-dir>/store.notify.d/<Kind>`; each process has one thread in inotify on that
//! directory, so watches of that kind wake at once in every process, with a slow safety
//! re-check ([`StoreOptions::watch_recheck`]) as the only timer.

#![forbid(unsafe_code)]

pub mod admission;
mod api;
pub mod apply;
mod batch;
mod embedded;
mod error;
pub mod failpoint;
pub mod kinds;
pub mod meta;
pub mod podpreset;
pub mod quantity;
pub mod selector;
pub mod snapshot;
mod time;

pub use k8s_openapi;

pub use api::{
    Deleted, EventType, Object, ObjectList, Preconditions, Store, WatchEvent, WatchStream,
};
pub use batch::{Batch, BatchOp, BatchOutcome, BatchWrite, Written};
pub use embedded::{
    Durability, EmbeddedStore, INITIAL_NAMESPACES, NAMESPACE_FINALIZER, SCHEMA_VERSION,
    StoreOptions,
};
pub use error::{Error, Result};

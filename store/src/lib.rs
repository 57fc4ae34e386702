//! API objects (k8s-openapi types) and the narrow store interface the control loops use.
//!
//! The control loops (binder, provisioner, StatefulSet, volume manager) are written once
//! against [`Store`]. [`EmbeddedStore`] keeps every object in one SQLite file under the state
//! dir, shared by several processes, with a Kubernetes-like resourceVersion, watch history,
//! defaulting and admission. This crate knows nothing of CSI, mounts or pods actually running.

#![forbid(unsafe_code)]

pub mod admission;
mod api;
pub mod apply;
mod embedded;
mod error;
pub mod failpoint;
pub mod kinds;
pub mod quantity;
pub mod selector;
mod time;

pub use k8s_openapi;

pub use api::{
    Deleted, EventType, Object, ObjectList, Preconditions, Store, WatchEvent, WatchStream,
};
pub use embedded::{EmbeddedStore, StoreOptions};
pub use error::{Error, Result};

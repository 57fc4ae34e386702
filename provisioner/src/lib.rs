//! Control loops: PV/PVC binder, dynamic provisioner, expansion, StatefulSet claims,
//! volume snapshots.
//!
//! The decisions live in pure modules (`binder`, `provision`, `expand`, `statefulset`, `gc`)
//! that read Kubernetes objects and return the writes to make; `controller` runs them against
//! any `strata_store::Store`. The driver is reached only through CSI gRPC, exactly as
//! external-provisioner reaches it, so nothing here knows pools, loop devices or mounts.
#![forbid(unsafe_code)]

pub mod binder;
pub mod capacity;
pub mod controller;
pub mod error;
pub mod expand;
pub mod gc;
pub mod meta;
pub mod metrics;
pub mod names;
pub mod namespace;
pub mod provision;
pub mod quantity;
pub mod secrets;
pub mod selector;
pub mod snapshot;
pub mod statefulset;

/// The API types, from the store so every crate agrees on one k8s-openapi.
pub use strata_store::k8s_openapi;

pub use controller::{CapacityConfig, Config, LoopStatus, Running, start};
pub use error::{Error, Result};
pub use provision::csi::CsiClient;

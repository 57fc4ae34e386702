//! CSI driver: Identity, Controller, Node and GroupController services on a unix socket.
//!
//! Knows pools, volumes, snapshots, loop devices and mounts. Knows nothing of PVCs, pods or
//! the store: the provisioner and the volume manager reach it only through CSI gRPC.
//!
//! Start with `serve` (server.rs), then `driver.rs` (the core), `volumes.rs`,
//! `snapshots.rs` and `node_ops.rs` (the operations), `state.rs` (durable records) and
//! `reconcile.rs` (what happens after a crash).

pub mod backend;
pub mod config;
mod controller;
mod convert;
pub mod driver;
pub mod error;
pub mod failpoint;
mod group;
mod identity;
pub mod ids;
pub mod inspect;
pub mod journal;
pub mod locks;
pub mod meta;
pub mod metrics;
mod node;
pub mod node_ops;
mod queries;
pub mod reconcile;
mod request;
mod server;
mod service;
pub mod slots;
mod snapshot_metadata;
mod snapshots;
pub mod state;
#[allow(unsafe_code)] // the one module that makes raw syscalls
pub mod sys;
pub mod validate;
mod volumes;

pub use config::Config;
pub use server::serve;

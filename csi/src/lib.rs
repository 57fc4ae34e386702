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
pub mod controller;
pub mod convert;
pub mod driver;
pub mod error;
pub mod failpoint;
pub mod group;
pub mod identity;
pub mod ids;
pub mod inspect;
pub mod locks;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod node_ops;
pub mod queries;
pub mod reconcile;
pub mod request;
pub mod server;
pub mod service;
pub mod snapshot_metadata;
pub mod snapshots;
pub mod state;
#[allow(unsafe_code)] // the one module that makes raw syscalls
pub mod sys;
pub mod validate;
pub mod volumes;

pub use config::Config;
pub use server::serve;

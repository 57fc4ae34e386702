//! CSI driver: Identity, Controller, Node and GroupController services on a unix socket.
//!
//! Knows pools, volumes, snapshots, loop devices and mounts. Knows nothing of PVCs, pods or
//! the store: the provisioner and the volume manager reach it only through CSI gRPC.

pub mod backend;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod ids;
pub mod locks;
pub mod state;
pub mod sys;
pub mod validate;

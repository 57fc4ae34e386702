//! The volume manager of a node: the kubelet's volume side for the pods placed here.
//!
//! Builds and keeps current every volume a pod can name (secret, configMap, downwardAPI,
//! projected with serviceAccountToken, emptyDir, hostPath, persistentVolumeClaim through
//! CSI node RPCs or on hostPath and local PVs) under `<state-dir>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`, and hands
//! the runtime a list of mounts per container. Talks to the CSI driver only through gRPC;
//! knows nothing of loop devices, pools or container processes.

#![deny(unsafe_code)]

pub mod api_volume;
pub mod atomic_writer;
pub mod csi_volume;
mod dirfd;
pub mod empty_dir;
pub mod error;
pub mod expansion;
pub mod handoff;
pub mod host_path;
pub mod layout;
pub mod manager;
pub mod mount;
pub mod projection;
#[allow(unsafe_code)]
mod sys;
pub mod token;

pub use error::{Error, Result};

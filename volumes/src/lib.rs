//! The volume manager of a node: the kubelet's volume side for the pods placed here.
//!
//! Builds and keeps current every volume a pod can name (secret, configMap, downwardAPI,
//! projected with serviceAccountToken, emptyDir, persistentVolumeClaim through CSI node
//! RPCs) under `<state-dir>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`, and hands
//! the runtime a list of mounts per container. Talks to the CSI driver only through gRPC;
//! knows nothing of loop devices, pools or container processes.

#![deny(unsafe_code)]

pub mod atomic_writer;
mod dirfd;
pub mod error;
pub mod projection;
#[allow(unsafe_code)]
mod sys;
pub mod token;

pub use error::{Error, Result};

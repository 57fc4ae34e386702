//! Bundled container runtime: OCI images, overlay rootfs, containers through libcontainer.
//!
//! Knows images (an OCI blob store and unpacked layers), container root filesystems
//! (overlayfs over those layers plus an init layer and a writable upper), volume
//! bind mounts and the OCI lifecycle. Knows nothing of pods, PVCs or CSI: the pod
//! runner hands it a [`ContainerConfig`] and a list of [`BindMount`]s. An image's `User`
//! becomes numeric ids through the rootfs's own /etc/passwd and /etc/group ([`user`]).
//!
//! Namespaces, cgroups, pivot_root, capabilities and no_new_privs are libcontainer's
//! (youki) job, driven from [`container::Runtime`] in a single-threaded process (the
//! `strata-runtime` binary); async callers use [`helper::Helper`].

pub mod container;
pub mod digest;
pub mod error;
pub mod failpoint;
pub mod helper;
pub mod image;
mod overlay;
pub mod resolve;
pub mod rootfs;
pub mod spec;
#[allow(unsafe_code)] // the one module that makes raw syscalls
mod sys;
pub mod user;
pub mod volumes;

pub use container::{CreateOptions, Runtime, State, become_subreaper, wait_exit};
pub use digest::Digest;
pub use error::{Error, Result};
pub use helper::Helper;
pub use image::{Image, ImageDefaults, ImageStore};
pub use rootfs::{InitLayer, Rootfs};
pub use spec::{ContainerConfig, NamespaceKind, Resources, write_bundle};
pub use user::{ResolvedUser, resolve_image_user};
pub use volumes::{BindMount, Propagation};

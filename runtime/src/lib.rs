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
//!
//! # Running a further process in a container (exec)
//!
//! `strata-runtime exec [OPTIONS] ID CMD [ARGS...]` (or `--process process.json`)
//! runs a process in a running container's namespaces and cgroup through
//! libcontainer's tenant builder, as `runc exec` does: `-e KEY=VALUE`, `--cwd`,
//! `--user UID[:GID]`, `-g GID`, `--detach`, `--pid-file`, and `--timeout SECS`
//! (ours: SIGKILL after that long, exit 137). `--tty` is refused. It exits with the
//! process's code. The container's user, cwd, env and capabilities are the base.
//!
//! From the pod runner, [`Helper::exec`] runs an [`ExecOptions`] to completion and
//! returns an [`ExecOutput`]: the [`ExecOutcome`] (exit code, timed out) and the
//! captured stdout and stderr; a non-zero exit is an `Ok`, an `Err` means the
//! runtime could not run the process. Exec probes use it with `timeout` set.
//! [`Helper::exec_command`] gives the same as a [`std::process::Command`] whose
//! stdio the caller wires (`volctl exec`). Both block: `spawn_blocking`, or
//! `tokio::process::Command::from(helper.exec_command(..))`.
//!
//! ```no_run
//! # fn probe() -> strata_runtime::Result<bool> {
//! use strata_runtime::{ExecOptions, ExecOutcome, Helper};
//! let helper = Helper::new("/usr/local/bin/strata-runtime", "/run/strata-runtime");
//! let out = helper.exec(
//!     "pod-web-0-app",
//!     &ExecOptions {
//!         args: vec!["cat".into(), "/tmp/healthy".into()],
//!         timeout: Some(std::time::Duration::from_secs(1)),
//!         ..Default::default()
//!     },
//! )?;
//! Ok(out.outcome == ExecOutcome::Exited(0))
//! # }
//! ```

pub mod container;
pub mod digest;
pub mod error;
pub mod failpoint;
pub mod format;
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

pub use container::{
    CreateOptions, ExecOptions, ExecOutcome, Runtime, State, become_subreaper, wait_exit,
};
pub use digest::Digest;
pub use error::{Error, Result};
pub use helper::{ExecOutput, Helper};
pub use image::{Image, ImageDefaults, ImageStore};
pub use rootfs::{InitLayer, Rootfs};
pub use spec::{ContainerConfig, DeviceNode, NamespaceKind, Resources, write_bundle};
pub use user::{ResolvedUser, resolve_image_user};
pub use volumes::{BindMount, Propagation};

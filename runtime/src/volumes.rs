//! Bind mounts of volumes into a container's rootfs, done by us before libcontainer
//! sees the spec.
//!
//! Why not leave them to libcontainer: 0.7.0 does resolve targets with pathrs and
//! attaches through a file descriptor, but it drops per-mount propagation
//! (rslave/rshared) and always mounts after its own /dev and /proc. We resolve each
//! target with openat2(RESOLVE_IN_ROOT), clone the source with open_tree(2), set
//! read-only and propagation with mount_setattr(2) and attach with move_mount(2) to
//! the resolved fd: the mount can only ever land inside the rootfs. libcontainer
//! then carries these mounts into the container with its recursive bind of the
//! rootfs.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::error::{Error, Result};
use crate::resolve;
use crate::sys;

/// How mounts propagate between the host and the container (the Kubernetes
/// `mountPropagation` field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Propagation {
    /// rprivate: nothing propagates either way.
    #[default]
    None,
    /// rslave: mounts made on the host under the source appear in the container.
    HostToContainer,
    /// rshared: mounts propagate both ways.
    Bidirectional,
}

impl Propagation {
    pub fn option(self) -> &'static str {
        match self {
            Propagation::None => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        }
    }

    fn sys(self) -> sys::Propagation {
        match self {
            Propagation::None => sys::Propagation::Private,
            Propagation::HostToContainer => sys::Propagation::Slave,
            Propagation::Bidirectional => sys::Propagation::Shared,
        }
    }
}

/// One volume handed over by the volume manager.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    /// Host path (a published volume).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    pub read_only: bool,
    pub propagation: Propagation,
}

impl BindMount {
    /// The OCI mount entry for this bind; [`BindMount::from_oci`] reads it back.
    pub fn to_oci(&self) -> oci_spec::runtime::Mount {
        let mut options = vec!["rbind".to_string()];
        if self.read_only {
            options.push("ro".into());
        }
        options.push(self.propagation.option().into());
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(self.destination.clone())
            .set_typ(Some("bind".into()))
            .set_source(Some(self.source.clone()))
            .set_options(Some(options));
        m
    }

    /// A bind entry from a spec (`type: bind` or a `bind`/`rbind` option), else None.
    pub fn from_oci(m: &oci_spec::runtime::Mount) -> Option<BindMount> {
        let opts = m.options().clone().unwrap_or_default();
        let is_bind =
            m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            return None;
        }
        let mut b = BindMount {
            source: m.source().clone()?,
            destination: m.destination().clone(),
            read_only: false,
            propagation: Propagation::None,
        };
        for o in &opts {
            match o.as_str() {
                "ro" => b.read_only = true,
                "rw" => b.read_only = false,
                "slave" | "rslave" => b.propagation = Propagation::HostToContainer,
                "shared" | "rshared" => b.propagation = Propagation::Bidirectional,
                "private" | "rprivate" => b.propagation = Propagation::None,
                _ => {}
            }
        }
        Some(b)
    }
}

/// Mounts `bind` inside `rootfs`; returns the host path the mount landed on (for
/// unmounting), which is always beneath `rootfs`.
pub fn mount_bind(rootfs: &Path, bind: &BindMount) -> Result<PathBuf> {
    let target_err = |reason: String| Error::VolumeTarget {
        target: bind.destination.clone(),
        reason,
    };
    if !bind.destination.is_absolute() {
        return Err(target_err("must be an absolute path".into()));
    }
    let rel = resolve::clean_relative(&bind.destination).map_err(|r| target_err(r.into()))?;
    if rel.as_os_str().is_empty() {
        return Err(target_err("cannot mount over the container's root".into()));
    }
    let src_meta = std::fs::metadata(&bind.source)
        .map_err(Error::io("inspecting volume source", &bind.source))?;

    // Clone the source tree first: a missing source fails before the rootfs is touched.
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        &bind.source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| Error::io("cloning volume source", &bind.source)(e.into()))?;
    // Read-only before the tree is attached, so it is never visible writable.
    if bind.read_only {
        sys::set_mount_attrs(&tree, sys::MOUNT_ATTR_RDONLY, None)
            .map_err(|e| Error::io("making volume read-only", &bind.source)(e.into()))?;
    }

    let rootfs = &std::fs::canonicalize(rootfs).map_err(Error::io("resolving rootfs", rootfs))?;
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening rootfs", rootfs)(e.into()))?;
    let (parent, name) = resolve::parent_in_root(&root, &rel, Mode::from(0o755))
        .map_err(|e| target_err(format!("resolving parent: {e}")))?;
    // Create the mount point in its resolved parent without following a final symlink.
    let created = if src_meta.is_dir() {
        rustix::fs::mkdirat(&parent, name, Mode::from(0o755))
    } else {
        rustix::fs::openat(
            &parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from(0o644),
        )
        .map(drop)
    };
    match created {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(target_err(format!("creating mount point: {e}"))),
    }
    let mut flags = OFlags::PATH;
    if src_meta.is_dir() {
        flags |= OFlags::DIRECTORY;
    }
    let target = resolve::open_in_root(&root, &rel, flags)
        .map_err(|e| target_err(format!("resolving in rootfs: {e}")))?;
    // Where the fd really is, for unmounting later; readlink of our own fd is only
    // informational, the mount itself goes through the fd.
    let landed = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&target)
    ))
    .map_err(Error::io("reading mount point", "/proc/self/fd"))?;
    if !landed.starts_with(rootfs) {
        return Err(target_err(format!(
            "resolved outside the rootfs to {landed:?}"
        )));
    }
    if src_meta.is_dir()
        != rustix::fs::fstat(&target)
            .map(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir())
            .unwrap_or(false)
    {
        return Err(target_err(
            "exists with a different file type than the source".into(),
        ));
    }

    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        target.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| target_err(format!("attaching mount: {e}")))?;
    // Propagation is set once attached: the tree fd now names the live mount.
    if let Err(e) = sys::set_mount_attrs(&tree, 0, Some(bind.propagation.sys())) {
        let _ = rustix::mount::unmount(&landed, rustix::mount::UnmountFlags::DETACH);
        return Err(target_err(format!("setting propagation: {e}")));
    }
    tracing::debug!(source = ?bind.source, target = ?landed, "mounted volume");
    Ok(landed)
}

/// Lazily unmounts everything mounted at `path` (a volume or a rootfs).
pub fn unmount(path: &Path) -> Result<()> {
    loop {
        match rustix::mount::unmount(
            path,
            rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
        ) {
            Ok(()) => continue, // stacked mounts: peel until none is left
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(Error::io("unmounting", path)(e.into())),
        }
    }
}

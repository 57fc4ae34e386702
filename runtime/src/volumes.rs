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
                // Unbindable is set inside the container (SpecBind); on the host
                // side it is private.
                "private" | "rprivate" | "unbindable" | "runbindable" => {
                    b.propagation = Propagation::None
                }
                _ => {}
            }
        }
        Some(b)
    }
}

/// A propagation type as a runtime-spec mount option names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PropagationOption {
    Private,
    Slave,
    Shared,
    Unbindable,
}

/// A bind entry of a `config.json` with what [`BindMount`] does not carry: whether
/// the bind is recursive, and the exact propagation option it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpecBind {
    pub bind: BindMount,
    /// `rbind` (or `type: bind` with neither option, as the pod runner writes
    /// none); a plain `bind` clones the source mount alone.
    pub recursive: bool,
    /// The last propagation option and whether it is an `r` form.
    pub propagation: Option<(PropagationOption, bool)>,
}

impl SpecBind {
    pub fn from_oci(m: &oci_spec::runtime::Mount) -> Option<SpecBind> {
        let bind = BindMount::from_oci(m)?;
        let opts = m.options().clone().unwrap_or_default();
        let has = |o: &str| opts.iter().any(|x| x == o);
        let recursive = has("rbind") || !has("bind");
        let propagation = opts.iter().rev().find_map(|o| {
            let (recursive, name) = match o.strip_prefix('r') {
                Some(rest) if rest != "o" && rest != "w" && rest != "bind" => (true, rest),
                _ => (false, o.as_str()),
            };
            let mode = match name {
                "private" => PropagationOption::Private,
                "slave" => PropagationOption::Slave,
                "shared" => PropagationOption::Shared,
                "unbindable" => PropagationOption::Unbindable,
                _ => return None,
            };
            Some((mode, recursive))
        });
        Some(SpecBind {
            bind,
            recursive,
            propagation,
        })
    }
}

/// Sets each `(destination, propagation, recursive)` on the mount at that
/// destination in the mount namespace of `pid` (a created container's init, after
/// its pivot_root), the way runc applies a mount's propagation option last.
///
/// Done here rather than on the host-side bind: libcontainer turns the whole tree
/// rslave (or what `rootfsPropagation` says) in the container's namespace and then
/// binds the rootfs onto itself, which would undo shared and drop unbindable mounts.
/// Joins the namespace with setns(2) and returns to our own, so the calling
/// process must be single-threaded (the `strata-runtime` binary is).
pub(crate) fn set_propagation_in(
    pid: i32,
    wants: &[(PathBuf, PropagationOption, bool)],
) -> Result<()> {
    use nix::sched::{CloneFlags, setns};
    if wants.is_empty() {
        return Ok(());
    }
    let open = |p: &str| std::fs::File::open(p).map_err(Error::io("opening mount namespace", p));
    let ours = open("/proc/self/ns/mnt")?;
    let cwd = std::fs::File::open(".").map_err(Error::io("opening", "."))?;
    let theirs = open(&format!("/proc/{pid}/ns/mnt"))?;
    setns(&theirs, CloneFlags::CLONE_NEWNS).map_err(|e| {
        Error::io("joining mount namespace", format!("/proc/{pid}/ns/mnt"))(e.into())
    })?;
    let result = (|| {
        let root = rustix::fs::open(
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("opening container root", "/")(e.into()))?;
        for (dest, mode, recursive) in wants {
            let target_err = |reason: String| Error::VolumeTarget {
                target: dest.clone(),
                reason,
            };
            let rel = resolve::clean_relative(dest).map_err(|r| target_err(r.into()))?;
            let fd = resolve::open_in_root(&root, &rel, OFlags::PATH)
                .map_err(|e| target_err(format!("resolving in the container: {e}")))?;
            let prop = match mode {
                PropagationOption::Private => sys::Propagation::Private,
                PropagationOption::Slave => sys::Propagation::Slave,
                PropagationOption::Shared => sys::Propagation::Shared,
                PropagationOption::Unbindable => sys::Propagation::Unbindable,
            };
            sys::set_mount_attrs_on(&fd, 0, Some(prop), *recursive)
                .map_err(|e| target_err(format!("setting propagation {mode:?}: {e}")))?;
        }
        Ok(())
    })();
    // Back to our own namespace (and directory) before anything else runs; a
    // failure here would leave this process resolving paths in the container.
    setns(&ours, CloneFlags::CLONE_NEWNS)
        .map_err(|e| Error::io("returning to mount namespace", "/proc/self/ns/mnt")(e.into()))?;
    nix::unistd::fchdir(&cwd).map_err(|e| Error::io("returning to", ".")(e.into()))?;
    result
}

/// Mounts `bind` inside `rootfs`; returns the host path the mount landed on (for
/// unmounting), which is always beneath `rootfs`.
pub fn mount_bind(rootfs: &Path, bind: &BindMount) -> Result<PathBuf> {
    mount_bind_tree(rootfs, bind, true)
}

/// [`mount_bind`], cloning only the source's own mount unless `recursive`.
pub(crate) fn mount_bind_tree(rootfs: &Path, bind: &BindMount, recursive: bool) -> Result<PathBuf> {
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
    let mut clone = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        clone |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, &bind.source, clone)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(options: &[&str]) -> oci_spec::runtime::Mount {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination("/v".into())
            .set_source(Some("/src".into()))
            .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
        m
    }

    #[test]
    fn spec_binds_keep_recursion_and_the_last_propagation_option() {
        let b =
            SpecBind::from_oci(&entry(&["rw", "bind", "rshared", "ro", "runbindable"])).unwrap();
        assert!(!b.recursive);
        assert!(b.bind.read_only);
        assert_eq!(b.propagation, Some((PropagationOption::Unbindable, true)));
        assert_eq!(
            b.bind.propagation,
            Propagation::None,
            "unbindable is private on the host"
        );
        let b = SpecBind::from_oci(&entry(&["rbind", "relatime", "slave"])).unwrap();
        assert!(b.recursive);
        assert_eq!(b.propagation, Some((PropagationOption::Slave, false)));
        assert_eq!(b.bind.propagation, Propagation::HostToContainer);
        let b = SpecBind::from_oci(&entry(&["rbind", "ro"])).unwrap();
        assert_eq!(b.propagation, None);
        assert!(
            SpecBind::from_oci(&entry(&["nosuid"])).is_none(),
            "not a bind"
        );
    }
}

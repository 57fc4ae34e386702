//! Mounts the volume manager makes itself (tmpfs, subPath binds) and `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Context, Result};

/// One line of mountinfo (proc(5)); parsed by the workspace's one mountinfo parser.
pub use strata_mountinfo::Mount as MountInfo;

/// The current mount table of this process's mount namespace.
pub fn mountinfo() -> Result<Vec<MountInfo>> {
    strata_mountinfo::read().at("read", strata_mountinfo::SELF_MOUNTINFO)
}

/// True when something is mounted exactly at `path` now: one statx, no table read.
pub fn is_mounted(path: &Path) -> Result<bool> {
    strata_mountinfo::is_mount_point(path).at("check for a mount at", path)
}

/// Mounts a tmpfs at `dir` (mode 0777 like an emptyDir; `size` in bytes when given).
pub fn mount_tmpfs(dir: &Path, size: Option<u64>) -> Result<()> {
    let mut data = String::from("mode=0777");
    if let Some(size) = size {
        data.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .at("mount tmpfs on", dir)
}

/// Unmounts `path` without following a symlink at its last component; not mounted is fine.
pub fn unmount(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            // Still in use by a container: detach so it goes away with its last user.
            nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW | MntFlags::MNT_DETACH)
                .at("unmount", path)
        }
        Err(e) => Err(e).at("unmount", path),
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) -> Result<()> {
    let table = mountinfo()?;
    let mut points: Vec<&PathBuf> = strata_mountinfo::under(&table, dir)
        .into_iter()
        .map(|m| &m.mount_point)
        .collect();
    points.dedup();
    for p in points {
        // A path may be mounted over several times: unmount until it is gone.
        for _ in 0..16 {
            unmount(p)?;
            if !is_mounted(p)? {
                break;
            }
        }
    }
    Ok(())
}

/// Bind-mounts what `fd` refers to onto `target`, through `/proc/self/fd`, so the exact
/// object that was opened (and checked) is what gets mounted.
pub fn bind_fd(fd: std::os::fd::BorrowedFd<'_>, target: &Path, read_only: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let src = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    nix::mount::mount(
        Some(&src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .at("bind mount onto", target)?;
    if read_only {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .at("remount read-only", target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_and_optional_fields() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 1 0:5 / /tmp rw - tmpfs tmpfs rw\n";
        let t = strata_mountinfo::parse(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!(t[0].root, Path::new("/mnt1"));
        assert_eq!(t[0].fs_type, "ext3");
        assert_eq!(t[0].source, "/dev/root");
        assert_eq!(t[1].fs_type, "tmpfs");
        assert!(strata_mountinfo::mounted_at(&t, Path::new("/tmp")).is_some());
    }
}

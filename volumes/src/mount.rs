//! Mounts the volume manager makes itself (tmpfs, subPath binds) and `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Context, Result};

/// One line of mountinfo (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub root: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(MountInfo {
                root: PathBuf::from(unescape(pre.get(3)?)),
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                options: pre.get(5)?.to_string(),
                fs_type: post.first()?.to_string(),
                source: unescape(post.get(1)?),
            })
        })
        .collect()
}

/// The current mount table of this process's mount namespace.
pub fn mountinfo() -> Result<Vec<MountInfo>> {
    let path = "/proc/self/mountinfo";
    Ok(parse_mountinfo(
        &std::fs::read_to_string(path).at("read", path)?,
    ))
}

/// True when something is mounted exactly at `path`.
pub fn is_mount_point(table: &[MountInfo], path: &Path) -> bool {
    table.iter().any(|m| m.mount_point == path)
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
    let mut points: Vec<&PathBuf> = table
        .iter()
        .map(|m| &m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        // A path may be mounted over several times: unmount until it is gone.
        for _ in 0..16 {
            unmount(p)?;
            if !is_mount_point(&mountinfo()?, p) {
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
        let t = parse_mountinfo(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!(t[0].root, Path::new("/mnt1"));
        assert_eq!(t[0].fs_type, "ext3");
        assert_eq!(t[0].source, "/dev/root");
        assert_eq!(t[1].fs_type, "tmpfs");
        assert!(is_mount_point(&t, Path::new("/tmp")));
    }
}

//! mount(2) and umount2(2) called directly: no fork of mount(8) on the hot path.

use std::io;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// Mount flags parsed from CSI `mount_flags`: generic ones become `MsFlags`, the rest is
/// passed to the filesystem as its data string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    pub data: Vec<String>,
}

/// Splits `["ro", "noatime", "discard", "nosuid,nodev"]` into generic flags and fs data.
/// Options that would change what kind of mount this is (`bind`, `remount`, `move`,
/// propagation) are refused: the caller decides those.
pub fn parse_options(list: &[String]) -> Result<Options, String> {
    let mut out = Options {
        flags: MsFlags::empty(),
        data: Vec::new(),
    };
    for item in list {
        for opt in item.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let flag = match opt {
                "ro" => Some(MsFlags::MS_RDONLY),
                "rw" => Some(MsFlags::empty()),
                "nosuid" => Some(MsFlags::MS_NOSUID),
                "nodev" => Some(MsFlags::MS_NODEV),
                "noexec" => Some(MsFlags::MS_NOEXEC),
                "sync" => Some(MsFlags::MS_SYNCHRONOUS),
                "dirsync" => Some(MsFlags::MS_DIRSYNC),
                "noatime" => Some(MsFlags::MS_NOATIME),
                "nodiratime" => Some(MsFlags::MS_NODIRATIME),
                "relatime" => Some(MsFlags::MS_RELATIME),
                "strictatime" => Some(MsFlags::MS_STRICTATIME),
                "lazytime" => Some(MsFlags::MS_LAZYTIME),
                "defaults" | "suid" | "dev" | "exec" | "async" | "atime" | "diratime" => {
                    Some(MsFlags::empty())
                }
                "bind" | "rbind" | "remount" | "move" | "shared" | "rshared" | "slave"
                | "rslave" | "private" | "rprivate" | "unbindable" | "runbindable" => {
                    return Err(format!("mount option {opt:?} is not allowed"));
                }
                _ => None,
            };
            match flag {
                Some(f) => out.flags |= f,
                None => {
                    if opt.bytes().any(|b| b.is_ascii_control()) {
                        return Err("mount option with control characters".into());
                    }
                    out.data.push(opt.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Mounts filesystem `fstype` from `device` on `target`.
pub fn mount_fs(device: &Path, target: &Path, fstype: &str, opts: &Options) -> io::Result<()> {
    let data = opts.data.join(",");
    let data = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    nix::mount::mount(Some(device), target, Some(fstype), opts.flags, data)?;
    Ok(())
}

/// Bind-mounts `source` on `target`, then applies `ro` and the generic flags with a
/// remount: a bind mount ignores those flags on its first call (mount(2), MS_BIND).
pub fn bind(source: &Path, target: &Path, read_only: bool, flags: MsFlags) -> io::Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let mut extra = flags
        & (MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME
            | MsFlags::MS_NODIRATIME
            | MsFlags::MS_RELATIME);
    if read_only {
        extra |= MsFlags::MS_RDONLY;
    }
    if !extra.is_empty()
        && let Err(e) = nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None::<&str>,
        )
    {
        // Never leave a writable mount behind when read-only was asked for.
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(e.into());
    }
    Ok(())
}

/// Unmounts `target`. Returns false when nothing was mounted there (EINVAL) or the path is
/// gone (ENOENT), so that callers can be idempotent.
///
/// EBUSY is retried for up to about two seconds: a thread that forks (mkfs here, or any
/// process that opened a file in the mount) holds duplicated descriptors until its child
/// execs, which makes the mount busy for that instant.
pub fn umount(target: &Path) -> io::Result<bool> {
    let mut pause = std::time::Duration::from_millis(2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => return Ok(true),
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(false),
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Unmounts every mount stacked on `target`; returns how many were removed.
pub fn umount_all(target: &Path) -> io::Result<u32> {
    let mut n = 0;
    while umount(target)? {
        n += 1;
        if n > 64 {
            return Err(io::Error::other("more than 64 mounts stacked on the path"));
        }
    }
    Ok(n)
}

/// Like `umount_all`, and then what `statx` says of the path with nothing mounted there
/// (None when it is gone): the statx that tells whether another mount is stacked there
/// replaces the umount2 that would fail with EINVAL, and callers get the stat they need.
pub fn umount_all_then_stat(target: &Path) -> io::Result<Option<PathStat>> {
    for _ in 0..=64 {
        let unmounted = umount(target)?;
        let st = match stat(target) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !unmounted || !st.mount_root {
            return Ok(Some(st));
        }
    }
    Err(io::Error::other("more than 64 mounts stacked on the path"))
}

pub use strata_mountinfo::{PathStat, stat};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_generic_and_data() {
        let o = parse_options(&["ro,noatime".into(), "discard".into(), "nosuid".into()]).unwrap();
        assert_eq!(
            o.flags,
            MsFlags::MS_RDONLY | MsFlags::MS_NOATIME | MsFlags::MS_NOSUID
        );
        assert_eq!(o.data, vec!["discard".to_string()]);
    }

    #[test]
    fn stacked_mounts_all_go_and_the_path_is_seen_bare() {
        if !testkit::require_root("stacked_mounts_all_go_and_the_path_is_seen_bare") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (src, target) = (d.path().join("src"), d.path().join("target"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .unwrap();
        struct Cleanup<'a>(&'a Path);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                let _ = umount_all(self.0);
            }
        }
        let _cleanup = Cleanup(&target);
        bind(&src, &target, false, MsFlags::empty()).unwrap();
        bind(&src, &target, true, MsFlags::empty()).unwrap();
        assert!(stat(&target).unwrap().mount_root);
        let st = umount_all_then_stat(&target)
            .unwrap()
            .expect("target exists");
        assert!(!st.mount_root);
        assert_eq!(st.mode & 0o7777, 0o750, "the target's own directory");
        assert_eq!(st.mode & libc::S_IFMT, libc::S_IFDIR);
        assert!(!umount(&target).unwrap(), "nothing left mounted");
        // Nothing mounted: the stat alone; a missing path: None.
        assert!(umount_all_then_stat(&target).unwrap().is_some());
        assert!(
            umount_all_then_stat(&d.path().join("gone"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn options_refuse_bind_and_propagation() {
        assert!(parse_options(&["bind".into()]).is_err());
        assert!(parse_options(&["rw,rshared".into()]).is_err());
    }
}

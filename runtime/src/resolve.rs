//! Path resolution beneath a root directory that never leaves it.
//!
//! Every lookup goes through openat2(2) with RESOLVE_IN_ROOT, so `..`, absolute
//! symlinks and relative symlinks are all resolved as if the root were `/`
//! (CVE-2019-5736-class escapes through crafted layers or rootfs symlinks). Magic
//! links (/proc/self/fd/N) are refused outright.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Turns `p` into a plain relative path: drops a leading `/` and `.` components and
/// refuses `..`, which no legitimate layer entry or container path needs.
pub fn clean_relative(p: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err("contains a `..` component"),
            Component::Prefix(_) => return Err("has a prefix"),
        }
    }
    Ok(out)
}

/// Opens `rel` beneath `root` with `flags`, resolved in the root.
pub fn open_in_root(root: impl AsFd, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    loop {
        match rustix::fs::openat2(
            root.as_fd(),
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        ) {
            // openat2 returns EAGAIN when a concurrent rename raced the lookup.
            Err(rustix::io::Errno::AGAIN) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Opens directory `rel` beneath `root`, creating missing components with `mode`.
/// Each component is created with mkdirat(2) in its already-resolved parent, so a
/// symlink planted anywhere along the path can at worst redirect inside the root.
pub fn mkdir_all_in_root(root: impl AsFd, rel: &Path, mode: Mode) -> io::Result<OwnedFd> {
    let root = root.as_fd();
    let mut cur = open_in_root(root, Path::new("."), OFlags::PATH | OFlags::DIRECTORY)?;
    let mut prefix = PathBuf::new();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        prefix.push(name);
        match open_in_root(root, &prefix, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => cur = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match rustix::fs::mkdirat(&cur, name, mode) {
                    Ok(()) => {}
                    // A symlink whose target is missing inside the root: refuse rather
                    // than guess where the caller meant.
                    Err(rustix::io::Errno::EXIST) => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{} is a dangling symlink", prefix.display()),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
                cur = open_in_root(root, &prefix, OFlags::PATH | OFlags::DIRECTORY)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Splits `rel` into its parent directory (created if missing, resolved in the root)
/// and its final name, which callers then act on with *at(2) calls that do not
/// follow it.
pub fn parent_in_root(
    root: impl AsFd,
    rel: &Path,
    mode: Mode,
) -> io::Result<(OwnedFd, &std::ffi::OsStr)> {
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no final name"))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    Ok((mkdir_all_in_root(root, parent, mode)?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_rejects_dotdot() {
        assert_eq!(
            clean_relative(Path::new("/a/./b")).unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(clean_relative(Path::new("./")).unwrap(), PathBuf::new());
        assert!(clean_relative(Path::new("a/../../etc")).is_err());
        assert!(clean_relative(Path::new("..")).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.path().join("up")).unwrap();
        let rootfd =
            rustix::fs::open(root.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        // `evil` points at a host path that does not exist inside the root: refused.
        assert!(mkdir_all_in_root(&rootfd, Path::new("evil/x"), Mode::from(0o755)).is_err());
        // `up` climbs out, which resolves to the root itself.
        mkdir_all_in_root(&rootfd, Path::new("up/made"), Mode::from(0o755)).unwrap();
        assert!(root.path().join("made").is_dir());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

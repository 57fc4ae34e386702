//! Directory trees walked through directory fds (openat with O_NOFOLLOW, *at calls), so
//! that a symlink or rename planted by a pod inside its volume cannot send a copy or a
//! removal anywhere outside the tree: copy (FICLONE per file where the filesystem can,
//! else a sparse copy), removal and usage.
//!
//! Copies keep file type, mode, owner and times; hard links become separate files and
//! extended attributes (ACLs) are not copied.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::reflink::{CopyKind, copy_image};

/// Deeper trees are refused rather than risking the stack of the blocking thread.
pub const MAX_DEPTH: usize = 512;

fn open_at(dir: &impl AsFd, name: &std::ffi::CStr, flags: OFlag) -> io::Result<File> {
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

fn open_subdir(dir: &impl AsFd, name: &std::ffi::CStr) -> io::Result<File> {
    open_at(dir, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY)
}

/// Entries of `dir` except `.` and `..`.
fn entries(dir: &File) -> io::Result<Vec<(std::ffi::CString, Option<Type>)>> {
    let dup = dir.try_clone()?;
    let mut d = Dir::from_fd(dup.into())?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        out.push((name.to_owned(), e.file_type()));
    }
    Ok(out)
}

fn stat_at(dir: &impl AsFd, name: &std::ffi::CStr) -> io::Result<FileStat> {
    Ok(nix::sys::stat::fstatat(
        dir.as_fd(),
        name,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

fn too_deep() -> io::Error {
    io::Error::other(format!("directory tree deeper than {MAX_DEPTH} levels"))
}

/// Bytes and files copied so far, reported to `progress` after each file.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub bytes: u64,
    pub files: u64,
    pub reflinked: bool,
}

/// Copies the contents of directory `src` into the empty directory `dst`, then gives
/// `dst` the mode, owner and times of `src`.
pub fn copy_tree(src: &File, dst: &File, progress: &mut dyn FnMut(&Copied)) -> io::Result<Copied> {
    let mut c = Copied {
        reflinked: true,
        ..Default::default()
    };
    copy_dir(src, dst, 0, &mut c, progress)?;
    let st = nix::sys::stat::fstat(src)?;
    copy_attrs_fd(dst, &st)?;
    Ok(c)
}

fn copy_attrs_fd(f: &File, st: &FileStat) -> io::Result<()> {
    nix::unistd::fchown(
        f.as_fd(),
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )?;
    nix::sys::stat::fchmod(f.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    let (a, m) = times(st);
    nix::sys::stat::futimens(f.as_fd(), &a, &m)?;
    Ok(())
}

fn times(st: &FileStat) -> (nix::sys::time::TimeSpec, nix::sys::time::TimeSpec) {
    (
        nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec),
        nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
}

fn copy_dir(
    src: &File,
    dst: &File,
    depth: usize,
    c: &mut Copied,
    progress: &mut dyn FnMut(&Copied),
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for (name, _) in entries(src)? {
        let st = stat_at(src, &name)?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
        match kind {
            SFlag::S_IFDIR => {
                nix::sys::stat::mkdirat(
                    dst.as_fd(),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o700),
                )?;
                let s = open_subdir(src, &name)?;
                let d = open_subdir(dst, &name)?;
                copy_dir(&s, &d, depth + 1, c, progress)?;
                copy_attrs_fd(&d, &st)?;
            }
            SFlag::S_IFREG => {
                let s = open_at(src, &name, OFlag::O_RDONLY)?;
                let fd = nix::fcntl::openat(
                    dst.as_fd(),
                    name.as_c_str(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let d = File::from(fd);
                if copy_image(&s, &d)? != CopyKind::Reflink && st.st_size > 0 {
                    c.reflinked = false;
                }
                copy_attrs_fd(&d, &st)?;
                c.bytes += st.st_size as u64;
                c.files += 1;
                progress(c);
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(src.as_fd(), name.as_c_str())?;
                nix::unistd::symlinkat(target.as_os_str(), dst.as_fd(), name.as_c_str())?;
                lchown_times(dst, &name, &st)?;
            }
            _ => {
                // Fifos, sockets and device nodes: the node itself, never its content.
                nix::sys::stat::mknodat(dst.as_fd(), name.as_c_str(), kind, perm, st.st_rdev)?;
                lchown_times(dst, &name, &st)?;
                nix::sys::stat::fchmodat(
                    dst.as_fd(),
                    name.as_c_str(),
                    perm,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )?;
            }
        }
    }
    Ok(())
}

fn lchown_times(dir: &File, name: &std::ffi::CStr, st: &FileStat) -> io::Result<()> {
    nix::unistd::fchownat(
        dir.as_fd(),
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let (a, m) = times(st);
    nix::sys::stat::utimensat(
        dir.as_fd(),
        name,
        &a,
        &m,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Removes everything inside directory `dir` (not `dir` itself).
pub fn empty_dir(dir: &File) -> io::Result<()> {
    empty_at(dir, 0)
}

fn empty_at(dir: &File, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for (name, t) in entries(dir)? {
        let is_dir = match t {
            Some(Type::Directory) => true,
            Some(_) => false,
            None => stat_at(dir, &name)?.st_mode & libc::S_IFMT == libc::S_IFDIR,
        };
        if is_dir {
            let sub = open_subdir(dir, &name)?;
            empty_at(&sub, depth + 1)?;
            drop(sub);
            unlink(dir, &name, true)?;
        } else {
            unlink(dir, &name, false)?;
        }
    }
    Ok(())
}

fn unlink(dir: &File, name: &std::ffi::CStr, is_dir: bool) -> io::Result<()> {
    let flag = if is_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    match nix::unistd::unlinkat(dir.as_fd(), name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes directory `name` of `parent` with everything in it; false when it was
/// already gone. A symlink named `name` is refused, never followed.
pub fn remove_tree(parent: &File, name: &str) -> io::Result<bool> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name with NUL"))?;
    let dir = match open_subdir(parent, &cname) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    empty_dir(&dir)?;
    drop(dir);
    unlink(parent, &cname, true)?;
    Ok(true)
}

/// Bytes allocated and inodes used beneath `dir` (itself included), as `du` counts them.
pub fn usage(dir: &File) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(dir)?;
    let mut bytes = st.st_blocks as u64 * 512;
    let mut inodes = 1;
    usage_at(dir, 0, &mut bytes, &mut inodes)?;
    Ok((bytes, inodes))
}

fn usage_at(dir: &File, depth: usize, bytes: &mut u64, inodes: &mut u64) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for (name, _) in entries(dir)? {
        let st = match stat_at(dir, &name) {
            Ok(st) => st,
            // Removed while we walk: it no longer counts.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        *bytes += st.st_blocks as u64 * 512;
        *inodes += 1;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub = open_subdir(dir, &name)?;
            usage_at(&sub, depth + 1, bytes, inodes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    #[test]
    fn copy_keeps_shapes_and_never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("a/b/f"), vec![7u8; 70_000]).unwrap();
        std::fs::set_permissions(src.join("a/b/f"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), src.join("out")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();

        let (s, d) = (
            super::super::fs::open_dir(&src).unwrap(),
            super::super::fs::open_dir(&dst).unwrap(),
        );
        let mut calls = 0;
        let c = copy_tree(&s, &d, &mut |_| calls += 1).unwrap();
        assert_eq!((c.files, c.bytes, calls), (1, 70_000, 1));
        assert_eq!(std::fs::read(dst.join("a/b/f")).unwrap(), vec![7u8; 70_000]);
        let m = std::fs::metadata(dst.join("a/b/f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(
            m.mtime(),
            std::fs::metadata(src.join("a/b/f")).unwrap().mtime()
        );
        assert_eq!(std::fs::read_link(dst.join("out")).unwrap(), outside.path());
        assert!(
            std::fs::symlink_metadata(dst.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let (bytes, inodes) = usage(&d).unwrap();
        assert!(bytes >= 70_000, "{bytes}");
        assert_eq!(inodes, 6, "dst, a, b, f, out, fifo");

        // Removal goes through the symlink's name only, never its target.
        let parent = super::super::fs::open_dir(t.path()).unwrap();
        assert!(remove_tree(&parent, "dst").unwrap());
        assert!(!remove_tree(&parent, "dst").unwrap());
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"secret"
        );
        // A symlink in place of the tree is refused, not followed.
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).unwrap();
        assert!(remove_tree(&parent, "link").is_err());
        assert!(outside.path().join("secret").exists());
    }
}

//! Directory-fd operations that never follow a symlink a container could have planted.
//!
//! Everything below a volume root is reached with `openat`/`openat2` from an fd of its
//! parent, with `O_NOFOLLOW` or `RESOLVE_NO_SYMLINKS`, so a link swapped in by a container
//! can neither redirect a write nor a delete outside the volume (CVE-2017-1002102).

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::error::{Context, Result};

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens `path` as a directory; the last component must not be a symlink.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).at("open directory", path)
}

/// Opens the directory `name` directly inside `dir`, refusing symlinks.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<OwnedFd> {
    nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty()).at("open directory", shown.join(name))
}

/// Opens `rel` (several components allowed) beneath `dir` without following any symlink
/// and without leaving `dir` (openat2(2) RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    nix::fcntl::openat2(dir, rel, how)
}

/// `lstat` relative to a directory fd; `None` when the name does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

pub fn is_symlink(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
}

/// Reads a symlink's text; `None` when it does not exist.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<OsString>> {
    match nix::fcntl::readlinkat(dir, name) {
        Ok(t) => Ok(Some(t)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entry names of a directory, without `.` and `..`.
pub fn list(dir: BorrowedFd<'_>, shown: &Path) -> Result<Vec<OsString>> {
    // Dir takes ownership and its offset is shared with `dir`: read through a fresh fd.
    let fd = nix::fcntl::openat(dir, ".", DIR_FLAGS, Mode::empty()).at("open directory", shown)?;
    let mut d = nix::dir::Dir::from_fd(fd).at("read directory", shown)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.at("read directory", shown)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

/// Removes `name` inside `dir` and, for a directory, everything below it, never following
/// a symlink (a link is removed, not its target). A missing entry is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<()> {
    let path = shown.join(name);
    let Some(st) = lstat_at(dir, name).at("stat", &path)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = open_dir_at(dir, name, shown)?;
        for child in list(sub.as_fd(), &path)? {
            remove_all_at(sub.as_fd(), &child, &path)?;
        }
        drop(sub);
        ignore_missing(nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir))
            .at("remove directory", &path)
    } else {
        ignore_missing(nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir))
            .at("remove", &path)
    }
}

fn ignore_missing(r: nix::Result<()>) -> nix::Result<()> {
    match r {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

/// `mkdir -p` of a relative path beneath `dir` (each new level 0755, umask defeated);
/// returns an fd of the innermost directory. Existing symlinks are refused.
pub fn mkdir_all_at(dir: BorrowedFd<'_>, rel: &Path, shown: &Path) -> Result<OwnedFd> {
    let mut cur = nix::fcntl::openat(dir, ".", DIR_FLAGS, Mode::empty()).at("open", shown)?;
    let mut at = shown.to_path_buf();
    for comp in rel.iter() {
        at.push(comp);
        match nix::sys::stat::mkdirat(cur.as_fd(), comp, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {
                nix::sys::stat::fchmodat(
                    cur.as_fd(),
                    comp,
                    Mode::from_bits_truncate(0o755),
                    nix::sys::stat::FchmodatFlags::NoFollowSymlink,
                )
                .or_else(|e| {
                    if e == Errno::EOPNOTSUPP {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .at("chmod", &at)?;
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).at("create directory", &at),
        }
        cur = nix::fcntl::openat(cur.as_fd(), comp, DIR_FLAGS, Mode::empty())
            .at("open directory", &at)?;
    }
    Ok(cur)
}

/// Creates a new file `name` in `dir` (it must not exist), writes `data`, and sets `mode`
/// explicitly so the umask has no say.
pub fn create_file_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: &[u8],
    mode: u32,
    shown: &Path,
) -> Result<OwnedFd> {
    let path = shown.join(name);
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .at("create", &path)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data).at("write", &path)?;
    nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode)).at("chmod", &path)?;
    Ok(OwnedFd::from(file))
}

/// Reads the regular file at `rel` beneath `dir`; `None` when it is missing or is not a
/// plain file reachable without symlinks.
pub fn read_beneath(dir: BorrowedFd<'_>, rel: &Path) -> nix::Result<Option<Vec<u8>>> {
    match open_beneath(dir, rel, OFlag::O_RDONLY) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(fd.as_fd())?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                return Ok(None);
            }
            let mut file = std::fs::File::from(fd);
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            Ok(Some(buf))
        }
        Err(Errno::ENOENT | Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

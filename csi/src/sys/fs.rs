//! File operations beneath a pool directory: openat2 with RESOLVE_BENEATH and
//! RESOLVE_NO_SYMLINKS, sparse sizing, statvfs and superblock probing.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

fn how(flags: OFlag, mode: u32) -> OpenHow {
    // openat2 refuses a mode without O_CREAT (EINVAL).
    let mode = if flags.contains(OFlag::O_CREAT) {
        mode
    } else {
        0
    };
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

/// Opens directory `path` (absolute) itself, refusing a symlink as the last component.
pub fn open_dir(path: &Path) -> io::Result<File> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Opens `rel` beneath `dir`; neither `..` nor any symlink can lead out of it.
pub fn open_beneath(dir: &impl AsFd, rel: &str, flags: OFlag, mode: u32) -> io::Result<File> {
    let fd = nix::fcntl::openat2(dir.as_fd(), rel, how(flags, mode))?;
    Ok(File::from(fd))
}

/// Creates directory `name` in `dir` when missing (mkdirat never follows a symlink).
pub fn ensure_subdir(dir: &impl AsFd, name: &str) -> io::Result<File> {
    match nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_beneath(dir, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)
}

/// Removes file `name` from `dir`; a missing file counts as removed.
pub fn unlink_beneath(dir: &impl AsFd, name: &str) -> io::Result<bool> {
    match nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `name` exists in `dir` as a regular file (symlinks are not followed).
pub fn file_exists(dir: &impl AsFd, name: &str) -> io::Result<Option<u64>> {
    match nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(Some(st.st_size as u64)),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        )),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Flushes the whole filesystem `f` lies on (syncfs(2)).
pub fn syncfs(f: &File) -> io::Result<()> {
    nix::unistd::syncfs(f)?;
    Ok(())
}

/// Whether directory `path` (never a symlink) holds nothing but `.` and `..`: getdents64
/// into a buffer on the stack, without the allocations of `read_dir` (publish targets are
/// checked on every NodeUnpublish).
pub fn dir_is_empty(path: &Path) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let dir = open_dir(path)?;
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: `buf` is writable for its length and `dir` an open directory for the
        // call; the kernel writes at most `buf.len()` bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(true);
        }
        // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
        let mut off = 0;
        while off + 19 <= n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen < 19 || off + reclen > n as usize {
                return Err(io::Error::other(
                    "malformed directory entry from getdents64",
                ));
            }
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                return Ok(false);
            }
            off += reclen;
        }
    }
}

/// Names of the entries of `dir`.
pub fn list_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        if let Some(n) = e?.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Sets the size of `file`, growing it sparsely (ftruncate allocates nothing).
pub fn set_len(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)
}

/// Space of the filesystem holding `fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
}

/// fstatvfs(2). `free_bytes` is what an unprivileged writer may still use (f_bavail).
pub fn space(fd: &impl AsFd) -> io::Result<Space> {
    let st = nix::sys::statvfs::fstatvfs(fd)?;
    let frsize = st.fragment_size() as u64;
    Ok(Space {
        total_bytes: st.blocks() as u64 * frsize,
        free_bytes: st.blocks_available() as u64 * frsize,
        total_inodes: st.files() as u64,
        free_inodes: st.files_available() as u64,
    })
}

/// Bytes allocated on disk for `file` (st_blocks * 512).
pub fn allocated(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

/// fsync(2).
pub fn sync(file: &File) -> io::Result<()> {
    file.sync_all()
}

/// The filesystem found in an image or device, read from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing we recognise and only zeros where superblocks would be.
    Empty,
    Ext4 {
        size_bytes: u64,
    },
    Xfs {
        size_bytes: u64,
    },
    /// Some non-zero data we do not recognise: never format over it.
    Unknown,
}

/// Reads the first 64 KiB and looks for an ext2/3/4 or xfs superblock (their magics are
/// at fixed offsets: 0xEF53 at byte 1080, "XFSB" at byte 0). Cheaper than forking blkid.
pub fn probe(file: &mut (impl Read + Seek)) -> io::Result<Probe> {
    let mut buf = vec![0u8; 64 * 1024];
    file.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < buf.len() {
        let r = file.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let buf = &buf[..n];
    if buf.len() >= 4 && &buf[0..4] == b"XFSB" && buf.len() >= 16 {
        let block = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as u64;
        let dblocks = u64::from_be_bytes(buf[8..16].try_into().unwrap());
        return Ok(Probe::Xfs {
            size_bytes: block * dblocks,
        });
    }
    if buf.len() >= 2048 && buf[1080] == 0x53 && buf[1081] == 0xEF {
        let sb = &buf[1024..2048];
        let le32 = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap()) as u64;
        let log = le32(24);
        let block = 1024u64 << log.min(16);
        let incompat = le32(0x60);
        let mut blocks = le32(4);
        // INCOMPAT_64BIT: the high half of the block count is valid.
        if incompat & 0x80 != 0 {
            blocks |= le32(0x150) << 32;
        }
        return Ok(Probe::Ext4 {
            size_bytes: blocks * block,
        });
    }
    if buf.iter().all(|b| *b == 0) {
        Ok(Probe::Empty)
    } else {
        Ok(Probe::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_only_dot_entries() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        assert!(dir_is_empty(&dir).unwrap());
        std::fs::write(dir.join("f"), b"").unwrap();
        assert!(!dir_is_empty(&dir).unwrap());
        std::fs::remove_file(dir.join("f")).unwrap();
        std::fs::create_dir(dir.join(".hidden")).unwrap();
        assert!(!dir_is_empty(&dir).unwrap());
        std::fs::remove_dir(dir.join(".hidden")).unwrap();
        // Entries beyond the first buffer: many long names, then all gone again.
        for i in 0..40 {
            std::fs::write(dir.join(format!("{i:0>200}")), b"").unwrap();
        }
        assert!(!dir_is_empty(&dir).unwrap());
        for i in 0..40 {
            std::fs::remove_file(dir.join(format!("{i:0>200}"))).unwrap();
        }
        assert!(dir_is_empty(&dir).unwrap());
        // Never through a symlink, and never a file.
        std::os::unix::fs::symlink(&dir, d.path().join("link")).unwrap();
        assert!(dir_is_empty(&d.path().join("link")).is_err());
        std::fs::write(d.path().join("file"), b"").unwrap();
        assert!(dir_is_empty(&d.path().join("file")).is_err());
    }
}

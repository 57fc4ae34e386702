//! Copying an image: FICLONE (shares extents on btrfs/xfs with reflink) or, where the pool
//! filesystem cannot, a sparse-aware copy that walks data extents with SEEK_DATA/SEEK_HOLE
//! so holes stay holes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// How an image was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

/// Copies all of `src` into `dst` (which must be empty) and gives `dst` the same length.
pub fn copy_image(src: &File, dst: &File) -> io::Result<CopyKind> {
    // SAFETY: both fds are open for the call; FICLONE takes the source fd by value and
    // touches none of our memory.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(CopyKind::Reflink);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Not supported by this filesystem, or across filesystems: copy instead.
        Some(libc::EOPNOTSUPP)
        | Some(libc::EINVAL)
        | Some(libc::EXDEV)
        | Some(libc::ENOTTY)
        | Some(libc::EPERM) => {}
        _ => return Err(err),
    }
    sparse_copy(src, dst)?;
    Ok(CopyKind::Sparse)
}

fn seek(fd: &File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on an open fd; no memory is passed.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENXIO: no data (or hole) at or after `off`.
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Copies only the data extents of `src`; the holes of `dst` stay unallocated.
pub fn sparse_copy(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut pos = 0u64;
    while pos < len {
        let Some(data) = seek(src, pos, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(src, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        copy_range(src, dst, data, end - data)?;
        pos = end;
    }
    Ok(())
}

fn copy_range(src: &File, dst: &File, off: u64, mut n: u64) -> io::Result<()> {
    let mut off_in = off as libc::loff_t;
    let mut off_out = off as libc::loff_t;
    while n > 0 {
        let chunk = n.min(1 << 30) as usize;
        // SAFETY: both fds are open; the offsets are our own stack variables, which the
        // kernel advances by the number of bytes copied.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shrank during copy",
            ));
        }
        n -= r as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("a"))
            .unwrap();
        src.set_len(64 << 20).unwrap();
        src.seek(SeekFrom::Start(10 << 20)).unwrap();
        src.write_all(b"hello extent").unwrap();
        src.sync_all().unwrap();
        let mut dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("b"))
            .unwrap();
        copy_image(&src, &dst).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), 64 << 20);
        let mut buf = [0u8; 12];
        dst.seek(SeekFrom::Start(10 << 20)).unwrap();
        dst.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello extent");
        use std::os::unix::fs::MetadataExt;
        assert!(
            dst.metadata().unwrap().blocks() * 512 < 8 << 20,
            "holes were filled"
        );
    }
}

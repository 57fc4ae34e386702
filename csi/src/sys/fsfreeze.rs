//! FIFREEZE/FITHAW: stop writes to a mounted filesystem while its image is copied, so
//! that the snapshots of a group are write-order consistent.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// _IOWR('X', 119, int) and _IOWR('X', 120, int) from linux/fs.h.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

fn ioctl_on(mount_point: &Path, req: libc::c_ulong) -> io::Result<()> {
    let dir = super::fs::open_dir(mount_point)?;
    // SAFETY: `dir` stays open for the call; FIFREEZE/FITHAW ignore their argument.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), req as _, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Freezes the filesystem mounted at `mount_point` (flushes it and blocks new writes).
pub fn freeze(mount_point: &Path) -> io::Result<()> {
    ioctl_on(mount_point, FIFREEZE)
}

/// Thaws it again. Not frozen (EINVAL) counts as thawed.
pub fn thaw(mount_point: &Path) -> io::Result<()> {
    match ioctl_on(mount_point, FITHAW) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

//! The external filesystem tools. These fork, which is fine: they run at first stage and
//! on expansion, never on the publish hot path.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Smallest xfs filesystem mkfs.xfs accepts (xfsprogs >= 5.19 refuses below 300 MiB).
pub const XFS_MIN_BYTES: u64 = 300 << 20;

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
    if out.status.success() {
        return Ok(());
    }
    let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.is_empty() {
        msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    msg.truncate(512);
    Err(io::Error::other(format!("{:?} failed ({}): {msg}", cmd.get_program(), out.status)))
}

/// Makes a filesystem of `fs_type` (ext4 or xfs) on `device`. No discard: the image is
/// a fresh sparse file, so there is nothing to discard and it would only cost time.
pub fn mkfs(device: &Path, fs_type: &str) -> io::Result<()> {
    match fs_type {
        "ext4" => run(Command::new("mkfs.ext4").args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
        ]).arg(device)),
        "xfs" => run(Command::new("mkfs.xfs").args(["-q", "-f", "-K"]).arg(device)),
        other => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unsupported fs type {other}"))),
    }
}

/// Grows a mounted filesystem to the size of its device.
pub fn grow(fs_type: &str, device: &Path, mount_point: &Path) -> io::Result<()> {
    match fs_type {
        "ext4" => run(Command::new("resize2fs").arg(device)),
        "xfs" => run(Command::new("xfs_growfs").arg("-d").arg(mount_point)),
        other => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cannot grow {other}"))),
    }
}

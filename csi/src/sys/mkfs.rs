//! The external filesystem tools. These fork, which is fine: they run at first stage and
//! on expansion, never on the publish hot path.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Smallest xfs filesystem mkfs.xfs accepts (xfsprogs >= 5.19 refuses below 300 MiB).
pub const XFS_MIN_BYTES: u64 = 300 << 20;

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.is_empty() {
        msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    msg.truncate(512);
    Err(io::Error::other(format!(
        "{:?} failed ({}): {msg}",
        cmd.get_program(),
        out.status
    )))
}

/// Makes a filesystem of `fs_type` (ext4 or xfs) on `device`. No discard: the image is
/// a fresh sparse file, so there is nothing to discard and it would only cost time.
pub fn mkfs(device: &Path, fs_type: &str) -> io::Result<()> {
    match fs_type {
        "ext4" => run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(device)),
        "xfs" => run(Command::new("mkfs.xfs")
            .args(["-q", "-f", "-K"])
            .arg(device)),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported fs type {other}"),
        )),
    }
}

/// Grows an unmounted ext4 filesystem to the size of its device: resize2fs insists on a
/// fresh e2fsck first. e2fsck exit codes 0 and 1 mean clean or fixed.
pub fn grow_ext4_offline(device: &Path) -> io::Result<()> {
    let out = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(device)
        .stdin(Stdio::null())
        .output()?;
    match out.status.code() {
        Some(0) | Some(1) => {}
        _ => {
            let mut msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
            msg.push_str(String::from_utf8_lossy(&out.stderr).trim());
            msg.truncate(512);
            return Err(io::Error::other(format!(
                "e2fsck failed ({}): {msg}",
                out.status
            )));
        }
    }
    run(Command::new("resize2fs").arg(device))
}

/// Whether this process may grow a mounted ext4: the kernel's online resize asks for
/// CAP_SYS_RESOURCE (fs/ext4/resize.c, ext4_resize_begin), which some sandboxes drop.
pub fn can_grow_ext4_online() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Grows a mounted filesystem to the size of its device.
pub fn grow(fs_type: &str, device: &Path, mount_point: &Path) -> io::Result<()> {
    match fs_type {
        "ext4" => run(Command::new("resize2fs").arg(device)),
        "xfs" => run(Command::new("xfs_growfs").arg("-d").arg(mount_point)),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot grow {other}"),
        )),
    }
}

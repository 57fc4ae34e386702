//! Parsing /proc/self/mountinfo: the one reader of the mount table for the driver, the volume manager and the tests.
//!
//! Format (proc(5)), one mount per line, fields separated by single spaces:
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! id par maj:min root mount-point options [optional...] - fstype source super-options
//! ```
//!
//! The kernel writes space, tab, newline and backslash in paths, source and options as `\ooo`
//! octal escapes. Paths are decoded to raw bytes (a mount point need not be UTF-8); the text
//! fields are decoded lossily. A line that does not fit the format is skipped, never a panic:
//! one odd line must not hide the rest of the table.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where this process's mount table lives.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Unique id of the mount (may be reused after an unmount).
    pub id: u32,
    /// Id of the parent mount (itself for the root of the namespace's tree).
    pub parent: u32,
    /// `st_dev` major of files on this filesystem.
    pub major: u32,
    /// `st_dev` minor of files on this filesystem.
    pub minor: u32,
    /// Path of the mounted subtree within its filesystem (`/` unless a bind of a subdir).
    pub root: PathBuf,
    /// Where it is mounted, relative to this process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, `relatime`, ...).
    pub mount_options: String,
    /// Optional tagged fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    /// Filesystem type, with a subtype when there is one (`fuse.sshfs`).
    pub fs_type: String,
    /// The mount source, e.g. `/dev/loop7`, `tmpfs`, or empty.
    pub source: String,
    /// Per-superblock options (`rw`, `size=...`, ...).
    pub super_options: String,
}

impl Mount {
    /// The mount itself is read-only (`ro` in the per-mount options).
    pub fn read_only(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "ro")
    }

    /// The peer group this mount shares propagation with (`shared:N`).
    pub fn shared(&self) -> Option<u32> {
        self.tagged("shared:")
    }

    /// The peer group this mount receives propagation from (`master:N`).
    pub fn master(&self) -> Option<u32> {
        self.tagged("master:")
    }

    fn tagged(&self, tag: &str) -> Option<u32> {
        self.optional
            .iter()
            .find_map(|f| f.strip_prefix(tag)?.parse().ok())
    }
}

/// Parses one line (without its newline); `None` when it is malformed.
pub fn parse_line(line: &str) -> Option<Mount> {
    parse_line_bytes(line.as_bytes())
}

/// Parses one line given as raw bytes; `None` when it is malformed.
pub fn parse_line_bytes(line: &[u8]) -> Option<Mount> {
    // Single spaces only: an empty field (an empty source) is a field, not a gap.
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    // The separator comes after the six fixed fields and any optional ones.
    let sep = 6 + fields.get(6..)?.iter().position(|f| *f == b"-")?;
    let number = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u32>().ok();
    let (major, minor) = std::str::from_utf8(fields[2]).ok()?.split_once(':')?;
    let fs_type = fields.get(sep + 1).filter(|f| !f.is_empty())?;
    Some(Mount {
        id: number(fields[0])?,
        parent: number(fields[1])?,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: unescape_path(fields[3]),
        mount_point: unescape_path(fields[4]),
        mount_options: unescape_text(fields[5]),
        optional: fields[6..sep]
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| unescape_text(f))
            .collect(),
        fs_type: unescape_text(fs_type),
        source: fields
            .get(sep + 2)
            .map_or_else(String::new, |f| unescape_text(f)),
        super_options: fields
            .get(sep + 3)
            .map_or_else(String::new, |f| unescape_text(f)),
    })
}

/// Parses a whole mountinfo text, skipping malformed lines.
pub fn parse(text: &str) -> Vec<Mount> {
    parse_bytes(text.as_bytes())
}

/// Parses a whole mountinfo text given as raw bytes, skipping malformed lines.
pub fn parse_bytes(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter_map(parse_line_bytes)
        .collect()
}

/// Reads this process's mount table from /proc/self/mountinfo.
pub fn read() -> io::Result<Vec<Mount>> {
    read_from(Path::new(SELF_MOUNTINFO))
}

/// Reads a mount table from `path` (e.g. `/proc/<pid>/mountinfo`). The error keeps the
/// `io::ErrorKind` and names the path.
pub fn read_from(path: &Path) -> io::Result<Vec<Mount>> {
    // Bytes, not a String: one non-UTF-8 mount point must not fail the whole read.
    match std::fs::read(path) {
        Ok(text) => Ok(parse_bytes(&text)),
        Err(source) => Err(io::Error::new(
            source.kind(),
            ReadError {
                path: path.to_owned(),
                source,
            },
        )),
    }
}

/// Why a mount table could not be read; carried inside the `io::Error` from [`read_from`].
#[derive(Debug)]
pub struct ReadError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Whether something is mounted at exactly `path` (a final symlink is not followed).
///
/// One `statx` asking for `STATX_ATTR_MOUNT_ROOT` (Linux 5.8) instead of reading and
/// parsing the whole table: a node with a hundred pods has thousands of mounts, hundreds
/// of kilobytes of mountinfo, and this is asked for every volume of every pod sync.
/// Where the kernel does not report the attribute, the table answers. A path that does
/// not exist is not mounted.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    match stat(path) {
        Ok(st) => Ok(st.mount_root),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// What `statx` says about a path, a final symlink not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStat {
    /// Something is mounted at exactly this path (see [`is_mount_point`]).
    pub mount_root: bool,
    pub dev: (u32, u32),
    pub rdev: (u32, u32),
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub size: u64,
}

/// One `statx` of `path` (a final symlink not followed), with whether it is a mount
/// point; where the kernel does not report `STATX_ATTR_MOUNT_ROOT`, the table answers
/// that.
pub fn stat(path: &Path) -> io::Result<PathStat> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    let st = statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    let mount_root = if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    } else {
        mounted_at(&read()?, path).is_some()
    };
    Ok(PathStat {
        mount_root,
        dev: (st.stx_dev_major, st.stx_dev_minor),
        rdev: (st.stx_rdev_major, st.stx_rdev_minor),
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        uid: st.stx_uid,
        size: st.stx_size,
    })
}

/// The visible mount at exactly `path`: the last (topmost) one when several are stacked.
pub fn mounted_at<'a>(table: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// Every mount at exactly `path`, in table order (the last one is the visible one).
pub fn all_at<'a>(table: &'a [Mount], path: &Path) -> Vec<&'a Mount> {
    table.iter().filter(|m| m.mount_point == path).collect()
}

/// Mounts whose mount point is `root` or lies beneath it (by path component), in the order
/// they can be unmounted: deepest first, and among equal depth the later (stacked on top) first.
pub fn under<'a>(table: &'a [Mount], root: &Path) -> Vec<&'a Mount> {
    let mut v: Vec<&Mount> = table
        .iter()
        .rev()
        .filter(|m| m.mount_point.starts_with(root))
        .collect();
    // Stable sort: keeps "later first" within one depth.
    v.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    v
}

/// Undoes the kernel's `\ooo` escapes. A backslash not followed by three octal digits of a
/// byte value (`\400` and above) stays as it is.
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && let Some(&[a, b, c]) = s.get(i + 1..i + 4)
            && [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d))
            && a <= b'3'
        {
            out.push((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Escapes as the kernel does for mountinfo: space, tab, newline and backslash as `\ooo`.
pub fn escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

fn unescape_path(s: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(s)))
}

fn unescape_text(s: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(s)).into_owned()
}

#[cfg(test)]
mod tests;

//! /proc/self/mountinfo parsing (proc(5)), used by reconciliation and health checks.

use std::io;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u32,
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Undoes the octal escapes (`\040` for space, `\011`, `\012`, `\134`) the kernel uses.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one line; None when it is malformed.
pub fn parse_line(line: &str) -> Option<Mount> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent = f.next()?.parse().ok()?;
    let (major, minor) = f.next()?.split_once(':')?;
    let root = unescape(f.next()?);
    let mount_point = unescape(f.next()?);
    let options = f.next()?.to_string();
    let mut p = post.split(' ');
    let fs_type = p.next()?.to_string();
    let source = unescape(p.next().unwrap_or(""));
    Some(Mount {
        id,
        parent,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: PathBuf::from(root),
        mount_point: PathBuf::from(mount_point),
        options,
        fs_type,
        source,
    })
}

/// Parses a whole mountinfo text, skipping malformed lines.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// Reads this process's mount table.
pub fn read() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts at `path`, the last one being the visible one.
pub fn at<'a>(mounts: &'a [Mount], path: &Path) -> Vec<&'a Mount> {
    mounts.iter().filter(|m| m.mount_point == path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 7:3 / /var/lib/kubelet/plugins/x/globalmount rw,relatime shared:40 - ext4 /dev/loop3 rw
37 22 7:3 / /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv\\0401/mount ro,relatime shared:40 - ext4 /dev/loop3 rw
38 22 0:5 /loop3 /tmp/blk ro,nosuid master:2 - devtmpfs udev rw,size=1k
garbage line
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].major, 7);
        assert_eq!(m[1].minor, 3);
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(
            m[2].mount_point,
            PathBuf::from("/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv 1/mount")
        );
        assert!(m[2].read_only());
        assert!(!m[1].read_only());
        assert_eq!(m[3].root, PathBuf::from("/loop3"));
        assert_eq!(m[3].fs_type, "devtmpfs");
        assert_eq!(at(&m, Path::new("/tmp/blk")).len(), 1);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_line("1 2 3").is_none());
        assert!(parse_line("x 1 0:1 / / rw - ext4 a b").is_none());
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn reads_own_mountinfo() {
        let m = read().unwrap();
        assert!(m.iter().any(|m| m.mount_point == Path::new("/")));
    }
}

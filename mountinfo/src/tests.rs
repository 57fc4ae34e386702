use std::os::unix::ffi::OsStrExt;

use proptest::prelude::*;

use super::*;

// Lines as a kernel writes them: root fs, a kubelet publish with an escaped space, a bind of
// a subdirectory (root not `/`), a devtmpfs entry with two optional fields, a tmpfs with an
// empty source, and lines that must be skipped.
const TABLE: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 7:3 / /var/lib/kubelet/plugins/x/globalmount rw,relatime shared:40 - ext4 /dev/loop3 rw,errors=remount-ro
37 22 7:3 /data/sub\\134dir /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv\\0401/mount ro,nosuid,relatime shared:40 master:7 - ext4 /dev/loop3 rw
38 22 0:5 /loop3 /tmp/blk ro,nosuid master:2 - devtmpfs udev rw,size=1k
39 22 0:44 / /run/with\\011tab\\012nl rw - tmpfs  rw,size=64k
garbage line
40 22 0:45 / /half rw
x 22 0:46 / /badid rw - tmpfs tmpfs rw
41 22 0-47 / /baddev rw - tmpfs tmpfs rw
42 22 0:48 / /nofs rw -
";

#[test]
fn parses_every_field() {
    let t = parse(TABLE);
    assert_eq!(t.len(), 5, "{t:#?}");
    let m = &t[1];
    assert_eq!((m.id, m.parent, m.major, m.minor), (36, 22, 7, 3));
    assert_eq!(m.root, Path::new("/"));
    assert_eq!(
        m.mount_point,
        Path::new("/var/lib/kubelet/plugins/x/globalmount")
    );
    assert_eq!(m.mount_options, "rw,relatime");
    assert_eq!(m.optional, ["shared:40"]);
    assert_eq!(m.fs_type, "ext4");
    assert_eq!(m.source, "/dev/loop3");
    assert_eq!(m.super_options, "rw,errors=remount-ro");
    assert!(!m.read_only());
}

#[test]
fn bind_mount_of_a_subdir_keeps_its_root_and_escapes() {
    let m = &parse(TABLE)[2];
    assert_eq!(m.root, Path::new("/data/sub\\dir"));
    assert_eq!(
        m.mount_point,
        Path::new("/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv 1/mount")
    );
    assert!(m.read_only());
    assert_eq!(m.optional, ["shared:40", "master:7"]);
    assert_eq!((m.shared(), m.master()), (Some(40), Some(7)));
    // Read-only mount of a read-write superblock.
    assert_eq!(m.super_options, "rw");
}

#[test]
fn tab_newline_and_empty_source() {
    let m = &parse(TABLE)[4];
    assert_eq!(m.mount_point, Path::new("/run/with\ttab\nnl"));
    assert!(m.optional.is_empty());
    assert_eq!(m.fs_type, "tmpfs");
    assert_eq!(m.source, "");
    assert_eq!(m.super_options, "rw,size=64k");
    assert_eq!(parse(TABLE)[3].master(), Some(2));
    assert_eq!(parse(TABLE)[3].shared(), None);
}

#[test]
fn malformed_lines_are_skipped() {
    for line in [
        "",
        "1 2 3",
        "x 1 0:1 / / rw - ext4 a b",
        "1 x 0:1 / / rw - ext4 a b",
        "1 1 0:x / / rw - ext4 a b",
        "1 1 01 / / rw - ext4 a b",
        "1 1 0:1 / / rw ext4 a b",
        "1 1 0:1 / / rw -",
        "1 1 0:1 / / rw - ",
        "1 1 0:1 / / - ext4 a b",
        "99999999999 1 0:1 / / rw - ext4 a b",
    ] {
        assert_eq!(parse_line(line), None, "{line:?}");
    }
    // Super options may be missing on a truncated line; the mount is still there.
    let m = parse_line("1 1 0:1 / /x rw - ext4 /dev/a").unwrap();
    assert_eq!(
        (m.source.as_str(), m.super_options.as_str()),
        ("/dev/a", "")
    );
}

#[test]
fn non_utf8_paths_survive() {
    let line = b"50 22 0:9 / /mnt/caf\xe9 rw - tmpfs tmpfs rw";
    let m = parse_line_bytes(line).unwrap();
    assert_eq!(m.mount_point.as_os_str().as_bytes(), b"/mnt/caf\xe9");
    let mut text = TABLE.as_bytes().to_vec();
    text.extend_from_slice(line);
    assert_eq!(parse_bytes(&text).len(), 6);
}

#[test]
fn odd_escapes_stay_literal() {
    assert_eq!(unescape(b"a\\134b\\011"), b"a\\b\t");
    assert_eq!(unescape(b"trailing\\04"), b"trailing\\04");
    assert_eq!(unescape(b"\\400 \\8 \\"), b"\\400 \\8 \\");
    assert_eq!(escape(b"a b\\c\td\ne"), b"a\\040b\\134c\\011d\\012e");
}

#[test]
fn lookups() {
    let stacked = "\
1 0 0:1 / / rw - ext4 /dev/vda rw
2 1 0:2 / /p rw - tmpfs one rw
3 1 0:3 / /p/a rw - tmpfs a rw
4 2 0:4 / /p rw - tmpfs two rw
5 3 0:5 / /p/a/b rw - tmpfs b rw
6 1 0:6 / /pa rw - tmpfs other rw
";
    let t = parse(stacked);
    assert_eq!(mounted_at(&t, Path::new("/p")).unwrap().source, "two");
    assert_eq!(all_at(&t, Path::new("/p")).len(), 2);
    assert!(mounted_at(&t, Path::new("/q")).is_none());
    let order: Vec<&str> = under(&t, Path::new("/p"))
        .iter()
        .map(|m| m.source.as_str())
        .collect();
    // `/pa` is not beneath `/p`: components, not string prefixes.
    assert_eq!(order, ["b", "a", "two", "one"]);
    assert_eq!(under(&t, Path::new("/")).len(), 6);
}

#[test]
fn reads_own_mountinfo() {
    let t = read().unwrap();
    assert!(t.iter().any(|m| m.mount_point == Path::new("/")));
}

#[test]
fn read_error_names_the_path() {
    let e = read_from(Path::new("/proc/nonexistent-pid/mountinfo")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(
        e.to_string().contains("/proc/nonexistent-pid/mountinfo"),
        "{e}"
    );
}

proptest! {
    #[test]
    fn escaping_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let escaped = escape(&bytes);
        prop_assert!(!escaped.iter().any(|b| matches!(b, b' ' | b'\t' | b'\n')));
        prop_assert_eq!(unescape(&escaped), bytes);
    }

    #[test]
    fn any_mount_point_parses_back(
        point in proptest::collection::vec(any::<u8>(), 1..48),
        source in "[ -~\t]{0,16}",
    ) {
        let mut line = b"7 1 8:1 / ".to_vec();
        line.extend(escape(&point));
        line.extend_from_slice(b" rw shared:3 - ext4 ");
        line.extend(escape(source.as_bytes()));
        line.extend_from_slice(b" rw");
        let m = parse_line_bytes(&line).unwrap();
        prop_assert_eq!(m.mount_point.as_os_str().as_bytes(), &point[..]);
        prop_assert_eq!(m.source, source);
        prop_assert_eq!(m.optional, vec!["shared:3".to_string()]);
    }
}

#[test]
fn is_mount_point_agrees_with_the_table() {
    let table = read().expect("mountinfo");
    for p in ["/", "/proc"] {
        let listed = mounted_at(&table, Path::new(p)).is_some();
        assert_eq!(is_mount_point(Path::new(p)).unwrap(), listed, "{p}");
    }
    let dir = std::env::temp_dir().join(format!("mountinfo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(!is_mount_point(&dir).unwrap(), "a plain directory");
    std::fs::remove_dir(&dir).unwrap();
    assert!(
        !is_mount_point(&dir).unwrap(),
        "a missing path is not mounted"
    );
    assert!(!is_mount_point(&dir.join("below")).unwrap());
}

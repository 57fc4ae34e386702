//! Packing a directory tree into a layer tar: a host directory for a built image,
//! or an overlay upper dir for a commit.
//!
//! Entries come in sorted order with their own mode, owner and mtime, so the same
//! tree gives the same digest. For an upper dir, overlayfs whiteouts (char device
//! 0/0) go back to OCI `.wh.NAME` entries and opaque dirs get a `.wh..wh..opq`
//! entry (image-spec layer.md "Whiteouts"). Symlinks are stored, never followed.
//!
//! Extended attributes (file capabilities, `user.*`, POSIX ACLs) travel as PAX
//! `SCHILY.xattr.NAME` records before their entry, names sorted, values as raw bytes.
//! An entry without any gets no PAX header at all, so such trees pack to the same
//! bytes as before xattrs were carried.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::image::unpack::OPAQUE_XATTR;

/// What to pack and how.
pub struct PackSpec<'a> {
    pub dir: &'a Path,
    /// Translate overlayfs whiteouts and opaque dirs into OCI entries.
    pub overlay_upper: bool,
    /// Relative paths left out, with everything beneath them.
    pub exclude: &'a HashSet<PathBuf>,
}

/// Writes the tar of `spec.dir` to `out`.
pub fn pack(spec: &PackSpec<'_>, out: impl Write) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links = HashMap::new();
    walk(spec, &mut b, Path::new(""), &mut links)?;
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(Error::io("finishing layer tar", spec.dir))
}

fn walk<W: Write>(
    spec: &PackSpec<'_>,
    b: &mut tar::Builder<W>,
    rel_dir: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let abs_dir = spec.dir.join(rel_dir);
    let mut names: Vec<_> = fs::read_dir(&abs_dir)
        .map_err(Error::io("reading dir", &abs_dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(Error::io("reading dir", &abs_dir))?;
    names.sort();
    for name in names {
        let rel = rel_dir.join(&name);
        if spec.exclude.contains(&rel) {
            continue;
        }
        let abs = spec.dir.join(&rel);
        let io = |action| Error::io(action, &abs);
        let meta = fs::symlink_metadata(&abs).map_err(io("inspecting"))?;
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if spec.overlay_upper && ft.is_char_device() && meta.rdev() == 0 {
            let mut wh = tar::Header::new_gnu();
            wh.set_entry_type(tar::EntryType::Regular);
            wh.set_size(0);
            wh.set_mode(0o644);
            wh.set_mtime(meta.mtime().max(0) as u64);
            let mut wname = std::ffi::OsString::from(".wh.");
            wname.push(&name);
            b.append_data(&mut wh, rel_dir.join(wname), std::io::empty())
                .map_err(io("writing whiteout"))?;
        } else if ft.is_dir() {
            h.set_size(0);
            append_xattrs(b, &abs)?;
            b.append_data(&mut h, &rel, std::io::empty())
                .map_err(io("writing dir"))?;
            if spec.overlay_upper && is_opaque(&abs) {
                let mut wh = tar::Header::new_gnu();
                wh.set_entry_type(tar::EntryType::Regular);
                wh.set_size(0);
                wh.set_mode(0o644);
                b.append_data(&mut wh, rel.join(".wh..wh..opq"), std::io::empty())
                    .map_err(io("writing opaque marker"))?;
            }
            walk(spec, b, &rel, links)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&abs).map_err(io("reading symlink"))?;
            h.set_size(0);
            append_xattrs(b, &abs)?;
            b.append_link(&mut h, &rel, &target)
                .map_err(io("writing symlink"))?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    let mut lh = tar::Header::new_gnu();
                    lh.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                    lh.set_entry_type(tar::EntryType::Link);
                    lh.set_size(0);
                    b.append_link(&mut lh, &rel, first)
                        .map_err(io("writing hard link"))?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), rel.clone());
            }
            let f = fs::File::open(&abs).map_err(io("opening"))?;
            append_xattrs(b, &abs)?;
            b.append_data(&mut h, &rel, f).map_err(io("writing file"))?;
        } else {
            // Devices, fifos and sockets: header only (set_metadata filled the type
            // and device numbers; sockets cannot live in a tar and are skipped).
            if ft.is_socket() {
                continue;
            }
            h.set_size(0);
            append_xattrs(b, &abs)?;
            b.append_data(&mut h, &rel, std::io::empty())
                .map_err(io("writing node"))?;
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut buf), Ok(1) if buf[0] == b'y')
}

/// Linux's cap on one attribute value (XATTR_SIZE_MAX) and on one file's list of
/// names (XATTR_LIST_MAX); a filesystem reporting more is corrupt.
const XATTR_MAX: usize = 64 * 1024;
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Whether attribute `name` belongs in a layer.
fn carried(name: &str) -> bool {
    // trusted.overlay.* is overlayfs's own bookkeeping (opaque, origin, redirect,
    // metacopy...): it describes this upper dir, not the image, and an opaque dir is
    // already its `.wh..wh..opq` entry. security.selinux is the host's label for the
    // file, which the host's policy assigns again where the layer lands: not content.
    !name.starts_with("trusted.overlay.") && name != "security.selinux"
}

/// Writes the PAX record set for `abs`'s carried xattrs; nothing when it has none.
fn append_xattrs<W: Write>(b: &mut tar::Builder<W>, abs: &Path) -> Result<()> {
    let attrs = xattrs(abs)?;
    if attrs.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = attrs
        .iter()
        .map(|(name, _)| format!("{PAX_XATTR_PREFIX}{name}"))
        .collect();
    let records = keys
        .iter()
        .map(String::as_str)
        .zip(attrs.iter().map(|(_, v)| v.as_slice()));
    b.append_pax_extensions(records)
        .map_err(Error::io("writing xattrs of", abs))
}

/// The carried xattrs of `abs` itself (a symlink's own, never its target's), sorted
/// by name. A filesystem without xattr support has none.
fn xattrs(abs: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let fail = |source| Error::io("reading xattrs of", abs)(source);
    let list = read_sized(
        "the xattr name list",
        || rustix::fs::llistxattr_query(abs),
        |buf| rustix::fs::llistxattr(abs, buf),
    );
    let list = match list {
        Err(e) if e.raw_os_error() == Some(Errno::NOTSUP.raw_os_error()) => return Ok(vec![]),
        r => r.map_err(fail)?,
    };
    let mut out = Vec::new();
    for raw in list.split(|&c| c == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw).map_err(|_| {
            fail(invalid_data(format!(
                "xattr name {:?} is not UTF-8, which a PAX key must be",
                String::from_utf8_lossy(raw)
            )))
        })?;
        if !carried(name) {
            continue;
        }
        // A PAX record ends its key at the first '='. A newline in a name would be
        // framed correctly too, but no reader we know of expects one in a key.
        if name.contains(['=', '\n']) {
            return Err(fail(invalid_data(format!(
                "xattr name {name:?} holds '=' or a newline, which a PAX key cannot"
            ))));
        }
        let value = read_sized(
            &format!("the value of xattr {name}"),
            || rustix::fs::lgetxattr_query(abs, name),
            |buf| rustix::fs::lgetxattr(abs, name, buf),
        );
        match value {
            // Any bytes, newlines included: PAX records are framed by their length,
            // and unpack's reader (tar_reader) reads them that way.
            Ok(v) => out.push((name.to_owned(), v)),
            // Removed between listing and reading.
            Err(e) if e.raw_os_error() == Some(Errno::NODATA.raw_os_error()) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    out.sort();
    Ok(out)
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a list or value whose size is only known by asking: the buffer is sized by
/// `query` and sized again when the value grew in between (ERANGE). More than
/// `XATTR_MAX` bytes is refused rather than allocated.
fn read_sized(
    what: &str,
    query: impl Fn() -> rustix::io::Result<usize>,
    read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    let too_big = |len: Option<usize>| {
        let len = len.map(|n| format!(" {n} bytes,")).unwrap_or_default();
        invalid_data(format!("{what} is{len} over Linux's 64 KiB limit"))
    };
    let mut len = query()?;
    loop {
        if len > XATTR_MAX {
            return Err(too_big(Some(len)));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; len];
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // Strictly growing, so a value that keeps growing ends at the limit.
            Err(Errno::RANGE) => len = query()?.max(len + 1),
            // The kernel's own refusal of a value over its limit.
            Err(Errno::TOOBIG) => return Err(too_big(None)),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    use std::os::unix::ffi::OsStrExt;

    /// A tree of every entry kind pack handles, with fixed owners, modes and
    /// mtimes so its tar is the same on any machine. No xattrs but overlayfs's own.
    fn fixed_tree(root: &Path) {
        let p = |r: &str| root.join(r);
        for d in ["a", "b", "opq", "skip"] {
            fs::create_dir(p(d)).unwrap();
        }
        fs::write(p("a/file"), "hello\n").unwrap();
        fs::write(p("a/exec"), "#!/bin/sh\n").unwrap();
        fs::write(p("a/hard1"), "shared").unwrap();
        fs::hard_link(p("a/hard1"), p("b/hard2")).unwrap();
        fs::write(p("b/.wh.gone"), "").unwrap();
        fs::write(p("b").join("l".repeat(120)), "long name").unwrap();
        fs::write(p("opq/inner"), "x").unwrap();
        fs::write(p("skip/left-out"), "x").unwrap();
        std::os::unix::fs::symlink("file", p("a/link")).unwrap();
        std::os::unix::fs::symlink("x".repeat(150), p("b/longlink")).unwrap();
        rustix::fs::mknodat(
            CWD,
            p("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o600),
            0,
        )
        .unwrap();
        rustix::fs::mknodat(
            CWD,
            p("b/wh"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
        rustix::fs::lsetxattr(
            p("opq"),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let modes = [
            ("a", 0o755),
            ("b", 0o750),
            ("opq", 0o700),
            ("skip", 0o755),
            ("a/file", 0o644),
            ("a/exec", 0o4755),
            ("a/hard1", 0o640),
            ("opq/inner", 0o600),
        ];
        for (r, m) in modes {
            rustix::fs::chmod(p(r), rustix::fs::Mode::from(m)).unwrap();
        }
        // Children before parents: creating a name changes its dir's mtime.
        let mut all = vec![];
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap().path();
                if e.symlink_metadata().unwrap().is_dir() {
                    stack.push(e.clone());
                }
                all.push(e);
            }
        }
        all.sort_by(|x, y| {
            let depth = |e: &PathBuf| e.components().count();
            depth(y).cmp(&depth(x)).then_with(|| x.cmp(y))
        });
        for (i, e) in all.iter().enumerate() {
            rustix::fs::chownat(
                CWD,
                e,
                Some(rustix::process::Uid::from_raw(1234)),
                Some(rustix::process::Gid::from_raw(5678)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let ts = Timespec {
                tv_sec: 1_600_000_000 + i as i64,
                tv_nsec: 0,
            };
            let times = Timestamps {
                last_access: ts,
                last_modification: ts,
            };
            rustix::fs::utimensat(CWD, e, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        }
    }

    fn pack_to_vec(dir: &Path, overlay_upper: bool) -> Vec<u8> {
        let exclude = HashSet::from([PathBuf::from("skip")]);
        let spec = PackSpec {
            dir,
            overlay_upper,
            exclude: &exclude,
        };
        let mut out = Vec::new();
        pack(&spec, &mut out).unwrap();
        out
    }

    /// Digests of `fixed_tree`'s tars as packed before xattrs were carried: a tree
    /// without xattrs must keep packing to the same bytes, or every existing
    /// image's layer digests would change.
    const HOST_DIR_DIGEST: &str =
        "sha256:ada42b91facb9405c62b6610a8f9ac198bcf4b653c9dfd834c25a206f496e68d";
    const UPPER_DIR_DIGEST: &str =
        "sha256:da81e576c6b452c2e52d240c7c5034820c27467d9c0820c284bd40298d2a359b";

    #[test]
    fn tree_without_xattrs_packs_to_the_same_bytes_as_before() {
        // chown and mknod of a whiteout need root.
        if !testkit::require_root("tree_without_xattrs_packs_to_the_same_bytes_as_before") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        fixed_tree(tmp.path());
        let host = crate::digest::Digest::of(&pack_to_vec(tmp.path(), false)).to_string();
        let upper = crate::digest::Digest::of(&pack_to_vec(tmp.path(), true)).to_string();
        assert_eq!(
            (host.as_str(), upper.as_str()),
            (HOST_DIR_DIGEST, UPPER_DIR_DIGEST)
        );
    }

    fn set(path: &Path, name: impl rustix::path::Arg, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
    }

    /// `tar` with its PAX extended-header entries cut out.
    fn without_pax(tar: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < tar.len() {
            let block = &tar[at..at + 512];
            let h = tar::Header::from_byte_slice(block);
            let len = if block.iter().all(|&c| c == 0) {
                512
            } else {
                512 + h.entry_size().unwrap().div_ceil(512) as usize * 512
            };
            if h.entry_type() != tar::EntryType::XHeader {
                out.extend_from_slice(&tar[at..at + len]);
            }
            at += len;
        }
        out
    }

    type Records = Vec<(String, Vec<u8>)>;

    /// Every entry's PAX records, in tar order, by entry path.
    fn pax_records(tar: &[u8]) -> Vec<(String, Records)> {
        let mut out = Vec::new();
        let mut a = tar::Archive::new(tar);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let recs = match e.pax_extensions().unwrap() {
                Some(exts) => exts
                    .map(|x| {
                        let x = x.unwrap();
                        (x.key().unwrap().to_owned(), x.value_bytes().to_vec())
                    })
                    .collect(),
                None => vec![],
            };
            out.push((path, recs));
        }
        out
    }

    #[test]
    fn xattrs_only_add_pax_records_before_their_entries() {
        if !testkit::require_root("xattrs_only_add_pax_records_before_their_entries") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fixed_tree(root);
        let plain = pack_to_vec(root, true);
        // Binary values with NUL, '=' and non-UTF-8 bytes pass through unchanged.
        let binary = b"\0a=b \xff\x01".to_vec();
        set(&root.join("a/file"), "user.strata.z", b"last");
        set(&root.join("a/file"), "user.strata.a", &binary);
        set(&root.join("a/file"), "trusted.overlay.origin", b"x");
        set(
            &root.join("a/exec"),
            "security.selinux",
            b"system_u:object_r:bin_t:s0\0",
        );
        set(&root.join("a"), "user.strata.dir", b"d");
        set(&root.join("a/link"), "trusted.strata.link", b"l");
        set(&root.join("a/hard1"), "user.strata.hard", b"h");
        set(&root.join("fifo"), "trusted.strata.fifo", b"f");
        set(&root.join("opq/inner"), "trusted.overlay.redirect", b"/x");
        let with = pack_to_vec(root, true);

        assert_eq!(
            without_pax(&with),
            plain,
            "xattrs changed more than PAX records"
        );
        let got: Vec<(String, Records)> = pax_records(&with)
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .collect();
        let rec = |k: &str, v: &[u8]| (format!("SCHILY.xattr.{k}"), v.to_vec());
        let want = vec![
            ("a".to_owned(), vec![rec("user.strata.dir", b"d")]),
            (
                "a/file".to_owned(),
                vec![rec("user.strata.a", &binary), rec("user.strata.z", b"last")],
            ),
            ("a/hard1".to_owned(), vec![rec("user.strata.hard", b"h")]),
            ("a/link".to_owned(), vec![rec("trusted.strata.link", b"l")]),
            ("fifo".to_owned(), vec![rec("trusted.strata.fifo", b"f")]),
        ];
        // Not b/hard2 (a link to a/hard1), not a/exec (only a host label), not
        // opq/ or opq/inner (only overlayfs's own).
        assert_eq!(got, want);
    }

    #[test]
    fn xattrs_pax_cannot_carry_are_refused() {
        if !testkit::require_root("xattrs_pax_cannot_carry_are_refused") {
            return;
        }
        for (case, name, value) in [
            ("equals", &b"user.a=b"[..], &b"v"[..]),
            ("newline-in-name", b"user.a\nb", b"v"),
            ("not-utf8", b"user.\xff", b"v"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let f = tmp.path().join("f");
            fs::write(&f, "x").unwrap();
            set(&f, std::ffi::OsStr::from_bytes(name), value);
            let exclude = HashSet::new();
            let spec = PackSpec {
                dir: tmp.path(),
                overlay_upper: false,
                exclude: &exclude,
            };
            let err = pack(&spec, Vec::new()).unwrap_err();
            match &err {
                Error::Io { path, source, .. } => {
                    assert_eq!(path, &f, "{case}");
                    assert_eq!(source.kind(), io::ErrorKind::InvalidData, "{case}: {err:?}");
                    assert!(source.to_string().contains("user."), "{case}: {source}");
                }
                _ => panic!("{case}: {err:?}"),
            }
        }
    }

    #[test]
    fn xattr_values_with_newlines_pack_and_read_back() {
        if !testkit::require_root("xattr_values_with_newlines_pack_and_read_back") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, "x").unwrap();
        let value = b"\x01\n\x00=\n8 path=x\n".to_vec();
        set(&f, "user.nl", &value);
        set(&f, "user.plain", b"p");
        let exclude = HashSet::new();
        let spec = PackSpec {
            dir: tmp.path(),
            overlay_upper: false,
            exclude: &exclude,
        };
        let mut out = Vec::new();
        pack(&spec, &mut out).unwrap();
        let mut r = crate::image::tar_reader::TarReader::new(&out[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.path, b"f");
        assert_eq!(
            e.xattrs,
            vec![
                (b"user.nl".to_vec(), value),
                (b"user.plain".to_vec(), b"p".to_vec())
            ]
        );
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn read_sized_grows_on_erange_and_refuses_more_than_64k() {
        use std::cell::Cell;
        // The value grows from 10 to 20 bytes between the size query and the read.
        let size = Cell::new(10);
        let reads = Cell::new(0);
        let v = read_sized(
            "v",
            || Ok(size.get()),
            |buf| {
                reads.set(reads.get() + 1);
                if reads.get() == 1 {
                    size.set(20);
                }
                if buf.len() < size.get() {
                    return Err(Errno::RANGE);
                }
                buf[..size.get()].fill(7);
                Ok(size.get())
            },
        )
        .unwrap();
        assert_eq!(v, vec![7; 20]);
        assert_eq!(reads.get(), 2);

        // Exactly the limit is fine; one byte more, or the kernel's E2BIG, is not.
        let fill = |buf: &mut [u8]| Ok(buf.len());
        assert_eq!(
            read_sized("v", || Ok(XATTR_MAX), fill).unwrap().len(),
            XATTR_MAX
        );
        let err =
            read_sized("the value of xattr user.big", || Ok(XATTR_MAX + 1), fill).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            "the value of xattr user.big is 65537 bytes, over Linux's 64 KiB limit"
        );
        let err = read_sized("v", || Ok(8), |_| Err(Errno::TOOBIG)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A value that keeps growing ends at the limit instead of looping.
        let n = Cell::new(1);
        let err = read_sized(
            "v",
            || Ok(n.get()),
            |_| {
                n.set(n.get() * 2);
                Err(Errno::RANGE)
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Other errors pass through as they are.
        let err = read_sized("v", || Err(Errno::ACCESS), fill).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::ACCESS.raw_os_error()));
        assert!(read_sized("v", || Ok(0), fill).unwrap().is_empty());
    }
}

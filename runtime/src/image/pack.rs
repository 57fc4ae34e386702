//! Packing a directory tree into a layer tar: a host directory for a built image,
//! or an overlay upper dir for a commit.
//!
//! Entries come in sorted order with their own mode, owner and mtime, so the same
//! tree gives the same digest. For an upper dir, overlayfs whiteouts (char device
//! 0/0) go back to OCI `.wh.NAME` entries and opaque dirs get a `.wh..wh..opq`
//! entry (image-spec layer.md "Whiteouts"). Symlinks are stored, never followed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
            b.append_data(&mut h, &rel, f).map_err(io("writing file"))?;
        } else {
            // Devices, fifos and sockets: header only (set_metadata filled the type
            // and device numbers; sockets cannot live in a tar and are skipped).
            if ft.is_socket() {
                continue;
            }
            h.set_size(0);
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

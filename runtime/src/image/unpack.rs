//! Unpacking one layer tar into a directory that it can never write outside of.
//!
//! Entry paths that are absolute or hold `..` are refused; every parent directory is resolved with
//! openat2(RESOLVE_IN_ROOT) from the layer dir, and the final name is created with
//! *at(2) calls that do not follow it. A symlink in the layer, whatever it points
//! to, therefore redirects at most inside the layer. Hard links must name a path
//! inside the layer. OCI whiteouts become overlayfs whiteouts (`.wh.NAME` → char
//! device 0/0 NAME, `.wh..wh..opq` → xattr trusted.overlay.opaque=y on the dir) and
//! `trusted.overlay.*` xattrs carried by the tar are dropped, so a layer cannot forge
//! overlay metadata.
//!
//! The tar is read with our own [`TarReader`], which frames PAX records by their
//! length, so xattr values holding newlines come through intact.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::error::{Error, Result};
use crate::image::tar_reader::{Kind, TarReader};
use crate::resolve;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Unpacks the tar stream `tar` into the existing, empty directory `dest`.
pub fn unpack(tar: impl Read, dest: &Path) -> Result<()> {
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening layer dir", dest)(e.into()))?;
    // Once a directory in this layer has a default ACL, entries created beneath it
    // inherit ACLs the tar never gave them; those are stripped again below.
    let mut layer_has_default_acl = false;
    let mut tar = TarReader::new(tar);
    // At the end marker the reader has consumed the stream to EOF.
    while let Some(entry) = tar
        .next_entry()
        .map_err(Error::io("reading layer tar", dest))?
    {
        // Raw bytes, not UTF-8; a trailing '/' is dropped by clean_relative.
        let raw = Path::new(OsStr::from_bytes(&entry.path));
        let shown = raw.display().to_string();
        let unsafe_entry = |reason: &'static str| Error::UnsafeLayerEntry {
            path: shown.clone(),
            reason,
        };
        if raw.is_absolute() {
            return Err(unsafe_entry("absolute path"));
        }
        let rel = resolve::clean_relative(raw).map_err(unsafe_entry)?;
        if rel.as_os_str().is_empty() {
            continue; // "./": the layer root itself
        }
        let (parent, name) = resolve::parent_in_root(&root, &rel, Mode::from(0o755))
            .map_err(Error::io("resolving parent of", dest.join(&rel)))?;
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let dir = rustix::fs::openat(
                &parent,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io("opening opaque dir", dest.join(&rel))(e.into()))?;
            rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
                .map_err(|e| Error::io("marking dir opaque", dest.join(&rel))(e.into()))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let hidden = OsStr::from_bytes(hidden);
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_entry("whiteout of an invalid name"));
            }
            remove_existing(&parent, hidden, dest)?;
            rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| Error::io("creating whiteout", dest.join(&rel))(e.into()))?;
            continue;
        }

        let mode = Mode::from_bits_truncate(entry.mode & 0o7777);
        let kind = entry.kind;
        let path_err = |action: &'static str| Error::io(action, dest.join(&rel));
        match kind {
            Kind::Directory => match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode).is_dir() => {}
                _ => {
                    remove_existing(&parent, name, dest)?;
                    rustix::fs::mkdirat(&parent, name, mode)
                        .map_err(|e| path_err("creating dir")(e.into()))?;
                }
            },
            Kind::Regular => {
                remove_existing(&parent, name, dest)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    mode,
                )
                .map_err(|e| path_err("creating file")(e.into()))?;
                let mut f = File::from(fd);
                io::copy(&mut tar, &mut f).map_err(path_err("writing file"))?;
            }
            Kind::Symlink => {
                if entry.link.is_empty() {
                    return Err(unsafe_entry("symlink without a target"));
                }
                let target = OsStr::from_bytes(&entry.link);
                remove_existing(&parent, name, dest)?;
                // The target is stored as is: it is only ever followed inside the
                // container's root, or by us with RESOLVE_IN_ROOT.
                rustix::fs::symlinkat(target, &parent, name)
                    .map_err(|e| path_err("creating symlink")(e.into()))?;
            }
            Kind::HardLink => {
                if entry.link.is_empty() {
                    return Err(unsafe_entry("hard link without a target"));
                }
                let target = Path::new(OsStr::from_bytes(&entry.link));
                if target.is_absolute() {
                    return Err(unsafe_entry("hard link target is absolute"));
                }
                let trel = resolve::clean_relative(target)
                    .map_err(|_| unsafe_entry("hard link target leaves the layer"))?;
                let tname = trel
                    .file_name()
                    .ok_or_else(|| unsafe_entry("hard link to the layer root"))?;
                let tparent = resolve::open_in_root(
                    &root,
                    trel.parent().unwrap_or(Path::new("")),
                    OFlags::PATH | OFlags::DIRECTORY,
                )
                .map_err(path_err("resolving hard link target"))?;
                remove_existing(&parent, name, dest)?;
                rustix::fs::linkat(&tparent, tname, &parent, name, AtFlags::empty())
                    .map_err(|e| path_err("creating hard link")(e.into()))?;
                continue; // shares the target's inode: metadata is the target's
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                let ft = match kind {
                    Kind::CharDevice => FileType::CharacterDevice,
                    Kind::BlockDevice => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let (major, minor) = (entry.dev_major, entry.dev_minor);
                remove_existing(&parent, name, dest)?;
                rustix::fs::mknodat(&parent, name, ft, mode, rustix::fs::makedev(major, minor))
                    .map_err(|e| path_err("creating device node")(e.into()))?;
            }
            // PAX and GNU metadata entries never get here: the reader applies them.
            Kind::Other(_) => return Err(unsafe_entry("unsupported entry type")),
        }

        let id = |v: u64| u32::try_from(v).map_err(|_| unsafe_entry("owner id over 32 bits"));
        let (uid, gid) = (id(entry.uid)?, id(entry.gid)?);
        rustix::fs::chownat(
            &parent,
            name,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| path_err("setting owner")(e.into()))?;
        if kind != Kind::Symlink {
            // After chown, which clears set-id bits.
            rustix::fs::chmodat(&parent, name, mode, AtFlags::empty())
                .map_err(|e| path_err("setting mode")(e.into()))?;
        }
        let mut carried_acls = (false, false); // (access, default)
        for (xname, value) in &entry.xattrs {
            let xname = xname.as_slice();
            if xname.starts_with(b"trusted.overlay.") {
                tracing::debug!(path = %shown, "dropping overlay xattr from layer");
                continue;
            }
            match xname {
                ACL_ACCESS => carried_acls.0 = true,
                ACL_DEFAULT => {
                    carried_acls.1 = true;
                    layer_has_default_acl = true;
                }
                _ => {}
            }
            let p = fd_path(&parent, name);
            rustix::fs::lsetxattr(
                &p,
                OsStr::from_bytes(xname),
                value,
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| path_err("setting xattr")(e.into()))?;
        }
        if layer_has_default_acl && kind != Kind::Symlink {
            let p = fd_path(&parent, name);
            for (carried, acl) in [(carried_acls.0, ACL_ACCESS), (carried_acls.1, ACL_DEFAULT)] {
                if carried {
                    continue;
                }
                match rustix::fs::lremovexattr(&p, OsStr::from_bytes(acl)) {
                    // Nothing inherited (ENODATA; a file never has a default
                    // ACL), or a filesystem without ACLs (ENOTSUP).
                    Ok(()) | Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => {}
                    Err(e) => return Err(path_err("removing inherited ACL")(e.into())),
                }
            }
        }
        let ts = Timespec {
            tv_sec: entry.mtime,
            tv_nsec: 0,
        };
        let _ = rustix::fs::utimensat(
            &parent,
            name,
            &Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        );
    }
    Ok(())
}

/// `/proc/self/fd/N/name` for the l*xattr calls, which have no *at form; the fd was
/// resolved in the root and the final name is not followed.
fn fd_path(parent: &OwnedFd, name: &OsStr) -> std::path::PathBuf {
    Path::new(&format!("/proc/self/fd/{}", parent.as_fd().as_raw_fd())).join(name)
}

/// A later layer entry replaces an earlier one of the same name (tar semantics).
fn remove_existing(parent: &OwnedFd, name: &OsStr, dest: &Path) -> Result<()> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::io("inspecting", dest.join(name))(e.into())),
        Ok(st) if FileType::from_raw_mode(st.st_mode).is_dir() => {
            let p = fd_path(parent, name);
            std::fs::remove_dir_all(&p).map_err(Error::io("replacing dir", dest.join(name)))
        }
        Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
            .map_err(|e| Error::io("replacing", dest.join(name))(e.into())),
    }
}

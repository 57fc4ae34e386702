//! Pools and the backends that hold volume and snapshot images.
//!
//! A backend owns one directory (the pool) and knows how to create, copy, grow and remove
//! the objects that hold volumes and snapshots in it. Objects come in two layouts: a file
//! the node attaches as a loop device and formats (`image`), or a directory tree the node
//! bind-mounts as it is (`dir`: a directory with a project quota; `btrfs`: a subvolume with
//! a qgroup limit). The driver reaches pools only through this trait and branches on
//! `Backend::layout` where the node side differs.

pub mod btrfs;
pub mod dir;
pub mod image;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::OFlag;

use crate::error::{Error, Result};
use crate::sys;
use crate::sys::fs::Space;

/// Which directory of the pool an image lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Volume,
    Snapshot,
}

/// An object (image file, directory or subvolume) in a pool: its kind and its name beneath
/// the kind's directory (always `[a-z0-9.]`, see `ids`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRef<'a> {
    pub kind: ImageKind,
    pub file: &'a str,
}

impl<'a> ImageRef<'a> {
    pub fn volume(file: &'a str) -> Self {
        ImageRef {
            kind: ImageKind::Volume,
            file,
        }
    }
    pub fn snapshot(file: &'a str) -> Self {
        ImageRef {
            kind: ImageKind::Snapshot,
            file,
        }
    }
}

/// How an image was filled from its source.
pub use crate::sys::reflink::CopyKind;

/// What a volume object is on disk, which decides how the node stages it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A file holding a block device's bytes: loop device, mkfs, mount.
    Image,
    /// A directory tree on the pool's own filesystem: bind mount; no Block access.
    Tree,
}

/// A content source: an object of some pool (possibly another one than the target's).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub pool: &'a dyn Backend,
    pub obj: ImageRef<'a>,
}

/// A tree object's usage and limits, for NodeGetVolumeStats (0 = unknown or unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes_used: u64,
    pub bytes_limit: u64,
    pub inodes_used: u64,
    pub inodes_limit: u64,
}

pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The pool's name (`--pool NAME=...`).
    fn pool(&self) -> &str;
    /// `image`, `dir`, `btrfs`.
    fn kind(&self) -> &'static str;
    fn layout(&self) -> Layout {
        Layout::Image
    }
    /// The filesystem a Tree volume presents (`btrfs`, `xfs`, `ext4`); None for images,
    /// whose filesystem is chosen per volume.
    fn fs_type(&self) -> Option<&str> {
        None
    }
    /// Why every volume of this pool is abnormal (e.g. a size limit not enforced); None
    /// when healthy.
    fn pool_condition(&self) -> Option<String> {
        None
    }
    /// Whether `src` can fill a new object of this pool; Err(reason) otherwise.
    fn accepts_source(&self, src: &dyn Backend) -> std::result::Result<(), String> {
        match src.layout() {
            Layout::Image => Ok(()),
            Layout::Tree => Err(format!(
                "pool {} ({}) holds directory trees, pool {} ({}) holds images",
                src.pool(),
                src.kind(),
                self.pool(),
                self.kind()
            )),
        }
    }
    /// Bytes a copy of `obj` needs in its pool (snapshot space check).
    fn copy_cost(&self, obj: ImageRef<'_>) -> Result<u64>;
    fn root(&self) -> &Path;
    /// Proves the pool directory is still there and usable (Probe, GetCapacity).
    fn check(&self) -> Result<()>;
    fn space(&self) -> Result<Space>;
    /// Creates `img` with `size` bytes, empty or as a copy of `from` (which may live in
    /// another pool when `accepts_source` allows it; then grown to `size`). A snapshot
    /// (`img.kind == Snapshot`) is a read-only point-in-time copy where the backend can
    /// make one. Fails if `img` exists.
    fn create(
        &self,
        img: ImageRef<'_>,
        size: u64,
        from: Option<Source<'_>>,
    ) -> Result<Option<CopyKind>>;
    /// Removes `img`; false when it was already gone.
    fn remove(&self, img: ImageRef<'_>) -> Result<bool>;
    /// Size in bytes (an image's length, a tree's enforced limit, 0 for a tree without
    /// one), None when missing.
    fn size(&self, img: ImageRef<'_>) -> Result<Option<u64>>;
    /// Grows `img` to `size` bytes (never shrinks); online for trees (a raised limit).
    fn grow(&self, img: ImageRef<'_>, size: u64) -> Result<()>;
    /// Opens `img`: read-write for an image (to attach it), the directory for a tree.
    fn open(&self, img: ImageRef<'_>) -> Result<File>;
    /// The absolute path of `img`: as sysfs shows it for an attached loop device, or the
    /// directory a tree volume's staging bind-mounts.
    fn path(&self, img: ImageRef<'_>) -> PathBuf;
    /// Every object present, for reconciliation.
    fn list(&self, kind: ImageKind) -> Result<Vec<String>>;
    /// Usage of a tree object from the pool's accounting (quota, qgroup); None for images.
    fn usage(&self, _img: ImageRef<'_>) -> Result<Option<Usage>> {
        Ok(None)
    }
}

const VOLUMES: &str = "volumes";
const SNAPSHOTS: &str = "snapshots";

/// What every backend keeps: its name, its resolved root and the open `volumes/` and
/// `snapshots/` directories that objects are resolved beneath (never through a symlink).
#[derive(Debug)]
pub(crate) struct PoolDirs {
    pub name: String,
    pub root: PathBuf,
    pub volumes: File,
    pub snapshots: File,
}

impl PoolDirs {
    /// Resolves `root` and opens it (a directory, not a symlink); changes nothing.
    pub fn resolve(root: &Path) -> Result<(PathBuf, File)> {
        let root = root
            .canonicalize()
            .map_err(Error::io("resolving pool", root))?;
        let dir = sys::fs::open_dir(&root).map_err(Error::io("opening pool", &root))?;
        Ok((root, dir))
    }

    /// Creates (when missing) and opens `volumes/` and `snapshots/` in the pool `dir`.
    pub fn open(name: &str, root: PathBuf, dir: &File) -> Result<PoolDirs> {
        let volumes = sys::fs::ensure_subdir(dir, VOLUMES)
            .map_err(Error::io("opening", root.join(VOLUMES)))?;
        let snapshots = sys::fs::ensure_subdir(dir, SNAPSHOTS)
            .map_err(Error::io("opening", root.join(SNAPSHOTS)))?;
        Ok(PoolDirs {
            name: name.to_string(),
            root,
            volumes,
            snapshots,
        })
    }

    pub fn dir(&self, kind: ImageKind) -> (&File, &'static str) {
        match kind {
            ImageKind::Volume => (&self.volumes, VOLUMES),
            ImageKind::Snapshot => (&self.snapshots, SNAPSHOTS),
        }
    }

    pub fn path(&self, img: ImageRef<'_>) -> PathBuf {
        let (_, sub) = self.dir(img.kind);
        self.root.join(sub).join(img.file)
    }

    pub fn list(&self, kind: ImageKind) -> Result<Vec<String>> {
        let (_, sub) = self.dir(kind);
        let dir = self.root.join(sub);
        sys::fs::list_names(&dir).map_err(Error::io("listing", dir))
    }

    pub fn space(&self) -> Result<Space> {
        sys::fs::space(&self.volumes).map_err(Error::io("statvfs", &self.root))
    }

    /// The pool directory is still there and usable (Probe, GetCapacity).
    pub fn check(&self) -> Result<()> {
        // The directory fds stay valid even if the pool was removed, so stat the path too.
        let meta = std::fs::symlink_metadata(self.root.join(VOLUMES))
            .map_err(Error::io("checking pool", self.root.join(VOLUMES)))?;
        if !meta.is_dir() {
            return Err(Error::NotReady(format!(
                "pool {} volumes/ is not a directory",
                self.name
            )));
        }
        self.space().map(|_| ())
    }

    /// Opens the directory (or subvolume) object `img`; None when missing.
    pub fn open_tree(&self, img: ImageRef<'_>) -> Result<Option<File>> {
        let name = checked_name(img)?;
        let (dir, _) = self.dir(img.kind);
        match sys::fs::open_beneath(dir, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                op: "opening directory",
                path: self.path(img),
                source: e,
            }),
        }
    }

    /// Opens the directory object `img`, which must exist.
    pub fn must_open_tree(&self, img: ImageRef<'_>) -> Result<File> {
        self.open_tree(img)?.ok_or_else(|| Error::Io {
            op: "opening directory",
            path: self.path(img),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }
}

/// The object's name, checked: ids produce `[a-z0-9.]` names; anything else is a bug or a
/// tampered record.
pub(crate) fn checked_name(img: ImageRef<'_>) -> Result<&str> {
    let ok = !img.file.is_empty()
        && !img.file.starts_with('.')
        && img
            .file
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.');
    if !ok {
        return Err(Error::StateCorrupt(format!(
            "bad object name {:?}",
            img.file
        )));
    }
    Ok(img.file)
}

/// The configured pools, in command-line order (the first is the default).
#[derive(Debug, Clone)]
pub struct Pools {
    list: Vec<Arc<dyn Backend>>,
}

impl Pools {
    pub fn new(list: Vec<Arc<dyn Backend>>) -> Self {
        Pools { list }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.list.iter().find(|p| p.pool() == name)
    }

    pub fn default_pool(&self) -> &Arc<dyn Backend> {
        &self.list[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.list.iter()
    }
}

//! Pools and the backends that hold the data of volumes and snapshots.
//!
//! A backend owns one directory (the pool) and knows how to create, copy, grow and remove
//! the data objects of volumes and snapshots in it. Objects come in two layouts: a file
//! the node attaches as a loop device and formats (`image`), or a directory tree the node
//! bind-mounts as it is (`dir`: a directory with a project quota; `btrfs`: a subvolume with
//! a qgroup limit). The driver reaches pools only through this trait and branches on
//! `Backend::layout` where the node side differs; `Backend::access` carries the
//! operations only one layout has.

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

/// Which directory of the pool a data object lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    Volume,
    Snapshot,
}

/// The data object of a volume or snapshot (an image file, a directory or a subvolume,
/// as the pool's layout says): its kind and its name beneath the kind's directory (always
/// `[a-z0-9.]`, see `ids`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRef<'a> {
    pub kind: DataKind,
    pub name: &'a str,
}

impl<'a> DataRef<'a> {
    pub fn volume(name: &'a str) -> Self {
        DataRef {
            kind: DataKind::Volume,
            name,
        }
    }
    pub fn snapshot(name: &'a str) -> Self {
        DataRef {
            kind: DataKind::Snapshot,
            name,
        }
    }
}

/// How an object was filled from its source.
pub use crate::sys::reflink::CopyKind;

/// What a pool's objects are on disk, which decides how the node stages them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A file holding a block device's bytes: loop device, mkfs, mount.
    Image,
    /// A directory tree on the pool's own filesystem: bind mount; no Block access.
    Tree,
}

/// A pool's layout together with what only that layout can do. Operations that make sense
/// for one layout only (attaching an image, a tree's quota usage) are reached through it,
/// so no backend has to answer for an operation its objects do not have.
#[derive(Clone, Copy)]
pub enum Access<'a> {
    Image(&'a dyn ImageObjects),
    Tree(&'a dyn TreeObjects),
}

/// What an image pool does beyond every backend: hand out the file behind a loop device.
pub trait ImageObjects {
    /// Opens the image file of `obj` read-write (to attach it, or to copy from it).
    fn open_image(&self, obj: DataRef<'_>) -> Result<File>;
}

/// What a tree pool does beyond every backend.
pub trait TreeObjects {
    /// The filesystem the trees present (`btrfs`, `xfs`, `ext4`, ...).
    fn fs_type(&self) -> &str;
    /// Opens the directory of `obj`, which must exist.
    fn open_tree(&self, obj: DataRef<'_>) -> Result<File>;
    /// Usage and limits of `obj` from the pool's accounting (project quota, qgroup).
    fn usage(&self, obj: DataRef<'_>) -> Result<Usage>;
}

/// A content source: an object of some pool (possibly another one than the target's).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub pool: &'a dyn Backend,
    pub obj: DataRef<'a>,
}

/// A tree object's usage and limits, for NodeGetVolumeStats (0 = unknown or unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes_used: u64,
    pub bytes_limit: u64,
    pub inodes_used: u64,
    pub inodes_limit: u64,
}

/// A pool: one directory holding the data objects of volumes (`volumes/`) and snapshots
/// (`snapshots/`). Every method here means the same for every layout; what only one
/// layout has is behind [`Backend::access`].
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The pool's name (`--pool NAME=...`).
    fn pool(&self) -> &str;
    /// `image`, `dir`, `btrfs`.
    fn kind(&self) -> &'static str;
    /// The pool's layout, with the operations only that layout has.
    fn access(&self) -> Access<'_>;
    fn layout(&self) -> Layout {
        match self.access() {
            Access::Image(_) => Layout::Image,
            Access::Tree(_) => Layout::Tree,
        }
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
    /// Bytes a snapshot of `obj` takes in its pool (the snapshot space check): an image's
    /// allocated bytes, a tree's used bytes, 0 where snapshots share every extent.
    fn snapshot_space(&self, obj: DataRef<'_>) -> Result<u64>;
    fn root(&self) -> &Path;
    /// Proves the pool directory is still there and usable (Probe, GetCapacity).
    fn check(&self) -> Result<()>;
    fn space(&self) -> Result<Space>;
    /// Creates `obj` with `size` bytes, empty or as a copy of `from` (which may live in
    /// another pool when `accepts_source` allows it; then grown to `size`). A snapshot
    /// (`obj.kind == Snapshot`) is a read-only point-in-time copy where the backend can
    /// make one. Fails if `obj` exists.
    fn create(
        &self,
        obj: DataRef<'_>,
        size: u64,
        from: Option<Source<'_>>,
    ) -> Result<Option<CopyKind>>;
    /// Removes `obj`; false when it was already gone.
    fn remove(&self, obj: DataRef<'_>) -> Result<bool>;
    /// Size in bytes (an image's length, a tree's enforced limit, 0 for a tree without
    /// one), None when missing.
    fn size(&self, obj: DataRef<'_>) -> Result<Option<u64>>;
    /// Grows `obj` to `size` bytes (never shrinks); online for trees (a raised limit).
    fn grow(&self, obj: DataRef<'_>, size: u64) -> Result<()>;
    /// The absolute path of `obj`: as sysfs shows it for an attached loop device, or the
    /// directory a tree volume's staging bind-mounts.
    fn path(&self, obj: DataRef<'_>) -> PathBuf;
    /// Every object present, for reconciliation.
    fn list(&self, kind: DataKind) -> Result<Vec<String>>;
    /// Whether `size` reads a size the pool keeps per object (an image's length, an
    /// enforced limit). False where every tree is 0 (a `dir` pool with enforce=false):
    /// reconciliation then has nothing to read per volume beyond the pool's listing.
    fn keeps_sizes(&self) -> bool {
        true
    }
}

impl dyn Backend + '_ {
    /// The image operations, or an error naming the pool when it holds trees.
    pub fn images(&self) -> Result<&dyn ImageObjects> {
        match self.access() {
            Access::Image(i) => Ok(i),
            Access::Tree(_) => Err(Error::CapabilityUnsupported(format!(
                "pool {} ({}) holds directory trees, not images",
                self.pool(),
                self.kind()
            ))),
        }
    }

    /// The tree operations, or an error naming the pool when it holds images.
    pub fn trees(&self) -> Result<&dyn TreeObjects> {
        match self.access() {
            Access::Tree(t) => Ok(t),
            Access::Image(_) => Err(Error::CapabilityUnsupported(format!(
                "pool {} ({}) holds images, not directory trees",
                self.pool(),
                self.kind()
            ))),
        }
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

    pub fn dir(&self, kind: DataKind) -> (&File, &'static str) {
        match kind {
            DataKind::Volume => (&self.volumes, VOLUMES),
            DataKind::Snapshot => (&self.snapshots, SNAPSHOTS),
        }
    }

    pub fn path(&self, obj: DataRef<'_>) -> PathBuf {
        let (_, sub) = self.dir(obj.kind);
        self.root.join(sub).join(obj.name)
    }

    pub fn list(&self, kind: DataKind) -> Result<Vec<String>> {
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

    /// Opens the directory (or subvolume) object `obj`; None when missing.
    pub fn open_tree(&self, obj: DataRef<'_>) -> Result<Option<File>> {
        let name = checked_name(obj)?;
        let (dir, _) = self.dir(obj.kind);
        match sys::fs::open_beneath(dir, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                op: "opening directory",
                path: self.path(obj),
                source: e,
            }),
        }
    }

    /// Opens the directory object `obj`, which must exist.
    pub fn must_open_tree(&self, obj: DataRef<'_>) -> Result<File> {
        self.open_tree(obj)?.ok_or_else(|| Error::Io {
            op: "opening directory",
            path: self.path(obj),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }
}

/// The object's name, checked: ids produce `[a-z0-9.]` names; anything else is a bug or a
/// tampered record.
pub(crate) fn checked_name(obj: DataRef<'_>) -> Result<&str> {
    let ok = !obj.name.is_empty()
        && !obj.name.starts_with('.')
        && obj
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.');
    if !ok {
        return Err(Error::StateCorrupt(format!(
            "bad object name {:?}",
            obj.name
        )));
    }
    Ok(obj.name)
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

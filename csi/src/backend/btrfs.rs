//! The `btrfs` backend: `<pool>/volumes/<v…>` and `<pool>/snapshots/<s…>` are subvolumes of
//! the btrfs filesystem the pool directory lies on. A volume's size is its qgroup's
//! referenced-bytes limit (writes past it fail with EDQUOT), a snapshot is a native
//! read-only snapshot, clones and restores are writable snapshots of their source, and
//! usage comes from qgroup accounting. The node bind-mounts a volume's subvolume.
//!
//! Objects keep the `ids` file names (`v….img`) so that every backend names its objects
//! alike; here they are subvolume directories.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::{Backend, CopyKind, ImageKind, ImageRef, Layout, Source, Usage};
use crate::error::{Error, Result};
use crate::sys;
use crate::sys::fs::Space;

#[derive(Debug)]
pub struct BtrfsPool {
    name: String,
    root: PathBuf,
    volumes: File,
    snapshots: File,
    fsid: String,
}

const VOLUMES: &str = "volumes";
const SNAPSHOTS: &str = "snapshots";

impl BtrfsPool {
    /// Opens pool `name` at `root`, which must be a directory on btrfs. Turns qgroup
    /// accounting on when it is off (it is what enforces sizes); creates `volumes/` and
    /// `snapshots/`. Nothing is changed when `root` is not on btrfs.
    pub fn open(name: &str, root: &Path) -> Result<BtrfsPool> {
        let root = root
            .canonicalize()
            .map_err(Error::io("resolving pool", root))?;
        let dir = sys::fs::open_dir(&root).map_err(Error::io("opening pool", &root))?;
        if !sys::btrfs::is_btrfs(&dir).map_err(Error::io("statfs", &root))? {
            return Err(Error::invalid(
                "pool",
                format!(
                    "pool {name}: {} is not on a btrfs filesystem (a btrfs pool needs subvolumes and qgroups)",
                    root.display()
                ),
            ));
        }
        let fsid = sys::btrfs::fsid(&dir).map_err(Error::io("reading btrfs fsid of", &root))?;
        if !sys::btrfs::qgroups_dir(&fsid).exists() {
            tracing::info!(pool = name, path = %root.display(), "enabling btrfs quotas (qgroups) on the pool filesystem");
            sys::btrfs::enable_quota(&dir).map_err(Error::io("enabling btrfs quotas on", &root))?;
        }
        let volumes = sys::fs::ensure_subdir(&dir, VOLUMES)
            .map_err(Error::io("opening", root.join(VOLUMES)))?;
        let snapshots = sys::fs::ensure_subdir(&dir, SNAPSHOTS)
            .map_err(Error::io("opening", root.join(SNAPSHOTS)))?;
        Ok(BtrfsPool {
            name: name.to_string(),
            root,
            volumes,
            snapshots,
            fsid,
        })
    }

    fn dir(&self, kind: ImageKind) -> (&File, &'static str) {
        match kind {
            ImageKind::Volume => (&self.volumes, VOLUMES),
            ImageKind::Snapshot => (&self.snapshots, SNAPSHOTS),
        }
    }

    /// Opens the subvolume `img`; None when missing.
    fn open_subvol(&self, img: ImageRef<'_>) -> Result<Option<File>> {
        let name = super::checked_name(img)?;
        let (dir, _) = self.dir(img.kind);
        match sys::fs::open_beneath(dir, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                op: "opening subvolume",
                path: self.path(img),
                source: e,
            }),
        }
    }

    fn must_open(&self, img: ImageRef<'_>) -> Result<File> {
        self.open_subvol(img)?.ok_or_else(|| Error::Io {
            op: "opening subvolume",
            path: self.path(img),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    fn qgroup(&self, sub: &File, img: ImageRef<'_>) -> Result<sys::btrfs::Qgroup> {
        let id =
            sys::btrfs::subvolume_id(sub).map_err(Error::io("subvolume id of", self.path(img)))?;
        sys::btrfs::qgroup(&self.fsid, id)
            .map_err(Error::io("reading qgroup of", self.path(img)))?
            .ok_or_else(|| {
                Error::NotReady(format!(
                    "subvolume {} has no qgroup 0/{id}; are quotas on?",
                    self.path(img).display()
                ))
            })
    }
}

impl Backend for BtrfsPool {
    fn pool(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "btrfs"
    }

    fn layout(&self) -> Layout {
        Layout::Tree
    }

    fn fs_type(&self) -> Option<&str> {
        Some("btrfs")
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn accepts_source(&self, src: &dyn Backend) -> std::result::Result<(), String> {
        if src.kind() == "btrfs" && src.pool() == self.pool() {
            return Ok(());
        }
        Err(format!(
            "pool {} (btrfs) makes clones and restores as snapshots of its own subvolumes; the source is in pool {} ({})",
            self.pool(),
            src.pool(),
            src.kind()
        ))
    }

    fn check(&self) -> Result<()> {
        let meta = std::fs::symlink_metadata(self.root.join(VOLUMES))
            .map_err(Error::io("checking pool", self.root.join(VOLUMES)))?;
        if !meta.is_dir() {
            return Err(Error::NotReady(format!(
                "pool {} volumes/ is not a directory",
                self.name
            )));
        }
        if !sys::btrfs::qgroups_dir(&self.fsid).exists() {
            return Err(Error::NotReady(format!(
                "pool {}: btrfs quotas were turned off on {}; sizes are not enforced",
                self.name,
                self.root.display()
            )));
        }
        self.space().map(|_| ())
    }

    fn space(&self) -> Result<Space> {
        sys::fs::space(&self.volumes).map_err(Error::io("statvfs", &self.root))
    }

    fn copy_cost(&self, _img: ImageRef<'_>) -> Result<u64> {
        // A snapshot shares every extent with its source.
        Ok(0)
    }

    fn create(
        &self,
        img: ImageRef<'_>,
        size: u64,
        from: Option<Source<'_>>,
    ) -> Result<Option<CopyKind>> {
        let name = super::checked_name(img)?;
        let (dir, _) = self.dir(img.kind);
        let path = self.path(img);
        let kind = match from {
            None => {
                sys::btrfs::create_subvolume(dir, name)
                    .map_err(Error::io("creating subvolume", &path))?;
                None
            }
            Some(src) => {
                self.accepts_source(src.pool)
                    .map_err(|r| Error::invalid("volume_content_source", r))?;
                let source = self.must_open(src.obj)?;
                // Snapshots are read-only; volumes made from anything are writable.
                let read_only = img.kind == ImageKind::Snapshot;
                sys::btrfs::snapshot(&source, dir, name, read_only)
                    .map_err(Error::io("snapshotting into", &path))?;
                Some(CopyKind::Reflink)
            }
        };
        if img.kind == ImageKind::Volume {
            let limited = self.must_open(img).and_then(|sub| {
                sys::btrfs::set_limit(&sub, size)
                    .map_err(Error::io("setting qgroup limit of", &path))
            });
            if let Err(e) = limited {
                let _ = sys::btrfs::delete_subvolume(dir, name);
                return Err(e);
            }
        }
        Ok(kind)
    }

    fn remove(&self, img: ImageRef<'_>) -> Result<bool> {
        let name = super::checked_name(img)?;
        let (dir, _) = self.dir(img.kind);
        sys::btrfs::delete_subvolume(dir, name)
            .map_err(Error::io("deleting subvolume", self.path(img)))
    }

    fn size(&self, img: ImageRef<'_>) -> Result<Option<u64>> {
        let Some(sub) = self.open_subvol(img)? else {
            return Ok(None);
        };
        if img.kind == ImageKind::Snapshot {
            return Ok(Some(self.qgroup(&sub, img)?.referenced));
        }
        Ok(Some(self.qgroup(&sub, img)?.max_referenced))
    }

    fn grow(&self, img: ImageRef<'_>, size: u64) -> Result<()> {
        let sub = self.must_open(img)?;
        let have = self.qgroup(&sub, img)?.max_referenced;
        if have != 0 && size <= have {
            return Ok(());
        }
        sys::btrfs::set_limit(&sub, size)
            .map_err(Error::io("raising qgroup limit of", self.path(img)))
    }

    fn open(&self, img: ImageRef<'_>) -> Result<File> {
        self.must_open(img)
    }

    fn path(&self, img: ImageRef<'_>) -> PathBuf {
        let (_, sub) = self.dir(img.kind);
        self.root.join(sub).join(img.file)
    }

    fn list(&self, kind: ImageKind) -> Result<Vec<String>> {
        let (_, sub) = self.dir(kind);
        let dir = self.root.join(sub);
        sys::fs::list_names(&dir).map_err(Error::io("listing", dir))
    }

    fn usage(&self, img: ImageRef<'_>) -> Result<Option<Usage>> {
        let sub = self.must_open(img)?;
        let q = self.qgroup(&sub, img)?;
        Ok(Some(Usage {
            bytes_used: q.referenced,
            bytes_limit: q.max_referenced,
            inodes_used: 0,
            inodes_limit: 0,
        }))
    }
}

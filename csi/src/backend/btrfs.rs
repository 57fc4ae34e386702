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

use super::{Access, Backend, CopyKind, DataKind, DataRef, PoolDirs, Source, TreeObjects, Usage};
use crate::error::{Error, Result};
use crate::sys;
use crate::sys::fs::Space;

#[derive(Debug)]
pub struct BtrfsPool {
    dirs: PoolDirs,
    fsid: String,
}

impl BtrfsPool {
    /// Opens pool `name` at `root`, which must be a directory on btrfs. Turns qgroup
    /// accounting on when it is off (it is what enforces sizes); creates `volumes/` and
    /// `snapshots/`. Nothing is changed when `root` is not on btrfs.
    pub fn open(name: &str, root: &Path) -> Result<BtrfsPool> {
        let (root, dir) = PoolDirs::resolve(root)?;
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
        Ok(BtrfsPool {
            dirs: PoolDirs::open(name, root, &dir)?,
            fsid,
        })
    }

    fn qgroup(&self, sub: &File, obj: DataRef<'_>) -> Result<sys::btrfs::Qgroup> {
        let id =
            sys::btrfs::subvolume_id(sub).map_err(Error::io("subvolume id of", self.path(obj)))?;
        sys::btrfs::qgroup(&self.fsid, id)
            .map_err(Error::io("reading qgroup of", self.path(obj)))?
            .ok_or_else(|| {
                Error::NotReady(format!(
                    "subvolume {} has no qgroup 0/{id}; are quotas on?",
                    self.path(obj).display()
                ))
            })
    }
}

impl Backend for BtrfsPool {
    fn pool(&self) -> &str {
        &self.dirs.name
    }

    fn kind(&self) -> &'static str {
        "btrfs"
    }

    fn access(&self) -> Access<'_> {
        Access::Tree(self)
    }

    fn root(&self) -> &Path {
        &self.dirs.root
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
        self.dirs.check()?;
        if !sys::btrfs::qgroups_dir(&self.fsid).exists() {
            return Err(Error::NotReady(format!(
                "pool {}: btrfs quotas were turned off on {}; sizes are not enforced",
                self.dirs.name,
                self.dirs.root.display()
            )));
        }
        Ok(())
    }

    fn space(&self) -> Result<Space> {
        self.dirs.space()
    }

    fn snapshot_space(&self, _img: DataRef<'_>) -> Result<u64> {
        // A snapshot shares every extent with its source.
        Ok(0)
    }

    fn create(
        &self,
        obj: DataRef<'_>,
        size: u64,
        from: Option<Source<'_>>,
    ) -> Result<Option<CopyKind>> {
        let name = super::checked_name(obj)?;
        let (dir, _) = self.dirs.dir(obj.kind);
        let path = self.path(obj);
        let kind = match from {
            None => {
                sys::btrfs::create_subvolume(dir, name)
                    .map_err(Error::io("creating subvolume", &path))?;
                None
            }
            Some(src) => {
                self.accepts_source(src.pool)
                    .map_err(|r| Error::invalid("volume_content_source", r))?;
                let source = self.dirs.must_open_tree(src.obj)?;
                // Snapshots are read-only; volumes made from anything are writable.
                let read_only = obj.kind == DataKind::Snapshot;
                sys::btrfs::snapshot(&source, dir, name, read_only)
                    .map_err(Error::io("snapshotting into", &path))?;
                Some(CopyKind::Reflink)
            }
        };
        if obj.kind == DataKind::Volume {
            let limited = self.dirs.must_open_tree(obj).and_then(|sub| {
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

    fn remove(&self, obj: DataRef<'_>) -> Result<bool> {
        let name = super::checked_name(obj)?;
        let (dir, _) = self.dirs.dir(obj.kind);
        sys::btrfs::delete_subvolume(dir, name)
            .map_err(Error::io("deleting subvolume", self.path(obj)))
    }

    fn size(&self, obj: DataRef<'_>) -> Result<Option<u64>> {
        let Some(sub) = self.dirs.open_tree(obj)? else {
            return Ok(None);
        };
        if obj.kind == DataKind::Snapshot {
            return Ok(Some(self.qgroup(&sub, obj)?.referenced));
        }
        Ok(Some(self.qgroup(&sub, obj)?.max_referenced))
    }

    fn grow(&self, obj: DataRef<'_>, size: u64) -> Result<()> {
        let sub = self.dirs.must_open_tree(obj)?;
        let have = self.qgroup(&sub, obj)?.max_referenced;
        if have != 0 && size <= have {
            return Ok(());
        }
        sys::btrfs::set_limit(&sub, size)
            .map_err(Error::io("raising qgroup limit of", self.path(obj)))
    }

    fn path(&self, obj: DataRef<'_>) -> PathBuf {
        self.dirs.path(obj)
    }

    fn list(&self, kind: DataKind) -> Result<Vec<String>> {
        self.dirs.list(kind)
    }
}

impl TreeObjects for BtrfsPool {
    fn fs_type(&self) -> &str {
        "btrfs"
    }

    fn open_tree(&self, obj: DataRef<'_>) -> Result<File> {
        self.dirs.must_open_tree(obj)
    }

    fn usage(&self, obj: DataRef<'_>) -> Result<Usage> {
        let sub = self.dirs.must_open_tree(obj)?;
        let q = self.qgroup(&sub, obj)?;
        Ok(Usage {
            bytes_used: q.referenced,
            bytes_limit: q.max_referenced,
            inodes_used: 0,
            inodes_limit: 0,
        })
    }
}

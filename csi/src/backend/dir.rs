//! The `dir` backend: `<pool>/volumes/<v…>` is a plain directory in a project of its own
//! (project id plus the inherit flag), and the project's hard limit is the volume's size:
//! writes past it fail with EDQUOT. Growing raises the limit, online. Usage comes from
//! the project's accounting. Snapshots (`<pool>/snapshots/<s…>`), clones and restores
//! are copies of the tree, file by file with FICLONE where the filesystem shares extents
//! (xfs with reflink, btrfs), else sparse copies.
//!
//! Project quotas exist on xfs mounted with `prjquota` and on ext4 made with the
//! `project` feature and mounted with `prjquota`. A pool anywhere else refuses to open,
//! unless configured `enforce=false`: then sizes are only recorded, which the driver
//! logs loudly and reports as an abnormal condition of every volume.
//!
//! Project ids are taken from `PROJECT_BASE` up; the directories themselves say which id
//! each volume has, so nothing else needs to remember them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::{
    Access, Backend, CopyKind, DataKind, DataRef, Layout, PoolDirs, Source, TreeObjects, Usage,
};
use crate::error::{Error, Result};
use crate::sys;
use crate::sys::fs::Space;
use crate::sys::quota::Flavor;

/// First project id this driver hands out (ids below are left to the administrator).
pub const PROJECT_BASE: u32 = 1_000_000;
/// A copy reports its progress at info level every this many bytes.
const PROGRESS_EVERY: u64 = 1 << 30;

#[derive(Debug)]
pub struct DirPool {
    dirs: PoolDirs,
    /// The pool directory: quotactl_fd's handle on the filesystem.
    fs: File,
    fs_type: &'static str,
    /// None: sizes are not enforced (`enforce=false`).
    quota: Option<Flavor>,
    next_project: Mutex<u32>,
}

pub(crate) fn fs_name(dir: &File) -> std::io::Result<&'static str> {
    let t = nix::sys::statfs::fstatfs(dir)?.filesystem_type().0 as i64;
    Ok(match t {
        sys::quota::XFS_MAGIC => "xfs",
        sys::quota::EXT4_MAGIC => "ext4",
        sys::btrfs::SUPER_MAGIC => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794c_7630 => "overlay",
        _ => "dir",
    })
}

impl DirPool {
    /// Opens pool `name` at `root`. With `enforce`, the filesystem must have project
    /// quotas on, else the pool refuses to open and nothing is changed.
    pub fn open(name: &str, root: &Path, enforce: bool) -> Result<DirPool> {
        let (root, fs) = PoolDirs::resolve(root)?;
        let fs_type = fs_name(&fs).map_err(Error::io("statfs", &root))?;
        let quota = if enforce {
            let flavor = sys::quota::flavor(&fs)
                .map_err(Error::io("statfs", &root))?
                .ok_or_else(|| {
                    Error::invalid(
                        "pool",
                        format!(
                            "dir pool {name}: {} is on {fs_type}, which has no project quotas; put it on xfs \
                             mounted with prjquota or ext4 (-O project) mounted with prjquota, or configure \
                             the pool with enforce=false to run without size limits",
                            root.display()
                        ),
                    )
                })?;
            sys::quota::probe(&fs).map_err(|e| {
                Error::invalid(
                    "pool",
                    format!(
                        "dir pool {name}: project quotas are not on for {} ({fs_type}): {e}; mount it with \
                         prjquota (ext4 also needs the project feature, and a kernel with quota support), \
                         or configure the pool with enforce=false to run without size limits",
                        root.display()
                    ),
                )
            })?;
            Some(flavor)
        } else {
            tracing::warn!(
                pool = name,
                path = %root.display(),
                "!!! dir pool {name} runs with enforce=false: volume sizes are NOT enforced; \
                 any volume can fill the whole filesystem. Every volume reports an abnormal condition."
            );
            None
        };
        let pool = DirPool {
            dirs: PoolDirs::open(name, root, &fs)?,
            fs,
            fs_type,
            quota,
            next_project: Mutex::new(PROJECT_BASE),
        };
        if pool.quota.is_some() {
            let mut max = PROJECT_BASE - 1;
            for n in pool.list(DataKind::Volume)? {
                if let Some(d) = pool.dirs.open_tree(DataRef::volume(&n))? {
                    let id = sys::quota::project_id(&d).map_err(Error::io(
                        "reading project id of",
                        pool.path(DataRef::volume(&n)),
                    ))?;
                    max = max.max(id);
                }
            }
            *pool.next_project.lock().unwrap_or_else(|e| e.into_inner()) = max + 1;
        }
        Ok(pool)
    }

    /// The quota of volume `obj`, when sizes are enforced.
    fn quota_of(&self, d: &File, obj: DataRef<'_>) -> Result<Option<(u32, sys::quota::Quota)>> {
        let Some(flavor) = self.quota else {
            return Ok(None);
        };
        let id = sys::quota::project_id(d)
            .map_err(Error::io("reading project id of", self.path(obj)))?;
        let q = sys::quota::get(&self.fs, flavor, id)
            .map_err(Error::io("reading project quota of", self.path(obj)))?;
        Ok(Some((id, q)))
    }

    fn take_project(&self) -> u32 {
        let mut next = self.next_project.lock().unwrap_or_else(|e| e.into_inner());
        let id = *next;
        *next += 1;
        id
    }

    /// Fills the empty directory `dst` from `src`, logging progress of large copies.
    fn fill(&self, src: &File, dst: &File, obj: DataRef<'_>) -> Result<CopyKind> {
        let started = Instant::now();
        let mut next_log = PROGRESS_EVERY;
        let path = self.path(obj);
        let mut progress = |c: &sys::tree::Copied| {
            if c.bytes >= next_log {
                tracing::info!(pool = %self.dirs.name, to = %path.display(), bytes = c.bytes, files = c.files,
                    secs = started.elapsed().as_secs_f64(), "copying directory tree");
                next_log = c.bytes + PROGRESS_EVERY;
            }
        };
        let c = sys::tree::copy_tree(src, dst, &mut progress)
            .map_err(Error::io("copying directory tree into", self.path(obj)))?;
        if c.bytes >= PROGRESS_EVERY {
            tracing::info!(pool = %self.dirs.name, to = %self.path(obj).display(), bytes = c.bytes, files = c.files,
                secs = started.elapsed().as_secs_f64(), reflink = c.reflinked, "copied directory tree");
        }
        // The copy holds data: make it durable before the record says Ready.
        sys::fs::syncfs(dst).map_err(Error::io("syncfs", self.path(obj)))?;
        Ok(if c.reflinked {
            CopyKind::Reflink
        } else {
            CopyKind::Sparse
        })
    }
}

impl Backend for DirPool {
    fn pool(&self) -> &str {
        &self.dirs.name
    }

    fn kind(&self) -> &'static str {
        "dir"
    }

    fn access(&self) -> Access<'_> {
        Access::Tree(self)
    }

    fn root(&self) -> &Path {
        &self.dirs.root
    }

    fn pool_condition(&self) -> Option<String> {
        self.quota.is_none().then(|| {
            format!(
                "pool {} runs with enforce=false: this volume's size is not enforced",
                self.dirs.name
            )
        })
    }

    fn keeps_sizes(&self) -> bool {
        self.quota.is_some()
    }

    fn accepts_source(&self, src: &dyn Backend) -> std::result::Result<(), String> {
        match src.layout() {
            Layout::Tree => Ok(()),
            Layout::Image => Err(format!(
                "pool {} ({}) holds images, pool {} (dir) holds directory trees",
                src.pool(),
                src.kind(),
                self.pool()
            )),
        }
    }

    fn check(&self) -> Result<()> {
        self.dirs.check()?;
        if self.quota.is_some() {
            sys::quota::probe(&self.fs).map_err(|e| {
                Error::NotReady(format!(
                    "pool {}: project quotas are off on {}: {e}",
                    self.dirs.name,
                    self.dirs.root.display()
                ))
            })?;
        }
        Ok(())
    }

    fn space(&self) -> Result<Space> {
        self.dirs.space()
    }

    fn snapshot_space(&self, obj: DataRef<'_>) -> Result<u64> {
        let d = self.dirs.must_open_tree(obj)?;
        if let Some((_, q)) = self.quota_of(&d, obj)? {
            return Ok(q.bytes_used);
        }
        let (bytes, _) = sys::tree::usage(&d).map_err(Error::io("measuring", self.path(obj)))?;
        Ok(bytes)
    }

    fn create(
        &self,
        obj: DataRef<'_>,
        size: u64,
        from: Option<Source<'_>>,
    ) -> Result<Option<CopyKind>> {
        let name = super::checked_name(obj)?;
        let (parent, _) = self.dirs.dir(obj.kind);
        let path = self.path(obj);
        if let Some(src) = &from {
            self.accepts_source(src.pool)
                .map_err(|r| Error::invalid("volume_content_source", r))?;
        }
        nix::sys::stat::mkdirat(
            parent,
            name,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .map_err(|e| Error::Io {
            op: "creating directory",
            path: path.clone(),
            source: e.into(),
        })?;
        let quota = match (self.quota, obj.kind) {
            (Some(flavor), DataKind::Volume) => Some(flavor),
            _ => None,
        };
        if quota.is_none() && from.is_none() {
            // An empty directory without a limit: nothing more to do in it.
            return Ok(None);
        }
        let mut project = None;
        let made = (|| {
            let d = self.dirs.must_open_tree(obj)?;
            if let Some(flavor) = quota {
                let id = self.take_project();
                project = Some(id);
                sys::quota::set_project(&d, id)
                    .map_err(Error::io("setting project id of", &path))?;
                sys::quota::set_limit(&self.fs, flavor, id, size)
                    .map_err(Error::io("setting project quota of", &path))?;
            }
            match from {
                None => Ok(None),
                Some(src) => {
                    let s = src.pool.trees()?.open_tree(src.obj)?;
                    self.fill(&s, &d, obj).map(Some)
                }
            }
        })();
        if made.is_err() {
            let _ = sys::tree::remove_tree(parent, name);
            if let (Some(flavor), Some(id)) = (self.quota, project) {
                let _ = sys::quota::set_limit(&self.fs, flavor, id, 0);
            }
        }
        made
    }

    fn remove(&self, obj: DataRef<'_>) -> Result<bool> {
        let name = super::checked_name(obj)?;
        let (parent, _) = self.dirs.dir(obj.kind);
        let Some(d) = self.dirs.open_tree(obj)? else {
            return Ok(false);
        };
        let project = match (self.quota, obj.kind) {
            (Some(_), DataKind::Volume) => Some(
                sys::quota::project_id(&d)
                    .map_err(Error::io("reading project id of", self.path(obj)))?,
            ),
            _ => None,
        };
        drop(d);
        let removed = sys::tree::remove_tree(parent, name)
            .map_err(Error::io("removing directory tree", self.path(obj)))?;
        if let (Some(flavor), Some(id)) = (self.quota, project)
            && id >= PROJECT_BASE
        {
            sys::quota::set_limit(&self.fs, flavor, id, 0)
                .map_err(Error::io("clearing project quota of", self.path(obj)))?;
        }
        Ok(removed)
    }

    fn size(&self, obj: DataRef<'_>) -> Result<Option<u64>> {
        let Some(d) = self.dirs.open_tree(obj)? else {
            return Ok(None);
        };
        if obj.kind == DataKind::Snapshot {
            return Ok(Some(0));
        }
        Ok(Some(
            self.quota_of(&d, obj)?.map_or(0, |(_, q)| q.bytes_limit),
        ))
    }

    fn grow(&self, obj: DataRef<'_>, size: u64) -> Result<()> {
        let d = self.dirs.must_open_tree(obj)?;
        let (Some(flavor), Some((id, q))) = (self.quota, self.quota_of(&d, obj)?) else {
            return Ok(());
        };
        if id < PROJECT_BASE && obj.kind == DataKind::Volume {
            // Its project id was lost with the power (the journal's replay grows every
            // recent volume to its size): give it a project of its own again.
            let id = self.take_project();
            let path = self.path(obj);
            sys::quota::set_project(&d, id).map_err(Error::io("setting project id of", &path))?;
            return sys::quota::set_limit(&self.fs, flavor, id, size)
                .map_err(Error::io("setting project quota of", &path));
        }
        if q.bytes_limit != 0 && size <= q.bytes_limit {
            return Ok(());
        }
        sys::quota::set_limit(&self.fs, flavor, id, size)
            .map_err(Error::io("raising project quota of", self.path(obj)))
    }

    fn path(&self, obj: DataRef<'_>) -> PathBuf {
        self.dirs.path(obj)
    }

    fn list(&self, kind: DataKind) -> Result<Vec<String>> {
        self.dirs.list(kind)
    }
}

impl TreeObjects for DirPool {
    fn fs_type(&self) -> &str {
        self.fs_type
    }

    fn open_tree(&self, obj: DataRef<'_>) -> Result<File> {
        self.dirs.must_open_tree(obj)
    }

    fn usage(&self, obj: DataRef<'_>) -> Result<Usage> {
        let d = self.dirs.must_open_tree(obj)?;
        if let Some((_, q)) = self.quota_of(&d, obj)? {
            return Ok(Usage {
                bytes_used: q.bytes_used,
                bytes_limit: q.bytes_limit,
                inodes_used: q.inodes_used,
                inodes_limit: q.inodes_limit,
            });
        }
        let (bytes, inodes) =
            sys::tree::usage(&d).map_err(Error::io("measuring", self.path(obj)))?;
        Ok(Usage {
            bytes_used: bytes,
            bytes_limit: 0,
            inodes_used: inodes,
            inodes_limit: 0,
        })
    }
}

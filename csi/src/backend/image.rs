//! The `image` backend: `<pool>/volumes/<v…>.img` and `<pool>/snapshots/<s…>.img`, sparse
//! files that the node attaches as loop devices with ext4 or xfs inside.
//!
//! Every file is opened relative to a directory fd with RESOLVE_BENEATH and
//! RESOLVE_NO_SYMLINKS, so neither a crafted name nor a symlink planted in the pool can
//! lead outside it.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::{Access, Backend, CopyKind, DataKind, DataRef, ImageObjects, PoolDirs, Source};
use crate::error::{Error, Result};
use crate::sys;
use crate::sys::fs::Space;

#[derive(Debug)]
pub struct ImagePool {
    dirs: PoolDirs,
}

impl ImagePool {
    /// Opens pool `name` at `root` (which must exist and be a directory, not a symlink),
    /// creating its `volumes/` and `snapshots/` directories.
    pub fn open(name: &str, root: &Path) -> Result<ImagePool> {
        let (root, dir) = PoolDirs::resolve(root)?;
        Ok(ImagePool {
            dirs: PoolDirs::open(name, root, &dir)?,
        })
    }

    fn open_flags(&self, obj: DataRef<'_>, flags: OFlag) -> Result<File> {
        let name = super::checked_name(obj)?;
        let (dir, _) = self.dirs.dir(obj.kind);
        sys::fs::open_beneath(dir, name, flags, 0o600)
            .map_err(Error::io("opening image", self.path(obj)))
    }
}

impl Backend for ImagePool {
    fn pool(&self) -> &str {
        &self.dirs.name
    }

    fn kind(&self) -> &'static str {
        "image"
    }

    fn access(&self) -> Access<'_> {
        Access::Image(self)
    }

    fn root(&self) -> &Path {
        &self.dirs.root
    }

    fn check(&self) -> Result<()> {
        self.dirs.check()
    }

    fn space(&self) -> Result<Space> {
        self.dirs.space()
    }

    fn snapshot_space(&self, obj: DataRef<'_>) -> Result<u64> {
        let f = self.open_image(obj)?;
        sys::fs::allocated(&f).map_err(Error::io("stat", self.path(obj)))
    }

    fn create(
        &self,
        obj: DataRef<'_>,
        size: u64,
        from: Option<Source<'_>>,
    ) -> Result<Option<CopyKind>> {
        let from = match from {
            Some(src) => {
                self.accepts_source(src.pool)
                    .map_err(|r| Error::invalid("volume_content_source", r))?;
                Some(src.pool.images()?.open_image(src.obj)?)
            }
            None => None,
        };
        let from = from.as_ref();
        let dst = self.open_flags(obj, OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR)?;
        let result = (|| {
            let kind = match from {
                None => None,
                Some(src) => {
                    let kind = sys::reflink::copy_image(src, &dst)
                        .map_err(Error::io("copying image into", self.path(obj)))?;
                    Some(kind)
                }
            };
            let have = dst
                .metadata()
                .map_err(Error::io("stat", self.path(obj)))?
                .len();
            if size > have {
                sys::fs::set_len(&dst, size).map_err(Error::io("sizing image", self.path(obj)))?;
            }
            if from.is_some() {
                // A copied image holds data: make it durable before the record says Ready.
                sys::fs::sync(&dst).map_err(Error::io("fsync", self.path(obj)))?;
            }
            Ok(kind)
        })();
        if result.is_err() {
            let (dir, _) = self.dirs.dir(obj.kind);
            let _ = sys::fs::unlink_beneath(dir, obj.name);
        }
        result
    }

    fn remove(&self, obj: DataRef<'_>) -> Result<bool> {
        let name = super::checked_name(obj)?;
        let (dir, _) = self.dirs.dir(obj.kind);
        sys::fs::unlink_beneath(dir, name).map_err(Error::io("removing image", self.path(obj)))
    }

    fn size(&self, obj: DataRef<'_>) -> Result<Option<u64>> {
        let name = super::checked_name(obj)?;
        let (dir, _) = self.dirs.dir(obj.kind);
        sys::fs::file_exists(dir, name).map_err(Error::io("stat", self.path(obj)))
    }

    fn grow(&self, obj: DataRef<'_>, size: u64) -> Result<()> {
        let f = self.open_flags(obj, OFlag::O_RDWR)?;
        let have = f
            .metadata()
            .map_err(Error::io("stat", self.path(obj)))?
            .len();
        if size > have {
            sys::fs::set_len(&f, size).map_err(Error::io("growing image", self.path(obj)))?;
        }
        Ok(())
    }

    fn path(&self, obj: DataRef<'_>) -> PathBuf {
        self.dirs.path(obj)
    }

    fn list(&self, kind: DataKind) -> Result<Vec<String>> {
        self.dirs.list(kind)
    }
}

impl ImageObjects for ImagePool {
    fn open_image(&self, obj: DataRef<'_>) -> Result<File> {
        self.open_flags(obj, OFlag::O_RDWR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_copy_grow_remove() {
        let dir = tempfile::tempdir().unwrap();
        let pool = ImagePool::open("p", dir.path()).unwrap();
        let v = DataRef::volume("vabc.img");
        assert_eq!(pool.create(v, 1 << 20, None).unwrap(), None);
        assert!(pool.create(v, 1 << 20, None).is_err(), "O_EXCL");
        assert_eq!(pool.size(v).unwrap(), Some(1 << 20));
        let s = DataRef::snapshot("sabc.img");
        let src = Source {
            pool: &pool,
            obj: v,
        };
        assert!(pool.create(s, 1 << 20, Some(src)).unwrap().is_some());
        pool.grow(v, 4 << 20).unwrap();
        pool.grow(v, 2 << 20).unwrap();
        assert_eq!(pool.size(v).unwrap(), Some(4 << 20));
        assert!(pool.remove(v).unwrap());
        assert!(!pool.remove(v).unwrap());
        assert_eq!(
            pool.list(DataKind::Snapshot).unwrap(),
            vec!["sabc.img".to_string()]
        );
    }

    #[test]
    fn symlinks_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let pool = ImagePool::open("p", dir.path()).unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join("volumes/vlink.img"),
        )
        .unwrap();
        assert!(
            pool.open_image(DataRef::volume("vlink.img")).is_err(),
            "symlink followed"
        );
        assert!(pool.size(DataRef::volume("vlink.img")).is_err());
        for bad in ["../x", "a/b", "", ".hidden", "UPPER"] {
            assert!(pool.open_image(DataRef::volume(bad)).is_err(), "{bad}");
        }
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"x");
    }
}

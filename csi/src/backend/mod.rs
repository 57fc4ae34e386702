//! Pools and the backends that hold volume and snapshot images.
//!
//! A backend owns one directory (the pool) and knows how to create, copy, grow and remove
//! images in it. Only `image` (a sparse file per volume, attached through a loop device)
//! exists now; `dir` and `btrfs` are to follow, which is why the driver reaches pools only
//! through this trait.

pub mod image;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::sys::fs::Space;

/// Which directory of the pool an image lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Volume,
    Snapshot,
}

/// An image in a pool: its kind and its file name (always `[a-z0-9.]`, see `ids`).
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

pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The pool's name (`--pool NAME=...`).
    fn pool(&self) -> &str;
    /// `image`, `dir`, ...
    fn kind(&self) -> &'static str;
    fn root(&self) -> &Path;
    /// Proves the pool directory is still there and usable (Probe, GetCapacity).
    fn check(&self) -> Result<()>;
    fn space(&self) -> Result<Space>;
    /// Creates `img` with `size` bytes, empty or as a copy of the open image `from` (which
    /// may live in another pool; then grown to `size`). Fails if `img` exists.
    fn create(&self, img: ImageRef<'_>, size: u64, from: Option<&File>)
    -> Result<Option<CopyKind>>;
    /// Removes `img`; false when it was already gone.
    fn remove(&self, img: ImageRef<'_>) -> Result<bool>;
    /// Size in bytes, None when missing.
    fn size(&self, img: ImageRef<'_>) -> Result<Option<u64>>;
    /// Grows `img` to `size` bytes (never shrinks).
    fn grow(&self, img: ImageRef<'_>, size: u64) -> Result<()>;
    /// Opens `img` read-write for attaching.
    fn open(&self, img: ImageRef<'_>) -> Result<File>;
    /// The absolute path of `img`, as sysfs shows it for an attached loop device.
    fn path(&self, img: ImageRef<'_>) -> PathBuf;
    /// Every image file present, for reconciliation.
    fn list(&self, kind: ImageKind) -> Result<Vec<String>>;
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

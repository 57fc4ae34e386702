//! NodeGetVolumeStats.

use std::path::Path;

use super::io_at;
use crate::backend::{DataRef, Layout};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::state::VolumeRecord;
use crate::sys;

/// Node stats of one volume path.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub block: bool,
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub bytes_used: u64,
    pub inodes_total: u64,
    pub inodes_available: u64,
    pub inodes_used: u64,
    pub abnormal: bool,
    pub message: String,
}

impl Driver {
    /// NodeGetVolumeStats.
    pub fn stats(&self, volume_id: &str, path: &Path) -> Result<Stats> {
        let v = self.ready_volume(volume_id)?;
        let (st, publ) = self.path_of(&v, path)?;
        let (mut abnormal, mut message) = self.condition(&v)?;
        if !abnormal && (publ.is_some() || !st.block) {
            let intact = match &publ {
                Some(p) => self.publish_intact(&st, path, p.device.as_deref()),
                None => sys::mount::stat(path).is_ok_and(|s| s.mount_root),
            };
            if !intact {
                abnormal = true;
                message = format!("mount at {} is gone", path.display());
            }
        }
        let mut s = Stats {
            block: st.block,
            abnormal,
            message,
            ..Default::default()
        };
        if st.block {
            let n = st.device.as_deref().and_then(sys::loopdev::number_of);
            s.bytes_total = match n.map(sys::loopdev::size_bytes) {
                Some(Ok(b)) => b,
                _ => v.capacity,
            };
            return Ok(s);
        }
        if abnormal && !self.is_tree(&v)? {
            s.bytes_total = v.capacity;
            return Ok(s);
        }
        let pool = self.pool(&v.pool)?;
        if pool.layout() == Layout::Tree {
            return self.tree_stats(&v, path, s);
        }
        let dir = sys::fs::open_dir(path).map_err(io_at("opening", path))?;
        let nix = nix::sys::statvfs::fstatvfs(&dir).map_err(|e| Error::Io {
            op: "statvfs",
            path: path.into(),
            source: e.into(),
        })?;
        let frsize = nix.fragment_size() as u64;
        s.bytes_total = nix.blocks() as u64 * frsize;
        s.bytes_available = nix.blocks_available() as u64 * frsize;
        s.bytes_used = (nix.blocks() as u64 - nix.blocks_free() as u64) * frsize;
        s.inodes_total = nix.files() as u64;
        s.inodes_available = nix.files_available() as u64;
        s.inodes_used = nix.files() as u64 - nix.files_free() as u64;
        Ok(s)
    }

    /// NodeGetVolumeStats of a tree volume: this volume's bytes from the pool's quota
    /// accounting; the filesystem's figures only where the quota has no limit.
    fn tree_stats(&self, v: &VolumeRecord, path: &Path, mut s: Stats) -> Result<Stats> {
        let trees = self.pool(&v.pool)?.trees()?;
        let obj = DataRef::volume(&v.data);
        let usage = trees.usage(obj)?;
        let fs = sys::fs::space(&trees.open_tree(obj)?).map_err(io_at("statvfs", path))?;
        let limit = if usage.bytes_limit != 0 {
            usage.bytes_limit
        } else {
            v.capacity
        };
        s.bytes_total = limit;
        s.bytes_used = usage.bytes_used;
        s.bytes_available = limit.saturating_sub(usage.bytes_used).min(fs.free_bytes);
        s.inodes_used = usage.inodes_used;
        if usage.inodes_limit != 0 {
            s.inodes_total = usage.inodes_limit;
            s.inodes_available = usage.inodes_limit.saturating_sub(usage.inodes_used);
        }
        Ok(s)
    }
}

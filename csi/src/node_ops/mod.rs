//! Node-side operations, one file each: stage (loop device, mkfs when empty, mount; a
//! bind mount for tree volumes) and unstage, publish (bind mount or device node) and
//! unpublish, ephemeral inline volumes, online expansion, and stats. Each operation that
//! makes several changes undoes the completed ones through a `Rollback` guard when a
//! later step fails.
//!
//! Stage records its intent first; publish records after the mount (its retry adopts a
//! mount left by a crash, and reconciliation reports strays), so the hot path costs one
//! state commit per publish and one per unpublish.

mod ephemeral;
mod expand;
mod publish;
mod rollback;
mod stage;
mod stats;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::backend::{ImageRef, Layout};
use crate::driver::Driver;
use crate::error::{Error, Result};
pub use crate::request::{PublishArgs, StageArgs};
use crate::state::{PublishRecord, StageRecord, VolumeRecord};

pub use ephemeral::{CTX_SIZE, EPHEMERAL_DEFAULT_SIZE};
pub use stats::Stats;

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(op, path)
}

/// Gives group `gid` write access to the filesystem root, with setgid so new files keep
/// the group (what `volume_mount_group` asks of ext4/xfs, which have no gid= option).
fn apply_mount_group(root: &Path, gid: &str) -> Result<()> {
    let gid: u32 = gid
        .parse()
        .map_err(|_| Error::invalid("volume_mount_group", "not a numeric group id"))?;
    nix::unistd::chown(root, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
        Error::Io {
            op: "chgrp",
            path: root.to_path_buf(),
            source: e.into(),
        }
    })?;
    let meta = std::fs::metadata(root).map_err(io_at("stat", root))?;
    let mode = meta.permissions().mode() | 0o2070;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))
        .map_err(io_at("chmod", root))?;
    Ok(())
}

/// A size given as a Kubernetes quantity (`1073741824`, `512Mi`, `1.5Gi`, `1G`), in
/// whole bytes rounded up; None unless it is a positive quantity in range.
/// The grammar is `strata-quantity`'s, the API server's.
pub fn parse_quantity(s: &str) -> Option<u64> {
    strata_quantity::parse(s.trim())
        .ok()
        .and_then(|q| q.to_bytes())
        .filter(|&b| b > 0)
}

impl Driver {
    fn image_path(&self, v: &VolumeRecord) -> Result<PathBuf> {
        Ok(self.pool(&v.pool)?.path(ImageRef::volume(&v.file)))
    }

    pub(crate) fn is_tree(&self, v: &VolumeRecord) -> Result<bool> {
        Ok(self.pool(&v.pool)?.layout() == Layout::Tree)
    }

    /// Which of the volume's paths `path` is: (stage record, publish record).
    fn path_of(
        &self,
        v: &VolumeRecord,
        path: &Path,
    ) -> Result<(StageRecord, Option<PublishRecord>)> {
        let st = self.store.stage(&v.id)?;
        let p = self.store.publish(path)?.filter(|p| p.volume_id == v.id);
        match st {
            Some(st) if st.staging_path == path || p.is_some() => Ok((st, p)),
            _ => Err(Error::VolumeNotFound(format!(
                "{} at {}",
                v.id,
                path.display()
            ))),
        }
    }
}

/// Removes a publish target (directory or device-node file); failures are logged, since
/// the mount is already gone and a leftover empty entry harms nobody.
fn remove_target(target: &Path) {
    let r = match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
        Err(_) => Ok(()),
    };
    if let Err(e) = r {
        tracing::warn!(target = %target.display(), error = %e, "removing publish target");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("100Mi"), Some(100 << 20));
        assert_eq!(parse_quantity("5M"), Some(5_000_000));
        assert_eq!(parse_quantity("4096"), Some(4096));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("1Pi"), Some(1 << 50));
        assert_eq!(parse_quantity(" 1k "), Some(1000));
        assert_eq!(parse_quantity("1K"), None);
        assert_eq!(parse_quantity("Gi"), None, "zero");
        assert_eq!(parse_quantity("-1Gi"), None);
        // Binary sizes cap at 2^63-1 as upstream caps them; decimal ones refuse.
        assert_eq!(parse_quantity("99999999999999Ti"), Some(i64::MAX as u64));
        assert_eq!(parse_quantity("99999999999999T"), None);
    }
}

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
mod trash;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::backend::{DataRef, Layout};
use crate::driver::Driver;
use crate::error::{Error, Result};
pub use crate::request::{PublishArgs, StageArgs};
use crate::state::{PublishRecord, StageRecord, VolumeRecord};

pub use ephemeral::{CTX_SIZE, EPHEMERAL_DEFAULT_SIZE};
pub use stats::Stats;
pub use trash::Trash;

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
    /// Where the volume's data object is: the image file its loop devices show as their
    /// backing file, or the directory a tree stage binds.
    fn data_path(&self, v: &VolumeRecord) -> Result<PathBuf> {
        Ok(self.pool(&v.pool)?.path(DataRef::volume(&v.data)))
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
    use crate::driver::{AccessMode, Cap, test_driver};
    use crate::volumes::CreateArgs;
    use strata_failpoint::inject_error;

    fn cap() -> Cap {
        Cap {
            block: false,
            fs_type: "ext4".into(),
            mount_flags: vec![],
            mount_group: String::new(),
            mode: AccessMode::SingleNodeWriter,
        }
    }

    /// Unmounts and detaches whatever a failed test left.
    struct Cleanup(Vec<PathBuf>, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = crate::sys::mount::umount_all(p);
            }
            for n in crate::sys::loopdev::find_by_backing(&self.1).unwrap_or_default() {
                let _ = crate::sys::loopdev::detach_if_backed_by(n, &self.1);
            }
        }
    }

    /// Waits for the kernel to finish detaching the image's loop devices (autoclear
    /// devices go when their last opener closes, a moment after the undo).
    fn no_loop_device(image: &Path) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if crate::sys::loopdev::find_by_backing(image)
                .unwrap()
                .is_empty()
            {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn mounted(p: &Path) -> bool {
        crate::sys::mount::stat(p).is_ok_and(|s| s.mount_root)
    }

    #[test]
    fn a_failing_step_undoes_the_steps_before_it() {
        if !testkit::require_root("a_failing_step_undoes_the_steps_before_it") {
            return;
        }
        let (p, s, m) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let d = test_driver(p.path(), s.path());
        let v = d
            .create_volume(CreateArgs {
                name: "pvc-rollback".into(),
                required: 20 << 20,
                caps: vec![cap()],
                ..Default::default()
            })
            .unwrap();
        let image = d.data_path(&v).unwrap();
        let staging = m.path().join("staging");
        let target = m.path().join("target");
        std::fs::create_dir(&staging).unwrap();
        let _cleanup = Cleanup(vec![target.clone(), staging.clone()], image.clone());
        let stage = || {
            d.stage(StageArgs {
                volume_id: v.id.clone(),
                staging: staging.clone(),
                cap: cap(),
            })
        };
        // A block volume's device is not autoclear: only the undo detaches it.
        let block = Cap {
            block: true,
            fs_type: String::new(),
            ..cap()
        };
        let injected = inject_error("node_stage:after_attach");
        let e = d
            .stage(StageArgs {
                volume_id: v.id.clone(),
                staging: staging.clone(),
                cap: block,
            })
            .unwrap_err();
        drop(injected);
        assert!(crate::error::chain(&e).contains("after_attach"), "{e}");
        assert!(
            d.store.stage(&v.id).unwrap().is_none(),
            "block: stage record left"
        );
        assert!(no_loop_device(&image), "block: loop device left");
        // In step order: the image is formatted at the third, so the fourth finds ext4.
        for fp in [
            "node_stage:after_intent",
            "node_stage:after_attach",
            "node_stage:after_mkfs",
            "node_stage:after_mount",
        ] {
            let injected = inject_error(fp);
            let e = stage().unwrap_err();
            drop(injected);
            assert!(crate::error::chain(&e).contains(fp), "{fp}: {e}");
            assert!(
                d.store.stage(&v.id).unwrap().is_none(),
                "{fp}: stage record left"
            );
            assert!(!mounted(&staging), "{fp}: staging mount left");
            assert!(no_loop_device(&image), "{fp}: loop device left");
        }
        stage().unwrap();
        let publish = || {
            d.publish(PublishArgs {
                volume_id: v.id.clone(),
                staging: staging.clone(),
                target: target.clone(),
                cap: cap(),
                readonly: false,
                context: Default::default(),
                ephemeral: false,
            })
        };
        for fp in ["node_publish:after_mkdir", "node_publish:after_mount"] {
            let injected = inject_error(fp);
            let e = publish().unwrap_err();
            drop(injected);
            assert!(crate::error::chain(&e).contains(fp), "{fp}: {e}");
            assert!(!target.exists(), "{fp}: target left");
            assert!(
                d.store.publish(&target).unwrap().is_none(),
                "{fp}: record left"
            );
        }
        publish().unwrap();
        assert!(mounted(&target));
        d.unpublish(&v.id, &target).unwrap();
        d.unstage(&v.id, &staging).unwrap();
        assert!(no_loop_device(&image));
        d.delete_volume(&v.id).unwrap();
    }

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

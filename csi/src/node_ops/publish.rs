//! NodePublishVolume and NodeUnpublishVolume.

use std::path::Path;

use super::rollback::Rollback;
use super::stage::unmount;
use super::trash::{TARGET_DIR_MODE, Trash};
use super::{apply_mount_group, io_at, remove_target};
use crate::backend::DataRef;
use crate::driver::{AccessMode, Driver, Lookup};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::request::PublishArgs;
use crate::state::{Op, PublishRecord, StagePhase, StageRecord};
use crate::sys;
use std::os::unix::fs::DirBuilderExt;

impl Driver {
    /// NodePublishVolume: an ephemeral inline volume is created and staged first.
    pub fn node_publish(&self, a: PublishArgs) -> Result<()> {
        if a.ephemeral {
            self.publish_ephemeral(a)
        } else {
            self.publish(a)
        }
    }

    /// NodePublishVolume, with the second-publish matrix of k8s-semantics §5.6.
    pub fn publish(&self, a: PublishArgs) -> Result<()> {
        let v = self.ready_volume(&a.volume_id)?;
        a.cap.supported().map_err(Error::CapabilityUnsupported)?;
        let parent = a.target.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(Error::invalid(
                "target_path",
                format!("parent {} does not exist", parent.display()),
            ));
        }
        let opts = sys::mount::parse_options(&a.cap.mount_flags)
            .map_err(|r| Error::invalid("mount_flags", r))?;
        let _guard = self.locks.try_lock([format!("vol:{}", v.id)])?;
        let st = match self.store.stage(&v.id)? {
            Some(st) if st.phase == StagePhase::Staged && st.staging_path == a.staging => st,
            Some(st) if st.phase == StagePhase::Staged => {
                return Err(Error::Precondition(format!(
                    "volume {} is staged at {}, not at {}",
                    v.id,
                    st.staging_path.display(),
                    a.staging.display()
                )));
            }
            _ => {
                return Err(Error::Precondition(format!(
                    "volume {} is not staged at {}",
                    v.id,
                    a.staging.display()
                )));
            }
        };
        if st.block != a.cap.block {
            return Err(Error::CapabilityUnsupported(format!(
                "volume {} is staged as {} but published as {}",
                v.id,
                if st.block { "block" } else { "mount" },
                if a.cap.block { "block" } else { "mount" }
            )));
        }
        if !a.cap.block && !a.cap.fs_type.is_empty() && a.cap.fs_type != st.fs_type {
            return Err(Error::CapabilityUnsupported(format!(
                "volume {} holds {}, not {}",
                v.id, st.fs_type, a.cap.fs_type
            )));
        }
        let read_only = a.read_only();
        let args = format!(
            "{}|{}|{}|{:?}",
            a.staging.display(),
            a.cap.key(),
            read_only,
            a.context
        );
        if let Some(p) = self.store.publish(&a.target)? {
            if p.volume_id != v.id {
                return Err(Error::PublishedIncompatible {
                    target: a.target.display().to_string(),
                    reason: format!("volume {} is published there", p.volume_id),
                });
            }
            if p.args != args {
                return Err(Error::PublishedIncompatible {
                    target: a.target.display().to_string(),
                    reason: "published with other arguments".into(),
                });
            }
            if self.publish_intact(&st, &a.target, p.device.as_deref()) {
                return Ok(());
            }
            if let Some(dev) = p.device.as_deref().and_then(sys::loopdev::number_of) {
                let _ = sys::loopdev::detach_if_backed_by(dev, &self.data_path(&v)?);
            }
            tracing::warn!(volume_id = %v.id, target = %a.target.display(), "published mount is gone; publishing again");
        } else {
            for other in self.store.publishes_of(&v.id)? {
                let both_multi = a.cap.multi_publish()
                    && AccessMode::from_wire(other.access_mode)
                        .is_some_and(AccessMode::multi_publish);
                if !both_multi {
                    return Err(Error::Precondition(format!(
                        "volume {} is already published at {} and its access mode allows one publish",
                        v.id,
                        other.target.display()
                    )));
                }
            }
        }

        let device = match &st.device {
            Some(d) => d.clone(),
            // A tree volume's stage is a bind mount: publish binds from the staging path.
            None if !st.block && self.is_tree(&v)? => st.staging_path.clone(),
            None => {
                return Err(Error::StateCorrupt(format!(
                    "staged {} has no device",
                    v.id
                )));
            }
        };
        // A retry after a crash between mount and record finds the mount: adopt it.
        let adopt = self.publish_intact(&st, &a.target, None);
        // A read-only bind mount does not stop writes through a device node (only its
        // filesystem is read-only), so a read-only block publish gets its own read-only
        // loop device on the same image.
        let ro_device = if !adopt && a.cap.block && read_only {
            let pool = self.pool(&v.pool)?;
            let image = pool.path(DataRef::volume(&v.data));
            let file = pool.images()?.open_image(DataRef::volume(&v.data))?;
            let opts_ro = sys::loopdev::AttachOptions {
                autoclear: false,
                direct_io: false,
                read_only: true,
            };
            let dev = sys::loopdev::attach(&file, opts_ro, &format!("strata:{}:ro", v.data))
                .map_err(io_at("attaching a read-only loop device to", &image))?;
            Some(dev)
        } else {
            None
        };
        let mut undo = Rollback::new("NodePublishVolume");
        if let Some(d) = &ro_device {
            undo.push("read-only loop device", || {
                sys::loopdev::detach_handle(&d.handle).map_err(io_at("detaching", &d.path))
            });
        }
        let ro_path = ro_device.as_ref().map(|d| d.path.clone());
        if !adopt {
            let made = create_target(&self.trash, &a.target, a.cap.block)?;
            if made {
                undo.push("target", || {
                    remove_target(&a.target);
                    Ok(())
                });
            }
            failpoint::step("node_publish:after_mkdir")?;
            // mount(2) follows a symlink at the target: refuse anything but the directory
            // (or, for block, the file) that publish itself would have made.
            use std::os::unix::fs::FileTypeExt;
            let shape_ok = made
                || match std::fs::symlink_metadata(&a.target) {
                    Ok(m) if a.cap.block => {
                        m.file_type().is_file() || m.file_type().is_block_device()
                    }
                    Ok(m) => m.is_dir(),
                    Err(_) => false,
                };
            if !shape_ok {
                return Err(Error::invalid(
                    "target_path",
                    if a.cap.block {
                        "exists and is not a regular file (symlinks are never followed)"
                    } else {
                        "exists and is not a directory (symlinks are never followed)"
                    },
                ));
            }
            let source: &Path = match (&ro_path, a.cap.block) {
                (Some(ro), _) => ro,
                (None, true) => &device,
                (None, false) => &st.staging_path,
            };
            sys::mount::bind(source, &a.target, read_only, opts.flags)
                .map_err(io_at("bind-mounting onto", &a.target))?;
        }
        // Also an adopted mount: it is ours, and unrecorded it would be a stray.
        undo.push("mount", || unmount(&a.target));
        if !adopt {
            failpoint::step("node_publish:after_mount")?;
        }
        if !a.cap.block && !a.cap.mount_group.is_empty() {
            apply_mount_group(&a.target, &a.cap.mount_group)?;
        }
        self.store.write_publication(Op::PutPublish(PublishRecord {
            target: a.target.clone(),
            volume_id: v.id.clone(),
            staging_path: a.staging.clone(),
            readonly: read_only,
            block: a.cap.block,
            access_mode: a.cap.mode.wire(),
            args,
            device: ro_path.clone(),
        }))?;
        undo.disarm();
        failpoint::hit("node_publish:after_commit");
        Ok(())
    }

    /// Whether `target` is a mount of the staged volume (for block: of `device`, or of the
    /// staged device when None).
    pub(super) fn publish_intact(
        &self,
        st: &StageRecord,
        target: &Path,
        device: Option<&Path>,
    ) -> bool {
        let Ok(t) = sys::mount::stat(target) else {
            return false;
        };
        if !t.mount_root {
            return false;
        }
        if st.block {
            let Some(dev) = device.or(st.device.as_deref()) else {
                return false;
            };
            sys::mount::stat(dev)
                .is_ok_and(|d| d.rdev == t.rdev && t.mode & libc::S_IFMT == libc::S_IFBLK)
        } else {
            sys::mount::stat(&st.staging_path).is_ok_and(|s| s.dev == t.dev)
        }
    }

    /// Whether unpublishing `target` is one umount and a record, for
    /// [`crate::service::Service::run_quick`]: a recorded publish of `volume_id` without a
    /// loop device of its own, of a volume known (in memory) not to be ephemeral. Anything
    /// else, an unknown target included, takes the blocking pool.
    pub fn unpublish_is_quick(&self, volume_id: &str, target: &Path) -> bool {
        let rec = self.store.publish(target).ok().flatten();
        rec.is_some_and(|p| p.volume_id == volume_id && p.device.is_none())
            && self
                .store
                .with_volume_in_memory(volume_id, |v| v.ephemeral.is_none())
                .unwrap_or(false)
    }

    /// NodeUnpublishVolume: undo the publish and remove what publish created.
    pub fn unpublish(&self, volume_id: &str, target: &Path) -> Result<()> {
        let rec = self.store.publish(target)?;
        let v = match self.lookup_volume(volume_id)? {
            Lookup::Found(v) => Some(v),
            Lookup::Unknown | Lookup::OtherNode(_) => None,
        };
        let Some(v) = v else {
            // Unknown volume: fine if there is nothing to undo (a retried unpublish of an
            // ephemeral volume that is already gone), else NOT_FOUND.
            if rec.is_none() && std::fs::symlink_metadata(target).is_err() {
                return Ok(());
            }
            return Err(Error::VolumeNotFound(volume_id.to_string()));
        };
        {
            let _guard = self.locks.try_lock([format!("vol:{}", v.id)])?;
            if let Some(p) = &rec
                && p.volume_id != v.id
            {
                return Err(Error::Precondition(format!(
                    "{} is a publish of volume {}, not of {volume_id}",
                    target.display(),
                    p.volume_id
                )));
            }
            let st = self.store.stage(&v.id)?;
            let ours = rec.is_some()
                || st
                    .as_ref()
                    .is_some_and(|st| self.publish_intact(st, target, None));
            if ours {
                let seen = sys::mount::umount_all_then_stat(target)
                    .map_err(io_at("unmounting", target))?;
                failpoint::hit("node_unpublish:after_umount");
                self.trash
                    .remove_seen(target, seen.as_ref().map(super::trash::Seen::from));
                if let Some(n) = rec
                    .as_ref()
                    .and_then(|p| p.device.as_deref())
                    .and_then(sys::loopdev::number_of)
                {
                    sys::loopdev::detach_if_backed_by(n, &self.data_path(&v)?)
                        .map_err(Error::io("detaching", sys::loopdev::device_path(n)))?;
                }
                failpoint::hit("node_unpublish:after_remove");
            } else if let Ok(meta) = std::fs::symlink_metadata(target) {
                // Publish crashed between mkdir and mount: remove the empty leftover.
                let is_mount = sys::mount::stat(target).is_ok_and(|s| s.mount_root);
                if !is_mount && (meta.is_dir() || (meta.is_file() && meta.len() == 0)) {
                    remove_target(target);
                }
            }
            if rec.is_some() {
                self.store
                    .write_publication(Op::DelPublish(target.to_path_buf()))?;
            }
        }
        if v.ephemeral.is_some() && self.store.publishes_of(&v.id)?.is_empty() {
            self.remove_ephemeral(&v)?;
        }
        Ok(())
    }
}

/// Creates the publish target: a file for a block volume (the device node is bound onto
/// it), a directory otherwise (a spare from the trash when there is one). Ok(false) when
/// it already exists.
fn create_target(trash: &Trash, target: &Path, block: bool) -> Result<bool> {
    if !block && let Some(made) = trash.reuse_dir(target) {
        return Ok(made);
    }
    let made = if block {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0640()
            .open(target)
            .map(drop)
    } else {
        std::fs::DirBuilder::new()
            .mode(TARGET_DIR_MODE)
            .create(target)
    };
    match made {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::Io {
            op: "creating",
            path: target.to_path_buf(),
            source: e,
        }),
    }
}

trait ModeExt {
    fn mode_0640(&mut self) -> &mut Self;
}
impl ModeExt for std::fs::OpenOptions {
    fn mode_0640(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o640)
    }
}

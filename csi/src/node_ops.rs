//! Node-side operations: stage (loop device, mkfs when empty, mount), publish (bind mount
//! or device node), their negations, stats, online expansion and ephemeral inline volumes.
//!
//! Stage records its intent first; publish records after the mount (its retry adopts a
//! mount left by a crash, and reconciliation reports strays), so the hot path costs one
//! state commit per publish and one per unpublish.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::backend::{ImageRef, Layout};
use crate::driver::{self, AccessMode, Cap, Driver, Lookup};
use crate::error::{Error, Result};
use crate::failpoint;
pub use crate::request::{PublishArgs, StageArgs};
use crate::state::{Op, PublishRecord, StagePhase, StageRecord, VolumeRecord};
use crate::sys;
use crate::volumes::{CreateArgs, PARAM_FS_TYPE, PARAM_POOL};

/// volume_context keys of an ephemeral inline volume.
pub const CTX_SIZE: &str = "size";
/// Size of an ephemeral volume without a `size` attribute.
pub const EPHEMERAL_DEFAULT_SIZE: u64 = 100 << 20;

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

    /// Whether a Staged record is still real: loop device backed by the image and, for
    /// mount volumes, the staging path mounted.
    fn stage_intact(&self, v: &VolumeRecord, st: &StageRecord) -> Result<bool> {
        let image = self.image_path(v)?;
        if self.is_tree(v)? {
            return Ok(driver::bind_of(&st.staging_path, &image));
        }
        let Some(n) = st.device.as_deref().and_then(sys::loopdev::number_of) else {
            return Ok(false);
        };
        let devs = sys::loopdev::find_by_backing(&image)
            .map_err(io_at("listing loop devices", Path::new("/sys/block")))?;
        if !devs.contains(&n) {
            return Ok(false);
        }
        if st.block {
            return Ok(true);
        }
        let dev = sys::mount::stat(&sys::loopdev::device_path(n))
            .map_err(io_at("stat", &sys::loopdev::device_path(n)))?;
        Ok(sys::mount::stat(&st.staging_path).is_ok_and(|s| s.mount_root && s.dev == dev.rdev))
    }

    /// Undoes whatever a stage left: mount at the staging path, loop devices backed by the
    /// image; then forgets the record.
    pub(crate) fn teardown_stage(&self, v: &VolumeRecord, st: &StageRecord) -> Result<()> {
        if !st.block {
            sys::mount::umount_all(&st.staging_path)
                .map_err(io_at("unmounting", &st.staging_path))?;
        }
        failpoint::hit("node_unstage:after_umount");
        if self.is_tree(v)? {
            self.store.write(vec![Op::DelStage(v.id.clone())])?;
            return Ok(());
        }
        let image = self.image_path(v)?;
        let list = || {
            sys::loopdev::find_by_backing(&image)
                .map_err(io_at("listing loop devices", Path::new("/sys/block")))
        };
        // Block volumes hold a plain device: detach it. Mount volumes hold an autoclear
        // device, which the kernel tears down (asynchronously) once unmounted; clearing it
        // ourselves could race with that teardown and hit the number's next owner.
        if st.block {
            for n in list()? {
                sys::loopdev::detach_if_backed_by(n, &image)
                    .map_err(Error::io("detaching", sys::loopdev::device_path(n)))?;
            }
        }
        // Give the kernel's rundown a moment so that unstage returns with the device gone.
        // One still held open by somebody else (a prober) goes when they close it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut pause = std::time::Duration::from_millis(1);
        while !list()?.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
        if let Some(n) = list()?.first() {
            tracing::warn!(volume_id = %v.id, device = n, "loop device still attached after unstage; the kernel detaches it when its last user closes it");
        }
        failpoint::hit("node_unstage:after_detach");
        self.store.write(vec![Op::DelStage(v.id.clone())])?;
        Ok(())
    }

    /// NodeStageVolume.
    pub fn stage(&self, a: StageArgs) -> Result<()> {
        let v = self.ready_volume(&a.volume_id)?;
        a.cap.supported().map_err(Error::CapabilityUnsupported)?;
        if !a.cap.block && !a.cap.fs_type.is_empty() && a.cap.fs_type != v.fs_type {
            return Err(Error::CapabilityUnsupported(format!(
                "volume {} holds {}, capability asks for {}",
                v.id, v.fs_type, a.cap.fs_type
            )));
        }
        let meta = std::fs::symlink_metadata(&a.staging).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::invalid("staging_target_path", "does not exist (the CO creates it)")
            }
            _ => Error::Io {
                op: "stat",
                path: a.staging.clone(),
                source: e,
            },
        })?;
        if !a.cap.block && !meta.is_dir() {
            return Err(Error::invalid("staging_target_path", "is not a directory"));
        }
        let mut opts = sys::mount::parse_options(&a.cap.mount_flags)
            .map_err(|r| Error::invalid("mount_flags", r))?;
        if self.is_tree(&v)? {
            self.tree_cap_ok(&v, &a.cap, &opts)?;
        }
        let _guard = self.locks.try_lock([format!("vol:{}", v.id)])?;
        let args = a.cap.key();
        if let Some(st) = self.store.stage(&v.id)? {
            if st.phase == StagePhase::Staged {
                if st.staging_path != a.staging {
                    return Err(Error::Precondition(format!(
                        "volume {} is already staged at {}",
                        v.id,
                        st.staging_path.display()
                    )));
                }
                if st.args != args {
                    return Err(Error::StagedIncompatible {
                        id: v.id.clone(),
                        path: a.staging.display().to_string(),
                        reason: "another volume_capability".into(),
                    });
                }
                if self.stage_intact(&v, &st)? {
                    return Ok(());
                }
                tracing::warn!(volume_id = %v.id, "staged volume lost its device or mount; staging again");
            }
            self.teardown_stage(&v, &st)?;
        }

        let mut st = StageRecord {
            volume_id: v.id.clone(),
            staging_path: a.staging.clone(),
            device: None,
            block: a.cap.block,
            fs_type: if a.cap.block {
                String::new()
            } else {
                v.fs_type.clone()
            },
            args,
            phase: StagePhase::Staging,
            mount_flags: a.cap.mount_flags.clone(),
        };
        self.store.write(vec![Op::PutStage(st.clone())])?;
        failpoint::hit("node_stage:after_intent");

        let pool = self.pool(&v.pool)?;
        if pool.layout() == Layout::Tree {
            return self.stage_tree(&v, st, &a, &opts);
        }
        let file = pool.open(ImageRef::volume(&v.file))?;
        let image = pool.path(ImageRef::volume(&v.file));
        // Mount volumes detach by themselves when unmounted (autoclear); block volumes
        // have no mount to hold the device, so they stay attached until unstage.
        let opts_attach = sys::loopdev::AttachOptions {
            autoclear: !a.cap.block,
            direct_io: v.direct_io,
            read_only: false,
        };
        let mut attached = sys::loopdev::attach(&file, opts_attach, &format!("strata:{}", v.file))
            .map_err(io_at("attaching loop device to", &image))?;
        drop(file);
        failpoint::hit("node_stage:after_attach");
        st.device = Some(attached.path.clone());

        let result = (|| -> Result<()> {
            if v.direct_io && !sys::loopdev::direct_io(attached.number).unwrap_or(false) {
                tracing::warn!(volume_id = %v.id, device = %attached.path.display(), "kernel refused direct I/O for this device");
            }
            if a.cap.block {
                return Ok(());
            }
            let dev = attached.path.clone();
            let found = sys::fs::probe(&mut attached.handle)
                .map_err(io_at("reading superblock of", &dev))?;
            let (fs_type, fs_size) = match found {
                sys::fs::Probe::Empty => {
                    sys::mkfs::mkfs(&dev, &v.fs_type)
                        .map_err(io_at("making filesystem on", &dev))?;
                    failpoint::hit("node_stage:after_mkfs");
                    (v.fs_type.clone(), None)
                }
                sys::fs::Probe::Ext4 { size_bytes } => ("ext4".to_string(), Some(size_bytes)),
                sys::fs::Probe::Xfs { size_bytes } => ("xfs".to_string(), Some(size_bytes)),
                sys::fs::Probe::Unknown => {
                    return Err(Error::CapabilityUnsupported(format!(
                        "image of {} holds data that is neither ext4 nor xfs; not formatting over it",
                        v.id
                    )));
                }
            };
            st.fs_type = fs_type.clone();
            // Snapshots and clones share their source's xfs UUID, which xfs refuses to
            // mount twice; the UUID means nothing to us, so ignore it.
            if fs_type == "xfs" && !opts.data.iter().any(|o| o == "nouuid") {
                opts.data.push("nouuid".into());
            }
            // Restored or cloned into a larger volume, or expanded while unstaged: grow the
            // filesystem to the device now ("including growing the filesystem by
            // NodePublish time"). ext4 grows best unmounted (no capability needed); xfs
            // only grows mounted.
            let dev_size = sys::loopdev::size_bytes(attached.number)
                .map_err(io_at("reading size of", &dev))?;
            let needs_grow = fs_size.is_some_and(|s| s + driver::SIZE_UNIT <= dev_size);
            if needs_grow && fs_type == "ext4" {
                sys::mkfs::grow_ext4_offline(&dev).map_err(io_at("growing filesystem on", &dev))?;
            }
            sys::mount::mount_fs(&dev, &a.staging, &fs_type, &opts).map_err(|e| {
                // A filesystem we just checked refusing its options means the options.
                if e.raw_os_error() == Some(libc::EINVAL) && !a.cap.mount_flags.is_empty() {
                    Error::invalid(
                        "volume_capability.mount.mount_flags",
                        format!(
                            "{fs_type} refused the mount options {:?}",
                            a.cap.mount_flags
                        ),
                    )
                } else {
                    Error::Io {
                        op: "mounting",
                        path: a.staging.clone(),
                        source: e,
                    }
                }
            })?;
            failpoint::hit("node_stage:after_mount");
            if needs_grow && fs_type == "xfs" {
                sys::mkfs::grow(&fs_type, &dev, &a.staging)
                    .map_err(io_at("growing filesystem on", &dev))?;
            }
            if !a.cap.mount_group.is_empty() {
                apply_mount_group(&a.staging, &a.cap.mount_group)?;
            }
            Ok(())
        })();
        let result = result.and_then(|()| {
            st.phase = StagePhase::Staged;
            self.store.write(vec![Op::PutStage(st.clone())])
        });
        if let Err(e) = result {
            if !a.cap.block {
                let _ = sys::mount::umount_all(&a.staging);
            }
            // Through our own handle: after a drop the number may already be someone else's.
            let _ = sys::loopdev::detach_handle(&attached.handle);
            drop(attached);
            let _ = self.store.write(vec![Op::DelStage(v.id.clone())]);
            return Err(e);
        }
        failpoint::hit("node_stage:after_commit");
        tracing::debug!(volume_id = %v.id, device = %attached.path.display(), "staged volume");
        drop(attached);
        Ok(())
    }

    /// NodeUnstageVolume: not staged → OK. An unknown volume has nothing staged here
    /// either (a retry after the volume was deleted), so it is OK too unless something
    /// is still mounted at the path.
    pub fn unstage(&self, volume_id: &str, staging: &Path) -> Result<()> {
        let v = match self.lookup_volume(volume_id)? {
            Lookup::Found(v) => v,
            Lookup::Unknown | Lookup::OtherNode(_) => {
                if sys::mount::stat(staging).is_ok_and(|s| s.mount_root) {
                    return Err(Error::VolumeNotFound(volume_id.to_string()));
                }
                return Ok(());
            }
        };
        let _guard = self.locks.try_lock([format!("vol:{}", v.id)])?;
        let Some(st) = self.store.stage(&v.id)? else {
            return Ok(());
        };
        if st.staging_path != staging {
            return Err(Error::Precondition(format!(
                "volume {} is staged at {}, not at {}",
                v.id,
                st.staging_path.display(),
                staging.display()
            )));
        }
        if let Some(p) = self.store.publishes_of(&v.id)?.first() {
            return Err(Error::InUse {
                id: v.id.clone(),
                reason: format!("still published at {}", p.target.display()),
            });
        }
        self.teardown_stage(&v, &st)
    }

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
        let read_only = a.readonly || a.cap.mode == AccessMode::SingleNodeReaderOnly;
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
                let _ = sys::loopdev::detach_if_backed_by(dev, &self.image_path(&v)?);
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
        let mut created = false;
        // A read-only bind mount does not stop writes through a device node (only its
        // filesystem is read-only), so a read-only block publish gets its own read-only
        // loop device on the same image.
        let mut ro_device: Option<sys::loopdev::Attached> = None;
        if !adopt && a.cap.block && read_only {
            let pool = self.pool(&v.pool)?;
            let image = pool.path(ImageRef::volume(&v.file));
            let file = pool.open(ImageRef::volume(&v.file))?;
            let opts_ro = sys::loopdev::AttachOptions {
                autoclear: false,
                direct_io: false,
                read_only: true,
            };
            let dev = sys::loopdev::attach(&file, opts_ro, &format!("strata:{}:ro", v.file))
                .map_err(io_at("attaching a read-only loop device to", &image))?;
            ro_device = Some(dev);
        }
        let ro_path = ro_device.as_ref().map(|d| d.path.clone());
        let drop_ro = |ro: &Option<sys::loopdev::Attached>| {
            if let Some(d) = ro {
                let _ = sys::loopdev::detach_handle(&d.handle);
            }
        };
        if !adopt {
            if a.cap.block {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode_0640()
                    .open(&a.target)
                {
                    Ok(_) => created = true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        drop_ro(&ro_device);
                        return Err(Error::Io {
                            op: "creating",
                            path: a.target.clone(),
                            source: e,
                        });
                    }
                }
            } else {
                match std::fs::DirBuilder::new().mode_0750().create(&a.target) {
                    Ok(()) => created = true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::Io {
                            op: "creating",
                            path: a.target.clone(),
                            source: e,
                        });
                    }
                }
            }
            failpoint::hit("node_publish:after_mkdir");
            // mount(2) follows a symlink at the target: refuse anything but the directory
            // (or, for block, the file) that publish itself would have made.
            use std::os::unix::fs::FileTypeExt;
            let shape_ok = match std::fs::symlink_metadata(&a.target) {
                Ok(m) if a.cap.block => m.file_type().is_file() || m.file_type().is_block_device(),
                Ok(m) => m.is_dir(),
                Err(_) => false,
            };
            if !shape_ok {
                if created {
                    remove_target(&a.target);
                }
                drop_ro(&ro_device);
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
            if let Err(e) = sys::mount::bind(source, &a.target, read_only, opts.flags) {
                if created {
                    remove_target(&a.target);
                }
                drop_ro(&ro_device);
                return Err(Error::Io {
                    op: "bind-mounting onto",
                    path: a.target.clone(),
                    source: e,
                });
            }
            failpoint::hit("node_publish:after_mount");
        }
        let result = (|| {
            if !a.cap.block && !a.cap.mount_group.is_empty() {
                apply_mount_group(&a.target, &a.cap.mount_group)?;
            }
            self.store.write(vec![Op::PutPublish(PublishRecord {
                target: a.target.clone(),
                volume_id: v.id.clone(),
                staging_path: a.staging.clone(),
                readonly: read_only,
                block: a.cap.block,
                access_mode: a.cap.mode.wire(),
                args,
                device: ro_path.clone(),
            })])
        })();
        if let Err(e) = result {
            let _ = sys::mount::umount_all(&a.target);
            if created {
                remove_target(&a.target);
            }
            drop_ro(&ro_device);
            return Err(e);
        }
        failpoint::hit("node_publish:after_commit");
        Ok(())
    }

    /// Whether `target` is a mount of the staged volume (for block: of `device`, or of the
    /// staged device when None).
    fn publish_intact(&self, st: &StageRecord, target: &Path, device: Option<&Path>) -> bool {
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
                sys::mount::umount_all(target).map_err(io_at("unmounting", target))?;
                failpoint::hit("node_unpublish:after_umount");
                remove_target(target);
                if let Some(n) = rec
                    .as_ref()
                    .and_then(|p| p.device.as_deref())
                    .and_then(sys::loopdev::number_of)
                {
                    sys::loopdev::detach_if_backed_by(n, &self.image_path(&v)?)
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
                    .write(vec![Op::DelPublish(target.to_path_buf())])?;
            }
        }
        if v.ephemeral.is_some() && self.store.publishes_of(&v.id)?.is_empty() {
            self.remove_ephemeral(&v)?;
        }
        Ok(())
    }

    fn remove_ephemeral(&self, v: &VolumeRecord) -> Result<()> {
        if let Some(st) = self.store.stage(&v.id)? {
            self.unstage(&v.id, &st.staging_path)?;
            let _ = std::fs::remove_dir(&st.staging_path);
        }
        let _guard = self.locks.try_lock([format!("vol:{}", v.id)])?;
        self.remove_volume(v.clone())
    }

    /// NodePublishVolume of an ephemeral inline volume: create, stage and publish at once.
    pub fn publish_ephemeral(&self, a: PublishArgs) -> Result<()> {
        let co_id = a.volume_id.clone();
        let _guard = self.locks.try_lock([format!("eph:{co_id}")])?;
        let size = match a.context.get(CTX_SIZE) {
            Some(s) => parse_quantity(s).ok_or_else(|| {
                Error::invalid(
                    "volume_context",
                    format!("size {s:?} is not a positive quantity"),
                )
            })?,
            None => EPHEMERAL_DEFAULT_SIZE,
        };
        let mut parameters = std::collections::HashMap::new();
        for key in [PARAM_POOL, PARAM_FS_TYPE] {
            if let Some(val) = a.context.get(key) {
                parameters.insert(key.to_string(), val.clone());
            }
        }
        let name = driver::ephemeral_name(&co_id);
        let v = match self.store.volume_by_name(&name)? {
            Some(v) => v,
            None => self.create_volume(CreateArgs {
                name,
                required: size,
                caps: vec![a.cap.clone()],
                parameters,
                ephemeral: Some(co_id.clone()),
                ..Default::default()
            })?,
        };
        let staging = self
            .state_dir
            .join("ephemeral")
            .join(v.file.trim_end_matches(".img"));
        std::fs::create_dir_all(&staging).map_err(io_at("creating", &staging))?;
        let result = self
            .stage(StageArgs {
                volume_id: v.id.clone(),
                staging: staging.clone(),
                cap: a.cap.clone(),
            })
            .and_then(|()| {
                self.publish(PublishArgs {
                    volume_id: v.id.clone(),
                    staging: staging.clone(),
                    ..a
                })
            });
        if let Err(e) = result {
            if self.store.publishes_of(&v.id)?.is_empty()
                && let Err(clean) = self.remove_ephemeral(&v)
            {
                tracing::warn!(volume_id = %v.id, error = %clean, "cleaning up a failed ephemeral volume");
            }
            return Err(e);
        }
        Ok(())
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

    /// NodeExpandVolume: refresh the loop device's size, then grow ext4/xfs while mounted.
    pub fn node_expand(
        &self,
        volume_id: &str,
        path: &Path,
        required: u64,
        block_cap: Option<bool>,
    ) -> Result<u64> {
        let v = self.ready_volume(volume_id)?;
        let (st, _) = self.path_of(&v, path)?;
        if st.phase != StagePhase::Staged {
            return Err(Error::Precondition(format!(
                "volume {} is not staged",
                v.id
            )));
        }
        if required > v.capacity {
            return Err(Error::OutOfRange {
                field: "capacity_range",
                reason: format!(
                    "{required} bytes requested, the volume has {} (ControllerExpandVolume first)",
                    v.capacity
                ),
            });
        }
        let _guard = self.locks.try_lock([format!("vol:{}", v.id)])?;
        if self.is_tree(&v)? {
            // The limit was raised by ControllerExpandVolume; a bind mount has no size.
            return Ok(v.capacity);
        }
        let dev = st
            .device
            .clone()
            .ok_or_else(|| Error::StateCorrupt(format!("staged {} has no device", v.id)))?;
        let n = self.live_device(&v, &st)?.ok_or_else(|| {
            Error::Precondition(format!(
                "loop device {} of volume {} is gone; stage the volume again",
                dev.display(),
                v.id
            ))
        })?;
        sys::loopdev::refresh_capacity(n).map_err(io_at("refreshing capacity of", &dev))?;
        if st.block || block_cap.unwrap_or(false) {
            return Ok(v.capacity);
        }
        // "Already ≥ target → OK": a filesystem that fills its device needs no tool.
        let dev_size = sys::loopdev::size_bytes(n).map_err(io_at("reading size of", &dev))?;
        let mut probe_fd = std::fs::File::open(&dev).map_err(io_at("opening", &dev))?;
        let fs_size =
            match sys::fs::probe(&mut probe_fd).map_err(io_at("reading superblock of", &dev))? {
                sys::fs::Probe::Ext4 { size_bytes } | sys::fs::Probe::Xfs { size_bytes } => {
                    Some(size_bytes)
                }
                sys::fs::Probe::Empty | sys::fs::Probe::Unknown => None,
            };
        drop(probe_fd);
        if fs_size.is_some_and(|s| s + driver::SIZE_UNIT > dev_size) {
            return Ok(v.capacity);
        }
        if st.fs_type != "ext4" || sys::mkfs::can_grow_ext4_online() {
            sys::mkfs::grow(&st.fs_type, &dev, &st.staging_path)
                .map_err(io_at("growing filesystem on", &dev))?;
            return Ok(v.capacity);
        }
        // Without CAP_SYS_RESOURCE ext4 can only grow unmounted: possible while nothing
        // is published; otherwise "fs can't be grown while in use" (the CO must not retry;
        // the next stage grows it).
        if let Some(p) = self.store.publishes_of(&v.id)?.first() {
            return Err(Error::Precondition(format!(
                "ext4 on {} cannot grow while published at {}: online ext4 resize needs CAP_SYS_RESOURCE, \
                 which this driver lacks; it grows at the next NodeStageVolume",
                v.id,
                p.target.display()
            )));
        }
        let opts = sys::mount::parse_options(&st.mount_flags)
            .map_err(|r| Error::invalid("mount_flags", r))?;
        // Keep the device alive across the umount: autoclear would detach it.
        let hold = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(io_at("opening", &dev))?;
        sys::mount::umount_all(&st.staging_path).map_err(io_at("unmounting", &st.staging_path))?;
        let grown =
            sys::mkfs::grow_ext4_offline(&dev).map_err(io_at("growing filesystem on", &dev));
        let mounted = sys::mount::mount_fs(&dev, &st.staging_path, "ext4", &opts)
            .map_err(io_at("mounting", &st.staging_path));
        drop(hold);
        grown?;
        mounted?;
        Ok(v.capacity)
    }
}

/// Tree volumes (`dir`, `btrfs` pools): the volume is a directory on the pool's own
/// filesystem, staged by a bind mount and sized by the pool's quota.
impl Driver {
    pub(crate) fn is_tree(&self, v: &VolumeRecord) -> Result<bool> {
        Ok(self.pool(&v.pool)?.layout() == Layout::Tree)
    }

    /// A tree volume offers a mount of its directory: no Block access, and only generic
    /// mount flags (a bind mount takes no filesystem options).
    fn tree_cap_ok(&self, v: &VolumeRecord, cap: &Cap, opts: &sys::mount::Options) -> Result<()> {
        if cap.block {
            return Err(Error::invalid(
                "volume_capability",
                format!(
                    "volume {} is a directory in pool {} ({}); Block access needs an image pool",
                    v.id,
                    v.pool,
                    self.pool(&v.pool)?.kind()
                ),
            ));
        }
        if !opts.data.is_empty() {
            return Err(Error::invalid(
                "volume_capability.mount.mount_flags",
                format!(
                    "{:?} are filesystem options; a {} volume is a bind mount and takes only generic flags (ro, nosuid, noexec, ...)",
                    opts.data, v.pool
                ),
            ));
        }
        Ok(())
    }

    /// Stages a tree volume: its directory bind-mounted at the staging path. `st` is the
    /// intent record already written.
    fn stage_tree(
        &self,
        v: &VolumeRecord,
        mut st: StageRecord,
        a: &StageArgs,
        opts: &sys::mount::Options,
    ) -> Result<()> {
        let dir = self.image_path(v)?;
        let read_only = opts.flags.contains(nix::mount::MsFlags::MS_RDONLY);
        let result = sys::mount::bind(&dir, &a.staging, read_only, opts.flags)
            .map_err(io_at("bind-mounting onto", &a.staging))
            .and_then(|()| {
                failpoint::hit("node_stage:after_mount");
                if !a.cap.mount_group.is_empty() {
                    apply_mount_group(&a.staging, &a.cap.mount_group)?;
                }
                st.phase = StagePhase::Staged;
                self.store.write(vec![Op::PutStage(st.clone())])
            });
        if let Err(e) = result {
            let _ = sys::mount::umount_all(&a.staging);
            let _ = self.store.write(vec![Op::DelStage(v.id.clone())]);
            return Err(e);
        }
        failpoint::hit("node_stage:after_commit");
        tracing::debug!(volume_id = %v.id, dir = %dir.display(), "staged tree volume");
        Ok(())
    }

    /// NodeGetVolumeStats of a tree volume: this volume's bytes from the pool's quota
    /// accounting; the filesystem's figures only where the quota has no limit.
    fn tree_stats(&self, v: &VolumeRecord, path: &Path, mut s: Stats) -> Result<Stats> {
        let pool = self.pool(&v.pool)?;
        let img = ImageRef::volume(&v.file);
        let usage = pool.usage(img)?.unwrap_or_default();
        let fs = sys::fs::space(&pool.open(img)?).map_err(io_at("statvfs", path))?;
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

trait ModeExt {
    fn mode_0640(&mut self) -> &mut Self;
}
impl ModeExt for std::fs::OpenOptions {
    fn mode_0640(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o640)
    }
}
trait DirModeExt {
    fn mode_0750(&mut self) -> &mut Self;
}
impl DirModeExt for std::fs::DirBuilder {
    fn mode_0750(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o750)
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

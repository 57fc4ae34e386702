//! NodeStageVolume and NodeUnstageVolume.

use std::path::Path;

use super::rollback::Rollback;
use super::{apply_mount_group, io_at};
use crate::backend::{Access, DataRef};
use crate::driver::{self, Cap, Driver, Lookup};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::request::StageArgs;
use crate::state::{Op, StagePhase, StageRecord, VolumeRecord};
use crate::sys;

impl Driver {
    /// Whether a Staged record is still real: loop device backed by the image and, for
    /// mount volumes, the staging path mounted.
    fn stage_intact(&self, v: &VolumeRecord, st: &StageRecord) -> Result<bool> {
        let image = self.data_path(v)?;
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
        let image = self.data_path(v)?;
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
        // Declared before the guard, so that it outlives the guard's undo of its attach.
        let attached: sys::loopdev::Attached;
        self.store.write(vec![Op::PutStage(st.clone())])?;
        let mut undo = Rollback::new("NodeStageVolume");
        undo.push("intent record", || {
            self.store.write(vec![Op::DelStage(v.id.clone())])
        });
        failpoint::step("node_stage:after_intent")?;

        let pool = self.pool(&v.pool)?;
        let images = match pool.access() {
            Access::Tree(_) => return self.stage_tree(&v, st, &a, &opts, undo),
            Access::Image(images) => images,
        };
        let file = images.open_image(DataRef::volume(&v.data))?;
        let image = pool.path(DataRef::volume(&v.data));
        // Mount volumes detach by themselves when unmounted (autoclear); block volumes
        // have no mount to hold the device, so they stay attached until unstage.
        let opts_attach = sys::loopdev::AttachOptions {
            autoclear: !a.cap.block,
            direct_io: v.direct_io,
            read_only: false,
        };
        attached = sys::loopdev::attach(&file, opts_attach, &format!("strata:{}", v.data))
            .map_err(io_at("attaching loop device to", &image))?;
        drop(file);
        // Through our own handle: after a drop the number may already be someone else's.
        undo.push("loop device", || {
            sys::loopdev::detach_handle(&attached.handle)
                .map_err(io_at("detaching", &attached.path))
        });
        failpoint::step("node_stage:after_attach")?;
        st.device = Some(attached.path.clone());

        if v.direct_io && !sys::loopdev::direct_io(attached.number).unwrap_or(false) {
            tracing::warn!(volume_id = %v.id, device = %attached.path.display(), "kernel refused direct I/O for this device");
        }
        if !a.cap.block {
            let dev = attached.path.clone();
            let found = sys::fs::probe(&mut &attached.handle)
                .map_err(io_at("reading superblock of", &dev))?;
            let (fs_type, fs_size) = match found {
                sys::fs::Probe::Empty => {
                    sys::mkfs::mkfs(&dev, &v.fs_type)
                        .map_err(io_at("making filesystem on", &dev))?;
                    failpoint::step("node_stage:after_mkfs")?;
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
            undo.push("mount", || unmount(&a.staging));
            failpoint::step("node_stage:after_mount")?;
            if needs_grow && fs_type == "xfs" {
                sys::mkfs::grow(&fs_type, &dev, &a.staging)
                    .map_err(io_at("growing filesystem on", &dev))?;
            }
            if !a.cap.mount_group.is_empty() {
                apply_mount_group(&a.staging, &a.cap.mount_group)?;
            }
        }
        st.phase = StagePhase::Staged;
        self.store.write(vec![Op::PutStage(st.clone())])?;
        undo.disarm();
        failpoint::hit("node_stage:after_commit");
        tracing::debug!(volume_id = %v.id, device = %attached.path.display(), "staged volume");
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
    /// intent record already written, which `undo` removes if this fails.
    fn stage_tree(
        &self,
        v: &VolumeRecord,
        mut st: StageRecord,
        a: &StageArgs,
        opts: &sys::mount::Options,
        mut undo: Rollback<'_>,
    ) -> Result<()> {
        let dir = self.data_path(v)?;
        let read_only = opts.flags.contains(nix::mount::MsFlags::MS_RDONLY);
        sys::mount::bind(&dir, &a.staging, read_only, opts.flags)
            .map_err(io_at("bind-mounting onto", &a.staging))?;
        let staging = a.staging.clone();
        undo.push("bind mount", move || unmount(&staging));
        failpoint::step("node_stage:after_mount")?;
        if !a.cap.mount_group.is_empty() {
            apply_mount_group(&a.staging, &a.cap.mount_group)?;
        }
        st.phase = StagePhase::Staged;
        self.store.write(vec![Op::PutStage(st.clone())])?;
        undo.disarm();
        failpoint::hit("node_stage:after_commit");
        tracing::debug!(volume_id = %v.id, dir = %dir.display(), "staged tree volume");
        Ok(())
    }
}

/// Unmounts everything stacked at `path` (an undo step).
pub(super) fn unmount(path: &Path) -> Result<()> {
    sys::mount::umount_all(path)
        .map(drop)
        .map_err(io_at("unmounting", path))
}

//! NodeExpandVolume.

use std::path::Path;

use super::io_at;
use crate::driver::{self, Driver};
use crate::error::{Error, Result};
use crate::state::StagePhase;
use crate::sys;

impl Driver {
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

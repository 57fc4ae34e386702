//! Ephemeral inline volumes: NodePublishVolume creates, stages and publishes one at once;
//! the last NodeUnpublishVolume removes it.

use super::rollback::Rollback;
use super::{io_at, parse_quantity};
use crate::driver::{self, Driver};
use crate::error::{Error, Result};
use crate::request::{PublishArgs, StageArgs};
use crate::state::VolumeRecord;
use crate::volumes::{CreateArgs, PARAM_FS_TYPE, PARAM_POOL};

/// volume_context keys of an ephemeral inline volume.
pub const CTX_SIZE: &str = "size";
/// Size of an ephemeral volume without a `size` attribute.
pub const EPHEMERAL_DEFAULT_SIZE: u64 = 100 << 20;

impl Driver {
    pub(super) fn remove_ephemeral(&self, v: &VolumeRecord) -> Result<()> {
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
        // A volume that ends up published nowhere is removed again, whichever step failed.
        let mut undo = Rollback::new("NodePublishVolume (ephemeral)");
        undo.push("ephemeral volume", || {
            if self.store.publishes_of(&v.id)?.is_empty() {
                self.remove_ephemeral(&v)?;
            }
            Ok(())
        });
        let staging = self
            .state_dir
            .join("ephemeral")
            .join(v.data.trim_end_matches(".img"));
        std::fs::create_dir_all(&staging).map_err(io_at("creating", &staging))?;
        self.stage(StageArgs {
            volume_id: v.id.clone(),
            staging: staging.clone(),
            cap: a.cap.clone(),
        })?;
        self.publish(PublishArgs {
            volume_id: v.id.clone(),
            staging,
            ..a
        })?;
        undo.disarm();
        Ok(())
    }
}

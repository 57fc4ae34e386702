//! The capacity loop of per-node mode (`Config::capacity`): one round of
//! [`crate::capacity::publish`] at start, every poll period (upstream `--capacity-poll-interval`,
//! 1 min), when a StorageClass changes, and after this node created or deleted a volume
//! (its free space changed). Rounds are one queue key, so a burst of triggers is one round.

use std::sync::Arc;
use std::time::Duration;

use strata_store::Store;
use tokio::sync::watch;
use tracing::{debug, info};

use super::{Controller, Requeue};
use crate::capacity::{self, CsiMeasure, Publisher};
use crate::error::Result;
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The one key of the capacity queue.
pub(crate) const ROUND: &str = "publish";

/// Where and how often this node publishes CSIStorageCapacity objects.
#[derive(Debug, Clone)]
pub struct CapacityConfig {
    /// The namespace of the objects (the driver's, upstream's `NAMESPACE`).
    pub namespace: String,
    /// Owner of every object (the DaemonSet pod, so they go with it), or none.
    pub owner: Option<OwnerReference>,
    /// Between periodic rounds.
    pub poll: Duration,
    /// How long the node ranked k waits, times k, before it takes an unplaced Immediate
    /// claim (`provision::immediate`).
    pub immediate_step: Duration,
}

impl<S: Store> Controller<S> {
    /// Queues a round when capacity publishing is on.
    pub(crate) fn capacity_changed(&self) {
        if self.config.capacity.is_some() {
            self.queues.capacity.add(ROUND.to_string());
        }
    }

    pub(crate) async fn sync_capacity(&self) -> Result<Requeue> {
        let Some(cfg) = &self.config.capacity else {
            return Ok(Requeue::Done);
        };
        let found = self.found()?;
        let publisher = Publisher {
            driver: found.info.name.clone(),
            node: self.config.node_id.clone(),
            namespace: cfg.namespace.clone(),
            owner: cfg.owner.clone(),
        };
        let classes: Vec<_> = self.cache().classes.values().cloned().collect();
        let measure = CsiMeasure {
            csi: &self.csi,
            default_fs_type: &self.config.default_fs_type,
        };
        let done = capacity::publish(&self.store, &measure, &publisher, &classes).await?;
        if done != capacity::Published::default() {
            info!(
                created = done.created,
                updated = done.updated,
                deleted = done.deleted,
                "CSIStorageCapacity objects published"
            );
        }
        Ok(Requeue::Done)
    }
}

/// Queues a round every `period` until `stop`.
pub(super) fn spawn_poll<S: Store>(
    ctl: &Arc<Controller<S>>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ctl = Arc::clone(ctl);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            debug!("capacity poll");
            ctl.capacity_changed();
        }
    })
}

//! What the loops report under `--metrics-address`: outcomes of provisioning, deletion and
//! expansion by reason, and at scrape time the depth of every work queue, whether the
//! driver has answered and how many loops died.
//!
//! Reasons are few and fixed: `Provisioned`/`Deleted`/`Expanded` on success; on failure the
//! driver's gRPC code (`ResourceExhausted`, `Unavailable`, ...) or one of `InvalidClass`,
//! `InvalidSource`, `InvalidRequest`, `InvalidSecretParameters`, `SecretUnavailable`,
//! `TooSmall`, `InvalidVolume`, `NotExpandable`, so the label set stays small.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use strata_metrics::collect::gauges;

use crate::controller::LoopStatus;
use crate::controller::queue::WorkQueue;
use crate::provision::csi::CsiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
    reason: &'static str,
}

/// The counters; cheap to keep when nothing scrapes them.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    provisioning: Family<Outcome, Counter>,
    deletion: Family<Outcome, Counter>,
    expansion: Family<Outcome, Counter>,
}

/// A failure's reason: the driver's gRPC code, or what failed before or after the call.
pub(crate) fn csi_reason(e: &CsiError) -> &'static str {
    // No code means the call got no answer at all: the driver is not reachable.
    strata_metrics::grpc::code_name(e.code.unwrap_or(14))
}

impl Metrics {
    pub(crate) fn provisioned(&self, ok: Result<(), &'static str>) {
        count(&self.provisioning, ok, "Provisioned");
    }

    pub(crate) fn deleted(&self, ok: Result<(), &'static str>) {
        count(&self.deletion, ok, "Deleted");
    }

    pub(crate) fn expanded(&self, ok: Result<(), &'static str>) {
        count(&self.expansion, ok, "Expanded");
    }

    /// Registers the counters and a collector of the loops' state.
    pub fn register(
        &self,
        registry: &mut Registry,
        status: Arc<LoopStatus>,
        queues: Vec<Arc<WorkQueue>>,
    ) {
        registry.register(
            "provisioning",
            "CreateVolume outcomes for claims, by result and reason",
            self.provisioning.clone(),
        );
        registry.register(
            "deletion",
            "DeleteVolume outcomes for released volumes, by result and reason",
            self.deletion.clone(),
        );
        registry.register(
            "expansion",
            "ControllerExpandVolume outcomes, by result and reason",
            self.expansion.clone(),
        );
        registry.register_collector(Box::new(LoopCollector { status, queues }));
    }
}

fn count(family: &Family<Outcome, Counter>, ok: Result<(), &'static str>, success: &'static str) {
    let labels = match ok {
        Ok(()) => Outcome {
            result: "success",
            reason: success,
        },
        Err(reason) => Outcome {
            result: "failure",
            reason,
        },
    };
    family.get_or_create(&labels).inc();
}

struct LoopCollector {
    status: Arc<LoopStatus>,
    queues: Vec<Arc<WorkQueue>>,
}

impl std::fmt::Debug for LoopCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopCollector").finish_non_exhaustive()
    }
}

impl Collector for LoopCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauges(
            &mut encoder,
            "driver_ready",
            "1 once the CSI driver has answered (provisioning, deletion and expansion run), else 0",
            None,
            [(
                Vec::<(&str, &str)>::new(),
                u64::from(self.status.driver().is_some()),
            )],
        )?;
        gauges(
            &mut encoder,
            "dead_loops",
            "Loop tasks that ended without being stopped (a bug; /healthz fails)",
            None,
            [(
                Vec::<(&str, &str)>::new(),
                self.status.dead_loops().len() as u64,
            )],
        )?;
        gauges(
            &mut encoder,
            "queue_depth",
            "Keys waiting in each work queue",
            None,
            self.queues
                .iter()
                .map(|q| ([("queue", q.name)], q.len() as u64)),
        )
    }
}

/// `/healthz` of the loops: 200 while they all run (also while waiting for the driver),
/// 503 once one died or shutdown began.
pub fn health(status: &LoopStatus) -> strata_metrics::Health {
    let (ok, detail) = status.report();
    strata_metrics::Health { ok, detail }
}

//! `--metrics-address`: what the driver tells Prometheus, and its `/healthz`.
//!
//! Every gRPC call is counted and timed by the shared layer (`strata_metrics::grpc`); the
//! pools are read at scrape time (on the endpoint's blocking thread, since that means
//! statvfs and a read of the state database): size, free space, provisioned bytes, the
//! provisioning limit (size times overcommit), and volumes by phase. A pool whose
//! filesystem cannot be read reports `strata_csi_pool_up 0` and no sizes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use csi_proto as pb;
use csi_proto::tonic::server::NamedService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use strata_metrics::collect::gauges;
use strata_metrics::grpc::{GrpcMetrics, GrpcMetricsLayer};
use strata_metrics::{Endpoint, Health};

use crate::driver::Driver;
use crate::service::Service;
use crate::state::Phase;

/// The gRPC services the driver serves; calls to others are labelled `unknown`.
const SERVICES: [&str; 5] = [
    <pb::identity_server::IdentityServer<Service> as NamedService>::NAME,
    <pb::controller_server::ControllerServer<Service> as NamedService>::NAME,
    <pb::node_server::NodeServer<Service> as NamedService>::NAME,
    <pb::group_controller_server::GroupControllerServer<Service> as NamedService>::NAME,
    <pb::snapshot_metadata_server::SnapshotMetadataServer<Service> as NamedService>::NAME,
];

/// The endpoint (when asked for) and the layer that feeds it; hold both while serving.
pub struct Metrics {
    pub layer: GrpcMetricsLayer,
    endpoint: Option<Endpoint>,
    serving: Arc<AtomicBool>,
}

impl Metrics {
    /// Binds `addr` when given; without it the layer passes calls through and nothing
    /// listens. Fails when the address cannot be bound, before the driver takes its socket.
    pub async fn start(addr: Option<SocketAddr>, driver: &Arc<Driver>) -> anyhow::Result<Metrics> {
        let serving = Arc::new(AtomicBool::new(false));
        let Some(addr) = addr else {
            return Ok(Metrics {
                layer: GrpcMetricsLayer::default(),
                endpoint: None,
                serving,
            });
        };
        let mut registry = Registry::with_prefix("strata_csi");
        registry.register(
            "build",
            "The driver's version and commit",
            Info::new(vec![("version", crate::config::VERSION)]),
        );
        let grpc = GrpcMetrics::register(&mut registry, &SERVICES);
        registry.register_collector(Box::new(PoolCollector(Arc::clone(driver))));
        let up = Arc::clone(&serving);
        let pools = driver.pools.iter().count();
        let health = Arc::new(move || {
            if up.load(Ordering::Acquire) {
                Health::ok(format!("csi: serving\npools: {pools}"))
            } else {
                Health::failing("csi: not serving")
            }
        });
        let endpoint = Endpoint::bind(addr, registry, health)
            .await
            .with_context(|| format!("binding --metrics-address {addr}"))?;
        Ok(Metrics {
            layer: GrpcMetricsLayer::new(Some(grpc)),
            endpoint: Some(endpoint),
            serving,
        })
    }

    /// Called with true once the CSI socket accepts calls, false when it stops.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    /// The bound address, if an endpoint listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().map(Endpoint::local_addr)
    }
}

/// Reads the pools at scrape time.
struct PoolCollector(Arc<Driver>);

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCollector").finish_non_exhaustive()
    }
}

type PoolLabel<'a> = [(&'static str, &'a str); 1];

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &self.0;
        let mut up = Vec::new();
        let mut size = Vec::new();
        let mut free = Vec::new();
        let mut limit = Vec::new();
        let mut provisioned = Vec::new();
        for pool in d.pools.iter() {
            let name = pool.pool();
            let label: PoolLabel<'_> = [("pool", name)];
            provisioned.push((label, d.store.provisioned(name)));
            match pool.check().and_then(|()| pool.space()) {
                Ok(space) => {
                    up.push((label, 1u64));
                    size.push((label, space.total_bytes));
                    free.push((label, space.free_bytes));
                    limit.push((label, d.provision_limit(name, &space)));
                }
                Err(e) => {
                    tracing::warn!(pool = name, error = %strata_report::chain(&e), "pool unreadable for metrics");
                    up.push((label, 0u64));
                }
            }
        }
        let kinds = d
            .pools
            .iter()
            .map(|p| ([("pool", p.pool()), ("kind", p.kind())], 1u64));
        gauges(
            &mut encoder,
            "pool_info",
            "A configured pool and its backend kind",
            None,
            kinds,
        )?;
        gauges(
            &mut encoder,
            "pool_up",
            "1 when the pool's filesystem answers, else 0",
            None,
            up,
        )?;
        gauges(
            &mut encoder,
            "pool_size",
            "Size of the pool's filesystem",
            Some(&Unit::Bytes),
            size,
        )?;
        gauges(
            &mut encoder,
            "pool_free",
            "Free space of the pool's filesystem",
            Some(&Unit::Bytes),
            free,
        )?;
        gauges(
            &mut encoder,
            "pool_limit",
            "Most bytes the pool's volumes may add up to (size times overcommit)",
            Some(&Unit::Bytes),
            limit,
        )?;
        gauges(
            &mut encoder,
            "pool_provisioned",
            "Sum of the capacities of the pool's volumes",
            Some(&Unit::Bytes),
            provisioned,
        )?;
        match d.store.all_volumes() {
            Ok(volumes) => {
                let mut counts = Vec::new();
                for pool in d.pools.iter() {
                    for (phase, name) in [
                        (Phase::Creating, "Creating"),
                        (Phase::Ready, "Ready"),
                        (Phase::Deleting, "Deleting"),
                    ] {
                        let n = volumes
                            .iter()
                            .filter(|v| v.pool == pool.pool() && v.phase == phase)
                            .count() as u64;
                        counts.push(([("pool", pool.pool()), ("phase", name)], n));
                    }
                }
                gauges(
                    &mut encoder,
                    "pool_volumes",
                    "Volumes in the pool by phase",
                    None,
                    counts,
                )?;
            }
            Err(e) => {
                tracing::warn!(error = %strata_report::chain(&e), "reading volumes for metrics failed")
            }
        }
        Ok(())
    }
}

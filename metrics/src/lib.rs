//! Prometheus metrics and `/healthz` for Strata's daemons (`strata-csi`,
//! `strata-provisioner`), so both expose them the same way.
//!
//! - [`Endpoint`]: the HTTP listener behind `--metrics-address`: `GET /metrics` (OpenMetrics
//!   text of one `prometheus_client` registry, encoded off the async runtime because
//!   collectors may read the disk) and `GET /healthz` (200 or 503 from the daemon's check).
//! - [`grpc::GrpcMetricsLayer`]: a tower layer around a tonic server that counts every call
//!   and times it by service, method and gRPC status code.
//! - [`scrape`]: a small client and text parser, for tests and tools that read an endpoint.
//!
//! Knows nothing of volumes or claims: each daemon registers its own metrics.
#![forbid(unsafe_code)]

pub mod collect;
pub mod grpc;
pub mod scrape;
mod server;

pub use prometheus_client;
pub use server::{Endpoint, Health, HealthCheck};

/// The log message a daemon writes once its endpoint listens; the line carries
/// `address=IP:PORT`, which [`scrape::address_from_log`] finds (useful with port 0).
pub const LISTENING: &str = "serving metrics";

//! Identity service: plugin name and version, capabilities, and a Probe that really checks
//! the pools and the state database.

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};
use pb::plugin_capability::{Service as Svc, Type, VolumeExpansion, service, volume_expansion};

use crate::error::Error;
use crate::service::Service;

#[tonic::async_trait]
impl pb::identity_server::Identity for Service {
    #[tracing::instrument(skip_all)]
    async fn get_plugin_info(
        &self,
        _req: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: self.d.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_plugin_capabilities(
        &self,
        _req: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        let svc = |t: service::Type| pb::PluginCapability {
            r#type: Some(Type::Service(Svc { r#type: t as i32 })),
        };
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![
                svc(service::Type::ControllerService),
                svc(service::Type::VolumeAccessibilityConstraints),
                svc(service::Type::GroupControllerService),
                pb::PluginCapability {
                    r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        }))
    }

    /// "Unhealthy or missing dependency → FAILED_PRECONDITION."
    #[tracing::instrument(skip_all)]
    async fn probe(
        &self,
        _req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        self.run(|d| {
            for pool in d.pools.iter() {
                pool.check().map_err(|e| {
                    Error::NotReady(format!("pool {}: {}", pool.pool(), crate::error::chain(&e)))
                })?;
            }
            d.store.check().map_err(|e| {
                Error::NotReady(format!("state database: {}", crate::error::chain(&e)))
            })?;
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}

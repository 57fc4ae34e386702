//! Node service: stage, publish, stats, expansion, info. Handlers convert the request
//! (`request.rs`), call the driver and convert the answer.

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};
use pb::node_service_capability::{Rpc, Type, rpc};

use crate::convert;
use crate::request::{NodeExpand, PublishArgs, StageArgs, Unpublish, Unstage, VolumeAt};
use crate::service::{Service, domain};

pub const CAPABILITIES: &[rpc::Type] = &[
    rpc::Type::StageUnstageVolume,
    rpc::Type::GetVolumeStats,
    rpc::Type::ExpandVolume,
    rpc::Type::VolumeCondition,
    rpc::Type::SingleNodeMultiWriter,
    rpc::Type::VolumeMountGroup,
];

#[tonic::async_trait]
impl pb::node_server::Node for Service {
    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, staging = %req.get_ref().staging_target_path))]
    async fn node_stage_volume(
        &self,
        req: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let args: StageArgs = domain(req.into_inner())?;
        self.run(move |d| d.stage(args)).await?;
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, staging = %req.get_ref().staging_target_path))]
    async fn node_unstage_volume(
        &self,
        req: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let a: Unstage = domain(req.into_inner())?;
        self.run(move |d| d.unstage(&a.volume_id, &a.staging))
            .await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, target = %req.get_ref().target_path))]
    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let args: PublishArgs = domain(req.into_inner())?;
        if args.is_quick() {
            self.run_quick(|d| d.node_publish(args))?;
        } else {
            self.run(move |d| d.node_publish(args)).await?;
        }
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, target = %req.get_ref().target_path))]
    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let a: Unpublish = domain(req.into_inner())?;
        if self.d.unpublish_is_quick(&a.volume_id, &a.target) {
            self.run_quick(|d| d.unpublish(&a.volume_id, &a.target))?;
        } else {
            self.run(move |d| d.unpublish(&a.volume_id, &a.target))
                .await?;
        }
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, path = %req.get_ref().volume_path))]
    async fn node_get_volume_stats(
        &self,
        req: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        use pb::volume_usage::Unit;
        let a: VolumeAt = domain(req.into_inner())?;
        let s = self.run(move |d| d.stats(&a.volume_id, &a.path)).await?;
        let mut usage = vec![pb::VolumeUsage {
            total: s.bytes_total as i64,
            available: s.bytes_available as i64,
            used: s.bytes_used as i64,
            unit: Unit::Bytes as i32,
        }];
        if !s.block && s.inodes_total > 0 {
            usage.push(pb::VolumeUsage {
                total: s.inodes_total as i64,
                available: s.inodes_available as i64,
                used: s.inodes_used as i64,
                unit: Unit::Inodes as i32,
            });
        }
        Ok(Response::new(pb::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(pb::VolumeCondition {
                abnormal: s.abnormal,
                message: s.message,
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, path = %req.get_ref().volume_path))]
    async fn node_expand_volume(
        &self,
        req: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        let a: NodeExpand = domain(req.into_inner())?;
        let cap = self
            .run(move |d| d.node_expand(&a.volume_id, &a.path, a.required, a.block))
            .await?;
        Ok(Response::new(pb::NodeExpandVolumeResponse {
            capacity_bytes: cap as i64,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn node_get_capabilities(
        &self,
        _req: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|t| pb::NodeServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn node_get_info(
        &self,
        _req: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.d.node_id.clone(),
            max_volumes_per_node: self.d.max_volumes_per_node,
            accessible_topology: Some(convert::topology(&self.d.node_id)),
        }))
    }
}

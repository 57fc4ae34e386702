//! Node service: stage, publish, stats, expansion, info.

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};
use pb::node_service_capability::{Rpc, Type, rpc};

use crate::convert;
use crate::error::Error;
use crate::node_ops::{CTX_EPHEMERAL, PublishArgs, StageArgs};
use crate::service::{Service, status};
use crate::validate;

pub const CAPABILITIES: &[rpc::Type] = &[
    rpc::Type::StageUnstageVolume,
    rpc::Type::GetVolumeStats,
    rpc::Type::ExpandVolume,
    rpc::Type::VolumeCondition,
    rpc::Type::SingleNodeMultiWriter,
    rpc::Type::VolumeMountGroup,
];

fn bad(e: Error) -> Status {
    status(e)
}

#[tonic::async_trait]
impl pb::node_server::Node for Service {
    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, staging = %req.get_ref().staging_target_path))]
    async fn node_stage_volume(
        &self,
        req: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        let args = (|| {
            validate::map("secrets", &r.secrets)?;
            validate::id("volume_id", &r.volume_id)?;
            let staging = validate::co_path("staging_target_path", &r.staging_target_path)?;
            let cap = convert::required_cap("volume_capability", &r.volume_capability)?;
            validate::map("volume_context", &r.volume_context)?;
            validate::map("publish_context", &r.publish_context)?;
            Ok(StageArgs {
                volume_id: r.volume_id.clone(),
                staging,
                cap,
            })
        })()
        .map_err(bad)?;
        self.run(move |d| d.stage(args)).await?;
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, staging = %req.get_ref().staging_target_path))]
    async fn node_unstage_volume(
        &self,
        req: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        validate::id("volume_id", &r.volume_id).map_err(bad)?;
        let staging =
            validate::co_path("staging_target_path", &r.staging_target_path).map_err(bad)?;
        self.run(move |d| d.unstage(&r.volume_id, &staging)).await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, target = %req.get_ref().target_path))]
    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        let ephemeral = r
            .volume_context
            .get(CTX_EPHEMERAL)
            .is_some_and(|v| v == "true");
        let args = (|| {
            validate::map("secrets", &r.secrets)?;
            validate::id("volume_id", &r.volume_id)?;
            let target = validate::co_path("target_path", &r.target_path)?;
            let cap = convert::required_cap("volume_capability", &r.volume_capability)?;
            validate::map("volume_context", &r.volume_context)?;
            validate::map("publish_context", &r.publish_context)?;
            let staging = if ephemeral {
                std::path::PathBuf::new()
            } else if r.staging_target_path.is_empty() {
                // Spec table: STAGE_UNSTAGE_VOLUME is advertised but no staging path set.
                return Err(Error::Precondition(
                    "staging_target_path is required: this node stages volumes".into(),
                ));
            } else {
                validate::co_path("staging_target_path", &r.staging_target_path)?
            };
            Ok(PublishArgs {
                volume_id: r.volume_id.clone(),
                staging,
                target,
                cap,
                readonly: r.readonly,
                context: r
                    .volume_context
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
        })()
        .map_err(bad)?;
        if ephemeral {
            self.run(move |d| d.publish_ephemeral(args)).await?;
        } else {
            self.run(move |d| d.publish(args)).await?;
        }
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, target = %req.get_ref().target_path))]
    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        validate::id("volume_id", &r.volume_id).map_err(bad)?;
        let target = validate::co_path("target_path", &r.target_path).map_err(bad)?;
        self.run(move |d| d.unpublish(&r.volume_id, &target))
            .await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id, path = %req.get_ref().volume_path))]
    async fn node_get_volume_stats(
        &self,
        req: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        use pb::volume_usage::Unit;
        let r = req.into_inner();
        validate::id("volume_id", &r.volume_id).map_err(bad)?;
        let path = validate::volume_path(&r.volume_id, &r.volume_path).map_err(bad)?;
        if !r.staging_target_path.is_empty() {
            validate::co_path("staging_target_path", &r.staging_target_path).map_err(bad)?;
        }
        let s = self.run(move |d| d.stats(&r.volume_id, &path)).await?;
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
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        validate::id("volume_id", &r.volume_id).map_err(bad)?;
        let path = validate::volume_path(&r.volume_id, &r.volume_path).map_err(bad)?;
        if !r.staging_target_path.is_empty() {
            validate::co_path("staging_target_path", &r.staging_target_path).map_err(bad)?;
        }
        let (required, _limit) = convert::range(&r.capacity_range).map_err(bad)?;
        let block = match &r.volume_capability {
            Some(c) => Some(convert::cap("volume_capability", c).map_err(bad)?.block),
            None => None,
        };
        let cap = self
            .run(move |d| d.node_expand(&r.volume_id, &path, required, block))
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

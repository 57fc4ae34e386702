//! Controller service: volumes, snapshots, capacity. Each handler converts the request
//! into a domain value (`request.rs`; INVALID_ARGUMENT names the field), calls the
//! driver on the blocking pool and converts the answer back.

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};
use pb::controller_service_capability::{Rpc, Type, rpc};

use crate::convert;
use crate::error::Error;
use crate::queries::VolumeStatus;
use crate::request::{
    CapacityQuery, ControllerExpand, CreateSnapshot, ListSnapshots, ModifyVolume, ObjectRef, Page,
    ValidateCaps,
};
use crate::service::{Service, domain, status};
use crate::volumes::CreateArgs;

/// Capabilities advertised, and so implemented. PUBLISH_UNPUBLISH_VOLUME is not: a local
/// driver attaches on the node, so ControllerPublish/Unpublish answer UNIMPLEMENTED.
pub const CAPABILITIES: &[rpc::Type] = &[
    rpc::Type::CreateDeleteVolume,
    rpc::Type::ListVolumes,
    rpc::Type::GetCapacity,
    rpc::Type::CreateDeleteSnapshot,
    rpc::Type::ListSnapshots,
    rpc::Type::CloneVolume,
    rpc::Type::ExpandVolume,
    rpc::Type::VolumeCondition,
    rpc::Type::GetVolume,
    rpc::Type::SingleNodeMultiWriter,
    rpc::Type::ModifyVolume,
];

/// Alpha capabilities of the spec, advertised and served only with
/// `--enable-alpha-capabilities`.
pub const ALPHA_CAPABILITIES: &[rpc::Type] = &[rpc::Type::GetSnapshot];

/// The capabilities this driver advertises.
pub fn capabilities(alpha: bool) -> Vec<rpc::Type> {
    let mut caps = CAPABILITIES.to_vec();
    if alpha {
        caps.extend_from_slice(ALPHA_CAPABILITIES);
    }
    caps
}

/// A volume's status as ListVolumes and ControllerGetVolume report it.
fn volume_status(
    s: &VolumeStatus,
    node_id: &str,
) -> (pb::Volume, Vec<String>, pb::VolumeCondition) {
    (
        convert::volume(&s.volume, node_id),
        if s.published {
            vec![node_id.to_string()]
        } else {
            Vec::new()
        },
        pb::VolumeCondition {
            abnormal: s.abnormal,
            message: s.message.clone(),
        },
    )
}

#[tonic::async_trait]
impl pb::controller_server::Controller for Service {
    #[tracing::instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let args: CreateArgs = domain(req.into_inner())?;
        let v = self.run(move |d| d.create_volume(args)).await?;
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(convert::volume(&v, &self.d.node_id)),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let v: ObjectRef = domain(req.into_inner())?;
        self.run(move |d| d.delete_volume(&v.id)).await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn controller_publish_volume(
        &self,
        _req: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        Err(status(Error::Unimplemented(
            "ControllerPublishVolume (PUBLISH_UNPUBLISH_VOLUME is not advertised)",
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn controller_unpublish_volume(
        &self,
        _req: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        Err(status(Error::Unimplemented(
            "ControllerUnpublishVolume (PUBLISH_UNPUBLISH_VOLUME is not advertised)",
        )))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        let args: ValidateCaps = domain(&r)?;
        let problem = self.run(move |d| d.check_capabilities(&args)).await?;
        let resp = match problem {
            Some(message) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let page: Page = domain(req.into_inner())?;
        let (list, next_token) = self.run(move |d| d.list_volumes(&page)).await?;
        let node = &self.d.node_id;
        let entries = list
            .iter()
            .map(|s| {
                let (volume, published_node_ids, condition) = volume_status(s, node);
                pb::list_volumes_response::Entry {
                    volume: Some(volume),
                    status: Some(pb::list_volumes_response::VolumeStatus {
                        published_node_ids,
                        volume_condition: Some(condition),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_capacity(
        &self,
        req: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let q: CapacityQuery = domain(req.into_inner())?;
        let (avail, max, min) = self
            .run(move |d| d.capacity(&q.parameters, &q.caps, q.topology.as_ref()))
            .await?;
        Ok(Response::new(pb::GetCapacityResponse {
            available_capacity: avail as i64,
            maximum_volume_size: Some(max as i64),
            minimum_volume_size: Some(min as i64),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn controller_get_capabilities(
        &self,
        _req: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: capabilities(self.d.alpha_capabilities)
                .iter()
                .map(|t| pb::ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(name = %req.get_ref().name, volume_id = %req.get_ref().source_volume_id))]
    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let a: CreateSnapshot = domain(req.into_inner())?;
        let s = self
            .run(move |d| d.create_snapshot(&a.name, &a.source_volume_id))
            .await?;
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(convert::snapshot(&s)),
        }))
    }

    #[tracing::instrument(skip_all, fields(snapshot_id = %req.get_ref().snapshot_id))]
    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let s: ObjectRef = domain(req.into_inner())?;
        self.run(move |d| d.delete_snapshot(&s.id)).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let q: ListSnapshots = domain(req.into_inner())?;
        let (list, next_token) = self.run(move |d| d.list_snapshots(&q)).await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            entries: list
                .iter()
                .map(|s| pb::list_snapshots_response::Entry {
                    snapshot: Some(convert::snapshot(s)),
                })
                .collect(),
            next_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(snapshot_id = %req.get_ref().snapshot_id))]
    async fn get_snapshot(
        &self,
        req: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        self.d
            .require_alpha(
                "GetSnapshot (GET_SNAPSHOT is alpha; start with --enable-alpha-capabilities)",
            )
            .map_err(status)?;
        let s: ObjectRef = domain(req.into_inner())?;
        let s = self.run(move |d| d.get_snapshot(&s.id)).await?;
        Ok(Response::new(pb::GetSnapshotResponse {
            snapshot: Some(convert::snapshot(&s)),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let a: ControllerExpand = domain(req.into_inner())?;
        let (cap, node) = self
            .run(move |d| d.expand_volume(&a.volume_id, a.required, a.limit, a.block))
            .await?;
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: cap as i64,
            node_expansion_required: node,
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn controller_get_volume(
        &self,
        req: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        let v: ObjectRef = domain(req.into_inner())?;
        let s = self.run(move |d| d.volume_status(&v.id)).await?;
        let (volume, published_node_ids, condition) = volume_status(&s, &self.d.node_id);
        Ok(Response::new(pb::ControllerGetVolumeResponse {
            volume: Some(volume),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids,
                volume_condition: Some(condition),
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn controller_modify_volume(
        &self,
        req: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Result<Response<pb::ControllerModifyVolumeResponse>, Status> {
        let a: ModifyVolume = domain(req.into_inner())?;
        self.run(move |d| d.modify_volume(&a.volume_id, &a.mutable_parameters))
            .await?;
        Ok(Response::new(pb::ControllerModifyVolumeResponse {}))
    }
}

//! GroupController service: write-order consistent group snapshots.

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};
use pb::group_controller_service_capability::{Rpc, Type, rpc};

use crate::convert;
use crate::request::{CreateGroup, GroupRef};
use crate::service::{Service, domain};
use crate::state::{GroupRecord, SnapshotRecord};

fn group(g: &GroupRecord, members: &[SnapshotRecord]) -> pb::VolumeGroupSnapshot {
    pb::VolumeGroupSnapshot {
        group_snapshot_id: g.id.clone(),
        snapshots: members.iter().map(convert::snapshot).collect(),
        creation_time: Some(convert::timestamp(g.created_unix)),
        ready_to_use: g.phase == crate::state::Phase::Ready,
    }
}

#[tonic::async_trait]
impl pb::group_controller_server::GroupController for Service {
    #[tracing::instrument(skip_all)]
    async fn group_controller_get_capabilities(
        &self,
        _req: Request<pb::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::GroupControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::GroupControllerGetCapabilitiesResponse {
            capabilities: vec![pb::GroupControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }],
        }))
    }

    #[tracing::instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn create_volume_group_snapshot(
        &self,
        req: Request<pb::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<pb::CreateVolumeGroupSnapshotResponse>, Status> {
        let r: CreateGroup = domain(req.into_inner())?;
        let (g, members) = self
            .run(move |d| {
                let g = d.create_group(&r.name, &r.source_volume_ids, &r.parameters)?;
                let members = d.group_members(&g)?;
                Ok((g, members))
            })
            .await?;
        Ok(Response::new(pb::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(group(&g, &members)),
        }))
    }

    #[tracing::instrument(skip_all, fields(group_snapshot_id = %req.get_ref().group_snapshot_id))]
    async fn delete_volume_group_snapshot(
        &self,
        req: Request<pb::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<pb::DeleteVolumeGroupSnapshotResponse>, Status> {
        let r: GroupRef = domain(req.into_inner())?;
        self.run(move |d| d.delete_group(&r.group_snapshot_id, &r.snapshot_ids))
            .await?;
        Ok(Response::new(pb::DeleteVolumeGroupSnapshotResponse {}))
    }

    #[tracing::instrument(skip_all, fields(group_snapshot_id = %req.get_ref().group_snapshot_id))]
    async fn get_volume_group_snapshot(
        &self,
        req: Request<pb::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<pb::GetVolumeGroupSnapshotResponse>, Status> {
        let r: GroupRef = domain(req.into_inner())?;
        let (g, members) = self
            .run(move |d| d.get_group(&r.group_snapshot_id, &r.snapshot_ids))
            .await?;
        Ok(Response::new(pb::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(group(&g, &members)),
        }))
    }
}

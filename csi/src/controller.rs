//! Controller service: volumes, snapshots, capacity. Each handler checks the request's
//! fields (INVALID_ARGUMENT names the field), then hands a domain call to the driver.

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};
use pb::controller_service_capability::{Rpc, Type, rpc};

use crate::convert;
use crate::driver::Lookup;
use crate::error::Error;
use crate::service::{Service, status};
use crate::state::{Phase, SnapshotRecord};
use crate::validate;
use crate::volumes::{self, CreateArgs};

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

fn bad(e: Error) -> Status {
    status(e)
}

#[tonic::async_trait]
impl pb::controller_server::Controller for Service {
    #[tracing::instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        let args = (|| {
            validate::map("secrets", &r.secrets)?;
            validate::name("name", &r.name)?;
            validate::map("parameters", &r.parameters)?;
            validate::map("mutable_parameters", &r.mutable_parameters)?;
            let caps = convert::caps("volume_capabilities", &r.volume_capabilities)?;
            for c in &caps {
                c.supported()
                    .map_err(|m| Error::invalid("volume_capabilities", m))?;
            }
            let (required, limit) = convert::range(&r.capacity_range)?;
            let (requisite, preferred) = match &r.accessibility_requirements {
                Some(t) if t.requisite.is_empty() && t.preferred.is_empty() => {
                    return Err(Error::invalid(
                        "accessibility_requirements",
                        "requisite or preferred must be set",
                    ));
                }
                Some(t) => (
                    convert::topologies(&t.requisite),
                    convert::topologies(&t.preferred),
                ),
                None => (Vec::new(), Vec::new()),
            };
            Ok(CreateArgs {
                name: r.name.clone(),
                required,
                limit,
                caps,
                parameters: r.parameters.clone(),
                mutable_parameters: r.mutable_parameters.clone(),
                source: convert::source_of(&r.volume_content_source)?,
                requisite,
                preferred,
                ephemeral: None,
            })
        })()
        .map_err(bad)?;
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
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        let id = r.volume_id;
        validate::id("volume_id", &id).map_err(bad)?;
        self.run(move |d| d.delete_volume(&id)).await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn controller_publish_volume(
        &self,
        _req: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        Err(bad(Error::Unimplemented(
            "ControllerPublishVolume (PUBLISH_UNPUBLISH_VOLUME is not advertised)",
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn controller_unpublish_volume(
        &self,
        _req: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        Err(bad(Error::Unimplemented(
            "ControllerUnpublishVolume (PUBLISH_UNPUBLISH_VOLUME is not advertised)",
        )))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        validate::id("volume_id", &r.volume_id).map_err(bad)?;
        let caps = convert::caps("volume_capabilities", &r.volume_capabilities).map_err(bad)?;
        validate::map("volume_context", &r.volume_context).map_err(bad)?;
        validate::map("parameters", &r.parameters).map_err(bad)?;
        let id = r.volume_id.clone();
        let (v, tree) = self
            .run(move |d| {
                let v = d.ready_volume(&id)?;
                let tree = d.is_tree(&v)?;
                Ok((v, tree))
            })
            .await?;
        let mut problem = None;
        for c in &caps {
            if let Err(m) = c.supported() {
                problem = Some(m);
                break;
            }
            if c.block && tree {
                problem = Some(format!(
                    "volume is a directory in pool {}; Block access needs an image pool",
                    v.pool
                ));
                break;
            }
            if !c.block && !c.fs_type.is_empty() && c.fs_type != v.fs_type {
                problem = Some(format!("volume holds {}, not {}", v.fs_type, c.fs_type));
                break;
            }
        }
        if problem.is_none() {
            for (k, val) in &r.parameters {
                let known = v.parameters.get(k);
                if known.is_some_and(|x| x != val)
                    || (known.is_none() && k != volumes::PARAM_DIRECT_IO)
                {
                    problem = Some(format!("parameter {k:?} does not match the volume"));
                    break;
                }
            }
        }
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
        let r = req.into_inner();
        let limit = convert::max_entries(r.max_entries).map_err(bad)?;
        let after = convert::token_decode(&r.starting_token).map_err(bad)?;
        let node = self.d.node_id.clone();
        let (entries, next) = self
            .run(move |d| {
                let mut out = Vec::new();
                let mut cursor = after;
                let mut next = String::new();
                'pages: loop {
                    let page = d.store.volumes_after(&cursor, limit + 1)?;
                    if page.is_empty() {
                        break;
                    }
                    for v in &page {
                        cursor = v.id.clone();
                        if v.phase != Phase::Ready || v.ephemeral.is_some() {
                            continue;
                        }
                        if out.len() as u32 == limit {
                            next = convert::token_encode(&out_last(&out));
                            break 'pages;
                        }
                        let (abnormal, message) = d.condition(v)?;
                        let published = d.store.stage(&v.id)?.is_some();
                        out.push(pb::list_volumes_response::Entry {
                            volume: Some(convert::volume(v, &node)),
                            status: Some(pb::list_volumes_response::VolumeStatus {
                                published_node_ids: if published {
                                    vec![node.clone()]
                                } else {
                                    Vec::new()
                                },
                                volume_condition: Some(pb::VolumeCondition { abnormal, message }),
                            }),
                        });
                    }
                }
                Ok((out, next))
            })
            .await?;
        Ok(Response::new(pb::ListVolumesResponse {
            entries,
            next_token: next,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_capacity(
        &self,
        req: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let r = req.into_inner();
        validate::map("parameters", &r.parameters).map_err(bad)?;
        let caps: Vec<_> = r
            .volume_capabilities
            .iter()
            .map(|c| convert::cap("volume_capabilities", c))
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        let topo = r.accessible_topology.map(|t| t.segments);
        let (avail, max, min) = self
            .run(move |d| d.capacity(&r.parameters, &caps, topo.as_ref()))
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
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        validate::name("name", &r.name).map_err(bad)?;
        validate::id("source_volume_id", &r.source_volume_id).map_err(bad)?;
        validate::map("parameters", &r.parameters).map_err(bad)?;
        if let Some(k) = r
            .parameters
            .keys()
            .find(|k| !k.starts_with("csi.storage.k8s.io/"))
        {
            return Err(bad(Error::invalid(
                "parameters",
                format!("unknown parameter {k:?}"),
            )));
        }
        let s = self
            .run(move |d| d.create_snapshot(&r.name, &r.source_volume_id))
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
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        let id = r.snapshot_id;
        validate::id("snapshot_id", &id).map_err(bad)?;
        self.run(move |d| d.delete_snapshot(&id)).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        let limit = convert::max_entries(r.max_entries).map_err(bad)?;
        let after = convert::token_decode(&r.starting_token).map_err(bad)?;
        validate::bounded("snapshot_id", &r.snapshot_id).map_err(bad)?;
        validate::bounded("source_volume_id", &r.source_volume_id).map_err(bad)?;
        let (entries, next) = self
            .run(move |d| {
                let visible = |s: &SnapshotRecord| {
                    s.phase == Phase::Ready
                        && (r.source_volume_id.is_empty()
                            || s.source_volume_id == r.source_volume_id)
                        && s.id > after
                };
                if !r.snapshot_id.is_empty() {
                    // Filter by id: an unknown id is an empty list, not an error.
                    let found = match d.lookup_snapshot(&r.snapshot_id)? {
                        Lookup::Found(s) if visible(&s) => vec![s],
                        _ => Vec::new(),
                    };
                    return Ok((found, String::new()));
                }
                let mut out = Vec::new();
                let mut cursor = after.clone();
                loop {
                    let page = if r.source_volume_id.is_empty() {
                        d.store.snapshots_after(&cursor, limit + 1)?
                    } else {
                        d.store
                            .snapshots_of(&r.source_volume_id, &cursor, limit + 1)?
                    };
                    if page.is_empty() {
                        return Ok((out, String::new()));
                    }
                    for s in page {
                        cursor = s.id.clone();
                        if !visible(&s) {
                            continue;
                        }
                        if out.len() as u32 == limit {
                            let last: &SnapshotRecord = out.last().expect("limit > 0");
                            let next = convert::token_encode(&last.id);
                            return Ok((out, next));
                        }
                        out.push(s);
                    }
                }
            })
            .await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            entries: entries
                .iter()
                .map(|s| pb::list_snapshots_response::Entry {
                    snapshot: Some(convert::snapshot(s)),
                })
                .collect(),
            next_token: next,
        }))
    }

    #[tracing::instrument(skip_all, fields(snapshot_id = %req.get_ref().snapshot_id))]
    async fn get_snapshot(
        &self,
        req: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        if !self.d.alpha_capabilities {
            return Err(bad(Error::Unimplemented(
                "GetSnapshot (GET_SNAPSHOT is alpha; start with --enable-alpha-capabilities)",
            )));
        }
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        let id = r.snapshot_id;
        validate::id("snapshot_id", &id).map_err(bad)?;
        let s = self
            .run(move |d| match d.lookup_snapshot(&id)? {
                Lookup::Found(s) if s.phase != Phase::Deleting => Ok(s),
                _ => Err(Error::SnapshotNotFound(id)),
            })
            .await?;
        Ok(Response::new(pb::GetSnapshotResponse {
            snapshot: Some(convert::snapshot(&s)),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        validate::id("volume_id", &r.volume_id).map_err(bad)?;
        if r.capacity_range.is_none() {
            return Err(bad(Error::invalid(
                "capacity_range",
                "required field is missing",
            )));
        }
        let (required, limit) = convert::range(&r.capacity_range).map_err(bad)?;
        let block = match &r.volume_capability {
            Some(c) => Some(convert::cap("volume_capability", c).map_err(bad)?.block),
            None => None,
        };
        let (cap, node) = self
            .run(move |d| d.expand_volume(&r.volume_id, required, limit, block))
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
        let id = req.into_inner().volume_id;
        validate::id("volume_id", &id).map_err(bad)?;
        let (v, abnormal, message, staged) = self
            .run(move |d| {
                let v = d.ready_volume(&id)?;
                let (abnormal, message) = d.condition(&v)?;
                let staged = d.store.stage(&v.id)?.is_some();
                Ok((v, abnormal, message, staged))
            })
            .await?;
        Ok(Response::new(pb::ControllerGetVolumeResponse {
            volume: Some(convert::volume(&v, &self.d.node_id)),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: if staged {
                    vec![self.d.node_id.clone()]
                } else {
                    Vec::new()
                },
                volume_condition: Some(pb::VolumeCondition { abnormal, message }),
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %req.get_ref().volume_id))]
    async fn controller_modify_volume(
        &self,
        req: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Result<Response<pb::ControllerModifyVolumeResponse>, Status> {
        let r = req.into_inner();
        validate::map("secrets", &r.secrets).map_err(bad)?;
        validate::id("volume_id", &r.volume_id).map_err(bad)?;
        validate::map("mutable_parameters", &r.mutable_parameters).map_err(bad)?;
        if r.mutable_parameters.is_empty() {
            return Err(bad(Error::invalid(
                "mutable_parameters",
                "required field is missing",
            )));
        }
        volumes::parse_mutable(&r.mutable_parameters).map_err(bad)?;
        self.run(move |d| d.modify_volume(&r.volume_id, &r.mutable_parameters))
            .await?;
        Ok(Response::new(pb::ControllerModifyVolumeResponse {}))
    }
}

fn out_last(out: &[pb::list_volumes_response::Entry]) -> String {
    out.last()
        .and_then(|e| e.volume.as_ref())
        .map(|v| v.volume_id.clone())
        .unwrap_or_default()
}

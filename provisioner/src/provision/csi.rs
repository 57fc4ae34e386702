//! The CSI gRPC client: the only place that knows protobuf. It turns the plain requests of
//! `provision::request` into `csi.v1` messages and the answers back into plain values.

use std::collections::HashMap;
use std::time::Duration;

use csi_proto::controller_client::ControllerClient;
use csi_proto::identity_client::IdentityClient;
use csi_proto::tonic::transport::{Channel, Endpoint};
use csi_proto::tonic::{Code, Request, Status};
use csi_proto::{controller_service_capability, plugin_capability, volume_capability};

use super::request::{
    AccessMode, AccessType, Capability, ContentSource, CreateRequest, DriverInfo, Topology,
};
use super::volume::CreatedVolume;
use crate::secrets::SecretData;

/// A snapshot as the driver describes it (CreateSnapshot, ListSnapshots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    pub size_bytes: i64,
    /// Nanoseconds since the Unix epoch, as VolumeSnapshotContent.status.creationTime.
    pub creation_time: Option<i64>,
    pub ready_to_use: bool,
}

impl SnapshotInfo {
    fn from_proto(s: csi_proto::Snapshot) -> Self {
        SnapshotInfo {
            snapshot_id: s.snapshot_id,
            size_bytes: s.size_bytes,
            creation_time: s.creation_time.map(|t| {
                t.seconds
                    .saturating_mul(1_000_000_000)
                    .saturating_add(i64::from(t.nanos))
            }),
            ready_to_use: s.ready_to_use,
        }
    }
}

/// A failed CSI call: the gRPC code (None when the call never got an answer) and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call}: rpc error: code = {code_name} desc = {message}")]
pub struct CsiError {
    pub call: &'static str,
    pub code: Option<i32>,
    pub code_name: String,
    pub message: String,
}

impl CsiError {
    fn from_status(call: &'static str, s: &Status) -> Self {
        // A transport failure reaches us as Unavailable/Unknown with a source; keep the code,
        // the retry rules treat Unavailable as "still in progress" anyway.
        Self {
            call,
            code: Some(s.code() as i32),
            code_name: format!("{:?}", s.code()),
            message: s.message().to_string(),
        }
    }

    fn timeout(call: &'static str, after: Duration) -> Self {
        Self {
            call,
            code: Some(Code::DeadlineExceeded as i32),
            code_name: "DeadlineExceeded".into(),
            message: format!("no answer within {after:?}"),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code == Some(Code::NotFound as i32)
    }
}

#[derive(Clone)]
pub struct CsiClient {
    channel: Channel,
    /// Per-call deadline (external-provisioner `--timeout`, 10 s by default).
    timeout: Duration,
}

impl CsiClient {
    /// A lazily connected client for `unix:///path`: the driver may start after us, and calls
    /// made before it listens fail with UNAVAILABLE and are retried.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, String> {
        if !endpoint.starts_with("unix://") {
            return Err(format!("csi endpoint {endpoint:?} must be unix:///PATH"));
        }
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("csi endpoint {endpoint:?}: {e}"))?
            .connect_timeout(timeout)
            .connect_lazy();
        Ok(Self { channel, timeout })
    }

    async fn call<T, F>(&self, call: &'static str, fut: F) -> Result<T, CsiError>
    where
        F: std::future::Future<Output = Result<csi_proto::tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(CsiError::from_status(call, &s)),
            Err(_) => Err(CsiError::timeout(call, self.timeout)),
        }
    }

    /// GetPluginInfo, GetPluginCapabilities and ControllerGetCapabilities.
    pub async fn driver_info(&self) -> Result<DriverInfo, CsiError> {
        let mut identity = IdentityClient::new(self.channel.clone());
        let info = self
            .call(
                "GetPluginInfo",
                identity.get_plugin_info(csi_proto::GetPluginInfoRequest {}),
            )
            .await?;
        let caps = self
            .call(
                "GetPluginCapabilities",
                identity.get_plugin_capabilities(csi_proto::GetPluginCapabilitiesRequest {}),
            )
            .await?;
        let accessibility_constraints = caps.capabilities.iter().any(|c| {
            matches!(&c.r#type, Some(plugin_capability::Type::Service(s))
                if s.r#type == plugin_capability::service::Type::VolumeAccessibilityConstraints as i32)
        });
        let mut controller = ControllerClient::new(self.channel.clone());
        let ccaps = self
            .call(
                "ControllerGetCapabilities",
                controller
                    .controller_get_capabilities(csi_proto::ControllerGetCapabilitiesRequest {}),
            )
            .await?;
        let has = |t: controller_service_capability::rpc::Type| {
            ccaps.capabilities.iter().any(|c| {
                matches!(&c.r#type, Some(controller_service_capability::Type::Rpc(r)) if r.r#type == t as i32)
            })
        };
        Ok(DriverInfo {
            name: info.name,
            accessibility_constraints,
            single_node_multi_writer: has(
                controller_service_capability::rpc::Type::SingleNodeMultiWriter,
            ),
            expand_volume: has(controller_service_capability::rpc::Type::ExpandVolume),
            create_delete_snapshot: has(
                controller_service_capability::rpc::Type::CreateDeleteSnapshot,
            ),
            clone_volume: has(controller_service_capability::rpc::Type::CloneVolume),
        })
    }

    pub async fn create_volume(&self, req: &CreateRequest) -> Result<CreatedVolume, CsiError> {
        let msg = csi_proto::CreateVolumeRequest {
            name: req.name.clone(),
            capacity_range: Some(csi_proto::CapacityRange {
                required_bytes: i64::try_from(req.required_bytes).unwrap_or(i64::MAX),
                limit_bytes: 0,
            }),
            volume_capabilities: req.capabilities.iter().map(capability).collect(),
            parameters: req.parameters.clone().into_iter().collect(),
            accessibility_requirements: req.topology.as_ref().map(|t| {
                csi_proto::TopologyRequirement {
                    requisite: t.requisite.iter().map(topology).collect(),
                    preferred: t.preferred.iter().map(topology).collect(),
                }
            }),
            volume_content_source: req.source.as_ref().map(content_source),
            secrets: req.secrets.to_map(),
            ..Default::default()
        };
        let mut controller = ControllerClient::new(self.channel.clone());
        let resp = self
            .call("CreateVolume", controller.create_volume(Request::new(msg)))
            .await?;
        let volume = resp.volume.ok_or_else(|| CsiError {
            call: "CreateVolume",
            code: Some(Code::Internal as i32),
            code_name: "Internal".into(),
            message: "response has no volume".into(),
        })?;
        Ok(CreatedVolume {
            volume_id: volume.volume_id,
            capacity_bytes: volume.capacity_bytes,
            volume_context: volume.volume_context.into_iter().collect(),
            accessible_topology: volume
                .accessible_topology
                .into_iter()
                .map(|t| t.segments.into_iter().collect())
                .collect(),
        })
    }

    /// GetCapacity for `parameters` and `capability` in the topology `segment`: (available
    /// bytes, maximum volume size when the driver says).
    pub async fn get_capacity(
        &self,
        parameters: &std::collections::BTreeMap<String, String>,
        cap: &Capability,
        segment: &std::collections::BTreeMap<String, String>,
    ) -> Result<(i64, Option<i64>), CsiError> {
        let mut controller = ControllerClient::new(self.channel.clone());
        let req = csi_proto::GetCapacityRequest {
            volume_capabilities: vec![capability(cap)],
            parameters: parameters.clone().into_iter().collect(),
            accessible_topology: Some(csi_proto::Topology {
                segments: segment.clone().into_iter().collect(),
            }),
        };
        let resp = self
            .call("GetCapacity", controller.get_capacity(Request::new(req)))
            .await?;
        Ok((resp.available_capacity, resp.maximum_volume_size))
    }

    /// DeleteVolume; NOT_FOUND counts as done ("the volume is already gone").
    pub async fn delete_volume(
        &self,
        volume_id: &str,
        secrets: &SecretData,
    ) -> Result<(), CsiError> {
        let mut controller = ControllerClient::new(self.channel.clone());
        let req = csi_proto::DeleteVolumeRequest {
            volume_id: volume_id.to_string(),
            secrets: secrets.to_map(),
        };
        match self
            .call("DeleteVolume", controller.delete_volume(Request::new(req)))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// CreateSnapshot (idempotent by `name`). `parameters` are the class's, with the
    /// sidecar's `csi.storage.k8s.io/` keys already removed; `secrets` the snapshotter's.
    pub async fn create_snapshot(
        &self,
        name: &str,
        source_volume_id: &str,
        parameters: &std::collections::BTreeMap<String, String>,
        secrets: &SecretData,
    ) -> Result<SnapshotInfo, CsiError> {
        let mut controller = ControllerClient::new(self.channel.clone());
        let req = csi_proto::CreateSnapshotRequest {
            name: name.to_string(),
            source_volume_id: source_volume_id.to_string(),
            parameters: parameters.clone().into_iter().collect(),
            secrets: secrets.to_map(),
        };
        let resp = self
            .call(
                "CreateSnapshot",
                controller.create_snapshot(Request::new(req)),
            )
            .await?;
        let snapshot = resp.snapshot.ok_or_else(|| CsiError {
            call: "CreateSnapshot",
            code: Some(Code::Internal as i32),
            code_name: "Internal".into(),
            message: "response has no snapshot".into(),
        })?;
        Ok(SnapshotInfo::from_proto(snapshot))
    }

    /// DeleteSnapshot; NOT_FOUND counts as done.
    pub async fn delete_snapshot(
        &self,
        snapshot_id: &str,
        secrets: &SecretData,
    ) -> Result<(), CsiError> {
        let mut controller = ControllerClient::new(self.channel.clone());
        let req = csi_proto::DeleteSnapshotRequest {
            snapshot_id: snapshot_id.to_string(),
            secrets: secrets.to_map(),
        };
        match self
            .call(
                "DeleteSnapshot",
                controller.delete_snapshot(Request::new(req)),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// ListSnapshots filtered by id: the driver's view of a pre-provisioned snapshot.
    /// None when the driver does not know it.
    /// `secrets` are the class's snapshotter-list secret's.
    pub async fn get_snapshot(
        &self,
        snapshot_id: &str,
        secrets: &SecretData,
    ) -> Result<Option<SnapshotInfo>, CsiError> {
        let mut controller = ControllerClient::new(self.channel.clone());
        let req = csi_proto::ListSnapshotsRequest {
            snapshot_id: snapshot_id.to_string(),
            secrets: secrets.to_map(),
            ..Default::default()
        };
        let resp = self
            .call(
                "ListSnapshots",
                controller.list_snapshots(Request::new(req)),
            )
            .await?;
        Ok(resp
            .entries
            .into_iter()
            .filter_map(|e| e.snapshot)
            .find(|s| s.snapshot_id == snapshot_id)
            .map(SnapshotInfo::from_proto))
    }

    /// ControllerExpandVolume: (new capacity in bytes, node expansion required).
    /// `secrets` are those the PV's `controllerExpandSecretRef` names.
    pub async fn expand_volume(
        &self,
        volume_id: &str,
        required_bytes: u64,
        cap: Option<&Capability>,
        secrets: &SecretData,
    ) -> Result<(i64, bool), CsiError> {
        let mut controller = ControllerClient::new(self.channel.clone());
        let req = csi_proto::ControllerExpandVolumeRequest {
            volume_id: volume_id.to_string(),
            capacity_range: Some(csi_proto::CapacityRange {
                required_bytes: i64::try_from(required_bytes).unwrap_or(i64::MAX),
                limit_bytes: 0,
            }),
            volume_capability: cap.map(capability),
            secrets: secrets.to_map(),
        };
        let resp = self
            .call(
                "ControllerExpandVolume",
                controller.controller_expand_volume(Request::new(req)),
            )
            .await?;
        Ok((resp.capacity_bytes, resp.node_expansion_required))
    }
}

fn capability(c: &Capability) -> csi_proto::VolumeCapability {
    use volume_capability::access_mode::Mode;
    let mode = match c.mode {
        AccessMode::SingleNodeWriter => Mode::SingleNodeWriter,
        AccessMode::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
        AccessMode::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
        AccessMode::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter,
        AccessMode::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter,
    };
    let access_type = match &c.access_type {
        AccessType::Block => {
            volume_capability::AccessType::Block(volume_capability::BlockVolume {})
        }
        AccessType::Mount {
            fs_type,
            mount_flags,
        } => volume_capability::AccessType::Mount(volume_capability::MountVolume {
            fs_type: fs_type.clone(),
            mount_flags: mount_flags.clone(),
            volume_mount_group: String::new(),
        }),
    };
    csi_proto::VolumeCapability {
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(access_type),
    }
}

fn content_source(s: &ContentSource) -> csi_proto::VolumeContentSource {
    use csi_proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
    csi_proto::VolumeContentSource {
        r#type: Some(match s {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

fn topology(t: &Topology) -> csi_proto::Topology {
    csi_proto::Topology {
        segments: t
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
    }
}

//! Requests as the core takes them. Every CSI request message becomes a domain value
//! through `TryFrom`, and that conversion is where INVALID_ARGUMENT is decided (field
//! checks from validate.rs, shapes from convert.rs), in the order the fields are checked
//! today. The services only convert; the driver never sees a proto message or a raw enum
//! number.

use std::collections::HashMap;
use std::path::PathBuf;

use csi_proto as pb;

use crate::convert;
use crate::driver::{AccessMode, Cap};
use crate::error::{Error, Result};
use crate::validate;
use crate::volumes::CreateArgs;

/// volume_context key that marks an ephemeral inline volume (set by the kubelet).
pub const CTX_EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

/// A page of a list: at most `limit` entries with ids after `after` ("" = from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub after: String,
}

impl Page {
    /// `max_entries` (0 = our default) and a `starting_token` we issued (else ABORTED).
    pub fn new(max_entries: i32, starting_token: &str) -> Result<Page> {
        let limit = crate::queries::max_entries(max_entries)?;
        let after = crate::queries::token_decode(starting_token)?;
        Ok(Page { limit, after })
    }
}

/// One id the CO hands back (DeleteVolume, ControllerGetVolume, DeleteSnapshot, GetSnapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateCaps {
    pub volume_id: String,
    pub caps: Vec<Cap>,
    pub parameters: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityQuery {
    pub parameters: HashMap<String, String>,
    pub caps: Vec<Cap>,
    pub topology: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSnapshot {
    pub name: String,
    pub source_volume_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSnapshots {
    pub page: Page,
    /// "" = any.
    pub snapshot_id: String,
    /// "" = any.
    pub source_volume_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerExpand {
    pub volume_id: String,
    pub required: u64,
    pub limit: u64,
    /// The capability's access type when given: Some(true) for Block.
    pub block: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModifyVolume {
    pub volume_id: String,
    pub mutable_parameters: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageArgs {
    pub volume_id: String,
    pub staging: PathBuf,
    pub cap: Cap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unstage {
    pub volume_id: String,
    pub staging: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishArgs {
    pub volume_id: String,
    /// Empty for an ephemeral inline volume (the driver stages it itself).
    pub staging: PathBuf,
    pub target: PathBuf,
    pub cap: Cap,
    pub readonly: bool,
    pub context: std::collections::BTreeMap<String, String>,
    /// An ephemeral inline volume (`csi.storage.k8s.io/ephemeral=true`).
    pub ephemeral: bool,
}

impl PublishArgs {
    /// A publish that is one bind mount of the staged volume and a record: not an
    /// ephemeral volume (created here), not a read-only block publish (its own loop
    /// device), no volume mount group (ownership changed through the whole tree).
    pub fn is_quick(&self) -> bool {
        !self.ephemeral && self.cap.mount_group.is_empty() && !(self.cap.block && self.read_only())
    }

    /// Published read-only: asked so, or a single-node reader-only access mode.
    pub fn read_only(&self) -> bool {
        self.readonly || self.cap.mode == AccessMode::SingleNodeReaderOnly
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpublish {
    pub volume_id: String,
    pub target: PathBuf,
}

/// NodeGetVolumeStats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAt {
    pub volume_id: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeExpand {
    pub volume_id: String,
    pub path: PathBuf,
    pub required: u64,
    pub block: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateGroup {
    pub name: String,
    pub source_volume_ids: Vec<String>,
    pub parameters: HashMap<String, String>,
}

/// DeleteVolumeGroupSnapshot and GetVolumeGroupSnapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub group_snapshot_id: String,
    pub snapshot_ids: Vec<String>,
}

fn ids(field: &'static str, list: &[String]) -> Result<()> {
    list.iter().try_for_each(|id| validate::id(field, id))
}

fn access_type(field: &'static str, c: &Option<pb::VolumeCapability>) -> Result<Option<bool>> {
    c.as_ref()
        .map(|c| convert::cap(field, c).map(|c| c.block))
        .transpose()
}

impl TryFrom<pb::CreateVolumeRequest> for CreateArgs {
    type Error = Error;
    fn try_from(r: pb::CreateVolumeRequest) -> Result<Self> {
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
        let source = convert::source_of(&r.volume_content_source)?;
        Ok(CreateArgs {
            name: r.name,
            required,
            limit,
            caps,
            parameters: r.parameters,
            mutable_parameters: r.mutable_parameters,
            source,
            requisite,
            preferred,
            ephemeral: None,
        })
    }
}

impl TryFrom<pb::DeleteVolumeRequest> for ObjectRef {
    type Error = Error;
    fn try_from(r: pb::DeleteVolumeRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("volume_id", &r.volume_id)?;
        Ok(ObjectRef { id: r.volume_id })
    }
}

impl TryFrom<pb::ControllerGetVolumeRequest> for ObjectRef {
    type Error = Error;
    fn try_from(r: pb::ControllerGetVolumeRequest) -> Result<Self> {
        validate::id("volume_id", &r.volume_id)?;
        Ok(ObjectRef { id: r.volume_id })
    }
}

impl TryFrom<pb::DeleteSnapshotRequest> for ObjectRef {
    type Error = Error;
    fn try_from(r: pb::DeleteSnapshotRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("snapshot_id", &r.snapshot_id)?;
        Ok(ObjectRef { id: r.snapshot_id })
    }
}

impl TryFrom<pb::GetSnapshotRequest> for ObjectRef {
    type Error = Error;
    fn try_from(r: pb::GetSnapshotRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("snapshot_id", &r.snapshot_id)?;
        Ok(ObjectRef { id: r.snapshot_id })
    }
}

/// Borrowed: the reply echoes the request's fields.
impl TryFrom<&pb::ValidateVolumeCapabilitiesRequest> for ValidateCaps {
    type Error = Error;
    fn try_from(r: &pb::ValidateVolumeCapabilitiesRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("volume_id", &r.volume_id)?;
        let caps = convert::caps("volume_capabilities", &r.volume_capabilities)?;
        validate::map("volume_context", &r.volume_context)?;
        validate::map("parameters", &r.parameters)?;
        Ok(ValidateCaps {
            volume_id: r.volume_id.clone(),
            caps,
            parameters: r.parameters.clone(),
        })
    }
}

impl TryFrom<pb::ListVolumesRequest> for Page {
    type Error = Error;
    fn try_from(r: pb::ListVolumesRequest) -> Result<Self> {
        Page::new(r.max_entries, &r.starting_token)
    }
}

impl TryFrom<pb::GetCapacityRequest> for CapacityQuery {
    type Error = Error;
    fn try_from(r: pb::GetCapacityRequest) -> Result<Self> {
        validate::map("parameters", &r.parameters)?;
        let caps = r
            .volume_capabilities
            .iter()
            .map(|c| convert::cap("volume_capabilities", c))
            .collect::<Result<_>>()?;
        Ok(CapacityQuery {
            parameters: r.parameters,
            caps,
            topology: r.accessible_topology.map(|t| t.segments),
        })
    }
}

impl TryFrom<pb::CreateSnapshotRequest> for CreateSnapshot {
    type Error = Error;
    fn try_from(r: pb::CreateSnapshotRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::name("name", &r.name)?;
        validate::id("source_volume_id", &r.source_volume_id)?;
        validate::map("parameters", &r.parameters)?;
        if let Some(k) = r
            .parameters
            .keys()
            .find(|k| !k.starts_with("csi.storage.k8s.io/"))
        {
            return Err(Error::invalid(
                "parameters",
                format!("unknown parameter {k:?}"),
            ));
        }
        Ok(CreateSnapshot {
            name: r.name,
            source_volume_id: r.source_volume_id,
        })
    }
}

impl TryFrom<pb::ListSnapshotsRequest> for ListSnapshots {
    type Error = Error;
    fn try_from(r: pb::ListSnapshotsRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        let page = Page::new(r.max_entries, &r.starting_token)?;
        validate::bounded("snapshot_id", &r.snapshot_id)?;
        validate::bounded("source_volume_id", &r.source_volume_id)?;
        Ok(ListSnapshots {
            page,
            snapshot_id: r.snapshot_id,
            source_volume_id: r.source_volume_id,
        })
    }
}

impl TryFrom<pb::ControllerExpandVolumeRequest> for ControllerExpand {
    type Error = Error;
    fn try_from(r: pb::ControllerExpandVolumeRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("volume_id", &r.volume_id)?;
        if r.capacity_range.is_none() {
            return Err(Error::invalid(
                "capacity_range",
                "required field is missing",
            ));
        }
        let (required, limit) = convert::range(&r.capacity_range)?;
        let block = access_type("volume_capability", &r.volume_capability)?;
        Ok(ControllerExpand {
            volume_id: r.volume_id,
            required,
            limit,
            block,
        })
    }
}

impl TryFrom<pb::ControllerModifyVolumeRequest> for ModifyVolume {
    type Error = Error;
    fn try_from(r: pb::ControllerModifyVolumeRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("volume_id", &r.volume_id)?;
        validate::map("mutable_parameters", &r.mutable_parameters)?;
        if r.mutable_parameters.is_empty() {
            return Err(Error::invalid(
                "mutable_parameters",
                "required field is missing",
            ));
        }
        crate::volumes::parse_mutable(&r.mutable_parameters)?;
        Ok(ModifyVolume {
            volume_id: r.volume_id,
            mutable_parameters: r.mutable_parameters,
        })
    }
}

impl TryFrom<pb::NodeStageVolumeRequest> for StageArgs {
    type Error = Error;
    fn try_from(r: pb::NodeStageVolumeRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("volume_id", &r.volume_id)?;
        let staging = validate::co_path("staging_target_path", &r.staging_target_path)?;
        let cap = convert::required_cap("volume_capability", &r.volume_capability)?;
        validate::map("volume_context", &r.volume_context)?;
        validate::map("publish_context", &r.publish_context)?;
        Ok(StageArgs {
            volume_id: r.volume_id,
            staging,
            cap,
        })
    }
}

impl TryFrom<pb::NodeUnstageVolumeRequest> for Unstage {
    type Error = Error;
    fn try_from(r: pb::NodeUnstageVolumeRequest) -> Result<Self> {
        validate::id("volume_id", &r.volume_id)?;
        let staging = validate::co_path("staging_target_path", &r.staging_target_path)?;
        Ok(Unstage {
            volume_id: r.volume_id,
            staging,
        })
    }
}

impl TryFrom<pb::NodePublishVolumeRequest> for PublishArgs {
    type Error = Error;
    fn try_from(r: pb::NodePublishVolumeRequest) -> Result<Self> {
        let ephemeral = r
            .volume_context
            .get(CTX_EPHEMERAL)
            .is_some_and(|v| v == "true");
        validate::map("secrets", &r.secrets)?;
        validate::id("volume_id", &r.volume_id)?;
        let target = validate::co_path("target_path", &r.target_path)?;
        let cap = convert::required_cap("volume_capability", &r.volume_capability)?;
        validate::map("volume_context", &r.volume_context)?;
        validate::map("publish_context", &r.publish_context)?;
        let staging = if ephemeral {
            PathBuf::new()
        } else if r.staging_target_path.is_empty() {
            // Spec table: STAGE_UNSTAGE_VOLUME is advertised but no staging path set.
            return Err(Error::Precondition(
                "staging_target_path is required: this node stages volumes".into(),
            ));
        } else {
            validate::co_path("staging_target_path", &r.staging_target_path)?
        };
        Ok(PublishArgs {
            volume_id: r.volume_id,
            staging,
            target,
            cap,
            readonly: r.readonly,
            context: r.volume_context.into_iter().collect(),
            ephemeral,
        })
    }
}

impl TryFrom<pb::NodeUnpublishVolumeRequest> for Unpublish {
    type Error = Error;
    fn try_from(r: pb::NodeUnpublishVolumeRequest) -> Result<Self> {
        validate::id("volume_id", &r.volume_id)?;
        let target = validate::co_path("target_path", &r.target_path)?;
        Ok(Unpublish {
            volume_id: r.volume_id,
            target,
        })
    }
}

impl TryFrom<pb::NodeGetVolumeStatsRequest> for VolumeAt {
    type Error = Error;
    fn try_from(r: pb::NodeGetVolumeStatsRequest) -> Result<Self> {
        validate::id("volume_id", &r.volume_id)?;
        let path = validate::volume_path(&r.volume_id, &r.volume_path)?;
        if !r.staging_target_path.is_empty() {
            validate::co_path("staging_target_path", &r.staging_target_path)?;
        }
        Ok(VolumeAt {
            volume_id: r.volume_id,
            path,
        })
    }
}

impl TryFrom<pb::NodeExpandVolumeRequest> for NodeExpand {
    type Error = Error;
    fn try_from(r: pb::NodeExpandVolumeRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::id("volume_id", &r.volume_id)?;
        let path = validate::volume_path(&r.volume_id, &r.volume_path)?;
        if !r.staging_target_path.is_empty() {
            validate::co_path("staging_target_path", &r.staging_target_path)?;
        }
        let (required, _limit) = convert::range(&r.capacity_range)?;
        let block = access_type("volume_capability", &r.volume_capability)?;
        Ok(NodeExpand {
            volume_id: r.volume_id,
            path,
            required,
            block,
        })
    }
}

impl TryFrom<pb::CreateVolumeGroupSnapshotRequest> for CreateGroup {
    type Error = Error;
    fn try_from(r: pb::CreateVolumeGroupSnapshotRequest) -> Result<Self> {
        validate::map("secrets", &r.secrets)?;
        validate::name("name", &r.name)?;
        if r.source_volume_ids.is_empty() {
            return Err(Error::invalid(
                "source_volume_ids",
                "at least one volume is required",
            ));
        }
        ids("source_volume_ids", &r.source_volume_ids)?;
        let mut sorted = r.source_volume_ids.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != r.source_volume_ids.len() {
            return Err(Error::invalid(
                "source_volume_ids",
                "a volume is listed twice",
            ));
        }
        validate::map("parameters", &r.parameters)?;
        Ok(CreateGroup {
            name: r.name,
            source_volume_ids: r.source_volume_ids,
            parameters: r.parameters,
        })
    }
}

fn group_ref(
    secrets: &HashMap<String, String>,
    group_snapshot_id: String,
    snapshot_ids: Vec<String>,
) -> Result<GroupRef> {
    validate::map("secrets", secrets)?;
    validate::id("group_snapshot_id", &group_snapshot_id)?;
    ids("snapshot_ids", &snapshot_ids)?;
    Ok(GroupRef {
        group_snapshot_id,
        snapshot_ids,
    })
}

impl TryFrom<pb::DeleteVolumeGroupSnapshotRequest> for GroupRef {
    type Error = Error;
    fn try_from(r: pb::DeleteVolumeGroupSnapshotRequest) -> Result<Self> {
        group_ref(&r.secrets, r.group_snapshot_id, r.snapshot_ids)
    }
}

impl TryFrom<pb::GetVolumeGroupSnapshotRequest> for GroupRef {
    type Error = Error;
    fn try_from(r: pb::GetVolumeGroupSnapshotRequest) -> Result<Self> {
        group_ref(&r.secrets, r.group_snapshot_id, r.snapshot_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::AccessMode;
    use csi_proto::tonic::{Code, Status};
    use pb::volume_capability::{AccessType, MountVolume, access_mode::Mode};

    /// The gRPC code a conversion answers with.
    fn code<T: std::fmt::Debug>(r: Result<T>) -> Code {
        match r {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(e) => Status::from(e).code(),
        }
    }

    fn mount_cap(mode: i32) -> pb::VolumeCapability {
        pb::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(pb::volume_capability::AccessMode { mode }),
        }
    }

    fn secrets_too_big() -> HashMap<String, String> {
        HashMap::from([("k".to_string(), "v".repeat(validate::MAP_MAX))])
    }

    const ID: &str = "n1_p_v0123456789abcdef";

    #[test]
    fn only_a_plain_bind_publish_is_quick() {
        let plain = PublishArgs {
            volume_id: ID.into(),
            staging: "/s".into(),
            target: "/t".into(),
            cap: Cap {
                block: false,
                fs_type: String::new(),
                mount_flags: Vec::new(),
                mount_group: String::new(),
                mode: AccessMode::SingleNodeWriter,
            },
            readonly: false,
            context: Default::default(),
            ephemeral: false,
        };
        assert!(plain.is_quick());
        let with = |f: fn(&mut PublishArgs)| {
            let mut a = plain.clone();
            f(&mut a);
            a
        };
        // Read-only mounts and writable block publishes are binds too.
        assert!(with(|a| a.readonly = true).is_quick());
        assert!(with(|a| a.cap.block = true).is_quick());
        // Creates a volume; attaches a loop device; changes ownership through the tree.
        assert!(!with(|a| a.ephemeral = true).is_quick());
        assert!(
            !with(|a| {
                a.cap.block = true;
                a.cap.mode = AccessMode::SingleNodeReaderOnly;
            })
            .is_quick()
        );
        assert!(
            !with(|a| {
                a.cap.block = true;
                a.readonly = true;
            })
            .is_quick()
        );
        assert!(!with(|a| a.cap.mount_group = "1000".into()).is_quick());
    }

    #[test]
    fn access_modes_round_trip_and_zero_is_missing() {
        for n in 1..=7 {
            let m = AccessMode::from_wire(n).unwrap();
            assert_eq!(m.wire(), n);
            assert!(!matches!(m, AccessMode::Other(_)), "{n}");
        }
        assert_eq!(AccessMode::from_wire(0), None);
        assert_eq!(AccessMode::from_wire(99), Some(AccessMode::Other(99)));
        assert_eq!(
            AccessMode::from_wire(Mode::SingleNodeReaderOnly as i32),
            Some(AccessMode::SingleNodeReaderOnly)
        );
        assert!(AccessMode::SingleNodeMultiWriter.multi_publish());
        assert!(!AccessMode::SingleNodeWriter.multi_publish());
        assert!(!AccessMode::Other(99).multi_publish());
    }

    #[test]
    fn create_volume() {
        let good = || pb::CreateVolumeRequest {
            name: "pvc-1".into(),
            volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter as i32)],
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        let a = CreateArgs::try_from(good()).unwrap();
        assert_eq!(a.name, "pvc-1");
        assert_eq!(a.required, 1 << 20);
        assert_eq!(a.caps[0].mode, AccessMode::SingleNodeWriter);

        let bad: Vec<(&str, pb::CreateVolumeRequest)> = vec![
            (
                "no name",
                pb::CreateVolumeRequest {
                    name: String::new(),
                    ..good()
                },
            ),
            (
                "control char",
                pb::CreateVolumeRequest {
                    name: "a\u{7}".into(),
                    ..good()
                },
            ),
            (
                "no caps",
                pb::CreateVolumeRequest {
                    volume_capabilities: vec![],
                    ..good()
                },
            ),
            (
                "mode 0",
                pb::CreateVolumeRequest {
                    volume_capabilities: vec![mount_cap(0)],
                    ..good()
                },
            ),
            (
                "mode 99",
                pb::CreateVolumeRequest {
                    volume_capabilities: vec![mount_cap(99)],
                    ..good()
                },
            ),
            (
                "multi-node",
                pb::CreateVolumeRequest {
                    volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter as i32)],
                    ..good()
                },
            ),
            (
                "negative",
                pb::CreateVolumeRequest {
                    capacity_range: Some(pb::CapacityRange {
                        required_bytes: -1,
                        limit_bytes: 0,
                    }),
                    ..good()
                },
            ),
            (
                "secrets",
                pb::CreateVolumeRequest {
                    secrets: secrets_too_big(),
                    ..good()
                },
            ),
            (
                "empty topology",
                pb::CreateVolumeRequest {
                    accessibility_requirements: Some(pb::TopologyRequirement::default()),
                    ..good()
                },
            ),
            (
                "source without type",
                pb::CreateVolumeRequest {
                    volume_content_source: Some(pb::VolumeContentSource { r#type: None }),
                    ..good()
                },
            ),
        ];
        for (what, r) in bad {
            assert_eq!(
                code(CreateArgs::try_from(r)),
                Code::InvalidArgument,
                "{what}"
            );
        }
    }

    #[test]
    fn ids_and_tokens() {
        let del = |id: &str| {
            ObjectRef::try_from(pb::DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            })
        };
        assert_eq!(del(ID).unwrap().id, ID);
        for bad in ["", "../x", "a/b", &"x".repeat(129)] {
            assert_eq!(code(del(bad)), Code::InvalidArgument, "{bad:?}");
        }
        let list = |max: i32, token: &str| {
            Page::try_from(pb::ListVolumesRequest {
                max_entries: max,
                starting_token: token.into(),
            })
        };
        assert_eq!(
            list(0, "").unwrap(),
            Page {
                limit: 1000,
                after: String::new()
            }
        );
        assert_eq!(code(list(-1, "")), Code::InvalidArgument);
        // A token we did not issue: the spec's ABORTED.
        assert_eq!(code(list(5, "garbage")), Code::Aborted);
        let snaps = pb::ListSnapshotsRequest {
            snapshot_id: "x".repeat(129),
            ..Default::default()
        };
        assert_eq!(code(ListSnapshots::try_from(snaps)), Code::InvalidArgument);
    }

    #[test]
    fn controller_requests() {
        let expand = pb::ControllerExpandVolumeRequest {
            volume_id: ID.into(),
            ..Default::default()
        };
        assert_eq!(
            code(ControllerExpand::try_from(expand.clone())),
            Code::InvalidArgument
        );
        let with_block = pb::ControllerExpandVolumeRequest {
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 5,
                limit_bytes: 0,
            }),
            volume_capability: Some(pb::VolumeCapability {
                access_type: Some(AccessType::Block(Default::default())),
                access_mode: Some(pb::volume_capability::AccessMode { mode: 1 }),
            }),
            ..expand
        };
        let e = ControllerExpand::try_from(with_block).unwrap();
        assert_eq!((e.required, e.block), (5, Some(true)));

        let modify = |params: &[(&str, &str)]| {
            ModifyVolume::try_from(pb::ControllerModifyVolumeRequest {
                volume_id: ID.into(),
                mutable_parameters: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })
        };
        assert_eq!(code(modify(&[])), Code::InvalidArgument);
        assert_eq!(
            code(modify(&[("directIO", "maybe")])),
            Code::InvalidArgument
        );
        assert!(modify(&[("directIO", "true")]).is_ok());

        let snap = |params: &[(&str, &str)]| {
            CreateSnapshot::try_from(pb::CreateSnapshotRequest {
                name: "s".into(),
                source_volume_id: ID.into(),
                parameters: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })
        };
        assert!(snap(&[("csi.storage.k8s.io/volumesnapshot/name", "x")]).is_ok());
        assert_eq!(code(snap(&[("color", "red")])), Code::InvalidArgument);

        let validate = pb::ValidateVolumeCapabilitiesRequest {
            volume_id: ID.into(),
            // Unsupported modes are a "not confirmed" answer, not a malformed request.
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter as i32)],
            ..Default::default()
        };
        assert_eq!(
            ValidateCaps::try_from(&validate).unwrap().caps[0].mode,
            AccessMode::MultiNodeMultiWriter
        );
        let no_caps = pb::ValidateVolumeCapabilitiesRequest {
            volume_capabilities: vec![],
            ..validate
        };
        assert_eq!(
            code(ValidateCaps::try_from(&no_caps)),
            Code::InvalidArgument
        );

        let group = |ids: &[&str]| {
            CreateGroup::try_from(pb::CreateVolumeGroupSnapshotRequest {
                name: "g".into(),
                source_volume_ids: ids.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
        };
        assert!(group(&[ID]).is_ok());
        assert_eq!(code(group(&[])), Code::InvalidArgument);
        assert_eq!(code(group(&[ID, ID])), Code::InvalidArgument);
        assert_eq!(code(group(&["a/b"])), Code::InvalidArgument);
    }

    #[test]
    fn node_requests() {
        let publish = || pb::NodePublishVolumeRequest {
            volume_id: ID.into(),
            staging_target_path: "/stage/x".into(),
            target_path: "/pods/x/mount/".into(),
            volume_capability: Some(mount_cap(Mode::SingleNodeWriter as i32)),
            ..Default::default()
        };
        let p = PublishArgs::try_from(publish()).unwrap();
        assert_eq!(p.target, PathBuf::from("/pods/x/mount"));
        assert!(!p.ephemeral);
        // Missing staging path on a node that stages: the spec's FAILED_PRECONDITION.
        let unstaged = pb::NodePublishVolumeRequest {
            staging_target_path: String::new(),
            ..publish()
        };
        assert_eq!(
            code(PublishArgs::try_from(unstaged)),
            Code::FailedPrecondition
        );
        // ... unless it is an ephemeral inline volume, which the driver stages itself.
        let eph = pb::NodePublishVolumeRequest {
            staging_target_path: String::new(),
            volume_context: HashMap::from([(CTX_EPHEMERAL.to_string(), "true".to_string())]),
            ..publish()
        };
        assert!(PublishArgs::try_from(eph).unwrap().ephemeral);
        for bad in [
            pb::NodePublishVolumeRequest {
                target_path: "rel".into(),
                ..publish()
            },
            pb::NodePublishVolumeRequest {
                target_path: "/a/../b".into(),
                ..publish()
            },
            pb::NodePublishVolumeRequest {
                volume_capability: None,
                ..publish()
            },
            pb::NodePublishVolumeRequest {
                volume_capability: Some(mount_cap(0)),
                ..publish()
            },
        ] {
            assert_eq!(code(PublishArgs::try_from(bad)), Code::InvalidArgument);
        }

        let stage = |path: &str| {
            StageArgs::try_from(pb::NodeStageVolumeRequest {
                volume_id: ID.into(),
                staging_target_path: path.into(),
                volume_capability: Some(mount_cap(1)),
                ..Default::default()
            })
        };
        assert!(stage("/stage/x").is_ok());
        assert_eq!(code(stage("")), Code::InvalidArgument);
        assert_eq!(
            code(Unstage::try_from(pb::NodeUnstageVolumeRequest {
                volume_id: ID.into(),
                staging_target_path: "/".into(),
            })),
            Code::InvalidArgument
        );
        assert_eq!(
            code(Unpublish::try_from(pb::NodeUnpublishVolumeRequest {
                volume_id: String::new(),
                target_path: "/t".into(),
            })),
            Code::InvalidArgument
        );

        let stats = |path: &str| {
            VolumeAt::try_from(pb::NodeGetVolumeStatsRequest {
                volume_id: ID.into(),
                volume_path: path.into(),
                staging_target_path: String::new(),
            })
        };
        assert!(stats("/pods/x").is_ok());
        // Well-formed but no volume can be there: NOT_FOUND (spec table, csi-sanity).
        assert_eq!(code(stats("some/path")), Code::NotFound);
        assert_eq!(code(stats("")), Code::InvalidArgument);
        let expand = |path: &str, required: i64| {
            NodeExpand::try_from(pb::NodeExpandVolumeRequest {
                volume_id: ID.into(),
                volume_path: path.into(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: required,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
        };
        assert_eq!(expand("/pods/x", 7).unwrap().required, 7);
        assert_eq!(code(expand("some/path", 7)), Code::NotFound);
        assert_eq!(code(expand("/pods/x", -7)), Code::InvalidArgument);
    }
}

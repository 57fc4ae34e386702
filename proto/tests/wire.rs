//! Checks the embedded descriptor against values read from the upstream CSI
//! v1.12.0 csi.proto: field numbers and types, services, and every custom
//! option (`csi_secret`, `alpha_*`). Sets are compared exactly, so a field or
//! option that appears or disappears fails the test.

use std::collections::BTreeSet;

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};

fn pool() -> DescriptorPool {
    DescriptorPool::decode(csi_proto::FILE_DESCRIPTOR_SET).expect("embedded descriptor decodes")
}

fn message(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(&format!("csi.v1.{name}"))
        .unwrap_or_else(|| panic!("message csi.v1.{name} missing"))
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Sint32 => "sint32".into(),
        Kind::Sint64 => "sint64".into(),
        Kind::Fixed32 => "fixed32".into(),
        Kind::Fixed64 => "fixed64".into(),
        Kind::Sfixed32 => "sfixed32".into(),
        Kind::Sfixed64 => "sfixed64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => format!(".{}", m.full_name()),
        Kind::Enum(e) => format!(".{}", e.full_name()),
    }
}

/// The type as written in the .proto: `map<k, v>`, `repeated T`, or `T`.
fn type_name(field: &FieldDescriptor) -> String {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are message-typed")
        };
        let k = entry.map_entry_key_field().kind();
        let v = entry.map_entry_value_field().kind();
        format!("map<{}, {}>", kind_name(&k), kind_name(&v))
    } else if field.is_list() {
        format!("repeated {}", kind_name(&field.kind()))
    } else {
        kind_name(&field.kind())
    }
}

const MAP: &str = "map<string, string>";

/// (message, field, number, type), transcribed from upstream csi.proto v1.12.0.
/// Every field of each listed message appears here.
const FIELDS: &[(&str, &str, u32, &str)] = &[
    ("CreateVolumeRequest", "name", 1, "string"),
    (
        "CreateVolumeRequest",
        "capacity_range",
        2,
        ".csi.v1.CapacityRange",
    ),
    (
        "CreateVolumeRequest",
        "volume_capabilities",
        3,
        "repeated .csi.v1.VolumeCapability",
    ),
    ("CreateVolumeRequest", "parameters", 4, MAP),
    ("CreateVolumeRequest", "secrets", 5, MAP),
    (
        "CreateVolumeRequest",
        "volume_content_source",
        6,
        ".csi.v1.VolumeContentSource",
    ),
    (
        "CreateVolumeRequest",
        "accessibility_requirements",
        7,
        ".csi.v1.TopologyRequirement",
    ),
    ("CreateVolumeRequest", "mutable_parameters", 8, MAP),
    ("Volume", "capacity_bytes", 1, "int64"),
    ("Volume", "volume_id", 2, "string"),
    ("Volume", "volume_context", 3, MAP),
    ("Volume", "content_source", 4, ".csi.v1.VolumeContentSource"),
    (
        "Volume",
        "accessible_topology",
        5,
        "repeated .csi.v1.Topology",
    ),
    ("NodeStageVolumeRequest", "volume_id", 1, "string"),
    ("NodeStageVolumeRequest", "publish_context", 2, MAP),
    ("NodeStageVolumeRequest", "staging_target_path", 3, "string"),
    (
        "NodeStageVolumeRequest",
        "volume_capability",
        4,
        ".csi.v1.VolumeCapability",
    ),
    ("NodeStageVolumeRequest", "secrets", 5, MAP),
    ("NodeStageVolumeRequest", "volume_context", 6, MAP),
    ("NodePublishVolumeRequest", "volume_id", 1, "string"),
    ("NodePublishVolumeRequest", "publish_context", 2, MAP),
    (
        "NodePublishVolumeRequest",
        "staging_target_path",
        3,
        "string",
    ),
    ("NodePublishVolumeRequest", "target_path", 4, "string"),
    (
        "NodePublishVolumeRequest",
        "volume_capability",
        5,
        ".csi.v1.VolumeCapability",
    ),
    ("NodePublishVolumeRequest", "readonly", 6, "bool"),
    ("NodePublishVolumeRequest", "secrets", 7, MAP),
    ("NodePublishVolumeRequest", "volume_context", 8, MAP),
    ("CreateSnapshotRequest", "source_volume_id", 1, "string"),
    ("CreateSnapshotRequest", "name", 2, "string"),
    ("CreateSnapshotRequest", "secrets", 3, MAP),
    ("CreateSnapshotRequest", "parameters", 4, MAP),
    ("ControllerModifyVolumeRequest", "volume_id", 1, "string"),
    ("ControllerModifyVolumeRequest", "secrets", 2, MAP),
    (
        "ControllerModifyVolumeRequest",
        "mutable_parameters",
        3,
        MAP,
    ),
    ("GetSnapshotRequest", "snapshot_id", 1, "string"),
    ("GetSnapshotRequest", "secrets", 2, MAP),
    ("CreateVolumeGroupSnapshotRequest", "name", 1, "string"),
    (
        "CreateVolumeGroupSnapshotRequest",
        "source_volume_ids",
        2,
        "repeated string",
    ),
    ("CreateVolumeGroupSnapshotRequest", "secrets", 3, MAP),
    ("CreateVolumeGroupSnapshotRequest", "parameters", 4, MAP),
    (
        "VolumeCapability",
        "block",
        1,
        ".csi.v1.VolumeCapability.BlockVolume",
    ),
    (
        "VolumeCapability",
        "mount",
        2,
        ".csi.v1.VolumeCapability.MountVolume",
    ),
    (
        "VolumeCapability",
        "access_mode",
        3,
        ".csi.v1.VolumeCapability.AccessMode",
    ),
    ("VolumeCapability.MountVolume", "fs_type", 1, "string"),
    (
        "VolumeCapability.MountVolume",
        "mount_flags",
        2,
        "repeated string",
    ),
    (
        "VolumeCapability.MountVolume",
        "volume_mount_group",
        3,
        "string",
    ),
    (
        "VolumeCapability.AccessMode",
        "mode",
        1,
        ".csi.v1.VolumeCapability.AccessMode.Mode",
    ),
    ("Snapshot", "size_bytes", 1, "int64"),
    ("Snapshot", "snapshot_id", 2, "string"),
    ("Snapshot", "source_volume_id", 3, "string"),
    ("Snapshot", "creation_time", 4, ".google.protobuf.Timestamp"),
    ("Snapshot", "ready_to_use", 5, "bool"),
    ("Snapshot", "group_snapshot_id", 6, "string"),
    ("NodeGetInfoResponse", "node_id", 1, "string"),
    ("NodeGetInfoResponse", "max_volumes_per_node", 2, "int64"),
    (
        "NodeGetInfoResponse",
        "accessible_topology",
        3,
        ".csi.v1.Topology",
    ),
    ("GetCapacityResponse", "available_capacity", 1, "int64"),
    (
        "GetCapacityResponse",
        "maximum_volume_size",
        2,
        ".google.protobuf.Int64Value",
    ),
    (
        "GetCapacityResponse",
        "minimum_volume_size",
        3,
        ".google.protobuf.Int64Value",
    ),
    ("ListVolumesRequest", "max_entries", 1, "int32"),
    ("ListVolumesRequest", "starting_token", 2, "string"),
    (
        "GetMetadataAllocatedResponse",
        "block_metadata_type",
        1,
        ".csi.v1.BlockMetadataType",
    ),
    (
        "GetMetadataAllocatedResponse",
        "volume_capacity_bytes",
        2,
        "int64",
    ),
    (
        "GetMetadataAllocatedResponse",
        "block_metadata",
        3,
        "repeated .csi.v1.BlockMetadata",
    ),
    ("ProbeResponse", "ready", 1, ".google.protobuf.BoolValue"),
];

#[test]
fn file_header_matches_upstream() {
    let pool = pool();
    let file = pool
        .get_file_by_name("csi.proto")
        .expect("csi.proto in set");
    assert_eq!(file.package_name(), "csi.v1");
    let deps: Vec<String> = file.dependencies().map(|d| d.name().to_owned()).collect();
    assert_eq!(
        deps,
        [
            "google/protobuf/descriptor.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto",
        ]
    );
    let go_package = file
        .options()
        .get_field_by_name("go_package")
        .unwrap()
        .into_owned();
    assert_eq!(
        go_package.as_str(),
        Some("github.com/container-storage-interface/spec/lib/go/csi")
    );
    // 79 top-level messages; 134 with nested messages and map entries.
    assert_eq!(file.messages().count(), 79, "top-level messages");
    let all = pool
        .all_messages()
        .filter(|m| m.package_name() == "csi.v1")
        .count();
    assert_eq!(all, 134, "all messages");
    assert_eq!(file.enums().count(), 1, "top-level enums");
}

#[test]
fn sampled_fields_match_upstream_numbers_and_types() {
    let pool = pool();
    let mut by_message: std::collections::BTreeMap<&str, BTreeSet<(&str, u32, String)>> =
        Default::default();
    for &(msg, field, number, ty) in FIELDS {
        by_message
            .entry(msg)
            .or_default()
            .insert((field, number, ty.to_owned()));
    }
    for (msg, expected) in by_message {
        let desc = message(&pool, msg);
        let actual: BTreeSet<(&str, u32, String)> = desc
            .fields()
            .map(|f| {
                let name: &str = expected
                    .iter()
                    .find(|(n, _, _)| *n == f.name())
                    .map(|(n, _, _)| *n)
                    .unwrap_or_else(|| panic!("unexpected field {msg}.{}", f.name()));
                (name, f.number(), type_name(&f))
            })
            .collect();
        assert_eq!(actual, expected, "fields of {msg}");
    }
}

#[test]
fn oneofs_match_upstream() {
    let pool = pool();
    let cases: &[(&str, &str, &[&str])] = &[
        ("VolumeCapability", "access_type", &["block", "mount"]),
        ("VolumeContentSource", "type", &["snapshot", "volume"]),
        ("PluginCapability", "type", &["service", "volume_expansion"]),
        ("ControllerServiceCapability", "type", &["rpc"]),
        ("NodeServiceCapability", "type", &["rpc"]),
        ("GroupControllerServiceCapability", "type", &["rpc"]),
    ];
    for &(msg, oneof, members) in cases {
        let desc = message(&pool, msg);
        let oneofs: Vec<_> = desc.oneofs().collect();
        assert_eq!(oneofs.len(), 1, "{msg} has one oneof");
        assert_eq!(oneofs[0].name(), oneof);
        let names: Vec<_> = oneofs[0].fields().map(|f| f.name().to_owned()).collect();
        assert_eq!(names, members, "{msg}.{oneof}");
    }
}

#[test]
fn services_and_methods_match_upstream() {
    let pool = pool();
    let expected: &[(&str, &[&str])] = &[
        (
            "Identity",
            &["GetPluginInfo", "GetPluginCapabilities", "Probe"],
        ),
        (
            "Controller",
            &[
                "CreateVolume",
                "DeleteVolume",
                "ControllerPublishVolume",
                "ControllerUnpublishVolume",
                "ValidateVolumeCapabilities",
                "ListVolumes",
                "GetCapacity",
                "ControllerGetCapabilities",
                "CreateSnapshot",
                "DeleteSnapshot",
                "ListSnapshots",
                "GetSnapshot",
                "ControllerExpandVolume",
                "ControllerGetVolume",
                "ControllerModifyVolume",
            ],
        ),
        (
            "GroupController",
            &[
                "GroupControllerGetCapabilities",
                "CreateVolumeGroupSnapshot",
                "DeleteVolumeGroupSnapshot",
                "GetVolumeGroupSnapshot",
            ],
        ),
        (
            "SnapshotMetadata",
            &["GetMetadataAllocated", "GetMetadataDelta"],
        ),
        (
            "Node",
            &[
                "NodeStageVolume",
                "NodeUnstageVolume",
                "NodePublishVolume",
                "NodeUnpublishVolume",
                "NodeGetVolumeStats",
                "NodeExpandVolume",
                "NodeGetCapabilities",
                "NodeGetInfo",
            ],
        ),
    ];
    let services: Vec<_> = pool.services().collect();
    let names: Vec<_> = services.iter().map(|s| s.name().to_owned()).collect();
    let want: Vec<_> = expected.iter().map(|(s, _)| (*s).to_owned()).collect();
    assert_eq!(names, want);
    for (svc, (_, methods)) in services.iter().zip(expected) {
        let got: Vec<_> = svc.methods().map(|m| m.name().to_owned()).collect();
        assert_eq!(&got, methods, "methods of {}", svc.name());
        for m in svc.methods() {
            // Each method takes <Name>Request and returns <Name>Response.
            assert_eq!(m.input().full_name(), format!("csi.v1.{}Request", m.name()));
            assert_eq!(
                m.output().full_name(),
                format!("csi.v1.{}Response", m.name())
            );
            assert!(!m.is_client_streaming(), "{} client streaming", m.name());
            assert_eq!(
                m.is_server_streaming(),
                svc.name() == "SnapshotMetadata",
                "{} server streaming",
                m.name()
            );
        }
    }
}

fn extension(
    pool: &DescriptorPool,
    name: &str,
    extendee: &str,
    number: u32,
) -> ExtensionDescriptor {
    let ext = pool
        .get_extension_by_name(&format!("csi.v1.{name}"))
        .unwrap_or_else(|| panic!("extension {name} missing"));
    assert_eq!(ext.number(), number, "{name} number");
    assert_eq!(
        ext.containing_message().full_name(),
        extendee,
        "{name} extendee"
    );
    assert_eq!(ext.kind(), Kind::Bool, "{name} type");
    ext
}

fn is_set(options: &DynamicMessage, ext: &ExtensionDescriptor) -> bool {
    options.has_extension(ext) && options.get_extension(ext).as_bool() == Some(true)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| format!("csi.v1.{s}")).collect()
}

#[test]
fn custom_options_match_upstream_exactly() {
    let pool = pool();
    let secret = extension(&pool, "csi_secret", "google.protobuf.FieldOptions", 1059);
    let alpha_field = extension(&pool, "alpha_field", "google.protobuf.FieldOptions", 1060);
    let alpha_message = extension(
        &pool,
        "alpha_message",
        "google.protobuf.MessageOptions",
        1060,
    );
    let alpha_enum = extension(&pool, "alpha_enum", "google.protobuf.EnumOptions", 1060);
    let alpha_value = extension(
        &pool,
        "alpha_enum_value",
        "google.protobuf.EnumValueOptions",
        1060,
    );
    let alpha_method = extension(&pool, "alpha_method", "google.protobuf.MethodOptions", 1060);
    let alpha_service = extension(
        &pool,
        "alpha_service",
        "google.protobuf.ServiceOptions",
        1060,
    );

    let (mut secrets, mut alpha_fields, mut alpha_messages, mut alpha_values, mut alpha_enums) =
        <(
            BTreeSet<_>,
            BTreeSet<_>,
            BTreeSet<_>,
            BTreeSet<_>,
            BTreeSet<_>,
        )>::default();
    for msg in pool.all_messages().filter(|m| m.package_name() == "csi.v1") {
        if is_set(&msg.options(), &alpha_message) {
            alpha_messages.insert(msg.full_name().to_owned());
        }
        for f in msg.fields() {
            let opts = f.options();
            if is_set(&opts, &secret) {
                secrets.insert(f.full_name().to_owned());
            }
            if is_set(&opts, &alpha_field) {
                alpha_fields.insert(f.full_name().to_owned());
            }
        }
    }
    for e in pool.all_enums().filter(|e| e.package_name() == "csi.v1") {
        if is_set(&e.options(), &alpha_enum) {
            alpha_enums.insert(e.full_name().to_owned());
        }
        for v in e.values() {
            if is_set(&v.options(), &alpha_value) {
                // Values scope to the enum's parent in protobuf; name them
                // under the enum so that equal value names stay distinct.
                alpha_values.insert(format!("{}.{}", e.full_name(), v.name()));
            }
        }
    }
    let mut alpha_methods = BTreeSet::new();
    let mut alpha_services = BTreeSet::new();
    for s in pool.services() {
        if is_set(&s.options(), &alpha_service) {
            alpha_services.insert(s.full_name().to_owned());
        }
        for m in s.methods() {
            if is_set(&m.options(), &alpha_method) {
                alpha_methods.insert(m.full_name().to_owned());
            }
        }
    }

    assert_eq!(
        secrets,
        set(&[
            "CreateVolumeRequest.secrets",
            "DeleteVolumeRequest.secrets",
            "ControllerPublishVolumeRequest.secrets",
            "ControllerUnpublishVolumeRequest.secrets",
            "ValidateVolumeCapabilitiesRequest.secrets",
            "ControllerModifyVolumeRequest.secrets",
            "CreateSnapshotRequest.secrets",
            "DeleteSnapshotRequest.secrets",
            "ListSnapshotsRequest.secrets",
            "GetSnapshotRequest.secrets",
            "ControllerExpandVolumeRequest.secrets",
            "NodeStageVolumeRequest.secrets",
            "NodePublishVolumeRequest.secrets",
            "NodeExpandVolumeRequest.secrets",
            "CreateVolumeGroupSnapshotRequest.secrets",
            "DeleteVolumeGroupSnapshotRequest.secrets",
            "GetVolumeGroupSnapshotRequest.secrets",
            "GetMetadataAllocatedRequest.secrets",
            "GetMetadataDeltaRequest.secrets",
        ]),
        "fields carrying (csi_secret)"
    );
    assert_eq!(
        alpha_fields,
        set(&[
            "ListVolumesResponse.VolumeStatus.volume_condition",
            "GetCapacityResponse.minimum_volume_size",
            "NodeGetVolumeStatsResponse.volume_condition",
            "NodeExpandVolumeRequest.secrets",
        ]),
        "fields carrying (alpha_field)"
    );
    assert_eq!(
        alpha_messages,
        set(&[
            "ControllerGetVolumeRequest",
            "ControllerGetVolumeResponse",
            "GetSnapshotRequest",
            "GetSnapshotResponse",
            "VolumeCondition",
        ]),
        "messages carrying (alpha_message); ControllerModifyVolume is GA in v1.12"
    );
    assert_eq!(
        alpha_values,
        set(&[
            "PluginCapability.Service.Type.SNAPSHOT_METADATA_SERVICE",
            "VolumeCapability.AccessMode.Mode.SINGLE_NODE_SINGLE_WRITER",
            "VolumeCapability.AccessMode.Mode.SINGLE_NODE_MULTI_WRITER",
            "ControllerServiceCapability.RPC.Type.VOLUME_CONDITION",
            "ControllerServiceCapability.RPC.Type.GET_VOLUME",
            "ControllerServiceCapability.RPC.Type.SINGLE_NODE_MULTI_WRITER",
            "ControllerServiceCapability.RPC.Type.GET_SNAPSHOT",
            "NodeServiceCapability.RPC.Type.VOLUME_CONDITION",
            "NodeServiceCapability.RPC.Type.SINGLE_NODE_MULTI_WRITER",
        ]),
        "enum values carrying (alpha_enum_value)"
    );
    assert!(alpha_enums.is_empty(), "no enum carries (alpha_enum)");
    assert_eq!(
        alpha_methods,
        set(&["Controller.GetSnapshot", "Controller.ControllerGetVolume"]),
        "methods carrying (alpha_method)"
    );
    assert_eq!(
        alpha_services,
        set(&["SnapshotMetadata"]),
        "services carrying (alpha_service)"
    );
}

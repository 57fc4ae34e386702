//! Encodes and decodes a CreateVolumeRequest against bytes laid out by hand
//! from the CSI field numbers, so a renumbered or retyped field fails here
//! even if the descriptor checks were wrong too.

use std::collections::HashMap;

use csi_proto::prost::Message;
use csi_proto::{
    CapacityRange, CreateVolumeRequest, Topology, TopologyRequirement, VolumeCapability,
    VolumeContentSource, volume_capability, volume_content_source,
};

fn request() -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: "pvc-1".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    fs_type: "ext4".into(),
                    ..Default::default()
                },
            )),
        }],
        parameters: HashMap::from([("pool".into(), "fast".into())]),
        secrets: HashMap::from([("password".into(), "hunter2".into())]),
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: "snap-1".into(),
                },
            )),
        }),
        accessibility_requirements: Some(TopologyRequirement {
            requisite: vec![Topology {
                segments: HashMap::from([("zone".into(), "a".into())]),
            }],
            preferred: vec![],
        }),
        mutable_parameters: HashMap::from([("iops".into(), "3000".into())]),
    }
}

/// `tag` is (field_number << 3) | wire_type; 2 = length-delimited, 0 = varint.
fn ld(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u8::try_from(body.len()).expect("short test bodies");
    [&[tag, len][..], body].concat()
}

fn entry(k: &str, v: &str) -> Vec<u8> {
    [ld(0x0a, k.as_bytes()), ld(0x12, v.as_bytes())].concat()
}

/// The request laid out in field-number order, as protoc-generated encoders emit it.
fn known_bytes() -> Vec<u8> {
    let capacity = [0x08, 0x80, 0x80, 0x40]; // required_bytes (1) = 1048576 varint
    let mount = ld(0x0a, b"ext4"); // MountVolume.fs_type (1)
    let access_mode = [0x08, 0x01]; // AccessMode.mode (1) = SINGLE_NODE_WRITER
    let capability = [ld(0x12, &mount), ld(0x1a, &access_mode)].concat(); // mount (2), access_mode (3)
    let source = ld(0x0a, &ld(0x0a, b"snap-1")); // snapshot (1) { snapshot_id (1) }
    let topology = ld(0x0a, &entry("zone", "a")); // Topology.segments (1)
    let requirement = ld(0x0a, &topology); // TopologyRequirement.requisite (1)
    [
        ld(0x0a, b"pvc-1"),                      // name (1)
        ld(0x12, &capacity),                     // capacity_range (2)
        ld(0x1a, &capability),                   // volume_capabilities (3)
        ld(0x22, &entry("pool", "fast")),        // parameters (4)
        ld(0x2a, &entry("password", "hunter2")), // secrets (5)
        ld(0x32, &source),                       // volume_content_source (6)
        ld(0x3a, &requirement),                  // accessibility_requirements (7)
        ld(0x42, &entry("iops", "3000")),        // mutable_parameters (8)
    ]
    .concat()
}

#[test]
fn known_bytes_decode_to_the_request() {
    let decoded = CreateVolumeRequest::decode(&known_bytes()[..]).expect("decode");
    assert_eq!(decoded, request());
}

#[test]
fn request_encodes_to_the_known_bytes() {
    // Every map has one entry, so the encoding is deterministic.
    assert_eq!(request().encode_to_vec(), known_bytes());
}

#[test]
fn round_trip_preserves_every_field() {
    let bytes = request().encode_to_vec();
    assert_eq!(
        CreateVolumeRequest::decode(&bytes[..]).expect("decode"),
        request()
    );
}

#[test]
fn unknown_fields_from_a_newer_peer_are_skipped() {
    // Field 99 (varint) is not in v1.12; proto3 decoders must ignore it.
    let mut bytes = known_bytes();
    bytes.extend_from_slice(&[0x98, 0x06, 0x2a]);
    assert_eq!(
        CreateVolumeRequest::decode(&bytes[..]).expect("decode"),
        request()
    );
}

#[test]
fn truncated_input_is_an_error() {
    let bytes = known_bytes();
    assert!(CreateVolumeRequest::decode(&bytes[..bytes.len() - 1]).is_err());
}

//! Proto ⇄ domain translation shared by the services: capabilities, topology, volumes,
//! snapshots, paging tokens.

use std::collections::HashMap;

use csi_proto as pb;
use csi_proto::prost_types::Timestamp;
use pb::volume_capability::AccessType;

use crate::driver::{AccessMode, Cap, TOPOLOGY_KEY};
use crate::error::{Error, Result};
use crate::state::{SnapshotRecord, Source, VolumeRecord};
use crate::validate;

/// volume_context keys returned by CreateVolume.
pub const CTX_POOL: &str = "pool";
pub const CTX_FS_TYPE: &str = "fsType";
pub const CTX_NODE: &str = "node";

/// A VolumeCapability → Cap; a missing access_type or access_mode is INVALID_ARGUMENT.
pub fn cap(field: &'static str, c: &pb::VolumeCapability) -> Result<Cap> {
    let mode = c
        .access_mode
        .as_ref()
        .and_then(|m| AccessMode::from_wire(m.mode))
        .ok_or_else(|| Error::invalid(field, "access_mode is missing or UNKNOWN"))?;
    match &c.access_type {
        Some(AccessType::Block(_)) => Ok(Cap {
            block: true,
            fs_type: String::new(),
            mount_flags: Vec::new(),
            mount_group: String::new(),
            mode,
        }),
        Some(AccessType::Mount(m)) => {
            validate::bounded(field, &m.fs_type)?;
            validate::bounded(field, &m.volume_mount_group)?;
            let total: usize = m.mount_flags.iter().map(|f| f.len()).sum();
            if total > validate::MAP_MAX {
                return Err(Error::invalid(field, "mount_flags exceed 4 KiB"));
            }
            Ok(Cap {
                block: false,
                fs_type: m.fs_type.clone(),
                mount_flags: m.mount_flags.clone(),
                mount_group: m.volume_mount_group.clone(),
                mode,
            })
        }
        None => Err(Error::invalid(
            field,
            "access_type (block or mount) is missing",
        )),
    }
}

pub fn required_cap(field: &'static str, c: &Option<pb::VolumeCapability>) -> Result<Cap> {
    match c {
        Some(c) => cap(field, c),
        None => Err(Error::invalid(field, "required field is missing")),
    }
}

pub fn caps(field: &'static str, list: &[pb::VolumeCapability]) -> Result<Vec<Cap>> {
    if list.is_empty() {
        return Err(Error::invalid(field, "at least one capability is required"));
    }
    list.iter().map(|c| cap(field, c)).collect()
}

pub fn topology(node_id: &str) -> pb::Topology {
    pb::Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node_id.to_string())]),
    }
}

pub fn source_of(s: &Option<pb::VolumeContentSource>) -> Result<Option<Source>> {
    use pb::volume_content_source::Type;
    let Some(s) = s else { return Ok(None) };
    match &s.r#type {
        Some(Type::Snapshot(x)) => {
            validate::id("volume_content_source.snapshot.snapshot_id", &x.snapshot_id)?;
            Ok(Some(Source::Snapshot(x.snapshot_id.clone())))
        }
        Some(Type::Volume(x)) => {
            validate::id("volume_content_source.volume.volume_id", &x.volume_id)?;
            Ok(Some(Source::Volume(x.volume_id.clone())))
        }
        None => Err(Error::invalid("volume_content_source", "type is missing")),
    }
}

pub fn content_source(s: &Source) -> pb::VolumeContentSource {
    use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
    pb::VolumeContentSource {
        r#type: Some(match s {
            Source::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            Source::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

pub fn volume(v: &VolumeRecord, node_id: &str) -> pb::Volume {
    pb::Volume {
        capacity_bytes: v.capacity as i64,
        volume_id: v.id.clone(),
        volume_context: HashMap::from([
            (CTX_POOL.to_string(), v.pool.clone()),
            (CTX_FS_TYPE.to_string(), v.fs_type.clone()),
            (CTX_NODE.to_string(), node_id.to_string()),
        ]),
        content_source: v.source.as_ref().map(content_source),
        accessible_topology: vec![topology(node_id)],
    }
}

pub fn timestamp(unix: i64) -> Timestamp {
    Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

pub fn snapshot(s: &SnapshotRecord) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: s.size as i64,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(timestamp(s.created_unix)),
        ready_to_use: s.phase == crate::state::Phase::Ready,
        group_snapshot_id: s.group_id.clone().unwrap_or_default(),
    }
}

pub fn topologies(list: &[pb::Topology]) -> Vec<HashMap<String, String>> {
    list.iter().map(|t| t.segments.clone()).collect()
}

/// Non-negative byte counts from a CapacityRange.
pub fn range(r: &Option<pb::CapacityRange>) -> Result<(u64, u64)> {
    let Some(r) = r else { return Ok((0, 0)) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Error::invalid("capacity_range", "negative byte count"));
    }
    Ok((r.required_bytes as u64, r.limit_bytes as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_need_type_and_mode() {
        let mut c = pb::VolumeCapability::default();
        assert!(cap("volume_capability", &c).is_err());
        c.access_mode = Some(pb::volume_capability::AccessMode { mode: 1 });
        let e = cap("volume_capability", &c).unwrap_err().to_string();
        assert!(e.contains("access_type"), "{e}");
        c.access_type = Some(AccessType::Block(Default::default()));
        assert!(cap("volume_capability", &c).unwrap().block);
    }
}

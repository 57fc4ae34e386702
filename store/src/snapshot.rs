//! The `snapshot.storage.k8s.io/v1` kinds: VolumeSnapshotClass, VolumeSnapshot and
//! VolumeSnapshotContent, typed as external-snapshotter's
//! `client/apis/volumesnapshot/v1/types.go` (they are CRDs, so k8s-openapi lacks them).
//!
//! Field names, optionality and JSON types follow upstream exactly, down to its quirks: a
//! VolumeSnapshot's `restoreSize` is a quantity and its `creationTime` a timestamp, while a
//! content's `restoreSize` is bytes and its `creationTime` nanoseconds since the epoch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

pub const GROUP: &str = "snapshot.storage.k8s.io";
pub const API_VERSION: &str = "snapshot.storage.k8s.io/v1";

/// `deletionPolicy` of a class or content: what happens to the storage system's snapshot
/// when its content object is deleted.
pub const DELETION_POLICY_DELETE: &str = "Delete";
pub const DELETION_POLICY_RETAIN: &str = "Retain";

/// How to take snapshots with one driver (cluster-scoped).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotClass {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub driver: String,
    /// Opaque to Kubernetes, passed to CreateSnapshot (keys prefixed
    /// `csi.storage.k8s.io/` are the sidecar's and are not passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
    /// `Delete` or `Retain`.
    pub deletion_policy: String,
}

/// A user's request for a snapshot of a claim, or for a pre-provisioned content (namespaced).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: VolumeSnapshotSpec,
    #[serde(default)]
    pub status: Option<VolumeSnapshotStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    /// Exactly one of its fields is set; immutable.
    pub source: VolumeSnapshotSource,
    /// None: the default class of the source's driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    /// A claim in the snapshot's namespace to snapshot now (dynamic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    /// A content that already exists (pre-provisioned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// When the storage system cut the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest volume a restore needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_name: Option<String>,
}

/// The last error of a snapshot operation; cleared when one succeeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A snapshot on the storage system (cluster-scoped), bound one to one to a VolumeSnapshot.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContent {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: VolumeSnapshotContentSpec,
    #[serde(default)]
    pub status: Option<VolumeSnapshotContentStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSpec {
    /// The VolumeSnapshot this content is bound to (name and namespace; uid once bound).
    pub volume_snapshot_ref: ObjectReference,
    /// `Delete` or `Retain`.
    pub deletion_policy: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    /// Exactly one of its fields is set; immutable.
    pub source: VolumeSnapshotContentSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume_mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSource {
    /// The CSI volume to snapshot (dynamic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
    /// The CSI snapshot that already exists (pre-provisioned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// Nanoseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<i64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_handle: Option<String>,
}

/// `Resource`, `Metadata` and a `Serialize` that writes `apiVersion` and `kind` first, as
/// k8s-openapi's generated types do (the derived `Deserialize` ignores those two keys).
macro_rules! resource {
    ($ty:ident, $plural:literal, $scope:ty, [$($field:ident: $json:literal $(?$opt:tt)?),*]) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = API_VERSION;
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = stringify!($ty);
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::ListableResource for $ty {
            const LIST_KIND: &'static str = concat!(stringify!($ty), "List");
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut st = s.serialize_struct(stringify!($ty), 6)?;
                st.serialize_field("apiVersion", API_VERSION)?;
                st.serialize_field("kind", stringify!($ty))?;
                st.serialize_field("metadata", &self.metadata)?;
                $(resource!(@field st, self, $field, $json $(?$opt)?);)*
                st.end()
            }
        }
    };
    (@field $st:ident, $self:ident, $field:ident, $json:literal) => {
        $st.serialize_field($json, &$self.$field)?
    };
    (@field $st:ident, $self:ident, $field:ident, $json:literal ?opt) => {
        match &$self.$field {
            Some(v) => $st.serialize_field($json, v)?,
            None => $st.skip_field($json)?,
        }
    };
}

resource!(
    VolumeSnapshotClass,
    "volumesnapshotclasses",
    k8s_openapi::ClusterResourceScope,
    [driver: "driver", parameters: "parameters" ?opt, deletion_policy: "deletionPolicy"]
);
resource!(
    VolumeSnapshot,
    "volumesnapshots",
    k8s_openapi::NamespaceResourceScope,
    [spec: "spec", status: "status" ?opt]
);
resource!(
    VolumeSnapshotContent,
    "volumesnapshotcontents",
    k8s_openapi::ClusterResourceScope,
    [spec: "spec", status: "status" ?opt]
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upstream_json_round_trips_with_api_version_and_kind() {
        let v = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": "snapcontent-1"},
            "spec": {
                "volumeSnapshotRef": {"name": "s", "namespace": "default", "uid": "u"},
                "deletionPolicy": "Delete", "driver": "d",
                "source": {"snapshotHandle": "h"}
            },
            "status": {"snapshotHandle": "h", "creationTime": 1_700_000_000_000_000_000i64,
                       "restoreSize": 1073741824, "readyToUse": true}
        });
        let c: VolumeSnapshotContent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            c.status.as_ref().unwrap().restore_size,
            Some(1 << 30),
            "a content's restoreSize is bytes"
        );
        assert_eq!(serde_json::to_value(&c).unwrap(), v);
        let s = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "s", "namespace": "default"},
            "spec": {"source": {"persistentVolumeClaimName": "data"},
                     "volumeSnapshotClassName": "c"},
            "status": {"restoreSize": "1Gi", "readyToUse": false}
        });
        let typed: VolumeSnapshot = serde_json::from_value(s.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), s);
        let class = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": "c"}, "driver": "d", "deletionPolicy": "Retain"
        });
        let typed: VolumeSnapshotClass = serde_json::from_value(class.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), class);
    }
}

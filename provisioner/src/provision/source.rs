//! A claim's data source: the snapshot to restore or the claim to clone, checked as
//! external-provisioner's `getSnapshotSource` and `getPVCSource` check them, and turned
//! into the CSI `VolumeContentSource`.

use strata_store::snapshot::{VolumeSnapshot, VolumeSnapshotContent};

use super::request::{ContentSource, DriverInfo};
use crate::binder::class::claim_class;
use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use crate::meta;
use crate::names::snapshot::ANN_ALLOW_VOLUME_MODE_CHANGE;

/// What a claim's `dataSourceRef` (else `dataSource`) names, when it is a kind we restore
/// or clone from. Other kinds are left to their populators, as upstream does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    Snapshot {
        namespace: Option<String>,
        name: String,
    },
    Claim {
        namespace: Option<String>,
        name: String,
    },
}

impl DataSource {
    pub fn name(&self) -> &str {
        match self {
            DataSource::Snapshot { name, .. } | DataSource::Claim { name, .. } => name,
        }
    }
}

pub fn data_source(pvc: &PersistentVolumeClaim) -> Option<DataSource> {
    let spec = pvc.spec.as_ref()?;
    let (kind, group, name, namespace) = match (&spec.data_source_ref, &spec.data_source) {
        (Some(r), _) => (
            r.kind.as_str(),
            r.api_group.as_deref().unwrap_or_default(),
            r.name.clone(),
            r.namespace.clone().filter(|n| !n.is_empty()),
        ),
        (None, Some(r)) => (
            r.kind.as_str(),
            r.api_group.as_deref().unwrap_or_default(),
            r.name.clone(),
            None,
        ),
        (None, None) => return None,
    };
    match (kind, group) {
        ("VolumeSnapshot", strata_store::snapshot::GROUP) => {
            Some(DataSource::Snapshot { namespace, name })
        }
        ("PersistentVolumeClaim", "") => Some(DataSource::Claim { namespace, name }),
        _ => None,
    }
}

/// Whether `pvc` is still being provisioned from the snapshot `ns/name` (the
/// snapshot-as-source finalizer waits for such claims).
pub fn restoring_from(pvc: &PersistentVolumeClaim, ns: &str, name: &str) -> bool {
    meta::namespace(&pvc.metadata) == ns
        && meta::claim_phase(pvc) == "Pending"
        && matches!(data_source(pvc), Some(DataSource::Snapshot { namespace, name: n })
            if n == name && namespace.as_deref().is_none_or(|x| x == ns))
}

/// The objects the source names, as the cache holds them.
#[derive(Debug, Default)]
pub struct Found<'a> {
    pub snapshot: Option<&'a VolumeSnapshot>,
    pub content: Option<&'a VolumeSnapshotContent>,
    pub claim: Option<&'a PersistentVolumeClaim>,
    pub volume: Option<&'a PersistentVolume>,
}

/// Checks the source against the claim and returns the CSI content source, or the reason
/// it cannot be used yet (the caller reports it and retries, as upstream does).
pub fn resolve(
    pvc: &PersistentVolumeClaim,
    source: &DataSource,
    found: &Found<'_>,
    driver: &DriverInfo,
    required_bytes: u128,
) -> Result<ContentSource, String> {
    let ns = meta::namespace(&pvc.metadata);
    let (other_ns, what) = match source {
        DataSource::Snapshot { namespace, name } => (namespace, format!("VolumeSnapshot {name:?}")),
        DataSource::Claim { namespace, name } => {
            (namespace, format!("PersistentVolumeClaim {name:?}"))
        }
    };
    if let Some(other) = other_ns.as_deref().filter(|o| *o != ns) {
        // Cross-namespace sources need ReferenceGrants (a Gateway API kind we do not store).
        return Err(format!(
            "data source {what} in namespace {other:?}: cross-namespace data sources are not supported, the source must be in the claim's namespace {ns:?}"
        ));
    }
    match source {
        DataSource::Snapshot { name, .. } => {
            snapshot_source(pvc, name, found, driver, required_bytes)
        }
        DataSource::Claim { name, .. } => claim_source(pvc, name, found, driver, required_bytes),
    }
}

fn snapshot_source(
    pvc: &PersistentVolumeClaim,
    name: &str,
    found: &Found<'_>,
    driver: &DriverInfo,
    required_bytes: u128,
) -> Result<ContentSource, String> {
    if !driver.create_delete_snapshot {
        return Err(format!(
            "driver {:?} does not support snapshots, cannot restore VolumeSnapshot {name:?}",
            driver.name
        ));
    }
    let snapshot = found
        .snapshot
        .ok_or_else(|| format!("VolumeSnapshot {name:?} not found"))?;
    if snapshot.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "VolumeSnapshot {name:?} is currently being deleted"
        ));
    }
    let status = snapshot.status.as_ref();
    let bound = status
        .and_then(|s| s.bound_volume_snapshot_content_name.as_deref())
        .ok_or_else(|| {
            format!("VolumeSnapshot {name:?} is not bound to a VolumeSnapshotContent yet")
        })?;
    let content = found
        .content
        .filter(|c| meta::name(&c.metadata) == bound)
        .ok_or_else(|| {
            format!("VolumeSnapshotContent {bound:?} of VolumeSnapshot {name:?} not found")
        })?;
    let r = &content.spec.volume_snapshot_ref;
    if r.name.as_deref() != Some(name)
        || r.namespace.as_deref() != Some(meta::namespace(&pvc.metadata))
        || r.uid.as_deref() != snapshot.metadata.uid.as_deref()
    {
        return Err(format!(
            "VolumeSnapshotContent {bound:?} is not bound to VolumeSnapshot {name:?}"
        ));
    }
    if content.spec.driver != driver.name {
        return Err(format!(
            "VolumeSnapshotContent {bound:?} belongs to driver {:?}, not {:?}",
            content.spec.driver, driver.name
        ));
    }
    if status.and_then(|s| s.ready_to_use) != Some(true) {
        return Err(format!("VolumeSnapshot {name:?} is not ready to use yet"));
    }
    let handle = content
        .status
        .as_ref()
        .and_then(|s| s.snapshot_handle.clone())
        .ok_or_else(|| format!("VolumeSnapshotContent {bound:?} has no snapshot handle yet"))?;
    if let Some(size) = status.and_then(|s| s.restore_size.as_ref()) {
        let restore = crate::quantity::parse_bytes(&size.0)
            .map_err(|e| format!("VolumeSnapshot {name:?} restoreSize {:?}: {e}", size.0))?;
        if required_bytes < restore {
            return Err(format!(
                "requested volume size {required_bytes} is less than the size {restore} of the source VolumeSnapshot {name:?}"
            ));
        }
    }
    let claim_mode = meta::claim_volume_mode(pvc);
    if let Some(source_mode) = content.spec.source_volume_mode.as_deref()
        && source_mode != claim_mode
        && meta::annotation(&content.metadata, ANN_ALLOW_VOLUME_MODE_CHANGE) != Some("true")
    {
        return Err(format!(
            "VolumeSnapshot {name:?} was taken of a {source_mode} volume; restoring it as {claim_mode} needs the {ANN_ALLOW_VOLUME_MODE_CHANGE} annotation on VolumeSnapshotContent {bound:?}"
        ));
    }
    Ok(ContentSource::Snapshot(handle))
}

fn claim_source(
    pvc: &PersistentVolumeClaim,
    name: &str,
    found: &Found<'_>,
    driver: &DriverInfo,
    required_bytes: u128,
) -> Result<ContentSource, String> {
    if !driver.clone_volume {
        return Err(format!(
            "driver {:?} does not support cloning, cannot clone PersistentVolumeClaim {name:?}",
            driver.name
        ));
    }
    let source = found
        .claim
        .ok_or_else(|| format!("source PersistentVolumeClaim {name:?} not found"))?;
    if source.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "source PersistentVolumeClaim {name:?} is currently being deleted"
        ));
    }
    if claim_class(source) != claim_class(pvc) {
        return Err(format!(
            "the source PVC and destination PVCs must be in the same storage class for cloning: source {name:?} is in {:?}, the new claim in {:?}",
            claim_class(source),
            claim_class(pvc)
        ));
    }
    let source_bytes = meta::claim_request_bytes(source)?;
    if required_bytes < source_bytes {
        return Err(format!(
            "the new claim must request at least the size of its source PersistentVolumeClaim {name:?}: requested {required_bytes} bytes, the source {source_bytes}"
        ));
    }
    if meta::claim_phase(source) != "Bound" {
        return Err(format!(
            "source PersistentVolumeClaim {name:?} is not bound yet"
        ));
    }
    let volume = found
        .volume
        .filter(|pv| meta::name(&pv.metadata) == meta::claim_volume_name(source))
        .ok_or_else(|| {
            format!(
                "volume {:?} of source PersistentVolumeClaim {name:?} not found",
                meta::claim_volume_name(source)
            )
        })?;
    if volume.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "volume {:?} of source PersistentVolumeClaim {name:?} is being deleted",
            meta::name(&volume.metadata)
        ));
    }
    let csi = volume
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .filter(|c| c.driver == driver.name)
        .ok_or_else(|| {
            format!(
                "source PersistentVolumeClaim {name:?} is not a volume of driver {:?}",
                driver.name
            )
        })?;
    let (from, to) = (
        meta::volume_volume_mode(volume),
        meta::claim_volume_mode(pvc),
    );
    if from != to {
        return Err(format!(
            "the source PVC and destination PVCs must have the same volume mode for cloning: source {name:?} is {from}, the new claim {to}"
        ));
    }
    Ok(ContentSource::Volume(csi.volume_handle.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;
    use crate::k8s_openapi::api::core::v1::{
        CSIPersistentVolumeSource, TypedLocalObjectReference, TypedObjectReference,
    };
    use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use strata_store::snapshot::{
        VolumeSnapshotContentSpec, VolumeSnapshotContentStatus, VolumeSnapshotStatus,
    };

    fn driver() -> DriverInfo {
        DriverInfo {
            name: "d".into(),
            create_delete_snapshot: true,
            clone_volume: true,
            ..Default::default()
        }
    }

    fn restore(size: &str, from: &str) -> PersistentVolumeClaim {
        let mut c = claim("r", size, &["ReadWriteOnce"]);
        c.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            api_group: Some("snapshot.storage.k8s.io".into()),
            kind: "VolumeSnapshot".into(),
            name: from.into(),
        });
        c
    }

    fn ready_snapshot() -> (VolumeSnapshot, VolumeSnapshotContent) {
        let mut s = VolumeSnapshot::default();
        s.metadata.name = Some("s".into());
        s.metadata.namespace = Some("default".into());
        s.metadata.uid = Some("su".into());
        s.status = Some(VolumeSnapshotStatus {
            bound_volume_snapshot_content_name: Some("snapcontent-su".into()),
            ready_to_use: Some(true),
            restore_size: Some(Quantity("1Gi".into())),
            ..Default::default()
        });
        let mut c = VolumeSnapshotContent::default();
        c.metadata.name = Some("snapcontent-su".into());
        c.spec = VolumeSnapshotContentSpec {
            driver: "d".into(),
            deletion_policy: "Delete".into(),
            source_volume_mode: Some("Filesystem".into()),
            ..Default::default()
        };
        c.spec.volume_snapshot_ref.name = Some("s".into());
        c.spec.volume_snapshot_ref.namespace = Some("default".into());
        c.spec.volume_snapshot_ref.uid = Some("su".into());
        c.status = Some(VolumeSnapshotContentStatus {
            snapshot_handle: Some("h".into()),
            ready_to_use: Some(true),
            ..Default::default()
        });
        (s, c)
    }

    #[test]
    fn data_source_ref_wins_and_other_kinds_are_not_ours() {
        let mut c = restore("1Gi", "s");
        assert_eq!(
            data_source(&c),
            Some(DataSource::Snapshot {
                namespace: None,
                name: "s".into()
            })
        );
        c.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
            api_group: None,
            kind: "PersistentVolumeClaim".into(),
            name: "src".into(),
            namespace: Some("other".into()),
        });
        assert_eq!(
            data_source(&c),
            Some(DataSource::Claim {
                namespace: Some("other".into()),
                name: "src".into()
            })
        );
        c.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
            api_group: Some("example.com".into()),
            kind: "Populator".into(),
            name: "p".into(),
            namespace: None,
        });
        assert_eq!(data_source(&c), None);
    }

    #[test]
    fn a_ready_snapshot_restores_into_a_claim_at_least_its_size() {
        let (s, c) = ready_snapshot();
        let found = Found {
            snapshot: Some(&s),
            content: Some(&c),
            ..Default::default()
        };
        let pvc = restore("1Gi", "s");
        let src = data_source(&pvc).unwrap();
        assert_eq!(
            resolve(&pvc, &src, &found, &driver(), 1 << 30),
            Ok(ContentSource::Snapshot("h".into()))
        );
        let err = resolve(&pvc, &src, &found, &driver(), (1 << 30) - 1).unwrap_err();
        assert!(err.contains("less than the size 1073741824"), "{err}");
        // Not ready, unbound, missing, another driver's: each says so.
        let mut not_ready = s.clone();
        not_ready.status.as_mut().unwrap().ready_to_use = Some(false);
        let f = Found {
            snapshot: Some(&not_ready),
            content: Some(&c),
            ..Default::default()
        };
        assert!(
            resolve(&pvc, &src, &f, &driver(), 1 << 30)
                .unwrap_err()
                .contains("not ready")
        );
        let f = Found::default();
        assert!(
            resolve(&pvc, &src, &f, &driver(), 1 << 30)
                .unwrap_err()
                .contains("not found")
        );
        let mut other = c.clone();
        other.spec.driver = "x".into();
        let f = Found {
            snapshot: Some(&s),
            content: Some(&other),
            ..Default::default()
        };
        assert!(
            resolve(&pvc, &src, &f, &driver(), 1 << 30)
                .unwrap_err()
                .contains("belongs to driver")
        );
        let mut block = pvc.clone();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let found = Found {
            snapshot: Some(&s),
            content: Some(&c),
            ..Default::default()
        };
        assert!(
            resolve(&block, &src, &found, &driver(), 1 << 30)
                .unwrap_err()
                .contains("allow-volume-mode-change")
        );
    }

    #[test]
    fn clones_need_a_bound_same_class_same_namespace_source() {
        let mut src = with_class_pvc(claim("src", "1Gi", &["ReadWriteOnce"]), "fast");
        src.spec.as_mut().unwrap().volume_name = Some("pv1".into());
        src.status.get_or_insert_default().phase = Some("Bound".into());
        let mut pv = volume("pv1", "1Gi", &["ReadWriteOnce"]);
        pv.spec.as_mut().unwrap().csi = Some(CSIPersistentVolumeSource {
            driver: "d".into(),
            volume_handle: "vol-1".into(),
            ..Default::default()
        });
        pv.spec.as_mut().unwrap().volume_mode = Some("Filesystem".into());
        let mut dst = with_class_pvc(claim("dst", "1Gi", &["ReadWriteOnce"]), "fast");
        dst.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            api_group: None,
            kind: "PersistentVolumeClaim".into(),
            name: "src".into(),
        });
        let ds = data_source(&dst).unwrap();
        let found = Found {
            claim: Some(&src),
            volume: Some(&pv),
            ..Default::default()
        };
        assert_eq!(
            resolve(&dst, &ds, &found, &driver(), 1 << 30),
            Ok(ContentSource::Volume("vol-1".into()))
        );
        assert!(
            resolve(&dst, &ds, &found, &driver(), 1 << 29)
                .unwrap_err()
                .contains("at least the size")
        );
        let other_class = with_class_pvc(dst.clone(), "slow");
        assert!(
            resolve(&other_class, &ds, &found, &driver(), 1 << 30)
                .unwrap_err()
                .contains("same storage class")
        );
        let cross = DataSource::Claim {
            namespace: Some("other".into()),
            name: "src".into(),
        };
        assert!(
            resolve(&dst, &cross, &found, &driver(), 1 << 30)
                .unwrap_err()
                .contains("cross-namespace")
        );
        let mut pending = src.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let f = Found {
            claim: Some(&pending),
            volume: Some(&pv),
            ..Default::default()
        };
        assert!(
            resolve(&dst, &ds, &f, &driver(), 1 << 30)
                .unwrap_err()
                .contains("not bound")
        );
        let no_clone = DriverInfo {
            clone_volume: false,
            ..driver()
        };
        assert!(
            resolve(&dst, &ds, &found, &no_clone, 1 << 30)
                .unwrap_err()
                .contains("does not support cloning")
        );
    }

    #[test]
    fn pending_claims_restoring_from_a_snapshot_hold_it() {
        let mut c = restore("1Gi", "s");
        c.status.get_or_insert_default().phase = Some("Pending".into());
        assert!(restoring_from(&c, "default", "s"));
        assert!(!restoring_from(&c, "default", "t"));
        assert!(!restoring_from(&c, "other", "s"));
        c.status.as_mut().unwrap().phase = Some("Bound".into());
        assert!(!restoring_from(&c, "default", "s"));
    }
}

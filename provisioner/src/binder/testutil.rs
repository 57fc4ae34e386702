//! Builders for binder unit tests.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeSpec, PersistentVolumeStatus, VolumeResourceRequirements,
};
use crate::k8s_openapi::api::storage::v1::StorageClass;
use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

pub fn ts_at(secs: i64) -> Time {
    Time(crate::k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
}

pub fn claim(name: &str, request: &str, modes: &[&str]) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(request.into()),
                )])),
                limits: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn volume(name: &str, capacity: &str, modes: &[&str]) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-pv-{name}")),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(capacity.into()),
            )])),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some("Available".into()),
            ..Default::default()
        }),
    }
}

pub fn class(name: &str, mode: &str) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        provisioner: "strata.csi.io".into(),
        volume_binding_mode: Some(mode.into()),
        ..Default::default()
    }
}

pub fn with_class_pvc(mut c: PersistentVolumeClaim, class: &str) -> PersistentVolumeClaim {
    c.spec.as_mut().unwrap().storage_class_name = Some(class.into());
    c
}

pub fn with_class_pv(mut v: PersistentVolume, class: &str) -> PersistentVolume {
    v.spec.as_mut().unwrap().storage_class_name = Some(class.into());
    v
}

/// claimRef to `claim` (with its UID when `with_uid`).
pub fn claim_ref_to(c: &PersistentVolumeClaim, with_uid: bool) -> ObjectReference {
    ObjectReference {
        kind: Some("PersistentVolumeClaim".into()),
        namespace: c.metadata.namespace.clone(),
        name: c.metadata.name.clone(),
        uid: if with_uid {
            c.metadata.uid.clone()
        } else {
            None
        },
        ..Default::default()
    }
}

pub fn prebound(
    mut v: PersistentVolume,
    c: &PersistentVolumeClaim,
    with_uid: bool,
) -> PersistentVolume {
    v.spec.as_mut().unwrap().claim_ref = Some(claim_ref_to(c, with_uid));
    v
}

pub fn phase_pv(mut v: PersistentVolume, phase: &str) -> PersistentVolume {
    v.status.get_or_insert_with(Default::default).phase = Some(phase.into());
    v
}

//! Small helpers over `ObjectMeta` and the PV/PVC fields every loop reads.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::quantity;

pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn has_annotation(meta: &ObjectMeta, key: &str) -> bool {
    annotation(meta, key).is_some()
}

pub fn set_annotation(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_string(), value.to_string());
}

/// Removes `key`; an annotation map left empty becomes `None`, as upstream prefers.
pub fn remove_annotation(meta: &mut ObjectMeta, key: &str) -> bool {
    let Some(map) = meta.annotations.as_mut() else {
        return false;
    };
    let removed = map.remove(key).is_some();
    if map.is_empty() {
        meta.annotations = None;
    }
    removed
}

pub fn has_finalizer(meta: &ObjectMeta, name: &str) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == name)
}

pub fn add_finalizer(meta: &mut ObjectMeta, name: &str) -> bool {
    if has_finalizer(meta, name) {
        return false;
    }
    meta.finalizers
        .get_or_insert_with(Vec::new)
        .push(name.to_string());
    true
}

pub fn remove_finalizer(meta: &mut ObjectMeta, name: &str) -> bool {
    let Some(list) = meta.finalizers.as_mut() else {
        return false;
    };
    let before = list.len();
    list.retain(|f| f != name);
    let removed = list.len() != before;
    if list.is_empty() {
        meta.finalizers = None;
    }
    removed
}

pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

pub fn uid(meta: &ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or_default()
}

/// `namespace/name` of a claim: the binder's queue key.
pub fn claim_key(pvc: &PersistentVolumeClaim) -> String {
    format!("{}/{}", namespace(&pvc.metadata), name(&pvc.metadata))
}

/// The full reference the binder writes into `PV.spec.claimRef` (`ref.GetReference`).
pub fn claim_reference(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        field_path: None,
    }
}

pub fn volume_reference(pv: &PersistentVolume) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: pv.metadata.name.clone(),
        uid: pv.metadata.uid.clone(),
        resource_version: pv.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// `requests.storage` of a claim in bytes; a missing request is 0, as upstream reads it.
pub fn claim_request_bytes(pvc: &PersistentVolumeClaim) -> Result<u128, String> {
    match pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    {
        Some(q) => quantity::bytes_of(q),
        None => Ok(0),
    }
}

/// `capacity.storage` of a volume in bytes; missing or malformed counts as 0 so it fits nothing.
pub fn volume_capacity_bytes(pv: &PersistentVolume) -> u128 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| quantity::bytes_of(q).ok())
        .unwrap_or(0)
}

pub fn claim_access_modes(pvc: &PersistentVolumeClaim) -> &[String] {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default()
}

pub fn volume_access_modes(pv: &PersistentVolume) -> &[String] {
    pv.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default()
}

/// volumeMode with the API default applied (nil counts as Filesystem).
pub fn claim_volume_mode(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

pub fn volume_volume_mode(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
}

pub fn claim_volume_name(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default()
}

pub fn volume_claim_ref(pv: &PersistentVolume) -> Option<&ObjectReference> {
    pv.spec.as_ref()?.claim_ref.as_ref()
}

pub fn volume_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub fn claim_phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Reclaim policy with the API default for hand-made PVs (Retain).
pub fn reclaim_policy(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

/// `IsVolumeBoundToClaim`: claimRef names this claim, and its UID (when set) is the claim's.
pub fn is_volume_bound_to_claim(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = volume_claim_ref(pv) else {
        return false;
    };
    r.name.as_deref() == pvc.metadata.name.as_deref()
        && r.namespace.as_deref().unwrap_or_default() == namespace(&pvc.metadata)
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || u == uid(&pvc.metadata))
}

/// A resourceVersion as the number the embedded store uses (0 when absent or foreign).
pub fn resource_version(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

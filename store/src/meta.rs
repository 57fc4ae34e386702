//! Accessors over object metadata and the fields every consumer reads the same way:
//! names, namespaces, UIDs, resourceVersions, labels, annotations, finalizers, owner and
//! object references, and the claim, volume and pod fields the control loops, the volume
//! manager and the node agent all need. One definition each, so a default (an absent
//! phase reads `Pending`, an absent volumeMode `Filesystem`) is decided once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::Object;

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

/// `namespace/name` (`/name` for a cluster-scoped object): a queue and cache key.
pub fn key(meta: &ObjectMeta) -> String {
    format!("{}/{}", namespace(meta), name(meta))
}

pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// A resourceVersion as the number the embedded store uses (0 when absent or foreign).
pub fn resource_version(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The reference an Event or a status names `obj` by (`ref.GetReference` without the
/// resourceVersion and field path).
pub fn object_reference<K: Object>(obj: &K) -> ObjectReference {
    let m = obj.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.into()),
        kind: Some(K::KIND.into()),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        ..Default::default()
    }
}

/// A controller owner reference to `owner` (`metav1.NewControllerRef`): the garbage
/// collector deletes the dependent with it, and foreground deletion waits for it.
pub fn controller_reference<K: Object>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::API_VERSION.into(),
        kind: K::KIND.into(),
        name: name(owner.metadata()).to_string(),
        uid: uid(owner.metadata()).to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
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

/// `spec.nodeName`, when it names a node.
pub fn pod_node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// `status.phase`, with the API default (an absent phase is Pending).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn references_name_the_kind_and_identity() {
        let pod: Pod = obj(serde_json::json!({"metadata": {
            "name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
            "labels": {"app": "web"}}}));
        let r = object_reference(&pod);
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("ns"), Some("p"), Some("u1"))
        );
        assert_eq!(r.resource_version, None);
        let set: k8s_openapi::api::apps::v1::StatefulSet =
            obj(serde_json::json!({"metadata": {"name": "s", "namespace": "ns", "uid": "u2"}}));
        let o = controller_reference(&set);
        assert_eq!(
            (o.api_version.as_str(), o.kind.as_str()),
            ("apps/v1", "StatefulSet")
        );
        assert_eq!((o.name.as_str(), o.uid.as_str()), ("s", "u2"));
        assert_eq!(
            (o.controller, o.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(key(&pod.metadata), "ns/p");
        assert_eq!(resource_version(&pod.metadata), 42);
        assert_eq!(label(&pod.metadata, "app"), Some("web"));
        assert_eq!(pod_phase(&pod), "Pending");
        assert_eq!(pod_node_name(&pod), None);
    }

    #[test]
    fn annotations_and_finalizers_leave_no_empty_collections() {
        let mut m = ObjectMeta::default();
        set_annotation(&mut m, "a", "1");
        assert!(has_annotation(&m, "a"));
        assert!(remove_annotation(&mut m, "a"));
        assert_eq!(m.annotations, None);
        assert!(add_finalizer(&mut m, "f"));
        assert!(!add_finalizer(&mut m, "f"));
        assert!(remove_finalizer(&mut m, "f"));
        assert_eq!(m.finalizers, None);
    }
}

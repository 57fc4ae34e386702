//! The kinds the store knows by name: apiVersion, scope, plural and kubectl short names.
//!
//! Typed callers never need the registry (any k8s-openapi object works through
//! [`KindRef::of`]); volctl and manifest apply resolve "pvc", "persistentvolumeclaims" or
//! `kind: PersistentVolumeClaim` here and validate documents through the typed structs.

use std::any::TypeId;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount,
};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::Value;

use crate::api::Object;
use crate::error::{Error, Result};
use crate::podpreset::PodPreset;
use crate::snapshot::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

/// What the untyped core needs to know about a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindRef {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespaced: bool,
}

impl KindRef {
    pub fn of<K: Object>() -> KindRef {
        KindRef {
            kind: K::KIND,
            api_version: K::API_VERSION,
            namespaced: TypeId::of::<K::Scope>()
                == TypeId::of::<k8s_openapi::NamespaceResourceScope>(),
        }
    }
}

/// A kind volctl and apply handle by name.
#[derive(Debug)]
pub struct KindInfo {
    pub kind_ref: KindRef,
    /// Lower-case plural, as in URLs and `kubectl get persistentvolumeclaims`.
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    /// Decodes a JSON object into the typed struct and back: validates structure and types
    /// and yields the canonical form.
    pub(crate) roundtrip: fn(Value) -> Result<Value, FieldError>,
}

impl KindInfo {
    pub fn kind(&self) -> &'static str {
        self.kind_ref.kind
    }
    pub fn api_version(&self) -> &'static str {
        self.kind_ref.api_version
    }
    pub fn namespaced(&self) -> bool {
        self.kind_ref.namespaced
    }

    /// Decodes a JSON object into this kind's typed struct and back: the structure and
    /// types are checked, unknown fields refused (kubectl's strict field validation), and
    /// the result is the canonical form the store keeps.
    pub fn canonicalize(&self, mut value: Value) -> Result<Value> {
        if let Some(o) = value.as_object_mut() {
            o.insert("apiVersion".into(), Value::from(self.api_version()));
            o.insert("kind".into(), Value::from(self.kind()));
        }
        crate::admission::quantities_to_strings(&mut value);
        let canonical = (self.roundtrip)(value.clone()).map_err(|e| {
            Error::invalid(
                if e.path == "." { String::new() } else { e.path },
                e.message,
            )
        })?;
        if let Some(path) = first_unknown_field(&value, &canonical, &mut Vec::new()) {
            return Err(Error::invalid(path, "unknown field"));
        }
        Ok(canonical)
    }
}

/// The path of a key the typed struct dropped (kubectl's strict field validation).
fn first_unknown_field(
    original: &Value,
    canonical: &Value,
    path: &mut Vec<String>,
) -> Option<String> {
    match (original, canonical) {
        (Value::Object(o), Value::Object(c)) => {
            for (k, v) in o {
                path.push(k.clone());
                let found = match c.get(k) {
                    None if !v.is_null() => Some(path.join(".")),
                    None => None,
                    Some(cv) => first_unknown_field(v, cv, path),
                };
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Array(o), Value::Array(c)) => {
            for (i, (ov, cv)) in o.iter().zip(c).enumerate() {
                let last = path.pop().unwrap_or_default();
                path.push(format!("{last}[{i}]"));
                let found = first_unknown_field(ov, cv, path);
                path.pop();
                path.push(last);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

/// A field that failed to decode into its typed struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) path: String,
    pub(crate) message: String,
}

fn roundtrip<K: Object>(v: Value) -> Result<Value, FieldError> {
    let typed: K = serde_path_to_error::deserialize(v).map_err(|e| FieldError {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })?;
    serde_json::to_value(typed).map_err(|e| FieldError {
        path: String::new(),
        message: e.to_string(),
    })
}

macro_rules! kind {
    ($ty:ty, $namespaced:literal, $plural:literal, [$($short:literal),*]) => {
        KindInfo {
            kind_ref: KindRef {
                kind: <$ty as k8s_openapi::Resource>::KIND,
                api_version: <$ty as k8s_openapi::Resource>::API_VERSION,
                namespaced: $namespaced,
            },
            plural: $plural,
            short_names: &[$($short),*],
            roundtrip: roundtrip::<$ty>,
        }
    };
}

static KINDS: [KindInfo; 15] = [
    kind!(PersistentVolume, false, "persistentvolumes", ["pv"]),
    kind!(
        PersistentVolumeClaim,
        true,
        "persistentvolumeclaims",
        ["pvc"]
    ),
    kind!(StorageClass, false, "storageclasses", ["sc"]),
    kind!(StatefulSet, true, "statefulsets", ["sts"]),
    kind!(ConfigMap, true, "configmaps", ["cm"]),
    kind!(Secret, true, "secrets", []),
    kind!(Pod, true, "pods", ["po"]),
    kind!(ServiceAccount, true, "serviceaccounts", ["sa"]),
    kind!(Event, true, "events", ["ev"]),
    kind!(Namespace, false, "namespaces", ["ns"]),
    kind!(Node, false, "nodes", ["no"]),
    // settings.k8s.io/v1alpha1, as served until v1.19; kubectl knew no short name for it.
    kind!(PodPreset, true, "podpresets", []),
    // Short names as external-snapshotter's CRDs declare them.
    kind!(
        VolumeSnapshotClass,
        false,
        "volumesnapshotclasses",
        ["vsclass", "vsclasses"]
    ),
    kind!(VolumeSnapshot, true, "volumesnapshots", ["vs"]),
    kind!(
        VolumeSnapshotContent,
        false,
        "volumesnapshotcontents",
        ["vsc", "vscs"]
    ),
];

/// Every registered kind.
pub fn all() -> &'static [KindInfo] {
    &KINDS
}

/// Resolves what a user typed: kind ("PersistentVolumeClaim", any case), singular or plural
/// resource name ("pvc", "persistentvolumeclaim", "persistentvolumeclaims"), or a short name.
pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    let lower = name.to_ascii_lowercase();
    // `kubectl get pvc.v1.` style suffixes are not supported; a dotted name is no kind.
    KINDS.iter().find(|k| {
        k.kind().to_ascii_lowercase() == lower
            || k.plural == lower
            || k.short_names.contains(&lower.as_str())
    })
}

/// The kind a manifest names with `apiVersion` and `kind`.
pub fn by_api_version_kind(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.kind() == kind && k.api_version() == api_version)
}

/// The registered kind behind a KindRef, if any.
pub fn registered(kind: KindRef) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind_ref == kind)
}

/// The registered kind with this exact `kind` string.
pub fn by_kind(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind() == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_scope_matches_the_typed_scope() {
        let typed = [
            KindRef::of::<PersistentVolume>(),
            KindRef::of::<PersistentVolumeClaim>(),
            KindRef::of::<StorageClass>(),
            KindRef::of::<StatefulSet>(),
            KindRef::of::<ConfigMap>(),
            KindRef::of::<Secret>(),
            KindRef::of::<Pod>(),
            KindRef::of::<ServiceAccount>(),
            KindRef::of::<Event>(),
            KindRef::of::<Namespace>(),
            KindRef::of::<Node>(),
            KindRef::of::<PodPreset>(),
            KindRef::of::<VolumeSnapshotClass>(),
            KindRef::of::<VolumeSnapshot>(),
            KindRef::of::<VolumeSnapshotContent>(),
        ];
        for (info, typed) in KINDS.iter().zip(typed) {
            assert_eq!(info.kind_ref, typed);
        }
    }

    #[test]
    fn short_and_plural_names_resolve() {
        assert_eq!(lookup("pvc").unwrap().kind(), "PersistentVolumeClaim");
        assert_eq!(lookup("PV").unwrap().kind(), "PersistentVolume");
        assert_eq!(lookup("storageclasses").unwrap().kind(), "StorageClass");
        assert_eq!(lookup("statefulset").unwrap().kind(), "StatefulSet");
        assert_eq!(lookup("secret").unwrap().kind(), "Secret");
        assert_eq!(lookup("sts").unwrap().api_version(), "apps/v1");
        assert_eq!(lookup("vs").unwrap().kind(), "VolumeSnapshot");
        assert_eq!(lookup("vscs").unwrap().kind(), "VolumeSnapshotContent");
        assert_eq!(lookup("vsclass").unwrap().kind(), "VolumeSnapshotClass");
        assert_eq!(
            lookup("volumesnapshotcontent").unwrap().api_version(),
            "snapshot.storage.k8s.io/v1"
        );
        assert!(lookup("deployment").is_none());
        assert_eq!(
            lookup("podpresets").unwrap().api_version(),
            "settings.k8s.io/v1alpha1"
        );
        assert_eq!(lookup("podpreset").unwrap().kind(), "PodPreset");
    }
}

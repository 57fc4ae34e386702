//! Storage class resolution: the beta annotation beats the field; nil is not "" (k8s-semantics §3.11, §6.10).

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use crate::k8s_openapi::api::storage::v1::StorageClass;

use crate::meta::annotation;
use crate::names::{ANN_BETA_DEFAULT_CLASS, ANN_BETA_STORAGE_CLASS, ANN_DEFAULT_CLASS};

/// The claim's class as `GetPersistentVolumeClaimClass` reads it: "" means no class.
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    if let Some(c) = annotation(&pvc.metadata, ANN_BETA_STORAGE_CLASS) {
        return c;
    }
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// True when the claim names no class at all: field nil and no beta annotation. Only such
/// claims get the default class; `""` is an explicit "no class".
pub fn claim_class_unset(pvc: &PersistentVolumeClaim) -> bool {
    annotation(&pvc.metadata, ANN_BETA_STORAGE_CLASS).is_none()
        && pvc
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_ref())
            .is_none()
}

/// The volume's class (`GetPersistentVolumeClass`).
pub fn volume_class(pv: &PersistentVolume) -> &str {
    if let Some(c) = annotation(&pv.metadata, ANN_BETA_STORAGE_CLASS) {
        return c;
    }
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// Whether a class is marked default (value exactly "true", GA or beta key).
pub fn is_default_class(sc: &StorageClass) -> bool {
    annotation(&sc.metadata, ANN_DEFAULT_CLASS) == Some("true")
        || annotation(&sc.metadata, ANN_BETA_DEFAULT_CLASS) == Some("true")
}

/// The default class: among several, the newest creationTimestamp wins, ties by name ascending.
pub fn default_class(classes: &BTreeMap<String, StorageClass>) -> Option<&StorageClass> {
    // BTreeMap iterates names ascending, so `max_by` with a strict comparison keeps the
    // first name among equal timestamps only if we compare names in reverse.
    classes
        .values()
        .filter(|sc| is_default_class(sc))
        .max_by(|a, b| {
            let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
            ta.cmp(&tb)
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        })
}

/// `volumeBindingMode == WaitForFirstConsumer`. A missing class counts as Immediate, and so does a
/// class without a mode: our store applies no API defaults, and the API default is Immediate.
pub fn is_delay_binding(
    pvc: &PersistentVolumeClaim,
    classes: &BTreeMap<String, StorageClass>,
) -> bool {
    let class = claim_class(pvc);
    if class.is_empty() {
        return false;
    }
    classes
        .get(class)
        .and_then(|sc| sc.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;

    #[test]
    fn beta_annotation_beats_field_and_nil_is_not_empty() {
        let mut c = claim("a", "1Gi", &["ReadWriteOnce"]);
        assert!(claim_class_unset(&c));
        assert_eq!(claim_class(&c), "");
        c.spec.as_mut().unwrap().storage_class_name = Some(String::new());
        assert!(!claim_class_unset(&c), "\"\" is an explicit no-class");
        c.spec.as_mut().unwrap().storage_class_name = Some("fast".into());
        assert_eq!(claim_class(&c), "fast");
        crate::meta::set_annotation(&mut c.metadata, ANN_BETA_STORAGE_CLASS, "slow");
        assert_eq!(claim_class(&c), "slow");
        let mut v = volume("v", "1Gi", &["ReadWriteOnce"]);
        v.spec.as_mut().unwrap().storage_class_name = Some("fast".into());
        crate::meta::set_annotation(&mut v.metadata, ANN_BETA_STORAGE_CLASS, "");
        assert_eq!(volume_class(&v), "", "beta annotation wins even when empty");
    }

    #[test]
    fn newest_default_wins_then_name() {
        let mut classes = BTreeMap::new();
        for (name, ts, default) in [
            ("a", 10, "true"),
            ("b", 20, "true"),
            ("c", 30, "True"),
            ("d", 20, "true"),
        ] {
            let mut sc = class(name, "Immediate");
            sc.metadata.creation_timestamp = Some(ts_at(ts));
            crate::meta::set_annotation(&mut sc.metadata, ANN_DEFAULT_CLASS, default);
            classes.insert(name.to_string(), sc);
        }
        // c is newest but "True" is not exactly "true"; b and d tie, b wins by name.
        assert_eq!(
            default_class(&classes).unwrap().metadata.name.as_deref(),
            Some("b")
        );
        let mut beta = class("z", "Immediate");
        beta.metadata.creation_timestamp = Some(ts_at(40));
        crate::meta::set_annotation(&mut beta.metadata, ANN_BETA_DEFAULT_CLASS, "true");
        classes.insert("z".into(), beta);
        assert_eq!(
            default_class(&classes).unwrap().metadata.name.as_deref(),
            Some("z")
        );
    }

    #[test]
    fn delay_binding_needs_wffc_class() {
        let mut classes = BTreeMap::new();
        classes.insert("wait".to_string(), class("wait", "WaitForFirstConsumer"));
        classes.insert("now".to_string(), class("now", "Immediate"));
        let mut c = claim("a", "1Gi", &["ReadWriteOnce"]);
        assert!(!is_delay_binding(&c, &classes));
        c.spec.as_mut().unwrap().storage_class_name = Some("wait".into());
        assert!(is_delay_binding(&c, &classes));
        c.spec.as_mut().unwrap().storage_class_name = Some("now".into());
        assert!(!is_delay_binding(&c, &classes));
        c.spec.as_mut().unwrap().storage_class_name = Some("missing".into());
        assert!(
            !is_delay_binding(&c, &classes),
            "a missing class counts as Immediate"
        );
    }
}

//! StatefulSet claims and pods (k8s-semantics §4): naming, claim and pod construction,
//! the retention policy's ownerReferences and one reconcile pass as a list of actions.

pub mod reconcile;
pub mod retention;

use std::collections::BTreeMap;

use crate::k8s_openapi::api::apps::v1::StatefulSet;
use crate::k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::meta;

pub const LABEL_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
pub const LABEL_POD_INDEX: &str = "apps.kubernetes.io/pod-index";

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", meta::name(&set.metadata))
}

/// `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &PersistentVolumeClaim, set: &StatefulSet, ordinal: i32) -> String {
    format!(
        "{}-{}-{ordinal}",
        meta::name(&template.metadata),
        meta::name(&set.metadata)
    )
}

/// The ordinal of a pod of `set`, from its name (`(.*)-([0-9]+)$` with the set's name as parent).
pub fn ordinal_of(set: &StatefulSet, pod_name: &str) -> Option<i32> {
    let (parent, ord) = pod_name.rsplit_once('-')?;
    if parent != meta::name(&set.metadata)
        || ord.is_empty()
        || !ord.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    ord.parse().ok()
}

/// `[start, start + replicas)`.
pub fn ordinal_range(set: &StatefulSet) -> std::ops::Range<i32> {
    let start = set
        .spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0);
    let replicas = set.spec.replicas.unwrap_or(1).max(0);
    start..start.saturating_add(replicas)
}

pub fn templates(set: &StatefulSet) -> &[PersistentVolumeClaim] {
    set.spec
        .volume_claim_templates
        .as_deref()
        .unwrap_or_default()
}

/// The claim for one template and ordinal: a copy of the template, labels merged with the
/// selector's matchLabels (the selector wins on a clash).
pub fn claim_for(
    set: &StatefulSet,
    template: &PersistentVolumeClaim,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let mut claim = template.clone();
    let selector = set.spec.selector.match_labels.clone().unwrap_or_default();
    let mut labels = claim.metadata.labels.take().unwrap_or_default();
    labels.extend(selector);
    claim.metadata = ObjectMeta {
        name: Some(claim_name(template, set, ordinal)),
        namespace: set.metadata.namespace.clone(),
        labels: (!labels.is_empty()).then_some(labels),
        annotations: claim.metadata.annotations.take(),
        ..Default::default()
    };
    claim.status = None;
    claim
}

/// The pod for `ordinal`: the template, identity labels, hostname/subdomain, and one volume
/// per claim template replacing any template volume of the same name.
pub fn pod_for(set: &StatefulSet, ordinal: i32) -> Pod {
    let template = set.spec.template.clone();
    let name = pod_name(set, ordinal);
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    labels.insert(LABEL_POD_NAME.into(), name.clone());
    labels.insert(LABEL_POD_INDEX.into(), ordinal.to_string());
    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    if let Some(svc) = set.spec.service_name.clone().filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(svc);
    }
    let mut volumes: Vec<Volume> = pod_spec.volumes.take().unwrap_or_default();
    for t in templates(set) {
        let vol_name = meta::name(&t.metadata).to_string();
        volumes.retain(|v| v.name != vol_name);
        volumes.push(Volume {
            name: vol_name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(t, set, ordinal),
                read_only: Some(false),
            }),
            ..Default::default()
        });
    }
    pod_spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![meta::controller_reference(set)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// Whether `pod` is controlled by `set` (controller ref with the set's UID).
pub fn is_owned_by(pod: &Pod, set: &StatefulSet) -> bool {
    pod.metadata.owner_references.iter().flatten().any(|r| {
        r.controller == Some(true) && r.kind == "StatefulSet" && r.uid == meta::uid(&set.metadata)
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::k8s_openapi::api::apps::v1::{
        StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    };
    use crate::k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, VolumeMount};
    use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    pub fn set(name: &str, replicas: i32, when_deleted: &str, when_scaled: &str) -> StatefulSet {
        let selector = BTreeMap::from([("app".to_string(), name.to_string())]);
        let mut template = crate::binder::testutil::claim("data", "1Gi", &["ReadWriteOnce"]);
        template.metadata = ObjectMeta {
            name: Some("data".into()),
            labels: Some(BTreeMap::from([
                ("app".to_string(), "overridden".to_string()),
                ("tier".to_string(), "db".to_string()),
            ])),
            ..Default::default()
        };
        StatefulSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-sts-{name}")),
                generation: Some(1),
                ..Default::default()
            },
            spec: StatefulSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(selector.clone()),
                    match_expressions: None,
                },
                service_name: Some(name.into()),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(selector),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some("busybox".into()),
                            volume_mounts: Some(vec![VolumeMount {
                                name: "data".into(),
                                mount_path: "/data".into(),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }],
                        volumes: Some(vec![Volume {
                            name: "data".into(),
                            empty_dir: Some(Default::default()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                },
                volume_claim_templates: Some(vec![template]),
                persistent_volume_claim_retention_policy: Some(
                    StatefulSetPersistentVolumeClaimRetentionPolicy {
                        when_deleted: Some(when_deleted.into()),
                        when_scaled: Some(when_scaled.into()),
                    },
                ),
                ..Default::default()
            },
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::set;
    use super::*;

    #[test]
    fn names_and_ordinals() {
        let s = set("web", 3, "Retain", "Retain");
        assert_eq!(pod_name(&s, 2), "web-2");
        assert_eq!(claim_name(&templates(&s)[0], &s, 0), "data-web-0");
        assert_eq!(ordinal_of(&s, "web-12"), Some(12));
        assert_eq!(ordinal_of(&s, "web-x"), None);
        assert_eq!(ordinal_of(&s, "webby-1"), None);
        assert_eq!(ordinal_of(&s, "web-"), None);
        assert_eq!(ordinal_range(&s), 0..3);
        let mut s2 = s.clone();
        s2.spec.ordinals =
            Some(crate::k8s_openapi::api::apps::v1::StatefulSetOrdinals { start: Some(5) });
        assert_eq!(ordinal_range(&s2), 5..8);
    }

    #[test]
    fn claim_labels_merge_with_selector_winning() {
        let s = set("web", 1, "Retain", "Retain");
        let c = claim_for(&s, &templates(&s)[0], 0);
        assert_eq!(c.metadata.name.as_deref(), Some("data-web-0"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("default"));
        let labels = c.metadata.labels.unwrap();
        assert_eq!(labels["app"], "web", "selector wins on a clash");
        assert_eq!(labels["tier"], "db");
        assert_eq!(
            c.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
            "1Gi"
        );
    }

    #[test]
    fn pod_gets_claim_volume_replacing_template_volume() {
        let s = set("web", 1, "Retain", "Retain");
        let p = pod_for(&s, 0);
        let vols = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        assert_eq!(vols.len(), 1);
        assert!(vols[0].empty_dir.is_none());
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-web-0"
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()[LABEL_POD_NAME], "web-0");
        assert_eq!(p.spec.as_ref().unwrap().hostname.as_deref(), Some("web-0"));
        assert_eq!(p.spec.as_ref().unwrap().subdomain.as_deref(), Some("web"));
        assert!(is_owned_by(&p, &s));
    }
}

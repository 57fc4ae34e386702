//! The pvc-protection and pv-protection finalizers (k8s-semantics §3.8).
//!
//! Upstream an admission plugin adds them on create and two small controllers remove them;
//! standalone there is no admission chain, so the same loops add them when missing.

use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};

use crate::meta::{self, add_finalizer, has_finalizer, remove_finalizer};
use crate::names::{FINALIZER_PV_PROTECTION, FINALIZER_PVC_PROTECTION};

/// Whether `pod` holds `pvc` against deletion: a scheduled pod object in the claim's namespace
/// that references it. A Succeeded/Failed pod still counts; a generic-ephemeral claim stops
/// counting once its pod is shutting down with no grace period.
pub fn pod_blocks_claim_deletion(pod: &Pod, pvc: &PersistentVolumeClaim) -> bool {
    if meta::namespace(&pod.metadata) != meta::namespace(&pvc.metadata) {
        return false;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    if spec.node_name.as_deref().unwrap_or_default().is_empty() {
        return false;
    }
    let claim = meta::name(&pvc.metadata);
    let pod_name = meta::name(&pod.metadata);
    spec.volumes.iter().flatten().any(|v| {
        if v.persistent_volume_claim
            .as_ref()
            .is_some_and(|p| p.claim_name == claim)
        {
            return true;
        }
        if v.ephemeral.is_some() && format!("{pod_name}-{}", v.name) == claim {
            let shut_down = pod.metadata.deletion_timestamp.is_some()
                && pod.metadata.deletion_grace_period_seconds == Some(0);
            return !shut_down;
        }
        false
    })
}

/// The claim with its protection finalizer fixed, or None when it is right already.
pub fn claim_protection(
    pvc: &PersistentVolumeClaim,
    in_use: bool,
) -> Option<PersistentVolumeClaim> {
    let mut updated = pvc.clone();
    let deleting = pvc.metadata.deletion_timestamp.is_some();
    let changed = if deleting {
        !in_use && remove_finalizer(&mut updated.metadata, FINALIZER_PVC_PROTECTION)
    } else {
        add_finalizer(&mut updated.metadata, FINALIZER_PVC_PROTECTION)
    };
    changed.then_some(updated)
}

/// The volume with its protection finalizer fixed: removed only while the PV is not Bound.
pub fn volume_protection(pv: &PersistentVolume) -> Option<PersistentVolume> {
    let mut updated = pv.clone();
    let changed = if pv.metadata.deletion_timestamp.is_some() {
        meta::volume_phase(pv) != "Bound"
            && remove_finalizer(&mut updated.metadata, FINALIZER_PV_PROTECTION)
    } else {
        !has_finalizer(&pv.metadata, FINALIZER_PV_PROTECTION)
            && add_finalizer(&mut updated.metadata, FINALIZER_PV_PROTECTION)
    };
    changed.then_some(updated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;
    use crate::k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, PodSpec, Volume};

    fn pod(name: &str, node: Option<&str>, claim: &str) -> Pod {
        Pod {
            metadata: crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn only_scheduled_pods_in_the_namespace_block() {
        let c = claim("data", "1Gi", &[]);
        assert!(pod_blocks_claim_deletion(&pod("p", Some("n1"), "data"), &c));
        assert!(
            !pod_blocks_claim_deletion(&pod("p", None, "data"), &c),
            "unscheduled pods do not block"
        );
        assert!(!pod_blocks_claim_deletion(
            &pod("p", Some("n1"), "other"),
            &c
        ));
        let mut elsewhere = pod("p", Some("n1"), "data");
        elsewhere.metadata.namespace = Some("prod".into());
        assert!(!pod_blocks_claim_deletion(&elsewhere, &c));
        let mut done = pod("p", Some("n1"), "data");
        done.status = Some(crate::k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(
            pod_blocks_claim_deletion(&done, &c),
            "a terminated pod object still blocks"
        );
    }

    #[test]
    fn ephemeral_claim_released_by_shut_down_pod() {
        let c = claim("p-scratch", "1Gi", &[]);
        let mut p = pod("p", Some("n1"), "x");
        p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "scratch".into(),
            ephemeral: Some(Default::default()),
            ..Default::default()
        }]);
        assert!(pod_blocks_claim_deletion(&p, &c));
        p.metadata.deletion_timestamp = Some(ts_at(1));
        p.metadata.deletion_grace_period_seconds = Some(0);
        assert!(!pod_blocks_claim_deletion(&p, &c));
    }

    #[test]
    fn claim_finalizer_added_then_removed_only_when_unused() {
        let c = claim("data", "1Gi", &[]);
        let with = claim_protection(&c, false).expect("backfilled");
        assert!(has_finalizer(&with.metadata, FINALIZER_PVC_PROTECTION));
        assert!(claim_protection(&with, true).is_none());
        let mut deleting = with.clone();
        deleting.metadata.deletion_timestamp = Some(ts_at(1));
        assert!(
            claim_protection(&deleting, true).is_none(),
            "a pod still uses it"
        );
        let gone = claim_protection(&deleting, false).expect("released");
        assert!(!has_finalizer(&gone.metadata, FINALIZER_PVC_PROTECTION));
    }

    #[test]
    fn volume_finalizer_removed_only_when_not_bound() {
        let v = volume("v", "1Gi", &[]);
        let with = volume_protection(&v).expect("backfilled");
        assert!(volume_protection(&with).is_none());
        let mut deleting = phase_pv(with, "Bound");
        deleting.metadata.deletion_timestamp = Some(ts_at(1));
        assert!(
            volume_protection(&deleting).is_none(),
            "Bound PVs keep pv-protection"
        );
        let released = phase_pv(deleting, "Released");
        assert!(!has_finalizer(
            &volume_protection(&released).unwrap().metadata,
            FINALIZER_PV_PROTECTION
        ));
    }
}

//! syncVolume decision table (k8s-semantics §3.7) and reclaim (§3.8).

use super::*;
use crate::binder::testutil::*;
use crate::k8s_openapi::api::core::v1::CSIPersistentVolumeSource;

fn sync(pv: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> Plan {
    sync_volume(pv, &VolumeContext { claim })
}

fn phases(plan: &Plan) -> Vec<String> {
    plan.writes
        .iter()
        .filter_map(|w| match w {
            Write::VolumeStatus(v) => v.status.as_ref().unwrap().phase.clone(),
            _ => None,
        })
        .collect()
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events().map(|e| e.reason).collect()
}

fn bound_pair(policy: &str) -> (PersistentVolume, PersistentVolumeClaim) {
    let c = claim("c", "1Gi", &["ReadWriteOnce"]);
    let mut pv = phase_pv(
        prebound(volume("pv1", "1Gi", &["ReadWriteOnce"]), &c, true),
        "Bound",
    );
    pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some(policy.into());
    (pv, c)
}

#[test]
fn unused_volume_becomes_available_once() {
    let pv = phase_pv(volume("pv1", "1Gi", &[]), "Pending");
    assert_eq!(phases(&sync(&pv, None)), ["Available"]);
    assert!(sync(&phase_pv(pv, "Available"), None).writes.is_empty());
}

#[test]
fn prebound_without_uid_is_available() {
    let c = claim("c", "1Gi", &[]);
    let pv = phase_pv(prebound(volume("pv1", "1Gi", &[]), &c, false), "Pending");
    assert_eq!(phases(&sync(&pv, Some(&c))), ["Available"]);
}

#[test]
fn claim_gone_releases_and_retain_keeps_the_claim_ref() {
    let (pv, _) = bound_pair("Retain");
    let plan = sync(&pv, None);
    assert_eq!(phases(&plan), ["Released"]);
    let Write::VolumeStatus(released) = &plan.writes[0] else {
        panic!()
    };
    assert_eq!(
        released
            .spec
            .as_ref()
            .unwrap()
            .claim_ref
            .as_ref()
            .unwrap()
            .uid
            .as_deref(),
        Some("uid-c"),
        "stale UID kept"
    );
    assert!(
        sync(released, None).writes.is_empty(),
        "Released + Retain: nothing more happens"
    );
}

#[test]
fn claim_recreated_with_another_uid_counts_as_gone() {
    let (pv, mut c) = bound_pair("Retain");
    c.metadata.uid = Some("new-uid".into());
    assert_eq!(phases(&sync(&pv, Some(&c))), ["Released"]);
}

#[test]
fn failed_phase_is_not_overwritten() {
    let (pv, _) = bound_pair("Retain");
    assert!(sync(&phase_pv(pv, "Failed"), None).writes.is_empty());
}

#[test]
fn delete_policy_on_a_csi_volume_is_left_to_the_external_provisioner() {
    let (mut pv, _) = bound_pair("Delete");
    pv.spec.as_mut().unwrap().csi = Some(CSIPersistentVolumeSource {
        driver: "strata.csi.io".into(),
        volume_handle: "v".into(),
        ..Default::default()
    });
    let plan = sync(&pv, None);
    assert_eq!(phases(&plan), ["Released"]);
    assert!(reasons(&plan).is_empty());
}

#[test]
fn delete_policy_without_a_deleter_fails_the_volume() {
    let (pv, _) = bound_pair("Delete");
    let plan = sync(&pv, None);
    assert_eq!(phases(&plan), ["Released", "Failed"]);
    assert_eq!(reasons(&plan), [reason::VOLUME_FAILED_DELETE]);
    let Write::VolumeStatus(failed) = &plan.writes[1] else {
        panic!()
    };
    assert!(
        failed
            .status
            .as_ref()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("no deletable volume plugin matched")
    );
}

#[test]
fn recycle_and_unknown_policies_fail() {
    let (pv, _) = bound_pair("Recycle");
    assert_eq!(reasons(&sync(&pv, None)), [reason::VOLUME_FAILED_RECYCLE]);
    let (pv, _) = bound_pair("Shred");
    let plan = sync(&pv, None);
    assert_eq!(phases(&plan), ["Released", "Failed"]);
    assert_eq!(reasons(&plan), [reason::VOLUME_UNKNOWN_RECLAIM_POLICY]);
}

#[test]
fn migrated_volumes_are_not_reclaimed_here() {
    let (mut pv, _) = bound_pair("Shred");
    crate::meta::set_annotation(&mut pv.metadata, names::ANN_MIGRATED_TO, "x.csi");
    assert_eq!(phases(&sync(&pv, None)), ["Released"]);
}

#[test]
fn claim_not_yet_bound_is_enqueued() {
    let (pv, c) = bound_pair("Delete");
    let plan = sync(&pv, Some(&c));
    assert!(plan.writes.is_empty());
    assert_eq!(plan.enqueue_claims, ["default/c"]);
}

#[test]
fn volume_mode_mismatch_warns_on_both_sides() {
    let (pv, mut c) = bound_pair("Delete");
    c.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    let plan = sync(&pv, Some(&c));
    assert_eq!(
        reasons(&plan),
        [reason::VOLUME_MISMATCH, reason::VOLUME_MISMATCH]
    );
    let kinds: Vec<_> = plan
        .events()
        .map(|e| e.involved.kind.clone().unwrap())
        .collect();
    assert_eq!(kinds, ["PersistentVolume", "PersistentVolumeClaim"]);
    assert!(plan.enqueue_claims.is_empty());
}

#[test]
fn claim_bound_to_this_volume_makes_it_bound() {
    let (pv, mut c) = bound_pair("Delete");
    c.spec.as_mut().unwrap().volume_name = Some("pv1".into());
    assert_eq!(
        phases(&sync(&phase_pv(pv.clone(), "Available"), Some(&c))),
        ["Bound"]
    );
    assert!(sync(&pv, Some(&c)).writes.is_empty());
}

#[test]
fn provisioned_delete_volume_of_a_claim_bound_elsewhere_is_released() {
    let (mut pv, mut c) = bound_pair("Delete");
    crate::meta::set_annotation(&mut pv.metadata, names::ANN_PROVISIONED_BY, "strata.csi.io");
    c.spec.as_mut().unwrap().volume_name = Some("other".into());
    let plan = sync(&pv, Some(&c));
    assert_eq!(phases(&plan), ["Released"]);
}

#[test]
fn controller_bound_volume_of_a_claim_bound_elsewhere_is_unbound() {
    let (mut pv, mut c) = bound_pair("Retain");
    crate::meta::set_annotation(&mut pv.metadata, names::ANN_BOUND_BY_CONTROLLER, "yes");
    c.spec.as_mut().unwrap().volume_name = Some("other".into());
    let plan = sync(&pv, Some(&c));
    let Write::Volume(v) = &plan.writes[0] else {
        panic!()
    };
    assert!(v.spec.as_ref().unwrap().claim_ref.is_none());
    assert!(!has_annotation(&v.metadata, names::ANN_BOUND_BY_CONTROLLER));
    assert_eq!(phases(&plan), ["Available"]);
}

#[test]
fn user_prebound_volume_of_a_claim_bound_elsewhere_keeps_its_reservation() {
    let (pv, mut c) = bound_pair("Retain");
    c.spec.as_mut().unwrap().volume_name = Some("other".into());
    let plan = sync(&pv, Some(&c));
    let Write::Volume(v) = &plan.writes[0] else {
        panic!()
    };
    let r = v.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!((r.name.as_deref(), r.uid.as_deref()), (Some("c"), None));
    assert_eq!(phases(&plan), ["Available"]);
}

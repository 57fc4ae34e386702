//! syncClaim decision table: one test per branch of k8s-semantics §3.4 and §3.6, plus the §6 surprises.

use std::collections::BTreeMap;

use super::*;
use crate::binder::VolumeIndex;
use crate::binder::testutil::*;
use crate::k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, VolumeNodeAffinity,
};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

struct World {
    index: VolumeIndex,
    classes: BTreeMap<String, StorageClass>,
    pods: Vec<String>,
}

impl World {
    fn new(pvs: Vec<PersistentVolume>) -> Self {
        let mut index = VolumeIndex::new();
        for pv in pvs {
            index.upsert(pv);
        }
        Self {
            index,
            classes: BTreeMap::new(),
            pods: Vec::new(),
        }
    }

    fn class(mut self, sc: StorageClass) -> Self {
        self.classes.insert(sc.metadata.name.clone().unwrap(), sc);
        self
    }

    fn sync(&self, pvc: &PersistentVolumeClaim) -> Plan {
        sync_claim(
            pvc,
            &ClaimContext {
                volumes: &self.index,
                classes: &self.classes,
                unscheduled_pods: &self.pods,
            },
        )
    }
}

fn events(plan: &Plan) -> Vec<(EventType, &'static str, String)> {
    plan.events()
        .map(|e| (e.type_, e.reason, e.message.clone()))
        .collect()
}

fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.writes
        .iter()
        .map(|w| match w {
            Write::Volume(_) => "pv",
            Write::VolumeStatus(_) => "pv-status",
            Write::Claim(_) => "pvc",
            Write::ClaimStatus(_) => "pvc-status",
            Write::Event(_) => "event",
        })
        .collect()
}

fn written_pv(plan: &Plan) -> &PersistentVolume {
    plan.writes
        .iter()
        .find_map(|w| {
            if let Write::Volume(v) = w {
                Some(v)
            } else {
                None
            }
        })
        .expect("pv write")
}

fn written_claim(plan: &Plan) -> &PersistentVolumeClaim {
    plan.writes
        .iter()
        .find_map(|w| {
            if let Write::Claim(c) = w {
                Some(c)
            } else {
                None
            }
        })
        .expect("pvc write")
}

fn written_claim_status(plan: &Plan) -> &PersistentVolumeClaim {
    plan.writes
        .iter()
        .find_map(|w| {
            if let Write::ClaimStatus(c) = w {
                Some(c)
            } else {
                None
            }
        })
        .expect("pvc status write")
}

fn ann<'a>(
    m: &'a crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    k: &str,
) -> Option<&'a str> {
    annotation(m, k)
}

/// Applies a bind plan's writes to copies, as the store would, to get the bound pair.
fn apply(
    plan: &Plan,
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> (PersistentVolume, PersistentVolumeClaim) {
    let (mut pv, mut pvc) = (pv.clone(), pvc.clone());
    for w in &plan.writes {
        match w {
            Write::Volume(v) => {
                pv.metadata = v.metadata.clone();
                pv.spec = v.spec.clone();
            }
            Write::VolumeStatus(v) => pv.status = v.status.clone(),
            Write::Claim(c) => {
                pvc.metadata = c.metadata.clone();
                pvc.spec = c.spec.clone();
            }
            Write::ClaimStatus(c) => pvc.status = c.status.clone(),
            Write::Event(_) => {}
        }
    }
    (pv, pvc)
}

#[test]
fn unbound_claim_binds_best_match_with_four_writes_in_order() {
    let pv = volume("pv1", "2Gi", &["ReadWriteOnce"]);
    let w = World::new(vec![pv.clone()]);
    let c = claim("c", "1Gi", &["ReadWriteOnce"]);
    let plan = w.sync(&c);
    assert_eq!(kinds(&plan), ["pv", "pv-status", "pvc", "pvc-status"]);
    let v = written_pv(&plan);
    let r = v.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!(
        (r.name.as_deref(), r.uid.as_deref(), r.kind.as_deref()),
        (Some("c"), Some("uid-c"), Some("PersistentVolumeClaim"))
    );
    assert_eq!(
        ann(&v.metadata, names::ANN_BOUND_BY_CONTROLLER),
        Some("yes")
    );
    let pc = written_claim(&plan);
    assert_eq!(meta::claim_volume_name(pc), "pv1");
    assert_eq!(ann(&pc.metadata, names::ANN_BIND_COMPLETED), Some("yes"));
    assert_eq!(
        ann(&pc.metadata, names::ANN_BOUND_BY_CONTROLLER),
        Some("yes")
    );
    let st = written_claim_status(&plan).status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Bound"));
    assert_eq!(
        st.capacity.as_ref().unwrap()["storage"].0,
        "2Gi",
        "status capacity is the PV's, not the request"
    );
    assert_eq!(
        st.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    // Binding again from the bound state changes nothing (idempotent).
    let (pv2, pvc2) = apply(&plan, &pv, &c);
    let w2 = World::new(vec![pv2]);
    assert!(w2.sync(&pvc2).writes.is_empty());
}

#[test]
fn prebound_volume_gets_no_bound_by_controller() {
    let c = claim("c", "1Gi", &["ReadWriteOnce"]);
    let pv = prebound(volume("pv1", "1Gi", &["ReadWriteOnce"]), &c, false);
    let plan = World::new(vec![pv]).sync(&c);
    let v = written_pv(&plan);
    assert_eq!(
        v.spec
            .as_ref()
            .unwrap()
            .claim_ref
            .as_ref()
            .unwrap()
            .uid
            .as_deref(),
        Some("uid-c"),
        "UID filled in"
    );
    assert_eq!(ann(&v.metadata, names::ANN_BOUND_BY_CONTROLLER), None);
}

#[test]
fn nil_class_gets_default_retroactively_but_empty_class_does_not() {
    let mut sc = class("std", "Immediate");
    crate::meta::set_annotation(&mut sc.metadata, names::ANN_DEFAULT_CLASS, "true");
    let w = World::new(vec![]).class(sc);
    let plan = w.sync(&claim("c", "1Gi", &["ReadWriteOnce"]));
    assert_eq!(kinds(&plan), ["pvc"]);
    assert_eq!(
        written_claim(&plan)
            .spec
            .as_ref()
            .unwrap()
            .storage_class_name
            .as_deref(),
        Some("std")
    );
    let plan = w.sync(&with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), ""));
    assert_eq!(
        events(&plan),
        [(
            EventType::Normal,
            reason::FAILED_BINDING,
            "no persistent volumes available for this claim and no storage class is set"
                .to_string()
        )]
    );
    assert_eq!(
        written_claim_status(&plan)
            .status
            .as_ref()
            .unwrap()
            .phase
            .as_deref(),
        Some("Pending")
    );
    // A beta annotation counts as a class: no defaulting either.
    let mut beta = claim("c", "1Gi", &["ReadWriteOnce"]);
    crate::meta::set_annotation(&mut beta.metadata, names::ANN_BETA_STORAGE_CLASS, "std");
    assert_eq!(w.sync(&beta).note, "handed to the external provisioner");
}

#[test]
fn nil_class_without_default_and_no_volume_is_failed_binding() {
    let plan = World::new(vec![]).sync(&claim("c", "1Gi", &["ReadWriteOnce"]));
    assert_eq!(events(&plan)[0].1, reason::FAILED_BINDING);
}

#[test]
fn wffc_without_selected_node_waits_with_the_right_event() {
    let mut w = World::new(vec![]).class(class("local", "WaitForFirstConsumer"));
    let c = with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "local");
    assert_eq!(
        events(&w.sync(&c)),
        [(
            EventType::Normal,
            reason::WAIT_FOR_FIRST_CONSUMER,
            "waiting for first consumer to be created before binding".to_string()
        )]
    );
    w.pods = vec!["web-0".into()];
    assert_eq!(
        events(&w.sync(&c))[0].2,
        "waiting for pod web-0 to be scheduled"
    );
    w.pods = vec!["a".into(), "b".into()];
    let e = events(&w.sync(&c));
    assert_eq!(
        (e[0].1, e[0].2.as_str()),
        (
            reason::WAIT_FOR_POD_SCHEDULED,
            "waiting for pods a,b to be scheduled"
        )
    );
}

#[test]
fn wffc_with_selected_node_is_handed_to_the_provisioner() {
    let w = World::new(vec![volume("free", "5Gi", &["ReadWriteOnce"])])
        .class(class("local", "WaitForFirstConsumer"));
    let mut c = with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "local");
    crate::meta::set_annotation(&mut c.metadata, names::ANN_SELECTED_NODE, "n1");
    let plan = w.sync(&c);
    assert_eq!(plan.note, "handed to the external provisioner");
}

#[test]
fn immediate_class_sets_both_provisioner_annotations_and_event() {
    let w = World::new(vec![]).class(class("fast", "Immediate"));
    let c = with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "fast");
    let plan = w.sync(&c);
    assert_eq!(kinds(&plan), ["pvc", "event"]);
    let pc = written_claim(&plan);
    assert_eq!(
        ann(&pc.metadata, names::ANN_STORAGE_PROVISIONER),
        Some("strata.csi.io")
    );
    assert_eq!(
        ann(&pc.metadata, names::ANN_BETA_STORAGE_PROVISIONER),
        Some("strata.csi.io")
    );
    let e = &events(&plan)[0];
    assert_eq!(
        (e.0, e.1),
        (EventType::Normal, reason::EXTERNAL_PROVISIONING)
    );
    assert!(e.2.starts_with(
        "Waiting for a volume to be created either by the external provisioner 'strata.csi.io'"
    ));
    // Second sync: annotations are there, only the event repeats (aggregated by count).
    assert_eq!(kinds(&w.sync(pc)), ["event"]);
}

#[test]
fn class_missing_or_in_tree_provisioner_fails_provisioning() {
    let mut np = class("local", "Immediate");
    np.provisioner = names::NO_PROVISIONER.into();
    let w = World::new(vec![]).class(np);
    let e = events(&w.sync(&with_class_pvc(
        claim("c", "1Gi", &["ReadWriteOnce"]),
        "ghost",
    )));
    assert_eq!(
        (e[0].0, e[0].1, e[0].2.as_str()),
        (
            EventType::Warning,
            reason::PROVISIONING_FAILED,
            "storageclass.storage.k8s.io \"ghost\" not found"
        )
    );
    let e = events(&w.sync(&with_class_pvc(
        claim("c", "1Gi", &["ReadWriteOnce"]),
        "local",
    )));
    assert_eq!(
        e[0].2,
        "no volume plugin matched name: kubernetes.io/no-provisioner"
    );
}

#[test]
fn static_volume_of_the_class_wins_over_provisioning() {
    let w = World::new(vec![with_class_pv(
        volume("static", "1Gi", &["ReadWriteOnce"]),
        "fast",
    )])
    .class(class("fast", "Immediate"));
    assert_eq!(
        w.sync(&with_class_pvc(
            claim("c", "1Gi", &["ReadWriteOnce"]),
            "fast"
        ))
        .note,
        "bound to the best matching volume"
    );
}

#[test]
fn volume_name_set_but_volume_missing_stays_pending() {
    let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
    c.spec.as_mut().unwrap().volume_name = Some("later".into());
    let plan = World::new(vec![]).sync(&c);
    assert_eq!(kinds(&plan), ["pvc-status"]);
    assert!(events(&plan).is_empty());
}

#[test]
fn volume_name_checks_size_class_mode_and_access_but_not_selector_or_affinity() {
    let mk = |name: &str| {
        let mut c = claim(name, "2Gi", &["ReadWriteOnce"]);
        c.spec.as_mut().unwrap().volume_name = Some("pv1".into());
        c
    };
    let cases: Vec<(PersistentVolume, &str)> = vec![
        (
            volume("pv1", "1Gi", &["ReadWriteOnce"]),
            "requested PV is too small",
        ),
        (
            with_class_pv(volume("pv1", "2Gi", &["ReadWriteOnce"]), "fast"),
            "storageClassName does not match",
        ),
        (
            {
                let mut v = volume("pv1", "2Gi", &["ReadWriteOnce"]);
                v.spec.as_mut().unwrap().volume_mode = Some("Block".into());
                v
            },
            "incompatible volumeMode",
        ),
        (
            volume("pv1", "2Gi", &["ReadOnlyMany"]),
            "incompatible accessMode",
        ),
        (
            {
                let mut v = volume("pv1", "2Gi", &["ReadWriteOnce"]);
                v.metadata.deletion_timestamp = Some(ts_at(1));
                v
            },
            "the volume is marked for deletion \"pv1\"",
        ),
    ];
    for (pv, why) in cases {
        let plan = World::new(vec![pv]).sync(&mk("c"));
        let e = events(&plan);
        assert_eq!(e.len(), 1, "{why}");
        assert_eq!(
            (e[0].0, e[0].1),
            (EventType::Warning, reason::VOLUME_MISMATCH)
        );
        assert_eq!(
            e[0].2,
            format!("Cannot bind to requested volume \"pv1\": {why}")
        );
        assert_eq!(
            written_claim_status(&plan)
                .status
                .as_ref()
                .unwrap()
                .phase
                .as_deref(),
            Some("Pending")
        );
    }
    // Selector and node affinity are not checked for a volumeName pre-bind (k8s-semantics §6.11).
    let mut pv = volume("pv1", "2Gi", &["ReadWriteOnce", "ReadOnlyMany"]);
    pv.spec.as_mut().unwrap().node_affinity = Some(VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: "nowhere".into(),
                    operator: "Exists".into(),
                    values: None,
                }]),
                match_fields: None,
            }],
        }),
    });
    let mut c = mk("c");
    c.spec.as_mut().unwrap().selector = Some(LabelSelector {
        match_labels: Some(BTreeMap::from([("never".into(), "there".into())])),
        match_expressions: None,
    });
    let plan = World::new(vec![pv]).sync(&c);
    assert_eq!(plan.note, "bound to the requested volume");
    // The claim already names the volume: no bound-by-controller on the claim.
    assert_eq!(
        ann(
            &written_claim(&plan).metadata,
            names::ANN_BOUND_BY_CONTROLLER
        ),
        None
    );
    assert_eq!(
        ann(&written_pv(&plan).metadata, names::ANN_BOUND_BY_CONTROLLER),
        Some("yes")
    );
}

#[test]
fn volume_name_with_volume_prebound_to_this_claim_binds() {
    let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
    c.spec.as_mut().unwrap().volume_name = Some("pv1".into());
    let pv = prebound(volume("pv1", "1Gi", &["ReadWriteOnce"]), &c, false);
    let plan = World::new(vec![pv]).sync(&c);
    assert_eq!(plan.note, "requested volume is pre-bound to this claim");
    assert_eq!(
        ann(&written_pv(&plan).metadata, names::ANN_BOUND_BY_CONTROLLER),
        None
    );
}

#[test]
fn volume_name_with_volume_bound_elsewhere_fails_binding() {
    let other = claim("other", "1Gi", &[]);
    let pv = prebound(volume("pv1", "1Gi", &["ReadWriteOnce"]), &other, true);
    let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
    c.spec.as_mut().unwrap().volume_name = Some("pv1".into());
    let w = World::new(vec![pv]);
    let plan = w.sync(&c);
    assert_eq!(
        events(&plan)[0],
        (
            EventType::Warning,
            reason::FAILED_BINDING,
            "volume \"pv1\" already bound to a different claim.".to_string()
        )
    );
    assert_eq!(kinds(&plan), ["event", "pvc-status"]);
    crate::meta::set_annotation(&mut c.metadata, names::ANN_BOUND_BY_CONTROLLER, "yes");
    assert_eq!(
        kinds(&w.sync(&c)),
        ["event"],
        "our own binding gone wrong: event only, retried"
    );
}

fn bound_claim(volume_name: &str) -> PersistentVolumeClaim {
    let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
    c.spec.as_mut().unwrap().volume_name = Some(volume_name.into());
    crate::meta::set_annotation(&mut c.metadata, names::ANN_BIND_COMPLETED, "yes");
    c.status = Some(PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        ..Default::default()
    });
    c
}

#[test]
fn bound_claim_without_volume_name_is_lost_once() {
    let mut c = bound_claim("");
    let plan = World::new(vec![]).sync(&c);
    assert_eq!(kinds(&plan), ["pvc-status", "event"]);
    assert_eq!(
        written_claim_status(&plan)
            .status
            .as_ref()
            .unwrap()
            .phase
            .as_deref(),
        Some("Lost")
    );
    assert_eq!(
        events(&plan)[0],
        (
            EventType::Warning,
            reason::CLAIM_LOST,
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!"
                .to_string()
        )
    );
    c.status.as_mut().unwrap().phase = Some("Lost".into());
    assert!(
        World::new(vec![]).sync(&c).writes.is_empty(),
        "Lost is terminal, no repeated event"
    );
}

#[test]
fn bound_claim_whose_volume_is_gone_is_lost() {
    let plan = World::new(vec![]).sync(&bound_claim("pv1"));
    assert_eq!(
        events(&plan)[0].2,
        "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
    );
}

#[test]
fn bound_claim_whose_volume_lost_its_claim_ref_binds_again() {
    let plan = World::new(vec![phase_pv(
        volume("pv1", "1Gi", &["ReadWriteOnce"]),
        "Available",
    )])
    .sync(&bound_claim("pv1"));
    assert_eq!(
        plan.note,
        "bound claim's volume came unbound, binding again"
    );
    assert!(written_pv(&plan).spec.as_ref().unwrap().claim_ref.is_some());
}

#[test]
fn bound_claim_misbound_to_a_volume_of_another_claim_is_lost() {
    let other = claim("other", "1Gi", &[]);
    let pv = phase_pv(
        prebound(volume("pv1", "1Gi", &["ReadWriteOnce"]), &other, true),
        "Bound",
    );
    let plan = World::new(vec![pv]).sync(&bound_claim("pv1"));
    assert_eq!(events(&plan)[0].1, reason::CLAIM_MISBOUND);
}

#[test]
fn bound_claim_keeps_its_status_capacity_after_the_pv_grows() {
    let c = bound_claim("pv1");
    let mut c = c;
    c.status.as_mut().unwrap().capacity =
        Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))]));
    c.status.as_mut().unwrap().access_modes = Some(vec!["ReadWriteOnce".into()]);
    let pv = phase_pv(
        prebound(volume("pv1", "5Gi", &["ReadWriteOnce"]), &c, true),
        "Bound",
    );
    let plan = World::new(vec![pv]).sync(&c);
    assert!(
        plan.writes.is_empty(),
        "capacity is copied only on the transition to Bound: {plan:?}"
    );
}

#[test]
fn pre_resize_capacity_is_used_when_binding() {
    let c = claim("c", "1Gi", &["ReadWriteOnce"]);
    let mut pv = prebound(volume("pv1", "5Gi", &["ReadWriteOnce"]), &c, true);
    crate::meta::set_annotation(&mut pv.metadata, names::ANN_PRE_RESIZE_CAPACITY, "2Gi");
    let plan = World::new(vec![pv]).sync(&c);
    assert_eq!(
        written_claim_status(&plan)
            .status
            .as_ref()
            .unwrap()
            .capacity
            .as_ref()
            .unwrap()["storage"]
            .0,
        "2Gi"
    );
}

#[test]
fn released_retain_volume_is_never_rebound_to_a_new_claim_with_the_same_name() {
    // k8s-semantics §6.13: the stale claimRef keeps the old UID.
    let old = claim("c", "1Gi", &["ReadWriteOnce"]);
    let pv = phase_pv(
        prebound(volume("pv1", "1Gi", &["ReadWriteOnce"]), &old, true),
        "Released",
    );
    let mut new = claim("c", "1Gi", &["ReadWriteOnce"]);
    new.metadata.uid = Some("uid-c-2".into());
    let plan = World::new(vec![pv]).sync(&new);
    assert_eq!(plan.note, "no volume and no class");
}

#[test]
fn two_claims_never_get_the_same_volume_when_the_cache_is_updated() {
    let pv = volume("pv1", "1Gi", &["ReadWriteOnce"]);
    let mut w = World::new(vec![pv.clone()]);
    let a = claim("a", "1Gi", &["ReadWriteOnce"]);
    let plan = w.sync(&a);
    let (mut bound, _) = apply(&plan, &pv, &a);
    bound.metadata.resource_version = Some("2".into());
    w.index.upsert(bound);
    assert_eq!(
        w.sync(&claim("b", "1Gi", &["ReadWriteOnce"])).note,
        "no volume and no class"
    );
}

use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;

//! One StatefulSet pass (k8s-semantics §4.2): the claims, pods and deletions to make, in order.
//!
//! OrderedReady creates one pod at a time and goes on to the next ordinal only once the
//! previous pod's Ready condition is True (`pod_is_ready`, which strata-node's pod runner
//! writes from its readiness probes); Parallel does not wait. The status's READY counts
//! the same pods.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use crate::k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use super::retention::update_claim_refs;
use super::{claim_for, ordinal_of, ordinal_range, pod_for, pod_name, templates};
use crate::binder::EventType;
use crate::meta;
use crate::names::reason;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateClaim(PersistentVolumeClaim),
    /// ownerReferences changed (retention policy).
    UpdateClaim(PersistentVolumeClaim),
    CreatePod(Pod),
    DeletePod {
        name: String,
        uid: String,
    },
    /// An event on the StatefulSet.
    Event {
        type_: EventType,
        reason: &'static str,
        message: String,
    },
    UpdateStatus(StatefulSet),
}

/// The pod's Ready condition is True and it is not being deleted.
fn pod_is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// `pods`: the pods controlled by `set`; `claims`: the namespace's claims by name.
pub fn reconcile(
    set: &StatefulSet,
    pods: &[Pod],
    claims: &BTreeMap<String, PersistentVolumeClaim>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if set.metadata.deletion_timestamp.is_some() {
        return actions;
    }
    let set_name = meta::name(&set.metadata).to_string();
    let parallel = set.spec.pod_management_policy.as_deref() == Some("Parallel");
    let range = ordinal_range(set);
    let by_ordinal: BTreeMap<i32, &Pod> = pods
        .iter()
        .filter_map(|p| Some((ordinal_of(set, meta::name(&p.metadata))?, p)))
        .collect();
    let event = |actions: &mut Vec<Action>, type_, reason, message: String| {
        actions.push(Action::Event {
            type_,
            reason,
            message,
        })
    };

    for ordinal in range.clone() {
        let name = pod_name(set, ordinal);
        match by_ordinal.get(&ordinal) {
            Some(pod) => {
                // Existing pod: make sure its claims exist and carry the right references.
                for t in templates(set) {
                    let want = claim_for(set, t, ordinal);
                    match claims.get(meta::name(&want.metadata)) {
                        None => actions.push(Action::CreateClaim(
                            update_claim_refs(&want, set, Some(pod), false).unwrap_or(want),
                        )),
                        Some(c) => actions.extend(
                            update_claim_refs(c, set, Some(pod), false).map(Action::UpdateClaim),
                        ),
                    }
                }
                if !pod_is_ready(pod) && !parallel {
                    return finish(set, pods, actions);
                }
            }
            None => {
                let mut blocked = None;
                let mut claim_actions = Vec::new();
                for t in templates(set) {
                    let want = claim_for(set, t, ordinal);
                    let claim_name = meta::name(&want.metadata).to_string();
                    match claims.get(&claim_name) {
                        Some(c) if c.metadata.deletion_timestamp.is_some() => {
                            blocked = Some(claim_name);
                            break;
                        }
                        // Reused as it is; its spec is never compared or updated.
                        Some(c) => claim_actions.extend(
                            update_claim_refs(c, set, None, false).map(Action::UpdateClaim),
                        ),
                        None => {
                            let claim = update_claim_refs(&want, set, None, false).unwrap_or(want);
                            claim_actions.push(Action::CreateClaim(claim));
                            claim_actions.push(Action::Event {
                                type_: EventType::Normal,
                                reason: reason::SUCCESSFUL_CREATE,
                                message: format!("create Claim {claim_name} Pod {name} in StatefulSet {set_name} success"),
                            });
                        }
                    }
                }
                if let Some(claim) = blocked {
                    event(
                        &mut actions,
                        EventType::Warning,
                        reason::FAILED_CREATE,
                        format!(
                            "create Pod {name} in StatefulSet {set_name} failed error: pvc {claim} is being deleted"
                        ),
                    );
                    if parallel {
                        continue;
                    }
                    return finish(set, pods, actions);
                }
                actions.extend(claim_actions);
                actions.push(Action::CreatePod(pod_for(set, ordinal)));
                event(
                    &mut actions,
                    EventType::Normal,
                    reason::SUCCESSFUL_CREATE,
                    format!("create Pod {name} in StatefulSet {set_name} successful"),
                );
                // The next ordinal waits for this pod to be Ready.
                if !parallel {
                    return finish(set, pods, actions);
                }
            }
        }
    }

    // Scale down: condemned pods, highest ordinal first; their claims' references are
    // written before the pod goes, so the GC can follow the pod.
    for (ordinal, pod) in by_ordinal.iter().rev() {
        if range.contains(ordinal) || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        for t in templates(set) {
            let claim_name = super::claim_name(t, set, *ordinal);
            if let Some(c) = claims.get(&claim_name) {
                actions.extend(update_claim_refs(c, set, Some(pod), true).map(Action::UpdateClaim));
            }
        }
        let name = meta::name(&pod.metadata).to_string();
        actions.push(Action::DeletePod {
            uid: meta::uid(&pod.metadata).to_string(),
            name: name.clone(),
        });
        event(
            &mut actions,
            EventType::Normal,
            reason::SUCCESSFUL_DELETE,
            format!("delete Pod {name} in StatefulSet {set_name} successful"),
        );
    }
    finish(set, pods, actions)
}

/// Appends the status update counting the pods as they will be after `actions`.
fn finish(set: &StatefulSet, pods: &[Pod], mut actions: Vec<Action>) -> Vec<Action> {
    let created = actions
        .iter()
        .filter(|a| matches!(a, Action::CreatePod(_)))
        .count();
    let deleted = actions
        .iter()
        .filter(|a| matches!(a, Action::DeletePod { .. }))
        .count();
    let live = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    let replicas = i32::try_from(live + created - deleted.min(live + created)).unwrap_or(i32::MAX);
    // READY counts pods whose Ready condition is True (as a pod runner reports it), not
    // pod objects; one this pass deletes is not counted.
    let deleting: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { uid, .. } => Some(uid.as_str()),
            _ => None,
        })
        .collect();
    let ready = pods
        .iter()
        .filter(|p| pod_is_ready(p) && !deleting.contains(&meta::uid(&p.metadata)))
        .count();
    let ready = i32::try_from(ready).unwrap_or(i32::MAX);
    let status = StatefulSetStatus {
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        current_replicas: Some(replicas),
        updated_replicas: Some(replicas),
        observed_generation: set.metadata.generation,
        ..set.status.clone().unwrap_or_default()
    };
    if set.status.as_ref() != Some(&status) {
        let mut updated = set.clone();
        updated.status = Some(status);
        actions.push(Action::UpdateStatus(updated));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::super::testutil::set;
    use super::*;

    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateClaim(c) => Some(format!("+pvc {}", meta::name(&c.metadata))),
                Action::UpdateClaim(c) => Some(format!("~pvc {}", meta::name(&c.metadata))),
                Action::CreatePod(p) => Some(format!("+pod {}", meta::name(&p.metadata))),
                Action::DeletePod { name, .. } => Some(format!("-pod {name}")),
                _ => None,
            })
            .collect()
    }

    fn existing(s: &StatefulSet, ordinal: i32) -> Pod {
        let mut p = pod_for(s, ordinal);
        p.metadata.uid = Some(format!("uid-pod-{ordinal}"));
        p
    }

    fn with_ready(mut p: Pod, ready: &str) -> Pod {
        use crate::k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn ready_pod(s: &StatefulSet, ordinal: i32) -> Pod {
        with_ready(existing(s, ordinal), "True")
    }

    #[test]
    fn ordered_ready_waits_for_each_pod_to_be_ready() {
        let s = set("web", 3, "Retain", "Retain");
        assert_eq!(
            summary(&reconcile(&s, &[], &BTreeMap::new())),
            ["+pvc data-web-0", "+pod web-0"],
            "one pod at a time"
        );
        let claims: BTreeMap<String, PersistentVolumeClaim> = (0..3)
            .map(|o| (format!("data-web-{o}"), claim_for(&s, &templates(&s)[0], o)))
            .collect();
        for not_ready in [existing(&s, 0), with_ready(existing(&s, 0), "False")] {
            assert!(
                summary(&reconcile(&s, &[not_ready], &claims)).is_empty(),
                "web-1 waits for web-0's Ready condition"
            );
        }
        assert_eq!(
            summary(&reconcile(&s, &[ready_pod(&s, 0)], &claims)),
            ["+pod web-1"]
        );
        let mut par = s.clone();
        par.spec.pod_management_policy = Some("Parallel".into());
        assert_eq!(
            summary(&reconcile(&par, &[existing(&s, 0)], &claims)),
            ["+pod web-1", "+pod web-2"],
            "Parallel does not wait"
        );
    }

    #[test]
    fn ready_counts_only_pods_whose_ready_condition_is_true() {
        let s = set("web", 3, "Retain", "Retain");
        let mut pods: Vec<Pod> = (0..3).map(|o| existing(&s, o)).collect();
        let status_of = |pods: &[Pod]| {
            reconcile(&s, pods, &BTreeMap::new())
                .into_iter()
                .find_map(|a| match a {
                    Action::UpdateStatus(u) => u.status,
                    _ => None,
                })
                .unwrap()
        };
        let st = status_of(&pods);
        assert_eq!(
            (st.replicas, st.ready_replicas),
            (3, Some(0)),
            "created, not ready"
        );
        for (p, ready) in pods.iter_mut().zip(["True", "False"]) {
            *p = with_ready(p.clone(), ready);
        }
        let st = status_of(&pods);
        assert_eq!((st.replicas, st.ready_replicas), (3, Some(1)));
    }

    #[test]
    fn claims_are_created_before_their_pods_in_order() {
        let mut s = set("web", 3, "Retain", "Retain");
        s.spec.pod_management_policy = Some("Parallel".into());
        let a = reconcile(&s, &[], &BTreeMap::new());
        assert_eq!(
            summary(&a),
            [
                "+pvc data-web-0",
                "+pod web-0",
                "+pvc data-web-1",
                "+pod web-1",
                "+pvc data-web-2",
                "+pod web-2"
            ]
        );
        let Some(Action::UpdateStatus(st)) = a.last() else {
            panic!("status last")
        };
        assert_eq!(st.status.as_ref().unwrap().replicas, 3);
    }

    #[test]
    fn existing_claim_is_reused_when_the_pod_is_recreated() {
        let s = set("web", 1, "Retain", "Retain");
        let mut c = claim_for(&s, &templates(&s)[0], 0);
        c.spec.as_mut().unwrap().resources = None; // differs from the template: not touched
        let claims = BTreeMap::from([("data-web-0".to_string(), c)]);
        assert_eq!(summary(&reconcile(&s, &[], &claims)), ["+pod web-0"]);
    }

    #[test]
    fn claim_being_deleted_blocks_its_pod_and_later_ordinals_when_ordered() {
        let s = set("web", 2, "Retain", "Retain");
        let mut c = claim_for(&s, &templates(&s)[0], 0);
        c.metadata.deletion_timestamp = Some(crate::binder::testutil::ts_at(1));
        let claims = BTreeMap::from([("data-web-0".to_string(), c)]);
        let a = reconcile(&s, &[], &claims);
        assert!(summary(&a).is_empty());
        assert!(a.iter().any(|x| matches!(x, Action::Event { reason, message, .. } if *reason == reason::FAILED_CREATE && message.contains("pvc data-web-0 is being deleted"))));
        let mut par = s.clone();
        par.spec.pod_management_policy = Some("Parallel".into());
        assert_eq!(
            summary(&reconcile(&par, &[], &claims)),
            ["+pvc data-web-1", "+pod web-1"]
        );
    }

    #[test]
    fn scale_down_with_when_scaled_delete_refs_the_pod_then_deletes_it() {
        let s3 = set("web", 3, "Retain", "Delete");
        let pods: Vec<Pod> = (0..3).map(|o| ready_pod(&s3, o)).collect();
        let claims: BTreeMap<String, PersistentVolumeClaim> = (0..3)
            .map(|o| {
                (
                    format!("data-web-{o}"),
                    claim_for(&s3, &templates(&s3)[0], o),
                )
            })
            .collect();
        assert!(
            summary(&reconcile(&s3, &pods, &claims)).is_empty(),
            "steady state"
        );
        let s1 = set("web", 1, "Retain", "Delete");
        let a = reconcile(&s1, &pods, &claims);
        assert_eq!(
            summary(&a),
            [
                "~pvc data-web-2",
                "-pod web-2",
                "~pvc data-web-1",
                "-pod web-1"
            ]
        );
        let Action::UpdateClaim(c) = &a[0] else {
            panic!()
        };
        let r = &c.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((r.kind.as_str(), r.uid.as_str()), ("Pod", "uid-pod-2"));
    }

    #[test]
    fn scale_down_with_retain_only_deletes_pods() {
        let s3 = set("web", 3, "Retain", "Retain");
        let pods: Vec<Pod> = (0..3).map(|o| ready_pod(&s3, o)).collect();
        let claims: BTreeMap<String, PersistentVolumeClaim> = (0..3)
            .map(|o| {
                (
                    format!("data-web-{o}"),
                    claim_for(&s3, &templates(&s3)[0], o),
                )
            })
            .collect();
        assert_eq!(
            summary(&reconcile(
                &set("web", 2, "Retain", "Retain"),
                &pods,
                &claims
            )),
            ["-pod web-2"]
        );
    }

    #[test]
    fn when_deleted_delete_puts_the_set_ref_on_new_claims() {
        let s = set("web", 1, "Delete", "Retain");
        let a = reconcile(&s, &[], &BTreeMap::new());
        let Action::CreateClaim(c) = &a[0] else {
            panic!()
        };
        assert_eq!(
            c.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-sts-web"
        );
    }

    #[test]
    fn deleting_set_does_nothing() {
        let mut s = set("web", 1, "Retain", "Retain");
        s.metadata.deletion_timestamp = Some(crate::binder::testutil::ts_at(1));
        assert!(reconcile(&s, &[], &BTreeMap::new()).is_empty());
    }
}

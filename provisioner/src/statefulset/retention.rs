//! `persistentVolumeClaimRetentionPolicy` as ownerReferences on the claims (k8s-semantics §4.3).
//!
//! The controller only edits references; the garbage collector deletes.

use crate::k8s_openapi::api::apps::v1::StatefulSet;
use crate::k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::meta;

fn refs(claim: &PersistentVolumeClaim) -> &[OwnerReference] {
    claim
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
}

fn names_owner(r: &OwnerReference, kind: &str, name: &str) -> bool {
    r.kind == kind && r.name == name
}

/// The claim with its references updated for `set` and (when it exists) `pod`, or None when
/// nothing changes. `condemned`: the pod's ordinal is out of range (scale-down).
pub fn update_claim_refs(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: Option<&Pod>,
    condemned: bool,
) -> Option<PersistentVolumeClaim> {
    let set_name = meta::name(&set.metadata);
    let set_uid = meta::uid(&set.metadata);
    let pod_id = pod.map(|p| (meta::name(&p.metadata), meta::uid(&p.metadata)));
    let mut updated = claim.clone();

    // Another controller owns the claim: drop our refs, add nothing.
    let unexpected = refs(claim).iter().any(|r| {
        r.controller == Some(true)
            && !names_owner(r, "StatefulSet", set_name)
            && !pod_id.is_some_and(|(n, _)| names_owner(r, "Pod", n))
    });
    // A ref with our name but another UID belongs to an earlier set or pod: hands off.
    let stale = refs(claim).iter().any(|r| {
        (names_owner(r, "StatefulSet", set_name) && r.uid != set_uid)
            || pod_id.is_some_and(|(n, u)| names_owner(r, "Pod", n) && r.uid != u)
    });
    if !unexpected && stale {
        return None;
    }
    let mut changed = false;
    let mut remove = |c: &mut PersistentVolumeClaim, uid: &str| {
        let Some(list) = c.metadata.owner_references.as_mut() else {
            return;
        };
        let before = list.len();
        list.retain(|r| r.uid != uid);
        if list.len() != before {
            changed = true;
        }
        if list.is_empty() {
            c.metadata.owner_references = None;
        }
    };
    if unexpected {
        remove(&mut updated, set_uid);
        if let Some((_, u)) = pod_id {
            remove(&mut updated, u);
        }
        return changed.then_some(updated);
    }
    let policy = set.spec.persistent_volume_claim_retention_policy.as_ref();
    let when_deleted = policy
        .and_then(|p| p.when_deleted.as_deref())
        .unwrap_or("Retain")
        == "Delete";
    let when_scaled = policy
        .and_then(|p| p.when_scaled.as_deref())
        .unwrap_or("Retain")
        == "Delete";

    let want_set = when_deleted && !(when_scaled && condemned);
    let want_pod = when_scaled && condemned && pod.is_some();

    if !want_set {
        remove(&mut updated, set_uid);
    }
    if !want_pod && let Some((_, u)) = pod_id {
        remove(&mut updated, u);
    }
    let mut add = |c: &mut PersistentVolumeClaim, r: OwnerReference| {
        let list = c.metadata.owner_references.get_or_insert_with(Vec::new);
        if !list.iter().any(|x| x.uid == r.uid) {
            list.push(r);
            changed = true;
        }
    };
    if want_set {
        add(&mut updated, meta::controller_reference(set));
    }
    if want_pod && let Some(p) = pod {
        add(&mut updated, meta::controller_reference(p));
    }
    changed.then_some(updated)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::set;
    use super::*;

    fn claim() -> PersistentVolumeClaim {
        crate::binder::testutil::claim("data-web-2", "1Gi", &["ReadWriteOnce"])
    }

    fn pod() -> Pod {
        let s = set("web", 3, "Retain", "Retain");
        let mut p = super::super::pod_for(&s, 2);
        p.metadata.uid = Some("uid-pod-2".into());
        p
    }

    fn owners(c: &PersistentVolumeClaim) -> Vec<(String, String)> {
        refs(c)
            .iter()
            .map(|r| (r.kind.clone(), r.uid.clone()))
            .collect()
    }

    fn apply(c: &PersistentVolumeClaim, s: &StatefulSet, condemned: bool) -> PersistentVolumeClaim {
        update_claim_refs(c, s, Some(&pod()), condemned).unwrap_or_else(|| c.clone())
    }

    #[test]
    fn policy_table() {
        let set_ref = ("StatefulSet".to_string(), "uid-sts-web".to_string());
        let pod_ref = ("Pod".to_string(), "uid-pod-2".to_string());
        let cases = [
            ("Retain", "Retain", false, vec![]),
            ("Retain", "Retain", true, vec![]),
            ("Delete", "Retain", false, vec![set_ref.clone()]),
            ("Delete", "Retain", true, vec![set_ref.clone()]),
            ("Retain", "Delete", false, vec![]),
            ("Retain", "Delete", true, vec![pod_ref.clone()]),
            ("Delete", "Delete", false, vec![set_ref.clone()]),
            ("Delete", "Delete", true, vec![pod_ref.clone()]),
        ];
        for (deleted, scaled, condemned, want) in cases {
            let s = set("web", 3, deleted, scaled);
            let got = apply(&claim(), &s, condemned);
            assert_eq!(
                owners(&got),
                want,
                "whenDeleted={deleted} whenScaled={scaled} condemned={condemned}"
            );
            let r = &refs(&got).first().cloned();
            if let Some(r) = r {
                assert_eq!(
                    (r.controller, r.block_owner_deletion),
                    (Some(true), Some(true))
                );
            }
            assert!(
                update_claim_refs(&got, &s, Some(&pod()), condemned).is_none(),
                "second pass changes nothing"
            );
        }
    }

    #[test]
    fn changing_the_policy_back_removes_our_refs() {
        let with = apply(&claim(), &set("web", 3, "Delete", "Delete"), true);
        assert_eq!(owners(&with).len(), 1);
        let back = apply(&with, &set("web", 3, "Retain", "Retain"), true);
        assert!(owners(&back).is_empty());
        // Scale-down to scale-up: the pod ref goes, the set ref comes back.
        let again = apply(&with, &set("web", 3, "Delete", "Delete"), false);
        assert_eq!(
            owners(&again),
            [("StatefulSet".to_string(), "uid-sts-web".to_string())]
        );
    }

    #[test]
    fn stale_uid_leaves_the_claim_alone() {
        let mut c = claim();
        let mut old = meta::controller_reference(&set("web", 3, "Delete", "Delete"));
        old.uid = "uid-of-an-older-web".into();
        c.metadata.owner_references = Some(vec![old]);
        assert!(
            update_claim_refs(&c, &set("web", 3, "Delete", "Delete"), Some(&pod()), true).is_none()
        );
    }

    #[test]
    fn another_controller_wins_and_our_refs_go() {
        let s = set("web", 3, "Delete", "Delete");
        let mut c = apply(&claim(), &s, false);
        c.metadata
            .owner_references
            .as_mut()
            .unwrap()
            .push(OwnerReference {
                api_version: "example.com/v1".into(),
                kind: "Backup".into(),
                name: "b".into(),
                uid: "uid-b".into(),
                controller: Some(true),
                block_owner_deletion: None,
            });
        let got = update_claim_refs(&c, &s, Some(&pod()), true).expect("our ref removed");
        assert_eq!(owners(&got), [("Backup".to_string(), "uid-b".to_string())]);
    }
}

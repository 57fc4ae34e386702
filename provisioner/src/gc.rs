//! A small garbage collector for ownerReferences (standalone mode has no kube GC).
//!
//! Only owners of kinds the loops manage (StatefulSet, Pod) are judged; a reference to any
//! other kind counts as present, so nothing is deleted on a guess.

use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// What became of one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Present,
    /// Not found, or an object of that name with another UID.
    Absent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// Every owner is gone: delete the dependent (background propagation).
    Delete,
    /// Some owners are gone, others remain: drop the dangling references.
    RemoveRefs(Vec<OwnerReference>),
}

pub fn is_managed_owner(r: &OwnerReference) -> bool {
    (r.kind == "StatefulSet" && r.api_version == "apps/v1")
        || (r.kind == "Pod" && r.api_version == "v1")
}

pub fn judge(meta: &ObjectMeta, mut owner: impl FnMut(&OwnerReference) -> Owner) -> Verdict {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if refs.is_empty() || meta.deletion_timestamp.is_some() {
        return Verdict::Keep;
    }
    let (absent, present): (Vec<&OwnerReference>, Vec<&OwnerReference>) = refs
        .iter()
        .partition(|r| is_managed_owner(r) && owner(r) == Owner::Absent);
    match (absent.is_empty(), present.is_empty()) {
        (true, _) => Verdict::Keep,
        (false, true) => Verdict::Delete,
        (false, false) => Verdict::RemoveRefs(present.into_iter().cloned().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: &str, api: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: api.into(),
            kind: kind.into(),
            name: "x".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn meta(refs: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(refs),
            ..Default::default()
        }
    }

    #[test]
    fn deletes_only_when_every_owner_is_gone() {
        let gone = |_: &OwnerReference| Owner::Absent;
        assert_eq!(
            judge(&meta(vec![r("Pod", "v1", "p")]), gone),
            Verdict::Delete
        );
        assert_eq!(
            judge(&meta(vec![r("Pod", "v1", "p")]), |_| Owner::Present),
            Verdict::Keep
        );
        let mixed = meta(vec![r("Pod", "v1", "p"), r("StatefulSet", "apps/v1", "s")]);
        assert_eq!(
            judge(&mixed, |o| if o.kind == "Pod" {
                Owner::Absent
            } else {
                Owner::Present
            }),
            Verdict::RemoveRefs(vec![r("StatefulSet", "apps/v1", "s")])
        );
        // Unknown owner kinds are never judged absent.
        assert_eq!(
            judge(&meta(vec![r("Backup", "example.com/v1", "b")]), gone),
            Verdict::Keep
        );
        let mut deleting = meta(vec![r("Pod", "v1", "p")]);
        deleting.deletion_timestamp = Some(crate::binder::testutil::ts_at(1));
        assert_eq!(judge(&deleting, gone), Verdict::Keep);
        assert_eq!(judge(&ObjectMeta::default(), gone), Verdict::Keep);
    }
}

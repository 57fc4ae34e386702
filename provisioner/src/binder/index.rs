//! The volume index the binder matches claims against (k8s-semantics §3.5).
//!
//! PVs are grouped by their exact access-mode set. Inside a group, unbound PVs sit in a
//! `BTreeSet` ordered by (class, capacity, name), so the smallest volume of the right class
//! that fits is a range lookup, and PVs pre-bound by `claimRef` are found through a map keyed
//! by the claim they name. No claim ever scans every PV.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use crate::binder::class::{claim_class, volume_class};
use crate::meta::{self, claim_access_modes, volume_access_modes};
use crate::selector::node_selector_matches;

/// A set of access modes as bits: RWO, ROX, RWX, RWOP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModeSet(u8);

impl ModeSet {
    pub fn of(modes: &[String]) -> Self {
        let mut bits = 0;
        for m in modes {
            bits |= match m.as_str() {
                "ReadWriteOnce" => 1,
                "ReadOnlyMany" => 2,
                "ReadWriteMany" => 4,
                "ReadWriteOncePod" => 8,
                // Unknown modes are rejected by validation; here they just never match.
                _ => 16,
            };
        }
        Self(bits)
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    fn len(self) -> u32 {
        self.0.count_ones()
    }
}

/// The node the scheduler (or our standalone placement) evaluates a WFFC claim for.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Group {
    /// Volumes with no claimRef: (class, capacity bytes, name).
    free: BTreeSet<(String, u128, String)>,
    /// Volumes with a claimRef, by the claim's (namespace, name).
    reserved: HashMap<(String, String), BTreeSet<String>>,
}

/// Where one PV sits in the index, so an update can take it out again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    modes: ModeSet,
    class: String,
    capacity: u128,
    claim: Option<(String, String)>,
}

fn slot_of(pv: &PersistentVolume) -> Slot {
    Slot {
        modes: ModeSet::of(volume_access_modes(pv)),
        class: volume_class(pv).to_string(),
        capacity: meta::volume_capacity_bytes(pv),
        claim: meta::volume_claim_ref(pv).map(|r| {
            (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            )
        }),
    }
}

#[derive(Debug, Default)]
pub struct VolumeIndex {
    volumes: HashMap<String, (PersistentVolume, Slot)>,
    groups: BTreeMap<ModeSet, Group>,
}

impl VolumeIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&PersistentVolume> {
        self.volumes.get(name).map(|(pv, _)| pv)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PersistentVolume> {
        self.volumes.values().map(|(pv, _)| pv)
    }

    /// Volumes whose claimRef names the claim `namespace/name` (pre-bound or bound).
    pub fn reserved_for(&self, namespace: &str, name: &str) -> Vec<String> {
        let key = (namespace.to_string(), name.to_string());
        self.groups
            .values()
            .filter_map(|g| g.reserved.get(&key))
            .flatten()
            .cloned()
            .collect()
    }

    /// Inserts or replaces a volume. An update carrying an older resourceVersion than the one
    /// held is ignored, so a late watch event cannot undo a write the binder just made.
    pub fn upsert(&mut self, pv: PersistentVolume) {
        let name = meta::name(&pv.metadata).to_string();
        if let Some((old, _)) = self.volumes.get(&name) {
            let (old_rv, new_rv) = (
                meta::resource_version(&old.metadata),
                meta::resource_version(&pv.metadata),
            );
            if new_rv != 0 && new_rv < old_rv {
                return;
            }
            self.remove(&name);
        }
        let slot = slot_of(&pv);
        let group = self.groups.entry(slot.modes).or_default();
        match &slot.claim {
            None => {
                group
                    .free
                    .insert((slot.class.clone(), slot.capacity, name.clone()));
            }
            Some(key) => {
                group
                    .reserved
                    .entry(key.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
        self.volumes.insert(name, (pv, slot));
    }

    pub fn remove(&mut self, name: &str) -> Option<PersistentVolume> {
        let (pv, slot) = self.volumes.remove(name)?;
        if let Some(group) = self.groups.get_mut(&slot.modes) {
            match slot.claim {
                None => {
                    group
                        .free
                        .remove(&(slot.class, slot.capacity, name.to_string()));
                }
                Some(key) => {
                    if let Some(set) = group.reserved.get_mut(&key) {
                        set.remove(name);
                        if set.is_empty() {
                            group.reserved.remove(&key);
                        }
                    }
                }
            }
            if group.free.is_empty() && group.reserved.is_empty() {
                self.groups.remove(&slot.modes);
            }
        }
        Some(pv)
    }

    /// `findBestMatchForClaim`: the PV the binder should bind `claim` to, if any.
    ///
    /// `node` is set only on the scheduler's path (placement of a WFFC claim); then node
    /// affinity is checked and unbound PVs are considered even when `delay_binding`.
    pub fn find_best_match(
        &self,
        claim: &PersistentVolumeClaim,
        delay_binding: bool,
        node: Option<Node<'_>>,
    ) -> Result<Option<&PersistentVolume>, String> {
        let request = meta::claim_request_bytes(claim)?;
        let wanted = ModeSet::of(claim_access_modes(claim));
        let key = (
            meta::namespace(&claim.metadata).to_string(),
            meta::name(&claim.metadata).to_string(),
        );
        let class = claim_class(claim);
        // A nil selector does not filter (unlike `LabelSelectorAsSelector(nil)`, which selects
        // nothing); an empty one selects everything. A malformed one is an error before any
        // volume is looked at, pre-bound ones included, as `FindMatchingVolume` converts it first.
        let selector = claim.spec.as_ref().and_then(|s| s.selector.as_ref());
        if let Some(sel) = selector {
            strata_store::selector::validate(sel)
                .map_err(|e| format!("invalid label selector: {e}"))?;
        }

        // Candidate groups: every set containing all requested modes, smallest set first.
        let mut groups: Vec<(&ModeSet, &Group)> = self
            .groups
            .iter()
            .filter(|(m, _)| m.contains(wanted))
            .collect();
        groups.sort_by_key(|(m, _)| (m.len(), **m));

        for (_, group) in groups {
            // Steps 1-7 for PVs pre-bound to this claim: they win at once.
            for name in group.reserved.get(&key).into_iter().flatten() {
                let pv = self.get(name).expect("index slots point at held volumes");
                if !meta::is_volume_bound_to_claim(pv, claim) || !fits(pv, claim, request) {
                    continue;
                }
                if let Some(node) = node
                    && !affinity_allows(pv, node)
                {
                    return Ok(None);
                }
                return Ok(Some(pv));
            }
            // Step 8: unbound PVs of a WFFC claim are left to the scheduler.
            if delay_binding && node.is_none() {
                continue;
            }
            let start = (class.to_string(), request, String::new());
            for (c, _, name) in group.free.range(start..) {
                if c != class {
                    break;
                }
                let pv = self.get(name).expect("index slots point at held volumes");
                if !fits(pv, claim, request) || meta::volume_phase(pv) != "Available" {
                    continue;
                }
                if let Some(sel) = selector
                    && !strata_store::selector::matches(sel, pv.metadata.labels.as_ref())
                {
                    continue;
                }
                if let Some(node) = node
                    && !affinity_allows(pv, node)
                {
                    continue;
                }
                // The range is ordered by capacity: the first match is the smallest.
                return Ok(Some(pv));
            }
        }
        Ok(None)
    }
}

/// Steps 2-5: capacity, volumeMode, VolumeAttributesClass, not being deleted.
fn fits(pv: &PersistentVolume, claim: &PersistentVolumeClaim, request: u128) -> bool {
    let vac = |a: Option<&String>| a.map(String::as_str).unwrap_or_default().to_string();
    meta::volume_capacity_bytes(pv) >= request
        && meta::volume_volume_mode(pv) == meta::claim_volume_mode(claim)
        && vac(pv
            .spec
            .as_ref()
            .and_then(|s| s.volume_attributes_class_name.as_ref()))
            == vac(claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_attributes_class_name.as_ref()))
        && pv.metadata.deletion_timestamp.is_none()
}

fn affinity_allows(pv: &PersistentVolume, node: Node<'_>) -> bool {
    match pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        Some(sel) => node_selector_matches(sel, node.name, node.labels),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;
    use crate::k8s_openapi::api::core::v1::{
        NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, VolumeNodeAffinity,
    };
    use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn index(pvs: Vec<PersistentVolume>) -> VolumeIndex {
        let mut i = VolumeIndex::new();
        for pv in pvs {
            i.upsert(pv);
        }
        i
    }

    fn best(i: &VolumeIndex, c: &PersistentVolumeClaim) -> Option<String> {
        i.find_best_match(c, false, None)
            .unwrap()
            .map(|pv| meta::name(&pv.metadata).to_string())
    }

    #[test]
    fn smallest_capacity_that_fits_wins() {
        let i = index(vec![
            volume("big", "10Gi", &["ReadWriteOnce"]),
            volume("small", "1Gi", &["ReadWriteOnce"]),
            volume("mid", "5Gi", &["ReadWriteOnce"]),
        ]);
        assert_eq!(
            best(&i, &claim("c", "2Gi", &["ReadWriteOnce"])).as_deref(),
            Some("mid")
        );
        assert_eq!(
            best(&i, &claim("c", "1Gi", &["ReadWriteOnce"])).as_deref(),
            Some("small")
        );
        assert_eq!(best(&i, &claim("c", "11Gi", &["ReadWriteOnce"])), None);
    }

    #[test]
    fn equal_capacity_ties_break_by_name() {
        let i = index(vec![
            volume("b", "1Gi", &["ReadWriteOnce"]),
            volume("a", "1Gi", &["ReadWriteOnce"]),
        ]);
        assert_eq!(
            best(&i, &claim("c", "1Gi", &["ReadWriteOnce"])).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn smaller_access_mode_group_first_even_if_bigger() {
        let i = index(vec![
            volume("rwo-rox", "1Gi", &["ReadWriteOnce", "ReadOnlyMany"]),
            volume("rwo", "5Gi", &["ReadWriteOnce"]),
        ]);
        assert_eq!(
            best(&i, &claim("c", "1Gi", &["ReadWriteOnce"])).as_deref(),
            Some("rwo")
        );
        // A claim for both modes only fits the two-mode group.
        assert_eq!(
            best(&i, &claim("c", "1Gi", &["ReadWriteOnce", "ReadOnlyMany"])).as_deref(),
            Some("rwo-rox")
        );
        assert_eq!(best(&i, &claim("c", "1Gi", &["ReadWriteMany"])), None);
    }

    #[test]
    fn class_must_match_and_empty_only_matches_classless() {
        let i = index(vec![
            with_class_pv(volume("fast", "1Gi", &["ReadWriteOnce"]), "fast"),
            volume("none", "2Gi", &["ReadWriteOnce"]),
        ]);
        assert_eq!(
            best(
                &i,
                &with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "fast")
            )
            .as_deref(),
            Some("fast")
        );
        assert_eq!(
            best(
                &i,
                &with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "")
            )
            .as_deref(),
            Some("none")
        );
        assert_eq!(
            best(&i, &claim("c", "1Gi", &["ReadWriteOnce"])).as_deref(),
            Some("none"),
            "nil class reads as \"\""
        );
        assert_eq!(
            best(
                &i,
                &with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "slow")
            ),
            None
        );
    }

    #[test]
    fn volume_mode_phase_deletion_and_vac_filter() {
        let mut block = volume("block", "1Gi", &["ReadWriteOnce"]);
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let released = phase_pv(volume("pending", "1Gi", &["ReadWriteOnce"]), "Pending");
        let mut deleting = volume("deleting", "1Gi", &["ReadWriteOnce"]);
        deleting.metadata.deletion_timestamp = Some(ts_at(1));
        let mut vac = volume("vac", "1Gi", &["ReadWriteOnce"]);
        vac.spec.as_mut().unwrap().volume_attributes_class_name = Some("gold".into());
        let i = index(vec![block, released, deleting, vac]);
        assert_eq!(best(&i, &claim("c", "1Gi", &["ReadWriteOnce"])), None);
        let mut want_block = claim("c", "1Gi", &["ReadWriteOnce"]);
        want_block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert_eq!(best(&i, &want_block).as_deref(), Some("block"));
        let mut want_gold = claim("c", "1Gi", &["ReadWriteOnce"]);
        want_gold
            .spec
            .as_mut()
            .unwrap()
            .volume_attributes_class_name = Some("gold".into());
        assert_eq!(best(&i, &want_gold).as_deref(), Some("vac"));
    }

    #[test]
    fn selector_filters_labels() {
        let mut a = volume("a", "1Gi", &["ReadWriteOnce"]);
        a.metadata.labels = Some(BTreeMap::from([("tier".into(), "db".into())]));
        let b = volume("b", "1Gi", &["ReadWriteOnce"]);
        let i = index(vec![a, b]);
        let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
        c.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "db".into())])),
            match_expressions: None,
        });
        assert_eq!(best(&i, &c).as_deref(), Some("a"));
        c.spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .match_labels = Some(BTreeMap::from([("tier".into(), "web".into())]));
        assert_eq!(best(&i, &c), None);
    }

    #[test]
    fn prebound_pv_skips_class_selector_and_phase_even_in_wffc() {
        let c = with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "fast");
        let pre = phase_pv(
            with_class_pv(
                prebound(volume("pre", "5Gi", &["ReadWriteOnce"]), &c, false),
                "other",
            ),
            "Pending",
        );
        let free = with_class_pv(volume("free", "1Gi", &["ReadWriteOnce"]), "fast");
        let i = index(vec![pre, free]);
        assert_eq!(
            best(&i, &c).as_deref(),
            Some("pre"),
            "pre-bound beats a smaller free PV in the same group"
        );
        assert_eq!(
            i.find_best_match(&c, true, None)
                .unwrap()
                .map(|p| meta::name(&p.metadata).to_string())
                .as_deref(),
            Some("pre")
        );
    }

    #[test]
    fn prebound_still_needs_capacity_and_mode_and_matching_uid() {
        let c = claim("c", "10Gi", &["ReadWriteOnce"]);
        let small = prebound(volume("small", "1Gi", &["ReadWriteOnce"]), &c, false);
        let mut other_uid = prebound(volume("olduid", "20Gi", &["ReadWriteOnce"]), &c, false);
        other_uid
            .spec
            .as_mut()
            .unwrap()
            .claim_ref
            .as_mut()
            .unwrap()
            .uid = Some("someone-else".into());
        let i = index(vec![small, other_uid]);
        assert_eq!(best(&i, &c), None);
    }

    #[test]
    fn smaller_group_unbound_beats_prebound_in_larger_group() {
        // k8s-semantics §3.5 step 3 [obs]: groups are tried smallest first.
        let c = claim("c", "1Gi", &["ReadWriteOnce"]);
        let pre = prebound(
            volume("pre", "1Gi", &["ReadWriteOnce", "ReadWriteMany"]),
            &c,
            false,
        );
        let free = volume("free", "1Gi", &["ReadWriteOnce"]);
        let i = index(vec![pre, free]);
        assert_eq!(best(&i, &c).as_deref(), Some("free"));
    }

    #[test]
    fn bound_volumes_are_not_candidates() {
        let other = claim("other", "1Gi", &["ReadWriteOnce"]);
        let taken = phase_pv(
            prebound(volume("taken", "1Gi", &["ReadWriteOnce"]), &other, true),
            "Bound",
        );
        let i = index(vec![taken]);
        assert_eq!(best(&i, &claim("c", "1Gi", &["ReadWriteOnce"])), None);
    }

    #[test]
    fn delay_binding_skips_unbound_without_node_and_checks_affinity_with_node() {
        let mut pinned = volume("pinned", "1Gi", &["ReadWriteOnce"]);
        pinned.spec.as_mut().unwrap().node_affinity = Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "topology.strata.io/node".into(),
                        operator: "In".into(),
                        values: Some(vec!["n1".into()]),
                    }]),
                    match_fields: None,
                }],
            }),
        });
        let i = index(vec![pinned]);
        let c = claim("c", "1Gi", &["ReadWriteOnce"]);
        assert!(i.find_best_match(&c, true, None).unwrap().is_none());
        let n1 = crate::selector::standalone_node_labels("n1");
        let n2 = crate::selector::standalone_node_labels("n2");
        assert!(
            i.find_best_match(
                &c,
                true,
                Some(Node {
                    name: "n1",
                    labels: &n1
                })
            )
            .unwrap()
            .is_some()
        );
        assert!(
            i.find_best_match(
                &c,
                true,
                Some(Node {
                    name: "n2",
                    labels: &n2
                })
            )
            .unwrap()
            .is_none()
        );
        // Without a node (Immediate binding) affinity is not evaluated by the binder.
        assert!(i.find_best_match(&c, false, None).unwrap().is_some());
    }

    #[test]
    fn upsert_moves_between_slots_and_ignores_stale_versions() {
        let mut i = index(vec![volume("v", "1Gi", &["ReadWriteOnce"])]);
        let c = claim("c", "1Gi", &["ReadWriteOnce"]);
        let mut bound = phase_pv(
            prebound(
                volume("v", "1Gi", &["ReadWriteOnce"]),
                &claim("x", "1Gi", &[]),
                true,
            ),
            "Bound",
        );
        bound.metadata.resource_version = Some("5".into());
        i.upsert(bound);
        assert_eq!(best(&i, &c), None);
        // A watch event from before the write must not make the PV free again.
        let mut stale = volume("v", "1Gi", &["ReadWriteOnce"]);
        stale.metadata.resource_version = Some("3".into());
        i.upsert(stale);
        assert_eq!(best(&i, &c), None);
        assert!(i.remove("v").is_some());
        assert!(i.is_empty());
        assert!(i.groups.is_empty());
    }

    #[test]
    fn bad_request_or_selector_is_an_error() {
        let i = index(vec![volume("v", "1Gi", &["ReadWriteOnce"])]);
        let bad = claim("c", "lots", &["ReadWriteOnce"]);
        assert!(i.find_best_match(&bad, false, None).is_err());
        let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
        c.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "k".into(),
                    operator: "Near".into(),
                    values: None,
                },
            ]),
        });
        assert!(i.find_best_match(&c, false, None).is_err());
    }

    #[test]
    fn bad_selector_is_an_error_before_any_volume_is_matched() {
        // FindMatchingVolume converts the selector first: a pre-bound volume or a matchLabels
        // miss does not hide a malformed expression.
        let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
        c.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "gold".into())])),
            match_expressions: Some(vec![
                crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "k".into(),
                    operator: "In".into(),
                    values: None,
                },
            ]),
        });
        let pre = prebound(volume("pre", "1Gi", &["ReadWriteOnce"]), &c, false);
        let i = index(vec![pre, volume("free", "1Gi", &["ReadWriteOnce"])]);
        let err = i.find_best_match(&c, false, None).unwrap_err();
        assert!(err.contains("matchExpressions[0].values"), "{err}");
    }
}

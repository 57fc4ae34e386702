//! Immediate claims in per-node mode: which node provisions a claim of an Immediate class
//! of our driver that no scheduler places (it has no `selected-node`).
//!
//! Every node's provisioner sees every such claim and decides alone, from the same inputs,
//! with no coordinator:
//! 1. the nodes that fit: the class's `allowedTopologies` admit the node's segment, and the
//!    node's published CSIStorageCapacity for the class (`crate::capacity`) holds the
//!    request (capacity and, when set, maximumVolumeSize);
//! 2. they are ranked by a hash of (claim uid, node) (rendezvous hashing: every node computes
//!    the same order, and claims spread over the nodes rather than piling on one);
//! 3. the first node takes the claim at once; the node ranked k waits until the claim is
//!    k × `step` old, so a first choice that is down (its capacity object outlives it)
//!    delays the claim rather than stranding it;
//! 4. taking is one update that sets `selected-node` to itself, compare-and-swap on the
//!    claim's resourceVersion: of two nodes that try at once exactly one write succeeds;
//!    the other gets a conflict, re-reads the claim, finds it placed and leaves it.
//!
//! From then on the claim is an ordinary claim with a selected node: only that node's
//! provisioner creates its volume (`node::claim_is_for`). external-provisioner's
//! `--node-deployment-immediate-binding` does the same race with random delays instead of a
//! ranking (kubernetes-csi/external-provisioner `pkg/controller/controller.go`, `checkNode`).

use std::collections::BTreeMap;
use std::time::Duration;

use strata_store::Store;

use crate::capacity::{self, DRIVER_NAME_LABEL};
use crate::error::Result;
use crate::k8s_openapi::api::core::v1::PersistentVolumeClaim;
use crate::k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use crate::meta;
use crate::names;
use crate::quantity::bytes_of;

/// The class is Immediate (the default binding mode).
pub fn is_immediate(class: &StorageClass) -> bool {
    class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer")
}

/// `allowedTopologies` admits `segment`: no terms, or a term whose every requirement has
/// the segment's value for its key among its values.
pub fn allowed(class: &StorageClass, segment: &BTreeMap<String, String>) -> bool {
    let terms = class.allowed_topologies.as_deref().unwrap_or_default();
    terms.is_empty()
        || terms.iter().any(|t| {
            t.match_label_expressions.iter().flatten().all(|r| {
                segment
                    .get(&r.key)
                    .is_some_and(|v| r.values.iter().any(|x| x == v))
            })
        })
}

/// The nodes whose published capacity for `class` holds `request` bytes and whose segment
/// the class admits, sorted and without repeats.
pub fn fitting_nodes(
    class: &StorageClass,
    request: u128,
    capacities: &[CSIStorageCapacity],
) -> Vec<String> {
    let class_name = meta::name(&class.metadata);
    let holds = |q: Option<&crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.and_then(|q| bytes_of(q).ok())
    };
    let mut nodes: Vec<String> = capacities
        .iter()
        .filter(|c| c.storage_class_name == class_name)
        .filter(|c| holds(c.capacity.as_ref()).is_some_and(|b| b >= request))
        .filter(|c| {
            c.maximum_volume_size.is_none()
                || holds(c.maximum_volume_size.as_ref()).is_some_and(|b| b >= request)
        })
        .filter_map(capacity::node_of)
        .filter(|n| allowed(class, &capacity::segment(n)))
        .map(str::to_string)
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// FNV-1a of `claim uid / node`: stable across versions and processes.
fn score(uid: &str, node: &str) -> u64 {
    uid.bytes()
        .chain(std::iter::once(b'/'))
        .chain(node.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// `nodes` in the order they may take the claim with `uid`: highest score first, ties by name.
pub fn rank(uid: &str, nodes: &[String]) -> Vec<String> {
    let mut ranked = nodes.to_vec();
    ranked.sort_by(|a, b| score(uid, b).cmp(&score(uid, a)).then_with(|| a.cmp(b)));
    ranked
}

/// What this node does with an unplaced Immediate claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Another node's turn, or this node does not fit.
    NotHere,
    /// This node's turn: try to take it.
    Take,
    /// This node may take it once the nodes before it had their chance.
    Wait(Duration),
}

/// The decision of `node` about `pvc`, `age` after the claim was created.
pub fn decide(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    capacities: &[CSIStorageCapacity],
    age: Duration,
    step: Duration,
) -> Decision {
    let Ok(request) = meta::claim_request_bytes(pvc) else {
        // The provisioning path reports a bad request; no node takes it meanwhile.
        return Decision::NotHere;
    };
    let fitting = fitting_nodes(class, request, capacities);
    let Some(position) = rank(meta::uid(&pvc.metadata), &fitting)
        .iter()
        .position(|n| n == node)
    else {
        return Decision::NotHere;
    };
    let turn = step * u32::try_from(position).unwrap_or(u32::MAX);
    if age >= turn {
        Decision::Take
    } else {
        Decision::Wait(turn - age)
    }
}

/// How long ago the claim was created (zero without a timestamp or for a clock behind it).
pub fn age(pvc: &PersistentVolumeClaim) -> Duration {
    let Some(created) = pvc.metadata.creation_timestamp.as_ref() else {
        return Duration::ZERO;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let created = u64::try_from(created.0.as_second()).unwrap_or(0);
    Duration::from_secs(now.saturating_sub(created))
}

/// What came of an attempt to place a claim here.
#[derive(Debug, Clone, PartialEq)]
pub enum Placed {
    /// This node won: the claim as stored, with `selected-node` set to it.
    Here(PersistentVolumeClaim),
    /// Another node has it (`winner`), or it no longer waits for a node.
    Elsewhere { winner: Option<String> },
    /// Not this node (does not fit, or another node's turn).
    NotHere,
    /// Try again after this long.
    Wait(Duration),
    /// The claim changed meanwhile, still unplaced: decide again on this version.
    Changed(PersistentVolumeClaim),
}

/// Every node's published capacities of `driver` in `namespace`.
pub async fn capacities<S: Store>(
    store: &S,
    namespace: &str,
    driver: &str,
) -> Result<Vec<CSIStorageCapacity>> {
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            DRIVER_NAME_LABEL.to_string(),
            driver.to_string(),
        )])),
        match_expressions: None,
    };
    Ok(store
        .list::<CSIStorageCapacity>(Some(namespace), Some(&selector))
        .await?
        .items)
}

/// Decides and, when it is this node's turn, takes `pvc` (as cached, with its
/// resourceVersion) for `node`.
pub async fn place<S: Store>(
    store: &S,
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    capacities: &[CSIStorageCapacity],
    step: Duration,
) -> Result<Placed> {
    match decide(pvc, class, node, capacities, age(pvc), step) {
        Decision::NotHere => return Ok(Placed::NotHere),
        Decision::Wait(d) => return Ok(Placed::Wait(d)),
        Decision::Take => {}
    }
    let mut taken = pvc.clone();
    meta::set_annotation(&mut taken.metadata, names::ANN_SELECTED_NODE, node);
    // The version read is what makes this a compare-and-swap; an empty one would make the
    // store's update unconditional, so a claim without one is re-read first.
    if meta::resource_version(&taken.metadata) == 0 {
        return Err(crate::Error::Invalid(format!(
            "claim {} has no resourceVersion to place it by",
            meta::claim_key(pvc)
        )));
    }
    match store.update(&taken).await {
        Ok(stored) => Ok(Placed::Here(stored)),
        Err(e) if e.is_conflict() => {
            let now: PersistentVolumeClaim = store
                .get(meta::namespace(&pvc.metadata), meta::name(&pvc.metadata))
                .await?;
            let winner = meta::annotation(&now.metadata, names::ANN_SELECTED_NODE)
                .filter(|n| !n.is_empty())
                .map(str::to_string);
            if winner.is_some() || !meta::claim_volume_name(&now).is_empty() {
                Ok(Placed::Elsewhere { winner })
            } else {
                Ok(Placed::Changed(now))
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(allowed: serde_json::Value) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "fast"}, "provisioner": "d",
            "volumeBindingMode": "Immediate", "allowedTopologies": allowed
        }))
        .unwrap()
    }

    fn cap(node: &str, class: &str, bytes: &str, max: Option<&str>) -> CSIStorageCapacity {
        serde_json::from_value(json!({
            "metadata": {"name": format!("csisc-{node}-{class}"), "namespace": "ns"},
            "storageClassName": class,
            "nodeTopology": {"matchLabels": {"topology.strata.io/node": node}},
            "capacity": bytes, "maximumVolumeSize": max
        }))
        .unwrap()
    }

    fn claim(uid: &str, size: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "default", "uid": uid, "resourceVersion": "5"},
            "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": size}}}
        }))
        .unwrap()
    }

    #[test]
    fn allowed_topologies_admit_matching_segments_only() {
        let seg = capacity::segment("n1");
        assert!(allowed(&class(json!(null)), &seg));
        let only_n2 = class(json!([{"matchLabelExpressions": [
            {"key": "topology.strata.io/node", "values": ["n2"]}]}]));
        assert!(!allowed(&only_n2, &seg));
        assert!(allowed(&only_n2, &capacity::segment("n2")));
        let other_key = class(json!([{"matchLabelExpressions": [
            {"key": "topology.kubernetes.io/zone", "values": ["a"]}]}]));
        assert!(
            !allowed(&other_key, &seg),
            "a key our segments lack never matches"
        );
    }

    #[test]
    fn fitting_nodes_hold_the_request_in_capacity_and_maximum() {
        let sc = class(json!(null));
        let caps = [
            cap("n1", "fast", "10Gi", None),
            cap("n2", "fast", "10Gi", Some("1Gi")),
            cap("n3", "fast", "1Gi", None),
            cap("n4", "slow", "10Gi", None),
            cap("n5", "fast", "5Gi", Some("5Gi")),
        ];
        assert_eq!(
            fitting_nodes(&sc, 2 << 30, &caps),
            vec!["n1".to_string(), "n5".to_string()]
        );
    }

    #[test]
    fn every_node_decides_the_same_owner_and_the_others_wait_their_turn() {
        let sc = class(json!(null));
        let caps: Vec<_> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| cap(n, "fast", "10Gi", None))
            .collect();
        let step = Duration::from_secs(15);
        let pvc = claim("uid-1", "1Gi");
        let decisions: Vec<_> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| decide(&pvc, &sc, n, &caps, Duration::ZERO, step))
            .collect();
        assert_eq!(
            decisions.iter().filter(|d| **d == Decision::Take).count(),
            1,
            "{decisions:?}"
        );
        assert!(decisions.contains(&Decision::Wait(step)));
        assert!(decisions.contains(&Decision::Wait(step * 2)));
        // Once the first choice had its turn, the second may take it.
        let second = rank("uid-1", &["n1".into(), "n2".into(), "n3".into()])[1].clone();
        assert_eq!(
            decide(&pvc, &sc, &second, &caps, step, step),
            Decision::Take
        );
        // A node without room is never a candidate.
        assert_eq!(
            decide(&claim("uid-1", "20Gi"), &sc, "n1", &caps, step * 10, step),
            Decision::NotHere
        );
        // Claims spread: over many claims each node is first for some.
        let firsts: std::collections::BTreeSet<_> = (0..30)
            .map(|i| {
                rank(
                    &format!("uid-{i}"),
                    &["n1".into(), "n2".into(), "n3".into()],
                )[0]
                .clone()
            })
            .collect();
        assert_eq!(firsts.len(), 3);
    }
}

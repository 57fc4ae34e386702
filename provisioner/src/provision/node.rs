//! Per-node mode (`--kubeconfig`), external-provisioner's `--node-deployment`: one
//! provisioner per node acts only on claims whose selected node is its own and on volumes
//! whose node affinity names it, so two nodes never act on one object.

use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use crate::meta::annotation;
use crate::names;

/// The topology key the driver reports (`topology.strata.io/node`).
pub const TOPOLOGY_KEY: &str = "topology.strata.io/node";

/// The claim's `volume.kubernetes.io/selected-node` is `node`. Claims without one
/// (Immediate binding) are left alone: no node may take them without a placement step.
pub fn claim_is_for(pvc: &PersistentVolumeClaim, node: &str) -> bool {
    annotation(&pvc.metadata, names::ANN_SELECTED_NODE) == Some(node)
}

/// The volume's required node affinity pins it to `node` (`topology.strata.io/node In
/// [node]` in a term), as the PVs this provisioner makes are.
pub fn volume_is_on(pv: &PersistentVolume, node: &str) -> bool {
    let terms = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    terms.iter().any(|t| {
        t.match_expressions.iter().flatten().any(|e| {
            e.key == TOPOLOGY_KEY
                && e.operator == "In"
                && e.values.as_deref() == Some(&[node.to_string()][..])
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(values: &[&str]) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "v"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": TOPOLOGY_KEY, "operator": "In", "values": values}]}
            ]}}}
        }))
        .unwrap()
    }

    #[test]
    fn only_this_nodes_claims_and_volumes() {
        let mut c = PersistentVolumeClaim::default();
        assert!(!claim_is_for(&c, "n1"), "no selected node: nobody's");
        c.metadata.annotations =
            Some([(names::ANN_SELECTED_NODE.to_string(), "n1".to_string())].into());
        assert!(claim_is_for(&c, "n1"));
        assert!(!claim_is_for(&c, "n2"));
        assert!(volume_is_on(&pv(&["n1"]), "n1"));
        assert!(!volume_is_on(&pv(&["n2"]), "n1"));
        assert!(
            !volume_is_on(&pv(&["n1", "n2"]), "n1"),
            "a volume two nodes may reach is not a local one of ours"
        );
        assert!(!volume_is_on(&PersistentVolume::default(), "n1"));
    }
}

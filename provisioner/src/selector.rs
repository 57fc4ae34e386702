//! The labels of a standalone node. Node selectors (PV node affinity) and label selectors are
//! evaluated by the store's `strata_store::selector`, shared with strata-node's placement.

use std::collections::BTreeMap;

pub use strata_store::selector::node_selector_matches;

/// The labels a standalone node carries: no Node objects exist, so these are derived from its
/// name (the hostname label and the driver's topology key, which are the same value here).
pub fn standalone_node_labels(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (crate::names::LABEL_HOSTNAME.to_string(), node.to_string()),
        (crate::names::TOPOLOGY_KEY.to_string(), node.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s_openapi::api::core::v1::{
        NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    };

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn node_selector_terms_or_and_requirements_and() {
        let node = labels(&[("topology.strata.io/node", "n1"), ("rack", "7")]);
        let req = |k: &str, op: &str, v: &[&str]| NodeSelectorRequirement {
            key: k.into(),
            operator: op.into(),
            values: Some(v.iter().map(|s| s.to_string()).collect()),
        };
        let term = |exprs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: None,
        };
        let sel = |terms: Vec<NodeSelectorTerm>| NodeSelector {
            node_selector_terms: terms,
        };
        assert!(node_selector_matches(
            &sel(vec![term(vec![req(
                "topology.strata.io/node",
                "In",
                &["n1"]
            )])]),
            "n1",
            &node
        ));
        assert!(!node_selector_matches(
            &sel(vec![term(vec![req(
                "topology.strata.io/node",
                "In",
                &["n2"]
            )])]),
            "n1",
            &node
        ));
        assert!(node_selector_matches(
            &sel(vec![
                term(vec![req("topology.strata.io/node", "In", &["n2"])]),
                term(vec![req("rack", "Gt", &["5"])]),
            ]),
            "n1",
            &node
        ));
        assert!(!node_selector_matches(
            &sel(vec![term(vec![req("rack", "Lt", &["5"])])]),
            "n1",
            &node
        ));
        assert!(
            !node_selector_matches(&sel(vec![]), "n1", &node),
            "no terms: nothing"
        );
        assert!(
            !node_selector_matches(&sel(vec![term(vec![])]), "n1", &node),
            "empty term: nothing"
        );
        let fields = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
        };
        assert!(node_selector_matches(&sel(vec![fields]), "n1", &node));
    }
}

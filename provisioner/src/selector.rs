//! Node selectors (PV node affinity) evaluated as `corev1 nodeaffinity` does, and the labels
//! of a standalone node. Label selectors are the store's: `strata_store::selector`.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement};

/// Whether a node with `node_name` and `labels` satisfies `selector`: the terms are ORed, the
/// requirements inside a term ANDed, and an empty term matches nothing (`corev1 nodeaffinity`).
pub fn node_selector_matches(
    selector: &NodeSelector,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs
            .iter()
            .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| {
                // Only metadata.name is a valid field for node selectors.
                r.key == "metadata.name"
                    && matches!(r.operator.as_str(), "In" | "NotIn")
                    && requirement_matches(r, Some(node_name))
            })
    })
}

fn requirement_matches(req: &NodeSelectorRequirement, have: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => have.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => have.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [bound]) = (have, values) else {
                return false;
            };
            match (have.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(h), Ok(b)) if req.operator == "Gt" => h > b,
                (Ok(h), Ok(b)) => h < b,
                _ => false,
            }
        }
        _ => false,
    }
}

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
    use crate::k8s_openapi::api::core::v1::NodeSelectorTerm;

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

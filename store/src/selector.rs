//! metav1.LabelSelector matching (matchLabels and matchExpressions, ANDed), and
//! core/v1 NodeSelector matching against a node's name and labels.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::error::{Error, Result};

/// Checks operators and value counts as the API server does (`In`/`NotIn` need values,
/// `Exists`/`DoesNotExist` must have none).
pub fn validate(selector: &LabelSelector) -> Result<()> {
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("matchExpressions[{i}]");
        let n = req.values.as_ref().map_or(0, Vec::len);
        match req.operator.as_str() {
            "In" | "NotIn" if n == 0 => {
                return Err(Error::invalid(
                    format!("{field}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                ));
            }
            "Exists" | "DoesNotExist" if n > 0 => {
                return Err(Error::invalid(
                    format!("{field}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(Error::invalid(
                    format!("{field}.operator"),
                    format!("not a valid selector operator {other:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// True when `labels` satisfy every requirement. An empty selector matches everything
/// (as metav1.LabelSelectorAsSelector does). Call [`validate`] first: an unknown operator
/// matches nothing here.
pub fn matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|req| {
            let values = req.values.as_deref().unwrap_or(&[]);
            let have = labels.get(&req.key);
            match req.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("app", "web"), ("tier", "db")]);
        let sel = |reqs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_expressions: Some(reqs),
            match_labels: None,
        };
        assert!(matches(
            &sel(vec![req("app", "In", &["web", "x"])]),
            Some(&l)
        ));
        assert!(!matches(&sel(vec![req("app", "In", &["x"])]), Some(&l)));
        assert!(matches(&sel(vec![req("app", "NotIn", &["x"])]), Some(&l)));
        assert!(matches(&sel(vec![req("zone", "NotIn", &["x"])]), Some(&l)));
        assert!(!matches(
            &sel(vec![req("app", "NotIn", &["web"])]),
            Some(&l)
        ));
        assert!(matches(&sel(vec![req("tier", "Exists", &[])]), Some(&l)));
        assert!(!matches(&sel(vec![req("zone", "Exists", &[])]), Some(&l)));
        assert!(matches(
            &sel(vec![req("zone", "DoesNotExist", &[])]),
            Some(&l)
        ));
        assert!(!matches(
            &sel(vec![req("app", "DoesNotExist", &[])]),
            None.or(Some(&l))
        ));
        assert!(matches(&LabelSelector::default(), None));
        let both = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![req("tier", "In", &["cache"])]),
        };
        assert!(!matches(&both, Some(&l)), "requirements are ANDed");
    }

    #[test]
    fn validation_rejects_bad_requirements() {
        let sel = |r| LabelSelector {
            match_expressions: Some(vec![r]),
            match_labels: None,
        };
        assert!(validate(&sel(req("a", "In", &[]))).is_err());
        assert!(validate(&sel(req("a", "Exists", &["x"]))).is_err());
        assert!(validate(&sel(req("a", "Gt", &["1"]))).is_err());
        assert!(validate(&sel(req("a", "NotIn", &["1"]))).is_ok());
    }
}

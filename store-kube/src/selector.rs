//! A `LabelSelector` as the `labelSelector` query parameter (apimachinery's
//! `LabelSelectorAsSelector` then `String()`).

use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use strata_store::{Error, Result};

/// `a=b,c in (d,e),f notin (g),h,!i`; an empty selector is the empty string (everything).
pub(crate) fn to_query(selector: &LabelSelector) -> Result<String> {
    strata_store::selector::validate(selector)?;
    let mut parts = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        parts.push(format!("{k}={v}"));
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = || {
            let mut v = e.values.clone().unwrap_or_default();
            v.sort();
            v.join(",")
        };
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, values()),
            "NotIn" => format!("{} notin ({})", e.key, values()),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(Error::Invalid {
                    field: "selector.matchExpressions.operator".into(),
                    reason: format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                });
            }
        });
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn every_operator_as_apimachinery_prints_it() {
        let s = LabelSelector {
            match_labels: Some([("app".to_string(), "db".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["b".into(), "a".into()]),
                },
                LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["x".into()]),
                },
                LabelSelectorRequirement {
                    key: "ready".into(),
                    operator: "Exists".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "old".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            to_query(&s).unwrap(),
            "app=db,tier in (a,b),zone notin (x),ready,!old"
        );
        assert_eq!(to_query(&LabelSelector::default()).unwrap(), "");
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(to_query(&bad).is_err());
    }
}

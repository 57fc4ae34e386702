//! Whether a pod may run on this node: the scheduler's NodeName, NodeAffinity
//! (nodeSelector and required node affinity) and TaintToleration filters, checked
//! against this node's Node object, which strata-node registers at start
//! ([`register`]) and a user may label or taint (`volctl apply`).
//!
//! A pod that does not fit stays Pending with a `FailedScheduling` event and the
//! PodScheduled condition False (reason `Unschedulable`), and is checked again later.

use std::collections::BTreeMap;

use strata_store::k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, Taint, Toleration};
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strata_store::{Store, selector};

/// The labels every node carries (the well-known ones, as the kubelet sets them).
pub fn default_labels(node: &str) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        // The CSI driver's topology key: the same value, so PV node affinity matches.
        ("topology.strata.io/node".to_string(), node.to_string()),
    ])
}

/// Creates this node's Node object, or adds the default labels to the one there (a
/// user's labels and taints stay).
pub async fn register<S: Store>(store: &S, node: &str) -> Result<(), strata_store::Error> {
    for _ in 0..5 {
        match store.get::<Node>("", node).await {
            Ok(mut n) => {
                let labels = n.metadata.labels.get_or_insert_with(BTreeMap::new);
                let before = labels.len();
                for (k, v) in default_labels(node) {
                    labels.entry(k).or_insert(v);
                }
                if labels.len() == before {
                    return Ok(());
                }
                match store.update(&n).await {
                    Err(e) if e.is_conflict() => continue,
                    r => return r.map(drop),
                }
            }
            Err(e) if e.is_not_found() => {
                let n = Node {
                    metadata: ObjectMeta {
                        name: Some(node.to_string()),
                        labels: Some(default_labels(node)),
                        ..Default::default()
                    },
                    status: Some(NodeStatus::default()),
                    ..Default::default()
                };
                match store.create(&n).await {
                    Err(e) if e.is_already_exists() => continue,
                    r => return r.map(drop),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What placement needs of a node.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl NodeInfo {
    /// This node as the store has it (defaults when its object is missing).
    pub async fn read<S: Store>(store: &S, node: &str) -> NodeInfo {
        match store.get::<Node>("", node).await {
            Ok(n) => NodeInfo {
                name: node.to_string(),
                labels: n.metadata.labels.unwrap_or_default(),
                taints: n.spec.and_then(|s| s.taints).unwrap_or_default(),
            },
            Err(_) => NodeInfo {
                name: node.to_string(),
                labels: default_labels(node),
                taints: Vec::new(),
            },
        }
    }
}

/// Ok when `pod` fits `node`; else the scheduler's words for why not.
pub fn fits(pod: &Pod, node: &NodeInfo) -> Result<(), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let unavailable = |why: String| format!("0/1 nodes are available: 1 {why}.");
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|sel| selector::node_selector_matches(sel, &node.name, &node.labels));
    if !selector_ok || !affinity_ok {
        return Err(unavailable(
            "node(s) didn't match Pod's node affinity/selector".into(),
        ));
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    if let Some(t) = node.taints.iter().find(|t| {
        matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|tol| tolerates(tol, t))
    }) {
        let value = t.value.as_deref().unwrap_or_default();
        return Err(unavailable(format!(
            "node(s) had untolerated taint {{{}: {value}}}",
            t.key
        )));
    }
    Ok(())
}

/// core/v1 `Toleration.ToleratesTaint`.
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect = tol.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && tol.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = serde_json::json!([{"name": "c"}]);
        serde_json::from_value(serde_json::json!({"spec": spec})).unwrap()
    }

    fn node(taints: serde_json::Value) -> NodeInfo {
        let mut labels = default_labels("n1");
        labels.insert("disk".into(), "ssd".into());
        NodeInfo {
            name: "n1".into(),
            labels,
            taints: serde_json::from_value(taints).unwrap(),
        }
    }

    #[test]
    fn selector_and_required_affinity() {
        let n = node(serde_json::json!([]));
        assert!(fits(&pod(serde_json::json!({})), &n).is_ok());
        assert!(
            fits(
                &pod(serde_json::json!({"nodeSelector": {"disk": "ssd"}})),
                &n
            )
            .is_ok()
        );
        let err = fits(
            &pod(serde_json::json!({"nodeSelector": {"disk": "hdd"}})),
            &n,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        );
        let affinity = |op: &str, v: &str| {
            pod(serde_json::json!({"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": op, "values": [v]}]}]}}}}))
        };
        assert!(fits(&affinity("In", "ssd"), &n).is_ok());
        assert!(fits(&affinity("NotIn", "ssd"), &n).is_err());
        assert!(fits(&affinity("In", "nvme"), &n).is_err());
    }

    #[test]
    fn taints_need_tolerations() {
        let n = node(serde_json::json!([
            {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
            {"key": "soft", "effect": "PreferNoSchedule"}
        ]));
        let err = fits(&pod(serde_json::json!({})), &n).unwrap_err();
        assert!(err.contains("untolerated taint {dedicated: db}"), "{err}");
        for tol in [
            serde_json::json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"}),
            serde_json::json!({"key": "dedicated", "operator": "Exists"}),
            serde_json::json!({"operator": "Exists"}),
            serde_json::json!({"key": "dedicated", "operator": "Equal", "value": "db"}),
        ] {
            let p = pod(serde_json::json!({"tolerations": [tol.clone()]}));
            assert!(fits(&p, &n).is_ok(), "{tol}");
        }
        for tol in [
            serde_json::json!({"key": "dedicated", "value": "web"}),
            serde_json::json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
            serde_json::json!({"key": "other", "operator": "Exists"}),
        ] {
            let p = pod(serde_json::json!({"tolerations": [tol.clone()]}));
            assert!(fits(&p, &n).is_err(), "{tol}");
        }
    }
}

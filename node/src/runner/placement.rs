//! Whether a pod may run on this node: the scheduler's NodeName, NodeAffinity
//! (nodeSelector and required node affinity) and TaintToleration filters, checked
//! against this node's Node object, which strata-node registers at start
//! ([`register`]) and a user may label or taint (`volctl apply`).
//!
//! A pod that names no node and does not fit stays Pending with a `FailedScheduling`
//! event and the PodScheduled condition False (reason `Unschedulable`), and is checked
//! again later. A pod whose `spec.nodeName` already names this node goes through the
//! kubelet's admission instead ([`admit`]): one that does not fit is rejected for good
//! (phase Failed), before any of its volumes is set up.

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

/// The NodeAffinity filter's reason (k8s `nodeaffinity.ErrReasonPod`).
const AFFINITY_MISMATCH: &str = "node(s) didn't match Pod's node affinity/selector";

/// nodeSelector and required node affinity both match the node (NodeAffinity).
fn affinity_matches(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
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
    selector_ok && affinity_ok
}

/// The first taint of `node` with one of `effects` that the pod does not tolerate.
fn untolerated<'a>(pod: &Pod, node: &'a NodeInfo, effects: &[&str]) -> Option<&'a Taint> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    node.taints.iter().find(|t| {
        effects.contains(&t.effect.as_str()) && !tolerations.iter().any(|tol| tolerates(tol, t))
    })
}

/// Ok when `pod` fits `node`; else the scheduler's words for why not.
pub fn fits(pod: &Pod, node: &NodeInfo) -> Result<(), String> {
    let unavailable = |why: String| format!("0/1 nodes are available: 1 {why}.");
    if !affinity_matches(pod, node) {
        return Err(unavailable(AFFINITY_MISMATCH.into()));
    }
    if let Some(t) = untolerated(pod, node, &["NoSchedule", "NoExecute"]) {
        let value = t.value.as_deref().unwrap_or_default();
        return Err(unavailable(format!(
            "node(s) had untolerated taint {{{}: {value}}}",
            t.key
        )));
    }
    Ok(())
}

/// Why the node refuses a pod placed on it: the kubelet's `PodAdmitResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The predicate that failed, which is also the status and event reason:
    /// `NodeAffinity` or `TaintToleration`.
    pub reason: &'static str,
    /// `Predicate <reason> failed: <the filter's words>`.
    pub message: String,
}

impl Rejection {
    fn new(reason: &'static str, why: &str) -> Rejection {
        Rejection {
            reason,
            message: format!("Predicate {reason} failed: {why}"),
        }
    }
}

/// The kubelet's admission of a pod whose `spec.nodeName` already names this node
/// (k8s `pkg/kubelet/lifecycle/predicate.go`, `generalFilter`): nodeSelector and
/// required node affinity must match, and only NoExecute taints need a toleration (a
/// pod placed by name never met the scheduler's NoSchedule). The first failure is the
/// reason. Resources and host ports are not checked: this node does not account them.
pub fn admit(pod: &Pod, node: &NodeInfo) -> Result<(), Rejection> {
    if !affinity_matches(pod, node) {
        return Err(Rejection::new("NodeAffinity", AFFINITY_MISMATCH));
    }
    if untolerated(pod, node, &["NoExecute"]).is_some() {
        return Err(Rejection::new(
            "TaintToleration",
            "node(s) had taints that the pod didn't tolerate",
        ));
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
    fn admission_of_pods_named_here() {
        let n = node(serde_json::json!([
            {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
            {"key": "drain", "effect": "NoExecute"}
        ]));
        let tolerant = serde_json::json!([{"key": "drain", "operator": "Exists"}]);
        // NoSchedule is the scheduler's: a pod placed by name is admitted despite it.
        assert_eq!(
            admit(&pod(serde_json::json!({"tolerations": tolerant})), &n),
            Ok(())
        );
        assert!(fits(&pod(serde_json::json!({"tolerations": tolerant})), &n).is_err());
        assert_eq!(
            admit(&pod(serde_json::json!({})), &n),
            Err(Rejection {
                reason: "TaintToleration",
                message: "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate".into(),
            })
        );
        // Affinity is checked first, as in the kubelet's generalFilter.
        assert_eq!(
            admit(&pod(serde_json::json!({"nodeSelector": {"disk": "hdd"}})), &n),
            Err(Rejection {
                reason: "NodeAffinity",
                message: "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into(),
            })
        );
        let n = node(serde_json::json!([]));
        assert_eq!(
            admit(
                &pod(serde_json::json!({"nodeSelector": {"disk": "ssd"}})),
                &n
            ),
            Ok(())
        );
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

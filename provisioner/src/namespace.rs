//! Emptying a namespace being deleted, the namespace controller's decisions
//! (k8s-semantics §7.3).
//!
//! Pure: what is left in the namespace becomes the conditions upstream reports, and the
//! `kubernetes` finalizer goes only when nothing is left.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub const CONDITION_CONTENT_REMAINING: &str = "NamespaceContentRemaining";
pub const CONDITION_FINALIZERS_REMAINING: &str = "NamespaceFinalizersRemaining";

/// What a deletion pass found still present.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Remaining {
    /// Resource (upstream's group-resource string: "pods", "statefulsets.apps") -> objects.
    pub resources: BTreeMap<String, usize>,
    /// Finalizer -> objects it still holds.
    pub finalizers: BTreeMap<String, usize>,
}

impl Remaining {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// One object of `resource` is still there, held by `finalizers`.
    pub fn add(&mut self, resource: &str, finalizers: &[String]) {
        *self.resources.entry(resource.to_string()).or_default() += 1;
        for f in finalizers {
            *self.finalizers.entry(f.clone()).or_default() += 1;
        }
    }
}

/// Whether the namespace controller has work on `ns`: being deleted and still carrying its
/// `kubernetes` finalizer.
pub fn is_ours_to_empty(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == strata_store::NAMESPACE_FINALIZER))
}

fn message(counts: &BTreeMap<String, usize>, what: &str) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{k} {what} {n} resource instances"))
        .collect();
    parts.join(", ")
}

/// The status conditions upstream sets while content remains; `None` when they are
/// already what `ns` has (so a pass that changed nothing writes nothing).
pub fn conditions(ns: &Namespace, left: &Remaining) -> Option<Vec<NamespaceCondition>> {
    let want = |type_: &str, present: bool, yes: (&str, String), no: &str| {
        let (reason, message) = if present {
            (yes.0.to_string(), yes.1)
        } else {
            (
                no.to_string(),
                format!("All {} are removed", no_what(type_)),
            )
        };
        NamespaceCondition {
            type_: type_.into(),
            status: if present { "True" } else { "False" }.into(),
            reason: Some(reason),
            message: Some(message),
            last_transition_time: None,
        }
    };
    let wanted = [
        want(
            CONDITION_CONTENT_REMAINING,
            !left.resources.is_empty(),
            (
                "SomeResourcesRemain",
                format!(
                    "Some resources are remaining: {}",
                    message(&left.resources, "has")
                ),
            ),
            "ContentRemoved",
        ),
        want(
            CONDITION_FINALIZERS_REMAINING,
            !left.finalizers.is_empty(),
            (
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    message(&left.finalizers, "in")
                ),
            ),
            "ContentHasNoFinalizers",
        ),
    ];
    let have = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let same = wanted.iter().all(|w| {
        have.iter().any(|h| {
            h.type_ == w.type_
                && h.status == w.status
                && h.reason == w.reason
                && h.message == w.message
        })
    });
    if same {
        return None;
    }
    let now = Time(crate::k8s_openapi::jiff::Timestamp::now());
    let mut out: Vec<NamespaceCondition> = have
        .into_iter()
        .filter(|h| !wanted.iter().any(|w| w.type_ == h.type_))
        .collect();
    for mut w in wanted {
        let unchanged = ns
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|h| h.type_ == w.type_))
            .filter(|h| h.status == w.status);
        w.last_transition_time = match unchanged {
            Some(h) => h.last_transition_time.clone(),
            None => Some(now.clone()),
        };
        out.push(w);
    }
    Some(out)
}

fn no_what(type_: &str) -> &'static str {
    if type_ == CONDITION_CONTENT_REMAINING {
        "resources"
    } else {
        "content-preserving finalizers"
    }
}

/// The namespace with the `kubernetes` finalizer taken out of `spec.finalizers`.
pub fn finalized(ns: &Namespace) -> Namespace {
    let mut ns = ns.clone();
    if let Some(spec) = ns.spec.as_mut()
        && let Some(list) = spec.finalizers.as_mut()
    {
        list.retain(|f| f != strata_store::NAMESPACE_FINALIZER);
    }
    ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s_openapi::api::core::v1::{NamespaceSpec, NamespaceStatus};

    fn terminating() -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("apps".into());
        ns.metadata.deletion_timestamp = Some(Time(crate::k8s_openapi::jiff::Timestamp::now()));
        ns.spec = Some(NamespaceSpec {
            finalizers: Some(vec!["example.com/keep".into(), "kubernetes".into()]),
        });
        ns.status = Some(NamespaceStatus {
            phase: Some("Terminating".into()),
            conditions: None,
        });
        ns
    }

    #[test]
    fn only_a_terminating_namespace_with_our_finalizer_is_emptied() {
        let ns = terminating();
        assert!(is_ours_to_empty(&ns));
        let mut active = ns.clone();
        active.metadata.deletion_timestamp = None;
        assert!(!is_ours_to_empty(&active));
        assert!(!is_ours_to_empty(&finalized(&ns)));
    }

    #[test]
    fn finalizing_removes_only_kubernetes() {
        let ns = finalized(&terminating());
        assert_eq!(
            ns.spec.unwrap().finalizers.unwrap(),
            vec!["example.com/keep".to_string()]
        );
    }

    #[test]
    fn conditions_say_what_is_left_and_are_written_once() {
        let mut ns = terminating();
        let mut left = Remaining::default();
        left.add("pods", &["strata.io/pod-runner".into()]);
        left.add(
            "persistentvolumeclaims",
            &["kubernetes.io/pvc-protection".into()],
        );
        left.add("pods", &[]);
        let conds = conditions(&ns, &left).expect("first pass writes");
        let content = conds
            .iter()
            .find(|c| c.type_ == CONDITION_CONTENT_REMAINING)
            .unwrap();
        assert_eq!(content.status, "True");
        assert_eq!(
            content.message.as_deref(),
            Some(
                "Some resources are remaining: persistentvolumeclaims has 1 resource instances, pods has 2 resource instances"
            )
        );
        let fin = conds
            .iter()
            .find(|c| c.type_ == CONDITION_FINALIZERS_REMAINING)
            .unwrap();
        assert_eq!(
            fin.message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: kubernetes.io/pvc-protection in 1 resource instances, strata.io/pod-runner in 1 resource instances"
            )
        );
        ns.status.as_mut().unwrap().conditions = Some(conds);
        assert_eq!(
            conditions(&ns, &left),
            None,
            "nothing changed, nothing written"
        );
        let cleared = conditions(&ns, &Remaining::default()).expect("content went");
        assert!(cleared.iter().all(|c| c.status == "False"));
    }
}

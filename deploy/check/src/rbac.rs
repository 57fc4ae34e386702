//! What RBAC grants one ServiceAccount, from the Roles and bindings among a set of
//! objects, so a test can compare it with what the sidecars need.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;

/// One verb on one resource; `namespace: None` is cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub namespace: Option<String>,
    pub group: String,
    pub resource: String,
    pub verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {group}/{} in {ns}", self.verb, self.resource),
            None => write!(f, "{} {group}/{} cluster-wide", self.verb, self.resource),
        }
    }
}

/// Everything bound to ServiceAccount `namespace/name`. Wildcards, resourceNames and
/// nonResourceURLs are refused: least privilege names every verb and resource.
pub fn granted(
    objects: &[Value],
    namespace: &str,
    name: &str,
) -> Result<BTreeSet<Permission>, String> {
    let mut cluster_roles: BTreeMap<String, Vec<PolicyRule>> = BTreeMap::new();
    let mut roles: BTreeMap<(String, String), Vec<PolicyRule>> = BTreeMap::new();
    for o in objects {
        match o["kind"].as_str() {
            Some("ClusterRole") => {
                let r: ClusterRole = parse(o)?;
                cluster_roles.insert(
                    r.metadata.name.unwrap_or_default(),
                    r.rules.unwrap_or_default(),
                );
            }
            Some("Role") => {
                let r: Role = parse(o)?;
                let key = (
                    r.metadata.namespace.unwrap_or_default(),
                    r.metadata.name.unwrap_or_default(),
                );
                roles.insert(key, r.rules.unwrap_or_default());
            }
            _ => {}
        }
    }
    let is_us = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>,
                 default_ns: Option<&str>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == name
                && s.namespace.as_deref().or(default_ns) == Some(namespace)
        })
    };
    let mut out = BTreeSet::new();
    for o in objects {
        let (ns, role_ref, ours) = match o["kind"].as_str() {
            Some("ClusterRoleBinding") => {
                let b: ClusterRoleBinding = parse(o)?;
                let ours = is_us(&b.subjects, None);
                (None, b.role_ref, ours)
            }
            Some("RoleBinding") => {
                let b: RoleBinding = parse(o)?;
                let ns = b.metadata.namespace.clone().unwrap_or_default();
                let ours = is_us(&b.subjects, Some(&ns));
                (Some(ns), b.role_ref, ours)
            }
            _ => continue,
        };
        if !ours {
            continue;
        }
        let rules = match (role_ref.kind.as_str(), &ns) {
            ("ClusterRole", _) => cluster_roles.get(&role_ref.name),
            ("Role", Some(ns)) => roles.get(&(ns.clone(), role_ref.name.clone())),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "{}: roleRef {} {} not found",
                crate::key(o),
                role_ref.kind,
                role_ref.name
            )
        })?;
        for rule in rules {
            if rule.resource_names.is_some() || rule.non_resource_urls.is_some() {
                return Err(format!(
                    "{}: resourceNames/nonResourceURLs not expected",
                    role_ref.name
                ));
            }
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        if [group, resource, verb].iter().any(|s| s.contains('*')) {
                            return Err(format!(
                                "{}: wildcard in {group}/{resource} {verb}",
                                role_ref.name
                            ));
                        }
                        out.insert(Permission {
                            namespace: ns.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

fn parse<T: serde::de::DeserializeOwned>(o: &Value) -> Result<T, String> {
    serde_json::from_value(o.clone()).map_err(|e| format!("{}: {e}", crate::key(o)))
}

/// Whether `granted` allows `verb` on `group/resource` in `namespace` (None: cluster-wide).
pub fn allows(
    granted: &BTreeSet<Permission>,
    namespace: Option<&str>,
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
    granted.iter().any(|p| {
        p.group == group
            && p.resource == resource
            && p.verb == verb
            && (p.namespace.is_none() || p.namespace.as_deref() == namespace)
    })
}

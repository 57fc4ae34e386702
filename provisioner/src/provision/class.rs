//! What a StorageClass means to the provisioner (k8s-semantics §3.11).

use std::collections::BTreeMap;

use crate::k8s_openapi::api::storage::v1::StorageClass;

use crate::names::{CSI_PARAM_FSTYPE, CSI_PARAM_PREFIX, LEGACY_PARAM_FSTYPE};
use crate::secrets::{ClassSecrets, is_class_secret_key};

#[derive(Debug, Clone, PartialEq)]
pub struct ClassConfig {
    pub name: String,
    pub provisioner: String,
    /// Parameters for the driver: every `csi.storage.k8s.io/` key removed (the deprecated
    /// `fstype` and `csi*SecretName`/`csi*SecretNamespace` keys stay, as upstream leaves
    /// them).
    pub parameters: BTreeMap<String, String>,
    /// The Secrets the class names per operation, templates unresolved (`secrets`).
    pub secrets: ClassSecrets,
    /// From `csi.storage.k8s.io/fstype` or the deprecated `fstype` (any case); None means
    /// the default.
    pub fs_type: Option<String>,
    pub reclaim_policy: String,
    pub wait_for_first_consumer: bool,
    pub mount_options: Vec<String>,
    pub allow_volume_expansion: bool,
    /// `allowedTopologies` flattened into topology segments (key -> value), in order.
    pub allowed_topologies: Vec<BTreeMap<String, String>>,
}

impl ClassConfig {
    pub fn from_class(sc: &StorageClass) -> Result<Self, String> {
        let params = sc.parameters.clone().unwrap_or_default();
        // The deprecated key is matched case-insensitively (`fstype`, `fsType`), as the
        // external-provisioner does; with both keys given they must agree.
        let legacy = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(LEGACY_PARAM_FSTYPE))
            .map(|(_, v)| v);
        let fs_type = match (params.get(CSI_PARAM_FSTYPE), legacy) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "storageClass {:?}: parameters {CSI_PARAM_FSTYPE} ({a:?}) and its deprecated alias {LEGACY_PARAM_FSTYPE} ({b:?}) differ",
                    sc.metadata.name.as_deref().unwrap_or_default()
                ));
            }
            (Some(f), _) | (None, Some(f)) => Some(f.clone()),
            (None, None) => None,
        };
        let secrets = ClassSecrets::from_parameters(&params).map_err(|e| e.to_string())?;
        // external-provisioner's `removePrefixedParameters`: a reserved key it does not
        // know is refused, so a misspelt secret key fails rather than passes no secret.
        if let Some(k) = params.keys().find(|k| {
            k.starts_with(CSI_PARAM_PREFIX) && *k != CSI_PARAM_FSTYPE && !is_class_secret_key(k)
        }) {
            return Err(format!(
                "failed to strip CSI Parameters of prefixed keys: found unknown parameter key {k:?} with reserved namespace {CSI_PARAM_PREFIX}"
            ));
        }
        let parameters = params
            .into_iter()
            .filter(|(k, _)| !k.starts_with(CSI_PARAM_PREFIX))
            .collect();
        Ok(Self {
            name: sc.metadata.name.clone().unwrap_or_default(),
            provisioner: sc.provisioner.clone(),
            parameters,
            secrets,
            fs_type,
            reclaim_policy: sc.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            wait_for_first_consumer: sc.volume_binding_mode.as_deref()
                == Some("WaitForFirstConsumer"),
            mount_options: sc.mount_options.clone().unwrap_or_default(),
            allow_volume_expansion: sc.allow_volume_expansion == Some(true),
            allowed_topologies: flatten_topologies(sc),
        })
    }
}

/// Each `TopologySelectorTerm` becomes the segments it allows: the cartesian product of its
/// expressions' values (one value per key).
fn flatten_topologies(sc: &StorageClass) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for term in sc.allowed_topologies.iter().flatten() {
        let mut segments = vec![BTreeMap::new()];
        for expr in term.match_label_expressions.iter().flatten() {
            segments = segments
                .into_iter()
                .flat_map(|seg| {
                    expr.values.iter().map(move |v| {
                        let mut s = seg.clone();
                        s.insert(expr.key.clone(), v.clone());
                        s
                    })
                })
                .collect();
        }
        out.extend(segments.into_iter().filter(|s| !s.is_empty()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::class;
    use crate::k8s_openapi::api::core::v1::{
        TopologySelectorLabelRequirement, TopologySelectorTerm,
    };
    use crate::secrets::Kind;

    #[test]
    fn parameters_lose_reserved_keys_and_defaults_apply() {
        let mut sc = class("fast", "Immediate");
        sc.parameters = Some(BTreeMap::from([
            ("pool".to_string(), "p1".to_string()),
            ("csi.storage.k8s.io/fstype".to_string(), "xfs".to_string()),
            (
                "csi.storage.k8s.io/provisioner-secret-name".to_string(),
                "s".to_string(),
            ),
            (
                "csi.storage.k8s.io/provisioner-secret-namespace".to_string(),
                "ns".to_string(),
            ),
        ]));
        let c = ClassConfig::from_class(&sc).unwrap();
        assert_eq!(
            c.parameters,
            BTreeMap::from([("pool".to_string(), "p1".to_string())])
        );
        assert_eq!(
            c.secrets.get(Kind::Provisioner).map(|t| t.name.as_str()),
            Some("s"),
            "the secret keys are the provisioner's, not the driver's"
        );
        assert_eq!(c.fs_type.as_deref(), Some("xfs"));
        assert_eq!(c.reclaim_policy, "Delete");
        assert!(!c.allow_volume_expansion && !c.wait_for_first_consumer);
        sc.parameters
            .as_mut()
            .unwrap()
            .insert("fstype".into(), "xfs".into());
        assert_eq!(
            ClassConfig::from_class(&sc).unwrap().fs_type.as_deref(),
            Some("xfs"),
            "both keys agreeing is fine"
        );
        sc.parameters
            .as_mut()
            .unwrap()
            .insert("fstype".into(), "ext4".into());
        let err = ClassConfig::from_class(&sc).unwrap_err();
        assert!(err.contains("differ"), "{err}");
    }

    #[test]
    fn an_unknown_reserved_key_refuses_the_class() {
        let mut sc = class("fast", "Immediate");
        sc.parameters = Some(BTreeMap::from([(
            "csi.storage.k8s.io/provisioner-secret-nam".to_string(),
            "s".to_string(),
        )]));
        assert_eq!(
            ClassConfig::from_class(&sc).unwrap_err(),
            "failed to strip CSI Parameters of prefixed keys: found unknown parameter key \"csi.storage.k8s.io/provisioner-secret-nam\" with reserved namespace csi.storage.k8s.io/"
        );
    }

    #[test]
    fn a_half_given_secret_pair_refuses_the_class() {
        let mut sc = class("fast", "Immediate");
        sc.parameters = Some(BTreeMap::from([(
            "csi.storage.k8s.io/node-publish-secret-namespace".to_string(),
            "ns".to_string(),
        )]));
        let err = ClassConfig::from_class(&sc).unwrap_err();
        assert_eq!(
            err,
            "failed to get name and namespace template from params: either name and namespace for NodePublish secrets specified, Both must be specified"
        );
        // The deprecated keys name a secret and still reach the driver, as upstream.
        sc.parameters = Some(BTreeMap::from([
            ("csiNodeStageSecretName".to_string(), "s".to_string()),
            ("csiNodeStageSecretNamespace".to_string(), "ns".to_string()),
        ]));
        let c = ClassConfig::from_class(&sc).unwrap();
        assert!(c.secrets.get(Kind::NodeStage).is_some());
        assert!(c.parameters.contains_key("csiNodeStageSecretName"));
    }

    #[test]
    fn deprecated_fs_type_alias_in_any_case_sets_the_fs_type() {
        for key in ["fsType", "fstype", "FSTYPE"] {
            let mut sc = class("fast", "Immediate");
            sc.parameters = Some(BTreeMap::from([(key.to_string(), "xfs".to_string())]));
            let c = ClassConfig::from_class(&sc).unwrap();
            assert_eq!(c.fs_type.as_deref(), Some("xfs"), "{key}");
            // Left for the driver, as upstream leaves it; the capability agrees with it.
            assert!(c.parameters.contains_key(key));
        }
    }

    #[test]
    fn allowed_topologies_flatten_to_segments() {
        let mut sc = class("local", "WaitForFirstConsumer");
        sc.allowed_topologies = Some(vec![TopologySelectorTerm {
            match_label_expressions: Some(vec![TopologySelectorLabelRequirement {
                key: "topology.strata.io/node".into(),
                values: vec!["n1".into(), "n2".into()],
            }]),
        }]);
        let c = ClassConfig::from_class(&sc).unwrap();
        assert_eq!(c.allowed_topologies.len(), 2);
        assert_eq!(c.allowed_topologies[1]["topology.strata.io/node"], "n2");
        assert!(c.wait_for_first_consumer);
    }
}

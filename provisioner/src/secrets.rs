//! The CSI secret parameters of StorageClasses and VolumeSnapshotClasses, as the
//! kubernetes-csi sidecars read them (k8s-semantics §3.9; the upstream docs page
//! "secrets-and-credentials-storage-class").
//!
//! A class names a Secret per operation with a pair of parameters, `…-secret-name` and
//! `…-secret-namespace`, both or neither. Their values may be templates: `${token}` is
//! replaced by a value of the object being provisioned or snapshotted. Which tokens a
//! template may use depends on the field: a namespace only from values the claim's user
//! does not choose (`${pv.name}`, `${pvc.namespace}`), a name also from ones they do
//! (`${pvc.name}`, the claim's annotations), except the provisioner secret's name, which
//! external-provisioner resolves without the claim's annotations. The result must be a
//! valid namespace (DNS-1123 label) and Secret name (DNS-1123 subdomain).
//!
//! Everything here is pure but [`read_secret`], the one get of a Secret a [`SecretRef`]
//! names; the controller passes its data on. Secret data never reaches a log, an event or
//! an error: [`SecretData`]'s `Debug` prints only how many keys it holds.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, SecretReference};
use crate::names::CSI_PARAM_PREFIX;

/// The operations a StorageClass can name a Secret for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// CreateVolume and DeleteVolume.
    Provisioner,
    ControllerPublish,
    NodeStage,
    NodePublish,
    ControllerExpand,
    NodeExpand,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Provisioner,
        Kind::ControllerPublish,
        Kind::NodeStage,
        Kind::NodePublish,
        Kind::ControllerExpand,
        Kind::NodeExpand,
    ];

    /// The parameter keys, and the pre-`csi.storage.k8s.io/` keys upstream still reads
    /// (and, unlike the prefixed ones, still passes to the driver).
    fn keys(self) -> Keys {
        let (label, stem, deprecated) = match self {
            Kind::Provisioner => (
                "Provisioner",
                "provisioner",
                Some(("csiProvisionerSecretName", "csiProvisionerSecretNamespace")),
            ),
            Kind::ControllerPublish => (
                "ControllerPublish",
                "controller-publish",
                Some((
                    "csiControllerPublishSecretName",
                    "csiControllerPublishSecretNamespace",
                )),
            ),
            Kind::NodeStage => (
                "NodeStage",
                "node-stage",
                Some(("csiNodeStageSecretName", "csiNodeStageSecretNamespace")),
            ),
            Kind::NodePublish => (
                "NodePublish",
                "node-publish",
                Some(("csiNodePublishSecretName", "csiNodePublishSecretNamespace")),
            ),
            Kind::ControllerExpand => ("ControllerExpand", "controller-expand", None),
            Kind::NodeExpand => ("NodeExpand", "node-expand", None),
        };
        Keys {
            label,
            name: format!("{CSI_PARAM_PREFIX}{stem}-secret-name"),
            namespace: format!("{CSI_PARAM_PREFIX}{stem}-secret-namespace"),
            deprecated,
        }
    }
}

struct Keys {
    /// How upstream's messages name the secret ("Provisioner secrets specified …").
    label: &'static str,
    name: String,
    namespace: String,
    deprecated: Option<(&'static str, &'static str)>,
}

/// The pair every kind falls back to when its own keys are absent.
fn default_keys() -> Keys {
    Keys {
        label: "Default",
        name: format!("{CSI_PARAM_PREFIX}secret-name"),
        namespace: format!("{CSI_PARAM_PREFIX}secret-namespace"),
        deprecated: None,
    }
}

/// The snapshotter's pair on a VolumeSnapshotClass (CreateSnapshot, DeleteSnapshot).
fn snapshotter_keys() -> Keys {
    Keys {
        label: "Snapshotter",
        name: crate::names::snapshot::PARAM_SECRET_NAME.to_string(),
        namespace: crate::names::snapshot::PARAM_SECRET_NAMESPACE.to_string(),
        deprecated: None,
    }
}

/// The pair ListSnapshots' secret comes from, on a VolumeSnapshotClass.
fn snapshotter_list_keys() -> Keys {
    Keys {
        label: "SnapshotterList",
        name: crate::names::snapshot::PARAM_LIST_SECRET_NAME.to_string(),
        namespace: crate::names::snapshot::PARAM_LIST_SECRET_NAMESPACE.to_string(),
        deprecated: None,
    }
}

/// Whether `key` is one of the secret parameters a StorageClass may hold (every kind's
/// pair and the default pair; the deprecated keys are not `csi.storage.k8s.io/` ones).
pub fn is_class_secret_key(key: &str) -> bool {
    Kind::ALL
        .into_iter()
        .map(Kind::keys)
        .chain([default_keys()])
        .any(|k| k.name == key || k.namespace == key)
}

/// Whether `key` is one of the secret parameters a VolumeSnapshotClass may hold: the
/// snapshotter's, the list call's and the group snapshotter's pairs.
pub fn is_snapshot_class_secret_key(key: &str) -> bool {
    const GROUP: [&str; 2] = [
        "csi.storage.k8s.io/group-snapshotter-secret-name",
        "csi.storage.k8s.io/group-snapshotter-secret-namespace",
    ];
    [snapshotter_keys(), snapshotter_list_keys()]
        .into_iter()
        .any(|k| k.name == key || k.namespace == key)
        || GROUP.contains(&key)
}

/// A name and a namespace as the class gives them, tokens unresolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub name: String,
    pub namespace: String,
}

/// A resolved, validated reference to a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub namespace: String,
}

impl From<&SecretRef> for SecretReference {
    fn from(r: &SecretRef) -> Self {
        SecretReference {
            name: Some(r.name.clone()),
            namespace: Some(r.namespace.clone()),
        }
    }
}

impl SecretRef {
    /// A reference read back from an object (a PV's `spec.csi.*SecretRef`); None unless
    /// both parts are there.
    pub fn from_reference(r: &SecretReference) -> Option<Self> {
        match (r.name.as_deref(), r.namespace.as_deref()) {
            (Some(name), Some(namespace)) if !name.is_empty() && !namespace.is_empty() => {
                Some(SecretRef {
                    name: name.to_string(),
                    namespace: namespace.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// Why a class's secret parameters cannot be used. The messages are upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error(
        "failed to get {scope}name and namespace template from params: {label} secrets specified in parameters with both \"csi\" and \"csi.storage.k8s.io/\" keys"
    )]
    BothKeyStyles {
        scope: &'static str,
        label: &'static str,
    },
    #[error(
        "failed to get {scope}name and namespace template from params: either name and namespace for {label} secrets specified, Both must be specified"
    )]
    HalfGiven {
        scope: &'static str,
        label: &'static str,
    },
    #[error(
        "failed to get {scope}name and namespace template from params: {label} secrets specified in parameters but value of either namespace or name is empty"
    )]
    EmptyValue {
        scope: &'static str,
        label: &'static str,
    },
    #[error("error resolving value {template:?}: invalid tokens: {tokens:?}")]
    InvalidTokens {
        template: String,
        tokens: Vec<String>,
    },
    #[error("error resolving value {template:?}: a \"${{\" without its closing \"}}\"")]
    Unclosed { template: String },
    #[error("{template:?} resolved to {resolved:?} which is not a valid namespace name")]
    ResolvedNamespaceInvalid { template: String, resolved: String },
    #[error("{template:?} is not a valid namespace name")]
    NamespaceInvalid { template: String },
    #[error("{template:?} resolved to {resolved:?} which is not a valid secret name")]
    ResolvedNameInvalid { template: String, resolved: String },
    #[error("{template:?} is not a valid secret name")]
    NameInvalid { template: String },
}

/// The name and namespace templates `keys` finds in `params`, or None when it names no
/// secret (`verifyAndGetSecretNameAndNamespaceTemplate`).
fn templates_for(
    keys: &Keys,
    params: &BTreeMap<String, String>,
    scope: &'static str,
) -> Result<Option<Templates>, ParamError> {
    let label = keys.label;
    let mut names = Vec::new();
    let mut namespaces = Vec::new();
    if let Some((name, namespace)) = keys.deprecated {
        names.extend(params.get(name));
        namespaces.extend(params.get(namespace));
    }
    names.extend(params.get(&keys.name));
    namespaces.extend(params.get(&keys.namespace));
    match (names.as_slice(), namespaces.as_slice()) {
        ([], []) => Ok(None),
        ([name], [namespace]) if name.is_empty() || namespace.is_empty() => {
            Err(ParamError::EmptyValue { scope, label })
        }
        ([name], [namespace]) => Ok(Some(Templates {
            name: (*name).clone(),
            namespace: (*namespace).clone(),
        })),
        (n, ns) if n.len() > 1 || ns.len() > 1 => Err(ParamError::BothKeyStyles { scope, label }),
        _ => Err(ParamError::HalfGiven { scope, label }),
    }
}

/// The secrets a StorageClass names, by kind, templates unresolved. Checked when the
/// class is read, so a class with a half-given pair fails every claim the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassSecrets(BTreeMap<Kind, Templates>);

impl ClassSecrets {
    /// Each kind's own pair, else the `csi.storage.k8s.io/secret-{name,namespace}` pair.
    pub fn from_parameters(params: &BTreeMap<String, String>) -> Result<Self, ParamError> {
        Self::of_kinds(params, &Kind::ALL)
    }

    /// As [`ClassSecrets::from_parameters`], reading only `kinds`: a pair of another kind
    /// is neither read nor checked (DeleteVolume reads only the provisioner's).
    pub fn of_kinds(params: &BTreeMap<String, String>, kinds: &[Kind]) -> Result<Self, ParamError> {
        let fallback = templates_for(&default_keys(), params, "default ");
        let mut out = BTreeMap::new();
        for &kind in kinds {
            let own = templates_for(&kind.keys(), params, "")?;
            let templates = match own {
                Some(t) => Some(t),
                None => fallback.clone()?,
            };
            if let Some(t) = templates {
                out.insert(kind, t);
            }
        }
        Ok(ClassSecrets(out))
    }

    pub fn get(&self, kind: Kind) -> Option<&Templates> {
        self.0.get(&kind)
    }

    /// The Secret of `kind` for the volume `pv_name` provisioned for `pvc`, or None when
    /// the class names none (`getSecretReference`).
    pub fn resolve(
        &self,
        kind: Kind,
        pv_name: &str,
        pvc: &ClaimValues<'_>,
    ) -> Result<Option<SecretRef>, ParamError> {
        let Some(t) = self.get(kind) else {
            return Ok(None);
        };
        let namespace = resolve(&t.namespace, |token| match token {
            "pv.name" => Some(pv_name.to_string()),
            "pvc.namespace" => Some(pvc.namespace.to_string()),
            _ => None,
        })?;
        // external-provisioner resolves the provisioner secret from a copy of the claim
        // that has only its name and namespace: no annotation tokens there.
        let annotations = match kind {
            Kind::Provisioner => None,
            _ => pvc.annotations,
        };
        let name = resolve(&t.name, |token| match token {
            "pv.name" => Some(pv_name.to_string()),
            "pvc.name" => Some(pvc.name.to_string()),
            "pvc.namespace" => Some(pvc.namespace.to_string()),
            _ => token
                .strip_prefix("pvc.annotations['")
                .and_then(|k| k.strip_suffix("']"))
                .and_then(|k| annotations?.get(k).cloned()),
        })?;
        checked(t, namespace, name).map(Some)
    }
}

/// Every Secret a class names for one volume, resolved: what CreateVolume gets and what
/// the PV records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeSecrets {
    /// CreateVolume's; recorded in the PV's deletion-secret annotations for DeleteVolume.
    pub provisioner: Option<SecretRef>,
    pub controller_publish: Option<SecretRef>,
    pub node_stage: Option<SecretRef>,
    pub node_publish: Option<SecretRef>,
    pub controller_expand: Option<SecretRef>,
    pub node_expand: Option<SecretRef>,
}

impl ClassSecrets {
    /// Every kind resolved for `pv_name` and `pvc`; the first error fails them all, as in
    /// external-provisioner's `prepareProvision`.
    pub fn resolve_all(
        &self,
        pv_name: &str,
        pvc: &ClaimValues<'_>,
    ) -> Result<VolumeSecrets, ParamError> {
        let r = |kind| self.resolve(kind, pv_name, pvc);
        Ok(VolumeSecrets {
            provisioner: r(Kind::Provisioner)?,
            controller_publish: r(Kind::ControllerPublish)?,
            node_stage: r(Kind::NodeStage)?,
            node_publish: r(Kind::NodePublish)?,
            controller_expand: r(Kind::ControllerExpand)?,
            node_expand: r(Kind::NodeExpand)?,
        })
    }
}

/// Where DeleteVolume's secret comes from (`handleSecretsForDeletion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionSecret {
    /// The PV's deletion-secret annotations name it.
    Recorded(SecretRef),
    /// The annotations say none (empty strings), or only half of one: no secrets.
    None,
    /// A PV without the annotations (made before them, or by hand): the class's
    /// provisioner secret, resolved again for this PV and its claim reference.
    FromClass,
}

/// Reads the deletion-secret annotations of a PV.
pub fn deletion_secret(pv: &crate::k8s_openapi::api::core::v1::PersistentVolume) -> DeletionSecret {
    use crate::names::{ANN_DELETION_SECRET_NAME, ANN_DELETION_SECRET_NAMESPACE};
    let ann = |k| crate::meta::annotation(&pv.metadata, k);
    match (
        ann(ANN_DELETION_SECRET_NAME),
        ann(ANN_DELETION_SECRET_NAMESPACE),
    ) {
        (Some(name), Some(namespace)) if !name.is_empty() && !namespace.is_empty() => {
            DeletionSecret::Recorded(SecretRef {
                name: name.to_string(),
                namespace: namespace.to_string(),
            })
        }
        (Some(_), Some(_)) => DeletionSecret::None,
        _ => DeletionSecret::FromClass,
    }
}

/// What a claim's templates may read of it.
#[derive(Debug, Clone, Copy)]
pub struct ClaimValues<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

impl<'a> ClaimValues<'a> {
    pub fn of(pvc: &'a PersistentVolumeClaim) -> Self {
        ClaimValues {
            name: pvc.metadata.name.as_deref().unwrap_or_default(),
            namespace: pvc.metadata.namespace.as_deref().unwrap_or_default(),
            annotations: pvc.metadata.annotations.as_ref(),
        }
    }
}

/// The snapshotter secret of a VolumeSnapshotClass for the content `content_name` of the
/// snapshot `snapshot_namespace/snapshot_name`, or None when the class names none
/// (external-snapshotter `GetSecretReference`).
pub fn snapshotter_secret(
    params: &BTreeMap<String, String>,
    content_name: &str,
    snapshot_namespace: &str,
    snapshot_name: &str,
) -> Result<Option<SecretRef>, ParamError> {
    let Some(t) = templates_for(&snapshotter_keys(), params, "")? else {
        return Ok(None);
    };
    let namespace = resolve(&t.namespace, |token| match token {
        "volumesnapshotcontent.name" => Some(content_name.to_string()),
        "volumesnapshot.namespace" => Some(snapshot_namespace.to_string()),
        _ => None,
    })?;
    let name = resolve(&t.name, |token| match token {
        "volumesnapshotcontent.name" => Some(content_name.to_string()),
        "volumesnapshot.namespace" => Some(snapshot_namespace.to_string()),
        "volumesnapshot.name" => Some(snapshot_name.to_string()),
        _ => None,
    })?;
    checked(&t, namespace, name).map(Some)
}

/// The secret ListSnapshots gets when the csi-snapshotter checks the content
/// `content_name` of a class (`checkandUpdateContentStatusOperation`). Resolved without a
/// snapshot, as upstream: `${volumesnapshotcontent.name}` is the only token.
pub fn snapshotter_list_secret(
    params: &BTreeMap<String, String>,
    content_name: &str,
) -> Result<Option<SecretRef>, ParamError> {
    let Some(t) = templates_for(&snapshotter_list_keys(), params, "")? else {
        return Ok(None);
    };
    let only_content =
        |token: &str| (token == "volumesnapshotcontent.name").then(|| content_name.to_string());
    let namespace = resolve(&t.namespace, only_content)?;
    let name = resolve(&t.name, only_content)?;
    checked(&t, namespace, name).map(Some)
}

fn checked(t: &Templates, namespace: String, name: String) -> Result<SecretRef, ParamError> {
    if strata_store::admission::validate_name("Namespace", &namespace, false).is_err() {
        return Err(if namespace == t.namespace {
            ParamError::NamespaceInvalid {
                template: t.namespace.clone(),
            }
        } else {
            ParamError::ResolvedNamespaceInvalid {
                template: t.namespace.clone(),
                resolved: namespace,
            }
        });
    }
    if strata_store::admission::validate_name("Secret", &name, false).is_err() {
        return Err(if name == t.name {
            ParamError::NameInvalid {
                template: t.name.clone(),
            }
        } else {
            ParamError::ResolvedNameInvalid {
                template: t.name.clone(),
                resolved: name,
            }
        });
    }
    Ok(SecretRef { name, namespace })
}

/// Expands `$NAME` and `${NAME}` as Go's `os.Expand`, which the sidecars use, with
/// `value`; every token it has no value for is reported at once, sorted. Two cases
/// `os.Expand` silently drops, `${}` and a `${` never closed, are refused here: the
/// result would not be the name the class's author wrote.
fn resolve(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, ParamError> {
    let mut out = String::with_capacity(template.len());
    let mut missing = std::collections::BTreeSet::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (token, used) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(0) | None => {
                    return Err(ParamError::Unclosed {
                        template: template.to_string(),
                    });
                }
                Some(end) => (&inner[..end], end + 2),
            }
        } else if after.starts_with(['*', '#', '$', '@', '!', '?', '-'])
            || after.starts_with(|c: char| c.is_ascii_digit())
        {
            (&after[..1], 1)
        } else {
            let end = after
                .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if token.is_empty() {
            // A lone `$` stays itself (and then fails the name checks).
            out.push('$');
        } else {
            match value(token) {
                Some(v) => out.push_str(&v),
                None => {
                    missing.insert(token.to_string());
                }
            }
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(ParamError::InvalidTokens {
            template: template.to_string(),
            tokens: missing.into_iter().collect(),
        })
    }
}

/// A Secret's data as CSI's `secrets` map. `Debug` shows only how many keys it holds.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(BTreeMap<String, String>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretData({} keys, values not shown)", self.0.len())
    }
}

impl SecretData {
    /// Every key of `secret.data` (which also holds what `stringData` gave: the store
    /// folds it in on write). CSI's map holds strings, so a value that is not UTF-8 is
    /// refused, by key.
    pub fn from_secret(secret: &Secret) -> Result<Self, NotUtf8> {
        let mut out = BTreeMap::new();
        for (k, v) in secret.data.iter().flatten() {
            let s = String::from_utf8(v.0.clone()).map_err(|_| NotUtf8 { key: k.clone() })?;
            out.insert(k.clone(), s);
        }
        Ok(SecretData(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The map for the request; the only way the values leave this type.
    pub fn to_map<M: FromIterator<(String, String)>>(&self) -> M {
        self.0.clone().into_iter().collect()
    }
}

/// A Secret that could not be read for a CSI call; names the Secret, never its data.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("error getting secret {name} in namespace {namespace}")]
    Get {
        name: String,
        namespace: String,
        #[source]
        source: strata_store::Error,
    },
    #[error("secret {name} in namespace {namespace}")]
    Data {
        name: String,
        namespace: String,
        #[source]
        source: NotUtf8,
    },
}

/// The data of the Secret `r` names, read with one get (as the sidecars do: no informer,
/// so no Secret is kept in memory). The only function here that is not pure.
pub async fn read_secret<S: strata_store::Store>(
    store: &S,
    r: &SecretRef,
) -> Result<SecretData, FetchError> {
    let secret: Secret =
        store
            .get(&r.namespace, &r.name)
            .await
            .map_err(|source| FetchError::Get {
                name: r.name.clone(),
                namespace: r.namespace.clone(),
                source,
            })?;
    SecretData::from_secret(&secret).map_err(|source| FetchError::Data {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        source,
    })
}

/// A Secret value CSI cannot carry; names the key, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the value of key {key:?} is not UTF-8 text")]
pub struct NotUtf8 {
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s_openapi::ByteString;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn claim(annotations: Option<&BTreeMap<String, String>>) -> ClaimValues<'_> {
        ClaimValues {
            name: "data",
            namespace: "team-a",
            annotations,
        }
    }

    fn secret_of(kind: Kind, p: &[(&str, &str)]) -> Result<Option<SecretRef>, ParamError> {
        let ann = params(&[("example.com/key", "from-annotation")]);
        ClassSecrets::from_parameters(&params(p))?.resolve(kind, "pvc-1", &claim(Some(&ann)))
    }

    fn r(name: &str, namespace: &str) -> Option<SecretRef> {
        Some(SecretRef {
            name: name.into(),
            namespace: namespace.into(),
        })
    }

    #[test]
    fn no_parameters_name_no_secret() {
        for kind in Kind::ALL {
            assert_eq!(secret_of(kind, &[("pool", "p")]).unwrap(), None);
        }
    }

    #[test]
    fn each_kind_reads_its_own_pair() {
        for kind in Kind::ALL {
            let k = kind.keys();
            let p = [
                (k.name.as_str(), "s-${pv.name}"),
                (k.namespace.as_str(), "ns"),
            ];
            assert_eq!(secret_of(kind, &p).unwrap(), r("s-pvc-1", "ns"), "{kind:?}");
            for other in Kind::ALL.into_iter().filter(|o| *o != kind) {
                assert_eq!(secret_of(other, &p).unwrap(), None, "{other:?} of {kind:?}");
            }
        }
    }

    #[test]
    fn the_default_pair_covers_kinds_without_their_own() {
        let p = [
            ("csi.storage.k8s.io/secret-name", "shared"),
            ("csi.storage.k8s.io/secret-namespace", "ns"),
            ("csi.storage.k8s.io/node-stage-secret-name", "stage"),
            ("csi.storage.k8s.io/node-stage-secret-namespace", "ns2"),
        ];
        assert_eq!(secret_of(Kind::Provisioner, &p).unwrap(), r("shared", "ns"));
        assert_eq!(secret_of(Kind::NodeStage, &p).unwrap(), r("stage", "ns2"));
        let half = [("csi.storage.k8s.io/secret-name", "shared")];
        assert_eq!(
            secret_of(Kind::Provisioner, &half).unwrap_err().to_string(),
            "failed to get default name and namespace template from params: either name and namespace for Default secrets specified, Both must be specified"
        );
    }

    #[test]
    fn deprecated_keys_are_read_for_the_four_old_kinds() {
        let p = [
            ("csiProvisionerSecretName", "old"),
            ("csiProvisionerSecretNamespace", "ns"),
        ];
        assert_eq!(secret_of(Kind::Provisioner, &p).unwrap(), r("old", "ns"));
        let p = [
            ("csiNodePublishSecretName", "old"),
            ("csiNodePublishSecretNamespace", "ns"),
        ];
        assert_eq!(secret_of(Kind::NodePublish, &p).unwrap(), r("old", "ns"));
        // Both styles for one field: refused.
        let p = [
            ("csiProvisionerSecretName", "old"),
            ("csi.storage.k8s.io/provisioner-secret-name", "new"),
            ("csi.storage.k8s.io/provisioner-secret-namespace", "ns"),
        ];
        assert_eq!(
            secret_of(Kind::Provisioner, &p).unwrap_err(),
            ParamError::BothKeyStyles {
                scope: "",
                label: "Provisioner"
            }
        );
    }

    #[test]
    fn reading_one_kind_ignores_the_pairs_of_the_others() {
        let p = params(&[
            ("csi.storage.k8s.io/provisioner-secret-name", "s"),
            ("csi.storage.k8s.io/provisioner-secret-namespace", "n"),
            ("csi.storage.k8s.io/node-stage-secret-name", "half"),
        ]);
        assert!(ClassSecrets::from_parameters(&p).is_err());
        let only = ClassSecrets::of_kinds(&p, &[Kind::Provisioner]).unwrap();
        assert_eq!(
            only.resolve(Kind::Provisioner, "pv", &claim(None)).unwrap(),
            r("s", "n")
        );
        assert!(only.get(Kind::NodeStage).is_none());
    }

    #[test]
    fn name_and_namespace_come_together_and_non_empty() {
        let err = secret_of(
            Kind::Provisioner,
            &[("csi.storage.k8s.io/provisioner-secret-name", "s")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to get name and namespace template from params: either name and namespace for Provisioner secrets specified, Both must be specified"
        );
        let err = secret_of(
            Kind::ControllerExpand,
            &[("csi.storage.k8s.io/controller-expand-secret-namespace", "n")],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("for ControllerExpand secrets"),
            "{err}"
        );
        let err = secret_of(
            Kind::NodeStage,
            &[
                ("csi.storage.k8s.io/node-stage-secret-name", ""),
                ("csi.storage.k8s.io/node-stage-secret-namespace", "n"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            ParamError::EmptyValue {
                scope: "",
                label: "NodeStage"
            }
        );
        // A class with any broken pair is refused as a whole, whichever kind is asked.
        assert!(
            ClassSecrets::from_parameters(&params(&[(
                "csi.storage.k8s.io/node-expand-secret-name",
                "x"
            )]))
            .is_err()
        );
    }

    #[test]
    fn name_templates_take_claim_values_and_annotations_except_the_provisioner_secret() {
        let p = |kind: Kind| {
            let k = kind.keys();
            [
                (
                    k.name,
                    "${pvc.name}-${pvc.annotations['example.com/key']}".to_string(),
                ),
                (k.namespace, "${pvc.namespace}".to_string()),
            ]
        };
        let ann = params(&[("example.com/key", "k1")]);
        for kind in [
            Kind::ControllerPublish,
            Kind::NodeStage,
            Kind::NodePublish,
            Kind::ControllerExpand,
            Kind::NodeExpand,
        ] {
            let s = ClassSecrets::from_parameters(&p(kind).into_iter().collect()).unwrap();
            assert_eq!(
                s.resolve(kind, "pvc-1", &claim(Some(&ann))).unwrap(),
                r("data-k1", "team-a"),
                "{kind:?}"
            );
            // A missing annotation is an unknown token.
            assert_eq!(
                s.resolve(kind, "pvc-1", &claim(None)).unwrap_err(),
                ParamError::InvalidTokens {
                    template: "${pvc.name}-${pvc.annotations['example.com/key']}".into(),
                    tokens: vec!["pvc.annotations['example.com/key']".into()],
                }
            );
        }
        let s = ClassSecrets::from_parameters(&p(Kind::Provisioner).into_iter().collect()).unwrap();
        let err = s
            .resolve(Kind::Provisioner, "pvc-1", &claim(Some(&ann)))
            .unwrap_err();
        assert!(
            matches!(&err, ParamError::InvalidTokens { tokens, .. } if tokens == &["pvc.annotations['example.com/key']"]),
            "{err}"
        );
        let ok = [
            (
                "csi.storage.k8s.io/provisioner-secret-name",
                "${pv.name}.${pvc.name}.${pvc.namespace}",
            ),
            (
                "csi.storage.k8s.io/provisioner-secret-namespace",
                "x-${pvc.namespace}",
            ),
        ];
        assert_eq!(
            secret_of(Kind::Provisioner, &ok).unwrap(),
            r("pvc-1.data.team-a", "x-team-a")
        );
    }

    #[test]
    fn namespace_templates_take_only_values_the_user_does_not_choose() {
        for (template, bad) in [
            ("${pvc.name}", "pvc.name"),
            (
                "${pvc.annotations['example.com/key']}",
                "pvc.annotations['example.com/key']",
            ),
            ("${pvc.uid}", "pvc.uid"),
        ] {
            let err = secret_of(
                Kind::NodePublish,
                &[
                    ("csi.storage.k8s.io/node-publish-secret-name", "s"),
                    ("csi.storage.k8s.io/node-publish-secret-namespace", template),
                ],
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("error resolving value {template:?}: invalid tokens: [{bad:?}]")
            );
        }
        assert_eq!(
            secret_of(
                Kind::NodePublish,
                &[
                    ("csi.storage.k8s.io/node-publish-secret-name", "s"),
                    (
                        "csi.storage.k8s.io/node-publish-secret-namespace",
                        "${pv.name}"
                    ),
                ],
            )
            .unwrap(),
            r("s", "pvc-1")
        );
    }

    #[test]
    fn template_syntax_follows_os_expand() {
        let v = |t: &str| {
            resolve(t, |k| match k {
                "a" => Some("A".to_string()),
                "pv.name" => Some("p".to_string()),
                _ => None,
            })
        };
        assert_eq!(v("x-${pv.name}-y").unwrap(), "x-p-y");
        assert_eq!(v("$a.$a").unwrap(), "A.A", "bare names too");
        assert_eq!(v("end$").unwrap(), "end$", "a lone dollar stays");
        assert_eq!(v("a$.b").unwrap(), "a$.b");
        assert_eq!(
            v("${b}${c}$b$1").unwrap_err(),
            ParamError::InvalidTokens {
                template: "${b}${c}$b$1".into(),
                tokens: vec!["1".into(), "b".into(), "c".into()],
            },
            "every unknown token, sorted and once"
        );
        assert!(matches!(
            v("x${pv.name").unwrap_err(),
            ParamError::Unclosed { .. }
        ));
        assert!(matches!(
            v("x${}").unwrap_err(),
            ParamError::Unclosed { .. }
        ));
    }

    #[test]
    fn resolved_values_must_be_valid_names() {
        let p = |name: &str, ns: &str| {
            secret_of(
                Kind::Provisioner,
                &[
                    ("csi.storage.k8s.io/provisioner-secret-name", name),
                    ("csi.storage.k8s.io/provisioner-secret-namespace", ns),
                ],
            )
        };
        assert_eq!(
            p("s", "Bad_NS").unwrap_err().to_string(),
            "\"Bad_NS\" is not a valid namespace name"
        );
        assert_eq!(
            p("s", "a.${pvc.namespace}").unwrap_err().to_string(),
            "\"a.${pvc.namespace}\" resolved to \"a.team-a\" which is not a valid namespace name",
            "a namespace is a label: no dots"
        );
        assert_eq!(
            p("Upper", "ns").unwrap_err().to_string(),
            "\"Upper\" is not a valid secret name"
        );
        assert_eq!(
            p("${pv.name}.", "ns").unwrap_err().to_string(),
            "\"${pv.name}.\" resolved to \"pvc-1.\" which is not a valid secret name"
        );
        assert_eq!(
            p("a.b-c", "ns").unwrap(),
            r("a.b-c", "ns"),
            "a name is a subdomain"
        );
        let long = "x".repeat(64);
        assert!(p("s", &long).is_err(), "a label has at most 63 characters");
    }

    #[test]
    fn snapshotter_secret_templates() {
        let p = |name: &str, ns: &str| {
            snapshotter_secret(
                &params(&[
                    ("csi.storage.k8s.io/snapshotter-secret-name", name),
                    ("csi.storage.k8s.io/snapshotter-secret-namespace", ns),
                ]),
                "snapcontent-1",
                "team-a",
                "snap",
            )
        };
        assert_eq!(
            p(
                "${volumesnapshot.name}-${volumesnapshotcontent.name}",
                "${volumesnapshot.namespace}"
            )
            .unwrap(),
            r("snap-snapcontent-1", "team-a")
        );
        assert_eq!(
            p("s", "${volumesnapshotcontent.name}").unwrap(),
            r("s", "snapcontent-1")
        );
        assert_eq!(
            p("s", "${volumesnapshot.name}").unwrap_err().to_string(),
            "error resolving value \"${volumesnapshot.name}\": invalid tokens: [\"volumesnapshot.name\"]",
            "the snapshot's name is the user's choice: not for the namespace"
        );
        assert!(matches!(
            p("${pvc.name}", "ns").unwrap_err(),
            ParamError::InvalidTokens { .. }
        ));
        let half = snapshotter_secret(
            &params(&[("csi.storage.k8s.io/snapshotter-secret-name", "s")]),
            "c",
            "n",
            "s",
        );
        assert_eq!(
            half.unwrap_err().to_string(),
            "failed to get name and namespace template from params: either name and namespace for Snapshotter secrets specified, Both must be specified"
        );
        assert_eq!(
            snapshotter_secret(&params(&[("x", "y")]), "c", "n", "s").unwrap(),
            None
        );
    }

    #[test]
    fn snapshotter_list_secret_takes_only_the_content_name() {
        let p = |name: &str, ns: &str| {
            snapshotter_list_secret(
                &params(&[
                    ("csi.storage.k8s.io/snapshotter-list-secret-name", name),
                    ("csi.storage.k8s.io/snapshotter-list-secret-namespace", ns),
                ]),
                "snapcontent-1",
            )
        };
        assert_eq!(
            p("list-${volumesnapshotcontent.name}", "ns").unwrap(),
            r("list-snapcontent-1", "ns")
        );
        assert_eq!(
            p("${volumesnapshot.name}", "ns").unwrap_err().to_string(),
            "error resolving value \"${volumesnapshot.name}\": invalid tokens: [\"volumesnapshot.name\"]"
        );
        let half = snapshotter_list_secret(
            &params(&[("csi.storage.k8s.io/snapshotter-list-secret-namespace", "n")]),
            "c",
        );
        assert!(
            half.unwrap_err()
                .to_string()
                .contains("either name and namespace for SnapshotterList secrets specified")
        );
        // The snapshotter's own pair is not the list pair.
        assert_eq!(
            snapshotter_list_secret(
                &params(&[
                    ("csi.storage.k8s.io/snapshotter-secret-name", "s"),
                    ("csi.storage.k8s.io/snapshotter-secret-namespace", "n"),
                ]),
                "c"
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn reserved_secret_keys_are_known_by_class_kind() {
        for k in [
            "csi.storage.k8s.io/provisioner-secret-name",
            "csi.storage.k8s.io/node-expand-secret-namespace",
            "csi.storage.k8s.io/secret-name",
        ] {
            assert!(
                is_class_secret_key(k) && !is_snapshot_class_secret_key(k),
                "{k}"
            );
        }
        for k in [
            "csi.storage.k8s.io/snapshotter-secret-name",
            "csi.storage.k8s.io/snapshotter-list-secret-namespace",
            "csi.storage.k8s.io/group-snapshotter-secret-name",
        ] {
            assert!(
                is_snapshot_class_secret_key(k) && !is_class_secret_key(k),
                "{k}"
            );
        }
        assert!(!is_class_secret_key(
            "csi.storage.k8s.io/provisioner-secret-nam"
        ));
        assert!(!is_class_secret_key("csiProvisionerSecretName"));
    }

    #[test]
    fn secret_data_is_text_and_never_printed() {
        let mut s = Secret {
            data: Some(BTreeMap::from([
                ("user".to_string(), ByteString(b"admin".to_vec())),
                ("password".to_string(), ByteString(b"hunter2".to_vec())),
            ])),
            ..Default::default()
        };
        let d = SecretData::from_secret(&s).unwrap();
        let shown = format!("{d:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("admin"),
            "{shown}"
        );
        let m: std::collections::HashMap<String, String> = d.to_map();
        assert_eq!(m["password"], "hunter2");
        s.data
            .as_mut()
            .unwrap()
            .insert("bin".into(), ByteString(vec![0xff, 0xfe]));
        assert_eq!(
            SecretData::from_secret(&s).unwrap_err(),
            NotUtf8 { key: "bin".into() }
        );
    }

    #[test]
    fn references_read_back_need_both_parts() {
        let full = SecretReference {
            name: Some("s".into()),
            namespace: Some("n".into()),
        };
        assert_eq!(SecretRef::from_reference(&full), r("s", "n"));
        let half = SecretReference {
            name: Some("s".into()),
            namespace: None,
        };
        assert_eq!(SecretRef::from_reference(&half), None);
        assert_eq!(SecretReference::from(&r("s", "n").unwrap()), full);
    }

    #[test]
    fn delete_reads_the_recorded_secret_else_the_class() {
        use crate::k8s_openapi::api::core::v1::PersistentVolume;
        use crate::names::{ANN_DELETION_SECRET_NAME, ANN_DELETION_SECRET_NAMESPACE};
        let pv = |kv: &[(&str, &str)]| {
            let mut pv = PersistentVolume::default();
            for (k, v) in kv {
                crate::meta::set_annotation(&mut pv.metadata, k, v);
            }
            pv
        };
        assert_eq!(
            deletion_secret(&pv(&[
                (ANN_DELETION_SECRET_NAME, "s"),
                (ANN_DELETION_SECRET_NAMESPACE, "n")
            ])),
            DeletionSecret::Recorded(r("s", "n").unwrap())
        );
        assert_eq!(
            deletion_secret(&pv(&[
                (ANN_DELETION_SECRET_NAME, ""),
                (ANN_DELETION_SECRET_NAMESPACE, "")
            ])),
            DeletionSecret::None
        );
        assert_eq!(
            deletion_secret(&pv(&[
                (ANN_DELETION_SECRET_NAME, "s"),
                (ANN_DELETION_SECRET_NAMESPACE, "")
            ])),
            DeletionSecret::None
        );
        assert_eq!(deletion_secret(&pv(&[])), DeletionSecret::FromClass);
        assert_eq!(
            deletion_secret(&pv(&[(ANN_DELETION_SECRET_NAME, "s")])),
            DeletionSecret::FromClass
        );
    }
}

//! PodPreset (`settings.k8s.io/v1alpha1`, served until Kubernetes v1.19) and its admission
//! plugin: at pod creation, the presets of the pod's namespace whose selector matches the
//! pod's labels add env, envFrom, volumes and volumeMounts to it (k8s-semantics §8).
//!
//! k8s-openapi dropped the kind with the API, so the typed struct is ours; it implements
//! the traits the kind registry and the [`Store`](crate::Store) trait need.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, PodSpec, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::selector;

/// The prefix of the annotations the plugin writes (`<prefix>/podpreset-<name>`).
pub const ANNOTATION_PREFIX: &str = "podpreset.admission.kubernetes.io";
/// A pod annotated with this set to `"true"` gets no preset.
pub const EXCLUDE_ANNOTATION: &str = "podpreset.admission.kubernetes.io/exclude";
/// Static (mirror) pods are left alone, as upstream does.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Reason of the Warning event a conflicting preset raises on the pod.
pub const CONFLICT_REASON: &str = "PodPresetConflict";

/// The annotation that records that preset `name` was applied (its value is the preset's
/// resourceVersion).
pub fn applied_annotation(name: &str) -> String {
    format!("{ANNOTATION_PREFIX}/podpreset-{name}")
}

/// A policy that adds runtime requirements to the pods its selector matches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodPreset {
    pub metadata: ObjectMeta,
    pub spec: Option<PodPresetSpec>,
}

/// What a preset injects, and into which pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPresetSpec {
    /// Pods whose labels match (an empty selector matches every pod of the namespace).
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// The wire form: apiVersion and kind are checked on the way in and always written out,
/// as k8s-openapi's own types do.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<PodPresetSpec>,
}

impl Serialize for PodPreset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire {
            api_version: Some(<Self as k8s_openapi::Resource>::API_VERSION.into()),
            kind: Some(<Self as k8s_openapi::Resource>::KIND.into()),
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PodPreset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        let want = [
            (w.api_version.as_deref(), "apiVersion", Self::API_VERSION_),
            (w.kind.as_deref(), "kind", Self::KIND_),
        ];
        for (have, field, expected) in want {
            if let Some(have) = have
                && have != expected
            {
                return Err(D::Error::custom(format!(
                    "{field}: expected {expected:?}, got {have:?}"
                )));
            }
        }
        Ok(PodPreset {
            metadata: w.metadata,
            spec: w.spec,
        })
    }
}

impl PodPreset {
    const API_VERSION_: &'static str = "settings.k8s.io/v1alpha1";
    const KIND_: &'static str = "PodPreset";
}

impl k8s_openapi::Resource for PodPreset {
    const API_VERSION: &'static str = Self::API_VERSION_;
    const GROUP: &'static str = "settings.k8s.io";
    const KIND: &'static str = Self::KIND_;
    const VERSION: &'static str = "v1alpha1";
    const URL_PATH_SEGMENT: &'static str = "podpresets";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for PodPreset {
    const LIST_KIND: &'static str = "PodPresetList";
}

impl k8s_openapi::Metadata for PodPreset {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|source| Error::Decode {
        kind: what.into(),
        source,
    })
}

/// A C-identifier-like env var name as upstream's `IsEnvVarName` allows:
/// `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn dns_label_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The settings API's validation of a preset (`ValidatePodPresetSpec`): a valid selector,
/// at least one of the four lists, named env vars and volumes, and mounts that name one of
/// the preset's own volumes at a unique path.
pub fn validate(obj: &Value) -> Result<()> {
    let preset: PodPreset = decode(obj, "PodPreset")?;
    let spec = preset.spec.unwrap_or_default();
    selector::validate(&spec.selector).map_err(|e| match e {
        Error::Invalid { field, reason } => {
            Error::invalid(format!("spec.selector.{field}"), reason)
        }
        other => other,
    })?;
    if spec.env.is_none()
        && spec.env_from.is_none()
        && spec.volumes.is_none()
        && spec.volume_mounts.is_none()
    {
        return Err(Error::invalid(
            "spec[volumes, env, envFrom, volumeMounts]",
            "Required value: must specify at least one",
        ));
    }
    let mut volumes = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if !dns_label_ok(&v.name) {
            return Err(Error::invalid(
                format!("spec.volumes[{i}].name"),
                format!("{:?}: must be a DNS-1123 label", v.name),
            ));
        }
        if volumes.contains(&v.name.as_str()) {
            return Err(Error::invalid(
                format!("spec.volumes[{i}].name"),
                format!("Duplicate value: {:?}", v.name),
            ));
        }
        volumes.push(v.name.as_str());
    }
    for (i, e) in spec.env.iter().flatten().enumerate() {
        if !env_name_ok(&e.name) {
            return Err(Error::invalid(
                format!("spec.env[{i}].name"),
                format!(
                    "Invalid value: {:?}: a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
                    e.name
                ),
            ));
        }
    }
    for (i, f) in spec.env_from.iter().flatten().enumerate() {
        let refs = usize::from(f.config_map_ref.is_some()) + usize::from(f.secret_ref.is_some());
        if refs != 1 {
            return Err(Error::invalid(
                format!("spec.envFrom[{i}]"),
                "must specify one of: `configMapRef` or `secretRef`",
            ));
        }
    }
    let mut paths = Vec::new();
    for (i, m) in spec.volume_mounts.iter().flatten().enumerate() {
        if m.name.is_empty() {
            return Err(Error::invalid(
                format!("spec.volumeMounts[{i}].name"),
                "Required value",
            ));
        }
        if !volumes.contains(&m.name.as_str()) {
            return Err(Error::invalid(
                format!("spec.volumeMounts[{i}].name"),
                format!("Not found: {:?}", m.name),
            ));
        }
        if m.mount_path.is_empty() {
            return Err(Error::invalid(
                format!("spec.volumeMounts[{i}].mountPath"),
                "Required value",
            ));
        }
        if paths.contains(&m.mount_path.as_str()) {
            return Err(Error::invalid(
                format!("spec.volumeMounts[{i}].mountPath"),
                format!("Invalid value: {:?}: must be unique", m.mount_path),
            ));
        }
        paths.push(m.mount_path.as_str());
    }
    Ok(())
}

/// What admission did to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// No preset applies (none matches, the pod opted out, or it is a mirror pod).
    Untouched,
    /// These presets were merged into the pod, in this order.
    Applied(Vec<String>),
    /// The matching presets conflict with the pod or each other: the pod is stored as it
    /// came, and a Warning event on it carries `message`.
    Conflict {
        presets: Vec<String>,
        message: String,
    },
}

/// Merges the matching presets among `presets` (every preset of the pod's namespace,
/// in name order) into `pod`, all or nothing, as upstream's plugin does on CREATE.
pub fn admit(pod: &mut Value, presets: &[Value]) -> Result<Admitted> {
    let annotations = pod["metadata"]["annotations"].as_object();
    let annotation = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str);
    if annotation(MIRROR_POD_ANNOTATION).is_some() || annotation(EXCLUDE_ANNOTATION) == Some("true")
    {
        return Ok(Admitted::Untouched);
    }
    let labels: Option<BTreeMap<String, String>> = match pod["metadata"].get("labels") {
        Some(l) if !l.is_null() => Some(decode(l, "Pod")?),
        _ => None,
    };
    let mut matching = Vec::new();
    for p in presets {
        let preset: PodPreset = decode(p, "PodPreset")?;
        let spec = preset.spec.clone().unwrap_or_default();
        // Presets are validated on write; a bad selector here fails the pod, as upstream's
        // "filtering pod presets failed".
        selector::validate(&spec.selector)?;
        if selector::matches(&spec.selector, labels.as_ref()) {
            matching.push(preset);
        }
    }
    if matching.is_empty() {
        return Ok(Admitted::Untouched);
    }
    let names: Vec<String> = matching
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    let mut spec: PodSpec = match pod.get("spec") {
        Some(s) if !s.is_null() => decode(s, "Pod")?,
        _ => PodSpec::default(),
    };
    match merge(&mut spec, &matching) {
        Err(conflicts) => Ok(Admitted::Conflict {
            presets: names,
            message: conflicts.join("; "),
        }),
        Ok(()) => {
            pod["spec"] = serde_json::to_value(&spec).map_err(|source| Error::Decode {
                kind: "Pod".into(),
                source,
            })?;
            let meta = pod["metadata"]
                .as_object_mut()
                .ok_or_else(|| Error::invalid("metadata", "must be an object"))?;
            let ann = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if !ann.is_object() {
                *ann = Value::Object(Default::default());
            }
            for p in &matching {
                ann[applied_annotation(p.metadata.name.as_deref().unwrap_or(""))] =
                    Value::from(p.metadata.resource_version.clone().unwrap_or_default());
            }
            Ok(Admitted::Applied(names))
        }
    }
}

/// Every conflict is collected (not only the first), so the event names them all.
type Conflicts = Vec<String>;

fn preset_name(p: &PodPreset) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

/// Merges into `spec`, or changes nothing and returns every conflict.
fn merge(spec: &mut PodSpec, presets: &[PodPreset]) -> std::result::Result<(), Conflicts> {
    let mut conflicts = Vec::new();
    let volumes = merge_volumes(spec.volumes.as_deref().unwrap_or_default(), presets)
        .unwrap_or_else(|mut c| {
            conflicts.append(&mut c);
            Vec::new()
        });
    let mut containers = Vec::new();
    let mut init_containers = Vec::new();
    // Upstream merges into init containers too (since v1.12), with the same checks.
    for (list, out) in [
        (&spec.containers, &mut containers),
        (
            spec.init_containers.as_ref().unwrap_or(&Vec::new()),
            &mut init_containers,
        ),
    ] {
        for c in list {
            match merge_container(c, presets) {
                Ok(c) => out.push(c),
                Err(mut c) => conflicts.append(&mut c),
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    spec.volumes = non_empty(volumes);
    spec.containers = containers;
    if spec.init_containers.is_some() {
        spec.init_containers = Some(init_containers);
    }
    Ok(())
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() { None } else { Some(v) }
}

fn merge_container(
    c: &Container,
    presets: &[PodPreset],
) -> std::result::Result<Container, Conflicts> {
    let env = merge_env(c, presets);
    let mounts = merge_mounts(c, presets);
    let (env, mounts) = match (env, mounts) {
        (Ok(e), Ok(m)) => (e, m),
        (e, m) => {
            let mut all = e.err().unwrap_or_default();
            all.extend(m.err().unwrap_or_default());
            return Err(all);
        }
    };
    // envFrom never conflicts: upstream appends every preset's sources after the
    // container's own (a later source wins a name clash when the container starts).
    let mut env_from = c.env_from.clone().unwrap_or_default();
    for p in presets {
        env_from.extend(
            p.spec
                .iter()
                .flat_map(|s| s.env_from.iter().flatten())
                .cloned(),
        );
    }
    let mut out = c.clone();
    out.env = non_empty(env);
    out.volume_mounts = non_empty(mounts);
    out.env_from = non_empty(env_from);
    Ok(out)
}

fn merge_env(c: &Container, presets: &[PodPreset]) -> std::result::Result<Vec<EnvVar>, Conflicts> {
    let mut merged = c.env.clone().unwrap_or_default();
    let mut conflicts = Vec::new();
    for p in presets {
        for v in p.spec.iter().flat_map(|s| s.env.iter().flatten()) {
            match merged.iter().find(|e| e.name == v.name) {
                None => merged.push(v.clone()),
                Some(found) if found == v => {}
                Some(_) => conflicts.push(format!(
                    "preset {}: env {:?} differs from the one container {:?} already has",
                    preset_name(p),
                    v.name,
                    c.name
                )),
            }
        }
    }
    if conflicts.is_empty() {
        Ok(merged)
    } else {
        Err(conflicts)
    }
}

/// Mounts conflict by name and, separately, by mount path, each with what the container
/// or an earlier preset has.
fn merge_mounts(
    c: &Container,
    presets: &[PodPreset],
) -> std::result::Result<Vec<VolumeMount>, Conflicts> {
    let mut merged = c.volume_mounts.clone().unwrap_or_default();
    // What each path is mounted from so far, including mounts not appended because their
    // name was taken (upstream keeps its by-name and by-path tables apart).
    let mut by_path: Vec<VolumeMount> = merged.clone();
    let mut conflicts = Vec::new();
    for p in presets {
        for m in p.spec.iter().flat_map(|s| s.volume_mounts.iter().flatten()) {
            match merged.iter().find(|x| x.name == m.name) {
                None => merged.push(m.clone()),
                Some(found) if found == m => {}
                Some(_) => conflicts.push(format!(
                    "preset {}: volume mount {:?} differs from the one container {:?} already has",
                    preset_name(p),
                    m.name,
                    c.name
                )),
            }
            match by_path.iter().find(|x| x.mount_path == m.mount_path) {
                None => by_path.push(m.clone()),
                Some(found) if found == m => {}
                Some(_) => conflicts.push(format!(
                    "preset {}: mount path {:?} is already used in container {:?}",
                    preset_name(p),
                    m.mount_path,
                    c.name
                )),
            }
        }
    }
    if conflicts.is_empty() {
        Ok(merged)
    } else {
        Err(conflicts)
    }
}

fn merge_volumes(
    volumes: &[Volume],
    presets: &[PodPreset],
) -> std::result::Result<Vec<Volume>, Conflicts> {
    let mut merged = volumes.to_vec();
    let mut conflicts = Vec::new();
    for p in presets {
        for v in p.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            match merged.iter().find(|x| x.name == v.name) {
                None => merged.push(v.clone()),
                Some(found) if found == v => {}
                Some(_) => conflicts.push(format!(
                    "preset {}: volume {:?} differs from the pod's volume of that name",
                    preset_name(p),
                    v.name
                )),
            }
        }
    }
    if conflicts.is_empty() {
        Ok(merged)
    } else {
        Err(conflicts)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn preset(name: &str, rv: &str, spec: Value) -> Value {
        json!({"apiVersion": "settings.k8s.io/v1alpha1", "kind": "PodPreset",
               "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
               "spec": spec})
    }

    fn pod(labels: Value, annotations: Value, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "namespace": "default", "labels": labels,
                            "annotations": annotations},
               "spec": spec})
    }

    fn app_pod() -> Value {
        pod(
            json!({"app": "web"}),
            json!({}),
            json!({
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "a", "image": "busybox",
                     "env": [{"name": "OWN", "value": "1"}],
                     "envFrom": [{"configMapRef": {"name": "own"}}],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                    {"name": "b", "image": "busybox"}
                ],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }),
        )
    }

    fn cache_preset(name: &str, rv: &str) -> Value {
        preset(
            name,
            rv,
            json!({
                "selector": {"matchLabels": {"app": "web"}},
                "env": [{"name": "CACHE", "value": "redis"}],
                "envFrom": [{"secretRef": {"name": "creds"}}],
                "volumes": [{"name": "cache", "emptyDir": {}}],
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]
            }),
        )
    }

    #[test]
    fn merges_into_every_container_and_init_container() {
        let mut p = app_pod();
        let out = admit(&mut p, &[cache_preset("cache", "7")]).unwrap();
        assert_eq!(out, Admitted::Applied(vec!["cache".into()]));
        assert_eq!(
            p["metadata"]["annotations"]["podpreset.admission.kubernetes.io/podpreset-cache"],
            "7"
        );
        let spec = &p["spec"];
        assert_eq!(
            spec["volumes"],
            json!([{"name": "data", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}])
        );
        assert_eq!(
            spec["containers"][0]["env"],
            json!([{"name": "OWN", "value": "1"}, {"name": "CACHE", "value": "redis"}])
        );
        assert_eq!(
            spec["containers"][0]["envFrom"],
            json!([{"configMapRef": {"name": "own"}}, {"secretRef": {"name": "creds"}}])
        );
        assert_eq!(
            spec["containers"][0]["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data"}, {"name": "cache", "mountPath": "/cache"}])
        );
        for c in [&spec["containers"][1], &spec["initContainers"][0]] {
            assert_eq!(c["env"], json!([{"name": "CACHE", "value": "redis"}]));
            assert_eq!(
                c["volumeMounts"],
                json!([{"name": "cache", "mountPath": "/cache"}])
            );
            assert_eq!(c["envFrom"], json!([{"secretRef": {"name": "creds"}}]));
        }
    }

    #[test]
    fn identical_entries_are_not_duplicated_and_presets_apply_in_order() {
        let mut p = app_pod();
        let same = preset(
            "same",
            "3",
            json!({"env": [{"name": "OWN", "value": "1"}],
                   "volumes": [{"name": "data", "emptyDir": {}}],
                   "volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
        );
        let out = admit(&mut p, &[cache_preset("cache", "7"), same]).unwrap();
        assert_eq!(out, Admitted::Applied(vec!["cache".into(), "same".into()]));
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(
            p["spec"]["containers"][0]["env"],
            json!([{"name": "OWN", "value": "1"}, {"name": "CACHE", "value": "redis"}])
        );
        // Container b had no env: the empty-selector preset adds OWN after CACHE.
        assert_eq!(
            p["spec"]["containers"][1]["env"],
            json!([{"name": "CACHE", "value": "redis"}, {"name": "OWN", "value": "1"}])
        );
        assert_eq!(
            p["metadata"]["annotations"]["podpreset.admission.kubernetes.io/podpreset-same"],
            "3"
        );
    }

    #[test]
    fn a_conflict_leaves_the_pod_unchanged_and_names_preset_and_field() {
        let cases = [
            (
                json!({"env": [{"name": "OWN", "value": "2"}]}),
                "preset bad: env \"OWN\" differs from the one container \"a\" already has",
            ),
            (
                json!({"volumes": [{"name": "data", "hostPath": {"path": "/tmp"}}]}),
                "preset bad: volume \"data\" differs from the pod's volume of that name",
            ),
            (
                json!({"volumes": [{"name": "other", "emptyDir": {}}],
                       "volumeMounts": [{"name": "other", "mountPath": "/data"}]}),
                "preset bad: mount path \"/data\" is already used in container \"a\"",
            ),
            (
                json!({"volumes": [{"name": "data", "emptyDir": {}}],
                       "volumeMounts": [{"name": "data", "mountPath": "/elsewhere"}]}),
                "preset bad: volume mount \"data\" differs from the one container \"a\" already has",
            ),
        ];
        for (spec, message) in cases {
            let mut p = app_pod();
            let before = p.clone();
            let out = admit(
                &mut p,
                &[cache_preset("cache", "7"), preset("bad", "9", spec)],
            );
            assert_eq!(
                out.unwrap(),
                Admitted::Conflict {
                    presets: vec!["cache".into(), "bad".into()],
                    message: message.into()
                }
            );
            assert_eq!(p, before);
        }
        // Two presets disagreeing with each other conflict too.
        let mut p = app_pod();
        let other = preset(
            "other",
            "8",
            json!({"env": [{"name": "CACHE", "value": "memcached"}]}),
        );
        let out = admit(&mut p, &[cache_preset("cache", "7"), other]).unwrap();
        assert!(
            matches!(&out, Admitted::Conflict { message, .. } if message.contains("preset other: env \"CACHE\"")),
            "{out:?}"
        );
    }

    #[test]
    fn excluded_mirror_and_unmatched_pods_are_untouched() {
        let presets = [cache_preset("cache", "7")];
        for annotations in [
            json!({EXCLUDE_ANNOTATION: "true"}),
            json!({MIRROR_POD_ANNOTATION: "abc"}),
        ] {
            let mut p = app_pod();
            p["metadata"]["annotations"] = annotations;
            let before = p.clone();
            assert_eq!(admit(&mut p, &presets).unwrap(), Admitted::Untouched);
            assert_eq!(p, before);
        }
        // Only the exact string "true" opts out.
        let mut p = app_pod();
        p["metadata"]["annotations"] = json!({EXCLUDE_ANNOTATION: "yes"});
        assert!(matches!(
            admit(&mut p, &presets).unwrap(),
            Admitted::Applied(_)
        ));
        let mut p = app_pod();
        p["metadata"]["labels"] = json!({"app": "db"});
        let before = p.clone();
        assert_eq!(admit(&mut p, &presets).unwrap(), Admitted::Untouched);
        assert_eq!(p, before);
    }

    #[test]
    fn validation_follows_the_settings_api() {
        let ok = cache_preset("cache", "");
        assert!(validate(&ok).is_ok());
        let bad = |spec: Value| validate(&preset("x", "", spec)).unwrap_err().to_string();
        assert!(bad(json!({"selector": {}})).contains("must specify at least one"));
        assert!(
            bad(json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}))
                .contains("spec.volumeMounts[0].name")
        );
        assert!(bad(json!({"env": [{"name": "1X"}]})).contains("spec.env[0].name"));
        assert!(
            bad(
                json!({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                       "env": [{"name": "A"}]})
            )
            .contains("spec.selector.matchExpressions[0].values")
        );
        assert!(
            bad(json!({"volumes": [{"name": "v", "emptyDir": {}}],
                       "volumeMounts": [{"name": "v", "mountPath": "/x"},
                                        {"name": "v", "mountPath": "/x"}]}))
            .contains("must be unique")
        );
    }

    #[test]
    fn typed_round_trip_checks_api_version_and_kind() {
        let v = cache_preset("cache", "1");
        let typed: PodPreset = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), v);
        let mut wrong = v;
        wrong["kind"] = json!("Pod");
        assert!(serde_json::from_value::<PodPreset>(wrong).is_err());
    }
}

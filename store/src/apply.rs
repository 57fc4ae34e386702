//! Multi-document YAML manifests: parse and validate every document, then apply all of
//! them in one transaction, or nothing.
//!
//! Apply is kubectl's client-side apply, done server-side in one transaction: the fields the
//! manifest sets replace the stored ones, fields an earlier apply set and this manifest no
//! longer has are removed (remembered in the `kubectl.kubernetes.io/last-applied-configuration`
//! annotation), and everything else — status, uid, finalizers and defaults the server or
//! controllers wrote — stays.

use serde::Deserialize as _;
use serde_json::{Map, Value, json};

use crate::admission;
use crate::embedded::EmbeddedStore;
use crate::embedded::ops::{self, Part};
use crate::error::{Error, Result};
use crate::kinds::{self, KindInfo};

/// Larger manifests are refused before parsing.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;
/// More documents than this in one apply are refused.
pub const MAX_DOCUMENTS: usize = 10_000;

pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One validated document.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// 1-based position of the document in its file.
    pub index: usize,
    pub kind: &'static KindInfo,
    /// "" for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The canonical JSON form (decoded into the typed struct and back).
    pub object: Value,
}

/// What applying one manifest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub kind: &'static KindInfo,
    pub namespace: String,
    pub name: String,
    pub outcome: Outcome,
    pub object: Value,
}

fn doc_error(index: usize, what: impl Into<String>, source: Error) -> Error {
    Error::Document {
        index,
        what: what.into(),
        source: Box::new(source),
    }
}

/// Parses every document of `text` and validates each into its typed object. Empty
/// documents are skipped. Namespaced objects without a namespace get `default_namespace`.
/// The first bad document is an `Error::Document` naming it and the field.
pub fn parse_manifests(text: &str, default_namespace: &str) -> Result<Vec<Manifest>> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(Error::invalid(
            "manifest",
            format!(
                "{} bytes is more than the {MAX_MANIFEST_BYTES} allowed",
                text.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        if index > MAX_DOCUMENTS {
            return Err(Error::invalid(
                "manifest",
                format!("more than {MAX_DOCUMENTS} documents"),
            ));
        }
        let yaml = yaml_serde::Value::deserialize(doc)
            .map_err(|e| doc_error(index, "unparsed", Error::Yaml(e.to_string())))?;
        if yaml.is_null() {
            continue;
        }
        let value: Value = serde_json::to_value(&yaml).map_err(|e| {
            doc_error(
                index,
                "unparsed",
                Error::Yaml(format!("not representable as JSON: {e}")),
            )
        })?;
        out.push(parse_document(index, value, default_namespace)?);
    }
    Ok(out)
}

fn parse_document(index: usize, mut value: Value, default_namespace: &str) -> Result<Manifest> {
    let Some(map) = value.as_object() else {
        return Err(doc_error(
            index,
            "unparsed",
            Error::invalid("", "a document must be a mapping"),
        ));
    };
    let str_field = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (api_version, kind) = (str_field("apiVersion"), str_field("kind"));
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let what = match (kind.is_empty(), name.is_empty()) {
        (true, _) => "no kind".to_string(),
        (false, true) => kind.clone(),
        (false, false) => format!("{kind} {name}"),
    };
    let fail = |e: Error| doc_error(index, what.clone(), e);
    if kind.is_empty() {
        return Err(fail(Error::invalid("kind", "Required value")));
    }
    if api_version.is_empty() {
        return Err(fail(Error::invalid("apiVersion", "Required value")));
    }
    let info = match kinds::by_api_version_kind(&api_version, &kind) {
        Some(info) => info,
        None => {
            return Err(fail(match kinds::by_kind(&kind) {
                Some(info) => Error::invalid(
                    "apiVersion",
                    format!(
                        "{kind} is served as {:?}, not {api_version:?}",
                        info.api_version()
                    ),
                ),
                None => Error::UnknownKind(format!("{api_version}/{kind}")),
            }));
        }
    };
    if name.is_empty() {
        return Err(fail(Error::invalid(
            "metadata.name",
            "Required value: apply needs a name (generateName cannot be applied)",
        )));
    }
    admission::validate_name(info.kind(), &name, false).map_err(&fail)?;
    let namespace = if info.namespaced() {
        let ns = value["metadata"]
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(default_namespace)
            .to_string();
        admission::validate_name("Namespace", &ns, false).map_err(|_| {
            fail(Error::invalid(
                "metadata.namespace",
                format!("{ns:?}: must be a DNS-1123 label"),
            ))
        })?;
        value["metadata"]["namespace"] = json!(ns);
        ns
    } else {
        // kubectl drops a namespace given for a cluster-scoped object.
        if let Some(m) = value["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        String::new()
    };
    let canonical = info.canonicalize(value).map_err(&fail)?;
    // Check what the server would check, on a defaulted copy, so a bad document is caught
    // before anything is written.
    let mut defaulted = canonical.clone();
    admission::apply_defaults(info.kind(), &mut defaulted);
    admission::validate_object(info.kind(), &defaulted).map_err(&fail)?;
    Ok(Manifest {
        index,
        kind: info,
        namespace,
        name,
        object: canonical,
    })
}

/// Sets in `live` what `new` sets, removes what `last` set and `new` no longer does, and
/// keeps the rest. Maps merge key by key; lists and scalars are replaced whole, except a
/// list the manifest did not change since the last apply: it stays as it is live, so what
/// admission added to it (a PodPreset's env, mounts and volumes) is not taken away again,
/// as kubectl's strategic merge keeps it.
fn three_way(
    live: &mut Map<String, Value>,
    last: Option<&Map<String, Value>>,
    new: &Map<String, Value>,
) {
    if let Some(last) = last {
        for k in last.keys() {
            if !new.contains_key(k) {
                live.remove(k);
            }
        }
    }
    for (k, nv) in new {
        let last_child = last.and_then(|l| l.get(k)).and_then(Value::as_object);
        match (live.get_mut(k), nv) {
            (Some(Value::Object(lv)), Value::Object(nm)) => three_way(lv, last_child, nm),
            (Some(Value::Array(_)), Value::Array(_)) if last.and_then(|l| l.get(k)) == Some(nv) => {
            }
            _ => {
                live.insert(k.clone(), nv.clone());
            }
        }
    }
}

/// What is remembered of a manifest for the next apply. Secret values are blanked: only
/// the keys matter for the merge, and the annotation must not copy the secret.
fn last_applied(kind: &str, manifest: &Value) -> Value {
    let mut v = manifest.clone();
    if let Some(ann) = v["metadata"]
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        ann.remove(LAST_APPLIED_ANNOTATION);
    }
    if kind == "Secret" {
        for field in ["data", "stringData"] {
            if let Some(m) = v.get_mut(field).and_then(Value::as_object_mut) {
                for val in m.values_mut() {
                    *val = json!("");
                }
            }
        }
    }
    v
}

/// The object to write when `manifest` is applied over `live`.
fn merged(kind: &str, live: &Value, manifest: &Value) -> Value {
    let last: Option<Value> = live["metadata"]["annotations"]
        .get(LAST_APPLIED_ANNOTATION)
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok());
    let mut out = live.clone();
    let empty = Map::new();
    let body = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut live_body = body(live);
    let last_body = last.as_ref().map(body);
    three_way(&mut live_body, last_body.as_ref(), &body(manifest));
    let o = out.as_object_mut().expect("stored objects are objects");
    o.retain(|k, _| matches!(k.as_str(), "metadata" | "status"));
    o.extend(live_body);
    for field in ["labels", "annotations"] {
        let new = manifest["metadata"]
            .get(field)
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let last_map = last
            .as_ref()
            .and_then(|l| l["metadata"].get(field))
            .and_then(Value::as_object);
        let meta = out["metadata"]
            .as_object_mut()
            .expect("stored objects have metadata");
        let mut live_map = meta
            .get(field)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        three_way(&mut live_map, last_map, new);
        if live_map.is_empty() {
            meta.remove(field);
        } else {
            meta.insert(field.into(), Value::Object(live_map));
        }
    }
    let remembered = last_applied(kind, manifest).to_string();
    let meta = out["metadata"]
        .as_object_mut()
        .expect("stored objects have metadata");
    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
    ann[LAST_APPLIED_ANNOTATION] = json!(remembered);
    out
}

impl EmbeddedStore {
    /// Applies every manifest in one transaction: all of them take effect, or (on the first
    /// error, which names its document) none.
    pub async fn apply(&self, mut manifests: Vec<Manifest>) -> Result<Vec<Applied>> {
        // Namespaces first, as kubectl (and kustomize, helm) order them, so one file can
        // hold a namespace and its content in any order.
        manifests.sort_by_key(|m| m.kind.kind() != "Namespace");
        self.blocking(move |inner| {
            inner.write(|tx| {
                let mut applied = Vec::with_capacity(manifests.len());
                for m in manifests {
                    let kind = m.kind.kind_ref;
                    let what = format!("{} {}", m.kind.kind(), m.name);
                    let fail = |e: Error| doc_error(m.index, what.clone(), e);
                    let (object, outcome) =
                        match tx.get(kind.kind, &m.namespace, &m.name).map_err(&fail)? {
                            None => {
                                let mut obj = m.object.clone();
                                let ann = obj["metadata"]
                                    .as_object_mut()
                                    .expect("validated manifests have metadata")
                                    .entry("annotations")
                                    .or_insert_with(|| json!({}));
                                ann[LAST_APPLIED_ANNOTATION] =
                                    json!(last_applied(kind.kind, &m.object).to_string());
                                (ops::create(tx, kind, obj).map_err(&fail)?, Outcome::Created)
                            }
                            Some(live) => {
                                let before = live["metadata"]["resourceVersion"].clone();
                                let new = merged(kind.kind, &live, &m.object);
                                let out = ops::update(tx, kind, new, Part::Main).map_err(&fail)?;
                                let outcome = if out["metadata"]["resourceVersion"] == before {
                                    Outcome::Unchanged
                                } else {
                                    Outcome::Configured
                                };
                                (out, outcome)
                            }
                        };
                    applied.push(Applied {
                        kind: m.kind,
                        namespace: m.namespace,
                        name: m.name,
                        outcome,
                        object,
                    });
                }
                Ok(applied)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_text(e: &Error) -> String {
        strata_report::chain(e)
    }

    const GOOD: &str = "
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: strata.csi.example.com
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
";

    #[test]
    fn parses_every_document() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {limits: {cpu: 1, memory: 1.5e9}}\n";
        let docs = parse_manifests(pod, "default").unwrap();
        let limits = &docs[0].object["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(limits["cpu"], "1", "bare numbers are quantities too");
        assert_eq!(limits["memory"], "1500000000.0");
        let docs = parse_manifests(GOOD, "apps").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].namespace, "");
        assert_eq!(docs[1].namespace, "apps");
        assert_eq!(docs[1].index, 2);
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let bad_quantity = format!(
            "{GOOD}apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data2}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 10Gx}}}}\n"
        );
        let e = parse_manifests(&bad_quantity, "default").unwrap_err();
        assert_eq!(
            err_text(&e),
            "document 3 (PersistentVolumeClaim data2): spec.resources.requests.storage: invalid quantity \"10Gx\""
        );
        let e = parse_manifests(
            "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",
            "default",
        )
        .unwrap_err();
        let text = err_text(&e);
        assert!(
            text.starts_with(
                "document 1 (Widget w): unknown kind \"v1/Widget\"; this store serves "
            ) && text.contains("apps/v1/StatefulSet")
                && text.contains("v1/Pod"),
            "{text}"
        );
        let e = parse_manifests(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n",
            "default",
        )
        .unwrap_err();
        assert!(
            err_text(&e).starts_with("document 1 (ConfigMap): metadata.name: Required value"),
            "{}",
            err_text(&e)
        );
        let e = parse_manifests(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\nspecc: {}\n",
            "default",
        )
        .unwrap_err();
        assert_eq!(
            err_text(&e),
            "document 1 (ConfigMap c): specc: unknown field"
        );
        let e = parse_manifests("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {accessModes: 3}\n", "default").unwrap_err();
        assert!(
            err_text(&e).starts_with(
                "document 1 (PersistentVolumeClaim c): spec.accessModes: invalid type"
            ),
            "{}",
            err_text(&e)
        );
        let e = parse_manifests("- a\n- b\n", "default").unwrap_err();
        assert_eq!(
            err_text(&e),
            "document 1 (unparsed): a document must be a mapping"
        );
        let e = parse_manifests("a: [1, 2\n", "default").unwrap_err();
        assert!(
            err_text(&e).starts_with("document 1 (unparsed): parsing YAML"),
            "{}",
            err_text(&e)
        );
        let e = parse_manifests(
            "apiVersion: apps/v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            "default",
        )
        .unwrap_err();
        assert!(
            err_text(&e).contains("apiVersion: ConfigMap is served as \"v1\""),
            "{}",
            err_text(&e)
        );
    }

    #[test]
    fn three_way_merge_keeps_server_fields_and_drops_removed_ones() {
        let live = json!({"kind": "X", "metadata": {"name": "a", "uid": "u", "finalizers": ["f"], "labels": {"keep": "1", "gone": "1"},
            "annotations": {LAST_APPLIED_ANNOTATION: json!({"spec": {"a": 1, "b": 2}, "metadata": {"labels": {"gone": "1"}}}).to_string(), "ctrl": "x"}},
            "spec": {"a": 1, "b": 2, "defaulted": "d"}, "status": {"phase": "Bound"}});
        let manifest = json!({"kind": "X", "metadata": {"name": "a"}, "spec": {"a": 5}});
        let out = merged("X", &live, &manifest);
        assert_eq!(out["spec"], json!({"a": 5, "defaulted": "d"}));
        assert_eq!(out["status"], json!({"phase": "Bound"}));
        assert_eq!(out["metadata"]["labels"], json!({"keep": "1"}));
        assert_eq!(out["metadata"]["annotations"]["ctrl"], "x");
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
    }
}

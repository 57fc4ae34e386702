//! Checks of the install manifests in `deploy/` (a dev-only crate; nothing ships it).
//!
//! Loads the objects of `deploy/kustomize` (the files its kustomization lists) and of the
//! Helm chart `deploy/helm/strata` rendered by [`template`], as JSON values, and models
//! what RBAC grants a ServiceAccount ([`rbac`]). The assertions live in `tests/`.

#![forbid(unsafe_code)]

pub mod rbac;
pub mod template;

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: rendering")]
    Template {
        path: PathBuf,
        #[source]
        source: template::Error,
    },
    #[error("{path}: {message}")]
    Kustomization { path: PathBuf, message: String },
}

/// `deploy/` of this repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/check has a parent")
        .to_path_buf()
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The documents of a multi-document YAML text, empty ones (comments only) dropped.
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<Value>, Error> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| Error::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The objects a kustomization builds, for the subset deploy/ uses: `resources` that are
/// files or other kustomization directories, `patches` (a `path` or an inline `patch`)
/// applied as strategic merge patches by [`strategic_merge`], and a `namespace` that is
/// only checked: every namespaced object must already name it, so the transformer would
/// change nothing. Anything else is refused rather than ignored.
pub fn kustomize(dir: &Path) -> Result<Vec<Value>, Error> {
    let kpath = dir.join("kustomization.yaml");
    let bad = |message: String| Error::Kustomization {
        path: kpath.clone(),
        message,
    };
    let k: Value = yaml_serde::from_str(&read(&kpath)?).map_err(|e| bad(e.to_string()))?;
    let allowed = ["apiVersion", "kind", "namespace", "resources", "patches"];
    if let Some(key) = k
        .as_object()
        .and_then(|obj| obj.keys().find(|key| !allowed.contains(&key.as_str())))
    {
        return Err(bad(format!("{key} is not understood by this check")));
    }
    let namespace = k["namespace"].as_str().map(str::to_string);
    let resources = k["resources"]
        .as_array()
        .ok_or_else(|| bad("resources must be a list".into()))?;
    let mut objects = Vec::new();
    for r in resources {
        let name = r
            .as_str()
            .ok_or_else(|| bad("resources must be paths".into()))?;
        let path = dir.join(name);
        if path.is_dir() {
            objects.extend(kustomize(&path)?);
        } else {
            objects.extend(parse_documents(&path, &read(&path)?)?);
        }
    }
    for p in k["patches"].as_array().into_iter().flatten() {
        let docs = match (p["path"].as_str(), p["patch"].as_str()) {
            (Some(file), None) => {
                let path = dir.join(file);
                parse_documents(&path, &read(&path)?)?
            }
            (None, Some(text)) => parse_documents(&kpath, text)?,
            _ => return Err(bad("a patch needs exactly one of path and patch".into())),
        };
        let [patch] = docs.as_slice() else {
            return Err(bad("a patch must be one object".into()));
        };
        let target = objects
            .iter()
            .position(|o| same_object(o, patch))
            .ok_or_else(|| bad(format!("patch {} matches no object", key(patch))))?;
        if patch["$patch"] == "delete" {
            objects.remove(target);
        } else {
            strategic_merge(&mut objects[target], patch);
        }
    }
    if let Some(ns) = namespace {
        for o in &objects {
            let have = o["metadata"]["namespace"].as_str();
            if is_namespaced(o) && have != Some(ns.as_str()) {
                return Err(bad(format!(
                    "{} {} has namespace {have:?}, the kustomization sets {ns:?}",
                    o["kind"], o["metadata"]["name"]
                )));
            }
        }
    }
    Ok(objects)
}

/// Whether a patch targets `o`: same kind and name, and same namespace when it names one.
fn same_object(o: &Value, patch: &Value) -> bool {
    o["kind"] == patch["kind"]
        && o["metadata"]["name"] == patch["metadata"]["name"]
        && (patch["metadata"]["namespace"].is_null()
            || o["metadata"]["namespace"] == patch["metadata"]["namespace"])
}

/// Applies a strategic merge patch, in the part of its semantics deploy/ uses: maps merge
/// key by key (`null` removes a key), lists of maps that all have a `name` merge by name
/// (an item with `$patch: delete` removes its namesake; new names are appended, as
/// kustomize does), and any other value replaces the old one.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if k == "$patch" {
                    continue;
                }
                if pv.is_null() {
                    t.remove(k);
                } else if let Some(tv) = t.get_mut(k) {
                    strategic_merge(tv, pv);
                } else {
                    t.insert(k.clone(), pv.clone());
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if by_name(t) && by_name(p) => {
            for item in p {
                let at = t.iter().position(|x| x["name"] == item["name"]);
                match (at, item["$patch"] == "delete") {
                    (Some(i), true) => {
                        t.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic_merge(&mut t[i], item),
                    (None, false) => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn by_name(list: &[Value]) -> bool {
    list.iter().all(|v| v["name"].is_string())
}

/// Whether objects of this kind live in a namespace (for the kinds deploy/ uses).
pub fn is_namespaced(o: &Value) -> bool {
    !matches!(
        o["kind"].as_str(),
        Some(
            "Namespace"
                | "CSIDriver"
                | "StorageClass"
                | "VolumeSnapshotClass"
                | "ClusterRole"
                | "ClusterRoleBinding"
        )
    )
}

/// The chart's `values.yaml`.
pub fn chart_values(chart: &Path) -> Result<Value, Error> {
    let path = chart.join("values.yaml");
    yaml_serde::from_str(&read(&path)?).map_err(|e| Error::Yaml {
        path,
        message: e.to_string(),
    })
}

/// Every `templates/*.yaml` of the chart rendered with `values` into `namespace`, in
/// file-name order (as `helm template` orders same-kind objects).
pub fn helm(chart: &Path, values: &Value, namespace: &str) -> Result<Vec<Value>, Error> {
    let dir = chart.join("templates");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| Error::Read {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let ctx = template::Context { values, namespace };
    let mut objects = Vec::new();
    for path in files {
        let text = template::render(&read(&path)?, &ctx).map_err(|source| Error::Template {
            path: path.clone(),
            source,
        })?;
        objects.extend(parse_documents(&path, &text)?);
    }
    Ok(objects)
}

/// `Kind/namespace/name`, a key to compare object sets by.
pub fn key(o: &Value) -> String {
    format!(
        "{}/{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

//! A container's environment from its spec: `envFrom` first, then `env` (later names
//! win, `$(NAME)` in a value expanded), reading ConfigMaps and Secrets from the store at
//! start, as the kubelet does.

use std::collections::BTreeMap;

use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use strata_volumes::expansion;

/// Why an environment could not be built (the CreateContainerConfigError message).
pub type EnvError = String;

async fn config_map<S: Store>(
    store: &S,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    match store.get::<ConfigMap>(ns, name).await {
        Ok(cm) => {
            let mut data = cm.data.unwrap_or_default();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            Ok(Some(data))
        }
        Err(strata_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("reading configmap {ns}/{name}: {e}")),
    }
}

async fn secret<S: Store>(
    store: &S,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    match store.get::<Secret>(ns, name).await {
        Ok(s) => {
            let mut data: BTreeMap<String, String> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            data.extend(s.string_data.unwrap_or_default());
            Ok(Some(data))
        }
        Err(strata_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("reading secret {ns}/{name}: {e}")),
    }
}

fn field(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let v = match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        _ => {
            if let Some(key) = path
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                m.labels.as_ref().and_then(|l| l.get(key).cloned())
            } else if let Some(key) = path
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                m.annotations.as_ref().and_then(|l| l.get(key).cloned())
            } else {
                return Err(format!("fieldRef {path:?} is not supported"));
            }
        }
    };
    Ok(v.unwrap_or_default())
}

/// One key of a ConfigMap's or Secret's data; None when missing and optional.
fn key_of(
    data: Option<BTreeMap<String, String>>,
    what: &str,
    ns: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
    env: &str,
) -> Result<Option<String>, EnvError> {
    match data.as_ref().and_then(|d| d.get(key)) {
        Some(v) => Ok(Some(v.clone())),
        None if optional == Some(true) => Ok(None),
        None => Err(format!(
            "key {key:?} of {what} {ns:?}/{name:?} not found (env {env})"
        )),
    }
}

/// `NAME=value` pairs for container `c`.
pub async fn resolve<S: Store>(
    store: &S,
    pod: &Pod,
    c: &Container,
) -> Result<Vec<String>, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out: Vec<(String, String)> = Vec::new();
    fn set(out: &mut Vec<(String, String)>, name: String, value: String) {
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, name, optional) = if let Some(r) = &from.config_map_ref {
            let d = config_map(store, ns, &r.name).await?;
            (d, "configmap", &r.name, r.optional == Some(true))
        } else if let Some(r) = &from.secret_ref {
            let d = secret(store, ns, &r.name).await?;
            (d, "secret", &r.name, r.optional == Some(true))
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut out, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => return Err(format!("{what} {ns:?}/{name:?} not found")),
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else {
            // `$(NAME)` in a value refers to envFrom's names and to the entries above
            // this one, as the kubelet expands them; valueFrom values are not expanded.
            let value = expansion::expand(e.value.as_deref().unwrap_or_default(), |name| {
                out.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
            });
            set(&mut out, e.name.clone(), value);
            continue;
        };
        let value = if let Some(f) = &from.field_ref {
            Some(field(pod, &f.field_path)?)
        } else if let Some(r) = &from.config_map_key_ref {
            let d = config_map(store, ns, &r.name).await?;
            key_of(d, "configmap", ns, &r.name, &r.key, r.optional, &e.name)?
        } else if let Some(r) = &from.secret_key_ref {
            let d = secret(store, ns, &r.name).await?;
            key_of(d, "secret", ns, &r.name, &r.key, r.optional, &e.name)?
        } else {
            return Err(format!("env {}: this valueFrom is not supported", e.name));
        };
        if let Some(v) = value {
            set(&mut out, e.name.clone(), v);
        }
    }
    Ok(out.into_iter().map(|(n, v)| format!("{n}={v}")).collect())
}

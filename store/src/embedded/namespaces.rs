//! Namespaces as the API server keeps them (k8s-semantics §7): the namespace strategy
//! (phase, the `kubernetes` finalizer in `spec.finalizers`, the name label), the
//! NamespaceLifecycle admission plugin (no new content in a missing or terminating
//! namespace; `default`, `kube-system` and `kube-public` may not be deleted) and the
//! two-step deletion (Terminating first, removed once `spec.finalizers` is empty). The
//! namespace controller that empties a terminating namespace lives with the other control
//! loops (strata-provisioner).

use serde_json::{Value, json};

use super::db::{Change, Tx};
use crate::error::{Error, Result};
use crate::kinds::KindRef;
use crate::time;

/// The namespaces that exist from the start and may never be deleted (the API server's
/// immortal namespaces).
pub const INITIAL: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The finalizer the namespace controller removes once a namespace is empty.
pub const FINALIZER_KUBERNETES: &str = "kubernetes";

/// The label every namespace carries with its own name.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub(crate) fn spec_finalizers(ns: &Value) -> Vec<&str> {
    ns["spec"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn terminating(ns: &Value) -> bool {
    ns["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|t| !t.is_null())
        || ns["status"]["phase"].as_str() == Some("Terminating")
}

/// What the namespace strategy sets on create: phase Active, the `kubernetes` finalizer
/// (added to any the caller named) and the name label. Runs once the name is final.
pub(crate) fn prepare_create(obj: &mut Value) {
    obj["status"] = json!({"phase": "Active"});
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let list = obj["spec"]
        .as_object_mut()
        .expect("just made an object")
        .entry("finalizers")
        .or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().expect("just made an array");
    if !list
        .iter()
        .any(|f| f.as_str() == Some(FINALIZER_KUBERNETES))
    {
        list.push(json!(FINALIZER_KUBERNETES));
    }
    set_name_label(obj);
}

/// The name label is forced on every write of the main resource, as upstream's defaulting
/// does (a user cannot remove or change it).
pub(crate) fn set_name_label(obj: &mut Value) {
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return;
    };
    if name.is_empty() {
        return;
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("identity made metadata");
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels[NAME_LABEL] = json!(name);
}

/// NamespaceLifecycle on create: a namespaced object needs its namespace to exist and not
/// be terminating.
pub(crate) fn admit_create(tx: &Tx<'_>, kind: KindRef, ns: &str, name: &str) -> Result<()> {
    if !kind.namespaced {
        return Ok(());
    }
    let Some(namespace) = tx.get("Namespace", "", ns)? else {
        return Err(Error::NamespaceNotFound {
            namespace: ns.to_string(),
        });
    };
    if terminating(&namespace) {
        return Err(Error::Forbidden {
            resource: plural(kind),
            name: name.to_string(),
            reason: format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        });
    }
    Ok(())
}

fn plural(kind: KindRef) -> String {
    crate::kinds::registered(kind)
        .map(|k| k.plural.to_string())
        .unwrap_or_else(|| format!("{}s", kind.kind.to_ascii_lowercase()))
}

/// Whether an update may remove this object: a namespace also waits for its
/// `spec.finalizers`.
pub(crate) fn held_by_spec_finalizers(kind: &str, obj: &Value) -> bool {
    kind == "Namespace" && !spec_finalizers(obj).is_empty()
}

/// What a delete of a namespace does: refused for the initial ones; the first delete marks
/// it Terminating (deletionTimestamp, phase); it is removed only when neither
/// `spec.finalizers` nor `metadata.finalizers` hold it. Returns the object and whether
/// it may be removed now.
pub(crate) fn delete(tx: &mut Tx<'_>, name: &str, mut obj: Value) -> Result<(Value, bool)> {
    if INITIAL.contains(&name) {
        return Err(Error::Forbidden {
            resource: "namespaces".into(),
            name: name.to_string(),
            reason: "this namespace may not be deleted".into(),
        });
    }
    let held = !spec_finalizers(&obj).is_empty()
        || obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
    if !held {
        return Ok((obj, true));
    }
    if obj["metadata"]
        .get("deletionTimestamp")
        .is_none_or(Value::is_null)
    {
        obj["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if !obj["status"].is_object() {
            obj["status"] = json!({});
        }
        obj["status"]["phase"] = json!("Terminating");
        tx.put("Namespace", "", name, &mut obj, Change::Modified)?;
    }
    Ok((obj, false))
}

/// The `finalize` subresource: only `spec.finalizers` is taken from `obj`.
pub(crate) fn finalize(old: &Value, obj: &Value) -> Result<Value> {
    let mut new = old.clone();
    let list = obj["spec"]["finalizers"].clone();
    let list = match list {
        Value::Null => json!([]),
        Value::Array(a) => {
            for (i, f) in a.iter().enumerate() {
                let ok = f.as_str().is_some_and(|s| !s.is_empty());
                if !ok {
                    return Err(Error::invalid(
                        format!("spec.finalizers[{i}]"),
                        "Invalid value: must be a non-empty string",
                    ));
                }
            }
            Value::Array(a)
        }
        _ => return Err(Error::invalid("spec.finalizers", "must be a list")),
    };
    if !new["spec"].is_object() {
        new["spec"] = json!({});
    }
    if list.as_array().is_some_and(|a| a.is_empty()) {
        new["spec"]
            .as_object_mut()
            .expect("made above")
            .remove("finalizers");
    } else {
        new["spec"]["finalizers"] = list;
    }
    Ok(new)
}

/// Migration to format 3: the initial namespaces, and one for every namespace that already
/// holds objects (written before namespaces were objects), so nothing is left in a
/// namespace `get ns` does not show. Idempotent.
pub(crate) fn create_missing(tx: &mut Tx<'_>) -> Result<Vec<String>> {
    let mut wanted: Vec<String> = INITIAL.iter().map(|s| s.to_string()).collect();
    for ns in tx.namespaces_in_use()? {
        if !wanted.contains(&ns) {
            wanted.push(ns);
        }
    }
    let kind = KindRef::of::<k8s_openapi::api::core::v1::Namespace>();
    let mut created = Vec::new();
    for ns in wanted {
        if tx.get("Namespace", "", &ns)?.is_some() {
            continue;
        }
        super::ops::create(
            tx,
            kind,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )?;
        created.push(ns);
    }
    Ok(created)
}

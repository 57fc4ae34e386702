//! What the API server does to an object before storing it: defaulting, the admission
//! plugins that matter for storage (DefaultStorageClass, StorageObjectInUseProtection),
//! name/label/quantity validation and the immutability rules of updates.
//!
//! Everything works on the JSON form so that typed and manifest writes share one path.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::quantity;

pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION_FINALIZER: &str = "kubernetes.io/pv-protection";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
pub const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";
pub const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// Kinds whose names must be DNS-1123 labels rather than subdomains: StatefulSet names
/// become part of pod hostnames (apps validation `ValidateStatefulSetName`).
fn name_is_label(kind: &str) -> bool {
    matches!(kind, "StatefulSet" | "Namespace")
}

/// Validates `metadata.name` for `kind` (DNS-1123 subdomain, or label where upstream asks
/// for one). `prefix` allows the trailing '-' of a generateName.
pub fn validate_name(kind: &str, name: &str, prefix: bool) -> Result<()> {
    let field = if prefix {
        "metadata.generateName"
    } else {
        "metadata.name"
    };
    let checked = if prefix {
        name.strip_suffix('-').unwrap_or(name)
    } else {
        name
    };
    let reason = if name_is_label(kind) {
        dns_label_problem(checked, 63)
    } else {
        dns_subdomain_problem(checked)
    };
    match reason {
        Some(reason) => Err(Error::invalid(field, format!("{name:?}: {reason}"))),
        None => Ok(()),
    }
}

fn dns_label_problem(s: &str, max: usize) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > max {
        return Some(format!("must be no more than {max} characters"));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_chars || !ends_ok(s.as_bytes()[0]) || !ends_ok(s.as_bytes()[s.len() - 1]) {
        return Some(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into(),
        );
    }
    None
}

fn dns_subdomain_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if s.split('.')
        .any(|part| dns_label_problem(part, 253).is_some())
    {
        return Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into(),
        );
    }
    None
}

fn qualified_name_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && let Some(r) = dns_subdomain_problem(p)
    {
        return Some(format!("prefix part {r}"));
    }
    if name.is_empty() || name.len() > 63 {
        return Some("name part must be non-empty and no more than 63 characters".into());
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let b = name.as_bytes();
    if !name
        .bytes()
        .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        || !alnum(b[0])
        || !alnum(b[b.len() - 1])
    {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    None
}

fn label_value_problem(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let b = v.as_bytes();
    if !v
        .bytes()
        .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        || !alnum(b[0])
        || !alnum(b[b.len() - 1])
    {
        return Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    None
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

/// The object at `path`, created (as `{}`) where missing.
fn obj_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for k in path {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("just made an object")
            .entry(k.to_string())
            .or_insert_with(|| json!({}));
        if cur.is_null() {
            *cur = json!({});
        }
    }
    if !cur.is_object() {
        *cur = json!({});
    }
    cur.as_object_mut().expect("just made an object")
}

fn set_default(v: &mut Value, path: &[&str], key: &str, value: Value) {
    let map = obj_mut(v, path);
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// API-server defaulting for the kinds we store; applied on every write of the main resource.
pub fn apply_defaults(kind: &str, obj: &mut Value) {
    match kind {
        "PersistentVolume" => {
            set_default(
                obj,
                &["spec"],
                "persistentVolumeReclaimPolicy",
                json!("Retain"),
            );
            set_default(obj, &["spec"], "volumeMode", json!("Filesystem"));
        }
        "PersistentVolumeClaim" => {
            set_default(obj, &["spec"], "volumeMode", json!("Filesystem"));
        }
        "StorageClass" => {
            set_default(obj, &[], "reclaimPolicy", json!("Delete"));
            set_default(obj, &[], "volumeBindingMode", json!("Immediate"));
        }
        "StatefulSet" => {
            set_default(obj, &["spec"], "replicas", json!(1));
            set_default(obj, &["spec"], "podManagementPolicy", json!("OrderedReady"));
            set_default(obj, &["spec"], "revisionHistoryLimit", json!(10));
            set_default(
                obj,
                &["spec", "updateStrategy"],
                "type",
                json!("RollingUpdate"),
            );
            set_default(
                obj,
                &["spec", "persistentVolumeClaimRetentionPolicy"],
                "whenDeleted",
                json!("Retain"),
            );
            set_default(
                obj,
                &["spec", "persistentVolumeClaimRetentionPolicy"],
                "whenScaled",
                json!("Retain"),
            );
            if let Some(Value::Array(templates)) = obj
                .get_mut("spec")
                .and_then(|s| s.get_mut("volumeClaimTemplates"))
            {
                for t in templates {
                    set_default(t, &["spec"], "volumeMode", json!("Filesystem"));
                }
            }
        }
        "Secret" => {
            set_default(obj, &[], "type", json!("Opaque"));
            // The API server folds the write-only stringData into data.
            if let Some(Value::Object(string_data)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                let data = obj_mut(obj, &["data"]);
                for (k, v) in string_data {
                    let s = v.as_str().unwrap_or_default();
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(s)),
                    );
                }
            }
        }
        _ => {}
    }
}

/// Status fields the API server sets when an object is created.
pub fn apply_create_status_defaults(kind: &str, obj: &mut Value) {
    match kind {
        "PersistentVolume" | "PersistentVolumeClaim" => {
            set_default(obj, &["status"], "phase", json!("Pending"));
        }
        _ => {}
    }
}

/// Whether a StorageClass is marked default (the exact string "true", GA or beta key).
pub fn is_default_class(sc: &Value) -> bool {
    [DEFAULT_CLASS_ANNOTATION, BETA_DEFAULT_CLASS_ANNOTATION]
        .iter()
        .any(|k| str_at(sc, &["metadata", "annotations", k]) == Some("true"))
}

/// The default class among `classes`: the newest creationTimestamp wins, ties by name.
pub fn pick_default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|sc| is_default_class(sc))
        .map(|sc| {
            (
                str_at(sc, &["metadata", "creationTimestamp"]).unwrap_or(""),
                str_at(sc, &["metadata", "name"]).unwrap_or(""),
            )
        })
        // RFC 3339 UTC seconds compare correctly as strings. Newest first, then name ascending.
        .max_by(|a, b| a.0.cmp(b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name.to_string())
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let meta = obj_mut(obj, &["metadata"]);
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let arr = list.as_array_mut().expect("just made an array");
    if !arr.iter().any(|f| f.as_str() == Some(finalizer)) {
        arr.push(json!(finalizer));
    }
}

/// Admission plugins on create. `storage_classes` is asked only when a PVC needs the
/// default class.
pub fn admit_create(
    kind: &str,
    obj: &mut Value,
    storage_classes: impl FnOnce() -> Result<Vec<Value>>,
) -> Result<()> {
    match kind {
        "PersistentVolumeClaim" => {
            // DefaultStorageClass: only a nil class is defaulted; "" means "no class".
            let has_class = get(obj, &["spec", "storageClassName"]).is_some_and(|v| !v.is_null())
                || get(
                    obj,
                    &["metadata", "annotations", BETA_STORAGE_CLASS_ANNOTATION],
                )
                .is_some();
            if !has_class && let Some(class) = pick_default_class(&storage_classes()?) {
                obj_mut(obj, &["spec"]).insert("storageClassName".into(), json!(class));
            }
            add_finalizer(obj, PVC_PROTECTION_FINALIZER);
        }
        "PersistentVolume" => add_finalizer(obj, PV_PROTECTION_FINALIZER),
        _ => {}
    }
    Ok(())
}

/// The API accepts a bare number where a quantity goes (`cpu: 1`, `storage: 10`); the typed
/// structs want strings, so numbers in quantity positions become their decimal text.
pub fn quantities_to_strings(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if QUANTITY_MAPS.contains(&k.as_str())
                    && let Value::Object(q) = child
                {
                    for val in q.values_mut() {
                        if let Value::Number(n) = val {
                            *val = Value::String(n.to_string());
                        }
                    }
                } else if k == "sizeLimit"
                    && let Value::Number(n) = child
                {
                    *child = Value::String(n.to_string());
                } else {
                    quantities_to_strings(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(quantities_to_strings),
        _ => {}
    }
}

const QUANTITY_MAPS: &[&str] = &[
    "capacity",
    "requests",
    "limits",
    "allocatedResources",
    "overhead",
    "hard",
    "used",
];

/// Every resource quantity in the object must parse: maps named like `requests` or
/// `capacity`, and `sizeLimit`.
fn validate_quantities(v: &Value, path: &mut Vec<String>) -> Result<()> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(k.clone());
                if QUANTITY_MAPS.contains(&k.as_str())
                    && let Value::Object(q) = child
                {
                    for (name, val) in q {
                        let s = match val {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => String::new(),
                        };
                        if let Err(e) = quantity::parse(&s) {
                            return Err(Error::invalid(
                                format!("{}.{name}", path.join(".")),
                                format!("invalid quantity {:?}", e.input),
                            ));
                        }
                    }
                } else if k == "sizeLimit" {
                    if let Some(s) = child.as_str()
                        && quantity::parse(s).is_err()
                    {
                        return Err(Error::invalid(
                            path.join("."),
                            format!("invalid quantity {s:?}"),
                        ));
                    }
                } else {
                    validate_quantities(child, path)?;
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let last = path.pop().unwrap_or_default();
                path.push(format!("{last}[{i}]"));
                validate_quantities(child, path)?;
                path.pop();
                path.push(last);
            }
        }
        _ => {}
    }
    Ok(())
}

fn quantity_at(v: &Value, path: &[&str]) -> Option<quantity::Quantity> {
    match get(v, path)? {
        Value::String(s) => quantity::parse(s).ok(),
        Value::Number(n) => quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

fn one_of(v: &Value, path: &[&str], allowed: &[&str]) -> Result<()> {
    if let Some(s) = get(v, path).and_then(Value::as_str)
        && !allowed.contains(&s)
    {
        return Err(Error::invalid(
            path.join("."),
            format!(
                "Unsupported value: {s:?}: supported values: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

fn validate_access_modes(v: &Value, spec_path: &[&str], required: bool) -> Result<()> {
    let mut path: Vec<&str> = spec_path.to_vec();
    path.push("accessModes");
    let field = path.join(".");
    let modes: Vec<&str> = get(v, &path)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if required && modes.is_empty() {
        return Err(Error::invalid(
            field,
            "Required value: at least 1 access mode is required",
        ));
    }
    for m in &modes {
        if ![
            "ReadWriteOnce",
            "ReadOnlyMany",
            "ReadWriteMany",
            "ReadWriteOncePod",
        ]
        .contains(m)
        {
            return Err(Error::invalid(field, format!("Unsupported value: {m:?}")));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.len() > 1 {
        return Err(Error::invalid(
            field,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    Ok(())
}

fn validate_claim_spec(v: &Value, spec: &[&str]) -> Result<()> {
    validate_access_modes(v, spec, true)?;
    let mut storage: Vec<&str> = spec.to_vec();
    storage.extend(["resources", "requests", "storage"]);
    match quantity_at(v, &storage) {
        None => Err(Error::invalid(storage.join("."), "Required value")),
        Some(q) if q.is_negative() || q.is_zero() => Err(Error::invalid(
            storage.join("."),
            "must be greater than zero",
        )),
        Some(_) => {
            let mut mode = spec.to_vec();
            mode.push("volumeMode");
            one_of(v, &mode, &["Filesystem", "Block"])
        }
    }
}

fn validate_metadata(kind: &str, v: &Value) -> Result<()> {
    let meta = v.get("metadata").unwrap_or(&Value::Null);
    if let Some(Value::Object(labels)) = meta.get("labels") {
        for (k, val) in labels {
            if let Some(r) = qualified_name_problem(k) {
                return Err(Error::invalid("metadata.labels", format!("{k:?}: {r}")));
            }
            match val.as_str() {
                Some(s) => {
                    if let Some(r) = label_value_problem(s) {
                        return Err(Error::invalid(
                            format!("metadata.labels.{k}"),
                            format!("{s:?}: {r}"),
                        ));
                    }
                }
                None => {
                    return Err(Error::invalid(
                        format!("metadata.labels.{k}"),
                        "must be a string",
                    ));
                }
            }
        }
    }
    if let Some(Value::Object(ann)) = meta.get("annotations") {
        let mut total = 0;
        for (k, val) in ann {
            if let Some(r) = qualified_name_problem(k) {
                return Err(Error::invalid(
                    "metadata.annotations",
                    format!("{k:?}: {r}"),
                ));
            }
            total += k.len() + val.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            return Err(Error::invalid(
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
            ));
        }
    }
    if let Some(Value::Array(fins)) = meta.get("finalizers") {
        for f in fins {
            let f = f.as_str().unwrap_or("");
            if let Some(r) = qualified_name_problem(f) {
                return Err(Error::invalid("metadata.finalizers", format!("{f:?}: {r}")));
            }
        }
    }
    let _ = kind;
    Ok(())
}

/// Validates a whole object about to be stored (after defaulting).
pub fn validate_object(kind: &str, v: &Value) -> Result<()> {
    validate_metadata(kind, v)?;
    validate_quantities(v, &mut Vec::new())?;
    match kind {
        "PersistentVolumeClaim" => validate_claim_spec(v, &["spec"])?,
        "PersistentVolume" => {
            validate_access_modes(v, &["spec"], true)?;
            if quantity_at(v, &["spec", "capacity", "storage"]).is_none() {
                return Err(Error::invalid("spec.capacity.storage", "Required value"));
            }
            one_of(
                v,
                &["spec", "persistentVolumeReclaimPolicy"],
                &["Retain", "Delete", "Recycle"],
            )?;
            one_of(v, &["spec", "volumeMode"], &["Filesystem", "Block"])?;
        }
        "StorageClass" => {
            match str_at(v, &["provisioner"]) {
                None | Some("") => return Err(Error::invalid("provisioner", "Required value")),
                Some(p)
                    if qualified_name_problem(p).is_some()
                        && dns_subdomain_problem(p).is_some() =>
                {
                    return Err(Error::invalid(
                        "provisioner",
                        format!("{p:?}: not a qualified name"),
                    ));
                }
                Some(_) => {}
            }
            one_of(v, &["reclaimPolicy"], &["Delete", "Retain"])?;
            one_of(
                v,
                &["volumeBindingMode"],
                &["Immediate", "WaitForFirstConsumer"],
            )?;
            if let Some(Value::Object(p)) = v.get("parameters")
                && p.len() > 512
            {
                return Err(Error::invalid(
                    "parameters",
                    "Too many: must have at most 512 items",
                ));
            }
        }
        "PodPreset" => crate::podpreset::validate(v)?,
        "VolumeSnapshotClass" | "VolumeSnapshot" | "VolumeSnapshotContent" => {
            validate_snapshot_kind(kind, v)?
        }
        "StatefulSet" => {
            if let Some(Value::Array(templates)) = get(v, &["spec", "volumeClaimTemplates"]) {
                for (i, t) in templates.iter().enumerate() {
                    let name = str_at(t, &["metadata", "name"]).unwrap_or("");
                    if let Some(r) = dns_subdomain_problem(name) {
                        return Err(Error::invalid(
                            format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                            format!("{name:?}: {r}"),
                        ));
                    }
                    validate_claim_spec(t, &["spec"]).map_err(|e| match e {
                        Error::Invalid { field, reason } => Error::invalid(
                            format!("spec.volumeClaimTemplates[{i}].{field}"),
                            reason,
                        ),
                        other => other,
                    })?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The snapshot CRDs' schema rules (external-snapshotter `client/config/crd`): required
/// fields, the deletion policy enum, and exactly one source.
fn validate_snapshot_kind(kind: &str, v: &Value) -> Result<()> {
    let required = |path: &[&str]| match str_at(v, path) {
        None | Some("") => Err(Error::invalid(path.join("."), "Required value")),
        Some(_) => Ok(()),
    };
    let exactly_one = |path: &[&str], a: &str, b: &str| {
        let set = |f: &str| get(v, &[path, &[f][..]].concat()).is_some_and(|x| !x.is_null());
        if set(a) == set(b) {
            return Err(Error::invalid(
                path.join("."),
                format!("Invalid value: exactly one of {a} and {b} must be set"),
            ));
        }
        Ok(())
    };
    let (policy, driver): (&[&str], &[&str]) = match kind {
        "VolumeSnapshotClass" => (&["deletionPolicy"], &["driver"]),
        "VolumeSnapshotContent" => (&["spec", "deletionPolicy"], &["spec", "driver"]),
        _ => (&[], &[]),
    };
    if !policy.is_empty() {
        required(driver)?;
        required(policy)?;
        one_of(v, policy, &["Delete", "Retain"])?;
    }
    match kind {
        "VolumeSnapshot" => {
            exactly_one(
                &["spec", "source"],
                "persistentVolumeClaimName",
                "volumeSnapshotContentName",
            )?;
            if str_at(v, &["spec", "volumeSnapshotClassName"]) == Some("") {
                return Err(Error::invalid(
                    "spec.volumeSnapshotClassName",
                    "Invalid value: must not be the empty string when set",
                ));
            }
        }
        "VolumeSnapshotContent" => {
            exactly_one(&["spec", "source"], "volumeHandle", "snapshotHandle")?;
            if str_at(v, &["spec", "volumeSnapshotRef", "name"]).is_none_or(str::is_empty)
                || str_at(v, &["spec", "volumeSnapshotRef", "namespace"]).is_none_or(str::is_empty)
            {
                return Err(Error::invalid(
                    "spec.volumeSnapshotRef",
                    "Invalid value: both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set",
                ));
            }
            one_of(v, &["spec", "sourceVolumeMode"], &["Filesystem", "Block"])?;
        }
        _ => {}
    }
    Ok(())
}

fn forbidden_if_changed(old: &Value, new: &Value, path: &[&str], reason: &str) -> Result<()> {
    if get(old, path) != get(new, path) {
        return Err(Error::invalid(
            path.join("."),
            format!("Forbidden: {reason}"),
        ));
    }
    Ok(())
}

fn finalizers(v: &Value) -> Vec<&str> {
    get(v, &["metadata", "finalizers"])
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Update rules: immutable fields and what may change once an object is being deleted.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Result<()> {
    if get(old, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null()) {
        let before = finalizers(old);
        if let Some(f) = finalizers(new).iter().find(|f| !before.contains(f)) {
            return Err(Error::invalid(
                "metadata.finalizers",
                format!(
                    "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizer {f:?}"
                ),
            ));
        }
    }
    match kind {
        "StorageClass" => {
            for f in [
                "provisioner",
                "parameters",
                "reclaimPolicy",
                "volumeBindingMode",
            ] {
                forbidden_if_changed(old, new, &[f], &format!("updates to {f} are forbidden."))?;
            }
        }
        "ConfigMap" | "Secret" => {
            if get(old, &["immutable"]) == Some(&Value::Bool(true)) {
                let msg = "field is immutable when `immutable` is set";
                forbidden_if_changed(old, new, &["immutable"], msg)?;
                forbidden_if_changed(old, new, &["data"], msg)?;
                forbidden_if_changed(old, new, &["binaryData"], msg)?;
            }
            if kind == "Secret" {
                forbidden_if_changed(old, new, &["type"], "field is immutable")?;
            }
        }
        "PersistentVolumeClaim" => validate_claim_update(old, new)?,
        // The CRDs' x-kubernetes-validations: a source never changes.
        "VolumeSnapshot" => {
            for f in ["persistentVolumeClaimName", "volumeSnapshotContentName"] {
                forbidden_if_changed(
                    old,
                    new,
                    &["spec", "source", f],
                    &format!("{f} is immutable"),
                )?;
            }
        }
        "VolumeSnapshotContent" => {
            for f in ["volumeHandle", "snapshotHandle"] {
                forbidden_if_changed(
                    old,
                    new,
                    &["spec", "source", f],
                    &format!("{f} is immutable"),
                )?;
            }
            forbidden_if_changed(
                old,
                new,
                &["spec", "sourceVolumeMode"],
                "sourceVolumeMode is immutable",
            )?;
        }
        "PersistentVolume" => {
            forbidden_if_changed(old, new, &["spec", "volumeMode"], "field is immutable")?;
            let source = |v: &Value| -> BTreeMap<String, Value> {
                get(v, &["spec"])
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| {
                                ![
                                    "accessModes",
                                    "capacity",
                                    "claimRef",
                                    "mountOptions",
                                    "nodeAffinity",
                                    "persistentVolumeReclaimPolicy",
                                    "storageClassName",
                                    "volumeMode",
                                    "volumeAttributesClassName",
                                ]
                                .contains(&k.as_str())
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if source(old) != source(new) {
                return Err(Error::invalid(
                    "spec.persistentvolumesource",
                    "Forbidden: spec.persistentvolumesource is immutable after creation",
                ));
            }
        }
        "StatefulSet" => {
            let fixed = |v: &Value| -> BTreeMap<String, Value> {
                get(v, &["spec"])
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| {
                                ![
                                    "replicas",
                                    "ordinals",
                                    "template",
                                    "updateStrategy",
                                    "revisionHistoryLimit",
                                    "persistentVolumeClaimRetentionPolicy",
                                    "minReadySeconds",
                                ]
                                .contains(&k.as_str())
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if fixed(old) != fixed(new) {
                return Err(Error::invalid(
                    "spec",
                    "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

fn validate_claim_update(old: &Value, new: &Value) -> Result<()> {
    let bound = str_at(old, &["status", "phase"]) == Some("Bound");
    // Compare the spec with the fields that may legitimately change blanked out.
    let mut old_spec = get(old, &["spec"]).cloned().unwrap_or(json!({}));
    let mut new_spec = get(new, &["spec"]).cloned().unwrap_or(json!({}));
    let old_name = str_at(&old_spec, &["volumeName"]).unwrap_or("").to_string();
    for spec in [&mut old_spec, &mut new_spec] {
        if let Some(m) = spec.as_object_mut() {
            m.remove("volumeAttributesClassName");
            if bound && let Some(Value::Object(res)) = m.get_mut("resources") {
                res.remove("requests");
            }
        }
    }
    // The binder sets volumeName once; nil storageClassName may become a value (retroactive
    // default class).
    if old_name.is_empty()
        && let Some(m) = old_spec.as_object_mut()
        && let Some(n) = new_spec.get("volumeName")
    {
        m.insert("volumeName".into(), n.clone());
    }
    if old_spec.get("storageClassName").is_none_or(Value::is_null)
        && let Some(m) = old_spec.as_object_mut()
        && let Some(n) = new_spec.get("storageClassName")
    {
        m.insert("storageClassName".into(), n.clone());
    }
    if let Some(m) = old_spec.as_object_mut()
        && m.get("volumeName").is_some_and(|v| v.as_str() == Some(""))
        && new_spec.get("volumeName").is_none()
    {
        m.remove("volumeName");
    }
    if old_spec != new_spec {
        return Err(Error::invalid(
            "spec",
            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let path = ["spec", "resources", "requests", "storage"];
    if let (Some(before), Some(after)) = (quantity_at(old, &path), quantity_at(new, &path))
        && after < before
    {
        // RecoverVolumeExpansionFailure: lowering is allowed while it stays above the
        // capacity the claim really has.
        let capacity = quantity_at(old, &["status", "capacity", "storage"]);
        if capacity.is_none_or(|c| after <= c) {
            return Err(Error::invalid(
                path.join("."),
                "Forbidden: field can not be less than status.capacity",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("PersistentVolumeClaim", "data-web-0", false).is_ok());
        assert!(validate_name("PersistentVolume", "pvc-1.example", false).is_ok());
        assert!(validate_name("StatefulSet", "web.x", false).is_err());
        for bad in [
            "",
            "UPPER",
            "-a",
            "a-",
            "../etc",
            "a/b",
            ".",
            "..",
            "a_b",
            &"a".repeat(254),
        ] {
            assert!(validate_name("ConfigMap", bad, false).is_err(), "{bad:?}");
        }
        assert!(validate_name("Pod", "web-", true).is_ok());
    }

    #[test]
    fn default_class_newest_then_name() {
        let sc = |name: &str, ts: &str, default: bool| {
            json!({"metadata": {"name": name, "creationTimestamp": ts,
                "annotations": {DEFAULT_CLASS_ANNOTATION: if default {"true"} else {"false"}}}})
        };
        let classes = vec![
            sc("old", "2024-01-01T00:00:00Z", true),
            sc("b-new", "2025-01-01T00:00:00Z", true),
            sc("a-new", "2025-01-01T00:00:00Z", true),
            sc("newest-not-default", "2026-01-01T00:00:00Z", false),
        ];
        assert_eq!(pick_default_class(&classes).as_deref(), Some("a-new"));
        assert_eq!(pick_default_class(&classes[3..]), None);
    }

    #[test]
    fn claim_shrink_and_spec_rules() {
        let claim = |size: &str, phase: &str, cap: &str| {
            json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "volumeName": "pv1"},
                   "status": {"phase": phase, "capacity": {"storage": cap}}})
        };
        let old = claim("10Gi", "Bound", "10Gi");
        assert!(validate_claim_update(&old, &claim("20Gi", "Bound", "10Gi")).is_ok());
        assert!(validate_claim_update(&old, &claim("5Gi", "Bound", "10Gi")).is_err());
        // Backing out of a failed expansion to above the real capacity is allowed.
        let expanding = claim("20Gi", "Bound", "10Gi");
        assert!(validate_claim_update(&expanding, &claim("15Gi", "Bound", "10Gi")).is_ok());
        assert!(validate_claim_update(&expanding, &claim("10Gi", "Bound", "10Gi")).is_err());
        // Not bound: requests are immutable too.
        let pending = claim("10Gi", "Pending", "0");
        assert!(validate_claim_update(&pending, &claim("20Gi", "Pending", "0")).is_err());
        let mut other_mode = claim("10Gi", "Bound", "10Gi");
        other_mode["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert!(validate_claim_update(&old, &other_mode).is_err());
    }

    #[test]
    fn quantities_are_checked_with_their_path() {
        let v = json!({"spec": {"resources": {"requests": {"storage": "10Gx"}}}});
        let err = validate_quantities(&v, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.resources.requests.storage: invalid quantity \"10Gx\""
        );
        let pod = json!({"spec": {"containers": [{"resources": {"limits": {"memory": "1Q"}}}]}});
        let err = validate_quantities(&pod, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.containers[0].resources.limits.memory: invalid quantity \"1Q\""
        );
    }
}

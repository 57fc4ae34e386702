//! `volctl describe KIND [NAME]`: the object's fields in kubectl's layout, then its events;
//! without NAME, every object of the kind in the namespace, as kubectl does.

use std::fmt::Write as _;

use serde_json::Value;
use strata_store::EmbeddedStore;
use strata_store::k8s_openapi::api::core::v1::Event;
use strata_store::kinds::KindInfo;

use crate::resource;
use crate::table;

/// Show details of an object, with the events about it (all of a kind without NAME).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kind: name, plural or short name.
    kind: String,
    /// Object name; without it, every object of the kind in the namespace.
    name: Option<String>,
    /// Namespace of namespaced kinds.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn map_lines(out: &mut String, title: &str, v: Option<&Value>) {
    let pad = 14usize.saturating_sub(title.len() + 1).max(1);
    match v.and_then(Value::as_object).filter(|m| !m.is_empty()) {
        None => {
            let _ = writeln!(out, "{title}:{}<none>", " ".repeat(pad));
        }
        Some(m) => {
            for (i, (k, val)) in m.iter().enumerate() {
                let val = val.as_str().map_or_else(|| val.to_string(), str::to_string);
                if i == 0 {
                    let _ = writeln!(out, "{title}:{}{k}={val}", " ".repeat(pad));
                } else {
                    let _ = writeln!(out, "{}{k}={val}", " ".repeat(title.len() + 1 + pad));
                }
            }
        }
    }
}

fn field(out: &mut String, title: &str, value: &str) {
    let pad = 14usize.saturating_sub(title.len() + 1).max(1);
    let _ = writeln!(out, "{title}:{}{value}", " ".repeat(pad));
}

fn list(v: &Value, path: &[&str]) -> String {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

fn modes(v: &Value, path: &[&str]) -> String {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    o => o,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Renders the object part of `describe`.
pub fn render_object(kind: &KindInfo, v: &Value) -> String {
    let mut out = String::new();
    field(&mut out, "Name", s(v, &["metadata", "name"]));
    if kind.namespaced() {
        field(&mut out, "Namespace", s(v, &["metadata", "namespace"]));
    }
    match kind.kind() {
        "PersistentVolumeClaim" => {
            field(
                &mut out,
                "StorageClass",
                s(v, &["spec", "storageClassName"]),
            );
            field(&mut out, "Status", s(v, &["status", "phase"]));
            field(&mut out, "Volume", s(v, &["spec", "volumeName"]));
            map_lines(&mut out, "Labels", v["metadata"].get("labels"));
            map_lines(&mut out, "Annotations", annotations(v).as_ref());
            field(
                &mut out,
                "Finalizers",
                &format!("[{}]", list(v, &["metadata", "finalizers"])),
            );
            field(
                &mut out,
                "Capacity",
                s(v, &["status", "capacity", "storage"]),
            );
            field(
                &mut out,
                "Access Modes",
                &modes(v, &["status", "accessModes"]),
            );
            field(&mut out, "VolumeMode", s(v, &["spec", "volumeMode"]));
            field(
                &mut out,
                "Requested",
                s(v, &["spec", "resources", "requests", "storage"]),
            );
        }
        "PersistentVolume" => {
            map_lines(&mut out, "Labels", v["metadata"].get("labels"));
            map_lines(&mut out, "Annotations", annotations(v).as_ref());
            field(
                &mut out,
                "Finalizers",
                &format!("[{}]", list(v, &["metadata", "finalizers"])),
            );
            field(
                &mut out,
                "StorageClass",
                s(v, &["spec", "storageClassName"]),
            );
            field(&mut out, "Status", s(v, &["status", "phase"]));
            let claim = match s(v, &["spec", "claimRef", "name"]) {
                "" => String::new(),
                n => format!("{}/{n}", s(v, &["spec", "claimRef", "namespace"])),
            };
            field(&mut out, "Claim", &claim);
            field(
                &mut out,
                "Reclaim Policy",
                s(v, &["spec", "persistentVolumeReclaimPolicy"]),
            );
            field(
                &mut out,
                "Access Modes",
                &modes(v, &["spec", "accessModes"]),
            );
            field(&mut out, "VolumeMode", s(v, &["spec", "volumeMode"]));
            field(&mut out, "Capacity", s(v, &["spec", "capacity", "storage"]));
            let affinity = v["spec"]
                .get("nodeAffinity")
                .map_or("<none>".to_string(), |a| a.to_string());
            field(&mut out, "Node Affinity", &affinity);
            field(&mut out, "Message", s(v, &["status", "message"]));
            if let Some(csi) = v["spec"].get("csi") {
                out.push_str("Source:\n");
                let _ = writeln!(out, "    Type:          CSI");
                let _ = writeln!(out, "    Driver:        {}", s(csi, &["driver"]));
                let _ = writeln!(out, "    FSType:        {}", s(csi, &["fsType"]));
                let _ = writeln!(out, "    VolumeHandle:  {}", s(csi, &["volumeHandle"]));
                let _ = writeln!(
                    out,
                    "    ReadOnly:      {}",
                    csi["readOnly"].as_bool().unwrap_or(false)
                );
            }
        }
        "StorageClass" => {
            field(
                &mut out,
                "IsDefaultClass",
                if strata_store::admission::is_default_class(v) {
                    "Yes"
                } else {
                    "No"
                },
            );
            map_lines(&mut out, "Annotations", annotations(v).as_ref());
            field(&mut out, "Provisioner", s(v, &["provisioner"]));
            map_lines(&mut out, "Parameters", v.get("parameters"));
            field(
                &mut out,
                "AllowVolumeExpansion",
                &v["allowVolumeExpansion"]
                    .as_bool()
                    .map_or("<unset>".into(), |b| b.to_string()),
            );
            field(&mut out, "MountOptions", &list(v, &["mountOptions"]));
            field(&mut out, "ReclaimPolicy", s(v, &["reclaimPolicy"]));
            field(&mut out, "VolumeBindingMode", s(v, &["volumeBindingMode"]));
        }
        _ => {
            map_lines(&mut out, "Labels", v["metadata"].get("labels"));
            map_lines(&mut out, "Annotations", annotations(v).as_ref());
            // Everything else as YAML, indented, secret values withheld.
            let mut body = v.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("metadata");
                o.remove("apiVersion");
                o.remove("kind");
                if kind.kind() == "Secret"
                    && let Some(data) = o.get_mut("data").and_then(Value::as_object_mut)
                {
                    for val in data.values_mut() {
                        let len = val.as_str().map_or(0, |b| b.len() * 3 / 4);
                        *val = Value::String(format!("{len} bytes"));
                    }
                }
            }
            if let Ok(y) = yaml_serde::to_string(&body) {
                for line in y.lines().filter(|l| *l != "{}") {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
    out
}

/// Annotations minus the bulky last-applied copy, which kubectl describe also hides.
fn annotations(v: &Value) -> Option<Value> {
    let mut a = v["metadata"].get("annotations")?.clone();
    a.as_object_mut()?
        .remove(strata_store::apply::LAST_APPLIED_ANNOTATION);
    Some(a)
}

/// Renders the Events section as kubectl describe does.
pub fn render_events(events: &[Event]) -> String {
    if events.is_empty() {
        return "Events:        <none>\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let ts = |t: &Option<
                strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
            >| { t.as_ref().map(|t| t.0.to_string()).unwrap_or_default() };
            let last = table::age(&ts(&e.last_timestamp));
            let count = e.count.unwrap_or(1);
            let age = if count > 1 {
                format!(
                    "{last} (x{count} over {})",
                    table::age(&ts(&e.first_timestamp))
                )
            } else {
                last
            };
            vec![
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                age,
                e.source
                    .as_ref()
                    .and_then(|s| s.component.clone())
                    .unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut underline: Vec<String> = Vec::new();
    for h in ["Type", "Reason", "Age", "From", "Message"] {
        underline.push("-".repeat(h.len()));
    }
    let mut all = vec![underline];
    all.extend(rows);
    let text = table::render(&["Type", "Reason", "Age", "From", "Message"], &all);
    let mut out = String::from("Events:\n");
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub async fn run(store: &EmbeddedStore, args: Args) -> anyhow::Result<()> {
    let kind = resource::kind(&args.kind)?;
    let ns = if kind.namespaced() {
        args.namespace.as_str()
    } else {
        ""
    };
    let objects = match &args.name {
        Some(name) => vec![store.get_value(kind.kind_ref, ns, name).await?],
        None => {
            let ns = kind.namespaced().then_some(ns);
            store.list_values(kind.kind_ref, ns, None).await?.items
        }
    };
    if objects.is_empty() {
        crate::get::say_none_found(kind.namespaced().then_some(ns));
        return Ok(());
    }
    let mut out = String::new();
    for (i, obj) in objects.iter().enumerate() {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let events = store.events_for(kind.kind(), ns, name).await?;
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&render_object(kind, obj));
        out.push_str(&render_events(&events));
    }
    print!("{out}");
    Ok(())
}

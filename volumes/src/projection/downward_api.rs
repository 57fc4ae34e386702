//! Downward API files (k8s-semantics §2.4): fieldRef and resourceFieldRef rendering.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, ObjectFieldSelector, Pod, ResourceFieldSelector,
};
use strata_store::quantity::{Quantity, parse as parse_quantity};

use super::quantity;
use super::quote::go_quote;
use super::{Inputs, mode_of};
use crate::atomic_writer::{FileProjection, Payload};

pub(super) fn files(
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    inputs: &Inputs<'_>,
    payload: &mut Payload,
    errors: &mut Vec<String>,
) {
    for item in items {
        let rendered = render_item(item, inputs.pod, inputs.node_allocatable)
            .and_then(|data| mode_of(item.mode, default_mode, &item.path).map(|m| (data, m)));
        match rendered {
            Ok((data, mode)) => {
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: data.into_bytes(),
                        mode,
                        fs_user: None,
                    },
                );
            }
            Err(e) => errors.push(format!("{}: {e}", item.path)),
        }
    }
}

/// The file content for one item, exactly as the kubelet writes it (no trailing newline).
pub fn render_item(
    item: &DownwardAPIVolumeFile,
    pod: &Pod,
    allocatable: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Result<String, String> {
    match (&item.field_ref, &item.resource_field_ref) {
        (Some(f), None) => field_ref(f, pod),
        (None, Some(r)) => resource_field_ref(r, pod, allocatable),
        _ => Err("one of fieldRef and resourceFieldRef is required".into()),
    }
}

fn field_ref(sel: &ObjectFieldSelector, pod: &Pod) -> Result<String, String> {
    match sel.api_version.as_deref() {
        None | Some("") | Some("v1") => {}
        Some(v) => return Err(format!("unsupported apiVersion {v:?} for fieldRef")),
    }
    let meta = &pod.metadata;
    let path = sel.field_path.as_str();
    if let Some((map, key)) = subscript(path) {
        let value = match map {
            "metadata.labels" => meta.labels.as_ref().and_then(|m| m.get(key)),
            "metadata.annotations" => meta.annotations.as_ref().and_then(|m| m.get(key)),
            _ => return Err(format!("unsupported fieldPath {path:?}")),
        };
        // A missing key gives an empty file, not an error.
        return Ok(value.cloned().unwrap_or_default());
    }
    match path {
        "metadata.name" => Ok(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Ok(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Ok(meta.uid.clone().unwrap_or_default()),
        "metadata.labels" => Ok(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Ok(format_map(meta.annotations.as_ref())),
        // spec.nodeName, status.podIP and the like are environment-variable only.
        _ => Err(format!("unsupported fieldPath {path:?} in a volume")),
    }
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`).
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (map, rest) = path.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    (!key.is_empty()).then_some((map, key))
}

/// `key="quoted value"` lines in byte order of the keys, joined by `\n`, no trailing newline.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", go_quote(v)))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

fn find_container<'p>(pod: &'p Pod, name: &str) -> Option<&'p Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

fn resource_field_ref(
    sel: &ResourceFieldSelector,
    pod: &Pod,
    allocatable: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Result<String, String> {
    let name = sel
        .container_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or("resourceFieldRef.containerName is required in volumes")?;
    let container =
        find_container(pod, name).ok_or_else(|| format!("container {name:?} not found"))?;
    let divisor = match &sel.divisor {
        None => Quantity::from_units(1),
        Some(q) => {
            let d = parse_quantity(&q.0).map_err(|e| format!("invalid divisor: {e}"))?;
            if d.is_zero() {
                Quantity::from_units(1)
            } else {
                d
            }
        }
    };
    let (side, resource) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", sel.resource))?;
    let res = container.resources.as_ref();
    let map = match side {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resource {:?}", sel.resource)),
    };
    let parse = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
        parse_quantity(&q.0).map_err(|e| e.to_string())
    };
    let mut value = match map.and_then(|m| m.get(resource)) {
        Some(q) => parse(q)?,
        None => Quantity::from_units(0),
    };
    let merges_allocatable = matches!(resource, "cpu" | "memory" | "ephemeral-storage");
    if side == "limits" && merges_allocatable && value.is_zero() {
        // An absent or zero limit reads as the node's allocatable amount.
        if let Some(q) = allocatable.get(resource) {
            value = parse(q)?;
        }
    }
    let out = match resource {
        "cpu" => {
            if !quantity::valid_cpu_divisor(divisor) {
                return Err("cpu divisor must be 1 or 1m".into());
            }
            quantity::cpu_in(value, divisor)
        }
        "memory" | "ephemeral-storage" => {
            if !quantity::valid_bytes_divisor(divisor) {
                return Err(format!("invalid {resource} divisor"));
            }
            quantity::bytes_in(value, divisor)
        }
        r if r.starts_with("hugepages-") => {
            if !quantity::valid_bytes_divisor(divisor) {
                return Err(format!("invalid {resource} divisor"));
            }
            quantity::bytes_in(value, divisor)
        }
        _ => return Err(format!("unsupported resource {:?}", sel.resource)),
    };
    Ok(out.to_string())
}

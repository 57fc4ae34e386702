//! kubectl's table columns for the kinds volctl shows, and its human-readable ages.

use jiff::Timestamp;
use serde_json::Value;
use strata_store::kinds::KindInfo;

/// Wide (`-o wide`) or normal columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Normal,
    Wide,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.into()
    }
}

/// A boolean or number printed as kubectl prints a printer column: empty when unset.
fn scalar(v: &Value, path: &[&str]) -> String {
    match path.iter().try_fold(v, |v, k| v.get(k)) {
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(x)) => x.clone(),
        _ => String::new(),
    }
}

fn count(v: &Value, path: &[&str]) -> usize {
    match path.iter().try_fold(v, |v, k| v.get(k)) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// kubectl's `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h) = (secs / 60, secs / 3600);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let d = h / 24;
        if d % 365 == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{}d", d / 365, d % 365)
        }
    } else {
        format!("{}y", h / 24 / 365)
    }
}

/// Age of an RFC 3339 timestamp, or "<unknown>".
pub fn age(ts: &str) -> String {
    match ts.parse::<Timestamp>() {
        Ok(t) => human_duration(Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn access_modes(v: &Value, path: &[&str]) -> String {
    let modes: Vec<&str> = path
        .iter()
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
                    other => other,
                })
                .collect()
        })
        .unwrap_or_default();
    modes.join(",")
}

fn default_class(v: &Value) -> bool {
    strata_store::admission::is_default_class(v)
}

/// Column headers for a kind.
pub fn headers(kind: &KindInfo, width: Width) -> Vec<&'static str> {
    let mut h = match kind.kind() {
        "PersistentVolumeClaim" => vec![
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE",
        ],
        "PersistentVolume" => vec![
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE",
        ],
        "StorageClass" => vec![
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE",
        ],
        "StatefulSet" => vec!["NAME", "READY", "AGE"],
        "ConfigMap" => vec!["NAME", "DATA", "AGE"],
        "Secret" => vec!["NAME", "TYPE", "DATA", "AGE"],
        "ServiceAccount" => vec!["NAME", "SECRETS", "AGE"],
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        // The snapshot CRDs' additionalPrinterColumns.
        "VolumeSnapshotClass" => vec!["NAME", "DRIVER", "DELETIONPOLICY", "AGE"],
        "VolumeSnapshot" => vec![
            "NAME",
            "READYTOUSE",
            "SOURCEPVC",
            "SOURCESNAPSHOTCONTENT",
            "RESTORESIZE",
            "SNAPSHOTCLASS",
            "SNAPSHOTCONTENT",
            "CREATIONTIME",
            "AGE",
        ],
        "VolumeSnapshotContent" => vec![
            "NAME",
            "READYTOUSE",
            "RESTORESIZE",
            "DELETIONPOLICY",
            "DRIVER",
            "VOLUMESNAPSHOTCLASS",
            "VOLUMESNAPSHOT",
            "VOLUMESNAPSHOTNAMESPACE",
            "AGE",
        ],
        _ => vec!["NAME", "AGE"],
    };
    if width == Width::Wide {
        match kind.kind() {
            "PersistentVolumeClaim" | "PersistentVolume" => h.push("VOLUMEMODE"),
            "StatefulSet" => h.extend(["CONTAINERS", "IMAGES"]),
            "Pod" => h.extend(["IP", "NODE"]),
            _ => {}
        }
    }
    h
}

/// One row of a kind's table.
pub fn row(kind: &KindInfo, v: &Value, width: Width) -> Vec<String> {
    let name = s(v, &["metadata", "name"]).to_string();
    let created = age(s(v, &["metadata", "creationTimestamp"]));
    let mut r = match kind.kind() {
        "PersistentVolumeClaim" => {
            let phase = if v["metadata"]
                .get("deletionTimestamp")
                .is_some_and(|t| !t.is_null())
            {
                "Terminating"
            } else {
                s(v, &["status", "phase"])
            };
            vec![
                name,
                phase.into(),
                s(v, &["spec", "volumeName"]).into(),
                s(v, &["status", "capacity", "storage"]).into(),
                access_modes(v, &["status", "accessModes"]),
                or_none(s(v, &["spec", "storageClassName"])),
                or_none(s(v, &["spec", "volumeAttributesClassName"])),
                created,
            ]
        }
        "PersistentVolume" => {
            let claim = match (
                s(v, &["spec", "claimRef", "namespace"]),
                s(v, &["spec", "claimRef", "name"]),
            ) {
                (_, "") => String::new(),
                ("", n) => n.into(),
                (ns, n) => format!("{ns}/{n}"),
            };
            let phase = if v["metadata"]
                .get("deletionTimestamp")
                .is_some_and(|t| !t.is_null())
            {
                "Terminating"
            } else {
                s(v, &["status", "phase"])
            };
            vec![
                name,
                s(v, &["spec", "capacity", "storage"]).into(),
                access_modes(v, &["spec", "accessModes"]),
                s(v, &["spec", "persistentVolumeReclaimPolicy"]).into(),
                phase.into(),
                claim,
                s(v, &["spec", "storageClassName"]).into(),
                or_none(s(v, &["spec", "volumeAttributesClassName"])),
                s(v, &["status", "reason"]).into(),
                created,
            ]
        }
        "StorageClass" => vec![
            if default_class(v) {
                format!("{name} (default)")
            } else {
                name
            },
            s(v, &["provisioner"]).into(),
            s(v, &["reclaimPolicy"]).into(),
            s(v, &["volumeBindingMode"]).into(),
            v.get("allowVolumeExpansion")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
            created,
        ],
        "StatefulSet" => vec![
            name,
            format!(
                "{}/{}",
                v["status"]["readyReplicas"].as_i64().unwrap_or(0),
                v["spec"]["replicas"].as_i64().unwrap_or(1)
            ),
            created,
        ],
        "ConfigMap" => vec![
            name,
            (count(v, &["data"]) + count(v, &["binaryData"])).to_string(),
            created,
        ],
        "Secret" => vec![
            name,
            s(v, &["type"]).into(),
            count(v, &["data"]).to_string(),
            created,
        ],
        "ServiceAccount" => vec![name, count(v, &["secrets"]).to_string(), created],
        "Pod" => {
            let statuses = v["status"]["containerStatuses"].as_array();
            let ready = statuses.map_or(0, |a| {
                a.iter()
                    .filter(|c| c["ready"].as_bool() == Some(true))
                    .count()
            });
            let restarts: i64 = statuses.map_or(0, |a| {
                a.iter()
                    .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                    .sum()
            });
            vec![
                name,
                format!("{ready}/{}", count(v, &["spec", "containers"])),
                pod_status(v),
                restarts.to_string(),
                created,
            ]
        }
        "Event" => vec![
            age(s(v, &["lastTimestamp"])),
            s(v, &["type"]).into(),
            s(v, &["reason"]).into(),
            format!(
                "{}/{}",
                s(v, &["involvedObject", "kind"]).to_ascii_lowercase(),
                s(v, &["involvedObject", "name"])
            ),
            s(v, &["message"]).into(),
        ],
        "Namespace" => vec![name, s(v, &["status", "phase"]).into(), created],
        "VolumeSnapshotClass" => vec![
            name,
            s(v, &["driver"]).into(),
            s(v, &["deletionPolicy"]).into(),
            created,
        ],
        "VolumeSnapshot" => vec![
            name,
            scalar(v, &["status", "readyToUse"]),
            s(v, &["spec", "source", "persistentVolumeClaimName"]).into(),
            s(v, &["spec", "source", "volumeSnapshotContentName"]).into(),
            s(v, &["status", "restoreSize"]).into(),
            s(v, &["spec", "volumeSnapshotClassName"]).into(),
            s(v, &["status", "boundVolumeSnapshotContentName"]).into(),
            match s(v, &["status", "creationTime"]) {
                "" => String::new(),
                t => age(t),
            },
            created,
        ],
        "VolumeSnapshotContent" => vec![
            name,
            scalar(v, &["status", "readyToUse"]),
            scalar(v, &["status", "restoreSize"]),
            s(v, &["spec", "deletionPolicy"]).into(),
            s(v, &["spec", "driver"]).into(),
            s(v, &["spec", "volumeSnapshotClassName"]).into(),
            s(v, &["spec", "volumeSnapshotRef", "name"]).into(),
            s(v, &["spec", "volumeSnapshotRef", "namespace"]).into(),
            created,
        ],
        _ => vec![name, created],
    };
    if width == Width::Wide {
        match kind.kind() {
            "PersistentVolumeClaim" | "PersistentVolume" => {
                r.push(s(v, &["spec", "volumeMode"]).into())
            }
            "StatefulSet" => {
                let containers = v["spec"]["template"]["spec"]["containers"].as_array();
                let names: Vec<&str> =
                    containers.map_or(vec![], |c| c.iter().map(|c| s(c, &["name"])).collect());
                let images: Vec<&str> =
                    containers.map_or(vec![], |c| c.iter().map(|c| s(c, &["image"])).collect());
                r.push(names.join(","));
                r.push(images.join(","));
            }
            "Pod" => {
                r.push(or_none(s(v, &["status", "podIP"])));
                r.push(or_none(s(v, &["spec", "nodeName"])));
            }
            _ => {}
        }
    }
    r
}

/// Renders rows with kubectl's spacing: columns padded to the widest cell plus three spaces.
/// The STATUS column of a pod as kubectl prints it: the phase, replaced by an init
/// container's progress or failure (`Init:1/2`, `Init:Error`), else by a container's
/// waiting or terminated reason (`CrashLoopBackOff`, `ImagePullBackOff`,
/// `ContainerCreating`, `Error`, `Completed`), and `Terminating` while being deleted.
pub fn pod_status(v: &Value) -> String {
    let status = &v["status"];
    let mut reason = status["reason"]
        .as_str()
        .or(status["phase"].as_str())
        .unwrap_or("")
        .to_string();
    let code_reason = |t: &Value| match t["reason"].as_str() {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => match t["signal"].as_i64() {
            Some(sig) if sig != 0 => format!("Signal:{sig}"),
            _ => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
        },
    };
    let inits = status["initContainerStatuses"].as_array();
    let init_total = count(v, &["spec", "initContainers"]);
    let mut initializing = false;
    for (i, c) in inits.into_iter().flatten().enumerate() {
        let st = &c["state"];
        if !st["terminated"].is_null() && st["terminated"]["exitCode"].as_i64() == Some(0) {
            continue;
        }
        initializing = true;
        reason = if !st["terminated"].is_null() {
            format!("Init:{}", code_reason(&st["terminated"]))
        } else {
            match st["waiting"]["reason"].as_str() {
                Some(r) if !r.is_empty() && r != "PodInitializing" => format!("Init:{r}"),
                _ => format!("Init:{i}/{init_total}"),
            }
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        // The first container's reason wins, as kubectl walks them backwards.
        let ctrs: Vec<&Value> = status["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        for c in ctrs.iter().rev() {
            let st = &c["state"];
            match st["waiting"]["reason"].as_str() {
                Some(r) if !r.is_empty() => reason = r.to_string(),
                _ if !st["terminated"].is_null() => reason = code_reason(&st["terminated"]),
                _ if !st["running"].is_null() && c["ready"].as_bool() == Some(true) => {
                    has_running = true
                }
                _ => {}
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if v["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        reason = "Terminating".into();
    }
    reason
}

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86400), "100d");
    }

    #[test]
    fn snapshot_columns_as_the_crds_print_them() {
        let kind = strata_store::kinds::lookup("vs").unwrap();
        let v = serde_json::json!({
            "metadata": {"name": "s1"},
            "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "c"},
            "status": {"readyToUse": true, "restoreSize": "64Mi", "boundVolumeSnapshotContentName": "snapcontent-u"},
        });
        let first = row(kind, &v, Width::Normal);
        assert_eq!(first.len(), headers(kind, Width::Normal).len());
        assert_eq!(
            first[..7],
            ["s1", "true", "data", "", "64Mi", "c", "snapcontent-u"]
        );
        let kind = strata_store::kinds::lookup("vsc").unwrap();
        let v = serde_json::json!({
            "metadata": {"name": "snapcontent-u"},
            "spec": {"deletionPolicy": "Delete", "driver": "d", "volumeSnapshotRef": {"name": "s1", "namespace": "default"}},
            "status": {"readyToUse": false, "restoreSize": 67108864},
        });
        let second = row(kind, &v, Width::Normal);
        assert_eq!(second.len(), headers(kind, Width::Normal).len());
        assert_eq!(
            second[..8],
            [
                "snapcontent-u",
                "false",
                "67108864",
                "Delete",
                "d",
                "",
                "s1",
                "default"
            ]
        );
    }

    #[test]
    fn renders_aligned_columns() {
        let out = render(
            &["NAME", "STATUS"],
            &[vec!["a-long-name".into(), "Bound".into()]],
        );
        assert_eq!(out, "NAME          STATUS\na-long-name   Bound\n");
    }

    #[test]
    fn pod_status_as_kubectl() {
        let pod = |status: Value| {
            serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}, {"name": "b"}]},
                "status": status,
            })
        };
        let waiting = |r: &str| serde_json::json!({"state": {"waiting": {"reason": r}}});
        let running = |ready: bool| serde_json::json!({"state": {"running": {}}, "ready": ready});
        let done = |code: i64, r: &str| serde_json::json!({"state": {"terminated": {"exitCode": code, "reason": r}}});
        for (status, want) in [
            (serde_json::json!({"phase": "Pending"}), "Pending"),
            (
                serde_json::json!({"phase": "Pending", "initContainerStatuses": [done(0, "Completed"), waiting("PodInitializing")]}),
                "Init:1/2",
            ),
            (
                serde_json::json!({"phase": "Pending", "initContainerStatuses": [waiting("ImagePullBackOff"), waiting("PodInitializing")]}),
                "Init:ImagePullBackOff",
            ),
            (
                serde_json::json!({"phase": "Failed", "initContainerStatuses": [done(2, ""), waiting("PodInitializing")]}),
                "Init:ExitCode:2",
            ),
            (
                serde_json::json!({"phase": "Running", "initContainerStatuses": [done(0, "Completed"), done(0, "Completed")],
                "containerStatuses": [running(true), waiting("CrashLoopBackOff")]}),
                "CrashLoopBackOff",
            ),
            (
                serde_json::json!({"phase": "Pending", "containerStatuses": [waiting("ContainerCreating"), running(true)]}),
                "ContainerCreating",
            ),
            (
                serde_json::json!({"phase": "Running", "containerStatuses": [running(true), running(false)]}),
                "Running",
            ),
            (
                serde_json::json!({"phase": "Running", "containerStatuses": [running(true), done(0, "Completed")]}),
                "Running",
            ),
            (
                serde_json::json!({"phase": "Failed", "containerStatuses": [done(1, "Error"), done(0, "Completed")]}),
                "Error",
            ),
            (
                serde_json::json!({"phase": "Succeeded", "containerStatuses": [done(0, "Completed"), done(0, "Completed")]}),
                "Completed",
            ),
        ] {
            assert_eq!(pod_status(&pod(status.clone())), want, "{status}");
        }
        let mut p = pod(serde_json::json!({"phase": "Running"}));
        p["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z".into();
        assert_eq!(pod_status(&p), "Terminating");
    }
}

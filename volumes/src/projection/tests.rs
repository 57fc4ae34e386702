use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pod(extra_spec: serde_json::Value) -> Pod {
    let mut spec = json!({
        "containers": [{
            "name": "app",
            "resources": {"limits": {"cpu": "250m"}, "requests": {"cpu": "100m", "memory": "100M"}}
        }],
        "initContainers": [{"name": "init", "resources": {"limits": {"memory": "1Gi"}}}]
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    obj(json!({
        "metadata": {
            "name": "web-0", "namespace": "prod", "uid": "1111-2222",
            "labels": {"app": "web", "tier": "front\"end"},
            "annotations": {"note": "line1\nline2\ttab\\", "empty": ""}
        },
        "spec": spec
    }))
}

struct World {
    pod: Pod,
    secrets: BTreeMap<String, Secret>,
    config_maps: BTreeMap<String, ConfigMap>,
    tokens: BTreeMap<TokenKey, String>,
    allocatable: BTreeMap<String, Quantity>,
}

impl World {
    fn new(pod: Pod) -> Self {
        let mut secrets = BTreeMap::new();
        // Secret data is base64 on the wire.
        secrets.insert(
            "creds".into(),
            obj(json!({"metadata": {"name": "creds"}, "data": {"user": "YWRtaW4=", "pass": "czNjcjN0"}})),
        );
        let mut config_maps = BTreeMap::new();
        config_maps.insert(
            "cfg".into(),
            obj(json!({"metadata": {"name": "cfg"}, "data": {"app.conf": "x=1", "both": "from-data"},
                       "binaryData": {"blob": "AAEC"}})),
        );
        let mut tokens = BTreeMap::new();
        tokens.insert(
            TokenKey {
                audience: "vault".into(),
                expiration_seconds: 3600,
            },
            "header.claims.sig".to_string(),
        );
        let mut allocatable = BTreeMap::new();
        allocatable.insert("cpu".into(), Quantity("2".into()));
        allocatable.insert("memory".into(), Quantity("8Gi".into()));
        World {
            pod,
            secrets,
            config_maps,
            tokens,
            allocatable,
        }
    }

    fn build(&self, volume: serde_json::Value) -> Result<Payload> {
        let volume: Volume = obj(volume);
        build(
            &volume,
            &Inputs {
                pod: &self.pod,
                secrets: &self.secrets,
                config_maps: &self.config_maps,
                tokens: &self.tokens,
                node_allocatable: &self.allocatable,
            },
        )
    }
}

fn files(p: &Payload) -> BTreeMap<&str, (&str, u32)> {
    p.iter()
        .map(|(k, f)| {
            (
                k.as_str(),
                (std::str::from_utf8(&f.data).unwrap_or("<bin>"), f.mode),
            )
        })
        .collect()
}

fn errors(r: Result<Payload>) -> Vec<String> {
    match r {
        Err(Error::Projection { errors, .. }) => errors,
        other => panic!("expected a projection error, got {other:?}"),
    }
}

#[test]
fn secret_all_keys_and_items() {
    let w = World::new(pod(json!({})));
    let p = w
        .build(json!({"name": "v", "secret": {"secretName": "creds"}}))
        .unwrap();
    assert_eq!(
        files(&p),
        BTreeMap::from([("pass", ("s3cr3t", 0o644)), ("user", ("admin", 0o644))])
    );

    let p = w
        .build(json!({"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400,
            "items": [{"key": "user", "path": "conf/username"}, {"key": "pass", "path": "p", "mode": 0o600}]}}))
        .unwrap();
    assert_eq!(
        files(&p),
        BTreeMap::from([
            ("conf/username", ("admin", 0o400)),
            ("p", ("s3cr3t", 0o600))
        ])
    );
}

#[test]
fn secret_missing_object_and_keys() {
    let w = World::new(pod(json!({})));
    let errs = errors(w.build(json!({"name": "v", "secret": {"secretName": "nope"}})));
    assert_eq!(errs, vec![r#"secret "nope" not found"#]);
    let p = w
        .build(json!({"name": "v", "secret": {"secretName": "nope", "optional": true}}))
        .unwrap();
    assert!(p.is_empty());
    let errs = errors(
        w.build(json!({"name": "v", "secret": {"secretName": "creds",
        "items": [{"key": "missing", "path": "m"}, {"key": "user", "path": "u"}]}})),
    );
    assert_eq!(
        errs,
        vec![r#"secret "creds": references non-existent secret key: missing"#]
    );
    let p = w
        .build(
            json!({"name": "v", "secret": {"secretName": "creds", "optional": true,
            "items": [{"key": "missing", "path": "m"}, {"key": "user", "path": "u"}]}}),
        )
        .unwrap();
    assert_eq!(files(&p), BTreeMap::from([("u", ("admin", 0o644))]));
}

#[test]
fn bad_modes_are_errors() {
    let w = World::new(pod(json!({})));
    assert!(
        w.build(json!({"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o1000}}))
            .is_err()
    );
    assert!(
        w.build(json!({"name": "v", "configMap": {"name": "cfg", "defaultMode": -1}}))
            .is_err()
    );
    assert!(
        w.build(json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "blob", "path": "b", "mode": 0o1777}]}}))
            .is_err()
    );
}

#[test]
fn config_map_data_and_binary_data() {
    let w = World::new(pod(json!({})));
    let p = w
        .build(json!({"name": "v", "configMap": {"name": "cfg"}}))
        .unwrap();
    assert_eq!(p["app.conf"].data, b"x=1");
    assert_eq!(p["blob"].data, [0u8, 1, 2]);
    assert_eq!(p.len(), 3);
    let errs = errors(w.build(
        json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zzz", "path": "z"}]}}),
    ));
    assert_eq!(
        errs,
        vec![r#"configmap "cfg": configmap references non-existent config key: zzz"#]
    );
    let p = w
        .build(json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "blob", "path": "bin/b"}]}}))
        .unwrap();
    assert_eq!(p["bin/b"].data, [0u8, 1, 2]);
}

#[test]
fn downward_api_fields() {
    let w = World::new(pod(json!({})));
    let item = |path: &str, field: &str| json!({"path": path, "fieldRef": {"fieldPath": field}});
    let p = w
        .build(json!({"name": "v", "downwardAPI": {"items": [
            item("name", "metadata.name"),
            item("ns", "metadata.namespace"),
            item("uid", "metadata.uid"),
            item("labels", "metadata.labels"),
            item("annotations", "metadata.annotations"),
            item("app", "metadata.labels['app']"),
            item("missing", "metadata.labels['nope']"),
            item("note", "metadata.annotations['note']"),
        ]}}))
        .unwrap();
    let f = files(&p);
    assert_eq!(f["name"].0, "web-0");
    assert_eq!(f["ns"].0, "prod");
    assert_eq!(f["uid"].0, "1111-2222");
    // Sorted, Go-quoted, joined by \n, no trailing newline.
    assert_eq!(f["labels"].0, "app=\"web\"\ntier=\"front\\\"end\"");
    assert_eq!(
        f["annotations"].0,
        "empty=\"\"\nnote=\"line1\\nline2\\ttab\\\\\""
    );
    assert_eq!(f["app"].0, "web");
    assert_eq!(f["missing"].0, "");
    assert_eq!(
        f["note"].0, "line1\nline2\ttab\\",
        "subscripted values are raw"
    );
}

#[test]
fn downward_api_resources() {
    let w = World::new(pod(json!({})));
    let res = |path: &str, c: &str, r: &str, d: Option<&str>| {
        let mut sel = json!({"containerName": c, "resource": r});
        if let Some(d) = d {
            sel["divisor"] = json!(d);
        }
        json!({"path": path, "resourceFieldRef": sel})
    };
    let p = w
        .build(json!({"name": "v", "downwardAPI": {"items": [
            res("cpu-limit", "app", "limits.cpu", None),
            res("cpu-limit-m", "app", "limits.cpu", Some("1m")),
            res("cpu-req-m", "app", "requests.cpu", Some("1m")),
            res("mem-req-mi", "app", "requests.memory", Some("1Mi")),
            res("mem-limit", "app", "limits.memory", Some("1Gi")),
            res("mem-limit-zero-div", "app", "limits.memory", Some("0")),
            res("eph-req", "app", "requests.ephemeral-storage", None),
            res("init-mem", "init", "limits.memory", Some("1Mi")),
        ]}}))
        .unwrap();
    let f = files(&p);
    assert_eq!(f["cpu-limit"].0, "1", "ceil(250m / 1)");
    assert_eq!(f["cpu-limit-m"].0, "250");
    assert_eq!(f["cpu-req-m"].0, "100");
    assert_eq!(f["mem-req-mi"].0, "96", "ceil(100e6 / 2^20)");
    assert_eq!(
        f["mem-limit"].0, "8",
        "unset limit falls back to node allocatable"
    );
    assert_eq!(f["mem-limit-zero-div"].0, (8u64 << 30).to_string());
    assert_eq!(f["eph-req"].0, "0", "an unset request is 0");
    assert_eq!(f["init-mem"].0, "1024");
}

#[test]
fn downward_api_errors_are_collected() {
    let w = World::new(pod(json!({})));
    let errs = errors(w.build(json!({"name": "v", "downwardAPI": {"items": [
        {"path": "a", "fieldRef": {"fieldPath": "spec.nodeName"}},
        {"path": "b", "resourceFieldRef": {"containerName": "ghost", "resource": "limits.cpu"}},
        {"path": "c", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu", "divisor": "10m"}},
        {"path": "d"},
        {"path": "ok", "fieldRef": {"fieldPath": "metadata.name"}},
    ]}})));
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs[0].starts_with("a: unsupported fieldPath"));
    assert!(errs[1].contains("ghost"));
    assert!(errs[2].contains("cpu divisor"));
    assert!(errs[3].contains("one of fieldRef and resourceFieldRef is required"));
}

#[test]
fn projected_merges_in_order_and_collects_errors() {
    let w = World::new(pod(json!({})));
    let p = w
        .build(json!({"name": "v", "projected": {"defaultMode": 0o440, "sources": [
            {"secret": {"name": "creds", "items": [{"key": "user", "path": "same"}]}},
            {"configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "same"}]}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"serviceAccountToken": {"audience": "vault", "path": "token"}},
        ]}}))
        .unwrap();
    let f = files(&p);
    assert_eq!(f["same"], ("x=1", 0o440), "a later source overwrites");
    assert_eq!(f["name"], ("web-0", 0o440));
    assert_eq!(
        f["token"],
        ("header.claims.sig", 0o440),
        "no FsUser, no fsGroup: defaultMode"
    );
    assert_eq!(p["token"].fs_user, None);

    let errs = errors(w.build(json!({"name": "v", "projected": {"sources": [
        {"secret": {"name": "nope"}},
        {"configMap": {"name": "nope2"}},
        {"secret": {"name": "opt", "optional": true}},
        {"serviceAccountToken": {"audience": "other", "path": "t"}},
        {"serviceAccountToken": {"path": "t2", "expirationSeconds": 60}},
        {},
        {"secret": {"name": "creds"}, "configMap": {"name": "cfg"}},
        {"clusterTrustBundle": {"path": "ctb", "name": "x"}},
    ]}})));
    assert_eq!(errs.len(), 7, "{errs:?}");
}

#[test]
fn token_mode_and_owner_follow_fs_user_and_fs_group() {
    let vol = json!({"name": "v", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "vault", "path": "token"}}]}});
    // All containers resolve to uid 1000 (pod-level default plus an explicit match).
    let w = World::new(pod(json!({"securityContext": {"runAsUser": 1000},
        "containers": [{"name": "app", "securityContext": {"runAsUser": 1000}}, {"name": "side"}]})));
    let p = w.build(vol.clone()).unwrap();
    assert_eq!(p["token"].mode, 0o600);
    assert_eq!(p["token"].fs_user, Some(1000));
    // Differing users: no FsUser; fsGroup alone still makes it 0600.
    let w = World::new(pod(json!({"securityContext": {"fsGroup": 2000},
        "containers": [{"name": "app", "securityContext": {"runAsUser": 1}}, {"name": "b", "securityContext": {"runAsUser": 2}}]})));
    let p = w.build(vol.clone()).unwrap();
    assert_eq!((p["token"].mode, p["token"].fs_user), (0o600, None));
    // An init container without a user breaks the common user.
    let w = World::new(pod(
        json!({"containers": [{"name": "app", "securityContext": {"runAsUser": 5}}]}),
    ));
    assert_eq!(fs_user(&w.pod), None);
}

#[test]
fn references_and_kinds() {
    let v: Volume = obj(json!({"name": "v", "projected": {"sources": [
        {"secret": {"name": "s1"}}, {"configMap": {"name": "c1"}},
        {"serviceAccountToken": {"path": "t"}}]}}));
    let r = references(&v).unwrap();
    assert_eq!(r.secrets.into_iter().collect::<Vec<_>>(), vec!["s1"]);
    assert_eq!(r.config_maps.into_iter().collect::<Vec<_>>(), vec!["c1"]);
    assert_eq!(
        r.tokens.into_iter().collect::<Vec<_>>(),
        vec![TokenKey {
            audience: String::new(),
            expiration_seconds: 3600
        }]
    );
    assert_eq!(Kind::of(&v), Some(Kind::Projected));
    assert!(Kind::Projected.on_tmpfs() && Kind::Secret.on_tmpfs() && Kind::DownwardApi.on_tmpfs());
    assert!(!Kind::ConfigMap.on_tmpfs());
    let bad: Volume = obj(json!({"name": "v", "projected": {"sources": [
        {"serviceAccountToken": {"path": "t", "expirationSeconds": 599}}]}}));
    assert!(references(&bad).is_err());
}

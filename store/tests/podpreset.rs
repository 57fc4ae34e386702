//! PodPreset through the store API: stored as a kind, merged into pods at creation,
//! conflicts reported as events, and kept by a re-apply of the pod's manifest.

use serde_json::json;
use strata_store::Store;
use strata_store::apply::{Outcome, parse_manifests};
use strata_store::k8s_openapi::api::core::v1::Pod;
use strata_store::podpreset::{CONFLICT_REASON, PodPreset};

mod common;
use common::{from_json, open};

fn preset(name: &str, env_value: &str) -> PodPreset {
    from_json(json!({
        "apiVersion": "settings.k8s.io/v1alpha1", "kind": "PodPreset",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"role": "frontend"}},
            "env": [{"name": "DB_PORT", "value": env_value}],
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        },
    }))
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }))
}

fn env_of(p: &Pod) -> Vec<(String, String)> {
    p.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn presets_merge_into_matching_pods_and_conflicts_raise_an_event() {
    let (_dir, store) = open();
    let created = store.create(&preset("db-port", "6379")).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();

    let merged = store
        .create(&pod("web", json!({"role": "frontend"})))
        .await
        .unwrap();
    assert_eq!(env_of(&merged), [("DB_PORT".into(), "6379".into())]);
    let ann = merged.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann.get("podpreset.admission.kubernetes.io/podpreset-db-port"),
        Some(&rv)
    );
    let spec = merged.spec.unwrap();
    assert_eq!(spec.volumes.unwrap()[0].name, "cache");
    assert_eq!(
        spec.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
        "/cache"
    );

    let other = store
        .create(&pod("worker", json!({"role": "backend"})))
        .await
        .unwrap();
    assert!(env_of(&other).is_empty());

    // A second preset setting the same variable to another value: neither applies.
    store.create(&preset("db-port-2", "6380")).await.unwrap();
    let conflicted = store
        .create(&pod("web-2", json!({"role": "frontend"})))
        .await
        .unwrap();
    assert!(env_of(&conflicted).is_empty());
    assert!(conflicted.metadata.annotations.is_none());
    let events = store.events_for("Pod", "default", "web-2").await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason.as_deref(), Some(CONFLICT_REASON));
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    let message = events[0].message.clone().unwrap();
    assert!(message.contains("preset db-port-2"), "{message}");
    assert!(message.contains("DB_PORT"), "{message}");

    // Opting out skips even conflicting presets, and records nothing.
    let mut excluded = pod("web-3", json!({"role": "frontend"}));
    excluded.metadata.annotations = Some(
        [(
            "podpreset.admission.kubernetes.io/exclude".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let excluded = store.create(&excluded).await.unwrap();
    assert!(env_of(&excluded).is_empty());
    assert!(
        store
            .events_for("Pod", "default", "web-3")
            .await
            .unwrap()
            .is_empty()
    );

    // Presets of other namespaces do not apply.
    store
        .create_value(
            strata_store::kinds::KindRef::of::<strata_store::k8s_openapi::api::core::v1::Namespace>(
            ),
            json!({"metadata": {"name": "other"}}),
        )
        .await
        .unwrap();
    let mut elsewhere = pod("web", json!({"role": "frontend"}));
    elsewhere.metadata.namespace = Some("other".into());
    assert!(env_of(&store.create(&elsewhere).await.unwrap()).is_empty());
}

#[tokio::test]
async fn invalid_presets_are_refused_and_the_spec_cannot_change() {
    let (_dir, store) = open();
    let mut bad = preset("bad", "1");
    bad.spec.as_mut().unwrap().volumes = None;
    let err = store.create(&bad).await.unwrap_err().to_string();
    assert!(err.contains("spec.volumeMounts[0].name"), "{err}");

    let stored = store.create(&preset("p", "1")).await.unwrap();
    let mut changed = stored.clone();
    changed.spec = preset("p", "2").spec;
    changed
        .metadata
        .labels
        .get_or_insert_default()
        .insert("x".into(), "y".into());
    let updated = store.update(&changed).await.unwrap();
    assert_eq!(updated.spec, stored.spec);
    assert_eq!(
        updated
            .metadata
            .labels
            .unwrap()
            .get("x")
            .map(String::as_str),
        Some("y")
    );
}

#[tokio::test]
async fn apply_creates_presets_before_pods_of_the_same_file_and_reapply_keeps_them() {
    let (_dir, store) = open();
    let text = "
apiVersion: settings.k8s.io/v1alpha1
kind: PodPreset
metadata: {name: greeting}
spec:
  selector: {matchLabels: {app: hello}}
  env: [{name: GREETING, value: hi}]
---
apiVersion: v1
kind: Pod
metadata: {name: hello, labels: {app: hello}}
spec:
  containers: [{name: c, image: busybox, env: [{name: OWN, value: \"1\"}]}]
";
    let applied = store
        .apply(parse_manifests(text, "default").unwrap())
        .await
        .unwrap();
    assert!(applied.iter().all(|a| a.outcome == Outcome::Created));
    let hello: Pod = store.get("default", "hello").await.unwrap();
    assert_eq!(
        env_of(&hello),
        [("OWN".into(), "1".into()), ("GREETING".into(), "hi".into())]
    );
    // Re-applying the unchanged file leaves the injected variable in place.
    let again = store
        .apply(parse_manifests(text, "default").unwrap())
        .await
        .unwrap();
    assert!(
        again.iter().all(|a| a.outcome == Outcome::Unchanged),
        "{:?}",
        again.iter().map(|a| a.outcome).collect::<Vec<_>>()
    );
    let hello: Pod = store.get("default", "hello").await.unwrap();
    assert_eq!(env_of(&hello).len(), 2);
}

//! The join as a pure function, and `read` against a mocked API server (tower-test, as
//! strata-store-kube's tests).

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use strata_csi::ids::{Kind, ObjectId};
use strata_store::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use tower_test::mock::{self, Handle};

use super::*;

const DRIVER: &str = "local.csi.strata.io";

fn id(node: &str, name: &str) -> String {
    ObjectId::for_name(node, "image", Kind::Volume, name).to_string()
}

fn local(name: &str, phase: &str) -> VolumeInfo {
    VolumeInfo {
        id: id("n1", name),
        name: name.into(),
        pool: "image".into(),
        backend: "image".into(),
        phase: phase.into(),
        capacity_bytes: 1 << 30,
        used_bytes: None,
        fs_type: "ext4".into(),
        path: PathBuf::from(format!("/pools/image/volumes/{name}.img")),
        data_present: true,
        in_database: true,
        has_record: true,
        loop_devices: vec![],
        staging_path: None,
        staging_mounted: false,
        published: vec![],
        source: None,
        created_unix: 1,
        abnormal: false,
        condition: "ok".into(),
    }
}

fn pv(name: &str, driver: &str, handle: &str, node: &str, claim: Option<&str>) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume",
           "metadata": {"name": name, "resourceVersion": "3"},
           "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                    "csi": {"driver": driver, "volumeHandle": handle},
                    "claimRef": claim.map(|c| json!({"namespace": "default", "name": c})),
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": TOPOLOGY_KEY, "operator": "In", "values": [node]}]}]}}},
           "status": {"phase": if claim.is_some() { "Bound" } else { "Available" }}})
}

fn claim(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": "default", "resourceVersion": "4"},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
           "status": {"phase": "Bound"}})
}

fn pod(name: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "resourceVersion": "5"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// The local volumes and cluster objects of both tests: `used` (PV, claim, pod), `forgot`
/// (ready, no PV), `creating` (no PV yet), an inline ephemeral one, a PV of this node whose
/// volume is gone, one of another node and one of another driver.
fn fixture() -> (Vec<VolumeInfo>, Vec<Value>, Vec<Value>, Vec<Value>) {
    let mut ephemeral = local("eph", "Ready");
    ephemeral.name = strata_csi::driver::ephemeral_name("csi-abc");
    let volumes = vec![
        local("used", "Ready"),
        local("forgot", "Ready"),
        local("creating", "Creating"),
        ephemeral,
    ];
    let pvs = vec![
        pv(
            "pvc-used",
            DRIVER,
            &id("n1", "used"),
            "n1",
            Some("data-web-0"),
        ),
        pv(
            "pvc-gone",
            DRIVER,
            &id("n1", "gone"),
            "n1",
            Some("data-web-1"),
        ),
        pv("pvc-n2", DRIVER, &id("n2", "x"), "n2", None),
        pv(
            "pvc-nfs",
            "nfs.example.com",
            &id("n1", "forgot"),
            "n1",
            None,
        ),
    ];
    let claims = vec![claim("data-web-0")];
    let pods = vec![pod("web-0", "data-web-0"), pod("other", "unrelated")];
    (volumes, pvs, claims, pods)
}

fn check(view: &ClusterView) {
    assert_eq!(view.node, "n1");
    assert_eq!(
        view.owners.keys().collect::<Vec<_>>(),
        vec![&id("n1", "used")]
    );
    assert_eq!(
        view.owners[&id("n1", "used")],
        Owner {
            persistent_volume: "pvc-used".into(),
            phase: "Bound".into(),
            claim: Some("default/data-web-0".into()),
            claim_phase: Some("Bound".into()),
            pods: vec!["default/web-0".into()],
        }
    );
    let found: Vec<_> = view
        .findings
        .iter()
        .map(|f| (f.kind, f.subject.as_str()))
        .collect();
    let forgot = id("n1", "forgot");
    assert_eq!(
        found,
        vec![
            (ClusterFindingKind::NoPersistentVolume, forgot.as_str()),
            (ClusterFindingKind::VolumeMissing, "pvc-gone"),
        ],
        "another driver's PV naming the same handle does not count; another node's PV is not ours"
    );
    assert!(
        view.findings[0]
            .explanation
            .contains("doctor --repair leaves it"),
        "{}",
        view.findings[0].explanation
    );
    assert!(view.findings[1].explanation.contains("default/data-web-1"));
}

#[test]
fn join_names_pv_claim_and_pods_and_flags_both_kinds_of_orphans() {
    let (volumes, pvs, claims, pods) = fixture();
    let pvs: Vec<PersistentVolume> = pvs.into_iter().map(typed).collect();
    let claims: Vec<PersistentVolumeClaim> = claims.into_iter().map(typed).collect();
    let pods: Vec<Pod> = pods.into_iter().map(typed).collect();
    check(&join("n1", DRIVER, &volumes, &pvs, &claims, &pods));
    // A claimRef naming no claim reads as Missing.
    let view = join("n1", DRIVER, &volumes, &pvs, &[], &[]);
    assert_eq!(
        view.owners[&id("n1", "used")].claim_phase.as_deref(),
        Some("Missing")
    );
}

#[test]
fn the_node_defaults_to_the_one_the_volume_ids_name() {
    let args = ClusterArgs {
        kubeconfig: None,
        in_cluster: true,
        node_id: None,
        driver: DRIVER.into(),
    };
    assert_eq!(args.node(&[local("a", "Ready")]).unwrap(), "n1");
    let given = ClusterArgs {
        node_id: Some("n9".into()),
        ..args
    };
    assert_eq!(given.node(&[local("a", "Ready")]).unwrap(), "n9");
}

#[tokio::test]
async fn read_lists_pvs_then_claims_and_pods_of_their_namespaces_only() {
    let (svc, mut server): (_, Handle<Request<Body>, Response<Body>>) = mock::pair();
    let store = strata_store_kube::KubeStore::new(kube::Client::new(svc, "default"), "volctl");
    let (volumes, pvs, claims, pods) = fixture();
    let reader = tokio::spawn(async move { read(&store, "n1", DRIVER, &volumes).await });
    let list = |kind: &str, items: Vec<Value>| {
        json!({"apiVersion": "v1", "kind": format!("{kind}List"),
               "metadata": {"resourceVersion": "10"}, "items": items})
    };
    for (path, body) in [
        ("/api/v1/persistentvolumes", list("PersistentVolume", pvs)),
        (
            "/api/v1/namespaces/default/persistentvolumeclaims",
            list("PersistentVolumeClaim", claims),
        ),
        ("/api/v1/namespaces/default/pods", list("Pod", pods)),
    ] {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), server.next_request())
            .await
            .expect("a request within 10 s")
            .expect("the client is alive");
        assert_eq!(req.method(), "GET");
        assert_eq!(req.uri().path(), path);
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }
    check(&reader.await.unwrap().unwrap());
    let more = tokio::time::timeout(Duration::from_millis(300), server.next_request()).await;
    assert!(
        !matches!(more, Ok(Some(_))),
        "nothing else is read, nothing written"
    );
}

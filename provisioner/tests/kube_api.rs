//! Per-node mode against a mocked API server (tower-test, as strata-store-kube's own tests):
//! each test plays the server's side request by request and checks what was sent.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use strata_provisioner::capacity::{self, Measure, Measured, Published, Publisher};
use strata_provisioner::k8s_openapi::api::core::v1::PersistentVolumeClaim;
use strata_provisioner::k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use strata_provisioner::provision::immediate::{self, Placed};
use strata_store_kube::KubeStore;
use tower_test::mock::{self, Handle, SendResponse};

type Server = Handle<Request<Body>, Response<Body>>;

fn store() -> (KubeStore, Server) {
    let (svc, server) = mock::pair::<Request<Body>, Response<Body>>();
    (
        KubeStore::new(kube::Client::new(svc, "default"), "test"),
        server,
    )
}

/// The next request: method, path and query, JSON body (Null when empty), where to answer.
async fn next(server: &mut Server) -> (String, String, Value, SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), server.next_request())
        .await
        .expect("a request within 10 s")
        .expect("the client is alive");
    let method = req.method().to_string();
    let target = req.uri().path_and_query().unwrap().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (method, target, body, send)
}

fn answer(send: SendResponse<Response<Body>>, code: u16, body: Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

/// No request is pending: the client sent nothing more.
async fn quiet(server: &mut Server) {
    let more = tokio::time::timeout(Duration::from_millis(300), server.next_request()).await;
    if let Ok(Some((req, _))) = more {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

const DRIVER: &str = "local.csi.strata.io";
const NS: &str = "strata-system";
const CAPS: &str = "/apis/storage.k8s.io/v1/namespaces/strata-system/csistoragecapacities";

fn class(name: &str, provisioner: &str) -> StorageClass {
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name}, "provisioner": provisioner,
        "parameters": {"pool": "image"}
    }))
    .unwrap()
}

fn capacity_object(name: &str, class: &str, node: &str, cap: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "resourceVersion": rv,
                     "labels": {capacity::DRIVER_NAME_LABEL: DRIVER,
                                capacity::MANAGED_BY_LABEL: capacity::managed_by(node)}},
        "storageClassName": class,
        "nodeTopology": {"matchLabels": {"topology.strata.io/node": node}},
        "capacity": cap,
    })
}

/// GetCapacity from a table: bytes per class, anything else not served.
struct Table(BTreeMap<&'static str, i64>);

impl Measure for Table {
    async fn measure(&self, class: &StorageClass, segment: &BTreeMap<String, String>) -> Measured {
        assert_eq!(
            segment,
            &capacity::segment("n1"),
            "asked for this node's segment"
        );
        match self.0.get(class.metadata.name.as_deref().unwrap()) {
            Some(&b) => Measured::Bytes {
                available: b,
                maximum: Some(b / 2),
            },
            None => Measured::NotServed,
        }
    }
}

#[tokio::test]
async fn capacity_objects_are_created_updated_and_deleted_for_this_node_only() {
    let (store, mut server) = store();
    let publisher = Publisher {
        driver: DRIVER.into(),
        node: "n1".into(),
        namespace: NS.into(),
        owner: None,
    };
    let classes = vec![
        class("fast", DRIVER),
        class("slow", DRIVER),
        class("nfs", "other.csi.example.com"),
        class("elsewhere", DRIVER),
    ];
    let table = Table(BTreeMap::from([("fast", 2 << 30), ("slow", 1 << 30)]));
    let round = tokio::spawn({
        let store = store.clone();
        async move { capacity::publish(&store, &table, &publisher, &classes).await }
    });

    // Only this node's objects are listed (both labels in the selector).
    let (m, target, _, send) = next(&mut server).await;
    assert_eq!(m, "GET");
    assert!(target.starts_with(CAPS), "{target}");
    assert!(
        target.contains("labelSelector=csi.storage.k8s.io%2Fdrivername%3Dlocal.csi.strata.io%2Ccsi.storage.k8s.io%2Fmanaged-by%3Dstrata-provisioner-n1"),
        "{target}"
    );
    answer(
        send,
        200,
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacityList",
               "metadata": {"resourceVersion": "20"},
               "items": [capacity_object("csisc-slow", "slow", "n1", "512Mi", "11"),
                         capacity_object("csisc-gone", "deleted-class", "n1", "1Gi", "12"),
                         capacity_object("csisc-elsewhere", "elsewhere", "n1", "1Gi", "13")]}),
    );

    // A new object for "fast".
    let (m, target, body, send) = next(&mut server).await;
    assert_eq!(
        (m.as_str(), target.split('?').next().unwrap()),
        ("POST", CAPS)
    );
    assert_eq!(body["metadata"]["generateName"], "csisc-");
    assert_eq!(body["storageClassName"], "fast");
    assert_eq!(body["capacity"], "2Gi");
    assert_eq!(body["maximumVolumeSize"], "1Gi");
    assert_eq!(
        body["nodeTopology"],
        json!({"matchLabels": {"topology.strata.io/node": "n1"}})
    );
    assert_eq!(
        body["metadata"]["labels"][capacity::MANAGED_BY_LABEL],
        "strata-provisioner-n1"
    );
    assert!(body["metadata"]["ownerReferences"].is_null());
    let mut made = body.clone();
    made["metadata"]["name"] = json!("csisc-abcde");
    made["metadata"]["resourceVersion"] = json!("21");
    answer(send, 201, made);

    // "slow" changed: compare-and-swap on the listed version.
    let (m, target, body, send) = next(&mut server).await;
    assert_eq!(
        (m.as_str(), target.split('?').next().unwrap()),
        ("PUT", format!("{CAPS}/csisc-slow").as_str())
    );
    assert_eq!(body["metadata"]["resourceVersion"], "11");
    assert_eq!(body["capacity"], "1Gi");
    assert_eq!(body["maximumVolumeSize"], "512Mi");
    answer(send, 200, body);

    // Stale: "elsewhere" (the driver does not serve it here), then a deleted class's.
    for name in ["csisc-elsewhere", "csisc-gone"] {
        let (m, target, _, send) = next(&mut server).await;
        assert_eq!(
            (m.as_str(), target.as_str()),
            ("GET", format!("{CAPS}/{name}").as_str())
        );
        answer(send, 200, capacity_object(name, "x", "n1", "1Gi", "14"));
        let (m, target, body, send) = next(&mut server).await;
        assert_eq!(
            (m.as_str(), target.split('?').next().unwrap()),
            ("DELETE", format!("{CAPS}/{name}").as_str())
        );
        assert_eq!(
            body["preconditions"]["uid"],
            format!("uid-{name}"),
            "never a newer object of that name"
        );
        answer(
            send,
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
    }
    let done = round.await.unwrap().unwrap();
    assert_eq!(
        done,
        Published {
            created: 1,
            updated: 1,
            deleted: 2
        }
    );
    quiet(&mut server).await;
}

#[tokio::test]
async fn an_unchanged_round_writes_nothing() {
    let (store, mut server) = store();
    let publisher = Publisher {
        driver: DRIVER.into(),
        node: "n1".into(),
        namespace: NS.into(),
        owner: None,
    };
    let classes = vec![class("fast", DRIVER)];
    let table = Table(BTreeMap::from([("fast", 2 << 30)]));
    let round = tokio::spawn({
        let store = store.clone();
        async move { capacity::publish(&store, &table, &publisher, &classes).await }
    });
    let (_, _, _, send) = next(&mut server).await;
    let mut same = capacity_object("csisc-fast", "fast", "n1", "2147483648", "11");
    same["maximumVolumeSize"] = json!("1Gi");
    answer(
        send,
        200,
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacityList",
               "metadata": {"resourceVersion": "20"}, "items": [same]}),
    );
    assert_eq!(round.await.unwrap().unwrap(), Published::default());
    quiet(&mut server).await;
}

fn immediate_claim(created: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "data", "namespace": "default", "uid": "claim-uid-7",
                        "resourceVersion": "5", "creationTimestamp": created,
                        "annotations": {"volume.kubernetes.io/storage-provisioner": DRIVER}},
           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                    "resources": {"requests": {"storage": "1Gi"}}}})
}

fn immediate_class() -> StorageClass {
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "fast"}, "provisioner": DRIVER, "volumeBindingMode": "Immediate"
    }))
    .unwrap()
}

fn published(nodes: &[&str]) -> Vec<CSIStorageCapacity> {
    nodes
        .iter()
        .map(|n| {
            serde_json::from_value(capacity_object(
                &format!("csisc-{n}"),
                "fast",
                n,
                "10Gi",
                "3",
            ))
            .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn two_nodes_race_for_an_immediate_claim_and_the_loser_backs_off() {
    let nodes = ["n1", "n2"];
    let caps = published(&nodes);
    let pvc: PersistentVolumeClaim =
        serde_json::from_value(immediate_claim("2020-01-01T00:00:00Z")).unwrap();
    let ranked = immediate::rank(
        "claim-uid-7",
        &nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    );
    // The claim is old: both nodes' turns have come, and both write at once.
    let step = Duration::from_secs(15);
    let (winner, loser) = (ranked[0].clone(), ranked[1].clone());
    let (store_w, mut server_w) = store();
    let (store_l, mut server_l) = store();
    let race = |store: KubeStore, node: String| {
        let (pvc, caps) = (pvc.clone(), caps.clone());
        tokio::spawn(async move {
            immediate::place(&store, &pvc, &immediate_class(), &node, &caps, step).await
        })
    };
    let w = race(store_w, winner.clone());
    let l = race(store_l, loser.clone());

    let claim_url = "/api/v1/namespaces/default/persistentvolumeclaims/data";
    let (m, target, body_w, send_w) = next(&mut server_w).await;
    assert_eq!(
        (m.as_str(), target.split('?').next().unwrap()),
        ("PUT", claim_url)
    );
    assert_eq!(
        body_w["metadata"]["resourceVersion"], "5",
        "compare-and-swap"
    );
    assert_eq!(
        body_w["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        winner.as_str()
    );
    let (m, _, body_l, send_l) = next(&mut server_l).await;
    assert_eq!(m, "PUT");
    assert_eq!(body_l["metadata"]["resourceVersion"], "5");
    // The server applies the winner's write; the loser's, on the same version, conflicts.
    let mut stored = body_w.clone();
    stored["metadata"]["resourceVersion"] = json!("6");
    answer(send_w, 200, stored.clone());
    answer(
        send_l,
        409,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
               "reason": "Conflict", "message": "the object has been modified",
               "details": {"kind": "persistentvolumeclaims"}}),
    );
    // The loser re-reads, sees the winner's node and leaves the claim alone.
    let (m, target, _, send) = next(&mut server_l).await;
    assert_eq!((m.as_str(), target.as_str()), ("GET", claim_url));
    answer(send, 200, stored);

    match w.await.unwrap().unwrap() {
        Placed::Here(c) => assert_eq!(
            c.metadata.annotations.unwrap()["volume.kubernetes.io/selected-node"],
            winner
        ),
        other => panic!("the winner: {other:?}"),
    }
    assert_eq!(
        l.await.unwrap().unwrap(),
        Placed::Elsewhere {
            winner: Some(winner)
        }
    );
    quiet(&mut server_l).await;
    quiet(&mut server_w).await;
}

#[tokio::test]
async fn a_later_ranked_or_unfitting_node_writes_nothing() {
    let nodes = ["n1", "n2"];
    let ranked = immediate::rank(
        "claim-uid-7",
        &nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    );
    let now = jiff_now();
    let pvc: PersistentVolumeClaim = serde_json::from_value(immediate_claim(&now)).unwrap();
    let step = Duration::from_secs(600);
    let (store, mut server) = store();
    let placed = immediate::place(
        &store,
        &pvc,
        &immediate_class(),
        &ranked[1],
        &published(&nodes),
        step,
    )
    .await
    .unwrap();
    let Placed::Wait(d) = placed else {
        panic!("{placed:?}")
    };
    assert!(d > Duration::from_secs(500) && d <= step, "{d:?}");
    // A node with no published capacity for the class is no candidate at all.
    let placed = immediate::place(
        &store,
        &pvc,
        &immediate_class(),
        "n3",
        &published(&nodes),
        step,
    )
    .await
    .unwrap();
    assert_eq!(placed, Placed::NotHere);
    quiet(&mut server).await;
}

/// Now as an RFC 3339 timestamp, whole seconds (metav1.Time's precision).
fn jiff_now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn secrets_are_read_with_one_get_from_the_api_server() {
    use strata_provisioner::secrets::{SecretRef, read_secret};
    let (store, mut server) = store();
    let r = SecretRef {
        name: "prov".into(),
        namespace: "team-a".into(),
    };
    let reader = {
        let (store, r) = (store.clone(), r.clone());
        tokio::spawn(async move { read_secret(&store, &r).await })
    };
    let (method, target, _, send) = next(&mut server).await;
    assert_eq!(method, "GET");
    assert!(
        target.starts_with("/api/v1/namespaces/team-a/secrets/prov"),
        "{target}"
    );
    answer(
        send,
        200,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "prov", "namespace": "team-a"},
            "data": {"password": "aHVudGVyMg=="}
        }),
    );
    let data = reader.await.unwrap().expect("read");
    let m: BTreeMap<String, String> = data.to_map();
    assert_eq!(m["password"], "hunter2", "base64 decoded");

    let reader = tokio::spawn(async move { read_secret(&store, &r).await });
    let (_, target, _, send) = next(&mut server).await;
    assert!(target.starts_with("/api/v1/namespaces/team-a/secrets/prov"));
    answer(
        send,
        404,
        json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "secrets \"prov\" not found", "reason": "NotFound", "code": 404
        }),
    );
    let err = reader.await.unwrap().expect_err("missing");
    let msg = strata_report::chain(&err);
    assert!(
        msg.starts_with("error getting secret prov in namespace team-a"),
        "{msg}"
    );
    quiet(&mut server).await;
}

//! The backend against a mocked API server (tower-test, as kube-rs tests its clients): each
//! test plays the server's side request by request and checks what the store sent.

use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use strata_store::k8s_openapi::api::core::v1::{
    Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim,
};
use strata_store::{Deleted, EventType, Preconditions, Store};
use tower_test::mock::{self, Handle, SendResponse};

use super::KubeStore;

type Server = Handle<Request<Body>, Response<Body>>;

fn store() -> (KubeStore, Server) {
    let (svc, server) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    (
        KubeStore::new(client, "test").with_watch_pause(Duration::ZERO),
        server,
    )
}

/// The next request: its method and path-and-query, its JSON body (Null when empty), and
/// where to answer.
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

fn answer(send: SendResponse<Response<Body>>, code: u16, body: impl Into<Vec<u8>>) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(body.into()))
            .unwrap(),
    );
}

fn json_answer(send: SendResponse<Response<Body>>, code: u16, body: Value) {
    answer(send, code, serde_json::to_vec(&body).unwrap());
}

fn status(code: u16, reason: &str, details_kind: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": format!("{reason} from the test server"),
           "details": {"kind": details_kind}})
}

fn pvc(name: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": "default", "resourceVersion": rv, "uid": format!("uid-{name}")},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
}

fn event_line(type_: &str, object: Value) -> String {
    format!("{}\n", json!({"type": type_, "object": object}))
}

#[tokio::test]
async fn list_pages_then_watch_resumes_where_the_server_ended_it_and_ends_on_410() {
    let (store, mut server) = store();
    let lister = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .list::<PersistentVolumeClaim>(Some("default"), None)
                .await
        }
    });
    let (m, target, _, send) = next(&mut server).await;
    assert_eq!(m, "GET");
    assert_eq!(
        target,
        "/api/v1/namespaces/default/persistentvolumeclaims?&limit=500"
    );
    json_answer(
        send,
        200,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList",
        "metadata": {"resourceVersion": "10", "continue": "page2"}, "items": [pvc("a", "7")]}),
    );
    let (_, target, _, send) = next(&mut server).await;
    assert!(target.contains("continue=page2"), "{target}");
    json_answer(
        send,
        200,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList",
        "metadata": {"resourceVersion": "10"}, "items": [pvc("b", "9")]}),
    );
    let list = lister.await.unwrap().unwrap();
    assert_eq!(list.resource_version, 10);
    assert_eq!(list.items.len(), 2);

    let watcher = tokio::spawn({
        let store = store.clone();
        async move {
            let mut w = store
                .watch::<PersistentVolumeClaim>(Some("default"), 10)
                .await
                .unwrap();
            let mut seen = Vec::new();
            while let Some(item) = w.next().await {
                seen.push(item.map(|e| {
                    (
                        e.type_name(),
                        e.object().metadata.resource_version.clone().unwrap(),
                    )
                }));
            }
            seen
        }
    });
    let (_, target, _, send) = next(&mut server).await;
    assert!(target.contains("watch=true"), "{target}");
    assert!(target.contains("resourceVersion=10"), "{target}");
    assert!(target.contains("allowWatchBookmarks=true"), "{target}");
    // One change, a bookmark past it, then the server ends the watch (its timeout).
    let body = event_line("ADDED", pvc("c", "11"))
        + &event_line(
            "BOOKMARK",
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"resourceVersion": "15"}}),
        );
    answer(send, 200, body);
    // Reopened from the bookmark, not from the start.
    let (_, target, _, send) = next(&mut server).await;
    assert!(target.contains("resourceVersion=15"), "{target}");
    let body = event_line("MODIFIED", pvc("c", "16"))
        + &event_line(
            "ERROR",
            status(410, "Expired", "")
                .as_object()
                .cloned()
                .map(Value::Object)
                .unwrap(),
        );
    answer(send, 200, body);
    let seen = watcher.await.unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].as_ref().unwrap(), &("ADDED", "11".to_string()));
    assert_eq!(seen[1].as_ref().unwrap(), &("MODIFIED", "16".to_string()));
    let gone = seen[2].as_ref().unwrap_err();
    assert!(gone.is_gone(), "{gone}");
    assert!(
        matches!(
            gone,
            strata_store::Error::Gone {
                resource_version: 16
            }
        ),
        "{gone:?}"
    );
}

#[tokio::test]
async fn a_watch_refused_at_open_is_the_callers_error() {
    let (store, mut server) = store();
    let w = tokio::spawn({
        let store = store.clone();
        async move { store.watch::<PersistentVolume>(None, 3).await.map(|_| ()) }
    });
    let (_, target, _, send) = next(&mut server).await;
    assert!(
        target.starts_with("/api/v1/persistentvolumes?"),
        "cluster-scoped: {target}"
    );
    json_answer(send, 403, status(403, "Forbidden", "persistentvolumes"));
    let e = w.await.unwrap().unwrap_err();
    assert!(e.is_forbidden(), "{e}");
}

#[tokio::test]
async fn an_unconditional_update_rereads_after_a_conflict() {
    let (store, mut server) = store();
    let mut claim: PersistentVolumeClaim = serde_json::from_value(pvc("a", "")).unwrap();
    claim.metadata.resource_version = None;
    claim
        .metadata
        .labels
        .get_or_insert_default()
        .insert("x".into(), "y".into());
    let update = tokio::spawn({
        let store = store.clone();
        async move { store.update(&claim).await }
    });
    for (rv, code) in [("5", 409), ("6", 200)] {
        let (m, target, _, send) = next(&mut server).await;
        assert_eq!(
            (m.as_str(), target.as_str()),
            ("GET", "/api/v1/namespaces/default/persistentvolumeclaims/a")
        );
        json_answer(send, 200, pvc("a", rv));
        let (m, target, body, send) = next(&mut server).await;
        assert_eq!(m, "PUT");
        assert!(
            target.starts_with("/api/v1/namespaces/default/persistentvolumeclaims/a"),
            "{target}"
        );
        assert_eq!(
            body["metadata"]["resourceVersion"], rv,
            "the version just read"
        );
        assert_eq!(body["metadata"]["labels"]["x"], "y");
        if code == 409 {
            json_answer(send, 409, status(409, "Conflict", "persistentvolumeclaims"));
        } else {
            let mut stored = body.clone();
            stored["metadata"]["resourceVersion"] = json!("7");
            json_answer(send, 200, stored);
        }
    }
    let stored = update.await.unwrap().unwrap();
    assert_eq!(stored.metadata.resource_version.as_deref(), Some("7"));

    // With a version it is compare-and-swap: the conflict is the caller's, no retry.
    let claim: PersistentVolumeClaim = serde_json::from_value(pvc("a", "7")).unwrap();
    let update = tokio::spawn({
        let store = store.clone();
        async move { store.update_status(&claim).await }
    });
    let (m, target, _, send) = next(&mut server).await;
    assert_eq!(m, "PUT");
    assert!(
        target.contains("/persistentvolumeclaims/a/status"),
        "{target}"
    );
    json_answer(send, 409, status(409, "Conflict", "persistentvolumeclaims"));
    let e = update.await.unwrap().unwrap_err();
    assert!(e.is_conflict(), "{e}");
}

#[tokio::test]
async fn removing_the_last_finalizer_and_deleting_report_what_the_server_did() {
    let (store, mut server) = store();
    // A delete held by a finalizer: Pending with the object the server returned.
    let del = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .delete::<PersistentVolumeClaim>("default", "a", Preconditions::default())
                .await
        }
    });
    let (m, _, _, send) = next(&mut server).await;
    assert_eq!(m, "GET");
    let mut held = pvc("a", "8");
    held["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
    json_answer(send, 200, held.clone());
    let (m, _, body, send) = next(&mut server).await;
    assert_eq!(m, "DELETE");
    assert_eq!(
        body["preconditions"]["uid"], "uid-a",
        "only the object just read"
    );
    held["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    held["metadata"]["resourceVersion"] = json!("9");
    json_answer(send, 200, held.clone());
    let pending = del.await.unwrap().unwrap();
    assert!(matches!(&pending, Deleted::Pending(o) if o.metadata.deletion_timestamp.is_some()));

    // The loop removes the finalizer: a compare-and-swap update without it.
    let mut released: PersistentVolumeClaim = serde_json::from_value(held.clone()).unwrap();
    released.metadata.finalizers = Some(vec![]);
    let update = tokio::spawn({
        let store = store.clone();
        async move { store.update(&released).await }
    });
    let (m, _, body, send) = next(&mut server).await;
    assert_eq!(m, "PUT");
    assert_eq!(body["metadata"]["resourceVersion"], "9");
    assert_eq!(body["metadata"]["finalizers"], json!([]));
    json_answer(send, 200, body);
    update.await.unwrap().unwrap();

    // A delete answered with a bare Status: gone, last state from the read before.
    let del = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .delete::<PersistentVolume>("", "pv-1", Preconditions::default())
                .await
        }
    });
    let (_, target, _, send) = next(&mut server).await;
    assert_eq!(target, "/api/v1/persistentvolumes/pv-1");
    json_answer(
        send,
        200,
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-1", "resourceVersion": "3", "uid": "u1"}}),
    );
    let (_, _, _, send) = next(&mut server).await;
    json_answer(
        send,
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    );
    let gone = del.await.unwrap().unwrap();
    assert!(gone.is_gone());
    assert_eq!(gone.into_object().metadata.name.as_deref(), Some("pv-1"));

    // Namespace finalization goes through its subresource.
    let ns: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team", "resourceVersion": "4"}, "spec": {"finalizers": []}}))
    .unwrap();
    let fin = tokio::spawn({
        let store = store.clone();
        async move { store.finalize_namespace(&ns).await }
    });
    let (m, target, body, send) = next(&mut server).await;
    assert_eq!(
        (m.as_str(), target.as_str()),
        ("PUT", "/api/v1/namespaces/team/finalize?")
    );
    json_answer(send, 200, body);
    fin.await.unwrap().unwrap();
}

#[tokio::test]
async fn api_errors_map_to_the_store_errors_the_loops_test_for() {
    let (store, mut server) = store();
    type Check = fn(&strata_store::Error) -> bool;
    let cases: [(u16, Value, Check); 4] = [
        (
            404,
            status(404, "NotFound", "persistentvolumeclaims"),
            |e| e.is_not_found(),
        ),
        (
            409,
            status(409, "AlreadyExists", "persistentvolumeclaims"),
            |e| e.is_already_exists(),
        ),
        (422, status(422, "Invalid", "persistentvolumeclaims"), |e| {
            e.is_invalid()
        }),
        (
            404,
            status(404, "NotFound", "namespaces"),
            |e| matches!(e, strata_store::Error::NamespaceNotFound { namespace } if namespace == "default"),
        ),
    ];
    for (code, body, check) in cases {
        let claim: PersistentVolumeClaim = serde_json::from_value(pvc("a", "3")).unwrap();
        let create = tokio::spawn({
            let store = store.clone();
            async move { store.create(&claim).await }
        });
        let (m, target, sent, send) = next(&mut server).await;
        assert_eq!(
            (m.as_str(), target.as_str()),
            ("POST", "/api/v1/namespaces/default/persistentvolumeclaims?")
        );
        assert!(sent["metadata"].get("resourceVersion").is_none(), "{sent}");
        json_answer(send, code, body);
        let e = create.await.unwrap().unwrap_err();
        assert!(check(&e), "{code}: {e:?}");
    }
    // A server error is neither of those, and says what it was about.
    let get = tokio::spawn({
        let store = store.clone();
        async move { store.get::<PersistentVolumeClaim>("default", "a").await }
    });
    let (_, _, _, send) = next(&mut server).await;
    answer(send, 503, "upstream connect error");
    let e = get.await.unwrap().unwrap_err();
    assert!(matches!(e, strata_store::Error::Backend { .. }), "{e:?}");
    assert!(
        strata_report::chain(&e).contains("PersistentVolumeClaim"),
        "{e}"
    );
}

#[tokio::test]
async fn a_repeated_event_raises_the_count_of_the_first() {
    let (store, mut server) = store();
    let involved = ObjectReference {
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some("default".into()),
        name: Some("data".into()),
        uid: Some("u1".into()),
        ..Default::default()
    };
    for round in 0..2 {
        let rec = tokio::spawn({
            let store = store.clone();
            let involved = involved.clone();
            async move {
                store
                    .record_event(
                        &involved,
                        EventType::Warning,
                        "ProvisioningFailed",
                        "no room",
                    )
                    .await
            }
        });
        let (m, target, body, send) = next(&mut server).await;
        if round == 0 {
            assert_eq!(
                (m.as_str(), target.as_str()),
                ("POST", "/api/v1/namespaces/default/events?")
            );
            assert_eq!(body["count"], 1);
            assert_eq!(body["source"]["component"], "test");
            assert_eq!(body["metadata"]["generateName"], "data.");
            let mut stored = body.clone();
            stored["metadata"]["name"] = json!("data.abc");
            stored["metadata"]["resourceVersion"] = json!("1");
            json_answer(send, 201, stored);
        } else {
            assert_eq!(
                (m.as_str(), target.as_str()),
                ("PATCH", "/api/v1/namespaces/default/events/data.abc?")
            );
            assert_eq!(body["count"], 2);
            json_answer(
                send,
                200,
                json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "data.abc", "namespace": "default"},
                "involvedObject": {}, "count": 2}),
            );
        }
        rec.await.unwrap().unwrap();
    }
}

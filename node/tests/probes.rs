//! Startup, liveness and readiness probes on real containers: a failing liveness probe
//! restarts the container (restart count, events), a readiness probe gates the Ready
//! condition and the container's `ready`, a startup probe holds the other probes and
//! `started` until it succeeds and restarts a container that never starts, a gRPC probe
//! asks a real gRPC health service, an HTTPS probe speaks TLS to a self-signed server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_restarts_the_container() {
    if !testkit::require_root("failing_liveness_probe_restarts_the_container") {
        return;
    }
    let mut env = Env::new("probe-live");
    env.start_node();
    let mut pod = sh_pod("live", "echo up; while true; do sleep 0.2; done", json!({}));
    pod["spec"]["containers"][0]["livenessProbe"] = json!({
        "exec": {"command": ["cat", "/tmp/healthy"]},
        "periodSeconds": 1, "failureThreshold": 2,
    });
    env.create(pod).await;
    let p = env
        .wait_pod("live", "restarted after failing its liveness probe", |p| {
            container(p, "c")["restartCount"].as_i64() >= Some(1)
        })
        .await;
    let c = container(&p, "c");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137, "{c}");
    let ev = env.events("live").await;
    assert!(
        ev.iter().any(|(r, m)| r == "Unhealthy"
            && m.starts_with(
                "Liveness probe failed: command [\"cat\", \"/tmp/healthy\"] exited with 1"
            )),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Killing"
                && m == "Container c failed liveness probe, will be restarted"),
        "{ev:?}"
    );
    env.delete("live").await;
    env.wait_gone("live").await;
    assert!(env.runtime_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probe_gates_ready() {
    if !testkit::require_root("readiness_probe_gates_ready") {
        return;
    }
    let mut env = Env::new("probe-ready");
    env.start_node();
    let mut pod = sh_pod(
        "gated",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
        json!({}),
    );
    pod["spec"]["containers"][0]["readinessProbe"] = json!({
        "exec": {"command": ["cat", "/tmp/ready"]},
        "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 2,
    });
    env.create(pod).await;
    // Running but not ready while the probe fails.
    let p = env
        .wait_pod("gated", "running", |p| running_id(p, "c").is_some())
        .await;
    let id = running_id(&p, "c").unwrap();
    testkit::wait_for("a failed readiness probe", DEADLINE, || {
        let rt = tokio::runtime::Handle::current();
        let ev = tokio::task::block_in_place(|| rt.block_on(env.events("gated")));
        ev.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Readiness probe failed"))
            .then_some(())
    });
    let p = env
        .wait_pod("gated", "status written", |p| {
            status(p)["phase"] == "Running"
        })
        .await;
    assert!(!ready(&p), "{}", status(&p));
    assert_eq!(container(&p, "c")["ready"], false);

    // The probe passes twice in a row: Ready.
    let out = env.exec(&id, &["touch", "/tmp/ready"]);
    assert!(out.status.success(), "{out:?}");
    let p = env.wait_pod("gated", "Ready", ready).await;
    assert_eq!(container(&p, "c")["ready"], true);
    let cond = |p: &strata_store::k8s_openapi::api::core::v1::Pod, t: &str| {
        status(p)["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| c["status"].clone())
    };
    assert_eq!(cond(&p, "ContainersReady"), Some(json!("True")));

    // One failure (failureThreshold 1): not ready again, and never restarted.
    let out = env.exec(&id, &["rm", "/tmp/ready"]);
    assert!(out.status.success(), "{out:?}");
    let p = env.wait_pod("gated", "not Ready", |p| !ready(p)).await;
    assert_eq!(cond(&p, "ContainersReady"), Some(json!("False")));
    assert_eq!(container(&p, "c")["restartCount"], 0);
    assert_eq!(running_id(&p, "c").as_deref(), Some(id.as_str()));
    env.delete("gated").await;
    env.wait_gone("gated").await;
}

/// A startup probe: until it succeeds the container is neither started nor ready and its
/// liveness probe (which would fail) does not run; once it succeeds both start. A startup
/// probe that never succeeds kills the run after failureThreshold attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_probe_holds_the_other_probes_until_it_succeeds() {
    if !testkit::require_root("startup_probe_holds_the_other_probes_until_it_succeeds") {
        return;
    }
    let mut env = Env::new("probe-startup");
    env.start_node();
    let mut pod = sh_pod(
        "slow",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
        json!({}),
    );
    let c = &mut pod["spec"]["containers"][0];
    c["startupProbe"] = json!({
        "exec": {"command": ["sh", "-c", "echo x >> /tmp/startup-attempts; cat /tmp/started"]},
        "periodSeconds": 1, "failureThreshold": 1000,
    });
    // Would restart the container at once if it ran before startup succeeded; it leaves
    // a mark when it runs at all.
    c["livenessProbe"] = json!({
        "exec": {"command": ["sh", "-c", "touch /tmp/liveness-ran; cat /tmp/alive"]},
        "periodSeconds": 1, "failureThreshold": 1,
    });
    env.create(pod).await;
    let p = env
        .wait_pod("slow", "running", |p| running_id(p, "c").is_some())
        .await;
    let id = running_id(&p, "c").unwrap();
    let attempts = || {
        let out = env.exec(&id, &["cat", "/tmp/startup-attempts"]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    testkit::wait_for("three failed startup probes", DEADLINE, || {
        (attempts() >= 3).then_some(())
    });
    let out = env.exec(&id, &["ls", "/tmp/liveness-ran"]);
    assert!(
        !out.status.success(),
        "liveness ran before startup succeeded"
    );
    let ev = env.events("slow").await;
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Startup probe failed")),
        "{ev:?}"
    );
    let p = env
        .wait_pod("slow", "status written", |p| {
            status(p)["phase"] == "Running"
        })
        .await;
    let c = container(&p, "c");
    assert_eq!(
        (
            c["started"].clone(),
            c["ready"].clone(),
            c["restartCount"].clone()
        ),
        (json!(false), json!(false), json!(0)),
        "{c}"
    );

    // Started: the liveness probe runs now, and with /tmp/alive present the container is
    // started, ready (no readiness probe) and never restarted.
    let out = env.exec(&id, &["touch", "/tmp/alive", "/tmp/started"]);
    assert!(out.status.success(), "{out:?}");
    let p = env.wait_pod("slow", "Ready", ready).await;
    assert_eq!(container(&p, "c")["started"], true);
    let out = env.exec(&id, &["rm", "/tmp/alive"]);
    assert!(out.status.success(), "{out:?}");
    let p = env
        .wait_pod("slow", "restarted by its liveness probe", |p| {
            container(p, "c")["restartCount"].as_i64() >= Some(1)
        })
        .await;
    assert_eq!(
        container(&p, "c")["started"],
        false,
        "a new run starts unstarted"
    );
    env.delete("slow").await;
    env.wait_gone("slow").await;

    // A startup probe that never succeeds: killed after failureThreshold attempts.
    let mut pod = sh_pod("never", "while true; do sleep 0.2; done", json!({}));
    pod["spec"]["containers"][0]["startupProbe"] = json!({
        "exec": {"command": ["false"]},
        "periodSeconds": 1, "failureThreshold": 2,
    });
    env.create(pod).await;
    env.wait_pod("never", "restarted after failing its startup probe", |p| {
        container(p, "c")["restartCount"].as_i64() >= Some(1)
    })
    .await;
    let ev = env.events("never").await;
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Killing"
                && m == "Container c failed startup probe, will be restarted"),
        "{ev:?}"
    );
    env.delete("never").await;
    env.wait_gone("never").await;
    assert!(env.runtime_ids().is_empty());
}

/// A gRPC probe calls the standard health service (here tonic-health, a real gRPC server,
/// on the host's loopback, reached by a hostNetwork pod): NOT_SERVING fails it with the
/// kubelet's message, SERVING passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_probe_asks_the_health_service() {
    if !testkit::require_root("grpc_probe_asks_the_health_service") {
        return;
    }
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("db", ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_of(listener)),
    );

    let mut env = Env::new("probe-grpc");
    env.start_node();
    let mut pod = sh_pod(
        "grpc",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
        json!({"hostNetwork": true}),
    );
    pod["spec"]["containers"][0]["readinessProbe"] = json!({
        "grpc": {"port": port, "service": "db"},
        "periodSeconds": 1, "failureThreshold": 1,
    });
    env.create(pod).await;
    testkit::wait_for("a failed gRPC readiness probe", DEADLINE, || {
        let rt = tokio::runtime::Handle::current();
        let ev = tokio::task::block_in_place(|| rt.block_on(env.events("grpc")));
        ev.into_iter().find(|(r, m)| {
            r == "Unhealthy"
                && m == "Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")"
        })
    });
    let p = env
        .wait_pod("grpc", "running", |p| running_id(p, "c").is_some())
        .await;
    assert!(!ready(&p), "{}", status(&p));

    reporter
        .set_service_status("db", ServingStatus::Serving)
        .await;
    env.wait_pod("grpc", "Ready", ready).await;
    env.delete("grpc").await;
    env.wait_gone("grpc").await;
    server.abort();
}

/// The accepted connections of `listener`, as tonic's `serve_with_incoming` takes them.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

/// An HTTPS server on the host's loopback with a self-signed certificate (a test fixture,
/// valid for 100 years) answering every GET with `status`.
fn https_server(status: Arc<AtomicU16>) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cert = CertificateDer::from_pem_file(dir.join("probe-tls.crt")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("probe-tls.key")).unwrap();
    #[allow(deprecated)] // ring, as the node's own TLS
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let Ok(tls) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut s = rustls::StreamOwned::new(tls, tcp);
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                match std::io::Read::read(&mut s, &mut byte) {
                    Ok(1) => req.push(byte[0]),
                    _ => break,
                }
            }
            let code = status.load(Ordering::SeqCst);
            let _ = std::io::Write::write_all(
                &mut s,
                format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            s.conn.send_close_notify();
            let _ = std::io::Write::flush(&mut s);
        }
    });
    port
}

/// An HTTPS probe, as the kubelet's: TLS without verifying the (self-signed)
/// certificate, the status code deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_speaks_tls_without_verifying_the_certificate() {
    if !testkit::require_root("https_probe_speaks_tls_without_verifying_the_certificate") {
        return;
    }
    let status = Arc::new(AtomicU16::new(503));
    let port = https_server(status.clone());
    let mut env = Env::new("probe-https");
    env.start_node();
    let mut pod = sh_pod(
        "tls",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
        json!({"hostNetwork": true}),
    );
    pod["spec"]["containers"][0]["readinessProbe"] = json!({
        "httpGet": {"scheme": "HTTPS", "port": port, "path": "/healthz"},
        "periodSeconds": 1, "failureThreshold": 1,
    });
    env.create(pod).await;
    testkit::wait_for("a failed HTTPS readiness probe", DEADLINE, || {
        let rt = tokio::runtime::Handle::current();
        let ev = tokio::task::block_in_place(|| rt.block_on(env.events("tls")));
        ev.into_iter().find(|(r, m)| {
            r == "Unhealthy"
                && m == "Readiness probe failed: HTTP probe failed with statuscode: 503"
        })
    });
    status.store(200, Ordering::SeqCst);
    env.wait_pod("tls", "Ready", ready).await;
    env.delete("tls").await;
    env.wait_gone("tls").await;
}

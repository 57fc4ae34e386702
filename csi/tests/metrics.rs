//! `strata-csi --metrics-address`: the real binary on an ephemeral port, a few RPCs, then a
//! scrape of `/metrics` (calls by method and code, pool gauges) and `/healthz`.

use std::net::SocketAddr;
use std::time::Duration;

use csi_proto as pb;
use strata_metrics::scrape::{self, Samples};
use testkit::{DriverConfig, DriverProcess, LoopPool};

const MIB: i64 = 1 << 20;

async fn get(addr: SocketAddr, path: &'static str) -> scrape::Reply {
    tokio::task::spawn_blocking(move || scrape::request(addr, "GET", path))
        .await
        .expect("scrape task")
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

async fn samples(addr: SocketAddr) -> Samples {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    scrape::parse(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
}

fn handled(s: &Samples, method: &str, code: &str) -> f64 {
    s.sum(
        "strata_csi_grpc_server_handled_total",
        &[("grpc_method", method), ("grpc_code", code)],
    )
}

fn create_request(name: &str) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 64 * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![pb::VolumeCapability {
            access_type: Some(pb::volume_capability::AccessType::Mount(
                pb::volume_capability::MountVolume {
                    fs_type: "ext4".into(),
                    ..Default::default()
                },
            )),
            access_mode: Some(pb::volume_capability::AccessMode {
                mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_code_and_report_pools() {
    if !testkit::require_root("metrics_count_calls_by_method_and_code_and_report_pools") {
        return;
    }
    let pool = LoopPool::dir();
    let driver = DriverProcess::start(
        DriverConfig::new(env!("CARGO_BIN_EXE_strata-csi"), "node-metrics")
            .pool("main", pool.path())
            .arg("--metrics-address")
            .arg("127.0.0.1:0"),
    )
    .await;
    let log = driver.log_text();
    let addr = scrape::address_from_log(&log)
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));

    let health = get(addr, "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains("csi: serving"), "{}", health.body);

    let before = samples(addr).await;
    let mut ctl = driver.controller().await;
    let v = ctl
        .create_volume(create_request("metrics-a"))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    // Same name, twice the size: ALREADY_EXISTS.
    let mut bigger = create_request("metrics-a");
    bigger.capacity_range.as_mut().unwrap().required_bytes = 128 * MIB;
    let e = ctl.create_volume(bigger).await.unwrap_err();
    assert_eq!(e.code(), csi_proto::tonic::Code::AlreadyExists);
    let e = ctl
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: "../escape".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), csi_proto::tonic::Code::InvalidArgument);
    driver
        .identity()
        .await
        .probe(pb::ProbeRequest {})
        .await
        .expect("Probe");

    let after = samples(addr).await;
    let grew =
        |method: &str, code: &str| handled(&after, method, code) - handled(&before, method, code);
    assert_eq!(grew("CreateVolume", "OK"), 1.0);
    assert_eq!(grew("CreateVolume", "AlreadyExists"), 1.0);
    assert_eq!(grew("DeleteVolume", "InvalidArgument"), 1.0);
    assert_eq!(grew("Probe", "OK"), 1.0);
    assert_eq!(
        after.value(
            "strata_csi_grpc_server_handled_total",
            &[
                ("grpc_service", "csi.v1.Controller"),
                ("grpc_method", "CreateVolume"),
                ("grpc_code", "OK")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.value(
            "strata_csi_grpc_server_handling_seconds_count",
            &[("grpc_method", "CreateVolume"), ("grpc_code", "OK")]
        ),
        Some(1.0)
    );

    let main = [("pool", "main")];
    let size = after
        .value("strata_csi_pool_size_bytes", &main)
        .expect("size");
    let free = after
        .value("strata_csi_pool_free_bytes", &main)
        .expect("free");
    assert!(size > 0.0 && free <= size, "size {size}, free {free}");
    assert_eq!(after.value("strata_csi_pool_up", &main), Some(1.0));
    assert_eq!(
        after.value("strata_csi_pool_provisioned_bytes", &main),
        Some(v.capacity_bytes as f64)
    );
    assert_eq!(
        after.value("strata_csi_pool_limit_bytes", &main),
        Some(size),
        "overcommit 1"
    );
    assert_eq!(
        after.value(
            "strata_csi_pool_volumes",
            &[("pool", "main"), ("phase", "Ready")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.value(
            "strata_csi_pool_info",
            &[("pool", "main"), ("kind", "image")]
        ),
        Some(1.0)
    );
    assert_eq!(
        before.value("strata_csi_pool_provisioned_bytes", &main),
        Some(0.0)
    );
    assert!(
        after
            .matching("strata_csi_build_info", &[])
            .any(|s| s.labels["version"].contains("commit")),
        "build info"
    );

    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume");
    let last = samples(addr).await;
    assert_eq!(
        last.value("strata_csi_pool_provisioned_bytes", &main),
        Some(0.0)
    );
    assert_eq!(
        handled(&last, "DeleteVolume", "OK") - handled(&after, "DeleteVolume", "OK"),
        1.0
    );
    // A stopped driver's endpoint goes away with it.
    drop(driver);
    testkit::eventually("metrics port closed", Duration::from_secs(30), || async {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    })
    .await;
}

#[test]
fn refuses_a_metrics_address_that_is_not_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-csi"))
        .args([
            "--endpoint",
            "unix:///nonexistent/csi.sock",
            "--node-id",
            "n1",
            "--state-dir",
            "/nonexistent",
            "--pool",
            "a=image:/nonexistent",
            "--metrics-address",
            "localhost-9808",
        ])
        .output()
        .expect("run strata-csi");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-address"), "{err}");
}

//! A gRPC client of the C-core family (Python grpcio) calls the driver over its unix socket.
//!
//! C-core clients send the socket path as `:authority` by default, which hyper's h2 refuses
//! (hyperium/h2#487; h2 has no option to relax it). The documented client setting,
//! `grpc.default_authority = "localhost"`, must keep working: this test runs
//! `tests/python/client.py` with stubs generated from `proto/csi.proto` at test time.
//! Without python3 and grpcio it skips loudly, except under CI, where `scripts/deps`
//! installs them and a missing one is a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Whether `python3` can import grpcio and grpcio-tools.
fn python_grpc() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("python3: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_with_localhost_authority() {
    const TEST: &str = "python_grpcio_client_with_localhost_authority";
    if let Err(why) = python_grpc() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{TEST}: python3 with grpcio and grpcio-tools is needed ({why}); scripts/deps installs them"
        );
        eprintln!("SKIPPED {TEST}: needs python3 with grpcio and grpcio-tools ({why})");
        return;
    }
    let stubs = tempfile::tempdir().expect("stub dir");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let protoc = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg("csi.proto")
        .output()
        .expect("run grpc_tools.protoc");
    assert!(
        protoc.status.success(),
        "generating python stubs: {}",
        String::from_utf8_lossy(&protoc.stderr)
    );

    let pool = LoopPool::new(PoolFs::Dir).expect("make pool");
    let driver = DriverProcess::start(DriverConfig::new(BIN, NODE).pool(POOL, pool.path())).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let socket = driver.socket().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .arg(stubs.path())
            .arg(&socket)
            .output()
            .expect("run client.py")
    })
    .await
    .expect("client task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed ({}):\n{stdout}\n{}\n--- driver log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        driver.log_text()
    );
    for step in [
        "GetPluginInfo",
        "Probe ready",
        "CreateVolume",
        "ListVolumes",
        "DeleteVolume ok",
    ] {
        assert!(stdout.contains(step), "{step} missing from:\n{stdout}");
    }
}

//! The kubernetes-csi sidecars that need no API server, run against the real driver as the
//! DaemonSet runs them: livenessprobe's `/healthz` follows the driver's Probe, and
//! node-driver-registrar reads GetPluginInfo and serves the kubelet's registration socket
//! under the driver's name.
//!
//! The sidecars are built outside this repository (docs/cluster.md); `STRATA_SIDECARS`
//! names the directory holding them by their plain names. Without it these tests skip and
//! say so.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// `name` in `STRATA_SIDECARS`; None, said on stderr, when it is not set.
fn sidecar(test: &str, name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("STRATA_SIDECARS") else {
        eprintln!(
            "SKIPPED {test}: STRATA_SIDECARS does not name a directory of kubernetes-csi sidecar binaries"
        );
        return None;
    };
    let bin = Path::new(&dir).join(name);
    assert!(bin.is_file(), "{test}: no {name} in {}", bin.display());
    Some(bin)
}

/// A sidecar process, killed when dropped; its output goes to a file for the failure
/// messages.
struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn spawn(bin: &Path, args: &[String], log: PathBuf) -> Sidecar {
        let out = std::fs::File::create(&log).expect("sidecar log");
        let child = Command::new(bin)
            .args(args)
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Sidecar { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// GET `path` on 127.0.0.1:`port`: (status, body), or None when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Waits until `/healthz` on `port` answers `want`.
fn wait_health(port: u16, want: u16, side: &Sidecar, driver: &DriverProcess) -> String {
    testkit::wait_for(
        &format!("/healthz answering {want}"),
        Duration::from_secs(60),
        || {
            get(port, "/healthz")
                .filter(|(s, _)| *s == want)
                .map(|(_, b)| b)
        },
    );
    format!(
        "--- sidecar log ---\n{}\n--- driver log ---\n{}",
        side.log_text(),
        driver.log_text()
    )
}

/// The sidecar binary `name` and a driver on a `dir` pool for `test`; None (said why)
/// when not root or the sidecars are not given. Bind them in this order: locals drop in
/// reverse, so the driver goes before its pool.
async fn setup(test: &str, name: &str) -> Option<(PathBuf, LoopPool, DriverProcess)> {
    if !testkit::require_root(test) {
        return None;
    }
    let bin = sidecar(test, name)?;
    let pool = LoopPool::new(PoolFs::Dir).expect("make pool");
    let driver = DriverProcess::start(DriverConfig::new(BIN, NODE).pool(POOL, pool.path())).await;
    Some((bin, pool, driver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livenessprobe_follows_the_drivers_probe() {
    let Some((bin, _pool, mut driver)) =
        setup("livenessprobe_follows_the_drivers_probe", "livenessprobe").await
    else {
        return;
    };
    let port = free_port();
    // The DaemonSet's args, with this driver's socket and a loopback port.
    let args = vec![
        format!("--csi-address={}", driver.socket().display()),
        format!("--http-endpoint=127.0.0.1:{port}"),
    ];
    let probe = Sidecar::spawn(&bin, &args, driver.dir().join("livenessprobe.log"));
    let ctx = wait_health(port, 200, &probe, &driver);
    assert_eq!(get(port, "/healthz").map(|(s, _)| s), Some(200), "{ctx}");
    // A driver that is gone fails the probe: the kubelet would restart the pod.
    driver.kill();
    wait_health(port, 500, &probe, &driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_driver_registrar_registers_the_driver_by_its_name() {
    let Some((bin, _pool, driver)) = setup(
        "node_driver_registrar_registers_the_driver_by_its_name",
        "csi-node-driver-registrar",
    )
    .await
    else {
        return;
    };
    let registry = driver.mkdir("plugins_registry");
    let port = free_port();
    // The DaemonSet's args; the kubelet's plugin directory is a temporary one here.
    let args = vec![
        format!("--csi-address={}", driver.socket().display()),
        format!(
            "--kubelet-registration-path=/var/lib/kubelet/plugins/{DEFAULT_DRIVER_NAME}/csi.sock"
        ),
        format!("--plugin-registration-path={}", registry.display()),
        format!("--http-endpoint=127.0.0.1:{port}"),
    ];
    let registrar = Sidecar::spawn(&bin, &args, driver.dir().join("registrar.log"));
    // The socket the kubelet's plugin watcher finds is named after GetPluginInfo's name.
    let socket = registry.join(format!("{DEFAULT_DRIVER_NAME}-reg.sock"));
    testkit::wait_for("the registration socket", Duration::from_secs(60), || {
        socket.exists().then_some(())
    });
    let ctx = wait_health(port, 200, &registrar, &driver);
    let log = registrar.log_text();
    assert!(log.contains(DEFAULT_DRIVER_NAME), "{ctx}");
}

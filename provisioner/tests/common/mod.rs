//! The harness the provisioner's end-to-end tests share: a loop-backed pool, a real
//! `strata-csi`, an embedded store and the control loops in-process. Root only.
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use serde_json::json;
use strata_provisioner::k8s_openapi::api::core::v1::PersistentVolumeClaim;
use strata_provisioner::{Config, CsiClient, Running};
use strata_store::{EmbeddedStore, Object, Store};
use testkit::{DriverConfig, DriverProcess, LoopPool};

pub const NODE: &str = "node-e2e";
pub const DRIVER: &str = "local.csi.strata.io";
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The strata-csi binary next to this test's target dir, built once if missing (CI builds
/// the workspace first; a lone `cargo test -p strata-provisioner` does not).
pub fn csi_binary() -> PathBuf {
    testkit::workspace_binary("strata-csi")
}

/// Pool, driver, store and loops. Field order is drop order: loops are stopped explicitly,
/// then the driver is killed, then the pool's mounts and loop devices go.
pub struct Harness {
    pub store: EmbeddedStore,
    pub running: Option<Running>,
    pub driver: DriverProcess,
    pub pool: LoopPool,
    _state: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with_failpoints(&[]).await
    }

    pub async fn start_with_failpoints(failpoints: &[&str]) -> Harness {
        Self::start_with(failpoints, |_| {}).await
    }

    /// `tune` adjusts the loops' configuration before they start.
    pub async fn start_with(failpoints: &[&str], tune: impl FnOnce(&mut Config)) -> Harness {
        let pool = LoopPool::ext4(512 << 20);
        let driver = DriverProcess::start_with_failpoints(
            DriverConfig::new(csi_binary(), NODE).pool("main", pool.path()),
            failpoints,
        )
        .await;
        let state = tempfile::tempdir().expect("state dir");
        let store = EmbeddedStore::open(state.path()).expect("open store");
        let mut config = Config::new(NODE);
        config.retry_start = Duration::from_millis(100);
        config.retry_max = Duration::from_secs(2);
        config.provision_workers = 4;
        tune(&mut config);
        let csi = CsiClient::new(&driver.endpoint(), config.csi_timeout).expect("client");
        let running = strata_provisioner::start(store.clone(), csi, config)
            .await
            .expect("start loops");
        assert_eq!(running.driver().await.name, DRIVER);
        Harness {
            store,
            running: Some(running),
            driver,
            pool,
            _state: state,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub async fn apply<K: Object>(&self, v: serde_json::Value) -> K {
        let obj: K = serde_json::from_value(v).expect("object json");
        self.store.create(&obj).await.expect("create")
    }

    /// A create expected to be refused; its error as one line.
    pub async fn apply_err<K: Object + std::fmt::Debug>(&self, v: serde_json::Value) -> String {
        let obj: K = serde_json::from_value(v).expect("object json");
        let err = self.store.create(&obj).await.expect_err("create refused");
        strata_report::chain(&err)
    }
}

/// Waits for an async condition with a deadline (the async form of `testkit::wait_for`).
pub async fn eventually<T, F, Fut>(what: &str, cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    testkit::eventually(what, DEADLINE, cond).await
}

pub fn class(name: &str, mode: &str, expand: bool) -> serde_json::Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": DRIVER,
        "volumeBindingMode": mode,
        "allowVolumeExpansion": expand,
        "parameters": {"csi.storage.k8s.io/fstype": "ext4"}
    })
}

pub fn claim(name: &str, class: Option<&str>, size: &str) -> serde_json::Value {
    let mut spec =
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
    if let Some(c) = class {
        spec["storageClassName"] = json!(c);
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

pub async fn bound_claim(store: &EmbeddedStore, name: &str) -> PersistentVolumeClaim {
    eventually(&format!("claim {name} Bound"), || async {
        let c: PersistentVolumeClaim = store.get("default", name).await.ok()?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(c)
    })
    .await
}

pub async fn gone<K: Object>(store: &EmbeddedStore, ns: &str, name: &str) {
    eventually(&format!("{} {ns}/{name} gone", K::KIND), || async {
        match store.get::<K>(ns, name).await {
            Err(e) if e.is_not_found() => Some(()),
            _ => None,
        }
    })
    .await
}

pub fn images(pool: &LoopPool) -> usize {
    pool.files().len()
}

pub async fn has_event(store: &EmbeddedStore, claim: &str, reason: &str, needle: &str) -> bool {
    has_event_on(store, "PersistentVolumeClaim", claim, reason, needle).await
}

/// Whether an event with `reason` whose message contains `needle` names the object `kind`
/// `default/name`.
pub async fn has_event_on(
    store: &EmbeddedStore,
    kind: &str,
    name: &str,
    reason: &str,
    needle: &str,
) -> bool {
    store
        .events_for(kind, "default", name)
        .await
        .map(|evs| {
            evs.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.message.as_deref().unwrap_or_default().contains(needle)
            })
        })
        .unwrap_or(false)
}

/// The provisioner process; `Drop` kills it if a test failed half-way.
pub struct Provisioner {
    pub child: Child,
    pub log: PathBuf,
}

impl Provisioner {
    /// Starts `strata-provisioner` on `state` against `endpoint`, with `extra` arguments,
    /// its output appended to `log`.
    pub fn spawn(
        state: &std::path::Path,
        endpoint: &str,
        node: &str,
        log: PathBuf,
        extra: &[&str],
    ) -> Provisioner {
        Provisioner::spawn_with_env(state, endpoint, node, log, extra, &[])
    }

    /// As [`Provisioner::spawn`], with extra environment variables (a failpoint).
    pub fn spawn_with_env(
        state: &std::path::Path,
        endpoint: &str,
        node: &str,
        log: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Provisioner {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_strata-provisioner"))
            .arg("--state-dir")
            .arg(state)
            .args([
                "--csi-endpoint",
                endpoint,
                "--node-id",
                node,
                "--retry-interval-start",
                "100",
                "--retry-interval-max",
                "2",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("PROVISIONER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn strata-provisioner");
        Provisioner { child, log }
    }

    /// The exit status, once it exits by itself (within the deadline).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.exit_status("still running")
    }

    /// SIGTERM, then the exit status (it must exit by itself, gracefully).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        self.exit_status("no exit after SIGTERM")
    }

    /// Polls for the exit until the deadline; past it, fails with `why` and the log.
    fn exit_status(&mut self, why: &str) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{why}:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- strata-provisioner log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

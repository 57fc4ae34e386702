//! Shared test fixtures: root checks and waiting on conditions.
//!
//! A dev-dependency only. Each area adds its own fixtures in a module of its own
//! (`pool.rs`, `bundle.rs`, ...) so that crates do not step on each other.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// True when the test may use root-only facilities (loop devices, mounts, namespaces).
///
/// Without root the test is skipped loudly; under CI (env `CI` set) a missing root
/// fails the test instead, so that a green CI run means the root tests really ran.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root, and CI runs as root"
    );
    eprintln!("SKIPPED {test}: needs root (loop devices, mounts, namespaces)");
    false
}

/// Polls `cond` until it returns `Some`, or panics with `what` after `deadline`.
///
/// Tests wait on conditions, never on fixed sleeps: these machines are noisy.
pub fn wait_for<T>(what: &str, deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

mod pool;
pub use pool::*;

mod bundle;
pub use bundle::*;

/// The path of one of the workspace's binaries (`strata-csi`, `volctl`, ...), for tests in
/// crates that do not build it themselves: `target/<profile>/<name>`, next to the test
/// binary's own deps dir. `cargo test --workspace` builds every binary first; a lone
/// `cargo test -p <crate>` does not, so a missing one is built here, once per process.
/// (Only when missing: `cargo build` resolves features apart from `cargo test`, so
/// rebuilding an existing binary would flip it between two builds.)
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILDING: Mutex<()> = Mutex::new(());
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join(name);
    let _one_build_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if !bin.exists() {
        let target = profile_dir.parent().expect("target dir");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bin", name])
            .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running cargo build --bin {name}: {e}"));
        assert!(status.success(), "cargo build --bin {name} failed");
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
    }
    bin
}

/// The async form of [`wait_for`]: polls `cond` until it returns `Some`, or panics with
/// `what` after `deadline`.
#[cfg(feature = "csi")]
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

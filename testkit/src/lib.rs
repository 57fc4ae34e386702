//! Shared test fixtures: root checks and waiting on conditions.
//!
//! A dev-dependency only. Each area adds its own fixtures in a module of its own
//! (`pool.rs`, `bundle.rs`, ...) so that crates do not step on each other.

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

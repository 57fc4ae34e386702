//! Stamps the git commit into `strata-csi --version` (env `STRATA_GIT_COMMIT` at compile
//! time): the value of `STRATA_GIT_COMMIT` when set (image builds pass it, a Docker
//! context has no .git), else `git rev-parse --short=12 HEAD`, else "unknown".
//!
//! The script reruns when csi/ changes or STRATA_GIT_COMMIT does, not on every commit
//! anywhere in the repository: that would rebuild the driver and its dependents for
//! commits that do not touch it. A development build therefore names the HEAD at which
//! csi/ was last built; `scripts/build-image` sets the variable, so images are exact.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=STRATA_GIT_COMMIT");
    let commit = std::env::var("STRATA_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_head)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=STRATA_GIT_COMMIT={commit}");
}

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let head = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !head.is_empty()).then_some(head)
}

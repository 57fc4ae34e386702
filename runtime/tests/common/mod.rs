//! Shared setup for the runtime's root tests: a store in a temp dir, a busybox
//! image, and running a container through the real `strata-runtime` binary (the
//! test harness is multi-threaded, so libcontainer must not fork from it).

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_runtime::{ContainerConfig, Image, ImageDefaults, ImageStore, InitLayer, Rootfs};

pub const BIN: &str = env!("CARGO_BIN_EXE_strata-runtime");

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: ImageStore,
    pub state: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(tmp.path().join("store")).unwrap();
        let state = tmp.path().join("state");
        Env { tmp, store, state }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// A one-layer busybox image.
    pub fn busybox(&self, name: &str) -> Image {
        let dir = self.path(&format!("src-{name}"));
        testkit::busybox_tree(&dir);
        let defaults = ImageDefaults {
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        };
        self.store.build_image(name, &[&dir], &defaults).unwrap()
    }

    pub fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root").arg(&self.state);
        c
    }
}

/// Removes the rootfs (unmounting it and all beneath) when dropped.
pub struct RootfsGuard(pub Rootfs);

impl Drop for RootfsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            eprintln!("cleanup: {e}");
        }
    }
}

pub struct Ran {
    pub code: i32,
    pub output: String,
    pub stderr: String,
}

/// Mounts a rootfs for `image`, writes a bundle from `cfg` and runs it to
/// completion with `strata-runtime run`; everything is removed afterwards.
pub fn run(env: &Env, id: &str, image: &Image, cfg: &ContainerConfig) -> Ran {
    let rootfs =
        RootfsGuard(Rootfs::create(&env.store, id, image, &InitLayer::for_hostname(id)).unwrap());
    run_on(env, id, &rootfs.0.path(), cfg)
}

/// [`run`] on a rootfs the caller mounted.
pub fn run_on(env: &Env, id: &str, rootfs: &Path, cfg: &ContainerConfig) -> Ran {
    let bundle = env.path(&format!("bundle-{id}"));
    let spec = cfg.to_spec(id, rootfs).unwrap();
    strata_runtime::write_bundle(&bundle, &spec).unwrap();
    let log = env.path(&format!("{id}.log"));
    let _guard = testkit::ContainerGuard {
        binary: BIN.into(),
        root: env.state.clone(),
        id: id.to_string(),
    };
    let out = env
        .cli()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("--output")
        .arg(&log)
        .arg(id)
        .output()
        .unwrap();
    let cgroup = format!("strata-{id}");
    let ran = Ran {
        code: out.status.code().unwrap_or(-1),
        output: std::fs::read_to_string(&log).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !testkit::cgroup_exists(&cgroup),
        "cgroup {cgroup} left behind"
    );
    ran
}

pub fn sh(script: &str) -> ContainerConfig {
    ContainerConfig {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

pub fn is_mountpoint(p: &Path) -> bool {
    let want = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A bundle in `env` as `runc spec` writes it, over a busybox rootfs, with
/// `terminal` off, `args` as the command and whatever `edit` changes. Returns the
/// bundle dir.
pub fn runc_spec_bundle(
    env: &Env,
    args: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let dir = env.path("bundle");
    std::fs::create_dir(&dir).unwrap();
    testkit::busybox_tree(&dir.join("rootfs"));
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&dir)
        .output()
        .expect("runc (scripts/deps)");
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = serde_json::json!(args);
    edit(&mut c);
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    dir
}

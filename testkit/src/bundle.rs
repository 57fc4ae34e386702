//! Container fixtures: busybox trees, unique ids, and guards that unmount and
//! delete in `Drop` so a panicking test leaves no mount, container or cgroup.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where busybox-static installs (Debian `busybox-static`, see scripts/deps).
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// Fills `dir` with a busybox userland: bin/busybox, a symlink per applet, and the
/// usual empty top-level directories.
pub fn busybox_tree(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("creating bin");
    for d in ["etc", "tmp", "root", "var", "usr"] {
        std::fs::create_dir_all(dir.join(d)).expect("creating dir");
    }
    std::fs::copy(BUSYBOX, bin.join("busybox"))
        .expect("copying busybox (apt-get install busybox-static)");
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        // `--list` names busybox itself on some builds: linking it would replace the binary.
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
}

/// A container id unique to this test process and call site name.
pub fn unique_id(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Lazily unmounts `path` (and anything stacked on it) when dropped.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}

/// Runs `<binary> --root <root> delete --force <id>` when dropped, which kills the
/// container, removes its cgroups and unmounts what the runtime mounted for it.
pub struct ContainerGuard {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub id: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &self.id])
            .output();
    }
}

/// True when any cgroup v1 controller or the unified hierarchy still has a
/// directory named `rel` (for example `strata/<id>`).
pub fn cgroup_exists(rel: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return false;
    };
    let rel = rel.trim_start_matches('/');
    if Path::new("/sys/fs/cgroup").join(rel).is_dir() {
        return true; // pure v2
    }
    entries.flatten().any(|e| e.path().join(rel).is_dir())
}

//! Where the kubelet keeps things, under our state dir (k8s-semantics §2.1, §5.11).

use std::path::{Path, PathBuf};

use sha2::Digest;

/// `<state>/pods`
pub fn pods_dir(state: &Path) -> PathBuf {
    state.join("pods")
}

/// `<state>/pods/<uid>`
pub fn pod_dir(state: &Path, pod_uid: &str) -> PathBuf {
    pods_dir(state).join(pod_uid)
}

/// `<state>/pods/<uid>/volumes/<plugin dir>/<volume>`, plugin dir as `kubernetes.io~secret`.
pub fn volume_dir(state: &Path, pod_uid: &str, plugin_dir: &str, volume: &str) -> PathBuf {
    pod_dir(state, pod_uid)
        .join("volumes")
        .join(plugin_dir)
        .join(volume)
}

/// Bind mounts of resolved subPaths: `<state>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>`.
pub fn subpath_dir(state: &Path, pod_uid: &str) -> PathBuf {
    pod_dir(state, pod_uid).join("volume-subpaths")
}

/// The CSI global staging dir: `<state>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount`.
pub fn csi_staging(state: &Path, driver: &str, volume_handle: &str) -> PathBuf {
    csi_driver_dir(state, driver)
        .join(hex_sha256(volume_handle))
        .join("globalmount")
}

pub fn csi_driver_dir(state: &Path, driver: &str) -> PathBuf {
    state.join("plugins/kubernetes.io/csi").join(driver)
}

/// The CSI publish target: `<state>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`.
pub fn csi_publish(state: &Path, pod_uid: &str, pv: &str) -> PathBuf {
    volume_dir(state, pod_uid, "kubernetes.io~csi", pv).join("mount")
}

pub fn hex_sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A name used as one path component: no `/`, not `.`/`..`, not empty, no NUL.
pub fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= 255
}

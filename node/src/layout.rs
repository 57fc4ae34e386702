//! Where the pod runner keeps things under the state dir (volumes are the volume
//! manager's, under `pods/`; see `strata_volumes::layout`).
//!
//! ```text
//! <state>/images/                      the image store (strata_runtime::ImageStore)
//! <state>/images/containers/<id>/      one container's rootfs (overlay, init layer)
//! <state>/runtime/                     the runtime's root (`strata-runtime --root`)
//! <state>/runner/<pod uid>/<id>/       the bundle (config.json) of container <id>
//! <state>/logs/<ns>_<name>_<uid>/<container>/<restart>.log
//!                                      stdout and stderr of each run of a container
//! ```
//!
//! Container ids are `<pod uid>.<container name>.<restart count>`: the runtime's list
//! alone tells a restarted strata-node which pod, container and attempt each one is.

use std::path::{Path, PathBuf};

pub fn images(state: &Path) -> PathBuf {
    state.join("images")
}

pub fn runtime_root(state: &Path) -> PathBuf {
    state.join("runtime")
}

pub fn runner_dir(state: &Path) -> PathBuf {
    state.join("runner")
}

pub fn bundle(state: &Path, pod_uid: &str, id: &str) -> PathBuf {
    runner_dir(state).join(pod_uid).join(id)
}

pub fn logs_dir(state: &Path) -> PathBuf {
    state.join("logs")
}

/// The log directory of one pod (as the kubelet's `/var/log/pods/<ns>_<name>_<uid>`).
pub fn pod_logs(state: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    logs_dir(state).join(format!("{namespace}_{name}_{uid}"))
}

/// The log file of run `restart` (0 for the first) of a container.
pub fn container_log(
    state: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
    restart: i32,
) -> PathBuf {
    pod_logs(state, namespace, name, uid)
        .join(container)
        .join(format!("{restart}.log"))
}

/// A container id as the runner names it.
pub fn container_id(pod_uid: &str, container: &str, restart: i32) -> String {
    format!("{pod_uid}.{container}.{restart}")
}

/// The pod uid, container name and restart count of a runner's container id.
pub fn parse_container_id(id: &str) -> Option<(&str, &str, i32)> {
    let (rest, n) = id.rsplit_once('.')?;
    let (uid, name) = rest.split_once('.')?;
    let n: i32 = n.parse().ok()?;
    (!uid.is_empty() && !name.is_empty() && n >= 0).then_some((uid, name, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_round_trip() {
        let id = container_id("8d1c-77", "web", 3);
        assert_eq!(parse_container_id(&id), Some(("8d1c-77", "web", 3)));
        for bad in ["x", "a.b", "a.b.-1", ".b.1", "a..1", "a.b.x"] {
            assert_eq!(parse_container_id(bad), None, "{bad}");
        }
    }
}

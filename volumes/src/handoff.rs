//! The hand-off to the runtime: for one container, the mounts (and block devices) to bind,
//! built from the pod spec and the volumes the manager has prepared.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::dirfd;
use crate::error::{Context, Error, Result};
use crate::expansion;
use crate::layout;
use crate::mount;

/// Mount propagation of a volume mount (core/v1 `MountPropagationMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Propagation {
    /// Private: nothing propagates either way (rprivate).
    None,
    /// Mounts made later on the host below the source appear in the container (rslave).
    HostToContainer,
    /// Both ways (rshared); upstream allows it for privileged containers only.
    Bidirectional,
}

impl Propagation {
    pub fn parse(s: Option<&str>) -> Result<Propagation> {
        match s.unwrap_or("None") {
            "None" | "" => Ok(Propagation::None),
            "HostToContainer" => Ok(Propagation::HostToContainer),
            "Bidirectional" => Ok(Propagation::Bidirectional),
            other => Err(Error::InvalidArgument {
                field: "volumeMounts.mountPropagation",
                reason: format!("unknown mode {other:?}"),
            }),
        }
    }
}

/// One bind mount for the runtime to make inside the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerMount {
    /// Host path: the volume directory, a CSI publish target, or a resolved subPath.
    pub source: PathBuf,
    /// `mountPath` in the container.
    pub destination: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// A raw block volume for the container (`volumeDevices`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerDevice {
    pub source: PathBuf,
    pub device_path: String,
    /// The claim is used read-only (the pod's `readOnly` or a read-only publish): the
    /// container may only read the device, as the kubelet gives it "r" for "mrw".
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerVolumes {
    pub mounts: Vec<ContainerMount>,
    pub devices: Vec<ContainerDevice>,
}

/// A volume the manager has set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    pub path: PathBuf,
    /// Secret, configMap, downwardAPI and projected volumes are always mounted read-only;
    /// a PVC volume with `readOnly` too.
    pub read_only: bool,
    /// A raw block volume: `path` is a device node, usable only in `volumeDevices`.
    pub block: bool,
}

fn find_container<'p>(pod: &'p Pod, name: &str) -> Option<&'p Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// `subPathExpr` with the container's environment (`NAME=value`): as the kubelet, every
/// `$(NAME)` must have a non-empty value, and the result is then checked as a subPath is.
fn expand_sub_path(expr: &str, env: &[String]) -> Result<String> {
    let lookup = expansion::env_lookup(env);
    let mut missing: Vec<String> = expansion::references(expr)
        .into_iter()
        .filter(|name| lookup(name).is_none_or(str::is_empty))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(Error::InvalidArgument {
            field: "volumeMounts.subPathExpr",
            reason: format!("{expr:?}: missing value for {}", missing.join(", ")),
        });
    }
    Ok(expansion::expand(expr, lookup))
}

/// The mounts and devices of container `container`, in the order of its spec. subPaths
/// (and subPathExprs, expanded with `env`, the container's `NAME=value` environment) are
/// resolved beneath their volume and bind-mounted under the pod's `volume-subpaths`.
pub fn container_volumes(
    state: &Path,
    pod: &Pod,
    container: &str,
    volumes: &BTreeMap<String, PreparedVolume>,
    env: &[String],
) -> Result<ContainerVolumes> {
    let c = find_container(pod, container).ok_or_else(|| Error::InvalidArgument {
        field: "container",
        reason: format!("no container {container:?} in the pod"),
    })?;
    let pod_uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let mut out = ContainerVolumes::default();
    for (index, m) in c.volume_mounts.iter().flatten().enumerate() {
        let v = volumes.get(&m.name).ok_or_else(|| Error::InvalidArgument {
            field: "volumeMounts.name",
            reason: format!("volume {:?} is not prepared", m.name),
        })?;
        if v.block {
            return Err(Error::InvalidArgument {
                field: "volumeMounts.name",
                reason: format!("{:?} is a block volume: use volumeDevices", m.name),
            });
        }
        let sub_path = match (
            m.sub_path.as_deref().filter(|s| !s.is_empty()),
            m.sub_path_expr.as_deref().filter(|s| !s.is_empty()),
        ) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidArgument {
                    field: "volumeMounts.subPathExpr",
                    reason: format!(
                        "mount {:?}: subPath and subPathExpr are mutually exclusive",
                        m.name
                    ),
                });
            }
            (Some(sub), None) => Some(sub.to_owned()),
            (None, Some(expr)) => Some(expand_sub_path(expr, env)?),
            (None, None) => None,
        };
        let read_only = v.read_only || m.read_only.unwrap_or(false);
        let source = match sub_path.as_deref() {
            None => v.path.clone(),
            Some(sub) => {
                let target = layout::subpath_dir(state, pod_uid)
                    .join(&m.name)
                    .join(container)
                    .join(index.to_string());
                resolve_subpath(&v.path, sub, &target, !v.read_only)?;
                target
            }
        };
        out.mounts.push(ContainerMount {
            source,
            destination: m.mount_path.clone(),
            read_only,
            propagation: Propagation::parse(m.mount_propagation.as_deref())?,
        });
    }
    for d in c.volume_devices.iter().flatten() {
        let v = volumes
            .get(&d.name)
            .filter(|v| v.block)
            .ok_or_else(|| Error::InvalidArgument {
                field: "volumeDevices.name",
                reason: format!("{:?} is not a prepared block volume", d.name),
            })?;
        out.devices.push(ContainerDevice {
            source: v.path.clone(),
            device_path: d.device_path.clone(),
            read_only: v.read_only,
        });
    }
    Ok(out)
}

/// Mount points of other volumes below a mount of `volume` in any container, relative to
/// that mount (the kubelet's `MakeNestedMountpoints`).
pub fn nested_mount_points(pod: &Pod, volume: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        for parent in mounts.iter().filter(|m| m.name == volume) {
            let base = parent.mount_path.trim_end_matches('/');
            for m in mounts {
                if let Some(rel) = m
                    .mount_path
                    .strip_prefix(base)
                    .and_then(|r| r.strip_prefix('/'))
                {
                    let rel = rel.trim_end_matches('/');
                    if !rel.is_empty() && !out.iter().any(|o| o == rel) {
                        out.push(rel.to_owned());
                    }
                }
            }
        }
    }
    out
}

fn beneath(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens `sub` beneath `root` (symlinks may be followed only while they stay beneath it:
/// openat2 RESOLVE_BENEATH fails with EXDEV on an escape), creating missing directories
/// when the volume is writable, and bind-mounts the exact object opened onto `target`.
/// Already mounted: nothing to do.
pub fn resolve_subpath(root: &Path, sub: &str, target: &Path, create: bool) -> Result<()> {
    let rel = Path::new(sub);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::InvalidPath {
            path: sub.to_owned(),
            reason: "subPath must be relative without '..' or '.'",
        });
    }
    if mount::is_mounted(target)? {
        return Ok(());
    }
    let root_fd = dirfd::open_dir(root)?;
    let mut partial = PathBuf::new();
    let fd = loop {
        match nix::fcntl::openat2(root_fd.as_fd(), rel, beneath(OFlag::O_PATH)) {
            Ok(fd) => break fd,
            Err(Errno::ENOENT) if create => {
                // Make the first missing component, then try again from the top.
                partial.clear();
                let mut made = false;
                for comp in rel.components() {
                    partial.push(comp);
                    match nix::fcntl::openat2(root_fd.as_fd(), &partial, beneath(OFlag::O_PATH)) {
                        Ok(_) => continue,
                        Err(Errno::ENOENT) => {
                            let parent = partial.parent().unwrap_or(Path::new(""));
                            let pfd = if parent.as_os_str().is_empty() {
                                nix::fcntl::openat2(
                                    root_fd.as_fd(),
                                    ".",
                                    beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
                                )
                            } else {
                                nix::fcntl::openat2(
                                    root_fd.as_fd(),
                                    parent,
                                    beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
                                )
                            }
                            .at("open", root.join(parent))?;
                            match nix::sys::stat::mkdirat(
                                pfd.as_fd(),
                                comp.as_os_str(),
                                Mode::from_bits_truncate(0o750),
                            ) {
                                Ok(()) | Err(Errno::EEXIST) => {}
                                Err(e) => {
                                    return Err(e).at("create directory", root.join(&partial));
                                }
                            }
                            made = true;
                            break;
                        }
                        Err(Errno::EXDEV | Errno::ELOOP) => return Err(escape(sub)),
                        Err(e) => return Err(e).at("open", root.join(&partial)),
                    }
                }
                if !made {
                    return Err(Errno::ENOENT).at("open", root.join(rel));
                }
            }
            Err(Errno::EXDEV | Errno::ELOOP) => return Err(escape(sub)),
            Err(e) => return Err(e).at("open", root.join(rel)),
        }
    };
    let st = nix::sys::stat::fstat(fd.as_fd()).at("stat", root.join(rel))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).at("create directory", parent)?;
    }
    if dirfd::is_dir(&st) {
        match std::fs::create_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).at("create directory", target),
        }
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .at("create", target)?;
    }
    mount::bind_fd(fd.as_fd(), target, false)
}

fn escape(sub: &str) -> Error {
    Error::InvalidPath {
        path: sub.to_owned(),
        reason: "subPath resolves outside its volume",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sub_path_expr_needs_a_value_for_every_reference() {
        let env = vec!["POD=web-0".to_string(), "EMPTY=".to_string()];
        assert_eq!(expand_sub_path("logs/$(POD)", &env).unwrap(), "logs/web-0");
        assert_eq!(expand_sub_path("$$(POD)", &env).unwrap(), "$(POD)");
        let err = expand_sub_path("$(NOPE)/$(EMPTY)/$(POD)/$(NOPE)", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing value for EMPTY, NOPE"), "{err}");
    }

    #[test]
    fn sub_path_and_sub_path_expr_together_are_refused() {
        let mut p = pod();
        let m = &mut p.spec.as_mut().unwrap().containers[0]
            .volume_mounts
            .as_mut()
            .unwrap()[0];
        m.sub_path = Some("a".into());
        m.sub_path_expr = Some("$(X)".into());
        let err = container_volumes(Path::new("/s"), &p, "app", &prepared(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mutually exclusive"), "{err}");
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{
                "name": "app",
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "data", "mountPath": "/data", "mountPropagation": "HostToContainer"},
                    {"name": "scratch", "mountPath": "/scratch", "readOnly": true},
                ],
                "volumeDevices": [{"name": "raw", "devicePath": "/dev/xvda"}]
            }]}
        }))
        .unwrap()
    }

    fn prepared() -> BTreeMap<String, PreparedVolume> {
        let v = |p: &str, ro: bool, block: bool| PreparedVolume {
            path: PathBuf::from(p),
            read_only: ro,
            block,
        };
        BTreeMap::from([
            ("cfg".to_string(), v("/s/cfg", true, false)),
            ("data".to_string(), v("/s/data/mount", false, false)),
            ("scratch".to_string(), v("/s/scratch", false, false)),
            ("raw".to_string(), v("/s/raw/dev", false, true)),
        ])
    }

    #[test]
    fn mounts_in_spec_order_with_forced_read_only() {
        let out = container_volumes(Path::new("/s"), &pod(), "app", &prepared(), &[]).unwrap();
        let summary: Vec<(&str, &str, bool, Propagation)> = out
            .mounts
            .iter()
            .map(|m| {
                (
                    m.source.to_str().unwrap(),
                    m.destination.as_str(),
                    m.read_only,
                    m.propagation,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/s/cfg", "/etc/cfg", true, Propagation::None),
                (
                    "/s/data/mount",
                    "/data",
                    false,
                    Propagation::HostToContainer
                ),
                ("/s/scratch", "/scratch", true, Propagation::None),
            ]
        );
        assert_eq!(
            out.devices,
            vec![ContainerDevice {
                source: "/s/raw/dev".into(),
                device_path: "/dev/xvda".into(),
                read_only: false,
            }]
        );
        assert!(container_volumes(Path::new("/s"), &pod(), "ghost", &prepared(), &[]).is_err());
        let mut missing = prepared();
        missing.remove("cfg");
        assert!(container_volumes(Path::new("/s"), &pod(), "app", &missing, &[]).is_err());
        assert!(Propagation::parse(Some("Sideways")).is_err());
    }

    #[test]
    fn nested_mount_points_below_a_volume() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/app/"},
                {"name": "sec", "mountPath": "/etc/app/tls"},
                {"name": "x", "mountPath": "/etc/application"},
                {"name": "y", "mountPath": "/etc/app/deep/er/"}]},
            {"name": "b", "volumeMounts": [{"name": "sec", "mountPath": "/etc/app/tls"}]}]}}))
            .unwrap();
        assert_eq!(nested_mount_points(&pod, "cfg"), vec!["tls", "deep/er"]);
        assert!(nested_mount_points(&pod, "sec").is_empty());
    }

    /// Holds a bind mount made by a test; unmounts in Drop so a failing test cleans up.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = mount::unmount(&self.0);
        }
    }

    #[test]
    fn subpath_stays_inside_the_volume() {
        if !testkit::require_root("subpath_stays_inside_the_volume") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(vol.join("real/dir")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(vol.join("real/file"), "inside").unwrap();
        std::fs::write(outside.join("secret"), "host").unwrap();
        std::os::unix::fs::symlink("/", vol.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", vol.join("rel-escape")).unwrap();
        std::os::unix::fs::symlink("real", vol.join("inner")).unwrap();

        for bad in [
            "abs",
            "abs/etc",
            "rel-escape/secret",
            "../outside",
            "/real",
            "real/../..",
        ] {
            let target = tmp.path().join("t-bad");
            let _g = Unmount(target.clone());
            assert!(resolve_subpath(&vol, bad, &target, true).is_err(), "{bad}");
            assert!(!mount::is_mounted(&target).unwrap(), "{bad}");
        }
        // A link that stays inside is fine, and the exact file is bound.
        let t1 = tmp.path().join("t1");
        let _g1 = Unmount(t1.clone());
        resolve_subpath(&vol, "inner/file", &t1, true).unwrap();
        assert_eq!(std::fs::read_to_string(&t1).unwrap(), "inside");
        resolve_subpath(&vol, "inner/file", &t1, true).unwrap(); // idempotent
        // Missing directories are created inside a writable volume only.
        let t2 = tmp.path().join("t2");
        let _g2 = Unmount(t2.clone());
        resolve_subpath(&vol, "new/deeper", &t2, true).unwrap();
        assert!(vol.join("new/deeper").is_dir());
        let t3 = tmp.path().join("t3");
        let _g3 = Unmount(t3.clone());
        assert!(resolve_subpath(&vol, "absent", &t3, false).is_err());
    }
}

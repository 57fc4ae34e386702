//! One run of one container, on the blocking side: rootfs from the image store, the
//! runtime config from the pod spec, create and start through the `strata-runtime`
//! helper, and removal of everything made for it. Every function here blocks (it runs
//! helper processes and mounts): callers use `spawn_blocking`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use strata_runtime::{BindMount, ContainerConfig, Helper, ImageStore, InitLayer, Propagation};
use strata_store::k8s_openapi::api::core::v1::{Container, Pod};
use strata_volumes::expansion;
use strata_volumes::handoff::{self, ContainerVolumes};

use crate::layout;
use strata_runtime::error::chain;

/// What the runner needs of the node to run containers.
#[derive(Debug, Clone)]
pub struct Engine {
    pub state_dir: PathBuf,
    /// This strata-node executable: it also runs the pods' infra processes.
    pub node_binary: PathBuf,
    pub helper: Helper,
    pub images: ImageStore,
    pub runtime_root: PathBuf,
}

/// Why a container could not be started; each maps to a kubelet waiting reason.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("image {0:?} is not in the image store (import it with `volctl image import`)")]
    ImageNotFound(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Create(String),
}

impl StartError {
    /// The container's waiting reason after this failure.
    pub fn reason(&self, repeated: bool) -> &'static str {
        match self {
            StartError::ImageNotFound(_) if repeated => "ImagePullBackOff",
            StartError::ImageNotFound(_) => "ErrImagePull",
            StartError::Config(_) => "CreateContainerConfigError",
            StartError::Create(_) => "CreateContainerError",
        }
    }
}

/// Everything about one run, decided on the async side.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pod: Pod,
    pub container: Container,
    pub restart: i32,
    /// Environment from the spec, resolved (`env`, `envFrom`), in order.
    pub env: Vec<String>,
    pub volumes: ContainerVolumes,
    pub hostname: String,
    /// Namespaces of the pod's infra process to join.
    pub join: Vec<(strata_runtime::NamespaceKind, PathBuf)>,
}

/// A started container: its init process and a pidfd on it, opened before `start`
/// so that no exit can be missed.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// The stored image for a pod's image reference: the exact name, else with or
/// without an implicit `:latest` and `docker.io/library/`.
pub fn find_image(images: &ImageStore, reference: &str) -> Option<strata_runtime::Image> {
    let mut names = vec![reference.to_string()];
    let short = reference
        .strip_prefix("docker.io/library/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .unwrap_or(reference);
    names.push(short.to_string());
    let last = short.rsplit('/').next().unwrap_or(short);
    if !last.contains(':') && !short.contains('@') {
        names.push(format!("{short}:latest"));
    } else if let Some(s) = short.strip_suffix(":latest") {
        names.push(s.to_string());
    }
    names.into_iter().find_map(|n| images.image(&n).ok())
}

impl Engine {
    pub fn new(state_dir: &Path, runtime_binary: &Path) -> Result<Engine, String> {
        let images = ImageStore::open(layout::images(state_dir)).map_err(|e| chain(&e))?;
        let runtime_root = layout::runtime_root(state_dir);
        std::fs::create_dir_all(&runtime_root)
            .map_err(|e| format!("creating {}: {e}", runtime_root.display()))?;
        let node_binary =
            std::env::current_exe().map_err(|e| format!("finding our own executable: {e}"))?;
        Ok(Engine {
            state_dir: state_dir.to_path_buf(),
            node_binary,
            helper: Helper::new(runtime_binary, &runtime_root),
            images,
            runtime_root,
        })
    }

    /// Makes the rootfs and bundle of run `plan.restart` and starts it. On error
    /// nothing of this run is left.
    pub fn start(&self, plan: &Plan) -> Result<Started, StartError> {
        let uid = plan.pod.metadata.uid.as_deref().unwrap_or_default();
        let c = &plan.container;
        let id = layout::container_id(uid, &c.name, plan.restart);
        let image_ref = c.image.clone().unwrap_or_default();
        let image = find_image(&self.images, &image_ref)
            .ok_or_else(|| StartError::ImageNotFound(image_ref.clone()))?;
        // A run with this id left by a crash before its start was recorded.
        self.remove(uid, &id)
            .map_err(|e| StartError::Create(format!("removing a leftover of {id}: {e}")))?;
        let r = self.start_inner(plan, &id, &image);
        if r.is_err()
            && let Err(e) = self.remove(uid, &id)
        {
            tracing::warn!(id, error = %e, "cleaning up a failed start");
        }
        r
    }

    fn start_inner(
        &self,
        plan: &Plan,
        id: &str,
        image: &strata_runtime::Image,
    ) -> Result<Started, StartError> {
        let pod = &plan.pod;
        let c = &plan.container;
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let defaults = self
            .images
            .defaults(image)
            .map_err(|e| StartError::Create(chain(&e)))?;
        let init = InitLayer::for_hostname(&plan.hostname);
        let rootfs = strata_runtime::Rootfs::create(&self.images, id, image, &init)
            .map_err(|e| StartError::Create(format!("preparing the rootfs: {}", chain(&e))))?;
        let mut cfg = ContainerConfig {
            args: command_line(c, &defaults.entrypoint, &defaults.cmd, &plan.env),
            env: merge_env(&defaults.env, &plan.env),
            cwd: PathBuf::from(
                c.working_dir
                    .clone()
                    .or(defaults.working_dir.clone())
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "/".into()),
            ),
            hostname: Some(plan.hostname.clone()),
            join_namespaces: plan.join.clone(),
            ..Default::default()
        };
        if cfg.args.is_empty() {
            return Err(StartError::Config(
                "no command: the container and its image name none".into(),
            ));
        }
        let user = security_user(pod, c);
        // The image's User first (through the rootfs's own account files), then the
        // pod's overrides, then the pod-level groups on top, as the kubelet orders it.
        let user_name = match user.run_as_user {
            Some(u) => u.to_string(),
            None => defaults.user.clone().unwrap_or_default(),
        };
        cfg.apply_image_user(&rootfs.path(), &user_name)
            .map_err(|e| StartError::Config(format!("resolving the user: {}", chain(&e))))?;
        if let Some(g) = user.run_as_group {
            cfg.gid = g;
        }
        for g in user.groups {
            if !cfg.additional_gids.contains(&g) {
                cfg.additional_gids.push(g);
            }
        }
        cfg.readonly_rootfs = user.read_only_root;
        cfg.volumes = plan
            .volumes
            .mounts
            .iter()
            .map(|m| BindMount {
                source: m.source.clone(),
                destination: PathBuf::from(&m.destination),
                read_only: m.read_only,
                propagation: match m.propagation {
                    handoff::Propagation::None => Propagation::None,
                    handoff::Propagation::HostToContainer => Propagation::HostToContainer,
                    handoff::Propagation::Bidirectional => Propagation::Bidirectional,
                },
            })
            .collect();
        cfg.devices = plan
            .volumes
            .devices
            .iter()
            .map(|d| strata_runtime::DeviceNode {
                source: d.source.clone(),
                destination: PathBuf::from(&d.device_path),
                read_only: d.read_only,
            })
            .collect();
        let spec = cfg
            .to_spec(id, &rootfs.path())
            .map_err(|e| StartError::Config(chain(&e)))?;
        let bundle = layout::bundle(&self.state_dir, uid, id);
        strata_runtime::write_bundle(&bundle, &spec).map_err(|e| StartError::Create(chain(&e)))?;
        let log = layout::container_log(
            &self.state_dir,
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default(),
            uid,
            &c.name,
            plan.restart,
        );
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::Create(format!("creating {}: {e}", dir.display())))?;
        }
        let state = self
            .helper
            .create(id, &bundle, &log)
            .map_err(|e| StartError::Create(chain(&e)))?;
        let pidfd = open_pidfd(state.pid).map_err(StartError::Create)?;
        self.helper
            .start(id)
            .map_err(|e| StartError::Create(format!("starting: {}", chain(&e))))?;
        Ok(Started {
            id: id.to_string(),
            pid: state.pid,
            pidfd,
        })
    }

    /// True while the runtime holds any trace of container `id` (its state, our
    /// dir or its lock file): then `delete` has something to finish.
    fn runtime_has(&self, id: &str) -> bool {
        let our = self.runtime_root.join(".strata");
        self.runtime_root.join(id).exists()
            || our.join(id).exists()
            || our.join(format!("{id}.lock")).exists()
    }

    /// Removes container `id` of pod `uid` and all made for it (killing it first when
    /// it still runs). Idempotent.
    pub fn remove(&self, uid: &str, id: &str) -> Result<(), String> {
        if self.runtime_has(id) {
            self.helper.delete(id, true).map_err(|e| chain(&e))?;
        }
        match strata_runtime::Rootfs::open(&self.images, id) {
            Ok(r) => r.remove().map_err(|e| chain(&e))?,
            Err(strata_runtime::Error::ContainerNotFound(_)) => {
                // A rootfs dir whose record was never written (a crash inside create).
                let dir = self.images.root().join("containers").join(id);
                if dir.exists() {
                    strata_runtime::volumes::unmount(&dir.join("merged")).map_err(|e| chain(&e))?;
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| format!("removing {}: {e}", dir.display()))?;
                }
            }
            Err(e) => return Err(chain(&e)),
        }
        let bundle = layout::bundle(&self.state_dir, uid, id);
        match std::fs::remove_dir_all(&bundle) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", bundle.display())),
        }
    }

    /// Sends `signal` to the container's init (TERM), or to all its processes (KILL).
    pub fn signal(&self, id: &str, signal: &str) -> Result<(), String> {
        self.helper
            .kill(id, signal, signal == "KILL")
            .map_err(|e| chain(&e))
    }

    /// Every container id the runtime or the rootfs store knows, with the runtime's
    /// state where it has one.
    pub fn inventory(&self) -> Result<Vec<(String, Option<strata_runtime::State>)>, String> {
        let mut out: Vec<(String, Option<strata_runtime::State>)> = self
            .helper
            .list()
            .map_err(|e| chain(&e))?
            .into_iter()
            .map(|s| (s.id.clone(), Some(s)))
            .collect();
        let dir = self.images.root().join("containers");
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("listing {dir:?}: {e}"))?;
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !out.iter().any(|(i, _)| *i == id) {
                out.push((id, None));
            }
        }
        // Runtime dirs without a readable state (a create that died).
        if let Ok(entries) = std::fs::read_dir(self.runtime_root.join(".strata")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".lock").unwrap_or(&name).to_string();
                if !out.iter().any(|(i, _)| *i == id) {
                    out.push((id, None));
                }
            }
        }
        Ok(out)
    }
}

/// A pidfd on `pid`; it stays valid for that process even after the pid is reused.
pub fn open_pidfd(pid: i32) -> Result<OwnedFd, String> {
    let p = rustix::process::Pid::from_raw(pid).ok_or_else(|| format!("bad pid {pid}"))?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("opening a pidfd on {pid}: {e}"))
}

/// The process's arguments: `command` replaces the image's entrypoint and `args` its
/// cmd; a `command` without `args` drops the image's cmd (core/v1 semantics). `$(NAME)`
/// in the container's own `command` and `args` (not the image's) is expanded with `env`,
/// the container's resolved environment without the image's, as the kubelet does.
pub fn command_line(
    c: &Container,
    entrypoint: &[String],
    cmd: &[String],
    env: &[String],
) -> Vec<String> {
    let lookup = expansion::env_lookup(env);
    let expand = |v: &Vec<String>| -> Vec<String> {
        v.iter().map(|s| expansion::expand(s, &lookup)).collect()
    };
    // An empty list counts as unset, as the CRI runtimes read it.
    let given = |v: &Option<Vec<String>>| v.as_ref().filter(|v| !v.is_empty()).map(expand);
    let (command, args) = (given(&c.command), given(&c.args));
    match (command, args) {
        (Some(command), Some(args)) => command.into_iter().chain(args).collect(),
        (Some(command), None) => command,
        (None, Some(args)) => entrypoint.iter().cloned().chain(args).collect(),
        (None, None) => entrypoint.iter().chain(cmd).cloned().collect(),
    }
}

/// The image's environment with the pod's on top (a name set twice keeps the last).
pub fn merge_env(image: &[String], pod: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kv in image.iter().chain(pod) {
        let name = kv.split_once('=').map_or(kv.as_str(), |(n, _)| n);
        out.retain(|o| o.split_once('=').map_or(o.as_str(), |(n, _)| n) != name);
        out.push(kv.clone());
    }
    out
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SecurityUser {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// supplementalGroups and fsGroup of the pod.
    pub groups: Vec<u32>,
    pub read_only_root: bool,
}

/// The container's securityContext over the pod's.
pub fn security_user(pod: &Pod, c: &Container) -> SecurityUser {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let mut groups: Vec<u32> = psc
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    if let Some(g) = id(psc.and_then(|p| p.fs_group)) {
        groups.push(g);
    }
    SecurityUser {
        run_as_user: id(csc
            .and_then(|c| c.run_as_user)
            .or(psc.and_then(|p| p.run_as_user))),
        run_as_group: id(csc
            .and_then(|c| c.run_as_group)
            .or(psc.and_then(|p| p.run_as_group))),
        groups,
        read_only_root: csc.and_then(|c| c.read_only_root_filesystem) == Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Container {
            name: "c".into(),
            command: command.map(v),
            args: args.map(v),
            ..Default::default()
        }
    }

    #[test]
    fn command_follows_core_v1() {
        let ep = vec!["/ep".to_string()];
        let cmd = vec!["cmd".to_string()];
        let line = |c: &Container| command_line(c, &ep, &cmd, &[]);
        assert_eq!(line(&ctr(None, None)), ["/ep", "cmd"]);
        assert_eq!(line(&ctr(Some(&["/x"]), None)), ["/x"]);
        assert_eq!(line(&ctr(None, Some(&["a"]))), ["/ep", "a"]);
        assert_eq!(line(&ctr(Some(&["/x"]), Some(&["a"]))), ["/x", "a"]);
        assert_eq!(
            line(&ctr(Some(&[]), Some(&[]))),
            ["/ep", "cmd"],
            "empty = unset"
        );
        assert_eq!(line(&ctr(Some(&["/x"]), Some(&[]))), ["/x"]);
    }

    #[test]
    fn command_and_args_expand_the_containers_env_but_not_the_images() {
        let ep = vec!["/ep".to_string(), "$(A)".to_string()];
        let cmd = vec!["$(A)".to_string()];
        let env = vec!["A=1".to_string(), "B=two words".to_string()];
        let c = ctr(None, Some(&["--a=$(A)", "$(B)", "$$(A)", "$(MISSING)"]));
        assert_eq!(
            command_line(&c, &ep, &cmd, &env),
            ["/ep", "$(A)", "--a=1", "two words", "$(A)", "$(MISSING)"]
        );
        let c = ctr(Some(&["/bin/$(A)"]), None);
        assert_eq!(command_line(&c, &ep, &cmd, &env), ["/bin/1"]);
        assert_eq!(
            command_line(&ctr(None, None), &ep, &cmd, &env),
            ["/ep", "$(A)", "$(A)"],
            "the image's entrypoint and cmd are the runtime's, never expanded"
        );
    }

    #[test]
    fn pod_env_overrides_image_env() {
        let image = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let pod = vec!["A=2".to_string(), "B=3".to_string()];
        assert_eq!(merge_env(&image, &pod), ["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn container_security_context_wins() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000,
                "supplementalGroups": [5, 6], "fsGroup": 2000},
            "containers": [{"name": "c", "securityContext": {"runAsUser": 7}}]}}))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            security_user(&pod, c),
            SecurityUser {
                run_as_user: Some(7),
                run_as_group: Some(1000),
                groups: vec![5, 6, 2000],
                read_only_root: false,
            }
        );
    }
}

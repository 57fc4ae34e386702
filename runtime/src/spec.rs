//! Our container description and the OCI `config.json` generated from it.
//!
//! The base is oci-spec's default spec (runc's `runc spec` defaults: proc, dev,
//! devpts, shm, mqueue, sysfs and cgroup mounts; pid, net, ipc, uts, mount and
//! cgroup namespaces; the default capability set; no_new_privs; masked and
//! read-only /proc paths), then the fields the pod runner sets.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Spec, UserBuilder,
};

use crate::error::{Error, Result};
use crate::user::resolve_image_user;
use crate::volumes::BindMount;

/// A namespace a container can share with another process (a pod's infra process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NamespaceKind {
    Network,
    Ipc,
    Uts,
    Pid,
}

impl NamespaceKind {
    fn oci(self) -> LinuxNamespaceType {
        match self {
            NamespaceKind::Network => LinuxNamespaceType::Network,
            NamespaceKind::Ipc => LinuxNamespaceType::Ipc,
            NamespaceKind::Uts => LinuxNamespaceType::Uts,
            NamespaceKind::Pid => LinuxNamespaceType::Pid,
        }
    }

    /// The /proc/<pid>/ns/ file name.
    pub fn proc_name(self) -> &'static str {
        match self {
            NamespaceKind::Network => "net",
            NamespaceKind::Ipc => "ipc",
            NamespaceKind::Uts => "uts",
            NamespaceKind::Pid => "pid",
        }
    }
}

/// cgroup limits; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// Bytes; the kernel OOM-kills inside the container past it.
    pub memory_limit: Option<i64>,
    /// Relative CPU weight (cgroup v1 shares, 2-262144).
    pub cpu_shares: Option<u64>,
    /// CPU time in microseconds per `cpu_period` (CFS quota).
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// Maximum number of tasks.
    pub pids_limit: Option<i64>,
}

/// A device given to the container (a raw block volume, `volumeDevices`): the host's
/// device node `source` is bind-mounted at `destination`, at any path, and the devices
/// cgroup lets the container use that device alone, read-only when `read_only` (a
/// read-only bind does not stop writes to a device node; the cgroup rule does).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceNode {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

impl DeviceNode {
    /// The cgroup rule allowing this device, from the node's type and number.
    fn cgroup_rule(&self) -> Result<LinuxDeviceCgroup> {
        use nix::sys::stat::SFlag;
        let st = nix::sys::stat::stat(&self.source)
            .map_err(|e| Error::invalid("device", format!("{}: {e}", self.source.display())))?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let typ = if kind == SFlag::S_IFBLK {
            LinuxDeviceType::B
        } else if kind == SFlag::S_IFCHR {
            LinuxDeviceType::C
        } else {
            return Err(Error::invalid(
                "device",
                format!("{} is not a device node", self.source.display()),
            ));
        };
        Ok(LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .major(nix::sys::stat::major(st.st_rdev) as i64)
            .minor(nix::sys::stat::minor(st.st_rdev) as i64)
            .access(if self.read_only { "r" } else { "rw" })
            .build()?)
    }
}

/// What the pod runner asks for one container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Ignored when the UTS namespace is joined (the pod's hostname applies).
    pub hostname: Option<String>,
    pub resources: Resources,
    /// `None` keeps the runc defaults (/proc/kcore, /proc/keys, ...).
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
    pub readonly_rootfs: bool,
    /// Existing namespaces to join, by path (`/proc/<infra pid>/ns/net`, ...).
    pub join_namespaces: Vec<(NamespaceKind, PathBuf)>,
    pub volumes: Vec<BindMount>,
    /// Raw block volumes, after `volumes`.
    #[serde(default)]
    pub devices: Vec<DeviceNode>,
    /// cgroup path (relative to each controller's root); default `/strata-<id>`, flat so
    /// that no parent cgroup is created and removed around every container (a pod
    /// runner may nest containers under a pod cgroup instead).
    pub cgroups_path: Option<PathBuf>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: PathBuf::from("/"),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: None,
            resources: Resources::default(),
            masked_paths: None,
            readonly_paths: None,
            readonly_rootfs: false,
            join_namespaces: Vec::new(),
            volumes: Vec::new(),
            devices: Vec::new(),
            cgroups_path: None,
        }
    }
}

impl ContainerConfig {
    /// Sets `uid`, `gid` and `additional_gids` from an image config's `User` (empty
    /// for root), looked up in the account files of the mounted `rootfs` (see
    /// [`crate::user`]). The additional gids are replaced, so pod-level supplemental
    /// groups go on afterwards. On error the config is unchanged.
    pub fn apply_image_user(&mut self, rootfs: &Path, user: &str) -> Result<()> {
        let resolved = resolve_image_user(rootfs, user)?;
        self.uid = resolved.uid;
        self.gid = resolved.gid;
        self.additional_gids = resolved.additional_gids;
        Ok(())
    }

    /// The runtime spec for container `id` whose mounted rootfs is `rootfs`.
    pub fn to_spec(&self, id: &str, rootfs: &Path) -> Result<Spec> {
        if self.args.is_empty() {
            return Err(Error::invalid("args", "no command to run"));
        }
        if !self.cwd.is_absolute() {
            return Err(Error::invalid(
                "cwd",
                format!("{:?} is not absolute", self.cwd),
            ));
        }
        let mut spec = Spec::default();
        spec.set_version("1.0.2".into());

        let mut process = spec.process().clone().unwrap_or_default();
        process
            .set_terminal(Some(false))
            .set_args(Some(self.args.clone()))
            .set_env(Some(self.env.clone()))
            .set_cwd(self.cwd.clone())
            .set_user(
                UserBuilder::default()
                    .uid(self.uid)
                    .gid(self.gid)
                    .additional_gids(self.additional_gids.clone())
                    .build()?,
            );
        spec.set_process(Some(process));

        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(rootfs.to_path_buf())
            .set_readonly(Some(self.readonly_rootfs));
        spec.set_root(Some(root));

        let joins_uts = self
            .join_namespaces
            .iter()
            .any(|(k, _)| *k == NamespaceKind::Uts);
        spec.set_hostname(if joins_uts {
            None
        } else {
            Some(self.hostname.clone().unwrap_or_else(|| id.to_string()))
        });

        // Listed in the order they are made: volumes first (create binds them into the
        // rootfs before libcontainer runs), then the default /proc, /dev, /sys mounts,
        // then any volume below one of those (an emptyDir on /dev/shm), which must
        // come after the mount it sits in.
        let defaults = spec.mounts().clone().unwrap_or_default();
        let below_default = |v: &&BindMount| {
            defaults
                .iter()
                .any(|m| v.destination.starts_with(m.destination()))
        };
        let device_binds: Vec<BindMount> = self
            .devices
            .iter()
            .map(|d| BindMount {
                source: d.source.clone(),
                destination: d.destination.clone(),
                read_only: d.read_only,
                propagation: crate::volumes::Propagation::None,
            })
            .collect();
        let (later, first): (Vec<&BindMount>, Vec<&BindMount>) = self
            .volumes
            .iter()
            .chain(&device_binds)
            .partition(below_default);
        let mounts: Vec<_> = first
            .into_iter()
            .map(BindMount::to_oci)
            .chain(defaults.iter().cloned())
            .chain(later.into_iter().map(BindMount::to_oci))
            .collect();
        spec.set_mounts(Some(mounts));

        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
        for (kind, path) in &self.join_namespaces {
            if !path.is_absolute() {
                return Err(Error::invalid(
                    "namespace path",
                    format!("{path:?} is not absolute"),
                ));
            }
            namespaces.retain(|n| n.typ() != kind.oci());
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(kind.oci())
                    .path(path.clone())
                    .build()?,
            );
        }
        linux.set_namespaces(Some(namespaces));
        if let Some(m) = &self.masked_paths {
            linux.set_masked_paths(Some(m.clone()));
        }
        if let Some(r) = &self.readonly_paths {
            linux.set_readonly_paths(Some(r.clone()));
        }
        linux.set_cgroups_path(Some(
            self.cgroups_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/strata-{id}"))),
        ));
        let r = &self.resources;
        let mut res = LinuxResourcesBuilder::default();
        if let Some(limit) = r.memory_limit {
            // memsw equal to the limit: no swap beyond it, so the OOM killer acts at the limit.
            res = res.memory(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(limit)
                    .build()?,
            );
        }
        if r.cpu_shares.is_some() || r.cpu_quota.is_some() {
            let mut cpu = LinuxCpuBuilder::default();
            if let Some(s) = r.cpu_shares {
                cpu = cpu.shares(s);
            }
            if let Some(q) = r.cpu_quota {
                cpu = cpu.quota(q).period(r.cpu_period.unwrap_or(100_000));
            }
            res = res.cpu(cpu.build()?);
        }
        if let Some(p) = r.pids_limit {
            res = res.pids(LinuxPidsBuilder::default().limit(p).build()?);
        }
        // Every device denied first, as `runc spec` does; libcontainer then allows its
        // default set (null, zero, full, tty, random, urandom, ptmx, pts) and the rules
        // here allow the raw block volumes. Without the deny a container could use any
        // device node a volume showed it (a hostPath of /dev).
        let mut rules = vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        ];
        for d in &self.devices {
            rules.push(d.cgroup_rule()?);
        }
        res = res.devices(rules);
        linux.set_resources(Some(res.build()?));
        spec.set_linux(Some(linux));
        Ok(spec)
    }
}

/// Writes `spec` as `<dir>/config.json`, creating `dir`.
pub fn write_bundle(dir: &Path, spec: &Spec) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating bundle", dir))?;
    spec.save(dir.join("config.json"))?;
    Ok(())
}

/// The capability sets of a runtime-spec `process`.
const CAPABILITY_SETS: [&str; 5] = [
    "bounding",
    "effective",
    "inheritable",
    "permitted",
    "ambient",
];

/// Drops capability names this runtime cannot map to a kernel capability from a
/// `process` object, logging a warning for each: the runtime spec says such a
/// capability is logged and SHOULD NOT fail the container (runc does the same).
/// Returns the names dropped.
pub fn drop_unknown_capabilities(process: &mut serde_json::Value) -> Vec<String> {
    let mut dropped = Vec::new();
    let Some(caps) = process
        .get_mut("capabilities")
        .and_then(|c| c.as_object_mut())
    else {
        return dropped;
    };
    for set in CAPABILITY_SETS {
        let Some(list) = caps.get_mut(set).and_then(|l| l.as_array_mut()) else {
            continue;
        };
        list.retain(|name| {
            let known =
                serde_json::from_value::<oci_spec::runtime::Capability>(name.clone()).is_ok();
            if !known {
                let shown = name
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| name.to_string());
                tracing::warn!(capability = %shown, set, "unknown capability, not granted");
                if !dropped.contains(&shown) {
                    dropped.push(shown);
                }
            }
            known
        });
    }
    dropped
}

/// Loads a bundle's `config.json`, dropping unknown capabilities first
/// ([`drop_unknown_capabilities`]); anything else invalid is an error.
pub fn load_config(path: &Path) -> Result<Spec> {
    let bytes = std::fs::read(path).map_err(Error::io("reading", path))?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(process) = value.get_mut("process") {
        drop_unknown_capabilities(process);
    }
    serde_json::from_value(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod capability_tests {
    use super::*;

    #[test]
    fn unknown_capabilities_are_dropped_and_named() {
        let mut p = serde_json::json!({"capabilities": {
            "bounding": ["CAP_KILL", "CAP_TEST"],
            "effective": ["CAP_TEST", "CAP_CHOWN", 7],
        }});
        let dropped = drop_unknown_capabilities(&mut p);
        assert_eq!(dropped, vec!["CAP_TEST".to_string(), "7".to_string()]);
        assert_eq!(
            p["capabilities"]["bounding"],
            serde_json::json!(["CAP_KILL"])
        );
        assert_eq!(
            p["capabilities"]["effective"],
            serde_json::json!(["CAP_CHOWN"])
        );
        assert!(drop_unknown_capabilities(&mut serde_json::json!({})).is_empty());
    }
}

#[cfg(test)]
mod mount_order_tests {
    use super::*;
    use crate::volumes::Propagation;

    #[test]
    fn volumes_are_listed_where_they_are_made() {
        let vol = |dest: &str| BindMount {
            source: PathBuf::from("/src"),
            destination: PathBuf::from(dest),
            read_only: false,
            propagation: Propagation::None,
        };
        let cfg = ContainerConfig {
            volumes: vec![vol("/data"), vol("/dev/shm"), vol("/cache")],
            ..Default::default()
        };
        let spec = cfg.to_spec("c", Path::new("/rootfs")).unwrap();
        let dests: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        // The plain volumes first (bound before libcontainer runs), then the
        // defaults, then the one inside the /dev tmpfs, after it.
        assert_eq!(dests[..2], ["/data", "/cache"]);
        assert_eq!(dests.last().unwrap(), "/dev/shm");
        let dev = dests.iter().position(|d| d == "/dev").unwrap();
        let proc_ = dests.iter().position(|d| d == "/proc").unwrap();
        assert!(dev > 1 && proc_ > 1 && dev < dests.len() - 1);
    }
}

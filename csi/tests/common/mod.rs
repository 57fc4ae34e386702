//! Shared helpers for the black-box tests of `strata-csi` (conformance, data, crash).
//!
//! Everything here talks to the real binary over its unix socket and looks at the machine
//! (mountinfo, sysfs, the pool dir) the way an operator would: nothing reaches into the
//! driver's internals.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod tree;

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use csi_proto::controller_client::ControllerClient;
pub use csi_proto::group_controller_client::GroupControllerClient;
pub use csi_proto::identity_client::IdentityClient;
pub use csi_proto::node_client::NodeClient;
pub use csi_proto::tonic::transport::Channel;
pub use csi_proto::tonic::{Code, Status};
pub use csi_proto::volume_capability::access_mode::Mode;
pub use csi_proto::*;
pub use testkit::{DriverConfig, DriverProcess, LoopPool, PoolFs};

pub const BIN: &str = env!("CARGO_BIN_EXE_strata-csi");
pub const NODE: &str = "node-a";
pub const POOL: &str = "p1";
pub const TOPOLOGY_KEY: &str = "topology.strata.io/node";
pub const DEFAULT_DRIVER_NAME: &str = "local.csi.strata.io";
pub const MIB: i64 = 1 << 20;

/// A driver on one pool with connected clients. Field order matters: the driver is dropped
/// (killed, its mounts removed) before the pool it uses.
pub struct Env {
    pub ctl: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
    pub ident: IdentityClient<Channel>,
    pub group: GroupControllerClient<Channel>,
    pub driver: DriverProcess,
    pub pool: LoopPool,
}

impl Env {
    /// A driver with one pool named [`POOL`] on node [`NODE`].
    pub async fn new(fs: PoolFs) -> Env {
        Env::on_node(fs, NODE).await
    }

    /// A driver with one pool named [`POOL`] on node [`NODE`], whose pool spec ends with
    /// `pool_options` (e.g. `,overcommit=2`), started with the extra flags `args`.
    pub async fn with_config(fs: PoolFs, pool_options: &str, args: &[&str]) -> Env {
        let pool = LoopPool::new(fs).expect("make pool");
        let mut config = DriverConfig::new(BIN, NODE);
        config.pools.push(format!(
            "{POOL}=image:{}{pool_options}",
            pool.path().display()
        ));
        let config = args.iter().fold(config, |c, a| c.arg(a));
        let driver = DriverProcess::start(config).await;
        Env::connect(driver, pool).await
    }

    /// A driver with one pool named [`POOL`] of another kind: `spec` is what follows
    /// `NAME=` with `{}` standing for the pool path, e.g. `btrfs:{}` or
    /// `dir:{},enforce=false`.
    pub async fn with_spec(fs: PoolFs, spec: &str) -> Env {
        let pool = LoopPool::new(fs).expect("make pool");
        let spec = spec.replace("{}", &pool.path().display().to_string());
        let config = DriverConfig::new(BIN, NODE).pool_spec(POOL, &spec);
        let driver = DriverProcess::start(config).await;
        Env::connect(driver, pool).await
    }

    pub async fn on_node(fs: PoolFs, node: &str) -> Env {
        let pool = LoopPool::new(fs).expect("make pool");
        let config = DriverConfig::new(BIN, node).pool(POOL, pool.path());
        let driver = DriverProcess::start(config).await;
        Env::connect(driver, pool).await
    }

    pub async fn connect(driver: DriverProcess, pool: LoopPool) -> Env {
        Env {
            ctl: driver.controller().await,
            node: driver.node().await,
            ident: driver.identity().await,
            group: driver.group_controller().await,
            driver,
            pool,
        }
    }

    /// Re-dials the socket (after a restart).
    pub async fn reconnect(&mut self) {
        self.ctl = self.driver.controller().await;
        self.node = self.driver.node().await;
        self.ident = self.driver.identity().await;
        self.group = self.driver.group_controller().await;
    }

    /// Kills the driver (SIGKILL), starts it again on the same state dir with `failpoints`
    /// armed, and re-dials.
    pub async fn restart(&mut self, failpoints: &[&str]) {
        self.driver.restart(failpoints).await;
        self.reconnect().await;
    }

    /// Creates a mount volume (ext4 unless `fs_type` says otherwise) and panics on error.
    pub async fn create(&mut self, name: &str, bytes: i64) -> Volume {
        self.create_req(create_req(name, bytes)).await
    }

    pub async fn create_fs(&mut self, name: &str, bytes: i64, fs_type: &str) -> Volume {
        let mut req = create_req(name, bytes);
        req.parameters.insert("fsType".into(), fs_type.into());
        req.volume_capabilities = vec![mount_cap(fs_type, Mode::SingleNodeWriter)];
        self.create_req(req).await
    }

    pub async fn create_req(&mut self, req: CreateVolumeRequest) -> Volume {
        let name = req.name.clone();
        self.ctl
            .create_volume(req)
            .await
            .unwrap_or_else(|s| panic!("CreateVolume {name}: {}", show(&s)))
            .into_inner()
            .volume
            .expect("CreateVolumeResponse.volume")
    }

    pub async fn delete(&mut self, volume_id: &str) {
        self.ctl
            .delete_volume(DeleteVolumeRequest {
                volume_id: volume_id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("DeleteVolume {volume_id}: {}", show(&s)));
    }

    pub async fn snapshot(&mut self, name: &str, volume_id: &str) -> Snapshot {
        self.ctl
            .create_snapshot(CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: volume_id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("CreateSnapshot {name}: {}", show(&s)))
            .into_inner()
            .snapshot
            .expect("CreateSnapshotResponse.snapshot")
    }

    /// Stages `vol` with `cap` at a fresh staging dir named `name` (created first, as the CO
    /// does) and returns the staging path.
    pub async fn stage(&mut self, vol: &Volume, name: &str, cap: VolumeCapability) -> PathBuf {
        let staging = self.driver.mkdir(name);
        self.node
            .node_stage_volume(stage_req(vol, &staging, cap))
            .await
            .unwrap_or_else(|s| panic!("NodeStageVolume {}: {}", vol.volume_id, show(&s)));
        staging
    }

    /// Publishes `vol` from `staging` at a fresh target path named `name` (only its parent is
    /// created, as the CO does) and returns the target path.
    pub async fn publish(
        &mut self,
        vol: &Volume,
        staging: &Path,
        name: &str,
        cap: VolumeCapability,
        readonly: bool,
    ) -> PathBuf {
        let target = self.target_path(name);
        self.node
            .node_publish_volume(publish_req(vol, staging, &target, cap, readonly))
            .await
            .unwrap_or_else(|s| panic!("NodePublishVolume {}: {}", vol.volume_id, show(&s)));
        target
    }

    /// A target path whose parent exists and which itself does not.
    pub fn target_path(&self, name: &str) -> PathBuf {
        let parent = self.driver.mkdir(&format!("pods/{name}"));
        parent.join("mount")
    }

    pub async fn unpublish(&mut self, volume_id: &str, target: &Path) {
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                target_path: path_str(target),
            })
            .await
            .unwrap_or_else(|s| panic!("NodeUnpublishVolume {volume_id}: {}", show(&s)));
    }

    pub async fn unstage(&mut self, volume_id: &str, staging: &Path) {
        self.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: volume_id.into(),
                staging_target_path: path_str(staging),
            })
            .await
            .unwrap_or_else(|s| panic!("NodeUnstageVolume {volume_id}: {}", show(&s)));
    }

    /// Every volume, following `next_token` to the end.
    pub async fn list_volumes(&mut self) -> Vec<list_volumes_response::Entry> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .ctl
                .list_volumes(ListVolumesRequest {
                    max_entries: 0,
                    starting_token: token,
                })
                .await
                .unwrap_or_else(|s| panic!("ListVolumes: {}", show(&s)))
                .into_inner();
            out.extend(r.entries);
            if r.next_token.is_empty() {
                return out;
            }
            token = r.next_token;
        }
    }

    pub async fn list_snapshots(&mut self) -> Vec<Snapshot> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .ctl
                .list_snapshots(ListSnapshotsRequest {
                    starting_token: token,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("ListSnapshots: {}", show(&s)))
                .into_inner();
            out.extend(r.entries.into_iter().filter_map(|e| e.snapshot));
            if r.next_token.is_empty() {
                return out;
            }
            token = r.next_token;
        }
    }

    pub async fn node_caps(&mut self) -> Vec<i32> {
        self.node
            .node_get_capabilities(NodeGetCapabilitiesRequest {})
            .await
            .expect("NodeGetCapabilities")
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| {
                c.r#type
                    .map(|node_service_capability::Type::Rpc(r)| r.r#type)
            })
            .collect()
    }

    pub async fn controller_caps(&mut self) -> Vec<i32> {
        self.ctl
            .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
            .await
            .expect("ControllerGetCapabilities")
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| {
                c.r#type
                    .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
            })
            .collect()
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

pub fn show(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

pub fn mount_cap(fs_type: &str, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs_type.into(),
                mount_flags: Vec::new(),
                volume_mount_group: String::new(),
            },
        )),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// The usual capability: an ext4 mount, single node writer.
pub fn snw() -> VolumeCapability {
    mount_cap("ext4", Mode::SingleNodeWriter)
}

pub fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A volume of a `dir` or `btrfs` pool: a mount of no particular fs_type.
pub fn tree_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        volume_capabilities: vec![tree_cap()],
        ..create_req(name, bytes)
    }
}

/// The capability of a tree volume: a mount, single node writer, fs_type left open.
pub fn tree_cap() -> VolumeCapability {
    mount_cap("", Mode::SingleNodeWriter)
}

pub fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![snw()],
        parameters: params(&[("pool", POOL)]),
        ..Default::default()
    }
}

pub fn node_topology(node: &str) -> Topology {
    Topology {
        segments: params(&[(TOPOLOGY_KEY, node)]),
    }
}

pub fn stage_req(vol: &Volume, staging: &Path, cap: VolumeCapability) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        publish_context: HashMap::new(),
        staging_target_path: path_str(staging),
        volume_capability: Some(cap),
        secrets: HashMap::new(),
        volume_context: vol.volume_context.clone(),
    }
}

pub fn publish_req(
    vol: &Volume,
    staging: &Path,
    target: &Path,
    cap: VolumeCapability,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        publish_context: HashMap::new(),
        staging_target_path: path_str(staging),
        target_path: path_str(target),
        volume_capability: Some(cap),
        readonly,
        secrets: HashMap::new(),
        volume_context: vol.volume_context.clone(),
    }
}

/// Collects every violated rule of one test and reports them together, so one run lists all
/// the spec rules the driver breaks instead of stopping at the first.
pub struct Checks {
    test: &'static str,
    failures: Vec<String>,
    passed: usize,
}

impl Checks {
    pub fn new(test: &'static str) -> Checks {
        Checks {
            test,
            failures: Vec::new(),
            passed: 0,
        }
    }

    pub fn fail(&mut self, what: &str, rule: &str, detail: String) {
        self.failures
            .push(format!("{what}: {detail}\n      rule: {rule}"));
    }

    /// Records `cond`; returns it.
    pub fn check(&mut self, what: &str, rule: &str, cond: bool, detail: impl Debug) -> bool {
        if cond {
            self.passed += 1;
        } else {
            self.fail(what, rule, format!("{detail:?}"));
        }
        cond
    }

    /// Expects success; returns the response.
    pub fn ok<T>(
        &mut self,
        what: &str,
        rule: &str,
        got: Result<csi_proto::tonic::Response<T>, Status>,
    ) -> Option<T> {
        match got {
            Ok(r) => {
                self.passed += 1;
                Some(r.into_inner())
            }
            Err(s) => {
                self.fail(what, rule, format!("want OK, got {}", show(&s)));
                None
            }
        }
    }

    /// Expects the error `want`, a human-readable message and empty details (spec: "the
    /// status details MUST be empty").
    pub fn code<T: Debug>(
        &mut self,
        what: &str,
        rule: &str,
        got: Result<csi_proto::tonic::Response<T>, Status>,
        want: Code,
    ) -> bool {
        self.code_in(what, rule, got, &[want])
    }

    /// Like [`Checks::code`], where the spec leaves a choice between codes.
    pub fn code_in<T: Debug>(
        &mut self,
        what: &str,
        rule: &str,
        got: Result<csi_proto::tonic::Response<T>, Status>,
        want: &[Code],
    ) -> bool {
        match got {
            Ok(r) => {
                self.fail(
                    what,
                    rule,
                    format!("want {want:?}, got OK {:?}", r.into_inner()),
                );
                false
            }
            Err(s) if !want.contains(&s.code()) => {
                self.fail(what, rule, format!("want {want:?}, got {}", show(&s)));
                false
            }
            Err(s) => {
                let mut good = true;
                if !s.details().is_empty() {
                    self.fail(
                        what,
                        "CSI spec, Error Scheme: status details MUST be empty",
                        format!("details has {} bytes", s.details().len()),
                    );
                    good = false;
                }
                if s.message().trim().is_empty() {
                    self.fail(
                        what,
                        "CSI spec, Error Scheme: the message MUST be human readable",
                        "empty message".into(),
                    );
                    good = false;
                }
                if good {
                    self.passed += 1;
                }
                good
            }
        }
    }

    /// Panics with every failure, if any.
    pub fn finish(mut self) {
        let failures = std::mem::take(&mut self.failures);
        if !failures.is_empty() {
            panic!(
                "{}: {} of {} checks failed:\n  - {}",
                self.test,
                failures.len(),
                failures.len() + self.passed,
                failures.join("\n  - ")
            );
        }
        eprintln!("{}: {} checks passed", self.test, self.passed);
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        // A panic in the middle of a test must not hide the rules already found broken.
        if !self.failures.is_empty() && std::thread::panicking() {
            eprintln!(
                "{}: failed checks before the panic:\n  - {}",
                self.test,
                self.failures.join("\n  - ")
            );
        }
    }
}

/// The mount at `path`, if any.
pub fn mount_at(path: &Path) -> Option<testkit::MountEntry> {
    testkit::mount_at(path)
}

/// The loop device behind the mount at `path` (a staged filesystem volume).
pub fn loop_of_mount(path: &Path) -> Option<testkit::LoopDevice> {
    let m = mount_at(path)?;
    testkit::LoopDevice::by_name(&m.source)
}

/// The loop device a block special file at `path` refers to.
pub fn loop_of_block_file(path: &Path) -> Option<testkit::LoopDevice> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    let rdev = md.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dev = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = dev.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    testkit::LoopDevice::by_name(name)
}

pub fn statvfs(path: &Path) -> nix::sys::statvfs::Statvfs {
    nix::sys::statvfs::statvfs(path).unwrap_or_else(|e| panic!("statvfs {}: {e}", path.display()))
}

/// Total bytes of the filesystem mounted at `path`.
pub fn fs_total_bytes(path: &Path) -> u64 {
    let s = statvfs(path);
    s.blocks() * s.fragment_size()
}

/// Writes `bytes` of a deterministic pattern to `path`, fsyncs, and returns the io error
/// (if any) with how much was written.
pub fn write_pattern(path: &Path, bytes: u64, seed: u8) -> (u64, Option<std::io::Error>) {
    use std::io::Write;
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut written = 0u64;
    while written < bytes {
        let n = chunk.len().min((bytes - written) as usize);
        if let Err(e) = f.write_all(&chunk[..n]) {
            return (written, Some(e));
        }
        written += n as u64;
    }
    if let Err(e) = f.sync_all() {
        return (written, Some(e));
    }
    (written, None)
}

/// True when `path` holds exactly what [`write_pattern`] wrote with `seed`.
pub fn has_pattern(path: &Path, bytes: u64, seed: u8) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    data.len() as u64 == bytes
        && data
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u8).wrapping_mul(31).wrapping_add(seed))
}

pub const WAIT: Duration = Duration::from_secs(30);

/// Whether this process (and so the driver it starts) holds `cap`, a capability number
/// from <linux/capability.h>, in its effective set.
pub fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

/// CAP_SYS_RESOURCE: ext4 online resize (EXT4_IOC_RESIZE_FS) needs it; some sandboxes drop it.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Polls `cond` for up to ten seconds; true once it holds. For kernel work that finishes
/// asynchronously (loop device rundown after the last close).
pub fn settle(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

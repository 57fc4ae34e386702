//! The driver's core: pools, state, locks and the rules shared by the services. Knows
//! nothing of gRPC; the service modules translate requests into calls on `Driver`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::{Backend, DataRef, Pools};
use crate::error::{Error, Result};
use crate::ids::{Kind, ObjectId};
use crate::locks::Locks;
use crate::state::{Phase, SnapshotRecord, Store, VolumeRecord};
use crate::sys;

/// Topology key whose value is the node id.
pub const TOPOLOGY_KEY: &str = "topology.strata.io/node";
/// 1 MiB: every size is rounded up to this.
pub const SIZE_UNIT: u64 = 1 << 20;
/// Smallest ext4 volume: leaves room for a journal.
pub const EXT4_MIN: u64 = 16 << 20;
/// Size of a volume created without a capacity range.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// Name prefix for objects the driver names itself. U+0001 is forbidden in CO names, so
/// these can never collide with a CreateVolume or CreateSnapshot name.
pub const INTERNAL_PREFIX: char = '\u{1}';

/// A capability's access mode (CSI `VolumeCapability.AccessMode.Mode`). Local storage
/// serves one node, so the MULTI_NODE modes are refused; a number from a newer spec than
/// ours is kept as `Other` (unsupported, but well-formed: ValidateVolumeCapabilities
/// answers "not confirmed" rather than INVALID_ARGUMENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
    Other(i32),
}

impl AccessMode {
    /// The mode for a wire number; None for 0 (UNKNOWN, i.e. not set).
    pub fn from_wire(n: i32) -> Option<AccessMode> {
        use csi_proto::volume_capability::access_mode::Mode;
        Some(match Mode::try_from(n) {
            Ok(Mode::Unknown) => return None,
            Ok(Mode::SingleNodeWriter) => AccessMode::SingleNodeWriter,
            Ok(Mode::SingleNodeReaderOnly) => AccessMode::SingleNodeReaderOnly,
            Ok(Mode::MultiNodeReaderOnly) => AccessMode::MultiNodeReaderOnly,
            Ok(Mode::MultiNodeSingleWriter) => AccessMode::MultiNodeSingleWriter,
            Ok(Mode::MultiNodeMultiWriter) => AccessMode::MultiNodeMultiWriter,
            Ok(Mode::SingleNodeSingleWriter) => AccessMode::SingleNodeSingleWriter,
            Ok(Mode::SingleNodeMultiWriter) => AccessMode::SingleNodeMultiWriter,
            Err(_) => AccessMode::Other(n),
        })
    }

    /// The wire number (also what records and fingerprints store).
    pub fn wire(self) -> i32 {
        use csi_proto::volume_capability::access_mode::Mode;
        match self {
            AccessMode::SingleNodeWriter => Mode::SingleNodeWriter as i32,
            AccessMode::SingleNodeReaderOnly => Mode::SingleNodeReaderOnly as i32,
            AccessMode::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly as i32,
            AccessMode::MultiNodeSingleWriter => Mode::MultiNodeSingleWriter as i32,
            AccessMode::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter as i32,
            AccessMode::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter as i32,
            AccessMode::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter as i32,
            AccessMode::Other(n) => n,
        }
    }

    /// Whether several publishes of one volume on this node are allowed (k8s-semantics
    /// §5.6 matrix).
    pub fn multi_publish(self) -> bool {
        matches!(
            self,
            AccessMode::SingleNodeMultiWriter
                | AccessMode::MultiNodeReaderOnly
                | AccessMode::MultiNodeSingleWriter
                | AccessMode::MultiNodeMultiWriter
        )
    }
}

/// A volume capability in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub block: bool,
    /// "" when unspecified; only for mount capabilities.
    pub fs_type: String,
    pub mount_flags: Vec<String>,
    pub mount_group: String,
    pub mode: AccessMode,
}

impl Cap {
    /// Whether this driver can serve the capability at all; Err(reason) otherwise.
    pub fn supported(&self) -> std::result::Result<(), String> {
        match self.mode {
            AccessMode::SingleNodeWriter
            | AccessMode::SingleNodeReaderOnly
            | AccessMode::SingleNodeSingleWriter
            | AccessMode::SingleNodeMultiWriter => {}
            AccessMode::MultiNodeReaderOnly
            | AccessMode::MultiNodeSingleWriter
            | AccessMode::MultiNodeMultiWriter => {
                return Err(format!(
                    "access mode {} needs several nodes; local volumes live on one",
                    self.mode.wire()
                ));
            }
            AccessMode::Other(n) => return Err(format!("access mode {n} is unknown")),
        }
        if !self.block
            && !self.fs_type.is_empty()
            && self.fs_type != "ext4"
            && self.fs_type != "xfs"
            && self.fs_type != "btrfs"
        {
            return Err(format!(
                "fs_type {:?}: only ext4 and xfs (btrfs for btrfs pools)",
                self.fs_type
            ));
        }
        if !self.mount_group.is_empty() && self.mount_group.parse::<u32>().is_err() {
            return Err(format!(
                "volume_mount_group {:?} is not a numeric group id",
                self.mount_group
            ));
        }
        Ok(())
    }

    /// Whether several publishes of one volume on this node are allowed.
    pub fn multi_publish(&self) -> bool {
        self.mode.multi_publish()
    }

    /// A stable text form for fingerprints.
    pub fn key(&self) -> String {
        let mut flags = self.mount_flags.clone();
        flags.sort();
        format!(
            "{}|{}|{}|{}|{}",
            if self.block { "block" } else { "mount" },
            self.fs_type,
            flags.join(","),
            self.mount_group,
            self.mode.wire()
        )
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn round_up(n: u64, unit: u64) -> u64 {
    n.div_ceil(unit).saturating_mul(unit)
}

/// Minimum size for a filesystem type ("" = block only).
pub fn min_size(fs_type: &str) -> u64 {
    match fs_type {
        "xfs" => sys::mkfs::XFS_MIN_BYTES,
        "ext4" => EXT4_MIN,
        _ => SIZE_UNIT,
    }
}

/// The size to allocate for a capacity range: `required` rounded up to 1 MiB and to the
/// filesystem's minimum, within `limit`. 0 means unset for both.
pub fn pick_size(required: u64, limit: u64, floor: u64, fs_type: &str) -> Result<u64> {
    if limit != 0 && required > limit {
        return Err(Error::OutOfRange {
            field: "capacity_range",
            reason: format!("required_bytes {required} exceeds limit_bytes {limit}"),
        });
    }
    let min = min_size(fs_type).max(floor);
    let want = if required == 0 {
        if limit != 0 {
            limit.min(DEFAULT_SIZE).max(min)
        } else {
            DEFAULT_SIZE.max(min)
        }
    } else {
        required.max(min)
    };
    let mut size = round_up(want, SIZE_UNIT);
    if limit != 0 && size > limit {
        // Rounding overshot the limit: round down instead if that still fits.
        let down = limit / SIZE_UNIT * SIZE_UNIT;
        if down >= required.max(min) && down > 0 {
            size = down;
        } else {
            return Err(Error::OutOfRange {
                field: "capacity_range",
                reason: format!("smallest possible size {size} exceeds limit_bytes {limit}"),
            });
        }
    }
    Ok(size)
}

/// Checks requisite/preferred topologies against this node.
pub fn topology_allows(
    node_id: &str,
    requisite: &[HashMap<String, String>],
    preferred: &[HashMap<String, String>],
) -> Result<()> {
    let matches = |t: &HashMap<String, String>| {
        t.iter()
            .all(|(k, v)| k.eq_ignore_ascii_case(TOPOLOGY_KEY) && v == node_id)
    };
    if !requisite.is_empty() {
        if requisite.iter().any(matches) {
            return Ok(());
        }
        return Err(Error::Topology(format!(
            "no requisite topology contains {TOPOLOGY_KEY}={node_id}; volumes of this driver live on node {node_id}"
        )));
    }
    if !preferred.is_empty() && !preferred.iter().any(matches) {
        return Err(Error::Topology(format!(
            "no preferred topology contains {TOPOLOGY_KEY}={node_id}"
        )));
    }
    Ok(())
}

/// Result of looking up an id the CO gave us.
pub enum Lookup<T> {
    Found(T),
    /// Well-formed for this node but not in the state, or not one of our ids at all.
    Unknown,
    /// One of ours, but from another node.
    OtherNode(ObjectId),
}

pub struct Driver {
    pub node_id: String,
    pub driver_name: String,
    pub max_volumes_per_node: i64,
    /// `--enable-alpha-capabilities`: advertise and serve the spec's alpha RPCs.
    pub alpha_capabilities: bool,
    pub pools: Pools,
    /// Overcommit ratio per pool (`--pool ...,overcommit=R`); absent means 1.
    pub overcommit: HashMap<String, crate::config::Ratio>,
    pub store: Store,
    pub locks: Locks,
    pub state_dir: PathBuf,
    /// Where unpublished targets go to be removed off the request path.
    pub trash: crate::node_ops::Trash,
}

impl Driver {
    pub fn pool(&self, name: &str) -> Result<&std::sync::Arc<dyn Backend>> {
        self.pools
            .get(name)
            .ok_or_else(|| Error::StateCorrupt(format!("pool {name} is not configured")))
    }

    /// Most capacity the volumes of `pool` may add up to: its filesystem's size times its
    /// overcommit ratio.
    pub fn provision_limit(&self, pool: &str, space: &crate::sys::fs::Space) -> u64 {
        let ratio = self
            .overcommit
            .get(pool)
            .copied()
            .unwrap_or(crate::config::Ratio::ONE);
        ratio.of(space.total_bytes)
    }

    /// Volume by id as the CO knows it: our id format, or the CO's id of an ephemeral
    /// inline volume.
    pub fn lookup_volume(&self, id: &str) -> Result<Lookup<VolumeRecord>> {
        match ObjectId::parse(id) {
            // The database first: a pool that moved here from another node keeps its
            // objects' ids, which name that node (meta::adopt takes them in).
            Some(oid) if oid.kind == Kind::Volume => Ok(match self.store.volume(id)? {
                Some(v) => Lookup::Found(v),
                None if oid.node != self.node_id => Lookup::OtherNode(oid),
                None => Lookup::Unknown,
            }),
            Some(_) => Ok(Lookup::Unknown),
            None => Ok(match self.store.volume_by_name(&ephemeral_name(id))? {
                Some(v) => Lookup::Found(v),
                None => Lookup::Unknown,
            }),
        }
    }

    /// A ready volume, or NOT_FOUND (another node's volume is also not found here).
    pub fn ready_volume(&self, id: &str) -> Result<VolumeRecord> {
        match self.lookup_volume(id)? {
            Lookup::Found(v) if v.phase == Phase::Ready => Ok(v),
            Lookup::Found(_) | Lookup::Unknown => Err(Error::VolumeNotFound(id.to_string())),
            Lookup::OtherNode(oid) => Err(Error::VolumeNotFound(format!(
                "{id} (it lives on node {})",
                oid.node
            ))),
        }
    }

    pub fn lookup_snapshot(&self, id: &str) -> Result<Lookup<SnapshotRecord>> {
        match ObjectId::parse(id) {
            Some(oid) if oid.kind == Kind::Snapshot => Ok(match self.store.snapshot(id)? {
                Some(s) => Lookup::Found(s),
                None if oid.node != self.node_id => Lookup::OtherNode(oid),
                None => Lookup::Unknown,
            }),
            _ => Ok(Lookup::Unknown),
        }
    }

    /// The loop device the stage record names, if it is still backed by the volume's
    /// image: a number alone may have been freed and reused by another process.
    pub fn live_device(
        &self,
        v: &VolumeRecord,
        st: &crate::state::StageRecord,
    ) -> Result<Option<u32>> {
        let Some(n) = st.device.as_deref().and_then(sys::loopdev::number_of) else {
            return Ok(None);
        };
        let image = self.pool(&v.pool)?.path(DataRef::volume(&v.data));
        let devs = sys::loopdev::find_by_backing(&image)
            .map_err(Error::io("listing loop devices", "/sys/block"))?;
        Ok(devs.contains(&n).then_some(n))
    }

    /// Whether the volume's data object is present.
    pub fn data_present(&self, v: &VolumeRecord) -> Result<bool> {
        let pool = self.pool(&v.pool)?;
        Ok(pool.size(DataRef::volume(&v.data))?.is_some())
    }

    /// The volume's health as the controller sees it: image present, and if staged, its
    /// loop device still backed by the image and its mount still there.
    pub fn condition(&self, v: &VolumeRecord) -> Result<(bool, String)> {
        let pool = self.pool(&v.pool)?;
        if pool.layout() == crate::backend::Layout::Tree {
            return self.tree_condition(v, pool.as_ref());
        }
        if pool.size(DataRef::volume(&v.data))?.is_none() {
            return Ok((
                true,
                format!(
                    "image {} is missing",
                    pool.path(DataRef::volume(&v.data)).display()
                ),
            ));
        }
        if let Some(st) = self.store.stage(&v.id)?
            && st.phase == crate::state::StagePhase::Staged
        {
            let image = pool.path(DataRef::volume(&v.data));
            let devices = sys::loopdev::find_by_backing(&image)
                .map_err(Error::io("listing loop devices", "/sys/block"))?;
            let recorded = st.device.as_deref().and_then(sys::loopdev::number_of);
            if recorded.is_none_or(|n| !devices.contains(&n)) {
                return Ok((true, format!("loop device of {} is gone", image.display())));
            }
            if !st.block {
                match sys::mount::stat(&st.staging_path) {
                    Ok(s) if s.mount_root => {}
                    _ => {
                        return Ok((
                            true,
                            format!("staging mount {} is gone", st.staging_path.display()),
                        ));
                    }
                }
            }
        }
        Ok((false, "healthy".to_string()))
    }
}

impl Driver {
    /// A tree volume's health: its directory present, the pool's limits enforced, and if
    /// staged, the staging path still a bind mount of the directory.
    fn tree_condition(&self, v: &VolumeRecord, pool: &dyn Backend) -> Result<(bool, String)> {
        let dir = pool.path(DataRef::volume(&v.data));
        if pool.size(DataRef::volume(&v.data))?.is_none() {
            return Ok((true, format!("directory {} is missing", dir.display())));
        }
        if let Some(st) = self.store.stage(&v.id)?
            && st.phase == crate::state::StagePhase::Staged
            && !bind_of(&st.staging_path, &dir)
        {
            return Ok((
                true,
                format!("staging mount {} is gone", st.staging_path.display()),
            ));
        }
        if let Some(why) = pool.pool_condition() {
            return Ok((true, why));
        }
        Ok((false, "healthy".to_string()))
    }
}

/// Whether `path` is the root of a bind mount of directory `dir`.
pub fn bind_of(path: &Path, dir: &Path) -> bool {
    match (sys::mount::stat(path), sys::mount::stat(dir)) {
        (Ok(a), Ok(b)) => a.mount_root && a.dev == b.dev && a.ino == b.ino,
        _ => false,
    }
}

/// The name under which an ephemeral inline volume with CO id `id` is recorded.
pub fn ephemeral_name(id: &str) -> String {
    format!("{INTERNAL_PREFIX}ephemeral:{id}")
}

/// The name of the member snapshot of group `group_id` for volume `volume_id`.
pub fn group_member_name(group_id: &str, volume_id: &str) -> String {
    format!("{INTERNAL_PREFIX}group:{group_id}:{volume_id}")
}

/// Sorted copy of a map, for storing and comparing parameters.
pub fn sorted(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Whether `path` is the root of a mount of the same filesystem as `reference`.
pub fn same_mount(path: &Path, reference: &Path) -> bool {
    match (sys::mount::stat(path), sys::mount::stat(reference)) {
        (Ok(a), Ok(b)) => a.mount_root && a.dev == b.dev,
        _ => false,
    }
}

/// A driver on one image pool `p` of node `n1`, for unit tests.
#[cfg(test)]
pub(crate) fn test_driver(pool_dir: &Path, state_dir: &Path) -> Driver {
    let pool: std::sync::Arc<dyn Backend> =
        std::sync::Arc::new(crate::backend::image::ImagePool::open("p", pool_dir).unwrap());
    Driver {
        node_id: "n1".into(),
        driver_name: "local.csi.strata.io".into(),
        max_volumes_per_node: 0,
        alpha_capabilities: false,
        pools: Pools::new(vec![pool]),
        overcommit: HashMap::new(),
        store: Store::open(state_dir).unwrap(),
        locks: Locks::default(),
        state_dir: state_dir.to_path_buf(),
        trash: crate::node_ops::Trash::open(state_dir).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_and_respect_limits() {
        assert_eq!(pick_size(1, 0, 0, "").unwrap(), SIZE_UNIT);
        assert_eq!(pick_size(SIZE_UNIT + 1, 0, 0, "").unwrap(), 2 * SIZE_UNIT);
        assert_eq!(pick_size(0, 0, 0, "ext4").unwrap(), DEFAULT_SIZE);
        assert_eq!(pick_size(1, 0, 0, "xfs").unwrap(), sys::mkfs::XFS_MIN_BYTES);
        assert_eq!(pick_size(0, 64 << 20, 0, "ext4").unwrap(), 64 << 20);
        assert!(matches!(
            pick_size(2, 1, 0, ""),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            pick_size(1 << 20, 100 << 20, 0, "xfs"),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(
            pick_size(10, 0, 50 << 20, "ext4").unwrap(),
            50 << 20,
            "source floor"
        );
        // A limit that is not a multiple of the unit still admits a size below it.
        assert_eq!(
            pick_size(20 << 20, (20 << 20) + 5, 0, "ext4").unwrap(),
            20 << 20
        );
    }

    #[test]
    fn topology() {
        let t = |v: &str| HashMap::from([(TOPOLOGY_KEY.to_string(), v.to_string())]);
        assert!(topology_allows("n1", &[t("n2"), t("n1")], &[]).is_ok());
        assert!(matches!(
            topology_allows("n1", &[t("n2")], &[]),
            Err(Error::Topology(_))
        ));
        assert!(topology_allows("n1", &[], &[]).is_ok());
        let other_key = HashMap::from([("zone".to_string(), "a".to_string())]);
        assert!(topology_allows("n1", &[other_key], &[]).is_err());
    }

    #[test]
    fn caps() {
        let c = Cap {
            block: false,
            fs_type: "ext4".into(),
            mount_flags: vec![],
            mount_group: String::new(),
            mode: AccessMode::SingleNodeWriter,
        };
        assert!(c.supported().is_ok());
        assert!(!c.multi_publish());
        assert!(
            Cap {
                mode: AccessMode::MultiNodeMultiWriter,
                ..c.clone()
            }
            .supported()
            .is_err()
        );
        assert!(
            Cap {
                fs_type: "ntfs".into(),
                ..c.clone()
            }
            .supported()
            .is_err()
        );
        assert!(
            Cap {
                mode: AccessMode::SingleNodeMultiWriter,
                ..c.clone()
            }
            .multi_publish()
        );
        assert!(
            Cap {
                mount_group: "abc".into(),
                ..c
            }
            .supported()
            .is_err()
        );
    }
}

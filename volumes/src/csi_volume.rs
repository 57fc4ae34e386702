//! PVC volumes through CSI node RPCs, the way the kubelet drives a driver (k8s-semantics §5.6, §5.11):
//! NodeStageVolume once per volume per node at the global staging path, NodePublishVolume
//! per pod, NodeUnpublish/NodeUnstage when the last user goes, NodeExpandVolume when the
//! claim asks for it.
//!
//! The disk is the record: next to every staging dir and publish target a `vol_data.json`
//! names the volume, so after a restart the manager knows what is staged and published
//! for whom without any other state.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_proto::node_client::NodeClient;
use csi_proto::tonic::transport::{Channel, Endpoint, Uri};
use csi_proto::{node_service_capability, volume_capability};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result, blocking};
use crate::layout;

/// The format of `vol_data.json` this build writes, in its `formatVersion` field.
/// 1: the kubelet's fields only (no `formatVersion`); 2: `formatVersion` added. Reading
/// checks it: older files are read (new fields take serde defaults), newer ones refused.
pub const VOL_DATA_FORMAT: u64 = 2;

/// `vol_data.json`, as the kubelet writes it next to its CSI dirs, plus `formatVersion`
/// (see [`VOL_DATA_FORMAT`]; not a field here, so every writer gets the current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolData {
    pub driver_name: String,
    pub volume_handle: String,
    /// The PV name.
    pub spec_vol_id: String,
    #[serde(default)]
    pub volume_lifecycle_mode: String,
}

/// What a publish needs, taken from the PV and the pod's volume.
#[derive(Debug, Clone)]
pub struct CsiVolume {
    pub pv_name: String,
    pub volume_handle: String,
    pub block: bool,
    pub fs_type: String,
    pub mount_flags: Vec<String>,
    /// CSI access mode number (`VolumeCapability.AccessMode.Mode`).
    pub access_mode: i32,
    pub read_only: bool,
    pub volume_context: BTreeMap<String, String>,
    /// Secret data for NodeStage / NodePublish, already resolved; never logged.
    pub stage_secrets: BTreeMap<String, String>,
    pub publish_secrets: BTreeMap<String, String>,
    /// The pod's fsGroup when it applies to this volume (fsGroupPolicy
    /// ReadWriteOnceWithFSType: a filesystem volume with an fsType and a single-node
    /// writable access mode). Delegated to the driver as `volume_mount_group` when it
    /// advertises VOLUME_MOUNT_GROUP; otherwise applied by us after the publish.
    pub fs_group: Option<u32>,
}

/// A connection to the node service of one CSI driver.
#[derive(Clone)]
pub struct CsiNode {
    client: NodeClient<Channel>,
    driver: String,
    stage_unstage: bool,
    expand: bool,
    single_node_multi_writer: bool,
    volume_mount_group: bool,
}

impl std::fmt::Debug for CsiNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsiNode")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

fn rpc_err(rpc: &'static str, volume: &str, s: csi_proto::tonic::Status) -> Error {
    Error::Csi {
        rpc,
        volume: volume.to_owned(),
        code: s.code() as i32,
        message: s.message().to_owned(),
    }
}

/// Maps a Kubernetes access mode to CSI's as the kubelet's csi plugin does: with a driver
/// that advertises SINGLE_NODE_MULTI_WRITER, ReadWriteOnce becomes that mode (several
/// pods on one node may share the volume) and ReadWriteOncePod SINGLE_NODE_SINGLE_WRITER;
/// without it both are SINGLE_NODE_WRITER.
pub fn access_mode(k8s: &[String], single_node_multi_writer: bool) -> i32 {
    use volume_capability::access_mode::Mode;
    let has = |m: &str| k8s.iter().any(|x| x == m);
    let mode = if has("ReadWriteMany") {
        Mode::MultiNodeMultiWriter
    } else if has("ReadOnlyMany") && !has("ReadWriteOnce") && !has("ReadWriteOncePod") {
        Mode::MultiNodeReaderOnly
    } else if !single_node_multi_writer {
        Mode::SingleNodeWriter
    } else if has("ReadWriteOncePod") {
        Mode::SingleNodeSingleWriter
    } else {
        Mode::SingleNodeMultiWriter
    };
    mode as i32
}

impl CsiNode {
    /// Dials `unix:///path`, asks the driver its name and node capabilities.
    pub async fn connect(endpoint: &str) -> Result<CsiNode> {
        let path = endpoint
            .strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| Error::InvalidArgument {
                field: "csi-endpoint",
                reason: format!("{endpoint:?} is not unix:///ABSOLUTE/PATH"),
            })?
            .to_owned();
        let channel = Endpoint::from_static("http://[::1]:50051")
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| Error::Csi {
                rpc: "connect",
                volume: String::new(),
                code: csi_proto::tonic::Code::Unavailable as i32,
                message: e.to_string(),
            })?;
        let mut identity = csi_proto::identity_client::IdentityClient::new(channel.clone());
        let info = identity
            .get_plugin_info(csi_proto::GetPluginInfoRequest {})
            .await
            .map_err(|s| rpc_err("GetPluginInfo", "", s))?
            .into_inner();
        let mut client = NodeClient::new(channel);
        let caps = client
            .node_get_capabilities(csi_proto::NodeGetCapabilitiesRequest {})
            .await
            .map_err(|s| rpc_err("NodeGetCapabilities", "", s))?
            .into_inner();
        let rpcs: BTreeSet<i32> = caps
            .capabilities
            .iter()
            .filter_map(|c| {
                c.r#type
                    .as_ref()
                    .map(|node_service_capability::Type::Rpc(r)| r.r#type)
            })
            .collect();
        use node_service_capability::rpc::Type;
        Ok(CsiNode {
            client,
            driver: info.name,
            stage_unstage: rpcs.contains(&(Type::StageUnstageVolume as i32)),
            expand: rpcs.contains(&(Type::ExpandVolume as i32)),
            single_node_multi_writer: rpcs.contains(&(Type::SingleNodeMultiWriter as i32)),
            volume_mount_group: rpcs.contains(&(Type::VolumeMountGroup as i32)),
        })
    }

    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Whether the node service advertises SINGLE_NODE_MULTI_WRITER.
    pub fn single_node_multi_writer(&self) -> bool {
        self.single_node_multi_writer
    }

    fn capability(&self, v: &CsiVolume) -> csi_proto::VolumeCapability {
        let access_type = if v.block {
            volume_capability::AccessType::Block(volume_capability::BlockVolume {})
        } else {
            volume_capability::AccessType::Mount(volume_capability::MountVolume {
                fs_type: v.fs_type.clone(),
                mount_flags: v.mount_flags.clone(),
                volume_mount_group: match v.fs_group {
                    Some(g) if self.volume_mount_group => g.to_string(),
                    _ => String::new(),
                },
            })
        };
        csi_proto::VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(volume_capability::AccessMode {
                mode: v.access_mode,
            }),
        }
    }

    /// Stages (once per node; the driver answers OK when already staged) and publishes
    /// for one pod. Returns the publish target.
    #[tracing::instrument(skip_all, fields(pv = %v.pv_name, pod_uid = %pod_uid))]
    pub async fn set_up(&self, state: &Path, pod_uid: &str, v: &CsiVolume) -> Result<PathBuf> {
        let data = VolData {
            driver_name: self.driver.clone(),
            volume_handle: v.volume_handle.clone(),
            spec_vol_id: v.pv_name.clone(),
            volume_lifecycle_mode: "Persistent".into(),
        };
        let staging = layout::csi_staging(state, &self.driver, &v.volume_handle);
        let cap = self.capability(v);
        let target = layout::csi_publish(state, pod_uid, &v.pv_name);
        let (t, d) = (target.clone(), data.clone());
        // Published already (a resync, a restart): as the kubelet's reconciler, nothing
        // to do, staging included. Calling NodeStage or NodePublish again would be
        // harmless to the driver but collide with the controller's work on the volume (an
        // expansion answers ABORTED), and the fsGroup pass below would walk the whole
        // volume at every resync. Otherwise only the parent is made: the driver creates
        // the target itself (k8s-semantics §5.6).
        let published = blocking(move || {
            if crate::mount::is_mounted(&t)? {
                return Ok(true);
            }
            make_dir_with_data(&t, &d, false).map(|()| false)
        })
        .await?;
        if published {
            return Ok(target);
        }
        if self.stage_unstage {
            let (s, d) = (staging.clone(), data);
            // The CO creates the staging dir (0750) and records what it is for (k8s-semantics §5.11).
            // Like the kubelet's MountDevice, stage only what is not staged yet: pods
            // with different fsGroups share one staging (only the publish differs). A
            // block volume's staging is no mount of its own: staged again, which the
            // driver answers from its record.
            let staged = blocking(move || {
                make_dir_with_data(&s, &d, true)?;
                crate::mount::is_mounted(&s)
            })
            .await?;
            if !staged || v.block {
                self.client
                    .clone()
                    .node_stage_volume(csi_proto::NodeStageVolumeRequest {
                        volume_id: v.volume_handle.clone(),
                        publish_context: Default::default(),
                        staging_target_path: staging.to_string_lossy().into_owned(),
                        volume_capability: Some(cap.clone()),
                        secrets: v.stage_secrets.clone().into_iter().collect(),
                        volume_context: v.volume_context.clone().into_iter().collect(),
                    })
                    .await
                    .map_err(|s| rpc_err("NodeStageVolume", &v.volume_handle, s))?;
            }
        }
        self.client
            .clone()
            .node_publish_volume(csi_proto::NodePublishVolumeRequest {
                volume_id: v.volume_handle.clone(),
                publish_context: Default::default(),
                staging_target_path: if self.stage_unstage {
                    staging.to_string_lossy().into_owned()
                } else {
                    String::new()
                },
                target_path: target.to_string_lossy().into_owned(),
                volume_capability: Some(cap),
                readonly: v.read_only,
                secrets: v.publish_secrets.clone().into_iter().collect(),
                volume_context: v.volume_context.clone().into_iter().collect(),
            })
            .await
            .map_err(|s| rpc_err("NodePublishVolume", &v.volume_handle, s))?;
        if let Some(gid) = v.fs_group
            && !self.volume_mount_group
            && !v.block
            && !v.read_only
        {
            // The driver cannot do it: the kubelet's recursive pass for writable volumes
            // (files |= 0660, dirs |= 02770), never following links.
            let t = target.clone();
            blocking(move || {
                let fd = crate::dirfd::open_dir(&t)?;
                crate::atomic_writer::apply_fs_group(std::os::fd::AsFd::as_fd(&fd), gid, 0o660, &t)
            })
            .await?;
        }
        Ok(target)
    }

    /// NodeExpandVolume on a published volume, with the PV's node-expand `secrets`
    /// (never logged); returns the size the driver reports.
    pub async fn expand(
        &self,
        state: &Path,
        pod_uid: &str,
        v: &CsiVolume,
        bytes: i64,
        secrets: BTreeMap<String, String>,
    ) -> Result<i64> {
        if !self.expand {
            return Err(Error::Csi {
                rpc: "NodeExpandVolume",
                volume: v.volume_handle.clone(),
                code: csi_proto::tonic::Code::Unimplemented as i32,
                message: "the driver does not advertise EXPAND_VOLUME".into(),
            });
        }
        let staging = layout::csi_staging(state, &self.driver, &v.volume_handle);
        let target = layout::csi_publish(state, pod_uid, &v.pv_name);
        let resp = self
            .client
            .clone()
            .node_expand_volume(csi_proto::NodeExpandVolumeRequest {
                volume_id: v.volume_handle.clone(),
                volume_path: target.to_string_lossy().into_owned(),
                capacity_range: Some(csi_proto::CapacityRange {
                    required_bytes: bytes,
                    limit_bytes: 0,
                }),
                staging_target_path: if self.stage_unstage {
                    staging.to_string_lossy().into_owned()
                } else {
                    String::new()
                },
                volume_capability: Some(self.capability(v)),
                secrets: secrets.into_iter().collect(),
            })
            .await
            .map_err(|s| rpc_err("NodeExpandVolume", &v.volume_handle, s))?;
        Ok(resp.into_inner().capacity_bytes)
    }

    /// Unpublishes every CSI volume of a pod, then unstages each volume no other pod on
    /// this node still has published. Works from `vol_data.json` alone, so it also cleans
    /// up after a restart.
    pub async fn tear_down_pod(&self, state: &Path, pod_uid: &str) -> Result<()> {
        let csi_dir = layout::pod_dir(state, pod_uid).join("volumes/kubernetes.io~csi");
        let published = {
            let d = csi_dir.clone();
            blocking(move || read_vol_data_dirs(&d)).await?
        };
        for (dir, data) in published {
            self.unpublish(&dir, &data).await?;
            self.unstage_if_unused(state, &data).await?;
        }
        Ok(())
    }

    /// NodeUnpublish of one target (`<dir>/mount`), then removes `dir`.
    pub async fn unpublish(&self, dir: &Path, data: &VolData) -> Result<()> {
        let target = dir.join("mount");
        self.client
            .clone()
            .node_unpublish_volume(csi_proto::NodeUnpublishVolumeRequest {
                volume_id: data.volume_handle.clone(),
                target_path: target.to_string_lossy().into_owned(),
            })
            .await
            .map_err(|s| rpc_err("NodeUnpublishVolume", &data.volume_handle, s))?;
        let d = dir.to_owned();
        blocking(move || remove_data_dir(&d)).await
    }

    /// NodeUnstage when no publish target on this node names the volume any more.
    pub async fn unstage_if_unused(&self, state: &Path, data: &VolData) -> Result<()> {
        if !self.stage_unstage {
            return Ok(());
        }
        let users = {
            let (s, h) = (state.to_owned(), data.volume_handle.clone());
            blocking(move || publish_users(&s, &h)).await?
        };
        if !users.is_empty() {
            return Ok(());
        }
        let staging = layout::csi_staging(state, &self.driver, &data.volume_handle);
        self.client
            .clone()
            .node_unstage_volume(csi_proto::NodeUnstageVolumeRequest {
                volume_id: data.volume_handle.clone(),
                staging_target_path: staging.to_string_lossy().into_owned(),
            })
            .await
            .map_err(|s| rpc_err("NodeUnstageVolume", &data.volume_handle, s))?;
        let parent = staging.parent().map(Path::to_owned).unwrap_or_default();
        blocking(move || {
            match std::fs::remove_dir(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at("remove directory", &staging),
            }
            remove_data_dir(&parent)
        })
        .await
    }

    /// Staging dirs of this driver that no publish target uses: left by a crash between
    /// the last unpublish and the unstage, or by pods that went away while we were down.
    pub async fn unstage_orphans(&self, state: &Path) -> Result<()> {
        let driver_dir = layout::csi_driver_dir(state, &self.driver);
        let staged = blocking(move || read_vol_data_dirs(&driver_dir)).await?;
        for (_, data) in staged {
            self.unstage_if_unused(state, &data).await?;
        }
        Ok(())
    }
}

/// Creates `target`'s parent (0750) with `vol_data.json`; with `create_target` also
/// `target` itself (0750).
fn make_dir_with_data(target: &Path, data: &VolData, create_target: bool) -> Result<()> {
    let parent = target.parent().expect("target has a parent");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(parent)
        .at("create directory", parent)?;
    let file = parent.join("vol_data.json");
    let body = encode_vol_data(data);
    if std::fs::read(&file).ok().as_deref() != Some(body.as_slice()) {
        let tmp = parent.join("vol_data.json.tmp");
        std::fs::write(&tmp, &body).at("write", &tmp)?;
        std::fs::rename(&tmp, &file).at("rename", &tmp)?;
    }
    if create_target {
        match std::fs::DirBuilder::new().mode(0o750).create(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).at("create directory", target),
        }
    }
    Ok(())
}

/// Removes `vol_data.json` and the (then empty) directory. Never recursive: anything
/// else still in there (a mount the driver left) makes this fail loudly instead of
/// deleting data.
fn remove_data_dir(dir: &Path) -> Result<()> {
    for f in ["vol_data.json", "vol_data.json.tmp"] {
        match std::fs::remove_file(dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at("remove", dir.join(f)),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at("remove directory", dir),
    }
}

/// `(dir, vol_data)` for every subdirectory of `parent` that has a readable vol_data.json.
pub fn read_vol_data_dirs(parent: &Path) -> Result<Vec<(PathBuf, VolData)>> {
    let entries = match std::fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at("read directory", parent),
    };
    let mut out = Vec::new();
    for entry in entries {
        let dir = entry.at("read directory", parent)?.path();
        let file = dir.join("vol_data.json");
        // An unreadable or garbled file is a crash leftover without a record (skipped);
        // a newer format is not, and stops the reconcile.
        if let Ok(bytes) = std::fs::read(&file)
            && let Some(data) = decode_vol_data(&file, &bytes)?
        {
            out.push((dir, data));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn encode_vol_data(data: &VolData) -> Vec<u8> {
    let mut v = serde_json::to_value(data).expect("json");
    v["formatVersion"] = serde_json::Value::from(VOL_DATA_FORMAT);
    serde_json::to_vec(&v).expect("json")
}

/// A `vol_data.json` of any version up to ours; `None` when it is not one at all.
pub fn decode_vol_data(path: &Path, bytes: &[u8]) -> Result<Option<VolData>> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(None);
    };
    let found = match v.get("formatVersion") {
        None => 1,
        Some(n) => match n.as_u64() {
            Some(n) => n,
            None => return Ok(None),
        },
    };
    if found > VOL_DATA_FORMAT {
        return Err(Error::FormatTooNew {
            path: path.to_path_buf(),
            found,
            supported: VOL_DATA_FORMAT,
        });
    }
    Ok(serde_json::from_value(v).ok())
}

/// Pod uids on this node with a publish target for `handle`.
pub fn publish_users(state: &Path, handle: &str) -> Result<Vec<String>> {
    let pods = layout::pods_dir(state);
    let entries = match std::fs::read_dir(&pods) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at("read directory", &pods),
    };
    let mut users = Vec::new();
    for entry in entries {
        let pod = entry.at("read directory", &pods)?;
        let dirs = read_vol_data_dirs(&pod.path().join("volumes/kubernetes.io~csi"))?;
        if dirs.iter().any(|(_, d)| d.volume_handle == handle) {
            users.push(pod.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_modes_map_like_the_kubelet() {
        use volume_capability::access_mode::Mode;
        let m = |v: &[&str], snmw| {
            access_mode(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), snmw)
        };
        assert_eq!(m(&["ReadWriteOnce"], false), Mode::SingleNodeWriter as i32);
        assert_eq!(
            m(&["ReadWriteOnce"], true),
            Mode::SingleNodeMultiWriter as i32
        );
        assert_eq!(
            m(&["ReadWriteOncePod"], false),
            Mode::SingleNodeWriter as i32
        );
        assert_eq!(
            m(&["ReadWriteOncePod"], true),
            Mode::SingleNodeSingleWriter as i32
        );
        assert_eq!(m(&["ReadOnlyMany"], true), Mode::MultiNodeReaderOnly as i32);
        assert_eq!(
            m(&["ReadWriteMany", "ReadWriteOnce"], false),
            Mode::MultiNodeMultiWriter as i32
        );
    }

    #[test]
    fn staging_path_is_the_kubelet_one() {
        let p = layout::csi_staging(Path::new("/s"), "local.csi.strata.io", "vol-1");
        let hash = layout::hex_sha256("vol-1");
        assert_eq!(
            p,
            Path::new("/s/plugins/kubernetes.io/csi/local.csi.strata.io")
                .join(hash)
                .join("globalmount")
        );
        assert_eq!(
            layout::csi_publish(Path::new("/s"), "uid", "pv-1"),
            Path::new("/s/pods/uid/volumes/kubernetes.io~csi/pv-1/mount")
        );
    }

    #[test]
    fn vol_data_dirs_and_users() {
        let tmp = tempfile::tempdir().unwrap();
        let data = |h: &str| VolData {
            driver_name: "d".into(),
            volume_handle: h.into(),
            spec_vol_id: "pv".into(),
            volume_lifecycle_mode: "Persistent".into(),
        };
        make_dir_with_data(
            &layout::csi_publish(tmp.path(), "p1", "pv-a"),
            &data("h1"),
            false,
        )
        .unwrap();
        make_dir_with_data(
            &layout::csi_publish(tmp.path(), "p2", "pv-a"),
            &data("h1"),
            false,
        )
        .unwrap();
        make_dir_with_data(
            &layout::csi_publish(tmp.path(), "p2", "pv-b"),
            &data("h2"),
            false,
        )
        .unwrap();
        // What this build writes says its format.
        let written: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                tmp.path()
                    .join("pods/p1/volumes/kubernetes.io~csi/pv-a/vol_data.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(written["formatVersion"], VOL_DATA_FORMAT);
        let mut users = publish_users(tmp.path(), "h1").unwrap();
        users.sort();
        assert_eq!(users, vec!["p1", "p2"]);
        assert_eq!(publish_users(tmp.path(), "h2").unwrap(), vec!["p2"]);
        let dir = layout::csi_publish(tmp.path(), "p1", "pv-a")
            .parent()
            .unwrap()
            .to_owned();
        remove_data_dir(&dir).unwrap();
        assert_eq!(publish_users(tmp.path(), "h1").unwrap(), vec!["p2"]);
        // Not recursive: an unexpected entry stops the removal.
        let d2 = layout::csi_publish(tmp.path(), "p2", "pv-b");
        std::fs::create_dir(&d2).unwrap();
        assert!(remove_data_dir(d2.parent().unwrap()).is_err());
    }
}

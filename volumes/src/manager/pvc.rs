//! persistentVolumeClaim volumes: the claim's PV set up through the CSI driver (stage
//! once per node, publish per pod), or bound in from the node for hostPath and `local`
//! PVs; node expansion when the claim asks for it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use strata_store::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, Secret, SecretReference, Volume,
};
use strata_store::meta;
use strata_store::{EventType, Store};

use super::{VolumeManager, store_err};
use crate::csi_volume::{self, CsiNode, CsiVolume};
use crate::error::{Error, Result, blocking};
use crate::handoff::PreparedVolume;
use crate::host_path;
use crate::layout;
use crate::projection;

impl<S: Store> VolumeManager<S> {
    pub(super) async fn csi(&self) -> Result<CsiNode> {
        let mut guard = self.inner.csi.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let endpoint =
            self.inner
                .cfg
                .csi_endpoint
                .as_deref()
                .ok_or_else(|| Error::InvalidArgument {
                    field: "csi-endpoint",
                    reason: "PVC volumes need a CSI driver, and none is configured".into(),
                })?;
        let c = CsiNode::connect(endpoint).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    pub(super) async fn set_up_pvc(&self, pod: &Pod, volume: &Volume) -> Result<PreparedVolume> {
        let src = volume.persistent_volume_claim.as_ref().expect("checked");
        let ns = meta::namespace(&pod.metadata).to_owned();
        let uid = meta::uid(&pod.metadata).to_owned();
        let pvc: PersistentVolumeClaim = self
            .inner
            .store
            .get(&ns, &src.claim_name)
            .await
            .map_err(store_err)?;
        let pv_name = meta::claim_volume_name(&pvc).to_owned();
        if pv_name.is_empty() || meta::claim_phase(&pvc) != "Bound" {
            return Err(Error::InvalidArgument {
                field: "persistentVolumeClaim",
                reason: format!("claim {ns}/{} is not bound yet", src.claim_name),
            });
        }
        let pv: PersistentVolume = self
            .inner
            .store
            .get("", &pv_name)
            .await
            .map_err(store_err)?;
        let spec = pv.spec.as_ref().ok_or_else(|| Error::InvalidArgument {
            field: "persistentVolume",
            reason: format!("{pv_name} has no spec"),
        })?;
        let read_only = src.read_only.unwrap_or(false);
        if let Some(hp) = &spec.host_path {
            // The container binds the node's path itself, as for an inline hostPath.
            let path = PathBuf::from(&hp.path);
            let (p, t) = (path.clone(), hp.type_.clone());
            blocking(move || host_path::check(&p, t.as_deref())).await?;
            return Ok(PreparedVolume {
                path,
                read_only,
                block: false,
            });
        }
        if let Some(local) = &spec.local {
            if meta::volume_volume_mode(&pv) == "Block" {
                return Err(Error::InvalidArgument {
                    field: "persistentVolume.spec.volumeMode",
                    reason: format!("{pv_name}: local volumes in Block mode are not supported"),
                });
            }
            let target = layout::volume_dir(
                &self.inner.cfg.state_dir,
                &uid,
                "kubernetes.io~local-volume",
                &pv_name,
            );
            let (s, t) = (PathBuf::from(&local.path), target.clone());
            blocking(move || host_path::bind_local(&s, &t)).await?;
            return Ok(PreparedVolume {
                path: target,
                read_only,
                block: false,
            });
        }
        let csi_src = spec.csi.as_ref().ok_or_else(|| Error::InvalidArgument {
            field: "persistentVolume",
            reason: format!(
                "{pv_name} is not a CSI, hostPath or local volume; no other kind is supported"
            ),
        })?;
        let csi = self.csi().await?;
        if csi_src.driver != csi.driver() {
            return Err(Error::InvalidArgument {
                field: "persistentVolume.spec.csi.driver",
                reason: format!(
                    "{pv_name} needs driver {:?}; this node runs {:?}",
                    csi_src.driver,
                    csi.driver()
                ),
            });
        }
        let read_only = read_only || csi_src.read_only.unwrap_or(false);
        let v = CsiVolume {
            pv_name: pv_name.clone(),
            volume_handle: csi_src.volume_handle.clone(),
            block: meta::volume_volume_mode(&pv) == "Block",
            fs_type: csi_src.fs_type.clone().unwrap_or_default(),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            access_mode: csi_volume::access_mode(
                meta::volume_access_modes(&pv),
                csi.single_node_multi_writer(),
            ),
            read_only,
            volume_context: csi_src.volume_attributes.clone().unwrap_or_default(),
            stage_secrets: self.secret_data(&csi_src.node_stage_secret_ref).await?,
            publish_secrets: self.secret_data(&csi_src.node_publish_secret_ref).await?,
            fs_group: None,
        };
        // fsGroupPolicy ReadWriteOnceWithFSType (the default without a CSIDriver object):
        // only filesystem volumes with an fsType and one single-node writable mode.
        let modes = meta::volume_access_modes(&pv);
        let single_writer =
            modes.len() == 1 && matches!(modes[0].as_str(), "ReadWriteOnce" | "ReadWriteOncePod");
        let mut v = v;
        if !v.block && !v.fs_type.is_empty() && single_writer {
            v.fs_group = projection::fs_group(pod);
        }
        let target = csi.set_up(&self.inner.cfg.state_dir, &uid, &v).await?;
        self.expand_if_pending(&csi, pod, &pvc, &pv, &v).await?;
        Ok(PreparedVolume {
            path: target,
            read_only,
            block: v.block,
        })
    }

    /// The data of the Secret `r` names (none without one), for a CSI call's `secrets`.
    async fn secret_data(&self, r: &Option<SecretReference>) -> Result<BTreeMap<String, String>> {
        let Some(r) = r else {
            return Ok(BTreeMap::new());
        };
        let s: Secret = self
            .inner
            .store
            .get(
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default(),
            )
            .await
            .map_err(store_err)?;
        Ok(s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect())
    }

    /// NodeExpandVolume when the claim says node expansion is pending, then records the
    /// new capacity in the claim's status, clears the pending mark and, as the kubelet,
    /// a FileSystemResizeSuccessful event on the pod and on the claim.
    pub(super) async fn expand_if_pending(
        &self,
        csi: &CsiNode,
        pod: &Pod,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
        v: &CsiVolume,
    ) -> Result<()> {
        let pending = pvc
            .status
            .as_ref()
            .and_then(|s| s.allocated_resource_statuses.as_ref())
            .and_then(|m| m.get("storage"))
            .is_some_and(|s| s == "NodeResizePending");
        if !pending {
            return Ok(());
        }
        let want = pv
            .spec
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .cloned()
            .ok_or_else(|| Error::InvalidArgument {
                field: "persistentVolume.spec.capacity",
                reason: "no storage capacity".into(),
            })?;
        let bytes = strata_store::quantity::parse(&want.0)
            .ok()
            .and_then(|q| i64::try_from(q.ceil_units()).ok())
            .ok_or_else(|| Error::InvalidArgument {
                field: "persistentVolume.spec.capacity",
                reason: format!("{:?} is not a size", want.0),
            })?;
        let pod_uid = meta::uid(&pod.metadata);
        // Read only now, as the kubelet does: a missing Secret fails the expansion (and it
        // is retried), never the volume's set-up.
        let secrets = self
            .secret_data(
                &pv.spec
                    .as_ref()
                    .and_then(|s| s.csi.as_ref())
                    .and_then(|c| c.node_expand_secret_ref.clone()),
            )
            .await?;
        csi.expand(&self.inner.cfg.state_dir, pod_uid, v, bytes, secrets)
            .await?;
        let ns = meta::namespace(&pvc.metadata).to_owned();
        let name = meta::name(&pvc.metadata).to_owned();
        for _ in 0..5 {
            let mut cur: PersistentVolumeClaim =
                self.inner.store.get(&ns, &name).await.map_err(store_err)?;
            let status = cur.status.get_or_insert_with(Default::default);
            if let Some(m) = status.allocated_resource_statuses.as_mut() {
                m.remove("storage");
            }
            status
                .capacity
                .get_or_insert_with(Default::default)
                .insert("storage".into(), want.clone());
            match self.inner.store.update_status(&cur).await {
                Ok(cur) => {
                    tracing::info!(pvc = %format!("{ns}/{name}"), size = %want.0, "expanded on the node");
                    let message = format!(
                        "MountVolume.NodeExpandVolume succeeded for volume {:?} {}",
                        v.pv_name, self.inner.cfg.node_name
                    );
                    for involved in [meta::object_reference(pod), meta::object_reference(&cur)] {
                        if let Err(e) = self
                            .inner
                            .store
                            .record_event(
                                &involved,
                                EventType::Normal,
                                "FileSystemResizeSuccessful",
                                &message,
                            )
                            .await
                        {
                            tracing::warn!(error = %e, "recording FileSystemResizeSuccessful");
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(Error::Store(format!(
            "updating {ns}/{name} status: conflict after retries"
        )))
    }
}

//! Whole-node passes: the level-triggered reconcile (start-up, resync) and the release
//! of every pod's volumes when the node stops with its mounts.

use std::collections::BTreeMap;

use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::Pod;
use strata_store::meta;

use super::desired::TOMBSTONE_TTL;
use super::{VolumeManager, wants_volumes};
use crate::error::{Error, Result};
use crate::layout;

impl<S: Store> VolumeManager<S> {
    /// One level-triggered pass: sets up every desired pod, tears down every pod directory
    /// that no desired pod owns, and unstages CSI volumes nobody publishes.
    ///
    /// Desired are the pods of `pods` placed here and not finished, and the pods the Pod
    /// watch has delivered since (a list can be older than the watch), less every pod seen
    /// deleted, finished or torn down (a list can also be older than a deletion).
    pub async fn reconcile(&self, pods: &[Pod]) -> Result<()> {
        let node = self.inner.cfg.node_name.clone();
        let desired: BTreeMap<String, Pod> = {
            let mut d = self.inner.desired.lock().expect("lock");
            d.gone.retain(|_, since| since.elapsed() < TOMBSTONE_TTL);
            let mut out: BTreeMap<String, Pod> = d
                .pods
                .iter()
                .map(|(uid, p)| (uid.clone(), p.clone()))
                .collect();
            for p in pods.iter().filter(|p| wants_volumes(p, &node)) {
                let uid = meta::uid(&p.metadata).to_owned();
                if d.gone.contains_key(&uid) {
                    continue;
                }
                if out.get(&uid).is_none_or(|old| {
                    meta::resource_version(&old.metadata) <= meta::resource_version(&p.metadata)
                }) {
                    out.insert(uid, p.clone());
                }
            }
            out
        };
        let mut first_err = None;
        for uid in self.pods_on_disk()? {
            if !desired.contains_key(&uid)
                && let Err(e) = self.tear_down_pod(&uid).await
            {
                tracing::warn!(pod_uid = %uid, error = %e, "tearing down a stale pod");
                first_err.get_or_insert(e);
            }
        }
        // Pods known in memory but gone from the store (no directory was left).
        let known: Vec<String> = self
            .inner
            .pods
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        for uid in known {
            if !desired.contains_key(&uid) {
                self.inner.pods.lock().expect("lock").remove(&uid);
                self.forget_ready(&uid);
            }
        }
        let syncs = desired.values().map(|p| self.sync_pod(p));
        for r in futures::future::join_all(syncs).await {
            match r {
                // Deleted while this pass ran (its tear-down is the Pod watch's), or not
                // admitted yet (its pod runner syncs it once it is).
                Ok(_) | Err(Error::PodGone { .. } | Error::NotAdmitted { .. }) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if self.inner.cfg.csi_endpoint.is_some() {
            match self.csi().await {
                Ok(csi) => {
                    if let Err(e) = csi.unstage_orphans(&self.inner.cfg.state_dir).await {
                        first_err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Tears down the volumes of every pod on disk and unstages every CSI volume, leaving
    /// the pods in the store: for a node that stops and takes its mounts with it (`volctl
    /// down`). Disk-backed emptyDirs keep their contents, as across a reboot under the
    /// kubelet. The next start sets them up again from the store. Call after `run`
    /// returned.
    pub async fn release_all(&self) -> Result<()> {
        let mut first_err = None;
        for uid in self.pods_on_disk()? {
            let released = self.tracked(format!("release pod {uid}"), {
                let (me, u) = (self.clone(), uid.clone());
                async move { me.tear_down_now(&u, super::pod::Keep::EmptyDirs).await }
            });
            if let Err(e) = released.await {
                tracing::warn!(pod_uid = %uid, error = %e, "releasing a pod's volumes");
                first_err.get_or_insert(e);
            }
        }
        if self.inner.cfg.csi_endpoint.is_some() {
            let unstaged = match self.csi().await {
                Ok(csi) => csi.unstage_orphans(&self.inner.cfg.state_dir).await,
                Err(e) => Err(e),
            };
            if let Err(e) = unstaged {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The pod uids that have a directory on disk.
    pub fn pods_on_disk(&self) -> Result<Vec<String>> {
        let dir = layout::pods_dir(&self.inner.cfg.state_dir);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|source| Error::Fs {
            op: "read directory",
            path: dir.clone(),
            source,
        })? {
            let e = e.map_err(|source| Error::Fs {
                op: "read directory",
                path: dir.clone(),
                source,
            })?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
}

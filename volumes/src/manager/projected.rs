//! API-data volumes (secret, configMap, downwardAPI, projected): built from the cache
//! and written by the atomic writer, and re-projected when an object they read changes.

use std::collections::{BTreeMap, BTreeSet};

use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Volume};
use strata_store::meta;

use super::{CachedObject, ObjectKind, VolumeManager, key_of};
use crate::api_volume;
use crate::atomic_writer::WriteOutcome;
use crate::error::{Result, blocking};
use crate::handoff::{self, PreparedVolume};
use crate::layout;
use crate::projection::{self, Inputs, Kind};

impl<S: Store> VolumeManager<S> {
    /// Builds and writes one API-data volume. Returns the immutable objects it used.
    pub(super) async fn set_up_api_volume(
        &self,
        pod: &Pod,
        volume: &Volume,
        kind: Kind,
    ) -> Result<(PreparedVolume, BTreeSet<(ObjectKind, String)>)> {
        let ns = meta::namespace(&pod.metadata).to_owned();
        let uid = meta::uid(&pod.metadata).to_owned();
        let refs = projection::references(volume)?;
        self.fill_cache(&ns, &refs).await?;
        let mut tokens = BTreeMap::new();
        for key in &refs.tokens {
            tokens.insert(key.clone(), self.token_for(pod, key).await?);
        }
        let mut immutable = BTreeSet::new();
        let secrets: BTreeMap<String, Secret> = {
            let cache = self.inner.secrets.read().expect("lock");
            refs.secrets
                .iter()
                .filter_map(|n| {
                    cache
                        .get(&(ns.clone(), n.clone()))
                        .map(|s| (n.clone(), s.clone()))
                })
                .collect()
        };
        let config_maps: BTreeMap<String, ConfigMap> = {
            let cache = self.inner.config_maps.read().expect("lock");
            refs.config_maps
                .iter()
                .filter_map(|n| {
                    cache
                        .get(&(ns.clone(), n.clone()))
                        .map(|c| (n.clone(), c.clone()))
                })
                .collect()
        };
        for (n, s) in &secrets {
            if s.immutable == Some(true) {
                immutable.insert((ObjectKind::Secret, n.clone()));
            }
        }
        for (n, c) in &config_maps {
            if c.immutable == Some(true) {
                immutable.insert((ObjectKind::ConfigMap, n.clone()));
            }
        }
        let payload = projection::build(
            volume,
            &Inputs {
                pod,
                secrets: &secrets,
                config_maps: &config_maps,
                tokens: &tokens,
                node_allocatable: &self.inner.allocatable,
            },
        )?;
        let dir = layout::volume_dir(
            &self.inner.cfg.state_dir,
            &uid,
            kind.plugin_dir(),
            &volume.name,
        );
        let fs_group = projection::fs_group(pod);
        let d = dir.clone();
        let nested = handoff::nested_mount_points(pod, &volume.name);
        let outcome =
            blocking(move || api_volume::set_up(&d, kind, &payload, fs_group, &nested)).await?;
        if let WriteOutcome::Written { version } = &outcome {
            tracing::debug!(volume = %volume.name, %version, "projected");
        }
        Ok((
            PreparedVolume {
                path: dir,
                read_only: true,
                block: false,
            },
            immutable,
        ))
    }

    /// Pods (uid) whose volumes read `name` of `kind` in `ns`, skipping those that used an
    /// immutable version of it.
    pub(super) fn affected_pods(&self, kind: ObjectKind, ns: &str, name: &str) -> Vec<Pod> {
        let pods = self.inner.pods.lock().expect("lock");
        pods.values()
            .filter_map(|e| e.pod.as_ref().map(|p| (e, p)))
            .filter(|(_, p)| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|(e, _)| !e.immutable.contains(&(kind, name.to_owned())))
            .filter(|(_, p)| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|v| {
                        projection::references(v).is_ok_and(|r| match kind {
                            ObjectKind::Secret => r.secrets.contains(name),
                            ObjectKind::ConfigMap => r.config_maps.contains(name),
                        })
                    })
            })
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Re-projects the volumes of `pod` that read `name` of `kind`.
    async fn reproject_pod(&self, pod: &Pod, kind: ObjectKind, name: &str) -> Result<()> {
        let uid = meta::uid(&pod.metadata).to_owned();
        let lock = self.pod_lock(&uid);
        let _guard = lock.lock().await;
        // The pod may have been torn down while we waited for the lock.
        if !self.inner.pods.lock().expect("lock").contains_key(&uid)
            || self.current_pod(pod).is_none()
        {
            return Ok(());
        }
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(vk) = Kind::of(v) else { continue };
            let reads = projection::references(v).is_ok_and(|r| match kind {
                ObjectKind::Secret => r.secrets.contains(name),
                ObjectKind::ConfigMap => r.config_maps.contains(name),
            });
            if !reads {
                continue;
            }
            match self.set_up_api_volume(pod, v, vk).await {
                Ok(_) => {
                    if let Some(e) = self.inner.pods.lock().expect("lock").get_mut(&uid) {
                        e.errors.remove(&v.name);
                    }
                }
                Err(e) => {
                    // Content stays as it was; the error is reported, not acted on.
                    tracing::warn!(volume = %v.name, error = %e, "re-projecting failed");
                    if let Some(entry) = self.inner.pods.lock().expect("lock").get_mut(&uid) {
                        entry.errors.insert(v.name.clone(), e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes a changed Secret or ConfigMap into the cache and re-projects every volume
    /// that reads it, all pods at once. Returns how many pods were re-projected.
    pub async fn object_changed(&self, kind: ObjectKind, obj: CachedObject) -> usize {
        let (ns, name) = match &obj {
            CachedObject::Secret(s) => key_of(s),
            CachedObject::ConfigMap(c) => key_of(c),
        };
        self.cache_object(kind, obj);
        let pods = self.affected_pods(kind, &ns, &name);
        let n = pods.len();
        // Each pod's writes are tracked work: they finish even if this caller goes.
        let jobs = pods.into_iter().map(|p| {
            let (me, name) = (self.clone(), name.clone());
            let what = format!(
                "re-project {kind:?} {ns}/{name} into pod {}",
                meta::key(&p.metadata)
            );
            self.tracked(what, async move { me.reproject_pod(&p, kind, &name).await })
        });
        for r in futures::future::join_all(jobs).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "re-projecting");
            }
        }
        n
    }
}

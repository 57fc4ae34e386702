//! The binder's two workers: apply `binder::sync_claim` / `sync_volume` plans, and keep the
//! protection finalizers.

use std::collections::HashMap;

use strata_store::{Preconditions, Store};
use tracing::debug;

use super::cache::key;
use super::{Controller, Requeue};
use crate::binder::{self, ClaimContext, Plan, VolumeContext, Write};
use crate::error::Result;
use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use crate::meta;

impl<S: Store> Controller<S> {
    /// Writes a PV (metadata/spec) and puts the result in the cache; on a conflict the cache
    /// gets the stored version, so the retry decides on fresh data.
    pub(crate) async fn write_pv(
        &self,
        pv: &PersistentVolume,
        status: bool,
    ) -> Result<PersistentVolume> {
        let r = if status {
            self.store.update_status(pv).await
        } else {
            self.store.update(pv).await
        };
        match r {
            Ok(new) => {
                self.cache().put_volume(new.clone());
                Ok(new)
            }
            Err(e) => {
                if e.is_conflict() || e.is_not_found() {
                    self.refresh_pv(meta::name(&pv.metadata)).await;
                }
                Err(e.into())
            }
        }
    }

    pub(crate) async fn write_pvc(
        &self,
        pvc: &PersistentVolumeClaim,
        status: bool,
    ) -> Result<PersistentVolumeClaim> {
        let r = if status {
            self.store.update_status(pvc).await
        } else {
            self.store.update(pvc).await
        };
        match r {
            Ok(new) => {
                self.cache().put_claim(new.clone());
                Ok(new)
            }
            Err(e) => {
                if e.is_conflict() || e.is_not_found() {
                    self.refresh_pvc(meta::namespace(&pvc.metadata), meta::name(&pvc.metadata))
                        .await;
                }
                Err(e.into())
            }
        }
    }

    pub(crate) async fn refresh_pv(&self, name: &str) {
        match self.store.get::<PersistentVolume>("", name).await {
            Ok(pv) => self.cache().put_volume(pv),
            Err(e) if e.is_not_found() => {
                let mut c = self.cache();
                let rv = c
                    .volumes
                    .get(name)
                    .map(|o| meta::resource_version(&o.metadata))
                    .unwrap_or(0);
                c.drop_volume(name, rv);
            }
            Err(_) => {}
        }
    }

    pub(crate) async fn refresh_pvc(&self, ns: &str, name: &str) {
        let k = format!("{ns}/{name}");
        match self.store.get::<PersistentVolumeClaim>(ns, name).await {
            Ok(pvc) => {
                let mut c = self.cache();
                c.put_claim(pvc);
            }
            Err(e) if e.is_not_found() => {
                let mut c = self.cache();
                let rv = c
                    .claims
                    .get(&k)
                    .map(|o| meta::resource_version(&o.metadata))
                    .unwrap_or(0);
                c.drop_claim(&k, rv);
            }
            Err(_) => {}
        }
    }

    /// Applies a plan in order, stopping at the first failed write. A later write to an object
    /// written earlier in the plan carries the new resourceVersion forward.
    pub(crate) async fn apply_plan(&self, plan: Plan) -> Result<()> {
        let mut versions: HashMap<(bool, String), Option<String>> = HashMap::new();
        for w in plan.writes {
            match w {
                Write::Volume(mut pv) => {
                    let k = (true, key(&pv.metadata));
                    if let Some(rv) = versions.get(&k) {
                        pv.metadata.resource_version = rv.clone();
                    }
                    let new = self.write_pv(&pv, false).await?;
                    versions.insert(k, new.metadata.resource_version);
                }
                Write::VolumeStatus(mut pv) => {
                    let k = (true, key(&pv.metadata));
                    if let Some(rv) = versions.get(&k) {
                        pv.metadata.resource_version = rv.clone();
                    }
                    let new = self.write_pv(&pv, true).await?;
                    versions.insert(k, new.metadata.resource_version);
                }
                Write::Claim(mut pvc) => {
                    let k = (false, key(&pvc.metadata));
                    if let Some(rv) = versions.get(&k) {
                        pvc.metadata.resource_version = rv.clone();
                    }
                    let new = self.write_pvc(&pvc, false).await?;
                    versions.insert(k, new.metadata.resource_version);
                }
                Write::ClaimStatus(mut pvc) => {
                    let k = (false, key(&pvc.metadata));
                    if let Some(rv) = versions.get(&k) {
                        pvc.metadata.resource_version = rv.clone();
                    }
                    let new = self.write_pvc(&pvc, true).await?;
                    versions.insert(k, new.metadata.resource_version);
                }
                Write::Event(e) => self.record(&e).await,
            }
        }
        for k in plan.enqueue_claims {
            self.queues.claims.add(k);
        }
        Ok(())
    }

    pub(crate) async fn sync_claim(&self, k: &str) -> Result<Requeue> {
        let plan = {
            let c = self.cache();
            let Some(pvc) = c.claims.get(k) else {
                return Ok(Requeue::Done);
            };
            let (ns, name) = (meta::namespace(&pvc.metadata), meta::name(&pvc.metadata));
            let mut unscheduled: Vec<String> = c
                .pods_using_claim(ns, name)
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .unwrap_or_default()
                        .is_empty()
                })
                .map(|p| meta::name(&p.metadata).to_string())
                .collect();
            unscheduled.sort();
            let ctx = ClaimContext {
                volumes: &c.volumes,
                classes: &c.classes,
                unscheduled_pods: &unscheduled,
            };
            binder::sync_claim(pvc, &ctx)
        };
        debug!(
            claim = k,
            note = plan.note,
            writes = plan.writes.len(),
            "syncClaim"
        );
        self.apply_plan(plan).await?;
        self.claim_protection(k).await?;
        Ok(Requeue::Done)
    }

    /// pvc-protection: released once no scheduled pod uses the claim, checked in the cache
    /// and then with a live list (a pod created a moment ago may not be cached yet).
    async fn claim_protection(&self, k: &str) -> Result<()> {
        let Some(pvc) = self.cache().claims.get(k).cloned() else {
            return Ok(());
        };
        let deleting = pvc.metadata.deletion_timestamp.is_some();
        let mut in_use = false;
        if deleting {
            let ns = meta::namespace(&pvc.metadata);
            in_use = self
                .cache()
                .pods
                .values()
                .any(|p| binder::protection::pod_blocks_claim_deletion(p, &pvc));
            if !in_use {
                let live = self.store.list::<Pod>(Some(ns), None).await?;
                in_use = live
                    .items
                    .iter()
                    .any(|p| binder::protection::pod_blocks_claim_deletion(p, &pvc));
            }
        }
        if let Some(updated) = binder::protection::claim_protection(&pvc, in_use) {
            debug!(claim = k, deleting, in_use, "pvc-protection finalizer");
            self.write_pvc(&updated, false).await?;
        }
        Ok(())
    }

    pub(crate) async fn sync_volume(&self, name: &str) -> Result<Requeue> {
        let Some(pv) = self.cache().volumes.get(name).cloned() else {
            return Ok(Requeue::Done);
        };
        let mut claim = None;
        if let Some(r) =
            meta::volume_claim_ref(&pv).filter(|r| r.uid.as_deref().is_some_and(|u| !u.is_empty()))
        {
            let (ns, cname) = (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            );
            let cached = self.cache().claims.get(&format!("{ns}/{cname}")).cloned();
            claim = match cached {
                Some(c) if c.metadata.uid == r.uid => Some(c),
                // Missing or another UID in the cache: ask the store before releasing anything.
                _ if !matches!(meta::volume_phase(&pv), "Released" | "Failed")
                    || cached.is_some() =>
                {
                    match self.store.get::<PersistentVolumeClaim>(&ns, &cname).await {
                        Ok(c) => Some(c),
                        Err(e) if e.is_not_found() => None,
                        Err(e) => return Err(e.into()),
                    }
                }
                _ => None,
            };
        }
        let plan = binder::sync_volume(
            &pv,
            &VolumeContext {
                claim: claim.as_ref(),
            },
        );
        debug!(
            volume = name,
            note = plan.note,
            writes = plan.writes.len(),
            "syncVolume"
        );
        self.apply_plan(plan).await?;
        // pv-protection, on the version the plan left behind.
        let current = self.cache().volumes.get(name).cloned();
        if let Some(updated) = current
            .as_ref()
            .and_then(binder::protection::volume_protection)
        {
            self.write_pv(&updated, false).await?;
        }
        Ok(Requeue::Done)
    }

    /// Deletes a PV (uid precondition), tolerating NotFound.
    pub(crate) async fn delete_pv(&self, pv: &PersistentVolume) -> Result<()> {
        let pre = Preconditions {
            uid: pv.metadata.uid.clone(),
            resource_version: None,
        };
        match self
            .store
            .delete::<PersistentVolume>("", meta::name(&pv.metadata), pre)
            .await
        {
            Ok(d) => {
                let gone = d.is_gone();
                let obj = d.into_object();
                let mut c = self.cache();
                if gone {
                    c.drop_volume(
                        meta::name(&obj.metadata),
                        meta::resource_version(&obj.metadata),
                    );
                } else {
                    c.put_volume(obj);
                }
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

//! The binder's two workers: apply `binder::sync_claim` / `sync_volume` plans, and keep the
//! protection finalizers.

use std::collections::HashMap;

use strata_store::{Batch, Preconditions, Store};
use tracing::debug;

use super::{Controller, Requeue};
use crate::binder::{self, ClaimContext, Plan, VolumeContext, Write};
use crate::error::Result;
use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use crate::meta;

/// The object a write of a plan is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    volume: bool,
    namespace: String,
    name: String,
}

/// Gives a write the resourceVersion an earlier write of its plan left the object at,
/// and names the object.
fn carry(versions: &HashMap<Target, Option<String>>, volume: bool, m: &mut ObjectMeta) -> Target {
    let t = Target {
        volume,
        namespace: meta::namespace(m).to_string(),
        name: meta::name(m).to_string(),
    };
    if let Some(rv) = versions.get(&t) {
        m.resource_version = rv.clone();
    }
    t
}

/// A stored result of a plan's write, decoded.
enum Stored {
    // Boxed: a PV is three times a claim's size, and the batch holds a few of each.
    Volume(Box<PersistentVolume>),
    Claim(Box<PersistentVolumeClaim>),
}

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
    /// written earlier in the plan carries the new resourceVersion forward. The object writes
    /// between two events go to the store as one batch (one transaction in the embedded
    /// store: a bind's four writes cost one commit, not four).
    pub(crate) async fn apply_plan(&self, plan: Plan) -> Result<()> {
        let mut versions: HashMap<Target, Option<String>> = HashMap::new();
        let mut batch = Batch::new();
        let mut targets = Vec::new();
        for w in plan.writes {
            match w {
                Write::Volume(mut pv) => {
                    let t = carry(&versions, true, &mut pv.metadata);
                    batch.update(&pv)?;
                    targets.push(t);
                }
                Write::VolumeStatus(mut pv) => {
                    let t = carry(&versions, true, &mut pv.metadata);
                    batch.update_status(&pv)?;
                    targets.push(t);
                }
                Write::Claim(mut pvc) => {
                    let t = carry(&versions, false, &mut pvc.metadata);
                    batch.update(&pvc)?;
                    targets.push(t);
                }
                Write::ClaimStatus(mut pvc) => {
                    let t = carry(&versions, false, &mut pvc.metadata);
                    batch.update_status(&pvc)?;
                    targets.push(t);
                }
                Write::Event(e) => {
                    let (b, t) = (std::mem::take(&mut batch), std::mem::take(&mut targets));
                    self.write_batch(b, t, &mut versions).await?;
                    self.record(&e).await;
                }
            }
        }
        self.write_batch(batch, targets, &mut versions).await?;
        for k in plan.enqueue_claims {
            self.queues.claims.add(k);
        }
        Ok(())
    }

    /// Writes a plan's batch and puts the results in the cache; on a conflict or a missing
    /// object the cache gets the stored version of the write that failed, so the retry
    /// decides on fresh data.
    async fn write_batch(
        &self,
        batch: Batch<S>,
        targets: Vec<Target>,
        versions: &mut HashMap<Target, Option<String>>,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let outcome = self.store.write_batch(batch).await;
        let mut decoded = Vec::with_capacity(outcome.written.len());
        for (written, t) in outcome.written.into_iter().zip(&targets) {
            decoded.push(if t.volume {
                Stored::Volume(Box::new(written.into_object()?))
            } else {
                Stored::Claim(Box::new(written.into_object()?))
            });
        }
        {
            let mut c = self.cache();
            for (w, t) in decoded.into_iter().zip(&targets) {
                match w {
                    Stored::Volume(pv) => {
                        versions.insert(t.clone(), pv.metadata.resource_version.clone());
                        c.put_volume(*pv);
                    }
                    Stored::Claim(pvc) => {
                        versions.insert(t.clone(), pvc.metadata.resource_version.clone());
                        c.put_claim(*pvc);
                    }
                }
            }
        }
        let Some((i, e)) = outcome.failed else {
            return Ok(());
        };
        if e.is_conflict() || e.is_not_found() {
            let t = &targets[i];
            if t.volume {
                self.refresh_pv(&t.name).await;
            } else {
                self.refresh_pvc(&t.namespace, &t.name).await;
            }
        }
        Err(e.into())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use strata_store::EmbeddedStore;

    use super::*;
    use crate::binder::testutil::{claim, volume};
    use crate::controller::Config;
    use crate::provision::csi::CsiClient;

    /// A bind whose claim write conflicts (someone changed the claim after the cache saw
    /// it): the PV writes before it stay, the claim is not written, the cache gets the
    /// stored claim, and the retry finishes the bind.
    #[tokio::test]
    async fn a_conflict_inside_a_bind_keeps_the_writes_before_it_and_the_retry_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let csi = CsiClient::new("unix:///nonexistent.sock", Duration::from_secs(1)).unwrap();
        let ctl = Controller::new(store.clone(), csi, Config::new("n"));

        let mut pv = volume("pv", "1Gi", &["ReadWriteOnce"]);
        (pv.metadata.uid, pv.metadata.resource_version) = (None, None);
        pv.spec.as_mut().unwrap().host_path = Some(Default::default());
        let mut pv = store.create(&pv).await.unwrap();
        pv.status.as_mut().unwrap().phase = Some("Available".into());
        let pv = store.update_status(&pv).await.unwrap();
        let mut pvc = claim("c", "1Gi", &["ReadWriteOnce"]);
        (pvc.metadata.uid, pvc.metadata.resource_version) = (None, None);
        let pvc = store.create(&pvc).await.unwrap();
        {
            let mut c = ctl.cache();
            c.put_volume(pv);
            c.put_claim(pvc.clone());
        }
        let mut other = pvc.clone();
        other.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        let other = store.update(&other).await.unwrap();

        let Err(err) = ctl.sync_claim("default/c").await else {
            panic!("the claim write must conflict");
        };
        assert!(err.is_conflict(), "{err}");
        let stored: PersistentVolume = store.get("", "pv").await.unwrap();
        assert_eq!(
            meta::volume_claim_ref(&stored).and_then(|r| r.name.as_deref()),
            Some("c"),
            "the PV spec write before the conflict stays"
        );
        assert_eq!(meta::volume_phase(&stored), "Bound");
        let stored: PersistentVolumeClaim = store.get("default", "c").await.unwrap();
        assert_eq!(stored, other, "the claim writes were not made");
        assert_eq!(
            ctl.cache().claims["default/c"],
            other,
            "the cache has the stored claim"
        );

        ctl.sync_claim("default/c").await.unwrap();
        let stored: PersistentVolumeClaim = store.get("default", "c").await.unwrap();
        assert_eq!(meta::claim_volume_name(&stored), "pv");
        assert_eq!(meta::claim_phase(&stored), "Bound");
        assert_eq!(ctl.cache().claims["default/c"], stored);
    }
}

//! The binder's two workers: apply `binder::sync_claim` / `sync_volume` plans, and keep the
//! protection finalizers.

use std::collections::HashMap;

use strata_store::{Batch, BatchOutcome, Preconditions, Store};
use tracing::debug;

use super::cache::Cache;
use super::{Controller, Requeue};
use crate::binder::{self, ClaimContext, Event, Plan, VolumeContext, Write};
use crate::error::{Error, Result};
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

/// Adds an object write of a plan to `batch`, carrying the version an earlier batch of the
/// same plan left its object at; an event is handed back instead.
fn add_write<S: Store>(
    batch: &mut Batch<S>,
    targets: &mut Vec<Target>,
    versions: &HashMap<Target, Option<String>>,
    w: Write,
) -> Result<Option<Event>> {
    let t = match w {
        Write::Volume(mut pv) => {
            let t = carry(versions, true, &mut pv.metadata);
            batch.update(&pv)?;
            t
        }
        Write::VolumeStatus(mut pv) => {
            let t = carry(versions, true, &mut pv.metadata);
            batch.update_status(&pv)?;
            t
        }
        Write::Claim(mut pvc) => {
            let t = carry(versions, false, &mut pvc.metadata);
            batch.update(&pvc)?;
            t
        }
        Write::ClaimStatus(mut pvc) => {
            let t = carry(versions, false, &mut pvc.metadata);
            batch.update_status(&pvc)?;
            t
        }
        Write::Event(e) => return Ok(Some(e)),
    };
    targets.push(t);
    Ok(None)
}

/// The claim a volume's claimRef names, for syncVolume.
enum ClaimOf<'a> {
    /// As the cache holds it (None: no claim, or the volume is released and the claim is
    /// not cached).
    Known(Option<&'a PersistentVolumeClaim>),
    /// Missing from the cache or cached with another UID: the store is asked before
    /// anything is released, so a stale cache never releases a PV by mistake.
    Ask { namespace: String, name: String },
}

fn claim_of<'a>(c: &'a Cache, pv: &PersistentVolume) -> ClaimOf<'a> {
    let Some(r) =
        meta::volume_claim_ref(pv).filter(|r| r.uid.as_deref().is_some_and(|u| !u.is_empty()))
    else {
        return ClaimOf::Known(None);
    };
    let (ns, name) = (
        r.namespace.as_deref().unwrap_or_default(),
        r.name.as_deref().unwrap_or_default(),
    );
    let cached = c.claims.get(&format!("{ns}/{name}"));
    match cached {
        Some(claim) if claim.metadata.uid == r.uid => ClaimOf::Known(Some(claim)),
        _ if !matches!(meta::volume_phase(pv), "Released" | "Failed") || cached.is_some() => {
            ClaimOf::Ask {
                namespace: ns.to_string(),
                name: name.to_string(),
            }
        }
        _ => ClaimOf::Known(None),
    }
}

/// The plan syncClaim makes for claim `k` from the cache; None when it is not cached.
fn decide_claim(c: &Cache, k: &str) -> Option<Plan> {
    let pvc = c.claims.get(k)?;
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
    Some(binder::sync_claim(pvc, &ctx))
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
            if let Some(e) = add_write(&mut batch, &mut targets, &versions, w)? {
                let (b, t) = (std::mem::take(&mut batch), std::mem::take(&mut targets));
                self.write_batch(b, t, &mut versions).await?;
                self.record(&e).await;
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
        self.absorb(outcome, &targets, versions).await
    }

    /// Puts what a batch wrote in the cache and, when a write failed on a conflict or a
    /// missing object, the stored version of that object; returns that write's error.
    async fn absorb(
        &self,
        outcome: BatchOutcome,
        targets: &[Target],
        versions: &mut HashMap<Target, Option<String>>,
    ) -> Result<()> {
        let mut decoded = Vec::with_capacity(outcome.written.len());
        for (written, t) in outcome.written.into_iter().zip(targets) {
            decoded.push(if t.volume {
                Stored::Volume(Box::new(written.into_object()?))
            } else {
                Stored::Claim(Box::new(written.into_object()?))
            });
        }
        {
            let mut c = self.cache();
            for (w, t) in decoded.into_iter().zip(targets) {
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

    /// Makes the plans of a batch of keys: `batched` (writes only) together through
    /// [`Self::write_plans`], `single` one by one through [`Self::apply_plan`]. Returns the
    /// keys whose plan was made; a failed one's error goes to `results`.
    async fn make_plans(
        &self,
        batched: Vec<(String, Plan)>,
        single: Vec<(String, Plan)>,
        results: &mut Vec<(String, Result<Requeue>)>,
    ) -> Vec<String> {
        let mut made = Vec::new();
        let mut record = |k: String, r: Result<()>| match r {
            Ok(()) => made.push(k),
            Err(e) => results.push((k, Err(e))),
        };
        for (k, r) in self.write_plans(batched).await {
            record(k, r);
        }
        for (k, plan) in single {
            let r = self.apply_plan(plan).await;
            record(k, r);
        }
        made
    }

    /// Makes plans that are object writes only (no events, no claims to wake), each its
    /// own batch, in one store call ([`Store::write_batches`]: one transaction in the
    /// embedded store), and puts each plan's results in the cache as `apply_plan` does.
    /// Each plan gets its own result: one that fails stops alone (the writes before its
    /// failed one stay, as `apply_plan` keeps them) and the others are made.
    async fn write_plans(&self, plans: Vec<(String, Plan)>) -> Vec<(String, Result<()>)> {
        let mut results = Vec::with_capacity(plans.len());
        let mut keys = Vec::with_capacity(plans.len());
        let mut batches = Vec::with_capacity(plans.len());
        let mut targets = Vec::with_capacity(plans.len());
        for (k, plan) in plans {
            let (mut batch, mut t) = (Batch::new(), Vec::new());
            let made = plan
                .writes
                .into_iter()
                .try_for_each(|w| add_write(&mut batch, &mut t, &HashMap::new(), w).map(drop));
            match made {
                Ok(()) => {
                    keys.push(k);
                    batches.push(batch);
                    targets.push(t);
                }
                Err(e) => results.push((k, Err(e))),
            }
        }
        if batches.is_empty() {
            return results;
        }
        let outcomes = match self.store.write_batches(batches).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // The transaction failed as a whole: nothing was written, every plan is
                // retried.
                let e = std::sync::Arc::new(e);
                results.extend(
                    keys.into_iter()
                        .map(|k| (k, Err(Error::Batch(std::sync::Arc::clone(&e))))),
                );
                return results;
            }
        };
        for ((k, outcome), t) in keys.into_iter().zip(outcomes).zip(&targets) {
            let r = self.absorb(outcome, t, &mut HashMap::new()).await;
            results.push((k, r));
        }
        results
    }

    /// syncClaim for one claim.
    #[cfg(test)]
    pub(crate) async fn sync_claim(&self, k: &str) -> Result<Requeue> {
        let mut results = self.sync_claims(vec![k.to_string()]).await;
        results.pop().map_or(Ok(Requeue::Done), |(_, r)| r)
    }

    /// syncClaim for every claim the worker took at once. Each is decided against the
    /// cache in turn, and the volumes an earlier plan binds are shown to the later
    /// decisions as planned, so no two plans take the same volume; the cache gets them back
    /// as they were before the writes, so the other loops see only what was written. Plans
    /// that are object writes only (a bind) go to the store in one call
    /// ([`Controller::write_plans`]), the others one by one (`apply_plan`). Each claim gets
    /// its own result: a plan that fails (a conflict) stops alone, the stored version of
    /// the object goes to the cache, and the worker syncs that claim again.
    pub(crate) async fn sync_claims(&self, keys: Vec<String>) -> Vec<(String, Result<Requeue>)> {
        let mut results = Vec::with_capacity(keys.len());
        let (mut batched, mut single) = (Vec::new(), Vec::new());
        {
            let mut c = self.cache();
            // Volumes shown to the later decisions as planned, and how the cache held them.
            let mut held: HashMap<String, Option<PersistentVolume>> = HashMap::new();
            for k in keys {
                let Some(plan) = decide_claim(&c, &k) else {
                    results.push((k, Ok(Requeue::Done)));
                    continue;
                };
                debug!(
                    claim = %k,
                    note = plan.note,
                    writes = plan.writes.len(),
                    "syncClaim"
                );
                for w in &plan.writes {
                    if let Write::Volume(pv) | Write::VolumeStatus(pv) = w {
                        let name = meta::name(&pv.metadata);
                        if !held.contains_key(name) {
                            held.insert(name.to_string(), c.volumes.get(name).cloned());
                        }
                        c.volumes.upsert(pv.clone());
                    }
                }
                let only_writes = plan.enqueue_claims.is_empty()
                    && !plan.writes.iter().any(|w| matches!(w, Write::Event(_)));
                if only_writes && !plan.writes.is_empty() {
                    batched.push((k, plan));
                } else {
                    single.push((k, plan));
                }
            }
            // Planned volumes carry the version they were decided on, so these replace
            // them (the index keeps newer versions only).
            for (name, pv) in held {
                match pv {
                    Some(pv) => c.volumes.upsert(pv),
                    None => {
                        c.volumes.remove(&name);
                    }
                }
            }
        }
        for k in self.make_plans(batched, single, &mut results).await {
            let r = self.claim_protection(&k).await.map(|()| Requeue::Done);
            results.push((k, r));
        }
        results
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

    /// syncVolume for one volume; the claim its claimRef names is read from the store
    /// when the cache cannot vouch for it.
    pub(crate) async fn sync_volume(&self, name: &str) -> Result<Requeue> {
        let (pv, claim) = {
            let c = self.cache();
            let Some(pv) = c.volumes.get(name) else {
                return Ok(Requeue::Done);
            };
            let claim = match claim_of(&c, pv) {
                ClaimOf::Known(claim) => Ok(claim.cloned()),
                ClaimOf::Ask { namespace, name } => Err((namespace, name)),
            };
            (pv.clone(), claim)
        };
        let claim = match claim {
            Ok(claim) => claim,
            Err((ns, cname)) => match self.store.get::<PersistentVolumeClaim>(&ns, &cname).await {
                Ok(c) => Some(c),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            },
        };
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
        self.volume_protection(name).await?;
        Ok(Requeue::Done)
    }

    /// syncVolume for every volume the worker took at once (the first sync of many new
    /// volumes is one status write each). Each is decided from the cache; plans of object
    /// writes only go to the store in one call ([`Controller::write_plans`]), the others
    /// one by one, and a volume whose claim the cache cannot vouch for goes through
    /// `sync_volume`, which reads the claim from the store first.
    pub(crate) async fn sync_volumes(&self, names: Vec<String>) -> Vec<(String, Result<Requeue>)> {
        let mut results = Vec::with_capacity(names.len());
        let (mut batched, mut single, mut ask) = (Vec::new(), Vec::new(), Vec::new());
        {
            let c = self.cache();
            for name in names {
                let Some(pv) = c.volumes.get(&name) else {
                    results.push((name, Ok(Requeue::Done)));
                    continue;
                };
                let ClaimOf::Known(claim) = claim_of(&c, pv) else {
                    ask.push(name);
                    continue;
                };
                let plan = binder::sync_volume(pv, &VolumeContext { claim });
                debug!(
                    volume = %name,
                    note = plan.note,
                    writes = plan.writes.len(),
                    "syncVolume"
                );
                let only_writes = plan.enqueue_claims.is_empty()
                    && !plan.writes.iter().any(|w| matches!(w, Write::Event(_)));
                if only_writes && !plan.writes.is_empty() {
                    batched.push((name, plan));
                } else {
                    single.push((name, plan));
                }
            }
        }
        for name in self.make_plans(batched, single, &mut results).await {
            let r = self.volume_protection(&name).await.map(|()| Requeue::Done);
            results.push((name, r));
        }
        for name in ask {
            let r = self.sync_volume(&name).await;
            results.push((name, r));
        }
        results
    }

    /// pv-protection, on the version the plan left in the cache.
    async fn volume_protection(&self, name: &str) -> Result<()> {
        let updated = self
            .cache()
            .volumes
            .get(name)
            .and_then(binder::protection::volume_protection);
        if let Some(updated) = updated {
            self.write_pv(&updated, false).await?;
        }
        Ok(())
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

    /// Three claims decided and written at once, while someone changed one object of the
    /// second's bind behind the cache (its claim, or its volume). Each plan stands alone:
    /// the first and third claims are bound, each to a volume of its own (the second's
    /// planned volume is not offered to the third), the second gets the conflict (its
    /// worker syncs it again at once) and the cache the stored version of the object that
    /// conflicted; the retry binds it.
    #[tokio::test]
    async fn a_conflict_in_one_plan_of_a_batch_leaves_the_others_bound_and_the_retry_finishes() {
        for changed in ["claim", "volume"] {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let csi = CsiClient::new("unix:///nonexistent.sock", Duration::from_secs(1)).unwrap();
            let ctl = Controller::new(store.clone(), csi, Config::new("n"));
            let mut keys = Vec::new();
            for i in 0..3 {
                let mut pv = volume(&format!("pv-{i}"), "1Gi", &["ReadWriteOnce"]);
                (pv.metadata.uid, pv.metadata.resource_version) = (None, None);
                pv.spec.as_mut().unwrap().host_path = Some(Default::default());
                let mut pv = store.create(&pv).await.unwrap();
                pv.status.as_mut().unwrap().phase = Some("Available".into());
                let pv = store.update_status(&pv).await.unwrap();
                let mut pvc = claim(&format!("c-{i}"), "1Gi", &["ReadWriteOnce"]);
                (pvc.metadata.uid, pvc.metadata.resource_version) = (None, None);
                let pvc = store.create(&pvc).await.unwrap();
                let mut c = ctl.cache();
                c.put_volume(pv);
                c.put_claim(pvc);
                keys.push(format!("default/c-{i}"));
            }
            let labels = Some(BTreeMap::from([("x".into(), "y".into())]));
            let start = store.revision().await.unwrap();
            if changed == "claim" {
                let mut other: PersistentVolumeClaim = store.get("default", "c-1").await.unwrap();
                other.metadata.labels = labels;
                store.update(&other).await.unwrap();
            } else {
                let mut other: PersistentVolume = store.get("", "pv-1").await.unwrap();
                other.metadata.labels = labels;
                store.update(&other).await.unwrap();
            }

            let results = ctl.sync_claims(keys.clone()).await;
            let by_key: BTreeMap<_, _> = results.into_iter().collect();
            assert_eq!(by_key.len(), 3, "one result per claim");
            assert!(
                matches!(by_key["default/c-0"], Ok(Requeue::Done)),
                "{changed}"
            );
            assert!(
                matches!(by_key["default/c-2"], Ok(Requeue::Done)),
                "{changed}"
            );
            let Err(err) = &by_key["default/c-1"] else {
                panic!("{changed}: the second plan must conflict");
            };
            assert!(err.is_conflict(), "{changed}: {err}");
            // One transaction: the first plan's four writes, the second's PV writes when
            // only its claim changed, the third's four, after the change made meanwhile.
            let made = if changed == "claim" { 10 } else { 8 };
            assert_eq!(
                store.revision().await.unwrap(),
                start + 1 + made,
                "{changed}"
            );
            let mut taken = std::collections::BTreeSet::new();
            for i in [0, 2] {
                let c: PersistentVolumeClaim =
                    store.get("default", &format!("c-{i}")).await.unwrap();
                assert_eq!(meta::claim_phase(&c), "Bound", "{changed}: c-{i}");
                assert_eq!(
                    ctl.cache().claims[&format!("default/c-{i}")],
                    c,
                    "{changed}"
                );
                let pv: PersistentVolume =
                    store.get("", meta::claim_volume_name(&c)).await.unwrap();
                assert_eq!(meta::volume_phase(&pv), "Bound", "{changed}");
                assert_eq!(ctl.cache().volumes.get(meta::name(&pv.metadata)), Some(&pv));
                taken.insert(meta::name(&pv.metadata).to_string());
            }
            assert_eq!(taken.len(), 2, "{changed}: two volumes, not one: {taken:?}");
            let stored: PersistentVolumeClaim = store.get("default", "c-1").await.unwrap();
            assert_eq!(meta::claim_phase(&stored), "Pending", "{changed}");
            assert_eq!(ctl.cache().claims["default/c-1"], stored, "{changed}");
            let pv1: PersistentVolume = store.get("", "pv-1").await.unwrap();
            assert_eq!(ctl.cache().volumes.get("pv-1"), Some(&pv1), "{changed}");

            let results = ctl.sync_claims(vec!["default/c-1".to_string()]).await;
            assert!(matches!(results[..], [(_, Ok(Requeue::Done))]), "{changed}");
            let c: PersistentVolumeClaim = store.get("default", "c-1").await.unwrap();
            assert_eq!(meta::claim_phase(&c), "Bound", "{changed}");
            assert!(
                taken.insert(meta::claim_volume_name(&c).to_string()),
                "{changed}: the retry took a volume of its own"
            );
        }
    }

    /// The first sync of many new volumes (Pending, one status write each) is one batch:
    /// every volume ends Available, and the cache holds what was written.
    #[tokio::test]
    async fn new_volumes_are_made_available_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let csi = CsiClient::new("unix:///nonexistent.sock", Duration::from_secs(1)).unwrap();
        let ctl = Controller::new(store.clone(), csi, Config::new("n"));
        let mut names = Vec::new();
        for i in 0..5 {
            let mut pv = volume(&format!("pv-{i}"), "1Gi", &["ReadWriteOnce"]);
            (pv.metadata.uid, pv.metadata.resource_version) = (None, None);
            pv.spec.as_mut().unwrap().host_path = Some(Default::default());
            let pv = store.create(&pv).await.unwrap();
            assert_eq!(meta::volume_phase(&pv), "Pending");
            ctl.cache().put_volume(pv);
            names.push(format!("pv-{i}"));
        }
        let start = store.revision().await.unwrap();
        let results = ctl.sync_volumes(names.clone()).await;
        assert_eq!(results.len(), 5);
        assert!(results.iter().all(|(_, r)| matches!(r, Ok(Requeue::Done))));
        assert_eq!(store.revision().await.unwrap(), start + 5);
        for name in &names {
            let pv: PersistentVolume = store.get("", name).await.unwrap();
            assert_eq!(meta::volume_phase(&pv), "Available");
            assert_eq!(ctl.cache().volumes.get(name), Some(&pv));
        }
    }
}

//! The StatefulSet worker, the ownerReference garbage collector, and standalone placement
//! of WaitForFirstConsumer claims.

use std::collections::BTreeMap;

use strata_store::{Preconditions, Store};
use tracing::{debug, info};

use super::cache::key;
use super::{Controller, Requeue};
use crate::binder::class::{claim_class, is_delay_binding};
use crate::binder::index::Node;
use crate::binder::{Event, EventType};
use crate::error::Result;
use crate::gc::{self, Owner, Verdict};
use crate::k8s_openapi::api::apps::v1::StatefulSet;
use crate::k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use crate::meta::{self, has_annotation, set_annotation};
use crate::names;
use crate::selector::standalone_node_labels;
use crate::statefulset::{self, reconcile::Action};

impl<S: Store> Controller<S> {
    #[tracing::instrument(skip_all, fields(statefulset = %k))]
    pub(crate) async fn sync_set(&self, k: &str) -> Result<Requeue> {
        let actions = {
            let c = self.cache();
            let Some(set) = c.sets.get(k) else {
                return Ok(Requeue::Done);
            };
            let ns = meta::namespace(&set.metadata);
            let prefix = format!("{ns}/");
            let pods: Vec<Pod> = c
                .pods
                .range(prefix.clone()..)
                .take_while(|(pk, _)| pk.starts_with(&prefix))
                .map(|(_, p)| p)
                .filter(|p| statefulset::is_owned_by(p, set))
                .cloned()
                .collect();
            let claims: BTreeMap<String, PersistentVolumeClaim> = c
                .claims
                .range(prefix.clone()..)
                .take_while(|(ck, _)| ck.starts_with(&prefix))
                .map(|(ck, pvc)| (ck[prefix.len()..].to_string(), pvc.clone()))
                .collect();
            let actions = statefulset::reconcile::reconcile(set, &pods, &claims);
            (set.clone(), actions)
        };
        let (set, actions) = actions;
        let set_ref = meta::object_reference(&set);
        for a in actions {
            match a {
                Action::CreateClaim(pvc) => match self.store.create(&pvc).await {
                    Ok(new) => {
                        self.cache().put_claim(new);
                    }
                    // Made by an earlier pass whose watch event has not arrived: fine.
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => {
                        let msg = format!(
                            "create Claim {} for StatefulSet {} failed error: {e}",
                            meta::name(&pvc.metadata),
                            meta::name(&set.metadata)
                        );
                        self.record(&Event {
                            involved: set_ref.clone(),
                            type_: EventType::Warning,
                            reason: names::reason::FAILED_CREATE,
                            message: msg,
                        })
                        .await;
                        return Err(e.into());
                    }
                },
                Action::UpdateClaim(pvc) => {
                    self.write_pvc(&pvc, false).await?;
                }
                Action::CreatePod(pod) => match self.store.create(&pod).await {
                    Ok(new) => {
                        self.cache().put_pod(new);
                    }
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(e.into()),
                },
                Action::DeletePod { name, uid } => {
                    let pre = Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    };
                    match self
                        .store
                        .delete::<Pod>(meta::namespace(&set.metadata), &name, pre)
                        .await
                    {
                        Ok(d) => {
                            let gone = d.is_gone();
                            let obj = d.into_object();
                            let mut c = self.cache();
                            if gone {
                                c.drop_pod(
                                    &key(&obj.metadata),
                                    meta::resource_version(&obj.metadata),
                                );
                            } else {
                                c.put_pod(obj);
                            }
                        }
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Action::Event {
                    type_,
                    reason,
                    message,
                } => {
                    self.record(&Event {
                        involved: set_ref.clone(),
                        type_,
                        reason,
                        message,
                    })
                    .await;
                }
                Action::UpdateStatus(updated) => match self.store.update_status(&updated).await {
                    Ok(new) => {
                        self.cache().put_set(new);
                    }
                    Err(e) if e.is_conflict() => {
                        if let Ok(fresh) = self
                            .store
                            .get::<StatefulSet>(
                                meta::namespace(&set.metadata),
                                meta::name(&set.metadata),
                            )
                            .await
                        {
                            self.cache().put_set(fresh);
                        }
                        return Err(e.into());
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                },
            }
        }
        Ok(Requeue::Done)
    }

    /// Is this owner still there? The cache first; a miss is confirmed with a live GET, so an
    /// owner created a moment ago never loses its dependents.
    async fn owner_state(&self, ns: &str, r: &OwnerReference) -> Result<Owner> {
        let cached_uid = {
            let c = self.cache();
            let k = format!("{ns}/{}", r.name);
            match r.kind.as_str() {
                "StatefulSet" => c.sets.get(&k).map(|o| meta::uid(&o.metadata).to_string()),
                _ => c.pods.get(&k).map(|o| meta::uid(&o.metadata).to_string()),
            }
        };
        if cached_uid.as_deref() == Some(r.uid.as_str()) {
            return Ok(Owner::Present);
        }
        let live = match r.kind.as_str() {
            "StatefulSet" => self
                .store
                .get::<StatefulSet>(ns, &r.name)
                .await
                .map(|o| meta::uid(&o.metadata).to_string()),
            _ => self
                .store
                .get::<Pod>(ns, &r.name)
                .await
                .map(|o| meta::uid(&o.metadata).to_string()),
        };
        match live {
            Ok(uid) if uid == r.uid => Ok(Owner::Present),
            Ok(_) => Ok(Owner::Absent),
            Err(e) if e.is_not_found() => Ok(Owner::Absent),
            Err(e) => Err(e.into()),
        }
    }

    /// Garbage collection of one dependent, keyed `Kind/namespace/name`.
    #[tracing::instrument(skip_all, fields(object = %k))]
    pub(crate) async fn collect(&self, k: &str) -> Result<Requeue> {
        let Some((kind, rest)) = k.split_once('/') else {
            return Ok(Requeue::Done);
        };
        let Some((ns, name)) = rest.split_once('/') else {
            return Ok(Requeue::Done);
        };
        let meta_now = {
            let c = self.cache();
            match kind {
                "Pod" => c.pods.get(rest).map(|o| o.metadata.clone()),
                _ => c.claims.get(rest).map(|o| o.metadata.clone()),
            }
        };
        let Some(m) = meta_now else {
            return Ok(Requeue::Done);
        };
        let mut states = Vec::new();
        for r in m
            .owner_references
            .iter()
            .flatten()
            .filter(|r| gc::is_managed_owner(r))
        {
            states.push((r.uid.clone(), self.owner_state(ns, r).await?));
        }
        let verdict = gc::judge(&m, |r| {
            states
                .iter()
                .find(|(u, _)| *u == r.uid)
                .map(|(_, s)| *s)
                .unwrap_or(Owner::Present)
        });
        match verdict {
            Verdict::Keep => {}
            Verdict::Delete => {
                debug!("owners gone, deleting");
                let pre = Preconditions {
                    uid: m.uid.clone(),
                    resource_version: None,
                };
                let r = match kind {
                    "Pod" => self.store.delete::<Pod>(ns, name, pre).await.map(|_| ()),
                    _ => self
                        .store
                        .delete::<PersistentVolumeClaim>(ns, name, pre)
                        .await
                        .map(|_| ()),
                };
                match r {
                    Ok(()) => info!(kind, namespace = ns, name, "garbage collected"),
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Verdict::RemoveRefs(keep) => {
                let keep = (!keep.is_empty()).then_some(keep);
                match kind {
                    "Pod" => {
                        let cached = self.cache().pods.get(rest).cloned();
                        if let Some(mut p) = cached {
                            p.metadata.owner_references = keep;
                            self.store.update(&p).await?;
                        }
                    }
                    _ => {
                        let cached = self.cache().claims.get(rest).cloned();
                        if let Some(mut c) = cached {
                            c.metadata.owner_references = keep;
                            self.write_pvc(&c, false).await?;
                        }
                    }
                }
            }
        }
        Ok(Requeue::Done)
    }

    /// Standalone placement, the scheduler's VolumeBinding part. Rule: a pod's WFFC claims
    /// go to the pod's `spec.nodeName` when set, else (a pending pod: nobody schedules yet) to
    /// this node. A matching static PV for that node is bound the way the scheduler binds it
    /// (claimRef + bound-by-controller, the binder finishes); otherwise the claim gets the
    /// selected-node annotation and is provisioned there.
    #[tracing::instrument(skip_all, fields(pod = %k))]
    pub(crate) async fn place(&self, k: &str) -> Result<Requeue> {
        enum Step {
            BindVolume(Box<crate::k8s_openapi::api::core::v1::PersistentVolume>),
            SelectNode(Box<PersistentVolumeClaim>),
        }
        let steps = {
            let c = self.cache();
            let Some(pod) = c.pods.get(k) else {
                return Ok(Requeue::Done);
            };
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending");
            if pod.metadata.deletion_timestamp.is_some() || matches!(phase, "Succeeded" | "Failed")
            {
                return Ok(Requeue::Done);
            }
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| self.config.node_id.clone());
            let labels = standalone_node_labels(&node);
            let ns = meta::namespace(&pod.metadata);
            let mut steps = Vec::new();
            for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
                let Some(src) = &v.persistent_volume_claim else {
                    continue;
                };
                let Some(pvc) = c.claims.get(&format!("{ns}/{}", src.claim_name)) else {
                    continue;
                };
                if !meta::claim_volume_name(pvc).is_empty()
                    || has_annotation(&pvc.metadata, names::ANN_SELECTED_NODE)
                    || pvc.metadata.deletion_timestamp.is_some()
                    || !is_delay_binding(pvc, &c.classes)
                {
                    continue;
                }
                match c.volumes.find_best_match(
                    pvc,
                    true,
                    Some(Node {
                        name: &node,
                        labels: &labels,
                    }),
                ) {
                    Ok(Some(pv)) if meta::volume_claim_ref(pv).is_none() => {
                        let mut pv = pv.clone();
                        pv.spec.get_or_insert_with(Default::default).claim_ref =
                            Some(meta::claim_reference(pvc));
                        set_annotation(
                            &mut pv.metadata,
                            names::ANN_BOUND_BY_CONTROLLER,
                            names::YES,
                        );
                        steps.push(Step::BindVolume(Box::new(pv)));
                    }
                    // Pre-bound to this claim: the binder binds it even in WFFC mode.
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let can_provision = c
                            .classes
                            .get(claim_class(pvc))
                            .is_some_and(|sc| sc.provisioner != names::NO_PROVISIONER);
                        if can_provision {
                            let mut updated = pvc.clone();
                            set_annotation(&mut updated.metadata, names::ANN_SELECTED_NODE, &node);
                            steps.push(Step::SelectNode(Box::new(updated)));
                        }
                    }
                    Err(e) => debug!(claim = %src.claim_name, error = %e, "cannot place claim"),
                }
            }
            steps
        };
        for s in steps {
            match s {
                Step::BindVolume(pv) => {
                    self.write_pv(&pv, false).await?;
                }
                Step::SelectNode(pvc) => {
                    self.write_pvc(&pvc, false).await?;
                }
            }
        }
        Ok(Requeue::Done)
    }
}

//! `syncClaim` (k8s-semantics §3.4) and `bind` (§3.6).

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
};
use crate::k8s_openapi::api::storage::v1::StorageClass;

use super::class::{claim_class, claim_class_unset, default_class, is_delay_binding};
use super::{Event, EventType, Plan, VolumeIndex, Write};
use crate::meta::{self, annotation, has_annotation, set_annotation};
use crate::names::{self, reason};

/// What `sync_claim` reads besides the claim itself.
pub struct ClaimContext<'a> {
    pub volumes: &'a VolumeIndex,
    pub classes: &'a BTreeMap<String, StorageClass>,
    /// Pods that use the claim and have no node yet (for the WaitForPodScheduled event).
    pub unscheduled_pods: &'a [String],
}

pub fn sync_claim(pvc: &PersistentVolumeClaim, ctx: &ClaimContext<'_>) -> Plan {
    if has_annotation(&pvc.metadata, names::ANN_BIND_COMPLETED) {
        sync_bound_claim(pvc, ctx)
    } else {
        sync_unbound_claim(pvc, ctx)
    }
}

fn sync_unbound_claim(pvc: &PersistentVolumeClaim, ctx: &ClaimContext<'_>) -> Plan {
    let volume_name = meta::claim_volume_name(pvc);
    if volume_name.is_empty() {
        return sync_unbound_any(pvc, ctx);
    }
    // B: the user pre-bound the claim to a volume by name.
    let Some(pv) = ctx.volumes.get(volume_name) else {
        return pending(pvc, Vec::new(), "requested volume not found, will retry");
    };
    match meta::volume_claim_ref(pv) {
        None => match check_volume_satisfies_claim(pv, pvc) {
            Err(why) => pending(
                pvc,
                vec![Event::on_claim(
                    pvc,
                    EventType::Warning,
                    reason::VOLUME_MISMATCH,
                    format!("Cannot bind to requested volume {volume_name:?}: {why}"),
                )],
                "requested volume does not satisfy the claim",
            ),
            Ok(()) => bind(pv, pvc, "bound to the requested volume"),
        },
        Some(_) if meta::is_volume_bound_to_claim(pv, pvc) => {
            bind(pv, pvc, "requested volume is pre-bound to this claim")
        }
        Some(_) => {
            let event = Event::on_claim(
                pvc,
                EventType::Warning,
                reason::FAILED_BINDING,
                format!("volume {volume_name:?} already bound to a different claim."),
            );
            if has_annotation(&pvc.metadata, names::ANN_BOUND_BY_CONTROLLER) {
                // Upstream calls this "should never happen": someone removed bind-completed.
                Plan {
                    writes: vec![Write::Event(event)],
                    note: "volume claimed elsewhere, binding was ours",
                    ..Default::default()
                }
            } else {
                pending(
                    pvc,
                    vec![event],
                    "requested volume already bound to a different claim",
                )
            }
        }
    }
}

/// A: any matching volume will do.
fn sync_unbound_any(pvc: &PersistentVolumeClaim, ctx: &ClaimContext<'_>) -> Plan {
    let delay = is_delay_binding(pvc, ctx.classes);
    let found = match ctx.volumes.find_best_match(pvc, delay, None) {
        Ok(found) => found,
        Err(why) => {
            let e = Event::on_claim(
                pvc,
                EventType::Warning,
                reason::FAILED_BINDING,
                format!("cannot match volumes: {why}"),
            );
            return pending(pvc, vec![e], "matching failed");
        }
    };
    if let Some(pv) = found {
        return bind(pv, pvc, "bound to the best matching volume");
    }
    // Retroactive default class (GA 1.28): only a nil class, never "".
    if claim_class_unset(pvc)
        && let Some(sc) = default_class(ctx.classes)
    {
        let mut updated = pvc.clone();
        updated
            .spec
            .get_or_insert_with(Default::default)
            .storage_class_name = sc.metadata.name.clone();
        return Plan {
            writes: vec![Write::Claim(updated)],
            note: "assigned the default class",
            ..Default::default()
        };
    }
    if delay && !has_annotation(&pvc.metadata, names::ANN_SELECTED_NODE) {
        let (reason, message) = match ctx.unscheduled_pods {
            [] => (
                reason::WAIT_FOR_FIRST_CONSUMER,
                "waiting for first consumer to be created before binding".to_string(),
            ),
            [one] => (
                reason::WAIT_FOR_POD_SCHEDULED,
                format!("waiting for pod {one} to be scheduled"),
            ),
            many => (
                reason::WAIT_FOR_POD_SCHEDULED,
                format!("waiting for pods {} to be scheduled", many.join(",")),
            ),
        };
        let e = Event::on_claim(pvc, EventType::Normal, reason, message);
        return pending(pvc, vec![e], "waiting for first consumer");
    }
    let class = claim_class(pvc);
    if !class.is_empty() {
        return provision_claim(pvc, class, ctx.classes);
    }
    let e = Event::on_claim(
        pvc,
        EventType::Normal,
        reason::FAILED_BINDING,
        "no persistent volumes available for this claim and no storage class is set",
    );
    pending(pvc, vec![e], "no volume and no class")
}

/// The in-tree controller's half of the provisioning handshake (k8s-semantics §3.9 step 1): name the
/// external provisioner on the claim; the provisioner loop does the rest.
fn provision_claim(
    pvc: &PersistentVolumeClaim,
    class: &str,
    classes: &BTreeMap<String, StorageClass>,
) -> Plan {
    let Some(sc) = classes.get(class) else {
        let e = Event::on_claim(
            pvc,
            EventType::Warning,
            reason::PROVISIONING_FAILED,
            format!("storageclass.storage.k8s.io {class:?} not found"),
        );
        return Plan {
            writes: vec![Write::Event(e)],
            note: "class not found",
            ..Default::default()
        };
    };
    let provisioner = sc.provisioner.as_str();
    if provisioner.starts_with("kubernetes.io/") {
        // No in-tree plugins exist here, so every kubernetes.io/ name (no-provisioner
        // included) is one nobody serves, as upstream reports it.
        let e = Event::on_claim(
            pvc,
            EventType::Warning,
            reason::PROVISIONING_FAILED,
            format!("no volume plugin matched name: {provisioner}"),
        );
        return Plan {
            writes: vec![Write::Event(e)],
            note: "in-tree provisioner unavailable",
            ..Default::default()
        };
    }
    let mut writes = Vec::new();
    if annotation(&pvc.metadata, names::ANN_STORAGE_PROVISIONER) != Some(provisioner)
        || annotation(&pvc.metadata, names::ANN_BETA_STORAGE_PROVISIONER) != Some(provisioner)
    {
        let mut updated = pvc.clone();
        set_annotation(
            &mut updated.metadata,
            names::ANN_STORAGE_PROVISIONER,
            provisioner,
        );
        set_annotation(
            &mut updated.metadata,
            names::ANN_BETA_STORAGE_PROVISIONER,
            provisioner,
        );
        writes.push(Write::Claim(updated));
    }
    writes.push(Write::Event(Event::on_claim(
        pvc,
        EventType::Normal,
        reason::EXTERNAL_PROVISIONING,
        format!(
            "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
        ),
    )));
    Plan {
        writes,
        note: "handed to the external provisioner",
        ..Default::default()
    }
}

fn sync_bound_claim(pvc: &PersistentVolumeClaim, ctx: &ClaimContext<'_>) -> Plan {
    let volume_name = meta::claim_volume_name(pvc);
    if volume_name.is_empty() {
        return lost(
            pvc,
            reason::CLAIM_LOST,
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        );
    }
    let Some(pv) = ctx.volumes.get(volume_name) else {
        return lost(
            pvc,
            reason::CLAIM_LOST,
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
        );
    };
    match meta::volume_claim_ref(pv) {
        None => bind(pv, pvc, "bound claim's volume came unbound, binding again"),
        Some(r) if r.uid.as_deref() == pvc.metadata.uid.as_deref() => bind(pv, pvc, "bound"),
        Some(_) => lost(
            pvc,
            reason::CLAIM_MISBOUND,
            "Two claims are bound to the same volume, this one is bound incorrectly",
        ),
    }
}

/// `checkVolumeSatisfyClaim`: used for claims pre-bound by `volumeName`. Selector and node
/// affinity are deliberately not checked (k8s-semantics §6.11).
pub fn check_volume_satisfies_claim(
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> Result<(), String> {
    let request = meta::claim_request_bytes(pvc)?;
    if pv.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "the volume is marked for deletion {:?}",
            meta::name(&pv.metadata)
        ));
    }
    if meta::volume_capacity_bytes(pv) < request {
        return Err("requested PV is too small".into());
    }
    if super::class::volume_class(pv) != claim_class(pvc) {
        return Err("storageClassName does not match".into());
    }
    if meta::volume_volume_mode(pv) != meta::claim_volume_mode(pvc) {
        return Err("incompatible volumeMode".into());
    }
    let have = meta::volume_access_modes(pv);
    if !meta::claim_access_modes(pvc)
        .iter()
        .all(|m| have.contains(m))
    {
        return Err("incompatible accessMode".into());
    }
    Ok(())
}

/// The four writes of `bind`, each only when it changes something (k8s-semantics §3.6).
pub fn bind(pv: &PersistentVolume, pvc: &PersistentVolumeClaim, note: &'static str) -> Plan {
    let mut writes = Vec::new();

    // 1. PV spec: claimRef with UID; bound-by-controller unless the user pre-bound it.
    let mut pv = pv.clone();
    let already = meta::is_volume_bound_to_claim(&pv, pvc);
    let ref_same = meta::volume_claim_ref(&pv).is_some_and(|r| {
        r.name == pvc.metadata.name
            && r.namespace == pvc.metadata.namespace
            && r.uid == pvc.metadata.uid
    });
    let mut dirty = false;
    if !ref_same {
        pv.spec.get_or_insert_with(Default::default).claim_ref = Some(meta::claim_reference(pvc));
        dirty = true;
    }
    if !already && !has_annotation(&pv.metadata, names::ANN_BOUND_BY_CONTROLLER) {
        set_annotation(&mut pv.metadata, names::ANN_BOUND_BY_CONTROLLER, names::YES);
        dirty = true;
    }
    if dirty {
        writes.push(Write::Volume(pv.clone()));
    }

    // 2. PV status: Bound.
    if meta::volume_phase(&pv) != "Bound" {
        let status = pv.status.get_or_insert_with(Default::default);
        status.phase = Some("Bound".into());
        status.message = None;
        writes.push(Write::VolumeStatus(pv.clone()));
    }

    // 3. PVC spec: volumeName, bound-by-controller when we set it, bind-completed.
    let mut claim = pvc.clone();
    let pv_name = meta::name(&pv.metadata).to_string();
    let mut dirty = false;
    if meta::claim_volume_name(&claim) != pv_name {
        claim.spec.get_or_insert_with(Default::default).volume_name = Some(pv_name);
        if !has_annotation(&claim.metadata, names::ANN_BOUND_BY_CONTROLLER) {
            set_annotation(
                &mut claim.metadata,
                names::ANN_BOUND_BY_CONTROLLER,
                names::YES,
            );
        }
        dirty = true;
    }
    if !has_annotation(&claim.metadata, names::ANN_BIND_COMPLETED) {
        set_annotation(&mut claim.metadata, names::ANN_BIND_COMPLETED, names::YES);
        dirty = true;
    }
    if dirty {
        writes.push(Write::Claim(claim.clone()));
    }

    // 4. PVC status: Bound, access modes; capacity only on the transition to Bound.
    if let Some(w) = claim_status(&claim, "Bound", Some(&pv)) {
        writes.push(w);
    }
    Plan {
        writes,
        note,
        ..Default::default()
    }
}

/// `updateClaimStatus`: the status write for `phase`, or None when nothing changes.
pub fn claim_status(
    pvc: &PersistentVolumeClaim,
    phase: &str,
    pv: Option<&PersistentVolume>,
) -> Option<Write> {
    let mut claim = pvc.clone();
    let old_phase = meta::claim_phase(pvc).to_string();
    let status = claim
        .status
        .get_or_insert_with(PersistentVolumeClaimStatus::default);
    let mut dirty = false;
    if status.phase.as_deref() != Some(phase) {
        status.phase = Some(phase.to_string());
        dirty = true;
    }
    match pv {
        None => {
            if status.access_modes.take().is_some() {
                dirty = true;
            }
            if status.capacity.take().is_some() {
                dirty = true;
            }
        }
        Some(pv) => {
            let modes = pv.spec.as_ref().and_then(|s| s.access_modes.clone());
            if status.access_modes != modes {
                status.access_modes = modes;
                dirty = true;
            }
            // A later difference is kept on purpose: it means the filesystem and the
            // device have different sizes (expansion pending).
            if old_phase != phase {
                let from_pv = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.capacity.as_ref())
                    .and_then(|c| c.get("storage"))
                    .cloned();
                let capacity = match annotation(&pv.metadata, names::ANN_PRE_RESIZE_CAPACITY) {
                    Some(pre) => Some(
                        crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                            pre.to_string(),
                        ),
                    ),
                    None => from_pv,
                };
                if let Some(q) = capacity {
                    let current = status.capacity.as_ref().and_then(|c| c.get("storage"));
                    if current != Some(&q) {
                        status.capacity = Some(BTreeMap::from([("storage".to_string(), q)]));
                        dirty = true;
                    }
                }
            }
        }
    }
    dirty.then_some(Write::ClaimStatus(claim))
}

fn pending(pvc: &PersistentVolumeClaim, events: Vec<Event>, note: &'static str) -> Plan {
    let mut writes: Vec<Write> = events.into_iter().map(Write::Event).collect();
    writes.extend(claim_status(pvc, "Pending", None));
    Plan {
        writes,
        note,
        ..Default::default()
    }
}

/// `updateClaimStatusWithEvent(Lost)`: the event is only sent on the transition.
fn lost(pvc: &PersistentVolumeClaim, reason: &'static str, message: &str) -> Plan {
    if meta::claim_phase(pvc) == "Lost" {
        return Plan::noop("already lost");
    }
    let mut writes: Vec<Write> = claim_status(pvc, "Lost", None).into_iter().collect();
    writes.push(Write::Event(Event::on_claim(
        pvc,
        EventType::Warning,
        reason,
        message,
    )));
    Plan {
        writes,
        note: "claim lost",
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

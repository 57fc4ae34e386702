//! `syncVolume` (k8s-semantics §3.7) and `reclaimVolume` (§3.8).

use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use super::{Event, EventType, Plan, Write};
use crate::meta::{self, annotation, has_annotation, remove_annotation};
use crate::names::{self, reason};

/// What `sync_volume` reads besides the volume: the claim its claimRef names, looked up by
/// namespace/name. The caller re-reads the claim from the store (a live GET) before passing
/// `None` or a claim with another UID, so a stale cache never releases a PV by mistake.
pub struct VolumeContext<'a> {
    pub claim: Option<&'a PersistentVolumeClaim>,
}

pub fn sync_volume(pv: &PersistentVolume, ctx: &VolumeContext<'_>) -> Plan {
    let Some(claim_ref) = meta::volume_claim_ref(pv) else {
        return with_phase(pv, "Available", "unused volume");
    };
    let ref_uid = claim_ref.uid.as_deref().unwrap_or_default();
    if ref_uid.is_empty() {
        // Reserved for a claim that has not bound yet; the claim's sync does the work.
        return with_phase(pv, "Available", "pre-bound volume waits for its claim");
    }
    let claim = ctx.claim.filter(|c| meta::uid(&c.metadata) == ref_uid);
    let Some(claim) = claim else {
        // The claim is gone, or a new one with the same name exists.
        return release_and_reclaim(pv, "claim gone: released");
    };
    let claim_volume = meta::claim_volume_name(claim);
    let pv_name = meta::name(&pv.metadata);
    if claim_volume.is_empty() {
        if meta::claim_volume_mode(claim) != meta::volume_volume_mode(pv) {
            let on_pv = Event::on_volume(
                pv,
                EventType::Warning,
                reason::VOLUME_MISMATCH,
                format!(
                    "Cannot bind PersistentVolume to requested PersistentVolumeClaim {:?} due to incompatible volumeMode.",
                    meta::name(&claim.metadata)
                ),
            );
            let on_claim = Event::on_claim(
                claim,
                EventType::Warning,
                reason::VOLUME_MISMATCH,
                format!(
                    "Cannot bind PersistentVolume {pv_name:?} to requested PersistentVolumeClaim due to incompatible volumeMode."
                ),
            );
            return Plan {
                writes: vec![Write::Event(on_pv), Write::Event(on_claim)],
                note: "volumeMode mismatch",
                ..Default::default()
            };
        }
        // Bound on the PV side only (e.g. a freshly provisioned PV): let the claim's sync
        // finish the binding soon, in the claim worker.
        return Plan {
            enqueue_claims: vec![meta::claim_key(claim)],
            note: "claim not bound yet: enqueue it",
            ..Default::default()
        };
    }
    if claim_volume == pv_name {
        return with_phase(pv, "Bound", "bound");
    }
    // The claim is bound to another volume.
    if has_annotation(&pv.metadata, names::ANN_PROVISIONED_BY)
        && meta::reclaim_policy(pv) == "Delete"
    {
        return release_and_reclaim(pv, "provisioned for a claim bound elsewhere: released");
    }
    unbind(pv)
}

/// `unbindVolume`: a controller-made link is cleared; a user's reservation keeps its claimRef
/// and loses only the UID.
fn unbind(pv: &PersistentVolume) -> Plan {
    let mut updated = pv.clone();
    if has_annotation(&pv.metadata, names::ANN_BOUND_BY_CONTROLLER) {
        updated.spec.get_or_insert_with(Default::default).claim_ref = None;
        remove_annotation(&mut updated.metadata, names::ANN_BOUND_BY_CONTROLLER);
    } else if let Some(r) = updated.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
        r.uid = None;
    }
    let mut writes = vec![Write::Volume(updated.clone())];
    writes.extend(phase_write(&updated, "Available", None));
    Plan {
        writes,
        note: "claim bound elsewhere: unbound",
        ..Default::default()
    }
}

fn release_and_reclaim(pv: &PersistentVolume, note: &'static str) -> Plan {
    let mut writes = Vec::new();
    let mut pv = pv.clone();
    // A Failed phase is kept, so the user still sees that something went wrong.
    if !matches!(meta::volume_phase(&pv), "Released" | "Failed")
        && let Some(w) = phase_write(&pv, "Released", None)
    {
        if let Write::VolumeStatus(next) = &w {
            pv = next.clone();
        }
        writes.push(w);
    }
    writes.extend(reclaim(&pv));
    Plan {
        writes,
        note,
        ..Default::default()
    }
}

/// `reclaimVolume` for a released volume.
pub fn reclaim(pv: &PersistentVolume) -> Vec<Write> {
    if has_annotation(&pv.metadata, names::ANN_MIGRATED_TO) {
        return Vec::new();
    }
    match meta::reclaim_policy(pv) {
        // Retain: the PV keeps its stale claimRef and is never re-bound automatically.
        "Retain" => Vec::new(),
        // Recycling needs an in-tree recycler plugin (NFS, hostPath); none exists here.
        "Recycle" => failed_with_event(
            pv,
            reason::VOLUME_FAILED_RECYCLE,
            "No recycler plugin found for the volume!".into(),
        ),
        "Delete" if is_external(pv) => Vec::new(),
        "Delete" => failed_with_event(
            pv,
            reason::VOLUME_FAILED_DELETE,
            format!(
                "error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched",
                meta::name(&pv.metadata)
            ),
        ),
        _ => failed_with_event(
            pv,
            reason::VOLUME_UNKNOWN_RECLAIM_POLICY,
            "Volume has unrecognized PersistentVolumeReclaimPolicy".into(),
        ),
    }
}

/// Deletion belongs to an external provisioner: a CSI volume, or one provisioned by a
/// provisioner outside `kubernetes.io/` (the in-tree controller leaves those alone).
pub fn is_external(pv: &PersistentVolume) -> bool {
    if pv.spec.as_ref().is_some_and(|s| s.csi.is_some()) {
        return true;
    }
    annotation(&pv.metadata, names::ANN_PROVISIONED_BY)
        .is_some_and(|p| !p.is_empty() && !p.starts_with("kubernetes.io/"))
}

/// `updateVolumePhaseWithEvent`: no event when the phase is already the same.
fn failed_with_event(pv: &PersistentVolume, reason: &'static str, message: String) -> Vec<Write> {
    if meta::volume_phase(pv) == "Failed" {
        return Vec::new();
    }
    let mut writes: Vec<Write> = phase_write(pv, "Failed", Some(message.clone()))
        .into_iter()
        .collect();
    writes.push(Write::Event(Event::on_volume(
        pv,
        EventType::Warning,
        reason,
        message,
    )));
    writes
}

/// `updateVolumePhase`: a status write, or None when phase and message are already right.
pub fn phase_write(pv: &PersistentVolume, phase: &str, message: Option<String>) -> Option<Write> {
    let status = pv.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some(phase)
        && status.and_then(|s| s.message.clone()) == message
    {
        return None;
    }
    let mut updated = pv.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    status.phase = Some(phase.into());
    status.message = message;
    Some(Write::VolumeStatus(updated))
}

fn with_phase(pv: &PersistentVolume, phase: &str, note: &'static str) -> Plan {
    Plan {
        writes: phase_write(pv, phase, None).into_iter().collect(),
        note,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

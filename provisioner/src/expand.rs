//! Volume expansion, the external-resizer's controller half (k8s-semantics §3.12).
//!
//! Pure: which claims need ControllerExpandVolume, and the claim/PV states before and after
//! it. The node half (NodeExpandVolume, then status.capacity) belongs to the volume manager.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::meta;
use crate::quantity;

pub const CONDITION_RESIZING: &str = "Resizing";
pub const CONDITION_FS_RESIZE_PENDING: &str = "FileSystemResizePending";
pub const CONDITION_CONTROLLER_RESIZE_ERROR: &str = "ControllerResizeError";
pub const STATUS_CONTROLLER_IN_PROGRESS: &str = "ControllerResizeInProgress";
pub const STATUS_CONTROLLER_INFEASIBLE: &str = "ControllerResizeInfeasible";
pub const STATUS_NODE_PENDING: &str = "NodeResizePending";
pub const FS_RESIZE_PENDING_MESSAGE: &str =
    "Waiting for user to (re-)start a pod to finish file system resize of volume on node.";

/// The size to expand the volume to, when the claim asks for more than the PV has.
/// `allowed`: the class has `allowVolumeExpansion: true`.
pub fn wanted_size(
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
    allowed: bool,
) -> Option<u128> {
    if !allowed
        || meta::claim_phase(pvc) != "Bound"
        || meta::claim_volume_name(pvc) != meta::name(&pv.metadata)
    {
        return None;
    }
    let request = meta::claim_request_bytes(pvc).ok()?;
    // An infeasible expansion is not retried until the user changes the request.
    let status = pvc.status.as_ref();
    let infeasible_at = status
        .and_then(|s| s.allocated_resource_statuses.as_ref())
        .and_then(|m| m.get("storage"))
        .filter(|s| s.as_str() == STATUS_CONTROLLER_INFEASIBLE)
        .and_then(|_| {
            status
                .and_then(|s| s.allocated_resources.as_ref())
                .and_then(|m| m.get("storage"))
        })
        .and_then(|q| quantity::bytes_of(q).ok());
    if infeasible_at == Some(request) {
        return None;
    }
    (request > meta::volume_capacity_bytes(pv)).then_some(request)
}

fn now() -> Time {
    Time(crate::k8s_openapi::jiff::Timestamp::now())
}

fn condition(type_: &str, message: Option<String>) -> PersistentVolumeClaimCondition {
    PersistentVolumeClaimCondition {
        type_: type_.into(),
        status: "True".into(),
        last_transition_time: Some(now()),
        message,
        ..Default::default()
    }
}

fn set_conditions(
    pvc: &mut PersistentVolumeClaim,
    keep_others: bool,
    add: Vec<PersistentVolumeClaimCondition>,
) {
    let resize = [
        CONDITION_RESIZING,
        CONDITION_FS_RESIZE_PENDING,
        CONDITION_CONTROLLER_RESIZE_ERROR,
    ];
    let status = pvc.status.get_or_insert_with(Default::default);
    let mut list: Vec<_> = status
        .conditions
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| keep_others && !resize.contains(&c.type_.as_str()))
        .collect();
    list.extend(add);
    status.conditions = (!list.is_empty()).then_some(list);
}

fn set_allocated(pvc: &mut PersistentVolumeClaim, size: u128, state: Option<&str>) {
    let status = pvc.status.get_or_insert_with(Default::default);
    status
        .allocated_resources
        .get_or_insert_with(BTreeMap::new)
        .insert("storage".into(), quantity::format_bytes(size));
    let statuses = status
        .allocated_resource_statuses
        .get_or_insert_with(BTreeMap::new);
    match state {
        Some(s) => {
            statuses.insert("storage".into(), s.into());
        }
        None => {
            statuses.remove("storage");
        }
    }
    if statuses.is_empty() {
        status.allocated_resource_statuses = None;
    }
}

/// Claim status when the controller starts: `Resizing`, allocatedResources, in progress.
pub fn started(pvc: &PersistentVolumeClaim, size: u128) -> PersistentVolumeClaim {
    let mut c = pvc.clone();
    set_conditions(&mut c, true, vec![condition(CONDITION_RESIZING, None)]);
    set_allocated(&mut c, size, Some(STATUS_CONTROLLER_IN_PROGRESS));
    c
}

/// Claim status after ControllerExpandVolume failed; `infeasible` for a final error.
pub fn failed(
    pvc: &PersistentVolumeClaim,
    size: u128,
    message: String,
    infeasible: bool,
) -> PersistentVolumeClaim {
    let mut c = pvc.clone();
    set_conditions(
        &mut c,
        true,
        vec![condition(CONDITION_CONTROLLER_RESIZE_ERROR, Some(message))],
    );
    let state = if infeasible {
        STATUS_CONTROLLER_INFEASIBLE
    } else {
        STATUS_CONTROLLER_IN_PROGRESS
    };
    set_allocated(&mut c, size, Some(state));
    c
}

/// The PV with its new capacity; with a node step pending it remembers the claim's old
/// capacity in `pre-resize-capacity`.
pub fn expanded_volume(
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
    size: u128,
    node_required: bool,
) -> PersistentVolume {
    let mut v = pv.clone();
    v.spec
        .get_or_insert_with(Default::default)
        .capacity
        .get_or_insert_with(BTreeMap::new)
        .insert("storage".into(), quantity::format_bytes(size));
    if node_required
        && let Some(old) = pvc
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
    {
        meta::set_annotation(
            &mut v.metadata,
            crate::names::ANN_PRE_RESIZE_CAPACITY,
            &old.0,
        );
    }
    v
}

/// Claim status after the controller step: waiting for the node, or finished.
pub fn controller_done(
    pvc: &PersistentVolumeClaim,
    size: u128,
    node_required: bool,
) -> PersistentVolumeClaim {
    let mut c = pvc.clone();
    if node_required {
        set_conditions(
            &mut c,
            true,
            vec![condition(
                CONDITION_FS_RESIZE_PENDING,
                Some(FS_RESIZE_PENDING_MESSAGE.into()),
            )],
        );
        set_allocated(&mut c, size, Some(STATUS_NODE_PENDING));
    } else {
        set_conditions(&mut c, true, vec![]);
        set_allocated(&mut c, size, None);
        c.status
            .get_or_insert_with(Default::default)
            .capacity
            .get_or_insert_with(BTreeMap::new)
            .insert("storage".into(), quantity::format_bytes(size));
    }
    c
}

/// Capacity as a Quantity for tests and messages.
pub fn storage(q: &Option<BTreeMap<String, Quantity>>) -> Option<&str> {
    q.as_ref()?.get("storage").map(|q| q.0.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;

    fn bound() -> (PersistentVolume, PersistentVolumeClaim) {
        let mut c = claim("c", "2Gi", &["ReadWriteOnce"]);
        c.spec.as_mut().unwrap().volume_name = Some("pv1".into());
        let st = c.status.get_or_insert_with(Default::default);
        st.phase = Some("Bound".into());
        st.capacity = Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity("1Gi".into()),
        )]));
        (
            phase_pv(volume("pv1", "1Gi", &["ReadWriteOnce"]), "Bound"),
            c,
        )
    }

    #[test]
    fn only_bound_expandable_claims_asking_for_more() {
        let (pv, c) = bound();
        assert_eq!(wanted_size(&c, &pv, true), Some(2 << 30));
        assert_eq!(
            wanted_size(&c, &pv, false),
            None,
            "class does not allow expansion"
        );
        let mut pending = c.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(wanted_size(&pending, &pv, true), None);
        let big = volume("pv1", "2Gi", &["ReadWriteOnce"]);
        assert_eq!(
            wanted_size(&c, &big, true),
            None,
            "controller side already done"
        );
        let infeasible = failed(&c, 2 << 30, "no".into(), true);
        assert_eq!(
            wanted_size(&infeasible, &pv, true),
            None,
            "not retried until the request changes"
        );
    }

    #[test]
    fn node_step_pending_keeps_status_capacity() {
        let (pv, c) = bound();
        let s = started(&c, 2 << 30);
        let st = s.status.as_ref().unwrap();
        assert_eq!(st.conditions.as_ref().unwrap()[0].type_, CONDITION_RESIZING);
        assert_eq!(
            st.allocated_resource_statuses.as_ref().unwrap()["storage"],
            STATUS_CONTROLLER_IN_PROGRESS
        );
        let v = expanded_volume(&pv, &s, 2 << 30, true);
        assert_eq!(storage(&v.spec.as_ref().unwrap().capacity), Some("2Gi"));
        assert_eq!(
            meta::annotation(&v.metadata, crate::names::ANN_PRE_RESIZE_CAPACITY),
            Some("1Gi")
        );
        let d = controller_done(&s, 2 << 30, true);
        let st = d.status.as_ref().unwrap();
        assert_eq!(
            storage(&st.capacity),
            Some("1Gi"),
            "the workload cannot use the space yet"
        );
        assert_eq!(st.conditions.as_ref().unwrap().len(), 1);
        assert_eq!(
            st.conditions.as_ref().unwrap()[0].type_,
            CONDITION_FS_RESIZE_PENDING
        );
        assert_eq!(
            st.allocated_resource_statuses.as_ref().unwrap()["storage"],
            STATUS_NODE_PENDING
        );
        assert_eq!(storage(&st.allocated_resources), Some("2Gi"));
    }

    #[test]
    fn without_node_step_the_claim_is_done() {
        let (_, c) = bound();
        let d = controller_done(&started(&c, 2 << 30), 2 << 30, false);
        let st = d.status.as_ref().unwrap();
        assert_eq!(storage(&st.capacity), Some("2Gi"));
        assert!(st.conditions.is_none());
        assert!(st.allocated_resource_statuses.is_none());
    }
}

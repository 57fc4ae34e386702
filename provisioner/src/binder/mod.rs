//! The PV/PVC binder as pure decision functions (k8s-semantics §3.4-§3.8).
//!
//! Each `sync_*` function reads a snapshot (the claim or volume, the volume index, the classes)
//! and returns a [`Plan`]: the writes to perform, in order, and the events to record. The
//! control loop applies a plan write by write and stops at the first failure; the next sync
//! starts again from whatever is stored, as upstream does. Nothing here touches the store, so
//! every branch of the decision tables is unit-tested without one.

pub mod claim;
pub mod class;
pub mod index;
pub mod protection;
pub mod volume;

#[cfg(test)]
pub(crate) mod testutil;

use crate::k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};

pub use claim::{ClaimContext, sync_claim};
pub use index::VolumeIndex;
pub use volume::{VolumeContext, sync_volume};

/// Normal or Warning, as core/v1 Event.type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event to record on an object, as `kubectl describe` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub involved: ObjectReference,
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

impl Event {
    pub fn on_claim(
        pvc: &PersistentVolumeClaim,
        type_: EventType,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            involved: crate::meta::claim_reference(pvc),
            type_,
            reason,
            message: message.into(),
        }
    }

    pub fn on_volume(
        pv: &PersistentVolume,
        type_: EventType,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            involved: crate::meta::volume_reference(pv),
            type_,
            reason,
            message: message.into(),
        }
    }
}

/// One write of a plan. Spec writes go through `update`, status writes through
/// `update_status`; each carries the whole desired object.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// PV metadata/spec (claimRef, annotations, finalizers).
    Volume(PersistentVolume),
    VolumeStatus(PersistentVolume),
    /// PVC metadata/spec (volumeName, annotations, storageClassName).
    Claim(PersistentVolumeClaim),
    ClaimStatus(PersistentVolumeClaim),
    Event(Event),
}

/// What a sync decided. `writes` are applied in order; later writes to the same object were
/// computed from the earlier ones, so the applier carries the new resourceVersion forward.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Claims (`namespace/name`) to sync soon, e.g. when a provisioned PV appeared.
    pub enqueue_claims: Vec<String>,
    /// A human-readable note of which branch ran, for tracing and tests.
    pub note: &'static str,
}

impl Plan {
    pub fn noop(note: &'static str) -> Self {
        Self {
            note,
            ..Default::default()
        }
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.writes.iter().filter_map(|w| match w {
            Write::Event(e) => Some(e),
            _ => None,
        })
    }

    /// The writes that change objects (everything except events).
    pub fn object_writes(&self) -> impl Iterator<Item = &Write> {
        self.writes.iter().filter(|w| !matches!(w, Write::Event(_)))
    }
}

//! The metadata, claim and volume accessors every loop reads, from `strata_store::meta`
//! (shared with the volume manager and the node agent), and the two that turn sizes
//! into bytes with this crate's quantity rules.

pub use strata_store::meta::*;

use crate::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use crate::quantity;

/// `requests.storage` of a claim in bytes; a missing request is 0, as upstream reads it.
pub fn claim_request_bytes(pvc: &PersistentVolumeClaim) -> Result<u128, String> {
    match pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    {
        Some(q) => quantity::bytes_of(q),
        None => Ok(0),
    }
}

/// `capacity.storage` of a volume in bytes; missing or malformed counts as 0 so it fits nothing.
pub fn volume_capacity_bytes(pv: &PersistentVolume) -> u128 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| quantity::bytes_of(q).ok())
        .unwrap_or(0)
}

//! Dynamic provisioning, the external-provisioner side of k8s-semantics §3.9.
//!
//! `class` reads a StorageClass, `request` builds the CreateVolume request as a plain Rust
//! value, `volume` builds the PV from the driver's answer, `retry` classifies gRPC errors.
//! The `csi` module alone turns these into protobuf messages.

pub mod class;
pub mod csi;
pub mod immediate;
pub mod node;
pub mod request;
pub mod retry;
pub mod source;
pub mod volume;

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::PersistentVolumeClaim;
use crate::k8s_openapi::api::storage::v1::StorageClass;

use crate::binder::class::claim_class;
use crate::meta::{self, annotation};
use crate::names;

/// `shouldProvision`: unbound, addressed to this driver, and (for WaitForFirstConsumer
/// classes) with a node selected.
pub fn should_provision(
    pvc: &PersistentVolumeClaim,
    driver: &str,
    classes: &BTreeMap<String, StorageClass>,
) -> bool {
    if !meta::claim_volume_name(pvc).is_empty() || pvc.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let provisioner = annotation(&pvc.metadata, names::ANN_STORAGE_PROVISIONER)
        .or_else(|| annotation(&pvc.metadata, names::ANN_BETA_STORAGE_PROVISIONER));
    if provisioner != Some(driver) {
        return false;
    }
    let Some(sc) = classes.get(claim_class(pvc)) else {
        // The class is needed to provision; the claim is retried when it appears.
        return false;
    };
    if sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") {
        return annotation(&pvc.metadata, names::ANN_SELECTED_NODE).is_some_and(|n| !n.is_empty());
    }
    true
}

/// The volume name external-provisioner uses (`--volume-name-prefix` default `pvc`): the PV and
/// the CSI volume share it, which makes CreateVolume retries idempotent.
pub fn volume_name(pvc: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", meta::uid(&pvc.metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;

    #[test]
    fn provisions_only_annotated_unbound_claims_and_wffc_with_a_node() {
        let mut classes = BTreeMap::new();
        classes.insert("fast".to_string(), class("fast", "Immediate"));
        classes.insert("local".to_string(), class("local", "WaitForFirstConsumer"));
        let mut c = with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "fast");
        assert!(
            !should_provision(&c, "strata.csi.io", &classes),
            "no annotation yet"
        );
        crate::meta::set_annotation(
            &mut c.metadata,
            names::ANN_BETA_STORAGE_PROVISIONER,
            "strata.csi.io",
        );
        assert!(
            should_provision(&c, "strata.csi.io", &classes),
            "the beta key is read too"
        );
        crate::meta::set_annotation(&mut c.metadata, names::ANN_STORAGE_PROVISIONER, "other.csi");
        assert!(
            !should_provision(&c, "strata.csi.io", &classes),
            "the GA key wins"
        );
        crate::meta::set_annotation(
            &mut c.metadata,
            names::ANN_STORAGE_PROVISIONER,
            "strata.csi.io",
        );
        let mut wffc = c.clone();
        wffc.spec.as_mut().unwrap().storage_class_name = Some("local".into());
        assert!(!should_provision(&wffc, "strata.csi.io", &classes));
        crate::meta::set_annotation(&mut wffc.metadata, names::ANN_SELECTED_NODE, "");
        assert!(!should_provision(&wffc, "strata.csi.io", &classes));
        crate::meta::set_annotation(&mut wffc.metadata, names::ANN_SELECTED_NODE, "n1");
        assert!(should_provision(&wffc, "strata.csi.io", &classes));
        c.spec.as_mut().unwrap().volume_name = Some("pv".into());
        assert!(
            !should_provision(&c, "strata.csi.io", &classes),
            "already bound"
        );
        assert_eq!(volume_name(&c), "pvc-uid-c");
    }
}

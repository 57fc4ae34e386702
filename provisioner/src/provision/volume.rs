//! The PV external-provisioner builds from a CreateVolume answer (k8s-semantics §3.9 step 5).

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::class::ClassConfig;
use super::request::{AccessType, CreateRequest, Topology};
use crate::binder::class::claim_class;
use crate::meta::{self, add_finalizer, set_annotation};
use crate::names;
use crate::quantity;
use crate::secrets::{SecretRef, VolumeSecrets};

/// What CreateVolume returned, as plain values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatedVolume {
    pub volume_id: String,
    /// 0 means unknown: the requested size is used.
    pub capacity_bytes: i64,
    pub volume_context: BTreeMap<String, String>,
    pub accessible_topology: Vec<Topology>,
}

/// Why a created volume cannot become a PV. The caller deletes the volume again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("created volume capacity {got} less than requested capacity {want}")]
    TooSmall { got: u64, want: u64 },
}

/// The PV for `created`, the answer to `request`; `secrets` are the class's, resolved for
/// this claim.
pub fn build_volume(
    pvc: &PersistentVolumeClaim,
    class: &ClassConfig,
    driver: &str,
    provisioner_identity: &str,
    request: &CreateRequest,
    created: &CreatedVolume,
    secrets: &VolumeSecrets,
) -> Result<PersistentVolume, Rejected> {
    let requested_bytes = request.required_bytes;
    // The fs type asked for (the class's or the default), not one the driver chose.
    let fs_type = match request.capabilities.first().map(|c| &c.access_type) {
        Some(AccessType::Mount { fs_type, .. }) if !fs_type.is_empty() => Some(fs_type.as_str()),
        _ => None,
    };
    let capacity = match u64::try_from(created.capacity_bytes) {
        Ok(0) | Err(_) => requested_bytes,
        Ok(got) if got < requested_bytes => {
            return Err(Rejected::TooSmall {
                got,
                want: requested_bytes,
            });
        }
        Ok(got) => got,
    };
    let block = meta::claim_volume_mode(pvc) == "Block";
    let mut attributes = created.volume_context.clone();
    attributes.insert(
        names::CSI_PROVISIONER_IDENTITY.to_string(),
        provisioner_identity.to_string(),
    );
    let node_affinity = (!created.accessible_topology.is_empty()).then(|| VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: created
                .accessible_topology
                .iter()
                .map(|segments| NodeSelectorTerm {
                    match_expressions: Some(
                        segments
                            .iter()
                            .map(|(k, v)| NodeSelectorRequirement {
                                key: k.clone(),
                                operator: "In".into(),
                                values: Some(vec![v.clone()]),
                            })
                            .collect(),
                    ),
                    match_fields: None,
                })
                .collect(),
        }),
    });
    let mount_options = (!class.mount_options.is_empty()).then(|| class.mount_options.clone());
    let mut pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(super::volume_name(pvc)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(meta::claim_access_modes(pvc).to_vec()),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                quantity::format_bytes(u128::from(capacity)),
            )])),
            claim_ref: Some(meta::claim_reference(pvc)),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.to_string(),
                volume_handle: created.volume_id.clone(),
                fs_type: if block {
                    None
                } else {
                    fs_type.map(str::to_string)
                },
                volume_attributes: Some(attributes),
                controller_publish_secret_ref: secrets.controller_publish.as_ref().map(Into::into),
                node_stage_secret_ref: secrets.node_stage.as_ref().map(Into::into),
                node_publish_secret_ref: secrets.node_publish.as_ref().map(Into::into),
                controller_expand_secret_ref: secrets.controller_expand.as_ref().map(Into::into),
                node_expand_secret_ref: secrets.node_expand.as_ref().map(Into::into),
                ..Default::default()
            }),
            mount_options,
            node_affinity,
            persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone()),
            storage_class_name: Some(claim_class(pvc).to_string()),
            volume_mode: Some(meta::claim_volume_mode(pvc).to_string()),
            volume_attributes_class_name: pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_attributes_class_name.clone()),
            ..Default::default()
        }),
        status: None,
    };
    set_annotation(&mut pv.metadata, names::ANN_PROVISIONED_BY, driver);
    // DeleteVolume reads its secret from here, not from the class, which may have changed
    // or gone by then; no provisioner secret is recorded as empty strings, as upstream.
    let (name, namespace) = match &secrets.provisioner {
        Some(SecretRef { name, namespace }) => (name.as_str(), namespace.as_str()),
        None => ("", ""),
    };
    set_annotation(&mut pv.metadata, names::ANN_DELETION_SECRET_NAME, name);
    set_annotation(
        &mut pv.metadata,
        names::ANN_DELETION_SECRET_NAMESPACE,
        namespace,
    );
    if class.reclaim_policy == "Delete" {
        // HonorPVReclaimPolicy: the backing volume is deleted even if the PV goes first.
        add_finalizer(&mut pv.metadata, names::FINALIZER_EXTERNAL_PROVISIONER);
    }
    Ok(pv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;

    fn created(bytes: i64) -> CreatedVolume {
        CreatedVolume {
            volume_id: "vol-1".into(),
            capacity_bytes: bytes,
            volume_context: BTreeMap::from([("pool".to_string(), "p".to_string())]),
            accessible_topology: vec![Topology::from([(
                names::TOPOLOGY_KEY.to_string(),
                "n1".to_string(),
            )])],
        }
    }

    fn req(bytes: u64, fs_type: &str) -> CreateRequest {
        use crate::provision::request::{AccessMode, Capability};
        CreateRequest {
            name: "pvc-uid-c".into(),
            source: None,
            required_bytes: bytes,
            capabilities: vec![Capability {
                access_type: AccessType::Mount {
                    fs_type: fs_type.into(),
                    mount_flags: Vec::new(),
                },
                mode: AccessMode::SingleNodeWriter,
            }],
            parameters: BTreeMap::new(),
            topology: None,
            secrets: Default::default(),
        }
    }

    fn none() -> VolumeSecrets {
        VolumeSecrets::default()
    }

    fn cfg() -> ClassConfig {
        let mut sc = class("fast", "Immediate");
        sc.mount_options = Some(vec!["noatime".into()]);
        ClassConfig::from_class(&sc).unwrap()
    }

    #[test]
    fn pv_carries_claim_ref_topology_and_provisioner() {
        let c = with_class_pvc(claim("c", "1Gi", &["ReadWriteOnce"]), "fast");
        let pv = build_volume(
            &c,
            &cfg(),
            "strata.csi.io",
            "id-1",
            &req(1 << 30, "ext4"),
            &created(2 << 30),
            &VolumeSecrets::default(),
        )
        .unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-uid-c"));
        assert_eq!(
            meta::annotation(&pv.metadata, names::ANN_PROVISIONED_BY),
            Some("strata.csi.io")
        );
        assert!(
            !meta::has_annotation(&pv.metadata, names::ANN_BOUND_BY_CONTROLLER),
            "external provisioning: no bound-by-controller"
        );
        assert!(meta::has_finalizer(
            &pv.metadata,
            names::FINALIZER_EXTERNAL_PROVISIONER
        ));
        assert_eq!(
            meta::annotation(&pv.metadata, names::ANN_DELETION_SECRET_NAME),
            Some(""),
            "no provisioner secret: recorded as empty, as upstream"
        );
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(
            spec.capacity.as_ref().unwrap()["storage"].0,
            "2Gi",
            "capacity from the response"
        );
        assert_eq!(
            spec.claim_ref.as_ref().unwrap().uid.as_deref(),
            Some("uid-c")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(
            spec.mount_options.as_deref(),
            Some(&["noatime".to_string()][..])
        );
        let csi = spec.csi.as_ref().unwrap();
        assert_eq!(
            (csi.volume_handle.as_str(), csi.fs_type.as_deref()),
            ("vol-1", Some("ext4"))
        );
        assert_eq!(
            csi.volume_attributes.as_ref().unwrap()[names::CSI_PROVISIONER_IDENTITY],
            "id-1"
        );
        let term = &spec
            .node_affinity
            .as_ref()
            .unwrap()
            .required
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        let expr = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (
                expr.key.as_str(),
                expr.operator.as_str(),
                expr.values.as_ref().unwrap()[0].as_str()
            ),
            (names::TOPOLOGY_KEY, "In", "n1")
        );
    }

    #[test]
    fn zero_capacity_means_requested_and_smaller_is_rejected() {
        let c = claim("c", "1Gi", &["ReadWriteOnce"]);
        let pv = build_volume(
            &c,
            &cfg(),
            "d",
            "id",
            &req(1 << 30, ""),
            &created(0),
            &none(),
        )
        .unwrap();
        assert_eq!(pv.spec.unwrap().capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(
            build_volume(
                &c,
                &cfg(),
                "d",
                "id",
                &req(1 << 30, ""),
                &created(1 << 20),
                &none()
            )
            .unwrap_err(),
            Rejected::TooSmall {
                got: 1 << 20,
                want: 1 << 30
            }
        );
    }

    #[test]
    fn block_volumes_have_no_fs_type_and_retain_has_no_finalizer() {
        let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
        c.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let mut sc = class("keep", "Immediate");
        sc.reclaim_policy = Some("Retain".into());
        let cfg = ClassConfig::from_class(&sc).unwrap();
        let pv = build_volume(
            &c,
            &cfg,
            "d",
            "id",
            &req(1 << 30, "ext4"),
            &created(1 << 30),
            &none(),
        )
        .unwrap();
        assert!(
            pv.spec
                .as_ref()
                .unwrap()
                .csi
                .as_ref()
                .unwrap()
                .fs_type
                .is_none()
        );
        assert_eq!(
            pv.spec.as_ref().unwrap().volume_mode.as_deref(),
            Some("Block")
        );
        assert!(!meta::has_finalizer(
            &pv.metadata,
            names::FINALIZER_EXTERNAL_PROVISIONER
        ));
    }

    #[test]
    fn pv_records_the_deletion_secret_and_the_other_references() {
        let c = claim("c", "1Gi", &["ReadWriteOnce"]);
        let r = |n: &str| {
            Some(SecretRef {
                name: n.into(),
                namespace: "ns".into(),
            })
        };
        let secrets = VolumeSecrets {
            provisioner: r("prov"),
            controller_publish: r("cp"),
            node_stage: r("stage"),
            node_publish: r("publish"),
            controller_expand: r("cexp"),
            node_expand: r("nexp"),
        };
        let pv = build_volume(
            &c,
            &cfg(),
            "d",
            "id",
            &req(1 << 30, ""),
            &created(0),
            &secrets,
        )
        .unwrap();
        assert_eq!(
            (
                meta::annotation(&pv.metadata, names::ANN_DELETION_SECRET_NAME),
                meta::annotation(&pv.metadata, names::ANN_DELETION_SECRET_NAMESPACE)
            ),
            (Some("prov"), Some("ns"))
        );
        let csi = pv.spec.unwrap().csi.unwrap();
        let name = |r: Option<crate::k8s_openapi::api::core::v1::SecretReference>| {
            let r = r.unwrap();
            assert_eq!(r.namespace.as_deref(), Some("ns"));
            r.name.unwrap()
        };
        assert_eq!(name(csi.controller_publish_secret_ref), "cp");
        assert_eq!(name(csi.node_stage_secret_ref), "stage");
        assert_eq!(name(csi.node_publish_secret_ref), "publish");
        assert_eq!(name(csi.controller_expand_secret_ref), "cexp");
        assert_eq!(name(csi.node_expand_secret_ref), "nexp");
    }
}

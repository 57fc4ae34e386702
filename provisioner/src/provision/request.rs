//! The CreateVolume request external-provisioner would send for a claim (k8s-semantics §3.9 step 3),
//! as plain Rust values; `provision::csi` converts them to protobuf.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::core::v1::PersistentVolumeClaim;

use super::class::ClassConfig;
use crate::meta::{self, annotation};
use crate::names::{self, TOPOLOGY_KEY};
use crate::secrets::SecretData;

/// CSI `AccessMode.Mode` values Kubernetes sends (k8s-semantics §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    SingleNodeWriter,
    MultiNodeReaderOnly,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessType {
    Block,
    Mount {
        fs_type: String,
        mount_flags: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub access_type: AccessType,
    pub mode: AccessMode,
}

pub type Topology = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyRequirement {
    pub requisite: Vec<Topology>,
    pub preferred: Vec<Topology>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub name: String,
    /// `volume_content_source`: the snapshot to restore or the volume to clone.
    pub source: Option<ContentSource>,
    /// `capacity_range.required_bytes`; `limit_bytes` is never set.
    pub required_bytes: u64,
    pub capabilities: Vec<Capability>,
    pub parameters: BTreeMap<String, String>,
    pub topology: Option<TopologyRequirement>,
    /// The class's provisioner Secret; filled in by the controller, which fetches it.
    pub secrets: SecretData,
}

/// CSI `VolumeContentSource`, by the driver's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

/// What the driver told us about itself (GetPluginInfo, GetPluginCapabilities,
/// ControllerGetCapabilities).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverInfo {
    pub name: String,
    pub accessibility_constraints: bool,
    pub single_node_multi_writer: bool,
    pub expand_volume: bool,
    pub create_delete_snapshot: bool,
    pub clone_volume: bool,
}

/// Where provisioning happens: this node, plus the node picked for a WFFC claim.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    /// Every node the driver runs on (standalone: just this one).
    pub nodes: &'a [String],
}

/// Builds the request, or explains why the claim cannot be provisioned (a final error).
/// `source` is the claim's data source, already resolved by `provision::source`.
pub fn build_create_request(
    pvc: &PersistentVolumeClaim,
    class: &ClassConfig,
    driver: &DriverInfo,
    default_fs_type: &str,
    placement: &Placement<'_>,
    source: Option<ContentSource>,
) -> Result<CreateRequest, String> {
    let spec = pvc.spec.as_ref().ok_or("claim has no spec")?;
    if spec.selector.is_some() {
        return Err("claim Selector is not supported".into());
    }
    let request = meta::claim_request_bytes(pvc)?;
    let required_bytes =
        u64::try_from(request).map_err(|_| "requested storage is too large".to_string())?;
    let block = meta::claim_volume_mode(pvc) == "Block";
    let access_type = if block {
        AccessType::Block
    } else {
        AccessType::Mount {
            fs_type: class
                .fs_type
                .clone()
                .unwrap_or_else(|| default_fs_type.to_string()),
            mount_flags: class.mount_options.clone(),
        }
    };
    let modes = meta::claim_access_modes(pvc);
    if modes.is_empty() {
        return Err("claim has no access modes".into());
    }
    let has = |m: &str| modes.iter().any(|x| x == m);
    if has("ReadWriteOnce") && has("ReadOnlyMany") {
        return Err(
            "CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume"
                .into(),
        );
    }
    if has("ReadWriteOncePod") && modes.len() > 1 {
        return Err("ReadWriteOncePod may not be combined with other access modes".into());
    }
    let mut capabilities = Vec::new();
    for m in modes {
        let mode = match (m.as_str(), driver.single_node_multi_writer) {
            ("ReadWriteOncePod", false) => AccessMode::SingleNodeWriter,
            ("ReadWriteOncePod", true) => AccessMode::SingleNodeSingleWriter,
            ("ReadWriteOnce", false) => AccessMode::SingleNodeWriter,
            ("ReadWriteOnce", true) => AccessMode::SingleNodeMultiWriter,
            ("ReadOnlyMany", _) => AccessMode::MultiNodeReaderOnly,
            ("ReadWriteMany", _) => AccessMode::MultiNodeMultiWriter,
            (other, _) => return Err(format!("unknown access mode {other:?}")),
        };
        capabilities.push(Capability {
            access_type: access_type.clone(),
            mode,
        });
    }
    let topology = if driver.accessibility_constraints {
        topology_requirement(pvc, class, placement)?
    } else {
        None
    };
    Ok(CreateRequest {
        name: super::volume_name(pvc),
        source,
        required_bytes,
        capabilities,
        parameters: class.parameters.clone(),
        topology,
        secrets: SecretData::default(),
    })
}

/// k8s-semantics §3.9 step 3, `accessibility_requirements`, without `--strict-topology` and with
/// `--immediate-topology` on (the upstream defaults).
fn topology_requirement(
    pvc: &PersistentVolumeClaim,
    class: &ClassConfig,
    placement: &Placement<'_>,
) -> Result<Option<TopologyRequirement>, String> {
    let segment = |node: &str| Topology::from([(TOPOLOGY_KEY.to_string(), node.to_string())]);
    let selected = annotation(&pvc.metadata, names::ANN_SELECTED_NODE).filter(|n| !n.is_empty());
    let requisite: Vec<Topology> = if class.allowed_topologies.is_empty() {
        let mut nodes: Vec<&str> = placement.nodes.iter().map(String::as_str).collect();
        if let Some(n) = selected
            && !nodes.contains(&n)
        {
            nodes.push(n);
        }
        nodes.sort_unstable();
        nodes.dedup();
        nodes.into_iter().map(segment).collect()
    } else {
        class.allowed_topologies.clone()
    };
    if requisite.is_empty() {
        return Ok(None);
    }
    // Preferred is the requisite list with the chosen node's segment first: the selected node
    // under WFFC; for Immediate upstream picks a random node, and the only node we know first
    // is ours.
    let first = if class.wait_for_first_consumer {
        selected
    } else {
        placement.nodes.first().map(String::as_str)
    };
    let mut preferred = requisite.clone();
    if let Some(node) = first {
        let wanted = segment(node);
        match preferred
            .iter()
            .position(|t| t.get(TOPOLOGY_KEY) == wanted.get(TOPOLOGY_KEY))
        {
            Some(i) => {
                let t = preferred.remove(i);
                preferred.insert(0, t);
            }
            None if class.wait_for_first_consumer && !class.allowed_topologies.is_empty() => {
                return Err(format!(
                    "selected node {node:?} is not in the class's allowedTopologies"
                ));
            }
            None => {}
        }
    }
    Ok(Some(TopologyRequirement {
        requisite,
        preferred,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::*;
    use crate::provision::class::ClassConfig;

    fn driver() -> DriverInfo {
        DriverInfo {
            name: "strata.csi.io".into(),
            accessibility_constraints: true,
            single_node_multi_writer: false,
            expand_volume: true,
            create_delete_snapshot: true,
            clone_volume: true,
        }
    }

    fn cfg(mode: &str) -> ClassConfig {
        let mut sc = class("fast", mode);
        sc.mount_options = Some(vec!["noatime".into()]);
        sc.parameters = Some(BTreeMap::from([
            ("csi.storage.k8s.io/fstype".into(), "xfs".into()),
            ("pool".into(), "p".into()),
        ]));
        ClassConfig::from_class(&sc).unwrap()
    }

    fn node(n: &str) -> Topology {
        Topology::from([(TOPOLOGY_KEY.to_string(), n.to_string())])
    }

    #[test]
    fn one_capability_per_mode_with_fs_type_and_mount_flags() {
        let c = claim("c", "1Gi", &["ReadWriteOnce", "ReadWriteMany"]);
        let nodes = vec!["n1".to_string()];
        let r = build_create_request(
            &c,
            &cfg("Immediate"),
            &driver(),
            "ext4",
            &Placement { nodes: &nodes },
            None,
        )
        .unwrap();
        assert_eq!(r.name, "pvc-uid-c");
        assert_eq!(r.required_bytes, 1 << 30);
        assert_eq!(
            r.parameters,
            BTreeMap::from([("pool".to_string(), "p".to_string())])
        );
        let mount = AccessType::Mount {
            fs_type: "xfs".into(),
            mount_flags: vec!["noatime".into()],
        };
        assert_eq!(
            r.capabilities,
            [
                Capability {
                    access_type: mount.clone(),
                    mode: AccessMode::SingleNodeWriter
                },
                Capability {
                    access_type: mount,
                    mode: AccessMode::MultiNodeMultiWriter
                },
            ]
        );
        let t = r.topology.unwrap();
        assert_eq!(
            (t.requisite.clone(), t.preferred),
            (vec![node("n1")], vec![node("n1")])
        );
    }

    #[test]
    fn block_claims_get_block_and_rwop_maps_by_capability() {
        let mut c = claim("c", "1Gi", &["ReadWriteOncePod"]);
        c.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        let nodes = vec!["n1".to_string()];
        let mut d = driver();
        let r = build_create_request(
            &c,
            &cfg("Immediate"),
            &d,
            "ext4",
            &Placement { nodes: &nodes },
            None,
        )
        .unwrap();
        assert_eq!(
            r.capabilities,
            [Capability {
                access_type: AccessType::Block,
                mode: AccessMode::SingleNodeWriter
            }]
        );
        d.single_node_multi_writer = true;
        let r = build_create_request(
            &c,
            &cfg("Immediate"),
            &d,
            "ext4",
            &Placement { nodes: &nodes },
            None,
        )
        .unwrap();
        assert_eq!(r.capabilities[0].mode, AccessMode::SingleNodeSingleWriter);
        let rwo = claim("c", "1Gi", &["ReadWriteOnce"]);
        let r = build_create_request(
            &rwo,
            &cfg("Immediate"),
            &d,
            "ext4",
            &Placement { nodes: &nodes },
            None,
        )
        .unwrap();
        assert_eq!(r.capabilities[0].mode, AccessMode::SingleNodeMultiWriter);
        d.accessibility_constraints = false;
        assert!(
            build_create_request(
                &rwo,
                &cfg("Immediate"),
                &d,
                "ext4",
                &Placement { nodes: &nodes },
                None
            )
            .unwrap()
            .topology
            .is_none()
        );
    }

    #[test]
    fn default_fs_type_applies_without_class_param() {
        let sc = class("plain", "Immediate");
        let r = build_create_request(
            &claim("c", "1Gi", &["ReadWriteOnce"]),
            &ClassConfig::from_class(&sc).unwrap(),
            &driver(),
            "ext4",
            &Placement { nodes: &[] },
            None,
        )
        .unwrap();
        assert_eq!(
            r.capabilities[0].access_type,
            AccessType::Mount {
                fs_type: "ext4".into(),
                mount_flags: vec![]
            }
        );
        assert!(r.topology.is_none(), "no nodes known, no requirement");
    }

    #[test]
    fn invalid_claims_are_refused() {
        let nodes = vec!["n1".to_string()];
        let p = Placement { nodes: &nodes };
        let both = claim("c", "1Gi", &["ReadWriteOnce", "ReadOnlyMany"]);
        assert!(
            build_create_request(&both, &cfg("Immediate"), &driver(), "ext4", &p, None)
                .unwrap_err()
                .contains("ReadOnlyMany and ReadWriteOnce")
        );
        let mut sel = claim("c", "1Gi", &["ReadWriteOnce"]);
        sel.spec.as_mut().unwrap().selector = Some(Default::default());
        assert_eq!(
            build_create_request(&sel, &cfg("Immediate"), &driver(), "ext4", &p, None).unwrap_err(),
            "claim Selector is not supported"
        );
        let rwop = claim("c", "1Gi", &["ReadWriteOncePod", "ReadWriteMany"]);
        assert!(
            build_create_request(&rwop, &cfg("Immediate"), &driver(), "ext4", &p, None).is_err()
        );
    }

    #[test]
    fn wffc_puts_the_selected_node_first() {
        let mut c = claim("c", "1Gi", &["ReadWriteOnce"]);
        crate::meta::set_annotation(&mut c.metadata, names::ANN_SELECTED_NODE, "n2");
        let nodes = vec!["n1".to_string()];
        let t = build_create_request(
            &c,
            &cfg("WaitForFirstConsumer"),
            &driver(),
            "ext4",
            &Placement { nodes: &nodes },
            None,
        )
        .unwrap()
        .topology
        .unwrap();
        assert_eq!(t.requisite, [node("n1"), node("n2")]);
        assert_eq!(t.preferred, [node("n2"), node("n1")]);
        // With allowedTopologies the requisite is exactly the allowed list.
        let mut sc = class("local", "WaitForFirstConsumer");
        sc.allowed_topologies = Some(vec![
            crate::k8s_openapi::api::core::v1::TopologySelectorTerm {
                match_label_expressions: Some(vec![
                    crate::k8s_openapi::api::core::v1::TopologySelectorLabelRequirement {
                        key: TOPOLOGY_KEY.into(),
                        values: vec!["n1".into(), "n2".into(), "n3".into()],
                    },
                ]),
            },
        ]);
        let cfg = ClassConfig::from_class(&sc).unwrap();
        let t = build_create_request(
            &c,
            &cfg,
            &driver(),
            "ext4",
            &Placement { nodes: &nodes },
            None,
        )
        .unwrap()
        .topology
        .unwrap();
        assert_eq!(t.requisite, [node("n1"), node("n2"), node("n3")]);
        assert_eq!(t.preferred, [node("n2"), node("n1"), node("n3")]);
        crate::meta::set_annotation(&mut c.metadata, names::ANN_SELECTED_NODE, "n9");
        assert!(
            build_create_request(
                &c,
                &cfg,
                &driver(),
                "ext4",
                &Placement { nodes: &nodes },
                None,
            )
            .is_err()
        );
    }
}

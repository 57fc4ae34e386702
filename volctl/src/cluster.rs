//! The cluster's side of a node's volumes (`volctl volumes|doctor --kubeconfig PATH` or
//! `--in-cluster`): which PersistentVolume, claim and pods each local volume serves, read
//! from the API server, and the two ways the node and the cluster disagree:
//! - a ready local volume no PV names (the cluster forgot it: a PV deleted with reclaim
//!   Retain, or by hand). Its data stays; nothing here deletes it;
//! - a PV of this node (node affinity or volume id naming it) whose volume the pools do not
//!   hold (lost data, or a pool missing from the driver's flags). Pods using it cannot start.
//!
//! `join` decides from plain objects; `read` fetches them. Only reads: volctl never writes
//! to the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;
use strata_csi::inspect::VolumeInfo;
use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};

/// The topology key the driver reports and its PVs' node affinity uses.
const TOPOLOGY_KEY: &str = "topology.strata.io/node";

/// Where the cluster is, for the inspection verbs.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Also read the cluster through this kubeconfig (its current context): name the PV,
    /// claim and pods of each local volume and flag volumes the cluster forgot and PVs of
    /// this node whose volume is missing.
    #[arg(long, value_name = "PATH", conflicts_with = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// As --kubeconfig, with the pod's service account (in-cluster configuration).
    #[arg(long)]
    pub in_cluster: bool,
    /// This node's name, the driver's --node-id (default: the node the local volumes' ids
    /// name, else the host name).
    #[arg(long, value_name = "NODE")]
    pub node_id: Option<String>,
    /// The CSI driver's name in PersistentVolumes.
    #[arg(long, value_name = "NAME", default_value = "local.csi.strata.io")]
    pub driver: String,
}

impl ClusterArgs {
    pub fn wanted(&self) -> bool {
        self.kubeconfig.is_some() || self.in_cluster
    }

    /// The node: the flag, else the one the local volume ids name, else the host name.
    pub fn node(&self, local: &[VolumeInfo]) -> anyhow::Result<String> {
        if let Some(n) = &self.node_id {
            return Ok(n.clone());
        }
        let named: BTreeSet<String> = local
            .iter()
            .filter_map(|v| strata_csi::ids::ObjectId::parse(&v.id))
            .map(|id| id.node)
            .collect();
        if let [one] = named.into_iter().collect::<Vec<_>>().as_slice() {
            return Ok(one.clone());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| anyhow::anyhow!("reading the host name (give --node-id): {e}"))?;
        Ok(host.trim().to_string())
    }

    /// Connects and reads the cluster's view of `local`.
    pub async fn read(&self, local: &[VolumeInfo]) -> anyhow::Result<ClusterView> {
        use anyhow::Context as _;
        let node = self.node(local)?;
        let store = strata_store_kube::KubeStore::connect(self.kubeconfig.as_deref(), "volctl")
            .await
            .context("connecting to the API server")?;
        read(&store, &node, &self.driver, local)
            .await
            .context("reading PersistentVolumes, claims and pods")
    }
}

/// What the cluster says about one local volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub persistent_volume: String,
    pub phase: String,
    /// `namespace/name` of the PV's claimRef.
    pub claim: Option<String>,
    /// The claim's phase, or "Missing" when the claimRef names no claim.
    pub claim_phase: Option<String>,
    /// `namespace/name` of the pods that use the claim.
    pub pods: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterFindingKind {
    /// A ready local volume that no PersistentVolume names.
    NoPersistentVolume,
    /// A PersistentVolume of this node whose volume the pools do not hold.
    VolumeMissing,
}

/// One disagreement between the node and the cluster. Never repaired: both need a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterFinding {
    pub kind: ClusterFindingKind,
    /// The volume id, or the PV's name.
    pub subject: String,
    pub explanation: String,
}

/// The cluster's side of a node's volumes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub node: String,
    /// Volume id -> what uses it.
    pub owners: BTreeMap<String, Owner>,
    pub findings: Vec<ClusterFinding>,
}

/// The PV's node by its required node affinity (`topology.strata.io/node In [node]`).
fn pinned_to(pv: &PersistentVolume) -> Option<&str> {
    let terms = pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?;
    terms.node_selector_terms.iter().find_map(|t| {
        t.match_expressions.iter().flatten().find_map(|e| {
            match (
                e.key == TOPOLOGY_KEY && e.operator == "In",
                e.values.as_deref(),
            ) {
                (true, Some([one])) => Some(one.as_str()),
                _ => None,
            }
        })
    })
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The claims a pod uses: its persistentVolumeClaim volumes and the claims of its generic
/// ephemeral volumes (named `<pod>-<volume>`).
fn pod_claims(pod: &Pod) -> Vec<String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else {
                v.ephemeral.as_ref().map(|_| format!("{name}-{}", v.name))
            }
        })
        .collect()
}

/// Joins the node's `local` volumes with the cluster's PVs of `driver`, their claims and the
/// pods using those.
pub fn join(
    node: &str,
    driver: &str,
    local: &[VolumeInfo],
    pvs: &[PersistentVolume],
    claims: &[PersistentVolumeClaim],
    pods: &[Pod],
) -> ClusterView {
    let ours: Vec<(&PersistentVolume, &str)> = pvs
        .iter()
        .filter_map(|pv| {
            let csi = pv.spec.as_ref()?.csi.as_ref()?;
            (csi.driver == driver).then_some((pv, csi.volume_handle.as_str()))
        })
        .collect();
    let by_handle: BTreeMap<&str, &PersistentVolume> =
        ours.iter().map(|(pv, h)| (*h, *pv)).collect();
    let claim_phase: BTreeMap<String, String> = claims
        .iter()
        .map(|c| {
            (
                key(
                    c.metadata.namespace.as_deref().unwrap_or_default(),
                    c.metadata.name.as_deref().unwrap_or_default(),
                ),
                c.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Pending".into()),
            )
        })
        .collect();
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        for claim in pod_claims(pod) {
            users
                .entry(key(ns, &claim))
                .or_default()
                .push(key(ns, pod.metadata.name.as_deref().unwrap_or_default()));
        }
    }
    let mut view = ClusterView {
        node: node.to_string(),
        ..Default::default()
    };
    let local_ids: BTreeSet<&str> = local.iter().map(|v| v.id.as_str()).collect();
    for v in local {
        // Inline ephemeral volumes (and other driver-internal ones) have no PV by design.
        if v.name.starts_with(strata_csi::driver::INTERNAL_PREFIX) {
            continue;
        }
        let Some(pv) = by_handle.get(v.id.as_str()) else {
            // A volume still being created gets its PV after CreateVolume returns.
            if v.phase == "Ready" {
                view.findings.push(ClusterFinding {
                    kind: ClusterFindingKind::NoPersistentVolume,
                    subject: v.id.clone(),
                    explanation: format!(
                        "volume {:?} in pool {} has no PersistentVolume (driver {driver}): the \
                         cluster forgot it (a PV deleted with reclaim Retain, or by hand). Its \
                         data is kept and doctor --repair leaves it: to use it again, create a \
                         PV with csi.volumeHandle {}; to drop it, give that PV reclaim Delete \
                         and delete it",
                        v.name, v.pool, v.id
                    ),
                });
            }
            continue;
        };
        let claim = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .map(|r| {
                key(
                    r.namespace.as_deref().unwrap_or_default(),
                    r.name.as_deref().unwrap_or_default(),
                )
            });
        view.owners.insert(
            v.id.clone(),
            Owner {
                persistent_volume: pv.metadata.name.clone().unwrap_or_default(),
                phase: pv
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default(),
                claim_phase: claim.as_ref().map(|c| {
                    claim_phase
                        .get(c)
                        .cloned()
                        .unwrap_or_else(|| "Missing".into())
                }),
                pods: claim
                    .as_ref()
                    .and_then(|c| users.get(c).cloned())
                    .unwrap_or_default(),
                claim,
            },
        );
    }
    for (pv, handle) in ours {
        let on_node = pinned_to(pv) == Some(node)
            || strata_csi::ids::ObjectId::parse(handle).is_some_and(|id| id.node == node);
        if !on_node || local_ids.contains(handle) {
            continue;
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        let claim = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .map(|r| {
                format!(
                    " (claim {})",
                    key(
                        r.namespace.as_deref().unwrap_or_default(),
                        r.name.as_deref().unwrap_or_default()
                    )
                )
            })
            .unwrap_or_default();
        view.findings.push(ClusterFinding {
            kind: ClusterFindingKind::VolumeMissing,
            subject: name.clone(),
            explanation: format!(
                "PersistentVolume {name}{claim} is on node {node} but its volume {handle} is in \
                 none of this node's pools: the data is lost, or the pool is not configured \
                 (check the driver's --pool flags). Pods using it cannot start here"
            ),
        });
    }
    view
}

/// Reads the PVs, then the claims and pods of the namespaces their claimRefs name (not
/// every namespace's pods), and joins them.
pub async fn read<S: Store>(
    store: &S,
    node: &str,
    driver: &str,
    local: &[VolumeInfo],
) -> strata_store::Result<ClusterView> {
    let pvs = store.list::<PersistentVolume>(None, None).await?.items;
    let namespaces: BTreeSet<String> = pvs
        .iter()
        .filter(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .is_some_and(|c| c.driver == driver)
        })
        .filter_map(|pv| pv.spec.as_ref()?.claim_ref.as_ref()?.namespace.clone())
        .collect();
    let (mut claims, mut pods) = (Vec::new(), Vec::new());
    for ns in &namespaces {
        claims.extend(
            store
                .list::<PersistentVolumeClaim>(Some(ns), None)
                .await?
                .items,
        );
        pods.extend(store.list::<Pod>(Some(ns), None).await?.items);
    }
    Ok(join(node, driver, local, &pvs, &claims, &pods))
}

#[cfg(test)]
mod tests;

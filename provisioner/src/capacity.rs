//! CSIStorageCapacity publishing in per-node mode: the decisions of external-provisioner's
//! capacity controller (`--enable-capacity` with `--node-deployment`,
//! kubernetes-csi/external-provisioner `pkg/capacity/capacity.go`), as pure functions.
//!
//! One object per (StorageClass of our driver, this node's topology segment) in one
//! namespace, named by `generateName: csisc-`, labelled with the driver and a managed-by
//! value naming this node, so every node lists, updates and deletes only its own objects.
//! Capacity comes from CSI GetCapacity with the class's parameters and the segment.
//!
//! Where we differ from upstream, and why:
//! - classes with Immediate binding get objects too (upstream needs
//!   `--capacity-for-immediate-binding`): the per-node Immediate placement reads them to
//!   pick the node of a claim (`provision::immediate`);
//! - a class GetCapacity refuses for good on this node (INVALID_ARGUMENT, NOT_FOUND: its
//!   pool is not configured here) has no object, so the scheduler does not place its pods
//!   here; upstream keeps retrying and leaves a stale object.

use std::collections::BTreeMap;

use crate::k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference,
};
use strata_store::{Preconditions, Store};

use crate::error::Result;
use crate::provision::class::ClassConfig;
use crate::provision::csi::CsiClient;
use crate::provision::node::TOPOLOGY_KEY;
use crate::provision::request::{AccessMode, AccessType, Capability};
use crate::provision::retry::code;
use crate::quantity::{bytes_of, format_bytes};

/// Which driver an object is about (upstream `capacity.DriverNameLabel`).
pub const DRIVER_NAME_LABEL: &str = "csi.storage.k8s.io/drivername";
/// Which publisher owns an object (upstream `capacity.ManagedByLabel`).
pub const MANAGED_BY_LABEL: &str = "csi.storage.k8s.io/managed-by";
/// Upstream's generateName for capacity objects.
pub const GENERATE_NAME: &str = "csisc-";

/// Label values are at most 63 characters (DNS-1035 label length).
const LABEL_MAX: usize = 63;

/// The managed-by value of `node`'s publisher: `strata-provisioner-NODE`, shortened with a
/// hash of the node name when too long (distinct nodes keep distinct values). Not
/// external-provisioner's value, so both publishers never fight over one object.
pub fn managed_by(node: &str) -> String {
    let full = format!("strata-provisioner-{node}");
    if full.len() <= LABEL_MAX {
        return full;
    }
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let suffix = format!("-{hash:016x}");
    let mut keep = LABEL_MAX - suffix.len();
    while !full.is_char_boundary(keep) {
        keep -= 1;
    }
    // A label value must end alphanumerically; the hex suffix does.
    format!("{}{suffix}", &full[..keep])
}

/// The labels that select exactly `node`'s objects for `driver`.
pub fn labels(driver: &str, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (DRIVER_NAME_LABEL.to_string(), driver.to_string()),
        (MANAGED_BY_LABEL.to_string(), managed_by(node)),
    ])
}

/// This node's topology segment, as the driver reports it (NodeGetInfo).
pub fn segment(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())])
}

/// A segment as the object's `nodeTopology`.
pub fn node_topology(segment: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(segment.clone()),
        match_expressions: None,
    }
}

/// The node an object's `nodeTopology` names, when it is one of our segments.
pub fn node_of(c: &CSIStorageCapacity) -> Option<&str> {
    let t = c.node_topology.as_ref()?;
    if t.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
        return None;
    }
    let labels = t.match_labels.as_ref()?;
    (labels.len() == 1)
        .then(|| labels.get(TOPOLOGY_KEY).map(String::as_str))
        .flatten()
}

/// What GetCapacity answered for a class on this node's segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// Bytes available, and the largest volume the driver would create, when it says.
    Bytes {
        available: i64,
        maximum: Option<i64>,
    },
    /// The driver refuses the class here for good (its pool is not on this node): no object.
    NotServed,
    /// The call failed in a way that may pass (driver restarting): leave the object as is.
    Unknown,
}

/// Where and how this node publishes.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub driver: String,
    pub node: String,
    pub namespace: String,
    /// Set on every object this node creates (the DaemonSet pod), or none.
    pub owner: Option<OwnerReference>,
}

/// One write to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(CSIStorageCapacity),
    /// The whole object with its resourceVersion (compare-and-swap).
    Update(CSIStorageCapacity),
    /// Name and uid (a delete precondition: never a newer object of the same name).
    Delete {
        name: String,
        uid: String,
    },
}

impl Publisher {
    /// The object this node should have for `class`, given `measured` bytes.
    pub fn desired(&self, class: &str, available: i64, maximum: Option<i64>) -> CSIStorageCapacity {
        let bytes = |b: i64| format_bytes(u128::try_from(b.max(0)).unwrap_or(0));
        CSIStorageCapacity {
            metadata: ObjectMeta {
                generate_name: Some(GENERATE_NAME.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(&self.driver, &self.node)),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            storage_class_name: class.to_string(),
            node_topology: Some(node_topology(&segment(&self.node))),
            capacity: Some(bytes(available)),
            maximum_volume_size: maximum.map(bytes),
        }
    }

    /// The writes that turn `existing` (this node's objects, selected by [`labels`]) into one
    /// object per class of `classes` (already only our driver's) that the driver serves,
    /// with the measured capacity. Creates first (in class order), then updates, then
    /// deletes of stale objects (a class gone, a class the driver does not serve here,
    /// another segment, a duplicate).
    pub fn plan(
        &self,
        classes: &[&StorageClass],
        existing: &[CSIStorageCapacity],
        measured: &BTreeMap<String, Measured>,
    ) -> Vec<Action> {
        let own_segment = node_topology(&segment(&self.node));
        let mut by_class: BTreeMap<&str, Vec<&CSIStorageCapacity>> = BTreeMap::new();
        let mut stale: Vec<&CSIStorageCapacity> = Vec::new();
        for c in existing {
            if c.node_topology.as_ref() == Some(&own_segment) {
                by_class
                    .entry(c.storage_class_name.as_str())
                    .or_default()
                    .push(c);
            } else {
                stale.push(c);
            }
        }
        let (mut creates, mut updates) = (Vec::new(), Vec::new());
        let mut wanted_classes = std::collections::BTreeSet::new();
        for sc in classes {
            let class = sc.metadata.name.as_deref().unwrap_or_default();
            let mut have = by_class.remove(class).unwrap_or_default();
            // The oldest by name is kept; the others are duplicates (upstream deletes them too).
            have.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let keep = match measured.get(class).copied().unwrap_or(Measured::Unknown) {
                Measured::NotServed => None,
                Measured::Unknown => {
                    wanted_classes.insert(class);
                    have.first().copied()
                }
                Measured::Bytes { available, maximum } => {
                    wanted_classes.insert(class);
                    let want = self.desired(class, available, maximum);
                    match have.first() {
                        None => {
                            creates.push(Action::Create(want));
                            None
                        }
                        Some(old) => {
                            if !same(old, &want) {
                                let mut new = (*old).clone();
                                new.capacity = want.capacity;
                                new.maximum_volume_size = want.maximum_volume_size;
                                if let Some(o) = &self.owner
                                    && !new
                                        .metadata
                                        .owner_references
                                        .iter()
                                        .flatten()
                                        .any(|r| r.uid == o.uid)
                                {
                                    new.metadata.owner_references = Some(vec![o.clone()]);
                                }
                                updates.push(Action::Update(new));
                            }
                            Some(*old)
                        }
                    }
                }
            };
            stale.extend(
                have.into_iter()
                    .filter(|c| keep.is_none_or(|k| k.metadata.name != c.metadata.name)),
            );
        }
        // Objects of classes no longer ours (deleted, or another provisioner now).
        stale.extend(
            by_class
                .into_iter()
                .filter(|(class, _)| !wanted_classes.contains(class))
                .flat_map(|(_, v)| v),
        );
        stale.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let deletes = stale.into_iter().map(|c| Action::Delete {
            name: c.metadata.name.clone().unwrap_or_default(),
            uid: c.metadata.uid.clone().unwrap_or_default(),
        });
        creates.into_iter().chain(updates).chain(deletes).collect()
    }
}

/// How capacity is measured: CSI GetCapacity in the daemon, a table in tests.
pub trait Measure: Send + Sync {
    fn measure(
        &self,
        class: &StorageClass,
        segment: &BTreeMap<String, String>,
    ) -> impl std::future::Future<Output = Measured> + Send;
}

/// GetCapacity with the class's parameters (the `csi.storage.k8s.io/` keys removed, as for
/// CreateVolume) and a mount capability of its filesystem: the driver answers per pool, and
/// a capability is mandatory in the request (upstream sends one as well).
pub struct CsiMeasure<'a> {
    pub csi: &'a CsiClient,
    pub default_fs_type: &'a str,
}

impl Measure for CsiMeasure<'_> {
    async fn measure(&self, class: &StorageClass, segment: &BTreeMap<String, String>) -> Measured {
        let Ok(cfg) = ClassConfig::from_class(class) else {
            // A class no claim can be provisioned from; its claims get the event.
            return Measured::NotServed;
        };
        let cap = Capability {
            access_type: AccessType::Mount {
                fs_type: cfg
                    .fs_type
                    .clone()
                    .unwrap_or_else(|| self.default_fs_type.to_string()),
                mount_flags: Vec::new(),
            },
            mode: AccessMode::SingleNodeWriter,
        };
        match self.csi.get_capacity(&cfg.parameters, &cap, segment).await {
            Ok((available, maximum)) => Measured::Bytes { available, maximum },
            Err(e) if matches!(e.code, Some(code::INVALID_ARGUMENT | code::NOT_FOUND)) => {
                tracing::debug!(class = %cfg.name, error = %e, "the driver does not serve this class here");
                Measured::NotServed
            }
            Err(e) => {
                tracing::warn!(class = %cfg.name, error = %e, "GetCapacity failed; its capacity object is left as is");
                Measured::Unknown
            }
        }
    }
}

/// What one round changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// One round: list this node's objects, measure every class of ours, write the difference.
/// The first failed write ends the round with its error (the caller retries the whole
/// round; a conflict means someone else wrote, and the next list sees it).
pub async fn publish<S: Store, M: Measure>(
    store: &S,
    measure: &M,
    p: &Publisher,
    classes: &[StorageClass],
) -> Result<Published> {
    let selector = LabelSelector {
        match_labels: Some(labels(&p.driver, &p.node)),
        match_expressions: None,
    };
    let existing = store
        .list::<CSIStorageCapacity>(Some(&p.namespace), Some(&selector))
        .await?
        .items;
    let ours = our_classes(classes, &p.driver);
    let seg = segment(&p.node);
    let mut measured = BTreeMap::new();
    for sc in &ours {
        let m = measure.measure(sc, &seg).await;
        measured.insert(sc.metadata.name.clone().unwrap_or_default(), m);
    }
    let mut done = Published::default();
    for action in p.plan(&ours, &existing, &measured) {
        match action {
            Action::Create(c) => {
                let made = store.create(&c).await?;
                tracing::debug!(name = made.metadata.name.as_deref().unwrap_or_default(), class = %c.storage_class_name, "created CSIStorageCapacity");
                done.created += 1;
            }
            Action::Update(c) => {
                store.update(&c).await?;
                done.updated += 1;
            }
            Action::Delete { name, uid } => {
                let pre = Preconditions {
                    uid: Some(uid).filter(|u| !u.is_empty()),
                    resource_version: None,
                };
                match store
                    .delete::<CSIStorageCapacity>(&p.namespace, &name, pre)
                    .await
                {
                    Ok(_) => done.deleted += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(done)
}

/// Same numbers (compared as bytes: "1Gi" equals "1073741824") and, when we set an owner,
/// carrying it.
fn same(old: &CSIStorageCapacity, want: &CSIStorageCapacity) -> bool {
    let b = |q: Option<&crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.map(|q| bytes_of(q).ok())
    };
    let owner_ok = match want.metadata.owner_references.as_deref() {
        Some([o]) => old
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == o.uid),
        _ => true,
    };
    b(old.capacity.as_ref()) == b(want.capacity.as_ref())
        && b(old.maximum_volume_size.as_ref()) == b(want.maximum_volume_size.as_ref())
        && owner_ok
}

/// The classes of `driver` among `classes`.
pub fn our_classes<'a>(
    classes: impl IntoIterator<Item = &'a StorageClass>,
    driver: &str,
) -> Vec<&'a StorageClass> {
    classes
        .into_iter()
        .filter(|sc| sc.provisioner == driver && sc.metadata.deletion_timestamp.is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn publisher() -> Publisher {
        Publisher {
            driver: "d".into(),
            node: "n1".into(),
            namespace: "strata-system".into(),
            owner: None,
        }
    }

    fn class(name: &str) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            provisioner: "d".into(),
            ..Default::default()
        }
    }

    fn existing(name: &str, class: &str, node: &str, cap: &str) -> CSIStorageCapacity {
        let mut c = publisher().desired(class, 0, None);
        c.metadata.name = Some(name.into());
        c.metadata.uid = Some(format!("uid-{name}"));
        c.metadata.resource_version = Some("5".into());
        c.node_topology = Some(node_topology(&segment(node)));
        c.capacity = Some(Quantity(cap.into()));
        c
    }

    fn bytes(available: i64) -> Measured {
        Measured::Bytes {
            available,
            maximum: Some(available),
        }
    }

    #[test]
    fn managed_by_names_the_node_within_a_label_value() {
        assert_eq!(managed_by("n1"), "strata-provisioner-n1");
        let long = "n".repeat(63);
        let m = managed_by(&long);
        assert_eq!(m.len(), 63);
        assert_ne!(m, managed_by(&format!("{}m", "n".repeat(62))));
    }

    #[test]
    fn creates_missing_updates_changed_and_deletes_stale_objects() {
        let p = publisher();
        let (a, b, c, gone) = (class("a"), class("b"), class("c"), "gone");
        let have = vec![
            existing("csisc-b", "b", "n1", "1Gi"),
            existing("csisc-c", "c", "n1", "1073741824"),
            existing("csisc-c2", "c", "n1", "1Gi"),
            existing("csisc-gone", gone, "n1", "1Gi"),
            existing("csisc-other", "a", "n2", "1Gi"),
        ];
        let measured = BTreeMap::from([
            ("a".to_string(), bytes(2 << 30)),
            ("b".to_string(), bytes(3 << 30)),
            (
                "c".to_string(),
                Measured::Bytes {
                    available: 1 << 30,
                    maximum: None,
                },
            ),
        ]);
        let plan = p.plan(&[&a, &b, &c], &have, &measured);
        let [
            Action::Create(new),
            Action::Update(upd),
            Action::Delete { name: d1, .. },
            Action::Delete { name: d2, .. },
            Action::Delete { name: d3, uid },
        ] = plan.as_slice()
        else {
            panic!("{plan:#?}");
        };
        assert_eq!(new.storage_class_name, "a");
        assert_eq!(new.metadata.generate_name.as_deref(), Some(GENERATE_NAME));
        assert_eq!(new.capacity, Some(Quantity("2Gi".into())));
        assert_eq!(new.maximum_volume_size, Some(Quantity("2Gi".into())));
        assert_eq!(new.metadata.labels, Some(labels("d", "n1")));
        assert_eq!(
            new.node_topology.as_ref().unwrap().match_labels,
            Some(segment("n1"))
        );
        assert_eq!(upd.metadata.name.as_deref(), Some("csisc-b"));
        assert_eq!(upd.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(upd.capacity, Some(Quantity("3Gi".into())));
        // "1073741824" equals 1Gi: csisc-c is kept as is; its duplicate goes.
        assert_eq!(
            (d1.as_str(), d2.as_str(), d3.as_str()),
            ("csisc-c2", "csisc-gone", "csisc-other")
        );
        assert_eq!(uid, "uid-csisc-other");
    }

    #[test]
    fn an_unknown_measurement_keeps_the_object_and_not_served_deletes_it() {
        let p = publisher();
        let (a, b) = (class("a"), class("b"));
        let have = vec![
            existing("csisc-a", "a", "n1", "1Gi"),
            existing("csisc-b", "b", "n1", "1Gi"),
        ];
        let measured = BTreeMap::from([
            ("a".to_string(), Measured::Unknown),
            ("b".to_string(), Measured::NotServed),
        ]);
        assert_eq!(
            p.plan(&[&a, &b], &have, &measured),
            vec![Action::Delete {
                name: "csisc-b".into(),
                uid: "uid-csisc-b".into()
            }]
        );
        // Nothing measured yet and nothing there: nothing to write.
        assert!(p.plan(&[&a], &[], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn an_owner_is_set_on_creates_and_added_to_objects_without_it() {
        let mut p = publisher();
        p.owner = Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "strata-node-x".into(),
            uid: "pod-uid".into(),
            controller: Some(true),
            ..Default::default()
        });
        let a = class("a");
        let have = vec![existing("csisc-a", "a", "n1", "1Gi")];
        let plan = p.plan(
            &[&a],
            &have,
            &BTreeMap::from([("a".into(), bytes(1 << 30))]),
        );
        let [Action::Update(u)] = plan.as_slice() else {
            panic!("{plan:#?}")
        };
        assert_eq!(
            u.metadata.owner_references,
            Some(vec![p.owner.clone().unwrap()])
        );
    }

    #[test]
    fn node_of_reads_our_segments_only() {
        let c = existing("x", "a", "n7", "1Gi");
        assert_eq!(node_of(&c), Some("n7"));
        let mut other = c.clone();
        other.node_topology = Some(LabelSelector::default());
        assert_eq!(node_of(&other), None);
    }
}

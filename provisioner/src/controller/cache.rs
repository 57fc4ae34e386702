//! The loops' in-memory view of the store, fed by list+watch and by the loops' own writes.
//!
//! A write's result goes into the cache at once, so the next sync (e.g. of another claim)
//! sees the PV as bound before the watch event arrives; an event older than what the cache
//! holds is ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::binder::VolumeIndex;
use crate::k8s_openapi::api::apps::v1::StatefulSet;
use crate::k8s_openapi::api::core::v1::PersistentVolume;
use crate::k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use crate::k8s_openapi::api::storage::v1::StorageClass;
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use crate::meta;
use strata_store::snapshot::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

#[derive(Default)]
pub struct Cache {
    /// Deleted objects ("Kind/key" -> resourceVersion of the deletion), so a write result or a
    /// late event older than the deletion cannot bring an object back.
    tombstones: HashMap<String, u64>,
    pub volumes: VolumeIndex,
    /// Keyed `namespace/name`.
    pub claims: BTreeMap<String, PersistentVolumeClaim>,
    pub classes: BTreeMap<String, StorageClass>,
    pub sets: BTreeMap<String, StatefulSet>,
    pub pods: BTreeMap<String, Pod>,
    /// `spec.volumeName` -> the claims naming it, so a PV appearing (or going) wakes the
    /// claims that wait for it by name.
    claims_by_volume: HashMap<String, BTreeSet<String>>,
    /// Claims (`namespace/name`) with a data source (a restore or a clone): a claim or
    /// snapshot changing wakes these only, not every claim of its namespace.
    pub claims_with_source: BTreeSet<String>,
    /// Namespaces being deleted that the namespace controller has yet to empty: a pod or
    /// claim going away in one of them wakes its sync.
    pub terminating_namespaces: BTreeSet<String>,
    /// VolumeSnapshots keyed `namespace/name`; contents and their classes by name.
    pub snapshots: BTreeMap<String, VolumeSnapshot>,
    pub contents: BTreeMap<String, VolumeSnapshotContent>,
    pub snapshot_classes: BTreeMap<String, VolumeSnapshotClass>,
}

/// `namespace/name`: the queue and cache key.
pub use crate::meta::key;

/// An update that removed the last finalizer of an object being deleted returns its final
/// state: the object is gone from the store.
fn removed(m: &ObjectMeta) -> bool {
    m.deletion_timestamp.is_some() && m.finalizers.as_ref().is_none_or(|f| f.is_empty())
}

fn put<K>(
    map: &mut BTreeMap<String, K>,
    tombs: &mut HashMap<String, u64>,
    kind: &str,
    k: String,
    obj: K,
    m: impl Fn(&K) -> &ObjectMeta,
) {
    let rv = meta::resource_version(m(&obj));
    if removed(m(&obj)) {
        return drop_key(map, tombs, kind, &k, rv, m);
    }
    let tomb = format!("{kind}/{k}");
    if tombs.get(&tomb).is_some_and(|t| rv != 0 && rv <= *t) {
        return;
    }
    if let Some(old) = map.get(&k)
        && rv != 0
        && rv < meta::resource_version(m(old))
    {
        return;
    }
    tombs.remove(&tomb);
    map.insert(k, obj);
}

fn drop_key<K>(
    map: &mut BTreeMap<String, K>,
    tombs: &mut HashMap<String, u64>,
    kind: &str,
    k: &str,
    rv: u64,
    m: impl Fn(&K) -> &ObjectMeta,
) {
    if let Some(old) = map.get(k) {
        if meta::resource_version(m(old)) > rv {
            return;
        }
        map.remove(k);
    }
    let t = tombs.entry(format!("{kind}/{k}")).or_insert(0);
    *t = (*t).max(rv);
}

impl Cache {
    pub fn put_claim(&mut self, o: PersistentVolumeClaim) {
        let k = key(&o.metadata);
        let before = self.claim_volume(&k);
        put(
            &mut self.claims,
            &mut self.tombstones,
            "pvc",
            k.clone(),
            o,
            |x| &x.metadata,
        );
        self.reindex_claim(&k, before);
    }

    pub fn drop_claim(&mut self, k: &str, rv: u64) {
        let before = self.claim_volume(k);
        drop_key(&mut self.claims, &mut self.tombstones, "pvc", k, rv, |x| {
            &x.metadata
        });
        self.reindex_claim(k, before);
    }

    fn claim_volume(&self, k: &str) -> Option<String> {
        self.claims
            .get(k)
            .map(|c| meta::claim_volume_name(c).to_string())
            .filter(|v| !v.is_empty())
    }

    fn reindex_claim(&mut self, k: &str, before: Option<String>) {
        let sourced = self.claims.get(k).is_some_and(|c| {
            c.spec
                .as_ref()
                .is_some_and(|s| s.data_source.is_some() || s.data_source_ref.is_some())
        });
        if sourced {
            if !self.claims_with_source.contains(k) {
                self.claims_with_source.insert(k.to_string());
            }
        } else {
            self.claims_with_source.remove(k);
        }
        let after = self.claim_volume(k);
        if before == after {
            return;
        }
        if let Some(v) = before
            && let Some(set) = self.claims_by_volume.get_mut(&v)
        {
            set.remove(k);
            if set.is_empty() {
                self.claims_by_volume.remove(&v);
            }
        }
        if let Some(v) = after {
            self.claims_by_volume
                .entry(v)
                .or_default()
                .insert(k.to_string());
        }
    }

    /// Claims whose `spec.volumeName` is `volume`.
    pub fn claims_naming(&self, volume: &str) -> impl Iterator<Item = &String> + '_ {
        self.claims_by_volume.get(volume).into_iter().flatten()
    }

    /// Claims whose StorageClass is `class`, and claims with no volume yet (a default
    /// class appearing may give them one).
    pub fn claims_waiting_on_class<'a>(
        &'a self,
        class: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a PersistentVolumeClaim)> + 'a {
        self.claims.iter().filter(move |(_, c)| {
            meta::claim_volume_name(c).is_empty() || crate::binder::class::claim_class(c) == class
        })
    }

    pub fn put_pod(&mut self, o: Pod) {
        put(
            &mut self.pods,
            &mut self.tombstones,
            "pod",
            key(&o.metadata),
            o,
            |x| &x.metadata,
        );
    }

    pub fn drop_pod(&mut self, k: &str, rv: u64) {
        drop_key(&mut self.pods, &mut self.tombstones, "pod", k, rv, |x| {
            &x.metadata
        });
    }

    pub fn put_set(&mut self, o: StatefulSet) {
        put(
            &mut self.sets,
            &mut self.tombstones,
            "sts",
            key(&o.metadata),
            o,
            |x| &x.metadata,
        );
    }

    pub fn drop_set(&mut self, k: &str, rv: u64) {
        drop_key(&mut self.sets, &mut self.tombstones, "sts", k, rv, |x| {
            &x.metadata
        });
    }

    pub fn put_class(&mut self, o: StorageClass) {
        let k = meta::name(&o.metadata).to_string();
        put(&mut self.classes, &mut self.tombstones, "sc", k, o, |x| {
            &x.metadata
        });
    }

    pub fn drop_class(&mut self, k: &str, rv: u64) {
        drop_key(&mut self.classes, &mut self.tombstones, "sc", k, rv, |x| {
            &x.metadata
        });
    }

    pub fn put_snapshot(&mut self, o: VolumeSnapshot) {
        let k = key(&o.metadata);
        put(&mut self.snapshots, &mut self.tombstones, "vs", k, o, |x| {
            &x.metadata
        });
    }

    pub fn drop_snapshot(&mut self, k: &str, rv: u64) {
        drop_key(
            &mut self.snapshots,
            &mut self.tombstones,
            "vs",
            k,
            rv,
            |x| &x.metadata,
        );
    }

    pub fn put_content(&mut self, o: VolumeSnapshotContent) {
        let k = meta::name(&o.metadata).to_string();
        put(&mut self.contents, &mut self.tombstones, "vsc", k, o, |x| {
            &x.metadata
        });
    }

    pub fn drop_content(&mut self, k: &str, rv: u64) {
        drop_key(
            &mut self.contents,
            &mut self.tombstones,
            "vsc",
            k,
            rv,
            |x| &x.metadata,
        );
    }

    pub fn put_snapshot_class(&mut self, o: VolumeSnapshotClass) {
        let k = meta::name(&o.metadata).to_string();
        put(
            &mut self.snapshot_classes,
            &mut self.tombstones,
            "vsclass",
            k,
            o,
            |x| &x.metadata,
        );
    }

    pub fn drop_snapshot_class(&mut self, k: &str, rv: u64) {
        drop_key(
            &mut self.snapshot_classes,
            &mut self.tombstones,
            "vsclass",
            k,
            rv,
            |x| &x.metadata,
        );
    }

    /// The index has its own newer-version check; the tombstone check is done here.
    pub fn put_volume(&mut self, pv: PersistentVolume) {
        let name = meta::name(&pv.metadata).to_string();
        let rv = meta::resource_version(&pv.metadata);
        if removed(&pv.metadata) {
            return self.drop_volume(&name, rv);
        }
        let tomb = format!("pv/{name}");
        if self
            .tombstones
            .get(&tomb)
            .is_some_and(|t| rv != 0 && rv <= *t)
        {
            return;
        }
        self.tombstones.remove(&tomb);
        self.volumes.upsert(pv);
    }

    pub fn drop_volume(&mut self, name: &str, rv: u64) {
        if let Some(old) = self.volumes.get(name) {
            if meta::resource_version(&old.metadata) > rv {
                return;
            }
            self.volumes.remove(name);
        }
        let t = self.tombstones.entry(format!("pv/{name}")).or_insert(0);
        *t = (*t).max(rv);
    }

    /// Pods in `namespace` that use claim `name` through a persistentVolumeClaim volume.
    pub fn pods_using_claim<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        let prefix = format!("{namespace}/");
        self.pods
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, p)| p)
            .filter(move |p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .is_some_and(|vs| {
                        vs.iter().any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|c| c.claim_name == name)
                        })
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binder::testutil::{claim, ts_at, volume};

    fn at(mut c: PersistentVolumeClaim, rv: u64) -> PersistentVolumeClaim {
        c.metadata.resource_version = Some(rv.to_string());
        c
    }

    #[test]
    fn older_versions_and_deleted_objects_do_not_come_back() {
        let mut cache = Cache::default();
        cache.put_claim(at(claim("c", "1Gi", &[]), 5));
        cache.put_claim(at(claim("c", "2Gi", &[]), 3));
        let held = &cache.claims["default/c"];
        assert_eq!(
            meta::resource_version(&held.metadata),
            5,
            "a late event is ignored"
        );
        cache.drop_claim("default/c", 7);
        // Our own write's result (version 6) arriving after the Deleted event (7).
        cache.put_claim(at(claim("c", "1Gi", &[]), 6));
        assert!(
            cache.claims.is_empty(),
            "no resurrection from an older version"
        );
        // Recreated under the same name later: a newer version is welcome.
        cache.put_claim(at(claim("c", "1Gi", &[]), 9));
        assert!(cache.claims.contains_key("default/c"));
    }

    #[test]
    fn an_update_that_removed_the_last_finalizer_removes_the_object() {
        let mut cache = Cache::default();
        cache.put_claim(at(claim("c", "1Gi", &[]), 5));
        let mut last = at(claim("c", "1Gi", &[]), 8);
        last.metadata.deletion_timestamp = Some(ts_at(1));
        cache.put_claim(last);
        assert!(cache.claims.is_empty());
        let mut pv = volume("v", "1Gi", &[]);
        pv.metadata.resource_version = Some("4".into());
        cache.put_volume(pv.clone());
        cache.drop_volume("v", 6);
        pv.metadata.resource_version = Some("5".into());
        cache.put_volume(pv);
        assert!(cache.volumes.get("v").is_none());
    }
}

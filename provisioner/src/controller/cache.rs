//! The loops' in-memory view of the store, fed by list+watch and by the loops' own writes.
//!
//! A write's result goes into the cache at once, so the next sync (e.g. of another claim)
//! sees the PV as bound before the watch event arrives; an event older than what the cache
//! holds is ignored.

use std::collections::BTreeMap;

use crate::binder::VolumeIndex;
use crate::k8s_openapi::api::apps::v1::StatefulSet;
use crate::k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use crate::k8s_openapi::api::storage::v1::StorageClass;
use crate::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use crate::meta;

#[derive(Default)]
pub struct Cache {
    pub volumes: VolumeIndex,
    /// Keyed `namespace/name`.
    pub claims: BTreeMap<String, PersistentVolumeClaim>,
    pub classes: BTreeMap<String, StorageClass>,
    pub sets: BTreeMap<String, StatefulSet>,
    pub pods: BTreeMap<String, Pod>,
}

pub fn key(m: &ObjectMeta) -> String {
    format!("{}/{}", meta::namespace(m), meta::name(m))
}

/// Inserts `obj` unless the map holds a newer version of it. Returns whether it was stored.
pub fn upsert<K>(
    map: &mut BTreeMap<String, K>,
    k: String,
    obj: K,
    meta_of: impl Fn(&K) -> &ObjectMeta,
) -> bool {
    if let Some(old) = map.get(&k) {
        let (o, n) = (
            meta::resource_version(meta_of(old)),
            meta::resource_version(meta_of(&obj)),
        );
        if n != 0 && n < o {
            return false;
        }
    }
    map.insert(k, obj);
    true
}

/// Removes `k` unless the map holds a version newer than the deletion's.
pub fn remove<K>(
    map: &mut BTreeMap<String, K>,
    k: &str,
    deleted: &ObjectMeta,
    meta_of: impl Fn(&K) -> &ObjectMeta,
) {
    if let Some(old) = map.get(k)
        && meta::resource_version(meta_of(old)) > meta::resource_version(deleted)
    {
        return;
    }
    map.remove(k);
}

impl Cache {
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

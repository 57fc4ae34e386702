//! The local cache of Secrets and ConfigMaps the pods' volumes read: filled by the
//! watches and, for an object a sync needs before its watch event, by a direct read.

use strata_store::Store;
use strata_store::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use strata_store::meta;

use super::{VolumeManager, key_of, store_err};
use crate::error::Result;
use crate::projection::References;

/// Which API-data object a watch event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Secret,
    ConfigMap,
}

/// namespace, name
pub(super) type ObjKey = (String, String);

/// A Secret or ConfigMap for the cache.
#[derive(Debug, Clone)]
pub enum CachedObject {
    Secret(Secret),
    ConfigMap(ConfigMap),
}

impl<S: Store> VolumeManager<S> {
    /// Puts an object into the cache unless the cache already holds a newer version.
    pub(super) fn cache_object(&self, kind: ObjectKind, obj: CachedObject) {
        match (kind, obj) {
            (ObjectKind::Secret, CachedObject::Secret(s)) => {
                let mut map = self.inner.secrets.write().expect("lock");
                let k = key_of(&s);
                if map.get(&k).is_none_or(|old| {
                    meta::resource_version(&old.metadata) <= meta::resource_version(&s.metadata)
                }) {
                    map.insert(k, s);
                }
            }
            (ObjectKind::ConfigMap, CachedObject::ConfigMap(c)) => {
                let mut map = self.inner.config_maps.write().expect("lock");
                let k = key_of(&c);
                if map.get(&k).is_none_or(|old| {
                    meta::resource_version(&old.metadata) <= meta::resource_version(&c.metadata)
                }) {
                    map.insert(k, c);
                }
            }
            _ => {}
        }
    }

    /// Fetches referenced objects missing from the cache (a pod can be synced before the
    /// watch has delivered them). NotFound leaves them absent.
    pub(super) async fn fill_cache(&self, ns: &str, refs: &References) -> Result<()> {
        for name in &refs.secrets {
            let have = self
                .inner
                .secrets
                .read()
                .expect("lock")
                .contains_key(&(ns.to_owned(), name.clone()));
            if !have {
                match self.inner.store.get::<Secret>(ns, name).await {
                    Ok(s) => self.cache_object(ObjectKind::Secret, CachedObject::Secret(s)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        for name in &refs.config_maps {
            let have = self
                .inner
                .config_maps
                .read()
                .expect("lock")
                .contains_key(&(ns.to_owned(), name.clone()));
            if !have {
                match self.inner.store.get::<ConfigMap>(ns, name).await {
                    Ok(c) => self.cache_object(ObjectKind::ConfigMap, CachedObject::ConfigMap(c)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        Ok(())
    }
}

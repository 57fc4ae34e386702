//! The namespace controller: empties a namespace being deleted, then finalizes it.

use std::time::Duration;

use strata_store::{Object, Preconditions, Store};
use tracing::{debug, info};

use super::{Controller, Requeue};
use crate::error::Result;
use crate::k8s_openapi::api::apps::v1::StatefulSet;
use crate::k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, NamespaceStatus, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount,
};
use crate::meta;
use crate::namespace::{self, Remaining};

/// How soon a namespace with content left is looked at again when no watch event wakes it
/// (pod and claim deletions do; a finalizer on another kind does not).
const RECHECK: Duration = Duration::from_secs(5);

/// Upstream's group-resource string for a kind: the plural, then `.group` unless core.
fn resource<K: Object>() -> String {
    let plural = strata_store::kinds::registered(K::kind_ref())
        .map(|k| k.plural.to_string())
        .unwrap_or_else(|| format!("{}s", K::KIND.to_ascii_lowercase()));
    match K::GROUP {
        "" => plural,
        group => format!("{plural}.{group}"),
    }
}

impl<S: Store> Controller<S> {
    #[tracing::instrument(skip_all, fields(namespace = %name))]
    pub(crate) async fn sync_namespace(&self, name: &str) -> Result<Requeue> {
        let ns: Namespace = match self.store.get("", name).await {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => {
                self.cache().terminating_namespaces.remove(name);
                return Ok(Requeue::Done);
            }
            Err(e) => return Err(e.into()),
        };
        if !namespace::is_ours_to_empty(&ns) {
            if ns.metadata.deletion_timestamp.is_none() {
                self.cache().terminating_namespaces.remove(name);
            }
            return Ok(Requeue::Done);
        }
        let mut left = Remaining::default();
        // Every namespaced kind the store holds. Events last: deleting the others records
        // a few more (updates of existing ones; new ones are refused in a terminating
        // namespace).
        self.delete_all::<Pod>(name, &mut left).await?;
        self.delete_all::<StatefulSet>(name, &mut left).await?;
        self.delete_all::<strata_store::snapshot::VolumeSnapshot>(name, &mut left)
            .await?;
        self.delete_all::<PersistentVolumeClaim>(name, &mut left)
            .await?;
        self.delete_all::<ConfigMap>(name, &mut left).await?;
        self.delete_all::<Secret>(name, &mut left).await?;
        self.delete_all::<ServiceAccount>(name, &mut left).await?;
        self.delete_all::<Event>(name, &mut left).await?;
        if let Some(conditions) = namespace::conditions(&ns, &left) {
            let mut status_update = ns.clone();
            let status = status_update
                .status
                .get_or_insert_with(NamespaceStatus::default);
            status.conditions = Some(conditions);
            match self.store.update_status(&status_update).await {
                Ok(_) => {}
                // Re-read on the next pass; the content deletions above are done.
                Err(e) if e.is_conflict() || e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !left.is_empty() {
            debug!(left = ?left.resources, "namespace content remaining");
            return Ok(Requeue::After(RECHECK));
        }
        // Fresh resourceVersion: the status write above moved it on.
        let ns: Namespace = match self.store.get("", name).await {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => return Ok(Requeue::Done),
            Err(e) => return Err(e.into()),
        };
        let done = self
            .store
            .finalize_namespace(&namespace::finalized(&ns))
            .await?;
        let held: Vec<String> = done
            .spec
            .iter()
            .flat_map(|s| s.finalizers.iter().flatten())
            .chain(done.metadata.finalizers.iter().flatten())
            .cloned()
            .collect();
        if held.is_empty() {
            info!("namespace emptied and removed");
        } else {
            info!(finalizers = ?held, "namespace emptied; other finalizers still hold it");
        }
        self.cache().terminating_namespaces.remove(name);
        Ok(Requeue::Done)
    }

    /// Deletes every object of kind `K` in `ns` not already being deleted; what is still
    /// there afterwards (held by finalizers) goes into `left`.
    async fn delete_all<K: Object>(&self, ns: &str, left: &mut Remaining) -> Result<()> {
        let list = self.store.list::<K>(Some(ns), None).await?;
        let resource = resource::<K>();
        for obj in list.items {
            let m = obj.metadata();
            let still_there = if m.deletion_timestamp.is_some() {
                Some(obj)
            } else {
                let pre = Preconditions {
                    uid: m.uid.clone(),
                    resource_version: None,
                };
                match self.store.delete::<K>(ns, meta::name(m), pre).await {
                    Ok(d) if d.is_gone() => None,
                    Ok(d) => Some(d.into_object()),
                    // Gone meanwhile, or replaced by a new object the next pass sees.
                    Err(e) if e.is_not_found() => None,
                    Err(e) if e.is_conflict() => Some(obj),
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some(obj) = still_there {
                let finalizers = obj.metadata().finalizers.clone().unwrap_or_default();
                left.add(&resource, &finalizers);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_named_as_upstream() {
        assert_eq!(resource::<Pod>(), "pods");
        assert_eq!(
            resource::<PersistentVolumeClaim>(),
            "persistentvolumeclaims"
        );
        assert_eq!(resource::<StatefulSet>(), "statefulsets.apps");
    }
}

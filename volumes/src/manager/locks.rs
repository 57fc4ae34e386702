//! One lock per pod UID: a pod's syncs, re-projections and tear-down never overlap.

use std::sync::Arc;

use strata_store::Store;

use super::VolumeManager;

impl<S: Store> VolumeManager<S> {
    pub(super) fn pod_lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .pod_locks
            .lock()
            .expect("lock")
            .entry(uid.to_owned())
            .or_default()
            .clone()
    }

    /// Drops the pod's lock from the map unless another task still holds or waits on it.
    pub(super) fn release_pod_lock(&self, uid: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.inner.pod_locks.lock().expect("lock");
        // Ours and the map's: nobody else queued behind it.
        if locks.get(uid).is_some_and(|l| Arc::ptr_eq(l, lock)) && Arc::strong_count(lock) <= 2 {
            locks.remove(uid);
        }
    }
}
